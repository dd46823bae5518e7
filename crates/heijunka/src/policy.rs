//! [`Policy`]: the admission stages of the stack composed in one fixed order around
//! a call.
//!
//! # Order
//!
//! 1. **Deadline** — the request's deadline, shortened by the policy's
//!    [`timeout`](PolicyBuilder::timeout). A request already cancelled or past its
//!    deadline is refused before it costs anything; the call is given a context
//!    with that deadline (so it can pass on the time it really has), and a call
//!    still running at the deadline is stopped ([`PolicyError::TimedOut`]).
//! 2. **Rate limit** — refuses over the configured rate, with a retry-after (a
//!    GCRA's critical reserve is left to critical requests).
//! 3. **Load shed** — the memory gate, then each load-shedding signal in the order
//!    added (queue pressure, a `LoadShedder`, anything returning a [`Rejection`]),
//!    each asked for the request's [`Criticality`]:
//!    sheddable work is shed first, critical work last.
//! 4. **Concurrency** — a static [`ConcurrencyLimit`] or an adaptive limit; refuses
//!    at once when no permit is free, or with a [`max_wait`](PolicyBuilder::max_wait)
//!    waits that long for one ([`Policy::call`], [`Policy::admit`]).
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
use heijunka_core::{ConfigError, Criticality, Rejection, validate};
use heijunka_memory::MemoryGate;
use tokio::time::Instant;

use crate::context::RequestContext;

mod observe;

use self::observe::Observer;
pub use self::observe::{PolicyStats, RejectedCount};

/// A load-shedding signal: refuses work of a criticality with a reason when the
/// system should shed it.
type Signal = Arc<dyn Fn(Criticality) -> Result<(), Rejection> + Send + Sync>;

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
    name: Option<String>,
    timeout: Option<Duration>,
    max_wait: Option<Duration>,
    rate: Option<Arc<dyn RateLimiter>>,
    memory: Option<MemoryGate>,
    signals: Vec<(String, Signal)>,
    limit: Option<Limit>,
    critical_reserve: f64,
    sheddable_share: Option<f64>,
    breaker: Option<CircuitBreaker>,
    #[cfg(feature = "retry")]
    retry: Option<heijunka_retry::Retry>,
    #[cfg(feature = "retry")]
    hedge: Option<heijunka_retry::Hedge>,
    #[cfg(feature = "chaos")]
    chaos: Option<ChaosStage>,
    #[cfg(feature = "redis")]
    remote: Remote,
}

/// The stages whose state is in Redis (feature `redis`).
#[cfg(feature = "redis")]
#[derive(Clone, Default)]
struct Remote {
    rate: Option<heijunka_redis::RedisRateLimiter>,
    limit: Option<heijunka_redis::RedisConcurrencyLimit>,
}

/// How an admission treats the Redis stages.
pub(crate) enum RemoteStages {
    /// Decided without a round trip (a synchronous admission).
    Local,
    /// Already passed, holding this lease.
    #[cfg(feature = "redis")]
    Passed(Option<heijunka_redis::RedisPermit>),
}

/// A fault injector and the errors it makes, by the call's error type.
#[cfg(feature = "chaos")]
#[derive(Clone)]
struct ChaosStage {
    chaos: heijunka_retry::chaos::Chaos,
    errors: Vec<(std::any::TypeId, MakeError)>,
}

