//! The server-wide slots: a concurrency limit (static, or moved by a
//! [`LimitAlgorithm`]) whose waiters queue per session in the backpressure
//! crate's [`FairScheduler`], so one session's burst cannot starve the others.
//!
//! Everything (the running count, the limit, the live waiter count and the fair
//! queue) changes under one mutex, held for a few field updates and never across
//! an `.await` or user code (the limit algorithm is the backpressure crate's:
//! quick and non-blocking by contract). A slot that frees is handed straight to
//! the next waiter in fair order, under that lock, so a newcomer cannot barge
//! ahead of the queue and no wake-up can be lost between "queue empty?" and
//! "slot free?".
//!
//! A waiter that gives up (cancelled, or its wait ran out) marks its entry dead
//! under the lock; a dead entry stays in the fair queue until it is popped and
//! skipped, or until dead entries outnumber the live ones and are swept.

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use heijunka_backpressure::{FairScheduler, LimitAlgorithm, Sample};
use heijunka_core::{Clock, Instant, Rejection};
use tokio::sync::Notify;

/// The waiter has not been served yet.
const WAITING: u8 = 0;
/// A slot was handed to the waiter (counted in `running` on its behalf).
const GRANTED: u8 = 1;
/// The waiter gave up; its queue entry is dead.
const GONE: u8 = 2;

struct Waiter {
    /// WAITING, GRANTED or GONE; written only under the gate's lock (Relaxed
    /// suffices: the lock orders every access).
    state: AtomicU8,
    notify: Notify,
}

struct State {
    running: usize,
    limit: usize,
    /// Waiters still waiting (dead entries not counted).
    waiting: usize,
    algorithm: Option<Box<dyn LimitAlgorithm>>,
    /// Whether the 80 % warning is active (logged once per episode).
    warned: bool,
    /// Most waiters at once since the gate was built.
    peak_waiting: usize,
}

/// Server-wide slots with fair queueing across sessions.
pub(crate) struct Gate {
    state: Mutex<State>,
    fair: FairScheduler<u64, Arc<Waiter>>,
    capacity: usize,
    warn_at: usize,
    reject_at: usize,
    clock: Clock,
}

impl fmt::Debug for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.lock();
        f.debug_struct("Gate")
            .field("running", &st.running)
            .field("limit", &st.limit)
            .field("waiting", &st.waiting)
            .finish_non_exhaustive()
    }
}

/// Why the gate did not give a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GateRefusal {
    /// The queue is at its refuse watermark (or the session's own queue is full).
    QueueFull { capacity: usize },
    /// The wait ran out.
    TimedOut { after: Duration },
}

impl From<GateRefusal> for Rejection {
    fn from(r: GateRefusal) -> Self {
        match r {
            GateRefusal::QueueFull { capacity } => Rejection::QueueFull { capacity },
            GateRefusal::TimedOut { after } => Rejection::TimedOut { after },
        }
    }
}

/// A point-in-time view of the gate.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GateView {
    pub(crate) running: usize,
    pub(crate) limit: usize,
    pub(crate) waiting: usize,
    pub(crate) peak_waiting: usize,
    pub(crate) queue_capacity: usize,
}

