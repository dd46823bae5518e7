//! [`ring`]: a bounded single-producer single-consumer queue whose push and pop
//! are plain loads and stores, no read-modify-write.
//!
//! Written by hand (rather than taken from `crossbeam`'s `ArrayQueue`, which is
//! multi-producer multi-consumer) because the event bus's fan-out benchmark
//! showed the gain: a publish reaching 16 subscribers does 16 pushes, and a
//! locked instruction in each (the `ArrayQueue`'s compare-and-swap) serialises
//! their cache misses, where plain stores let them overlap. Ownership enforces
//! the single producer and consumer: [`Producer::push`] and [`Consumer::pop`]
//! take `&mut self`, and neither end is `Clone`.
//!
//! # Protocol
//!
//! `tail` counts pushes and is written only by the producer; `head` counts pops
//! and is written only by the consumer. Slot `i % slots` holds the `i`-th value
//! while `head <= i < tail`. The producer writes a slot, then publishes it with a
//! `Release` store of `tail`; the consumer reads `tail` with `Acquire` before
//! reading the slot. The consumer reads a slot, then frees it with a `Release`
//! store of `head`; the producer reads `head` with `Acquire` before writing a
//! slot again. Each end caches the other's counter and reloads it only when the
//! cache says full (producer) or empty (consumer).
//!
//! ```
//! # if heijunka_core::sync::IS_LOOM { return Ok(()); } // loom types work only inside a model
//! use heijunka_core::spsc;
//!
//! let (mut tx, mut rx) = spsc::ring::<String>(2)?;
//! tx.push("a".into()).unwrap();
//! tx.push("b".into()).unwrap();
//! assert_eq!(tx.push("c".into()), Err("c".into())); // full: handed back
//! assert_eq!(rx.pop().as_deref(), Some("a"));
//! let counts = tx.counts();
//! assert_eq!((counts.pushed(), counts.popped(), counts.len()), (2, 1, 1));
//! # Ok::<(), heijunka_core::ConfigError>(())
//! ```
#![allow(unsafe_code)]

use std::fmt;
use std::mem::MaybeUninit;

use crate::sync::atomic::{AtomicU64, Ordering};
use crate::sync::{Arc, CachePadded, UnsafeCell};
use crate::{ConfigError, validate};

/// The largest capacity [`ring`] accepts: 2^28 values.
pub const MAX_CAPACITY: usize = 1 << 28;

struct Shared<T> {
    slots: Box<[UnsafeCell<MaybeUninit<T>>]>,
    /// `slots.len() - 1`; the slot count is a power of two.
    mask: u64,
    capacity: u64,
    /// Pushes; written only by the producer.
    tail: CachePadded<AtomicU64>,
    /// Pops; written only by the consumer.
    head: CachePadded<AtomicU64>,
}

// SAFETY: the ring moves `T` values from the producer's thread to the consumer's,
// so it is `Send` and `Sync` when `T: Send`; a slot is only ever accessed by one
// end at a time (see the module's protocol), so `T: Sync` is not needed.
unsafe impl<T: Send> Send for Shared<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for Shared<T> {}

/// A bounded single-producer single-consumer ring of `capacity` values (at
/// least 1, at most [`MAX_CAPACITY`]).
///
/// # Errors
///
/// A [`ConfigError`] naming `capacity` when it is out of range.
pub fn ring<T>(capacity: usize) -> Result<(Producer<T>, Consumer<T>), ConfigError> {
    validate::at_least("capacity", capacity, 1)?;
    validate::at_most("capacity", capacity, MAX_CAPACITY)?;
    let slots = capacity.next_power_of_two();
    let shared = Arc::new(Shared {
        slots: (0..slots)
            .map(|_| UnsafeCell::new(MaybeUninit::uninit()))
            .collect(),
        mask: slots as u64 - 1,
        capacity: capacity as u64,
        tail: CachePadded::new(AtomicU64::new(0)),
        head: CachePadded::new(AtomicU64::new(0)),
    });
    Ok((
        Producer {
            shared: Arc::clone(&shared),
            tail: 0,
            head: 0,
        },
        Consumer {
            shared,
            head: 0,
            tail: 0,
        },
    ))
}

/// The pushing end of a [`ring`].
pub struct Producer<T> {
    shared: Arc<Shared<T>>,
    /// Pushes so far (this end is the only writer of `shared.tail`).
    tail: u64,
    /// The consumer's pops as last read: a lower bound.
    head: u64,
}

