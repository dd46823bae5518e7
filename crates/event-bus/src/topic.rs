//! [`Topic<E>`]: a named stream of `E` events, one ring, its subscribers.
//!
//! # The publish protocol
//!
//! `tail` counts the sequences claimed (its top bit, `CLOSED`, is set once by
//! `close`). A publisher claims sequence `t` with one compare-and-swap on it,
//! writes the event into slot `t % capacity` and stores the slot's stamp.
//!
//! A claim is allowed when no subscriber is behind by its `limit` at `t`
//! (`SubscriberInner::limit`: its buffer, its reject mark, or the whole ring).
//! `gate` caches that bound: the minimum of `position + limit` over the
//! subscribers at the last rescan. Cursors only move forward, so a claim below
//! the gate needs nothing else: the fast path is a load of `tail`, a load of
//! `gate` and the compare-and-swap. At or above the gate, the publisher takes
//! the topic's lock (`list`) and rescans: each subscriber at its limit is
//! waited for (`Block`, `Timeout`), skipped with a mark in its skip bitmap
//! (`Reject`, a timed-out `Timeout`, every policy under `try_publish`), or
//! lapped (a subscriber a whole ring behind: `SubscriberInner::lap`). It then
//! claims under the lock and stores the new gate. Every `limit` is at most the
//! ring's capacity, so no claim reaches a slot a subscriber has not read (a
//! subscriber whose intake stopped and that read up to its end no longer
//! counts: it reads no slot again).
//!
//! A subscriber joins under the lock: it first stores a gate of 0 (every
//! publisher rescans), then reads `tail` for its starting position. A fast
//! path that loaded the old gate loaded `tail` before it (`SeqCst`), so its
//! claim is at most the joiner's start: it never overruns the new subscriber.
//!
//! A publish never waits with a sequence claimed: it waits for room before the
//! claim, and between the claim and the stamp there is no `.await` and nothing
//! that can fail. That is why `publish` is cancel safe: dropped while waiting,
//! it published nothing.
//!
//! A consumer that finds nothing registers its waker in `consumers`, then sets
//! `tail`'s `SLEEPERS` bit with a `fetch_or`, which also returns the sequences
//! claimed so far. One location, one modification order: a claim after the
//! `fetch_or` is a compare-and-swap from a value with the bit, and its
//! publisher clears the bit and wakes the sleepers once its event is written;
//! a claim before it is in the value returned, and the consumer polls again
//! instead of sleeping. With nobody asleep a publish pays nothing for it (the
//! bit is in the `tail` it loads anyway). The slot itself is written with
//! plain stores, so a publish does not stall on the slot's cache line. A
//! publisher waiting for room does the same with a flag in the subscriber's
//! cursor (`subscriber.rs`).
//!
//! Reclaim (taking out of the ring events every subscriber has read, so pooled
//! payloads and request reply slots are released early) runs under the lock:
//! it closes the gate (0), so new claims wait for the lock, and takes only
//! events whose slot's next sequence is not claimed.
// The one `unsafe` call here is `Ring::write`, with its SAFETY argument.
#![allow(unsafe_code)]

use std::any::type_name;
use std::fmt;
use std::future::poll_fn;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{OnceLock, PoisonError, RwLock};
use std::task::Poll;
use std::time::Duration;

use heijunka_core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use heijunka_core::sync::{CachePadded, Mutex, MutexGuard};
use heijunka_core::{ConfigError, PressureLevel, validate};
use std::sync::Arc;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::handler::HandlerEntry;
use crate::metrics::TopicMetrics;
use crate::ring::Ring;
use crate::stats::TopicStats;
use crate::subscriber::{Counts, Lapped, Settings, SubscriberInner};
use crate::wake::WakeList;
use crate::{
    BusError, Event, MAX_BUFFER, Policy, PublishError, PublishReport, RequestError, SkipReason,
    SubscribeError, SubscriberBuilder, SubscriberId, Subscription,
};

/// Events a topic's ring holds when no capacity is set: room for the default
/// buffer ([`DEFAULT_BUFFER`](crate::DEFAULT_BUFFER)) twice over.
pub const DEFAULT_CAPACITY: usize = 2048;

/// The largest topic ring: 2^21 events.
pub const MAX_CAPACITY: usize = 2 * MAX_BUFFER;

/// `tail`'s "closed" bit.
const CLOSED: u64 = 1 << 63;

/// `tail`'s "consumers sleep" bit (module docs).
const SLEEPERS: u64 = 1 << 62;

/// `tail`'s sequence bits.
const SEQUENCE: u64 = SLEEPERS - 1;