impl Gate {
    /// `capacity` waiters at most; warn at `warn` and refuse at `reject` (fractions
    /// of `capacity`, validated by the builder).
    pub(crate) fn new(
        limit: usize,
        algorithm: Option<Box<dyn LimitAlgorithm>>,
        capacity: usize,
        warn: f64,
        reject: f64,
        clock: Clock,
    ) -> Self {
        let limit = algorithm
            .as_ref()
            .map_or(limit, |a| a.initial_limit().max(1));
        let fair = FairScheduler::builder()
            .client_capacity(capacity.max(1))
            .max_clients(usize::MAX)
            .build()
            .expect("a non-zero client capacity is valid");
        let at = |f: f64| ((capacity as f64 * f).ceil() as usize).clamp(1, capacity.max(1));
        Self {
            state: Mutex::new(State {
                running: 0,
                limit,
                waiting: 0,
                algorithm,
                warned: false,
                peak_waiting: 0,
            }),
            fair,
            capacity,
            warn_at: at(warn),
            reject_at: at(reject),
            clock,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // No user code runs under this lock (the limit algorithm is a backpressure
        // crate type or the user's, documented as non-blocking; a panic in it
        // leaves the state as it was), so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn view(&self) -> GateView {
        let st = self.lock();
        GateView {
            running: st.running,
            limit: st.limit,
            waiting: st.waiting,
            peak_waiting: st.peak_waiting,
            queue_capacity: self.capacity,
        }
    }

    /// A slot now, if one is free and nobody is queued ahead.
    pub(crate) fn try_enter(self: &Arc<Self>) -> Option<Slot> {
        let mut st = self.lock();
        if st.waiting == 0 && st.running < st.limit {
            st.running += 1;
            let inflight = st.running;
            drop(st);
            return Some(self.slot(inflight));
        }
        None
    }

    /// A slot, waiting up to `wait` in `session`'s fair queue when none is free.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: a dropped wait leaves no live waiter, and a slot handed to it
    /// in the meantime goes to the next waiter.
    pub(crate) async fn enter(
        self: &Arc<Self>,
        session: u64,
        wait: Duration,
    ) -> Result<Slot, GateRefusal> {
        let waiter = {
            let mut st = self.lock();
            if st.waiting == 0 && st.running < st.limit {
                st.running += 1;
                let inflight = st.running;
                drop(st);
                return Ok(self.slot(inflight));
            }
            if st.waiting >= self.reject_at || wait.is_zero() {
                return Err(GateRefusal::QueueFull {
                    capacity: self.capacity,
                });
            }
            let waiter = Arc::new(Waiter {
                state: AtomicU8::new(WAITING),
                notify: Notify::new(),
            });
            if self.fair.try_push(session, Arc::clone(&waiter)).is_err() {
                // The session's own queue is full. With dead entries among them,
                // sweep those out and try once more.
                let has_dead = self.fair.len() > st.waiting;
                if has_dead {
                    self.sweep(&mut st);
                }
                if !has_dead || self.fair.try_push(session, Arc::clone(&waiter)).is_err() {
                    return Err(GateRefusal::QueueFull {
                        capacity: self.capacity,
                    });
                }
            }
            st.waiting += 1;
            st.peak_waiting = st.peak_waiting.max(st.waiting);
            if st.waiting >= self.warn_at && !st.warned {
                st.warned = true;
                tracing::warn!(
                    waiting = st.waiting,
                    capacity = self.capacity,
                    "MCP tool calls queued above 80% of the queue; new calls are refused at 90%"
                );
            }
            waiter
        };
        let mut guard = WaitGuard {
            gate: self,
            waiter: &waiter,
            done: false,
        };
        let granted = tokio::time::timeout(wait, waiter.notify.notified()).await;
        let mut st = self.lock();
        guard.done = true;
        if waiter.state.load(Ordering::Relaxed) == GRANTED {
            // The granter counted this slot in `running` and took us off `waiting`.
            let inflight = st.running;
            drop(st);
            return Ok(self.slot(inflight));
        }
        debug_assert!(granted.is_err(), "notified without a grant");
        waiter.state.store(GONE, Ordering::Relaxed);
        st.waiting -= 1;
        self.calm(&mut st);
        self.maybe_sweep(&mut st);
        Err(GateRefusal::TimedOut { after: wait })
    }

    fn slot(self: &Arc<Self>, inflight: usize) -> Slot {
        Slot {
            gate: Arc::clone(self),
            start: self.clock.now(),
            inflight,
            outcome: SlotOutcome::Ignore,
        }
    }

    /// Ends the warning episode once the queue is back under the warn mark.
    fn calm(&self, st: &mut State) {
        if st.warned && st.waiting < self.warn_at {
            st.warned = false;
            tracing::info!(waiting = st.waiting, "MCP tool call queue back under 80%");
        }
    }

    /// Frees one slot (or hands it on) and serves waiters while slots are free.
    fn release(&self, sample: Option<Sample>) {
        let mut st = self.lock();
        if let (Some(sample), Some(algorithm)) = (sample, st.algorithm.as_mut()) {
            st.limit = algorithm.update(&sample).max(1);
        }
        st.running -= 1;
        self.dispatch(&mut st);
    }

    /// Hands free slots to live waiters, in fair order.
    fn dispatch(&self, st: &mut State) {
        while st.running < st.limit && st.waiting > 0 {
            let Some((_, waiter)) = self.fair.try_pop() else {
                break;
            };
            if waiter.state.load(Ordering::Relaxed) != WAITING {
                continue; // dead entry
            }
            waiter.state.store(GRANTED, Ordering::Relaxed);
            st.waiting -= 1;
            st.running += 1;
            waiter.notify.notify_one();
        }
        self.calm(st);
        if st.waiting == 0 {
            // Only dead entries can be left: drop them now.
            while self.fair.try_pop().is_some() {}
        }
    }

    fn maybe_sweep(&self, st: &mut State) {
        let dead = self.fair.len().saturating_sub(st.waiting);
        if dead >= 32 && dead > st.waiting {
            self.sweep(st);
        }
    }

    /// Drops dead entries, keeping the live ones in the order they come out.
    fn sweep(&self, st: &mut State) {
        let mut live = Vec::with_capacity(st.waiting);
        while let Some((session, waiter)) = self.fair.try_pop() {
            if waiter.state.load(Ordering::Relaxed) == WAITING {
                live.push((session, waiter));
            }
        }
        for (session, waiter) in live {
            // Cannot fail: each session has at most as many entries as before.
            let _ = self.fair.try_push(session, waiter);
        }
    }
}

/// Unregisters a waiter whose future is dropped mid-wait.
struct WaitGuard<'a> {
    gate: &'a Arc<Gate>,
    waiter: &'a Arc<Waiter>,
    done: bool,
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut st = self.gate.lock();
        match self.waiter.state.load(Ordering::Relaxed) {
            GRANTED => {
                // A slot was handed over after we stopped listening: pass it on.
                self.waiter.state.store(GONE, Ordering::Relaxed);
                st.running -= 1;
                self.gate.dispatch(&mut st);
            }
            WAITING => {
                self.waiter.state.store(GONE, Ordering::Relaxed);
                st.waiting -= 1;
                self.gate.calm(&mut st);
                self.gate.maybe_sweep(&mut st);
            }
            _ => {}
        }
    }
}

/// How a call that held a slot ended, for an adaptive limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SlotOutcome {
    /// Completed: its latency is a sample.
    Success,
    /// Ran out of time: a sign the limit is too high.
    Dropped,
    /// Says nothing about the limit (cancelled by the client, refused).
    Ignore,
}

/// One server-wide slot; dropping it frees the slot (or hands it to the next
/// waiter).
pub(crate) struct Slot {
    gate: Arc<Gate>,
    start: Instant,
    inflight: usize,
    outcome: SlotOutcome,
}

impl fmt::Debug for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slot")
            .field("outcome", &self.outcome)
            .finish_non_exhaustive()
    }
}

impl Slot {
    pub(crate) fn set_outcome(&mut self, outcome: SlotOutcome) {
        self.outcome = outcome;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let sample = match self.outcome {
            SlotOutcome::Ignore => None,
            outcome => {
                let end = self.gate.clock.now();
                Some(Sample {
                    start: self.start,
                    end,
                    rtt: end.saturating_duration_since(self.start),
                    inflight: self.inflight,
                    dropped: outcome == SlotOutcome::Dropped,
                })
            }
        };
        self.gate.release(sample);
    }
}
