//! Configuration: what trips the breaker, how long it stays open, how it probes.
//!
//! Names and defaults are resilience4j's `CircuitBreakerConfig`, in snake case, so a
//! resilience4j user finds the settings they know; the thresholds are ratios in
//! `(0, 1]` rather than percentages.

use std::time::Duration;

use heijunka_core::{Clock, ConfigError, validate};

use crate::classify::Classifiers;
use crate::{CircuitBreaker, State, Verdict};

/// Default failure-rate threshold: 50 % (resilience4j `failureRateThreshold`).
pub const DEFAULT_FAILURE_RATE_THRESHOLD: f64 = 0.5;
/// Default slow-call-rate threshold once slow-call detection is on: 100 %
/// (resilience4j `slowCallRateThreshold`).
pub const DEFAULT_SLOW_CALL_RATE_THRESHOLD: f64 = 1.0;
/// Default duration above which a call is slow, once slow-call detection is on: 60 s
/// (resilience4j `slowCallDurationThreshold`).
pub const DEFAULT_SLOW_CALL_DURATION_THRESHOLD: Duration = Duration::from_secs(60);
/// Default sliding-window size: 100 calls, or 100 seconds for a time-based window
/// (resilience4j `slidingWindowSize`).
pub const DEFAULT_SLIDING_WINDOW_SIZE: u32 = 100;
/// Default number of calls a window must hold before its rates are judged: 100
/// (resilience4j `minimumNumberOfCalls`).
pub const DEFAULT_MINIMUM_NUMBER_OF_CALLS: u32 = 100;
/// Default time the breaker stays open before it lets probes through: 60 s
/// (resilience4j `waitDurationInOpenState`).
pub const DEFAULT_WAIT_DURATION_IN_OPEN_STATE: Duration = Duration::from_secs(60);
/// Default number of probe calls admitted in half-open: 10 (resilience4j
/// `permittedNumberOfCallsInHalfOpenState`).
pub const DEFAULT_PERMITTED_NUMBER_OF_CALLS_IN_HALF_OPEN_STATE: u32 = 10;

/// The largest count-based window, and the most half-open probes: one million.
pub const MAX_COUNT_WINDOW_SIZE: u32 = 1_000_000;
/// The largest time-based window: one day, in seconds.
pub const MAX_TIME_WINDOW_SECONDS: u32 = 86_400;

/// How the closed state's sliding window is measured (resilience4j
/// `slidingWindowType`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SlidingWindowType {
    /// The last `sliding_window_size` calls (the default).
    #[default]
    CountBased,
    /// The calls of the last `sliding_window_size` seconds, in one-second buckets.
    TimeBased,
}

