//! Cancellation as a test input: drive a future for exactly `k` polls, drop it, and
//! check what it left behind.
//!
//! A future dropped while it waits is the most common way a primitive is used in
//! anger (`tokio::time::timeout`, `select!`, a client that hangs up). Every public
//! `async fn` in heijunka is tested by building it afresh for k = 0, 1, 2, ...,
//! polling it k times, dropping it and then checking the primitive's invariants (no
//! waiter left, permit back, item handed back or still queued, counters balanced),
//! until k polls are enough for it to complete. [`cancel_points`] runs that loop;
//! [`Polled`] is the handle a case uses to poll by hand and to interleave actions
//! between polls (a push between two polls of a pop, a clock advance, ...).
//!
//! The waker handed to the future counts its wake-ups, so a test can also check
//! that a waiter was woken (or was not woken needlessly).
//!
//! ```
//! use heijunka_core::cancel::{Polled, cancel_points};
//! use std::sync::atomic::{AtomicUsize, Ordering};
//!
//! // A future that waits twice, then completes: the harness covers k = 0, 1, 2
//! // (dropped before completion) and stops at k = 3, where it completes.
//! struct Countdown<'a>(u32, &'a AtomicUsize);
//! impl std::future::Future for Countdown<'_> {
//!     type Output = ();
//!     fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>)
//!         -> std::task::Poll<()> {
//!         if self.0 == 0 { return std::task::Poll::Ready(()); }
//!         self.0 -= 1;
//!         cx.waker().wake_by_ref();
//!         std::task::Poll::Pending
//!     }
//! }
//! impl Drop for Countdown<'_> {
//!     fn drop(&mut self) { self.1.fetch_add(1, Ordering::Relaxed); }
//! }
//!
//! let drops = AtomicUsize::new(0);
//! let covered = cancel_points(10, |k| {
//!     let outcome = Polled::new(Countdown(2, &drops)).drop_after(k);
//!     // the invariant: the future was dropped exactly once, whatever k was
//!     assert_eq!(drops.swap(0, Ordering::Relaxed), 1);
//!     outcome
//! });
//! assert_eq!(covered, 3);
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};

/// What became of a future driven by [`Polled::drop_after`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<T> {
    /// It completed on poll number `polls` (1-based) with `output`.
    Completed {
        /// The future's output.
        output: T,
        /// How many polls it took.
        polls: usize,
    },
    /// It was still pending after `polls` polls and was dropped.
    Cancelled {
        /// How many polls it received before it was dropped.
        polls: usize,
    },
}

impl<T> Outcome<T> {
    /// Whether the future completed.
    pub fn is_completed(&self) -> bool {
        matches!(self, Outcome::Completed { .. })
    }

    /// The output, if the future completed.
    pub fn output(self) -> Option<T> {
        match self {
            Outcome::Completed { output, .. } => Some(output),
            Outcome::Cancelled { .. } => None,
        }
    }
}

/// A waker that counts how often it was woken.
#[derive(Debug, Default)]
struct WakeCounter(AtomicUsize);

impl Wake for WakeCounter {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Relaxed: a statistic read by the test thread after the wake's own
        // synchronisation (the primitive's lock or atomics) has happened.
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// A future under test, polled by hand with a wake-counting waker.
///
/// Dropping the `Polled` drops the future: that is the cancellation under test.
/// Poll it inside a runtime context (`Runtime::enter`) when it uses tokio timers.
pub struct Polled<F: Future> {
    future: Option<Pin<Box<F>>>,
    output: Option<F::Output>,
    wakes: Arc<WakeCounter>,
    waker: Waker,
    polls: usize,
}

impl<F: Future> fmt::Debug for Polled<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Polled")
            .field("polls", &self.polls)
            .field("wakes", &self.wakes())
            .field("completed", &self.future.is_none())
            .finish()
    }
}

impl<F: Future> Polled<F> {
    /// Wraps `future`; it has not been polled yet.
    pub fn new(future: F) -> Self {
        let wakes = Arc::new(WakeCounter::default());
        let waker = Waker::from(Arc::clone(&wakes));
        Polled {
            future: Some(Box::pin(future)),
            output: None,
            wakes,
            waker,
            polls: 0,
        }
    }

