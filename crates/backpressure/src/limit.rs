//! [`ConcurrencyLimit`]: a work-in-progress limit with weighted, RAII permits, named
//! as `tokio::sync::Semaphore` names its operations, and resizable at run time.
//! The permit pool under it, and the protocol that resizes it, are in `permits`.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use heijunka_core::sync::Arc;
use heijunka_core::sync::atomic::Ordering;
use heijunka_core::{ConfigError, validate};
use serde::Serialize;

use crate::acquire::{AcquireError, AcquireTimeoutError, TryAcquireError};
use crate::block::block_on;

mod permits;
mod poll;

use self::permits::Inner;
pub use self::poll::PollConcurrencyLimit;

/// The most permits a limit can have (tokio's `Semaphore::MAX_PERMITS` is larger;
/// permit counts are `u32`).
pub const MAX_PERMITS: u32 = u32::MAX >> 3;

/// A concurrency (work-in-progress) limit: at most `limit` permits out at once.
///
/// Named as [`tokio::sync::Semaphore`] (`acquire`, `acquire_many`, `try_acquire`,
/// `try_acquire_many`, the `_owned` and `_blocking` forms, `add_permits`,
/// `forget_permits`, `close`; permits that `forget`, `merge` and `split`), and
/// built on it,
/// which gives what a WIP limit needs: weighted acquisition, FIFO waiters (a large
/// request is not starved by small ones), and `close()`. This type adds typed
/// refusals naming the limit, `_timeout` and `_blocking` forms (thread pools), live
/// in-use and waiting counts, a run-time [`set_limit`](Self::set_limit) that never
/// revokes a held permit, and it refuses a request that can never be granted (0
/// permits, more than a limit above 0) instead of waiting forever.
///
/// A limit of 0 is a gate closed until permits are added (as tokio's
/// `Semaphore::new(0)`): every acquisition of up to [`MAX_PERMITS`] waits (or,
/// for `try_`, is refused at capacity) until [`add_permits`](Self::add_permits)
/// or [`set_limit`](Self::set_limit) opens it; then a waiter asking for more than
/// the new limit is refused ([`AcquireError::ExceedsLimit`]). So a request above
/// a limit above 0 is refused at once, while at a limit of 0 it waits, as the
/// limit may yet grow to it; a request above [`MAX_PERMITS`], which no limit can
/// reach, is refused at once whatever the limit (`ExceedsLimit` naming
/// `MAX_PERMITS` at a limit of 0). A limit brought to 0 by
/// [`forget_permits`](Self::forget_permits) or a permit's `forget` is the same
/// closed gate.
///
/// The `_blocking` forms panic on a thread that drives a tokio runtime's tasks,
/// with tokio's message, as tokio's `Semaphore::blocking_acquire` does (see
/// [`heijunka_core::blocking`]); inside `spawn_blocking` they may block.
///
/// Permits are RAII guards: dropping one (also while unwinding from a panic)
/// returns it. Clones are handles to the same limit; owned permits hold such a
/// handle, so they are `'static` and can move to another task or thread.
///
/// For tower's `poll_ready`, wrap the limit in a [`PollConcurrencyLimit`].
///
/// ```
/// use heijunka_backpressure::{ConcurrencyLimit, TryAcquireError};
///
/// let limit = ConcurrencyLimit::new(2)?;
/// let a = limit.try_acquire()?;
/// let b = limit.try_acquire()?;
/// assert_eq!(limit.try_acquire().unwrap_err(), TryAcquireError::AtCapacity { limit: 2 });
/// drop(a);
/// assert!(limit.try_acquire().is_ok());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct ConcurrencyLimit {
    inner: Arc<Inner>,
}

/// Live numbers of a [`ConcurrencyLimit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct LimitStats {
    /// The limit.
    pub limit: u32,
    /// Permits held now by permit guards (above `limit` for a while after the
    /// limit shrank); not those handed to a waiter that has not completed.
    pub in_use: u32,
    /// Callers waiting for permits now.
    pub waiting: usize,
    /// Whether the limit was closed.
    pub closed: bool,
}