/// A named stream of `E` events: publishers put each event once into the
/// topic's ring, and every subscriber reads it from there.
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
    /// The ring's capacity when the first subscriber allocates it (at least
    /// twice that subscriber's buffer).
    capacity: usize,
    ring: OnceLock<Ring<E>>,
    /// Sequences claimed, `CLOSED` and `SLEEPERS`.
    tail: CachePadded<AtomicU64>,
    /// Claims below it need no rescan (module docs).
    gate: CachePadded<AtomicU64>,
    /// The subscribers; the lock of joins, leaves, rescans and close.
    list: Mutex<Vec<Arc<SubscriberInner<E>>>>,
    /// Subscribers still taking events.
    open: AtomicUsize,
    /// The highest minimum version among the subscribers: an event at or above
    /// it passes every filter, and takes the fast path.
    max_min_version: AtomicU64,
    pub(crate) consumers: WakeList,
    pub(crate) room: WakeList,
    next_id: AtomicU64,
    /// Slots below it were reclaimed (or skipped by it): written under the lock.
    reclaimed: AtomicU64,
    /// Whether an event that holds something (a shared payload, a reply slot)
    /// was ever published: topics of inline events never reclaim.
    releasable: AtomicBool,
    undelivered: AtomicU64,
    predicate_panics: AtomicU64,
    /// Counts of subscribers that went away.
    pub(crate) departed: Counts,
    pub(crate) metrics: TopicMetrics,
    pub(crate) handlers: std::sync::Mutex<Vec<HandlerEntry>>,
    /// Which events are critical whatever their flag; asked only when a
    /// version filter would skip an event.
    critical_kinds: RwLock<Option<CriticalKinds<E>>>,
}

type CriticalKinds<E> = Arc<dyn Fn(&E) -> bool + Send + Sync>;

