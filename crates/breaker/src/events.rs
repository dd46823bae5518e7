//! The breaker's events (state changes and resets), their listeners and the
//! `tracing` events.

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};

use heijunka_core::Instant;

use crate::sync::Mutex;
use crate::{State, StateTransition};

/// An event of a breaker, as delivered to
/// [`subscribe_events`](crate::CircuitBreaker::subscribe_events) listeners (resilience4j's
/// `CircuitBreakerOnStateTransitionEvent` and `CircuitBreakerOnResetEvent`).
///
/// Non-exhaustive: match with a `_` arm, as more kinds may come.
///
/// ```
/// use heijunka_breaker::{BreakerEvent, CircuitBreaker};
/// use std::sync::{Arc, Mutex};
///
/// let breaker = CircuitBreaker::builder()
/// #   .clock(heijunka_core::ManualClock::new())
///     .build()?;
/// let log = Arc::new(Mutex::new(Vec::new()));
/// let sink = log.clone();
/// breaker.subscribe_events(move |e| {
///     sink.lock().unwrap().push(match e {
///         BreakerEvent::Transition(t) => format!("{} -> {}", t.from, t.to),
///         BreakerEvent::Reset(r) => format!("reset in {}", r.state),
///         _ => "other".to_string(),
///     })
/// });
/// breaker.reset(); // closed already: a reset, no transition
/// breaker.force_open();
/// breaker.reset(); // a transition to closed, then the reset
/// assert_eq!(
///     *log.lock().unwrap(),
///     ["reset in closed", "closed -> forced open", "forced open -> closed", "reset in forced open"]
/// );
/// # Ok::<(), heijunka_core::ConfigError>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum BreakerEvent {
    /// The breaker changed state (only ever from one state to another).
    Transition(StateTransition),
    /// [`reset`](crate::CircuitBreaker::reset) was called: the breaker is closed
    /// with an empty window. When it was not closed, the
    /// [`Transition`](Self::Transition) to closed comes first.
    Reset(BreakerReset),
}

impl BreakerEvent {
    /// The breaker's name.
    pub fn breaker(&self) -> &str {
        match self {
            Self::Transition(t) => &t.breaker,
            Self::Reset(r) => &r.breaker,
        }
    }

    /// The event's number in the breaker's sequence of events (see
    /// [`StateTransition::sequence`]).
    pub fn sequence(&self) -> u64 {
        match self {
            Self::Transition(t) => t.sequence,
            Self::Reset(r) => r.sequence,
        }
    }

    /// When, on the breaker's clock.
    pub fn at(&self) -> Instant {
        match self {
            Self::Transition(t) => t.at,
            Self::Reset(r) => r.at,
        }
    }
}

impl fmt::Display for BreakerEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Transition(t) => t.fmt(f),
            Self::Reset(r) => r.fmt(f),
        }
    }
}

/// A [`reset`](crate::CircuitBreaker::reset): resilience4j's
/// `CircuitBreakerOnResetEvent`.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct BreakerReset {
    /// The breaker's name.
    pub breaker: String,
    /// The state the breaker was in when it was reset (it is closed now).
    pub state: State,
    /// When, on the breaker's clock.
    pub at: Instant,
    /// The event's number (see [`StateTransition::sequence`]).
    pub sequence: u64,
}

impl fmt::Display for BreakerReset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "circuit breaker `{}` was reset in {} state: closed, with an empty window",
            self.breaker, self.state
        )
    }
}

/// A listener. `std::sync::Arc`, not the shim's: loom's `Arc` cannot hold a `dyn Fn`,
/// and listeners are user callbacks, not part of any atomic protocol.
pub(crate) type Listener = std::sync::Arc<dyn Fn(&BreakerEvent) + Send + Sync>;

/// Identifies a listener added with
/// [`CircuitBreaker::subscribe`](crate::CircuitBreaker::subscribe), to remove it
/// with [`unsubscribe`](crate::CircuitBreaker::unsubscribe).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SubscriptionId(u64);

/// How many events (state changes and resets) may wait for delivery to the listeners of one breaker.
/// Beyond it a change is not queued: its event is dropped (counted in
/// [`BreakerStats::dropped_events`](crate::BreakerStats::dropped_events) and logged
/// at `warn`), so a slow listener never makes a state change block or the queue
/// grow without bound. The state change itself always happens.
pub const LISTENER_QUEUE_CAPACITY: usize = 1024;

