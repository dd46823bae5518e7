//! Metrics-only state: outcomes are counted exactly (successes on the lock-free
//! shard path, folded on `stats()` and on failures) and the state never changes.
#![cfg(not(loom))]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use heijunka_breaker::{CircuitBreaker, SlidingWindowType, State};
use heijunka_core::ManualClock;

#[test]
fn metrics_only_counts_concurrent_outcomes_exactly_and_never_trips() {
    const THREADS: u64 = 4;
    const CALLS: u64 = 5_000;
    for window in [SlidingWindowType::CountBased, SlidingWindowType::TimeBased] {
        let clock = ManualClock::new();
        let b = CircuitBreaker::builder()
            .sliding_window(
                window,
                if window == SlidingWindowType::TimeBased {
                    60
                } else {
                    100_000
                },
            )
            .minimum_number_of_calls(1)
            .failure_rate_threshold(0.01)
            .consecutive_failure_threshold(1)
            .clock(&clock)
            .build()
            .unwrap();
        b.metrics_only();
        let changes = Arc::new(AtomicU64::new(0));
        let sink = changes.clone();
        b.subscribe(move |_| {
            sink.fetch_add(1, Ordering::Relaxed);
        });
        // Counted by the test itself, not read back from the breaker.
        let (succeeded, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let (b, succeeded, failed) = (&b, &succeeded, &failed);
                s.spawn(move || {
                    for i in 0..CALLS {
                        // One call in 50 fails on one thread: enough to trip any
                        // non-metrics-only breaker at these thresholds.
                        let fail = t == 0 && i.is_multiple_of(50);
                        let r = b.call(|| if fail { Err(()) } else { Ok(()) });
                        match r {
                            Ok(()) => succeeded.fetch_add(1, Ordering::Relaxed),
                            Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                        };
                        if i.is_multiple_of(1_000) {
                            let _ = b.stats(); // folds concurrently with counting
                        }
                    }
                });
            }
        });
        let s = b.stats();
        let (succeeded, failed) = (
            succeeded.load(Ordering::Relaxed),
            failed.load(Ordering::Relaxed),
        );
        assert_eq!(succeeded + failed, THREADS * CALLS);
        assert_eq!(
            (s.calls, s.successful_calls, s.failed_calls),
            (succeeded + failed, succeeded, failed),
            "{window:?}: {s:?}"
        );
        assert_eq!(s.state, State::MetricsOnly);
        assert_eq!(b.state(), State::MetricsOnly);
        assert_eq!(
            changes.load(Ordering::Relaxed),
            0,
            "no state change in metrics-only"
        );
    }
}
