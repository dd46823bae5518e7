//! [`Bitwise`]: a value of a `Copy` type that a generic container can clone
//! without asking its users for `T: Clone`.
//!
//! The event bus keeps small `Copy` payloads in the event envelope itself, and
//! `Event<E>: Clone` holds for every `E` (a plain or pooled payload is shared,
//! not cloned). Before this type the envelope carried a copy function next to
//! an inline value, 8 bytes more per event; without it (and with the critical
//! flag moved into padding) an `Event<u64>` is 32 bytes instead of 48, two to a
//! cache line (see `docs/benchmarks.md`, event bus). Written by hand because no
//! well-kept crate offers it; the one `unsafe` block is below, and the tests
//! run under miri.
#![allow(unsafe_code)]

use std::fmt;
use std::marker::PhantomData;

/// A `T` that was `Copy` where it was made: [`Clone`] copies its bytes, for
/// any `T`.
///
/// ```
/// use heijunka_core::Bitwise;
///
/// // A generic holder that clones without a `T: Clone` bound.
/// struct Holder<T: 'static>(Bitwise<T>);
/// impl<T: 'static> Clone for Holder<T> {
///     fn clone(&self) -> Self {
///         Holder(self.0.clone())
///     }
/// }
///
/// let a = Holder(Bitwise::new(42_u64));
/// let b = a.clone();
/// assert_eq!((*a.0.get(), b.0.into_inner()), (42, 42));
/// ```
pub struct Bitwise<T: 'static> {
    value: T,
    /// Invariant in `T`: no subtyping turns a `Bitwise` of a `Copy` type into
    /// one of a type that is not.
    _invariant: PhantomData<fn(T) -> T>,
}

impl<T: Copy + 'static> Bitwise<T> {
    /// Wraps `value`; the only way to make a `Bitwise`, so every one holds a
    /// `Copy` type.
    #[inline]
    pub const fn new(value: T) -> Self {
        Self {
            value,
            _invariant: PhantomData,
        }
    }
}

impl<T: 'static> Bitwise<T> {
    /// The value.
    #[inline]
    pub const fn get(&self) -> &T {
        &self.value
    }

    /// The value, unwrapped.
    #[inline]
    pub fn into_inner(self) -> T {
        self.value
    }
}

impl<T: 'static> Clone for Bitwise<T> {
    #[inline]
    fn clone(&self) -> Self {
        Self {
            // SAFETY: `new` is the only constructor and asks for `T: Copy`;
            // `T: 'static` and the invariant marker mean no lifetime or subtyping
            // changes `T` afterwards, so `T` is `Copy` here too. Copying a `Copy`
            // value's bytes is what `Copy` does, and a `Copy` type has no drop
            // glue, so the original and the copy may both be dropped. The source
            // is a valid, aligned `T` behind a shared reference.
            value: unsafe { std::ptr::read(&self.value) },
            _invariant: PhantomData,
        }
    }
}

impl<T: fmt::Debug + 'static> fmt::Debug for Bitwise<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.value.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A generic clone with no `T: Clone` bound, as the event bus does it.
    fn dup<T: 'static>(b: &Bitwise<T>) -> Bitwise<T> {
        b.clone()
    }

    #[test]
    fn clones_are_equal_copies() {
        let words = Bitwise::new([1_u64, 2, 3, 4]);
        let copy = dup(&words);
        assert_eq!(copy.get(), &[1, 2, 3, 4]);
        assert_ne!(
            std::ptr::from_ref(copy.get()),
            std::ptr::from_ref(words.get()),
            "a copy, not a shared value"
        );
        let text = Bitwise::new("static str");
        assert_eq!(dup(&text).into_inner(), "static str");
        assert_eq!(format!("{:?}", dup(&Bitwise::new((1_u8, 'x')))), "(1, 'x')");
    }

    #[test]
    fn a_copy_lives_on_after_the_original() {
        let copies: Vec<_> = {
            let original = Bitwise::new(7_u32);
            (0..3).map(|_| dup(&original)).collect()
        };
        assert!(copies.iter().all(|c| *c.get() == 7));
    }
}
