//! Level-change callbacks, run in order on their own thread, off the sampling path.

use std::collections::VecDeque;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::PoisonError;
use std::time::Duration;

use heijunka_core::PressureLevel;
use serde::Serialize;

use crate::error::SpawnError;
use crate::sample::MemoryStatus;
use crate::sync::atomic::{AtomicU64, Ordering};
use crate::sync::{Arc, Condvar, Mutex, MutexGuard, thread};

/// Level changes (steps of one level) waiting for the callback thread; a longer
/// backlog drops the oldest change (counted in [`MemoryStats::callback_changes_dropped`]).
///
/// [`MemoryStats::callback_changes_dropped`]: crate::MemoryStats::callback_changes_dropped
pub const CALLBACK_QUEUE_CAPACITY: usize = 64;

/// A change of pressure level, as callbacks and events see it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct LevelChange {
    /// The level before the sample.
    pub from: PressureLevel,
    /// The level after it.
    pub to: PressureLevel,
    /// The sample that moved the level.
    pub status: MemoryStatus,
}

/// Identifies a registered callback, for
/// [`MemoryMonitor::remove_callback`](crate::MemoryMonitor::remove_callback).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CallbackId(u64);

/// Boxed, then shared: loom's `Arc` (the shim's, under `--cfg loom`) holds only
/// sized values.
pub(crate) type Callback = Arc<Box<dyn Fn(&LevelChange) + Send + Sync>>;

struct Registration {
    id: CallbackId,
    /// `Some(level)`: only changes to `level`; `None`: every change.
    on: Option<PressureLevel>,
    f: Callback,
}

#[derive(Default)]
struct State {
    queue: VecDeque<LevelChange>,
    registrations: Vec<Registration>,
    next_id: u64,
    /// The callback thread is running a change's callbacks.
    busy: bool,
    started: bool,
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the callback thread: a change queued, or the monitor dropped.
    wake: Condvar,
    /// Wakes `flush`: the queue drained.
    idle: Condvar,
    panics: AtomicU64,
    dropped: AtomicU64,
}

/// The callbacks of one monitor and the thread that runs them.
pub(crate) struct Callbacks {
    shared: Arc<Shared>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // No user code runs under this lock, so a poisoned lock holds consistent state.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Callbacks {
    pub(crate) fn new() -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                wake: Condvar::new(),
                idle: Condvar::new(),
                panics: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
            }),
        }
    }

    /// Registers `f`; starts the callback thread on the first registration.
    pub(crate) fn register(
        &self,
        on: Option<PressureLevel>,
        f: Callback,
    ) -> Result<CallbackId, SpawnError> {
        let mut state = lock(&self.shared.state);
        if !state.started {
            let shared = Arc::clone(&self.shared);
            thread::Builder::new()
                .name("heijunka-memory-callbacks".into())
                .spawn(move || run(&shared))
                .map_err(|e| SpawnError::new("callback", e))?;
            state.started = true;
        }
        let id = CallbackId(state.next_id);
        state.next_id += 1;
        state.registrations.push(Registration { id, on, f });
        Ok(id)
    }

    pub(crate) fn remove(&self, id: CallbackId) -> bool {
        let mut state = lock(&self.shared.state);
        let before = state.registrations.len();
        state.registrations.retain(|r| r.id != id);
        state.registrations.len() != before
    }

    /// Queues a change for the callbacks, one step per level crossed (a jump from
    /// normal to critical queues normal → elevated, then elevated → critical).
    /// Called under the monitor's sampling lock, so changes queue in the order they
    /// happened.
    pub(crate) fn notify(&self, change: LevelChange) {
        let mut state = lock(&self.shared.state);
        if !state.started || state.registrations.is_empty() {
            return;
        }
        for step in steps(change) {
            if state.queue.len() == CALLBACK_QUEUE_CAPACITY {
                state.queue.pop_front();
                // Relaxed: a statistic, read on its own.
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    capacity = CALLBACK_QUEUE_CAPACITY,
                    "memory level callbacks fall behind; dropped the oldest queued change"
                );
            }
            state.queue.push_back(step);
        }
        drop(state);
        self.shared.wake.notify_one();
    }

    /// Waits until every queued change has run its callbacks, up to `timeout`.
    pub(crate) fn flush(&self, timeout: Duration) -> bool {
        let now = std::time::Instant::now();
        // A timeout too long to represent: about 30 years.
        let deadline = now
            .checked_add(timeout)
            .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365 * 30));
        let mut state = lock(&self.shared.state);
        while !state.queue.is_empty() || state.busy {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            state = match self.shared.idle.wait_timeout(state, left) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        true
    }

    pub(crate) fn panics(&self) -> u64 {
        // Relaxed: a statistic.
        self.shared.panics.load(Ordering::Relaxed)
    }

    pub(crate) fn dropped(&self) -> u64 {
        // Relaxed: a statistic.
        self.shared.dropped.load(Ordering::Relaxed)
    }

    pub(crate) fn registered(&self) -> usize {
        lock(&self.shared.state).registrations.len()
    }
}

/// `change` as one change per level crossed, in order, each with the sample that
/// moved the level.
fn steps(change: LevelChange) -> impl Iterator<Item = LevelChange> {
    let (from, to) = (change.from.as_u8(), change.to.as_u8());
    let mut at = from;
    std::iter::from_fn(move || {
        if at == to {
            return None;
        }
        let next = if to > at { at + 1 } else { at - 1 };
        let step = LevelChange {
            // Only `as_u8` values lie between two levels' bytes.
            from: PressureLevel::from_u8(at).unwrap_or(change.from),
            to: PressureLevel::from_u8(next).unwrap_or(change.to),
            status: change.status,
        };
        at = next;
        Some(step)
    })
}

impl Drop for Callbacks {
    fn drop(&mut self) {
        lock(&self.shared.state).closed = true;
        self.shared.wake.notify_all();
    }
}

impl fmt::Debug for Callbacks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Callbacks")
            .field("registered", &self.registered())
            .finish_non_exhaustive()
    }
}

/// The callback thread: runs each queued change's callbacks in registration order,
/// outside the lock, isolating panics; exits once the monitor is gone and the queue
/// is drained.
fn run(shared: &Shared) {
    let mut state = lock(&shared.state);
    loop {
        let Some(change) = state.queue.pop_front() else {
            if state.closed {
                return;
            }
            state = shared
                .wake
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
            continue;
        };
        state.busy = true;
        let due: Vec<Callback> = state
            .registrations
            .iter()
            .filter(|r| r.on.is_none_or(|l| l == change.to))
            .map(|r| Arc::clone(&r.f))
            .collect();
        drop(state);
        for f in due {
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| f(&change))) {
                // Relaxed: a statistic.
                shared.panics.fetch_add(1, Ordering::Relaxed);
                let message = payload
                    .downcast_ref::<&str>()
                    .copied()
                    .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                    .unwrap_or("<non-string panic payload>");
                tracing::error!(
                    memory.from = %change.from,
                    memory.to = %change.to,
                    panic = message,
                    "a memory level callback panicked; the other callbacks still run"
                );
            }
        }
        state = lock(&shared.state);
        state.busy = false;
        if state.queue.is_empty() {
            shared.idle.notify_all();
        }
    }
}
