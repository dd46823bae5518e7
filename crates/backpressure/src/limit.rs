//! [`ConcurrencyLimit`]: a work-in-progress limit with weighted, RAII permits, named
//! as `tokio::sync::Semaphore` names its operations, and resizable at run time.
//!
//! # The resize protocol
//!
//! The permits live in a tokio [`Semaphore`], which gives FIFO waiters, weighted
//! acquisition and `close()`. Growing the limit adds permits to it. Shrinking cannot
//! take permits back from their holders, so the limit keeps a **debt**: the permits
//! the semaphore holds beyond the limit. Every debt operation is `SeqCst`.
//!
//! - Invariant, once every resize has returned: permits in the semaphore (free and
//!   held) = `limit + debt`.
//! - **Shrink by `d`** (resizes are serialised by a mutex): `limit -= d`,
//!   `debt += d`, then free permits pay what they can: reserve `min(debt, free)` off
//!   the debt with a compare-and-swap, `forget_permits` that many, and add back to
//!   the debt what could not be forgotten (a permit taken meanwhile).
//! - **Release of `w`**: take `t = min(debt, w)` off the debt with a
//!   compare-and-swap, forget `t`, return `w - t` to the semaphore. While in debt,
//!   releases pay it instead of feeding waiters, so holders keep their permits and
//!   the excess disappears as they release.
//! - **Acquire of `n`**: after the semaphore grants `n`, read the debt; if any is
//!   left, pay it as a release does and ask again. This catches the one race the
//!   release side cannot: a release that read a zero debt just before a shrink and
//!   returned its permits to the semaphore just after. Because the shrink's
//!   `debt += d` precedes, in the single `SeqCst` order, the debt read of every
//!   acquisition that starts after `set_limit` returns, such an acquisition either
//!   pays the debt or finds it already paid: it never takes the permits held above
//!   the new limit.
//! - **Grow by `d`**: take `min(debt, d)` off the debt, add the rest to the
//!   semaphore.
//!
//! The loom models at the bottom drive the real type through a shrink racing a
//! release and an acquisition. Loom interleaves the debt, the limit and the
//! resize mutex; tokio's semaphore (built on std's atomics, not loom's) acts in
//! them as one atomic step per call, which it is to its callers.

use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use heijunka_core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use heijunka_core::sync::{Arc, Mutex};
use heijunka_core::{ConfigError, validate};
use serde::Serialize;
use tokio::sync::{Notify, Semaphore, TryAcquireError as TokioTryAcquireError};

use crate::acquire::{AcquireError, AcquireTimeoutError, TryAcquireError};
use crate::block::block_on;

mod poll;

pub use self::poll::PollConcurrencyLimit;

/// The most permits a limit can have (tokio's `Semaphore::MAX_PERMITS` is larger;
/// permit counts are `u32`).
pub const MAX_PERMITS: u32 = u32::MAX >> 3;

/// A concurrency (work-in-progress) limit: at most `limit` permits out at once.
///
/// Named as [`tokio::sync::Semaphore`] (`acquire`, `acquire_many`, `try_acquire`,
/// `try_acquire_many`, the `_owned` forms, `add_permits`, `close`), and built on it,
/// which gives what a WIP limit needs: weighted acquisition, FIFO waiters (a large
/// request is not starved by small ones), and `close()`. This type adds typed
/// refusals naming the limit, `_timeout` and `_blocking` forms (thread pools), live
/// in-use and waiting counts, a run-time [`set_limit`](Self::set_limit) that never
/// revokes a held permit, and it refuses a request that can never be granted (0
/// permits, more than the limit) instead of waiting forever.
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

struct Inner {
    semaphore: Semaphore,
    /// Permits the semaphore holds beyond `limit` (see the module docs).
    debt: AtomicU32,
    limit: AtomicU32,
    waiting: AtomicUsize,
    /// Wakes waiters when the limit shrinks, so one asking for more than the new
    /// limit is refused instead of waiting forever.
    shrunk: Notify,
    /// Serialises `set_limit` / `add_permits`.
    resize: Mutex<()>,
}

