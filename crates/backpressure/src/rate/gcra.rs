//! The generic cell rate algorithm (a token bucket without a refill timer) and the
//! leaky bucket, which is the same algorithm seen as a meter.

use std::fmt;
use std::time::Duration;

use heijunka_core::sync::CachePadded;
use heijunka_core::sync::atomic::{AtomicU64, Ordering};
use heijunka_core::{Clock, ConfigError, validate};

use super::{RateLimitError, RateLimiter};

/// The GCRA arithmetic, shared by [`Gcra`], [`LeakyBucket`] and the keyed limiter.
///
/// State is the theoretical arrival time (TAT) in clock nanoseconds. `n` units
/// conform at `now` iff `max(tat, now) + n·T − now ≤ burst·T`; then the TAT becomes
/// `max(tat, now) + n·T`. A fresh bucket (TAT 0) admits `burst` at once.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Params {
    /// Nanoseconds per unit (`T`).
    pub(crate) interval: u64,
    /// Units admissible at once.
    pub(crate) burst: u32,
    /// `burst · T`.
    pub(crate) tolerance: u64,
}

impl Params {
    pub(crate) fn new(per_second: f64, burst: u32) -> Result<Self, ConfigError> {
        validate::positive("rate", per_second)?;
        validate::at_least("burst", burst, 1)?;
        let interval = (1e9 / per_second).round();
        if interval < 1.0 || interval >= u64::MAX as f64 {
            return Err(ConfigError::new(
                "rate",
                per_second,
                "must be between 1 per 584 years and 1e9 per second",
            ));
        }
        let interval = interval as u64;
        let tolerance = interval.checked_mul(u64::from(burst)).ok_or_else(|| {
            ConfigError::new("burst", burst, "times the interval overflows 584 years")
        })?;
        Ok(Self {
            interval,
            burst,
            tolerance,
        })
    }

    /// The new TAT if `n` units conform at `now`, or the error.
    #[inline]
    pub(crate) fn decide(&self, tat: u64, now: u64, n: u32) -> Result<u64, RateLimitError> {
        if n > self.burst {
            return Err(RateLimitError::InsufficientCapacity {
                requested: n,
                capacity: self.burst,
            });
        }
        let new_tat = tat.max(now).saturating_add(self.interval * u64::from(n));
        let allowed_at = now.saturating_add(self.tolerance);
        if new_tat <= allowed_at {
            Ok(new_tat)
        } else {
            Err(RateLimitError::RateLimited {
                retry_after: Duration::from_nanos(new_tat - allowed_at),
            })
        }
    }

    /// Applies the decision to an atomic TAT with a CAS loop (no lock).
    #[inline]
    pub(crate) fn check(&self, state: &AtomicU64, now: u64, n: u32) -> Result<(), RateLimitError> {
        // Relaxed everywhere: the TAT is the only shared state and each CAS is on
        // that one word; nothing else is published with it.
        let mut tat = state.load(Ordering::Relaxed);
        loop {
            let new_tat = self.decide(tat, now, n)?;
            match state.compare_exchange_weak(tat, new_tat, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Ok(()),
                Err(current) => tat = current,
            }
        }
    }
}

/// A GCRA rate limiter: `rate` units per second with bursts of up to `burst`.
///
/// The generic cell rate algorithm is a token bucket computed from one timestamp
/// instead of a refill timer: one atomic word, one compare-and-swap per check, no
/// lock, no allocation, no background task (the same algorithm as `governor`).
///
/// ```
/// use heijunka_backpressure::{Gcra, RateLimiter};
///
/// let limiter = Gcra::builder(100.0).burst(10).build()?;
/// assert!(limiter.check().is_ok());
/// # Ok::<(), heijunka_core::ConfigError>(())
/// ```
pub struct Gcra {
    tat: CachePadded<AtomicU64>,
    params: Params,
    clock: Clock,
}

/// Builds a [`Gcra`] or a [`LeakyBucket`].
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until `build()`"]
pub struct GcraBuilder {
    per_second: f64,
    burst: u32,
    clock: Clock,
}

impl GcraBuilder {
    /// Units admissible at once from a full bucket. Default 1 (no burst).
    pub fn burst(mut self, burst: u32) -> Self {
        self.burst = burst;
        self
    }

