//! [`Retry`]: tries a failed call again, with backoff, within a budget and a
//! deadline.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use heijunka_breaker::{CallError, CircuitBreaker, State};
use heijunka_core::rng::SplitMix64;
use heijunka_core::{ConfigError, Rejection, ShardedCounter, validate};
use serde::Serialize;
use tokio::time::Instant;

use crate::classify::{Attempt, CallOptions, Classifier, Retryable, Stop};
use crate::{Backoff, Budget};

/// The default number of attempts, the first included.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// The default backoff: full jitter from 100 ms, capped at 10 s.
pub const DEFAULT_BACKOFF: Backoff =
    Backoff::full_jitter(Duration::from_millis(100), Duration::from_secs(10));

/// The most attempts a retry may be configured with.
pub const MAX_ATTEMPTS: u32 = 100;

/// The longest wait a dependency may ask for (`Retry-After`) and still be
/// retried, by default: one minute.
pub const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Why [`Retry::call`] (or [`Hedge::call`](crate::Hedge::call)) returned no
/// value.
#[derive(Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetryError<E> {
    /// The last attempt failed with `error`, and no further attempt was made
    /// for the reason in `stop`.
    Failed {
        /// The last attempt's error.
        error: E,
        /// How many attempts were made (0 from a tower layer when the inner
        /// service failed to become ready: `error` is its readiness error).
        attempts: u32,
        /// Why no further attempt was made.
        stop: Stop,
    },
    /// No attempt was made: the budget's rate limiter refused the first one
    /// ([`Rejection::RateLimited`]), or the deadline had passed or left less
    /// than the expected attempt time ([`Rejection::TimedOut`]).
    Rejected(Rejection),
}

impl<E> RetryError<E> {
    /// The last attempt's error, if an attempt was made.
    pub fn into_error(self) -> Option<E> {
        match self {
            RetryError::Failed { error, .. } => Some(error),
            RetryError::Rejected(_) => None,
        }
    }

    /// The last attempt's error, if an attempt was made.
    pub fn error(&self) -> Option<&E> {
        match self {
            RetryError::Failed { error, .. } => Some(error),
            RetryError::Rejected(_) => None,
        }
    }

    /// Why no further attempt was made (`None` when none was made at all).
    pub fn stop(&self) -> Option<Stop> {
        match self {
            RetryError::Failed { stop, .. } => Some(*stop),
            RetryError::Rejected(_) => None,
        }
    }

    /// How many attempts were made.
    pub fn attempts(&self) -> u32 {
        match self {
            RetryError::Failed { attempts, .. } => *attempts,
            RetryError::Rejected(_) => 0,
        }
    }
}

impl<E: fmt::Display> fmt::Display for RetryError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RetryError::Failed {
                error,
                attempts,
                stop,
            } => write!(f, "{error} (after {attempts} attempt(s): {stop})"),
            RetryError::Rejected(r) => write!(f, "refused before the first attempt: {r}"),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for RetryError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RetryError::Failed { error, .. } => Some(error),
            RetryError::Rejected(_) => None,
        }
    }
}

/// Builds a [`Retry`]; see [`Retry::builder`].
#[must_use = "a builder does nothing until `build()`"]
pub struct RetryBuilder {
    max_attempts: u32,
    backoff: Backoff,
    budget: Option<Budget>,
    idempotent: bool,
    expected_attempt: Option<Duration>,
    max_retry_after: Duration,
    classifier: Classifier,
    seed: Option<u64>,
    deferred: Vec<Deferred>,
}

/// A classifier registration made at `build`, once the others are known.
type Deferred = Box<dyn FnOnce(&mut Classifier) + Send>;

impl Default for RetryBuilder {
    fn default() -> Self {
        Self {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            backoff: DEFAULT_BACKOFF,
            budget: None,
            idempotent: false,
            expected_attempt: None,
            max_retry_after: DEFAULT_MAX_RETRY_AFTER,
            classifier: Classifier::default(),
            seed: None,
            deferred: Vec::new(),
        }
    }
}

impl fmt::Debug for RetryBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBuilder")
            .field("max_attempts", &self.max_attempts)
            .field("backoff", &self.backoff)
            .field("budget", &self.budget)
            .field("idempotent", &self.idempotent)
            .field("expected_attempt", &self.expected_attempt)
            .finish()
    }
}

