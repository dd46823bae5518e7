//! The errors of acquiring permits, shared by [`ConcurrencyLimit`] and
//! [`AdaptiveLimit`]: one type per kind of refusal, named as tokio names them.
//!
//! - [`TryAcquireError`]: a `try_acquire*` call that never waits was refused.
//! - [`AcquireError`]: a waiting `acquire*` call was refused (the limit is closed,
//!   or the number of permits asked for can never be granted).
//! - [`AcquireTimeoutError`]: an `acquire*_timeout` call gave up, or was refused as
//!   an [`AcquireError`].
//!
//! Each carries, through `reason()`, the shared [`Rejection`] a load shedder or a
//! tower layer reports; the two bad-input cases (`n` of 0, `n` above the limit)
//! have no rejection reason: they are the caller's bug, not load.
//!
//! [`ConcurrencyLimit`]: crate::ConcurrencyLimit
//! [`AdaptiveLimit`]: crate::AdaptiveLimit

use std::time::Duration;

use heijunka_core::Rejection;

/// Why a `try_acquire*` call (which never waits) was refused.
///
/// ```
/// use heijunka_backpressure::{ConcurrencyLimit, TryAcquireError};
///
/// let limit = ConcurrencyLimit::new(1)?;
/// let _held = limit.try_acquire()?;
/// assert_eq!(limit.try_acquire().unwrap_err(), TryAcquireError::AtCapacity { limit: 1 });
/// assert_eq!(
///     limit.try_acquire_many(0).unwrap_err().to_string(),
///     "n must be at least 1, got 0"
/// );
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TryAcquireError {
    /// Every permit is taken now (or, for a weighted request, not enough are free).
    #[error("no permit free: the limit of {limit} is reached")]
    AtCapacity {
        /// The limit when the request was refused.
        limit: u32,
    },
    /// The limit was closed.
    #[error("the limit is closed")]
    Closed,
    /// Zero permits were asked for: a permit of weight 0 guards nothing.
    #[error("n must be at least 1, got 0")]
    ZeroPermits,
    /// More permits were asked for than the limit: they can never all be free.
    /// At a limit of 0 (a closed gate, where a request up to
    /// [`MAX_PERMITS`](crate::MAX_PERMITS) waits), a request above
    /// `MAX_PERMITS`, which no limit can reach.
    #[error("n must be at most the limit {limit}, got {n}: it can never be granted")]
    ExceedsLimit {
        /// The permits asked for.
        n: u32,
        /// The limit; [`MAX_PERMITS`](crate::MAX_PERMITS) for a request above it
        /// at a limit of 0.
        limit: u32,
    },
}

impl TryAcquireError {
    /// The shared rejection reason: [`Rejection::AtCapacity`] or
    /// [`Rejection::ShuttingDown`]; `None` for the bad-input cases.
    pub fn reason(&self) -> Option<Rejection> {
        match *self {
            Self::AtCapacity { limit } => Some(Rejection::AtCapacity {
                limit: u64::from(limit),
            }),
            Self::Closed => Some(Rejection::ShuttingDown),
            Self::ZeroPermits | Self::ExceedsLimit { .. } => None,
        }
    }
}

/// Why a waiting `acquire*` call was refused.
///
/// ```
/// use heijunka_backpressure::{AcquireError, ConcurrencyLimit};
///
/// # tokio::runtime::Builder::new_current_thread().build()?.block_on(async {
/// let limit = ConcurrencyLimit::new(4)?;
/// assert_eq!(
///     limit.acquire_many(5).await.unwrap_err(),
///     AcquireError::ExceedsLimit { n: 5, limit: 4 }
/// );
/// limit.close();
/// assert_eq!(limit.acquire().await.unwrap_err(), AcquireError::Closed);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AcquireError {
    /// The limit was closed, before or while waiting.
    #[error("the limit is closed")]
    Closed,
    /// Zero permits were asked for.
    #[error("n must be at least 1, got 0")]
    ZeroPermits,
    /// More permits were asked for than the limit (when asked, or after the limit
    /// shrank below them while waiting): they can never all be free. At a limit
    /// of 0 (a closed gate, where a request up to
    /// [`MAX_PERMITS`](crate::MAX_PERMITS) waits), a request above
    /// `MAX_PERMITS`, which no limit can reach.
    #[error("n must be at most the limit {limit}, got {n}: it can never be granted")]
    ExceedsLimit {
        /// The permits asked for.
        n: u32,
        /// The limit; [`MAX_PERMITS`](crate::MAX_PERMITS) for a request above it
        /// at a limit of 0.
        limit: u32,
    },
}

