//! [`Hedge`]: when an attempt is slow, start another and take the first
//! success.

use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use heijunka_breaker::CircuitBreaker;
use heijunka_core::{ConfigError, ShardedCounter, validate};
use serde::Serialize;
use tokio::time::{Instant, Sleep};

use crate::classify::{Attempt, CallOptions, Classifier, Retryable, Stop};
use crate::latency::LatencyWindow;
use crate::{Budget, RetryError};

/// The most extra attempts a hedge may be configured with.
pub const MAX_HEDGES: u32 = 10;

/// Samples needed before an observed quantile replaces the initial delay.
pub const MIN_SAMPLES: u64 = 20;

/// When a [`Hedge`] starts its next attempt.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum HedgeDelay {
    /// A fixed time after the previous attempt started.
    Fixed(Duration),
    /// The dependency's observed latency at `quantile` (0.9 for p90, 0.95 for
    /// p95) over the last one to two `period`s of successful attempts; `initial`
    /// until [`MIN_SAMPLES`] were seen. Never below `min`.
    Quantile {
        /// Which quantile of the latency.
        quantile: f64,
        /// The delay until enough samples were seen.
        initial: Duration,
        /// The shortest delay (so a fast dependency is not hedged at once).
        min: Duration,
        /// How long a sample counts (one to two periods).
        period: Duration,
    },
}

impl HedgeDelay {
    /// The observed p95, starting from `initial`, never below 1 ms, over 10 s
    /// periods.
    pub fn p95(initial: Duration) -> Self {
        HedgeDelay::Quantile {
            quantile: 0.95,
            initial,
            min: Duration::from_millis(1),
            period: Duration::from_secs(10),
        }
    }

    /// The observed p90, as [`p95`](Self::p95).
    pub fn p90(initial: Duration) -> Self {
        HedgeDelay::Quantile {
            quantile: 0.90,
            initial,
            min: Duration::from_millis(1),
            period: Duration::from_secs(10),
        }
    }
}

/// Builds a [`Hedge`]; see [`Hedge::builder`].
#[must_use = "a builder does nothing until `build()`"]
pub struct HedgeBuilder {
    delay: HedgeDelay,
    max_hedges: u32,
    budget: Option<Budget>,
    idempotent: bool,
    expected_attempt: Option<Duration>,
    classifier: Classifier,
}

impl fmt::Debug for HedgeBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HedgeBuilder")
            .field("delay", &self.delay)
            .field("max_hedges", &self.max_hedges)
            .field("budget", &self.budget)
            .field("idempotent", &self.idempotent)
            .finish()
    }
}

impl HedgeBuilder {
    /// When to start the next attempt (default: the observed p95, from 100 ms).
    pub fn delay(mut self, delay: HedgeDelay) -> Self {
        self.delay = delay;
        self
    }

    /// Extra attempts at most (default 1), from 1 to [`MAX_HEDGES`].
    pub fn max_hedges(mut self, n: u32) -> Self {
        self.max_hedges = n;
        self
    }

    /// Each hedge spends from `budget`, the same one retries of the dependency
    /// spend from: a slow dependency sees at most (1 + ratio) × its traffic.
    pub fn budget(mut self, budget: Budget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Whether calls may be sent twice (default `false`: a call is hedged only
    /// when it is idempotent; [`CallOptions::idempotent`] overrides it per
    /// call). A non-idempotent call runs once, unhedged.
    pub fn idempotent(mut self, idempotent: bool) -> Self {
        self.idempotent = idempotent;
        self
    }

    /// How long an attempt is expected to take, for the deadline check (default:
    /// the observed median once known, else the delay).
    pub fn expected_attempt_time(mut self, d: Duration) -> Self {
        self.expected_attempt = Some(d);
        self
    }

    /// How errors of type `E` are judged: an error judged
    /// [`Retryable::Never`] stops further hedges (the call ends with it once
    /// no other attempt runs); others start the next hedge at once when
    /// nothing else runs.
    pub fn classify_errors<E: 'static>(
        mut self,
        f: impl Fn(&E) -> Retryable + Send + Sync + 'static,
    ) -> Self {
        self.classifier.add_errors(f);
        self
    }

    /// How successful results of type `T` are judged: an `Ok` judged retryable
    /// (a 503) does not win the race.
    pub fn classify_results<T: 'static>(
        mut self,
        f: impl Fn(&T) -> Retryable + Send + Sync + 'static,
    ) -> Self {
        self.classifier.add_results(f);
        self
    }

