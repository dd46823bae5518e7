//! Rate limiters behind one trait: GCRA (the token bucket, and the leaky bucket as a
//! meter), fixed window, sliding window (counter-interpolated and exact log), and a
//! keyed (per-client) GCRA; and the leaky bucket as a shaper, which delays callers
//! into an even stream.

mod gcra;
mod keyed;
mod leaky;
mod window;

use std::time::Duration;

use heijunka_core::{Clock, Criticality, Rejection};

pub use self::gcra::{Gcra, GcraBuilder};
pub use self::keyed::{
    DEFAULT_MAX_KEYS, EVICTION_PROBES, KeyedDecision, KeyedRateLimiter, KeyedRateLimiterBuilder,
    OverflowPolicy, RateLimitState,
};
pub use self::leaky::LeakyBucket;
pub use self::window::{FixedWindow, SlidingLog, SlidingWindow};

/// Why a rate limiter did not admit a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RateLimitError {
    /// Over the rate now; the same request conforms after `retry_after`.
    #[error("rate limited: retry after {retry_after:?}")]
    RateLimited {
        /// How long until the request would be admitted.
        retry_after: Duration,
    },
    /// More asked for at once than the limiter can ever admit at once.
    #[error("asked for {requested} at once, but at most {capacity} can ever be admitted at once")]
    InsufficientCapacity {
        /// What was asked for.
        requested: u32,
        /// The most the limiter admits at once (its burst, or its window limit).
        capacity: u32,
    },
    /// A keyed limiter holds its maximum number of keys, none of those it examined
    /// is idle, and its policy is [`OverflowPolicy::Reject`].
    #[error(
        "too many clients: the key budget of {max_keys} is exhausted; retry after {retry_after:?}"
    )]
    KeyBudgetExhausted {
        /// The key budget.
        max_keys: usize,
        /// When a held key is expected to be idle, making room (above zero).
        retry_after: Duration,
    },
    /// A waiting call with a timeout (such as
    /// [`LeakyBucket::acquire_timeout`]) was not let through within `after`; it
    /// took nothing and left no place behind.
    #[error("not let through within {after:?}")]
    TimedOut {
        /// The timeout.
        after: Duration,
    },
}

impl RateLimitError {
    /// The shared rejection reason, where there is one: [`Rejection::RateLimited`]
    /// with the retry-after (also for an exhausted key budget),
    /// [`Rejection::TimedOut`] for [`TimedOut`](Self::TimedOut); `None` for
    /// [`InsufficientCapacity`](Self::InsufficientCapacity), which waiting cannot
    /// fix.
    pub fn reason(&self) -> Option<Rejection> {
        match *self {
            Self::TimedOut { after } => Some(Rejection::TimedOut { after }),
            _ => self
                .retry_after()
                .map(|retry_after| Rejection::RateLimited { retry_after }),
        }
    }

    /// The wait before retrying: above zero whenever there is one; `None` where
    /// waiting cannot help ([`InsufficientCapacity`](Self::InsufficientCapacity))
    /// and where the limiter gave no estimate ([`TimedOut`](Self::TimedOut): the
    /// caller chose how long to wait).
    pub fn retry_after(&self) -> Option<Duration> {
        match *self {
            Self::RateLimited { retry_after } | Self::KeyBudgetExhausted { retry_after, .. } => {
                Some(retry_after)
            }
            Self::InsufficientCapacity { .. } | Self::TimedOut { .. } => None,
        }
    }
}

/// A rate limiter: decides at once whether `n` units may pass now.
///
/// Implemented by [`Gcra`] (token bucket, and leaky bucket as a meter),
/// [`FixedWindow`], [`SlidingWindow`] and [`SlidingLog`]. All read time from a
/// [`heijunka_core::Clock`], so tests drive them with a `ManualClock`.
///
/// ```
/// use heijunka_backpressure::{Gcra, RateLimiter};
/// use heijunka_core::ManualClock;
/// use std::time::Duration;
///
/// let clock = ManualClock::new();
/// // 10 per second, bursts of 2.
/// let limiter = Gcra::builder(10.0).burst(2).clock(clock.clock()).build()?;
/// assert!(limiter.check().is_ok());
/// assert!(limiter.check().is_ok());
/// let no = limiter.check().unwrap_err();
/// assert_eq!(no.retry_after(), Some(Duration::from_millis(100)));
/// clock.advance(Duration::from_millis(100));
/// assert!(limiter.check().is_ok());
/// # Ok::<(), heijunka_core::ConfigError>(())
/// ```
pub trait RateLimiter: Send + Sync {
    /// Admits `n` units now, or says how long until they would conform.
    ///
    /// # Errors
    ///
    /// [`RateLimitError::RateLimited`] with the retry-after, or
    /// [`RateLimitError::InsufficientCapacity`] if `n` can never pass at once.
    fn check_n(&self, n: u32) -> Result<(), RateLimitError>;

    /// Admits one unit now.
    ///
    /// # Errors
    ///
    /// As [`check_n`](Self::check_n).
    #[inline]
    fn check(&self) -> Result<(), RateLimitError> {
        self.check_n(1)
    }

    /// Admits `n` units now for work of `criticality`, or says how long until
    /// they would conform. The default ignores the criticality; a [`Gcra`] with
    /// a [`critical_reserve`](GcraBuilder::critical_reserve) keeps part of its
    /// burst for critical work.
    ///
    /// # Errors
    ///
    /// As [`check_n`](Self::check_n).
    #[inline]
    fn check_n_for(&self, n: u32, criticality: Criticality) -> Result<(), RateLimitError> {
        let _ = criticality;
        self.check_n(n)
    }

    /// The clock the limiter reads.
    fn clock(&self) -> &Clock;
}

/// Waits until `limiter` admits `n` units, sleeping (tokio's timer) for each
/// retry-after it returns.
///
/// With a `ManualClock`, the test advances the manual clock and tokio's paused
/// clock together.
///
/// # Errors
///
/// [`RateLimitError::InsufficientCapacity`] at once if `n` can never pass; any
/// refusal other than [`RateLimitError::RateLimited`] (which it waits out), as it
/// comes.
///
/// # Cancel safety
///
/// Cancel safe. Units are taken only by the `check_n` that admits them, in the
/// same poll that returns `Ok`; a future dropped while it sleeps has taken
/// nothing, and leaves only a tokio timer that is dropped with it. Nothing is
/// queued, so it has no place in line to lose either: a later call starts afresh.
pub async fn until_ready<L: RateLimiter + ?Sized>(
    limiter: &L,
    n: u32,
) -> Result<(), RateLimitError> {
    loop {
        match limiter.check_n(n) {
            Ok(()) => return Ok(()),
            Err(RateLimitError::RateLimited { retry_after }) => {
                // Limiters never return a zero wait; the floor keeps a foreign
                // implementation that does from spinning.
                tokio::time::sleep(retry_after.max(Duration::from_nanos(1))).await;
            }
            Err(other) => return Err(other),
        }
    }
}

/// A duration of `nanos` nanoseconds, exactly (a `Duration` holds more than
/// `u64::MAX` nanoseconds, so no clamping to a sentinel is needed).
pub(crate) fn duration_from_nanos(nanos: u128) -> Duration {
    const PER_SEC: u128 = 1_000_000_000;
    let secs = u64::try_from(nanos / PER_SEC).unwrap_or(u64::MAX);
    // Below 1e9, so it fits a u32.
    Duration::new(secs, (nanos % PER_SEC) as u32)
}

/// Nanoseconds in a duration, saturating.
pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
