//! [`EventBus`]: topics by name and type, closed together on shutdown.

use std::any::{Any, type_name};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use heijunka_shutdown::{Shutdown, ShuttingDown};
use tokio::time::Instant;

use crate::handler::{Handler, HandlerEntry};
use crate::stats::TopicStats;
use crate::topic::TopicInner;
use crate::{BusError, Topic};

/// A registry of named, typed [`Topic`]s. Clones are handles to the same bus.
///
/// The bus does not keep a topic alive: a topic that no [`Topic`] handle,
/// [`Subscription`](crate::Subscription) or handler holds any more is dropped
/// (with its ring and counters) and leaves the bus; asking for its name again
/// creates a new one.
///
/// ```
/// use heijunka_event_bus::{BusError, EventBus};
///
/// let bus = EventBus::new();
/// let a = bus.topic::<u64>("search.requests")?;
/// let b = bus.topic::<u64>("search.requests")?; // the same topic
/// let _sub = a.subscribe()?;
/// assert_eq!(b.subscriber_count(), 1);
///
/// let err = bus.topic::<String>("search.requests").unwrap_err();
/// assert!(matches!(err, BusError::TypeMismatch { .. }));
/// assert_eq!(bus.topic::<u64>("").unwrap_err(), BusError::EmptyName);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Default)]
pub struct EventBus {
    topics: Arc<Mutex<HashMap<String, Entry>>>,
}

struct Entry {
    topic: Weak<dyn Any + Send + Sync>,
    ops: Weak<dyn TopicOps>,
    event_type: &'static str,
}

/// What the bus does with a topic whatever its event type.
trait TopicOps: Send + Sync {
    fn close(&self) -> bool;
    fn stats(&self) -> TopicStats;
    fn handlers(&self) -> Vec<Handler>;
}

impl<E: Send + Sync + 'static> TopicOps for TopicInner<E> {
    fn close(&self) -> bool {
        TopicInner::close(self)
    }

    fn stats(&self) -> TopicStats {
        TopicInner::stats(self)
    }

    fn handlers(&self) -> Vec<Handler> {
        self.handlers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter_map(|e| match e {
                HandlerEntry::Live(h) => Some(h.clone()),
                HandlerEntry::Done { .. } => None,
            })
            .collect()
    }
}