impl RetryBuilder {
    /// Attempts in all, the first included (default [`DEFAULT_MAX_ATTEMPTS`]);
    /// 1 to [`MAX_ATTEMPTS`]. 1 never retries.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }

    /// The wait before each retry (default [`DEFAULT_BACKOFF`]).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Each retry spends from `budget` (a clone shares it with hedges and other
    /// retries of the same dependency); with the budget's rate limiter, the
    /// first attempt passes it too. Without a budget, retries are bounded only
    /// by `max_attempts`: a failing dependency then sees up to that many times
    /// its traffic.
    pub fn budget(mut self, budget: Budget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Whether calls may be repeated safely (default `false`: only outcomes
    /// classified [`Retryable::Always`] are retried). Opt in for idempotent
    /// calls (reads, PUTs with the same body, writes carrying an idempotency
    /// key); [`CallOptions::idempotent`] overrides it per call.
    pub fn idempotent(mut self, idempotent: bool) -> Self {
        self.idempotent = idempotent;
        self
    }

    /// How long an attempt is expected to take, for the deadline check: no
    /// retry starts unless the wait plus this fits before the deadline. Without
    /// it, the attempt that just failed is taken as the estimate.
    pub fn expected_attempt_time(mut self, d: Duration) -> Self {
        self.expected_attempt = Some(d);
        self
    }

    /// How errors of type `E` are judged. Without one for `E`, an error is
    /// judged by the [`breaker`](Self::breaker)'s classification if one is set
    /// (a failure is [`Retryable::IfIdempotent`], anything else
    /// [`Retryable::Never`]), and is otherwise [`Retryable::IfIdempotent`].
    /// One classifier per type; a second for the same type replaces the first.
    pub fn classify_errors<E: 'static>(
        mut self,
        f: impl Fn(&E) -> Retryable + Send + Sync + 'static,
    ) -> Self {
        self.classifier.add_errors(f);
        self
    }

    /// How successful results of type `T` are judged: an `Ok` may be worth
    /// retrying (an HTTP 503). Without one for `T`, the breaker's
    /// classification decides if one is set, and otherwise no `Ok` is retried.
    /// When the attempts run out, the last `Ok` is returned.
    pub fn classify_results<T: 'static>(
        mut self,
        f: impl Fn(&T) -> Retryable + Send + Sync + 'static,
    ) -> Self {
        self.classifier.add_results(f);
        self
    }

    /// Judges outcomes as `breaker` does (its
    /// [`classify_errors`](heijunka_breaker::BreakerBuilder::classify_errors) and
    /// `classify_results`), so one classification serves both: what the breaker
    /// counts as a failure may be retried, what it ignores or counts as a
    /// success is not.
    pub fn breaker(mut self, breaker: &CircuitBreaker) -> Self {
        self.classifier.set_breaker(breaker.clone());
        self
    }

