//! [`BoundedQueue`]: an MPMC queue with a capacity and watermarks.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crossbeam::queue::ArrayQueue;
use heijunka_core::sync::CachePadded;
use heijunka_core::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use heijunka_core::{ConfigError, PressureLevel, Rejection, validate};
use serde::Serialize;
use tokio::sync::Notify;

use crate::block::block_on;
use crate::metrics::{DEFAULT_NAME, QueueMetrics};
use crate::slots::{MAX_CAPACITY, Reserve, Side, SlotState};
use crate::watermarks::{DEFAULT_WATERMARK_HYSTERESIS, Watermarks};

/// Default warn watermark: 80 % of capacity (the seeds' degradation tables).
pub const DEFAULT_WARN_AT: f64 = 0.8;
/// Default reject watermark: 90 % of capacity (the seeds' degradation tables).
pub const DEFAULT_REJECT_AT: f64 = 0.9;

/// A bounded multi-producer multi-consumer queue with watermarks.
///
/// Levels follow the seeds' degradation tables: below the warn mark (default 80 %)
/// the queue is [`Normal`](PressureLevel::Normal); from the warn mark it is
/// [`Elevated`](PressureLevel::Elevated); from the reject mark (default 90 %) it is
/// [`Critical`](PressureLevel::Critical), and [`try_push`](Self::try_push) hands
/// items back instead of queueing them. Only [`push`](Self::push) (and its timeout
/// and blocking forms) may fill the last slots, and it waits when the queue is full.
///
/// Reaching a watermark logs one `tracing` event at WARN (the seeds' table: "queue
/// 80 % full: log warning"; and at the reject mark, that items are being
/// refused) and bumps a counter in [`stats`](Self::stats). A queue hovering at a
/// mark logs once, not once per item: the mark counts again only after the length
/// has fallen below it by the [hysteresis](BoundedQueueBuilder::hysteresis)
/// margin (default 5 % of capacity), and that fall is logged once too (at INFO
/// below the reject mark, at DEBUG below the warn mark). Only the events and
/// counters have hysteresis: levels and rejections follow the length.
///
/// [`close`](Self::close) stops producers at once; consumers drain what is queued,
/// then [`pop`](Self::pop) returns `None`.
///
/// Clones are handles to the same queue.
///
/// ```
/// # if heijunka_core::sync::IS_LOOM { return Ok(()); } // loom types work only inside a model
/// use heijunka_backpressure::BoundedQueue;
/// use heijunka_core::{PressureLevel, Rejection};
///
/// let q = BoundedQueue::new(10)?; // warn at 8, reject at 9
/// for i in 0..9 {
///     q.try_push(i).unwrap();
/// }
/// assert_eq!(q.pressure(), PressureLevel::Critical);
/// let err = q.try_push(9).unwrap_err();
/// assert_eq!(err.reason(), Rejection::QueueFull { capacity: 10 });
/// assert_eq!(err.into_inner(), 9); // the item comes back
/// assert_eq!(q.try_pop(), Some(0));
/// # Ok::<(), heijunka_core::ConfigError>(())
/// ```
pub struct BoundedQueue<T> {
    shared: Arc<Shared<T>>,
}

struct Shared<T> {
    items: ArrayQueue<T>,
    state: SlotState,
    not_empty: Notify,
    not_full: Notify,
    marks: Watermarks,
    /// Bumped by every refused push: on its own line, away from the latches
    /// every pop near a mark reads.
    rejected: CachePadded<AtomicU64>,
    /// The crossing latches, one word: [`ELEVATED`] while the warn mark was
    /// reached and has not cleared since (for the once-per-crossing event),
    /// [`CRITICAL`] the same for the reject mark.
    latches: CachePadded<AtomicU8>,
    /// Pops that take the length to at least this read the latches (see
    /// `crossed_down`); computed once at build.
    watch_from: usize,
    /// `clear_below(warn_slots)` and `clear_below(reject_slots)`, computed once.
    clear_elevated: usize,
    clear_critical: usize,
    elevated_crossings: AtomicU64,
    critical_crossings: AtomicU64,
    /// Depth up on a push, down on a pop; crossings and rejections beside the
    /// counters above.
    metrics: QueueMetrics,
}

