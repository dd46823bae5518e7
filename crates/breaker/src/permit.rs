//! Guarded calls: the closure and future APIs, and the permission guards they are
//! built on.

use std::future::Future;

use crate::config::PermitDrop;
use crate::machine::{Inner, Kind, Ticket};
use crate::{CallError, CircuitBreaker, Rejected, State};

/// How the breaker should count an error a call returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// A failure of the dependency: counts towards the failure rate and the
    /// absolute thresholds.
    Failure,
    /// Neither success nor failure: recorded nothing (a half-open probe slot goes
    /// back), like resilience4j's `ignoreExceptions` (a caller's own mistake, a
    /// cancelled request).
    Ignore,
    /// A sign that the dependency is healthy, though the call failed (a "not
    /// found"): recorded as a success.
    Success,
}

impl CircuitBreaker {
    /// Asks to make one call. The [`Permit`] records the call's outcome with
    /// [`success`](Permit::success), [`failure`](Permit::failure) or
    /// [`ignore`](Permit::ignore); dropped without one, it records nothing (or a
    /// failure, see [`PermitDrop`]), and a failure when its thread is panicking.
    ///
    /// A closed breaker admits with one atomic load, without locking, allocating or
    /// reading the clock (unless slow-call detection is on). Open or forced open, or
    /// half-open with every probe taken, it returns [`Rejected`].
    ///
    /// ```
    /// use heijunka_breaker::CircuitBreaker;
    ///
    /// let breaker = CircuitBreaker::builder()
    /// #   .clock(heijunka_core::ManualClock::new())
    ///     .build()?;
    /// let permit = breaker.try_acquire()?;
    /// let response: Result<u32, std::io::Error> = Ok(200); // the guarded call
    /// match &response {
    ///     Ok(_) => permit.success(),
    ///     Err(_) => permit.failure(),
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[inline]
    pub fn try_acquire(&self) -> Result<Permit<'_>, Rejected> {
        let ticket = self.inner.acquire()?;
        Ok(Permit {
            inner: &self.inner,
            ticket,
            armed: true,
        })
    }

    /// [`try_acquire`](Self::try_acquire) for a permit that outlives the borrow (to
    /// move into a spawned task). Clones the breaker's handle: one reference-count
    /// increment more than a [`Permit`].
    pub fn try_acquire_owned(&self) -> Result<OwnedPermit, Rejected> {
        let ticket = self.inner.acquire()?;
        Ok(OwnedPermit {
            breaker: self.clone(),
            ticket,
            armed: true,
        })
    }

    /// Runs `f` if the breaker admits it; an `Err` counts as a failure and an `Ok`
    /// as a success, unless the builder's
    /// [`classify_errors`](crate::BreakerBuilder::classify_errors) or
    /// [`classify_results`](crate::BreakerBuilder::classify_results) say otherwise
    /// for their types. A panic in `f` is recorded as a failure and then continues
    /// to unwind.
    ///
    /// `T` and `E` are `'static` because the builder's classifiers are found by
    /// type (`TypeId`, which only `'static` types have). For a borrowed result or
    /// error, use [`call_with`](Self::call_with), which takes no builder
    /// classifier and has no such bound.
    ///
    /// ```
    /// use heijunka_breaker::{CallError, CircuitBreaker};
    ///
    /// let breaker = CircuitBreaker::builder()
    /// #   .clock(heijunka_core::ManualClock::new())
    ///     .build()?;
    /// let r: Result<u32, CallError<&str>> = breaker.call(|| Ok(7));
    /// assert_eq!(r.unwrap(), 7);
    /// # Ok::<(), heijunka_core::ConfigError>(())
    /// ```
    #[inline]
    pub fn call<T, E, F>(&self, f: F) -> Result<T, CallError<E>>
    where
        T: 'static,
        E: 'static,
        F: FnOnce() -> Result<T, E>,
    {
        let permit = self.try_acquire()?;
        let classifiers = &self.inner.config.classifiers;
        match f() {
            Ok(v) => {
                // Without a result classifier (the common case) this is exactly a
                // plain `success`, so the closed path pays nothing for the feature.
                match classifiers.result(&v) {
                    Verdict::Success => permit.success(),
                    other => permit.verdict(other),
                }
                Ok(v)
            }
            Err(e) => {
                permit.verdict(classifiers.error(&e));
                Err(CallError::Failed(e))
            }
        }
    }

    /// Runs `f` if the breaker admits it; `classify` decides how an `Err` counts,
    /// and an `Ok` is a success. The builder's classifiers
    /// ([`classify_errors`](crate::BreakerBuilder::classify_errors),
    /// [`classify_results`](crate::BreakerBuilder::classify_results)) do not apply,
    /// so `T` and `E` may borrow (no `'static` bound). A panic in `f` is recorded as
    /// a failure and then continues to unwind.
    ///
    /// ```
    /// use heijunka_breaker::{CircuitBreaker, Verdict};
    /// use std::io::ErrorKind;
    ///
    /// let breaker = CircuitBreaker::builder()
    /// #   .clock(heijunka_core::ManualClock::new())
    ///     .build()?;
    /// // A missing file says nothing about the disk's health.
    /// let classify = |e: &std::io::Error| match e.kind() {
    ///     ErrorKind::NotFound => Verdict::Ignore,
    ///     _ => Verdict::Failure,
    /// };
    /// let r = breaker.call_with(classify, || std::fs::read("/no/such/file"));
    /// assert!(r.is_err());
    /// assert_eq!(breaker.stats().failed_calls, 0);
    /// # Ok::<(), heijunka_core::ConfigError>(())
    /// ```
    #[inline]
    pub fn call_with<T, E, F, C>(&self, classify: C, f: F) -> Result<T, CallError<E>>
    where
        F: FnOnce() -> Result<T, E>,
        C: FnOnce(&E) -> Verdict,
    {
        let permit = self.try_acquire()?;
        match f() {
            Ok(v) => {
                permit.success();
                Ok(v)
            }
            Err(e) => {
                permit.verdict(classify(&e));
                Err(CallError::Failed(e))
            }
        }
    }

    /// Awaits `fut` if the breaker admits it; outcomes count as in
    /// [`call`](Self::call) (an `Err` is a failure and an `Ok` a success unless the
    /// builder's classifiers say otherwise; `T` and `E` are `'static` for the same
    /// reason, see [`call_async_with`](Self::call_async_with) for borrowed types). A
    /// panic while polling `fut` is recorded as a failure and continues to unwind;
    /// dropping the returned future before it completes (a timeout, a `select!`)
    /// applies the [`PermitDrop`] rule. Needs no particular runtime.
    ///
    /// ```
    /// use heijunka_breaker::CircuitBreaker;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let breaker = CircuitBreaker::builder()
    /// #   .clock(heijunka_core::ManualClock::new())
    ///     .build()?;
    /// let body = breaker.call_async(async { Ok::<_, std::io::Error>("pong") }).await?;
    /// assert_eq!(body, "pong");
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// The permit is taken on the first poll, so a future dropped before it was
    /// ever polled takes nothing (not even a half-open probe slot). Dropped while
    /// `fut` is pending, it drops `fut` and its permit: under the default
    /// [`PermitDrop::Release`] nothing is recorded and a half-open probe slot goes
    /// back to the half-open period that gave it (a later
    /// [`try_acquire`](Self::try_acquire) can take it); under
    /// [`PermitDrop::RecordFailure`] a failure is recorded. A permit of a state that
    /// has ended meanwhile records nothing and gives nothing back.
    pub async fn call_async<T, E, Fut>(&self, fut: Fut) -> Result<T, CallError<E>>
    where
        T: 'static,
        E: 'static,
        Fut: Future<Output = Result<T, E>>,
    {
        let permit = self.try_acquire()?;
        let classifiers = &self.inner.config.classifiers;
        match fut.await {
            Ok(v) => {
                // Without a result classifier (the common case) this is exactly a
                // plain `success`, so the closed path pays nothing for the feature.
                match classifiers.result(&v) {
                    Verdict::Success => permit.success(),
                    other => permit.verdict(other),
                }
                Ok(v)
            }
            Err(e) => {
                permit.verdict(classifiers.error(&e));
                Err(CallError::Failed(e))
            }
        }
    }

    /// [`call_async`](Self::call_async) with a per-call classifier, as
    /// [`call_with`](Self::call_with): `classify` decides how an `Err` counts, an
    /// `Ok` is a success, the builder's classifiers do not apply, and `T` and `E`
    /// may borrow.
    ///
    /// # Cancel safety
    ///
    /// As [`call_async`](Self::call_async): nothing is taken before the first poll,
    /// and a future dropped while `fut` is pending applies the [`PermitDrop`] rule
    /// (the classifier is not called).
    pub async fn call_async_with<T, E, Fut, C>(
        &self,
        classify: C,
        fut: Fut,
    ) -> Result<T, CallError<E>>
    where
        Fut: Future<Output = Result<T, E>>,
        C: FnOnce(&E) -> Verdict,
    {
        let permit = self.try_acquire()?;
        match fut.await {
            Ok(v) => {
                permit.success();
                Ok(v)
            }
            Err(e) => {
                permit.verdict(classify(&e));
                Err(CallError::Failed(e))
            }
        }
    }
}

