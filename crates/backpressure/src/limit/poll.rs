//! [`PollConcurrencyLimit`]: a [`ConcurrencyLimit`] acquired by polling, for tower's
//! `poll_ready` (as tokio-util's `PollSemaphore` wraps tokio's `Semaphore`).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::{ConcurrencyLimit, OwnedPermit};
use crate::acquire::AcquireError;

type Pending = Pin<Box<dyn Future<Output = Result<OwnedPermit, AcquireError>> + Send>>;

/// A [`ConcurrencyLimit`] with a poll-based acquire, for `Service::poll_ready`.
///
/// [`poll_acquire`](Self::poll_acquire) first tries for a permit at once (no
/// allocation); only when it must wait does it box an
/// [`acquire_owned`](ConcurrencyLimit::acquire_owned) future and keep it, with its
/// place in the FIFO queue, until a later poll completes it. Clones share the
/// limit but not the pending wait.
///
/// ```
/// use heijunka_backpressure::{ConcurrencyLimit, PollConcurrencyLimit};
/// use std::future::poll_fn;
///
/// # tokio::runtime::Builder::new_current_thread().build()?.block_on(async {
/// let mut poll = PollConcurrencyLimit::new(ConcurrencyLimit::new(1)?);
/// let permit = poll_fn(|cx| poll.poll_acquire(cx)).await?;
/// assert_eq!(poll.limit().available_permits(), 0);
/// drop(permit);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct PollConcurrencyLimit {
    limit: ConcurrencyLimit,
    pending: Option<(u32, Pending)>,
}

impl PollConcurrencyLimit {
    /// Wraps `limit`.
    pub fn new(limit: ConcurrencyLimit) -> Self {
        Self {
            limit,
            pending: None,
        }
    }

    /// The wrapped limit.
    pub fn limit(&self) -> &ConcurrencyLimit {
        &self.limit
    }

    /// The wrapped limit, dropping any pending wait.
    pub fn into_inner(self) -> ConcurrencyLimit {
        self.limit
    }

    /// Polls for one permit: `Ready` with it, or `Pending` with the task
    /// registered to be woken when it may be granted.
    ///
    /// ```
    /// use heijunka_backpressure::{ConcurrencyLimit, PollConcurrencyLimit};
    /// use std::task::{Context, Poll, Waker};
    ///
    /// let limit = ConcurrencyLimit::new(1)?;
    /// let held = limit.try_acquire()?;
    /// let mut poll = PollConcurrencyLimit::new(limit.clone());
    /// let mut cx = Context::from_waker(Waker::noop());
    /// assert!(poll.poll_acquire(&mut cx).is_pending());
    /// drop(held);
    /// assert!(matches!(poll.poll_acquire(&mut cx), Poll::Ready(Ok(_))));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`AcquireError::Closed`] once the limit is closed.
    ///
    /// # Cancel safety
    ///
    /// Not a future: stopping polling keeps the place in the queue until the next
    /// poll or until this is dropped, which gives back any permit assigned
    /// meanwhile and leaves no waiter behind.
    pub fn poll_acquire(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<OwnedPermit, AcquireError>> {
        self.poll_acquire_many(cx, 1)
    }

    /// [`poll_acquire`](Self::poll_acquire) for `n` permits. Asking for a
    /// different `n` than the pending wait drops that wait and starts another.
    ///
    /// ```
    /// use heijunka_backpressure::{ConcurrencyLimit, PollConcurrencyLimit};
    /// use std::task::{Context, Poll, Waker};
    ///
    /// let mut poll = PollConcurrencyLimit::new(ConcurrencyLimit::new(4)?);
    /// let mut cx = Context::from_waker(Waker::noop());
    /// let Poll::Ready(Ok(permit)) = poll.poll_acquire_many(&mut cx, 3) else { unreachable!() };
    /// assert_eq!(permit.num_permits(), 3);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`ConcurrencyLimit::acquire_many`].
    ///
    /// # Cancel safety
    ///
    /// As [`poll_acquire`](Self::poll_acquire).
    pub fn poll_acquire_many(
        &mut self,
        cx: &mut Context<'_>,
        n: u32,
    ) -> Poll<Result<OwnedPermit, AcquireError>> {
        if self.pending.as_ref().is_some_and(|(m, _)| *m != n) {
            self.pending = None;
        }
        if self.pending.is_none() {
            match self.limit.try_grant_owned(n) {
                Ok(permit) => return Poll::Ready(Ok(permit)),
                Err(e) => {
                    if let Some(e) = AcquireError::from_try(e) {
                        return Poll::Ready(Err(e));
                    }
                }
            }
            self.pending = Some((n, Box::pin(self.limit.acquire_many_owned(n))));
        }
        let (_, fut) = self.pending.as_mut().expect("set just above");
        let out = fut.as_mut().poll(cx);
        if out.is_ready() {
            self.pending = None;
        }
        out
    }
}

impl Clone for PollConcurrencyLimit {
    /// A handle to the same limit, without the pending wait.
    fn clone(&self) -> Self {
        Self::new(self.limit.clone())
    }
}

impl fmt::Debug for PollConcurrencyLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PollConcurrencyLimit")
            .field("limit", &self.limit)
            .field("waiting", &self.pending.is_some())
            .finish()
    }
}
