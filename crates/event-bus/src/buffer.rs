//! A subscriber's buffer: a bounded queue that one consumer drains and that
//! publishers fill while holding their topic's lock.
//!
//! The queue is a [`heijunka_core::spsc`] ring: the producing end lives in the
//! topic's subscriber list, used only under the topic's lock; the consuming end
//! lives in the [`Subscription`](crate::Subscription). The per-event path takes
//! no lock of its own and does no read-modify-write: a push is a slot write and
//! a counter store, a pop a slot read and a counter store, and each side reads
//! the other's counter only when its cached view says full (publisher) or empty
//! (consumer). Every field the other side reads often sits on its own cache line.
//! Drop-oldest buffers share their consuming end behind a mutex, since a
//! publisher must take out the oldest event to make room. That is what lets one publish reach 16 subscribers at a broadcast
//! channel's cost (see `docs/benchmarks.md`).
//!
//! # The two sleep/wake handshakes
//!
//! 1. **The consumer sleeps on an empty buffer.** Publishers push and read
//!    `parked` while holding the topic's lock; the consumer sets `parked` and
//!    re-checks `pushed` while holding it too (only on its way to sleep). The lock
//!    orders the two: either the re-check sees the push or the publisher sees
//!    `parked` and wakes the consumer. The publish path pays no fence for it.
//!    Before it takes the lock, a consumer that found the buffer empty checks
//!    the ring three more times, after 1, 2 and 4 spin hints: a consumer a
//!    little faster than its publisher would otherwise take the publishers'
//!    lock after nearly every event, and `perf` showed that lock's cache line
//!    bouncing between them taking most of a one-subscriber publish. The checks
//!    only read the ring's counters. A lock-free version of this handshake (a
//!    `SeqCst` fence on each side, no lock) was measured slower: nothing held a
//!    consumer back, so it drained its buffer and slept after nearly every
//!    event (about 7 sleeps per event across 16 subscribers, against 0.06 with
//!    the lock), and each wake-up cost the publisher more than the lock did.
//!    Taking the lock with `try_lock` and yielding to the runtime when a
//!    publisher holds it (instead of waiting on the lock) was also measured
//!    slower: 1.67 µs against 1.35 µs per event at 16 subscribers (medians of
//!    five alternating runs), the re-polls costing more than the short waits
//!    they avoid.
//! 2. **A publisher sleeps on a full buffer** (policies `Block` and `Timeout`),
//!    without the lock. Publisher: enable a `Notified`, bump `wanted`, `SeqCst`
//!    fence, re-check `received`; sleep only if still full. Consumer: at a
//!    checkpoint (every `batch` pops, `batch` being half the capacity but at
//!    most `MAX_ROOM_BATCH`, and before it sleeps) bump `received`, `SeqCst`
//!    fence, read `wanted`, and notify if it is set. By the fences, the first
//!    checkpoint after the publisher's re-check sees `wanted`; between
//!    checkpoints the consumer reads `wanted` without a fence and may notify
//!    earlier (once per batch), when `batch` slots are free. A publisher faster
//!    than its consumer is so woken about once per batch, not once per event.
//!    The loom models in this file check both handshakes.
//!
//! # Invariants
//!
//! Publishers are serialised by the topic's lock, which holds the producing
//! end: the ring's push counter, `displaced` and `level` have one writer at a
//! time. What the consumer received is the ring's pop count, except for
//! drop-oldest buffers, whose consumer counts its own pops (publishers pop
//! there too) under the same mutex as the pops.

use std::pin::pin;
use std::sync::PoisonError;
use std::task::{Context, Poll, Waker};

use heijunka_backpressure::Watermarks;
use heijunka_core::spsc::{self, Consumer, Counts, Producer};
use heijunka_core::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering, fence};
use heijunka_core::sync::{CachePadded, Mutex};
use heijunka_core::{ConfigError, PressureLevel};
use tokio::sync::Notify;

