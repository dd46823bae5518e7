//! [`Policy`]: the admission stages of the stack composed in one fixed order around
//! a call.
//!
//! # Order
//!
//! 1. **Deadline** — the request's deadline, shortened by the policy's
//!    [`timeout`](PolicyBuilder::timeout). A request already cancelled or past its
//!    deadline is refused before it costs anything; a call still running at the
//!    deadline is stopped ([`PolicyError::TimedOut`]).
//! 2. **Rate limit** — refuses over the configured rate, with a retry-after.
//! 3. **Load shed** — the memory gate, then each load-shedding signal in the order
//!    added (queue pressure, a `LoadShedder`, anything returning a [`Rejection`]).
//! 4. **Concurrency** — a static [`ConcurrencyLimit`] or an adaptive limit; refuses
//!    at once when no permit is free.
//! 5. **Breaker** — refuses while the dependency's circuit is open.
//! 6. The call.
//!
//! The cheap, stateless checks come first and the ones that hold something (a
//! permit, a half-open probe slot) last, so a request refused by an earlier stage
//! never takes a permit or a probe from a later one. Each stage is optional; a stage
//! not configured costs one branch on `None`.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use heijunka_backpressure::{
    AdaptiveLimit, ConcurrencyLimit, OwnedAdaptivePermit, OwnedPermit as LimitPermit, RateLimiter,
    Signal as ShedSignal,
};
use heijunka_breaker::{CircuitBreaker, OwnedPermit as BreakerPermit};
use heijunka_core::{ConfigError, Rejection, validate};
use heijunka_memory::MemoryGate;
use tokio::time::Instant;

use crate::context::RequestContext;

/// A load-shedding signal: refuses with a reason when the system should shed.
type Signal = Arc<dyn Fn() -> Result<(), Rejection> + Send + Sync>;

/// The stage of a [`Policy`] that refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// The request was cancelled or its deadline had passed.
    Deadline,
    /// The rate limiter.
    RateLimit,
    /// The memory gate or a load-shedding signal.
    LoadShed,
    /// The concurrency limit.
    Concurrency,
    /// The circuit breaker.
    Breaker,
}

impl Stage {
    /// A short lowercase name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Deadline => "deadline",
            Stage::RateLimit => "rate_limit",
            Stage::LoadShed => "load_shed",
            Stage::Concurrency => "concurrency",
            Stage::Breaker => "breaker",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why [`Policy::call`] returned no value.
#[derive(Debug, PartialEq, Eq)]
pub enum PolicyError<E> {
    /// A stage refused the request before the call started.
    Rejected {
        /// Which stage.
        stage: Stage,
        /// Why, with a retry-after where one is known.
        reason: Rejection,
    },
    /// The call was still running at the deadline and was stopped.
    TimedOut {
        /// The time it was given, from the start of [`Policy::call`].
        after: Duration,
    },
    /// The request was cancelled while the call ran (shutdown, or the caller).
    Cancelled,
    /// The call returned its own error.
    Call(E),
}

impl<E> PolicyError<E> {
    /// The shared rejection reason: the refusing stage's reason,
    /// [`Rejection::TimedOut`] or [`Rejection::ShuttingDown`]; `None` for the
    /// call's own error.
    pub fn rejection(&self) -> Option<Rejection> {
        match self {
            PolicyError::Rejected { reason, .. } => Some(*reason),
            PolicyError::TimedOut { after } => Some(Rejection::TimedOut { after: *after }),
            PolicyError::Cancelled => Some(Rejection::ShuttingDown),
            PolicyError::Call(_) => None,
        }
    }

    /// The stage that refused the request, if one did.
    pub fn stage(&self) -> Option<Stage> {
        match self {
            PolicyError::Rejected { stage, .. } => Some(*stage),
            PolicyError::TimedOut { .. } | PolicyError::Cancelled => Some(Stage::Deadline),
            PolicyError::Call(_) => None,
        }
    }

    /// The call's own error, if that is what this is.
    pub fn into_call_error(self) -> Option<E> {
        match self {
            PolicyError::Call(e) => Some(e),
            _ => None,
        }
    }