/// Permission for one call, borrowed from its breaker.
///
/// Record the outcome with [`success`](Self::success), [`failure`](Self::failure) or
/// [`ignore`](Self::ignore). Dropped without an outcome:
///
/// - while its thread panics: a failure;
/// - otherwise, by the breaker's [`PermitDrop`] rule: nothing (the default; a
///   half-open probe slot goes back to the breaker) or a failure.
///
/// An outcome counts in the state that admitted the call: if the breaker changed
/// state meanwhile (it opened, or a half-open period ended), the outcome is not
/// recorded.
#[must_use = "a permit records its call's outcome; dropping it at once records nothing"]
pub struct Permit<'a> {
    inner: &'a Inner,
    ticket: Ticket,
    armed: bool,
}

impl Permit<'_> {
    /// Records a success (a slow call, if slow-call detection is on and it took
    /// longer than the slow-call duration).
    #[inline]
    pub fn success(mut self) {
        self.armed = false;
        self.inner.on_success(self.ticket);
    }

    /// Records a failure.
    pub fn failure(mut self) {
        self.armed = false;
        self.inner.on_failure(self.ticket);
    }

    /// Records nothing: the call does not count (a half-open probe slot goes back).
    pub fn ignore(mut self) {
        self.armed = false;
        self.inner.release(self.ticket);
    }

    /// Records the outcome `verdict` names.
    #[inline]
    pub fn verdict(self, verdict: Verdict) {
        match verdict {
            Verdict::Failure => self.failure(),
            Verdict::Ignore => self.ignore(),
            Verdict::Success => self.success(),
        }
    }

    /// The state that admitted the call: closed, half-open (a probe) or disabled.
    pub fn admitted_in(&self) -> State {
        admitted_in(&self.ticket)
    }
}

