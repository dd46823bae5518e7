//! The process-wide timer thread behind automatic transitions (open to half-open
//! when the wait ends, half-open to open when the probes time out).
//!
//! One thread for every breaker in the process, as resilience4j does, started the
//! first time a breaker configured with
//! [`automatic_transition_to_half_open`](crate::BreakerBuilder::automatic_transition_to_half_open)
//! opens. It holds only weak references, one per breaker with a transition pending,
//! so it never keeps a breaker alive and its list is bounded by the number of live
//! breakers. It sleeps until the earliest deadline; a breaker on a manual clock is
//! re-read every millisecond, since advancing a manual clock wakes nobody.
//!
//! These are `std` primitives, not the loom shim's: the thread is not part of any
//! modelled protocol (it only calls the breaker's own, locked, transition code), and
//! it is compiled out of loom builds.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, OnceLock, PoisonError, Weak};
use std::time::Duration;

use crate::machine::Inner;

/// How often a breaker on a manual clock is re-read.
const MANUAL_CLOCK_POLL: Duration = Duration::from_millis(1);

/// A breaker's link to the timer.
#[derive(Debug, Default)]
pub(crate) struct Registration {
    me: OnceLock<Weak<Inner>>,
    /// Whether the timer watches this breaker (so it is listed at most once).
    watched: AtomicBool,
}

impl Registration {
    pub(crate) fn bind(&self, me: Weak<Inner>) {
        let _ = self.me.set(me);
    }

    /// Asks the timer to watch this breaker until nothing is pending.
    pub(crate) fn schedule(&self) {
        if self.watched.swap(true, Ordering::SeqCst) {
            return;
        }
        let Some(me) = self.me.get() else { return };
        if !Timer::get().watch(me.clone()) {
            self.watched.store(false, Ordering::SeqCst);
        }
    }
}

struct Timer {
    watched: Mutex<Vec<Weak<Inner>>>,
    wake: Condvar,
    started: OnceLock<bool>,
}

impl Timer {
    fn get() -> &'static Timer {
        static TIMER: OnceLock<Timer> = OnceLock::new();
        TIMER.get_or_init(|| Timer {
            watched: Mutex::new(Vec::new()),
            wake: Condvar::new(),
            started: OnceLock::new(),
        })
    }

    /// Adds a breaker; false if the thread could not be started (the breaker then
    /// makes its transitions when it is next called or read).
    fn watch(&'static self, breaker: Weak<Inner>) -> bool {
        let started = *self.started.get_or_init(|| {
            let spawned = std::thread::Builder::new()
                .name("heijunka-breaker-timer".into())
                .spawn(move || self.run());
            if let Err(e) = &spawned {
                tracing::warn!(
                    error = %e,
                    "could not start the circuit breakers' timer thread; automatic \
                     transitions happen on the next call instead"
                );
            }
            spawned.is_ok()
        });
        if started {
            self.watched
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(breaker);
            self.wake.notify_one();
        }
        started
    }

    fn run(&self) {
        loop {
            let batch = {
                let mut watched = self.watched.lock().unwrap_or_else(PoisonError::into_inner);
                while watched.is_empty() {
                    watched = self
                        .wake
                        .wait(watched)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                std::mem::take(&mut *watched)
            };
            // No lock held while breakers run their transitions (and listeners).
            let mut keep = Vec::with_capacity(batch.len());
            let mut sleep = Duration::MAX;
            for weak in batch {
                let Some(breaker) = weak.upgrade() else {
                    continue;
                };
                let pending = breaker.poll().or_else(|| {
                    // Nothing pending: stop watching, then look again, in case the
                    // breaker changed state after `poll` and found the flag still set.
                    breaker.timer.watched.store(false, Ordering::SeqCst);
                    let again = breaker.poll()?;
                    (!breaker.timer.watched.swap(true, Ordering::SeqCst)).then_some(again)
                });
                if let Some(wait) = pending {
                    let wait = if breaker.clock().is_manual() {
                        MANUAL_CLOCK_POLL
                    } else {
                        wait
                    };
                    sleep = sleep.min(wait);
                    keep.push(weak);
                }
            }
            let mut watched = self.watched.lock().unwrap_or_else(PoisonError::into_inner);
            let arrived = !watched.is_empty();
            watched.extend(keep);
            if !arrived && sleep != Duration::MAX {
                drop(
                    self.wake
                        .wait_timeout(watched, sleep)
                        .unwrap_or_else(PoisonError::into_inner),
                );
            }
        }
    }
}