impl ConcurrencyLimit {
    /// A limit of `permits`; 0 is a gate closed until permits are added.
    ///
    /// ```
    /// use heijunka_backpressure::ConcurrencyLimit;
    ///
    /// let gate = ConcurrencyLimit::new(0)?;
    /// assert!(gate.try_acquire().is_err());
    /// gate.add_permits(1)?;
    /// assert!(gate.try_acquire().is_ok());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for `permits` above [`MAX_PERMITS`].
    pub fn new(permits: u32) -> Result<Self, ConfigError> {
        Self::named(permits, crate::metrics::DEFAULT_NAME)
    }

    /// A limit of `permits` named `name`: the `name` label of its metrics (feature
    /// `metrics`, see `docs/metrics.md`; [`new`](Self::new) uses `"default"`). The
    /// name is read once, here.
    ///
    /// ```
    /// use heijunka_backpressure::ConcurrencyLimit;
    ///
    /// let limit = ConcurrencyLimit::named(64, "db")?;
    /// assert_eq!(limit.limit(), 64);
    /// # Ok::<(), heijunka_core::ConfigError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new).
    pub fn named(permits: u32, name: &str) -> Result<Self, ConfigError> {
        validate::at_most("permits", permits, MAX_PERMITS)?;
        Ok(Self {
            inner: Arc::new(Inner::new(permits, name)),
        })
    }

    /// The limit.
    pub fn limit(&self) -> u32 {
        self.inner.limit.load(Ordering::SeqCst)
    }

    /// Permits free now.
    pub fn available_permits(&self) -> u32 {
        let inner = &*self.inner;
        // Bounded by MAX_PERMITS, a u32.
        let free = inner.semaphore.available_permits() as u32;
        free.saturating_sub(inner.debt.load(Ordering::SeqCst))
    }

    /// Permits held now by permit guards. After the limit shrank, this stays
    /// above the limit until enough holders have released.
    ///
    /// Permits that tokio's queue has already set aside for the waiter at its
    /// head (free permits it hands over one release at a time, until it has all
    /// it asked for) are not counted: nobody holds them until that waiter
    /// completes, and they go back if it is cancelled. So `in_use` and
    /// [`available_permits`](Self::available_permits) may add up to less than
    /// the limit while a large request waits.
    pub fn in_use(&self) -> u32 {
        // Relaxed: a statistic.
        self.inner.held.load(Ordering::Relaxed)
    }

    /// Callers waiting now.
    pub fn waiting(&self) -> usize {
        // Relaxed: a statistic.
        self.inner.waiting.load(Ordering::Relaxed)
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.inner.semaphore.is_closed()
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

    /// Closes the limit: every waiter wakes with a closed error, and every later
    /// acquisition is refused the same way. Permits already held stay valid until
    /// dropped.
    pub fn close(&self) {
        self.inner.semaphore.close();
    }

    /// Raises the limit by `n` permits, as tokio's `Semaphore::add_permits` (which
    /// this calls); waiters are served at once. If the limit shrank and holders
    /// still keep permits above it, those count first.
    ///
    /// ```
    /// use heijunka_backpressure::ConcurrencyLimit;
    ///
    /// let limit = ConcurrencyLimit::new(1)?;
    /// let _a = limit.try_acquire()?;
    /// assert!(limit.try_acquire().is_err());
    /// limit.add_permits(2)?;
    /// assert_eq!(limit.limit(), 3);
    /// assert_eq!(limit.available_permits(), 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] (field `permits`) if the limit would exceed
    /// [`MAX_PERMITS`]; the limit is then unchanged (tokio panics there).
    pub fn add_permits(&self, n: u32) -> Result<(), ConfigError> {
        self.inner.resize(|old| {
            let new = u64::from(old) + u64::from(n);
            let new = validate::at_most("permits", new, u64::from(MAX_PERMITS))?;
            // Checked just above: at most MAX_PERMITS.
            Ok(new as u32)
        })
    }

    /// Removes up to `n` free permits for good, as tokio's
    /// `Semaphore::forget_permits`: the limit drops by as many as were free (held
    /// permits are never revoked; see [`set_limit`](Self::set_limit) for that).
    /// Returns how many were removed.
    ///
    /// ```
    /// use heijunka_backpressure::ConcurrencyLimit;
    ///
    /// let limit = ConcurrencyLimit::new(3)?;
    /// let _held = limit.try_acquire()?;
    /// assert_eq!(limit.forget_permits(5), 2, "only the free ones");
    /// assert_eq!((limit.limit(), limit.available_permits()), (1, 0));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn forget_permits(&self, n: u32) -> u32 {
        self.inner.forget_free(n)
    }

