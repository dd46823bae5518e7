//! [`Backoff`]: how long to wait before each retry.

use std::time::Duration;

use heijunka_core::rng::SplitMix64;
use heijunka_core::{ConfigError, validate};

/// How long to wait before each retry: constant, exponential with a cap, or one
/// of the jittered schedules from AWS's "Exponential Backoff And Jitter"
/// (Marc Brooker, 2015), which spread a crowd of retrying clients so they do not
/// come back in lockstep.
///
/// Retry `n` counts from 1 (the wait before the second attempt).
///
/// ```
/// use heijunka_core::rng::SplitMix64;
/// use heijunka_retry::Backoff;
/// use std::time::Duration;
///
/// let ms = Duration::from_millis;
/// let exp = Backoff::exponential(ms(100), ms(1000));
/// let rng = SplitMix64::new(1);
/// let waits: Vec<_> = (1..=5).map(|n| exp.delay(n, Duration::ZERO, &rng)).collect();
/// assert_eq!(waits, [ms(100), ms(200), ms(400), ms(800), ms(1000)]);
///
/// // Full jitter: uniformly between zero and the exponential wait.
/// let full = Backoff::full_jitter(ms(100), ms(1000));
/// assert!(full.delay(3, Duration::ZERO, &rng) <= ms(400));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backoff {
    /// Retry at once.
    None,
    /// The same wait before every retry.
    Constant(Duration),
    /// `base × 2^(n-1)`, at most `cap`.
    Exponential {
        /// The first wait.
        base: Duration,
        /// The longest wait.
        cap: Duration,
    },
    /// AWS's "full jitter": uniformly in `[0, min(cap, base × 2^(n-1))]`.
    FullJitter {
        /// The first wait's upper bound.
        base: Duration,
        /// The longest wait.
        cap: Duration,
    },
    /// AWS's "equal jitter": half the exponential wait, plus uniformly up to
    /// the other half (never less than half).
    EqualJitter {
        /// The first wait's upper bound.
        base: Duration,
        /// The longest wait.
        cap: Duration,
    },
    /// AWS's "decorrelated jitter": `min(cap, uniform[base, 3 × previous])`,
    /// the previous wait starting at `base`.
    DecorrelatedJitter {
        /// The shortest wait.
        base: Duration,
        /// The longest wait.
        cap: Duration,
    },
}

impl Backoff {
    /// The same wait before every retry.
    pub const fn constant(wait: Duration) -> Self {
        Backoff::Constant(wait)
    }

    /// `base × 2^(n-1)`, at most `cap`.
    pub const fn exponential(base: Duration, cap: Duration) -> Self {
        Backoff::Exponential { base, cap }
    }

    /// Uniformly in `[0, min(cap, base × 2^(n-1))]` (AWS's full jitter).
    pub const fn full_jitter(base: Duration, cap: Duration) -> Self {
        Backoff::FullJitter { base, cap }
    }

    /// Half the exponential wait plus up to the other half (AWS's equal jitter).
    pub const fn equal_jitter(base: Duration, cap: Duration) -> Self {
        Backoff::EqualJitter { base, cap }
    }

    /// `min(cap, uniform[base, 3 × previous])` (AWS's decorrelated jitter).
    pub const fn decorrelated_jitter(base: Duration, cap: Duration) -> Self {
        Backoff::DecorrelatedJitter { base, cap }
    }

    /// The wait before retry `n` (from 1), given the previous wait (for
    /// decorrelated jitter; `Duration::ZERO` before the first retry) and a
    /// random source.
    pub fn delay(&self, n: u32, previous: Duration, rng: &SplitMix64) -> Duration {
        match *self {
            Backoff::None => Duration::ZERO,
            Backoff::Constant(d) => d,
            Backoff::Exponential { base, cap } => exponential(base, cap, n),
            Backoff::FullJitter { base, cap } => {
                uniform(Duration::ZERO, exponential(base, cap, n), rng)
            }
            Backoff::EqualJitter { base, cap } => {
                let e = exponential(base, cap, n);
                let half = e / 2;
                half + uniform(Duration::ZERO, e - half, rng)
            }
            Backoff::DecorrelatedJitter { base, cap } => {
                let previous = if previous < base { base } else { previous };
                uniform(base, previous.saturating_mul(3), rng).min(cap)
            }
        }
    }