/// The listeners, and the transitions waiting to be delivered to them.
///
/// Delivery keeps transition order without running user code under a lock: a
/// transition is queued under the breaker's lock (so the queue is in transition
/// order), and after releasing it the thread that made it calls
/// [`dispatch`](Listeners::dispatch). One thread at a time holds the dispatch token
/// (`Queue::busy`) and delivers, front first, with no lock held while a listener
/// runs, only the events that were queued when it took the token: so a thread
/// delivers a bounded batch, never the changes other threads keep making. It then
/// hands the token off: events queued meanwhile (by threads that found the token
/// taken and left) are delivered by the next thread that dispatches (the next state
/// change of this breaker, or [`stats`](crate::CircuitBreaker::stats)). Only the
/// token holder pops, so each listener sees the transitions in the order they were
/// made (strictly increasing sequence numbers, with gaps where events were dropped).
pub(crate) struct Listeners {
    inner: Mutex<ListenerList>,
    queue: Mutex<Queue>,
}

struct Queue {
    events: std::collections::VecDeque<BreakerEvent>,
    busy: bool,
    /// Events dropped because the queue was full, since the breaker was built.
    dropped: u64,
    /// Drops not yet logged (logged by the next dispatch, with no lock held).
    unlogged: u64,
}

struct ListenerList {
    next_id: u64,
    listeners: Vec<(u64, Listener)>,
}

impl Listeners {
    pub(crate) fn new() -> Self {
        Self {
            inner: Mutex::new(ListenerList {
                next_id: 0,
                listeners: Vec::new(),
            }),
            queue: Mutex::new(Queue {
                events: std::collections::VecDeque::new(),
                busy: false,
                dropped: 0,
                unlogged: 0,
            }),
        }
    }

    pub(crate) fn add(&self, listener: Listener) -> SubscriptionId {
        let mut list = lock(&self.inner);
        let id = list.next_id;
        list.next_id += 1;
        list.listeners.push((id, listener));
        SubscriptionId(id)
    }

    pub(crate) fn remove(&self, id: SubscriptionId) -> bool {
        let mut list = lock(&self.inner);
        let before = list.listeners.len();
        list.listeners.retain(|(i, _)| *i != id.0);
        list.listeners.len() != before
    }

    /// Queues `event` for delivery; called under the breaker's lock, in transition
    /// order. Never blocks: with [`LISTENER_QUEUE_CAPACITY`] events waiting, the
    /// event is dropped and counted.
    pub(crate) fn enqueue(&self, event: BreakerEvent) {
        let mut queue = lock(&self.queue);
        if queue.events.len() >= LISTENER_QUEUE_CAPACITY {
            queue.dropped += 1;
            queue.unlogged += 1;
            return;
        }
        queue.events.push_back(event);
    }

    /// Events dropped because the queue was full.
    pub(crate) fn dropped(&self) -> u64 {
        lock(&self.queue).dropped
    }

    /// Delivers, in order, the events queued now, unless another thread holds the
    /// dispatch token (its batch ends before our event; the next dispatch after it
    /// delivers ours). Called with no lock held.
    pub(crate) fn dispatch(&self, breaker: &str) {
        let (batch, unlogged) = {
            let mut queue = lock(&self.queue);
            let unlogged = std::mem::take(&mut queue.unlogged);
            let batch = if queue.busy { 0 } else { queue.events.len() };
            if batch > 0 {
                queue.busy = true;
            }
            (batch, unlogged)
        };
        if unlogged > 0 {
            tracing::warn!(
                breaker,
                dropped = unlogged,
                capacity = LISTENER_QUEUE_CAPACITY,
                "circuit breaker state events dropped: the listeners are too slow"
            );
        }
        for _ in 0..batch {
            // Only the token holder pops, so the front is the next event of our batch.
            let Some(event) = lock(&self.queue).events.pop_front() else {
                break;
            };
            // No lock held: listeners are user code (their panics are caught, so
            // the token is always given back).
            self.emit(&event);
        }
        if batch > 0 {
            // The hand-off: events queued after we took the token are left to the
            // next dispatch, so this thread leaves user code after its own batch.
            lock(&self.queue).busy = false;
        }
    }

    /// Logs `event` and hands it to every listener, on the calling thread, with no
    /// lock held: a listener may call back into the breaker (a transition it makes
    /// is queued and delivered after this one). A listener that panics is logged
    /// and skipped; the others still run.
    fn emit(&self, event: &BreakerEvent) {
        trace(event);
        let listeners: Vec<Listener> = lock(&self.inner)
            .listeners
            .iter()
            .map(|(_, l)| std::sync::Arc::clone(l))
            .collect();
        for listener in listeners {
            if catch_unwind(AssertUnwindSafe(|| listener(event))).is_err() {
                tracing::error!(
                    breaker = event.breaker(),
                    sequence = event.sequence(),
                    "circuit breaker event listener panicked; the panic was caught"
                );
            }
        }
    }
}