    /// Reads the wait a dependency asked for from errors of type `E` (a
    /// `Retry-After` header, a gRPC `RetryInfo`): the retry waits at least that
    /// long, and not at all if that would pass the deadline.
    pub fn retry_after<E: 'static>(
        mut self,
        f: impl Fn(&E) -> Option<Duration> + Send + Sync + 'static,
    ) -> Self {
        self.classifier.add_retry_after(f);
        self
    }

    /// The longest wait a dependency may ask for and still be retried (default
    /// [`DEFAULT_MAX_RETRY_AFTER`]): a call told to come back later than that
    /// gives up at once ([`Stop::RetryAfterTooLong`]) rather than hold its
    /// caller.
    pub fn max_retry_after(mut self, max: Duration) -> Self {
        self.max_retry_after = max;
        self
    }

    /// Judges the outcomes of a breaker that runs *inside* the retry (each
    /// attempt goes through `breaker`, as the guide recommends), whose errors
    /// are `CallError<E>`: a refusal by the breaker never reached the
    /// dependency, so it is [`Retryable::Always`], after the breaker's own
    /// retry-after when it gives one (open) and after the backoff when it does
    /// not (half-open with every probe out); forced open by an operator it is
    /// [`Retryable::Never`]; a failure `Failed(e)` is judged as an `E`
    /// would be (its [`classify_errors`](Self::classify_errors) classifier,
    /// else the breaker's verdict, as with [`breaker`](Self::breaker)).
    ///
    /// ```
    /// use heijunka_breaker::{CallError, CircuitBreaker, State};
    /// use heijunka_retry::{Backoff, Retry, Stop};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let breaker = CircuitBreaker::builder().build()?;
    /// let retry = Retry::builder()
    ///     .backoff(Backoff::None)
    ///     .breaker_inside::<std::io::Error>(&breaker)
    ///     .idempotent(true)
    ///     .build()?;
    /// breaker.force_open();
    /// let err = retry
    ///     .call(|_| breaker.call_async(async { Ok::<(), std::io::Error>(()) }))
    ///     .await
    ///     .unwrap_err();
    /// // Forced open by an operator: not retried.
    /// assert_eq!((err.attempts(), err.stop()), (1, Some(Stop::NotRetryable)));
    /// assert!(matches!(err.into_error(), Some(CallError::Rejected(_))));
    /// # Ok(())
    /// # }
    /// ```
    pub fn breaker_inside<E: 'static>(mut self, breaker: &CircuitBreaker) -> Self {
        self.classifier.set_breaker(breaker.clone());
        self.deferred.push(Box::new(|c: &mut Classifier| {
            let inner = c.clone();
            c.add_errors(move |e: &CallError<E>| match e {
                // An operator's switch: no point retrying into it.
                CallError::Rejected(r) if r.state() == State::ForcedOpen => Retryable::Never,
                CallError::Rejected(_) => Retryable::Always,
                CallError::Failed(e) => inner.error(e),
            });
            c.add_retry_after(|e: &CallError<E>| match e {
                CallError::Rejected(r) => r.retry_after(),
                CallError::Failed(_) => None,
            });
        }));
        self
    }

    /// Seeds the jitter's random source, so tests see the same waits each run
    /// (default: seeded from the process's random keys).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The retry policy.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `max_attempts` (0 or above [`MAX_ATTEMPTS`]),
    /// `backoff.base` or `backoff.cap`, or `expected_attempt_time` (zero).
    pub fn build(mut self) -> Result<Retry, ConfigError> {
        validate::at_least("max_attempts", self.max_attempts, 1)?;
        for register in std::mem::take(&mut self.deferred) {
            register(&mut self.classifier);
        }
        validate::at_most("max_attempts", self.max_attempts, MAX_ATTEMPTS)?;
        self.backoff.validate()?;
        if let Some(d) = self.expected_attempt {
            validate::non_zero_duration("expected_attempt_time", d)?;
        }
        Ok(Retry {
            inner: Arc::new(Inner {
                max_attempts: self.max_attempts,
                backoff: self.backoff,
                budget: self.budget,
                idempotent: self.idempotent,
                expected_attempt: self.expected_attempt,
                max_retry_after: self.max_retry_after,
                classifier: self.classifier,
                rng: self
                    .seed
                    .map_or_else(SplitMix64::from_entropy, SplitMix64::new),
                stats: Counters::default(),
            }),
        })
    }
}

#[derive(Default)]
struct Counters {
    calls: ShardedCounter,
    retries: AtomicU64,
    succeeded_after_retry: AtomicU64,
    rejected: AtomicU64,
    /// Calls that ended with a retryable outcome, by [`Stop`] (index
    /// `stop_index`).
    gave_up: [AtomicU64; 6],
}

fn stop_index(stop: Stop) -> usize {
    match stop {
        Stop::NotRetryable => 0,
        Stop::NotIdempotent => 1,
        Stop::AttemptsExhausted => 2,
        Stop::BudgetExhausted => 3,
        Stop::DeadlineWouldPass => 4,
        Stop::RetryAfterTooLong => 5,
    }
}

struct Inner {
    max_attempts: u32,
    backoff: Backoff,
    budget: Option<Budget>,
    idempotent: bool,
    expected_attempt: Option<Duration>,
    max_retry_after: Duration,
    classifier: Classifier,
    rng: SplitMix64,
    stats: Counters,
}