impl<T> Producer<T> {
    /// Pushes `value`, or hands it back if the ring is full.
    ///
    /// # Errors
    ///
    /// The value, when `capacity` values are queued.
    #[inline]
    pub fn push(&mut self, value: T) -> Result<(), T> {
        if self.tail - self.head >= self.shared.capacity {
            self.head = self.shared.load_head();
            if self.tail - self.head >= self.shared.capacity {
                return Err(value);
            }
        }
        let slot = &self.shared.slots[(self.tail & self.shared.mask) as usize];
        // SAFETY: this is the only producer (`&mut self`, not `Clone`), and the
        // slot is free: `tail - head < capacity <= slots.len()`, so the value last
        // stored in it (index `tail - slots.len()`, below `head`) has been read by
        // the consumer, whose `Release` store of `head` this end read with
        // `Acquire`. The consumer reads the slot only after this end's `Release`
        // store of `tail` below.
        slot.with_mut(|p| unsafe { (*p).write(value) });
        self.tail += 1;
        // Release: publishes the slot's value to the consumer's Acquire load.
        self.shared.tail.store(self.tail, Ordering::Release);
        Ok(())
    }

    /// Values queued, as far as this end knows: exact but for pops the
    /// consumer makes meanwhile.
    #[inline]
    pub fn len(&mut self) -> usize {
        self.head = self.shared.load_head();
        (self.tail - self.head) as usize
    }

    /// An upper bound of the values queued, without reading the consumer's
    /// counter.
    #[inline]
    pub fn len_bound(&self) -> usize {
        (self.tail - self.head) as usize
    }

    /// Whether the ring is empty now (see [`len`](Self::len)).
    pub fn is_empty(&mut self) -> bool {
        self.len() == 0
    }

    /// The ring's capacity.
    pub fn capacity(&self) -> usize {
        self.shared.capacity as usize
    }

    /// A read-only view of the counters, for other threads.
    pub fn counts(&self) -> Counts<T> {
        Counts {
            shared: Arc::clone(&self.shared),
        }
    }
}

/// The popping end of a [`ring`].
pub struct Consumer<T> {
    shared: Arc<Shared<T>>,
    /// Pops so far (this end is the only writer of `shared.head`).
    head: u64,
    /// The producer's pushes as last read: a lower bound.
    tail: u64,
}

impl<T> Consumer<T> {
    /// The oldest value, if any.
    #[inline]
    pub fn pop(&mut self) -> Option<T> {
        if self.head == self.tail {
            self.tail = self.shared.load_tail();
            if self.head == self.tail {
                return None;
            }
        }
        let slot = &self.shared.slots[(self.head & self.shared.mask) as usize];
        // SAFETY: this is the only consumer (`&mut self`, not `Clone`), and
        // `head < tail` where `tail` was read with `Acquire` from the producer's
        // `Release` store made after it wrote this slot: the slot holds an
        // initialised value no one else reads. The producer writes the slot again
        // only after reading (Acquire) the `head` stored below (Release), so the
        // value is moved out before it can be overwritten.
        let value = slot.with(|p| unsafe { (*p).assume_init_read() });
        self.head += 1;
        // Release: frees the slot for the producer's Acquire load.
        self.shared.head.store(self.head, Ordering::Release);
        Some(value)
    }

    /// Whether a value is queued now, reading the producer's counter.
    #[inline]
    pub fn has_items(&mut self) -> bool {
        self.tail = self.shared.load_tail();
        self.head != self.tail
    }

    /// Pops so far.
    pub fn popped(&self) -> u64 {
        self.head
    }

    /// The ring's capacity.
    pub fn capacity(&self) -> usize {
        self.shared.capacity as usize
    }

    /// A read-only view of the counters, for other threads.
    pub fn counts(&self) -> Counts<T> {
        Counts {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<T> Shared<T> {
    #[inline]
    fn load_head(&self) -> u64 {
        // Acquire: pairs with the consumer's Release store after a read.
        self.head.load(Ordering::Acquire)
    }

    #[inline]
    fn load_tail(&self) -> u64 {
        // Acquire: pairs with the producer's Release store after a write.
        self.tail.load(Ordering::Acquire)
    }
}

impl<T> Drop for Shared<T> {
    fn drop(&mut self) {
        // Relaxed: `&mut self`, both ends are gone.
        let head = self.head.load(Ordering::Relaxed);
        let tail = self.tail.load(Ordering::Relaxed);
        for i in head..tail {
            let slot = &self.slots[(i & self.mask) as usize];
            // SAFETY: values `head..tail` were pushed and never popped, so each
            // slot holds an initialised value; both ends are gone, so nothing
            // else reads it, and each is dropped once.
            slot.with_mut(|p| unsafe { (*p).assume_init_drop() });
        }
    }
}

/// A read-only view of a [`ring`]'s counters, from any thread: each value is a
/// snapshot, possibly stale by the pushes and pops in flight.
pub struct Counts<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Counts<T> {
    /// Pushes so far.
    pub fn pushed(&self) -> u64 {
        self.shared.load_tail()
    }

    /// Pops so far.
    pub fn popped(&self) -> u64 {
        self.shared.load_head()
    }

    /// Values queued now (a snapshot, at most the capacity). It reads the pops
    /// before the pushes, so operations in flight make it err high, never low.
    pub fn len(&self) -> usize {
        let head = self.popped();
        let tail = self.pushed();
        (tail.saturating_sub(head) as usize).min(self.shared.capacity as usize)
    }

    /// Whether nothing is queued now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The ring's capacity.
    pub fn capacity(&self) -> usize {
        self.shared.capacity as usize
    }
}

impl<T> Clone for Counts<T> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<T> fmt::Debug for Producer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("capacity", &self.capacity())
            .field("pushed", &self.tail)
            .finish_non_exhaustive()
    }
}

impl<T> fmt::Debug for Consumer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("capacity", &self.capacity())
            .field("popped", &self.head)
            .finish_non_exhaustive()
    }
}

