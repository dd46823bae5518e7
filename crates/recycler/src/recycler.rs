//! `Recycler<T>`: the pool, its hand-out and return paths.

use std::any::type_name;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};

use crossbeam::queue::ArrayQueue;

use heijunka_core::sync::Arc;
use heijunka_core::sync::atomic::{AtomicBool, Ordering};

use crate::checks::{self, Origin};
use crate::metrics::RecyclerMetrics;
use crate::returns::Return;
use crate::shared::SharedSlot;
use crate::stats::{self, Field, Tally};
use crate::{DEBUG_CHECKS, PutError, Recycle, Recycled, RecyclerBuilder, RecyclerStats};

/// A pool of reusable values: [`get`](Recycler::get) hands one out in a guard that
/// resets it and gives it back when dropped, also while unwinding from a panic.
///
/// Idle values live in each thread's small cache (up to
/// [`per_thread`](RecyclerBuilder::per_thread)) and then in a bounded shared store
/// (up to [`capacity`](RecyclerBuilder::capacity)), so at most `capacity + threads
/// × per_thread` are idle (see [`capacity`](RecyclerBuilder::capacity)); a value
/// returned when both are full is dropped and counted, never leaked. A `get` with nothing idle calls the
/// factory. Cloning a `Recycler` is cheap and shares the pool. It is `Send` and
/// `Sync` when `T` is both.
///
/// The recycler keeps each value in a box it allocates once, when the factory
/// makes the value: handing a value out and taking it back then moves one pointer,
/// and the reset works in place. Only the manual path pays for the box:
/// [`put`](Recycler::put) allocates one, [`detach`](Recycled::detach) frees it.
///
/// ```
/// # if heijunka_core::sync::IS_LOOM { return Ok(()); } // loom types work only inside a model
/// use heijunka_recycler::Recycler;
///
/// let buffers = Recycler::new(64, || Vec::<u8>::with_capacity(4096))?;
/// {
///     let mut buf = buffers.get();
///     buf.extend_from_slice(b"hello");
/// } // reset (cleared) and back in the pool
/// let buf = buffers.get();
/// assert!(buf.is_empty() && buf.capacity() >= 4096);
/// assert_eq!(buffers.stats().hits, 1);
/// # Ok::<(), heijunka_core::ConfigError>(())
/// ```
pub struct Recycler<T: Send + 'static> {
    pub(crate) inner: Arc<Inner<T>>,
}

/// Poisons a value, and says whether it is still exactly as poisoned.
pub(crate) type PoisonHooks<T> = (fn(&mut T), fn(&T) -> bool);

/// How values are reset, measured, identified and poisoned.
pub(crate) struct Hooks<T> {
    pub(crate) reset: Box<dyn Fn(&mut T) + Send + Sync>,
    pub(crate) capacity: Option<fn(&T) -> usize>,
    pub(crate) identity: fn(&T) -> Option<usize>,
    pub(crate) poison: Option<PoisonHooks<T>>,
}

pub(crate) struct Inner<T: Send + 'static> {
    pub(crate) id: u64,
    #[cfg(not(loom))]
    pub(crate) slot: crate::local::Slot,
    pub(crate) factory: Box<dyn Fn() -> T + Send + Sync>,
    pub(crate) hooks: Hooks<T>,
    /// Values are kept boxed: moving one in and out of a cache is a pointer move,
    /// and the reset works in place.
    pub(crate) shared: ArrayQueue<Box<T>>,
    /// Empty shared-handle allocations, reused by `into_shared`.
    pub(crate) parked: ArrayQueue<Arc<SharedSlot<T>>>,
    pub(crate) per_thread: usize,
    pub(crate) max_value_capacity: Option<usize>,
    /// Counts from threads that cannot reach their cache (and, under loom, all).
    pub(crate) fallback: Tally,
    #[cfg(not(loom))]
    pub(crate) threads: heijunka_core::sync::Mutex<crate::local::Threads>,
    /// Set when a returned value is dropped for want of room; cleared once the
    /// shared store drains below half. Only for the `tracing` event.
    pub(crate) overflowing: AtomicBool,
    pub(crate) metrics: RecyclerMetrics,
}