impl<T> Drop for Shared<T> {
    fn drop(&mut self) {
        // The items still queued leave the depth gauge with the queue (another
        // queue of the same name goes on from the right figure).
        self.metrics.depth.decrement(self.items.len() as f64);
    }
}

/// Builds a [`BoundedQueue`]; see [`BoundedQueue::builder`].
#[must_use = "a builder does nothing until `build()`"]
pub struct BoundedQueueBuilder<T> {
    capacity: usize,
    warn_at: f64,
    reject_at: f64,
    hysteresis: f64,
    name: String,
    item: std::marker::PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for BoundedQueueBuilder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoundedQueueBuilder")
            .field("capacity", &self.capacity)
            .field("warn_at", &self.warn_at)
            .field("reject_at", &self.reject_at)
            .field("hysteresis", &self.hysteresis)
            .field("name", &self.name)
            .finish()
    }
}

impl<T> BoundedQueueBuilder<T> {
    /// The fill ratio in (0, 1] from which the queue is elevated. Default 0.8.
    pub fn warn_at(mut self, ratio: f64) -> Self {
        self.warn_at = ratio;
        self
    }

    /// The fill ratio in (0, 1] from which `try_push` rejects. Default 0.9. At 1.0,
    /// `try_push` rejects only when the queue is full.
    pub fn reject_at(mut self, ratio: f64) -> Self {
        self.reject_at = ratio;
        self
    }

    /// How far below a mark (as a fill ratio, in `[0, warn_at)`) the length must
    /// fall before reaching the mark again counts as a new crossing, logged and
    /// counted again. Default [`DEFAULT_WATERMARK_HYSTERESIS`] (0.05: a 100-slot
    /// queue that warned at 80 warns again only after falling below 75). At 0,
    /// a queue hovering at a mark logs on every item that crosses it.
    pub fn hysteresis(mut self, ratio: f64) -> Self {
        self.hysteresis = ratio;
        self
    }

    /// The `name` label of the queue's metrics (feature `metrics`, see
    /// `docs/metrics.md`). Default `"default"`.
    ///
    /// ```
    /// use heijunka_backpressure::BoundedQueue;
    ///
    /// let jobs = BoundedQueue::<u64>::builder(64).name("jobs").build()?;
    /// # let _ = jobs;
    /// # Ok::<(), heijunka_core::ConfigError>(())
    /// ```
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the field: a capacity of 0, a ratio outside
    /// (0, 1], `warn_at` above `reject_at`, or a hysteresis outside `[0, warn_at)`.
    pub fn build(self) -> Result<BoundedQueue<T>, ConfigError> {
        validate::at_least("capacity", self.capacity, 1)?;
        validate::at_most("capacity", self.capacity, MAX_CAPACITY)?;
        let marks = Watermarks::with_hysteresis(
            self.capacity,
            self.warn_at,
            self.reject_at,
            self.hysteresis,
        )?;
        let clear_elevated = marks.clear_below(marks.warn_slots());
        let clear_critical = marks.clear_below(marks.reject_slots());
        // The band reaches one margin (at least one slot) under the warn mark's
        // clear point: slack for a latch raised late by a racing push.
        let watch_from = clear_elevated.saturating_sub(marks.margin_slots().max(1));
        Ok(BoundedQueue {
            shared: Arc::new(Shared {
                items: ArrayQueue::new(self.capacity),
                state: SlotState::new(),
                not_empty: Notify::new(),
                not_full: Notify::new(),
                marks,
                rejected: CachePadded::new(AtomicU64::new(0)),
                latches: CachePadded::new(AtomicU8::new(0)),
                watch_from,
                clear_elevated,
                clear_critical,
                elevated_crossings: AtomicU64::new(0),
                critical_crossings: AtomicU64::new(0),
                metrics: QueueMetrics::new(&self.name),
            }),
        })
    }
}

