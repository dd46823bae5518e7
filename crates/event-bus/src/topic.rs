//! [`Topic<E>`]: a named stream of `E` events and its subscribers.

use std::any::type_name;
use std::fmt;
use std::sync::PoisonError;
use std::time::Duration;

use heijunka_backpressure::PushError;
use heijunka_core::{PressureLevel, Rejection, ShardedCounter};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::handler::Handler;
use crate::stats::TopicStats;
use crate::subscriber::{Counts, SubscriberInner};
use crate::{
    BusError, Event, Policy, PublishError, PublishReport, RequestError, SkipReason, SubscribeError,
    SubscriberBuilder, SubscriberId, Subscription,
};

type Subscribers<E> = Arc<Vec<Arc<SubscriberInner<E>>>>;

/// A named stream of `E` events: publishers fan each event out to every
/// subscriber's bounded buffer, sharing one payload among them.
///
/// Made by [`EventBus::topic`](crate::EventBus::topic) (named, looked up by name
/// and type) or [`Topic::new`] (standalone). Clones are handles to the same topic.
///
/// ```
/// use heijunka_event_bus::{EventBus, SkipReason};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let bus = EventBus::new();
/// let orders = bus.topic::<String>("orders")?;
/// let mut audit = orders.subscribe()?;
/// let mut billing = orders.subscriber().min_version(2).subscribe()?;
///
/// let report = orders.publish(String::from("order 1")).await?;
/// assert_eq!(report.delivered, 1); // billing wants version 2 or later
/// assert_eq!(report.skipped, vec![(billing.id(), SkipReason::Filtered)]);
///
/// orders.close();
/// assert_eq!(audit.recv().await.as_deref().map(String::as_str), Some("order 1"));
/// assert!(audit.recv().await.is_none()); // closed and drained
/// assert!(billing.recv().await.is_none());
/// # Ok(())
/// # }
/// ```
pub struct Topic<E: Send + Sync + 'static> {
    pub(crate) inner: Arc<TopicInner<E>>,
}

pub(crate) struct TopicInner<E: Send + Sync + 'static> {
    pub(crate) name: String,
    subscribers: RwLock<Subscribers<E>>,
    /// Serialises subscribe, unsubscribe and close; holds the closed flag.
    writers: Mutex<bool>,
    closed: AtomicBool,
    next_id: AtomicU64,
    published: ShardedCounter,
    undelivered: AtomicU64,
    /// Counts of subscribers that went away.
    pub(crate) departed: Counts,
    pub(crate) handlers: Mutex<Vec<Handler>>,
    /// Which events are critical whatever their flag; read only when a version
    /// filter would skip an event.
    critical_kinds: RwLock<Option<CriticalKinds<E>>>,
}

type CriticalKinds<E> = Arc<dyn Fn(&E) -> bool + Send + Sync>;

