//! `Recycled<T>`: the guard `get()` returns.

use std::fmt;
use std::ops::{Deref, DerefMut};

use crate::checks::{self, Origin};
use crate::returns::Return;
use crate::{DEBUG_CHECKS, Misuse, Recycler, Shared};

/// A value on loan from a [`Recycler`]: dereferences to the value, and resets it and
/// gives it back when dropped, also while unwinding from a panic.
///
/// Two ways out of the recycler's care: [`into_shared`](Recycled::into_shared) for
/// a cloneable handle that gives the value back when its last clone drops, and
/// [`detach`](Recycled::detach) to keep the value for good (or until
/// [`Recycler::put`] gives it back).
///
/// ```
/// # if heijunka_core::sync::IS_LOOM { return Ok(()); } // loom types work only inside a model
/// use heijunka_recycler::Recycler;
///
/// let pool = Recycler::new(4, || String::with_capacity(64))?;
/// let result = std::panic::catch_unwind(|| {
///     let mut s = pool.get();
///     s.push_str("half-written");
///     panic!("handler failed");
/// });
/// assert!(result.is_err());
/// // The guard gave the string back while unwinding, reset.
/// assert_eq!(pool.stats().returns, 1);
/// assert!(pool.get().is_empty());
/// # Ok::<(), heijunka_core::ConfigError>(())
/// ```
#[must_use = "dropping the guard gives the value straight back"]
pub struct Recycled<'a, T: Send + 'static> {
    /// `Some` until the guard is dropped, detached or shared.
    value: Option<Box<T>>,
    recycler: &'a Recycler<T>,
    origin: Origin,
}

impl<'a, T: Send + 'static> Recycled<'a, T> {
    pub(crate) fn new(recycler: &'a Recycler<T>, value: Box<T>, origin: Origin) -> Self {
        Self {
            value: Some(value),
            recycler,
            origin,
        }
    }

    /// The recycler this value goes back to.
    pub fn recycler(&self) -> &'a Recycler<T> {
        self.recycler
    }

    /// Takes the value out of the recycler's care: it will not be reset or given
    /// back unless you [`put`](Recycler::put) it back (the box the recycler kept it
    /// in is freed). With debug checks on, the
    /// recycler remembers the value (by its [identity](crate::Recycle::identity)),
    /// so putting it into another recycler is refused.
    #[cfg_attr(any(debug_assertions, feature = "debug-checks"), track_caller)]
    pub fn detach(mut self) -> T {
        let at = Origin::caller();
        let value = *self.take();
        self.recycler.count_detach();
        if DEBUG_CHECKS && let Some(address) = self.recycler.identity(&value) {
            checks::detached(address, self.recycler.id(), at.location());
        }
        value
    }

    /// Turns the guard into a cloneable, `Send + Sync` handle that gives the value
    /// back when its last clone drops: one pooled value read by many threads.
    ///
    /// The handle's allocation is itself recycled, so a steady stream of shared
    /// values allocates nothing.
    pub fn into_shared(mut self) -> Shared<T>
    where
        T: Sync,
    {
        let value = self.take();
        Shared::new(self.recycler.clone(), value, self.origin)
    }

    fn take(&mut self) -> Box<T> {
        self.value
            .take()
            .expect("a guard holds its value until it is consumed")
    }
}

impl<T: Send + 'static> Deref for Recycled<'_, T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        self.value
            .as_deref()
            .expect("a guard holds its value until it is consumed")
    }
}

impl<T: Send + 'static> DerefMut for Recycled<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        self.value
            .as_deref_mut()
            .expect("a guard holds its value until it is consumed")
    }
}

impl<T: Send + 'static> Drop for Recycled<'_, T> {
    #[inline(always)]
    fn drop(&mut self) {
        if let Some(value) = self.value.take() {
            give_back(self.recycler, value, self.origin);
        }
    }
}

/// Gives a value back from a `Drop`: a guard's or a shared handle's last clone.
/// A value already idle (given back twice, only possible through unsafe code) is
/// leaked rather than dropped, and reported by a panic unless the thread is
/// already unwinding.
#[inline(always)]
pub(crate) fn give_back<T: Send + 'static>(recycler: &Recycler<T>, value: Box<T>, origin: Origin) {
    if !DEBUG_CHECKS && recycler.plain_returns() {
        recycler.return_plain(value);
        return;
    }
    give_back_checked(recycler, value, origin);
}

fn give_back_checked<T: Send + 'static>(recycler: &Recycler<T>, value: Box<T>, origin: Origin) {
    if let Err(e) = recycler.return_value(value, Return::guard(origin)) {
        let misuse = e.misuse();
        // A guard's return refuses only values already idle (`ReturnedTwice`):
        // they share memory the pool holds, so dropping one would free it twice.
        std::mem::forget(e.into_inner());
        if std::thread::panicking() {
            tracing::error!(%misuse, "heijunka-recycler: misuse found while unwinding");
        } else {
            debug_assert!(matches!(misuse, Misuse::ReturnedTwice { .. }));
            panic!("heijunka-recycler: {misuse}");
        }
    }
}

impl<T: Send + fmt::Debug + 'static> fmt::Debug for Recycled<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recycled")
            .field("value", &self.value)
            .field("recycler", &self.recycler.id())
            .finish()
    }
}