impl Drop for Permit<'_> {
    #[inline]
    fn drop(&mut self) {
        if self.armed {
            dropped(self.inner, self.ticket);
        }
    }
}

impl std::fmt::Debug for Permit<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("breaker", &self.inner.config.name)
            .field("admitted_in", &self.admitted_in())
            .finish()
    }
}

/// A [`Permit`] that owns a handle to its breaker, for a call that outlives the
/// borrow. Same rules as [`Permit`].
#[must_use = "a permit records its call's outcome; dropping it at once records nothing"]
pub struct OwnedPermit {
    breaker: CircuitBreaker,
    ticket: Ticket,
    armed: bool,
}

impl OwnedPermit {
    /// Records a success (see [`Permit::success`]).
    pub fn success(mut self) {
        self.armed = false;
        self.breaker.inner.on_success(self.ticket);
    }

    /// Records a failure.
    pub fn failure(mut self) {
        self.armed = false;
        self.breaker.inner.on_failure(self.ticket);
    }

    /// Records nothing (see [`Permit::ignore`]).
    pub fn ignore(mut self) {
        self.armed = false;
        self.breaker.inner.release(self.ticket);
    }

    /// Records the outcome `verdict` names.
    #[inline]
    pub fn verdict(self, verdict: Verdict) {
        match verdict {
            Verdict::Failure => self.failure(),
            Verdict::Ignore => self.ignore(),
            Verdict::Success => self.success(),
        }
    }

    /// The state that admitted the call: closed, half-open (a probe) or disabled.
    pub fn admitted_in(&self) -> State {
        admitted_in(&self.ticket)
    }

    /// The breaker this permit belongs to.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }
}

impl Drop for OwnedPermit {
    fn drop(&mut self) {
        if self.armed {
            dropped(&self.breaker.inner, self.ticket);
        }
    }
}

impl std::fmt::Debug for OwnedPermit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnedPermit")
            .field("breaker", &self.breaker.name())
            .field("admitted_in", &self.admitted_in())
            .finish()
    }
}

fn admitted_in(t: &Ticket) -> State {
    match t.kind {
        Kind::Closed => State::Closed,
        Kind::Probe => State::HalfOpen,
        Kind::Disabled => State::Disabled,
        Kind::MetricsOnly => State::MetricsOnly,
    }
}

/// The drop rule: a panic is a failure; otherwise the configured rule.
#[cold]
fn dropped(inner: &Inner, ticket: Ticket) {
    if std::thread::panicking() {
        inner.on_failure(ticket);
        return;
    }
    match inner.config.permit_drop {
        PermitDrop::Release => inner.release(ticket),
        PermitDrop::RecordFailure => inner.on_failure(ticket),
    }
}
