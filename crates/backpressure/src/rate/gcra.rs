//! The generic cell rate algorithm: a token bucket without a refill timer, and
//! equally the leaky bucket in its meter form (the shaper form, which delays
//! instead of refusing, is [`LeakyBucket`](super::LeakyBucket)).

use std::fmt;
use std::time::Duration;

use heijunka_core::sync::CachePadded;
use heijunka_core::sync::atomic::{AtomicU64, Ordering};
use heijunka_core::{Clock, ConfigError, validate};

use super::{KeyedDecision, RateLimitError, RateLimitState, RateLimiter};

/// The GCRA arithmetic, shared by [`Gcra`] and the keyed limiter.
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

impl Params {
    /// The bucket as a TAT of `tat` stands at `now`: the units that would conform
    /// one after another right now, and the time until the bucket is full (TAT at
    /// or before `now`).
    ///
    /// `k` more units conform at `now` iff `max(tat, now) + k·T − now ≤ burst·T`,
    /// so the count is `⌊(burst·T − ahead) / T⌋` with `ahead = max(tat − now, 0)`.
    #[inline]
    pub(crate) fn state(&self, tat: u64, now: u64) -> RateLimitState {
        let ahead = tat.saturating_sub(now);
        let remaining = self.tolerance.saturating_sub(ahead) / self.interval;
        RateLimitState {
            limit: self.burst,
            // At most `burst`, since `ahead` is never negative.
            remaining: u32::try_from(remaining).unwrap_or(self.burst),
            reset_after: Duration::from_nanos(ahead),
        }
    }

    /// As [`check`](Self::check), also returning the bucket's state after the
    /// decision (after the admission, or unchanged by a refusal).
    #[inline]
    pub(crate) fn check_state(&self, state: &AtomicU64, now: u64, n: u32) -> KeyedDecision {
        // Relaxed: as in `check`.
        let mut tat = state.load(Ordering::Relaxed);
        loop {
            let new_tat = match self.decide(tat, now, n) {
                Ok(new_tat) => new_tat,
                Err(e) => {
                    return KeyedDecision {
                        result: Err(e),
                        state: self.state(tat, now),
                    };
                }
            };
            match state.compare_exchange_weak(tat, new_tat, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => {
                    return KeyedDecision {
                        result: Ok(()),
                        state: self.state(new_tat, now),
                    };
                }
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
/// It is also the leaky bucket as a meter: a bucket of `burst` units leaking
/// `rate` per second admits exactly what this admits (the GCRA is its "virtual
/// scheduling" form). For the leaky bucket that delays callers into an even stream
/// instead of refusing them, see [`LeakyBucket`](super::LeakyBucket).
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

/// Builds a [`Gcra`].
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
