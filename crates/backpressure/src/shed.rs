//! [`LoadShedder`]: many overload signals, one admit-or-reject decision.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use heijunka_core::{Criticality, PressureLevel, Rejection};
use serde::Serialize;

use crate::{
    AdaptiveLimit, BoundedQueue, ConcurrencyLimit, FixedWindow, Gcra, LeakyBucket, RateLimiter,
    SlidingLog, SlidingWindow,
};

/// One overload signal: says at once whether new work should be shed.
///
/// Implemented for [`BoundedQueue`] (rejects with [`Rejection::QueueFull`] while the
/// queue is at or above its reject mark), [`ConcurrencyLimit`] and
/// [`AdaptiveLimit`] (reject with [`Rejection::AtCapacity`] while no permit is
/// free; they do not take one), the rate limiters (reject with
/// [`Rejection::RateLimited`]; an admitted check **takes** a token, so put rate
/// limiters last in a [`LoadShedder`]), `Arc`s and references of signals, and any
/// closure through [`from_fn`] — memory pressure, a breaker, a flag.
///
/// ```
/// # if heijunka_core::sync::IS_LOOM { return Ok(()); } // loom types work only inside a model
/// use heijunka_backpressure::{ConcurrencyLimit, Signal};
/// use heijunka_core::Rejection;
///
/// let limit = ConcurrencyLimit::new(1)?;
/// assert!(limit.check().is_ok());
/// let _held = limit.try_acquire()?;
/// assert_eq!(limit.check(), Err(Rejection::AtCapacity { limit: 1 }));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait Signal: Send + Sync {
    /// `Ok(())` to admit, or the reason to shed.
    ///
    /// # Errors
    ///
    /// The [`Rejection`] this signal sheds with.
    fn check(&self) -> Result<(), Rejection>;

    /// `Ok(())` to admit work of `criticality`, or the reason to shed it:
    /// sheddable work first, critical work last. [`check`](Self::check) is the
    /// decision for [`Criticality::Default`].
    ///
    /// The default asks [`check`](Self::check) whatever the criticality. The
    /// graded signals shed earlier for sheddable work and later for critical
    /// work, after the seeds' degradation table:
    ///
    /// | signal | sheddable shed at | default shed at | critical shed at |
    /// | --- | --- | --- | --- |
    /// | [`BoundedQueue`] | its warn mark | its reject mark | full |
    /// | [`ConcurrencyLimit`], [`AdaptiveLimit`] | 80 % of the limit in use | every permit in use | every permit in use |
    /// | [`LoadShedder`] | as its signals | as its signals | as its signals |
    ///
    /// # Errors
    ///
    /// The [`Rejection`] this signal sheds `criticality` work with.
    #[inline]
    fn check_for(&self, criticality: Criticality) -> Result<(), Rejection> {
        let _ = criticality;
        self.check()
    }
}

impl<S: Signal + ?Sized> Signal for Arc<S> {
    #[inline]
    fn check(&self) -> Result<(), Rejection> {
        (**self).check()
    }

    #[inline]
    fn check_for(&self, criticality: Criticality) -> Result<(), Rejection> {
        (**self).check_for(criticality)
    }
}

impl<S: Signal + ?Sized> Signal for &S {
    #[inline]
    fn check(&self) -> Result<(), Rejection> {
        (**self).check()
    }

    #[inline]
    fn check_for(&self, criticality: Criticality) -> Result<(), Rejection> {
        (**self).check_for(criticality)
    }
}

impl<S: Signal + ?Sized> Signal for Box<S> {
    #[inline]
    fn check(&self) -> Result<(), Rejection> {
        (**self).check()
    }

    #[inline]
    fn check_for(&self, criticality: Criticality) -> Result<(), Rejection> {
        (**self).check_for(criticality)
    }
}

impl<T: Send> Signal for BoundedQueue<T> {
    #[inline]
    fn check(&self) -> Result<(), Rejection> {
        self.check_for(Criticality::Default)
    }

    /// Sheddable work is shed from the warn mark, default work from the reject
    /// mark, critical work only when the queue is full.
    #[inline]
    fn check_for(&self, criticality: Criticality) -> Result<(), Rejection> {
        let shed = match criticality {
            Criticality::Sheddable => self.pressure() >= PressureLevel::Elevated,
            Criticality::Default => self.pressure() == PressureLevel::Critical,
            Criticality::Critical => self.len() >= self.capacity(),
        };
        if shed {
            Err(Rejection::QueueFull {
                capacity: self.capacity(),
            })
        } else {
            Ok(())
        }
    }
}

/// Whether sheddable work should be shed with `in_use` of `limit` taken: from
/// 80 % (the seeds' warn level).
#[inline]
fn sheddable_over(in_use: u64, limit: u64) -> bool {
    in_use.saturating_mul(5) >= limit.saturating_mul(4)
}