/// Makes an injected error (of the type registered with it), boxed.
#[cfg(feature = "chaos")]
type MakeError = Arc<dyn Fn() -> Box<dyn std::any::Any + Send> + Send + Sync>;

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
    /// The policy's name: the `name` label of its metrics, the `policy` field of
    /// its log lines, and [`PolicyStats::name`]. Default `"default"`; name each
    /// policy when a process runs several, or their metrics add up. Must not be
    /// empty.
    ///
    /// ```
    /// use heijunka::policy::Policy;
    ///
    /// let policy = Policy::builder().name("checkout").build()?;
    /// assert_eq!(policy.name(), "checkout");
    /// assert_eq!(policy.stats().name, "checkout");
    /// // An empty name is refused, naming the field.
    /// let err = Policy::builder().name("").build().unwrap_err();
    /// assert_eq!(err.field(), "name");
    /// # Ok::<(), heijunka::core::ConfigError>(())
    /// ```
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The most time a call may take (the request's own deadline applies too; the
    /// earlier wins). Must not be zero.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Waits up to `max_wait` for a concurrency permit (and never past the
    /// request's deadline) instead of refusing at once when the limit is full,
    /// as tower's `ConcurrencyLimit` with a timeout would. [`Policy::call`] and
    /// [`Policy::admit`] wait; [`Policy::try_admit`] never does. With
    /// [`PolicyLayer`](crate::tower::PolicyLayer) the wait happens in
    /// `poll_ready`, in readiness mode only
    /// ([`reserve_in_poll_ready`](crate::tower::PolicyLayer::reserve_in_poll_ready));
    /// the default mode refuses at once.
    /// Must not be zero.
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = Some(max_wait);
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

    /// Refuses under memory pressure (the gate's levels); sheddable requests
    /// ([`RequestContext::criticality`]) from the elevated level on
    /// ([`MemoryGate::check_for`]).
    pub fn memory_gate(mut self, gate: MemoryGate) -> Self {
        self.memory = Some(gate);
        self
    }

    /// Adds a load-shedding signal, checked in the order added after the memory
    /// gate: a queue's pressure, a `LoadShedder`, any check of yours. `name` shows
    /// in `Debug` output. The closure sheds every criticality alike; see
    /// [`shed_signal_for`](Self::shed_signal_for) for one that grades.
    pub fn shed_signal(
        mut self,
        name: impl Into<String>,
        signal: impl Fn() -> Result<(), Rejection> + Send + Sync + 'static,
    ) -> Self {
        self.signals
            .push((name.into(), Arc::new(move |_: Criticality| signal())));
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

    /// [`shed_signal`](Self::shed_signal) with a closure given the request's
    /// [`Criticality`], so it can shed sheddable work first and critical work
    /// last.
    ///
    /// ```
    /// use heijunka::context::RequestContext;
    /// use heijunka::core::{Criticality, Rejection};
    /// use heijunka::policy::Policy;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let policy = Policy::builder()
    ///     .shed_signal_for("batch-off", |c| match c {
    ///         Criticality::Sheddable => Err(Rejection::ShuttingDown),
    ///         _ => Ok(()),
    ///     })
    ///     .build()?;
    /// let batch = RequestContext::builder().criticality(Criticality::Sheddable).build();
    /// assert!(policy.try_admit(&batch).is_err());
    /// assert!(policy.try_admit(&RequestContext::new()).is_ok());
    /// # Ok(())
    /// # }
    /// ```
    pub fn shed_signal_for(
        mut self,
        name: impl Into<String>,
        signal: impl Fn(Criticality) -> Result<(), Rejection> + Send + Sync + 'static,
    ) -> Self {
        self.signals.push((name.into(), Arc::new(signal)));
        self
    }

    /// Adds a `LoadShedder` (or any other backpressure
    /// [`Signal`](heijunka_backpressure::Signal): a queue's pressure, a limit) as a
    /// load-shedding signal, checked after the memory gate in the order added.
    /// It is asked for the request's [`Criticality`]
    /// ([`Signal::check_for`](heijunka_backpressure::Signal::check_for)): a
    /// limit sheds sheddable work from 80 % in use, a queue from its warn mark.
    pub fn load_shedder(
        mut self,
        name: impl Into<String>,
        signal: impl ShedSignal + 'static,
    ) -> Self {
        self.signals
            .push((name.into(), Arc::new(move |c| signal.check_for(c))));
        self
    }

    /// Keeps the last `share` of the concurrency limit for critical requests
    /// ([`RequestContext::criticality`]): default and sheddable requests are
    /// refused ([`Stage::Concurrency`]) while no more than that share of its
    /// permits is free, so under overload critical work still finds room
    /// (Netflix's partitioned limiter does the same with a guaranteed share per
    /// partition). `0.1` with a limit of 100 refuses other work from 90 in use,
    /// the seeds' refuse-at-90 % mark. Default 0 (no reserve); in `[0, 1)`.
    ///
    /// The reserve is checked when the request is admitted, just before the
    /// permit is taken (not atomically with it: requests admitted at the same
    /// instant may each pass the check, so the reserve can shrink by as many as
    /// race); a permit reserved in `poll_ready` by
    /// [`PolicyLayer`](crate::tower::PolicyLayer)'s readiness mode, before the
    /// request is known, is not subject to it.
    ///
    /// ```
    /// use heijunka::backpressure::ConcurrencyLimit;
    /// use heijunka::context::RequestContext;
    /// use heijunka::core::Criticality;
    /// use heijunka::policy::Policy;
    ///
    /// let limit = ConcurrencyLimit::new(10)?;
    /// let policy = Policy::builder()
    ///     .concurrency_limit(limit.clone())
    ///     .critical_reserve(0.2)
    ///     .build()?;
    /// let _held = limit.try_acquire_many(8)?;
    /// let critical = RequestContext::builder().criticality(Criticality::Critical).build();
    /// assert!(policy.try_admit(&RequestContext::new()).is_err(), "2 free: kept for critical");
    /// assert!(policy.try_admit(&critical).is_ok());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn critical_reserve(mut self, share: f64) -> Self {
        self.critical_reserve = share;
        self
    }

    /// The most of the concurrency limit sheddable requests may fill: they
    /// are refused ([`Stage::Concurrency`]) once that share of its permits is
    /// in use, so sheddable traffic cannot take all of it (a partition of the
    /// limit by criticality, as Netflix's partitioned limiter keeps one per
    /// kind of traffic). With an adaptive limit the share follows the limit as
    /// it moves. Default 1 (no cap beyond the
    /// [`critical_reserve`](Self::critical_reserve)); in `(0, 1]`.
    ///
    /// ```
    /// use heijunka::backpressure::ConcurrencyLimit;
    /// use heijunka::context::RequestContext;
    /// use heijunka::core::Criticality;
    /// use heijunka::policy::Policy;
    ///
    /// let limit = ConcurrencyLimit::new(10)?;
    /// let policy = Policy::builder()
    ///     .concurrency_limit(limit.clone())
    ///     .sheddable_share(0.5)
    ///     .build()?;
    /// let batch = RequestContext::builder().criticality(Criticality::Sheddable).build();
    /// let held: Vec<_> = (0..5).map(|_| policy.try_admit(&batch).unwrap()).collect();
    /// assert!(policy.try_admit(&batch).is_err(), "half the limit is the most it gets");
    /// assert!(policy.try_admit(&RequestContext::new()).is_ok());
    /// # drop(held);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn sheddable_share(mut self, share: f64) -> Self {
        self.sheddable_share = Some(share);
        self
    }

    /// Retries calls made with [`Policy::call_retrying`]: each attempt goes
    /// through every stage again (the breaker and the limits see each one),
    /// within the request's deadline and the retry's budget. A refusal by the
    /// rate limit or the breaker never reached the dependency, so it is
    /// retried (after its retry-after) whatever the idempotency; a refusal by
    /// load shedding or the concurrency limit is the service's own overload and
    /// is not retried; a time-out or the call's own error is retried as the
    /// retry classifies it (feature `retry`).
    #[cfg(feature = "retry")]
    pub fn retry(mut self, retry: heijunka_retry::Retry) -> Self {
        self.retry = Some(retry);
        self
    }

    /// Hedges calls made with [`Policy::call_retrying`]: each hedge goes through
    /// every stage (and takes its own concurrency permit); inside a
    /// [`retry`](Self::retry), each attempt is hedged, and both draw on their
    /// budgets (give them one [`Budget`](heijunka_retry::Budget) to bound
    /// them together; feature `retry`).
    #[cfg(feature = "retry")]
    pub fn hedge(mut self, hedge: heijunka_retry::Hedge) -> Self {
        self.hedge = Some(hedge);
        self
    }

    /// Injects `chaos`'s faults into the calls made with
    /// [`Policy::call_retrying`], inside every stage, as if the dependency
    /// misbehaved: a delay before the call (which counts against the deadline,
    /// so it can time out), or instead of the call an error made by `error` —
    /// recorded by the breaker as a failure, retried or handed to a fallback
    /// like a real one. Register a maker for each error type the policy's
    /// calls return (calling `chaos` again adds one); an error fault for a
    /// call whose error type has none injects only its delay. Feature `chaos`,
    /// for tests that rehearse an outage.
    ///
    /// ```
    /// use heijunka::breaker::{CircuitBreaker, State};
    /// use heijunka::context::RequestContext;
    /// use heijunka::core::ManualClock;
    /// use heijunka::policy::{Policy, PolicyError};
    /// use heijunka::retry::chaos::Chaos;
    /// use std::time::Duration;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let clock = ManualClock::new();
    /// let breaker = CircuitBreaker::builder()
    ///     .minimum_number_of_calls(5)
    ///     .clock(&clock)
    ///     .build()?;
    /// // From 1 s on, every call fails.
    /// let chaos = Chaos::builder(7)
    ///     .clock(&clock)
    ///     .outage(Duration::from_secs(1), Duration::from_secs(60))
    ///     .build()?;
    /// let policy = Policy::builder()
    ///     .breaker(breaker.clone())
    ///     .chaos(chaos, || std::io::Error::other("injected"))
    ///     .build()?;
    /// let ctx = RequestContext::new();
    /// let call = || policy.call_retrying(&ctx, |_| async { Ok::<_, std::io::Error>(1) });
    /// assert_eq!(call().await.ok(), Some(1));
    /// clock.advance(Duration::from_secs(1));
    /// for _ in 0..4 {
    ///     assert!(matches!(call().await, Err(PolicyError::Call(_))));
    /// }
    /// // 4 failures in 5 calls: the rehearsed outage opened the breaker.
    /// assert_eq!(breaker.state(), State::Open);
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "chaos")]
    pub fn chaos<E: Send + 'static>(
        mut self,
        chaos: heijunka_retry::chaos::Chaos,
        error: impl Fn() -> E + Send + Sync + 'static,
    ) -> Self {
        let make: MakeError = Arc::new(move || Box::new(error()));
        let id = std::any::TypeId::of::<E>();
        match &mut self.chaos {
            Some(c) => {
                c.chaos = chaos;
                c.errors.retain(|(t, _)| *t != id);
                c.errors.push((id, make));
            }
            None => {
                self.chaos = Some(ChaosStage {
                    chaos,
                    errors: vec![(id, make)],
                });
            }
        }
        self
    }

    /// A rate limit shared by every replica, decided in Redis (feature
    /// `redis`): checked before the in-process stages, one unit of its global
    /// bucket per request. [`admit`](Policy::admit), the `call` forms and the
    /// tower [`PolicyLayer`](crate::tower::PolicyLayer) wait for Redis's answer
    /// (within the request's deadline); [`try_admit`](Policy::try_admit),
    /// which cannot wait, decides without a round trip (a lease, a cached
    /// refusal, else the limiter's failure policy: see
    /// [`RedisRateLimiter::check_local`](heijunka_redis::RedisRateLimiter::check_local)).
    /// A refusal is [`Stage::RateLimit`] (or, failing closed while Redis is
    /// down, [`Rejection::CircuitOpen`]).
    #[cfg(feature = "redis")]
    pub fn redis_rate_limiter(mut self, limiter: heijunka_redis::RedisRateLimiter) -> Self {
        self.remote.rate = Some(limiter);
        self
    }

    /// A concurrency limit shared by every replica, its permits leases in Redis
    /// (feature `redis`): a lease is taken after the shared rate limit and
    /// before the in-process stages, held as long as the admission, and
    /// released when it ends. It waits for a lease up to the
    /// [`max_wait`](Self::max_wait) (never past the deadline), else takes one
    /// only if one is free; [`try_admit`](Policy::try_admit) takes a permit of
    /// the limit's failure policy instead
    /// ([`try_acquire_local`](heijunka_redis::RedisConcurrencyLimit::try_acquire_local)).
    /// A refusal is [`Stage::Concurrency`].
    #[cfg(feature = "redis")]
    pub fn redis_concurrency_limit(mut self, limit: heijunka_redis::RedisConcurrencyLimit) -> Self {
        self.remote.limit = Some(limit);
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
    /// A [`ConfigError`] naming `timeout` for a zero timeout, `max_wait` for a
    /// zero wait, `shed_signal.name` for an empty signal name, or `name` for an
    /// empty policy name.
    ///
    /// With the `metrics` feature, the policy registers its metrics here, with
    /// the recorder installed now (docs/metrics.md).
    pub fn build(self) -> Result<Policy, ConfigError> {
        let name = self.name.as_deref().unwrap_or("default");
        if name.trim().is_empty() {
            return Err(ConfigError::new(
                "name",
                format!("{name:?}"),
                "must not be empty",
            ));
        }
        if let Some(t) = self.timeout {
            validate::non_zero_duration("timeout", t)?;
        }
        if let Some(t) = self.max_wait {
            validate::non_zero_duration("max_wait", t)?;
        }
        if !(0.0..1.0).contains(&self.critical_reserve) {
            return Err(ConfigError::new(
                "critical_reserve",
                self.critical_reserve,
                "must be in [0, 1)",
            ));
        }
        let sheddable_share = self.sheddable_share.unwrap_or(1.0);
        if !(sheddable_share > 0.0 && sheddable_share <= 1.0) {
            return Err(ConfigError::new(
                "sheddable_share",
                sheddable_share,
                "must be in (0, 1]",
            ));
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
                max_wait: self.max_wait,
                rate: self.rate,
                memory: self.memory,
                signals: self.signals.into_boxed_slice(),
                limit: self.limit,
                critical_reserve: self.critical_reserve,
                sheddable_share,
                breaker: self.breaker,
                #[cfg(feature = "retry")]
                retry: self.retry,
                #[cfg(feature = "retry")]
                hedge: self.hedge,
                #[cfg(feature = "chaos")]
                chaos: self.chaos,
                #[cfg(feature = "redis")]
                remote: self.remote,
                observer: Arc::new(Observer::new(name)),
            }),
        })
    }
}

