//! Errors: a misused `put`, and a second recycler registered for one type.

use std::fmt;
use std::panic::Location;

/// What the debug checks found wrong with a value given back through
/// [`Recycler::try_put`](crate::Recycler::try_put).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Misuse {
    /// The value (its allocation) was already idle in a recycler: it was given back
    /// twice, typically through a raw pointer turned back into a value twice.
    #[error(
        "value at {address:#x} given back twice to recycler #{recycler}: first at {first}, again at {second}"
    )]
    ReturnedTwice {
        /// The value's [identity](crate::Recycle::identity): its allocation.
        address: usize,
        /// The recycler holding the first return.
        recycler: u64,
        /// Where the first return happened: the `put` call, or the `get` call whose
        /// guard was dropped.
        first: &'static Location<'static>,
        /// Where the second return happened.
        second: &'static Location<'static>,
    },
}

/// A value [`Recycler::try_put`](crate::Recycler::try_put) refused, handed back
/// with the reason.
///
/// After [`Misuse::ReturnedTwice`] the value's identity names the allocation of a
/// value the recycler holds. In safe code (a wrong
/// [`identity`](crate::Recycle::identity), a clone of a shared handle) the value
/// owns what it holds and may be dropped, as [`put`](crate::Recycler::put) does;
/// a value rebuilt from a raw pointer a second time by unsafe code really shares
/// that memory, and that code disposes of it the way it was created
/// (`std::mem::forget`).
pub struct PutError<T> {
    value: T,
    misuse: Misuse,
}

impl<T> PutError<T> {
    pub(crate) fn new(value: T, misuse: Misuse) -> Self {
        Self { value, misuse }
    }

    /// What was wrong.
    pub fn misuse(&self) -> Misuse {
        self.misuse
    }

    /// The refused value.
    pub fn into_inner(self) -> T {
        self.value
    }
}

impl<T> fmt::Debug for PutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PutError")
            .field("misuse", &self.misuse)
            .finish_non_exhaustive()
    }
}

impl<T> fmt::Display for PutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.misuse, f)
    }
}

impl<T> std::error::Error for PutError<T> {}

/// [`RecyclerRegistry::insert`](crate::RecyclerRegistry::insert) found a recycler
/// for the type already registered; the new one is handed back.
pub struct RegisterError<R> {
    recycler: R,
    type_name: &'static str,
}

impl<R> RegisterError<R> {
    pub(crate) fn new(recycler: R, type_name: &'static str) -> Self {
        Self {
            recycler,
            type_name,
        }
    }

    /// The recycler that was not registered.
    pub fn into_inner(self) -> R {
        self.recycler
    }

    /// The value type both recyclers pool.
    pub fn type_name(&self) -> &'static str {
        self.type_name
    }
}

impl<R> fmt::Debug for RegisterError<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegisterError")
            .field("type_name", &self.type_name)
            .finish_non_exhaustive()
    }
}

impl<R> fmt::Display for RegisterError<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a recycler for {} is already registered", self.type_name)
    }
}

impl<R> std::error::Error for RegisterError<R> {}
