//! [`ConcurrencyLimit`]: a work-in-progress limit with weighted, RAII permits.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use heijunka_core::sync::atomic::{AtomicUsize, Ordering};
use heijunka_core::{ConfigError, Rejection, validate};
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, SemaphorePermit, TryAcquireError};

use crate::block::block_on;

/// The most permits a limit can have (tokio's `Semaphore::MAX_PERMITS` is larger;
/// weights are `u32`).
pub const MAX_PERMITS: u32 = u32::MAX >> 3;

/// A concurrency (work-in-progress) limit: at most `n` permits out at once.
///
/// Built on [`tokio::sync::Semaphore`], which already gives what a WIP limit
/// needs: weighted acquisition, FIFO waiters (a large weight is not starved by
/// small ones), owned permits, and `close()`. This type adds the forms the rest of
/// heijunka expects — `try_acquire` with a typed rejection naming the limit,
/// `acquire_timeout`, blocking acquisition for thread pools, live in-use and waiting
/// counts — and checks weights against the limit instead of waiting forever.
///
/// Permits are RAII guards: dropping one (also while unwinding from a panic)
/// returns its weight.
///
/// ```
/// use heijunka_backpressure::ConcurrencyLimit;
/// use heijunka_core::Rejection;
///
/// let limit = ConcurrencyLimit::new(2)?;
/// let a = limit.try_acquire()?;
/// let b = limit.try_acquire()?;
/// let err = limit.try_acquire().unwrap_err();
/// assert_eq!(err.reason(), Some(Rejection::AtCapacity { limit: 2 }));
/// drop(a);
/// assert!(limit.try_acquire().is_ok());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct ConcurrencyLimit {
    // tokio's owned permits need an `Arc<Semaphore>`; the hot path derefs it once.
    semaphore: Arc<Semaphore>,
    limit: u32,
    waiting: Arc<AtomicUsize>,
}

/// Why a permit was not granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AcquireError {
    /// Refused for a shared reason: [`Rejection::AtCapacity`] (from `try_`),
    /// [`Rejection::TimedOut`] (from `_timeout`), or [`Rejection::ShuttingDown`]
    /// (the limit was closed).
    #[error("{0}")]
    Rejected(Rejection),
    /// The weight asked for can never be granted.
    #[error("weight must be at most the limit {limit}, got {weight}")]
    WeightExceedsLimit {
        /// The weight asked for.
        weight: u32,
        /// The limit.
        limit: u32,
    },
}

impl AcquireError {
    /// The shared rejection reason, if this is a rejection.
    pub fn reason(&self) -> Option<Rejection> {
        match self {
            Self::Rejected(r) => Some(*r),
            Self::WeightExceedsLimit { .. } => None,
        }
    }
}

/// Live numbers of a [`ConcurrencyLimit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct LimitStats {
    /// The limit.
    pub limit: u32,
    /// Permits held now.
    pub in_use: u32,
    /// Callers waiting for permits now.
    pub waiting: usize,
    /// Whether the limit was closed.
    pub closed: bool,
}

