//! `Recycled<T>`: the guard `get()` returns.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::checks::{self, Origin};
use crate::returns::Return;
use crate::stats::Field;
use crate::{DEBUG_CHECKS, Recycler, Shared};

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
    /// in is freed). With debug checks on, the recycler remembers the latest
    /// detached values (by their [identity](crate::Recycle::identity)), for its
    /// `debug` log when one is put into another recycler; the record is bounded and
    /// never refuses a value.
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
///
/// The guard owns its value, so a finding that it is already idle (given back
/// twice) means its [`identity`](crate::Recycle::identity) names another value's
/// allocation: a wrong `identity`, a safe impl the recycler must survive (or unsafe
/// code that duplicated a value, whose double free is that code's). The value is
/// dropped, counted as `evicted` and logged at `error`: never leaked, never a
/// panic from a `Drop`.
#[inline(always)]
pub(crate) fn give_back<T: Send + 'static>(recycler: &Recycler<T>, value: Box<T>, origin: Origin) {
    if !DEBUG_CHECKS && recycler.plain_returns() {
        recycler.return_plain(value);
        return;
    }
    give_back_checked(recycler, value, origin);
}

#[cold]
fn give_back_checked<T: Send + 'static>(recycler: &Recycler<T>, value: Box<T>, origin: Origin) {
    if let Err(e) = recycler.return_value(value, Return::guard(origin)) {
        drop_misreturned(recycler, e, false);
    }
}

/// Disposes of a value the debug checks refused as already idle
/// ([`Misuse::ReturnedTwice`](crate::Misuse::ReturnedTwice)), for a guard's drop
/// and for [`Recycler::put`].
///
/// In safe code the finding means the value's
/// [`identity`](crate::Recycle::identity) names an allocation it does not own (a
/// wrong `identity`, or a handle whose clones share one buffer, as `Arc`'s): the
/// value owns whatever it holds, so dropping it is sound and is the only way not to
/// leak it. Only unsafe code that duplicated a value (rebuilt it from a raw pointer
/// twice) makes the drop a double free, and that duplication is already undefined
/// behaviour of that code, not of the recycler: the same argument for both paths.
/// The drop (user code) is contained, counted as `evicted` (and as a return, and a
/// put for `put`), and logged at `error`; never a leak, never a panic.
#[cold]
pub(crate) fn drop_misreturned<T: Send + 'static>(
    recycler: &Recycler<T>,
    e: crate::PutError<T>,
    put: bool,
) {
    let misuse = e.misuse();
    if put {
        recycler.count(&[Field::Returns, Field::Puts, Field::Evicted]);
    } else {
        recycler.count(&[Field::Returns, Field::Evicted]);
    }
    // Its `Drop` is user code: a panic there is contained too.
    let value = e.into_inner();
    let _ = catch_unwind(AssertUnwindSafe(move || drop(value)));
    tracing::error!(
        recycler.id = recycler.id(),
        recycler.value = std::any::type_name::<T>(),
        %misuse,
        put,
        "heijunka-recycler: a returned value claims the identity of an idle one (is `Recycle::identity` wrong?); the value was dropped"
    );
}

impl<T: Send + fmt::Debug + 'static> fmt::Debug for Recycled<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recycled")
            .field("value", &self.value)
            .field("recycler", &self.recycler.id())
            .finish()
    }
}
