//! Subscribers: a bounded buffer each, a publish [`Policy`], a version filter.

use std::fmt;
use std::time::Duration;

use heijunka_backpressure::{DEFAULT_REJECT_AT, DEFAULT_WARN_AT, Watermarks};
use heijunka_core::spsc::MAX_CAPACITY;
use heijunka_core::{PressureLevel, validate};
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::buffer::{Buffer, Intake, Kind, Outlet};

use crate::metrics::DropMetrics;
use crate::stats::{DropCounts, SubscriberStats};
use crate::topic::TopicInner;
use crate::{Event, SkipReason, SubscribeError, SubscriberId, Topic};

/// Events per subscriber buffer when none is set: the seeds' `BUS_BUFFER_SIZE`.
pub const DEFAULT_BUFFER: usize = 1000;

/// How long a publish waits for room under [`Policy::Timeout`] when none is set:
/// the seeds' `BUS_PUBLISH_TIMEOUT`.
pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// What a publish does when a subscriber's buffer is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub enum Policy {
    /// Wait for room: a slow subscriber slows its publishers (backpressure).
    /// Lossless. A waiting publisher is woken in batches (after at most
    /// `min(buffer / 2, 512)` receives), not at each freed slot (see the crate
    /// docs).
    Block,
    /// Wait up to the duration, then skip this subscriber
    /// ([`SkipReason::TimedOut`]). The default, with
    /// [`DEFAULT_PUBLISH_TIMEOUT`].
    Timeout(Duration),
    /// Skip this subscriber at once once its buffer reaches the reject mark
    /// ([`SkipReason::Full`]).
    Reject,
    /// Never wait, never skip: discard the oldest buffered event to make room,
    /// and count it. Lossy, for streams where only the latest matters
    /// (market data).
    DropOldest,
}

impl Default for Policy {
    fn default() -> Self {
        Self::Timeout(DEFAULT_PUBLISH_TIMEOUT)
    }
}

/// Configures a subscriber; made by [`Topic::subscriber`].
///
/// ```
/// use heijunka_event_bus::{EventBus, Policy};
///
/// let bus = EventBus::new();
/// let ticks = bus.topic::<u64>("market.ticks")?;
/// let sub = ticks
///     .subscriber()
///     .buffer(64)
///     .policy(Policy::DropOldest)
///     .min_version(3)
///     .name("quotes")
///     .subscribe()?;
/// assert_eq!(sub.capacity(), 64);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "a builder does nothing until `subscribe()`"]
pub struct SubscriberBuilder<E: Send + Sync + 'static> {
    pub(crate) topic: Topic<E>,
    pub(crate) buffer: usize,
    pub(crate) policy: Policy,
    pub(crate) min_version: u64,
    pub(crate) warn_at: f64,
    pub(crate) reject_at: f64,
    pub(crate) name: Option<String>,
}