    /// Sets the limit to `permits` at run time, without revoking a held permit.
    ///
    /// Growing adds permits at once (as [`add_permits`](Self::add_permits)).
    /// Shrinking applies to every acquisition that starts after this returns; the
    /// holders keep their permits, and the excess disappears as they release (a
    /// release pays it off instead of serving a waiter), so [`in_use`](Self::in_use)
    /// may stay above the new limit until then. A waiter asking for more permits
    /// than the new limit is woken with [`AcquireError::ExceedsLimit`]. A limit of
    /// 0 closes the gate until the limit is raised again.
    ///
    /// ```
    /// use heijunka_backpressure::ConcurrencyLimit;
    ///
    /// let limit = ConcurrencyLimit::new(3)?;
    /// let a = limit.try_acquire()?;
    /// let b = limit.try_acquire()?;
    /// limit.set_limit(1)?;
    /// assert_eq!(limit.in_use(), 2); // both holders keep their permits
    /// assert!(limit.try_acquire().is_err());
    /// drop(a); // pays off the excess
    /// assert!(limit.try_acquire().is_err());
    /// drop(b);
    /// assert!(limit.try_acquire().is_ok());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] (field `permits`) above [`MAX_PERMITS`]; the limit is
    /// then unchanged.
    pub fn set_limit(&self, permits: u32) -> Result<(), ConfigError> {
        validate::at_most("permits", permits, MAX_PERMITS)?;
        self.inner.resize(|_| Ok(permits))
    }