/// State written only by the publisher holding the topic's lock.
#[derive(Default)]
struct ProducerSide {
    /// Events a drop-oldest push took out to make room.
    displaced: AtomicU64,
    /// The pressure level last observed, for crossing events.
    level: AtomicU8,
    elevated_crossings: AtomicU64,
    critical_crossings: AtomicU64,
}

/// The producing end of a buffer: kept in the topic's subscriber list and used
/// only under the topic's lock.
pub(crate) struct Intake<T> {
    producer: Producer<T>,
}

/// The consuming end of a buffer, kept by the subscription. Drop-oldest buffers
/// keep it in the buffer instead, behind a mutex.
pub(crate) struct Outlet<T> {
    consumer: Option<Consumer<T>>,
    /// The pop count of the last early room notification: at most one per half
    /// capacity of pops.
    early: u64,
    /// Pops left until the next checkpoint: the pop count reaches a multiple
    /// of `half` (a countdown spares a division per pop).
    to_checkpoint: usize,
}

pub(crate) struct Buffer<T> {
    counts: Counts<T>,
    /// Drop-oldest only: the consuming end, shared with publishers that make
    /// room, and the pops the consumer made (written under that mutex).
    lossy: Option<Mutex<Consumer<T>>>,
    lossy_received: AtomicU64,
    /// Capacity, warn and reject marks, in slots.
    marks: Watermarks,
    /// Half the capacity, between 1 and `MAX_ROOM_BATCH`: the wake-up batch for
    /// waiting publishers.
    half: usize,
    /// Whether publishers may wait for room (policies `Block` and `Timeout`);
    /// if not, the consumer skips the room handshake.
    waiting_publishers: bool,
    producer: CachePadded<ProducerSide>,
    /// The consumer sleeps and wants a wake on the next push: set by the
    /// consumer and cleared by a publisher, both under the topic's lock (the
    /// consumer may also clear it without the lock once it runs again). Read by
    /// every publish, written only around sleeps: on its own line.
    parked: CachePadded<AtomicBool>,
    /// Publishers waiting for room; written only on that slow path.
    wanted: CachePadded<AtomicUsize>,
    closed: AtomicBool,
    waker: Mutex<Option<Waker>>,
    room: Notify,
}

/// Takes a waiting publisher out of `wanted` when its wait ends or is dropped.
struct Unregister<'a>(&'a AtomicUsize);

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        // Relaxed: a late decrement only costs the consumer a needless notify.
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The most receives a publisher waiting for room waits for: the wake-up batch
/// is half the capacity, at most this.
pub(crate) const MAX_ROOM_BATCH: usize = 512;

/// Checks for a push in flight before a consumer goes to sleep (see
/// `Buffer::spin_for_items`).
const SPIN_ROUNDS: u32 = 3;

/// How a buffer treats a full ring.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Publishers may wait for room (`Block`, `Timeout`).
    Waiting,
    /// Publishers skip it (`Reject`).
    Skipping,
    /// Publishers take out the oldest event (`DropOldest`).
    Lossy,
}

impl<T> Buffer<T> {
    /// A buffer with the given capacity and marks, with its two ends.
    pub(crate) fn new(
        marks: Watermarks,
        kind: Kind,
    ) -> Result<(Self, Intake<T>, Outlet<T>), ConfigError> {
        let capacity = marks.capacity();
        let (producer, consumer) = spsc::ring(capacity)?;
        let counts = producer.counts();
        let (lossy, consumer) = if kind == Kind::Lossy {
            (Some(Mutex::new(consumer)), None)
        } else {
            (None, Some(consumer))
        };
        let buffer = Self {
            counts,
            lossy,
            lossy_received: AtomicU64::new(0),
            marks,
            half: (capacity / 2).clamp(1, MAX_ROOM_BATCH),
            waiting_publishers: kind == Kind::Waiting,
            producer: CachePadded::new(ProducerSide::default()),
            parked: CachePadded::new(AtomicBool::new(false)),
            wanted: CachePadded::new(AtomicUsize::new(0)),
            closed: AtomicBool::new(false),
            waker: Mutex::new(None),
            room: Notify::new(),
        };
        let outlet = Outlet {
            consumer,
            early: 0,
            to_checkpoint: buffer.half,
        };
        Ok((buffer, Intake { producer }, outlet))
    }