    /// The clock to read. Default: the system clock.
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for a rate that is not a finite number above zero (or is
    /// beyond 1e9 per second), or a burst of zero.
    pub fn build(self) -> Result<Gcra, ConfigError> {
        Ok(Gcra {
            tat: CachePadded::new(AtomicU64::new(0)),
            params: Params::new(self.per_second, self.burst)?,
            clock: self.clock,
        })
    }
}

impl Gcra {
    /// A builder for `per_second` units per second.
    pub fn builder(per_second: f64) -> GcraBuilder {
        GcraBuilder {
            per_second,
            burst: 1,
            clock: Clock::system(),
        }
    }

    /// The interval between units at the steady rate.
    pub fn interval(&self) -> Duration {
        Duration::from_nanos(self.params.interval)
    }

    /// Units admissible at once from a full bucket.
    pub fn burst(&self) -> u32 {
        self.params.burst
    }
}

impl RateLimiter for Gcra {
    #[inline]
    fn check_n(&self, n: u32) -> Result<(), RateLimitError> {
        self.params.check(&self.tat, self.clock.now().as_nanos(), n)
    }

    fn clock(&self) -> &Clock {
        &self.clock
    }
}

impl fmt::Debug for Gcra {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gcra")
            .field("interval", &self.interval())
            .field("burst", &self.params.burst)
            .finish_non_exhaustive()
    }
}

/// A leaky bucket: a bucket of `capacity` units that leaks at a constant `rate`
/// per second; a request of `n` units is admitted if it fits.
///
/// As a meter, the leaky bucket makes exactly the decisions of the GCRA with
/// `burst = capacity` (the GCRA is its "virtual scheduling" form), so this type
/// runs the same lock-free arithmetic. It exists for its vocabulary — capacity,
/// leak rate, and [`level`](LeakyBucket::level), the bucket's current fill.
///
/// ```
/// use heijunka_backpressure::{LeakyBucket, RateLimiter};
/// use heijunka_core::ManualClock;
/// use std::time::Duration;
///
/// let clock = ManualClock::new();
/// let bucket = LeakyBucket::new(4, 2.0, clock.clock())?; // holds 4, leaks 2/s
/// bucket.check_n(4)?;
/// assert_eq!(bucket.level(), 4.0);
/// clock.advance(Duration::from_secs(1));
/// assert_eq!(bucket.level(), 2.0);
/// assert!(bucket.check_n(3).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct LeakyBucket {
    inner: Gcra,
}

impl LeakyBucket {
    /// A bucket holding `capacity` units that leaks `per_second` units per second.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for a zero `capacity`, or a `leak_rate` that is not a
    /// finite number above zero.
    pub fn new(capacity: u32, per_second: f64, clock: Clock) -> Result<Self, ConfigError> {
        validate::at_least("capacity", capacity, 1)?;
        Ok(Self {
            inner: Gcra::builder(per_second)
                .burst(capacity)
                .clock(clock)
                .build()
                .map_err(|e| {
                    if e.field() == "rate" {
                        ConfigError::new("leak_rate", per_second, e.rule().to_string())
                    } else {
                        e
                    }
                })?,
        })
    }

    /// The bucket's fill now, in units (fractional while leaking).
    pub fn level(&self) -> f64 {
        let now = self.inner.clock.now().as_nanos();
        // Relaxed: a read of the one word of state.
        let tat = self.inner.tat.load(Ordering::Relaxed);
        tat.saturating_sub(now) as f64 / self.inner.params.interval as f64
    }

    /// The capacity.
    pub fn capacity(&self) -> u32 {
        self.inner.params.burst
    }
}

impl RateLimiter for LeakyBucket {
    #[inline]
    fn check_n(&self, n: u32) -> Result<(), RateLimitError> {
        self.inner.check_n(n)
    }

    fn clock(&self) -> &Clock {
        &self.inner.clock
    }
}

impl fmt::Debug for LeakyBucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeakyBucket")
            .field("capacity", &self.capacity())
            .field("level", &self.level())
            .finish_non_exhaustive()
    }
}