impl<T: Recycle + Send + 'static> Recycler<T> {
    /// A recycler keeping up to `capacity` idle values in its shared store, making
    /// new ones with `factory` and resetting returned ones with [`Recycle::reset`].
    ///
    /// Fails if `capacity` is zero or above [`MAX_CAPACITY`](crate::MAX_CAPACITY).
    /// See [`builder`](Recycler::builder) for the other settings.
    pub fn new(
        capacity: usize,
        factory: impl Fn() -> T + Send + Sync + 'static,
    ) -> Result<Self, heijunka_core::ConfigError> {
        Self::builder(factory).capacity(capacity).build()
    }

    /// A builder for a recycler of a [`Recycle`] type.
    pub fn builder(factory: impl Fn() -> T + Send + Sync + 'static) -> RecyclerBuilder<T> {
        RecyclerBuilder::new(
            Box::new(factory),
            Box::new(T::reset),
            Some(T::capacity),
            T::identity,
        )
    }
}

impl<T: Send + 'static> Recycler<T> {
    /// A builder for a recycler of any type, reset by `reset` (the closure form for
    /// types you do not own and cannot implement [`Recycle`] for).
    ///
    /// ```
    /// # if heijunka_core::sync::IS_LOOM { return Ok(()); } // loom types work only inside a model
    /// use heijunka_recycler::Recycler;
    /// use std::io::Cursor;
    ///
    /// let cursors = Recycler::with_reset(
    ///     || Cursor::new(Vec::<u8>::with_capacity(512)),
    ///     |c| {
    ///         c.get_mut().clear();
    ///         c.set_position(0);
    ///     },
    /// )
    /// .capacity(16)
    /// .build()?;
    /// let c = cursors.get();
    /// assert_eq!(c.position(), 0);
    /// # Ok::<(), heijunka_core::ConfigError>(())
    /// ```
    pub fn with_reset(
        factory: impl Fn() -> T + Send + Sync + 'static,
        reset: impl Fn(&mut T) + Send + Sync + 'static,
    ) -> RecyclerBuilder<T> {
        RecyclerBuilder::new(Box::new(factory), Box::new(reset), None, |_| None)
    }

    pub(crate) fn from_parts(
        factory: Box<dyn Fn() -> T + Send + Sync>,
        hooks: Hooks<T>,
        capacity: usize,
        per_thread: usize,
        max_value_capacity: Option<usize>,
        metrics: RecyclerMetrics,
    ) -> Self {
        // std atomic, not the shim: a process-wide name for reports, no protocol.
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        // Relaxed: only uniqueness matters.
        let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(
            recycler.id = id,
            recycler.value = type_name::<T>(),
            recycler.capacity = capacity,
            recycler.per_thread = per_thread,
            "recycler created"
        );
        Self {
            inner: Arc::new(Inner {
                id,
                #[cfg(not(loom))]
                slot: crate::local::Slot::take(),
                factory,
                hooks,
                shared: ArrayQueue::new(capacity),
                parked: ArrayQueue::new(capacity.min(256)),
                per_thread,
                max_value_capacity,
                fallback: Tally::default(),
                #[cfg(not(loom))]
                threads: heijunka_core::sync::Mutex::new(crate::local::Threads::default()),
                overflowing: AtomicBool::new(false),
                metrics,
            }),
        }
    }

    /// Hands out an idle value, or a new one from the factory, in a guard that
    /// resets it and gives it back when dropped.
    ///
    /// A factory that panics panics here; the recycler stays usable. With debug
    /// checks on, panics if the idle value was written to since it was given back
    /// (see [`Poison`](crate::Poison)).
    #[cfg_attr(any(debug_assertions, feature = "debug-checks"), track_caller)]
    #[inline(always)]
    pub fn get(&self) -> Recycled<'_, T> {
        let origin = Origin::caller();
        let value = match self.take_idle() {
            Some(v) => v,
            None => self.create(),
        };
        Recycled::new(self, value, origin)
    }

    /// Gives back a value that was [`detach`](Recycled::detach)ed (or made
    /// elsewhere): it is reset and kept like a returned guard's value (in a new
    /// box: one allocation).
    ///
    /// With debug checks on ([`DEBUG_CHECKS`]), a value found already idle in a
    /// recycler ([`Misuse::ReturnedTwice`](crate::Misuse::ReturnedTwice): its
    /// [`identity`](crate::Recycle::identity) names the allocation of an idle
    /// value) is not kept: it is dropped, counted as `evicted` and logged at
    /// `error`, as a guard's value is. In safe code that finding means a wrong
    /// `identity` or a handle whose clones share one buffer (an `Arc`), and the
    /// drop is sound; only unsafe code that rebuilt one value from a raw pointer
    /// twice makes it a double free, and that code's duplication is the bug. Use
    /// [`try_put`](Recycler::try_put) to get the refused value back instead.
    ///
    /// A value detached from another recycler is accepted: the checks cannot tell
    /// it from a new value the allocator placed at the address of a detached value
    /// since dropped.
    #[cfg_attr(any(debug_assertions, feature = "debug-checks"), track_caller)]
    pub fn put(&self, value: T) {
        if let Err(e) = self.return_value(Box::new(value), Self::put_return()) {
            crate::guard::drop_misreturned(self, e, true);
        }
    }

    /// Like [`put`](Recycler::put), but hands a refused value back with the
    /// reason instead of dropping it. Refusals happen only with debug checks on.
    ///
    /// ```
    /// # if heijunka_core::sync::IS_LOOM { return Ok(()); } // loom types work only inside a model
    /// use heijunka_recycler::{Misuse, Recycler, DEBUG_CHECKS};
    /// use std::sync::{Arc, Mutex};
    ///
    /// // Handles whose clones share one buffer: the same value, twice, in safe code.
    /// let a = Recycler::with_reset(
    ///     || Arc::new(Mutex::new(Vec::<u8>::new())),
    ///     |b| b.lock().unwrap().clear(),
    /// )
    /// .identity_of(|b| Some(Arc::as_ptr(b).addr()))
    /// .build()?;
    /// let v = a.get().detach();
    /// let copy = Arc::clone(&v);
    /// a.put(v);
    /// match a.try_put(copy) {
    ///     Err(e) => {
    ///         assert!(DEBUG_CHECKS);
    ///         assert!(matches!(e.misuse(), Misuse::ReturnedTwice { .. }));
    ///         drop(e.into_inner()); // a clone of a handle: safe to drop
    ///     }
    ///     Ok(()) => assert!(!DEBUG_CHECKS),
    /// }
    /// # Ok::<(), heijunka_core::ConfigError>(())
    /// ```
    #[cfg_attr(any(debug_assertions, feature = "debug-checks"), track_caller)]
    pub fn try_put(&self, value: T) -> Result<(), PutError<T>> {
        self.return_value(Box::new(value), Self::put_return())
    }

    #[cfg_attr(any(debug_assertions, feature = "debug-checks"), track_caller)]
    fn put_return() -> Return {
        Return {
            origin: Origin::caller(),
            put: true,
        }
    }

    /// A snapshot of the counters, summed over every thread.
    pub fn stats(&self) -> RecyclerStats {
        let mut totals = stats::zero();
        self.inner.fallback.add_to(&mut totals);
        #[cfg(not(loom))]
        {
            let threads = self.inner.threads_lock();
            for (t, r) in totals.iter_mut().zip(threads.retired) {
                *t = t.wrapping_add(r);
            }
            for tally in &threads.live {
                tally.add_to(&mut totals);
            }
        }
        stats::snapshot(
            &totals,
            self.inner.shared.len(),
            self.inner.shared.capacity(),
            self.inner.per_thread,
        )
    }

    /// Drops the idle values of the shared store and of this thread's cache
    /// (counted as `evicted`) and returns how many; other threads' caches keep
    /// theirs. For memory pressure: the next `get`s call the factory again.
    pub fn clear(&self) -> usize {
        #[cfg(not(loom))]
        crate::local::release(&self.inner);
        let mut dropped = 0;
        while let Some(value) = self.inner.shared.pop() {
            self.forget_identity(&value);
            drop(value);
            dropped += 1;
        }
        for _ in 0..dropped {
            self.count(&[Field::Evicted]);
        }
        tracing::debug!(
            recycler.id = self.inner.id,
            recycler.value = type_name::<T>(),
            dropped,
            "recycler cleared"
        );
        dropped
    }

    /// Drops up to `n` idle values (counted as `evicted`) and returns how many:
    /// from the shared store first, then from this thread's cache; other threads'
    /// caches keep theirs. For memory pressure with a lighter hand than
    /// [`clear`](Self::clear): the recycler keeps the rest to serve the next
    /// `get`s without the factory.
    ///
    /// The recycler cannot depend on `heijunka-memory` (both sit in layer 1); wire
    /// them where both are in scope, with a level callback (see the `heijunka`
    /// facade's docs):
    ///
    /// ```text
    /// monitor.on_level(PressureLevel::Elevated, move |_| { pool.trim(pool.stats().idle as usize / 2); })?;
    /// monitor.on_level(PressureLevel::Critical, move |_| { pool.clear(); })?;
    /// ```
    ///
    /// ```
    /// # if heijunka_core::sync::IS_LOOM { return Ok(()); } // loom types work only inside a model
    /// use heijunka_recycler::Recycler;
    ///
    /// let pool = Recycler::builder(|| Vec::<u8>::with_capacity(1024)).per_thread(0).build()?;
    /// let held: Vec<_> = (0..5).map(|_| pool.get()).collect();
    /// drop(held); // five idle values
    /// assert_eq!(pool.trim(2), 2);
    /// assert_eq!(pool.stats().idle, 3);
    /// assert_eq!(pool.trim(100), 3);
    /// assert_eq!(pool.trim(1), 0);
    /// # Ok::<(), heijunka_core::ConfigError>(())
    /// ```
    pub fn trim(&self, n: usize) -> usize {
        let mut dropped = 0;
        while dropped < n {
            let Some(value) = self.inner.pop_shared() else {
                break;
            };
            self.forget_identity(&value);
            drop(value);
            dropped += 1;
        }
        #[cfg(not(loom))]
        if dropped < n {
            let want = n - dropped;
            // Taken out under the cache's borrow, dropped after it (a value's
            // `Drop` is user code, which may use a recycler).
            let taken = self
                .inner
                .with_local(|cache| {
                    let keep = cache.items.len().saturating_sub(want);
                    let taken = cache.items.split_off(keep);
                    cache.note_idle();
                    taken
                })
                .unwrap_or_default();
            for value in taken {
                self.forget_identity(&value);
                drop(value);
                dropped += 1;
            }
        }
        for _ in 0..dropped {
            self.count(&[Field::Evicted]);
        }
        if dropped > 0 {
            tracing::debug!(
                recycler.id = self.inner.id,
                recycler.value = type_name::<T>(),
                dropped,
                "recycler trimmed"
            );
        }
        dropped
    }

    /// A number unique to this recycler in the process, as misuse reports name it
    /// (`recycler #3`).
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// An idle value, checked (debug) and counted as a hit, or `None`.
    #[inline(always)]
    fn take_idle(&self) -> Option<Box<T>> {
        let inner = &self.inner;
        #[cfg(not(loom))]
        let found = inner.with_local(|cache| {
            let mut shared = false;
            let value = match cache.items.pop() {
                Some(v) => {
                    cache.note_idle();
                    Some(v)
                }
                None => {
                    shared = true;
                    inner.pop_shared()
                }
            };
            if !DEBUG_CHECKS && value.is_some() {
                cache.tally.bump_owned(Field::Hits);
                // Published at once when the get touched the shared store.
                cache.pending.hit(shared);
            }
            (value, shared)
        });
        #[cfg(loom)]
        let found: Option<(Option<Box<T>>, bool)> = None;
        let (value, shared) = match found {
            Some((v, shared)) => (v?, shared),
            None => {
                let v = inner.pop_shared()?;
                if !DEBUG_CHECKS {
                    inner.fallback.bump_shared(Field::Hits);
                    inner.metrics.hits.increment(1);
                }
                (v, true)
            }
        };
        if DEBUG_CHECKS {
            return self.check_out(value, shared);
        }
        Some(value)
    }

    /// Debug checks on a value leaving the pool: forget its record, verify its
    /// poison, reset it again.
    fn check_out(&self, mut value: Box<T>, shared: bool) -> Option<Box<T>> {
        self.forget_identity(&value);
        if let Some((_, is_poisoned)) = self.inner.hooks.poison {
            if !is_poisoned(&value) {
                self.count(&[Field::Evicted]);
                drop(value);
                panic!(
                    "heijunka-recycler: a value idle in recycler #{} ({}) was written to after it was given back; something kept a reference past its return",
                    self.inner.id,
                    type_name::<T>()
                );
            }
            if catch_unwind(AssertUnwindSafe(|| (self.inner.hooks.reset)(&mut value))).is_err() {
                self.reset_panicked(value, &[Field::ResetPanics]);
                return None;
            }
        }
        self.count_hit(shared);
        Some(value)
    }

    /// Counts a hit (debug checks' path), published as `take_idle` does.
    fn count_hit(&self, shared: bool) {
        #[cfg(not(loom))]
        let done = self
            .inner
            .with_local(|cache| {
                cache.tally.bump_owned(Field::Hits);
                cache.pending.hit(shared);
            })
            .is_some();
        #[cfg(loom)]
        let done = {
            let _ = shared;
            false
        };
        if !done {
            self.inner.fallback.bump_shared(Field::Hits);
            self.inner.metrics.hits.increment(1);
        }
    }

    #[cold]
    fn create(&self) -> Box<T> {
        let value = Box::new((self.inner.factory)());
        self.count(&[Field::Misses]);
        value
    }

    /// Counts `fields` on this thread's tally, or the shared fallback.
    pub(crate) fn count(&self, fields: &[Field]) {
        #[cfg(not(loom))]
        let done = self
            .inner
            .with_local(|cache| {
                for &f in fields {
                    cache.tally.bump_owned(f);
                }
            })
            .is_some();
        #[cfg(loom)]
        let done = false;
        if !done {
            for &f in fields {
                self.inner.fallback.bump_shared(f);
            }
        }
        self.inner.metrics.emit(fields);
    }

    pub(crate) fn count_detach(&self) {
        self.count(&[Field::Detaches]);
    }

    pub(crate) fn forget_identity(&self, value: &T) {
        if DEBUG_CHECKS && let Some(address) = (self.inner.hooks.identity)(value) {
            checks::forget(address);
        }
    }

    pub(crate) fn identity(&self, value: &T) -> Option<usize> {
        (self.inner.hooks.identity)(value)
    }
}