/// An item that was not queued, handed back with the reason.
pub struct PushError<T> {
    item: T,
    reason: Rejection,
}

impl<T> PushError<T> {
    /// The item that was not queued.
    pub fn into_inner(self) -> T {
        self.item
    }

    /// Why: [`Rejection::QueueFull`] (above the reject mark, or full),
    /// [`Rejection::TimedOut`], or [`Rejection::ShuttingDown`] (closed).
    pub fn reason(&self) -> Rejection {
        self.reason
    }
}

impl<T> fmt::Debug for PushError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PushError")
            .field("reason", &self.reason)
            .finish_non_exhaustive()
    }
}

impl<T> fmt::Display for PushError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "item not queued: {}", self.reason)
    }
}

impl<T> std::error::Error for PushError<T> {}

/// Live numbers of a [`BoundedQueue`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct QueueStats {
    /// Capacity.
    pub capacity: usize,
    /// Items queued (or being queued) now.
    pub len: usize,
    /// Pressure level now.
    pub level: PressureLevel,
    /// Length from which the queue is elevated.
    pub warn_at: usize,
    /// Length from which `try_push` rejects.
    pub reject_at: usize,
    /// Items handed back by `try_push` or a timed-out push.
    pub rejected: u64,
    /// Times the queue reached the warn mark while it was clear (at first, or after
    /// falling below the mark less the hysteresis margin): one per WARN event.
    pub elevated_crossings: u64,
    /// The same for the reject mark.
    ///
    /// A latch decides which push reports a crossing, set after the length moved:
    /// under pushes and pops racing at a mark, a crossing may be reported by a
    /// later push, or not at all if the length clears the mark again first. The
    /// counters always equal the events logged.
    pub critical_crossings: u64,
    /// Whether the queue was closed.
    pub closed: bool,
    /// Consumers registered as waiting for an item now.
    pub waiting_consumers: usize,
    /// Producers registered as waiting for room now.
    pub waiting_producers: usize,
}

impl<T> BoundedQueue<T> {
    /// A queue of `capacity` with the default watermarks (warn 80 %, reject 90 %).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for a capacity of 0.
    pub fn new(capacity: usize) -> Result<Self, ConfigError> {
        Self::builder(capacity).build()
    }

    /// A builder for a queue of `capacity`, to set the watermarks.
    pub fn builder(capacity: usize) -> BoundedQueueBuilder<T> {
        BoundedQueueBuilder {
            capacity,
            warn_at: DEFAULT_WARN_AT,
            reject_at: DEFAULT_REJECT_AT,
            hysteresis: DEFAULT_WATERMARK_HYSTERESIS,
            name: DEFAULT_NAME.to_owned(),
            item: std::marker::PhantomData,
        }
    }

    /// The capacity.
    pub fn capacity(&self) -> usize {
        self.shared.marks.capacity()
    }

    /// Items queued (or being queued) now.
    pub fn len(&self) -> usize {
        self.shared.state.len()
    }

    /// Whether the queue is empty now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The pressure level now.
    pub fn pressure(&self) -> PressureLevel {
        self.shared.level_at(self.len())
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.shared.state.is_closed()
    }

    /// A snapshot of the live numbers.
    pub fn stats(&self) -> QueueStats {
        let s = &self.shared;
        let len = self.len();
        // Relaxed loads: statistics.
        QueueStats {
            capacity: s.marks.capacity(),
            len,
            level: s.level_at(len),
            warn_at: s.marks.warn_slots(),
            reject_at: s.marks.reject_slots(),
            rejected: s.rejected.load(Ordering::Relaxed),
            elevated_crossings: s.elevated_crossings.load(Ordering::Relaxed),
            critical_crossings: s.critical_crossings.load(Ordering::Relaxed),
            closed: self.is_closed(),
            waiting_consumers: s.state.waiters(Side::Pop),
            waiting_producers: s.state.waiters(Side::Push),
        }
    }