    fn rejected(stage: Stage, reason: Rejection) -> Self {
        PolicyError::Rejected { stage, reason }
    }
}

impl<E: fmt::Display> fmt::Display for PolicyError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyError::Rejected { stage, reason } => write!(f, "refused by {stage}: {reason}"),
            PolicyError::TimedOut { after } => write!(f, "timed out after {after:?}"),
            PolicyError::Cancelled => f.write_str("cancelled"),
            PolicyError::Call(e) => write!(f, "{e}"),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for PolicyError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PolicyError::Call(e) => Some(e),
            _ => None,
        }
    }
}

/// Builds a [`Policy`]; see [`Policy::builder`]. Every stage is optional.
#[derive(Default)]
#[must_use = "a builder does nothing until `build()`"]
pub struct PolicyBuilder {
    timeout: Option<Duration>,
    rate: Option<Arc<dyn RateLimiter>>,
    memory: Option<MemoryGate>,
    signals: Vec<(String, Signal)>,
    limit: Option<Limit>,
    breaker: Option<CircuitBreaker>,
}

/// The concurrency stage: static or adaptive.
#[derive(Clone)]
enum Limit {
    Static(ConcurrencyLimit),
    Adaptive(AdaptiveLimit),
}

impl Limit {
    fn describe(&self) -> String {
        match self {
            Limit::Static(l) => format!("static {}", l.limit()),
            Limit::Adaptive(l) => format!("adaptive {}", l.limit()),
        }
    }
}

/// A permit of either kind of limit.
enum Permit {
    /// Released on drop.
    Static(#[allow(dead_code)] LimitPermit),
    Adaptive(OwnedAdaptivePermit),
}

impl PolicyBuilder {
    /// The most time a call may take (the request's own deadline applies too; the
    /// earlier wins). Must not be zero.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Refuses requests over this limiter's rate (any heijunka rate limiter, or
    /// yours).
    pub fn rate_limiter(mut self, limiter: impl RateLimiter + 'static) -> Self {
        self.rate = Some(Arc::new(limiter));
        self
    }

    /// [`rate_limiter`](Self::rate_limiter) with a shared limiter.
    pub fn shared_rate_limiter(mut self, limiter: Arc<dyn RateLimiter>) -> Self {
        self.rate = Some(limiter);
        self
    }

    /// Refuses under memory pressure (the gate's levels).
    pub fn memory_gate(mut self, gate: MemoryGate) -> Self {
        self.memory = Some(gate);
        self
    }

    /// Adds a load-shedding signal, checked in the order added after the memory
    /// gate: a queue's pressure, a `LoadShedder`, any check of yours. `name` shows
    /// in `Debug` output.
    pub fn shed_signal(
        mut self,
        name: impl Into<String>,
        signal: impl Fn() -> Result<(), Rejection> + Send + Sync + 'static,
    ) -> Self {
        self.signals.push((name.into(), Arc::new(signal)));
        self
    }

    /// Refuses at once when no permit of `limit` is free. Clones of a limit share
    /// its permits, so one limit can guard several policies. Replaces an adaptive
    /// limit set before.
    pub fn concurrency_limit(mut self, limit: ConcurrencyLimit) -> Self {
        self.limit = Some(Limit::Static(limit));
        self
    }

    /// An adaptive concurrency limit (AIMD, Vegas, Gradient2): refuses at once when
    /// its current limit is reached, and learns from each call: a success is a
    /// latency sample, a time-out a drop, an error or a cancellation is ignored.
    /// Replaces a static limit set before.
    pub fn adaptive_limit(mut self, limit: AdaptiveLimit) -> Self {
        self.limit = Some(Limit::Adaptive(limit));
        self
    }

    /// Adds a `LoadShedder` (or any other backpressure
    /// [`Signal`](heijunka_backpressure::Signal): a queue's pressure, a limit) as a
    /// load-shedding signal, checked after the memory gate in the order added.
    pub fn load_shedder(
        mut self,
        name: impl Into<String>,
        signal: impl ShedSignal + 'static,
    ) -> Self {
        self.signals
            .push((name.into(), Arc::new(move || signal.check())));
        self
    }

    /// Refuses while `breaker` is open, and records each call's outcome in it.
    pub fn breaker(mut self, breaker: CircuitBreaker) -> Self {
        self.breaker = Some(breaker);
        self
    }