impl<E: Send + Sync + 'static> Topic<E> {
    /// A standalone topic (not in any bus), for example a dead-letter topic.
    ///
    /// # Errors
    ///
    /// [`BusError::EmptyName`] for an empty name.
    pub fn new(name: impl Into<String>) -> Result<Self, BusError> {
        let name = name.into();
        if name.is_empty() {
            return Err(BusError::EmptyName);
        }
        Ok(Self {
            inner: Arc::new(TopicInner {
                name,
                subscribers: RwLock::new(Arc::new(Vec::new())),
                writers: Mutex::new(false),
                closed: AtomicBool::new(false),
                next_id: AtomicU64::new(1),
                published: ShardedCounter::new(),
                undelivered: AtomicU64::new(0),
                departed: Counts::default(),
                handlers: Mutex::new(Vec::new()),
                critical_kinds: RwLock::new(None),
            }),
        })
    }

    /// The topic's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Subscribes with the defaults: a buffer of
    /// [`DEFAULT_BUFFER`](crate::DEFAULT_BUFFER) events and
    /// [`Policy::Timeout`] of [`DEFAULT_PUBLISH_TIMEOUT`](crate::DEFAULT_PUBLISH_TIMEOUT).
    ///
    /// # Errors
    ///
    /// [`SubscribeError::Closed`] if the topic is closed.
    pub fn subscribe(&self) -> Result<Subscription<E>, SubscribeError> {
        self.subscriber().subscribe()
    }

    /// A builder for a subscriber with its own buffer size, policy, watermarks
    /// and version filter.
    pub fn subscriber(&self) -> SubscriberBuilder<E> {
        SubscriberBuilder::new(self.clone())
    }

    /// Publishes `event` to every subscriber, each by its [`Policy`]: waits for
    /// room under [`Policy::Block`] (without bound) and [`Policy::Timeout`] (up to
    /// its timeout), skips reject subscribers at their reject mark, and makes room
    /// in drop-oldest ones.
    ///
    /// # Errors
    ///
    /// The event comes back if no subscriber took it: [`PublishError::Closed`],
    /// [`PublishError::NoSubscribers`], or [`PublishError::Undelivered`] with
    /// the reasons.
    pub async fn publish(
        &self,
        event: impl Into<Event<E>>,
    ) -> Result<PublishReport, PublishError<E>> {
        self.publish_until(event.into(), None).await
    }

    /// [`publish`](Self::publish), waiting for room at most `timeout` in all
    /// (less under a subscriber's shorter [`Policy::Timeout`]); subscribers
    /// still full then are skipped with [`SkipReason::TimedOut`].
    ///
    /// # Errors
    ///
    /// As [`publish`](Self::publish).
    pub async fn publish_timeout(
        &self,
        event: impl Into<Event<E>>,
        timeout: Duration,
    ) -> Result<PublishReport, PublishError<E>> {
        // A timeout too long to represent waits without one.
        let deadline = Instant::now().checked_add(timeout);
        match deadline {
            Some(d) => self.publish_until(event.into(), Some(d)).await,
            None => self.publish(event).await,
        }
    }

    async fn publish_until(
        &self,
        event: Event<E>,
        deadline: Option<Instant>,
    ) -> Result<PublishReport, PublishError<E>> {
        let (subs, event) = self.inner.check(event)?;
        let mut report = PublishReport::default();
        // The last subscriber gets the event itself: one refcount bump fewer.
        let mut event = Some(event);
        let last = subs.len() - 1;
        for (i, sub) in subs.iter().enumerate() {
            let Some(copy) = self.copy_for(sub, i == last, &mut event, &mut report) else {
                continue;
            };
            let pushed = match sub.policy {
                Policy::Reject | Policy::DropOldest => sub.offer_now(copy),
                // The waiting policies: below the reject mark a push never waits,
                // so try that first (no timer read, no wait future); above it,
                // skip the attempt that would fail.
                Policy::Block | Policy::Timeout(_) => {
                    if sub.queue.pressure() == PressureLevel::Critical {
                        sub.wait_push(copy, deadline).await.map(|()| 0)
                    } else {
                        match sub.queue.try_push(copy) {
                            Ok(()) => Ok(0),
                            Err(e) if e.reason() == Rejection::ShuttingDown => Err(e),
                            Err(e) => sub.wait_push(e.into_inner(), deadline).await.map(|()| 0),
                        }
                    }
                }
            };
            record(pushed, sub, &mut event, &mut report);
        }
        self.inner.finish(event, report)
    }

    /// The event for one subscriber: `None` (the skip recorded) if its version
    /// filter refuses it; the event itself for the last subscriber (one refcount
    /// bump fewer), a refcount clone for the others.
    fn copy_for(
        &self,
        sub: &SubscriberInner<E>,
        is_last: bool,
        event: &mut Option<Event<E>>,
        report: &mut PublishReport,
    ) -> Option<Event<E>> {
        let ev = event.as_ref().expect("held until the last subscriber");
        if !sub.accepts(ev) && !self.inner.is_critical_kind(ev) {
            skip(report, sub, SkipReason::Filtered);
            return None;
        }
        Some(if is_last {
            event.take().expect("held until the last subscriber")
        } else {
            ev.clone()
        })
    }

    /// Publishes `event` without waiting: a subscriber at its reject mark is
    /// skipped with [`SkipReason::Full`] whatever its policy, except drop-oldest
    /// subscribers, which make room.
    ///
    /// # Errors
    ///
    /// As [`publish`](Self::publish).
    pub fn try_publish(
        &self,
        event: impl Into<Event<E>>,
    ) -> Result<PublishReport, PublishError<E>> {
        let event = event.into();
        let (subs, event) = self.inner.check(event)?;
        let mut report = PublishReport::default();
        let mut event = Some(event);
        let last = subs.len() - 1;
        for (i, sub) in subs.iter().enumerate() {
            let Some(copy) = self.copy_for(sub, i == last, &mut event, &mut report) else {
                continue;
            };
            record(sub.offer_now(copy), sub, &mut event, &mut report);
        }
        drop(subs);
        self.inner.finish(event, report)
    }

    /// Publishes `event` as a request and waits up to `timeout` (publishing
    /// included) for the first [`reply`](Event::reply) of type `R`.
    ///
    /// ```
    /// use heijunka_event_bus::{EventBus, RequestError};
    /// use std::time::Duration;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let bus = EventBus::new();
    /// let search = bus.topic::<String>("search.requests")?;
    /// let _worker = search.handle(4, |query| async move {
    ///     let _ = query.reply(query.len());
    /// })?;
    /// let hits: usize = search.request(String::from("rust"), Duration::from_secs(1)).await?;
    /// assert_eq!(hits, 4);
    ///
    /// let silent = bus.topic::<u8>("silent")?;
    /// let _sub = silent.subscribe()?; // takes requests, never replies
    /// let err = silent.request::<u8>(1, Duration::from_millis(50)).await.unwrap_err();
    /// assert!(matches!(err, RequestError::TimedOut { .. }));
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`RequestError::TimedOut`], [`RequestError::NoReply`] (every subscriber
    /// dropped the event unanswered), or [`RequestError::NotDelivered`] with the
    /// event.
    pub async fn request<R: Send + 'static>(
        &self,
        event: impl Into<Event<E>>,
        timeout: Duration,
    ) -> Result<R, RequestError<E>> {
        let (tx, rx) = oneshot::channel::<R>();
        let event = event.into().with_reply_to(tx);
        // A timeout too long to represent waits without one.
        let deadline = Instant::now().checked_add(timeout);
        if let Err(e) = self.publish_until(event, deadline).await {
            return Err(RequestError::NotDelivered(e));
        }
        let reply = match deadline {
            Some(d) => tokio::time::timeout_at(d, rx).await,
            None => Ok(rx.await),
        };
        match reply {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(RequestError::NoReply),
            Err(_) => Err(RequestError::TimedOut { after: timeout }),
        }
    }

    /// Marks kinds of events critical: an event for which `is_critical` returns
    /// `true` passes every subscriber's version filter, as if published with
    /// [`Event::critical`] (the seeds' rule: a topology flip reaches consumers
    /// still on the old routing version). Replaces an earlier predicate. The
    /// predicate runs only for events a version filter would skip.
    ///
    /// ```
    /// use heijunka_event_bus::{Event, Topic};
    ///
    /// #[derive(Debug, PartialEq)]
    /// enum Routing { Order(u32), TopologyFlip }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let topic = Topic::<Routing>::new("routing")?;
    /// topic.critical_kinds(|e| matches!(e, Routing::TopologyFlip));
    /// let mut sub = topic.subscriber().min_version(2).subscribe()?;
    /// assert!(topic.publish(Event::new(Routing::Order(1)).with_version(1)).await.is_err());
    /// topic.publish(Event::new(Routing::TopologyFlip).with_version(1)).await?;
    /// assert_eq!(sub.recv().await.as_deref(), Some(&Routing::TopologyFlip));
    /// # Ok(())
    /// # }
    /// ```
    pub fn critical_kinds(&self, is_critical: impl Fn(&E) -> bool + Send + Sync + 'static) {
        *self
            .inner
            .critical_kinds
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(is_critical));
    }

    /// Closes the topic: publishes are refused ([`PublishError::Closed`] hands the
    /// event back), waiting publishers are released, and subscribers drain their
    /// buffers, then receive `None`. Returns whether this call closed it.
    pub fn close(&self) -> bool {
        self.inner.close()
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        // Acquire: pairs with the Release in `close`.
        self.inner.closed.load(Ordering::Acquire)
    }

    /// The highest pressure among the subscribers' buffers: a front end can
    /// answer 503 at [`Critical`](PressureLevel::Critical) before buffers fill.
    pub fn pressure(&self) -> PressureLevel {
        self.inner
            .snapshot()
            .iter()
            .map(|s| s.queue.pressure())
            .max()
            .unwrap_or(PressureLevel::Normal)
    }

    /// Subscribers now.
    pub fn subscriber_count(&self) -> usize {
        self.inner.snapshot().len()
    }

    /// A snapshot of the topic's numbers.
    pub fn stats(&self) -> TopicStats {
        self.inner.stats()
    }
}

