//! Rate limiters against reference models, with the manual clock.
#![cfg(not(loom))]

use std::time::Duration;

use heijunka_backpressure::{
    FixedWindow, Gcra, KeyedRateLimiter, OverflowPolicy, RateLimitError, RateLimiter, SlidingLog,
    SlidingWindow, until_ready,
};
use heijunka_core::cancel::{Outcome, Polled, cancel_points};
use heijunka_core::{ManualClock, Rejection};
use proptest::prelude::*;

/// One step of a scenario: advance the clock, then ask for `n` units.
fn steps() -> impl Strategy<Value = Vec<(u64, u32)>> {
    prop::collection::vec((0_u64..400, 1_u32..=3), 1..120)
}

fn cases() -> ProptestConfig {
    ProptestConfig {
        cases: if cfg!(miri) { 4 } else { 256 },
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(cases())]

    /// GCRA against a token bucket with integer credit: same decision, same
    /// retry-after, every step; and in every interval, no more than the rule allows.
    #[test]
    fn gcra_matches_a_token_bucket(steps in steps(), per_second in 1_u32..50, burst in 1_u32..6) {
        let clock = ManualClock::new();
        let limiter = Gcra::builder(f64::from(per_second)).burst(burst).clock(clock.clock()).build().unwrap();
        let t = 1_000_000_000 / u64::from(per_second); // ns per unit, truncated as documented
        let capacity = t * u64::from(burst);
        let mut credit = capacity; // a full bucket, in nanoseconds of credit
        let mut last = 0_u64;
        let mut admitted: Vec<(u64, u32)> = Vec::new();
        for (ms, n) in steps {
            clock.advance(Duration::from_millis(ms));
            let now = clock.now().as_nanos();
            credit = (credit + (now - last)).min(capacity);
            last = now;
            let need = t * u64::from(n);
            let got = limiter.check_n(n);
            if n > burst {
                prop_assert_eq!(got, Err(RateLimitError::InsufficientCapacity { requested: n, capacity: burst }));
            } else if credit >= need {
                prop_assert_eq!(got, Ok(()));
                credit -= need;
                admitted.push((now, n));
            } else {
                prop_assert_eq!(got, Err(RateLimitError::RateLimited { retry_after: Duration::from_nanos(need - credit) }));
            }
        }
        // Upper bound: in any [a, b], admitted units <= burst + (b - a) / t.
        for i in 0..admitted.len() {
            let mut units = 0_u64;
            for &(time, n) in &admitted[i..] {
                units += u64::from(n);
                let span = time - admitted[i].0;
                prop_assert!(units <= u64::from(burst) + span / t, "{} units in {} ns", units, span);
            }
        }
    }

    /// Fixed window against per-window counts.
    #[test]
    fn fixed_window_matches_per_window_counts(steps in steps(), limit in 1_u32..8, window_ms in 50_u64..1000) {
        let clock = ManualClock::new();
        let limiter = FixedWindow::new(limit, Duration::from_millis(window_ms), clock.clock()).unwrap();
        let w = window_ms * 1_000_000;
        let (mut window, mut used) = (0_u64, 0_u32);
        for (ms, n) in steps {
            clock.advance(Duration::from_millis(ms));
            let now = clock.now().as_nanos();
            if now / w != window { window = now / w; used = 0; }
            let got = limiter.check_n(n);
            if n > limit {
                prop_assert!(matches!(got, Err(RateLimitError::InsufficientCapacity { .. })), "expected insufficient capacity");
            } else if used + n <= limit {
                prop_assert_eq!(got, Ok(()));
                used += n;
            } else {
                prop_assert_eq!(got, Err(RateLimitError::RateLimited { retry_after: Duration::from_nanos((window + 1) * w - now) }));
            }
        }
    }

    /// The exact log against a list of every admitted unit: never more than `limit`
    /// in any window (now - w, now], and admitted whenever that rule allows.
    #[test]
    fn sliding_log_is_exact(steps in steps(), limit in 1_u32..8, window_ms in 50_u64..1000) {
        let clock = ManualClock::new();
        let limiter = SlidingLog::new(limit, Duration::from_millis(window_ms), clock.clock()).unwrap();
        let w = window_ms * 1_000_000;
        let mut all: Vec<u64> = Vec::new();
        for (ms, n) in steps {
            clock.advance(Duration::from_millis(ms));
            let now = clock.now().as_nanos();
            let in_window = all.iter().filter(|&&t| t + w > now).count() as u32;
            let got = limiter.check_n(n);
            if n > limit {
                prop_assert!(got.is_err());
            } else if in_window + n <= limit {
                prop_assert_eq!(got, Ok(()));
                all.extend(std::iter::repeat_n(now, n as usize));
            } else {
                let retry = got.unwrap_err().retry_after().unwrap();
                // After the retry-after it fits, and not a nanosecond before.
                let fits_at = |at: u64| all.iter().filter(|&&t| t + w > at).count() as u32 + n <= limit;
                prop_assert!(fits_at(now + retry.as_nanos() as u64));
                prop_assert!(!fits_at(now + retry.as_nanos() as u64 - 1));
            }
        }
    }

    /// The sliding-window counter against its formula, computed independently in
    /// floating point; its retry-after is when the formula first admits.
    #[test]
    fn sliding_window_matches_its_formula(steps in steps(), limit in 1_u32..8, window_ms in 50_u64..1000) {
        let clock = ManualClock::new();
        let limiter = SlidingWindow::new(limit, Duration::from_millis(window_ms), clock.clock()).unwrap();
        let w = window_ms * 1_000_000;
        let mut counts: std::collections::HashMap<u64, u32> = Default::default();
        let estimate = |counts: &std::collections::HashMap<u64, u32>, at: u64, extra: u32| {
            let k = at / w;
            let prev = if k == 0 { 0 } else { *counts.get(&(k - 1)).unwrap_or(&0) };
            let cur = *counts.get(&k).unwrap_or(&0) + extra;
            f64::from(prev) * ((w - at % w) as f64 / w as f64) + f64::from(cur)
        };
        for (ms, n) in steps {
            clock.advance(Duration::from_millis(ms));
            let now = clock.now().as_nanos();
            let got = limiter.check_n(n);
            let e = estimate(&counts, now, n);
            if n > limit {
                prop_assert!(got.is_err());
            } else if e <= f64::from(limit) + 1e-9 {
                prop_assert_eq!(got, Ok(()), "estimate {}", e);
                *counts.entry(now / w).or_default() += n;
            } else {
                prop_assert!(e > f64::from(limit) - 1e-9);
                let retry = got.unwrap_err().retry_after().unwrap().as_nanos() as u64;
                prop_assert!(estimate(&counts, now + retry, n) <= f64::from(limit) + 1e-6, "not admitted after retry {}", retry);
            }
        }
    }
}