    /// The policy.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `timeout` for a zero timeout, or
    /// `shed_signal.name` for an empty signal name.
    pub fn build(self) -> Result<Policy, ConfigError> {
        if let Some(t) = self.timeout {
            validate::non_zero_duration("timeout", t)?;
        }
        if let Some((name, _)) = self.signals.iter().find(|(n, _)| n.trim().is_empty()) {
            return Err(ConfigError::new(
                "shed_signal.name",
                format!("{name:?}"),
                "must not be empty",
            ));
        }
        Ok(Policy {
            inner: Arc::new(Inner {
                timeout: AtomicU64::new(timeout_nanos(self.timeout)),
                rate: self.rate,
                memory: self.memory,
                signals: self.signals.into_boxed_slice(),
                limit: self.limit,
                breaker: self.breaker,
            }),
        })
    }
}

impl fmt::Debug for PolicyBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyBuilder")
            .field("timeout", &self.timeout)
            .field("rate_limit", &self.rate.is_some())
            .field("memory_gate", &self.memory.is_some())
            .field(
                "shed_signals",
                &self
                    .signals
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>(),
            )
            .field(
                "concurrency_limit",
                &self.limit.as_ref().map(Limit::describe),
            )
            .field("breaker", &self.breaker.as_ref().map(CircuitBreaker::name))
            .finish()
    }
}

struct Inner {
    /// The timeout in nanoseconds, 0 for none (changed at run time by
    /// [`Policy::set_timeout`]).
    timeout: AtomicU64,
    rate: Option<Arc<dyn RateLimiter>>,
    memory: Option<MemoryGate>,
    signals: Box<[(String, Signal)]>,
    limit: Option<Limit>,
    breaker: Option<CircuitBreaker>,
}

impl Inner {
    fn timeout(&self) -> Option<Duration> {
        // Relaxed: see `Policy::set_timeout`.
        match self.timeout.load(Ordering::Relaxed) {
            0 => None,
            n => Some(Duration::from_nanos(n)),
        }
    }
}

/// A timeout in nanoseconds (saturating at about 584 years), 0 for none.
fn timeout_nanos(timeout: Option<Duration>) -> u64 {
    timeout.map_or(0, |t| u64::try_from(t.as_nanos()).unwrap_or(u64::MAX).max(1))
}

/// Admission control for calls to one kind of work or one dependency: deadline →
/// rate limit → load shed → concurrency limit → circuit breaker → the call (the
/// [module docs](self) explain the order).
///
/// Clones share the same stages.
///
/// ```
/// use heijunka::context::RequestContext;
/// use heijunka::policy::{Policy, PolicyError, Stage};
/// use heijunka::backpressure::{ConcurrencyLimit, Gcra};
/// use heijunka::breaker::CircuitBreaker;
/// use heijunka::core::Rejection;
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let policy = Policy::builder()
///     .timeout(Duration::from_secs(2))
///     .rate_limiter(Gcra::builder(1000.0).burst(100).build()?)
///     .concurrency_limit(ConcurrencyLimit::new(64)?)
///     .breaker(CircuitBreaker::builder().name("inventory").build()?)
///     .build()?;
///
/// let ctx = RequestContext::new();
/// let stock = policy
///     .call(&ctx, |ctx| async move {
///         // The call sees the request's deadline and cancellation.
///         assert!(!ctx.is_cancelled());
///         Ok::<_, std::io::Error>(42)
///     })
///     .await?;
/// assert_eq!(stock, 42);
///
/// // A refusal names the stage and the reason.
/// let limit = ConcurrencyLimit::new(1)?;
/// let tight = Policy::builder().concurrency_limit(limit.clone()).build()?;
/// let _held = limit.try_acquire()?;
/// let err = tight.call(&ctx, |_| async { Ok::<_, std::io::Error>(()) }).await.unwrap_err();
/// assert!(matches!(
///     err,
///     PolicyError::Rejected { stage: Stage::Concurrency, reason: Rejection::AtCapacity { limit: 1 } }
/// ));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Policy {
    inner: Arc<Inner>,
}

/// A request let in by [`Policy::try_admit`]: holds its concurrency permit and
/// breaker probe until the caller reports the outcome (or drops it: then the
/// breaker records nothing and the permit is released).
#[must_use = "an admission holds a permit; report the outcome when the work is done"]
pub struct Admission {
    limit: Option<Permit>,
    breaker: Option<BreakerPermit>,
    deadline: Instant,
    started: Instant,
}

