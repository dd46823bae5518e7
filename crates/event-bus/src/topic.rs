//! [`Topic<E>`]: a named stream of `E` events and its subscribers.

use std::any::type_name;
use std::fmt;
use std::sync::PoisonError;
use std::time::Duration;

use heijunka_core::PressureLevel;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::buffer::Intake;
use crate::handler::Handler;
use crate::metrics::TopicMetrics;
use crate::stats::TopicStats;
use crate::subscriber::{Counts, SubscriberInner};
use crate::{
    BusError, Event, Policy, PublishError, PublishReport, RequestError, SkipReason, SubscribeError,
    SubscriberBuilder, SubscriberId, Subscription,
};

/// What publishers, subscribe, unsubscribe and close share, under one lock.
///
/// Publishes hold it while they fill buffers (never while they wait for room):
/// so each subscriber's buffer has one writer at a time, and every subscriber
/// sees the events of concurrent publishers in the same order.
pub(crate) struct State<E: Send + Sync + 'static> {
    closed: bool,
    subscribers: Vec<Entry<E>>,
}

/// A subscriber in the list, with the producing end of its buffer.
struct Entry<E: Send + Sync + 'static> {
    sub: Arc<SubscriberInner<E>>,
    intake: Intake<Event<E>>,
}

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
    state: Mutex<State<E>>,
    /// The closed flag, readable without the lock.
    closed: AtomicBool,
    /// The highest minimum version among the subscribers: an event at or above
    /// it passes every filter, so the critical-kinds predicate need not run.
    max_min_version: AtomicU64,
    next_id: AtomicU64,
    /// Written under the lock (a load and a store, no read-modify-write).
    published: AtomicU64,
    undelivered: AtomicU64,
    /// Counts of subscribers that went away.
    pub(crate) departed: Counts,
    pub(crate) metrics: TopicMetrics,
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
        let metrics = TopicMetrics::new(&name);
        Ok(Self {
            inner: Arc::new(TopicInner {
                name,
                state: Mutex::new(State {
                    closed: false,
                    subscribers: Vec::new(),
                }),
                closed: AtomicBool::new(false),
                max_min_version: AtomicU64::new(0),
                next_id: AtomicU64::new(1),
                published: AtomicU64::new(0),
                undelivered: AtomicU64::new(0),
                departed: Counts::with_metrics(metrics.dropped.clone()),
                metrics,
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
        let mut pass = self.inner.fan_out(event, Wait::Yes)?;
        drop(std::mem::take(&mut pass.displaced));
        // Subscribers whose buffers were full: wait for each in turn, without the
        // lock, and only as long as its policy and the deadline allow.
        for (sub, copy) in std::mem::take(&mut pass.waiting) {
            let deadline = match (sub.policy, deadline) {
                (Policy::Timeout(t), d) => {
                    let own = Instant::now().checked_add(t);
                    match (own, d) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    }
                }
                (_, d) => d,
            };
            // Boxed: the slow path's future (a timer, a `Notified`) would
            // otherwise make every publish future several times larger.
            match Box::pin(self.inner.push_waiting(&sub, copy, deadline)).await {
                Waited::Pushed => pass.record(Ok(()), &sub),
                Waited::Skipped(event, reason) => pass.counted_skip(event, &sub, reason),
            }
        }
        self.inner.finish(pass)
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
        let pass = self.inner.fan_out(event.into(), Wait::No)?;
        self.inner.finish(pass)
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
            .lock()
            .subscribers
            .iter()
            .map(|e| e.sub.buffer.pressure())
            .max()
            .unwrap_or(PressureLevel::Normal)
    }

    /// Subscribers now.
    pub fn subscriber_count(&self) -> usize {
        self.inner.lock().subscribers.len()
    }

    /// A snapshot of the topic's numbers.
    pub fn stats(&self) -> TopicStats {
        self.inner.stats()
    }
}

/// Whether a publish may wait for room.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wait {
    Yes,
    No,
}