    /// Judges outcomes as `breaker` does (see
    /// [`RetryBuilder::breaker`](crate::RetryBuilder::breaker)).
    pub fn breaker(mut self, breaker: &CircuitBreaker) -> Self {
        self.classifier.set_breaker(breaker.clone());
        self
    }

    /// The hedging policy.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `max_hedges` (0 or above [`MAX_HEDGES`]),
    /// `delay` (zero fixed delay), `delay.quantile` (outside (0, 1]),
    /// `delay.initial`, `delay.min` or `delay.period` (zero), or
    /// `expected_attempt_time` (zero).
    pub fn build(self) -> Result<Hedge, ConfigError> {
        validate::at_least("max_hedges", self.max_hedges, 1)?;
        validate::at_most("max_hedges", self.max_hedges, MAX_HEDGES)?;
        let window = match self.delay {
            HedgeDelay::Fixed(d) => {
                validate::non_zero_duration("delay", d)?;
                None
            }
            HedgeDelay::Quantile {
                quantile,
                initial,
                min,
                period,
            } => {
                validate::ratio("delay.quantile", quantile)?;
                validate::non_zero_duration("delay.initial", initial)?;
                validate::non_zero_duration("delay.min", min)?;
                validate::non_zero_duration("delay.period", period)?;
                Some(LatencyWindow::new(period))
            }
        };
        if let Some(d) = self.expected_attempt {
            validate::non_zero_duration("expected_attempt_time", d)?;
        }
        Ok(Hedge {
            inner: Arc::new(Inner {
                delay: self.delay,
                max_hedges: self.max_hedges,
                budget: self.budget,
                idempotent: self.idempotent,
                expected_attempt: self.expected_attempt,
                classifier: self.classifier,
                window,
                stats: Counters::default(),
            }),
        })
    }
}

#[derive(Default)]
struct Counters {
    calls: ShardedCounter,
    hedges: AtomicU64,
    won_by_hedge: AtomicU64,
    budget_refused: AtomicU64,
    deadline: AtomicU64,
    rejected: AtomicU64,
}

struct Inner {
    delay: HedgeDelay,
    max_hedges: u32,
    budget: Option<Budget>,
    idempotent: bool,
    expected_attempt: Option<Duration>,
    classifier: Classifier,
    window: Option<LatencyWindow>,
    stats: Counters,
}

/// A [`Hedge`]'s counts since it was built.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct HedgeStats {
    /// Calls made through it.
    pub calls: u64,
    /// Extra attempts started.
    pub hedges: u64,
    /// Calls whose result came from an extra attempt.
    pub won_by_hedge: u64,
    /// Hedges the budget refused.
    pub budget_refused: u64,
    /// Hedges not started because they could not finish before the deadline.
    pub deadline: u64,
    /// Calls refused by the budget's rate limiter before any attempt.
    pub rejected: u64,
}