/// Live numbers of a [`ConcurrencyLimit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct LimitStats {
    /// The limit.
    pub limit: u32,
    /// Permits held now (above `limit` for a while after the limit shrank).
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
            inner: Arc::new(Inner {
                semaphore: Semaphore::new(permits as usize),
                debt: AtomicU32::new(0),
                limit: AtomicU32::new(permits),
                waiting: AtomicUsize::new(0),
                shrunk: Notify::new(),
                resize: Mutex::new(()),
            }),
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

    /// Permits held now. After the limit shrank, this stays above the limit until
    /// enough holders have released.
    pub fn in_use(&self) -> u32 {
        let inner = &*self.inner;
        let total = inner.limit.load(Ordering::SeqCst) + inner.debt.load(Ordering::SeqCst);
        total.saturating_sub(inner.semaphore.available_permits() as u32)
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
    /// [`MAX_PERMITS`]; the limit is then unchanged.
    pub fn add_permits(&self, n: u32) -> Result<(), ConfigError> {
        let _resize = self.inner.lock_resize();
        let old = self.limit();
        let new = u64::from(old) + u64::from(n);
        let new = validate::at_most("permits", new, u64::from(MAX_PERMITS))?;
        // Checked just above: at most MAX_PERMITS.
        self.inner.grow(old, new as u32);
        Ok(())
    }

    /// Sets the limit to `permits` at run time, without revoking a held permit.
    ///
    /// Growing adds permits at once (as [`add_permits`](Self::add_permits)).
    /// Shrinking applies to every acquisition that starts after this returns; the
    /// holders keep their permits, and the excess disappears as they release (a
    /// release pays it off instead of serving a waiter), so [`in_use`](Self::in_use)
    /// may stay above the new limit until then. A waiter asking for more permits
    /// than the new limit is woken with [`AcquireError::ExceedsLimit`].
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
    /// A [`ConfigError`] (field `permits`) for 0 or above [`MAX_PERMITS`]; the
    /// limit is then unchanged.
    pub fn set_limit(&self, permits: u32) -> Result<(), ConfigError> {
        validate::at_least("permits", permits, 1)?;
        validate::at_most("permits", permits, MAX_PERMITS)?;
        let inner = &*self.inner;
        let _resize = inner.lock_resize();
        let old = self.limit();
        if permits > old {
            inner.grow(old, permits);
        } else if permits < old {
            inner.limit.store(permits, Ordering::SeqCst);
            inner.debt.fetch_add(old - permits, Ordering::SeqCst);
            inner.settle();
            inner.shrunk.notify_waiters();
        }
        Ok(())
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
            Err(_) => Err(AcquireTimeoutError::TimedOut { after: timeout }),
        }
    }

    /// Blocks the calling thread (FIFO with async waiters) until a permit is
    /// granted, for thread pools. Needs no runtime. Do not call it from an async
    /// task.
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
    pub fn acquire_many_blocking(&self, n: u32) -> Result<Permit<'_>, AcquireError> {
        block_on(self.acquire_many(n), None).expect("no deadline, so it completes")
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
    pub fn acquire_many_blocking_timeout(
        &self,
        n: u32,
        timeout: Duration,
    ) -> Result<Permit<'_>, AcquireTimeoutError> {
        let deadline = std::time::Instant::now().checked_add(timeout);
        match block_on(self.acquire_many(n), deadline) {
            Some(r) => Ok(r?),
            None => Err(AcquireTimeoutError::TimedOut { after: timeout }),
        }
    }
}

impl Inner {
    fn lock_resize(&self) -> heijunka_core::sync::MutexGuard<'_, ()> {
        // The guarded data is `()`: a panic elsewhere cannot leave it inconsistent.
        self.resize.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Refuses an `n` that can never be granted.
    #[inline]
    fn check(&self, n: u32) -> Result<(), AcquireError> {
        if n == 0 {
            return Err(AcquireError::ZeroPermits);
        }
        // The limit is at least 1, so a single permit needs no load.
        if n > 1 {
            let limit = self.limit.load(Ordering::SeqCst);
            if n > limit {
                return Err(AcquireError::ExceedsLimit { n, limit });
            }
        }
        Ok(())
    }

    /// Takes `w` (at most) off the debt; returns how much it took.
    #[inline]
    fn pay_debt(&self, w: u32) -> u32 {
        let mut debt = self.debt.load(Ordering::SeqCst);
        while debt > 0 {
            let t = debt.min(w);
            match self.debt.compare_exchange_weak(
                debt,
                debt - t,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return t,
                Err(actual) => debt = actual,
            }
        }
        0
    }

    /// Gives back `w` permits taken from the semaphore (and forgotten there),
    /// paying the debt first.
    #[inline]
    fn release(&self, w: u32) {
        let rest = w - self.pay_debt(w);
        if rest > 0 {
            self.semaphore.add_permits(rest as usize);
        }
    }

    /// After the semaphore granted `n` (already forgotten there): `true` to keep
    /// them, or `false` after paying a debt with them and returning the rest, in
    /// which case the caller asks again.
    #[inline]
    fn keep_granted(&self, n: u32) -> bool {
        let paid = self.pay_debt(n);
        if paid == 0 {
            return true;
        }
        if n > paid {
            self.semaphore.add_permits((n - paid) as usize);
        }
        false
    }

    #[inline]
    fn try_take(&self, n: u32) -> Result<(), TryAcquireError> {
        self.check(n)?;
        loop {
            match self.semaphore.try_acquire_many(n) {
                Ok(permit) => {
                    permit.forget();
                    if self.keep_granted(n) {
                        return Ok(());
                    }
                }
                Err(TokioTryAcquireError::NoPermits) => {
                    return Err(TryAcquireError::AtCapacity {
                        limit: u64::from(self.limit.load(Ordering::SeqCst)),
                    });
                }
                Err(TokioTryAcquireError::Closed) => return Err(TryAcquireError::Closed),
            }
        }
    }