/// How a wait for room ended.
enum Waited<E: Send + Sync + 'static> {
    Pushed,
    /// Skipped, and already counted under the topic's lock: in the
    /// subscriber's drops, or in the topic's `departed` if it left.
    Skipped(Event<E>, SkipReason),
}

/// One publish in progress: its report, the event to hand back if nobody took
/// it, and the subscribers it still has to wait for.
struct Pass<E: Send + Sync + 'static> {
    report: PublishReport,
    /// The event itself until the last subscriber takes it; a refused copy
    /// comes back here if it was the last one.
    event: Option<Event<E>>,
    waiting: Vec<(Arc<SubscriberInner<E>>, Event<E>)>,
    /// Whether `published` already counts this publish.
    counted: bool,
    /// Events drop-oldest took out, dropped once the lock is released.
    displaced: Displaced<E>,
}

/// Events displaced by one publish (at most one per drop-oldest subscriber),
/// held until the topic's lock is released; the first two without allocating.
struct Displaced<E: Send + Sync + 'static> {
    few: [Option<Event<E>>; 2],
    more: Vec<Event<E>>,
}

impl<E: Send + Sync + 'static> Default for Displaced<E> {
    fn default() -> Self {
        Self {
            few: [None, None],
            more: Vec::new(),
        }
    }
}

impl<E: Send + Sync + 'static> Displaced<E> {
    fn keep(&mut self, event: Event<E>) {
        match self.few.iter_mut().find(|s| s.is_none()) {
            Some(slot) => *slot = Some(event),
            None => self.more.push(event),
        }
    }
}

impl<E: Send + Sync + 'static> Pass<E> {
    /// Counts one subscriber's push: delivered, or skipped with its reason,
    /// keeping a refused event to hand back if it was the last copy.
    fn record(&mut self, pushed: Result<(), (Event<E>, SkipReason)>, sub: &SubscriberInner<E>) {
        match pushed {
            Ok(()) => self.report.delivered += 1,
            Err((event, reason)) => {
                if self.event.is_none() {
                    self.event = Some(event);
                }
                self.skip(sub, reason);
            }
        }
    }

    /// Reports `sub` skipped for `reason`, a skip its caller already counted.
    fn counted_skip(&mut self, event: Event<E>, sub: &SubscriberInner<E>, reason: SkipReason) {
        if self.event.is_none() {
            self.event = Some(event);
        }
        self.report.skipped.push((sub.id, reason));
    }

    fn skip(&mut self, sub: &SubscriberInner<E>, reason: SkipReason) {
        sub.drops.skip(reason);
        self.report.skipped.push((sub.id, reason));
    }
}