/// What a [`Permit`](crate::Permit) dropped without an outcome records.
///
/// A permit dropped while its thread panics always records a failure, whichever rule
/// is set: a panic in a guarded call is a failure of that call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PermitDrop {
    /// Record nothing: the call is treated as never made, and a half-open probe slot
    /// goes back to the breaker for another caller (resilience4j's
    /// `releasePermission`). The default.
    #[default]
    Release,
    /// Record a failure: a call abandoned half-way (a cancelled future, an early
    /// return) counts against the dependency.
    RecordFailure,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct SlowCalls {
    pub(crate) rate_threshold: f64,
    pub(crate) duration_threshold: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct FailureCount {
    pub(crate) count: u32,
    pub(crate) window: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct OpenWait {
    pub(crate) base: Duration,
    pub(crate) multiplier: f64,
    pub(crate) max: Duration,
    pub(crate) jitter: Option<f64>,
}

impl OpenWait {
    /// The wait before half-open after the `trip`-th consecutive trip (0 for the
    /// first), before jitter: `base * multiplier^trip`, at most `max`.
    pub(crate) fn grown(&self, trip: u32) -> Duration {
        if self.multiplier == 1.0 || trip == 0 {
            return self.base;
        }
        let exponent = i32::try_from(trip).unwrap_or(i32::MAX);
        // In nanoseconds, rounded: exact for whole multipliers of whole waits.
        let nanos = (self.base.as_nanos() as f64 * self.multiplier.powi(exponent)).round();
        if nanos.is_finite() && nanos < self.max.as_nanos() as f64 {
            Duration::from_nanos(nanos as u64)
        } else {
            self.max
        }
    }

    /// `grown` spread by the jitter factor: uniformly in `[w (1 - j), w (1 + j))`,
    /// where `unit` is a uniform draw in `[0, 1)`. Never zero.
    pub(crate) fn jittered(&self, trip: u32, unit: f64) -> Duration {
        let w = self.grown(trip);
        let Some(j) = self.jitter else { return w };
        let factor = 1.0 + j * (2.0 * unit - 1.0);
        let secs = w.as_secs_f64() * factor;
        Duration::try_from_secs_f64(secs)
            .unwrap_or(w)
            .max(Duration::from_nanos(1))
    }
}

/// A validated circuit-breaker configuration, shared by every breaker built from it.
///
/// Build one with [`BreakerConfig::builder`] (or [`CircuitBreaker::builder`], which
/// builds the breaker directly); [`BreakerConfig::default`] is resilience4j's
/// defaults. A [`BreakerRegistry`](crate::BreakerRegistry) takes one as the default
/// for every key and others as per-key overrides.
#[derive(Clone, Debug)]
pub struct BreakerConfig {
    pub(crate) name: String,
    pub(crate) failure_rate_threshold: f64,
    pub(crate) slow_calls: Option<SlowCalls>,
    pub(crate) consecutive_failures: Option<u32>,
    pub(crate) failure_count: Option<FailureCount>,
    pub(crate) window_type: SlidingWindowType,
    pub(crate) window_size: u32,
    pub(crate) minimum_calls: u32,
    pub(crate) wait: OpenWait,
    pub(crate) automatic_half_open: bool,
    pub(crate) permitted_in_half_open: u32,
    pub(crate) max_wait_in_half_open: Option<Duration>,
    /// Where a half-open period that reaches `max_wait_in_half_open` goes: open or
    /// closed.
    pub(crate) after_half_open_timeout: State,
    /// The state a new breaker starts in: closed, open or metrics-only.
    pub(crate) initial_state: State,
    pub(crate) permit_drop: PermitDrop,
    pub(crate) clock: Clock,
    pub(crate) classifiers: Classifiers,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            name: "circuit-breaker".to_string(),
            failure_rate_threshold: DEFAULT_FAILURE_RATE_THRESHOLD,
            slow_calls: None,
            consecutive_failures: None,
            failure_count: None,
            window_type: SlidingWindowType::CountBased,
            window_size: DEFAULT_SLIDING_WINDOW_SIZE,
            minimum_calls: DEFAULT_MINIMUM_NUMBER_OF_CALLS,
            wait: OpenWait {
                base: DEFAULT_WAIT_DURATION_IN_OPEN_STATE,
                multiplier: 1.0,
                max: DEFAULT_WAIT_DURATION_IN_OPEN_STATE,
                jitter: None,
            },
            automatic_half_open: false,
            permitted_in_half_open: DEFAULT_PERMITTED_NUMBER_OF_CALLS_IN_HALF_OPEN_STATE,
            max_wait_in_half_open: None,
            after_half_open_timeout: State::Open,
            initial_state: State::Closed,
            permit_drop: PermitDrop::Release,
            clock: Clock::system(),
            classifiers: Classifiers::default(),
        }
    }
}

impl BreakerConfig {
    /// A builder starting from resilience4j's defaults.
    pub fn builder() -> BreakerBuilder {
        BreakerBuilder::default()
    }

    /// The breaker's name, used in events, `tracing` fields and stats.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The failure-rate threshold, a ratio in `(0, 1]`.
    pub fn failure_rate_threshold(&self) -> f64 {
        self.failure_rate_threshold
    }

    /// The slow-call-rate threshold and slow-call duration, when slow-call detection
    /// is on.
    pub fn slow_call_thresholds(&self) -> Option<(f64, Duration)> {
        self.slow_calls
            .map(|s| (s.rate_threshold, s.duration_threshold))
    }

