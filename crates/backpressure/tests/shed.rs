//! `LoadShedder`: the first signal that fires gives the reason; admitting asks all.
#![cfg(not(loom))]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

use heijunka_backpressure::{
    AdaptiveLimit, Aimd, BoundedQueue, ConcurrencyLimit, Gcra, LoadShedder, from_fn,
};
use heijunka_core::{ManualClock, PressureLevel, Rejection};

#[test]
fn first_failing_signal_gives_the_reason() {
    let queue = Arc::new(BoundedQueue::new(10).unwrap());
    let limit = ConcurrencyLimit::new(2).unwrap();
    let memory = Arc::new(AtomicU8::new(0));
    let m = Arc::clone(&memory);
    let shedder = LoadShedder::builder()
        .signal(Arc::clone(&queue))
        .signal(limit.clone())
        .signal(from_fn(move || {
            if m.load(Ordering::Relaxed) >= 2 {
                Err(Rejection::MemoryPressure {
                    level: PressureLevel::Critical,
                })
            } else {
                Ok(())
            }
        }))
        .build();
    assert_eq!(shedder.check(), Ok(()));

    memory.store(2, Ordering::Relaxed);
    assert_eq!(
        shedder.check(),
        Err(Rejection::MemoryPressure {
            level: PressureLevel::Critical
        })
    );

    let _a = limit.try_acquire().unwrap();
    let _b = limit.try_acquire().unwrap();
    assert_eq!(shedder.check(), Err(Rejection::AtCapacity { limit: 2 }));

    for i in 0..9 {
        queue.try_push(i).unwrap();
    }
    // All three fire now: the queue was added first.
    assert_eq!(shedder.check(), Err(Rejection::QueueFull { capacity: 10 }));
    assert_eq!(shedder.stats().rejected, 3);
    assert_eq!(shedder.stats().signals, 3);
}

#[test]
fn later_signals_are_not_asked_once_one_fires() {
    let asked = Arc::new(AtomicBool::new(false));
    let a = Arc::clone(&asked);
    let shedder = LoadShedder::builder()
        .signal(from_fn(|| Err(Rejection::ShuttingDown)))
        .signal(from_fn(move || {
            a.store(true, Ordering::Relaxed);
            Ok(())
        }))
        .build();
    assert_eq!(shedder.check(), Err(Rejection::ShuttingDown));
    assert!(!asked.load(Ordering::Relaxed));
}

#[test]
fn rate_limiters_and_adaptive_limits_are_signals() {
    let clock = ManualClock::new();
    let rate = Gcra::builder(10.0)
        .burst(1)
        .clock(clock.clock())
        .build()
        .unwrap();
    let adaptive = AdaptiveLimit::builder(
        Aimd::builder()
            .initial_limit(1)
            .min_limit(1)
            .build()
            .unwrap(),
    )
    .build()
    .unwrap();
    let shedder = LoadShedder::builder()
        .signal(adaptive.clone())
        .signal(rate)
        .build();
    assert_eq!(shedder.check(), Ok(())); // takes the rate token
    assert_eq!(
        shedder.check(),
        Err(Rejection::RateLimited {
            retry_after: Duration::from_millis(100)
        })
    );
    let held = adaptive.try_acquire().unwrap();
    assert_eq!(shedder.check(), Err(Rejection::AtCapacity { limit: 1 }));
    drop(held);
    clock.advance(Duration::from_millis(100));
    assert_eq!(shedder.check(), Ok(()));
    // A shedder is a signal too, so shedders nest.
    assert_eq!(
        LoadShedder::builder().signal(shedder).build().check(),
        Err(Rejection::RateLimited {
            retry_after: Duration::from_millis(100)
        })
    );
}