proptest! {
    #![proptest_config(cases())]

    /// Every limiter's refusal: a retry-after above zero and finite, and after
    /// waiting exactly that (no other traffic) the same request is admitted; a
    /// request above the limit is "never possible", with no retry-after.
    #[test]
    fn every_limiter_refuses_with_an_honest_retry_after(
        steps in steps(), limit in 1_u32..6, window_ms in 50_u64..1000, which in 0_usize..4,
    ) {
        let clock = ManualClock::new();
        let w = Duration::from_millis(window_ms);
        let limiter: Box<dyn RateLimiter> = match which {
            0 => Box::new(Gcra::builder(1000.0 / window_ms as f64).burst(limit).clock(clock.clock()).build().unwrap()),
            1 => Box::new(FixedWindow::new(limit, w, clock.clock()).unwrap()),
            2 => Box::new(SlidingWindow::new(limit, w, clock.clock()).unwrap()),
            _ => Box::new(SlidingLog::new(limit, w, clock.clock()).unwrap()),
        };
        for (ms, n) in steps {
            clock.advance(Duration::from_millis(ms));
            match limiter.check_n(n) {
                Ok(()) => {}
                Err(RateLimitError::RateLimited { retry_after }) => {
                    prop_assert!(retry_after > Duration::ZERO);
                    prop_assert!(retry_after <= w * (limit + 1), "{:?}", retry_after);
                    clock.advance(retry_after);
                    prop_assert_eq!(limiter.check_n(n), Ok(()), "not admitted after {:?}", retry_after);
                }
                Err(e @ RateLimitError::InsufficientCapacity { .. }) => {
                    prop_assert!(n > limit);
                    prop_assert_eq!(e.retry_after(), None);
                    prop_assert_eq!(e.reason(), None);
                }
                Err(other) => prop_assert!(false, "unexpected {:?}", other),
            }
        }
    }
}

/// `until_ready` dropped after k polls: a dropped wait consumed nothing (the
/// limiter admits at the same time as if it had never waited); one that
/// completed took exactly its unit.
#[test]
fn cancelled_until_ready_consumes_nothing() {
    let covered = cancel_points(10, |k| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let _g = rt.enter();
        let manual = ManualClock::new();
        let limiter = Gcra::builder(2.0).clock(manual.clock()).build().unwrap();
        limiter.check().unwrap(); // empty until 500 ms
        let outcome = Polled::new(until_ready(&limiter, 1)).drop_after_with(k, |i| {
            if i >= 1 {
                manual.advance(Duration::from_millis(250));
                rt.block_on(tokio::time::advance(Duration::from_millis(250)));
            }
        });
        let now = manual.now().as_nanos();
        match outcome {
            Outcome::Completed { ref output, .. } => {
                assert_eq!(*output, Ok(()));
                assert_eq!(now, 500_000_000, "admitted at its retry-after");
                assert_eq!(
                    limiter.check(),
                    Err(RateLimitError::RateLimited {
                        retry_after: Duration::from_millis(500)
                    }),
                    "the waiter took the unit"
                );
            }
            Outcome::Cancelled { .. } => {
                manual.advance(Duration::from_nanos(500_000_000 - now));
                assert_eq!(limiter.check(), Ok(()), "k = {k}: the unit is still there");
            }
        }
        outcome
    });
    assert_eq!(covered, 3, "check, sleep, check again");
}

