//! The `Recycle` trait: how a value is made fresh again before reuse.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, Hash};

/// A value that can be reset to a fresh state and reused.
///
/// [`reset`](Recycle::reset) must leave the value as a caller of
/// [`Recycler::get`](crate::Recycler::get) expects a new one (empty collections,
/// zeroed counters) while keeping the memory worth keeping (a collection's
/// allocation). The recycler calls it on every return, before the value is stored.
///
/// The two provided methods feed optional rules:
///
/// - [`capacity`](Recycle::capacity) measures what the value keeps allocated, for
///   the shrink rule ([`RecyclerBuilder::max_value_capacity`]): a buffer that grew
///   past the bound is dropped instead of kept.
/// - [`identity`](Recycle::identity) names the value's heap allocation, for the
///   debug checks that catch a value given back twice through
///   [`Recycler::put`]. A wrong identity (two live values naming one address)
///   makes those checks report a value given back twice that was not; a guard's
///   return or a `put` then drops the value it owns (counted as evicted, logged),
///   never leaks it or panics.
///
/// For a type you do not own, give the recycler a closure instead
/// ([`Recycler::with_reset`]).
///
/// ```
/// use heijunka_recycler::Recycle;
///
/// struct Event {
///     id: u64,
///     payload: Vec<u8>,
/// }
///
/// impl Recycle for Event {
///     fn reset(&mut self) {
///         self.id = 0;
///         self.payload.clear(); // keeps the allocation
///     }
///     fn capacity(&self) -> usize {
///         self.payload.capacity()
///     }
/// }
/// ```
///
/// [`RecyclerBuilder::max_value_capacity`]: crate::RecyclerBuilder::max_value_capacity
/// [`Recycler::put`]: crate::Recycler::put
/// [`Recycler::with_reset`]: crate::Recycler::with_reset
pub trait Recycle {
    /// Makes the value fresh for its next user.
    fn reset(&mut self);

    /// What the value keeps allocated after a reset, in its own unit (elements for
    /// a collection); `0` when it keeps nothing worth measuring.
    fn capacity(&self) -> usize {
        0
    }

    /// The address of the heap allocation that makes this value unique, if it has
    /// one: two live values never share it. `None` (the default) opts the value out
    /// of the double-return check.
    fn identity(&self) -> Option<usize> {
        None
    }
}

/// The address of the allocation behind `ptr`, or `None` for a dangling pointer of
/// an empty allocation (which many empty values share).
fn allocation<P>(ptr: *const P, allocated: bool) -> Option<usize> {
    allocated.then(|| ptr.cast::<()>().addr())
}

impl<T> Recycle for Vec<T> {
    fn reset(&mut self) {
        self.clear();
    }

    fn capacity(&self) -> usize {
        Vec::capacity(self)
    }

    fn identity(&self) -> Option<usize> {
        allocation(self.as_ptr(), Vec::capacity(self) > 0 && size_of::<T>() > 0)
    }
}

impl Recycle for String {
    fn reset(&mut self) {
        self.clear();
    }

    fn capacity(&self) -> usize {
        String::capacity(self)
    }

    fn identity(&self) -> Option<usize> {
        allocation(self.as_ptr(), String::capacity(self) > 0)
    }
}

impl<T> Recycle for VecDeque<T> {
    fn reset(&mut self) {
        self.clear();
    }

    fn capacity(&self) -> usize {
        VecDeque::capacity(self)
    }
}

impl<K, V, S> Recycle for HashMap<K, V, S>
where
    K: Eq + Hash,
    S: BuildHasher,
{
    fn reset(&mut self) {
        self.clear();
    }

    fn capacity(&self) -> usize {
        HashMap::capacity(self)
    }
}

impl<T, S> Recycle for HashSet<T, S>
where
    T: Eq + Hash,
    S: BuildHasher,
{
    fn reset(&mut self) {
        self.clear();
    }

    fn capacity(&self) -> usize {
        HashSet::capacity(self)
    }
}

/// A `BTreeMap` frees its nodes on `clear`, so recycling one saves only the map's
/// own header; it is here so maps of either kind can sit in a recycled struct.
impl<K, V> Recycle for BTreeMap<K, V> {
    fn reset(&mut self) {
        self.clear();
    }
}

/// Resets the boxed value; the box's own allocation is its identity.
impl<T: Recycle> Recycle for Box<T> {
    fn reset(&mut self) {
        (**self).reset();
    }

    fn capacity(&self) -> usize {
        (**self).capacity()
    }

    fn identity(&self) -> Option<usize> {
        allocation(std::ptr::from_ref::<T>(self), size_of::<T>() > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn std_collections_reset_to_empty_and_keep_their_allocation() {
        let mut v = Vec::with_capacity(64);
        v.extend_from_slice(b"hello");
        let before = v.identity();
        v.reset();
        assert!(v.is_empty());
        assert!(Recycle::capacity(&v) >= 64);
        assert_eq!(v.identity(), before);

        let mut s = String::with_capacity(32);
        s.push_str("abc");
        s.reset();
        assert!(s.is_empty() && Recycle::capacity(&s) >= 32);
        assert!(s.identity().is_some());

        let mut d: VecDeque<u8> = (0..10).collect();
        d.reset();
        assert!(d.is_empty() && Recycle::capacity(&d) >= 10);

        let mut m: HashMap<u8, u8> = (0..10).map(|i| (i, i)).collect();
        m.reset();
        assert!(m.is_empty() && Recycle::capacity(&m) >= 10);

        let mut h: HashSet<u8> = (0..10).collect();
        h.reset();
        assert!(h.is_empty() && Recycle::capacity(&h) >= 10);

        let mut b: BTreeMap<u8, u8> = (0..10).map(|i| (i, i)).collect();
        b.reset();
        assert!(b.is_empty());
        assert_eq!(Recycle::capacity(&b), 0);
        assert_eq!(b.identity(), None);
    }

    #[test]
    fn identity_is_the_allocation_and_absent_without_one() {
        assert_eq!(Vec::<u8>::new().identity(), None);
        assert_eq!(Vec::<()>::with_capacity(8).identity(), None);
        assert_eq!(String::new().identity(), None);
        let a = vec![1_u8; 4];
        let b = vec![1_u8; 4];
        assert_ne!(a.identity(), b.identity());

        let mut boxed = Box::new(vec![7_u8; 16]);
        let id = boxed.identity();
        assert!(id.is_some());
        assert_ne!(id, boxed.as_ref().identity());
        boxed.reset();
        assert!(boxed.is_empty());
        assert_eq!(Recycle::capacity(&boxed), 16);
        assert_eq!(boxed.identity(), id);
    }
}