impl fmt::Debug for PolicyBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut f = f.debug_struct("PolicyBuilder");
        f.field("name", &self.name)
            .field("timeout", &self.timeout)
            .field("max_wait", &self.max_wait)
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
            .field("critical_reserve", &self.critical_reserve)
            .field("sheddable_share", &self.sheddable_share)
            .field("breaker", &self.breaker.as_ref().map(CircuitBreaker::name));
        #[cfg(feature = "retry")]
        f.field("retry", &self.retry).field("hedge", &self.hedge);
        #[cfg(feature = "chaos")]
        f.field("chaos", &self.chaos.as_ref().map(|c| &c.chaos));
        f.finish()
    }
}

struct Inner {
    /// The timeout in nanoseconds, 0 for none (changed at run time by
    /// [`Policy::set_timeout`]).
    timeout: AtomicU64,
    max_wait: Option<Duration>,
    rate: Option<Arc<dyn RateLimiter>>,
    memory: Option<MemoryGate>,
    signals: Box<[(String, Signal)]>,
    limit: Option<Limit>,
    critical_reserve: f64,
    sheddable_share: f64,
    breaker: Option<CircuitBreaker>,
    #[cfg(feature = "retry")]
    retry: Option<heijunka_retry::Retry>,
    #[cfg(feature = "retry")]
    hedge: Option<heijunka_retry::Hedge>,
    #[cfg(feature = "chaos")]
    chaos: Option<ChaosStage>,
    #[cfg(feature = "redis")]
    remote: Remote,
    observer: Arc<Observer>,
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

/// The rejection of a Redis rate limit refusal.
#[cfg(feature = "redis")]
fn remote_reason(e: &heijunka_redis::RedisLimitError) -> Rejection {
    e.reason().unwrap_or(Rejection::RateLimited {
        retry_after: Duration::ZERO,
    })
}

/// A timeout in nanoseconds (saturating at about 584 years), 0 for none.
fn timeout_nanos(timeout: Option<Duration>) -> u64 {
    timeout.map_or(0, |t| {
        u64::try_from(t.as_nanos()).unwrap_or(u64::MAX).max(1)
    })
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
    /// The policy's counts (in flight, latency); `None` for the breaker layer's
    /// admissions.
    observer: Option<Arc<Observer>>,
    /// When the work's own part ended ([`mark_end`](Self::mark_end)), with the
    /// `metrics` feature.
    end: Option<Instant>,
    /// The Redis concurrency lease, released with the admission.
    #[cfg(feature = "redis")]
    remote: Option<heijunka_redis::RedisPermit>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        // Whatever the outcome (each reporting method consumes the admission),
        // or none: the request is no longer in flight.
        if let Some(observer) = self.observer.take() {
            observer.completed(self.started, self.end);
        }
    }
}

/// How an outcome counts, for the breaker and an adaptive limit alike: what a
/// classifier (for example [`Classify`](crate::tower::Classify) in the tower
/// layers, or the closure of [`Policy::call_classified`]) decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Classification {
    /// A success: the breaker records a success, an adaptive limit a latency
    /// sample.
    Success,
    /// A failure: the breaker records a failure; an adaptive limit ignores it (a
    /// fast error says nothing about capacity).
    Failure,
    /// Says nothing about the dependency's health (a client error, a caller that
    /// went away): nothing is recorded.
    Ignore,
}

impl Admission {
    /// An admission holding only a breaker probe (the tower breaker layer's).
    #[cfg_attr(not(feature = "tower"), allow(dead_code))]
    pub(crate) fn from_breaker(permit: BreakerPermit) -> Self {
        let now = Instant::now();
        Self {
            limit: None,
            breaker: Some(permit),
            deadline: now + Duration::from_secs(86_400 * 365 * 30),
            started: now,
            observer: None,
            end: None,
            #[cfg(feature = "redis")]
            remote: None,
        }
    }