impl EventBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// The topic called `name` carrying `E`, created on first use with a ring
    /// of [`DEFAULT_CAPACITY`](crate::DEFAULT_CAPACITY) events.
    ///
    /// # Errors
    ///
    /// [`BusError::EmptyName`], or [`BusError::TypeMismatch`] if the name is
    /// taken by a topic of another event type.
    pub fn topic<E: Send + Sync + 'static>(&self, name: &str) -> Result<Topic<E>, BusError> {
        self.topic_with(name, || Topic::<E>::new(name))
    }

    /// The topic called `name` carrying `E`, created on first use with a ring
    /// of `capacity` events ([`Topic::with_capacity`]). An existing topic keeps
    /// the capacity it was created with.
    ///
    /// ```
    /// use heijunka_event_bus::{BusError, EventBus};
    ///
    /// let bus = EventBus::new();
    /// let ticks = bus.topic_with_capacity::<u64>("ticks", 8192)?;
    /// assert_eq!(ticks.capacity(), 8192);
    /// let err = bus.topic_with_capacity::<u64>("big", 1 << 30).unwrap_err();
    /// assert!(matches!(err, BusError::Config(e) if e.field() == "capacity"));
    /// # Ok::<(), BusError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`topic`](Self::topic), and [`BusError::Config`] for a bad capacity.
    pub fn topic_with_capacity<E: Send + Sync + 'static>(
        &self,
        name: &str,
        capacity: usize,
    ) -> Result<Topic<E>, BusError> {
        self.topic_with(name, || Topic::<E>::with_capacity(name, capacity))
    }

    fn topic_with<E: Send + Sync + 'static>(
        &self,
        name: &str,
        create: impl FnOnce() -> Result<Topic<E>, BusError>,
    ) -> Result<Topic<E>, BusError> {
        if name.is_empty() {
            return Err(BusError::EmptyName);
        }
        let mut topics = self.topics.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = topics.get(name)
            && let Some(topic) = entry.topic.upgrade()
        {
            return topic
                .downcast::<TopicInner<E>>()
                .map(|inner| Topic { inner })
                .map_err(|_| BusError::TypeMismatch {
                    name: name.to_owned(),
                    existing: entry.event_type,
                    requested: type_name::<E>(),
                });
        }
        let topic = create()?;
        // Topics nobody holds any more leave the map here (and are skipped
        // everywhere else).
        topics.retain(|_, e| e.topic.strong_count() > 0);
        let any: Arc<dyn Any + Send + Sync> = topic.inner.clone();
        let ops: Arc<dyn TopicOps> = topic.inner.clone();
        topics.insert(
            name.to_owned(),
            Entry {
                topic: Arc::downgrade(&any),
                ops: Arc::downgrade(&ops),
                event_type: type_name::<E>(),
            },
        );
        tracing::debug!(topic = name, event = type_name::<E>(), "topic created");
        Ok(topic)
    }

    /// The names of the live topics, sorted.
    pub fn topic_names(&self) -> Vec<String> {
        let mut names: Vec<_> = self.entries().into_iter().map(|(n, _)| n).collect();
        names.sort();
        names
    }

    /// Snapshots of every topic, sorted by name.
    pub fn stats(&self) -> Vec<TopicStats> {
        let mut stats: Vec<_> = self
            .entries()
            .into_iter()
            .map(|(_, ops)| ops.stats())
            .collect();
        stats.sort_by(|a, b| a.name.cmp(&b.name));
        stats
    }

    /// Closes every topic (see [`Topic::close`]).
    pub fn close(&self) {
        for (_, ops) in self.entries() {
            ops.close();
        }
    }

    /// Closes every topic, then gives the topics' handler runtimes up to `grace`
    /// in all to handle what is buffered; what is left is cancelled and its
    /// events go back. Returns whether every handler finished in time.
    ///
    /// Topics that are a handler's dead-letter topic close last, after the other
    /// handlers have drained, so failures during the drain are still dead-lettered.
    /// Other topics a handler publishes to close in the first phase: close those
    /// yourself afterwards (or publish with a policy that tolerates `Closed`).
    ///
    /// # Cancel safety
    ///
    /// Its first poll closes the first phase's topics; dropped after that,
    /// handlers still drain what they buffered (no grace is enforced then), and
    /// a second `shutdown` closes the rest and completes (`tests/cancel.rs`).
    pub async fn shutdown(&self, grace: Duration) -> bool {
        let entries = self.entries();
        // Dead-letter topics close last: failures while the other handlers drain
        // must still reach them.
        let targets: std::collections::HashSet<String> = entries
            .iter()
            .flat_map(|(_, ops)| ops.handlers())
            .filter_map(|h| h.dead_letter_topic().map(str::to_owned))
            .collect();
        let deadline = Instant::now().checked_add(grace);
        let left = || deadline.map_or(grace, |d| d.saturating_duration_since(Instant::now()));
        let mut clean = true;
        for last in [false, true] {
            let phase: Vec<_> = entries
                .iter()
                .filter(|(name, _)| targets.contains(name) == last)
                .collect();
            for (_, ops) in &phase {
                ops.close();
            }
            for (_, ops) in &phase {
                for h in ops.handlers() {
                    clean &= h.stop(left()).await;
                }
            }
        }
        clean
    }

    /// Registers a stop hook with `shutdown` that runs
    /// [`shutdown(grace)`](Self::shutdown): topics close after the service's
    /// in-flight work drained, and handlers finish their buffered events.
    ///
    /// The hook's time limit is `grace` plus
    /// [`HOOK_GRACE_MARGIN`](heijunka_shutdown::HOOK_GRACE_MARGIN) (or the
    /// coordinator's hook timeout if longer), so the shutdown never cuts this
    /// component off before its grace is over
    /// ([`Shutdown::on_stop_with_grace`](heijunka_shutdown::Shutdown::on_stop_with_grace)).
    ///
    /// ```
    /// use heijunka_event_bus::EventBus;
    /// use heijunka_shutdown::{HookOutcome, Shutdown};
    /// use std::time::Duration;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let shutdown = Shutdown::new();
    /// let bus = EventBus::new();
    /// bus.register_with(&shutdown, Duration::from_secs(10))?;
    /// let mut sub = bus.topic::<u32>("t")?.subscribe()?;
    /// bus.topic::<u32>("t")?.publish(1).await?;
    ///
    /// shutdown.trigger();
    /// let report = shutdown.wait().await;
    /// assert_eq!(report.hooks[0].outcome, HookOutcome::Ok);
    /// assert_eq!(sub.recv().await.map(|e| *e), Some(1)); // drained...
    /// assert!(sub.recv().await.is_none()); // ...then closed
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`ShuttingDown`] if the shutdown's hooks already ran.
    pub fn register_with(&self, shutdown: &Shutdown, grace: Duration) -> Result<(), ShuttingDown> {
        let bus = self.clone();
        shutdown.on_stop_with_grace("event bus", grace, move || async move {
            if bus.shutdown(grace).await {
                Ok(())
            } else {
                Err("event handlers did not finish within the grace period")
            }
        })
    }

    fn entries(&self) -> Vec<(String, Arc<dyn TopicOps>)> {
        self.topics
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter_map(|(n, e)| Some((n.clone(), e.ops.upgrade()?)))
            .collect()
    }
}

impl fmt::Debug for EventBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventBus")
            .field("topics", &self.topic_names())
            .finish()
    }
}
