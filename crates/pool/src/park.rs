//! The worker pool's sleep and wake-up handshake, on [`SlotState`].
//!
//! A worker that finds no job sleeps on a condition variable; a submitter that
//! finds the queue full sleeps on another. Neither may miss its wake-up. The
//! protocol (the same for both sides):
//!
//! - The sleeper takes the parker's lock, then *registers* on its side of the
//!   [`SlotState`] word, which reports the slot count and the closed bit as of that
//!   atomic step. If the count says "nothing to do" (no job / no free slot) and the
//!   state is open, it waits on the condition variable, which releases the lock.
//! - The waker changes the count first (a `reserve` or `release`, one atomic step on
//!   the same word) and learns from that step whether a sleeper is registered. Only
//!   then does it take the lock and notify.
//!
//! Both steps act on one word, so one comes first: either the sleeper's register
//! sees the new count (and does not sleep), or the waker's step sees the registered
//! sleeper (and notifies; the sleeper holds the lock from registering until it
//! waits, so the notification cannot fall between the two). The loom model below
//! explores every interleaving of a worker and a submitter.

use std::time::Instant;

use heijunka_backpressure::{Registered, Side, SlotState};
use heijunka_core::sync::{Condvar, Mutex, MutexGuard};

/// A lock and condition variable for one side's sleepers.
pub(crate) struct Parker {
    lock: Mutex<()>,
    ready: Condvar,
}

fn lock(m: &Mutex<()>) -> MutexGuard<'_, ()> {
    // No user code runs under this lock; it guards no data.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Parker {
    pub(crate) fn new() -> Self {
        Self {
            lock: Mutex::new(()),
            ready: Condvar::new(),
        }
    }

    /// Wakes one sleeper; call after a state step that reported a sleeper.
    pub(crate) fn wake_one(&self) {
        let _g = lock(&self.lock);
        self.ready.notify_one();
    }

    /// Wakes every sleeper (closing).
    pub(crate) fn wake_all(&self) {
        let _g = lock(&self.lock);
        self.ready.notify_all();
    }

    /// Registers on `side` and sleeps while `idle` says the registered snapshot
    /// leaves nothing to do, until woken or `until` passes. Returns the snapshot;
    /// the caller looks at the queue again in any case (wake-ups may be spurious).
    pub(crate) fn park(
        &self,
        state: &SlotState,
        side: Side,
        idle: impl FnOnce(&Registered) -> bool,
        until: Option<Instant>,
    ) -> Registered {
        let guard = lock(&self.lock);
        // Unregisters when dropped, below (or if `idle` panics).
        let registration = state.register(side);
        let seen = registration.seen();
        if idle(&seen) && !seen.closed {
            if seen.counted {
                let _guard = match until {
                    None => self
                        .ready
                        .wait(guard)
                        .unwrap_or_else(std::sync::PoisonError::into_inner),
                    Some(at) => wait_timeout(&self.ready, guard, at),
                };
            } else {
                // Too many sleepers to count: nobody would wake this one, so look
                // again after a yield instead of sleeping.
                drop(guard);
                heijunka_core::sync::thread::yield_now();
            }
        } else {
            drop(guard);
            if !seen.closed {
                // Work (or room) is counted but in transit (a job being pushed, or
                // in a peer's deque mid-steal): let its owner finish, then the
                // caller looks again.
                heijunka_core::sync::thread::yield_now();
            }
        }
        drop(registration);
        seen
    }
}

#[cfg(not(loom))]
fn wait_timeout<'a>(cv: &Condvar, guard: MutexGuard<'a, ()>, at: Instant) -> MutexGuard<'a, ()> {
    let left = at.saturating_duration_since(Instant::now());
    cv.wait_timeout(guard, left)
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .0
}

/// Loom has no clock: a timed wait is modelled as a plain wait (the stronger
/// requirement: the model must not rely on the timeout to make progress).
#[cfg(loom)]
fn wait_timeout<'a>(cv: &Condvar, guard: MutexGuard<'a, ()>, _at: Instant) -> MutexGuard<'a, ()> {
    cv.wait(guard)
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(all(test, loom))]
mod loom_tests {
    //! A worker and submitters on a capacity-1 queue, driven through the real
    //! [`Parker`] and [`SlotState`]; the job store is a loom mutex standing in for the
    //! crossbeam deques. A lost wake-up leaves a thread asleep forever, which loom
    //! reports as a deadlock.

    use super::*;
    use heijunka_backpressure::Reserve;
    use heijunka_core::sync::{Arc, thread};

    struct Pool {
        state: SlotState,
        jobs: Mutex<Vec<u32>>,
        work: Parker,
        space: Parker,
    }

    fn submit(p: &Pool, job: u32, cap: usize) {
        loop {
            match p.state.reserve(cap) {
                Reserve::Reserved { wake, .. } => {
                    p.jobs.lock().unwrap().push(job);
                    if wake {
                        p.work.wake_one();
                    }
                    return;
                }
                Reserve::Closed => panic!("closed while submitting"),
                Reserve::Full => {
                    p.space.park(&p.state, Side::Push, |s| s.len >= cap, None);
                }
            }
        }
    }

    /// Takes jobs until the state is closed and empty; returns what it ran.
    fn work(p: &Pool) -> Vec<u32> {
        let mut ran = Vec::new();
        loop {
            let job = p.jobs.lock().unwrap().pop();
            if let Some(j) = job {
                ran.push(j);
                let (_, wake) = p.state.release_many(1);
                if wake {
                    p.space.wake_one();
                }
                continue;
            }
            let seen = p.work.park(&p.state, Side::Pop, |s| s.len == 0, None);
            if seen.len == 0 && seen.closed {
                return ran;
            }
        }
    }

    fn pool() -> Arc<Pool> {
        Arc::new(Pool {
            state: SlotState::new(),
            jobs: Mutex::new(Vec::new()),
            work: Parker::new(),
            space: Parker::new(),
        })
    }

    /// A job submitted while the worker goes to sleep is run; closing wakes the
    /// sleeping worker, which exits.
    #[test]
    fn worker_wakes_for_job_and_close() {
        loom::model(|| {
            let p = pool();
            let w = {
                let p = Arc::clone(&p);
                thread::spawn(move || work(&p))
            };
            submit(&p, 1, 1);
            if p.state.close() {
                p.work.wake_all();
                p.space.wake_all();
            }
            assert_eq!(w.join().unwrap(), vec![1]);
        });
    }

    /// Two jobs through a queue of one: the submitter sleeps for room and the
    /// worker's release wakes it; both jobs run exactly once.
    #[test]
    fn submitter_wakes_for_room() {
        loom::model(|| {
            let p = pool();
            let w = {
                let p = Arc::clone(&p);
                thread::spawn(move || work(&p))
            };
            submit(&p, 1, 1);
            submit(&p, 2, 1);
            p.state.close();
            p.work.wake_all();
            let mut ran = w.join().unwrap();
            ran.sort_unstable();
            assert_eq!(ran, vec![1, 2]);
        });
    }
}
