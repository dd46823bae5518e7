//! State-change listeners and the `tracing` events.

use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::sync::Mutex;
use crate::{State, StateTransition};

/// A listener. `std::sync::Arc`, not the shim's: loom's `Arc` cannot hold a `dyn Fn`,
/// and listeners are user callbacks, not part of any atomic protocol.
type Listener = std::sync::Arc<dyn Fn(&StateTransition) + Send + Sync>;

/// Identifies a listener added with
/// [`CircuitBreaker::subscribe`](crate::CircuitBreaker::subscribe), to remove it
/// with [`unsubscribe`](crate::CircuitBreaker::unsubscribe).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SubscriptionId(u64);

/// The listeners, and the transitions waiting to be delivered to them.
///
/// Delivery keeps transition order without running user code under a lock: a
/// transition is queued under the breaker's lock (so the queue is in transition
/// order), and after releasing it the thread that made it calls
/// [`dispatch`](Listeners::dispatch). One thread at a time holds the dispatch token
/// (`Queue::busy`) and delivers queued events, front first, with no lock held while
/// a listener runs; a thread that finds the token taken leaves its event to the
/// holder, which looks at the queue again, under the queue's lock, after each event
/// and gives the token back only when it finds the queue empty. So no event waits
/// forever, and each listener sees the transitions in the order they were made.
pub(crate) struct Listeners {
    inner: Mutex<ListenerList>,
    queue: Mutex<Queue>,
}

struct Queue {
    events: std::collections::VecDeque<StateTransition>,
    busy: bool,
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
    /// order.
    pub(crate) fn enqueue(&self, event: StateTransition) {
        lock(&self.queue).events.push_back(event);
    }

    /// Delivers the queued events, in order, unless another thread holds the
    /// dispatch token (it will deliver them). Called with no lock held.
    pub(crate) fn dispatch(&self) {
        {
            let mut queue = lock(&self.queue);
            if queue.busy {
                return; // the holder delivers our event after its current one
            }
            queue.busy = true;
        }
        loop {
            let event = {
                let mut queue = lock(&self.queue);
                match queue.events.pop_front() {
                    Some(event) => event,
                    None => {
                        queue.busy = false;
                        return;
                    }
                }
            };
            // No lock held: listeners are user code (their panics are caught, so
            // the token is always given back).
            self.emit(&event);
        }
    }

    /// Logs `event` and hands it to every listener, on the calling thread, with no
    /// lock held: a listener may call back into the breaker (a transition it makes
    /// is queued and delivered after this one). A listener that panics is logged
    /// and skipped; the others still run.
    fn emit(&self, event: &StateTransition) {
        trace(event);
        let listeners: Vec<Listener> = lock(&self.inner)
            .listeners
            .iter()
            .map(|(_, l)| std::sync::Arc::clone(l))
            .collect();
        for listener in listeners {
            if catch_unwind(AssertUnwindSafe(|| listener(event))).is_err() {
                tracing::error!(
                    breaker = %event.breaker,
                    to = event.to.as_str(),
                    "circuit breaker state listener panicked; the panic was caught"
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

/// The `tracing` event of a state change: `warn` when the breaker starts rejecting
/// calls (operator-actionable), `info` when it closes again, `debug` otherwise.
fn trace(e: &StateTransition) {
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
    /// and the last one is the state the breaker ends in.
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
            let seen = seen.lock().unwrap();
            assert_eq!(seen.len(), 2, "{seen:?}");
            assert_eq!(seen[0].1, State::Closed, "{seen:?}");
            assert_eq!(seen[1].1, seen[0].2, "out of order: {seen:?}");
            assert!(seen[1].0 > seen[0].0, "{seen:?}");
            assert_eq!(seen[1].2, b.state(), "{seen:?}");
        });
    }
}