    /// The sliding window's type.
    pub fn sliding_window_type(&self) -> SlidingWindowType {
        self.window_type
    }

    /// The sliding window's size: calls, or seconds for a time-based window.
    pub fn sliding_window_size(&self) -> u32 {
        self.window_size
    }

    /// The number of calls a window must hold before its rates are judged, as
    /// configured. A count-based window judges at `min(this, sliding_window_size)`
    /// calls, as resilience4j does.
    pub fn minimum_number_of_calls(&self) -> u32 {
        self.minimum_calls
    }

    /// The wait in open state after the first trip.
    pub fn wait_duration_in_open_state(&self) -> Duration {
        self.wait.base
    }

    /// The number of probe calls admitted in half-open state.
    pub fn permitted_number_of_calls_in_half_open_state(&self) -> u32 {
        self.permitted_in_half_open
    }

    /// Where a half-open period that reaches its maximum wait goes:
    /// [`State::Open`] (the default) or [`State::Closed`].
    pub fn transition_to_state_after_wait_duration(&self) -> State {
        self.after_half_open_timeout
    }

    /// The state a breaker built with this configuration starts in.
    pub fn initial_state(&self) -> State {
        self.initial_state
    }

    /// The clock the breaker reads.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The number of calls at which a window's rates are first judged.
    pub(crate) fn effective_minimum_calls(&self) -> u64 {
        match self.window_type {
            SlidingWindowType::CountBased => u64::from(self.minimum_calls.min(self.window_size)),
            SlidingWindowType::TimeBased => u64::from(self.minimum_calls),
        }
    }
}

/// Builds a [`BreakerConfig`] or a [`CircuitBreaker`]; every setting starts at
/// resilience4j's default and is checked by [`build`](Self::build).
///
/// ```
/// use heijunka_breaker::{CircuitBreaker, SlidingWindowType};
/// use std::time::Duration;
///
/// let breaker = CircuitBreaker::builder()
///     .name("payments")
///     .failure_rate_threshold(0.25)
///     .sliding_window(SlidingWindowType::TimeBased, 30)
///     .minimum_number_of_calls(20)
///     .slow_call_duration_threshold(Duration::from_secs(2))
///     .consecutive_failure_threshold(5)
///     .wait_duration_in_open_state(Duration::from_secs(10))
///     .exponential_backoff(2.0, Duration::from_secs(120))
///     .wait_duration_jitter(0.2)
/// #   .clock(heijunka_core::ManualClock::new())
///     .build()?;
/// assert_eq!(breaker.name(), "payments");
///
/// let err = CircuitBreaker::builder().failure_rate_threshold(1.5).build().unwrap_err();
/// assert_eq!(err.to_string(), "failure_rate_threshold must be in (0, 1], got 1.5");
/// # Ok::<(), heijunka_core::ConfigError>(())
/// ```
#[derive(Clone, Debug)]
pub struct BreakerBuilder {
    config: BreakerConfig,
    slow_rate: Option<f64>,
    slow_duration: Option<Duration>,
    multiplier: f64,
    max_wait: Option<Duration>,
}

impl Default for BreakerBuilder {
    fn default() -> Self {
        Self {
            config: BreakerConfig::default(),
            slow_rate: None,
            slow_duration: None,
            multiplier: 1.0,
            max_wait: None,
        }
    }
}

impl BreakerBuilder {
    /// The breaker's name, for events, `tracing` and stats (default
    /// `"circuit-breaker"`; a registry names each breaker after its key).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }

    /// The failure rate, in `(0, 1]`, at or above which the breaker opens (default
    /// 0.5).
    pub fn failure_rate_threshold(mut self, ratio: f64) -> Self {
        self.config.failure_rate_threshold = ratio;
        self
    }

