//! `BoundedQueue` under cancellation: each of its futures, dropped after k polls,
//! leaves no waiter registered, loses no item (it is queued, handed back, or dropped
//! with the push future that owned it) and keeps the counters balanced; and waits
//! cancelled by the thousand never turn a later waiter into a busy loop.
#![cfg(not(loom))]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use heijunka_backpressure::BoundedQueue;
use heijunka_core::Rejection;
use heijunka_core::cancel::{Outcome, Polled, cancel_points};

/// A current-thread runtime with paused time: timers fire only when the test
/// advances the clock.
fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime builds")
}

/// (consumers, producers) registered as waiting now.
fn waiters<T>(q: &BoundedQueue<T>) -> (usize, usize) {
    let s = q.stats();
    (s.waiting_consumers, s.waiting_producers)
}

/// An item that counts how often it is dropped.
struct Tracked {
    id: u32,
    drops: Arc<AtomicUsize>,
}

impl Tracked {
    fn new(id: u32, drops: &Arc<AtomicUsize>) -> Self {
        Self {
            id,
            drops: Arc::clone(drops),
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.drops.fetch_add(1, Ordering::SeqCst);
    }
}

/// The outcome without its output, for `cancel_points` once the output was used.
fn shape<T>(o: &Outcome<T>) -> Outcome<()> {
    match o {
        Outcome::Completed { polls, .. } => Outcome::Completed {
            output: (),
            polls: *polls,
        },
        Outcome::Cancelled { polls } => Outcome::Cancelled { polls: *polls },
    }
}

// ---- cancelled waits leave nothing behind ----

/// The count of timed-out waits (fewer under miri, which is slow).
const MANY: u32 = if cfg!(miri) { 50 } else { 10_000 };

#[test]
fn ten_thousand_timed_out_pops_leave_no_waiter_registered() {
    let rt = paused_runtime();
    let q = BoundedQueue::<u32>::new(8).unwrap();
    rt.block_on(async {
        for _ in 0..MANY {
            assert_eq!(q.pop_timeout(Duration::from_millis(1)).await, None);
        }
    });
    assert_eq!(
        waiters(&q),
        (0, 0),
        "timed-out pops must unregister their waits"
    );
    // The queue still works both ways.
    q.try_push(1).unwrap();
    assert_eq!(q.try_pop(), Some(1));
}

#[test]
fn ten_thousand_pushes_cancelled_by_a_timeout_leave_no_waiter_registered() {
    let rt = paused_runtime();
    let q = BoundedQueue::<u32>::new(1).unwrap();
    q.try_push(0).unwrap();
    rt.block_on(async {
        for i in 1..=MANY {
            let r = tokio::time::timeout(Duration::from_millis(1), q.push(i)).await;
            assert!(r.is_err(), "the queue is full, so the push waits");
        }
    });
    assert_eq!(waiters(&q), (0, 0), "cancelled pushes must unregister");
    assert_eq!(q.len(), 1, "no cancelled push queued its item");
    assert_eq!(q.stats().rejected, 0, "a cancelled push is not a rejection");
}

/// More than the 32,767 waiters one side of the queue can count: if cancelled pops
/// stayed registered, the count would saturate and every later pop would find it
/// full, refuse to sleep, and spin (wake itself on every poll).
const MORE_THAN_SATURATION: usize = 40_000;

#[test]
#[cfg_attr(miri, ignore)] // 40,000 cancelled futures: too slow under miri
fn a_pop_after_forty_thousand_cancelled_pops_sleeps_and_is_woken() {
    let q = BoundedQueue::<u32>::new(4).unwrap();
    for _ in 0..MORE_THAN_SATURATION {
        let mut pop = Polled::new(q.pop());
        assert!(!pop.poll(), "the queue is empty");
    }
    let mut pop = Polled::new(q.pop());
    for _ in 0..3 {
        assert!(!pop.poll());
    }
    assert_eq!(
        pop.wakes(),
        0,
        "a pop on an empty queue woke itself in 3 polls: it spins instead of sleeping"
    );
    q.try_push(7).unwrap();
    assert_eq!(pop.wakes(), 1, "the push wakes the sleeping pop once");
    assert!(pop.poll());
    assert_eq!(pop.take_output(), Some(Some(7)));
    assert_eq!(waiters(&q), (0, 0));
}

#[test]
#[cfg_attr(miri, ignore)] // 40,000 cancelled futures: too slow under miri
fn a_push_after_forty_thousand_cancelled_pushes_sleeps_and_is_woken() {
    let q = BoundedQueue::<u32>::new(1).unwrap();
    q.try_push(0).unwrap();
    for i in 0..MORE_THAN_SATURATION {
        let mut push = Polled::new(q.push(i as u32));
        assert!(!push.poll(), "the queue is full");
    }
    let mut push = Polled::new(q.push(99));
    for _ in 0..3 {
        assert!(!push.poll());
    }
    assert_eq!(
        push.wakes(),
        0,
        "a push on a full queue woke itself in 3 polls: it spins instead of sleeping"
    );
    assert_eq!(q.try_pop(), Some(0));
    assert_eq!(push.wakes(), 1, "the pop wakes the sleeping push once");
    assert!(push.poll());
    assert!(push.take_output().unwrap().is_ok());
    assert_eq!(q.try_pop(), Some(99));
    assert_eq!(waiters(&q), (0, 0));
}

// ---- every future, cancelled at every point ----

#[test]
fn pop_cancelled_at_every_point() {
    let covered = cancel_points(8, |k| {
        let q = BoundedQueue::<u32>::new(4).unwrap();
        let out = Polled::new(q.pop()).drop_after_with(k, |i| {
            if i == 1 {
                q.try_push(1).unwrap();
            }
        });
        assert_eq!(waiters(&q), (0, 0), "k = {k}: a waiter was left registered");
        let pushed = usize::from(k >= 2);
        match &out {
            Outcome::Completed { output, .. } => {
                assert_eq!(*output, Some(1));
                assert!(q.is_empty());
            }
            Outcome::Cancelled { .. } => {
                assert_eq!(q.len(), pushed, "k = {k}: the item is still queued");
            }
        }
        out
    });
    assert_eq!(covered, 2);
}

#[test]
fn a_woken_pop_that_is_cancelled_passes_its_wake_up_on() {
    let q = BoundedQueue::<u32>::new(4).unwrap();
    let mut first = Polled::new(q.pop());
    let mut second = Polled::new(q.pop());
    assert!(!first.poll());
    assert!(!second.poll());
    assert_eq!(waiters(&q), (2, 0));
    q.try_push(5).unwrap();
    assert_eq!(
        (first.wakes(), second.wakes()),
        (1, 0),
        "one item, one wake-up"
    );
    drop(first); // woken, never polled again: the wake-up must not be lost
    assert_eq!(second.wakes(), 1, "the other waiting pop gets the wake-up");
    assert!(second.poll());
    assert_eq!(second.take_output(), Some(Some(5)));
    assert_eq!(waiters(&q), (0, 0));
}

#[test]
fn push_cancelled_at_every_point() {
    let covered = cancel_points(8, |k| {
        let drops = Arc::new(AtomicUsize::new(0));
        let q = BoundedQueue::<Tracked>::new(1).unwrap();
        q.try_push(Tracked::new(0, &drops)).map_err(|_| ()).unwrap();
        let out = Polled::new(q.push(Tracked::new(1, &drops))).drop_after_with(k, |i| {
            if i == 1 {
                assert_eq!(q.try_pop().map(|t| t.id), Some(0));
            }
        });
        assert_eq!(waiters(&q), (0, 0), "k = {k}: a waiter was left registered");
        assert_eq!(q.stats().rejected, 0, "k = {k}: nothing was rejected");
        match &out {
            Outcome::Completed { output, .. } => {
                assert!(output.is_ok());
                assert_eq!(drops.load(Ordering::SeqCst), 1, "item 0, popped");
                assert_eq!(q.try_pop().map(|t| t.id), Some(1), "item 1 is queued");
            }
            Outcome::Cancelled { .. } => {
                // The cancelled push owned item 1 and dropped it, once; the queue
                // still holds item 0 and nothing else.
                assert_eq!(drops.load(Ordering::SeqCst), 1, "k = {k}");
                assert_eq!(q.try_pop().map(|t| t.id), Some(0));
                assert!(q.is_empty());
            }
        }
        shape(&out)
    });
    assert_eq!(covered, 2);
}

#[test]
fn push_timeout_cancelled_at_every_point() {
    let rt = paused_runtime();
    let _g = rt.enter();
    let covered = cancel_points(8, |k| {
        let drops = Arc::new(AtomicUsize::new(0));
        let q = BoundedQueue::<Tracked>::new(1).unwrap();
        q.try_push(Tracked::new(0, &drops)).map_err(|_| ()).unwrap();
        let fut = q.push_timeout(Tracked::new(1, &drops), Duration::from_millis(10));
        let out = Polled::new(fut).drop_after_with(k, |i| {
            if i == 1 {
                rt.block_on(tokio::time::advance(Duration::from_millis(10)));
            }
        });
        assert_eq!(waiters(&q), (0, 0), "k = {k}: a waiter was left registered");
        let shape = shape(&out);
        match out {
            Outcome::Completed { output, .. } => {
                let err = output.expect_err("the queue stayed full");
                assert_eq!(
                    err.reason(),
                    Rejection::TimedOut {
                        after: Duration::from_millis(10)
                    }
                );
                assert_eq!(err.into_inner().id, 1, "the item is handed back");
                assert_eq!(q.stats().rejected, 1);
            }
            Outcome::Cancelled { .. } => {
                assert_eq!(drops.load(Ordering::SeqCst), 1, "k = {k}: dropped once");
                assert_eq!(q.stats().rejected, 0, "a cancelled push is not a rejection");
            }
        }
        assert_eq!(q.try_pop().map(|t| t.id), Some(0));
        assert!(q.is_empty());
        shape
    });
    assert_eq!(covered, 2);
}

#[test]
fn push_timeout_cancelled_at_every_point_while_room_appears() {
    let rt = paused_runtime();
    let _g = rt.enter();
    let covered = cancel_points(8, |k| {
        let q = BoundedQueue::<u32>::new(1).unwrap();
        q.try_push(0).unwrap();
        let out = Polled::new(q.push_timeout(1, Duration::from_secs(10))).drop_after_with(k, |i| {
            if i == 1 {
                assert_eq!(q.try_pop(), Some(0));
            }
        });
        assert_eq!(waiters(&q), (0, 0), "k = {k}: a waiter was left registered");
        assert_eq!(q.stats().rejected, 0);
        let queued: Vec<_> = std::iter::from_fn(|| q.try_pop()).collect();
        match &out {
            Outcome::Completed { output, .. } => {
                assert!(output.is_ok());
                assert_eq!(queued, [1]);
            }
            Outcome::Cancelled { .. } => assert_eq!(queued, [0]),
        }
        shape(&out)
    });
    assert_eq!(covered, 2);
}

#[test]
fn pop_timeout_cancelled_at_every_point() {
    let rt = paused_runtime();
    let _g = rt.enter();
    let covered = cancel_points(8, |k| {
        let q = BoundedQueue::<u32>::new(4).unwrap();
        let out = Polled::new(q.pop_timeout(Duration::from_millis(10))).drop_after_with(k, |i| {
            if i == 1 {
                rt.block_on(tokio::time::advance(Duration::from_millis(10)));
            }
        });
        assert_eq!(waiters(&q), (0, 0), "k = {k}: a waiter was left registered");
        if let Outcome::Completed { output, .. } = &out {
            assert_eq!(*output, None, "timed out");
        }
        // The queue still hands an item to the next consumer.
        q.try_push(3).unwrap();
        assert_eq!(q.try_pop(), Some(3));
        out
    });
    assert_eq!(covered, 2);
}

#[test]
fn pop_timeout_cancelled_at_every_point_while_an_item_arrives() {
    let rt = paused_runtime();
    let _g = rt.enter();
    let covered = cancel_points(8, |k| {
        let q = BoundedQueue::<u32>::new(4).unwrap();
        let out = Polled::new(q.pop_timeout(Duration::from_secs(10))).drop_after_with(k, |i| {
            if i == 1 {
                q.try_push(8).unwrap();
            }
        });
        assert_eq!(waiters(&q), (0, 0), "k = {k}: a waiter was left registered");
        match &out {
            Outcome::Completed { output, .. } => {
                assert_eq!(*output, Some(8));
                assert!(q.is_empty());
            }
            Outcome::Cancelled { .. } => assert_eq!(q.len(), usize::from(k >= 2)),
        }
        out
    });
    assert_eq!(covered, 2);
}

#[test]
fn a_push_waiting_for_room_when_the_queue_closes_gets_its_item_back() {
    let q = BoundedQueue::<u32>::new(1).unwrap();
    q.try_push(0).unwrap();
    let mut push = Polled::new(q.push(1));
    assert!(!push.poll());
    q.close();
    assert_eq!(push.wakes(), 1, "the close wakes the waiting push");
    assert!(push.poll());
    let err = push.take_output().unwrap().unwrap_err();
    assert_eq!(err.reason(), Rejection::ShuttingDown);
    assert_eq!(err.into_inner(), 1);
    assert_eq!(waiters(&q), (0, 0));
    assert_eq!(q.try_pop(), Some(0), "queued items still drain");
}