    /// One permit if one is free now; never waits, never locks.
    ///
    /// # Errors
    ///
    /// [`TryAcquireError::AtCapacity`] naming the limit, or
    /// [`TryAcquireError::Closed`].
    #[inline]
    pub fn try_acquire(&self) -> Result<Permit<'_>, TryAcquireError> {
        let inner = &*self.inner;
        inner.try_take(1).map(|()| Permit { inner, weight: 1 })
    }

    /// `n` permits if they are free now; never waits.
    ///
    /// ```
    /// use heijunka_backpressure::{ConcurrencyLimit, TryAcquireError};
    ///
    /// let limit = ConcurrencyLimit::new(5)?;
    /// let three = limit.try_acquire_many(3)?;
    /// assert_eq!(three.num_permits(), 3);
    /// assert_eq!(limit.try_acquire_many(3).unwrap_err(), TryAcquireError::AtCapacity { limit: 5 });
    /// assert_eq!(
    ///     limit.try_acquire_many(6).unwrap_err(),
    ///     TryAcquireError::ExceedsLimit { n: 6, limit: 5 }
    /// );
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`try_acquire`](Self::try_acquire), or [`TryAcquireError::ZeroPermits`] /
    /// [`TryAcquireError::ExceedsLimit`] for an `n` that can never be granted.
    pub fn try_acquire_many(&self, n: u32) -> Result<Permit<'_>, TryAcquireError> {
        let inner = &*self.inner;
        inner.try_take(n).map(|()| Permit { inner, weight: n })
    }

    /// [`try_acquire`](Self::try_acquire) for a permit that owns a handle to the
    /// limit, so it can move to another task or thread.
    ///
    /// ```
    /// use heijunka_backpressure::ConcurrencyLimit;
    ///
    /// let limit = ConcurrencyLimit::new(1)?;
    /// let permit = limit.try_acquire_owned()?;
    /// std::thread::spawn(move || drop(permit)).join().unwrap();
    /// assert_eq!(limit.available_permits(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`try_acquire`](Self::try_acquire).
    pub fn try_acquire_owned(&self) -> Result<OwnedPermit, TryAcquireError> {
        self.try_acquire_many_owned(1)
    }

    /// [`try_acquire_many`](Self::try_acquire_many) for an owned permit.
    ///
    /// ```
    /// use heijunka_backpressure::ConcurrencyLimit;
    ///
    /// let limit = ConcurrencyLimit::new(4)?;
    /// let permit = limit.try_acquire_many_owned(3)?;
    /// assert_eq!(permit.num_permits(), 3);
    /// assert_eq!(limit.available_permits(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`try_acquire_many`](Self::try_acquire_many).
    pub fn try_acquire_many_owned(&self, n: u32) -> Result<OwnedPermit, TryAcquireError> {
        self.inner.try_take(n).map(|()| OwnedPermit {
            inner: Arc::clone(&self.inner),
            weight: n,
        })
    }

    /// [`try_acquire_many_owned`](Self::try_acquire_many_owned) that does not count
    /// a refusal as rejected: for callers that wait after it.
    pub(super) fn try_grant_owned(&self, n: u32) -> Result<OwnedPermit, TryAcquireError> {
        self.inner.try_grant(n).map(|()| OwnedPermit {
            inner: Arc::clone(&self.inner),
            weight: n,
        })
    }

    /// Waits (FIFO) for one permit.
    ///
    /// ```
    /// use heijunka_backpressure::ConcurrencyLimit;
    ///
    /// # tokio::runtime::Builder::new_current_thread().build()?.block_on(async {
    /// let limit = ConcurrencyLimit::new(1)?;
    /// let permit = limit.acquire().await?;
    /// assert_eq!(limit.available_permits(), 0);
    /// drop(permit);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`AcquireError::Closed`] if the limit is closed, before or while waiting.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as tokio's: dropping the future before it completes gives back
    /// any permit it had been assigned, leaves no waiter behind, and loses its place
    /// in the queue.
    pub async fn acquire(&self) -> Result<Permit<'_>, AcquireError> {
        self.acquire_many(1).await
    }

    /// Waits (FIFO) for `n` permits at once. A large request at the head of the
    /// queue is not overtaken by smaller ones.
    ///
    /// ```
    /// use heijunka_backpressure::{AcquireError, ConcurrencyLimit};
    ///
    /// # tokio::runtime::Builder::new_current_thread().build()?.block_on(async {
    /// let limit = ConcurrencyLimit::new(4)?;
    /// assert_eq!(limit.acquire_many(3).await?.num_permits(), 3);
    /// assert_eq!(limit.acquire_many(0).await.unwrap_err(), AcquireError::ZeroPermits);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`AcquireError::Closed`] if the limit is closed, before or while waiting;
    /// at once [`AcquireError::ZeroPermits`] for 0 and
    /// [`AcquireError::ExceedsLimit`] for more than the limit (also when the limit
    /// shrinks below `n` while waiting).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`acquire`](Self::acquire).
    pub async fn acquire_many(&self, n: u32) -> Result<Permit<'_>, AcquireError> {
        let inner = &*self.inner;
        inner.take(n).await?;
        Ok(Permit { inner, weight: n })
    }

    /// [`acquire`](Self::acquire) for an owned permit. The future owns a handle to
    /// the limit, so it is `'static`: it can be handed to `tokio::spawn`.
    ///
    /// ```
    /// use heijunka_backpressure::ConcurrencyLimit;
    ///
    /// # tokio::runtime::Builder::new_current_thread().build()?.block_on(async {
    /// let limit = ConcurrencyLimit::new(1)?;
    /// let task = tokio::spawn(limit.acquire_owned());
    /// let permit = task.await??;
    /// assert_eq!(limit.available_permits(), 0);
    /// drop(permit);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`acquire`](Self::acquire).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`acquire`](Self::acquire).
    pub fn acquire_owned(
        &self,
    ) -> impl Future<Output = Result<OwnedPermit, AcquireError>> + Send + 'static {
        self.acquire_many_owned(1)
    }

    /// [`acquire_many`](Self::acquire_many) for an owned permit; the future is
    /// `'static`.
    ///
    /// ```
    /// use heijunka_backpressure::ConcurrencyLimit;
    ///
    /// # tokio::runtime::Builder::new_current_thread().build()?.block_on(async {
    /// let limit = ConcurrencyLimit::new(4)?;
    /// let permit = tokio::spawn(limit.acquire_many_owned(4)).await??;
    /// assert_eq!(permit.num_permits(), 4);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`acquire_many`](Self::acquire_many).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`acquire`](Self::acquire).
    pub fn acquire_many_owned(
        &self,
        n: u32,
    ) -> impl Future<Output = Result<OwnedPermit, AcquireError>> + Send + 'static {
        let inner = Arc::clone(&self.inner);
        async move {
            inner.take(n).await?;
            Ok(OwnedPermit { inner, weight: n })
        }
    }

    /// [`acquire`](Self::acquire), giving up after `timeout` (tokio's timer; needs
    /// a runtime with time enabled).
    ///
    /// ```
    /// use heijunka_backpressure::{AcquireTimeoutError, ConcurrencyLimit};
    /// use std::time::Duration;
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build()?.block_on(async {
    /// let limit = ConcurrencyLimit::new(1)?;
    /// let _held = limit.try_acquire()?;
    /// let err = limit.acquire_timeout(Duration::from_secs(1)).await.unwrap_err();
    /// assert_eq!(err, AcquireTimeoutError::TimedOut { after: Duration::from_secs(1) });
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`AcquireTimeoutError::TimedOut`] after `timeout`, otherwise as
    /// [`acquire`](Self::acquire).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`acquire`](Self::acquire).
    pub async fn acquire_timeout(
        &self,
        timeout: Duration,
    ) -> Result<Permit<'_>, AcquireTimeoutError> {
        self.acquire_many_timeout(1, timeout).await
    }

    /// [`acquire_many`](Self::acquire_many), giving up after `timeout` (tokio's
    /// timer).
    ///
    /// ```
    /// use heijunka_backpressure::ConcurrencyLimit;
    /// use std::time::Duration;
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build()?.block_on(async {
    /// let limit = ConcurrencyLimit::new(4)?;
    /// let _one = limit.try_acquire()?;
    /// assert!(limit.acquire_many_timeout(4, Duration::from_secs(1)).await.is_err());
    /// assert!(limit.acquire_many_timeout(3, Duration::from_secs(1)).await.is_ok());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`AcquireTimeoutError::TimedOut`] after `timeout`, otherwise as
    /// [`acquire_many`](Self::acquire_many).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`acquire`](Self::acquire).
    pub async fn acquire_many_timeout(
        &self,
        n: u32,
        timeout: Duration,
    ) -> Result<Permit<'_>, AcquireTimeoutError> {
        match tokio::time::timeout(timeout, self.acquire_many(n)).await {
            Ok(r) => Ok(r?),
            Err(_) => {
                self.inner.metrics.rejected.increment(1);
                Err(AcquireTimeoutError::TimedOut { after: timeout })
            }
        }
    }

    /// Blocks the calling thread (FIFO with async waiters) until a permit is
    /// granted, for thread pools. Needs no runtime.
    ///
    /// ```
    /// use heijunka_backpressure::ConcurrencyLimit;
    ///
    /// let limit = ConcurrencyLimit::new(1)?;
    /// let permit = limit.acquire_blocking()?;
    /// assert_eq!(limit.available_permits(), 0);
    /// # drop(permit);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`acquire`](Self::acquire).
    ///
    /// # Panics
    ///
    /// On a thread that drives a tokio runtime's tasks (inside an async task or
    /// `block_on`), whether or not a permit is free, with tokio's message
    /// ("Cannot block the current thread from within a runtime..."), as tokio's
    /// `Semaphore::blocking_acquire`: there it would stall the runtime's thread,
    /// or deadlock a current-thread runtime. Use [`acquire`](Self::acquire) in
    /// async code; on `spawn_blocking`'s threads this form works.
    #[track_caller]
    pub fn acquire_blocking(&self) -> Result<Permit<'_>, AcquireError> {
        self.acquire_many_blocking(1)
    }

    /// [`acquire_blocking`](Self::acquire_blocking) for `n` permits.
    ///
    /// ```
    /// use heijunka_backpressure::ConcurrencyLimit;
    ///
    /// let limit = ConcurrencyLimit::new(3)?;
    /// assert_eq!(limit.acquire_many_blocking(3)?.num_permits(), 3);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`acquire_many`](Self::acquire_many).
    ///
    /// # Panics
    ///
    /// On a runtime's thread, as [`acquire_blocking`](Self::acquire_blocking).
    #[track_caller]
    pub fn acquire_many_blocking(&self, n: u32) -> Result<Permit<'_>, AcquireError> {
        block_on(self.acquire_many(n), None).expect("no deadline, so it completes")
    }

    /// [`acquire_blocking`](Self::acquire_blocking) for an owned permit (tokio's
    /// `blocking_acquire_owned`).
    ///
    /// ```
    /// use heijunka_backpressure::ConcurrencyLimit;
    ///
    /// let limit = ConcurrencyLimit::new(1)?;
    /// let permit = limit.acquire_owned_blocking()?;
    /// std::thread::spawn(move || drop(permit)).join().unwrap();
    /// assert_eq!(limit.available_permits(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`acquire`](Self::acquire).
    ///
    /// # Panics
    ///
    /// On a runtime's thread, as [`acquire_blocking`](Self::acquire_blocking).
    #[track_caller]
    pub fn acquire_owned_blocking(&self) -> Result<OwnedPermit, AcquireError> {
        self.acquire_many_owned_blocking(1)
    }

    /// [`acquire_many_blocking`](Self::acquire_many_blocking) for an owned permit
    /// (tokio's `blocking_acquire_many_owned`).
    ///
    /// ```
    /// use heijunka_backpressure::ConcurrencyLimit;
    ///
    /// let limit = ConcurrencyLimit::new(5)?;
    /// let permit = limit.acquire_many_owned_blocking(3)?;
    /// assert_eq!(limit.available_permits(), 2);
    /// drop(permit);
    /// assert_eq!(limit.available_permits(), 5);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`acquire_many`](Self::acquire_many).
    ///
    /// # Panics
    ///
    /// On a runtime's thread, as [`acquire_blocking`](Self::acquire_blocking).
    #[track_caller]
    pub fn acquire_many_owned_blocking(&self, n: u32) -> Result<OwnedPermit, AcquireError> {
        block_on(self.acquire_many_owned(n), None).expect("no deadline, so it completes")
    }

    /// [`acquire_blocking`](Self::acquire_blocking), giving up after `timeout`
    /// (measured on the OS monotonic clock; no runtime needed).
    ///
    /// ```
    /// use heijunka_backpressure::ConcurrencyLimit;
    /// use std::time::Duration;
    ///
    /// let limit = ConcurrencyLimit::new(1)?;
    /// let permit = limit.acquire_blocking_timeout(Duration::from_millis(10))?;
    /// # drop(permit);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`AcquireTimeoutError::TimedOut`] after `timeout`, otherwise as
    /// [`acquire`](Self::acquire).
    ///
    /// # Panics
    ///
    /// On a runtime's thread, as [`acquire_blocking`](Self::acquire_blocking).
    #[track_caller]
    pub fn acquire_blocking_timeout(
        &self,
        timeout: Duration,
    ) -> Result<Permit<'_>, AcquireTimeoutError> {
        self.acquire_many_blocking_timeout(1, timeout)
    }

    /// [`acquire_many_blocking`](Self::acquire_many_blocking), giving up after
    /// `timeout`.
    ///
    /// ```
    /// use heijunka_backpressure::ConcurrencyLimit;
    /// use std::time::Duration;
    ///
    /// let limit = ConcurrencyLimit::new(2)?;
    /// let permit = limit.acquire_many_blocking_timeout(2, Duration::from_millis(10))?;
    /// assert_eq!(permit.num_permits(), 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`AcquireTimeoutError::TimedOut`] after `timeout`, otherwise as
    /// [`acquire_many`](Self::acquire_many).
    ///
    /// # Panics
    ///
    /// On a runtime's thread, as [`acquire_blocking`](Self::acquire_blocking).
    #[track_caller]
    pub fn acquire_many_blocking_timeout(
        &self,
        n: u32,
        timeout: Duration,
    ) -> Result<Permit<'_>, AcquireTimeoutError> {
        let deadline = std::time::Instant::now().checked_add(timeout);
        match block_on(self.acquire_many(n), deadline) {
            Some(r) => Ok(r?),
            None => {
                self.inner.metrics.rejected.increment(1);
                Err(AcquireTimeoutError::TimedOut { after: timeout })
            }
        }
    }
}