impl<T> fmt::Debug for Counts<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Counts")
            .field("capacity", &self.capacity())
            .field("pushed", &self.pushed())
            .field("popped", &self.popped())
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn fifo_through_many_laps_with_an_odd_capacity() {
        let (mut tx, mut rx) = ring::<u32>(3).unwrap();
        let mut next = 0;
        for i in 0..50 {
            tx.push(i).unwrap();
            if i % 2 == 1 {
                tx.push(100 + i).unwrap();
            }
            while tx.len_bound() >= 3 || i % 5 == 0 {
                match rx.pop() {
                    Some(v) => {
                        assert!(v == next || v >= 100, "order");
                        if v < 100 {
                            next += 1;
                        }
                    }
                    None => break,
                }
            }
        }
        while rx.pop().is_some() {}
        assert_eq!(tx.counts().len(), 0);
        assert_eq!(tx.capacity(), 3);
    }

    #[test]
    fn a_full_ring_hands_the_value_back_and_frees_on_pop() {
        let (mut tx, mut rx) = ring::<String>(2).unwrap();
        tx.push("a".into()).unwrap();
        tx.push("b".into()).unwrap();
        assert_eq!(tx.push("c".into()), Err(String::from("c")));
        assert_eq!(tx.len(), 2);
        assert_eq!(rx.pop().as_deref(), Some("a"));
        tx.push("c".into()).unwrap();
        assert_eq!(rx.pop().as_deref(), Some("b"));
        assert_eq!(rx.pop().as_deref(), Some("c"));
        assert_eq!(rx.pop(), None);
        assert!(!rx.has_items());
        assert_eq!(rx.popped(), 3);
    }

    #[test]
    fn values_left_in_the_ring_are_dropped_once() {
        static DROPS: AtomicUsize = AtomicUsize::new(0);
        struct D;
        impl Drop for D {
            fn drop(&mut self) {
                DROPS.fetch_add(1, Ordering::Relaxed);
            }
        }
        let (mut tx, mut rx) = ring::<D>(4).unwrap();
        for _ in 0..6 {
            if tx.push(D).is_err() {
                break; // the refused value drops here
            }
        }
        assert_eq!(DROPS.load(Ordering::Relaxed), 1);
        drop(rx.pop());
        assert_eq!(DROPS.load(Ordering::Relaxed), 2);
        drop(tx);
        drop(rx);
        assert_eq!(DROPS.load(Ordering::Relaxed), 5, "3 left in the ring");
    }

    #[test]
    fn values_cross_threads_in_order() {
        let (mut tx, mut rx) = ring::<Box<u64>>(8).unwrap();
        const N: u64 = if cfg!(miri) { 200 } else { 100_000 };
        let producer = std::thread::spawn(move || {
            let mut i = 0;
            while i < N {
                match tx.push(Box::new(i)) {
                    Ok(()) => i += 1,
                    Err(_) => std::thread::yield_now(),
                }
            }
        });
        let mut expect = 0;
        while expect < N {
            match rx.pop() {
                Some(v) => {
                    assert_eq!(*v, expect);
                    expect += 1;
                }
                None => std::thread::yield_now(),
            }
        }
        producer.join().unwrap();
    }

    #[test]
    fn bad_capacities_are_named() {
        let e = ring::<u8>(0).unwrap_err();
        assert_eq!(e.field(), "capacity");
        assert!(ring::<u8>(MAX_CAPACITY + 1).is_err());
        let (tx, rx) = ring::<u8>(5).unwrap();
        assert!(format!("{tx:?} {rx:?} {:?}", tx.counts()).contains("capacity: 5"));
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;

    /// Values pushed on one thread are popped whole and in order on another,
    /// through a wrap of a two-slot ring (the slot reuse is what the Acquire and
    /// Release pairs guard).
    #[test]
    fn values_cross_threads_in_order_through_slot_reuse() {
        loom::model(|| {
            let (mut tx, mut rx) = ring::<Box<u32>>(2).unwrap();
            let producer = loom::thread::spawn(move || {
                let mut i = 0;
                while i < 3 {
                    match tx.push(Box::new(i)) {
                        Ok(()) => i += 1,
                        Err(_) => loom::thread::yield_now(),
                    }
                }
            });
            let mut expect = 0;
            while expect < 3 {
                match rx.pop() {
                    Some(v) => {
                        assert_eq!(*v, expect);
                        expect += 1;
                    }
                    None => loom::thread::yield_now(),
                }
            }
            producer.join().unwrap();
        });
    }
}
