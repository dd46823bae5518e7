//! [`SlotState`], the atomic protocol behind [`BoundedQueue`](crate::BoundedQueue)
//! and the worker pool's queue: one word holds
//! the reserved-slot count, the number of sleeping consumers, the number of sleeping
//! producers, and the closed bit.
//!
//! Because everything a wake-up decision needs lives in one word, every decision is
//! made from the value a read-modify-write returned, and all such operations on the
//! word are totally ordered. A consumer registers as a waiter with an RMW that also
//! returns the slot count: if it saw zero slots, any producer that reserves a slot
//! afterwards gets back a word that counts the consumer, and wakes it. Producers
//! waiting for space and consumers releasing slots work the same way, and so does
//! closing. No fence and no second load on the hot path. Proven by the loom models
//! below.
//!
//! Registering returns a [`Registration`] guard that unregisters when dropped, so a
//! waiter that is cancelled while it sleeps (its future dropped by a `timeout` or a
//! `select!`) leaves no count behind: a count left behind would make every later
//! step on that side wake a sleeper that is not there, and would add up until the
//! side saturates and waiters spin.
//!
//! Waiter counts have 15 bits per side. A waiter that finds its count saturated
//! (32,767 already asleep on one queue) does not register and yields instead of
//! sleeping, so it is never lost, only busier.

use heijunka_core::sync::CachePadded;
use heijunka_core::sync::atomic::{AtomicU64, Ordering};

const LEN_MASK: u64 = (1 << 32) - 1;
const WAITER_BITS: u32 = 15;
const WAITER_MAX: u64 = (1 << WAITER_BITS) - 1;
const POP_SHIFT: u32 = 32;
const PUSH_SHIFT: u32 = POP_SHIFT + WAITER_BITS;
const CLOSED: u64 = 1 << 63;

/// The largest capacity a [`SlotState`] can count.
pub const MAX_CAPACITY: usize = LEN_MASK as usize;

#[inline]
fn len_of(w: u64) -> usize {
    (w & LEN_MASK) as usize
}

#[inline]
fn pop_waiters(w: u64) -> u64 {
    (w >> POP_SHIFT) & WAITER_MAX
}

#[inline]
fn push_waiters(w: u64) -> u64 {
    (w >> PUSH_SHIFT) & WAITER_MAX
}

/// The outcome of [`SlotState::reserve`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reserve {
    /// A slot is ours.
    Reserved {
        /// Slots taken before this one.
        before: usize,
        /// Whether a consumer sleeps (registered on [`Side::Pop`]) and must be woken.
        wake: bool,
    },
    /// `limit` slots are taken.
    Full,
    /// The queue is closed.
    Closed,
}

/// Which side a waiter is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Waiting for an item (woken by [`SlotState::reserve`]).
    Pop,
    /// Waiting for a free slot (woken by [`SlotState::release`]).
    Push,
}

impl Side {
    fn shift(self) -> u32 {
        match self {
            Side::Pop => POP_SHIFT,
            Side::Push => PUSH_SHIFT,
        }
    }
}

/// What a waiter saw when it registered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Registered {
    /// Slots taken at that moment.
    pub len: usize,
    /// Whether the state was closed at that moment.
    pub closed: bool,
    /// Whether it was counted (and is unregistered when its [`Registration`] is
    /// dropped); `false` when its side's count was saturated.
    pub counted: bool,
}

/// A waiter registered on one side of a [`SlotState`]: what it saw when it
/// registered (through `Deref` to [`Registered`]), and its place in the count,
/// which it gives up when dropped.
///
/// Keep it alive for as long as the waiter may sleep, and drop it once the
/// waiter has woken (or given up). Because the count goes with the guard, a
/// waiter whose future is dropped mid-sleep unregisters too: no caller can
/// forget, and no cancelled waiter leaves a count that makes later producers
/// wake nobody or, once 32,767 of them pile up, makes later waiters spin.
///
/// ```
/// use heijunka_backpressure::{Side, SlotState};
///
/// let slots = SlotState::new();
/// {
///     let waiter = slots.register(Side::Pop);
///     assert!(waiter.counted && waiter.len == 0);
///     assert_eq!(slots.waiters(Side::Pop), 1);
/// } // dropped: unregistered
/// assert_eq!(slots.waiters(Side::Pop), 0);
/// ```
#[derive(Debug)]
#[must_use = "dropping a `Registration` unregisters the waiter at once"]
pub struct Registration<'a> {
    state: &'a SlotState,
    side: Side,
    seen: Registered,
}

