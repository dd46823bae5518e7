//! Window limiters at the edges of their arithmetic: limits, requests and windows
//! near the top of their types never panic, never wrap, and never admit more than
//! the limit per window (checked against a reference count of admitted units).
#![cfg(not(loom))]

use std::collections::HashMap;
use std::time::Duration;

use heijunka_backpressure::{FixedWindow, RateLimitError, RateLimiter, SlidingLog, SlidingWindow};
use heijunka_core::{Instant, ManualClock};
use proptest::prelude::*;

#[test]
fn a_fixed_window_at_u32_max_neither_panics_nor_wraps() {
    let clock = ManualClock::new();
    let limiter = FixedWindow::new(u32::MAX, Duration::from_secs(1), clock.clock()).unwrap();
    limiter.check_n(1).unwrap();
    // 1 + u32::MAX units would overflow a u32 count: it must be refused, until the
    // next window, not admitted by wrapping (release) or panic (debug).
    assert_eq!(
        limiter.check_n(u32::MAX),
        Err(RateLimitError::RateLimited {
            retry_after: Duration::from_secs(1)
        })
    );
    limiter.check_n(u32::MAX - 1).unwrap();
    assert!(
        limiter.check_n(1).is_err(),
        "the window holds u32::MAX units"
    );
    clock.advance(Duration::from_secs(1));
    limiter.check_n(u32::MAX).unwrap();
}

#[test]
fn a_sliding_window_at_u32_max_neither_panics_nor_wraps() {
    let clock = ManualClock::new();
    let limiter = SlidingWindow::new(u32::MAX, Duration::from_secs(1), clock.clock()).unwrap();
    limiter.check_n(1).unwrap();
    let no = limiter.check_n(u32::MAX).unwrap_err();
    assert!(
        no.retry_after().is_some_and(|d| d > Duration::ZERO),
        "{no:?}"
    );
    limiter.check_n(u32::MAX - 1).unwrap();
    assert!(limiter.check_n(1).is_err());
}

#[test]
fn more_than_the_limit_is_never_possible_for_every_window_limiter() {
    let clock = ManualClock::new();
    let w = Duration::from_secs(1);
    let never = RateLimitError::InsufficientCapacity {
        requested: 4,
        capacity: 3,
    };
    let fixed = FixedWindow::new(3, w, clock.clock()).unwrap();
    let sliding = SlidingWindow::new(3, w, clock.clock()).unwrap();
    let log = SlidingLog::new(3, w, clock.clock()).unwrap();
    assert_eq!(fixed.check_n(4), Err(never));
    assert_eq!(sliding.check_n(4), Err(never));
    assert_eq!(log.check_n(4), Err(never));
    assert_eq!(
        never.retry_after(),
        None,
        "never possible has no retry-after"
    );
}

#[test]
fn windows_and_clocks_at_the_end_of_time_give_finite_honest_retry_afters() {
    // A window of ~584 years and a clock far along: `(index + 1) · w` and
    // `leaving + w` overflow u64 nanoseconds.
    let start = Instant::ZERO + Duration::from_nanos(u64::MAX - 10);
    let clock = ManualClock::starting_at(start);
    let w = Duration::from_nanos(u64::MAX / 2 + 7);
    for limiter in [
        Box::new(FixedWindow::new(2, w, clock.clock()).unwrap()) as Box<dyn RateLimiter>,
        Box::new(SlidingWindow::new(2, w, clock.clock()).unwrap()),
        Box::new(SlidingLog::new(2, w, clock.clock()).unwrap()),
    ] {
        limiter.check_n(2).unwrap();
        let retry = limiter.check().unwrap_err().retry_after().unwrap();
        assert!(retry > Duration::ZERO && retry < Duration::MAX, "{retry:?}");
    }
}

/// (advance in ns, n) with n and the advance drawn near the top of their types.
fn edgy_steps() -> impl Strategy<Value = Vec<(u64, u32)>> {
    let n = prop_oneof![
        1_u32..4,
        (u32::MAX - 4)..=u32::MAX,
        (u32::MAX / 2 - 2)..(u32::MAX / 2 + 2),
        any::<u32>(),
    ];
    let advance = prop_oneof![0_u64..3, 0_u64..2_000_000_000, Just(1_000_000_000_u64)];
    prop::collection::vec((advance, n), 1..60)
}

fn edgy_limit() -> impl Strategy<Value = u32> {
    prop_oneof![
        1_u32..4,
        (u32::MAX - 4)..=u32::MAX,
        any::<u32>().prop_map(|l| l.max(1))
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: if cfg!(miri) { 4 } else { 512 }, ..ProptestConfig::default() })]

    /// Fixed and sliding windows: per fixed window the admitted units (summed in
    /// u64 by the test) never exceed the limit; `n > limit` is never possible; a
    /// refusal's retry-after is above zero.
    #[test]
    fn windows_never_admit_more_than_the_limit_near_u32_max(
        steps in edgy_steps(),
        limit in edgy_limit(),
        window_ns in prop_oneof![1_u64..5, 1_000_000_000_u64..1_000_000_001],
    ) {
        let clock = ManualClock::new();
        let w = Duration::from_nanos(window_ns);
        let fixed = FixedWindow::new(limit, w, clock.clock()).unwrap();
        let sliding = SlidingWindow::new(limit, w, clock.clock()).unwrap();
        let mut admitted: [HashMap<u64, u64>; 2] = Default::default();
        for (advance, n) in steps {
            clock.advance(Duration::from_nanos(advance));
            let now = clock.now().as_nanos();
            for (i, limiter) in [&fixed as &dyn RateLimiter, &sliding].into_iter().enumerate() {
                match limiter.check_n(n) {
                    Ok(()) => {
                        prop_assert!(n <= limit);
                        let sum = admitted[i].entry(now / window_ns).or_default();
                        *sum += u64::from(n);
                        prop_assert!(*sum <= u64::from(limit), "limiter {}: {} > {}", i, sum, limit);
                    }
                    Err(RateLimitError::InsufficientCapacity { requested, capacity }) => {
                        prop_assert!(n > limit);
                        prop_assert_eq!((requested, capacity), (n, limit));
                    }
                    Err(RateLimitError::RateLimited { retry_after }) => {
                        prop_assert!(n <= limit);
                        prop_assert!(retry_after > Duration::ZERO);
                    }
                    Err(other) => prop_assert!(false, "unexpected {:?}", other),
                }
            }
        }
        // The sliding estimate also bounds the previous window's carry-over: over
        // any two adjacent fixed windows at most 2·limit (a weak, independent check).
        for (k, v) in &admitted[1] {
            let next = admitted[1].get(&(k + 1)).copied().unwrap_or(0);
            prop_assert!(v + next <= 2 * u64::from(limit));
        }
    }
}