    /// Waits for `n` permits; on success they are taken (forgotten in the
    /// semaphore) and the caller must wrap them in a permit at once.
    async fn take(&self, n: u32) -> Result<(), AcquireError> {
        match self.try_take(n) {
            Ok(()) => return Ok(()),
            Err(TryAcquireError::AtCapacity { .. }) => {}
            Err(e) => return Err(AcquireError::from_try(e)),
        }
        let _waiting = WaitingMark::new(&self.waiting);
        loop {
            // Registered before the weight check, so a shrink between the check
            // and the wait still wakes this waiter.
            let mut shrunk = pin!(self.shrunk.notified());
            shrunk.as_mut().enable();
            self.check(n)?;
            let mut acquire = pin!(self.semaphore.acquire_many(n));
            let permit = poll_fn(|cx| {
                loop {
                    if let Poll::Ready(r) = acquire.as_mut().poll(cx) {
                        return Poll::Ready(r.map_err(|_| AcquireError::Closed));
                    }
                    if shrunk.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    // The limit shrank: re-register, then re-check, keeping the
                    // place in the semaphore's queue.
                    shrunk.set(self.shrunk.notified());
                    shrunk.as_mut().enable();
                    if let Err(e) = self.check(n) {
                        return Poll::Ready(Err(e));
                    }
                }
            })
            .await?;
            permit.forget();
            if self.keep_granted(n) {
                return Ok(());
            }
        }
    }

    fn grow(&self, old: u32, new: u32) {
        let d = new - old;
        let rest = d - self.pay_debt(d);
        if rest > 0 {
            self.semaphore.add_permits(rest as usize);
        }
        self.limit.store(new, Ordering::SeqCst);
    }

    /// Pays the debt with free permits, as far as there are any.
    fn settle(&self) {
        let free = self.semaphore.available_permits() as u32;
        let reserved = self.pay_debt(free);
        if reserved > 0 {
            let forgotten = self.semaphore.forget_permits(reserved as usize) as u32;
            if forgotten < reserved {
                self.debt.fetch_add(reserved - forgotten, Ordering::SeqCst);
            }
        }
    }
}

impl AcquireError {
    fn from_try(e: TryAcquireError) -> Self {
        match e {
            TryAcquireError::ZeroPermits => Self::ZeroPermits,
            TryAcquireError::ExceedsLimit { n, limit } => Self::ExceedsLimit { n, limit },
            TryAcquireError::Closed | TryAcquireError::AtCapacity { .. } => Self::Closed,
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
    inner: &'a Inner,
    weight: u32,
}

impl Permit<'_> {
    /// The number of permits held (as tokio's `num_permits`).
    pub fn num_permits(&self) -> u32 {
        self.weight
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.inner.release(self.weight);
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
}

impl Drop for OwnedPermit {
    fn drop(&mut self) {
        self.inner.release(self.weight);
    }
}

impl fmt::Debug for OwnedPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnedPermit")
            .field("permits", &self.weight)
            .finish()
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::ConcurrencyLimit;
    use heijunka_core::sync::thread;

    /// A shrink racing a release: once both are done, the permits add up to the
    /// new limit, whatever the interleaving (no permit lost, none extra).
    #[test]
    fn shrink_racing_a_release_settles_to_the_new_limit() {
        loom::model(|| {
            let limit = ConcurrencyLimit::new(2).unwrap();
            let held = limit.try_acquire_owned().unwrap();
            let _kept = limit.try_acquire_owned().unwrap();
            let t = thread::spawn(move || drop(held));
            limit.set_limit(1).unwrap();
            t.join().unwrap();
            // One holder left, at the new limit of 1: nothing free.
            assert!(limit.try_acquire().is_err(), "a permit above the new limit");
            drop(_kept);
            let one = limit.try_acquire().expect("the kept permit came back");
            assert!(limit.try_acquire().is_err(), "more than the new limit");
            drop(one);
            assert_eq!(limit.available_permits(), 1);
        });
    }

    /// An acquisition that starts after the shrink returned never goes above the
    /// new limit, even while a release of the old limit's permits races it.
    #[test]
    fn acquire_after_shrink_sees_the_new_limit() {
        loom::model(|| {
            let limit = ConcurrencyLimit::new(2).unwrap();
            let kept = limit.try_acquire_owned().unwrap();
            let released = limit.try_acquire_owned().unwrap();
            let t = thread::spawn(move || drop(released));
            limit.set_limit(1).unwrap();
            // `kept` is still held and the limit is 1: nothing may be granted.
            assert!(limit.try_acquire().is_err(), "granted above the new limit");
            t.join().unwrap();
            assert!(limit.try_acquire().is_err(), "granted above the new limit");
            drop(kept);
            assert!(limit.try_acquire().is_ok());
        });
    }
}
