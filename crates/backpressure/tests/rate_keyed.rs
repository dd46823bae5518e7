//! The keyed limiter's key budget: exact under concurrent new keys, O(1) amortized
//! work for a new key at the budget, and an honest retry-after when one is refused.
#![cfg(not(loom))]

use std::collections::HashSet;
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use heijunka_backpressure::{KeyedRateLimiter, OverflowPolicy, RateLimitError};
use heijunka_core::{ManualClock, Rejection};

/// New keys from 8 threads at once never get more fresh buckets than the budget.
/// The count is the test's own: the set of distinct keys whose first check was Ok
/// (time is frozen, so no key becomes idle and none can be evicted).
#[test]
fn concurrent_new_keys_never_exceed_the_budget() {
    const THREADS: usize = 8;
    const MAX_KEYS: usize = 4;
    let rounds = if cfg!(miri) { 5 } else { 300 };
    for round in 0..rounds {
        let clock = ManualClock::new();
        let limiter: Arc<KeyedRateLimiter<u64>> = Arc::new(
            KeyedRateLimiter::builder(1.0)
                .max_keys(MAX_KEYS)
                .clock(clock.clock())
                .build()
                .unwrap(),
        );
        let admitted = Arc::new(Mutex::new(HashSet::new()));
        let barrier = Arc::new(Barrier::new(THREADS));
        let handles: Vec<_> = (0..THREADS as u64)
            .map(|t| {
                let (limiter, admitted, barrier) = (
                    Arc::clone(&limiter),
                    Arc::clone(&admitted),
                    Arc::clone(&barrier),
                );
                std::thread::spawn(move || {
                    barrier.wait();
                    for i in 0..4 {
                        let key = t * 100 + i;
                        match limiter.check_key(&key) {
                            Ok(()) => assert!(admitted.lock().unwrap().insert(key)),
                            Err(RateLimitError::KeyBudgetExhausted { .. }) => {}
                            Err(other) => panic!("a fresh key got {other:?}"),
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let got = admitted.lock().unwrap().len();
        assert_eq!(got, MAX_KEYS, "round {round}: {got} fresh keys admitted");
        assert_eq!(limiter.len(), MAX_KEYS);
    }
}

/// A key that counts every call of its `Hash`, `Eq` and `Clone` on a counter the
/// test owns: any work the limiter does on held keys goes through them.
#[derive(Debug)]
struct Counted {
    id: u64,
    calls: Arc<std::sync::atomic::AtomicU64>,
}

impl Counted {
    fn touch(&self) {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl std::hash::Hash for Counted {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.touch();
        self.id.hash(state);
    }
}

impl PartialEq for Counted {
    fn eq(&self, other: &Self) -> bool {
        self.touch();
        self.id == other.id
    }
}

impl Eq for Counted {}

impl Clone for Counted {
    fn clone(&self) -> Self {
        self.touch();
        Counted {
            id: self.id,
            calls: Arc::clone(&self.calls),
        }
    }
}

/// At a full budget of 100,000 busy keys, each refused new key touches a bounded
/// number of held keys, not all of them: counted through the held keys' own
/// `Hash`/`Eq`/`Clone` (a lookup, a probe or a scan of the key set has to call
/// them), not through any count the limiter keeps. The new keys count on a
/// separate counter, so only work on held keys is measured.
#[test]
fn a_refused_new_key_at_the_budget_does_not_scan_every_key() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let max_keys = if cfg!(miri) { 1_000 } else { 100_000 };
    let refusals = if cfg!(miri) { 100 } else { 10_000_u64 };
    let clock = ManualClock::new();
    let limiter: KeyedRateLimiter<Counted> = KeyedRateLimiter::builder(1.0)
        .max_keys(max_keys)
        .clock(clock.clock())
        .build()
        .unwrap();
    let held = Arc::new(AtomicU64::new(0));
    let newcomers = Arc::new(AtomicU64::new(0));
    for k in 0..max_keys as u64 {
        limiter
            .check_key(&Counted {
                id: k,
                calls: Arc::clone(&held),
            })
            .unwrap();
    }
    let before = held.load(Ordering::SeqCst);
    for i in 0..refusals {
        let key = Counted {
            id: u64::MAX - i,
            calls: Arc::clone(&newcomers),
        };
        let err = limiter.check_key(&key).unwrap_err();
        assert!(
            matches!(err, RateLimitError::KeyBudgetExhausted { .. }),
            "{err:?}"
        );
        let touched = held.load(Ordering::SeqCst) - before;
        assert!(
            touched <= (i + 1) * 16,
            "{touched} calls on held keys for {} refused new keys",
            i + 1
        );
    }
    // A known key is still served (its bucket refills at 1 per second).
    clock.advance(Duration::from_secs(1));
    limiter
        .check_key(&Counted {
            id: 7,
            calls: Arc::clone(&newcomers),
        })
        .unwrap();
}

/// A new key refused at the budget is told when room is expected: when the first
/// held key it looked at will be idle (here, 1 s), never zero.
#[test]
fn a_refused_new_key_gets_a_real_retry_after() {
    let clock = ManualClock::new();
    let limiter: KeyedRateLimiter<&str> = KeyedRateLimiter::builder(1.0)
        .max_keys(2)
        .clock(clock.clock())
        .build()
        .unwrap();
    limiter.check_key(&"a").unwrap();
    clock.advance(Duration::from_millis(300));
    limiter.check_key(&"b").unwrap();
    let err = limiter.check_key(&"c").unwrap_err();
    assert!(
        matches!(err, RateLimitError::KeyBudgetExhausted { max_keys: 2, .. }),
        "{err:?}"
    );
    // "a" is idle 1 s after its check, 700 ms from now.
    assert_eq!(err.retry_after(), Some(Duration::from_millis(700)));
    assert_eq!(
        err.reason(),
        Some(Rejection::RateLimited {
            retry_after: Duration::from_millis(700)
        })
    );
    // Honest: after that wait the new key is admitted.
    clock.advance(Duration::from_millis(700));
    limiter.check_key(&"c").unwrap();
}

/// Every refusal of the keyed limiter carries a retry-after above zero, whatever
/// the policy; "never possible" has none.
#[test]
fn keyed_retry_afters_are_never_zero() {
    let clock = ManualClock::new();
    for policy in [OverflowPolicy::Reject, OverflowPolicy::SharedBucket] {
        let limiter: KeyedRateLimiter<u32> = KeyedRateLimiter::builder(3.0)
            .burst(2)
            .max_keys(3)
            .overflow(policy)
            .clock(clock.clock())
            .build()
            .unwrap();
        for step in 0..200_u32 {
            match limiter.check_key(&(step % 7)) {
                Ok(()) => {}
                Err(e) => {
                    let retry = e.retry_after().expect("a keyed refusal knows its wait");
                    assert!(retry > Duration::ZERO, "{e:?} at step {step}");
                }
            }
            clock.advance(Duration::from_millis(u64::from(step % 5) * 37));
        }
        let never = limiter.check_key_n(&0, 3).unwrap_err();
        assert_eq!(
            never,
            RateLimitError::InsufficientCapacity {
                requested: 3,
                capacity: 2
            }
        );
        assert_eq!(never.retry_after(), None);
    }
}

/// Eviction is exact: only idle keys go, and a key evicted then seen again gets a
/// fresh bucket, which is what it would have had anyway.
#[test]
fn only_idle_keys_are_evicted() {
    let clock = ManualClock::new();
    let limiter: KeyedRateLimiter<u32> = KeyedRateLimiter::builder(1.0)
        .burst(2)
        .max_keys(3)
        .clock(clock.clock())
        .build()
        .unwrap();
    for k in 0..3 {
        limiter.check_key_n(&k, 2).unwrap();
    }
    clock.advance(Duration::from_secs(2)); // all three refilled: idle
    limiter.check_key_n(&1, 2).unwrap(); // 1 busy again
    for new in 10..12 {
        limiter.check_key(&new).unwrap();
    }
    // 0 and 2 were idle and made room for 10 and 11; 1, 10 and 11 are busy and
    // fill the budget, so one more new key is refused.
    assert!(matches!(
        limiter.check_key(&12),
        Err(RateLimitError::KeyBudgetExhausted { max_keys: 3, .. })
    ));
    // 1 was busy, so it was kept: its bucket is still empty.
    assert!(matches!(
        limiter.check_key(&1),
        Err(RateLimitError::RateLimited { .. })
    ));
}

/// Many threads, known and new keys and concurrent `retain_recent`, in phases:
/// between phases the clock moves a second (every held key becomes idle, so new
/// keys must evict to get in); within a phase it stands still, so a key admitted
/// in the phase stays busy, cannot be evicted, and holds its unit of the budget
/// to the end of the phase. The test's own observation: the distinct keys it saw
/// admitted in one phase never exceed the budget. No check panics and every
/// refusal has a retry-after above zero. Bounded in iterations.
#[test]
#[cfg_attr(miri, ignore)] // too slow under miri
fn stress_keyed_budget_under_concurrent_new_and_known_keys() {
    const THREADS: u64 = 8;
    const MAX_KEYS: usize = 64;
    const PHASES: u64 = 20;
    let iterations = 250;
    let clock = ManualClock::new();
    let limiter: KeyedRateLimiter<u64> = KeyedRateLimiter::builder(1_000.0)
        .burst(3)
        .max_keys(MAX_KEYS)
        .clock(clock.clock())
        .build()
        .unwrap();
    for phase in 0..PHASES {
        let admitted = Mutex::new(HashSet::new());
        let barrier = Barrier::new(THREADS as usize);
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let (limiter, admitted, barrier) = (&limiter, &admitted, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    for i in 0..iterations {
                        let key = if i % 3 == 0 {
                            (phase * THREADS + t) * 1_000_000 + i
                        } else {
                            i % 16
                        };
                        match limiter.check_key(&key) {
                            Ok(()) => {
                                admitted.lock().unwrap().insert(key);
                            }
                            Err(e) => {
                                let retry = e.retry_after().expect("keyed refusals carry a wait");
                                assert!(retry > Duration::ZERO, "{e:?}");
                            }
                        }
                        if t == 0 && i % 51 == 0 {
                            limiter.retain_recent();
                        }
                    }
                });
            }
        });
        let admitted = admitted.into_inner().unwrap().len();
        assert!(
            admitted <= MAX_KEYS,
            "phase {phase}: {admitted} distinct keys admitted at once, budget {MAX_KEYS}"
        );
        clock.advance(Duration::from_secs(1));
    }
    limiter.retain_recent();
    // The budget is whole again, no unit leaked either way: exactly MAX_KEYS
    // fresh keys fit (the test counts them), and the next one is refused.
    for k in 0..MAX_KEYS as u64 {
        limiter.check_key(&(u64::MAX - k)).unwrap();
    }
    assert!(matches!(
        limiter.check_key(&0),
        Err(RateLimitError::KeyBudgetExhausted { .. })
    ));
}

/// A key whose `Clone` panics (user code) mid-insert leaves the budget whole.
#[test]
fn a_panicking_key_clone_does_not_leak_a_unit_of_the_budget() {
    #[derive(PartialEq, Eq, Hash, Debug)]
    struct Key(u32);
    impl Clone for Key {
        fn clone(&self) -> Self {
            assert!(self.0 != 13, "unlucky key");
            Key(self.0)
        }
    }
    let clock = ManualClock::new();
    let limiter: KeyedRateLimiter<Key> = KeyedRateLimiter::builder(1.0)
        .max_keys(2)
        .clock(clock.clock())
        .build()
        .unwrap();
    for _ in 0..3 {
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = limiter.check_key(&Key(13));
        }));
        assert!(panicked.is_err());
    }
    assert_eq!(limiter.len(), 0);
    limiter.check_key(&Key(1)).unwrap();
    limiter.check_key(&Key(2)).unwrap();
}

