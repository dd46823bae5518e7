//! Subscribers: a cursor into their topic's ring, a publish [`Policy`], a
//! version filter.
//!
//! # The cursor
//!
//! A subscriber's cursor is the sequence of the next event it reads, and two
//! flags:
//!
//! - `HELD`: someone is working at that position and the slots from there on
//!   must not be overwritten yet: the consumer while it clones events out of the
//!   ring, or a publisher while it laps the subscriber (moves the events it has
//!   not read out of the way of a write, see [`SubscriberInner::lap`]). Both
//!   take it with a compare-and-swap and give it back by swapping in the next
//!   position, so the two never work on one subscriber at once. Publishers only
//!   write slot `s` once every cursor is past `s - capacity` (the topic's gate,
//!   `topic.rs`), so a held cursor pins the slots it reads.
//! - `ROOM`: a publisher waits for this subscriber to make room. The publisher
//!   registers its waker, then sets the flag with a `fetch_or` that also tells
//!   it whether the cursor moved meanwhile; the consumer's release is a swap
//!   that clears the flag and tells it whether to wake the waiting publishers.
//!   One location, one modification order: either the publisher's `fetch_or`
//!   sees the new position, or the consumer's swap sees the flag.
// The `unsafe` calls here are `Ring::peek`, each with its SAFETY argument.
#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::PoisonError;
use std::task::{Context, Poll};
use std::time::Duration;

use heijunka_backpressure::{DEFAULT_REJECT_AT, DEFAULT_WARN_AT, Watermarks};
use heijunka_core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use heijunka_core::sync::{CachePadded, Mutex, hint, thread};
use heijunka_core::{PressureLevel, validate};
use serde::Serialize;
use std::sync::Arc;

use crate::metrics::DropMetrics;
use crate::ring::Ring;
use crate::stats::{DropCounts, SubscriberStats};
use crate::topic::TopicInner;
use crate::{Event, SkipReason, SubscribeError, SubscriberId, Topic};

/// Events per subscriber buffer when none is set: the seeds' `BUS_BUFFER_SIZE`.
pub const DEFAULT_BUFFER: usize = 1000;

/// The largest subscriber buffer: 2^20 events (the largest topic ring,
/// [`MAX_CAPACITY`](crate::MAX_CAPACITY), is twice that).
pub const MAX_BUFFER: usize = 1 << 20;

/// How long a publish waits for room under [`Policy::Timeout`] when none is set:
/// the seeds' `BUS_PUBLISH_TIMEOUT`.
pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// The cursor's "someone works here" bit (module docs).
const HELD: u64 = 1 << 63;

/// The cursor's "a publisher waits for room" bit (module docs).
const ROOM: u64 = 1 << 62;

/// The cursor's position bits.
const POSITION: u64 = ROOM - 1;

/// Checks for an event in flight before a consumer goes to sleep: after 1, 2,
/// 4, ... 32 spin hints. A consumer slightly faster than its publishers would
/// otherwise register a waker after nearly every event, and each publish would
/// pay a wake-up. None under loom, whose spin hint yields to the other
/// threads: the models must reach the sleep itself.
const SPIN_ROUNDS: u32 = if cfg!(loom) { 0 } else { 6 };

/// What a publish does when a subscriber is behind by its whole buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub enum Policy {
    /// Wait for room: a slow subscriber slows its publishers (backpressure).
    /// Lossless. A waiting publisher goes on as soon as the subscriber receives
    /// one event. (A consumer takes up to a small batch of events from the ring
    /// at a time while no publisher waits, see [`Subscription`]: those no longer
    /// hold publishers back, so it may be behind by its buffer plus a batch.)
    Block,
    /// Wait up to the duration, then skip this subscriber
    /// ([`SkipReason::TimedOut`]), and skip it at once, without waiting, until
    /// it receives again. The default, with [`DEFAULT_PUBLISH_TIMEOUT`].
    Timeout(Duration),
    /// Skip this subscriber at once once it is behind by its reject mark
    /// ([`SkipReason::Full`]); the events it has are kept.
    Reject,
    /// Never wait, never skip: a subscriber behind by more than its buffer
    /// loses the oldest events and receives the newest `buffer`, and the lost
    /// ones are counted as displaced when it next receives (or, a whole ring
    /// behind, when a publisher laps it). Lossy, for streams where only the
    /// latest matters (market data).
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