/// Sends an idempotent call again when the first attempt is slow, and takes
/// the first success ("The Tail at Scale", Dean and Barroso, 2013): after the
/// [`HedgeDelay`] (fixed, or the dependency's observed p90/p95), up to
/// `max_hedges` extra attempts start, each spending from the [`Budget`] shared
/// with retries; the first success wins and the others are cancelled (their
/// futures dropped). An attempt that fails while no other runs starts the next
/// hedge at once (as Polly's hedging does); an error judged
/// [`Retryable::Never`] stops further hedges, and ends the call once no other
/// attempt runs (an attempt still running may yet succeed).
///
/// Non-idempotent calls are not hedged unless allowed
/// ([`idempotent`](HedgeBuilder::idempotent)), and no hedge starts that could
/// not finish before the request's deadline.
///
/// ```
/// use heijunka_retry::{CallOptions, Hedge, HedgeDelay};
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let hedge = Hedge::builder()
///     .delay(HedgeDelay::Fixed(Duration::from_millis(50)))
///     .idempotent(true)
///     .build()?;
/// // The first attempt hangs; the hedge, started after 50 ms, answers.
/// let start = tokio::time::Instant::now();
/// let v = hedge
///     .call(|attempt| async move {
///         if attempt.is_first() {
///             tokio::time::sleep(Duration::from_secs(10)).await;
///         } else {
///             tokio::time::sleep(Duration::from_millis(5)).await;
///         }
///         Ok::<_, std::io::Error>(attempt.number)
///     })
///     .await?;
/// assert_eq!(v, 2);
/// assert_eq!(start.elapsed(), Duration::from_millis(55));
/// assert_eq!(hedge.stats().won_by_hedge, 1);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Hedge {
    inner: Arc<Inner>,
}

impl fmt::Debug for Hedge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hedge")
            .field("delay", &self.inner.delay)
            .field("max_hedges", &self.inner.max_hedges)
            .field("budget", &self.inner.budget)
            .field("idempotent", &self.inner.idempotent)
            .finish()
    }
}

/// A running hedge.
struct Running<Fut> {
    fut: Pin<Box<Fut>>,
    number: u32,
}

impl Hedge {
    /// A builder with the defaults: one hedge after the observed p95 (100 ms
    /// until 20 samples), no budget, not idempotent.
    pub fn builder() -> HedgeBuilder {
        HedgeBuilder {
            delay: HedgeDelay::p95(Duration::from_millis(100)),
            max_hedges: 1,
            budget: None,
            idempotent: false,
            expected_attempt: None,
            classifier: Classifier::default(),
        }
    }

    /// The delay the next call would wait before hedging.
    pub fn current_delay(&self) -> Duration {
        self.delay_at(Instant::now())
    }

    fn delay_at(&self, now: Instant) -> Duration {
        match (self.inner.delay, &self.inner.window) {
            (HedgeDelay::Fixed(d), _) => d,
            (
                HedgeDelay::Quantile {
                    quantile,
                    initial,
                    min,
                    ..
                },
                Some(w),
            ) => w
                .quantile(quantile, MIN_SAMPLES, now)
                .unwrap_or(initial)
                .max(min),
            (HedgeDelay::Quantile { initial, .. }, None) => initial,
        }
    }

    /// The expected time of an attempt, for the deadline check.
    fn expected(&self, delay: Duration, now: Instant) -> Duration {
        if let Some(d) = self.inner.expected_attempt {
            return d;
        }
        self.inner
            .window
            .as_ref()
            .and_then(|w| w.quantile(0.5, MIN_SAMPLES, now))
            .unwrap_or(delay)
    }

    /// The budget, if any.
    pub fn budget(&self) -> Option<&Budget> {
        self.inner.budget.as_ref()
    }

    /// The counts since it was built.
    pub fn stats(&self) -> HedgeStats {
        let s = &self.inner.stats;
        HedgeStats {
            calls: s.calls.sum(),
            hedges: s.hedges.load(Ordering::Relaxed),
            won_by_hedge: s.won_by_hedge.load(Ordering::Relaxed),
            budget_refused: s.budget_refused.load(Ordering::Relaxed),
            deadline: s.deadline.load(Ordering::Relaxed),
            rejected: s.rejected.load(Ordering::Relaxed),
        }
    }