impl<E: Send + Sync + 'static> SubscriberBuilder<E> {
    pub(crate) fn new(topic: Topic<E>) -> Self {
        Self {
            topic,
            buffer: DEFAULT_BUFFER,
            policy: Policy::default(),
            min_version: 0,
            warn_at: DEFAULT_WARN_AT,
            reject_at: DEFAULT_REJECT_AT,
            name: None,
        }
    }

    /// The buffer's capacity (default [`DEFAULT_BUFFER`]); at least 1, at most
    /// 2^28 ([`heijunka_core::spsc::MAX_CAPACITY`]). Slots are allocated up front,
    /// rounded up to a power of two.
    pub fn buffer(mut self, events: usize) -> Self {
        self.buffer = events;
        self
    }

    /// The publish policy (default [`Policy::Timeout`] with
    /// [`DEFAULT_PUBLISH_TIMEOUT`]).
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// Skip events whose version is below `version`, unless they are critical
    /// ([`Event::critical`], or a kind marked with
    /// [`Topic::critical_kinds`]) (default 0: accept all).
    pub fn min_version(mut self, version: u64) -> Self {
        self.min_version = version;
        self
    }

    /// The fill ratio in (0, 1] from which the buffer reports
    /// [`Elevated`](PressureLevel::Elevated) pressure (default 0.8).
    pub fn warn_at(mut self, ratio: f64) -> Self {
        self.warn_at = ratio;
        self
    }

    /// The fill ratio in (0, 1] from which the buffer is
    /// [`Critical`](PressureLevel::Critical) and the reject policy (and
    /// [`try_publish`](Topic::try_publish)) skip it (default 0.9). Drop-oldest
    /// subscribers ignore it: they always make room.
    pub fn reject_at(mut self, ratio: f64) -> Self {
        self.reject_at = ratio;
        self
    }

    /// A name for stats and logs.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Validates the settings and subscribes: the subscriber receives every event
    /// published from now on.
    ///
    /// # Errors
    ///
    /// [`SubscribeError::Config`] naming a bad setting (a zero buffer, a zero
    /// timeout, a ratio outside (0, 1]), or [`SubscribeError::Closed`].
    pub fn subscribe(self) -> Result<Subscription<E>, SubscribeError> {
        let (inner, intake, outlet) = self.build()?;
        let topic = Arc::clone(&self.topic.inner);
        topic.attach(Arc::clone(&inner), intake)?;
        Ok(Subscription {
            inner,
            topic,
            outlet,
        })
    }

    #[allow(clippy::type_complexity)]
    pub(crate) fn build(
        &self,
    ) -> Result<(Arc<SubscriberInner<E>>, Intake<Event<E>>, Outlet<Event<E>>), SubscribeError> {
        validate::at_least("buffer", self.buffer, 1)?;
        validate::at_most("buffer", self.buffer, MAX_CAPACITY)?;
        if let Policy::Timeout(t) = self.policy {
            validate::non_zero_duration("publish_timeout", t)?;
        }
        validate::ratio("warn_at", self.warn_at)?;
        validate::ratio("reject_at", self.reject_at)?;
        let reject_at = if self.policy == Policy::DropOldest {
            1.0
        } else {
            self.reject_at
        };
        let marks = Watermarks::new(self.buffer, self.warn_at, reject_at)?;
        let kind = match self.policy {
            Policy::Block | Policy::Timeout(_) => Kind::Waiting,
            Policy::Reject => Kind::Skipping,
            Policy::DropOldest => Kind::Lossy,
        };
        let (buffer, intake, outlet) = Buffer::new(marks, kind)?;
        let inner = Arc::new(SubscriberInner {
            id: self.topic.inner.next_id(),
            name: self.name.clone(),
            buffer,
            policy: self.policy,
            min_version: self.min_version,
            drops: Counts::with_metrics(self.topic.inner.metrics.dropped.clone()),
        });
        Ok((inner, intake, outlet))
    }
}

impl<E: Send + Sync + 'static> fmt::Debug for SubscriberBuilder<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriberBuilder")
            .field("topic", &self.topic.name())
            .field("buffer", &self.buffer)
            .field("policy", &self.policy)
            .field("min_version", &self.min_version)
            .finish_non_exhaustive()
    }
}

/// Drop counters of one subscriber (or of a topic's departed subscribers).
#[derive(Debug, Default)]
pub(crate) struct Counts {
    pub(crate) full: AtomicU64,
    pub(crate) timed_out: AtomicU64,
    pub(crate) closed: AtomicU64,
    pub(crate) filtered: AtomicU64,
    pub(crate) displaced: AtomicU64,
    pub(crate) discarded: AtomicU64,
    /// Only for a topic's departed subscribers: what they had delivered.
    pub(crate) delivered: AtomicU64,
    /// The topic's drop metrics: skips and discards are emitted as they are
    /// counted here (never by `absorb`, which only moves counts).
    pub(crate) metrics: DropMetrics,
}

impl Counts {
    pub(crate) fn with_metrics(metrics: DropMetrics) -> Self {
        Self {
            metrics,
            ..Self::default()
        }
    }

