//! Loom models through the real API: the coalescing protocol (a waiter that
//! leaves, the shared future woken while a waiter polls it, the dependency
//! answering from another thread) and the budget's slot rotation against a
//! lock-free deposit. Each side runs on a spawned loom thread.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use heijunka_core::sync::Mutex;
use heijunka_core::sync::atomic::{AtomicBool, Ordering};
use heijunka_core::{Criticality, ManualClock};

use crate::{Budget, Coalesce};

/// The dependency: answers once `open` is called (from another thread),
/// through the waker of whoever polled it last.
struct Gate {
    open: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Gate {
    fn new() -> Arc<Self> {
        Arc::new(Gate {
            open: AtomicBool::new(false),
            waker: Mutex::new(None),
        })
    }

    fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
        let w = self.waker.lock().unwrap().take();
        if let Some(w) = w {
            w.wake();
        }
    }

    fn answer(self: Arc<Self>, v: u8) -> impl Future<Output = u8> + Send {
        std::future::poll_fn(move |cx| {
            let mut w = self.waker.lock().unwrap();
            if self.open.load(Ordering::SeqCst) {
                Poll::Ready(v)
            } else {
                *w = Some(cx.waker().clone());
                Poll::Pending
            }
        })
    }
}

/// Polls `fut` once with a waker that does nothing.
fn poll_once<F: Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
    Pin::new(fut).poll(&mut Context::from_waker(Waker::noop()))
}

/// The caller that started the call polls it once (driving the shared
/// future, which waits on the dependency) and leaves, on one thread; a
/// follower waits on another; the dependency answers from a third. Whatever
/// the order — including the answer arriving while the leaving caller polls,
/// so that only it was told to poll again — the follower gets the answer: the
/// caller that leaves hands the driving on.
#[test]
fn a_follower_finishes_the_call_its_leader_left() {
    loom::model(|| {
        let c: Coalesce<u8, u8> = Coalesce::new();
        let gate = Gate::new();
        let g = gate.clone();
        let mut leader = c.call(1, move || g.answer(7));
        let follower = c.call(1, || async { 0 });
        let leaving = loom::thread::spawn(move || {
            let _ = poll_once(&mut leader);
            drop(leader);
        });
        let answering = loom::thread::spawn(move || gate.open());
        let waiting = loom::thread::spawn(move || loom::future::block_on(follower));
        leaving.join().unwrap();
        answering.join().unwrap();
        assert_eq!(waiting.join().unwrap(), Ok(7));
        assert_eq!(c.stats().keys_in_flight, 0);
    });
}

/// Two callers wait on one call while the dependency answers: the one
/// polling may be inside the shared future's `poll` when the answer's wake
/// arrives (the repoll path); both still get the answer.
#[test]
fn an_answer_during_a_poll_is_not_lost() {
    loom::model(|| {
        let c: Coalesce<u8, u8> = Coalesce::new();
        let gate = Gate::new();
        let g = gate.clone();
        let first = c.call(1, move || g.answer(3));
        let second = c.call(1, || async { 0 });
        let a = loom::thread::spawn(move || loom::future::block_on(first));
        let b = loom::thread::spawn(move || loom::future::block_on(second));
        let answering = loom::thread::spawn(move || gate.open());
        answering.join().unwrap();
        assert_eq!(a.join().unwrap(), Ok(3));
        assert_eq!(b.join().unwrap(), Ok(3));
    });
}

/// A deposit made as the window turns over is never wiped by the rotation:
/// the slot it lands in is cleared before any thread may write to it.
#[test]
fn a_deposit_survives_the_rotation_of_its_slot() {
    loom::model(|| {
        let clock = ManualClock::new();
        let budget = Budget::builder()
            .ratio(1.0)
            .floor_per_sec(0)
            .window(Duration::from_secs(1))
            .clock(&clock)
            .build()
            .unwrap();
        budget.deposit(); // slot 0, about to expire
        // Ten slots on: the same ring index as the expiring one.
        clock.advance(Duration::from_secs(1));
        let b = budget.clone();
        let depositing = loom::thread::spawn(move || b.deposit());
        let b = budget.clone();
        let rotating = loom::thread::spawn(move || b.can_withdraw(Criticality::Critical));
        depositing.join().unwrap();
        let _ = rotating.join().unwrap();
        assert_eq!(
            budget.stats().deposited_in_window,
            1,
            "the new deposit counts, the old does not"
        );
    });
}