impl AcquireError {
    /// The shared rejection reason: [`Rejection::ShuttingDown`] once closed;
    /// `None` for the bad-input cases.
    pub fn reason(&self) -> Option<Rejection> {
        match self {
            Self::Closed => Some(Rejection::ShuttingDown),
            Self::ZeroPermits | Self::ExceedsLimit { .. } => None,
        }
    }
}

impl AcquireError {
    /// The waiting form's refusal for a `try_` refusal: `None` for
    /// [`TryAcquireError::AtCapacity`], which is no refusal for a call that may
    /// wait (it waits instead).
    pub(crate) fn from_try(e: TryAcquireError) -> Option<Self> {
        match e {
            TryAcquireError::AtCapacity { .. } => None,
            TryAcquireError::Closed => Some(Self::Closed),
            TryAcquireError::ZeroPermits => Some(Self::ZeroPermits),
            TryAcquireError::ExceedsLimit { n, limit } => Some(Self::ExceedsLimit { n, limit }),
        }
    }
}

impl From<AcquireError> for TryAcquireError {
    fn from(e: AcquireError) -> Self {
        match e {
            AcquireError::Closed => Self::Closed,
            AcquireError::ZeroPermits => Self::ZeroPermits,
            AcquireError::ExceedsLimit { n, limit } => Self::ExceedsLimit { n, limit },
        }
    }
}

/// Why an `acquire*_timeout` call gave up or was refused.
///
/// ```
/// use heijunka_backpressure::{AcquireTimeoutError, ConcurrencyLimit};
/// use heijunka_core::Rejection;
/// use std::time::Duration;
///
/// # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build()?.block_on(async {
/// let limit = ConcurrencyLimit::new(1)?;
/// let _held = limit.try_acquire()?;
/// let err = limit.acquire_timeout(Duration::from_millis(10)).await.unwrap_err();
/// assert_eq!(err, AcquireTimeoutError::TimedOut { after: Duration::from_millis(10) });
/// assert_eq!(err.reason(), Some(Rejection::TimedOut { after: Duration::from_millis(10) }));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AcquireTimeoutError {
    /// No permit was granted within `after`.
    #[error("no permit within {after:?}")]
    TimedOut {
        /// The timeout.
        after: Duration,
    },
    /// The limit was closed, before or while waiting.
    #[error("the limit is closed")]
    Closed,
    /// Zero permits were asked for.
    #[error("n must be at least 1, got 0")]
    ZeroPermits,
    /// More permits were asked for than the limit: they can never all be free.
    /// At a limit of 0 (a closed gate, where a request up to
    /// [`MAX_PERMITS`](crate::MAX_PERMITS) waits), a request above
    /// `MAX_PERMITS`, which no limit can reach.
    #[error("n must be at most the limit {limit}, got {n}: it can never be granted")]
    ExceedsLimit {
        /// The permits asked for.
        n: u32,
        /// The limit; [`MAX_PERMITS`](crate::MAX_PERMITS) for a request above it
        /// at a limit of 0.
        limit: u32,
    },
}

impl AcquireTimeoutError {
    /// The shared rejection reason: [`Rejection::TimedOut`] or
    /// [`Rejection::ShuttingDown`]; `None` for the bad-input cases.
    pub fn reason(&self) -> Option<Rejection> {
        match *self {
            Self::TimedOut { after } => Some(Rejection::TimedOut { after }),
            Self::Closed => Some(Rejection::ShuttingDown),
            Self::ZeroPermits | Self::ExceedsLimit { .. } => None,
        }
    }
}

impl From<AcquireError> for AcquireTimeoutError {
    fn from(e: AcquireError) -> Self {
        match e {
            AcquireError::Closed => Self::Closed,
            AcquireError::ZeroPermits => Self::ZeroPermits,
            AcquireError::ExceedsLimit { n, limit } => Self::ExceedsLimit { n, limit },
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn at_capacity_is_no_refusal_for_a_waiting_call() {
        assert_eq!(
            AcquireError::from_try(TryAcquireError::AtCapacity { limit: 3 }),
            None
        );
        assert_eq!(
            AcquireError::from_try(TryAcquireError::Closed),
            Some(AcquireError::Closed)
        );
        assert_eq!(
            AcquireError::from_try(TryAcquireError::ZeroPermits),
            Some(AcquireError::ZeroPermits)
        );
        assert_eq!(
            AcquireError::from_try(TryAcquireError::ExceedsLimit { n: 4, limit: 3 }),
            Some(AcquireError::ExceedsLimit { n: 4, limit: 3 })
        );
    }

    #[test]
    fn at_capacity_reports_the_shared_rejection() {
        assert_eq!(
            TryAcquireError::AtCapacity { limit: 7 }.reason(),
            Some(Rejection::AtCapacity { limit: 7 })
        );
    }
}