impl Admission {
    /// The work succeeded: a success in the breaker, a latency sample for an
    /// adaptive limit.
    pub fn success(mut self) {
        if let Some(p) = self.breaker.take() {
            p.success();
        }
        if let Some(Permit::Adaptive(p)) = self.limit.take() {
            p.success();
        }
    }

    /// The work failed with an error: a failure in the breaker; an adaptive limit
    /// ignores it (a fast error says nothing about capacity).
    pub fn failure(mut self) {
        if let Some(p) = self.breaker.take() {
            p.failure();
        }
        if let Some(Permit::Adaptive(p)) = self.limit.take() {
            p.ignore();
        }
    }

    /// The work ran past its deadline: a failure in the breaker and a drop for an
    /// adaptive limit (which shrinks).
    pub fn timed_out(mut self) {
        if let Some(p) = self.breaker.take() {
            p.failure();
        }
        if let Some(Permit::Adaptive(p)) = self.limit.take() {
            p.dropped();
        }
    }

    /// The outcome says nothing about the dependency's health (the caller went
    /// away, a client error): neither the breaker nor an adaptive limit records
    /// anything.
    pub fn ignore(mut self) {
        if let Some(p) = self.breaker.take() {
            p.ignore();
        }
        if let Some(Permit::Adaptive(p)) = self.limit.take() {
            p.ignore();
        }
    }

    /// When the work must be done: the earlier of the request's deadline and the
    /// policy's timeout.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Time since admission.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Whether a concurrency permit is held.
    pub fn holds_permit(&self) -> bool {
        self.limit.is_some()
    }
}

impl fmt::Debug for Admission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admission")
            .field("permit", &self.limit.is_some())
            .field("breaker", &self.breaker.is_some())
            .field("deadline", &self.deadline)
            .finish()
    }
}

impl Policy {
    /// A builder with no stage configured.
    pub fn builder() -> PolicyBuilder {
        PolicyBuilder::default()
    }

    /// The configured timeout, if any.
    pub fn timeout(&self) -> Option<Duration> {
        self.inner.timeout()
    }

    /// Changes the timeout at run time (`None` removes it): requests admitted from
    /// now on get the new one; requests already admitted keep the deadline they
    /// were given.
    ///
    /// ```
    /// use heijunka::policy::Policy;
    /// use std::time::Duration;
    ///
    /// let policy = Policy::builder().timeout(Duration::from_secs(2)).build()?;
    /// policy.set_timeout(Some(Duration::from_millis(500)))?;
    /// assert_eq!(policy.timeout(), Some(Duration::from_millis(500)));
    /// # Ok::<(), heijunka::core::ConfigError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `timeout` for a zero timeout (the old one is kept).
    pub fn set_timeout(&self, timeout: Option<Duration>) -> Result<(), ConfigError> {
        if let Some(t) = timeout {
            validate::non_zero_duration("timeout", t)?;
        }
        // Relaxed: a single value read on its own by each admission; nothing else
        // is published with it.
        self.inner
            .timeout
            .store(timeout_nanos(timeout), Ordering::Relaxed);
        Ok(())
    }

    /// The static concurrency limit, if that is the concurrency stage.
    pub fn concurrency_limit(&self) -> Option<&ConcurrencyLimit> {
        match &self.inner.limit {
            Some(Limit::Static(l)) => Some(l),
            _ => None,
        }
    }

    /// The adaptive concurrency limit, if that is the concurrency stage.
    pub fn adaptive_limit(&self) -> Option<&AdaptiveLimit> {
        match &self.inner.limit {
            Some(Limit::Adaptive(l)) => Some(l),
            _ => None,
        }
    }

    /// The breaker, if any.
    pub fn breaker(&self) -> Option<&CircuitBreaker> {
        self.inner.breaker.as_ref()
    }