impl std::fmt::Debug for Listeners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listeners")
            .field("count", &lock(&self.inner).listeners.len())
            .finish()
    }
}

/// Locks `m`, ignoring poisoning: a listener list stays valid whatever panicked.
fn lock<T>(m: &Mutex<T>) -> crate::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The `tracing` event of a breaker event: for a state change, `warn` when the
/// breaker starts rejecting calls (operator-actionable), `info` when it closes
/// again, `debug` otherwise; `info` for a reset.
fn trace(e: &BreakerEvent) {
    match e {
        BreakerEvent::Transition(t) => trace_transition(t),
        BreakerEvent::Reset(r) => tracing::info!(
            breaker = %r.breaker,
            state = r.state.as_str(),
            "circuit breaker reset"
        ),
    }
}

fn trace_transition(e: &StateTransition) {
    let wait_ms = e.wait.map(|w| w.as_millis() as u64);
    match e.to {
        State::Open | State::ForcedOpen => tracing::warn!(
            breaker = %e.breaker,
            from = e.from.as_str(),
            to = e.to.as_str(),
            reason = %e.reason,
            wait_ms,
            "circuit breaker opened"
        ),
        State::Closed => tracing::info!(
            breaker = %e.breaker,
            from = e.from.as_str(),
            to = e.to.as_str(),
            reason = %e.reason,
            "circuit breaker closed"
        ),
        State::HalfOpen | State::Disabled | State::MetricsOnly => tracing::debug!(
            breaker = %e.breaker,
            from = e.from.as_str(),
            to = e.to.as_str(),
            reason = %e.reason,
            "circuit breaker changed state"
        ),
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use std::sync::{Arc, Mutex};

    use heijunka_core::ManualClock;

    use crate::sync::thread;
    use crate::{CircuitBreaker, State};

    /// Two threads change the state at once; the listener sees both changes, in
    /// the order they were made (each leaves the state the previous one entered),
    /// and the last one is the state the breaker ends in. A thread delivers only
    /// what was queued when it took the token, so the change made meanwhile is
    /// delivered by the next dispatch (`stats`), which the hand-off makes possible.
    #[test]
    fn listeners_see_transitions_in_order() {
        loom::model(|| {
            let b = CircuitBreaker::builder()
                .clock(ManualClock::new())
                .build()
                .expect("valid");
            let seen = Arc::new(Mutex::new(Vec::new()));
            let sink = Arc::clone(&seen);
            b.subscribe(move |t| sink.lock().unwrap().push((t.sequence, t.from, t.to)));
            let other = {
                let b = b.clone();
                thread::spawn(move || b.force_open())
            };
            b.disable();
            other.join().unwrap();
            let _ = b.stats(); // delivers what a busy holder left
            let seen = seen.lock().unwrap();
            assert_eq!(seen.len(), 2, "{seen:?}");
            assert_eq!(seen[0].1, State::Closed, "{seen:?}");
            assert_eq!(seen[1].1, seen[0].2, "out of order: {seen:?}");
            assert!(seen[1].0 > seen[0].0, "{seen:?}");
            assert_eq!(seen[1].2, b.state(), "{seen:?}");
        });
    }

    /// A listener that makes a change itself while a second thread makes one: the
    /// thread holding the token delivers no more than its batch, and every event is
    /// delivered once, in sequence order, by the dispatches that follow.
    #[test]
    fn a_reentrant_change_is_delivered_in_order() {
        loom::model(|| {
            let b = CircuitBreaker::builder()
                .clock(ManualClock::new())
                .build()
                .expect("valid");
            let seen = Arc::new(Mutex::new(Vec::new()));
            let sink = Arc::clone(&seen);
            let inner = b.clone();
            let id = b.subscribe(move |t| {
                sink.lock().unwrap().push(t.sequence);
                if t.to == State::ForcedOpen {
                    inner.metrics_only();
                }
            });
            let other = {
                let b = b.clone();
                thread::spawn(move || b.force_open())
            };
            b.disable();
            other.join().unwrap();
            let _ = b.stats();
            let _ = b.stats(); // a listener's own change may be left to the next one
            // Three changes: forced open, disabled, and the listener's metrics-only
            // (made when it sees forced open, whoever delivers that).
            assert_eq!(
                *seen.lock().unwrap(),
                [1, 2, 3],
                "each event once, in order"
            );
            assert!(b.unsubscribe(id)); // the listener holds the breaker: break the cycle
        });
    }
}