    /// Queues `item` unless the queue is at or above its reject mark (or closed);
    /// never waits.
    ///
    /// # Errors
    ///
    /// A [`PushError`] holding the item: [`Rejection::QueueFull`] or
    /// [`Rejection::ShuttingDown`].
    #[inline]
    pub fn try_push(&self, item: T) -> Result<(), PushError<T>> {
        let r = self.push_below(item, self.shared.marks.reject_slots());
        if let Err(e) = &r
            && e.reason != Rejection::ShuttingDown
        {
            // Relaxed: a statistic.
            self.shared.rejected.fetch_add(1, Ordering::Relaxed);
            self.shared.metrics.rejected.increment(1);
        }
        r
    }

    #[inline]
    fn push_below(&self, item: T, limit: usize) -> Result<(), PushError<T>> {
        let s = &*self.shared;
        match s.state.reserve(limit) {
            Reserve::Reserved { before, wake } => {
                // A reserved slot always fits: reservations never exceed capacity,
                // and a pop frees its slot only after removing its item.
                if s.items.push(item).is_err() {
                    unreachable!("a reserved slot is free");
                }
                s.metrics.depth.increment(1.0);
                s.crossed_up(before + 1);
                if wake {
                    s.not_empty.notify_one();
                }
                Ok(())
            }
            Reserve::Full => Err(PushError {
                item,
                reason: Rejection::QueueFull {
                    capacity: s.marks.capacity(),
                },
            }),
            Reserve::Closed => Err(PushError {
                item,
                reason: Rejection::ShuttingDown,
            }),
        }
    }

    /// Queues `item`, waiting while the queue is full. Unlike
    /// [`try_push`](Self::try_push) it may fill the slots above the reject mark.
    ///
    /// # Errors
    ///
    /// [`Rejection::ShuttingDown`] with the item if the queue is (or gets) closed.
    ///
    /// # Cancel safety
    ///
    /// The future owns `item` until it completes: dropped while it waits for room
    /// (by a `timeout`, a `select!`), it drops the item with itself, and the item
    /// was never queued. Nothing else is lost: its wait is unregistered, and a
    /// wake-up it had received passes to another waiting producer. (This is
    /// tokio's `mpsc::Sender::send`.) To get the item back when giving up, use
    /// [`push_timeout`](Self::push_timeout), which hands it back in the error.
    pub async fn push(&self, item: T) -> Result<(), PushError<T>> {
        self.push_until(item, None).await
    }

    /// [`push`](Self::push), giving up after `timeout` (tokio's timer).
    ///
    /// # Errors
    ///
    /// [`Rejection::TimedOut`] or [`Rejection::ShuttingDown`], with the item.
    ///
    /// # Cancel safety
    ///
    /// As [`push`](Self::push): the future owns the item, and dropping it before
    /// it completes drops the item, never queued. Giving up at the timeout is not a
    /// cancellation: the item comes back in the [`PushError`].
    pub async fn push_timeout(&self, item: T, timeout: Duration) -> Result<(), PushError<T>> {
        // A timeout too long to represent waits without one.
        let deadline = tokio::time::Instant::now().checked_add(timeout);
        self.push_until(item, deadline.map(|d| (d, timeout))).await
    }

    async fn push_until(
        &self,
        mut item: T,
        deadline: Option<(tokio::time::Instant, Duration)>,
    ) -> Result<(), PushError<T>> {
        let s = &*self.shared;
        loop {
            match self.push_below(item, s.marks.capacity()) {
                Ok(()) => return Ok(()),
                Err(e) if e.reason == Rejection::ShuttingDown => return Err(e),
                Err(e) => item = e.item,
            }
            // Armed before registering, so a wake-up sent in between is kept.
            let notified = s.not_full.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // Unregisters when dropped: after the wait, or with this future.
            let seen = s.state.register(Side::Push);
            let full = seen.len >= s.marks.capacity() && !seen.closed;
            let timed_out = match (full, seen.counted, deadline) {
                (false, _, _) => false,
                (true, false, _) => {
                    // Saturated waiter count: poll instead of sleeping.
                    crate::block::yield_now().await;
                    deadline.is_some_and(|(at, _)| tokio::time::Instant::now() >= at)
                }
                (true, true, None) => {
                    notified.await;
                    false
                }
                (true, true, Some((at, _))) => tokio::time::timeout_at(at, notified).await.is_err(),
            };
            drop(seen);
            if timed_out {
                // Relaxed: a statistic.
                s.rejected.fetch_add(1, Ordering::Relaxed);
                s.metrics.rejected.increment(1);
                let after = deadline.map_or(Duration::ZERO, |(_, d)| d);
                return Err(PushError {
                    item,
                    reason: Rejection::TimedOut { after },
                });
            }
        }
    }

