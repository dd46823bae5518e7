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
//!
//! # Started jobs: [`Started`]
//!
//! The queue's bound counts the jobs not yet started. A worker does not give each
//! started job's slot back to the shared word at once (that would be one contended
//! read-modify-write per task): it counts it in its own padded cell, and gives the
//! cell back in batches. Anyone who needs the exact count collects the cells
//! (`swap(0)`, so each start is given back exactly once): a submitter that finds
//! the queue full, an idle worker before it sleeps, `stats()`.
//!
//! A submitter that is about to *sleep* for room announces itself (`want_room`)
//! before it collects; a worker checks the announcement after counting a start.
//! Each side writes, then a `SeqCst` fence, then reads the other's location (a
//! store-load pair; fences, because `SeqCst` loads alone are not modelled by loom):
//! either the submitter's collection sees the worker's start, or the worker sees
//! the announcement and gives its cell back at once, through the word, whose
//! release wakes a registered submitter (the first protocol above). The loom model `started_job_frees_room_for_
//! a_sleeping_submitter` checks it.

use std::time::Instant;

use heijunka_backpressure::{Registered, Side, SlotState};
use heijunka_core::sync::atomic::{AtomicUsize, Ordering, fence};
use heijunka_core::sync::{CachePadded, Condvar, Mutex, MutexGuard};

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

/// Jobs each worker has started (taken off the queue) but not yet given back to
/// the queue's [`SlotState`] count; see the module docs.
pub(crate) struct Started {
    cells: Box<[CachePadded<AtomicUsize>]>,
    /// Submitters about to sleep for room (rarely written: only while the queue is
    /// full, so the workers' reads of it stay cheap).
    want_room: CachePadded<AtomicUsize>,
}

impl Started {
    pub(crate) fn new(workers: usize) -> Self {
        Self {
            cells: (0..workers)
                .map(|_| CachePadded::new(AtomicUsize::new(0)))
                .collect(),
            want_room: CachePadded::new(AtomicUsize::new(0)),
        }
    }