    /// Turns slow-call detection on and sets the slow-call rate, in `(0, 1]`, at or
    /// above which the breaker opens (default 1.0 once detection is on).
    ///
    /// Slow-call detection is off until this or
    /// [`slow_call_duration_threshold`](Self::slow_call_duration_threshold) is set:
    /// detecting slow calls reads the clock twice per call, and a breaker without it
    /// reads no clock on its closed path. This differs from resilience4j, which
    /// always measures calls (with thresholds that rarely matter: 100 % at 60 s).
    pub fn slow_call_rate_threshold(mut self, ratio: f64) -> Self {
        self.slow_rate = Some(ratio);
        self
    }

    /// Turns slow-call detection on and sets the duration above which a call is
    /// slow (strictly longer, as resilience4j's `CircuitBreakerMetrics`; default 60 s
    /// once detection is on). A slow call counts towards the
    /// slow-call rate whether it succeeded or failed.
    pub fn slow_call_duration_threshold(mut self, duration: Duration) -> Self {
        self.slow_duration = Some(duration);
        self
    }

    /// Opens the breaker after `count` failures in a row (like the seeds'
    /// `max_failures`), whatever the failure rate and the minimum number of calls.
    /// Off by default.
    pub fn consecutive_failure_threshold(mut self, count: u32) -> Self {
        self.config.consecutive_failures = Some(count);
        self
    }

    /// Opens the breaker when `count` failures happen within `window` (the newest
    /// and the oldest of them less than `window` apart), however many calls
    /// succeeded meanwhile: an absolute budget such as "5 failures a minute", which
    /// resilience4j does not offer (its issue 785). Off by default.
    pub fn failure_count_threshold(mut self, count: u32, window: Duration) -> Self {
        self.config.failure_count = Some(FailureCount { count, window });
        self
    }

    /// The sliding window: its type and size, in calls or seconds (default
    /// count-based, 100).
    pub fn sliding_window(mut self, window_type: SlidingWindowType, size: u32) -> Self {
        self.config.window_type = window_type;
        self.config.window_size = size;
        self
    }

    /// The number of calls a window must hold before the failure and slow-call
    /// rates are judged (default 100). For a count-based window the breaker judges
    /// at `min(this, sliding_window_size)` calls, as resilience4j does.
    pub fn minimum_number_of_calls(mut self, calls: u32) -> Self {
        self.config.minimum_calls = calls;
        self
    }

    /// How long the breaker stays open after a trip before it admits probes
    /// (default 60 s).
    pub fn wait_duration_in_open_state(mut self, wait: Duration) -> Self {
        self.config.wait.base = wait;
        self
    }

    /// Grows the wait in open state on repeated trips: the `n`-th consecutive trip
    /// (counting from 0, reset when the breaker closes) waits
    /// `wait_duration_in_open_state * multiplier^n`, at most `max_wait`.
    pub fn exponential_backoff(mut self, multiplier: f64, max_wait: Duration) -> Self {
        self.multiplier = multiplier;
        self.max_wait = Some(max_wait);
        self
    }

    /// Spreads each wait in open state uniformly over `[w (1 - factor), w (1 +
    /// factor))`, so replicas that tripped together do not probe together. The
    /// factor is in `(0, 1]`; off by default.
    pub fn wait_duration_jitter(mut self, factor: f64) -> Self {
        self.config.wait.jitter = Some(factor);
        self
    }

    /// Whether the breaker moves from open to half-open by itself when the wait
    /// ends (`true`), or on the first call after it (`false`, the default; as
    /// resilience4j's `automaticTransitionFromOpenToHalfOpenEnabled`).
    ///
    /// Automatic transitions on the system clock are made by one process-wide timer
    /// thread, started the first time a breaker that needs it opens. On a
    /// [`ManualClock`](heijunka_core::ManualClock) that thread re-reads the clock
    /// every millisecond; and with either clock, reading the breaker
    /// ([`state`](CircuitBreaker::state), [`stats`](CircuitBreaker::stats)) applies
    /// a transition that is due.
    pub fn automatic_transition_to_half_open(mut self, automatic: bool) -> Self {
        self.config.automatic_half_open = automatic;
        self
    }