    /// Removes the oldest item, if any; never waits.
    #[inline]
    pub fn try_pop(&self) -> Option<T> {
        let s = &*self.shared;
        let item = s.items.pop()?;
        s.metrics.depth.decrement(1.0);
        let (before, wake) = s.state.release();
        s.crossed_down(before);
        if wake {
            s.not_full.notify_one();
        }
        Some(item)
    }

    /// Removes the oldest item, waiting while the queue is empty. `None` once the
    /// queue is closed and drained.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: an item is taken only in the poll that returns it, so a pop
    /// dropped while it waits has taken nothing, and the item stays queued for
    /// the next consumer. Its wait is unregistered, and a wake-up it had received
    /// passes to another waiting consumer.
    pub async fn pop(&self) -> Option<T> {
        let s = &*self.shared;
        loop {
            if let Some(item) = self.try_pop() {
                return Some(item);
            }
            // Armed before registering, so a wake-up sent in between is kept.
            let notified = s.not_empty.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // Unregisters when dropped: after the wait, or with this future.
            let seen = s.state.register(Side::Pop);
            let (len, closed) = (seen.len, seen.closed);
            if len == 0 && !closed {
                if seen.counted {
                    notified.await;
                } else {
                    // Saturated waiter count: poll instead of sleeping.
                    crate::block::yield_now().await;
                }
            }
            drop(seen);
            if len == 0 && closed {
                // Re-check: an item pushed just before the close is still ours.
                return self.try_pop();
            }
            if len > 0 {
                // An item is being inserted (or another consumer is finishing a
                // pop): let it complete.
                crate::block::yield_now().await;
            }
        }
    }

    /// [`pop`](Self::pop), giving up after `timeout` (tokio's timer): `None` on
    /// timeout as well as when closed and drained.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`pop`](Self::pop): timing out and being dropped both leave
    /// every item queued and no wait registered.
    pub async fn pop_timeout(&self, timeout: Duration) -> Option<T> {
        tokio::time::timeout(timeout, self.pop())
            .await
            .ok()
            .flatten()
    }

    /// [`pop`](Self::pop) for threads without a runtime: blocks until an item
    /// arrives or the queue is closed and drained.
    ///
    /// # Panics
    ///
    /// On a thread that drives a tokio runtime's tasks (an async task, `block_on`),
    /// whether or not an item is there, with tokio's message ("Cannot block the
    /// current thread from within a runtime..."), as tokio's
    /// `Receiver::blocking_recv`: there it would stall the runtime's thread, or
    /// deadlock a current-thread runtime. Use [`pop`](Self::pop) in async code;
    /// on `spawn_blocking`'s threads this form works.
    #[track_caller]
    pub fn pop_blocking(&self) -> Option<T> {
        block_on(self.pop(), None).flatten()
    }

    /// [`push`](Self::push) for threads without a runtime: blocks while full.
    ///
    /// # Errors
    ///
    /// [`Rejection::ShuttingDown`] with the item if the queue is closed.
    ///
    /// # Panics
    ///
    /// On a runtime's thread, as [`pop_blocking`](Self::pop_blocking).
    #[track_caller]
    pub fn push_blocking(&self, item: T) -> Result<(), PushError<T>> {
        block_on(self.push(item), None).expect("no deadline, so it completes")
    }

