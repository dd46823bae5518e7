//! Subscribers: a bounded buffer each, a publish [`Policy`], a version filter.

use std::fmt;
use std::time::Duration;

use heijunka_backpressure::{BoundedQueue, DEFAULT_REJECT_AT, DEFAULT_WARN_AT, PushError};
use heijunka_core::sync::CachePadded;
use heijunka_core::{PressureLevel, Rejection, validate};
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

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
    /// Lossless.
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

    /// The buffer's capacity (default [`DEFAULT_BUFFER`]); at least 1.
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
        let inner = self.build()?;
        let topic = Arc::clone(&self.topic.inner);
        topic.attach(Arc::clone(&inner))?;
        Ok(Subscription { inner, topic })
    }

    pub(crate) fn build(&self) -> Result<Arc<SubscriberInner<E>>, SubscribeError> {
        validate::at_least("buffer", self.buffer, 1)?;
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
        let queue = BoundedQueue::builder(self.buffer)
            .warn_at(self.warn_at)
            .reject_at(reject_at)
            .build()?;
        Ok(Arc::new(SubscriberInner {
            id: self.topic.inner.next_id(),
            name: self.name.clone(),
            queue,
            policy: self.policy,
            min_version: self.min_version,
            drops: Counts::default(),
            received: CachePadded::new(AtomicU64::new(0)),
        }))
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
}

impl Counts {
    pub(crate) fn skip(&self, reason: SkipReason) {
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
    pub(crate) queue: BoundedQueue<Event<E>>,
    pub(crate) policy: Policy,
    pub(crate) min_version: u64,
    /// Written by publishers, rarely (skips and displacements).
    pub(crate) drops: Counts,
    /// Written only by the subscription's owner (`recv` takes `&mut self`), on
    /// every receive: on its own cache line, away from the fields publishers
    /// read on every publish.
    pub(crate) received: CachePadded<AtomicU64>,
}

impl<E: Send + Sync + 'static> SubscriberInner<E> {
    /// Whether the version filter lets `event` through.
    #[inline]
    pub(crate) fn accepts(&self, event: &Event<E>) -> bool {
        event.version() >= self.min_version || event.is_critical()
    }

    /// Puts `event` in the buffer without waiting: drop-oldest makes room, every
    /// other policy stops at the reject mark. Returns how many events were
    /// displaced.
    #[inline]
    pub(crate) fn offer_now(&self, mut event: Event<E>) -> Result<usize, PushError<Event<E>>> {
        if self.policy != Policy::DropOldest {
            return self.queue.try_push(event).map(|()| 0);
        }
        let mut displaced = 0;
        loop {
            match self.queue.try_push(event) {
                Ok(()) => return Ok(displaced),
                Err(e) if e.reason() == Rejection::ShuttingDown => return Err(e),
                Err(e) => {
                    event = e.into_inner();
                    // The consumer may have taken it meanwhile: then there is room.
                    if let Some(old) = self.queue.try_pop() {
                        drop(old);
                        displaced += 1;
                        // Relaxed: a statistic.
                        self.drops.displaced.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }

    /// Puts `event` in the buffer for a waiting policy: up to the capacity,
    /// waiting for room without bound ([`Policy::Block`]) or up to the policy's
    /// timeout, and in either case no later than `deadline`.
    pub(crate) async fn wait_push(
        &self,
        event: Event<E>,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<(), PushError<Event<E>>> {
        let left =
            |at: tokio::time::Instant| at.saturating_duration_since(tokio::time::Instant::now());
        match (self.policy, deadline) {
            (Policy::Timeout(t), None) => self.queue.push_timeout(event, t).await,
            (Policy::Timeout(t), Some(at)) => self.queue.push_timeout(event, t.min(left(at))).await,
            (_, Some(at)) => self.queue.push_timeout(event, left(at)).await,
            (_, None) => self.queue.push(event).await,
        }
    }

    /// Everything that went into the buffer: received, waiting, displaced or
    /// discarded.
    pub(crate) fn delivered(&self) -> u64 {
        let d = self.drops.snapshot();
        // Relaxed: a statistic.
        self.received.load(Ordering::Relaxed) + self.queue.len() as u64 + d.displaced + d.discarded
    }

    pub(crate) fn stats(&self) -> SubscriberStats {
        let q = self.queue.stats();
        SubscriberStats {
            id: self.id,
            name: self.name.clone(),
            policy: self.policy,
            min_version: self.min_version,
            capacity: q.capacity,
            len: q.len,
            level: q.level,
            // Relaxed: a statistic.
            received: self.received.load(Ordering::Relaxed),
            delivered: self.delivered(),
            dropped: self.drops.snapshot(),
            elevated_crossings: q.elevated_crossings,
            critical_crossings: q.critical_crossings,
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
}

impl<E: Send + Sync + 'static> Subscription<E> {
    /// The next event, waiting while the buffer is empty; `None` once the topic
    /// is closed and the buffer drained.
    pub async fn recv(&mut self) -> Option<Event<E>> {
        let e = self.inner.queue.pop().await?;
        self.count_received();
        Some(e)
    }

    /// The next event if one is buffered; never waits.
    pub fn try_recv(&mut self) -> Option<Event<E>> {
        let e = self.inner.queue.try_pop()?;
        self.count_received();
        Some(e)
    }

    /// [`recv`](Self::recv), giving up after `timeout` (tokio's timer): `None` on
    /// timeout as well as when closed and drained.
    pub async fn recv_timeout(&mut self, timeout: Duration) -> Option<Event<E>> {
        tokio::time::timeout(timeout, self.recv())
            .await
            .ok()
            .flatten()
    }

    #[inline]
    fn count_received(&self) {
        // Relaxed load and store: this handle is the only writer (`&mut self`).
        let r = &*self.inner.received;
        r.store(r.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }

    /// This subscriber's id.
    pub fn id(&self) -> SubscriberId {
        self.inner.id
    }

    /// The buffer's capacity.
    pub fn capacity(&self) -> usize {
        self.inner.queue.capacity()
    }

    /// Events buffered now.
    pub fn len(&self) -> usize {
        self.inner.queue.len()
    }

    /// Whether the buffer is empty now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The buffer's pressure level now.
    pub fn pressure(&self) -> PressureLevel {
        self.inner.queue.pressure()
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
        inner.queue.close();
        self.topic.detach(inner.id);
        let mut discarded = 0;
        // Closed: no new slot can be taken, but a publisher that took one just
        // before may still be writing its event. Wait for those too (a few
        // instructions each), so every event is counted and goes back now.
        loop {
            match inner.queue.try_pop() {
                Some(e) => {
                    drop(e);
                    discarded += 1;
                }
                None if inner.queue.is_empty() => break,
                None => std::thread::yield_now(),
            }
        }
        // Relaxed: a statistic.
        inner
            .drops
            .discarded
            .fetch_add(discarded, Ordering::Relaxed);
        self.topic
            .departed
            .absorb(&inner.drops.snapshot(), inner.delivered());
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
