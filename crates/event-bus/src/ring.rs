//! A topic's ring: one slot per event, shared by every subscriber.
//!
//! Sequence `s` lives in slot `s % capacity`. A slot's `stamp` is `s + 1` once
//! event `s` is in it (0 before its first event), stored after the event with
//! `Release`: a reader that loads `stamp == s + 1` (`Acquire`) sees event `s`
//! in full.
//!
//! A write is a load of the stamp (is the slot's previous event published?), a
//! write of the cell and a `Release` store of the stamp: no read-modify-write
//! on the slot's cache line, so the publisher does not stall on that line,
//! which a reader on another core usually holds.
//!
//! The ring itself decides nothing about who may write or read a slot; the topic
//! (`topic.rs`) and the subscriber cursors (`subscriber.rs`) do, and the two
//! `unsafe` functions here state what they must guarantee. This is the crate's
//! only `unsafe` code; its tests run under miri and its protocol under loom
//! (`cargo xtask miri`, `cargo xtask loom`).
#![allow(unsafe_code)]

use heijunka_core::sync::atomic::{AtomicU64, Ordering};
use heijunka_core::sync::{UnsafeCell, hint, thread};

use crate::Event;

/// One slot: the stamp of the event in it and the event.
#[repr(align(64))]
struct Slot<E: Send + Sync + 'static> {
    stamp: AtomicU64,
    event: UnsafeCell<Option<Event<E>>>,
}

/// A fixed ring of `capacity` slots (a power of two).
pub(crate) struct Ring<E: Send + Sync + 'static> {
    slots: Box<[Slot<E>]>,
    mask: u64,
}

// SAFETY: the ring hands out shared references to the events in its slots
// (`read`, `peek`: `Event<E>` is `Sync` because `E: Send + Sync`) and moves events
// in and out of slots from any thread (`write`: `Event<E>` is `Send`). Every
// access to a slot's cell follows the protocol stated on `write` and `read`.
unsafe impl<E: Send + Sync + 'static> Sync for Ring<E> {}
// SAFETY: as above; the ring owns its events, which are `Send`.
unsafe impl<E: Send + Sync + 'static> Send for Ring<E> {}