impl Registration<'_> {
    /// What the waiter saw when it registered.
    #[inline]
    pub fn seen(&self) -> Registered {
        self.seen
    }

    /// The side it waits on.
    #[inline]
    pub fn side(&self) -> Side {
        self.side
    }
}

impl std::ops::Deref for Registration<'_> {
    type Target = Registered;

    #[inline]
    fn deref(&self) -> &Registered {
        &self.seen
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        if self.seen.counted {
            self.state.unregister(self.side);
        }
    }
}

/// A bounded slot counter with a closed bit and sleeper counts in one atomic word:
/// the building block for bounded structures whose consumers and producers sleep
/// (see the module docs above for the protocol). [`BoundedQueue`](crate::BoundedQueue)
/// is built on it; so is `heijunka-pool`'s worker queue.
///
/// The caller keeps the items and the sleeping mechanism (a `Notify`, a
/// `Condvar`); this type makes the wake-up decisions: wake a consumer when
/// [`reserve`](Self::reserve) says so, a producer when [`release`](Self::release)
/// says so, and sleep only if [`register`](Self::register) saw no slot (or no free
/// slot) and the state open. Arm the sleeping mechanism *before* registering (a
/// `Notify`'s `Notified::enable`, a lock held until the condition variable
/// waits), so a wake-up sent in between is kept.
///
/// ```
/// use heijunka_backpressure::{Reserve, Side, SlotState};
///
/// let slots = SlotState::new();
/// let waiter = slots.register(Side::Pop); // a consumer about to sleep
/// assert_eq!(waiter.len, 0);
/// // A producer takes a slot and learns it must wake the consumer.
/// assert_eq!(slots.reserve(8), Reserve::Reserved { before: 0, wake: true });
/// drop(waiter); // woken: no longer waiting
/// assert_eq!(slots.reserve(8), Reserve::Reserved { before: 1, wake: false });
/// ```
#[derive(Debug)]
pub struct SlotState {
    word: CachePadded<AtomicU64>,
}

impl SlotState {
    /// An open state with no slot taken and no sleeper.
    pub fn new() -> Self {
        Self {
            word: CachePadded::new(AtomicU64::new(0)),
        }
    }