    /// Runs `op`, hedging it as configured, with the default [`CallOptions`].
    ///
    /// # Errors
    ///
    /// [`RetryError::Failed`] with the last error when every attempt failed
    /// (the last one to fail; an error judged [`Retryable::Never`] stops
    /// further hedges);
    /// [`RetryError::Rejected`] when the budget's rate limiter refused the
    /// first attempt.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe in the sense that nothing is left behind: dropping the
    /// future drops every attempt still running (they are owned by it, not
    /// spawned) and its timer. Attempts already started may have had their
    /// effect; that is why only idempotent calls are hedged.
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
            Ok(v) => c.result(v),
            Err(e) => c.error(e),
        };
        self.run(opts, classify, op).await
    }

    /// [`call_with`](Self::call_with) with each outcome judged by `classify`
    /// instead of the per-type classifiers (see
    /// [`Retry::call_classified`](crate::Retry::call_classified)).
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
        C: FnMut(&Result<T, E>) -> Retryable,
        F: FnMut(Attempt) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.run(opts, classify, op).await
    }

    /// How this policy's classifiers judge an error of type `E` (see
    /// [`HedgeBuilder::classify_errors`]).
    pub fn classify_error<E: 'static>(&self, error: &E) -> Retryable {
        self.inner.classifier.error(error)
    }

    /// How this policy's classifiers judge a successful result of type `T`.
    pub fn classify_result<T: 'static>(&self, value: &T) -> Retryable {
        self.inner.classifier.result(value)
    }

    async fn run<T, E, F, Fut, C>(
        &self,
        opts: CallOptions,
        mut classify: C,
        mut op: F,
    ) -> Result<T, RetryError<E>>
    where
        C: FnMut(&Result<T, E>) -> Retryable,
        F: FnMut(Attempt) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let inner = &*self.inner;
        if let Some(budget) = &inner.budget
            && !opts.nested
            && let Err(reason) = budget.admit_for(opts.criticality)
        {
            inner.stats.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(RetryError::Rejected(reason));
        }
        inner.stats.calls.increment();
        let idempotent = opts.idempotent.unwrap_or(inner.idempotent);
        let mut hedges_left = if idempotent { inner.max_hedges } else { 0 };
        let start = Instant::now();
        let record = inner.window.is_some();

        // The first attempt lives inline (no allocation when it wins alone);
        // hedges are boxed as they start.
        let mut first = pin!(Some(op(Attempt {
            number: 1,
            deadline: opts.deadline,
            hedge: false,
        })));
        let mut hedges: Vec<Running<Fut>> = Vec::new();
        let mut timer: Pin<&mut Option<Sleep>> = pin!(None);
        let mut next_number = 2;
        let mut delay: Option<Duration> = None;
        // The last failure seen: returned if nothing succeeds.
        let mut last: Option<(Result<T, E>, Stop)> = None;
        // Why the hedges stopped early (budget or deadline), if they did.
        let mut refused: Option<Stop> = None;

        poll_fn(|cx| {
            loop {
                let mut progressed = false;
                // Poll the attempts; the first success wins.
                let mut finished: Option<(Result<T, E>, u32)> = None;
                if let Some(f) = first.as_mut().as_pin_mut()
                    && let Poll::Ready(out) = f.poll(cx)
                {
                    first.set(None);
                    finished = Some((out, 1));
                }
                if finished.is_none() {
                    let mut i = 0;
                    while i < hedges.len() {
                        if let Poll::Ready(out) = hedges[i].fut.as_mut().poll(cx) {
                            let r = hedges.swap_remove(i);
                            finished = Some((out, r.number));
                            break;
                        }
                        i += 1;
                    }
                }
                if let Some((out, number)) = finished {
                    progressed = true;
                    let class = classify(&out);
                    match (class, out.is_ok()) {
                        (Retryable::Never, true) => {
                            if record && let Some(w) = &inner.window {
                                // The first attempt's latency: its own when it
                                // won, else at least the time since it started
                                // (a hedge's own latency would teach the delay
                                // to shrink until everything is hedged).
                                let now = Instant::now();
                                w.record(now.saturating_duration_since(start), now);
                            }
                            if number > 1 {
                                inner.stats.won_by_hedge.fetch_add(1, Ordering::Relaxed);
                            }
                            return Poll::Ready(out.map_err(|error| RetryError::Failed {
                                error,
                                attempts: number,
                                stop: Stop::NotRetryable,
                            }));
                        }
                        (Retryable::Never, false) => {
                            // No further hedge; the attempts still running may
                            // yet succeed (a refused hedge says nothing of the
                            // first attempt), so the call ends with this error
                            // only once none runs.
                            hedges_left = 0;
                            timer.set(None);
                            last = Some((out, Stop::NotRetryable));
                        }
                        _ if !idempotent => last = Some((out, Stop::NotIdempotent)),
                        _ => last = Some((out, refused.unwrap_or(Stop::AttemptsExhausted))),
                    }
                    // A failure while nothing else runs: hedge at once.
                    if first.is_none() && hedges.is_empty() && hedges_left > 0 {
                        timer.set(None);
                        let now = Instant::now();
                        match self.may_hedge(&opts, now) {
                            Ok(()) => {
                                hedges_left -= 1;
                                hedges.push(self.start(&mut op, &opts, next_number));
                                next_number += 1;
                            }
                            Err(stop) => {
                                hedges_left = 0;
                                refused = Some(stop);
                                if let Some((_, s)) = &mut last {
                                    *s = stop;
                                }
                            }
                        }
                    }
                }
                if first.is_none() && hedges.is_empty() {
                    let (out, stop) = last.take().expect("an attempt finished without a result");
                    let attempts = next_number - 1;
                    return Poll::Ready(out.map_err(|error| RetryError::Failed {
                        error,
                        attempts,
                        stop,
                    }));
                }
                // The hedge timer.
                if hedges_left > 0 {
                    if timer.is_none() {
                        let d = *delay.get_or_insert_with(|| self.delay_at(start));
                        timer.set(Some(tokio::time::sleep(d)));
                    }
                    if let Some(t) = timer.as_mut().as_pin_mut()
                        && t.poll(cx).is_ready()
                    {
                        timer.set(None);
                        progressed = true;
                        let now = Instant::now();
                        match self.may_hedge(&opts, now) {
                            Ok(()) => {
                                hedges_left -= 1;
                                hedges.push(self.start(&mut op, &opts, next_number));
                                next_number += 1;
                            }
                            Err(stop) => {
                                hedges_left = 0;
                                refused = Some(stop);
                            }
                        }
                    }
                }
                if !progressed {
                    return Poll::Pending;
                }
            }
        })
        .await
    }

    /// Whether a hedge may start now: it fits before the deadline and the
    /// budget pays for it.
    fn may_hedge(&self, opts: &CallOptions, now: Instant) -> Result<(), Stop> {
        let inner = &*self.inner;
        if let Some(deadline) = opts.deadline {
            let delay = self.delay_at(now);
            let fits = now
                .checked_add(self.expected(delay, now))
                .is_some_and(|end| end <= deadline);
            if !fits {
                inner.stats.deadline.fetch_add(1, Ordering::Relaxed);
                return Err(Stop::DeadlineWouldPass);
            }
        }
        if let Some(b) = &inner.budget
            && !b.try_withdraw(opts.criticality)
        {
            inner.stats.budget_refused.fetch_add(1, Ordering::Relaxed);
            return Err(Stop::BudgetExhausted);
        }
        inner.stats.hedges.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn start<T, E, F, Fut>(&self, op: &mut F, opts: &CallOptions, number: u32) -> Running<Fut>
    where
        F: FnMut(Attempt) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        Running {
            fut: Box::pin(op(Attempt {
                number,
                deadline: opts.deadline,
                hedge: true,
            })),
            number,
        }
    }
}