    /// Reports the outcome as `classification` says.
    pub fn record(self, classification: Classification) {
        match classification {
            Classification::Success => self.success(),
            Classification::Failure => self.failure(),
            Classification::Ignore => self.ignore(),
        }
    }

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
        if let Some(o) = &self.observer {
            o.timed_out();
        }
        if let Some(p) = self.breaker.take() {
            p.failure();
        }
        if let Some(Permit::Adaptive(p)) = self.limit.take() {
            p.dropped();
        }
    }

    /// The work's own part ended now (the response headers), though the
    /// admission is held on while a response body streams: an adaptive limit's
    /// latency sample ends here, so a slow reader does not count as a slow
    /// service.
    pub fn mark_end(&mut self) {
        if let Some(Permit::Adaptive(p)) = &mut self.limit {
            p.mark_end();
        }
        // The latency histogram's end: read only where it is recorded.
        if cfg!(feature = "metrics") && self.observer.is_some() && self.end.is_none() {
            self.end = Some(Instant::now());
        }
    }

    /// The response body outlived its deadline after the work itself had
    /// answered: a failure in the breaker (the call did not complete), ignored by
    /// an adaptive limit (the time went to streaming, which says nothing about
    /// capacity; its sample was taken at [`mark_end`](Self::mark_end) if at all).
    pub fn body_timed_out(mut self) {
        if let Some(o) = &self.observer {
            o.timed_out();
        }
        if let Some(p) = self.breaker.take() {
            p.failure();
        }
        if let Some(Permit::Adaptive(p)) = self.limit.take() {
            p.ignore();
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

    /// A builder starting from a named preset (feature `retry`), to adjust or
    /// add stages to (a concurrency limit, a rate limit, a shedder: they
    /// depend on the service's capacity, which no preset knows):
    ///
    /// | preset | timeout | breaker | retry (see `heijunka::retry::presets`) |
    /// | --- | --- | --- | --- |
    /// | `standard` | 2 s | resilience4j's defaults (50 % of 100 calls, 60 s open) | 3 attempts, full jitter, 10 % budget |
    /// | `fast_fail` | 500 ms | 50 % of 20 calls, 5 s open | 2 attempts 10 ms apart, 5 % budget |
    /// | `tolerant` | 30 s | 75 % of 50 calls, 30 s open | 5 attempts, decorrelated jitter, 20 % budget |
    ///
    /// Retries are for idempotent calls only, as with any [`Retry`]: mark them
    /// with `.retry(preset.retry().idempotent(true)...)` or per call.
    ///
    /// ```
    /// use heijunka::policy::Policy;
    /// use heijunka::retry::presets::Preset;
    /// use std::time::Duration;
    ///
    /// let policy = Policy::preset(Preset::FastFail)?.name("pricing").build()?;
    /// assert_eq!(policy.timeout(), Some(Duration::from_millis(500)));
    /// assert!(policy.breaker().is_some());
    /// # Ok::<(), heijunka::core::ConfigError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// None for the presets as shipped; the `Result` keeps a preset that
    /// failed validation from panicking.
    ///
    /// [`Retry`]: heijunka_retry::Retry
    #[cfg(feature = "retry")]
    pub fn preset(preset: heijunka_retry::presets::Preset) -> Result<PolicyBuilder, ConfigError> {
        use heijunka_retry::presets::Preset;
        let (timeout, rate, calls, open) = match preset {
            Preset::Standard => (Duration::from_secs(2), 0.5, 100, Duration::from_secs(60)),
            Preset::FastFail => (Duration::from_millis(500), 0.5, 20, Duration::from_secs(5)),
            Preset::Tolerant => (Duration::from_secs(30), 0.75, 50, Duration::from_secs(30)),
        };
        let breaker = CircuitBreaker::builder()
            .name(preset.as_str())
            .failure_rate_threshold(rate)
            .sliding_window(heijunka_breaker::SlidingWindowType::CountBased, calls)
            .minimum_number_of_calls(calls)
            .wait_duration_in_open_state(open)
            .build()?;
        let retry = preset
            .retry()
            .budget(preset.budget().build()?)
            .breaker(&breaker)
            .build()?;
        Ok(Policy::builder()
            .name(preset.as_str())
            .timeout(timeout)
            .breaker(breaker)
            .retry(retry))
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
        self.try_admit_reserved(ctx, None, Instant::now())
    }

    /// [`try_admit`](Self::try_admit) with a concurrency permit already reserved
    /// (in `poll_ready`): it is used instead of taking one, and released if an
    /// earlier stage refuses.
    /// `now` is the time of admission (the caller has just read the clock).
    pub(crate) fn try_admit_reserved(
        &self,
        ctx: &RequestContext,
        reserved: Option<LimitPermit>,
        now: Instant,
    ) -> Result<Admission, PolicyError<std::convert::Infallible>> {
        self.try_admit_with(ctx, reserved, now, RemoteStages::Local)
    }

    /// [`try_admit_reserved`](Self::try_admit_reserved), the Redis stages
    /// decided as `remote` says.
    pub(crate) fn try_admit_with(
        &self,
        ctx: &RequestContext,
        reserved: Option<LimitPermit>,
        now: Instant,
        remote: RemoteStages,
    ) -> Result<Admission, PolicyError<std::convert::Infallible>> {
        let admitted = (|| {
            self.front_deadline(ctx, now)?;
            #[cfg(feature = "redis")]
            let lease = match remote {
                RemoteStages::Local => self.admit_remote_local()?,
                RemoteStages::Passed(lease) => lease,
            };
            #[cfg(not(feature = "redis"))]
            let RemoteStages::Local = remote;
            let (started, deadline) = self.admit_front(ctx, now)?;
            let limit = match reserved {
                Some(p) => Some(Permit::Static(p)),
                None => self.take_limit(ctx.criticality())?,
            };
            let breaker = self.take_breaker()?;
            #[allow(unused_mut)]
            let mut admission = self.admission(limit, breaker, deadline, started);
            #[cfg(feature = "redis")]
            {
                admission.remote = lease;
            }
            Ok(admission)
        })();
        if let Err(e) = &admitted {
            self.refused(e, now);
        }
        admitted
    }

    /// The admission of a request let in at `started`, counted as such.
    fn admission(
        &self,
        limit: Option<Permit>,
        breaker: Option<BreakerPermit>,
        deadline: Instant,
        started: Instant,
    ) -> Admission {
        let observer = &self.inner.observer;
        observer.admitted(started);
        Admission {
            limit,
            breaker,
            deadline,
            started,
            observer: Some(Arc::clone(observer)),
            end: None,
            #[cfg(feature = "redis")]
            remote: None,
        }
    }

    /// Counts and logs a refusal made by the Redis stages outside
    /// [`admit`](Self::admit) (the tower layer's).
    #[cfg(all(feature = "redis", feature = "tower"))]
    pub(crate) fn record_refusal<E>(&self, e: &PolicyError<E>) {
        self.refused(e, Instant::now());
    }

    /// Counts a request dropped while the Redis stages decided (the tower
    /// layer's), as `admit` counts one dropped while it waits.
    #[cfg(all(feature = "redis", feature = "tower"))]
    pub(crate) fn record_cancelled(&self) {
        self.inner
            .observer
            .rejected(Stage::Deadline, None, Instant::now());
    }

    /// Counts and logs a refusal.
    #[cold]
    fn refused<E>(&self, e: &PolicyError<E>, now: Instant) {
        match e {
            PolicyError::Rejected { stage, reason } => {
                self.inner.observer.rejected(*stage, Some(reason), now);
            }
            PolicyError::Cancelled => self.inner.observer.rejected(Stage::Deadline, None, now),
            PolicyError::TimedOut { .. } | PolicyError::Call(_) => {}
        }
    }

    /// Counts and logs a refusal decided outside the policy's own stages (a
    /// tower layer's `poll_ready`).
    #[cfg_attr(not(feature = "tower"), allow(dead_code))]
    pub(crate) fn record_rejection(&self, stage: Stage, reason: &Rejection) {
        self.inner
            .observer
            .rejected(stage, Some(reason), Instant::now());
    }

    /// The policy's figures now: admitted, refused by stage and reason, in
    /// flight, timed out, the limit, the breaker's state, whether it is
    /// shedding: the figures the `metrics` feature exports but latency, for a
    /// service without a metrics stack (see [`PolicyStats`]).
    ///
    /// ```
    /// use heijunka::backpressure::ConcurrencyLimit;
    /// use heijunka::context::RequestContext;
    /// use heijunka::policy::{Policy, Stage};
    ///
    /// let policy = Policy::builder()
    ///     .name("inventory")
    ///     .concurrency_limit(ConcurrencyLimit::new(1)?)
    ///     .build()?;
    /// let ctx = RequestContext::new();
    /// let held = policy.try_admit(&ctx)?;
    /// assert!(policy.try_admit(&ctx).is_err());
    ///
    /// let stats = policy.stats();
    /// assert_eq!((stats.admitted, stats.in_flight, stats.rejected), (1, 1, 1));
    /// assert_eq!(stats.rejected_by[0].stage, Stage::Concurrency);
    /// assert_eq!(stats.rejected_by[0].reason, "at_capacity");
    /// drop(held);
    /// assert_eq!(policy.stats().in_flight, 0);
    /// // Serialize: log it or serve it as JSON.
    /// let json = serde_json::to_string(&policy.stats())?;
    /// assert!(json.contains(r#""name":"inventory""#));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stats(&self) -> PolicyStats {
        let limit = self.limit_now();
        let breaker = self.inner.breaker.as_ref().map(CircuitBreaker::state);
        // Every live admission holds a clone of the observer; the policy one.
        let in_flight = Arc::strong_count(&self.inner.observer).saturating_sub(1) as u64;
        self.inner.observer.stats(in_flight, limit, breaker)
    }

    /// The policy's [name](PolicyBuilder::name).
    pub fn name(&self) -> &str {
        self.inner.observer.name()
    }

    /// [`try_admit`](Self::try_admit), but when the concurrency limit is full and
    /// the policy has a [`max_wait`](PolicyBuilder::max_wait), waits for a permit
    /// up to that long (never past the deadline, and not once the request is
    /// cancelled) before refusing. With a `max_wait` the request joins the
    /// limit's queue at once, behind the requests already waiting (first come,
    /// first served), instead of trying ahead of them.
    ///
    /// ```
    /// use heijunka::backpressure::ConcurrencyLimit;
    /// use heijunka::context::RequestContext;
    /// use heijunka::policy::Policy;
    /// use std::time::Duration;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let limit = ConcurrencyLimit::new(1)?;
    /// let policy = Policy::builder()
    ///     .concurrency_limit(limit.clone())
    ///     .max_wait(Duration::from_millis(50))
    ///     .build()?;
    /// let held = limit.try_acquire_owned()?;
    /// tokio::spawn(async move {
    ///     tokio::time::sleep(Duration::from_millis(10)).await;
    ///     drop(held);
    /// });
    /// let admission = policy.admit(&RequestContext::new()).await?;
    /// assert!(admission.holds_permit());
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`try_admit`](Self::try_admit); a wait that runs out is refused by
    /// [`Stage::Concurrency`], a cancellation while waiting is
    /// [`PolicyError::Cancelled`].
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: dropping the future while it waits gives up its place in the
    /// limit's queue and holds nothing (no permit, no breaker probe); the
    /// request is counted as refused by `deadline` for `cancelled`
    /// ([`stats`](Self::stats), the `metrics` feature).
    pub async fn admit(
        &self,
        ctx: &RequestContext,
    ) -> Result<Admission, PolicyError<std::convert::Infallible>> {
        let now = Instant::now();
        let admitted = async {
            #[cfg(feature = "redis")]
            let lease = {
                let deadline = self.front_deadline(ctx, now)?;
                // Dropped while Redis decides: counted as a `cancelled`
                // refusal, as a drop while waiting for a permit is.
                let mut abandoned = Abandoned {
                    observer: &self.inner.observer,
                    armed: true,
                };
                let lease = self.admit_remote(ctx, deadline).await;
                abandoned.armed = false;
                lease?
            };
            let (started, deadline) = self.admit_front(ctx, now)?;
            let limit = match (self.inner.max_wait, &self.inner.limit) {
                // Straight into the limit's queue (a free permit is granted at
                // the first poll): a `try_` first would count every request that
                // then waits as refused in the limit's own metrics.
                (Some(wait), Some(limit)) => {
                    self.check_reserve(ctx.criticality())?;
                    Some(
                        self.wait_for_permit(ctx, limit, started, deadline, wait)
                            .await?,
                    )
                }
                _ => self.take_limit(ctx.criticality())?,
            };
            let breaker = self.take_breaker()?;
            #[allow(unused_mut)]
            let mut admission = self.admission(limit, breaker, deadline, started);
            #[cfg(feature = "redis")]
            {
                admission.remote = lease;
            }
            Ok(admission)
        }
        .await;
        if let Err(e) = &admitted {
            self.refused(e, Instant::now());
        }
        admitted
    }

    /// A permit from the limit's queue, waiting up to `wait` (never past the
    /// deadline); a caller that drops the future while it waits is counted as a
    /// `cancelled` refusal.
    async fn wait_for_permit(
        &self,
        ctx: &RequestContext,
        limit: &Limit,
        started: Instant,
        deadline: Instant,
        wait: Duration,
    ) -> Result<Permit, PolicyError<std::convert::Infallible>> {
        let until = started
            .checked_add(wait)
            .map_or(deadline, |t| t.min(deadline));
        let closed = |e: heijunka_backpressure::AcquireError| {
            PolicyError::rejected(
                Stage::Concurrency,
                e.reason().unwrap_or(Rejection::ShuttingDown),
            )
        };
        let acquire = async {
            match limit {
                Limit::Static(l) => l.acquire_owned().await.map(Permit::Static).map_err(closed),
                Limit::Adaptive(l) => l
                    .acquire_owned()
                    .await
                    .map(Permit::Adaptive)
                    .map_err(closed),
            }
        };
        let mut abandoned = Abandoned {
            observer: &self.inner.observer,
            armed: true,
        };
        let got = tokio::select! {
            biased;
            () = ctx.cancelled() => Err(PolicyError::Cancelled),
            got = tokio::time::timeout_at(until, acquire) => match got {
                Ok(got) => got,
                Err(_elapsed) => Err(PolicyError::rejected(
                    Stage::Concurrency,
                    Rejection::AtCapacity {
                        limit: match limit {
                            Limit::Static(l) => u64::from(l.limit()),
                            Limit::Adaptive(l) => l.limit() as u64,
                        },
                    },
                )),
            },
        };
        // Finished, one way or the other: `admit` counts the outcome.
        abandoned.armed = false;
        got
    }

    /// The concurrency limit now, if the policy has one.
    fn limit_now(&self) -> Option<u64> {
        match &self.inner.limit {
            Some(Limit::Static(l)) => Some(u64::from(l.limit())),
            Some(Limit::Adaptive(l)) => Some(l.limit() as u64),
            None => None,
        }
    }

    /// The stateless stages: cancellation, deadline, rate limit, load shedding.
    /// Returns the admission's start and deadline.
    fn admit_front(
        &self,
        ctx: &RequestContext,
        started: Instant,
    ) -> Result<(Instant, Instant), PolicyError<std::convert::Infallible>> {
        let s = &*self.inner;
        let deadline = self.front_deadline(ctx, started)?;
        let criticality = ctx.criticality();
        if let Some(rate) = &s.rate
            && let Err(e) = rate.check_n_for(1, criticality)
        {
            let reason = e.reason().unwrap_or(Rejection::RateLimited {
                retry_after: Duration::ZERO,
            });
            return Err(PolicyError::rejected(Stage::RateLimit, reason));
        }
        if let Some(gate) = &s.memory {
            gate.check_for(criticality)
                .map_err(|r| PolicyError::rejected(Stage::LoadShed, r))?;
        }
        for (_, signal) in &*s.signals {
            signal(criticality).map_err(|r| PolicyError::rejected(Stage::LoadShed, r))?;
        }
        Ok((started, deadline))
    }

    /// Cancellation and the deadline: the admission's deadline, or the refusal.
    pub(crate) fn front_deadline(
        &self,
        ctx: &RequestContext,
        started: Instant,
    ) -> Result<Instant, PolicyError<std::convert::Infallible>> {
        if ctx.is_cancelled() {
            return Err(PolicyError::Cancelled);
        }
        let deadline = match self.inner.timeout() {
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
        Ok(deadline)
    }

    /// Whether the policy has stages whose state is in Redis (an admission
    /// that can wait asks Redis first).
    pub fn has_remote_stages(&self) -> bool {
        #[cfg(feature = "redis")]
        {
            self.inner.remote.rate.is_some() || self.inner.remote.limit.is_some()
        }
        #[cfg(not(feature = "redis"))]
        false
    }

    /// The Redis stages, waiting for Redis's answers within `deadline`: the
    /// shared rate limit, then the shared concurrency lease. Refusals are not
    /// counted here (the caller counts them).
    ///
    /// Cancel safety: dropped while it waits, no unit is admitted twice and
    /// no lease is left held (see the `heijunka-redis` primitives).
    #[cfg(feature = "redis")]
    pub(crate) async fn admit_remote(
        &self,
        ctx: &RequestContext,
        deadline: Instant,
    ) -> Result<Option<heijunka_redis::RedisPermit>, PolicyError<std::convert::Infallible>> {
        let remote = &self.inner.remote;
        // Each Redis call is bounded by the backend's call time-out, so the
        // calls are not raced against the deadline: one dropped midway would
        // leave the breaker around Redis unjudged, and a Redis that hangs
        // would never open it. The deadline is checked after each.
        let past_deadline = || {
            (Instant::now() >= deadline).then(|| {
                PolicyError::rejected(
                    Stage::Deadline,
                    Rejection::TimedOut {
                        after: ctx.elapsed(),
                    },
                )
            })
        };
        if let Some(rate) = &remote.rate {
            let checked = tokio::select! {
                biased;
                () = ctx.cancelled() => return Err(PolicyError::Cancelled),
                checked = rate.check() => checked,
            };
            if let Err(e) = checked {
                return Err(PolicyError::rejected(Stage::RateLimit, remote_reason(&e)));
            }
            if let Some(e) = past_deadline() {
                return Err(e);
            }
        }
        let Some(limit) = &remote.limit else {
            return Ok(None);
        };
        // Waiting for a lease ends by the deadline.
        let wait = self
            .inner
            .max_wait
            .unwrap_or(Duration::ZERO)
            .min(deadline.saturating_duration_since(Instant::now()));
        let acquire = async {
            if wait.is_zero() {
                limit.try_acquire().await
            } else {
                limit.acquire_timeout(wait).await
            }
        };
        let acquired = tokio::select! {
            biased;
            () = ctx.cancelled() => return Err(PolicyError::Cancelled),
            acquired = acquire => acquired,
        };
        let permit = acquired.map_err(|e| PolicyError::rejected(Stage::Concurrency, e.reason()))?;
        match past_deadline() {
            Some(e) => Err(e),
            None => Ok(Some(permit)),
        }
    }

    /// The Redis stages decided without a round trip (a synchronous
    /// admission): see [`PolicyBuilder::redis_rate_limiter`].
    #[cfg(feature = "redis")]
    fn admit_remote_local(
        &self,
    ) -> Result<Option<heijunka_redis::RedisPermit>, PolicyError<std::convert::Infallible>> {
        let remote = &self.inner.remote;
        if let Some(rate) = &remote.rate {
            rate.check_local()
                .map_err(|e| PolicyError::rejected(Stage::RateLimit, remote_reason(&e)))?;
        }
        remote
            .limit
            .as_ref()
            .map(|l| {
                l.try_acquire_local()
                    .map_err(|e| PolicyError::rejected(Stage::Concurrency, e.reason()))
            })
            .transpose()
    }

    /// Refuses a request that is not critical while no more than the critical
    /// reserve of the limit is free, and a sheddable one once its share is in
    /// use.
    fn check_reserve(
        &self,
        criticality: Criticality,
    ) -> Result<(), PolicyError<std::convert::Infallible>> {
        let s = &*self.inner;
        if criticality == Criticality::Critical
            || (s.critical_reserve == 0.0 && s.sheddable_share >= 1.0)
        {
            return Ok(());
        }
        let (limit, in_use) = match &s.limit {
            Some(Limit::Static(l)) => {
                let limit = u64::from(l.limit());
                (
                    limit,
                    limit.saturating_sub(u64::from(l.available_permits())),
                )
            }
            Some(Limit::Adaptive(l)) => (l.limit() as u64, l.in_flight() as u64),
            None => return Ok(()),
        };
        // The most in use at which this criticality is still admitted. The
        // reserve rounds down, so a limit the adaptive algorithm has cut to one
        // or two is not kept for critical work alone.
        // (The epsilon keeps 0.29 × 100 at 29, not 28.999….)
        let kept = (limit as f64 * s.critical_reserve + 1e-9).floor() as u64;
        let mut ceiling = limit.saturating_sub(kept);
        if criticality == Criticality::Sheddable {
            // At least one, so a small (or adaptively cut) limit never locks
            // sheddable work out while nothing runs.
            let share = ((limit as f64 * s.sheddable_share + 1e-9).floor() as u64).max(1);
            ceiling = ceiling.min(share);
        }
        if in_use >= ceiling {
            return Err(PolicyError::rejected(
                Stage::Concurrency,
                Rejection::AtCapacity { limit },
            ));
        }
        Ok(())
    }

    fn take_limit(
        &self,
        criticality: Criticality,
    ) -> Result<Option<Permit>, PolicyError<std::convert::Infallible>> {
        self.check_reserve(criticality)?;
        Ok(match &self.inner.limit {
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
        })
    }

    fn take_breaker(&self) -> Result<Option<BreakerPermit>, PolicyError<std::convert::Infallible>> {
        match &self.inner.breaker {
            Some(b) => b
                .try_acquire_owned()
                .map(Some)
                .map_err(|r| PolicyError::rejected(Stage::Breaker, r.reason())),
            None => Ok(None),
        }
    }

    /// The policy's [`max_wait`](PolicyBuilder::max_wait), if any.
    pub fn max_wait(&self) -> Option<Duration> {
        self.inner.max_wait
    }

    /// Runs `f` through the stages. `f` gets the request's context with its
    /// deadline cut to the admission's (the earlier of the request's and the
    /// policy's [`timeout`](PolicyBuilder::timeout)), so a callee that passes its
    /// deadline on sees the time it really has; the future it returns is stopped
    /// at that deadline or on cancellation. Outcomes go to the breaker and an
    /// adaptive limit: `Ok` is a success, `Err` a failure, a time-out a failure
    /// (and a drop for an adaptive limit), a cancellation is ignored.
    /// [`call_classified`](Self::call_classified) decides with a classifier.
    ///
    /// Admission takes no lock. A call that has to wait (it returns `Pending`)
    /// also waits for the request's cancellation, which makes the context's
    /// token on first use: one registration with its parent (the shutdown's
    /// token), as any waiter needs; a call that completes at once makes none.
    ///
    /// # Errors
    ///
    /// [`PolicyError::Rejected`] naming the stage that refused,
    /// [`PolicyError::TimedOut`], [`PolicyError::Cancelled`], or the call's own
    /// error in [`PolicyError::Call`].
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: dropping the future drops `f`'s future and the admission,
    /// which releases the concurrency permit and records nothing in the breaker
    /// or the adaptive limit (as a cancellation); a wait for a permit
    /// ([`max_wait`](PolicyBuilder::max_wait)) gives up its place.
    pub async fn call<T, E, F, Fut>(&self, ctx: &RequestContext, f: F) -> Result<T, PolicyError<E>>
    where
        F: FnOnce(RequestContext) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.call_classified(
            ctx,
            |r: &Result<T, E>| match r {
                Ok(_) => Classification::Success,
                Err(_) => Classification::Failure,
            },
            f,
        )
        .await
    }

    /// [`call`](Self::call) with the policy's [`retry`](PolicyBuilder::retry)
    /// and [`hedge`](PolicyBuilder::hedge) around it, in the order the guide
    /// recommends: the request's deadline outside everything, the retry
    /// outside the hedge, and every attempt through every stage (the breaker
    /// inside the retry, so each attempt is judged and counted). The retry and
    /// the hedge get the request's deadline and
    /// [`criticality`](RequestContext::criticality): no attempt starts that
    /// could not finish in time, and sheddable requests do not spend the
    /// budget while it is strained. The breaker judges each attempt with its
    /// own classifiers ([`classify_errors`](heijunka_breaker::BreakerBuilder::classify_errors),
    /// `classify_results`), where [`call`](Self::call) counts every `Err` as a
    /// failure; without a retry or a hedge it is otherwise `call`. `f` is called
    /// once per attempt (feature `retry`).
    ///
    /// ```
    /// use heijunka::context::RequestContext;
    /// use heijunka::policy::Policy;
    /// use heijunka::retry::{Backoff, Retry};
    /// use std::sync::atomic::{AtomicU32, Ordering};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let policy = Policy::builder()
    ///     .retry(Retry::builder().backoff(Backoff::None).idempotent(true).build()?)
    ///     .build()?;
    /// let calls = AtomicU32::new(0);
    /// let v = policy
    ///     .call_retrying(&RequestContext::new(), |_ctx| {
    ///         let n = calls.fetch_add(1, Ordering::Relaxed);
    ///         async move { if n == 0 { Err(std::io::Error::other("flaky")) } else { Ok(n) } }
    ///     })
    ///     .await?;
    /// assert_eq!(v, 1);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`call`](Self::call), for the last attempt; a refusal of the retry's
    /// budget rate limiter as [`Stage::RateLimit`], a deadline that left no
    /// time for an attempt as [`Stage::Deadline`] (these two are the retry's,
    /// not a stage's: [`stats`](Self::stats) does not count them), a shutdown
    /// or a cancelled context between attempts as [`PolicyError::Cancelled`].
    ///
    /// # Cancel safety
    ///
    /// As [`call`](Self::call): dropping it drops the attempt (and hedges) in
    /// flight, whose admissions release their permits.
    #[cfg(feature = "retry")]
    pub async fn call_retrying<T, E, F, Fut>(
        &self,
        ctx: &RequestContext,
        f: F,
    ) -> Result<T, PolicyError<E>>
    where
        T: 'static,
        E: 'static,
        F: Fn(RequestContext) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        use heijunka_retry::CallOptions;
        let opts = CallOptions::new()
            .deadline(ctx.deadline())
            .criticality(ctx.criticality());
        // One attempt: the call, with a fault injected first (feature `chaos`).
        let f = |c: RequestContext| {
            let (delay, injected) = self.fault::<E>();
            let plan = match injected {
                Some(e) => Err(e),
                None => Ok(f(c)),
            };
            async move {
                if let Some(d) = delay {
                    tokio::time::sleep(d).await;
                }
                match plan {
                    Ok(fut) => fut.await,
                    Err(e) => Err(e),
                }
            }
        };
        let s = &*self.inner;
        // Each attempt is judged by the breaker as the breaker's classifiers
        // say, the same outcomes the retry judges.
        let attempt = || {
            self.call_classified(
                ctx,
                |r: &Result<T, E>| match (&s.breaker, r) {
                    (Some(b), Ok(v)) => verdict(b.classify_result(v)),
                    (Some(b), Err(e)) => verdict(b.classify_error(e)),
                    (None, Ok(_)) => Classification::Success,
                    (None, Err(_)) => Classification::Failure,
                },
                &f,
            )
        };
        let run = async {
            match (&s.retry, &s.hedge) {
                (None, None) => attempt().await,
                (None, Some(hedge)) => hedge
                    .call_classified(opts, judged_by_hedge(hedge, s.breaker.as_ref()), |_| {
                        attempt()
                    })
                    .await
                    .map_err(|e| flatten(e, ctx)),
                (Some(retry), None) => retry
                    .call_classified(opts, judged_by_retry(retry, s.breaker.as_ref()), |_| {
                        attempt()
                    })
                    .await
                    .map_err(|e| flatten(e, ctx)),
                (Some(retry), Some(hedge)) => {
                    // One budget for both: the hedge does not count the retry's
                    // attempts as new requests. Two budgets: each counts its own.
                    let shared = matches!(
                        (retry.budget(), hedge.budget()),
                        (Some(a), Some(b)) if a.same_as(b)
                    );
                    let inner = if shared { opts.nested() } else { opts };
                    retry
                        .call_classified(
                            opts,
                            judged_by_retry(retry, s.breaker.as_ref()),
                            |_| async {
                                hedge
                                    .call_classified(
                                        inner,
                                        judged_by_hedge(hedge, s.breaker.as_ref()),
                                        |_| attempt(),
                                    )
                                    .await
                                    .map_err(|e| flatten(e, ctx))
                            },
                        )
                        .await
                        .map_err(|e| flatten(e, ctx))
                }
            }
        };
        if s.retry.is_none() && s.hedge.is_none() {
            return run.await;
        }
        // A shutdown (or the caller) ends the wait between attempts too.
        tokio::select! {
            biased;
            r = run => r,
            () = ctx.cancelled() => Err(PolicyError::Cancelled),
        }
    }

    /// The fault the chaos stage injects into one call: a delay, and an error
    /// of the call's type when one was registered for it (feature `chaos`;
    /// none without it).
    #[cfg(feature = "retry")]
    fn fault<E: 'static>(&self) -> (Option<Duration>, Option<E>) {
        #[cfg(feature = "chaos")]
        if let Some(c) = &self.inner.chaos {
            let fault = c.chaos.next_fault();
            let error = fault
                .error
                .then(|| {
                    let id = std::any::TypeId::of::<E>();
                    c.errors.iter().find(|(t, _)| *t == id)
                })
                .flatten()
                .and_then(|(_, make)| make().downcast::<E>().ok())
                .map(|e| *e);
            return (fault.delay, error);
        }
        (None, None)
    }

    /// [`call`](Self::call) with the outcome decided by `classify`: for example,
    /// an HTTP client's `Ok` response with a 503 status is a
    /// [`Failure`](Classification::Failure), a 404 an
    /// [`Ignore`](Classification::Ignore) or a success. Time-outs are always
    /// failures, cancellations always ignored.
    ///
    /// ```
    /// use heijunka::breaker::CircuitBreaker;
    /// use heijunka::context::RequestContext;
    /// use heijunka::policy::{Classification, Policy};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let breaker = CircuitBreaker::builder().name("users").build()?;
    /// let policy = Policy::builder().breaker(breaker.clone()).build()?;
    /// let status = policy
    ///     .call_classified(
    ///         &RequestContext::new(),
    ///         |r: &Result<u16, std::io::Error>| match r {
    ///             Ok(s) if *s >= 500 => Classification::Failure,
    ///             Ok(_) => Classification::Success,
    ///             Err(_) => Classification::Failure,
    ///         },
    ///         |_| async { Ok(503) },
    ///     )
    ///     .await?;
    /// assert_eq!(status, 503);
    /// assert_eq!(breaker.stats().failed_calls, 1);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`call`](Self::call).
    ///
    /// # Cancel safety
    ///
    /// As [`call`](Self::call).
    pub async fn call_classified<T, E, F, Fut, C>(
        &self,
        ctx: &RequestContext,
        classify: C,
        f: F,
    ) -> Result<T, PolicyError<E>>
    where
        F: FnOnce(RequestContext) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        C: FnOnce(&Result<T, E>) -> Classification,
    {
        let admission = self.admit(ctx).await.map_err(|e| match e {
            PolicyError::Rejected { stage, reason } => PolicyError::Rejected { stage, reason },
            PolicyError::TimedOut { after } => PolicyError::TimedOut { after },
            PolicyError::Cancelled => PolicyError::Cancelled,
        })?;
        let deadline = admission.deadline();
        let fut = f(ctx.until(deadline));
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
            Some(Ok(result)) => {
                admission.record(classify(&result));
                result.map_err(PolicyError::Call)
            }
        }
    }
}