    /// The number of probe calls admitted in half-open (default 10). Once all of
    /// them have completed, the breaker closes if their failure and slow-call rates
    /// are below the thresholds and opens again otherwise.
    pub fn permitted_number_of_calls_in_half_open_state(mut self, calls: u32) -> Self {
        self.config.permitted_in_half_open = calls;
        self
    }

    /// The longest the breaker stays half-open waiting for its probes to complete;
    /// then it opens again (or closes, see
    /// [`transition_to_state_after_wait_duration`](Self::transition_to_state_after_wait_duration)),
    /// when it is next called or read, or by the timer thread with automatic
    /// transitions, and a probe completing later is not counted. Off by default
    /// (wait for the probes however long they take, as resilience4j's default of
    /// zero).
    pub fn max_wait_duration_in_half_open_state(mut self, wait: Duration) -> Self {
        self.config.max_wait_in_half_open = Some(wait);
        self
    }

    /// Where a half-open period that reaches the
    /// [maximum wait](Self::max_wait_duration_in_half_open_state) goes:
    /// [`State::Open`] (the default: probes that hang count against the dependency)
    /// or [`State::Closed`] (they do not: back to normal traffic, with an empty
    /// window). resilience4j's `transitionToStateAfterWaitDuration`; any other state
    /// is refused by [`build`](Self::build).
    ///
    /// ```
    /// use heijunka_breaker::{CircuitBreaker, SlidingWindowType, State};
    /// use heijunka_core::ManualClock;
    /// use std::time::Duration;
    ///
    /// let clock = ManualClock::new();
    /// let breaker = CircuitBreaker::builder()
    ///     .sliding_window(SlidingWindowType::CountBased, 1)
    ///     .wait_duration_in_open_state(Duration::from_secs(10))
    ///     .max_wait_duration_in_half_open_state(Duration::from_secs(2))
    ///     .transition_to_state_after_wait_duration(State::Closed)
    ///     .clock(&clock)
    ///     .build()?;
    /// let _ = breaker.call(|| Err::<(), _>("down"));
    /// clock.advance(Duration::from_secs(10));
    /// let probe = breaker.try_acquire().unwrap(); // half-open; the probe hangs
    /// clock.advance(Duration::from_secs(2));
    /// assert_eq!(breaker.state(), State::Closed);
    /// drop(probe);
    ///
    /// let err = CircuitBreaker::builder()
    ///     .transition_to_state_after_wait_duration(State::ForcedOpen)
    ///     .build()
    ///     .unwrap_err();
    /// assert_eq!(
    ///     err.to_string(),
    ///     "transition_to_state_after_wait_duration must be open or closed, got forced_open"
    /// );
    /// # Ok::<(), heijunka_core::ConfigError>(())
    /// ```
    pub fn transition_to_state_after_wait_duration(mut self, state: State) -> Self {
        self.config.after_half_open_timeout = state;
        self
    }

    /// The state a new breaker starts in (resilience4j's `initialState`):
    ///
    /// - [`State::Closed`], the default;
    /// - [`State::Open`]: it rejects calls for `wait_duration_in_open_state` from
    ///   when it is built, then probes as after a trip (for a dependency that must
    ///   prove itself first, or a replica that should not start at full load);
    /// - [`State::MetricsOnly`]: it records every call and never trips, until an
    ///   operator moves it (a breaker trialled in production).
    ///
    /// Any other state is refused by [`build`](Self::build). Starting in a state is
    /// not a transition: no event is announced for it.
    ///
    /// ```
    /// use heijunka_breaker::{CircuitBreaker, State};
    /// use heijunka_core::ManualClock;
    /// use std::time::Duration;
    ///
    /// let clock = ManualClock::new();
    /// let breaker = CircuitBreaker::builder()
    ///     .initial_state(State::Open)
    ///     .wait_duration_in_open_state(Duration::from_secs(30))
    ///     .clock(&clock)
    ///     .build()?;
    /// assert_eq!(breaker.state(), State::Open);
    /// assert_eq!(breaker.stats().retry_after, Some(Duration::from_secs(30)));
    ///
    /// let err = CircuitBreaker::builder().initial_state(State::HalfOpen).build().unwrap_err();
    /// assert_eq!(err.to_string(), "initial_state must be closed, open or metrics_only, got half_open");
    /// # Ok::<(), heijunka_core::ConfigError>(())
    /// ```
    pub fn initial_state(mut self, state: State) -> Self {
        self.config.initial_state = state;
        self
    }