    /// Polls the future once. Returns `true` once it has completed (its output is
    /// then kept for [`Polled::take_output`]); polling a completed future again is
    /// a no-op that returns `true`.
    pub fn poll(&mut self) -> bool {
        let Some(future) = self.future.as_mut() else {
            return true;
        };
        self.polls += 1;
        let mut cx = Context::from_waker(&self.waker);
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(output) => {
                self.output = Some(output);
                self.future = None;
                true
            }
            Poll::Pending => false,
        }
    }

    /// Whether the future has completed.
    pub fn is_completed(&self) -> bool {
        self.future.is_none()
    }

    /// The output of a completed future (once).
    pub fn take_output(&mut self) -> Option<F::Output> {
        self.output.take()
    }

    /// How many times the future has been polled.
    pub fn polls(&self) -> usize {
        self.polls
    }

    /// How many times the future's waker has been woken so far.
    pub fn wakes(&self) -> usize {
        self.wakes.0.load(Ordering::Relaxed)
    }

    /// Polls the future up to `k` times (stopping early if it completes), then
    /// drops it unless it completed.
    pub fn drop_after(self, k: usize) -> Outcome<F::Output> {
        self.drop_after_with(k, |_| {})
    }

    /// Like [`Polled::drop_after`], calling `between(i)` before poll number `i`
    /// (0-based) so a test can change the world between polls: push the item a
    /// pop waits for, advance a manual clock, release a permit.
    pub fn drop_after_with(
        mut self,
        k: usize,
        mut between: impl FnMut(usize),
    ) -> Outcome<F::Output> {
        for i in 0..k {
            between(i);
            if self.poll() {
                let output = self
                    .take_output()
                    .expect("a completed future's output is kept until taken");
                return Outcome::Completed {
                    output,
                    polls: self.polls,
                };
            }
        }
        let polls = self.polls;
        drop(self);
        Outcome::Cancelled { polls }
    }
}

/// Runs `case(k)` for k = 0, 1, 2, ... until it reports a completed future, and
/// returns how many cancel points were covered (the k at which it completed).
///
/// `case(k)` builds a fresh fixture and future, drives it for `k` polls (usually
/// with [`Polled::drop_after`]), checks the invariants that must hold after the
/// drop, and returns the [`Outcome`].
///
/// # Panics
///
/// If the future has not completed after `max_polls` polls: a future that never
/// completes leaves its later cancel points untested, which is a test bug.
pub fn cancel_points<T>(max_polls: usize, mut case: impl FnMut(usize) -> Outcome<T>) -> usize {
    for k in 0..=max_polls {
        if case(k).is_completed() {
            return k;
        }
    }
    panic!("the future under test did not complete within {max_polls} polls");
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_ready_future_completes_on_the_first_poll() {
        let out = Polled::new(async { 7 }).drop_after(3);
        assert_eq!(
            out,
            Outcome::Completed {
                output: 7,
                polls: 1
            }
        );
        assert_eq!(
            cancel_points(5, |k| Polled::new(async { 1 }).drop_after(k)),
            1
        );
    }

    #[test]
    fn a_pending_future_is_dropped_after_k_polls() {
        let out = Polled::new(std::future::pending::<()>()).drop_after(4);
        assert_eq!(out, Outcome::Cancelled { polls: 4 });
    }

    #[test]
    #[should_panic(expected = "did not complete within 3 polls")]
    fn a_future_that_never_completes_is_a_test_bug() {
        cancel_points(3, |k| {
            Polled::new(std::future::pending::<()>()).drop_after(k)
        });
    }

    #[test]
    fn wakes_are_counted() {
        let mut p = Polled::new(std::future::poll_fn(|cx| {
            cx.waker().wake_by_ref();
            Poll::<()>::Pending
        }));
        assert!(!p.poll());
        assert!(!p.poll());
        assert_eq!(p.wakes(), 2);
        assert_eq!(p.polls(), 2);
    }
}