    /// Worker `me` took a job off the queue; returns how many it holds now.
    #[inline]
    pub(crate) fn take(&self, me: usize) -> usize {
        // Relaxed: ordered for `wait_for_room` by the fence in `room_wanted`, which
        // the worker calls next; uncontended, the cell is this worker's.
        self.cells[me].fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Whether a submitter is about to sleep for room (the worker then gives its
    /// cell back at once). Call after [`take`](Self::take).
    #[inline]
    pub(crate) fn room_wanted(&self) -> bool {
        // The worker's half of the store-load pair: its `take` before, this load
        // after; pairs with the fence in `wait_for_room`.
        fence(Ordering::SeqCst);
        // Relaxed: ordered by the fence above.
        self.want_room.load(Ordering::Relaxed) > 0
    }

    /// Gives worker `me`'s started jobs back to `state`, waking a submitter that
    /// sleeps for room.
    #[inline]
    pub(crate) fn give_back(&self, me: usize, state: &SlotState, space: &Parker) {
        // Relaxed: as in `collect`; swap, so each start is given back exactly once.
        let n = self.cells[me].swap(0, Ordering::Relaxed);
        release(n, state, space);
    }

    /// Gives every worker's started jobs back; returns how many.
    pub(crate) fn collect(&self, state: &SlotState, space: &Parker) -> usize {
        let mut n = 0;
        for c in &*self.cells {
            // Relaxed: a start counted here is given back through `state`, whose
            // AcqRel steps order it; `wait_for_room`, and `submit_until` on a full
            // queue, fence before calling this (pairing with `room_wanted`).
            // The load skips the read-modify-write on cells holding nothing.
            if c.load(Ordering::Relaxed) > 0 {
                n += c.swap(0, Ordering::Relaxed);
            }
        }
        release(n, state, space);
        n
    }

    /// [`collect`](Self::collect) for a submitter that found the queue full and
    /// will refuse (or wait) if nothing is collected: a `SeqCst` fence first,
    /// pairing with the one in [`room_wanted`](Self::room_wanted). Either the
    /// worker's fence comes first in the `SeqCst` order and this collects its
    /// start, or this one does and the start is ordered after the check (it
    /// raced it). A start the caller learned of, through any synchronisation or
    /// none, is therefore collected. Cold: the queue is full.
    pub(crate) fn collect_checked(&self, state: &SlotState, space: &Parker) -> usize {
        fence(Ordering::SeqCst);
        self.collect(state, space)
    }

    /// Started jobs not yet given back, for a statistics snapshot.
    pub(crate) fn held(&self) -> usize {
        // Relaxed: a statistic.
        self.cells.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// A submitter found the queue full (`capacity` taken): announces itself,
    /// collects the started jobs, and sleeps for room only if none were found.
    /// Returns `true` if it slept (or yielded), `false` if it collected room; the
    /// caller tries to reserve again in both cases.
    pub(crate) fn wait_for_room(
        &self,
        state: &SlotState,
        space: &Parker,
        capacity: usize,
        until: Option<Instant>,
    ) -> bool {
        // Relaxed: ordered by the fence below.
        self.want_room.fetch_add(1, Ordering::Relaxed);
        // The submitter's half of the store-load pair: the announcement before,
        // the collection after; pairs with the fence in `room_wanted`.
        fence(Ordering::SeqCst);
        let slept = self.collect(state, space) == 0;
        if slept {
            space.park(state, Side::Push, |seen| seen.len >= capacity, until);
        }
        // Relaxed: leaving only makes the workers' early give-back unnecessary.
        self.want_room.fetch_sub(1, Ordering::Relaxed);
        slept
    }
}

/// `n` jobs left the queue: free their slots and wake a submitter waiting for room.
#[inline]
pub(crate) fn release(n: usize, state: &SlotState, space: &Parker) {
    if n == 0 {
        return;
    }
    let (_, wake) = state.release_many(n);
    if wake {
        space.wake_one();
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

    /// A worker starts a job with more taken work behind it (so it keeps the slot
    /// in its own cell) and then stays busy; a submitter finds the queue full and
    /// sleeps for room. The start must free the slot for it: either its collection
    /// sees the start, or the worker sees it waiting and gives the slot back, which
    /// wakes it. Drives the real [`Started`], [`Parker`] and [`SlotState`].
    #[test]
    fn started_job_frees_room_for_a_sleeping_submitter() {
        loom::model(|| {
            let p = pool();
            let started = Arc::new(Started::new(1));
            assert!(matches!(p.state.reserve(1), Reserve::Reserved { .. }));
            p.jobs.lock().unwrap().push(1);
            let w = {
                let (p, started) = (Arc::clone(&p), Arc::clone(&started));
                thread::spawn(move || {
                    let job = p.jobs.lock().unwrap().pop();
                    assert_eq!(job, Some(1));
                    started.take(0);
                    // Local work remains, the batch is not full: keep the slot
                    // unless a submitter waits. Then the job "runs" for ever.
                    if started.room_wanted() {
                        started.give_back(0, &p.state, &p.space);
                    }
                })
            };
            loop {
                match p.state.reserve(1) {
                    Reserve::Reserved { .. } => break,
                    Reserve::Closed => unreachable!(),
                    Reserve::Full => {
                        started.wait_for_room(&p.state, &p.space, 1, None);
                    }
                }
            }
            w.join().unwrap();
        });
    }

    /// A worker starts a job and keeps its slot in its cell (more work waits, no
    /// submitter waits); the job says it started through a relaxed flag, which
    /// orders nothing. A non-blocking submitter that read the flag and then finds
    /// the queue full must collect that start (no false "full"): the fence in
    /// `collect_checked` pairs with the one in `room_wanted`.
    #[test]
    fn a_start_the_submitter_saw_is_collected() {
        loom::model(|| {
            let p = pool();
            let started = Arc::new(Started::new(1));
            let running = Arc::new(AtomicUsize::new(0));
            assert!(matches!(p.state.reserve(1), Reserve::Reserved { .. }));
            let w = {
                let (p, started, running) =
                    (Arc::clone(&p), Arc::clone(&started), Arc::clone(&running));
                thread::spawn(move || {
                    started.take(0);
                    if started.room_wanted() {
                        started.give_back(0, &p.state, &p.space);
                    }
                    // Relaxed: the point of the model, a signal that orders nothing.
                    running.store(1, Ordering::Relaxed);
                })
            };
            // Relaxed: as the store.
            let saw = running.load(Ordering::Relaxed) == 1;
            if matches!(p.state.reserve(1), Reserve::Full) {
                let collected = started.collect_checked(&p.state, &p.space);
                assert!(
                    !saw || collected == 1,
                    "a start seen by the caller was not collected"
                );
            }
            w.join().unwrap();
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