/// Counts a wait for a permit abandoned by its caller (the future dropped) as a
/// `cancelled` refusal.
struct Abandoned<'a> {
    observer: &'a Arc<Observer>,
    armed: bool,
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.observer
                .rejected(Stage::Deadline, None, Instant::now());
        }
    }
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &*self.inner;
        f.debug_struct("Policy")
            .field("timeout", &s.timeout())
            .field("max_wait", &s.max_wait)
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

/// How a retry or a hedge judges a policy call's outcome.
///
/// - A refusal by the rate limit or the breaker never reached the dependency:
///   retried after its retry-after (or the backoff) whatever the idempotency.
/// - A refusal by load shedding or the concurrency limit is the service's own
///   overload: not retried (retrying it would hold the request and spend the
///   budget exactly when the stage sheds) nor hedged again; a hedge refused so
///   stops the hedging, and the attempts already running go on.
/// - A breaker forced open by an operator: not retried.
/// - A shutdown, a cancellation or a passed deadline ends the call.
/// - A time-out may have had its effect: retried only if idempotent.
/// - The call's own outcome as `call_error` / `ok` (the policy's classifiers).
#[cfg(feature = "retry")]
fn classify_policy<T, E>(
    r: &Result<T, PolicyError<E>>,
    breaker: Option<&CircuitBreaker>,
    ok: impl Fn(&T) -> heijunka_retry::Retryable,
    call_error: impl Fn(&E) -> (heijunka_retry::Retryable, Option<Duration>),
) -> (heijunka_retry::Retryable, Option<Duration>) {
    use heijunka_retry::Retryable;
    match r {
        Ok(v) => (ok(v), None),
        Err(PolicyError::Call(e)) => call_error(e),
        Err(PolicyError::Cancelled) => (Retryable::Never, None),
        Err(PolicyError::Rejected { stage, reason }) => match (stage, reason) {
            (Stage::Deadline, _) | (_, Rejection::ShuttingDown) => (Retryable::Never, None),
            // The service's own overload: neither retried nor hedged again.
            (Stage::LoadShed | Stage::Concurrency, _) => (Retryable::Never, None),
            // Forced open by an operator: a switch, not a wait.
            (Stage::Breaker, _)
                if breaker.is_some_and(|b| b.state() == heijunka_breaker::State::ForcedOpen) =>
            {
                (Retryable::Never, None)
            }
            _ => (Retryable::Always, reason.retry_after()),
        },
        Err(PolicyError::TimedOut { .. }) => (Retryable::IfIdempotent, None),
    }
}