/// A subscriber's validated settings.
#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) name: Option<String>,
    pub(crate) policy: Policy,
    pub(crate) min_version: u64,
    pub(crate) marks: Watermarks,
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

    /// How far behind the newest event the subscriber may fall before its
    /// policy acts (default [`DEFAULT_BUFFER`]); at least 1, at most
    /// [`MAX_BUFFER`], and at most half the topic's ring
    /// ([`Topic::capacity`]). The events are not copied per subscriber: they
    /// stay in the topic's ring, which the first subscriber allocates (large
    /// enough for its buffer).
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

    /// The fill ratio in (0, 1] from which the subscriber reports
    /// [`Elevated`](PressureLevel::Elevated) pressure (default 0.8).
    pub fn warn_at(mut self, ratio: f64) -> Self {
        self.warn_at = ratio;
        self
    }

    /// The fill ratio in (0, 1] from which the subscriber is
    /// [`Critical`](PressureLevel::Critical) and the reject policy skips it
    /// (default 0.9). Other policies act at the full buffer.
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
    /// [`SubscribeError::Config`] naming a bad setting (a zero buffer or one
    /// above [`MAX_BUFFER`] or half the topic's ring, a zero timeout, a ratio
    /// outside (0, 1]), or [`SubscribeError::Closed`].
    pub fn subscribe(self) -> Result<Subscription<E>, SubscribeError> {
        let settings = self.settings()?;
        let topic = Arc::clone(&self.topic.inner);
        let inner = topic.attach(settings)?;
        Ok(Subscription::new(inner, topic))
    }

    pub(crate) fn settings(&self) -> Result<Settings, SubscribeError> {
        validate::at_least("buffer", self.buffer, 1)?;
        validate::at_most("buffer", self.buffer, MAX_BUFFER)?;
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
        Ok(Settings {
            name: self.name.clone(),
            policy: self.policy,
            min_version: self.min_version,
            marks,
        })
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

/// What a lap did to a subscriber: events it lost (drop-oldest) or passed
/// over as filtered, counted; the caller emits their metrics, and wakes the
/// publishers waiting for room if `wake`.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Lapped {
    pub(crate) displaced: u64,
    pub(crate) filtered: u64,
    pub(crate) wake: bool,
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
    /// The topic's drop metrics: drops are emitted as they are counted here
    /// (never by `absorb`, which only moves counts).
    pub(crate) metrics: DropMetrics,
}

impl Counts {
    pub(crate) fn with_metrics(metrics: DropMetrics) -> Self {
        Self {
            metrics,
            ..Self::default()
        }
    }

    pub(crate) fn skip_n(&self, reason: SkipReason, n: u64) {
        self.metrics.skipped(reason, n);
        self.count(reason, n);
    }

