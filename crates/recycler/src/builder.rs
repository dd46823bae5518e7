//! `RecyclerBuilder`: capacity, per-thread caches, the shrink rule and poisoning.

use std::fmt;

use heijunka_core::{ConfigError, validate};

use crate::metrics::RecyclerMetrics;
use crate::recycler::Hooks;
use crate::{Poison, Recycler};

/// The shared store's capacity when none is set.
pub const DEFAULT_CAPACITY: usize = 256;

/// Each thread's cache capacity when none is set (or the shared capacity, if that
/// is smaller). Eight covers the common get-use-return pattern and small bursts;
/// Go's `sync.Pool` keeps one private value per P plus a shared chain.
pub const DEFAULT_PER_THREAD: usize = 8;

/// The largest capacity (and per-thread capacity) a recycler accepts: the shared
/// store allocates its slots up front.
pub const MAX_CAPACITY: usize = 1 << 24;

/// Configures a [`Recycler`]; made by [`Recycler::builder`] (for a
/// [`Recycle`](crate::Recycle) type) or [`Recycler::with_reset`] (any type, with a
/// reset closure).
///
/// ```
/// # if heijunka_core::sync::IS_LOOM { return Ok(()); } // loom types work only inside a model
/// use heijunka_recycler::Recycler;
///
/// let buffers = Recycler::builder(|| Vec::<u8>::with_capacity(4096))
///     .capacity(1024)              // idle values in the shared store
///     .per_thread(16)              // idle values in each thread's cache
///     .max_value_capacity(64 * 1024) // a buffer that grew past 64 KiB is dropped
///     .poison()                    // debug builds: returned buffers read 0xDEADBEEF
///     .build()?;
///
/// let err = Recycler::builder(|| Vec::<u8>::new()).capacity(0).build().unwrap_err();
/// assert_eq!(err.to_string(), "capacity must be at least 1, got 0");
/// # Ok::<(), heijunka_core::ConfigError>(())
/// ```
#[must_use = "a builder does nothing until `build()`"]
pub struct RecyclerBuilder<T: Send + 'static> {
    factory: Box<dyn Fn() -> T + Send + Sync>,
    hooks: Hooks<T>,
    capacity: usize,
    per_thread: Option<usize>,
    max_value_capacity: Option<usize>,
    name: String,
}

