//! The loom shim: synchronisation primitives that `--cfg loom` swaps for loom's.
//!
//! Every heijunka crate imports its atomics, `Arc`, `Mutex`, `Condvar`, threads and
//! interior-mutability cells from this module, never from `std` directly. A normal
//! build gets the `std` types (zero cost: these are re-exports). A build with
//! `RUSTFLAGS="--cfg loom"` gets [loom](https://docs.rs/loom)'s types, so a model
//! written as `loom::model(|| ...)` explores every interleaving of the real code.
//!
//! ```no_run
//! use heijunka_core::sync::atomic::{AtomicUsize, Ordering};
//! use heijunka_core::sync::Arc;
//!
//! let hits = Arc::new(AtomicUsize::new(0));
//! hits.fetch_add(1, Ordering::Relaxed);
//! assert_eq!(hits.load(Ordering::Relaxed), 1);
//! ```
//!
//! [`UnsafeCell`] follows loom's API (`with` / `with_mut` taking a closure over the
//! raw pointer) in both builds, so code written against it compiles either way.
//!
//! Under loom, a type from this module may only be used inside a loom model. Tests
//! that are not loom models are compiled out with `#[cfg(not(loom))]`.

#[cfg(not(loom))]
pub use std::sync::{Arc, Barrier, Condvar, Mutex, MutexGuard, RwLock, Weak};
#[cfg(not(loom))]
pub use std::{hint, thread, thread_local};

#[cfg(loom)]
pub use loom::sync::{Arc, Barrier, Condvar, Mutex, MutexGuard, RwLock};
#[cfg(loom)]
pub use loom::{hint, thread, thread_local};
#[cfg(loom)]
pub use std::sync::Weak;

/// Whether this build uses loom's types (`--cfg loom`). Examples check it to skip
/// themselves outside a loom model, where loom's types cannot be used.
#[doc(hidden)]
pub const IS_LOOM: bool = cfg!(loom);

/// Pads and aligns a value to the length of a cache line, so two hot atomics never
/// share one (re-exported from `crossbeam-utils`).
pub use crossbeam_utils::CachePadded;

/// Atomic types: `std::sync::atomic` normally, `loom::sync::atomic` under loom.
pub mod atomic {
    #[cfg(not(loom))]
    pub use std::sync::atomic::{
        AtomicBool, AtomicI32, AtomicI64, AtomicIsize, AtomicPtr, AtomicU8, AtomicU16, AtomicU32,
        AtomicU64, AtomicUsize, Ordering, fence,
    };

    #[cfg(loom)]
    pub use loom::sync::atomic::{
        AtomicBool, AtomicI32, AtomicI64, AtomicIsize, AtomicPtr, AtomicU8, AtomicU16, AtomicU32,
        AtomicU64, AtomicUsize, Ordering, fence,
    };
}

#[cfg(loom)]
pub use loom::cell::UnsafeCell;

/// An interior-mutability cell with loom's closure-based API.
///
/// Under loom this is `loom::cell::UnsafeCell`, which checks that no access
/// overlaps a conflicting one. Normally it is a zero-cost wrapper over
/// [`std::cell::UnsafeCell`]: `with` and `with_mut` hand the closure the raw
/// pointer, and dereferencing it is the caller's `unsafe`, with its own SAFETY
/// comment.
///
/// ```
/// use heijunka_core::sync::UnsafeCell;
///
/// # if heijunka_core::sync::IS_LOOM { return; } // loom types work only inside a model
/// let cell = UnsafeCell::new(5_u32);
/// // SAFETY: `cell` is not shared with anything else in this example.
/// let v = cell.with(|p| unsafe { *p });
/// assert_eq!(v, 5);
/// ```
#[cfg(not(loom))]
#[derive(Debug, Default)]
pub struct UnsafeCell<T: ?Sized>(std::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    /// Wraps `value`.
    #[inline]
    pub const fn new(value: T) -> Self {
        Self(std::cell::UnsafeCell::new(value))
    }

    /// Unwraps the value.
    #[inline]
    pub fn into_inner(self) -> T {
        self.0.into_inner()
    }
}

#[cfg(not(loom))]
impl<T: ?Sized> UnsafeCell<T> {
    /// Calls `f` with a shared raw pointer to the contents.
    #[inline]
    pub fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    /// Calls `f` with a mutable raw pointer to the contents.
    #[inline]
    pub fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }

    /// Returns a mutable reference to the contents; the `&mut self` borrow proves
    /// exclusivity, so this needs no `unsafe`.
    #[inline]
    pub fn get_mut(&mut self) -> &mut T {
        self.0.get_mut()
    }
}

/// A small number for the calling thread, for spreading per-thread state (counter
/// shards, caches) over slots: threads take consecutive numbers in the order they
/// first ask, so up to `n` threads never share slot `thread_index() % n`.
///
/// Under loom the numbers come from a counter loom resets per execution, so every
/// execution of a model is reproducible.
///
/// ```
/// # if heijunka_core::sync::IS_LOOM { return; } // loom types work only inside a model
/// let a = heijunka_core::sync::thread_index();
/// assert_eq!(a, heijunka_core::sync::thread_index(), "stable for a thread");
/// let b = std::thread::spawn(heijunka_core::sync::thread_index).join().unwrap();
/// assert_ne!(a, b);
/// ```
#[cfg(not(loom))]
#[inline]
pub fn thread_index() -> usize {
    use std::cell::Cell;
    // std atomics, not the shim: handing out thread numbers is a placement hint, not
    // part of any protocol.
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    std::thread_local! {
        static INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    INDEX.with(|index| {
        let mut i = index.get();
        if i == usize::MAX {
            // Relaxed: only uniqueness matters, no data is published.
            i = NEXT.fetch_add(1, Ordering::Relaxed);
            index.set(i);
        }
        i
    })
}

/// See the non-loom `thread_index`.
#[cfg(loom)]
pub fn thread_index() -> usize {
    use std::cell::Cell;
    loom::lazy_static! {
        static ref NEXT: atomic::AtomicUsize = atomic::AtomicUsize::new(0);
    }
    loom::thread_local! {
        static INDEX: Cell<usize> = Cell::new(usize::MAX);
    }
    INDEX.with(|index| {
        let mut i = index.get();
        if i == usize::MAX {
            // Relaxed: only uniqueness matters, no data is published.
            i = NEXT.fetch_add(1, atomic::Ordering::Relaxed);
            index.set(i);
        }
        i
    })
}
