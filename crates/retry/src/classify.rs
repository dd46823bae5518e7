//! Which outcomes may be tried again, shared by [`Retry`](crate::Retry) and
//! [`Hedge`](crate::Hedge), and the per-call options both take.

use std::time::Duration;

use heijunka_breaker::{CircuitBreaker, Verdict};
use heijunka_core::Criticality;
use heijunka_core::classify::ByType;
use tokio::time::Instant;

/// Whether an outcome may be tried again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Retryable {
    /// Safe to try again whatever the call does: the request certainly did not
    /// reach the dependency (connection refused, refused by a limit or an open
    /// breaker).
    Always,
    /// Worth trying again, but the request may have had its effect (a
    /// time-out, a 503): only when the call is idempotent.
    IfIdempotent,
    /// Trying again cannot help (a client error, a not-found), or the outcome
    /// is a success.
    Never,
}

/// The per-type classifiers of a [`Retry`](crate::Retry) or a
/// [`Hedge`](crate::Hedge).
#[derive(Clone, Default, Debug)]
pub(crate) struct Classifier {
    errors: ByType<Retryable>,
    results: ByType<Retryable>,
    retry_after: ByType<Option<Duration>>,
    breaker: Option<CircuitBreaker>,
}

impl Classifier {
    pub(crate) fn add_errors<E: 'static>(
        &mut self,
        f: impl Fn(&E) -> Retryable + Send + Sync + 'static,
    ) {
        self.errors.register(f);
    }

    pub(crate) fn add_results<T: 'static>(
        &mut self,
        f: impl Fn(&T) -> Retryable + Send + Sync + 'static,
    ) {
        self.results.register(f);
    }

    pub(crate) fn add_retry_after<E: 'static>(
        &mut self,
        f: impl Fn(&E) -> Option<Duration> + Send + Sync + 'static,
    ) {
        self.retry_after.register(f);
    }

    pub(crate) fn set_breaker(&mut self, breaker: CircuitBreaker) {
        self.breaker = Some(breaker);
    }

    /// An error: its own classifier; else the breaker's verdict (a failure may
    /// be retried if idempotent, anything else not); else retried if idempotent.
    #[inline]
    pub(crate) fn error<E: 'static>(&self, e: &E) -> Retryable {
        if let Some(r) = self.errors.judge(e) {
            return r;
        }
        match &self.breaker {
            Some(b) => match b.classify_error(e) {
                Verdict::Failure => Retryable::IfIdempotent,
                Verdict::Ignore | Verdict::Success => Retryable::Never,
            },
            None => Retryable::IfIdempotent,
        }
    }

    /// A successful result: its own classifier; else the breaker's verdict (an
    /// `Ok` the breaker counts as a failure, such as a 503, may be retried if
    /// idempotent); else never retried.
    #[inline]
    pub(crate) fn result<T: 'static>(&self, v: &T) -> Retryable {
        if self.results.is_empty() && self.breaker.is_none() {
            return Retryable::Never;
        }
        if let Some(r) = self.results.judge(v) {
            return r;
        }
        match &self.breaker {
            Some(b) if b.classify_result(v) == Verdict::Failure => Retryable::IfIdempotent,
            _ => Retryable::Never,
        }
    }

    /// The wait the dependency asked for with this error, if any.
    #[inline]
    pub(crate) fn retry_after<E: 'static>(&self, e: &E) -> Option<Duration> {
        self.retry_after.judge(e).flatten()
    }
}

/// What one call brings to a [`Retry`](crate::Retry) or a
/// [`Hedge`](crate::Hedge): its deadline, its criticality and whether it is
/// idempotent (overriding the policy's setting).
///
/// ```
/// use heijunka_core::Criticality;
/// use heijunka_retry::CallOptions;
/// use std::time::Duration;
/// use tokio::time::Instant;
///
/// let opts = CallOptions::new()
///     .deadline(Instant::now() + Duration::from_secs(2))
///     .criticality(Criticality::Critical)
///     .idempotent(true);
/// assert_eq!(opts.get_criticality(), Criticality::Critical);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallOptions {
    pub(crate) deadline: Option<Instant>,
    pub(crate) criticality: Criticality,
    pub(crate) idempotent: Option<bool>,
    pub(crate) nested: bool,
}

impl CallOptions {
    /// No deadline, default criticality, the policy's idempotency.
    pub fn new() -> Self {
        Self::default()
    }

    /// The request's deadline: no attempt starts that could not finish before
    /// it (by the expected attempt time).
    #[must_use]
    pub fn deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// The request's criticality: sheddable requests spend no budget while it
    /// is under pressure.
    #[must_use]
    pub fn criticality(mut self, criticality: Criticality) -> Self {
        self.criticality = criticality;
        self
    }

    /// Whether this call may be repeated safely (overrides the policy's
    /// `idempotent` setting).
    #[must_use]
    pub fn idempotent(mut self, idempotent: bool) -> Self {
        self.idempotent = Some(idempotent);
        self
    }

    /// This call is made by an attempt of an outer [`Retry`](crate::Retry) or
    /// [`Hedge`](crate::Hedge) drawing from the same [`Budget`](crate::Budget):
    /// the outer one has already counted the attempt (a first attempt
    /// deposited, an extra one withdrew), so this call does not deposit or pass
    /// the budget's rate limiter again; its own extra attempts still withdraw.
    /// Without it, nesting would count each retry as a new request and let the
    /// budget grow with its own spending.
    #[must_use]
    pub fn nested(mut self) -> Self {
        self.nested = true;
        self
    }

    /// The deadline, if set.
    pub fn get_deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The criticality.
    pub fn get_criticality(&self) -> Criticality {
        self.criticality
    }
}

/// What an attempt is told about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attempt {
    /// 1 for the first attempt, 2 for the first retry or hedge, and so on.
    pub number: u32,
    /// The request's deadline, if it has one.
    pub deadline: Option<Instant>,
    /// Whether this is a hedge (started while an earlier attempt still runs).
    pub hedge: bool,
}

impl Attempt {
    /// Whether this is the first attempt.
    pub fn is_first(&self) -> bool {
        self.number == 1
    }
}

/// Why a [`Retry`](crate::Retry) or a [`Hedge`](crate::Hedge) made no further
/// attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Stop {
    /// The outcome is not worth trying again ([`Retryable::Never`]).
    NotRetryable,
    /// The outcome could be retried only if the call were idempotent, and it
    /// is not.
    NotIdempotent,
    /// Every attempt allowed was made.
    AttemptsExhausted,
    /// The budget refused the extra attempt.
    BudgetExhausted,
    /// The next attempt could not finish before the deadline.
    DeadlineWouldPass,
    /// The dependency asked for a wait longer than the policy's
    /// `max_retry_after`.
    RetryAfterTooLong,
}

impl Stop {
    /// A short lowercase name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Stop::NotRetryable => "not_retryable",
            Stop::NotIdempotent => "not_idempotent",
            Stop::AttemptsExhausted => "attempts_exhausted",
            Stop::BudgetExhausted => "budget_exhausted",
            Stop::DeadlineWouldPass => "deadline",
            Stop::RetryAfterTooLong => "retry_after_too_long",
        }
    }
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stop::NotRetryable => "not retryable",
            Stop::NotIdempotent => "not idempotent, so not retried",
            Stop::AttemptsExhausted => "every attempt allowed was made",
            Stop::BudgetExhausted => "the retry budget is spent",
            Stop::DeadlineWouldPass => "another attempt could not finish before the deadline",
            Stop::RetryAfterTooLong => "the dependency asked for a longer wait than allowed",
        })
    }
}