    /// What a [`Permit`](crate::Permit) dropped without an outcome records (default
    /// [`PermitDrop::Release`]).
    pub fn permit_drop(mut self, rule: PermitDrop) -> Self {
        self.config.permit_drop = rule;
        self
    }

    /// How the calls through [`call`](CircuitBreaker::call) and
    /// [`call_async`](CircuitBreaker::call_async) count an error of type `E`:
    /// a [`Verdict::Failure`] (what every error is without a classifier), a
    /// [`Verdict::Success`], or [`Verdict::Ignore`]d (recorded nothing; a half-open
    /// probe slot goes back). resilience4j's `recordExceptions`, `ignoreExceptions`
    /// and `recordException(Predicate)`, set once for every call site.
    ///
    /// Classifiers accumulate, one per type: a classifier for another type is
    /// added, one for the same type again replaces the earlier one. An error is
    /// classified by the classifier registered for *exactly* its type (the first
    /// such, in registration order); errors of other types count as failures. The
    /// match is on the call's `E`, not on what it contains: with
    /// `E = Box<dyn Error + Send + Sync>` a classifier for `std::io::Error` is
    /// not consulted; register one for the boxed type and `downcast_ref` inside it.
    ///
    /// [`call_with`](CircuitBreaker::call_with) and
    /// [`call_async_with`](CircuitBreaker::call_async_with) take their own
    /// classifier and apply none of the builder's.
    ///
    /// ```
    /// use heijunka_breaker::{CallError, CircuitBreaker, Verdict};
    /// use std::io::{Error, ErrorKind};
    ///
    /// type Boxed = Box<dyn std::error::Error + Send + Sync>;
    /// let breaker = CircuitBreaker::builder()
    ///     .classify_errors(|e: &Error| match e.kind() {
    ///         ErrorKind::NotFound => Verdict::Success, // the disk answered
    ///         ErrorKind::InvalidInput => Verdict::Ignore, // the caller's mistake
    ///         _ => Verdict::Failure,
    ///     })
    ///     // A second type adds a classifier; it does not replace the first.
    ///     .classify_errors(|e: &Boxed| match e.downcast_ref::<Error>() {
    ///         Some(io) if io.kind() == ErrorKind::NotFound => Verdict::Success,
    ///         _ => Verdict::Failure,
    ///     })
    /// #   .clock(heijunka_core::ManualClock::new())
    ///     .build()?;
    /// let r = breaker.call(|| Err::<(), _>(Error::from(ErrorKind::NotFound)));
    /// assert!(matches!(r, Err(CallError::Failed(_))), "the caller still sees the error");
    /// let r = breaker.call(|| Err::<(), Boxed>(Error::from(ErrorKind::NotFound).into()));
    /// assert!(r.is_err());
    /// assert_eq!(breaker.stats().failed_calls, 0);
    /// # Ok::<(), heijunka_core::ConfigError>(())
    /// ```
    pub fn classify_errors<E: 'static>(
        mut self,
        classify: impl Fn(&E) -> Verdict + Send + Sync + 'static,
    ) -> Self {
        self.config.classifiers.add_errors(classify);
        self
    }

    /// How the calls through [`call`](CircuitBreaker::call) and
    /// [`call_async`](CircuitBreaker::call_async) count a successful result of
    /// type `T`: a [`Verdict::Success`] (what every result is without a
    /// classifier), a [`Verdict::Failure`] (an `Ok` that reports trouble, such as
    /// an HTTP 503 response), or [`Verdict::Ignore`]d. resilience4j's
    /// `recordResult(Predicate)`.
    ///
    /// Accumulates per type and matches the exact type, as
    /// [`classify_errors`](Self::classify_errors); results of other types count as
    /// successes. [`call_with`](CircuitBreaker::call_with) and
    /// [`call_async_with`](CircuitBreaker::call_async_with) do not apply it.
    ///
    /// ```
    /// use heijunka_breaker::{CircuitBreaker, Verdict};
    ///
    /// let breaker = CircuitBreaker::builder()
    ///     .classify_results(|status: &u16| if *status >= 500 { Verdict::Failure } else { Verdict::Success })
    /// #   .clock(heijunka_core::ManualClock::new())
    ///     .build()?;
    /// let status = breaker.call(|| Ok::<u16, ()>(503)).unwrap();
    /// assert_eq!(status, 503, "the caller still gets the result");
    /// assert_eq!(breaker.stats().failed_calls, 1);
    /// # Ok::<(), heijunka_core::ConfigError>(())
    /// ```
    pub fn classify_results<T: 'static>(
        mut self,
        classify: impl Fn(&T) -> Verdict + Send + Sync + 'static,
    ) -> Self {
        self.config.classifiers.add_results(classify);
        self
    }

    /// The clock (default the system clock; tests pass a
    /// [`ManualClock`](heijunka_core::ManualClock)'s).
    pub fn clock(mut self, clock: impl Into<Clock>) -> Self {
        self.config.clock = clock.into();
        self
    }

    /// Checks every setting and returns the configuration.
    pub fn build_config(self) -> Result<BreakerConfig, ConfigError> {
        let mut c = self.config;
        if c.name.is_empty() {
            return Err(ConfigError::new("name", &c.name, "must not be empty"));
        }
        validate::ratio("failure_rate_threshold", c.failure_rate_threshold)?;
        if self.slow_rate.is_some() || self.slow_duration.is_some() {
            let rate = validate::ratio(
                "slow_call_rate_threshold",
                self.slow_rate.unwrap_or(DEFAULT_SLOW_CALL_RATE_THRESHOLD),
            )?;
            let duration = validate::non_zero_duration(
                "slow_call_duration_threshold",
                self.slow_duration
                    .unwrap_or(DEFAULT_SLOW_CALL_DURATION_THRESHOLD),
            )?;
            c.slow_calls = Some(SlowCalls {
                rate_threshold: rate,
                duration_threshold: duration,
            });
        }
        if let Some(n) = c.consecutive_failures {
            validate::at_least("consecutive_failure_threshold", n, 1)?;
        }
        if let Some(f) = c.failure_count {
            validate::at_least("failure_count_threshold", f.count, 1)?;
            validate::at_most("failure_count_threshold", f.count, MAX_COUNT_WINDOW_SIZE)?;
            validate::non_zero_duration("failure_count_window", f.window)?;
        }
        validate::at_least("sliding_window_size", c.window_size, 1)?;
        let max_window = match c.window_type {
            SlidingWindowType::CountBased => MAX_COUNT_WINDOW_SIZE,
            SlidingWindowType::TimeBased => MAX_TIME_WINDOW_SECONDS,
        };
        validate::at_most("sliding_window_size", c.window_size, max_window)?;
        validate::at_least("minimum_number_of_calls", c.minimum_calls, 1)?;
        validate::non_zero_duration("wait_duration_in_open_state", c.wait.base)?;
        if self.multiplier.is_nan() || self.multiplier < 1.0 || self.multiplier.is_infinite() {
            return Err(ConfigError::new(
                "wait_duration_multiplier",
                self.multiplier,
                "must be a finite number of at least 1",
            ));
        }
        c.wait.multiplier = self.multiplier;
        c.wait.max = match self.max_wait {
            Some(max) if max < c.wait.base => {
                return Err(ConfigError::new(
                    "max_wait_duration_in_open_state",
                    max,
                    format!(
                        "must be at least wait_duration_in_open_state ({:?})",
                        c.wait.base
                    ),
                ));
            }
            Some(max) => max,
            None => c.wait.base,
        };
        if let Some(j) = c.wait.jitter {
            validate::ratio("wait_duration_jitter", j)?;
        }
        validate::at_least(
            "permitted_number_of_calls_in_half_open_state",
            c.permitted_in_half_open,
            1,
        )?;
        validate::at_most(
            "permitted_number_of_calls_in_half_open_state",
            c.permitted_in_half_open,
            MAX_COUNT_WINDOW_SIZE,
        )?;
        if let Some(w) = c.max_wait_in_half_open {
            validate::non_zero_duration("max_wait_duration_in_half_open_state", w)?;
        }
        if !matches!(c.after_half_open_timeout, State::Open | State::Closed) {
            return Err(ConfigError::new(
                "transition_to_state_after_wait_duration",
                format_args!("{}", c.after_half_open_timeout.as_str()),
                "must be open or closed",
            ));
        }
        if !matches!(
            c.initial_state,
            State::Closed | State::Open | State::MetricsOnly
        ) {
            return Err(ConfigError::new(
                "initial_state",
                format_args!("{}", c.initial_state.as_str()),
                "must be closed, open or metrics_only",
            ));
        }
        Ok(c)
    }

    /// Checks every setting and builds the breaker.
    pub fn build(self) -> Result<CircuitBreaker, ConfigError> {
        self.build_config().map(CircuitBreaker::new)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn wait(base: u64, multiplier: f64, max: u64, jitter: Option<f64>) -> OpenWait {
        OpenWait {
            base: Duration::from_secs(base),
            multiplier,
            max: Duration::from_secs(max),
            jitter,
        }
    }

    #[test]
    fn waits_grow_exponentially_up_to_the_cap() {
        let w = wait(10, 2.0, 60, None);
        let secs: Vec<u64> = (0..6).map(|t| w.grown(t).as_secs()).collect();
        assert_eq!(secs, [10, 20, 40, 60, 60, 60]);
        assert_eq!(w.grown(u32::MAX), Duration::from_secs(60));
        let constant = wait(10, 1.0, 10, None);
        assert_eq!(constant.grown(7), Duration::from_secs(10));
    }

    #[test]
    fn jitter_stays_within_its_band() {
        let w = wait(10, 1.0, 10, Some(0.5));
        assert_eq!(w.jittered(0, 0.0), Duration::from_secs(5));
        assert_eq!(w.jittered(0, 0.5), Duration::from_secs(10));
        assert!(w.jittered(0, 0.999_999) < Duration::from_secs(15));
        let full = wait(10, 1.0, 10, Some(1.0));
        assert_eq!(full.jittered(0, 0.0), Duration::from_nanos(1), "never zero");
    }

    #[test]
    fn defaults_are_resilience4j_defaults() {
        let c = BreakerConfig::default();
        assert_eq!(c.failure_rate_threshold(), 0.5);
        assert_eq!(c.sliding_window_type(), SlidingWindowType::CountBased);
        assert_eq!(c.sliding_window_size(), 100);
        assert_eq!(c.minimum_number_of_calls(), 100);
        assert_eq!(c.wait_duration_in_open_state(), Duration::from_secs(60));
        assert_eq!(c.permitted_number_of_calls_in_half_open_state(), 10);
        assert_eq!(c.slow_call_thresholds(), None);
        let slow = BreakerConfig::builder()
            .slow_call_rate_threshold(1.0)
            .build_config()
            .unwrap();
        assert_eq!(
            slow.slow_call_thresholds(),
            Some((1.0, Duration::from_secs(60)))
        );
    }

    #[test]
    fn minimum_calls_is_capped_by_a_count_window_only() {
        let count = BreakerConfig::builder()
            .sliding_window(SlidingWindowType::CountBased, 10)
            .build_config()
            .unwrap();
        assert_eq!(count.effective_minimum_calls(), 10);
        let time = BreakerConfig::builder()
            .sliding_window(SlidingWindowType::TimeBased, 10)
            .build_config()
            .unwrap();
        assert_eq!(time.effective_minimum_calls(), 100);
    }
}
