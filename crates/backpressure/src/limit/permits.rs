//! The permit pool under [`ConcurrencyLimit`](crate::ConcurrencyLimit): tokio's
//! semaphore, and the debt that lets the limit shrink without revoking a permit.
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

use std::future::poll_fn;
use std::pin::pin;
use std::task::Poll;

use heijunka_core::sync::Mutex;
use heijunka_core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use tokio::sync::{Notify, Semaphore, TryAcquireError as TokioTryAcquireError};

use heijunka_core::ConfigError;

use super::MAX_PERMITS;
use crate::acquire::{AcquireError, TryAcquireError};
use crate::metrics::LimitMetrics;

/// The permits of one limit, shared by its handles and owned permits.
pub(super) struct Inner {
    pub(super) semaphore: Semaphore,
    /// Permits the semaphore holds beyond `limit` (see the module docs).
    pub(super) debt: AtomicU32,
    pub(super) limit: AtomicU32,
    /// Permits held by live permit guards: up when a grant is kept, down when a
    /// guard releases or forgets them. Not the semaphore's count, which also
    /// lacks the free permits tokio has already handed to the waiter at the head
    /// of its queue (not held by anyone until that waiter completes).
    pub(super) held: AtomicU32,
    pub(super) waiting: AtomicUsize,
    /// Wakes waiters when the limit changes, so one asking for more than the new
    /// limit is refused instead of waiting forever.
    shrunk: Notify,
    /// Serialises `set_limit` / `add_permits`. The guarded data is `()`, so a
    /// poisoned lock is taken as it is.
    resize: Mutex<()>,
    /// In flight: up when permits are granted (`grant`), down when released
    /// (`release`); nothing else on the acquire / release path.
    pub(super) metrics: LimitMetrics,
}

impl Inner {
    pub(super) fn new(permits: u32, name: &str) -> Self {
        let metrics = LimitMetrics::new(name);
        metrics.limit.set(f64::from(permits));
        Self {
            semaphore: Semaphore::new(permits as usize),
            debt: AtomicU32::new(0),
            limit: AtomicU32::new(permits),
            held: AtomicU32::new(0),
            waiting: AtomicUsize::new(0),
            shrunk: Notify::new(),
            resize: Mutex::new(()),
            metrics,
        }
    }