/// A key type whose `Hash` disagrees with its `Eq` once its salt changes (a user
/// bug): the eviction probe cannot find the held key in the map. The limiter must
/// neither panic nor lose that key's unit of the budget: a new key still fits.
#[test]
fn an_inconsistent_key_hash_neither_panics_nor_leaks_a_unit_of_the_budget() {
    use std::hash::{Hash, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    #[derive(Clone, Debug)]
    struct Fickle {
        id: u32,
        salt: Arc<AtomicU64>,
    }
    impl PartialEq for Fickle {
        fn eq(&self, other: &Self) -> bool {
            self.id == other.id
        }
    }
    impl Eq for Fickle {}
    impl Hash for Fickle {
        fn hash<H: Hasher>(&self, state: &mut H) {
            self.id.hash(state);
            self.salt.load(Ordering::SeqCst).hash(state);
        }
    }
    let clock = ManualClock::new();
    let limiter: KeyedRateLimiter<Fickle> = KeyedRateLimiter::builder(1.0)
        .max_keys(1)
        .clock(clock.clock())
        .build()
        .unwrap();
    let salt = Arc::new(AtomicU64::new(0));
    limiter
        .check_key(&Fickle {
            id: 1,
            salt: Arc::clone(&salt),
        })
        .unwrap();
    // The held key's hash changes under the map's feet.
    salt.store(1, Ordering::SeqCst);
    clock.advance(Duration::from_secs(2)); // it would be idle anyway
    let newcomer = Fickle {
        id: 2,
        salt: Arc::new(AtomicU64::new(0)),
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        limiter.check_key(&newcomer)
    }));
    let result = result.expect("a user's inconsistent Hash/Eq must not panic the limiter");
    assert_eq!(
        result,
        Ok(()),
        "the lost key's unit of the budget is given back"
    );
}