impl<E: Send + Sync + 'static> Topic<E> {
    /// A standalone topic (not in any bus), for example a dead-letter topic,
    /// with a ring of [`DEFAULT_CAPACITY`].
    ///
    /// # Errors
    ///
    /// [`BusError::EmptyName`] for an empty name.
    pub fn new(name: impl Into<String>) -> Result<Self, BusError> {
        Self::with_capacity(name, DEFAULT_CAPACITY)
    }

    /// A standalone topic whose ring holds `capacity` events (rounded up to a
    /// power of two; at most [`MAX_CAPACITY`]). A subscriber's buffer may be
    /// at most half of it. The ring is allocated by the first subscriber, and
    /// larger if that subscriber's buffer needs it.
    ///
    /// ```
    /// use heijunka_event_bus::Topic;
    ///
    /// let topic = Topic::<u64>::with_capacity("ticks", 100)?;
    /// assert_eq!(topic.capacity(), 128);
    /// let _sub = topic.subscriber().buffer(64).subscribe()?; // allocates the ring
    /// assert!(topic.subscriber().buffer(100).subscribe().is_err()); // over half
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`BusError::EmptyName`], or [`BusError::Config`] for a capacity below 2
    /// or above [`MAX_CAPACITY`].
    pub fn with_capacity(name: impl Into<String>, capacity: usize) -> Result<Self, BusError> {
        let name = name.into();
        if name.is_empty() {
            return Err(BusError::EmptyName);
        }
        validate::at_least("capacity", capacity, 2)?;
        validate::at_most("capacity", capacity, MAX_CAPACITY)?;
        let metrics = TopicMetrics::new(&name);
        Ok(Self {
            inner: Arc::new(TopicInner {
                name,
                capacity: capacity.next_power_of_two(),
                ring: OnceLock::new(),
                tail: CachePadded::new(AtomicU64::new(0)),
                gate: CachePadded::new(AtomicU64::new(0)),
                list: Mutex::new(Vec::new()),
                open: AtomicUsize::new(0),
                max_min_version: AtomicU64::new(0),
                consumers: WakeList::default(),
                room: WakeList::default(),
                next_id: AtomicU64::new(1),
                reclaimed: AtomicU64::new(0),
                releasable: AtomicBool::new(false),
                undelivered: AtomicU64::new(0),
                predicate_panics: AtomicU64::new(0),
                departed: Counts::with_metrics(metrics.dropped.clone()),
                metrics,
                handlers: std::sync::Mutex::new(Vec::new()),
                critical_kinds: RwLock::new(None),
            }),
        })
    }

    /// The topic's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Events the ring holds: the allocated ring's size, or the size the first
    /// subscriber will allocate (at least this).
    pub fn capacity(&self) -> usize {
        self.inner
            .ring
            .get()
            .map_or(self.inner.capacity, Ring::capacity)
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

    /// A builder for a subscriber with its own buffer, policy, watermarks and
    /// version filter.
    pub fn subscriber(&self) -> SubscriberBuilder<E> {
        SubscriberBuilder::new(self.clone())
    }

    /// Publishes `event` to every subscriber, each by its [`Policy`]: waits for
    /// room under [`Policy::Block`] (without bound) and [`Policy::Timeout`] (up to
    /// its timeout), skips reject subscribers at their reject mark, and lets
    /// drop-oldest ones lose their oldest events.
    ///
    /// # Errors
    ///
    /// The event comes back if no subscriber took it: [`PublishError::Closed`],
    /// [`PublishError::NoSubscribers`], or [`PublishError::Undelivered`] with
    /// the reasons.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the event is published, to every subscriber by its policy,
    /// in the one poll that returns `Ready`, or not at all. A `publish` dropped
    /// while it waits for room has published nothing and counted nothing; the
    /// event is dropped with it (a pooled one goes back to its pool).
    pub async fn publish(
        &self,
        event: impl Into<Event<E>>,
    ) -> Result<PublishReport, PublishError<E>> {
        self.inner.publish_until(event.into(), None).await
    }

    /// [`publish`](Self::publish), waiting for room at most `timeout` in all
    /// (less under a subscriber's shorter [`Policy::Timeout`]); subscribers
    /// still full then are skipped with [`SkipReason::TimedOut`].
    ///
    /// # Errors
    ///
    /// As [`publish`](Self::publish).
    ///
    /// # Cancel safety
    ///
    /// As [`publish`](Self::publish).
    pub async fn publish_timeout(
        &self,
        event: impl Into<Event<E>>,
        timeout: Duration,
    ) -> Result<PublishReport, PublishError<E>> {
        // A timeout too long to represent waits without one.
        let deadline = Instant::now().checked_add(timeout);
        self.inner.publish_until(event.into(), deadline).await
    }

    /// Publishes `event` without waiting: a subscriber that `publish` would
    /// wait for is skipped with [`SkipReason::Full`] instead.
    ///
    /// # Errors
    ///
    /// As [`publish`](Self::publish).
    pub fn try_publish(
        &self,
        event: impl Into<Event<E>>,
    ) -> Result<PublishReport, PublishError<E>> {
        let event = self.inner.prepare(event.into())?;
        match self.inner.attempt(event, Mode::Try) {
            Attempt::Done(result) => result,
            Attempt::Blocked(..) => unreachable!("`Mode::Try` never waits"),
        }
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
    ///
    /// # Cancel safety
    ///
    /// Dropped before the request is published, nothing was published (as
    /// [`publish`](Self::publish)); dropped after, the request stays with its
    /// subscribers and a reply to it fails with
    /// [`ReplyError::RequesterGone`](crate::ReplyError::RequesterGone).
    pub async fn request<R: Send + 'static>(
        &self,
        event: impl Into<Event<E>>,
        timeout: Duration,
    ) -> Result<R, RequestError<E>> {
        let (tx, rx) = oneshot::channel::<R>();
        let event = event.into().with_reply_to(tx);
        // A timeout too long to represent waits without one.
        let deadline = Instant::now().checked_add(timeout);
        if let Err(e) = self.inner.publish_until(event, deadline).await {
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
    /// predicate runs once per event, on the publisher, and only for events a
    /// version filter would skip. A predicate that panics is caught: the event
    /// counts as not critical and [`TopicStats::predicate_panics`] counts it.
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
    /// event back), waiting publishers are released, and subscribers receive
    /// what was published before, then `None`. Returns whether this call closed
    /// it.
    pub fn close(&self) -> bool {
        self.inner.close()
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }

    /// The highest pressure among the subscribers: a front end can answer 503
    /// at [`Critical`](PressureLevel::Critical) before buffers fill.
    pub fn pressure(&self) -> PressureLevel {
        let claimed = self.inner.claimed();
        self.inner
            .lock()
            .iter()
            .map(|s| s.level(claimed))
            .max()
            .unwrap_or(PressureLevel::Normal)
    }

    /// Subscribers now.
    pub fn subscriber_count(&self) -> usize {
        self.inner.lock().len()
    }

    /// A snapshot of the topic's numbers.
    pub fn stats(&self) -> TopicStats {
        self.inner.stats()
    }
}

/// How a publish treats a subscriber it would have to wait for.
#[derive(Clone, Copy)]
pub(crate) enum Mode {
    /// Skip it (`try_publish`).
    Try,
    /// Wait: since when (`None` before the first wait), and until when in all.
    Wait {
        since: Option<Instant>,
        deadline: Option<Instant>,
    },
}

/// What one attempt at publishing did.
pub(crate) enum Attempt<E: Send + Sync + 'static> {
    Done(Result<PublishReport, PublishError<E>>),
    /// A subscriber is behind by its whole buffer: wait until its cursor moves
    /// from `seen` (or it leaves, or the topic closes), or until `until`.
    Blocked(Blocked<E>),
}

pub(crate) struct Blocked<E: Send + Sync + 'static> {
    event: Event<E>,
    sub: Arc<SubscriberInner<E>>,
    seen: u64,
    until: Option<Instant>,
}