    /// Takes a slot if the queue is open and fewer than `limit` are taken.
    #[inline]
    pub fn reserve(&self, limit: usize) -> Reserve {
        // AcqRel: the word is the whole protocol; Acquire sees the pops that freed
        // slots (and so their items' removal), Release orders this reservation
        // before the caller's insert is announced to a woken consumer.
        match self
            .word
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                (w & CLOSED == 0 && len_of(w) < limit).then_some(w + 1)
            }) {
            Ok(prev) => Reserve::Reserved {
                before: len_of(prev),
                wake: pop_waiters(prev) > 0,
            },
            Err(w) if w & CLOSED != 0 => Reserve::Closed,
            Err(_) => Reserve::Full,
        }
    }

    /// Gives a slot back after a pop. Returns the slots taken before, and whether a
    /// producer sleeps.
    #[inline]
    pub fn release(&self) -> (usize, bool) {
        self.release_many(1)
    }

    /// Gives `n` slots back at once (a consumer that took several items, or
    /// releases in batches to touch the shared word less often). `n` must not
    /// exceed the slots taken.
    #[inline]
    pub fn release_many(&self, n: usize) -> (usize, bool) {
        debug_assert!(n as u64 <= LEN_MASK);
        // AcqRel: as in `reserve`.
        let prev = self.word.fetch_sub(n as u64, Ordering::AcqRel);
        debug_assert!(len_of(prev) >= n, "released more slots than were taken");
        (len_of(prev), push_waiters(prev) > 0)
    }

    /// Registers a waiter on `side`: the returned guard reports the state it saw
    /// and unregisters the waiter when dropped.
    pub fn register(&self, side: Side) -> Registration<'_> {
        let unit = 1_u64 << side.shift();
        // AcqRel: see `reserve`.
        let r = self
            .word
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                (((w >> side.shift()) & WAITER_MAX) < WAITER_MAX).then_some(w + unit)
            });
        let (w, counted) = match r {
            Ok(prev) => (prev, true),
            Err(now) => (now, false),
        };
        Registration {
            state: self,
            side,
            seen: Registered {
                len: len_of(w),
                closed: w & CLOSED != 0,
                counted,
            },
        }
    }

    /// Removes a counted waiter; only [`Registration`]'s `Drop` calls it.
    fn unregister(&self, side: Side) {
        // Release: pairs with the Acquire of the next RMW that reads the word;
        // leaving publishes nothing, it only makes a later wake-up unnecessary.
        let prev = self
            .word
            .fetch_sub(1_u64 << side.shift(), Ordering::Release);
        debug_assert!(
            (prev >> side.shift()) & WAITER_MAX > 0,
            "unregistered a waiter that was not counted"
        );
    }

    /// Closes; `true` if this call closed it.
    pub fn close(&self) -> bool {
        // AcqRel: see `reserve`.
        self.word.fetch_or(CLOSED, Ordering::AcqRel) & CLOSED == 0
    }

    /// Slots taken now.
    #[inline]
    pub fn len(&self) -> usize {
        // Acquire: pairs with the RMWs' Release.
        len_of(self.word.load(Ordering::Acquire))
    }

    /// Whether no slot is taken now.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waiters counted on `side` now: registered and not yet unregistered (at most
    /// 32,767; a waiter that found its side saturated is not counted).
    pub fn waiters(&self, side: Side) -> usize {
        // Acquire: pairs with the RMWs' Release, like `len`.
        ((self.word.load(Ordering::Acquire) >> side.shift()) & WAITER_MAX) as usize
    }

    /// Whether [`close`](Self::close) was called.
    #[inline]
    pub fn is_closed(&self) -> bool {
        // Acquire: pairs with `close`.
        self.word.load(Ordering::Acquire) & CLOSED != 0
    }
}

impl Default for SlotState {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn fields_do_not_bleed_into_each_other() {
        let s = SlotState::new();
        assert_eq!(
            s.reserve(2),
            Reserve::Reserved {
                before: 0,
                wake: false
            }
        );
        let r = s.register(Side::Pop);
        assert_eq!((r.len, r.closed, r.counted), (1, false, true));
        assert_eq!(
            s.reserve(2),
            Reserve::Reserved {
                before: 1,
                wake: true
            }
        );
        assert_eq!(s.reserve(2), Reserve::Full);
        let w = s.register(Side::Push);
        assert!(w.counted);
        assert_eq!((s.waiters(Side::Pop), s.waiters(Side::Push)), (1, 1));
        assert_eq!(s.release(), (2, true));
        drop(w);
        drop(r);
        assert_eq!((s.waiters(Side::Pop), s.waiters(Side::Push)), (0, 0));
        assert_eq!(s.release(), (1, false));
        assert!(s.close());
        assert!(!s.close());
        assert_eq!(s.reserve(2), Reserve::Closed);
        assert!(s.register(Side::Pop).closed);
        assert_eq!(s.len(), 0);
        assert_eq!(s.waiters(Side::Pop), 0, "the temporary registration left");
    }