impl fmt::Debug for ConcurrencyLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConcurrencyLimit")
            .field("limit", &self.limit())
            .field("in_use", &self.in_use())
            .field("waiting", &self.waiting())
            .finish()
    }
}

/// Permits borrowed from a [`ConcurrencyLimit`]; dropping returns them.
#[must_use = "the permits are returned as soon as this is dropped"]
pub struct Permit<'a> {
    inner: &'a Inner,
    weight: u32,
}

impl Permit<'_> {
    /// The number of permits held (as tokio's `num_permits`).
    pub fn num_permits(&self) -> u32 {
        self.weight
    }

    /// Keeps the permits out for good, as tokio's `SemaphorePermit::forget`:
    /// the limit drops by their number (or, after a shrink, the excess still
    /// owed does).
    ///
    /// ```
    /// use heijunka_backpressure::ConcurrencyLimit;
    ///
    /// let limit = ConcurrencyLimit::new(2)?;
    /// limit.try_acquire()?.forget();
    /// assert_eq!((limit.limit(), limit.in_use(), limit.available_permits()), (1, 0, 1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn forget(mut self) {
        let w = std::mem::take(&mut self.weight);
        if w > 0 {
            self.inner.forget(w);
        }
    }

    /// Adds `other`'s permits to this one, as tokio's `SemaphorePermit::merge`.
    ///
    /// ```
    /// use heijunka_backpressure::ConcurrencyLimit;
    ///
    /// let limit = ConcurrencyLimit::new(3)?;
    /// let mut one = limit.try_acquire()?;
    /// one.merge(limit.try_acquire_many(2)?);
    /// assert_eq!(one.num_permits(), 3);
    /// drop(one);
    /// assert_eq!(limit.available_permits(), 3);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Panics
    ///
    /// If `other` comes from a different limit (a programmer error; tokio
    /// panics too).
    #[track_caller]
    pub fn merge(&mut self, mut other: Self) {
        assert!(
            std::ptr::eq(self.inner, other.inner),
            "merging permits of different ConcurrencyLimits"
        );
        self.weight += std::mem::take(&mut other.weight);
    }

    /// Splits `n` permits off into a new permit, as tokio's
    /// `SemaphorePermit::split`; `None` (and nothing changed) if this holds
    /// fewer than `n`.
    ///
    /// ```
    /// use heijunka_backpressure::ConcurrencyLimit;
    ///
    /// let limit = ConcurrencyLimit::new(5)?;
    /// let mut three = limit.try_acquire_many(3)?;
    /// let one = three.split(1).expect("3 held");
    /// assert_eq!((three.num_permits(), one.num_permits()), (2, 1));
    /// assert!(three.split(3).is_none());
    /// drop(three);
    /// assert_eq!(limit.available_permits(), 4);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn split(&mut self, n: u32) -> Option<Self> {
        self.weight = self.weight.checked_sub(n)?;
        Some(Self {
            inner: self.inner,
            weight: n,
        })
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.weight > 0 {
            self.inner.release(self.weight);
        }
    }
}

