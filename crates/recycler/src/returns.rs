//! The return path: how a guard's, a shared handle's or a `put` value comes back,
//! is reset (and, with debug checks, checked and poisoned), and is stored or
//! dropped and counted.

use std::any::type_name;
use std::panic::{AssertUnwindSafe, catch_unwind};

use heijunka_core::sync::atomic::Ordering;

use crate::checks::{self, Origin};
use crate::stats::Field;
use crate::{DEBUG_CHECKS, PutError, Recycler};

/// How a value comes back.
#[derive(Clone, Copy)]
pub(crate) struct Return {
    pub(crate) origin: Origin,
    /// Through `put`: counted as a put, and a value detached from another
    /// recycler is refused.
    pub(crate) put: bool,
}

impl Return {
    pub(crate) fn guard(origin: Origin) -> Self {
        Self { origin, put: false }
    }
}

impl<T: Send + 'static> Recycler<T> {
    /// Whether a guard's return is just a reset and a store: no shrink rule to
    /// apply (and, checked by the caller, no debug checks).
    #[inline]
    pub(crate) fn plain_returns(&self) -> bool {
        self.inner.max_value_capacity.is_none()
    }

    /// The release-build return of a guard or shared handle without a shrink rule.
    #[inline(always)]
    pub(crate) fn return_plain(&self, mut value: Box<T>) {
        if catch_unwind(AssertUnwindSafe(|| (self.inner.hooks.reset)(&mut value))).is_err() {
            self.reset_panicked(value, &[Field::Returns, Field::ResetPanics]);
            return;
        }
        if let Some(rejected) = self.store(value, false) {
            self.drop_rejected(rejected);
        }
    }

    /// Drops a value neither this thread's cache nor the shared store had room for.
    #[cold]
    pub(crate) fn drop_rejected(&self, rejected: Box<T>) {
        self.inner.metrics.emit(&[Field::DroppedFull]);
        self.forget_identity(&rejected);
        // Relaxed: a logging flag, pairs with nothing.
        if !self.inner.overflowing.swap(true, Ordering::Relaxed) {
            tracing::debug!(
                recycler.id = self.inner.id,
                recycler.value = type_name::<T>(),
                recycler.capacity = self.inner.shared.capacity(),
                "recycler full: returned values are dropped"
            );
        }
        drop(rejected);
    }

    /// The return path of guards, shared handles and `put`.
    pub(crate) fn return_value(&self, mut value: Box<T>, how: Return) -> Result<(), PutError<T>> {
        let hooks = &self.inner.hooks;
        let tracked = if DEBUG_CHECKS {
            (hooks.identity)(&value)
        } else {
            None
        };
        if let Some(address) = tracked
            && let Err(misuse) =
                checks::returned(address, self.inner.id, how.origin.location(), how.put)
        {
            return Err(PutError::new(*value, misuse));
        }
        let returned: &[Field] = if how.put {
            &[Field::Returns, Field::Puts]
        } else {
            &[Field::Returns]
        };
        if catch_unwind(AssertUnwindSafe(|| (hooks.reset)(&mut value))).is_err() {
            if let Some(address) = tracked {
                checks::forget(address);
            }
            self.reset_panicked(value, &[returned, &[Field::ResetPanics]].concat());
            return Ok(());
        }
        if let (Some(max), Some(capacity)) = (self.inner.max_value_capacity, hooks.capacity)
            && capacity(&value) > max
        {
            if let Some(address) = tracked {
                checks::forget(address);
            }
            self.count(&[returned, &[Field::DroppedOversize]].concat());
            drop(value);
            return Ok(());
        }
        if DEBUG_CHECKS {
            if let Some((poison, _)) = hooks.poison
                && catch_unwind(AssertUnwindSafe(|| poison(&mut value))).is_err()
            {
                if let Some(address) = tracked {
                    checks::forget(address);
                }
                self.reset_panicked(value, &[returned, &[Field::ResetPanics]].concat());
                return Ok(());
            }
            if let Some(before) = tracked {
                let after = (hooks.identity)(&value);
                if after != Some(before) {
                    checks::moved(before, after, self.inner.id, how.origin.location());
                }
            }
        }
        if let Some(rejected) = self.store(value, how.put) {
            self.drop_rejected(rejected);
        }
        Ok(())
    }

    /// Keeps a reset value: this thread's cache, else the shared store. Returns the
    /// value when both are full (counted; the caller drops it).
    #[inline(always)]
    pub(crate) fn store(&self, value: Box<T>, put: bool) -> Option<Box<T>> {
        let inner = &self.inner;
        let mut value = Some(value);
        #[cfg(not(loom))]
        let rejected = inner.with_local(|cache| {
            let v = value.take().expect("the value is stored once");
            cache.tally.bump_owned(Field::Returns);
            if put {
                cache.tally.bump_owned(Field::Puts);
            }
            if cache.items.len() < inner.per_thread {
                cache.items.push(v);
                cache.note_idle();
                return None;
            }
            // To the shared store (an atomic operation): publish held-back hits.
            cache.pending.flush();
            let rejected = inner.shared.push(v).err();
            if rejected.is_some() {
                cache.tally.bump_owned(Field::DroppedFull);
            }
            rejected
        });
        #[cfg(loom)]
        let rejected: Option<Option<Box<T>>> = None;
        match rejected {
            Some(r) => r,
            None => {
                let v = value.take().expect("the value was not stored");
                inner.fallback.bump_shared(Field::Returns);
                if put {
                    inner.fallback.bump_shared(Field::Puts);
                }
                let rejected = inner.shared.push(v).err();
                if rejected.is_some() {
                    inner.fallback.bump_shared(Field::DroppedFull);
                }
                rejected
            }
        }
    }

    /// Drops a value whose reset (or poisoning) panicked, counting `fields`.
    #[cold]
    pub(crate) fn reset_panicked(&self, value: Box<T>, fields: &[Field]) {
        self.count(fields);
        // Its state is unknown: a panic from its own `Drop` is contained too.
        let _ = catch_unwind(AssertUnwindSafe(move || drop(value)));
        tracing::warn!(
            recycler.id = self.inner.id,
            recycler.value = type_name::<T>(),
            "recycler: resetting a value panicked; the value was dropped"
        );
    }
}