    pub(crate) fn skip(&self, reason: SkipReason) {
        self.metrics.skipped(reason);
        let c = match reason {
            SkipReason::Filtered => &self.filtered,
            SkipReason::Full => &self.full,
            SkipReason::TimedOut => &self.timed_out,
            SkipReason::Closed => &self.closed,
        };
        // Relaxed: a statistic.
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> DropCounts {
        // Relaxed: statistics.
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DropCounts {
            full: l(&self.full),
            timed_out: l(&self.timed_out),
            closed: l(&self.closed),
            filtered: l(&self.filtered),
            displaced: l(&self.displaced),
            discarded: l(&self.discarded),
        }
    }

    pub(crate) fn absorb(&self, d: &DropCounts, delivered: u64) {
        // Relaxed: statistics.
        self.full.fetch_add(d.full, Ordering::Relaxed);
        self.timed_out.fetch_add(d.timed_out, Ordering::Relaxed);
        self.closed.fetch_add(d.closed, Ordering::Relaxed);
        self.filtered.fetch_add(d.filtered, Ordering::Relaxed);
        self.displaced.fetch_add(d.displaced, Ordering::Relaxed);
        self.discarded.fetch_add(d.discarded, Ordering::Relaxed);
        self.delivered.fetch_add(delivered, Ordering::Relaxed);
    }
}

/// A subscriber as its topic sees it.
pub(crate) struct SubscriberInner<E: Send + Sync + 'static> {
    pub(crate) id: SubscriberId,
    pub(crate) name: Option<String>,
    pub(crate) buffer: Buffer<Event<E>>,
    pub(crate) policy: Policy,
    pub(crate) min_version: u64,
    /// Written by publishers, rarely (skips), and once by the subscription's drop.
    pub(crate) drops: Counts,
}

impl<E: Send + Sync + 'static> SubscriberInner<E> {
    /// Whether the version filter lets through an event of `version`, critical
    /// or not.
    #[inline]
    pub(crate) fn accepts(&self, version: u64, critical: bool) -> bool {
        version >= self.min_version || critical
    }

    /// Everything that went into the buffer: received, waiting, displaced or
    /// discarded.
    pub(crate) fn delivered(&self) -> u64 {
        self.buffer.pushed()
    }

    /// Drop counts, the buffer's displacements included.
    pub(crate) fn dropped(&self) -> DropCounts {
        let mut d = self.drops.snapshot();
        d.displaced += self.buffer.displaced();
        d
    }

    pub(crate) fn stats(&self) -> SubscriberStats {
        let (elevated_crossings, critical_crossings) = self.buffer.crossings();
        SubscriberStats {
            id: self.id,
            name: self.name.clone(),
            policy: self.policy,
            min_version: self.min_version,
            capacity: self.buffer.capacity(),
            len: self.buffer.len(),
            level: self.buffer.pressure(),
            received: self.buffer.received(),
            delivered: self.delivered(),
            dropped: self.dropped(),
            elevated_crossings,
            critical_crossings,
        }
    }
}

/// One subscriber's end: receives every event published to its topic (that
/// its version filter and policy let through) from its own bounded buffer.
///
/// Dropping it unsubscribes: buffered events are discarded (and counted), and
/// pooled ones go back to their pool.
pub struct Subscription<E: Send + Sync + 'static> {
    pub(crate) inner: Arc<SubscriberInner<E>>,
    pub(crate) topic: Arc<TopicInner<E>>,
    outlet: Outlet<Event<E>>,
}