impl fmt::Debug for Permit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("permits", &self.weight)
            .finish()
    }
}

/// Permits that own a handle to their [`ConcurrencyLimit`], so they can move across
/// tasks and threads; dropping returns them.
#[must_use = "the permits are returned as soon as this is dropped"]
pub struct OwnedPermit {
    inner: Arc<Inner>,
    weight: u32,
}

impl OwnedPermit {
    /// The number of permits held (as tokio's `num_permits`).
    pub fn num_permits(&self) -> u32 {
        self.weight
    }

    /// As [`Permit::forget`] (tokio's `OwnedSemaphorePermit::forget`).
    ///
    /// ```
    /// use heijunka_backpressure::ConcurrencyLimit;
    ///
    /// let limit = ConcurrencyLimit::new(2)?;
    /// limit.try_acquire_owned()?.forget();
    /// assert_eq!(limit.limit(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn forget(mut self) {
        let w = std::mem::take(&mut self.weight);
        if w > 0 {
            self.inner.forget(w);
        }
    }

    /// As [`Permit::merge`] (tokio's `OwnedSemaphorePermit::merge`).
    ///
    /// ```
    /// use heijunka_backpressure::ConcurrencyLimit;
    ///
    /// let limit = ConcurrencyLimit::new(3)?;
    /// let mut one = limit.try_acquire_owned()?;
    /// one.merge(limit.try_acquire_many_owned(2)?);
    /// assert_eq!(one.num_permits(), 3);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Panics
    ///
    /// If `other` comes from a different limit.
    #[track_caller]
    pub fn merge(&mut self, mut other: Self) {
        assert!(
            Arc::ptr_eq(&self.inner, &other.inner),
            "merging permits of different ConcurrencyLimits"
        );
        self.weight += std::mem::take(&mut other.weight);
    }

    /// As [`Permit::split`] (tokio's `OwnedSemaphorePermit::split`).
    ///
    /// ```
    /// use heijunka_backpressure::ConcurrencyLimit;
    ///
    /// let limit = ConcurrencyLimit::new(3)?;
    /// let mut three = limit.try_acquire_many_owned(3)?;
    /// let two = three.split(2).expect("3 held");
    /// assert_eq!((three.num_permits(), two.num_permits()), (1, 2));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn split(&mut self, n: u32) -> Option<Self> {
        self.weight = self.weight.checked_sub(n)?;
        Some(Self {
            inner: Arc::clone(&self.inner),
            weight: n,
        })
    }
}

impl Drop for OwnedPermit {
    fn drop(&mut self) {
        if self.weight > 0 {
            self.inner.release(self.weight);
        }
    }
}

impl fmt::Debug for OwnedPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnedPermit")
            .field("permits", &self.weight)
            .finish()
    }
}