    /// Runs the admission stages (everything up to the call) and returns what the
    /// request holds; the caller runs the work, then reports its outcome on the
    /// [`Admission`]. [`call`](Self::call) does all of this for a future; tower
    /// layers use this form so the permit can live until a response body ends.
    ///
    /// # Errors
    ///
    /// [`PolicyError::Cancelled`] or [`PolicyError::Rejected`] with the first stage
    /// that refused.
    pub fn try_admit(
        &self,
        ctx: &RequestContext,
    ) -> Result<Admission, PolicyError<std::convert::Infallible>> {
        let s = &*self.inner;
        if ctx.is_cancelled() {
            return Err(PolicyError::Cancelled);
        }
        let started = Instant::now();
        let deadline = match s.timeout() {
            Some(t) => started
                .checked_add(t)
                .map_or(ctx.deadline(), |d| d.min(ctx.deadline())),
            None => ctx.deadline(),
        };
        if started >= deadline {
            return Err(PolicyError::rejected(
                Stage::Deadline,
                Rejection::TimedOut {
                    after: ctx.elapsed(),
                },
            ));
        }
        if let Some(rate) = &s.rate
            && let Err(e) = rate.check()
        {
            let reason = e.reason().unwrap_or(Rejection::RateLimited {
                retry_after: Duration::ZERO,
            });
            return Err(PolicyError::rejected(Stage::RateLimit, reason));
        }
        if let Some(gate) = &s.memory {
            gate.check()
                .map_err(|r| PolicyError::rejected(Stage::LoadShed, r))?;
        }
        for (_, signal) in &*s.signals {
            signal().map_err(|r| PolicyError::rejected(Stage::LoadShed, r))?;
        }
        let limit = match &s.limit {
            Some(Limit::Static(l)) => Some(Permit::Static(l.try_acquire_owned().map_err(|e| {
                PolicyError::rejected(
                    Stage::Concurrency,
                    e.reason().unwrap_or(Rejection::AtCapacity {
                        limit: u64::from(l.limit()),
                    }),
                )
            })?)),
            Some(Limit::Adaptive(l)) => {
                Some(Permit::Adaptive(l.try_acquire_owned().map_err(|e| {
                    PolicyError::rejected(
                        Stage::Concurrency,
                        e.reason().unwrap_or(Rejection::AtCapacity {
                            limit: l.limit() as u64,
                        }),
                    )
                })?))
            }
            None => None,
        };
        let breaker = match &s.breaker {
            Some(b) => Some(
                b.try_acquire_owned()
                    .map_err(|r| PolicyError::rejected(Stage::Breaker, r.reason()))?,
            ),
            None => None,
        };
        Ok(Admission {
            limit,
            breaker,
            deadline,
            started,
        })
    }

    /// Runs `f` through the stages. `f` gets the request's context (for its
    /// deadline, cancellation and trace id); the future it returns is stopped at
    /// the deadline or on cancellation. Outcomes go to the breaker: `Ok` is a
    /// success, `Err` and a time-out are failures, a cancellation is ignored.
    ///
    /// # Errors
    ///
    /// [`PolicyError::Rejected`] naming the stage that refused,
    /// [`PolicyError::TimedOut`], [`PolicyError::Cancelled`], or the call's own
    /// error in [`PolicyError::Call`].
    pub async fn call<T, E, F, Fut>(&self, ctx: &RequestContext, f: F) -> Result<T, PolicyError<E>>
    where
        F: FnOnce(RequestContext) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let admission = self.try_admit(ctx).map_err(|e| match e {
            PolicyError::Rejected { stage, reason } => PolicyError::Rejected { stage, reason },
            PolicyError::TimedOut { after } => PolicyError::TimedOut { after },
            PolicyError::Cancelled => PolicyError::Cancelled,
        })?;
        let deadline = admission.deadline();
        let fut = f(ctx.clone());
        // The call first: one that finishes at once never registers a timer or a
        // cancellation waiter.
        let outcome = tokio::select! {
            biased;
            r = tokio::time::timeout_at(deadline, fut) => Some(r),
            () = ctx.cancelled() => None,
        };
        match outcome {
            None => {
                admission.ignore();
                Err(PolicyError::Cancelled)
            }
            Some(Err(_elapsed)) => {
                let after = admission.elapsed();
                admission.timed_out();
                Err(PolicyError::TimedOut { after })
            }
            Some(Ok(Ok(v))) => {
                admission.success();
                Ok(v)
            }
            Some(Ok(Err(e))) => {
                admission.failure();
                Err(PolicyError::Call(e))
            }
        }
    }
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &*self.inner;
        f.debug_struct("Policy")
            .field("timeout", &s.timeout())
            .field("rate_limit", &s.rate.is_some())
            .field("memory_gate", &s.memory.is_some())
            .field(
                "shed_signals",
                &s.signals
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("concurrency_limit", &s.limit.as_ref().map(Limit::describe))
            .field("breaker", &s.breaker.as_ref().map(CircuitBreaker::name))
            .finish()
    }
}
