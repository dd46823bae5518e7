//! `Batcher`: every caller gets its own result, batches respect the size and the
//! wait (tokio's paused clock: no real sleeps), and a misbehaving batch function
//! gives every caller a typed error.
#![cfg(not(loom))]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use heijunka_backpressure::{BatchError, Batcher};
use heijunka_core::Rejection;
use tokio::time::Instant;

#[cfg_attr(miri, ignore)] // too slow under miri
#[tokio::test(start_paused = true)]
async fn concurrent_callers_each_get_their_own_result() {
    let sizes = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&sizes);
    let batcher = Batcher::builder()
        .max_size(16)
        .max_wait(Duration::from_millis(10))
        .build(move |items: Vec<u64>| {
            seen.lock().unwrap().push(items.len());
            async move {
                // Some work in the batch, so batches overlap with new callers.
                tokio::time::sleep(Duration::from_millis(3)).await;
                items
                    .into_iter()
                    .map(|i| (i, i * i + 7))
                    .collect::<Vec<_>>()
            }
        })
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..500_u64 {
        let b = batcher.clone();
        tasks.spawn(async move {
            // Stagger arrivals across several batches and waits.
            tokio::time::sleep(Duration::from_micros(i * 37 % 25_000)).await;
            (i, b.call(i).await)
        });
    }
    let mut answered = 0;
    while let Some(r) = tasks.join_next().await {
        let (i, result) = r.unwrap();
        assert_eq!(
            result,
            Ok((i, i * i + 7)),
            "caller {i} got another's result"
        );
        answered += 1;
    }
    assert_eq!(answered, 500);
    let sizes = sizes.lock().unwrap();
    assert_eq!(
        sizes.iter().sum::<usize>(),
        500,
        "every item in exactly one batch"
    );
    assert!(sizes.iter().all(|&n| (1..=16).contains(&n)), "{sizes:?}");
    assert!(sizes.len() < 500, "calls were batched: {sizes:?}");
}

#[tokio::test(start_paused = true)]
async fn a_partial_batch_goes_after_exactly_max_wait() {
    let wait = Duration::from_millis(20);
    let batcher = Batcher::builder()
        .max_size(10)
        .max_wait(wait)
        .build(|items: Vec<u8>| async move { items })
        .unwrap();
    let start = Instant::now();
    let (a, b) = tokio::join!(batcher.call(1), batcher.call(2));
    assert_eq!((a, b), (Ok(1), Ok(2)));
    assert_eq!(start.elapsed(), wait);
}

#[tokio::test(start_paused = true)]
async fn a_full_batch_goes_at_once() {
    let batcher = Batcher::builder()
        .max_size(4)
        .max_wait(Duration::from_secs(60))
        .build(|items: Vec<u8>| async move { items })
        .unwrap();
    let start = Instant::now();
    let r = tokio::join!(
        batcher.call(1),
        batcher.call(2),
        batcher.call(3),
        batcher.call(4)
    );
    assert_eq!(r, (Ok(1), Ok(2), Ok(3), Ok(4)));
    assert_eq!(start.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn wrong_result_count_is_an_error_for_every_caller() {
    let batcher = Batcher::builder()
        .max_size(3)
        .build(|items: Vec<u8>| async move { items.into_iter().skip(1).collect() })
        .unwrap();
    let (a, b, c) = tokio::join!(batcher.call(1), batcher.call(2), batcher.call(3));
    let err = BatchError::WrongResultCount {
        expected: 3,
        got: 2,
    };
    assert_eq!((a, b, c), (Err(err.clone()), Err(err.clone()), Err(err)));
}

#[tokio::test(start_paused = true)]
async fn a_panicking_batch_is_an_error_for_its_callers_only() {
    let batcher = Batcher::builder()
        .max_size(2)
        .build(|items: Vec<u8>| async move {
            assert!(!items.contains(&13), "unlucky batch");
            items
        })
        .unwrap();
    let (a, b) = tokio::join!(batcher.call(13), batcher.call(1));
    assert_eq!(a, Err(BatchError::HandlerPanicked));
    assert_eq!(b, Err(BatchError::HandlerPanicked));
    // The batcher keeps working.
    assert_eq!(batcher.call(2).await, Ok(2));
}

#[tokio::test(start_paused = true)]
async fn try_call_refuses_when_the_queue_is_full_and_call_timeout_gives_up() {
    let batcher = Batcher::builder()
        .max_size(1)
        .capacity(1)
        .build(|items: Vec<u8>| async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            items
        })
        .unwrap();
    let first = batcher.call(1); // taken by the task, then runs for 1 s
    let second = async {
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        let queued = batcher.call(2); // waits in the queue
        let refused = async {
            tokio::task::yield_now().await;
            batcher.try_call(3).await
        };
        tokio::join!(queued, refused)
    };
    let (a, (b, c)) = tokio::join!(first, second);
    assert_eq!(a, Ok(1));
    assert_eq!(b, Ok(2));
    assert_eq!(
        c,
        Err(BatchError::Rejected(Rejection::QueueFull { capacity: 1 }))
    );
    let timed_out = batcher.call_timeout(4, Duration::from_millis(10)).await;
    assert_eq!(
        timed_out,
        Err(BatchError::Rejected(Rejection::TimedOut {
            after: Duration::from_millis(10)
        }))
    );
}

#[test]
fn bad_config_and_no_runtime_are_config_errors() {
    let id = |items: Vec<u8>| async move { items };
    let f =
        |r: Result<Batcher<u8, u8>, heijunka_core::ConfigError>| r.unwrap_err().field().to_owned();
    assert_eq!(f(Batcher::builder().max_size(0).build(id)), "max_size");
    assert_eq!(
        f(Batcher::builder().max_wait(Duration::ZERO).build(id)),
        "max_wait"
    );
    assert_eq!(f(Batcher::builder().capacity(0).build(id)), "capacity");
    assert_eq!(f(Batcher::builder().build(id)), "runtime");
}