#[test]
fn bad_rates_and_bursts_are_config_errors() {
    assert_eq!(
        Gcra::builder(0.0).build().unwrap_err().to_string(),
        "rate must be a finite number greater than 0, got 0.0"
    );
    assert_eq!(Gcra::builder(-1.0).build().unwrap_err().field(), "rate");
    assert_eq!(Gcra::builder(f64::NAN).build().unwrap_err().field(), "rate");
    assert_eq!(
        Gcra::builder(10.0)
            .burst(0)
            .build()
            .unwrap_err()
            .to_string(),
        "burst must be at least 1, got 0"
    );
    let clock = ManualClock::new().clock();
    assert_eq!(
        FixedWindow::new(0, Duration::from_secs(1), clock.clone())
            .unwrap_err()
            .field(),
        "limit"
    );
    assert_eq!(
        SlidingWindow::new(1, Duration::ZERO, clock.clone())
            .unwrap_err()
            .field(),
        "window"
    );
    assert_eq!(
        KeyedRateLimiter::builder(1.0)
            .max_keys(0)
            .build::<u32>()
            .unwrap_err()
            .field(),
        "max_keys"
    );
}

#[tokio::test(start_paused = true)]
async fn until_ready_waits_exactly_the_retry_after() {
    let manual = ManualClock::new();
    let limiter = Gcra::builder(2.0).clock(manual.clock()).build().unwrap();
    limiter.check().unwrap();
    let waiter = tokio::spawn({
        let limiter = std::sync::Arc::new(limiter);
        async move {
            until_ready(&*limiter, 1).await.unwrap();
            tokio::time::Instant::now()
        }
    });
    let start = tokio::time::Instant::now();
    tokio::task::yield_now().await;
    // Move both clocks: the limiter's and tokio's timer.
    manual.advance(Duration::from_millis(500));
    tokio::time::advance(Duration::from_millis(500)).await;
    let done = waiter.await.unwrap();
    assert_eq!(done - start, Duration::from_millis(500));
    let l = Gcra::builder(1.0)
        .burst(2)
        .clock(manual.clock())
        .build()
        .unwrap();
    assert_eq!(
        until_ready(&l, 3).await,
        Err(RateLimitError::InsufficientCapacity {
            requested: 3,
            capacity: 2
        })
    );
}

#[test]
fn keyed_limits_are_per_key_and_the_key_set_is_bounded() {
    let clock = ManualClock::new();
    let limiter: KeyedRateLimiter<&str> = KeyedRateLimiter::builder(1.0)
        .burst(1)
        .max_keys(2)
        .clock(clock.clock())
        .build()
        .unwrap();
    limiter.check_key(&"a").unwrap();
    limiter.check_key(&"b").unwrap();
    assert!(limiter.check_key(&"a").is_err(), "a's own bucket is empty");
    let err = limiter.check_key(&"c").unwrap_err();
    assert_eq!(
        err,
        RateLimitError::KeyBudgetExhausted {
            max_keys: 2,
            retry_after: Duration::from_secs(1)
        }
    );
    assert!(matches!(err.reason(), Some(Rejection::RateLimited { .. })));
    // Once a's and b's buckets refill, they are idle and make room.
    clock.advance(Duration::from_secs(1));
    limiter.check_key(&"c").unwrap();
    assert_eq!(limiter.len(), 1, "idle keys were evicted");
    limiter.check_key(&"a").unwrap();
    clock.advance(Duration::from_millis(500));
    limiter.retain_recent();
    assert_eq!(limiter.len(), 2, "recent keys are kept");
}

#[test]
fn keyed_overflow_bucket_is_shared_by_keys_beyond_the_budget() {
    let clock = ManualClock::new();
    let limiter: KeyedRateLimiter<i32> = KeyedRateLimiter::builder(1.0)
        .burst(2)
        .max_keys(1)
        .overflow(OverflowPolicy::SharedBucket)
        .clock(clock.clock())
        .build()
        .unwrap();
    limiter.check_key(&1).unwrap();
    limiter.check_key(&2).unwrap(); // overflow bucket
    limiter.check_key(&3).unwrap(); // overflow bucket
    assert!(limiter.check_key(&4).is_err(), "the shared bucket is empty");
    assert_eq!(limiter.len(), 1);
}

#[test]
fn a_sliding_log_needs_no_more_memory_than_its_limit() {
    let clock = ManualClock::new();
    let log = SlidingLog::new(3, Duration::from_secs(1), clock.clock()).unwrap();
    for _ in 0..1000 {
        let _ = log.check();
        clock.advance(Duration::from_millis(7));
    }
    // Behavioural check of the bound: it still admits exactly 3 per second.
    clock.advance(Duration::from_secs(2));
    assert!(log.check_n(3).is_ok());
    assert!(log.check().is_err());
    assert!(SlidingLog::new(2_000_000, Duration::from_secs(1), clock.clock()).is_err());
}