impl Signal for ConcurrencyLimit {
    #[inline]
    fn check(&self) -> Result<(), Rejection> {
        self.check_for(Criticality::Default)
    }

    /// Sheddable work is shed once 80 % of the permits are in use; default and
    /// critical work when none is free.
    #[inline]
    fn check_for(&self, criticality: Criticality) -> Result<(), Rejection> {
        let limit = u64::from(self.limit());
        let available = u64::from(self.available_permits());
        let full = match criticality {
            Criticality::Sheddable => {
                available == 0 || sheddable_over(limit - available.min(limit), limit)
            }
            _ => available == 0,
        };
        if self.is_closed() {
            Err(Rejection::ShuttingDown)
        } else if full {
            Err(Rejection::AtCapacity { limit })
        } else {
            Ok(())
        }
    }
}

impl Signal for AdaptiveLimit {
    #[inline]
    fn check(&self) -> Result<(), Rejection> {
        self.check_for(Criticality::Default)
    }

    /// Sheddable work is shed once 80 % of the current limit is in flight;
    /// default and critical work when all of it is.
    #[inline]
    fn check_for(&self, criticality: Criticality) -> Result<(), Rejection> {
        let limit = self.limit();
        let in_flight = self.in_flight();
        let full = in_flight >= limit
            || (criticality == Criticality::Sheddable
                && sheddable_over(in_flight as u64, limit as u64));
        if self.is_closed() {
            Err(Rejection::ShuttingDown)
        } else if full {
            Err(Rejection::AtCapacity {
                limit: limit as u64,
            })
        } else {
            Ok(())
        }
    }
}

macro_rules! rate_signal {
    ($($t:ty),*) => {$(
        impl Signal for $t {
            #[inline]
            fn check(&self) -> Result<(), Rejection> {
                self.check_for(Criticality::Default)
            }

            /// Takes a unit as [`RateLimiter::check_n_for`] does (a GCRA keeps
            /// its critical reserve for critical work).
            #[inline]
            fn check_for(&self, criticality: Criticality) -> Result<(), Rejection> {
                RateLimiter::check_n_for(self, 1, criticality).map_err(|e| {
                    e.reason().unwrap_or(Rejection::RateLimited {
                        retry_after: std::time::Duration::ZERO,
                    })
                })
            }
        }
    )*};
}

rate_signal!(Gcra, FixedWindow, SlidingWindow, SlidingLog);

impl Signal for LeakyBucket {
    /// Lets the work leave now if the bucket would (see
    /// [`LeakyBucket::try_acquire`]): a signal never waits.
    #[inline]
    fn check(&self) -> Result<(), Rejection> {
        self.try_acquire().map_err(|e| {
            e.reason()
                .expect("a leaky bucket refuses only with a retry-after")
        })
    }
}

/// A [`Signal`] from a closure; see [`from_fn`].
pub struct FnSignal<F>(F);

impl<F> Signal for FnSignal<F>
where
    F: Fn() -> Result<(), Rejection> + Send + Sync,
{
    #[inline]
    fn check(&self) -> Result<(), Rejection> {
        (self.0)()
    }
}

impl<F> fmt::Debug for FnSignal<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnSignal")
    }
}

/// A [`Signal`] from a closure, for signals heijunka does not know: memory
/// pressure, a breaker, a maintenance flag.
///
/// ```
/// use heijunka_backpressure::{Signal, from_fn};
/// use heijunka_core::{PressureLevel, Rejection};
/// use std::sync::atomic::{AtomicU8, Ordering};
/// use std::sync::Arc;
///
/// let level = Arc::new(AtomicU8::new(0)); // set by a memory monitor
/// let l = Arc::clone(&level);
/// let memory = from_fn(move || match l.load(Ordering::Relaxed) {
///     2 => Err(Rejection::MemoryPressure { level: PressureLevel::Critical }),
///     _ => Ok(()),
/// });
/// assert!(memory.check().is_ok());
/// level.store(2, Ordering::Relaxed);
/// assert!(memory.check().is_err());
/// ```
pub fn from_fn<F>(f: F) -> FnSignal<F>
where
    F: Fn() -> Result<(), Rejection> + Send + Sync,
{
    FnSignal(f)
}

