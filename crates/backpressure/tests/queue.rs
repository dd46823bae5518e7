//! `BoundedQueue`: watermarks, rejections that hand items back, waiting forms,
//! close-and-drain, and nothing lost or duplicated under concurrency.
#![cfg(not(loom))]

use std::collections::HashSet;
use std::time::Duration;

use heijunka_backpressure::BoundedQueue;
use heijunka_core::{PressureLevel, Rejection};

#[test]
fn bad_configuration_names_the_field() {
    assert_eq!(
        BoundedQueue::<u8>::new(0).unwrap_err().to_string(),
        "capacity must be at least 1, got 0"
    );
    let err = BoundedQueue::<u8>::builder(10)
        .warn_at(0.95)
        .build()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "warn_at must not exceed reject_at (0.9), got 0.95"
    );
    assert_eq!(
        BoundedQueue::<u8>::builder(10)
            .reject_at(1.5)
            .build()
            .unwrap_err()
            .field(),
        "reject_at"
    );
    assert_eq!(
        BoundedQueue::<u8>::builder(10)
            .warn_at(0.0)
            .build()
            .unwrap_err()
            .field(),
        "warn_at"
    );
}

#[test]
fn levels_follow_the_watermarks_and_crossings_are_counted_once() {
    let q = BoundedQueue::new(10).unwrap(); // warn 8, reject 9
    let s = q.stats();
    assert_eq!((s.warn_at, s.reject_at), (8, 9));
    for i in 0..7 {
        q.try_push(i).unwrap();
    }
    assert_eq!(q.pressure(), PressureLevel::Normal);
    q.try_push(7).unwrap();
    assert_eq!(q.pressure(), PressureLevel::Elevated);
    q.try_push(8).unwrap();
    assert_eq!(q.pressure(), PressureLevel::Critical);
    let err = q.try_push(9).unwrap_err();
    assert_eq!(err.reason(), Rejection::QueueFull { capacity: 10 });
    assert_eq!(err.into_inner(), 9);
    // Bounce around the reject mark: the level follows every move, but the length
    // never falls below either mark by the hysteresis margin (1 slot of 10), so
    // each mark is crossed only once.
    for _ in 0..3 {
        q.try_pop().unwrap();
        assert_eq!(q.pressure(), PressureLevel::Elevated);
        q.try_push(0).unwrap();
        assert_eq!(q.pressure(), PressureLevel::Critical);
    }
    let s = q.stats();
    assert_eq!(s.rejected, 1);
    assert_eq!(s.elevated_crossings, 1);
    assert_eq!(s.critical_crossings, 1);
    // Below 9 - 1 = 8, and back: a new critical crossing, still one elevated.
    q.try_pop().unwrap();
    q.try_pop().unwrap();
    q.try_push(0).unwrap();
    q.try_push(0).unwrap();
    assert_eq!(
        (q.stats().elevated_crossings, q.stats().critical_crossings),
        (1, 2)
    );
    while q.try_pop().is_some() {}
    for _ in 0..8 {
        q.try_push(1).unwrap();
    }
    assert_eq!(q.stats().elevated_crossings, 2);
}

#[tokio::test(start_paused = true)]
async fn push_fills_above_the_reject_mark_and_waits_only_when_full() {
    let q = BoundedQueue::builder(4)
        .warn_at(0.5)
        .reject_at(0.5)
        .build()
        .unwrap();
    q.try_push(1).unwrap();
    q.try_push(2).unwrap();
    assert!(q.try_push(3).is_err(), "try_push stops at the reject mark");
    q.push(3).await.unwrap();
    q.push(4).await.unwrap();
    assert_eq!(q.len(), 4);
    let waiting = tokio::spawn({
        let q = q.clone();
        async move { q.push(5).await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!waiting.is_finished(), "push waits while full");
    assert_eq!(q.pop().await, Some(1));
    waiting.await.unwrap().unwrap();
    let drained: Vec<_> = std::iter::from_fn(|| q.try_pop()).collect();
    assert_eq!(drained, [2, 3, 4, 5], "FIFO");
}

#[tokio::test(start_paused = true)]
async fn push_timeout_hands_the_item_back() {
    let q = BoundedQueue::new(1).unwrap();
    q.push("first").await.unwrap();
    let start = tokio::time::Instant::now();
    let err = q
        .push_timeout("second", Duration::from_millis(300))
        .await
        .unwrap_err();
    assert_eq!(
        err.reason(),
        Rejection::TimedOut {
            after: Duration::from_millis(300)
        }
    );
    assert_eq!(err.into_inner(), "second");
    assert_eq!(start.elapsed(), Duration::from_millis(300));
    assert_eq!(q.pop_timeout(Duration::from_secs(1)).await, Some("first"));
    assert_eq!(q.pop_timeout(Duration::from_secs(1)).await, None);
}

#[tokio::test(start_paused = true)]
async fn close_lets_consumers_drain_then_ends() {
    let q = BoundedQueue::new(8).unwrap();
    let consumer = tokio::spawn({
        let q = q.clone();
        async move {
            let mut got = Vec::new();
            while let Some(v) = q.pop().await {
                got.push(v);
            }
            got
        }
    });
    for i in 0..5 {
        q.push(i).await.unwrap();
    }
    q.close();
    assert_eq!(
        q.try_push(99).unwrap_err().reason(),
        Rejection::ShuttingDown
    );
    assert_eq!(q.push(99).await.unwrap_err().into_inner(), 99);
    assert_eq!(consumer.await.unwrap(), [0, 1, 2, 3, 4]);
    assert!(q.stats().closed);
}

#[tokio::test(start_paused = true)]
async fn close_wakes_a_blocked_producer_with_its_item() {
    let q = BoundedQueue::new(1).unwrap();
    q.push(1).await.unwrap();
    let producer = tokio::spawn({
        let q = q.clone();
        async move { q.push(2).await }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    q.close();
    let err = producer.await.unwrap().unwrap_err();
    assert_eq!(err.reason(), Rejection::ShuttingDown);
    assert_eq!(err.into_inner(), 2);
    assert_eq!(q.pop().await, Some(1), "queued items still drain");
    assert_eq!(q.pop().await, None);
}

#[test]
fn concurrent_producers_and_consumers_lose_and_duplicate_nothing() {
    let per_producer: u64 = if cfg!(miri) { 50 } else { 20_000 };
    let q = BoundedQueue::builder(16).reject_at(0.9).build().unwrap();
    let producers: Vec<_> = (0..2_u64)
        .map(|p| {
            let q = q.clone();
            std::thread::spawn(move || {
                let mut handed_back = Vec::new();
                for i in 0..per_producer {
                    let item = p * per_producer + i;
                    if i % 2 == 0 {
                        q.push_blocking(item).unwrap();
                    } else if let Err(e) = q.try_push(item) {
                        handed_back.push(e.into_inner());
                    }
                }
                handed_back
            })
        })
        .collect();
    let consumers: Vec<_> = (0..2)
        .map(|_| {
            let q = q.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                while let Some(v) = q.pop_blocking() {
                    got.push(v);
                }
                got
            })
        })
        .collect();
    let mut seen = HashSet::new();
    for p in producers {
        for v in p.join().unwrap() {
            assert!(seen.insert(v), "{v} handed back twice");
        }
    }
    q.close();
    for c in consumers {
        for v in c.join().unwrap() {
            assert!(seen.insert(v), "{v} delivered twice or also handed back");
        }
    }
    assert_eq!(
        seen.len() as u64,
        2 * per_producer,
        "every item popped or handed back"
    );
    assert!(q.is_empty());
}