    pub(crate) fn capacity(&self) -> usize {
        self.marks.capacity()
    }

    pub(crate) fn reject_slots(&self) -> usize {
        self.marks.reject_slots()
    }

    // ---- publisher side: with the topic's lock held (it owns the intake) ----

    /// Puts `item` in if fewer than `limit` events are buffered; hands it back
    /// otherwise.
    #[inline]
    pub(crate) fn try_push(&self, intake: &mut Intake<T>, item: T, limit: usize) -> Result<(), T> {
        let p = &mut intake.producer;
        let mut len = p.len_bound();
        if len >= limit {
            len = p.len();
            if len >= limit {
                return Err(item);
            }
        }
        p.push(item)?;
        self.track_level(p, len + 1);
        Ok(())
    }

    /// Puts `item` in, taking out the oldest event if the buffer is full (the
    /// drop-oldest policy); returns the displaced event for the caller to drop.
    #[inline]
    pub(crate) fn force_push(&self, intake: &mut Intake<T>, item: T) -> Option<T> {
        let p = &mut intake.producer;
        let mut displaced = None;
        let mut item = item;
        loop {
            match p.push(item) {
                Ok(()) => break,
                Err(back) => {
                    item = back;
                    let Some(lossy) = &self.lossy else {
                        // Not a drop-oldest buffer: nothing may be taken out.
                        return Some(item);
                    };
                    let old = lossy.lock().unwrap_or_else(PoisonError::into_inner).pop();
                    if let Some(old) = old {
                        let d = &self.producer.displaced;
                        // Relaxed: written only under the topic's lock.
                        d.store(d.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
                        // At most one per push: the ring now has room.
                        if let Some(earlier) = displaced.replace(old) {
                            drop(earlier);
                        }
                    }
                }
            }
        }
        let len = p.len_bound();
        self.track_level(p, len);
        displaced
    }

    /// Records level crossings after a push, given an upper bound of the length.
    #[inline]
    fn track_level(&self, p: &mut Producer<T>, len_bound: usize) {
        let side = &*self.producer;
        // Relaxed: written only under the topic's lock.
        let old = PressureLevel::from_u8(side.level.load(Ordering::Relaxed))
            .expect("only `as_u8` levels are stored");
        let mut level = self.marks.level(len_bound);
        if level == old {
            return;
        }
        if level > old {
            // The bound may overstate: confirm with the consumer's count.
            level = self.marks.level(p.len());
            if level == old {
                return;
            }
        }
        side.level.store(level.as_u8(), Ordering::Relaxed);
        let (elevated, critical) = (PressureLevel::Elevated, PressureLevel::Critical);
        // Relaxed: statistics, written under the topic's lock.
        if old < elevated && level >= elevated {
            side.elevated_crossings.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                buffer.capacity = self.capacity(),
                "subscriber buffer pressure elevated"
            );
        }
        if old < critical && level == critical {
            side.critical_crossings.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                buffer.capacity = self.capacity(),
                "subscriber buffer pressure critical: publishes skip or wait"
            );
        }
        if old == critical && level < critical {
            tracing::info!(
                buffer.capacity = self.capacity(),
                "subscriber buffer below its reject mark"
            );
        }
        if level == PressureLevel::Normal {
            tracing::debug!(
                buffer.capacity = self.capacity(),
                "subscriber buffer pressure normal"
            );
        }
    }

    /// Wakes the consumer if it sleeps (handshake 1). The caller holds the
    /// topic's lock.
    #[inline]
    pub(crate) fn wake_consumer(&self) {
        // Relaxed: the topic's lock orders this against the consumer's park.
        if self.parked.load(Ordering::Relaxed) {
            self.parked.store(false, Ordering::Relaxed);
            self.take_and_wake();
        }
    }

    fn take_and_wake(&self) {
        let waker = self
            .waker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Waits until the buffer may have room for a publish, it closes, or
    /// `deadline` passes. Returns `false` only on the deadline. Called without
    /// the topic's lock; the caller then takes it and tries to push again.
    pub(crate) async fn wait_room(&self, deadline: Option<tokio::time::Instant>) -> bool {
        let mut notified = pin!(self.room.notified());
        notified.as_mut().enable();
        let ready = self.want_room();
        // Unregisters even if this future is dropped mid-wait.
        let _registered = Unregister(&self.wanted);
        if ready {
            return true;
        }
        match deadline {
            None => {
                notified.await;
                true
            }
            Some(at) => tokio::time::timeout_at(at, notified).await.is_ok(),
        }
    }

    /// Registers a publisher waiting for room (handshake 2), after it enabled
    /// its `Notified`; returns whether it need not sleep after all (room, or
    /// closed). The caller decrements `wanted` when done waiting.
    fn want_room(&self) -> bool {
        // Relaxed + fence: handshake 2.
        self.wanted.fetch_add(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        self.is_closed_relaxed() || self.counts.len() < self.capacity()
    }

    // ---- consumer side: one consumer at a time ----

    /// Takes the oldest event, if any; never waits.
    #[inline]
    pub(crate) fn pop(&self, outlet: &mut Outlet<T>) -> Option<T> {
        let Outlet {
            consumer,
            early,
            to_checkpoint,
        } = outlet;
        let Some(c) = consumer else {
            let mut c = self
                .lossy
                .as_ref()?
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let item = c.pop()?;
            // Relaxed: written only under the mutex held here.
            let r = &self.lossy_received;
            r.store(r.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
            return Some(item);
        };
        let item = c.pop()?;
        if self.waiting_publishers {
            let r = c.popped();
            *to_checkpoint -= 1;
            let checkpoint = *to_checkpoint == 0;
            if checkpoint {
                *to_checkpoint = self.half;
                // Handshake 2: a checkpoint sees every publisher that found the
                // buffer full before it.
                fence(Ordering::SeqCst);
            }
            // Relaxed: off a checkpoint this is only an early look, taken at
            // most once per batch of pops.
            let wanted = self.wanted.load(Ordering::Relaxed) > 0;
            if wanted && (checkpoint || (r >= *early + self.half as u64 && self.half_free())) {
                *early = r;
                self.room.notify_waiters();
            }
        }
        Some(item)
    }

    fn half_free(&self) -> bool {
        self.counts.len() + self.half <= self.capacity()
    }

    /// The next event, registering `cx`'s waker while the buffer is empty;
    /// `None` once closed and drained. `lock` takes the topic's lock, which the
    /// consumer holds while it decides to sleep (handshake 1).
    pub(crate) fn poll_pop<G>(
        &self,
        outlet: &mut Outlet<T>,
        cx: &mut Context<'_>,
        lock: impl Fn() -> G,
    ) -> Poll<Option<T>> {
        loop {
            if let Some(item) = self.pop(outlet) {
                // Relaxed: running again; a publisher's wake is no longer needed.
                if self.parked.load(Ordering::Relaxed) {
                    self.parked.store(false, Ordering::Relaxed);
                }
                return Poll::Ready(Some(item));
            }
            // Acquire: pairs with the Release in `close`; pushes made before the
            // close (under the topic's lock) are visible to the last pop.
            if self.closed.load(Ordering::Acquire) {
                return Poll::Ready(self.pop(outlet));
            }
            if self.spin_for_items(outlet) {
                continue;
            }
            {
                let mut slot = self.waker.lock().unwrap_or_else(PoisonError::into_inner);
                match &*slot {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => *slot = Some(cx.waker().clone()),
                }
            }
            let guard = lock();
            // Under the topic's lock no push or close is in flight: the counts
            // are exact.
            if self.has_items(outlet) || self.is_closed_relaxed() {
                drop(guard);
                continue;
            }
            // Relaxed: the lock orders it (handshake 1).
            self.parked.store(true, Ordering::Relaxed);
            drop(guard);
            if self.waiting_publishers {
                // Handshake 2's last checkpoint: the buffer is empty.
                fence(Ordering::SeqCst);
                if self.wanted.load(Ordering::Relaxed) > 0 {
                    self.room.notify_waiters();
                }
            }
            return Poll::Pending;
        }
    }

    /// Spins a moment for a push in flight before the consumer takes the
    /// topic's lock to sleep: `SPIN_ROUNDS` checks of the push counter, with
    /// 1, 2 and 4 spin hints before them (see handshake 1 in the module docs).
    fn spin_for_items(&self, outlet: &mut Outlet<T>) -> bool {
        if heijunka_core::sync::IS_LOOM {
            // Loom explores the lock path; a spin adds only states.
            return false;
        }
        for round in 0..SPIN_ROUNDS {
            for _ in 0..1_u32 << round {
                std::hint::spin_loop();
            }
            if self.has_items(outlet) {
                return true;
            }
        }
        false
    }

    /// Whether an event is buffered now.
    fn has_items(&self, outlet: &mut Outlet<T>) -> bool {
        match &mut outlet.consumer {
            Some(c) => c.has_items(),
            None => !self.counts.is_empty(),
        }
    }

    // ---- either side ----

    /// Events buffered now (a snapshot).
    pub(crate) fn len(&self) -> usize {
        self.counts.len()
    }

    pub(crate) fn pressure(&self) -> PressureLevel {
        self.marks.level(self.len())
    }

    /// Events put in.
    pub(crate) fn pushed(&self) -> u64 {
        self.counts.pushed()
    }

    /// Events drop-oldest took out.
    pub(crate) fn displaced(&self) -> u64 {
        // Relaxed: a statistic.
        self.producer.displaced.load(Ordering::Relaxed)
    }

    /// Events the consumer took out.
    pub(crate) fn received(&self) -> u64 {
        if self.lossy.is_some() {
            // Relaxed: a statistic.
            self.lossy_received.load(Ordering::Relaxed)
        } else {
            self.counts.popped()
        }
    }

    pub(crate) fn crossings(&self) -> (u64, u64) {
        // Relaxed: statistics.
        (
            self.producer.elevated_crossings.load(Ordering::Relaxed),
            self.producer.critical_crossings.load(Ordering::Relaxed),
        )
    }

    /// Closes the buffer: the consumer drains it, then gets `None`; waiting
    /// publishers wake. Publishers check [`is_closed`](Self::is_closed) under the
    /// topic's lock before pushing, so call this with the lock held to stop
    /// pushes at once.
    pub(crate) fn close(&self) {
        // Release: pairs with the consumer's Acquire; SeqCst would add nothing:
        // the waker mutex and the Notify order the wake-ups.
        self.closed.store(true, Ordering::Release);
        self.take_and_wake();
        self.room.notify_waiters();
    }

    pub(crate) fn is_closed(&self) -> bool {
        // Acquire: pairs with the Release in `close`.
        self.closed.load(Ordering::Acquire)
    }

    fn is_closed_relaxed(&self) -> bool {
        // Relaxed: read after a SeqCst fence, or re-checked later.
        self.closed.load(Ordering::Relaxed)
    }
}

/// Marks that warn and reject only when full (tests).
#[cfg(test)]
fn full_marks(capacity: usize) -> Watermarks {
    Watermarks::new(capacity, 1.0, 1.0).unwrap()
}

#[cfg(all(test, loom))]
mod loom_tests {
    use std::future::{Future, poll_fn};

    use heijunka_core::sync::Arc;

    use super::*;

    /// Handshake 1: a consumer that finds the buffer empty and sleeps is woken
    /// by a push made under the topic's lock, whichever comes first.
    #[test]
    fn a_sleeping_consumer_is_woken_by_a_push() {
        loom::model(|| {
            let (buf, mut intake, mut outlet) =
                Buffer::<u32>::new(full_marks(2), Kind::Skipping).unwrap();
            let buf = Arc::new(buf);
            let lock = Arc::new(Mutex::new(()));
            let (b, l) = (Arc::clone(&buf), Arc::clone(&lock));
            let producer = loom::thread::spawn(move || {
                let _topic = l.lock().unwrap();
                b.try_push(&mut intake, 7, 2).unwrap();
                b.wake_consumer();
            });
            let got = loom::future::block_on(poll_fn(|cx| {
                buf.poll_pop(&mut outlet, cx, || lock.lock().unwrap())
            }));
            assert_eq!(got, Some(7));
            producer.join().unwrap();
        });
    }

    /// Closing (under the topic's lock) wakes a sleeping consumer, which then
    /// ends with `None`.
    #[test]
    fn a_sleeping_consumer_is_woken_by_close() {
        loom::model(|| {
            let (buf, _intake, mut outlet) =
                Buffer::<u32>::new(full_marks(2), Kind::Waiting).unwrap();
            let buf = Arc::new(buf);
            let lock = Arc::new(Mutex::new(()));
            let (b, l) = (Arc::clone(&buf), Arc::clone(&lock));
            let closer = loom::thread::spawn(move || {
                let _topic = l.lock().unwrap();
                b.close();
            });
            let got = loom::future::block_on(poll_fn(|cx| {
                buf.poll_pop(&mut outlet, cx, || lock.lock().unwrap())
            }));
            assert_eq!(got, None);
            closer.join().unwrap();
        });
    }

    /// Handshake 2: a publisher that registers for room on a full buffer and
    /// decides to sleep is notified by the consumer's next checkpoint (here the
    /// second pop of a four-slot buffer). Without the fences this fails.
    #[test]
    fn a_publisher_waiting_for_room_is_notified_by_a_checkpoint() {
        loom::model(|| {
            let (buf, mut intake, mut outlet) =
                Buffer::<u32>::new(full_marks(4), Kind::Waiting).unwrap();
            for i in 0..4 {
                buf.try_push(&mut intake, i, 4).unwrap();
            }
            let buf = Arc::new(buf);
            let b = Arc::clone(&buf);
            let consumer = loom::thread::spawn(move || {
                assert_eq!(b.pop(&mut outlet), Some(0));
                assert_eq!(b.pop(&mut outlet), Some(1));
            });
            let mut notified = pin!(buf.room.notified());
            notified.as_mut().enable();
            let ready = buf.want_room();
            consumer.join().unwrap();
            if !ready {
                let woken = notified
                    .as_mut()
                    .poll(&mut Context::from_waker(Waker::noop()))
                    .is_ready();
                assert!(woken, "a publisher slept on a buffer with room, unnotified");
            }
        });
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::future::Future;

    use super::*;

    #[test]
    fn a_dropped_wait_for_room_unregisters() {
        let (buf, mut intake, _outlet) = Buffer::<u32>::new(full_marks(2), Kind::Waiting).unwrap();
        buf.try_push(&mut intake, 1, 2).unwrap();
        buf.try_push(&mut intake, 2, 2).unwrap();
        let mut wait = Box::pin(buf.wait_room(None));
        let pending = wait
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
            .is_pending();
        assert!(pending, "full: it waits");
        assert_eq!(buf.wanted.load(Ordering::Relaxed), 1);
        drop(wait);
        assert_eq!(buf.wanted.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn the_wake_up_batch_is_half_the_capacity_at_most_512() {
        let half = |cap| {
            Buffer::<u8>::new(full_marks(cap), Kind::Waiting)
                .unwrap()
                .0
                .half
        };
        assert_eq!((half(1), half(4), half(1000), half(4096)), (1, 2, 500, 512));
    }
}