impl ConcurrencyLimit {
    /// A limit of `permits`.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for `permits` of 0 or above [`MAX_PERMITS`].
    pub fn new(permits: u32) -> Result<Self, ConfigError> {
        validate::at_least("permits", permits, 1)?;
        validate::at_most("permits", permits, MAX_PERMITS)?;
        Ok(Self {
            semaphore: Arc::new(Semaphore::new(permits as usize)),
            limit: permits,
            waiting: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// The limit.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// Permits available now.
    pub fn available(&self) -> u32 {
        // Bounded by `limit`, a u32.
        self.semaphore.available_permits() as u32
    }

    /// Permits held now.
    pub fn in_use(&self) -> u32 {
        self.limit.saturating_sub(self.available())
    }

    /// Callers waiting now.
    pub fn waiting(&self) -> usize {
        // Relaxed: a statistic.
        self.waiting.load(Ordering::Relaxed)
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.semaphore.is_closed()
    }

    /// A snapshot of the live numbers.
    pub fn stats(&self) -> LimitStats {
        LimitStats {
            limit: self.limit(),
            in_use: self.in_use(),
            waiting: self.waiting(),
            closed: self.is_closed(),
        }
    }

    /// Closes the limit: every waiter wakes with [`Rejection::ShuttingDown`], and
    /// every later acquisition is refused the same way. Permits already held stay
    /// valid until dropped.
    pub fn close(&self) {
        self.semaphore.close();
    }

    fn check_weight(&self, weight: u32) -> Result<(), AcquireError> {
        if weight > self.limit {
            Err(AcquireError::WeightExceedsLimit {
                weight,
                limit: self.limit,
            })
        } else {
            Ok(())
        }
    }

    fn map_try(&self, e: TryAcquireError) -> AcquireError {
        match e {
            TryAcquireError::Closed => AcquireError::Rejected(Rejection::ShuttingDown),
            TryAcquireError::NoPermits => AcquireError::Rejected(Rejection::AtCapacity {
                limit: u64::from(self.limit),
            }),
        }
    }

    /// One permit if one is free now; never waits.
    ///
    /// # Errors
    ///
    /// [`Rejection::AtCapacity`] naming the limit, or [`Rejection::ShuttingDown`]
    /// once closed.
    #[inline]
    pub fn try_acquire(&self) -> Result<Permit<'_>, AcquireError> {
        match self.semaphore.try_acquire() {
            Ok(permit) => Ok(Permit { permit }),
            Err(e) => Err(self.map_try(e)),
        }
    }

    /// `weight` permits if they are free now; never waits.
    ///
    /// # Errors
    ///
    /// As [`try_acquire`](Self::try_acquire), or
    /// [`AcquireError::WeightExceedsLimit`].
    pub fn try_acquire_many(&self, weight: u32) -> Result<Permit<'_>, AcquireError> {
        self.check_weight(weight)?;
        self.semaphore
            .try_acquire_many(weight)
            .map(|permit| Permit { permit })
            .map_err(|e| self.map_try(e))
    }

    /// An owned permit (`'static`, movable to another task or thread) if one is free
    /// now.
    ///
    /// # Errors
    ///
    /// As [`try_acquire_many`](Self::try_acquire_many).
    pub fn try_acquire_owned(&self, weight: u32) -> Result<OwnedPermit, AcquireError> {
        self.check_weight(weight)?;
        Arc::clone(&self.semaphore)
            .try_acquire_many_owned(weight)
            .map(|permit| OwnedPermit { permit })
            .map_err(|e| self.map_try(e))
    }

    /// Waits (FIFO) for `weight` permits.
    ///
    /// # Errors
    ///
    /// [`Rejection::ShuttingDown`] if the limit is closed, before or while waiting;
    /// [`AcquireError::WeightExceedsLimit`] at once for an impossible weight.
    pub async fn acquire(&self, weight: u32) -> Result<Permit<'_>, AcquireError> {
        self.check_weight(weight)?;
        let _waiting = WaitingMark::new(&self.waiting);
        self.semaphore
            .acquire_many(weight)
            .await
            .map(|permit| Permit { permit })
            .map_err(|_| AcquireError::Rejected(Rejection::ShuttingDown))
    }

    /// [`acquire`](Self::acquire) with an owned permit.
    ///
    /// # Errors
    ///
    /// As [`acquire`](Self::acquire).
    pub async fn acquire_owned(&self, weight: u32) -> Result<OwnedPermit, AcquireError> {
        self.check_weight(weight)?;
        let _waiting = WaitingMark::new(&self.waiting);
        Arc::clone(&self.semaphore)
            .acquire_many_owned(weight)
            .await
            .map(|permit| OwnedPermit { permit })
            .map_err(|_| AcquireError::Rejected(Rejection::ShuttingDown))
    }