    /// The longest wait this schedule can produce.
    pub fn max_delay(&self) -> Duration {
        match *self {
            Backoff::None => Duration::ZERO,
            Backoff::Constant(d) => d,
            Backoff::Exponential { cap, .. }
            | Backoff::FullJitter { cap, .. }
            | Backoff::EqualJitter { cap, .. }
            | Backoff::DecorrelatedJitter { cap, .. } => cap,
        }
    }

    /// Checks the schedule: a base longer than zero and a cap not below it.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `backoff.base` or `backoff.cap`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match *self {
            Backoff::None | Backoff::Constant(_) => Ok(()),
            Backoff::Exponential { base, cap }
            | Backoff::FullJitter { base, cap }
            | Backoff::EqualJitter { base, cap }
            | Backoff::DecorrelatedJitter { base, cap } => {
                validate::non_zero_duration("backoff.base", base)?;
                validate::ordered("backoff.base", base, "backoff.cap", cap)
            }
        }
    }
}

/// `base × 2^(n-1)`, at most `cap` (no overflow for any `n`).
fn exponential(base: Duration, cap: Duration, n: u32) -> Duration {
    let shift = n.saturating_sub(1);
    let nanos = if shift >= 64 {
        u128::MAX
    } else {
        base.as_nanos().saturating_mul(1u128 << shift)
    };
    if nanos >= cap.as_nanos() {
        cap
    } else {
        // Below the cap, so it fits a Duration.
        Duration::new(
            (nanos / 1_000_000_000) as u64,
            (nanos % 1_000_000_000) as u32,
        )
    }
}

/// Uniformly in `[lo, hi]` (`lo` when `hi <= lo`), to the nanosecond.
fn uniform(lo: Duration, hi: Duration, rng: &SplitMix64) -> Duration {
    if hi <= lo {
        return lo;
    }
    let span = u64::try_from((hi - lo).as_nanos()).unwrap_or(u64::MAX);
    lo + Duration::from_nanos(rng.below(span.saturating_add(1)))
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn exponential_caps_without_overflow() {
        let b = Backoff::exponential(MS(1), MS(50));
        let rng = SplitMix64::new(0);
        assert_eq!(b.delay(1, Duration::ZERO, &rng), MS(1));
        assert_eq!(b.delay(6, Duration::ZERO, &rng), MS(32));
        assert_eq!(b.delay(7, Duration::ZERO, &rng), MS(50));
        for n in [31, 32, 33, 64, u32::MAX] {
            assert_eq!(b.delay(n, Duration::ZERO, &rng), MS(50), "n = {n}");
        }
        let huge = Backoff::exponential(Duration::from_secs(u64::MAX / 2), Duration::MAX);
        assert_eq!(huge.delay(40, Duration::ZERO, &rng), Duration::MAX);
    }

    #[test]
    fn jitters_stay_in_their_ranges() {
        let rng = SplitMix64::new(42);
        let full = Backoff::full_jitter(MS(10), MS(100));
        let equal = Backoff::equal_jitter(MS(10), MS(100));
        let dec = Backoff::decorrelated_jitter(MS(10), MS(100));
        let mut prev = Duration::ZERO;
        let mut sum = Duration::ZERO;
        for n in 1..2000 {
            let e = exponential(MS(10), MS(100), n);
            let f = full.delay(n, Duration::ZERO, &rng);
            assert!(f <= e);
            sum += f;
            let q = equal.delay(n, Duration::ZERO, &rng);
            assert!(q >= e / 2 && q <= e);
            let d = dec.delay(n, prev, &rng);
            assert!(d >= MS(10) && d <= MS(100) && d <= prev.max(MS(10)) * 3);
            prev = d;
        }
        // Full jitter's mean is half the cap once capped.
        let mean = sum / 2000;
        assert!(mean > MS(40) && mean < MS(60), "{mean:?}");
    }

    #[test]
    fn validation_names_the_field() {
        let e = Backoff::exponential(Duration::ZERO, MS(1))
            .validate()
            .unwrap_err();
        assert_eq!(e.field(), "backoff.base");
        let e = Backoff::full_jitter(MS(2), MS(1)).validate().unwrap_err();
        assert_eq!(e.field(), "backoff.base");
        assert!(Backoff::constant(Duration::ZERO).validate().is_ok());
    }
}