/// A retry's or a hedge's error as the policy's: the last attempt's error, or
/// the refusal that kept any attempt from starting (the budget's rate limiter,
/// or a deadline that left no time: then `after` is the request's age).
#[cfg(feature = "retry")]
fn flatten<E>(
    e: heijunka_retry::RetryError<PolicyError<E>>,
    ctx: &RequestContext,
) -> PolicyError<E> {
    use heijunka_retry::{FailureInfo, RetryError};
    match e {
        RetryError::Failed { error, .. } => error,
        other => match other.rejection() {
            Some(Rejection::TimedOut { .. }) | None => PolicyError::Rejected {
                stage: Stage::Deadline,
                reason: Rejection::TimedOut {
                    after: ctx.elapsed(),
                },
            },
            Some(reason) => PolicyError::Rejected {
                stage: Stage::RateLimit,
                reason,
            },
        },
    }
}

/// [`classify_policy`] with a retry's classifiers.
#[cfg(feature = "retry")]
fn judged_by_retry<'a, T: 'static, E: 'static>(
    retry: &'a heijunka_retry::Retry,
    breaker: Option<&'a CircuitBreaker>,
) -> impl FnMut(&Result<T, PolicyError<E>>) -> (heijunka_retry::Retryable, Option<Duration>) + 'a {
    move |r| {
        classify_policy(
            r,
            breaker,
            |v| retry.classify_result(v),
            |e| (retry.classify_error(e), retry.retry_after_of(e)),
        )
    }
}