    /// Closes the queue: pushes are refused with [`Rejection::ShuttingDown`],
    /// waiting producers get their items back, and consumers drain what is queued,
    /// then get `None`.
    pub fn close(&self) {
        let s = &*self.shared;
        // Waiters that registered before the close are woken below; later ones see
        // the closed bit in the word they register with.
        if s.state.close() {
            tracing::debug!(
                queue.capacity = s.marks.capacity(),
                queue.len = self.len(),
                "queue closed"
            );
        }
        s.not_empty.notify_waiters();
        s.not_full.notify_waiters();
    }
}

impl<T> Shared<T> {
    fn level_at(&self, len: usize) -> PressureLevel {
        self.marks.level(len)
    }

    /// After a push took the length to `len`: reports each mark reached while it
    /// was clear, once.
    #[inline]
    fn crossed_up(&self, len: usize) {
        if len < self.marks.warn_slots() {
            return;
        }
        if raise(&self.latches, ELEVATED) {
            // Relaxed: a statistic.
            self.elevated_crossings.fetch_add(1, Ordering::Relaxed);
            self.metrics.warn_up.increment(1);
            tracing::warn!(
                queue.len = len,
                queue.capacity = self.marks.capacity(),
                queue.warn_at = self.marks.warn_slots(),
                "queue pressure elevated"
            );
        }
        if len >= self.marks.reject_slots() && raise(&self.latches, CRITICAL) {
            // Relaxed: a statistic.
            self.critical_crossings.fetch_add(1, Ordering::Relaxed);
            self.metrics.reject_up.increment(1);
            tracing::warn!(
                queue.len = len,
                queue.capacity = self.marks.capacity(),
                queue.reject_at = self.marks.reject_slots(),
                "queue pressure critical: rejecting new items"
            );
        }
    }

    /// After a pop took the length down from `before`: reports each mark the
    /// length has cleared (fallen below by the hysteresis margin), once.
    ///
    /// Only pops that end in the band `[watch_from, clear_critical)` look at the
    /// latches; every other pop costs two integer compares. A latch can only clear
    /// below its clear point, and the length falls one pop at a time, so every
    /// descent from a mark to below its clear point ends a pop in the band, at
    /// the clear point itself or within the margin under the warn mark's.
    #[inline]
    fn crossed_down(&self, before: usize) {
        let len = before - 1;
        if len < self.watch_from || len >= self.clear_critical {
            return;
        }
        if clear(&self.latches, CRITICAL) {
            self.metrics.reject_down.increment(1);
            tracing::info!(
                queue.len = len,
                queue.capacity = self.marks.capacity(),
                "queue pressure below the reject mark"
            );
        }
        if len < self.clear_elevated && clear(&self.latches, ELEVATED) {
            self.metrics.warn_down.increment(1);
            tracing::debug!(
                queue.len = len,
                queue.capacity = self.marks.capacity(),
                "queue pressure normal"
            );
        }
    }
}

/// The warn-mark latch bit in `Shared::latches`.
const ELEVATED: u8 = 1;
/// The reject-mark latch bit in `Shared::latches`.
const CRITICAL: u8 = 2;

/// Sets the latch `bit`; `true` if this call set it (and so reports the crossing).
/// A load first, so that pushes above a mark that is already raised only read.
#[inline]
fn raise(latches: &AtomicU8, bit: u8) -> bool {
    // Relaxed: the latch only picks which call reports a crossing; it publishes
    // no data, and the read-modify-write alone decides the winner.
    latches.load(Ordering::Relaxed) & bit == 0
        && latches.fetch_or(bit, Ordering::Relaxed) & bit == 0
}

/// Clears the latch `bit`; `true` if this call cleared it.
#[inline]
fn clear(latches: &AtomicU8, bit: u8) -> bool {
    // Relaxed: as in `raise`.
    latches.load(Ordering::Relaxed) & bit != 0
        && latches.fetch_and(!bit, Ordering::Relaxed) & bit != 0
}

