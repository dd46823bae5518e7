//! `Shared<T>`: a refcounted handle to a pooled value that goes back to its
//! recycler when the last clone drops.
//!
//! The protocol, on std's (or loom's) `Arc`:
//!
//! - a handle's drop first reads the strong count; if it is 1 this handle is the
//!   last, and `Arc::get_mut` (which synchronises with every earlier drop) takes
//!   the value out, gives it back, and parks the now-empty allocation for the next
//!   `into_shared`;
//! - otherwise the handle drops its `Arc`. If the other handles dropped at the same
//!   time, so that this one turned out to be last after all, the slot's own `Drop`
//!   (which `Arc` runs exactly once) gives the value back and the allocation is
//!   freed instead of parked.
//!
//! Either way the value goes back exactly once; the loom model below checks it
//! with handles dropped on several threads.

use std::fmt;
use std::ops::Deref;

use heijunka_core::sync::Arc;

use crate::Recycler;
use crate::checks::Origin;
use crate::guard::give_back;

/// A cloneable, `Send + Sync` handle to a pooled value, made by
/// [`Recycled::into_shared`](crate::Recycled::into_shared): the value goes back to
/// its recycler, reset, when the last clone drops. One pooled event delivered to
/// many subscribers without copying it.
///
/// ```
/// # if heijunka_core::sync::IS_LOOM { return Ok(()); } // loom types work only inside a model
/// use heijunka_recycler::Recycler;
///
/// let events = Recycler::new(16, || Vec::<u8>::with_capacity(256))?;
/// let mut event = events.get();
/// event.extend_from_slice(b"price=42");
/// let event = event.into_shared();
///
/// let readers: Vec<_> = (0..4)
///     .map(|_| {
///         let event = event.clone();
///         std::thread::spawn(move || assert_eq!(&event[..], b"price=42"))
///     })
///     .collect();
/// drop(event);
/// for r in readers {
///     r.join().unwrap();
/// }
/// let s = events.stats();
/// assert_eq!((s.returns, s.idle), (1, 1));
/// # Ok::<(), heijunka_core::ConfigError>(())
/// ```
pub struct Shared<T: Send + 'static> {
    /// `Some` until dropped.
    slot: Option<Arc<SharedSlot<T>>>,
}

/// The refcounted allocation: the value and where it goes back to while in use,
/// both `None` while parked (so a parked slot holds no reference to its recycler).
pub(crate) struct SharedSlot<T: Send + 'static> {
    value: Option<Box<T>>,
    home: Option<Recycler<T>>,
    origin: Origin,
}

impl<T: Send + 'static> Drop for SharedSlot<T> {
    fn drop(&mut self) {
        if let (Some(value), Some(home)) = (self.value.take(), self.home.take()) {
            give_back(&home, value, self.origin);
        }
    }
}

impl<T: Send + 'static> Shared<T> {
    pub(crate) fn new(home: Recycler<T>, value: Box<T>, origin: Origin) -> Self {
        let mut slot = home.inner.parked.pop().unwrap_or_else(|| {
            Arc::new(SharedSlot {
                value: None,
                home: None,
                origin,
            })
        });
        let s = Arc::get_mut(&mut slot).expect("a parked slot has no other handle");
        s.value = Some(value);
        s.home = Some(home);
        s.origin = origin;
        Self { slot: Some(slot) }
    }

    fn slot(&self) -> &SharedSlot<T> {
        self.slot
            .as_ref()
            .expect("a handle holds its slot until dropped")
    }

    /// The number of handles to this value.
    pub fn handles(this: &Self) -> usize {
        this.slot.as_ref().map_or(0, Arc::strong_count)
    }

    /// The value, mutably, if this is the only handle.
    pub fn get_mut(this: &mut Self) -> Option<&mut T> {
        Arc::get_mut(this.slot.as_mut()?)?.value.as_deref_mut()
    }

    /// The recycler the value goes back to.
    pub fn recycler(this: &Self) -> &Recycler<T> {
        this.slot()
            .home
            .as_ref()
            .expect("a live handle knows its recycler")
    }
}