    /// Refuses an `n` that can never be granted.
    #[inline]
    fn check(&self, n: u32) -> Result<(), AcquireError> {
        if n == 0 {
            return Err(AcquireError::ZeroPermits);
        }
        // A single permit never exceeds a limit of 1 or more, and a limit of 0 is
        // a closed gate, where every request up to `MAX_PERMITS` waits for
        // permits to be added (tokio's `Semaphore::new(0)`): so it needs no load.
        if n > 1 {
            let limit = self.limit.load(Ordering::SeqCst);
            if limit > 0 && n > limit {
                return Err(AcquireError::ExceedsLimit { n, limit });
            }
            // At a limit of 0: no limit can ever reach `n`, and tokio's semaphore
            // asserts `n <= usize::MAX >> 3` (below `u32::MAX` on 32-bit).
            if n > MAX_PERMITS {
                return Err(AcquireError::ExceedsLimit {
                    n,
                    limit: MAX_PERMITS,
                });
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
    pub(super) fn release(&self, w: u32) {
        self.unhold(w);
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

    /// [`try_grant`](Self::try_grant), counting a refusal at capacity as rejected
    /// (the `try_` acquisitions).
    #[inline]
    pub(super) fn try_take(&self, n: u32) -> Result<(), TryAcquireError> {
        let r = self.try_grant(n);
        if let Err(TryAcquireError::AtCapacity { .. }) = r {
            self.metrics.rejected.increment(1);
        }
        r
    }

    /// `n` permits if they are free now; on success they are taken (forgotten in
    /// the semaphore, counted in flight) and the caller must wrap them in a permit
    /// at once.
    #[inline]
    pub(super) fn try_grant(&self, n: u32) -> Result<(), TryAcquireError> {
        self.check(n)?;
        loop {
            match self.semaphore.try_acquire_many(n) {
                Ok(permit) => {
                    permit.forget();
                    if self.keep_granted(n) {
                        self.hold(n);
                        return Ok(());
                    }
                }
                Err(TokioTryAcquireError::NoPermits) => {
                    return Err(TryAcquireError::AtCapacity {
                        limit: self.limit.load(Ordering::SeqCst),
                    });
                }
                Err(TokioTryAcquireError::Closed) => return Err(TryAcquireError::Closed),
            }
        }
    }

    /// Waits for `n` permits; on success they are taken (forgotten in the
    /// semaphore) and the caller must wrap them in a permit at once.
    pub(super) async fn take(&self, n: u32) -> Result<(), AcquireError> {
        match self.try_grant(n) {
            Ok(()) => return Ok(()),
            Err(e) => {
                if let Some(e) = AcquireError::from_try(e) {
                    return Err(e);
                }
            }
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
                // No await between here and the caller's permit: a cancelled
                // acquisition never counted, a completed one is released by it.
                self.hold(n);
                return Ok(());
            }
        }
    }

    /// Counts `n` permits as held by a guard (kept grants only).
    #[inline]
    fn hold(&self, n: u32) {
        // Relaxed: a statistic (`in_use`), ordered with nothing else.
        self.held.fetch_add(n, Ordering::Relaxed);
        self.metrics.in_flight.increment(f64::from(n));
    }

    /// Counts `w` permits as no longer held (released or forgotten).
    #[inline]
    fn unhold(&self, w: u32) {
        // Relaxed: as in `hold`.
        self.held.fetch_sub(w, Ordering::Relaxed);
        self.metrics.in_flight.decrement(f64::from(w));
    }

    /// Removes `w` held permits for good (tokio's `SemaphorePermit::forget`): they
    /// pay the debt first, and what is left lowers the limit.
    pub(super) fn forget(&self, w: u32) {
        let guard = self.resize.lock().unwrap_or_else(|e| e.into_inner());
        self.unhold(w);
        let rest = w - self.pay_debt(w);
        if rest > 0 {
            let new = self.limit.load(Ordering::SeqCst).saturating_sub(rest);
            self.limit.store(new, Ordering::SeqCst);
            self.metrics.limit.set(f64::from(new));
        }
        drop(guard);
        if rest > 0 {
            self.shrunk.notify_waiters();
        }
    }

    /// Removes up to `n` free permits for good (tokio's
    /// `Semaphore::forget_permits`), lowering the limit by as many; returns how
    /// many.
    pub(super) fn forget_free(&self, n: u32) -> u32 {
        let guard = self.resize.lock().unwrap_or_else(|e| e.into_inner());
        // Free permits pay a debt first: they are the limit's only above it.
        self.settle();
        // At most the limit: permits beyond it are owed (and paid by `settle`).
        let n = n.min(self.limit.load(Ordering::SeqCst));
        let forgotten = self.semaphore.forget_permits(n as usize) as u32;
        if forgotten > 0 {
            let new = self.limit.load(Ordering::SeqCst).saturating_sub(forgotten);
            self.limit.store(new, Ordering::SeqCst);
            self.metrics.limit.set(f64::from(new));
        }
        drop(guard);
        if forgotten > 0 {
            self.shrunk.notify_waiters();
        }
        forgotten
    }

    /// Moves the limit to `to(old)`, serialised with other resizes. Waiters are
    /// woken (permits added, or told of a shrink) after the resize lock is
    /// released, so no waker runs under it.
    pub(super) fn resize(
        &self,
        to: impl FnOnce(u32) -> Result<u32, ConfigError>,
    ) -> Result<(), ConfigError> {
        let guard = self.resize.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.limit.load(Ordering::SeqCst);
        let new = to(old)?;
        if new > old {
            // Grow: what is owed first, the rest as new permits.
            let d = new - old;
            let rest = d - self.pay_debt(d);
            self.limit.store(new, Ordering::SeqCst);
            self.metrics.limit.set(f64::from(new));
            drop(guard);
            if rest > 0 {
                self.semaphore.add_permits(rest as usize);
            }
            if old == 0 && !self.semaphore.is_closed() {
                // Waiters at a closed gate (limit 0) waited whatever they asked
                // for: one above the new limit is refused now. (Once closed,
                // every waiter has been woken with the closed error already.)
                self.shrunk.notify_waiters();
            }
        } else if new < old {
            // Shrink: the difference is owed, paid at once by free permits as far
            // as there are any; waiters re-check their `n` against the new limit.
            self.limit.store(new, Ordering::SeqCst);
            self.metrics.limit.set(f64::from(new));
            self.debt.fetch_add(old - new, Ordering::SeqCst);
            self.settle();
            drop(guard);
            self.shrunk.notify_waiters();
        }
        Ok(())
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

#[cfg(all(test, loom))]
mod loom_tests {
    use crate::ConcurrencyLimit;
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

    /// A shrink racing an acquisition of the free permits it means to forget: the
    /// part it could not forget stays owed, so once the acquirer releases, the
    /// permits add up to the new limit.
    #[test]
    fn shrink_racing_an_acquire_keeps_what_it_could_not_forget_owed() {
        loom::model(|| {
            let limit = ConcurrencyLimit::new(2).unwrap();
            let other = limit.clone();
            let t = thread::spawn(move || {
                // Granted or not, the permits go back when the thread ends.
                let a = other.try_acquire_owned();
                let b = other.try_acquire_owned();
                drop((a, b));
            });
            limit.set_limit(1).unwrap();
            t.join().unwrap();
            let one = limit.try_acquire().expect("a permit at the new limit");
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