impl<T: Send + 'static> Inner<T> {
    /// Pops the shared store, noting when it has drained below half after
    /// overflowing.
    #[inline]
    fn pop_shared(&self) -> Option<Box<T>> {
        let value = self.shared.pop()?;
        // Relaxed: a logging flag, pairs with nothing.
        if self.overflowing.load(Ordering::Relaxed)
            && self.shared.len() < self.shared.capacity() / 2
        {
            self.overflowing.store(false, Ordering::Relaxed);
        }
        Some(value)
    }
}

impl<T: Send + 'static> Drop for Inner<T> {
    fn drop(&mut self) {
        if DEBUG_CHECKS {
            while let Some(value) = self.shared.pop() {
                if let Some(address) = (self.hooks.identity)(&value) {
                    checks::forget(address);
                }
            }
        }
    }
}

/// A panic in a factory, a reset or a value's `Drop` leaves the recycler
/// consistent (resets run under `catch_unwind`; no lock or borrow is held across
/// user code), so it may be used across `catch_unwind`.
impl<T: Send + 'static> std::panic::RefUnwindSafe for Recycler<T> {}

/// See the `RefUnwindSafe` impl.
impl<T: Send + 'static> std::panic::UnwindSafe for Recycler<T> {}

impl<T: Send + 'static> Clone for Recycler<T> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<T: Send + 'static> fmt::Debug for Recycler<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recycler")
            .field("id", &self.inner.id)
            .field("value", &type_name::<T>())
            .field("stats", &self.stats())
            .finish()
    }
}