impl<T: Send + 'static> RecyclerBuilder<T> {
    pub(crate) fn new(
        factory: Box<dyn Fn() -> T + Send + Sync>,
        reset: Box<dyn Fn(&mut T) + Send + Sync>,
        capacity_of: Option<fn(&T) -> usize>,
        identity: fn(&T) -> Option<usize>,
    ) -> Self {
        Self {
            factory,
            hooks: Hooks {
                reset,
                capacity: capacity_of,
                identity,
                poison: None,
            },
            capacity: DEFAULT_CAPACITY,
            per_thread: None,
            max_value_capacity: None,
            name: "default".into(),
        }
    }

    /// How many idle values the shared store keeps (default [`DEFAULT_CAPACITY`]):
    /// at least 1, at most [`MAX_CAPACITY`].
    ///
    /// **This is not the bound on idle values**: each thread that uses the
    /// recycler also keeps up to [`per_thread`](Self::per_thread) in its own cache,
    /// so the recycler holds at most `capacity + threads × per_thread` idle values,
    /// a bound that grows with the number of threads (with the defaults and 64
    /// threads: 256 + 64 × 8 = 768). Enforcing `capacity` across the caches would
    /// put a shared counter on every get and return, the contention the caches
    /// exist to avoid. For a hard bound of `capacity` idle values, set
    /// `per_thread(0)` (every get and return then goes to the shared store); to
    /// keep the caches, size `capacity` for the total you accept less `threads ×
    /// per_thread`. [`RecyclerStats::idle`](crate::RecyclerStats::idle) counts
    /// both; [`Recycler::clear`] empties the shared store and the calling
    /// thread's cache, and a thread's cache goes back to the shared store (or is
    /// dropped) when the thread exits.
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    /// How many idle values each thread keeps for itself (default
    /// [`DEFAULT_PER_THREAD`], or `capacity` if smaller); at most `capacity`.
    /// `0` sends every get and return to the shared store, and makes
    /// [`capacity`](Self::capacity) the bound on idle values; otherwise that bound
    /// is `capacity + threads × per_thread`.
    pub fn per_thread(mut self, per_thread: usize) -> Self {
        self.per_thread = Some(per_thread);
        self
    }

    /// The shrink rule: a returned value whose capacity (measured after its reset)
    /// exceeds `bound` is dropped instead of kept, and counted in
    /// `dropped_oversize`, so one huge request does not pin a huge buffer for ever.
    /// Needs a capacity measure: [`Recycle::capacity`](crate::Recycle::capacity),
    /// or [`capacity_of`](Self::capacity_of) for a recycler made
    /// [`with_reset`](Recycler::with_reset).
    pub fn max_value_capacity(mut self, bound: usize) -> Self {
        self.max_value_capacity = Some(bound);
        self
    }

    /// How to measure a value's capacity for the shrink rule.
    pub fn capacity_of(mut self, measure: fn(&T) -> usize) -> Self {
        self.hooks.capacity = Some(measure);
        self
    }

    /// How to name a value's allocation for the debug checks on
    /// [`put`](Recycler::put) (see [`Recycle::identity`](crate::Recycle::identity)).
    pub fn identity_of(mut self, identity: fn(&T) -> Option<usize>) -> Self {
        self.hooks.identity = identity;
        self
    }

    /// With debug checks on, [`Poison`] returned values, and check on `get` that
    /// nobody wrote to them while idle. Costs nothing when the checks are off.
    pub fn poison(self) -> Self
    where
        T: Poison,
    {
        self.poison_with(T::poison, T::is_poisoned)
    }

    /// Like [`poison`](Self::poison), with functions for a type that does not
    /// implement [`Poison`]: `poison` overwrites the value, `is_poisoned` says
    /// whether it still holds exactly what `poison` wrote.
    pub fn poison_with(mut self, poison: fn(&mut T), is_poisoned: fn(&T) -> bool) -> Self {
        self.hooks.poison = Some((poison, is_poisoned));
        self
    }

    /// The recycler's name: the `name` label of its metrics (feature `metrics`;
    /// see `docs/metrics.md`). Default `"default"`.
    ///
    /// ```
    /// use heijunka_recycler::Recycler;
    ///
    /// let buffers = Recycler::builder(|| Vec::<u8>::with_capacity(4096))
    ///     .name("buffers")
    ///     .build()?;
    /// # let _ = buffers;
    /// # Ok::<(), heijunka_core::ConfigError>(())
    /// ```
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Checks the settings and builds the recycler.
    ///
    /// Fails, naming the field and value, when `capacity` is 0 or above
    /// [`MAX_CAPACITY`], when `per_thread` exceeds `capacity`, when
    /// `max_value_capacity` is 0, or when it is set without a capacity measure.
    pub fn build(self) -> Result<Recycler<T>, ConfigError> {
        let capacity = validate::at_least("capacity", self.capacity, 1)?;
        validate::at_most("capacity", capacity, MAX_CAPACITY)?;
        let per_thread = match self.per_thread {
            Some(n) => {
                validate::ordered("per_thread", n, "capacity", capacity)?;
                n
            }
            None => DEFAULT_PER_THREAD.min(capacity),
        };
        if let Some(bound) = self.max_value_capacity {
            validate::at_least("max_value_capacity", bound, 1)?;
            if self.hooks.capacity.is_none() {
                return Err(ConfigError::new(
                    "max_value_capacity",
                    bound,
                    "needs a capacity measure (a `Recycle` type, or `capacity_of`)",
                ));
            }
        }
        Ok(Recycler::from_parts(
            self.factory,
            self.hooks,
            capacity,
            per_thread,
            self.max_value_capacity,
            RecyclerMetrics::new(&self.name),
        ))
    }
}

impl<T: Send + 'static> fmt::Debug for RecyclerBuilder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecyclerBuilder")
            .field("value", &std::any::type_name::<T>())
            .field("capacity", &self.capacity)
            .field("per_thread", &self.per_thread)
            .field("max_value_capacity", &self.max_value_capacity)
            .field("name", &self.name)
            .field("poison", &self.hooks.poison.is_some())
            .finish_non_exhaustive()
    }
}