/// A [`Retry`]'s counts since it was built.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct RetryStats {
    /// Calls made through it (first attempts).
    pub calls: u64,
    /// Extra attempts made.
    pub retries: u64,
    /// Calls that succeeded on a retry.
    pub succeeded_after_retry: u64,
    /// Calls refused before any attempt: by the budget's rate limiter, or
    /// because the deadline had passed (or left less than the expected
    /// attempt time).
    pub rejected: u64,
    /// Calls whose last outcome was not retried because it is not retryable.
    pub not_retryable: u64,
    /// Calls not retried because they are not idempotent.
    pub not_idempotent: u64,
    /// Calls that used every attempt allowed.
    pub attempts_exhausted: u64,
    /// Calls whose retry the budget refused.
    pub budget_exhausted: u64,
    /// Calls whose retry could not have finished before the deadline.
    pub deadline: u64,
    /// Calls whose dependency asked for a wait longer than `max_retry_after`.
    pub retry_after_too_long: u64,
}

/// Retries a failed call, with [`Backoff`] between attempts, within a
/// [`Budget`] and the request's deadline.
///
/// - **Which outcomes:** errors (and, if classified so, `Ok` results such as a
///   503) judged [`Retryable`] per type, or by a breaker's classification
///   ([`breaker`](RetryBuilder::breaker)), so one classification serves both.
///   Outcomes that may have had their effect are retried only for idempotent
///   calls (opt-in: [`idempotent`](RetryBuilder::idempotent)).
/// - **How many:** at most `max_attempts`, and each retry spends from the
///   budget: a failing dependency sees at most (1 + ratio) × its traffic, plus
///   the budget's floor.
/// - **When:** after the backoff, or after the wait the dependency asked for
///   ([`retry_after`](RetryBuilder::retry_after)) if longer; never when the
///   attempt could not finish before the deadline.
///
/// Clones share the configuration and the counts.
///
/// ```
/// use heijunka_retry::{Backoff, Retry, Retryable, Stop};
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let retry = Retry::builder()
///     .max_attempts(3)
///     .backoff(Backoff::exponential(Duration::from_millis(10), Duration::from_secs(1)))
///     .idempotent(true)
///     .classify_errors(|e: &std::io::Error| match e.kind() {
///         std::io::ErrorKind::NotFound => Retryable::Never,
///         _ => Retryable::IfIdempotent,
///     })
///     .build()?;
///
/// let calls = AtomicU32::new(0);
/// let value = retry
///     .call(|attempt| {
///         calls.fetch_add(1, Ordering::Relaxed);
///         async move {
///             if attempt.number < 3 {
///                 Err(std::io::Error::from(std::io::ErrorKind::TimedOut))
///             } else {
///                 Ok(42)
///             }
///         }
///     })
///     .await?;
/// assert_eq!((value, calls.load(Ordering::Relaxed)), (42, 3));
///
/// // A not-found is not retried.
/// let err = retry
///     .call(|_| async { Err::<(), _>(std::io::Error::from(std::io::ErrorKind::NotFound)) })
///     .await
///     .unwrap_err();
/// assert_eq!((err.attempts(), err.stop()), (1, Some(Stop::NotRetryable)));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Retry {
    inner: Arc<Inner>,
}

impl fmt::Debug for Retry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("max_attempts", &self.inner.max_attempts)
            .field("backoff", &self.inner.backoff)
            .field("budget", &self.inner.budget)
            .field("idempotent", &self.inner.idempotent)
            .finish()
    }
}

impl Retry {
    /// A builder with the defaults: 3 attempts, full-jitter backoff from
    /// 100 ms to 10 s, no budget, not idempotent.
    pub fn builder() -> RetryBuilder {
        RetryBuilder::default()
    }

    /// The budget, if any.
    pub fn budget(&self) -> Option<&Budget> {
        self.inner.budget.as_ref()
    }

    /// Attempts in all, the first included.
    pub fn max_attempts(&self) -> u32 {
        self.inner.max_attempts
    }

    /// The backoff schedule.
    pub fn backoff(&self) -> Backoff {
        self.inner.backoff
    }

    /// The counts since it was built.
    pub fn stats(&self) -> RetryStats {
        let s = &self.inner.stats;
        let gave = |stop| s.gave_up[stop_index(stop)].load(Ordering::Relaxed);
        RetryStats {
            calls: s.calls.sum(),
            retries: s.retries.load(Ordering::Relaxed),
            succeeded_after_retry: s.succeeded_after_retry.load(Ordering::Relaxed),
            rejected: s.rejected.load(Ordering::Relaxed),
            not_retryable: gave(Stop::NotRetryable),
            not_idempotent: gave(Stop::NotIdempotent),
            attempts_exhausted: gave(Stop::AttemptsExhausted),
            budget_exhausted: gave(Stop::BudgetExhausted),
            deadline: gave(Stop::DeadlineWouldPass),
            retry_after_too_long: gave(Stop::RetryAfterTooLong),
        }
    }

