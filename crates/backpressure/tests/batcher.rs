//! `Batcher`: every caller gets its own result, batches respect the size and the
//! wait (tokio's paused clock: no real sleeps), and a misbehaving batch function
//! gives every caller a typed error.
#![cfg(not(loom))]

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use heijunka_backpressure::{BatchError, Batcher, MAX_BATCH_QUEUE};
use heijunka_core::Rejection;
use heijunka_core::cancel::{Outcome, Polled, cancel_points};
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
    assert_eq!(b.unwrap_err().into_inner(), None);
    // The batcher keeps working.
    assert_eq!(batcher.call(2).await, Ok(2));
}

/// An item that counts its drops, so a test sees an item lost without asking the
/// code under test.
#[derive(Debug)]
struct Tracked(u64, Arc<AtomicUsize>);

impl PartialEq for Tracked {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.1.fetch_add(1, Ordering::SeqCst);
    }
}

/// A batcher of one item per batch, one call waiting at most, whose batches take
/// a second and record the ids they got.
fn slow_batcher(capacity: usize) -> (Batcher<Tracked, u64>, Arc<Mutex<Vec<u64>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    let b = Batcher::builder()
        .max_size(1)
        .capacity(capacity)
        .build(move |items: Vec<Tracked>| {
            record.lock().unwrap().extend(items.iter().map(|t| t.0));
            async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                items.iter().map(|t| t.0).collect()
            }
        })
        .unwrap();
    (b, seen)
}

/// Let the batching task and spawned callers run, without moving paused time.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

/// The defect: a full queue dropped the item. It comes back in the error.
#[tokio::test(start_paused = true)]
async fn try_call_on_a_full_queue_hands_the_item_back() {
    let drops = Arc::new(AtomicUsize::new(0));
    let (b, seen) = slow_batcher(1);
    let first = tokio::spawn({
        let (b, d) = (b.clone(), drops.clone());
        async move { b.call(Tracked(1, d)).await }
    });
    settle().await; // 1 is in a batch
    let second = tokio::spawn({
        let (b, d) = (b.clone(), drops.clone());
        async move { b.call(Tracked(2, d)).await }
    });
    settle().await; // 2 waits in the queue
    assert_eq!(b.queued(), 1);
    let err = b.try_call(Tracked(3, drops.clone())).await.unwrap_err();
    assert_eq!(err.reason(), Some(Rejection::QueueFull { capacity: 1 }));
    assert!(
        !format!("{err:?}").contains("Tracked"),
        "Debug prints the item"
    );
    assert_eq!(
        drops.load(Ordering::SeqCst),
        0,
        "the refused item was dropped"
    );
    let item = err.into_inner().expect("the item comes back");
    assert_eq!(item.0, 3);
    assert_eq!(first.await.unwrap(), Ok(1));
    assert_eq!(second.await.unwrap(), Ok(2));
    assert_eq!(*seen.lock().unwrap(), [1, 2]);
}

/// The defect: a timed-out `call_timeout` dropped the item. Timed out while
/// waiting for room, or while queued but before a batch took it, the item comes
/// back and is left out of every batch.
#[tokio::test(start_paused = true)]
async fn call_timeout_before_a_batch_takes_the_item_hands_it_back() {
    let drops = Arc::new(AtomicUsize::new(0));
    let (b, seen) = slow_batcher(1);
    let first = tokio::spawn({
        let (b, d) = (b.clone(), drops.clone());
        async move { b.call(Tracked(1, d)).await }
    });
    settle().await;
    // Queued (the one slot), behind a batch that runs for a second.
    let queued = b.call_timeout(Tracked(2, drops.clone()), Duration::from_millis(10));
    let waiting = async {
        settle().await;
        // No room at all: waits for room, then times out.
        b.call_timeout(Tracked(3, drops.clone()), Duration::from_millis(20))
            .await
    };
    let (queued, waiting) = tokio::join!(queued, waiting);
    for (err, id) in [(queued, 2), (waiting, 3)] {
        let err = err.unwrap_err();
        let after = Duration::from_millis(id * 10 - 10);
        assert_eq!(err.reason(), Some(Rejection::TimedOut { after }));
        assert_eq!(err.into_inner().map(|t| t.0), Some(id));
    }
    assert_eq!(first.await.unwrap(), Ok(1));
    // The batcher skipped the taken-back item and still works.
    assert_eq!(b.call(Tracked(4, drops.clone())).await, Ok(4));
    assert_eq!(*seen.lock().unwrap(), [1, 4], "a taken-back item ran");
    assert_eq!(b.queued(), 0);
    assert_eq!(drops.load(Ordering::SeqCst), 4, "every item dropped once");
}

/// Timed out after the item went into a batch: the batch runs to its end, the
/// other caller gets its result, and this caller learns its result was lost.
#[tokio::test(start_paused = true)]
async fn call_timeout_after_the_batch_took_the_item_loses_only_the_result() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    let b = Batcher::builder()
        .max_size(2)
        .build(move |items: Vec<u64>| {
            record.lock().unwrap().extend(items.iter().copied());
            async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                items
            }
        })
        .unwrap();
    let (a, c) = tokio::join!(b.call_timeout(1, Duration::from_millis(10)), b.call(2));
    assert_eq!(
        a,
        Err(BatchError::ResultLost(Rejection::TimedOut {
            after: Duration::from_millis(10)
        }))
    );
    assert_eq!(a.unwrap_err().into_inner(), None);
    assert_eq!(c, Ok(2));
    assert_eq!(*seen.lock().unwrap(), [1, 2]);
}