#[inline]
/// Counts one subscriber's push: delivered (with what drop-oldest displaced), or
/// skipped with its reason, keeping a refused event to hand back if it was the
/// last copy.
fn record<E: Send + Sync + 'static>(
    pushed: Result<usize, PushError<Event<E>>>,
    sub: &SubscriberInner<E>,
    event: &mut Option<Event<E>>,
    report: &mut PublishReport,
) {
    match pushed {
        Ok(displaced) => {
            report.delivered += 1;
            report.displaced += displaced;
        }
        Err(e) => {
            let reason = SkipReason::from_rejection(e.reason());
            if event.is_none() {
                *event = Some(e.into_inner());
            }
            skip(report, sub, reason);
        }
    }
}

fn skip<E: Send + Sync + 'static>(
    report: &mut PublishReport,
    sub: &SubscriberInner<E>,
    reason: SkipReason,
) {
    sub.drops.skip(reason);
    report.skipped.push((sub.id, reason));
}

impl<E: Send + Sync + 'static> TopicInner<E> {
    #[inline]
    pub(crate) fn snapshot(&self) -> Subscribers<E> {
        Arc::clone(
            &self
                .subscribers
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// Whether the topic's [critical kinds](Topic::critical_kinds) include
    /// `event`. Called only on the filtered path; the predicate runs outside the
    /// lock.
    fn is_critical_kind(&self, event: &Event<E>) -> bool {
        let predicate = self
            .critical_kinds
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        predicate.is_some_and(|p| p(&**event))
    }

    pub(crate) fn next_id(&self) -> SubscriberId {
        // Relaxed: only uniqueness matters.
        SubscriberId(self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// The subscribers to publish to, or the event back.
    #[inline]
    fn check(&self, event: Event<E>) -> Result<(Subscribers<E>, Event<E>), PublishError<E>> {
        // Acquire: pairs with the Release in `close`.
        if self.closed.load(Ordering::Acquire) {
            return Err(PublishError::Closed(event));
        }
        let subs = self.snapshot();
        if subs.is_empty() {
            // Relaxed: a statistic.
            self.undelivered.fetch_add(1, Ordering::Relaxed);
            return Err(PublishError::NoSubscribers(event));
        }
        Ok((subs, event))
    }

    /// Ends a publish: the report, or the event back if nobody took it.
    #[inline]
    fn finish(
        &self,
        event: Option<Event<E>>,
        report: PublishReport,
    ) -> Result<PublishReport, PublishError<E>> {
        if report.delivered == 0 {
            // Relaxed: a statistic.
            self.undelivered.fetch_add(1, Ordering::Relaxed);
            let event = event.expect("an event no subscriber took comes back");
            return Err(PublishError::Undelivered { event, report });
        }
        self.published.increment();
        Ok(report)
    }

    pub(crate) fn attach(&self, sub: Arc<SubscriberInner<E>>) -> Result<(), SubscribeError> {
        let closed = self.writers.lock().unwrap_or_else(PoisonError::into_inner);
        if *closed {
            return Err(SubscribeError::Closed(self.name.clone()));
        }
        let mut list = self
            .subscribers
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let mut next: Vec<_> = list.iter().cloned().collect();
        next.push(sub);
        *list = Arc::new(next);
        drop(list);
        drop(closed);
        Ok(())
    }

    pub(crate) fn detach(&self, id: SubscriberId) {
        let _w = self.writers.lock().unwrap_or_else(PoisonError::into_inner);
        let mut list = self
            .subscribers
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if list.iter().any(|s| s.id == id) {
            let next: Vec<_> = list.iter().filter(|s| s.id != id).cloned().collect();
            *list = Arc::new(next);
        }
    }

    pub(crate) fn close(&self) -> bool {
        let mut closed = self.writers.lock().unwrap_or_else(PoisonError::into_inner);
        if *closed {
            return false;
        }
        *closed = true;
        // Release: pairs with the Acquire in `is_closed` and publishes' check.
        self.closed.store(true, Ordering::Release);
        let subs = self.snapshot();
        drop(closed);
        for s in subs.iter() {
            s.queue.close();
        }
        tracing::info!(
            topic = %self.name,
            subscribers = subs.len(),
            "topic closed: subscribers drain their buffers"
        );
        true
    }

    pub(crate) fn stats(&self) -> TopicStats {
        let subs = self.snapshot();
        let subscribers: Vec<_> = subs.iter().map(|s| s.stats()).collect();
        let mut dropped = self.departed.snapshot();
        // Relaxed: a statistic.
        let mut delivered = self.departed.delivered.load(Ordering::Relaxed);
        for s in &subscribers {
            dropped.add(&s.dropped);
            delivered += s.delivered;
        }
        let handlers = self
            .handlers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        TopicStats {
            name: self.name.clone(),
            event_type: type_name::<E>(),
            // Acquire: pairs with the Release in `close`.
            closed: self.closed.load(Ordering::Acquire),
            published: self.published.sum(),
            // Relaxed: a statistic.
            undelivered: self.undelivered.load(Ordering::Relaxed),
            delivered,
            dropped,
            pressure: subscribers
                .iter()
                .map(|s| s.level)
                .max()
                .unwrap_or(PressureLevel::Normal),
            subscribers,
            handlers: handlers.iter().map(Handler::stats).collect(),
        }
    }
}

impl<E: Send + Sync + 'static> Clone for Topic<E> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<E: Send + Sync + 'static> fmt::Debug for Topic<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Topic")
            .field("name", &self.inner.name)
            .field("event", &type_name::<E>())
            .field("subscribers", &self.subscriber_count())
            .field("closed", &self.is_closed())
            .finish()
    }
}