impl<T: Send + 'static> Deref for Shared<T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        self.slot()
            .value
            .as_deref()
            .expect("a live handle holds its value")
    }
}

impl<T: Send + 'static> Clone for Shared<T> {
    #[inline]
    fn clone(&self) -> Self {
        Self {
            slot: self.slot.clone(),
        }
    }
}

impl<T: Send + 'static> Drop for Shared<T> {
    #[inline]
    fn drop(&mut self) {
        let Some(mut slot) = self.slot.take() else {
            return;
        };
        // A hint only: `get_mut` below is the check that synchronises. A count
        // above 1 means other handles exist now; if they all drop at once, the
        // slot's own `Drop` gives the value back.
        if Arc::strong_count(&slot) == 1
            && let Some(s) = Arc::get_mut(&mut slot)
            && let (Some(value), Some(home)) = (s.value.take(), s.home.take())
        {
            let origin = s.origin;
            // Park the empty allocation first; a full park drops it (nothing in it).
            let _ = home.inner.parked.push(slot);
            give_back(&home, value, origin);
        }
    }
}

impl<T: Send + fmt::Debug + 'static> fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field(
                "value",
                &self.slot.as_ref().and_then(|s| s.value.as_deref()),
            )
            .field("handles", &Shared::handles(self))
            .finish()
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use heijunka_core::sync::thread;

    fn recycler() -> Recycler<Vec<u8>> {
        Recycler::builder(|| Vec::with_capacity(4))
            .capacity(2)
            .per_thread(0)
            .build()
            .unwrap()
    }

    /// Three handles dropped on three threads: the value goes back exactly once,
    /// whichever drop turns out to be last.
    #[test]
    fn last_of_three_handles_returns_the_value_once() {
        loom::model(|| {
            let pool = recycler();
            let shared = pool.get().into_shared();
            let others: Vec<_> = (0..2)
                .map(|_| {
                    let h = shared.clone();
                    thread::spawn(move || {
                        assert_eq!(h.capacity(), 4);
                        drop(h);
                    })
                })
                .collect();
            drop(shared);
            for t in others {
                t.join().unwrap();
            }
            let s = pool.stats();
            assert_eq!(s.returns, 1, "{s:?}");
            assert_eq!(s.idle, 1, "{s:?}");
            // The value came back reset, and is the one handed out next.
            assert!(pool.get().is_empty());
        });
    }

    /// A handle's allocation, parked by whichever drop was last, is reused by the
    /// next `into_shared` while the first round's reader may still be finishing:
    /// two rounds, two returns, never a slot with two live values.
    #[test]
    fn parked_slots_are_reused_safely() {
        loom::model(|| {
            let pool = recycler();
            let first = pool.get().into_shared();
            let reader = {
                let h = first.clone();
                thread::spawn(move || drop(h))
            };
            drop(first);
            let mut second = pool.get();
            second.push(2);
            let second = second.into_shared();
            assert_eq!(&second[..], &[2]);
            drop(second);
            reader.join().unwrap();
            let s = pool.stats();
            assert_eq!((s.gets, s.returns), (2, 2), "{s:?}");
        });
    }

    /// A reader still holding a clone keeps the value out of the pool: it goes
    /// back only after the reader's drop, and a `get` racing it never sees the
    /// value still in use.
    #[test]
    fn a_value_is_idle_only_after_its_last_handle() {
        loom::model(|| {
            let pool = recycler();
            let mut first = pool.get();
            first.push(1);
            let shared = first.into_shared();
            let reader = {
                let h = shared.clone();
                thread::spawn(move || assert_eq!(&h[..], &[1]))
            };
            drop(shared);
            // Whatever `get` hands out here is empty: either a new value, or the
            // shared one after both handles dropped and reset it.
            let other = pool.get();
            assert!(other.is_empty());
            drop(other);
            reader.join().unwrap();
            let s = pool.stats();
            assert_eq!(s.gets, s.returns, "{s:?}");
        });
    }
}