/// `state_of` a key not held, at a full key budget whose keys are busy, reports
/// what `check_key` would use: the shared overflow bucket's state, or (under
/// `Reject`) nothing remaining. Not a full bucket the key could never get.
#[test]
fn state_of_a_new_key_at_a_full_budget_is_what_check_key_would_use() {
    let clock = ManualClock::new();
    let build = |policy| {
        KeyedRateLimiter::builder(1.0)
            .burst(3)
            .max_keys(1)
            .overflow(policy)
            .clock(clock.clock())
            .build::<&str>()
            .unwrap()
    };

    let reject = build(OverflowPolicy::Reject);
    assert_eq!(reject.state_of(&"b").remaining, 3, "room in the budget");
    reject.check_key(&"a").unwrap(); // `a` is busy now: nothing to evict.
    let state = reject.state_of(&"b");
    assert_eq!(state.remaining, 0, "{state:?}");
    assert!(state.reset_after > Duration::ZERO, "{state:?}");
    assert!(matches!(
        reject.check_key(&"b"),
        Err(RateLimitError::KeyBudgetExhausted { .. })
    ));

    let shared = build(OverflowPolicy::SharedBucket);
    shared.check_key(&"a").unwrap();
    shared.check_key(&"b").unwrap(); // served by the overflow bucket
    let state = shared.state_of(&"c");
    assert_eq!(state.remaining, 2, "{state:?}");
    assert_eq!(state, shared.state_of(&"b"));
    assert_eq!(shared.check_key_state(&"c").state.remaining, 1);
    // The held key still reports its own bucket.
    assert_eq!(shared.state_of(&"a").remaining, 2);
}