/// The batching task gone (its runtime shut down): the item comes back with
/// `ShuttingDown`.
#[test]
fn a_batcher_whose_runtime_is_gone_hands_the_item_back() {
    let first = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let b = {
        let _g = first.enter();
        Batcher::builder()
            .build(|items: Vec<u8>| async move { items })
            .unwrap()
    };
    drop(first);
    let second = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    for result in [
        second.block_on(b.call(1)),
        second.block_on(b.try_call(2)),
        second.block_on(b.call_timeout(3, Duration::from_secs(1))),
    ] {
        let err = result.unwrap_err();
        assert_eq!(err.reason(), Some(Rejection::ShuttingDown));
        assert!(err.into_inner().is_some());
    }
}

type CallFuture<'a> = Pin<Box<dyn Future<Output = Result<u64, BatchError<Tracked>>> + 'a>>;

/// One of the three ways to call, as a boxed future.
#[derive(Clone, Copy, Debug)]
enum Way {
    Call,
    TryCall,
    CallTimeout,
}

fn make_call(b: &Batcher<Tracked, u64>, way: Way, item: Tracked) -> CallFuture<'_> {
    match way {
        Way::Call => Box::pin(b.call(item)),
        Way::TryCall => Box::pin(b.try_call(item)),
        Way::CallTimeout => Box::pin(b.call_timeout(item, Duration::from_secs(60))),
    }
}

/// Every way to call, dropped at every point while another caller shares its
/// batch. Dropped before its first poll, the item was never queued and is simply
/// dropped; dropped after, the item stays queued and runs in the batch (the caller
/// loses only the result). Either way the batch runs, the other caller gets its
/// own result, no queue slot is left taken, and every item is dropped exactly once.
#[test]
fn a_call_cancelled_at_every_point_leaves_the_batch_and_other_callers_whole() {
    for way in [Way::Call, Way::TryCall, Way::CallTimeout] {
        let covered = cancel_points(50, |k| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            let _g = rt.enter();
            let drops = Arc::new(AtomicUsize::new(0));
            let seen = Arc::new(Mutex::new(Vec::new()));
            let record = Arc::clone(&seen);
            let b = Batcher::builder()
                .max_size(2)
                .max_wait(Duration::from_millis(10))
                .build(move |items: Vec<Tracked>| {
                    record.lock().unwrap().extend(items.iter().map(|t| t.0));
                    async move {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        items.iter().map(|t| t.0 * 10).collect()
                    }
                })
                .unwrap();
            let other = rt.spawn({
                let (b, d) = (b.clone(), drops.clone());
                async move { b.call(Tracked(2, d)).await }
            });
            let outcome = Polled::new(make_call(&b, way, Tracked(1, drops.clone())))
                .drop_after_with(k, |_| {
                    rt.block_on(tokio::time::sleep(Duration::from_millis(1)));
                });
            // The other caller gets its own result whatever happened to this one.
            assert_eq!(rt.block_on(other).unwrap(), Ok(20), "{way:?}, k {k}");
            rt.block_on(tokio::time::sleep(Duration::from_millis(100)));
            let mut seen = seen.lock().unwrap().clone();
            seen.sort_unstable();
            match &outcome {
                Outcome::Completed { output, .. } => {
                    assert_eq!(*output, Ok(10));
                    assert_eq!(seen, [1, 2], "{way:?}: both ran");
                }
                Outcome::Cancelled { polls: 0 } => {
                    assert_eq!(seen, [2], "{way:?}: a never-polled call queued its item");
                }
                Outcome::Cancelled { .. } => {
                    assert!(
                        seen.contains(&1),
                        "{way:?}, k {k}: a queued item did not run"
                    );
                }
            }
            assert_eq!(b.queued(), 0, "{way:?}, k {k}: a queue slot is still taken");
            drop(b);
            drop(rt);
            assert_eq!(drops.load(Ordering::SeqCst), 2, "{way:?}, k {k}");
            outcome
        });
        assert!(covered >= 3, "{way:?}: only {covered} cancel points");
    }
}

#[test]
fn capacity_above_the_channel_bound_is_a_config_error_not_a_panic() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _g = rt.enter();
    let id = |items: Vec<u8>| async move { items };
    let err = Batcher::builder()
        .capacity(usize::MAX)
        .build(id)
        .unwrap_err();
    assert_eq!(err.field(), "capacity");
    assert_eq!(err.value(), usize::MAX.to_string());
    assert!(
        Batcher::builder()
            .capacity(MAX_BATCH_QUEUE + 1)
            .build(id)
            .is_err()
    );
    // The bound itself is accepted (the channel allocates as it fills).
    assert!(
        Batcher::<u8, u8>::builder()
            .capacity(MAX_BATCH_QUEUE)
            .build(id)
            .is_ok()
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
