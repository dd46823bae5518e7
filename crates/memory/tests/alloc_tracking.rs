//! Allocation accounting with `CountingAlloc` as this test binary's global allocator:
//! exact figures for known allocation patterns, per thread, and per task across
//! `.await` points and threads.
#![cfg(all(feature = "alloc-tracking", not(loom)))]

use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use heijunka_memory::{AllocScope, CountingAlloc, measure_allocations, track_allocations};

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc::system();

#[test]
fn a_scope_that_allocates_n_bytes_reports_n() {
    let (_, stats) = measure_allocations(|| {
        let v: Vec<u8> = Vec::with_capacity(1_000);
        black_box(&v);
    });
    assert!(CountingAlloc::is_installed());
    assert_eq!(stats.allocated, 1_000);
    assert_eq!(stats.freed, 1_000);
    assert_eq!((stats.allocations, stats.deallocations), (1, 1));
    assert_eq!(stats.net(), 0);

    // Kept past the scope: allocated, not freed.
    let (kept, stats) = measure_allocations(|| {
        let a = black_box(Box::new([0_u64; 16])); // 128 bytes
        let b = black_box(vec![7_u32; 100]); // 400 bytes
        (a, b)
    });
    assert_eq!((stats.allocated, stats.freed, stats.net()), (528, 0, 528));
    let (_, stats) = measure_allocations(|| drop(kept));
    assert_eq!((stats.allocated, stats.freed, stats.net()), (0, 528, -528));
}

#[test]
fn realloc_counts_the_old_size_freed_and_the_new_one_allocated() {
    let scope = AllocScope::enter();
    let mut v: Vec<u8> = Vec::with_capacity(64);
    v.reserve_exact(256); // grows 64 -> 256 (len 0): one realloc
    assert_eq!(v.capacity(), 256);
    let stats = scope.stats();
    assert_eq!(stats.allocated, 64 + 256);
    assert_eq!(stats.freed, 64);
    assert_eq!((stats.allocations, stats.deallocations), (2, 1));
    drop(v);
    assert_eq!(scope.stats().freed, 64 + 256);
}

#[test]
fn zeroed_allocations_are_counted() {
    let (_, stats) = measure_allocations(|| drop(black_box(vec![0_u8; 4_096])));
    assert_eq!((stats.allocated, stats.freed), (4_096, 4_096));
}

#[test]
fn other_threads_allocations_are_not_in_this_threads_scope() {
    let scope = AllocScope::enter();
    let handle = std::thread::spawn(|| {
        let (_, s) = measure_allocations(|| drop(black_box(vec![1_u8; 10_000])));
        s
    });
    let theirs = handle.join().unwrap();
    assert_eq!(theirs.allocated, 10_000);
    assert!(
        scope.stats().allocated < 10_000,
        "the spawner counts only its own thread: {:?}",
        scope.stats()
    );
}

/// Yields once (waking itself), so the task is polled twice.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

#[test]
fn a_task_is_counted_across_awaits_even_when_it_moves_threads() {
    let task = track_allocations(async {
        let first = black_box(vec![1_u8; 3_000]);
        YieldOnce(false).await;
        let second = black_box(vec![2_u8; 5_000]);
        YieldOnce(false).await;
        drop(first);
        second // handed out: allocated in the task, not freed in it
    });
    // Allocated outside the counted polls; only the polls are measured.
    let mut task = Box::pin(task);
    let mut cx = Context::from_waker(Waker::noop());

    // First poll here, the rest on another thread.
    assert!(task.as_mut().poll(&mut cx).is_pending());
    assert_eq!(task.stats().allocated, 3_000);
    let (second, stats) = std::thread::spawn(move || {
        let mut cx = Context::from_waker(Waker::noop());
        loop {
            if let Poll::Ready(out) = task.as_mut().poll(&mut cx) {
                return out;
            }
        }
    })
    .join()
    .unwrap();
    assert_eq!(second.len(), 5_000);
    assert_eq!(
        (
            stats.allocated,
            stats.freed,
            stats.allocations,
            stats.deallocations
        ),
        (8_000, 3_000, 2, 1)
    );
}

#[test]
#[cfg_attr(miri, ignore)] // a multi-threaded tokio runtime is slow under miri
fn a_tokio_task_reports_at_least_what_it_allocated() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let (kept, stats) = rt.block_on(async {
        tokio::spawn(track_allocations(async {
            let a = black_box(vec![1_u8; 64 << 10]);
            tokio::task::yield_now().await;
            let b = black_box(vec![2_u8; 32 << 10]);
            tokio::task::yield_now().await;
            a.len() + b.len()
        }))
        .await
        .unwrap()
    });
    assert_eq!(kept, 96 << 10);
    // The runtime may allocate on the task's behalf while polling it (wakers,
    // queues): at least the task's own bytes, all of them freed by the end.
    assert!(stats.allocated >= 96 << 10, "{stats:?}");
    assert!(stats.freed >= 96 << 10, "{stats:?}");
}

/// Allocates `per_poll` bytes (kept) on each of `polls` polls, then completes;
/// counts its drops.
struct AllocEachPoll<'a> {
    polls: usize,
    per_poll: usize,
    kept: Vec<Vec<u8>>,
    drops: &'a std::sync::atomic::AtomicUsize,
}

impl Future for AllocEachPoll<'_> {
    type Output = usize;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
        if self.kept.len() == self.polls {
            return Poll::Ready(self.kept.len());
        }
        let block = black_box(vec![1_u8; self.per_poll]);
        self.kept.push(block);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl Drop for AllocEachPoll<'_> {
    fn drop(&mut self) {
        self.drops.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn a_tracked_future_dropped_at_any_poll_drops_its_inner_future_once() {
    use heijunka_core::cancel::{Outcome, Polled, cancel_points};
    let drops = std::sync::atomic::AtomicUsize::new(0);
    let covered = cancel_points(10, |k| {
        let kept = Vec::with_capacity(8); // allocated outside the tracked polls
        let tracked = track_allocations(AllocEachPoll {
            polls: 3,
            per_poll: 4096,
            kept,
            drops: &drops,
        });
        let mut polled = Polled::new(tracked);
        let mut outcome = None;
        for _ in 0..k {
            if polled.poll() {
                outcome = polled.take_output();
                break;
            }
        }
        let polls = polled.polls();
        drop(polled);
        // The invariant: the inner future is dropped exactly once, whatever k was.
        assert_eq!(
            drops.swap(0, std::sync::atomic::Ordering::SeqCst),
            1,
            "k = {k}"
        );
        match outcome {
            Some((n, stats)) => {
                // Every poll's allocation counted once: 3 blocks of 4 KiB.
                assert_eq!(n, 3);
                assert!(stats.allocated >= 3 * 4096, "{stats:?}");
                Outcome::Completed { output: (), polls }
            }
            None => Outcome::Cancelled { polls },
        }
    });
    assert_eq!(covered, 4);
}