impl<E: Send + Sync + 'static> Ring<E> {
    /// A ring of `capacity` empty slots; `capacity` is a power of two.
    pub(crate) fn new(capacity: usize) -> Self {
        assert!(capacity.is_power_of_two(), "ring capacity {capacity}");
        let slots = (0..capacity)
            .map(|_| Slot {
                stamp: AtomicU64::new(0),
                event: UnsafeCell::new(None),
            })
            .collect();
        Self {
            slots,
            mask: capacity as u64 - 1,
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.slots.len()
    }

    #[inline]
    fn slot(&self, seq: u64) -> &Slot<E> {
        // The mask keeps the index below the length: the cast cannot truncate
        // a value that matters.
        &self.slots[(seq & self.mask) as usize]
    }

    /// Whether event `seq` is in its slot: `Equal` yes, `Less` not yet
    /// published, `Greater` overwritten by a later one.
    #[inline]
    pub(crate) fn state(&self, seq: u64) -> std::cmp::Ordering {
        // Acquire: pairs with the Release store in `write`.
        self.slot(seq).stamp.load(Ordering::Acquire).cmp(&(seq + 1))
    }

    /// Puts event `seq` in its slot and publishes it; returns the event it
    /// replaced (`seq - capacity`), for the caller to drop outside any lock.
    ///
    /// # Safety
    ///
    /// The caller claimed `seq` (no other writer has it); no reader reads or
    /// will read event `seq - capacity` from this slot (the cursor of every
    /// subscriber that will still read the ring is past it and none holds it
    /// there, `subscriber.rs`); and no
    /// reclaim takes from the slot meanwhile (`topic.rs`: reclaim closes the
    /// gate and leaves alone the slots whose next sequence is claimed).
    #[inline]
    pub(crate) unsafe fn write(&self, seq: u64, event: Event<E>) -> Option<Event<E>> {
        let slot = self.slot(seq);
        // The previous event in this slot was claimed before `seq`, but its
        // writer may still be between its claim and its stamp (a subscriber
        // that joins or jumps ahead passes claimed events unread): wait for it,
        // so that two writers never share the cell. The wait is that writer's
        // few instructions, or its thread's time slice if it was preempted.
        let previous = (seq + 1).saturating_sub(self.slots.len() as u64);
        let mut spins = 0_u32;
        // Acquire: the previous writer's cell write happens before ours.
        while slot.stamp.load(Ordering::Acquire) < previous {
            spins += 1;
            if spins < 64 {
                hint::spin_loop();
            } else {
                thread::yield_now();
            }
        }
        // SAFETY: by this function's contract no reader reads the cell and no
        // reclaimer takes it now, and the writer of `seq - capacity` finished
        // (its stamp is stored, loaded above with Acquire).
        let old = slot
            .event
            .with_mut(|p| unsafe { std::ptr::replace(p, Some(event)) });
        // Release: a reader that loads the stamp (Acquire) sees the event.
        slot.stamp.store(seq + 1, Ordering::Release);
        old
    }

    /// Takes event `seq` out of its slot (the topic reclaims what every
    /// subscriber has read), leaving the slot empty; `None` if the slot does
    /// not hold `seq` (not yet published, or already empty).
    ///
    /// # Safety
    ///
    /// No reader reads or will read event `seq` (every subscriber's cursor is
    /// past it), and no writer writes the slot until this returns: the writer
    /// of `seq + capacity` has not claimed its sequence and cannot meanwhile
    /// (the topic's reclaim, under its lock with the gate closed).
    pub(crate) unsafe fn take(&self, seq: u64) -> Option<Event<E>> {
        let slot = self.slot(seq);
        // Acquire: the writer's cell write happens before the take.
        if slot.stamp.load(Ordering::Acquire) != seq + 1 {
            return None;
        }
        // SAFETY: by this function's contract nobody else touches the cell.
        // The next writer is ordered after this by the topic's lock and gate
        // (its claim follows the gate's reopening, a SeqCst store).
        slot.event.with_mut(|p| unsafe { (*p).take() })
    }

    /// Calls `f` with event `seq`, in its slot.
    ///
    /// # Safety
    ///
    /// The caller observed `state(seq) == Equal` and holds the reading of
    /// `seq` until `f` returns: no writer may write `seq + capacity` until then
    /// (its cursor is at `seq` and held, `subscriber::Cursor`).
    #[inline]
    pub(crate) unsafe fn peek<R>(&self, seq: u64, f: impl FnOnce(&Event<E>) -> R) -> R {
        // SAFETY: by this function's contract the event `seq` was published
        // (its stamp was loaded, with Acquire, after the write) and no writer
        // touches the cell until the caller lets go of the cursor.
        self.slot(seq).event.with(|p| {
            // SAFETY: as above: published, and pinned by the caller's cursor.
            let event = unsafe { &*p };
            f(event
                .as_ref()
                .expect("a published slot holds its event until overwritten"))
        })
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_slot_holds_its_event_until_overwritten() {
        let ring = Ring::<String>::new(2);
        assert_eq!(ring.capacity(), 2);
        assert_eq!(ring.state(0), std::cmp::Ordering::Less);
        // SAFETY: one thread: nobody reads or writes meanwhile.
        unsafe {
            assert!(ring.write(0, Event::new("a".into())).is_none());
            assert!(ring.write(1, Event::new("b".into())).is_none());
            assert_eq!(ring.state(0), std::cmp::Ordering::Equal);
            assert_eq!(ring.peek(0, |e| e.clone()).as_str(), "a");
            assert_eq!(ring.peek(1, |e| e.len()), 1);
            let old = ring.write(2, Event::new("c".into())).unwrap();
            assert_eq!(&*old, "a");
            assert_eq!(ring.state(0), std::cmp::Ordering::Greater);
            assert_eq!(ring.peek(2, |e| e.clone()).as_str(), "c");
        }
    }

    #[test]
    fn events_left_in_the_ring_are_dropped_with_it() {
        let event = Event::new(5_u32);
        let ring = Ring::<u32>::new(4);
        // SAFETY: one thread.
        unsafe {
            ring.write(0, event.clone());
        }
        assert_eq!(Event::handles(&event), 2);
        drop(ring);
        assert_eq!(Event::handles(&event), 1);
    }
}