/// Combines [`Signal`]s into one decision: admit, or reject with the reason of the
/// first signal that fired (in the order they were added).
///
/// Admitting asks every signal once and touches nothing shared besides what the
/// signals read — no lock, no allocation, no counter. Rejections are counted.
///
/// ```
/// # if heijunka_core::sync::IS_LOOM { return Ok(()); } // loom types work only inside a model
/// use heijunka_backpressure::{BoundedQueue, ConcurrencyLimit, Gcra, LoadShedder, from_fn};
/// use heijunka_core::Rejection;
/// use std::sync::Arc;
///
/// let queue = Arc::new(BoundedQueue::<u32>::new(10)?);
/// let limit = ConcurrencyLimit::new(100)?;
/// let shedder = LoadShedder::builder()
///     .signal(Arc::clone(&queue))
///     .signal(limit.clone())
///     .signal(from_fn(|| Ok(()))) // e.g. memory pressure
///     .signal(Gcra::builder(1000.0).burst(100).build()?) // takes a token: last
///     .build();
///
/// assert!(shedder.check().is_ok());
/// for i in 0..9 {
///     queue.try_push(i).unwrap();
/// }
/// assert_eq!(shedder.check(), Err(Rejection::QueueFull { capacity: 10 }));
/// assert_eq!(shedder.stats().rejected, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct LoadShedder {
    signals: Box<[Box<dyn Signal>]>,
    rejected: AtomicU64,
    metrics: crate::metrics::ShedMetrics,
}

/// Builds a [`LoadShedder`]; see [`LoadShedder::builder`].
#[must_use = "a builder does nothing until `build()`"]
pub struct LoadShedderBuilder {
    signals: Vec<Box<dyn Signal>>,
    name: String,
}

impl fmt::Debug for LoadShedderBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadShedderBuilder")
            .field("signals", &self.signals.len())
            .field("name", &self.name)
            .finish()
    }
}

impl LoadShedderBuilder {
    /// Adds a signal, asked after those already added.
    pub fn signal(mut self, signal: impl Signal + 'static) -> Self {
        self.signals.push(Box::new(signal));
        self
    }

    /// The `name` label of the shedder's metrics (feature `metrics`, see
    /// `docs/metrics.md`). Default `"default"`.
    ///
    /// ```
    /// use heijunka_backpressure::LoadShedder;
    ///
    /// let shedder = LoadShedder::builder().name("front").build();
    /// # let _ = shedder;
    /// # Ok::<(), heijunka_core::ConfigError>(())
    /// ```
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Builds (nothing to validate: a shedder with no signal admits everything).
    pub fn build(self) -> LoadShedder {
        LoadShedder {
            signals: self.signals.into_boxed_slice(),
            rejected: AtomicU64::new(0),
            metrics: crate::metrics::ShedMetrics::new(&self.name),
        }
    }
}

/// Live numbers of a [`LoadShedder`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ShedStats {
    /// Signals asked per decision.
    pub signals: usize,
    /// Decisions that rejected.
    pub rejected: u64,
}

impl LoadShedder {
    /// A builder with no signal.
    pub fn builder() -> LoadShedderBuilder {
        LoadShedderBuilder {
            signals: Vec::new(),
            name: crate::metrics::DEFAULT_NAME.to_owned(),
        }
    }

    /// Admit (`Ok`), or the reason of the first signal that fired.
    ///
    /// # Errors
    ///
    /// The first signal's [`Rejection`].
    #[inline]
    pub fn check(&self) -> Result<(), Rejection> {
        self.check_for(Criticality::Default)
    }

    /// Admit work of `criticality` (`Ok`), or the reason of the first signal
    /// that sheds it (see [`Signal::check_for`]: sheddable work is shed first,
    /// critical work last).
    ///
    /// ```
    /// # if heijunka_core::sync::IS_LOOM { return Ok(()); } // loom types work only inside a model
    /// use heijunka_backpressure::{ConcurrencyLimit, LoadShedder};
    /// use heijunka_core::Criticality;
    ///
    /// let limit = ConcurrencyLimit::new(10)?;
    /// let shedder = LoadShedder::builder().signal(limit.clone()).build();
    /// let _held = limit.try_acquire_many(8)?; // 80 % in use
    /// assert!(shedder.check_for(Criticality::Sheddable).is_err());
    /// assert!(shedder.check_for(Criticality::Default).is_ok());
    /// assert!(shedder.check_for(Criticality::Critical).is_ok());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// The first signal's [`Rejection`].
    #[inline]
    pub fn check_for(&self, criticality: Criticality) -> Result<(), Rejection> {
        for s in self.signals.iter() {
            if let Err(reason) = s.check_for(criticality) {
                // Relaxed: a statistic.
                self.rejected.fetch_add(1, Ordering::Relaxed);
                self.metrics.shed.increment(1);
                return Err(reason);
            }
        }
        Ok(())
    }

    /// A snapshot of the live numbers.
    pub fn stats(&self) -> ShedStats {
        ShedStats {
            signals: self.signals.len(),
            // Relaxed: a statistic.
            rejected: self.rejected.load(Ordering::Relaxed),
        }
    }
}

impl Signal for LoadShedder {
    #[inline]
    fn check(&self) -> Result<(), Rejection> {
        LoadShedder::check(self)
    }

    #[inline]
    fn check_for(&self, criticality: Criticality) -> Result<(), Rejection> {
        LoadShedder::check_for(self, criticality)
    }
}

impl fmt::Debug for LoadShedder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadShedder")
            .field("signals", &self.signals.len())
            .finish_non_exhaustive()
    }
}