impl<T> Clone for BoundedQueue<T> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<T> fmt::Debug for BoundedQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoundedQueue")
            .field("capacity", &self.shared.marks.capacity())
            .field("len", &self.len())
            .field("level", &self.pressure())
            .finish_non_exhaustive()
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    //! Models of the real queue: [`BoundedQueue`] itself, its [`SlotState`] word,
    //! tokio's `Notify` and the ring, driven from loom threads by
    //! `loom::future::block_on`, whose waker is loom's. A waiter that misses its
    //! wake-up stays blocked, which loom reports as a deadlock; one left
    //! registered shows in the waiter counts.
    //!
    //! tokio's `Notify` and crossbeam's ring use `std` atomics, which loom does not
    //! interleave inside: each of their calls runs as one step, while every step on
    //! the `SlotState` word, and the order of those steps against the `Notify`
    //! calls, is explored.

    use super::*;
    use heijunka_core::cancel::Polled;
    use heijunka_core::sync::thread;

    fn waiters<T>(q: &BoundedQueue<T>) -> (usize, usize) {
        let s = q.stats();
        (s.waiting_consumers, s.waiting_producers)
    }

    /// A consumer sleeps on an empty queue beside a pop that registered and is
    /// then cancelled (its future dropped), while a producer pushes one item: the
    /// consumer gets it whether the producer's wake-up went to it or to the
    /// cancelled pop, and no waiter is left registered.
    #[test]
    fn a_cancelled_pop_neither_swallows_the_wakeup_nor_stays_registered() {
        loom::model(|| {
            let q = BoundedQueue::<u32>::new(2).unwrap();
            let mut cancelled = Polled::new({
                let q = q.clone();
                async move { q.pop().await }
            });
            assert!(!cancelled.poll(), "empty: it registers and sleeps");
            let consumer = {
                let q = q.clone();
                thread::spawn(move || loom::future::block_on(q.pop()))
            };
            let producer = {
                let q = q.clone();
                thread::spawn(move || q.try_push(7).is_ok())
            };
            drop(cancelled);
            assert!(producer.join().unwrap());
            assert_eq!(consumer.join().unwrap(), Some(7));
            assert_eq!(waiters(&q), (0, 0), "a waiter was left registered");
        });
    }

    /// The same on the producer side: a producer sleeps on a full queue beside a
    /// cancelled push, while a consumer pops; the producer gets the room, and the
    /// cancelled push's item is dropped, never queued.
    #[test]
    fn a_cancelled_push_neither_swallows_the_wakeup_nor_stays_registered() {
        loom::model(|| {
            let q = BoundedQueue::<u32>::new(1).unwrap();
            q.try_push(1).unwrap();
            let mut cancelled = Polled::new({
                let q = q.clone();
                async move { q.push(2).await }
            });
            assert!(!cancelled.poll(), "full: it registers and sleeps");
            let producer = {
                let q = q.clone();
                thread::spawn(move || loom::future::block_on(q.push(3)).is_ok())
            };
            let consumer = {
                let q = q.clone();
                thread::spawn(move || q.try_pop())
            };
            drop(cancelled);
            assert_eq!(consumer.join().unwrap(), Some(1));
            assert!(producer.join().unwrap());
            assert_eq!(q.try_pop(), Some(3), "only the live producer's item");
            assert_eq!(waiters(&q), (0, 0), "a waiter was left registered");
        });
    }

    /// A close races a sleeping consumer and a producer: the consumer gets the
    /// item if the push came before the close, `None` otherwise, and is not left
    /// asleep either way.
    #[test]
    fn close_wakes_a_sleeping_consumer_and_keeps_what_was_queued() {
        loom::model(|| {
            let q = BoundedQueue::<u32>::new(1).unwrap();
            let consumer = {
                let q = q.clone();
                thread::spawn(move || loom::future::block_on(q.pop()))
            };
            let producer = {
                let q = q.clone();
                thread::spawn(move || q.try_push(5).is_ok())
            };
            q.close();
            let pushed = producer.join().unwrap();
            assert_eq!(consumer.join().unwrap(), pushed.then_some(5));
            assert!(q.is_empty());
            assert_eq!(waiters(&q), (0, 0));
        });
    }
}