    /// Counts `n` skips without emitting their metric (the caller does,
    /// later: a publisher between its claim and its write).
    pub(crate) fn count(&self, reason: SkipReason, n: u64) {
        if n == 0 {
            return;
        }
        let c = match reason {
            SkipReason::Filtered => &self.filtered,
            SkipReason::Full => &self.full,
            SkipReason::TimedOut => &self.timed_out,
            SkipReason::Closed => &self.closed,
        };
        // Relaxed: a statistic.
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn displaced(&self, n: u64) {
        self.metrics.displaced.increment(n);
        self.count_displaced(n);
    }

    /// As `count`, for displaced events.
    pub(crate) fn count_displaced(&self, n: u64) {
        // Relaxed: a statistic.
        self.displaced.fetch_add(n, Ordering::Relaxed);
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
    pub(crate) settings: Settings,
    /// The lag (events published and not yet read) at which a publisher must
    /// act on this subscriber: its buffer (`Block`, `Timeout`), its reject mark
    /// (`Reject`), or the whole ring (`DropOldest`, lapped).
    pub(crate) limit: u64,
    /// The next sequence to read, with the `HELD` and `ROOM` bits (module
    /// docs). Written by the consumer after every batch; read by publishers
    /// when they rescan.
    cursor: CachePadded<AtomicU64>,
    /// One bit per sequence, over twice the ring: the event at that sequence
    /// skipped this subscriber (full, timed out, filtered). Set by a publisher
    /// before it publishes the event, cleared when the cursor moves past it.
    skips: Box<[AtomicU64]>,
    /// Events a publisher moved out of the ring when it lapped this
    /// subscriber, oldest first; all older than the cursor.
    spill: Mutex<VecDeque<Event<E>>>,
    spilled: AtomicUsize,
    /// A `Timeout` subscriber a publisher gave up waiting for: skipped at once
    /// until it receives again.
    pub(crate) timed_out: AtomicBool,
    /// The sequence at which it stopped taking events (the topic closed, or
    /// its handler stopped); `u64::MAX` while it takes them.
    end: AtomicU64,
    /// Gone from its topic: publishers waiting for it stop.
    gone: AtomicBool,
    /// Events its consumer received (written only by the consumer).
    received: AtomicU64,
    /// Events its consumer took from the ring and has not returned yet.
    batched: AtomicUsize,
    pub(crate) drops: Counts,
}

impl<E: Send + Sync + 'static> SubscriberInner<E> {
    pub(crate) fn new(
        id: SubscriberId,
        settings: Settings,
        ring: usize,
        start: u64,
        drops: Counts,
    ) -> Self {
        let limit = match settings.policy {
            Policy::Block | Policy::Timeout(_) => settings.marks.capacity(),
            Policy::Reject => settings.marks.reject_slots(),
            Policy::DropOldest => ring,
        } as u64;
        Self {
            id,
            settings,
            limit,
            cursor: CachePadded::new(AtomicU64::new(start)),
            // Twice the ring: a mark for `t` never shares a bit with the
            // unread `t - capacity` a lap of the same publish moves aside.
            skips: (0..(2 * ring).div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            spill: Mutex::new(VecDeque::new()),
            spilled: AtomicUsize::new(0),
            timed_out: AtomicBool::new(false),
            end: AtomicU64::new(u64::MAX),
            gone: AtomicBool::new(false),
            received: AtomicU64::new(0),
            batched: AtomicUsize::new(0),
            drops,
        }
    }

    pub(crate) fn policy(&self) -> Policy {
        self.settings.policy
    }

    pub(crate) fn capacity(&self) -> usize {
        self.settings.marks.capacity()
    }

    /// Whether the version filter lets through an event of `version`, critical
    /// or not.
    #[inline]
    pub(crate) fn accepts(&self, version: u64, critical: bool) -> bool {
        version >= self.settings.min_version || critical
    }

    /// The cursor's position (without its flags).
    #[inline]
    pub(crate) fn position(&self) -> u64 {
        // Acquire: pairs with the release of the consumer (or lapper) that
        // moved it.
        self.cursor.load(Ordering::Acquire) & POSITION
    }

    /// A publisher about to wait for room (its waker registered): flags the
    /// cursor and returns its position, so that a later release wakes it.
    pub(crate) fn want_room(&self) -> u64 {
        // SeqCst: one location with the release's swap (module docs).
        self.cursor.fetch_or(ROOM, Ordering::SeqCst) & POSITION
    }

    /// Whether it still takes new events.
    pub(crate) fn is_open(&self) -> bool {
        // SeqCst: set under the topic's lock; read by publishers under it and
        // by the consumer without it.
        self.end.load(Ordering::SeqCst) == u64::MAX
    }

    /// Where it stopped taking events, if it did.
    pub(crate) fn end(&self) -> Option<u64> {
        // SeqCst: as in `is_open`.
        let end = self.end.load(Ordering::SeqCst);
        (end != u64::MAX).then_some(end)
    }

    /// Stops intake at `end` (the topic's lock is held).
    pub(crate) fn close_at(&self, end: u64) {
        // SeqCst: as in `is_open`.
        self.end.fetch_min(end, Ordering::SeqCst);
    }

    pub(crate) fn is_gone(&self) -> bool {
        // SeqCst: set under the topic's lock before it wakes waiting publishers.
        self.gone.load(Ordering::SeqCst)
    }

    #[inline]
    fn skip_word(&self, seq: u64) -> (&AtomicU64, u64) {
        let bits = self.skips.len() as u64 * 64;
        let i = seq % bits;
        // `i / 64` is below `skips.len()`: the cast cannot truncate.
        (&self.skips[(i / 64) as usize], 1 << (i % 64))
    }

    /// Marks event `seq` as skipping this subscriber (before it is published).
    pub(crate) fn mark_skip(&self, seq: u64) {
        let (word, bit) = self.skip_word(seq);
        // Relaxed: published to the consumer by the slot's stamp (a Release
        // store after this, an Acquire load before the consumer reads the bit).
        word.fetch_or(bit, Ordering::Relaxed);
    }

    /// Whether event `seq` skipped this subscriber; clears the mark. Called
    /// with the cursor held at `seq`.
    #[inline]
    fn take_skip(&self, seq: u64) -> bool {
        let (word, bit) = self.skip_word(seq);
        // Relaxed: see `mark_skip`.
        if word.load(Ordering::Relaxed) & bit == 0 {
            return false;
        }
        word.fetch_and(!bit, Ordering::Relaxed);
        true
    }

    /// Takes the cursor, loaded as `seen` (module docs); fails if it changed.
    #[inline]
    fn hold(&self, seen: u64) -> bool {
        debug_assert_eq!(seen & HELD, 0);
        // Acquire: the previous holder's reads and writes happen before ours.
        self.cursor
            .compare_exchange(seen, seen | HELD, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// Gives the cursor back at `next`; returns whether publishers wait for
    /// room (the caller wakes them).
    #[inline]
    #[must_use]
    fn release(&self, next: u64) -> bool {
        // SeqCst: one location with `want_room` (module docs); release for
        // the publisher that rescans.
        self.cursor.swap(next, Ordering::SeqCst) & ROOM != 0
    }

    /// Moves the cursor to `target`, taking the events before it out of the
    /// way of a write: `DropOldest` loses them (displaced), the other policies
    /// keep them in the spill, in order. Called by a publisher with the topic's
    /// lock held, before it writes sequence `target - 1 + capacity`; every
    /// event below `target` is published or about to be (claimed).
    pub(crate) fn lap(&self, target: u64, ring: &Ring<E>) -> Lapped {
        let mut spins = 0_u32;
        let pos = loop {
            // Acquire: as in `hold`.
            let v = self.cursor.load(Ordering::Acquire);
            if v & POSITION >= target {
                return Lapped::default();
            }
            if v & HELD != 0 {
                // Its consumer is cloning events out of the ring.
                spins += 1;
                if spins < 64 {
                    hint::spin_loop();
                } else {
                    thread::yield_now();
                }
                continue;
            }
            if self.hold(v) {
                break v & POSITION;
            }
        };
        // Events from its end on were never for it (it stopped taking them).
        // SeqCst: as in `is_open`.
        let end = self.end.load(Ordering::SeqCst);
        let (mut lapped, mut kept) = (Lapped::default(), Vec::new());
        // Nothing from its end on was marked or is for it: stop there (a
        // drained stopped subscriber is far behind, and this runs under the
        // lock between a claim and its write).
        for seq in pos..target.min(end.max(pos)) {
            if self.take_skip(seq) {
                continue;
            }
            if self.policy() == Policy::DropOldest {
                lapped.displaced += 1;
                continue;
            }
            // Claimed before the sequence this publisher holds; its writer is
            // between its claim and its stamp.
            while ring.state(seq) == std::cmp::Ordering::Less {
                hint::spin_loop();
            }
            // SAFETY: event `seq` is published (just observed) and the cursor
            // is held at `pos <= seq`, so no writer overwrites it (the gate
            // keeps writers below every cursor plus the ring's capacity).
            let copy = unsafe {
                ring.peek(seq, |e| {
                    self.accepts(e.version(), e.is_critical())
                        .then(|| e.clone())
                })
            };
            match copy {
                Some(e) => kept.push(e),
                None => lapped.filtered += 1,
            }
        }
        if !kept.is_empty() {
            let mut spill = self.spill.lock().unwrap_or_else(PoisonError::into_inner);
            // SeqCst: the consumer checks `spilled` after it loads the cursor
            // stored below.
            self.spilled.fetch_add(kept.len(), Ordering::SeqCst);
            spill.extend(kept);
        }
        // The counts now (atomics); their metrics, and waking publishers that
        // wait for room, once the publish is written.
        self.drops.count(SkipReason::Filtered, lapped.filtered);
        self.drops.count_displaced(lapped.displaced);
        lapped.wake = self.release(target);
        lapped
    }

    /// Takes the oldest spilled event, if any.
    fn unspill(&self) -> Option<Event<E>> {
        let mut spill = self.spill.lock().unwrap_or_else(PoisonError::into_inner);
        let e = spill.pop_front()?;
        // SeqCst: as in `lap`.
        self.spilled.fetch_sub(1, Ordering::SeqCst);
        Some(e)
    }

    /// The events it has not read: published before its end, not skipped,
    /// and spilled ones. `claimed` is the topic's sequence count.
    pub(crate) fn unread(&self, claimed: u64) -> u64 {
        // SeqCst: as in `is_open`.
        let until = claimed.min(self.end.load(Ordering::SeqCst));
        let pos = self.position();
        let mut n = until.saturating_sub(pos);
        let bits = self.skips.len() as u64 * 64;
        for seq in pos..until.min(pos + bits) {
            let (word, bit) = self.skip_word(seq);
            // Relaxed: a statistic.
            if word.load(Ordering::Relaxed) & bit != 0 {
                n -= 1;
            }
        }
        // SeqCst: as in `lap`. Relaxed: a statistic.
        n + self.spilled.load(Ordering::SeqCst) as u64 + self.batched.load(Ordering::Relaxed) as u64
    }

    /// Discards what it has not read (it is leaving its topic) and counts
    /// it; returns the events it had moved aside, for the caller to drop
    /// outside the topic's lock (a pooled value's reset is user code).
    /// The caller emits the `discarded` metric (`n`) after the lock too.
    #[must_use]
    pub(crate) fn discard(&self, claimed: u64) -> (VecDeque<Event<E>>, u64) {
        let n = self.unread(claimed);
        let spill = std::mem::take(&mut *self.spill.lock().unwrap_or_else(PoisonError::into_inner));
        // SeqCst: as in `lap`.
        self.spilled.store(0, Ordering::SeqCst);
        // Relaxed: a statistic.
        self.drops.discarded.fetch_add(n, Ordering::Relaxed);
        (spill, n)
    }

    pub(crate) fn received(&self) -> u64 {
        // Relaxed: a statistic.
        self.received.load(Ordering::Relaxed)
    }

    /// Events made available to it: received, waiting, displaced or
    /// discarded (not those skipped or filtered).
    pub(crate) fn delivered(&self, claimed: u64) -> u64 {
        let d = self.drops.snapshot();
        self.received() + self.unread(claimed) + d.displaced + d.discarded
    }

    pub(crate) fn level(&self, claimed: u64) -> PressureLevel {
        let lag = usize::try_from(self.unread(claimed)).unwrap_or(usize::MAX);
        self.settings.marks.level(lag)
    }

    pub(crate) fn stats(&self, claimed: u64) -> SubscriberStats {
        let len = self.unread(claimed);
        SubscriberStats {
            id: self.id,
            name: self.settings.name.clone(),
            policy: self.policy(),
            min_version: self.settings.min_version,
            capacity: self.capacity(),
            len: usize::try_from(len).unwrap_or(usize::MAX),
            level: self.level(claimed),
            received: self.received(),
            delivered: self.delivered(claimed),
            dropped: self.drops.snapshot(),
        }
    }

    /// Marks it gone (the topic's lock is held).
    pub(crate) fn leave(&self) {
        // SeqCst: see `is_gone`.
        self.gone.store(true, Ordering::SeqCst);
    }
}

/// One subscriber's end: receives every event published to its topic after it
/// subscribed (that its version filter and policy let through), in order.
///
/// It is also a [`Stream`](futures_core::Stream) of events.
///
/// A consumer takes the events it finds in the ring in small batches (an
/// eighth of its buffer, at most 32; one at a time for drop-oldest, and while
/// a publisher waits for it): two atomic read-modify-writes serve the batch.
/// Events taken count as waiting for it ([`len`](Self::len)) until received.
///
/// Dropping it unsubscribes: what it has not read is counted as discarded.
/// Events stay in the topic's ring, shared, until their slot is reused, the
/// topic is dropped, or every subscriber has passed them and a consumer that
/// found nothing to read reclaims them; a pooled event goes back to its pool
/// then, once every receiver's clone is dropped too.
pub struct Subscription<E: Send + Sync + 'static> {
    pub(crate) inner: Arc<SubscriberInner<E>>,
    pub(crate) topic: Arc<TopicInner<E>>,
    /// Events taken from the ring and not yet returned, oldest first.
    batch: VecDeque<Event<E>>,
    /// The most events taken from the ring at once (`batch_for`).
    batch_max: u64,
}

/// The most events a consumer takes from the ring at once: an eighth of its
/// buffer, at most 32, and one for drop-oldest subscribers (which must see the
/// newest events, not a batch taken before they fell behind). They count as
/// waiting for it.
fn batch_for(settings: &Settings) -> usize {
    if settings.policy == Policy::DropOldest {
        1
    } else {
        (settings.marks.capacity() / 8).clamp(1, 32)
    }
}

impl<E: Send + Sync + 'static> Subscription<E> {
    pub(crate) fn new(inner: Arc<SubscriberInner<E>>, topic: Arc<TopicInner<E>>) -> Self {
        let batch = batch_for(&inner.settings);
        Self {
            inner,
            topic,
            batch: VecDeque::with_capacity(batch),
            batch_max: batch as u64,
        }
    }
}

impl<E: Send + Sync + 'static> Subscription<E> {
    /// The next event, waiting while there is none; `None` once the topic is
    /// closed (or this subscriber's handler stopped) and every event published
    /// before that was received.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: an event is taken only by the poll that returns it, so a
    /// `recv` dropped before it completes loses nothing and the next `recv`
    /// returns that event. A dropped `recv` may leave its waker registered; the
    /// next publish wakes it once, for nothing.
    pub async fn recv(&mut self) -> Option<Event<E>> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Polls for the next event: what [`recv`](Self::recv) and the
    /// [`Stream`](futures_core::Stream) implementation do.
    ///
    /// ```
    /// use heijunka_event_bus::Topic;
    /// use std::future::poll_fn;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let topic = Topic::<u32>::new("t")?;
    /// let mut sub = topic.subscribe()?;
    /// topic.publish(7).await?;
    /// let got = poll_fn(|cx| sub.poll_recv(cx)).await;
    /// assert_eq!(got.map(|e| *e), Some(7));
    /// # Ok(())
    /// # }
    /// ```
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Event<E>>> {
        for round in 0..SPIN_ROUNDS {
            if let Some(e) = self.next() {
                return Poll::Ready(Some(e));
            }
            if self.ended() {
                return Poll::Ready(None);
            }
            for _ in 0..1 << round {
                hint::spin_loop();
            }
        }
        // Register, flag the topic's tail, then look once more: a claim after
        // the flag sees it and wakes this task; one before it is in the value
        // the flagging returns (`topic.rs`).
        self.topic.consumers.register(cx.waker());
        let claimed = self.topic.want_events();
        if let Some(e) = self.next() {
            return Poll::Ready(Some(e));
        }
        if self.ended() {
            return Poll::Ready(None);
        }
        if claimed > self.inner.position() {
            // Claimed before the flag, not yet published: its publisher is
            // between its claim and its stamp. Poll again soon (the spin hint
            // lets that publisher run first under loom).
            hint::spin_loop();
            cx.waker().wake_by_ref();
        } else {
            self.topic.maybe_reclaim();
        }
        Poll::Pending
    }

    /// The next event if one is there; never waits.
    pub fn try_recv(&mut self) -> Option<Event<E>> {
        let next = self.next();
        if next.is_none() && !self.ended() {
            self.topic.maybe_reclaim();
        }
        next
    }

    /// [`recv`](Self::recv), giving up after `timeout` (tokio's timer): `None` on
    /// timeout as well as when closed and drained.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`recv`](Self::recv).
    pub async fn recv_timeout(&mut self, timeout: Duration) -> Option<Event<E>> {
        tokio::time::timeout(timeout, self.recv())
            .await
            .ok()
            .flatten()
    }

    /// A new subscriber with this one's settings (policy, buffer, marks,
    /// version filter, name), receiving from the newest event on: like
    /// `tokio::sync::broadcast::Receiver::resubscribe`, it does not see what
    /// this one has not read yet.
    ///
    /// ```
    /// use heijunka_event_bus::Topic;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let topic = Topic::<u32>::new("t")?;
    /// let mut first = topic.subscriber().buffer(8).subscribe()?;
    /// topic.publish(1).await?;
    /// let mut second = first.resubscribe()?;
    /// topic.publish(2).await?;
    /// assert_eq!(second.recv().await.map(|e| *e), Some(2));
    /// assert_eq!(first.recv().await.map(|e| *e), Some(1));
    /// assert_eq!(second.capacity(), 8);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`SubscribeError::Closed`] if the topic is closed.
    pub fn resubscribe(&self) -> Result<Self, SubscribeError> {
        let inner = self.topic.attach(self.inner.settings.clone())?;
        Ok(Self::new(inner, Arc::clone(&self.topic)))
    }

    /// This subscriber's id.
    pub fn id(&self) -> SubscriberId {
        self.inner.id
    }

    /// Its buffer: how far behind it may fall before its policy acts.
    pub fn capacity(&self) -> usize {
        self.inner.capacity()
    }

    /// Events waiting for it now.
    pub fn len(&self) -> usize {
        usize::try_from(self.inner.unread(self.topic.claimed())).unwrap_or(usize::MAX)
    }

    /// Whether no event waits for it now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Its pressure level now: how much of its buffer is used.
    pub fn pressure(&self) -> PressureLevel {
        self.inner.level(self.topic.claimed())
    }

    /// A snapshot of this subscriber's numbers.
    pub fn stats(&self) -> SubscriberStats {
        self.inner.stats(self.topic.claimed())
    }

    /// The topic's name.
    pub fn topic(&self) -> &str {
        &self.topic.name
    }

    /// One step of the consumer: the next event, if one is there (`ended`
    /// tells why not).
    fn next(&mut self) -> Option<Event<E>> {
        if let Some(e) = self.batch.pop_front() {
            // A publisher waits for room: free one slot now (take one more
            // event into the batch), so that it goes on at this receive, not
            // after the batch. Relaxed: a hint; the visit synchronises.
            if self.inner.cursor.load(Ordering::Relaxed) & ROOM != 0 {
                self.fill(1);
            }
            return self.deliver(e);
        }
        if self.fill(self.batch_max) {
            let e = self.batch.pop_front()?;
            return self.deliver(e);
        }
        None
    }

    /// Takes up to `max` events (one while a publisher waits for room) from
    /// the spill or the ring into the batch; returns whether it took any.
    fn fill(&mut self, max: u64) -> bool {
        let (sub, topic) = (&*self.inner, &*self.topic);
        let ring = topic.ring();
        loop {
            // Acquire: as in `hold`.
            let seen = sub.cursor.load(Ordering::Acquire);
            if seen & HELD != 0 {
                // A publisher is lapping it, under the topic's lock.
                hint::spin_loop();
                continue;
            }
            let c = seen & POSITION;
            // Events a lap moved aside are older than the cursor (and newer
            // than the batch): next. A lap counts them (SeqCst) before it
            // stores the cursor loaded above.
            // SeqCst: as in `lap`.
            if sub.spilled.load(Ordering::SeqCst) != 0 {
                if let Some(e) = sub.unspill() {
                    self.batch.push_back(e);
                    return true;
                }
                continue;
            }
            // SeqCst: as in `is_open`.
            let end = sub.end.load(Ordering::SeqCst);
            if c >= end {
                return false;
            }
            match ring.state(c) {
                std::cmp::Ordering::Less => return false,
                // Lapped since the load: the cursor moved.
                std::cmp::Ordering::Greater => continue,
                std::cmp::Ordering::Equal => {}
            }
            if sub.policy() == Policy::DropOldest {
                let keep = sub.capacity() as u64;
                if ring.state(c + keep) != std::cmp::Ordering::Less {
                    // More than `keep` behind: jump towards the newest `keep`,
                    // over published events only (their marks are visible).
                    let target = topic.claimed().saturating_sub(keep).min(end);
                    if target > c && sub.hold(seen) {
                        let (mut to, mut marked) = (c, 0);
                        while to < target && ring.state(to) == std::cmp::Ordering::Equal {
                            // Events marked at publish (filtered) are not lost.
                            marked += u64::from(sub.take_skip(to));
                            to += 1;
                        }
                        if sub.release(to) {
                            topic.room.wake_all();
                        }
                        sub.drops.displaced(to - c - marked);
                    }
                    continue;
                }
            }
            if !sub.hold(seen) {
                continue;
            }
            // Take what is published from `c` on, up to a batch: one hold and
            // one release (two atomic read-modify-writes) for the batch.
            // One event at a time while a publisher waits for room: it goes on
            // at this receive, not after a batch.
            let batch = if seen & ROOM == 0 { max } else { 1 };
            let last = end.min(c + batch);
            let (mut next, mut filtered, before) = (c, 0, self.batch.len());
            while next < last && (next == c || ring.state(next) == std::cmp::Ordering::Equal) {
                if !sub.take_skip(next) {
                    // SAFETY: event `next` is published (`state` above, or
                    // before the hold for `c`) and the cursor is held at
                    // `c <= next`: no writer overwrites it until `release`.
                    let e = unsafe {
                        ring.peek(next, |e| {
                            sub.accepts(e.version(), e.is_critical()).then(|| e.clone())
                        })
                    };
                    match e {
                        Some(e) => self.batch.push_back(e),
                        None => filtered += 1,
                    }
                }
                next += 1;
            }
            if sub.release(next) {
                topic.room.wake_all();
            }
            if filtered > 0 {
                sub.drops.skip_n(SkipReason::Filtered, filtered);
            }
            if self.batch.len() > before {
                return true;
            }
        }
    }

    /// Whether every event for it was received: it stopped taking events
    /// and read up to where it stopped.
    fn ended(&self) -> bool {
        let sub = &*self.inner;
        // SeqCst: as in `is_open` and `lap`.
        self.batch.is_empty()
            && sub.position() >= sub.end.load(Ordering::SeqCst)
            && sub.spilled.load(Ordering::SeqCst) == 0
    }

    #[inline]
    fn deliver(&self, e: Event<E>) -> Option<Event<E>> {
        let sub = &self.inner;
        // Relaxed: a statistic, written only by this consumer.
        sub.batched.store(self.batch.len(), Ordering::Relaxed);
        // Relaxed: written only by this consumer.
        sub.received
            .store(sub.received.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        // Relaxed: a hint for publishers, set under the topic's lock.
        if sub.timed_out.load(Ordering::Relaxed) {
            sub.timed_out.store(false, Ordering::Relaxed);
        }
        Some(e)
    }
}

// The subscription never relies on its fields staying in place (it polls no
// future it owns): moving it while "pinned" is fine, whatever `E` is.
impl<E: Send + Sync + 'static> Unpin for Subscription<E> {}

impl<E: Send + Sync + 'static> futures_core::Stream for Subscription<E> {
    type Item = Event<E>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event<E>>> {
        self.get_mut().poll_recv(cx)
    }
}

impl<E: Send + Sync + 'static> Drop for Subscription<E> {
    fn drop(&mut self) {
        self.topic.detach(&self.inner);
    }
}

impl<E: Send + Sync + 'static> fmt::Debug for Subscription<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("topic", &self.topic.name)
            .field("id", &self.inner.id)
            .field("policy", &self.inner.policy())
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}