/// [`classify_policy`] with a hedge's classifiers, for a hedge.
#[cfg(feature = "retry")]
fn judged_by_hedge<'a, T: 'static, E: 'static>(
    hedge: &'a heijunka_retry::Hedge,
    breaker: Option<&'a CircuitBreaker>,
) -> impl FnMut(&Result<T, PolicyError<E>>) -> heijunka_retry::Retryable + 'a {
    move |r| {
        classify_policy(
            r,
            breaker,
            |v| hedge.classify_result(v),
            |e| (hedge.classify_error(e), None),
        )
        .0
    }
}

/// A breaker's verdict as a policy classification.
#[cfg(feature = "retry")]
fn verdict(v: heijunka_breaker::Verdict) -> Classification {
    match v {
        heijunka_breaker::Verdict::Success => Classification::Success,
        heijunka_breaker::Verdict::Failure => Classification::Failure,
        heijunka_breaker::Verdict::Ignore => Classification::Ignore,
    }
}

/// A fallback reads the refusing stage and the reason from a policy's error.
#[cfg(feature = "retry")]
impl<E> heijunka_retry::FailureInfo for PolicyError<E> {
    fn stage(&self) -> Option<&'static str> {
        PolicyError::stage(self).map(Stage::as_str)
    }

    fn rejection(&self) -> Option<Rejection> {
        PolicyError::rejection(self)
    }
}