impl<E: Send + Sync + 'static> Subscription<E> {
    /// The next event, waiting while the buffer is empty; `None` once the topic
    /// is closed and the buffer drained.
    pub async fn recv(&mut self) -> Option<Event<E>> {
        let (buffer, topic, outlet) = (&self.inner.buffer, &self.topic, &mut self.outlet);
        std::future::poll_fn(|cx| buffer.poll_pop(outlet, cx, || topic.lock())).await
    }

    /// The next event if one is buffered; never waits.
    pub fn try_recv(&mut self) -> Option<Event<E>> {
        self.inner.buffer.pop(&mut self.outlet)
    }

    /// [`recv`](Self::recv), giving up after `timeout` (tokio's timer): `None` on
    /// timeout as well as when closed and drained.
    pub async fn recv_timeout(&mut self, timeout: Duration) -> Option<Event<E>> {
        tokio::time::timeout(timeout, self.recv())
            .await
            .ok()
            .flatten()
    }

    /// This subscriber's id.
    pub fn id(&self) -> SubscriberId {
        self.inner.id
    }

    /// The buffer's capacity.
    pub fn capacity(&self) -> usize {
        self.inner.buffer.capacity()
    }

    /// Events buffered now.
    pub fn len(&self) -> usize {
        self.inner.buffer.len()
    }

    /// Whether the buffer is empty now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The buffer's pressure level now.
    pub fn pressure(&self) -> PressureLevel {
        self.inner.buffer.pressure()
    }

    /// A snapshot of this subscriber's numbers.
    pub fn stats(&self) -> SubscriberStats {
        self.inner.stats()
    }

    /// The topic's name.
    pub fn topic(&self) -> &str {
        &self.topic.name
    }
}

impl<E: Send + Sync + 'static> Drop for Subscription<E> {
    fn drop(&mut self) {
        let inner = &self.inner;
        // Closed and detached under the topic's lock: no publisher pushes after
        // this, and publishers waiting for room give up with `Closed`.
        self.topic.detach(inner);
        let mut discarded = 0;
        while let Some(e) = inner.buffer.pop(&mut self.outlet) {
            drop(e);
            discarded += 1;
        }
        // Relaxed: a statistic.
        inner
            .drops
            .discarded
            .fetch_add(discarded, Ordering::Relaxed);
        inner.drops.metrics.discarded.increment(discarded);
        self.topic
            .departed
            .absorb(&inner.dropped(), inner.delivered());
    }
}

impl<E: Send + Sync + 'static> fmt::Debug for Subscription<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("topic", &self.topic.name)
            .field("id", &self.inner.id)
            .field("policy", &self.inner.policy)
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_oldest_fills_to_capacity_and_ignores_the_reject_mark() {
        let topic = Topic::<u32>::new("t").unwrap();
        let mut sub = topic
            .subscriber()
            .buffer(10)
            .reject_at(0.5)
            .policy(Policy::DropOldest)
            .subscribe()
            .unwrap();
        for i in 0..10 {
            assert_eq!(topic.try_publish(i).unwrap().displaced, 0);
        }
        assert_eq!(sub.len(), 10);
        assert_eq!(topic.try_publish(10).unwrap().displaced, 1);
        assert_eq!(sub.try_recv().map(|e| *e), Some(1));
    }

    #[test]
    fn received_and_delivered_add_up() {
        let topic = Topic::<u32>::new("t").unwrap();
        let mut sub = topic.subscriber().buffer(4).subscribe().unwrap();
        for i in 0..3 {
            topic.try_publish(i).unwrap();
        }
        sub.try_recv().unwrap();
        let s = sub.stats();
        assert_eq!((s.received, s.len, s.delivered), (1, 2, 3));
        assert_eq!(s.policy, Policy::Timeout(DEFAULT_PUBLISH_TIMEOUT));
        assert_eq!(s.capacity, 4);
        assert_eq!(sub.topic(), "t");
    }

    #[test]
    fn defaults_are_the_seeds() {
        assert_eq!(DEFAULT_BUFFER, 1000);
        assert_eq!(DEFAULT_PUBLISH_TIMEOUT, Duration::from_secs(5));
        let topic = Topic::<u32>::new("t").unwrap();
        let sub = topic.subscribe().unwrap();
        assert_eq!(sub.capacity(), 1000);
        assert_eq!(sub.stats().policy, Policy::default());
    }
}
