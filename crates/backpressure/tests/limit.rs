//! `ConcurrencyLimit`: rejections, weights, waiting forms, close, and the stress
//! invariant (never more than the limit held, every permit returned).
#![cfg(not(loom))]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use heijunka_backpressure::{AcquireError, ConcurrencyLimit};
use heijunka_core::Rejection;

#[test]
fn bad_limits_are_config_errors() {
    assert_eq!(
        ConcurrencyLimit::new(0).unwrap_err().to_string(),
        "permits must be at least 1, got 0"
    );
    assert_eq!(
        ConcurrencyLimit::new(u32::MAX).unwrap_err().field(),
        "permits"
    );
}

#[test]
fn try_acquire_names_the_limit_and_weights_add_up() {
    let limit = ConcurrencyLimit::new(5).unwrap();
    let three = limit.try_acquire_many(3).unwrap();
    assert_eq!(three.weight(), 3);
    assert_eq!(limit.in_use(), 3);
    let err = limit.try_acquire_many(3).unwrap_err();
    assert_eq!(err.reason(), Some(Rejection::AtCapacity { limit: 5 }));
    assert_eq!(
        limit.try_acquire_many(6).unwrap_err(),
        AcquireError::WeightExceedsLimit {
            weight: 6,
            limit: 5
        }
    );
    let two = limit.try_acquire_many(2).unwrap();
    assert!(limit.try_acquire().is_err());
    drop(three);
    drop(two);
    assert_eq!(limit.available(), 5);
    assert_eq!(limit.stats().in_use, 0);
}

#[tokio::test(start_paused = true)]
async fn waiters_are_served_in_order_so_large_weights_are_not_starved() {
    let limit = ConcurrencyLimit::new(4).unwrap();
    let held = limit.try_acquire_many(3).unwrap();
    let big = tokio::spawn(limit.acquire_owned_future(4));
    tokio::task::yield_now().await;
    assert_eq!(limit.waiting(), 1);
    // One permit is free, but the big waiter is first in line: FIFO.
    assert!(limit.try_acquire().is_err());
    let small = tokio::spawn(limit.acquire_owned_future(1));
    tokio::task::yield_now().await;
    assert_eq!(limit.waiting(), 2);
    drop(held);
    let big = big.await.unwrap().unwrap();
    assert_eq!(big.weight(), 4);
    assert!(!small.is_finished());
    drop(big);
    assert_eq!(small.await.unwrap().unwrap().weight(), 1);
    assert_eq!(limit.waiting(), 0);
}

#[tokio::test(start_paused = true)]
async fn acquire_timeout_gives_up_with_timed_out() {
    let limit = ConcurrencyLimit::new(1).unwrap();
    let _held = limit.try_acquire().unwrap();
    let start = tokio::time::Instant::now();
    let err = limit
        .acquire_timeout(1, Duration::from_millis(250))
        .await
        .unwrap_err();
    assert_eq!(
        err.reason(),
        Some(Rejection::TimedOut {
            after: Duration::from_millis(250)
        })
    );
    assert_eq!(start.elapsed(), Duration::from_millis(250));
    assert_eq!(
        limit.waiting(),
        0,
        "a timed-out waiter is no longer counted"
    );
}

#[tokio::test(start_paused = true)]
async fn close_wakes_waiters_with_shutting_down() {
    let limit = ConcurrencyLimit::new(1).unwrap();
    let held = limit.try_acquire_owned(1).unwrap();
    let waiter = tokio::spawn(limit.acquire_owned_future(1));
    tokio::task::yield_now().await;
    limit.close();
    let err = waiter.await.unwrap().unwrap_err();
    assert_eq!(err.reason(), Some(Rejection::ShuttingDown));
    assert_eq!(
        limit.try_acquire().unwrap_err().reason(),
        Some(Rejection::ShuttingDown)
    );
    assert!(limit.is_closed());
    drop(held); // still valid, returned normally
}

#[test]
fn blocking_acquire_needs_no_runtime_and_times_out() {
    let limit = ConcurrencyLimit::new(1).unwrap();
    let held = limit.try_acquire_owned(1).unwrap();
    let waiter = {
        let limit = limit.clone();
        std::thread::spawn(move || limit.acquire_blocking(1).map(|p| p.weight()))
    };
    while limit.waiting() == 0 {
        std::thread::yield_now();
    }
    drop(held);
    assert_eq!(waiter.join().unwrap().unwrap(), 1);
    let _held = limit.try_acquire().unwrap();
    // Real time, but the wait is the behaviour under test and it is 1 ms.
    let err = limit
        .acquire_blocking_timeout(1, Duration::from_millis(1))
        .unwrap_err();
    assert!(matches!(err.reason(), Some(Rejection::TimedOut { .. })));
}

#[test]
#[cfg_attr(miri, ignore)] // thousands of thread-synchronised iterations: too slow under miri
fn stress_never_more_than_the_limit_and_every_permit_returns_even_on_panic() {
    const LIMIT: u32 = 3;
    let limit = ConcurrencyLimit::new(LIMIT).unwrap();
    let held = Arc::new(AtomicU32::new(0));
    let max_seen = Arc::new(AtomicU32::new(0));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (limit, held, max_seen) = (limit.clone(), held.clone(), max_seen.clone());
            std::thread::spawn(move || {
                for i in 0..2_000_u32 {
                    let weight = 1 + (i + t) % 2;
                    let permit = if i % 3 == 0 {
                        limit.acquire_blocking(weight).unwrap()
                    } else {
                        match limit.try_acquire_many(weight) {
                            Ok(p) => p,
                            Err(_) => continue,
                        }
                    };
                    let now = held.fetch_add(weight, Ordering::SeqCst) + weight;
                    max_seen.fetch_max(now, Ordering::SeqCst);
                    held.fetch_sub(weight, Ordering::SeqCst);
                    if t == 0 && i % 500 == 499 {
                        // Panic while holding the permit: it must still come back.
                        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            let _p = permit;
                            panic!("worker failed while holding a permit");
                        }));
                        assert!(r.is_err());
                    } else {
                        drop(permit);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(
        max_seen.load(Ordering::SeqCst) <= LIMIT,
        "held {} > {LIMIT}",
        max_seen.load(Ordering::SeqCst)
    );
    assert!(
        max_seen.load(Ordering::SeqCst) >= 2,
        "the stress never overlapped"
    );
    assert_eq!(limit.available(), LIMIT, "every permit returned");
}