    #[test]
    fn a_dropped_registration_unregisters_even_in_a_cancelled_future() {
        let s = SlotState::new();
        let wait = async {
            let _waiter = s.register(Side::Pop);
            std::future::pending::<()>().await;
        };
        let mut wait = Box::pin(wait);
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        assert!(wait.as_mut().poll(&mut cx).is_pending());
        assert_eq!(s.waiters(Side::Pop), 1);
        drop(wait);
        assert_eq!(s.waiters(Side::Pop), 0);
    }

    #[test]
    #[cfg_attr(miri, ignore)] // 32,767 read-modify-writes: slow under miri
    fn saturated_waiter_counts_stay_in_their_field() {
        let s = SlotState::new();
        let waiters: Vec<_> = (0..WAITER_MAX).map(|_| s.register(Side::Pop)).collect();
        assert!(waiters.iter().all(|w| w.counted));
        let r = s.register(Side::Pop);
        assert!(!r.counted, "the count saturates instead of overflowing");
        assert_eq!(push_waiters(s.word.load(Ordering::Relaxed)), 0);
        assert!(!s.is_closed());
        drop(r);
        assert_eq!(
            s.waiters(Side::Pop),
            WAITER_MAX as usize,
            "not counted, not removed"
        );
        drop(waiters);
        assert_eq!(s.waiters(Side::Pop), 0);
        assert!(s.register(Side::Pop).counted, "room again once they leave");
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use heijunka_core::sync::atomic::AtomicBool;
    use heijunka_core::sync::{Arc, thread};

    /// A consumer about to sleep on an empty queue races a producer: either the
    /// consumer sees the slot, or the producer sees the consumer and wakes it.
    /// (`woken` stands in for tokio's `Notify` permit, which is kept even when the
    /// wake comes before the sleep.)
    #[test]
    fn no_lost_wakeup_for_consumers() {
        loom::model(|| {
            let s = Arc::new(SlotState::new());
            let woken = Arc::new(AtomicBool::new(false));
            let producer = {
                let (s, woken) = (s.clone(), woken.clone());
                thread::spawn(move || {
                    if let Reserve::Reserved { wake: true, .. } = s.reserve(4) {
                        woken.store(true, Ordering::Release);
                    }
                })
            };
            let seen = s.register(Side::Pop);
            producer.join().unwrap();
            if seen.len == 0 {
                assert!(
                    woken.load(Ordering::Acquire),
                    "consumer slept through the item"
                );
            }
            drop(seen);
        });
    }

    /// A producer about to sleep on a full queue races a consumer's release.
    #[test]
    fn no_lost_wakeup_for_producers() {
        loom::model(|| {
            let s = Arc::new(SlotState::new());
            assert!(matches!(s.reserve(1), Reserve::Reserved { .. }));
            let woken = Arc::new(AtomicBool::new(false));
            let consumer = {
                let (s, woken) = (s.clone(), woken.clone());
                thread::spawn(move || {
                    if s.release().1 {
                        woken.store(true, Ordering::Release);
                    }
                })
            };
            let seen = s.register(Side::Push);
            consumer.join().unwrap();
            if seen.len >= 1 {
                assert!(
                    woken.load(Ordering::Acquire),
                    "producer slept through the space"
                );
            }
            drop(seen);
        });
    }

    /// Two producers race for the last slot while the queue may close: at most one
    /// gets it, and none after the close.
    #[test]
    fn reservations_respect_the_limit_and_the_close() {
        loom::model(|| {
            let s = Arc::new(SlotState::new());
            assert!(matches!(s.reserve(2), Reserve::Reserved { .. }));
            let racers: Vec<_> = (0..2)
                .map(|_| {
                    let s = s.clone();
                    thread::spawn(move || s.reserve(2))
                })
                .collect();
            let closed_first = s.close();
            assert!(closed_first);
            let results: Vec<_> = racers.into_iter().map(|r| r.join().unwrap()).collect();
            let won = results
                .iter()
                .filter(|r| matches!(r, Reserve::Reserved { .. }))
                .count();
            assert!(won <= 1);
            assert_eq!(s.len(), 1 + won);
        });
    }
}