    /// [`acquire`](Self::acquire), giving up after `timeout` (tokio's timer; needs
    /// a runtime with time enabled).
    ///
    /// # Errors
    ///
    /// [`Rejection::TimedOut`] after `timeout`, otherwise as
    /// [`acquire`](Self::acquire).
    pub async fn acquire_timeout(
        &self,
        weight: u32,
        timeout: Duration,
    ) -> Result<Permit<'_>, AcquireError> {
        match tokio::time::timeout(timeout, self.acquire(weight)).await {
            Ok(r) => r,
            Err(_) => Err(AcquireError::Rejected(Rejection::TimedOut {
                after: timeout,
            })),
        }
    }

    /// Blocks the calling thread (FIFO with async waiters) until `weight` permits are
    /// granted, for thread pools. Needs no runtime. Do not call it from an async
    /// task.
    ///
    /// # Errors
    ///
    /// As [`acquire`](Self::acquire).
    pub fn acquire_blocking(&self, weight: u32) -> Result<Permit<'_>, AcquireError> {
        block_on(self.acquire(weight), None).expect("no deadline, so it completes")
    }

    /// [`acquire_blocking`](Self::acquire_blocking), giving up after `timeout`
    /// (measured on the OS monotonic clock; no runtime needed).
    ///
    /// # Errors
    ///
    /// [`Rejection::TimedOut`] after `timeout`, otherwise as
    /// [`acquire`](Self::acquire).
    pub fn acquire_blocking_timeout(
        &self,
        weight: u32,
        timeout: Duration,
    ) -> Result<Permit<'_>, AcquireError> {
        let deadline = std::time::Instant::now().checked_add(timeout);
        block_on(self.acquire(weight), deadline).unwrap_or(Err(AcquireError::Rejected(
            Rejection::TimedOut { after: timeout },
        )))
    }

    /// A future for [`acquire_owned`](Self::acquire_owned) that does not borrow
    /// `self`, for handing to `tokio::spawn`.
    pub fn acquire_owned_future(
        &self,
        weight: u32,
    ) -> impl Future<Output = Result<OwnedPermit, AcquireError>> + Send + 'static {
        let this = self.clone();
        async move { this.acquire_owned(weight).await }
    }
}

impl fmt::Debug for ConcurrencyLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConcurrencyLimit")
            .field("limit", &self.limit)
            .field("in_use", &self.in_use())
            .field("waiting", &self.waiting())
            .finish()
    }
}

/// Counts a waiter for as long as it waits, including when its future is dropped.
struct WaitingMark<'a>(&'a AtomicUsize);

impl<'a> WaitingMark<'a> {
    fn new(counter: &'a AtomicUsize) -> Self {
        // Relaxed: a statistic.
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for WaitingMark<'_> {
    fn drop(&mut self) {
        // Relaxed: a statistic.
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Permits borrowed from a [`ConcurrencyLimit`]; dropping returns them.
#[must_use = "the permits are returned as soon as this is dropped"]
pub struct Permit<'a> {
    permit: SemaphorePermit<'a>,
}

impl Permit<'_> {
    /// The number of permits held.
    pub fn weight(&self) -> u32 {
        self.permit.num_permits() as u32
    }
}

impl fmt::Debug for Permit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("weight", &self.weight())
            .finish()
    }
}

/// Permits that own a handle to their [`ConcurrencyLimit`], so they can move across
/// tasks and threads; dropping returns them.
#[must_use = "the permits are returned as soon as this is dropped"]
pub struct OwnedPermit {
    permit: OwnedSemaphorePermit,
}

impl OwnedPermit {
    /// The number of permits held.
    pub fn weight(&self) -> u32 {
        self.permit.num_permits() as u32
    }
}

impl fmt::Debug for OwnedPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnedPermit")
            .field("weight", &self.weight())
            .finish()
    }
}