    /// Calls `op` until an outcome is not worth retrying or the retries run
    /// out, with the default [`CallOptions`] (no deadline, default criticality,
    /// the policy's idempotency). `op` gets the [`Attempt`] it makes.
    ///
    /// # Errors
    ///
    /// [`RetryError::Failed`] with the last error, the number of attempts and
    /// why no further one was made; [`RetryError::Rejected`] when no attempt
    /// was made: the budget's rate limiter refused ([`Rejection::RateLimited`])
    /// or the deadline left no time for one ([`Rejection::TimedOut`]). When
    /// the last outcome is an `Ok` classified as retryable, that `Ok` is
    /// returned.
    ///
    /// `T` and `E` are `'static` because classifiers are found by type
    /// (`TypeId`).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, in the sense that nothing is left behind: dropped while an
    /// attempt runs, that attempt's future is dropped with it (the budget
    /// already paid for it: the attempt was made); dropped while it waits out a
    /// backoff, no budget has been spent on the retry that did not start. The
    /// attempts already made cannot be undone, so a call dropped and made again
    /// repeats them.
    pub async fn call<T, E, F, Fut>(&self, op: F) -> Result<T, RetryError<E>>
    where
        T: 'static,
        E: 'static,
        F: FnMut(Attempt) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.call_with(CallOptions::default(), op).await
    }

    /// [`call`](Self::call) with a deadline, a criticality and an idempotency
    /// for this call.
    ///
    /// # Errors
    ///
    /// As [`call`](Self::call).
    ///
    /// # Cancel safety
    ///
    /// As [`call`](Self::call).
    pub async fn call_with<T, E, F, Fut>(
        &self,
        opts: CallOptions,
        op: F,
    ) -> Result<T, RetryError<E>>
    where
        T: 'static,
        E: 'static,
        F: FnMut(Attempt) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let c = &self.inner.classifier;
        let classify = |r: &Result<T, E>| match r {
            Ok(v) => (c.result(v), None),
            Err(e) => (c.error(e), c.retry_after(e)),
        };
        self.run(opts, classify, op).await
    }

    /// [`call_with`](Self::call_with) with each outcome judged by `classify`
    /// (whether it may be retried, and the wait the dependency asked for)
    /// instead of the per-type classifiers; for outcomes of a type that wraps
    /// the dependency's error, such as the facade's `PolicyError`. `T` and `E`
    /// need not be `'static`.
    ///
    /// ```
    /// use heijunka_retry::{Backoff, CallOptions, Retry, Retryable};
    /// use std::time::Duration;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let retry = Retry::builder().backoff(Backoff::None).build().unwrap();
    /// let mut n = 0;
    /// let r = retry
    ///     .call_classified(
    ///         CallOptions::new(),
    ///         |r: &Result<u32, &str>| match r {
    ///             Err(e) if *e == "refused" => (Retryable::Always, Some(Duration::from_millis(5))),
    ///             _ => (Retryable::Never, None),
    ///         },
    ///         |_| {
    ///             n += 1;
    ///             let out = if n == 1 { Err("refused") } else { Ok(n) };
    ///             async move { out }
    ///         },
    ///     )
    ///     .await;
    /// assert_eq!(r.unwrap(), 2);
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
        opts: CallOptions,
        classify: C,
        op: F,
    ) -> Result<T, RetryError<E>>
    where
        C: FnMut(&Result<T, E>) -> (Retryable, Option<Duration>),
        F: FnMut(Attempt) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.run(opts, classify, op).await
    }

    /// How this policy's classifiers judge an error of type `E` (see
    /// [`RetryBuilder::classify_errors`]).
    pub fn classify_error<E: 'static>(&self, error: &E) -> Retryable {
        self.inner.classifier.error(error)
    }

    /// How this policy's classifiers judge a successful result of type `T`.
    pub fn classify_result<T: 'static>(&self, value: &T) -> Retryable {
        self.inner.classifier.result(value)
    }

    /// The wait the dependency asked for with `error`, as
    /// [`RetryBuilder::retry_after`] reads it.
    pub fn retry_after_of<E: 'static>(&self, error: &E) -> Option<Duration> {
        self.inner.classifier.retry_after(error)
    }

    async fn run<T, E, F, Fut, C>(
        &self,
        opts: CallOptions,
        mut classify: C,
        mut op: F,
    ) -> Result<T, RetryError<E>>
    where
        C: FnMut(&Result<T, E>) -> (Retryable, Option<Duration>),
        F: FnMut(Attempt) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let inner = &*self.inner;
        // No attempt that could not finish before the deadline: the first one
        // is refused once the deadline has passed, or when the configured
        // attempt time no longer fits.
        if let Some(deadline) = opts.deadline {
            let now = Instant::now();
            let late = now >= deadline
                || inner
                    .expected_attempt
                    .is_some_and(|d| now.checked_add(d).is_none_or(|end| end > deadline));
            if late {
                inner.stats.rejected.fetch_add(1, Ordering::Relaxed);
                return Err(RetryError::Rejected(Rejection::TimedOut {
                    after: Duration::ZERO,
                }));
            }
        }
        if let Some(budget) = &inner.budget
            && !opts.nested
            && let Err(reason) = budget.admit_for(opts.criticality)
        {
            inner.stats.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(RetryError::Rejected(reason));
        }
        inner.stats.calls.increment();
        let idempotent = opts.idempotent.unwrap_or(inner.idempotent);
        // Timing is needed only to estimate a retry's time against a deadline.
        let timed = opts.deadline.is_some() && inner.expected_attempt.is_none();
        let mut previous = Duration::ZERO;
        let mut number = 1;
        loop {
            let started = timed.then(Instant::now);
            let outcome = op(Attempt {
                number,
                deadline: opts.deadline,
                hedge: false,
            })
            .await;
            let (class, asked) = classify(&outcome);
            let stop = match class {
                Retryable::Never => Stop::NotRetryable,
                Retryable::IfIdempotent if !idempotent => Stop::NotIdempotent,
                _ if number >= inner.max_attempts => Stop::AttemptsExhausted,
                _ if asked.is_some_and(|a| a > inner.max_retry_after) => Stop::RetryAfterTooLong,
                _ => {
                    let wait = inner
                        .backoff
                        .delay(number, previous, &inner.rng)
                        .max(asked.unwrap_or(Duration::ZERO));
                    let budget = inner.budget.as_ref();
                    if !self.fits(opts.deadline, wait, started) {
                        Stop::DeadlineWouldPass
                    } else if budget.is_some_and(|b| !b.can_withdraw(opts.criticality)) {
                        // Refused now: do not wait out the backoff only to be
                        // refused after it.
                        Stop::BudgetExhausted
                    } else {
                        if !wait.is_zero() {
                            tokio::time::sleep(wait).await;
                        }
                        // Spent only now, as the retry starts: a call dropped
                        // during the wait has spent nothing.
                        if budget.is_none_or(|b| b.try_withdraw(opts.criticality)) {
                            inner.stats.retries.fetch_add(1, Ordering::Relaxed);
                            previous = wait;
                            number += 1;
                            continue;
                        }
                        Stop::BudgetExhausted
                    }
                }
            };
            let stats = &inner.stats;
            if outcome.is_ok() && stop == Stop::NotRetryable {
                // A success.
                if number > 1 {
                    stats.succeeded_after_retry.fetch_add(1, Ordering::Relaxed);
                }
            } else {
                stats.gave_up[stop_index(stop)].fetch_add(1, Ordering::Relaxed);
            }
            return outcome.map_err(|error| RetryError::Failed {
                error,
                attempts: number,
                stop,
            });
        }
    }

    /// Whether an attempt started after `wait` can finish before `deadline`:
    /// the expected attempt time is the configured one, or else the time the
    /// attempt that just failed took.
    fn fits(&self, deadline: Option<Instant>, wait: Duration, started: Option<Instant>) -> bool {
        let Some(deadline) = deadline else {
            return true;
        };
        let now = Instant::now();
        let expected = self
            .inner
            .expected_attempt
            .or_else(|| started.map(|s| now.saturating_duration_since(s)))
            .unwrap_or(Duration::ZERO);
        now.checked_add(wait)
            .and_then(|t| t.checked_add(expected))
            .is_some_and(|end| end <= deadline)
    }
}
