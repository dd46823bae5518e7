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

/// At a full budget of 100,000 busy keys, each refused new key examines a bounded
/// number of held keys, not all of them. Observed through the limiter's
/// `#[doc(hidden)]` count of keys examined for idleness: no behavioural check can
/// tell a scan of write-locked shards from a probe without timing it, and timings
/// are not asserted in tests.
#[test]
fn a_refused_new_key_at_the_budget_does_not_scan_every_key() {
    let max_keys = if cfg!(miri) { 1_000 } else { 100_000 };
    let refusals = if cfg!(miri) { 100 } else { 10_000_u64 };
    let clock = ManualClock::new();
    let limiter: KeyedRateLimiter<u64> = KeyedRateLimiter::builder(1.0)
        .max_keys(max_keys)
        .clock(clock.clock())
        .build()
        .unwrap();
    for k in 0..max_keys as u64 {
        limiter.check_key(&k).unwrap();
    }
    let before = limiter.keys_examined();
    for i in 0..refusals {
        let err = limiter.check_key(&(u64::MAX - i)).unwrap_err();
        assert!(
            matches!(err, RateLimitError::KeyBudgetExhausted { .. }),
            "{err:?}"
        );
        let examined = limiter.keys_examined() - before;
        assert!(
            examined <= (i + 1) * 8,
            "{examined} keys examined for {} refused new keys",
            i + 1
        );
    }
    // A known key is still served (its bucket refills at 1 per second).
    clock.advance(Duration::from_secs(1));
    limiter.check_key(&7).unwrap();
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
    assert!(limiter.len() <= 3);
    // 1 was busy, so it was kept: its bucket is still empty.
    assert!(matches!(
        limiter.check_key(&1),
        Err(RateLimitError::RateLimited { .. })
    ));
}

/// Many threads, known and new keys, a moving clock and concurrent
/// `retain_recent`: the key set never exceeds the budget, no check panics, and
/// every refusal has a retry-after above zero. Bounded in iterations.
#[test]
#[cfg_attr(miri, ignore)] // too slow under miri
fn stress_keyed_budget_under_concurrent_new_and_known_keys() {
    const THREADS: u64 = 8;
    const MAX_KEYS: usize = 64;
    let iterations = 5_000;
    let clock = ManualClock::new();
    let limiter: Arc<KeyedRateLimiter<u64>> = Arc::new(
        KeyedRateLimiter::builder(1_000.0)
            .burst(3)
            .max_keys(MAX_KEYS)
            .clock(clock.clock())
            .build()
            .unwrap(),
    );
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (limiter, clock) = (Arc::clone(&limiter), clock.clone());
            std::thread::spawn(move || {
                for i in 0..iterations {
                    let key = if i % 3 == 0 {
                        t * 1_000_000 + i
                    } else {
                        i % 16
                    };
                    if let Err(e) = limiter.check_key(&key) {
                        let retry = e.retry_after().expect("keyed refusals carry a wait");
                        assert!(retry > Duration::ZERO, "{e:?}");
                    }
                    assert!(limiter.len() <= MAX_KEYS, "{} keys", limiter.len());
                    if i % 97 == 0 {
                        clock.advance(Duration::from_micros(700));
                    }
                    if t == 0 && i % 501 == 0 {
                        limiter.retain_recent();
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert!(limiter.len() <= MAX_KEYS);
    clock.advance(Duration::from_secs(1));
    limiter.retain_recent();
    assert_eq!(limiter.len(), 0, "every key is idle a second later");
    // The budget is whole again, no unit leaked either way: exactly MAX_KEYS
    // fresh keys fit, and the next one is refused.
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