impl<E: Send + Sync + 'static> TopicInner<E> {
    /// The topic's lock: joins, leaves, rescans and close.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Vec<Arc<SubscriberInner<E>>>> {
        self.list.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The ring; allocated by the first subscriber, so every subscriber has one.
    pub(crate) fn ring(&self) -> &Ring<E> {
        self.ring
            .get()
            .expect("the first subscriber allocates the ring")
    }

    /// Sequences claimed so far (publishes that reached a subscriber).
    pub(crate) fn claimed(&self) -> u64 {
        // SeqCst: see the module docs (joins).
        self.tail.load(Ordering::SeqCst) & SEQUENCE
    }

    /// A consumer about to sleep (its waker registered): flags `tail` and
    /// returns the sequences claimed so far (module docs).
    pub(crate) fn want_events(&self) -> u64 {
        // SeqCst: one location with the claims' compare-and-swap.
        self.tail.fetch_or(SLEEPERS, Ordering::SeqCst) & SEQUENCE
    }

    pub(crate) fn is_closed(&self) -> bool {
        // SeqCst: as in `claimed`.
        self.tail.load(Ordering::SeqCst) & CLOSED != 0
    }

    pub(crate) fn next_id(&self) -> SubscriberId {
        // Relaxed: only uniqueness matters.
        SubscriberId(self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// Refuses a publish on a closed topic, and marks the event critical if a
    /// version filter would skip it and the critical-kinds predicate says so.
    fn prepare(&self, event: Event<E>) -> Result<Event<E>, PublishError<E>> {
        if self.is_closed() {
            return Err(PublishError::Closed(event));
        }
        // Relaxed: a hint; a subscriber joining meanwhile filters by itself.
        if event.is_critical() || event.version() >= self.max_min_version.load(Ordering::Relaxed) {
            return Ok(event);
        }
        let predicate = self
            .critical_kinds
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let Some(predicate) = predicate else {
            return Ok(event);
        };
        match catch_unwind(AssertUnwindSafe(|| predicate(&event))) {
            Ok(true) => Ok(event.critical()),
            Ok(false) => Ok(event),
            Err(panic) => {
                // Relaxed: a statistic.
                self.predicate_panics.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    topic = %self.name,
                    panic = panic_message(&*panic),
                    "the critical-kinds predicate panicked: the event is not critical"
                );
                Ok(event)
            }
        }
    }

    async fn publish_until(
        &self,
        event: Event<E>,
        deadline: Option<Instant>,
    ) -> Result<PublishReport, PublishError<E>> {
        let mut event = self.prepare(event)?;
        let mut since = None;
        loop {
            match self.attempt(event, Mode::Wait { since, deadline }) {
                Attempt::Done(result) => return result,
                Attempt::Blocked(blocked) => {
                    since.get_or_insert_with(Instant::now);
                    // Boxed: the slow path's timer would otherwise make every
                    // publish future several times larger.
                    Box::pin(self.wait_room(&blocked)).await;
                    event = blocked.event;
                }
            }
        }
    }

    /// Waits until `blocked.sub` moves, leaves or stops, the topic closes, or
    /// the deadline.
    async fn wait_room(&self, blocked: &Blocked<E>) {
        let mut sleep = blocked.until.map(|d| Box::pin(tokio::time::sleep_until(d)));
        poll_fn(|cx| {
            self.room.register(cx.waker());
            let sub = &blocked.sub;
            if sub.want_room() != blocked.seen
                || sub.is_gone()
                || !sub.is_open()
                || self.is_closed()
            {
                return Poll::Ready(());
            }
            if let Some(s) = sleep.as_mut()
                && s.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready(());
            }
            Poll::Pending
        })
        .await;
    }

    /// One try at publishing `event`: claims a sequence and writes it, or
    /// reports whom it must wait for. Never waits.
    pub(crate) fn attempt(&self, event: Event<E>, mode: Mode) -> Attempt<E> {
        let Some(ring) = self.ring.get() else {
            return Attempt::Done(Err(self.no_subscribers(event)));
        };
        // Relaxed: a count for the report; joins and leaves race publishes.
        let open = self.open.load(Ordering::Relaxed);
        if open == 0 {
            return Attempt::Done(Err(self.no_subscribers(event)));
        }
        // Relaxed: as in `prepare`.
        let filtered =
            !event.is_critical() && event.version() < self.max_min_version.load(Ordering::Relaxed);
        if !filtered {
            loop {
                // SeqCst: the order of the two loads matters for joins (module
                // docs).
                let tail = self.tail.load(Ordering::SeqCst);
                if tail & CLOSED != 0 {
                    return Attempt::Done(Err(PublishError::Closed(event)));
                }
                let t = tail & SEQUENCE;
                if t >= self.gate.load(Ordering::SeqCst) {
                    break;
                }
                if self
                    .tail
                    .compare_exchange_weak(tail, tail + 1, Ordering::SeqCst, Ordering::Relaxed)
                    .is_ok()
                {
                    drop(self.commit(ring, tail, event, open));
                    return Attempt::Done(Ok(PublishReport {
                        delivered: open,
                        ..PublishReport::default()
                    }));
                }
            }
        }
        self.attempt_locked(ring, event, mode)
    }

    /// The slow path: a rescan under the lock (module docs).
    #[cold]
    fn attempt_locked(&self, ring: &Ring<E>, event: Event<E>, mode: Mode) -> Attempt<E> {
        let list = self.lock();
        let capacity = ring.capacity() as u64;
        let (version, critical) = (event.version(), event.is_critical());
        let mut clock = None;
        let mut now = || *clock.get_or_insert_with(Instant::now);
        loop {
            // SeqCst: see the module docs.
            let tail = self.tail.load(Ordering::SeqCst);
            if tail & CLOSED != 0 {
                return Attempt::Done(Err(PublishError::Closed(event)));
            }
            let t = tail & SEQUENCE;
            let mut delivered = 0;
            // Subscribers this event skips: index and reason.
            let mut skips: Vec<(usize, SkipReason)> = Vec::new();
            let mut timed_out: Vec<SubscriberId> = Vec::new();
            let mut blocker = None;
            for (i, sub) in list.iter().enumerate() {
                if !sub.is_open() {
                    continue;
                }
                if !sub.accepts(version, critical) {
                    skips.push((i, SkipReason::Filtered));
                    continue;
                }
                let pos = sub.position();
                if t - pos.min(t) < sub.limit {
                    delivered += 1;
                    continue;
                }
                let reason = match (sub.policy(), mode) {
                    // Lapped below: never waits, never skipped.
                    (Policy::DropOldest, _) => {
                        delivered += 1;
                        continue;
                    }
                    (Policy::Reject, _) | (_, Mode::Try) => SkipReason::Full,
                    // Relaxed: a hint, set under this lock.
                    (Policy::Timeout(_), _) if sub.timed_out.load(Ordering::Relaxed) => {
                        SkipReason::TimedOut
                    }
                    (policy, Mode::Wait { since, deadline }) => {
                        let own = match policy {
                            Policy::Timeout(d) => since.unwrap_or_else(&mut now).checked_add(d),
                            _ => None,
                        };
                        let until = match (own, deadline) {
                            (Some(a), Some(b)) => Some(a.min(b)),
                            (a, b) => a.or(b),
                        };
                        if until.is_none_or(|u| now() < u) {
                            blocker = Some((i, pos, until));
                            break;
                        }
                        if own.is_some_and(|o| o <= now()) {
                            // Relaxed: as above.
                            sub.timed_out.store(true, Ordering::Relaxed);
                            // Logged after the lock (a subscriber is user code).
                            timed_out.push(sub.id);
                        }
                        SkipReason::TimedOut
                    }
                };
                skips.push((i, reason));
            }
            if let Some((i, seen, until)) = blocker {
                let sub = Arc::clone(&list[i]);
                drop(list);
                tracing::debug!(
                    topic = %self.name,
                    subscriber = %sub.id,
                    "publish waits for a subscriber behind by its whole buffer"
                );
                return Attempt::Blocked(Blocked {
                    event,
                    sub,
                    seen,
                    until,
                });
            }
            let report = PublishReport {
                delivered,
                skipped: skips.iter().map(|&(i, r)| (list[i].id, r)).collect(),
            };
            if delivered == 0 {
                // Nobody will read it: every skip counts now (the metrics
                // after the lock).
                for &(i, reason) in &skips {
                    list[i].drops.count(reason, 1);
                }
                drop(list);
                for &(_, reason) in &report.skipped {
                    self.metrics.dropped.skipped(reason, 1);
                }
                self.log_timed_out(&timed_out);
                return Attempt::Done(Err(self.undelivered(event, report)));
            }
            if self
                .tail
                .compare_exchange(tail, tail + 1, Ordering::SeqCst, Ordering::Relaxed)
                .is_err()
            {
                // A fast-path claim came first: decide again for the next one.
                continue;
            }
            // Between the claim and the write nothing may fail or wait: laps
            // and marks count with atomics only; their metrics (user code, a
            // recorder) are emitted once the event is written.
            let mut lapped = Lapped::default();
            // First the laps (whoever is a whole ring behind: at most the slot
            // `t` reuses), then the marks for `t`.
            if t >= capacity {
                for sub in list.iter() {
                    if sub.position() <= t - capacity {
                        let l = sub.lap(t - capacity + 1, ring);
                        lapped.displaced += l.displaced;
                        lapped.filtered += l.filtered;
                        lapped.wake |= l.wake;
                    }
                }
            }
            let mut counts = [0_u64; 3];
            for &(i, reason) in &skips {
                list[i].mark_skip(t);
                list[i].drops.count(reason, 1);
                counts[match reason {
                    SkipReason::Full => 0,
                    SkipReason::TimedOut => 1,
                    _ => 2,
                }] += 1;
            }
            self.reopen(&list);
            drop(list);
            let old = self.commit(ring, tail, event, delivered);
            if lapped.wake {
                self.room.wake_all();
            }
            let m = &self.metrics.dropped;
            m.skipped(SkipReason::Full, counts[0]);
            m.skipped(SkipReason::TimedOut, counts[1]);
            m.skipped(SkipReason::Filtered, counts[2] + lapped.filtered);
            m.displaced.increment(lapped.displaced);
            self.log_timed_out(&timed_out);
            // Last: it may be the last handle of a pooled value, whose reset
            // is user code.
            drop(old);
            return Attempt::Done(Ok(report));
        }
    }

    /// Writes the sequence claimed from `tail` (the value the claim replaced),
    /// wakes sleeping consumers, counts; returns the event the write replaced,
    /// for the caller to drop last (it may be the last handle of a pooled
    /// value, whose reset is user code).
    #[inline]
    #[must_use]
    fn commit(
        &self,
        ring: &Ring<E>,
        tail: u64,
        event: Event<E>,
        delivered: usize,
    ) -> Option<Event<E>> {
        let t = tail & SEQUENCE;
        // Relaxed: a hint for `maybe_reclaim`; set once.
        if event.holds_resources() && !self.releasable.load(Ordering::Relaxed) {
            self.releasable.store(true, Ordering::Relaxed);
        }
        // SAFETY: `t` was claimed by this publisher's compare-and-swap on
        // `tail`; the gate (or the lap under the lock) put the cursor of
        // every subscriber that will still read the ring past `t - capacity`,
        // none held there (a stopped subscriber that read up to its end reads
        // no slot again), and reclaim leaves alone the slot of a claimed
        // sequence (module docs).
        let old = unsafe { ring.write(t, event) };
        if tail & SLEEPERS != 0 {
            // Consumers flagged their sleep before this claim: clear the flag,
            // then wake them (one flagging after the clear is woken by the
            // next claim, or sees this one).
            // SeqCst: one location with `want_events`.
            self.tail.fetch_and(!SLEEPERS, Ordering::SeqCst);
            self.consumers.wake_all();
        }
        self.metrics.published.increment(1);
        self.metrics.delivered.increment(delivered as u64);
        old
    }

    /// Logs the subscribers a publish gave up waiting for (after the lock).
    fn log_timed_out(&self, ids: &[SubscriberId]) {
        for id in ids {
            tracing::warn!(
                topic = %self.name,
                subscriber = %id,
                "subscriber timed out: skipped until it receives again"
            );
        }
    }

    /// Takes out of the ring the events every subscriber has read, so that
    /// pooled payloads go back to their pools and requests nobody answered
    /// end (`RequestError::NoReply`) without waiting for their slots to be
    /// reused. Called with the lock held; the caller drops what it returns
    /// after releasing it (a pooled value's reset is user code).
    pub(crate) fn reclaim(&self, list: &[Arc<SubscriberInner<E>>]) -> Vec<Event<E>> {
        let Some(ring) = self.ring.get() else {
            return Vec::new();
        };
        // Close the gate: a claim from now on takes the slow path, which waits
        // for this lock. SeqCst, then `tail` (as a join does): a fast path
        // that loaded the open gate claimed below the `tail` loaded here.
        self.gate.store(0, Ordering::SeqCst);
        let claimed = self.claimed();
        // A stopped subscriber that read up to its end reads no slot again.
        let read = list
            .iter()
            .filter(|s| s.end().is_none_or(|end| s.position() < end))
            .map(|s| s.position())
            .min()
            .unwrap_or(claimed)
            .min(claimed);
        // Slots whose next sequence is claimed may be being written, and one
        // fast path that loaded the open gate may still claim `claimed` (the
        // compare-and-swap with the `tail` it loaded): only events from
        // `claimed + 1 - capacity` on are safe, and their slots' next writers
        // cannot claim meanwhile.
        // Relaxed: written only under the lock, which the caller holds.
        let from = self
            .reclaimed
            .load(Ordering::Relaxed)
            .max((claimed + 1).saturating_sub(ring.capacity() as u64));
        let mut taken = Vec::new();
        for seq in from..read {
            // SAFETY: every subscriber's cursor is past `seq` (`read` is their
            // minimum, under the lock that joins take: a joiner starts at
            // `claimed`; cursors never move back), and the slot's next writer
            // (`seq + capacity > claimed`) cannot claim: the gate is closed.
            if let Some(e) = unsafe { ring.take(seq) } {
                taken.push(e);
            }
        }
        // Relaxed: as above.
        self.reclaimed.store(read.max(from), Ordering::Relaxed);
        self.reopen(list);
        taken
    }

    /// Stores the gate for the subscribers now (the lock is held).
    fn reopen(&self, list: &[Arc<SubscriberInner<E>>]) {
        let capacity = self.ring.get().map_or(u64::MAX, |r| r.capacity() as u64);
        let gate = list
            .iter()
            .map(|s| match s.end() {
                // Stopped: nobody waits for it; it holds back only the slots
                // it still has to read (lapped at the ring's length).
                Some(end) if s.position() >= end => u64::MAX,
                Some(_) => s.position() + capacity,
                None => s.position() + s.limit,
            })
            .min()
            .unwrap_or(u64::MAX);
        // SeqCst: see the module docs.
        self.gate.store(gate, Ordering::SeqCst);
    }

    /// A consumer found nothing to read: reclaims what every subscriber has
    /// read, if the topic ever held releasable events and the lock is free.
    pub(crate) fn maybe_reclaim(&self) {
        // Relaxed: hints; the pass itself runs under the lock.
        if !self.releasable.load(Ordering::Relaxed)
            || self.reclaimed.load(Ordering::Relaxed) >= self.claimed()
        {
            return;
        }
        let Ok(list) = self.list.try_lock() else {
            return;
        };
        let taken = self.reclaim(&list);
        drop(list);
        drop(taken);
    }

    fn no_subscribers(&self, event: Event<E>) -> PublishError<E> {
        // Relaxed: a statistic.
        self.undelivered.fetch_add(1, Ordering::Relaxed);
        self.metrics.undelivered.increment(1);
        PublishError::NoSubscribers(event)
    }

    fn undelivered(&self, event: Event<E>, report: PublishReport) -> PublishError<E> {
        // Relaxed: a statistic.
        self.undelivered.fetch_add(1, Ordering::Relaxed);
        self.metrics.undelivered.increment(1);
        PublishError::Undelivered { event, report }
    }

    /// Adds a subscriber, starting at the next sequence; allocates the ring if
    /// it is the first.
    pub(crate) fn attach(
        &self,
        settings: Settings,
    ) -> Result<Arc<SubscriberInner<E>>, SubscribeError> {
        let mut list = self.lock();
        if self.is_closed() {
            return Err(SubscribeError::Closed(self.name.clone()));
        }
        let buffer = settings.marks.capacity();
        let ring = match self.ring.get() {
            Some(ring) => {
                if buffer > ring.capacity() / 2 {
                    return Err(SubscribeError::Config(ConfigError::new(
                        "buffer",
                        buffer,
                        format!(
                            "must be at most {} (half the ring of topic `{}`; give the topic a larger capacity)",
                            ring.capacity() / 2,
                            self.name
                        ),
                    )));
                }
                ring
            }
            None => {
                let capacity = self.capacity.max(2 * buffer.next_power_of_two());
                self.ring.get_or_init(|| Ring::new(capacity))
            }
        };
        // SeqCst: gate first, then tail (module docs).
        self.gate.store(0, Ordering::SeqCst);
        let start = self.claimed();
        let sub = Arc::new(SubscriberInner::new(
            self.next_id(),
            settings,
            ring.capacity(),
            start,
            Counts::with_metrics(self.metrics.dropped.clone()),
        ));
        // Relaxed: see `prepare`.
        self.max_min_version
            .fetch_max(sub.settings.min_version, Ordering::Relaxed);
        list.push(Arc::clone(&sub));
        // Relaxed: see `attempt`.
        self.open.fetch_add(1, Ordering::Relaxed);
        Ok(sub)
    }

    /// Removes `sub` (its subscription dropped): what it had not read is
    /// discarded and counted; publishers waiting for it go on.
    pub(crate) fn detach(&self, sub: &SubscriberInner<E>) {
        let mut list = self.lock();
        if sub.is_open() {
            // Relaxed: see `attempt`.
            self.open.fetch_sub(1, Ordering::Relaxed);
            // Not open any more (a late `close_subscriber` does nothing).
            sub.close_at(self.claimed());
        }
        list.retain(|s| s.id != sub.id);
        sub.leave();
        let max = list
            .iter()
            .map(|s| s.settings.min_version)
            .max()
            .unwrap_or(0);
        // Relaxed: see `prepare`.
        self.max_min_version.store(max, Ordering::Relaxed);
        let claimed = self.claimed();
        let delivered = sub.delivered(claimed);
        let (spill, discarded) = sub.discard(claimed);
        self.departed.absorb(&sub.drops.snapshot(), delivered);
        let taken = self.reclaim(&list);
        drop(list);
        self.room.wake_all();
        // After the lock: metrics and a pooled value's reset are user code.
        self.metrics.dropped.discarded.increment(discarded);
        drop((spill, taken));
    }

    /// Stops intake for `sub` (a handler runtime stopping): it receives what
    /// was published before, then `None`; it stays listed (and keeps its
    /// place in the ring) until its subscription drops.
    pub(crate) fn close_subscriber(&self, sub: &SubscriberInner<E>) {
        let _list = self.lock();
        if sub.is_open() && !sub.is_gone() {
            sub.close_at(self.claimed());
            // Relaxed: see `attempt`.
            self.open.fetch_sub(1, Ordering::Relaxed);
        }
        drop(_list);
        self.consumers.wake_all();
        self.room.wake_all();
    }

    pub(crate) fn close(&self) -> bool {
        let list = self.lock();
        // SeqCst: see `claimed`. Claims after this fail.
        let tail = self.tail.fetch_or(CLOSED, Ordering::SeqCst);
        if tail & CLOSED != 0 {
            return false;
        }
        for sub in list.iter() {
            sub.close_at(tail & SEQUENCE);
        }
        // Relaxed: see `attempt`.
        self.open.store(0, Ordering::Relaxed);
        let subscribers = list.len();
        drop(list);
        self.consumers.wake_all();
        self.room.wake_all();
        tracing::info!(
            topic = %self.name,
            subscribers,
            "topic closed: subscribers drain what was published"
        );
        true
    }

    pub(crate) fn stats(&self) -> TopicStats {
        let claimed = self.claimed();
        // The departed counts under the same lock as the list: a subscriber
        // leaving meanwhile is in one or the other, not both.
        let (subscribers, mut dropped, mut delivered) = {
            let list = self.lock();
            let subscribers: Vec<_> = list.iter().map(|s| s.stats(claimed)).collect();
            // Relaxed: a statistic.
            let delivered = self.departed.delivered.load(Ordering::Relaxed);
            (subscribers, self.departed.snapshot(), delivered)
        };
        for s in &subscribers {
            dropped.add(&s.dropped);
            delivered += s.delivered;
        }
        let handlers = self
            .handlers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(HandlerEntry::stats)
            .collect();
        TopicStats {
            name: self.name.clone(),
            event_type: type_name::<E>(),
            closed: self.is_closed(),
            capacity: self.ring.get().map_or(self.capacity, Ring::capacity),
            published: claimed,
            // Relaxed: a statistic.
            undelivered: self.undelivered.load(Ordering::Relaxed),
            delivered,
            dropped,
            // Relaxed: a statistic.
            predicate_panics: self.predicate_panics.load(Ordering::Relaxed),
            pressure: subscribers
                .iter()
                .map(|s| s.level)
                .max()
                .unwrap_or(PressureLevel::Normal),
            subscribers,
            handlers,
        }
    }
}

/// A panic's message, or a placeholder.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_owned()
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

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// A subscriber whose intake stopped (its handler stopping) receives what
    /// was published before, and nothing after, even when publishers lap it.
    #[test]
    fn a_stopped_subscriber_gets_nothing_published_after_it_stopped() {
        let topic = Topic::<u32>::with_capacity("t", 4).unwrap();
        let mut sub = topic
            .subscriber()
            .buffer(2)
            .policy(Policy::Block)
            .subscribe()
            .unwrap();
        let _latest = topic
            .subscriber()
            .buffer(1)
            .policy(Policy::DropOldest)
            .subscribe()
            .unwrap();
        topic.try_publish(0).unwrap();
        topic.try_publish(1).unwrap();
        topic.inner.close_subscriber(&sub.inner);
        for i in 2..20 {
            topic.try_publish(i).unwrap();
        }
        let got: Vec<u32> = std::iter::from_fn(|| sub.try_recv().map(|e| *e)).collect();
        assert_eq!(got, [0, 1]);
        assert_eq!(sub.stats().dropped.total(), 0);
        assert_eq!(sub.stats().delivered, 2);
    }
}