impl<E: Send + Sync + 'static> TopicInner<E> {
    /// The topic's lock: publishes, subscription changes, close, and a
    /// consumer on its way to sleep.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State<E>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current subscribers (a copy of the list, for reading outside the
    /// lock).
    pub(crate) fn snapshot(&self) -> Vec<Arc<SubscriberInner<E>>> {
        self.lock()
            .subscribers
            .iter()
            .map(|e| Arc::clone(&e.sub))
            .collect()
    }

    /// Whether the topic's [critical kinds](Topic::critical_kinds) include
    /// `event`. The predicate runs outside every lock.
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

    /// The pass over every subscriber under the lock: filters, pushes what fits
    /// without waiting, skips what its policy skips, and leaves the full buffers
    /// of waiting policies (under `Wait::Yes`) for the caller.
    #[inline]
    fn fan_out(&self, event: Event<E>, wait: Wait) -> Result<Pass<E>, PublishError<E>> {
        // Acquire: pairs with the Release in `close`; the lock re-checks.
        if self.closed.load(Ordering::Acquire) {
            return Err(PublishError::Closed(event));
        }
        // Whether the event passes version filters as critical: decided outside
        // the lock (the predicate is user code), and only if some filter could
        // refuse it. `max_min_version` changes only under the lock, so reading
        // it again there tells whether a subscribe raced this decision.
        let version = event.version();
        let mut asked = 0;
        let mut critical = event.is_critical();
        let mut state = loop {
            // Relaxed: re-checked under the lock below.
            let max_min = self.max_min_version.load(Ordering::Relaxed);
            if !critical && version < max_min && asked < max_min {
                critical = self.is_critical_kind(&event);
                asked = max_min;
            }
            let state = self.lock();
            // Relaxed: written only under the lock, which this holds.
            let now = self.max_min_version.load(Ordering::Relaxed);
            if critical || version >= now || asked >= now {
                break state;
            }
        };
        if state.closed {
            return Err(PublishError::Closed(event));
        }
        let subs = &mut state.subscribers;
        if subs.is_empty() {
            drop(state);
            // Relaxed: a statistic.
            self.undelivered.fetch_add(1, Ordering::Relaxed);
            self.metrics.undelivered.increment(1);
            return Err(PublishError::NoSubscribers(event));
        }
        let mut pass = Pass {
            report: PublishReport::default(),
            event: Some(event),
            waiting: Vec::new(),
            counted: false,
            displaced: Displaced::default(),
        };
        let last = subs.len() - 1;
        for (i, Entry { sub, intake }) in subs.iter_mut().enumerate() {
            if !sub.accepts(version, critical) {
                pass.skip(sub, SkipReason::Filtered);
                continue;
            }
            if sub.buffer.is_closed() {
                pass.skip(sub, SkipReason::Closed);
                continue;
            }
            // The last subscriber gets the event itself: one refcount bump fewer.
            let copy = if i == last {
                pass.event.take()
            } else {
                pass.event.clone()
            }
            .expect("held until the last subscriber");
            let pushed = match (sub.policy, wait) {
                (Policy::DropOldest, _) => {
                    if let Some(old) = sub.buffer.force_push(intake, copy) {
                        // Dropped after the lock: it may be the last handle of a
                        // pooled value, and its reset is user code.
                        pass.displaced.keep(old);
                        pass.report.displaced += 1;
                    }
                    Ok(())
                }
                (Policy::Reject, _) | (_, Wait::No) => sub
                    .buffer
                    .try_push(intake, copy, sub.buffer.reject_slots())
                    .map_err(|e| (e, SkipReason::Full)),
                (Policy::Block | Policy::Timeout(_), Wait::Yes) => {
                    match sub.buffer.try_push(intake, copy, sub.buffer.capacity()) {
                        Ok(()) => Ok(()),
                        Err(copy) => {
                            pass.waiting.push((Arc::clone(sub), copy));
                            continue;
                        }
                    }
                }
            };
            if pushed.is_ok() {
                // Handshake 1 of `buffer`: under the lock.
                sub.buffer.wake_consumer();
            }
            pass.record(pushed, sub);
        }
        if pass.waiting.is_empty() && pass.report.delivered > 0 {
            self.count_published();
            pass.counted = true;
        }
        drop(state);
        // One update per publish for the pushes of this pass, not one per
        // subscriber.
        if pass.report.delivered > 0 {
            self.metrics
                .delivered
                .increment(pass.report.delivered as u64);
        }
        if pass.report.displaced > 0 {
            self.metrics
                .dropped
                .displaced
                .increment(pass.report.displaced as u64);
        }
        Ok(pass)
    }

    /// Pushes `event` into a buffer that was full, waiting for room until
    /// `deadline`; at the deadline it tries once more.
    async fn push_waiting(
        &self,
        sub: &SubscriberInner<E>,
        event: Event<E>,
        deadline: Option<Instant>,
    ) -> Waited<E> {
        let mut event = event;
        loop {
            let in_time = sub.buffer.wait_room(deadline).await;
            let mut state = self.lock();
            let closed = state.closed;
            let entry = state.subscribers.iter_mut().find(|e| e.sub.id == sub.id);
            // Skips are counted here, under the lock: a subscription that drops
            // detaches under it, then folds its counts into `departed` without
            // it, so a skip counted after this lock is released could miss the
            // fold and be lost.
            let Some(Entry { intake, .. }) = entry else {
                // Detached: its counts are (or are being) folded into `departed`.
                self.departed.skip(SkipReason::Closed);
                return Waited::Skipped(event, SkipReason::Closed);
            };
            if closed || sub.buffer.is_closed() {
                sub.drops.skip(SkipReason::Closed);
                return Waited::Skipped(event, SkipReason::Closed);
            }
            match sub.buffer.try_push(intake, event, sub.buffer.capacity()) {
                Ok(()) => {
                    sub.buffer.wake_consumer();
                    self.metrics.delivered.increment(1);
                    return Waited::Pushed;
                }
                Err(e) if !in_time => {
                    sub.drops.skip(SkipReason::TimedOut);
                    return Waited::Skipped(e, SkipReason::TimedOut);
                }
                Err(e) => event = e,
            }
        }
    }

    /// Ends a publish: the report, or the event back if nobody took it.
    #[inline]
    fn finish(&self, pass: Pass<E>) -> Result<PublishReport, PublishError<E>> {
        if pass.report.delivered == 0 {
            // Relaxed: a statistic.
            self.undelivered.fetch_add(1, Ordering::Relaxed);
            self.metrics.undelivered.increment(1);
            let event = pass.event.expect("an event no subscriber took comes back");
            return Err(PublishError::Undelivered {
                event,
                report: pass.report,
            });
        }
        if !pass.counted {
            let _state = self.lock();
            self.count_published();
        }
        Ok(pass.report)
    }

    /// Counts a publish that reached a subscriber. The caller holds the lock.
    #[inline]
    fn count_published(&self) {
        // Relaxed: a statistic, written only under the lock.
        let n = self.published.load(Ordering::Relaxed);
        self.published.store(n + 1, Ordering::Relaxed);
        self.metrics.published.increment(1);
    }

    pub(crate) fn attach(
        &self,
        sub: Arc<SubscriberInner<E>>,
        intake: Intake<Event<E>>,
    ) -> Result<(), SubscribeError> {
        let mut state = self.lock();
        if state.closed {
            return Err(SubscribeError::Closed(self.name.clone()));
        }
        // Relaxed: see `fan_out`.
        self.max_min_version
            .fetch_max(sub.min_version, Ordering::Relaxed);
        state.subscribers.push(Entry { sub, intake });
        Ok(())
    }

    /// Closes `sub`'s buffer and removes it from the list, under the lock: no
    /// publish pushes to it afterwards.
    pub(crate) fn detach(&self, sub: &SubscriberInner<E>) {
        let mut state = self.lock();
        sub.buffer.close();
        state.subscribers.retain(|e| e.sub.id != sub.id);
        let max = state
            .subscribers
            .iter()
            .map(|e| e.sub.min_version)
            .max()
            .unwrap_or(0);
        // Relaxed: see `fan_out`.
        self.max_min_version.store(max, Ordering::Relaxed);
    }

    /// Stops intake for `sub` (a handler runtime stopping): its buffer closes
    /// under the lock, it stays listed until its subscription drops.
    pub(crate) fn close_subscriber(&self, sub: &SubscriberInner<E>) {
        let _state = self.lock();
        sub.buffer.close();
    }

    pub(crate) fn close(&self) -> bool {
        let mut state = self.lock();
        if state.closed {
            return false;
        }
        state.closed = true;
        // Release: pairs with the Acquire in `is_closed` and publishes' check.
        self.closed.store(true, Ordering::Release);
        for e in &state.subscribers {
            e.sub.buffer.close();
        }
        let subscribers = state.subscribers.len();
        drop(state);
        tracing::info!(
            topic = %self.name,
            subscribers,
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
            // Relaxed: a statistic.
            published: self.published.load(Ordering::Relaxed),
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
