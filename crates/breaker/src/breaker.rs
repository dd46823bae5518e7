//! The circuit breaker handle: admission, manual overrides, events and stats.

use std::time::Duration;

use heijunka_core::Instant;

use crate::config::{BreakerBuilder, BreakerConfig};
use crate::events::SubscriptionId;
use crate::machine::{Inner, OpenFor};
use crate::sync::Arc;
use crate::{
    BreakerEvent, BreakerStats, IllegalTransition, State, StateTransition, TransitionReason,
    Verdict,
};

/// A circuit breaker: stops calls to a failing dependency, probes it after a wait,
/// and lets calls through again once it recovers.
///
/// Cheap to clone: clones share one breaker. `Send + Sync`; no runtime needed (the
/// async API only awaits the caller's future).
///
/// A call goes through [`call`](Self::call), [`call_with`](Self::call_with) (with a
/// classifier deciding which errors count), [`call_async`](Self::call_async), or a
/// [`Permit`](crate::Permit) from [`try_acquire`](Self::try_acquire) for code that
/// cannot be wrapped in a closure.
///
/// ```
/// use heijunka_breaker::{CallError, CircuitBreaker, State};
/// use heijunka_core::ManualClock;
/// use std::time::Duration;
///
/// let clock = ManualClock::new();
/// let breaker = CircuitBreaker::builder()
///     .sliding_window(heijunka_breaker::SlidingWindowType::CountBased, 4)
///     .wait_duration_in_open_state(Duration::from_secs(30))
///     .permitted_number_of_calls_in_half_open_state(1)
///     .clock(&clock)
///     .build()?;
///
/// for _ in 0..2 {
///     let _ = breaker.call(|| Ok::<_, &str>("fine"));
///     let _ = breaker.call(|| Err::<(), _>("timeout"));
/// }
/// // 2 failures in 4 calls: 50 %, the default threshold.
/// assert_eq!(breaker.state(), State::Open);
/// match breaker.call(|| Ok::<_, &str>(())) {
///     Err(CallError::Rejected(r)) => assert_eq!(r.retry_after(), Some(Duration::from_secs(30))),
///     other => panic!("{other:?}"),
/// }
///
/// clock.advance(Duration::from_secs(30));
/// assert!(breaker.call(|| Ok::<_, &str>(())).is_ok()); // the probe
/// assert_eq!(breaker.state(), State::Closed);
/// # Ok::<(), heijunka_core::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct CircuitBreaker {
    pub(crate) inner: Arc<Inner>,
}

impl CircuitBreaker {
    /// A builder starting from resilience4j's defaults.
    pub fn builder() -> BreakerBuilder {
        BreakerBuilder::default()
    }

    /// A breaker with `config`.
    pub fn new(config: BreakerConfig) -> Self {
        let inner = Arc::new(Inner::new(config));
        #[cfg(not(loom))]
        inner.timer.bind(Arc::downgrade(&inner));
        inner.start();
        Self { inner }
    }

    /// The breaker's name.
    pub fn name(&self) -> &str {
        &self.inner.config.name
    }

    /// How this breaker counts an error of type `E`: the verdict of the
    /// [`classify_errors`](crate::BreakerBuilder::classify_errors) classifier
    /// registered for exactly `E`, otherwise [`Verdict::Failure`]. Other stages
    /// share the breaker's judgement through this (a retry retries what the
    /// breaker counts as a failure).
    ///
    /// ```
    /// use heijunka_breaker::{CircuitBreaker, Verdict};
    /// use std::io::{Error, ErrorKind};
    ///
    /// let breaker = CircuitBreaker::builder()
    ///     .classify_errors(|e: &Error| match e.kind() {
    ///         ErrorKind::InvalidInput => Verdict::Ignore,
    ///         _ => Verdict::Failure,
    ///     })
    /// #   .clock(heijunka_core::ManualClock::new())
    ///     .build()?;
    /// assert_eq!(breaker.classify_error(&Error::from(ErrorKind::InvalidInput)), Verdict::Ignore);
    /// assert_eq!(breaker.classify_error(&Error::from(ErrorKind::TimedOut)), Verdict::Failure);
    /// assert_eq!(breaker.classify_error(&"no classifier"), Verdict::Failure);
    /// # Ok::<(), heijunka_core::ConfigError>(())
    /// ```
    #[inline]
    pub fn classify_error<E: 'static>(&self, error: &E) -> Verdict {
        self.inner.config.classifiers.error(error)
    }

    /// How this breaker counts a successful result of type `T`: the verdict of
    /// the [`classify_results`](crate::BreakerBuilder::classify_results)
    /// classifier registered for exactly `T`, otherwise [`Verdict::Success`].
    #[inline]
    pub fn classify_result<T: 'static>(&self, value: &T) -> Verdict {
        self.inner.config.classifiers.result(value)
    }

    /// Its configuration, with the settings in force now (those
    /// [`reconfigure`](Self::reconfigure) changed included).
    pub fn config(&self) -> BreakerConfig {
        self.inner.current_config()
    }

    /// Changes the thresholds while the breaker runs, keeping its state, its
    /// window and the calls in flight: the failure-rate and slow-call-rate
    /// thresholds, the minimum number of calls, the wait in open state (with its
    /// growth and jitter) and the number of half-open probes are taken from
    /// `config`; call [`reset`](Self::reset) as well to start afresh.
    ///
    /// When each applies:
    /// - closed: the window is judged by the new thresholds at once (a lower
    ///   threshold the window already reaches opens the breaker now);
    /// - open: the wait in progress ends when it was due; the new wait applies
    ///   from the next trip;
    /// - half-open: the period in progress keeps its number of probes and its
    ///   rules (so it cannot be stranded waiting for probes it never handed out);
    ///   the next period takes the new ones.
    ///
    /// The other settings (name, window type and size, slow-call duration,
    /// consecutive and counted failure thresholds, automatic transition, maximum
    /// wait in half-open and the state it leads to, permit-drop rule) cannot change
    /// on a running breaker. The clock and the classifiers stay those it was built
    /// with, and the initial state matters only when a breaker is built.
    ///
    /// ```
    /// use heijunka_breaker::{CircuitBreaker, SlidingWindowType, State};
    /// use heijunka_core::ManualClock;
    ///
    /// let clock = ManualClock::new();
    /// let builder = || {
    ///     CircuitBreaker::builder()
    ///         .sliding_window(SlidingWindowType::CountBased, 10)
    ///         .minimum_number_of_calls(10)
    ///         .clock(&clock)
    /// };
    /// let breaker = builder().failure_rate_threshold(0.5).build()?;
    /// for i in 0..10 {
    ///     let _ = breaker.call(|| if i < 3 { Err("down") } else { Ok(()) });
    /// }
    /// assert_eq!(breaker.state(), State::Closed, "30 % is below 50 %");
    /// breaker.reconfigure(&builder().failure_rate_threshold(0.25).build_config()?)?;
    /// assert_eq!(breaker.state(), State::Open, "30 % is above 25 %");
    /// assert_eq!(breaker.config().failure_rate_threshold(), 0.25);
    /// # Ok::<(), heijunka_core::ConfigError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// A [`ConfigError`](heijunka_core::ConfigError) naming the first setting that
    /// cannot change at run time and differs; then nothing is changed.
    pub fn reconfigure(&self, config: &BreakerConfig) -> Result<(), heijunka_core::ConfigError> {
        self.inner.reconfigure(config)
    }

    /// The current state. With automatic transitions, or a maximum wait in
    /// half-open, a transition that is due is made first.
    pub fn state(&self) -> State {
        self.inner.state()
    }

    /// A snapshot of the window the current state judges (the closed window, or the
    /// probes in half-open; in open state, the window that tripped), folding in the
    /// successes not yet folded. Takes the breaker's lock: for dashboards, not for
    /// every call.
    ///
    /// It also applies what is due, so it may change the state, **on the calling
    /// thread**: an open breaker whose wait has elapsed moves to half-open
    /// (automatic transition on) and a half-open one past its maximum wait
    /// re-opens. Reading the stats never trips a closed breaker: as in
    /// resilience4j, thresholds are judged when a call is recorded, so a
    /// time-based window whose older calls have expired may show a rate at its
    /// threshold while closed, until the next recorded call judges it. The listeners
    /// ([`subscribe`](Self::subscribe)) of such a change run on this thread before
    /// `stats` returns, after the lock is released; so do events another thread
    /// left queued (see `subscribe`). Do not call `stats` where a listener's work
    /// must not run.
    pub fn stats(&self) -> BreakerStats {
        self.inner.stats()
    }

    /// Calls `listener` on every state change (and only then: never for a
    /// [`reset`](Self::reset) of a closed breaker, nor for a move to the state the
    /// breaker is in), in the order the changes were made
    /// (each [`StateTransition`] carries its `sequence` number, strictly increasing
    /// for each listener), with no lock held (the listener may call back into the
    /// breaker). It runs on a thread that made a change, or that called
    /// [`stats`](Self::stats): a thread delivers the changes queued when it starts
    /// delivering, never those made after; a change made while another thread
    /// delivers is delivered by the next thread that changes this breaker's state or
    /// calls `stats` (including a change a listener itself makes). At most
    /// [`LISTENER_QUEUE_CAPACITY`](crate::LISTENER_QUEUE_CAPACITY) changes wait;
    /// beyond that their events are dropped, counted in
    /// [`BreakerStats::dropped_events`] and logged at `warn` (the state still
    /// changes). A listener that panics is logged and skipped. Every change is also
    /// logged with `tracing` (`warn` when the breaker opens).
    pub fn subscribe<F>(&self, listener: F) -> SubscriptionId
    where
        F: Fn(&StateTransition) + Send + Sync + 'static,
    {
        self.inner
            .listeners
            .add(std::sync::Arc::new(move |e: &BreakerEvent| {
                if let BreakerEvent::Transition(t) = e {
                    listener(t);
                }
            }))
    }

    /// Calls `listener` on every event of this breaker: every state change, as
    /// [`subscribe`](Self::subscribe) does, and every [`reset`](Self::reset)
    /// ([`BreakerEvent::Reset`], after the transition to closed when the breaker
    /// was not closed), in the order they were made, delivered as `subscribe`
    /// delivers (same thread rules, same bounded queue).
    pub fn subscribe_events<F>(&self, listener: F) -> SubscriptionId
    where
        F: Fn(&BreakerEvent) + Send + Sync + 'static,
    {
        self.inner.listeners.add(std::sync::Arc::new(listener))
    }

    /// Removes a listener; false if it was not subscribed.
    pub fn unsubscribe(&self, id: SubscriptionId) -> bool {
        self.inner.listeners.remove(id)
    }

    /// Manual override: rejects every call until [`reset`](Self::reset). Calls
    /// admitted before still complete; their outcomes are not recorded.
    pub fn force_open(&self) {
        self.manual_override(State::ForcedOpen, TransitionReason::ForcedOpen);
    }

    /// Manual override: admits every call and records nothing until
    /// [`reset`](Self::reset).
    pub fn disable(&self) {
        self.manual_override(State::Disabled, TransitionReason::Disabled);
    }

    /// Manual override: admits every call and records its outcome in the sliding
    /// window, but never trips, until [`reset`](Self::reset): the
    /// [`stats`](Self::stats) show what the breaker would judge, without it
    /// rejecting anything (resilience4j's `transitionToMetricsOnlyState`, which starts
    /// from an empty window, as this does).
    pub fn metrics_only(&self) {
        self.manual_override(State::MetricsOnly, TransitionReason::MetricsOnly);
    }

    /// The manual overrides are legal from every state.
    fn manual_override(&self, to: State, reason: TransitionReason) {
        if let Err(e) = self.inner.manual(to, reason, OpenFor::Configured) {
            debug_assert!(false, "an override is legal from every state: {e}");
        }
    }

    /// Back to normal: closed, with an empty window and the growing wait back at its
    /// start, whatever the state was (a manual override, open, half-open, closed).
    ///
    /// As resilience4j's `reset`: when the breaker was not closed, listeners get
    /// the transition to closed (reason [`TransitionReason::Reset`]); then
    /// [`subscribe_events`](Self::subscribe_events) listeners get a
    /// [`BreakerEvent::Reset`]. A closed breaker that is reset announces no
    /// transition (it changes no state), only the reset event. Counted in the
    /// `heijunka_breaker_resets_total` metric.
    pub fn reset(&self) {
        self.inner.reset();
    }

    /// Opens the breaker now, for the configured wait (grown by the trips since it
    /// last closed, and jittered, as after a trip), keeping the window it was in:
    /// resilience4j's `transitionToOpenState`. Probes follow when the wait ends,
    /// as after a trip. Already open: the wait starts again, unannounced (an
    /// internal transition). Announced as a transition with reason
    /// [`TransitionReason::Manual`].
    ///
    /// ```
    /// use heijunka_breaker::{CircuitBreaker, State};
    /// use heijunka_core::ManualClock;
    /// use std::time::Duration;
    ///
    /// let clock = ManualClock::new();
    /// let breaker = CircuitBreaker::builder()
    ///     .wait_duration_in_open_state(Duration::from_secs(10))
    ///     .clock(&clock)
    ///     .build()?;
    /// breaker.transition_to_open().expect("closed may open");
    /// assert!(breaker.try_acquire().is_err());
    /// clock.advance(Duration::from_secs(10));
    /// assert!(breaker.try_acquire().is_ok()); // a probe
    /// assert_eq!(breaker.state(), State::HalfOpen);
    /// # Ok::<(), heijunka_core::ConfigError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`IllegalTransition`] from metrics-only (move it to closed first, as
    /// resilience4j requires); the state is unchanged.
    pub fn transition_to_open(&self) -> Result<(), IllegalTransition> {
        self.inner
            .manual(State::Open, TransitionReason::Manual, OpenFor::Configured)
    }

    /// As [`transition_to_open`](Self::transition_to_open), for `wait` instead of
    /// the configured wait (no growth, no jitter): resilience4j's
    /// `transitionToOpenStateFor`. A zero `wait` admits probes at once.
    ///
    /// ```
    /// use heijunka_breaker::CircuitBreaker;
    /// use heijunka_core::ManualClock;
    /// use std::time::Duration;
    ///
    /// let clock = ManualClock::new();
    /// let breaker = CircuitBreaker::builder().clock(&clock).build()?;
    /// breaker.transition_to_open_for(Duration::from_secs(300)).unwrap(); // maintenance
    /// assert_eq!(breaker.stats().retry_after, Some(Duration::from_secs(300)));
    /// # Ok::<(), heijunka_core::ConfigError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`IllegalTransition`] from metrics-only.
    pub fn transition_to_open_for(&self, wait: Duration) -> Result<(), IllegalTransition> {
        self.inner.manual(
            State::Open,
            TransitionReason::Manual,
            OpenFor::Duration(wait),
        )
    }

    /// As [`transition_to_open`](Self::transition_to_open), until `until` on the
    /// breaker's clock (its [`config().clock()`](BreakerConfig::clock); an instant
    /// already past admits probes at once): resilience4j's
    /// `transitionToOpenStateUntil`.
    ///
    /// ```
    /// use heijunka_breaker::CircuitBreaker;
    /// use heijunka_core::ManualClock;
    /// use std::time::Duration;
    ///
    /// let clock = ManualClock::new();
    /// let breaker = CircuitBreaker::builder().clock(&clock).build()?;
    /// let until = breaker.config().clock().now() + Duration::from_secs(60);
    /// breaker.transition_to_open_until(until).unwrap();
    /// assert_eq!(breaker.stats().retry_after, Some(Duration::from_secs(60)));
    /// # Ok::<(), heijunka_core::ConfigError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`IllegalTransition`] from metrics-only.
    pub fn transition_to_open_until(&self, until: Instant) -> Result<(), IllegalTransition> {
        self.inner
            .manual(State::Open, TransitionReason::Manual, OpenFor::Until(until))
    }

    /// Half-open now: the permitted number of probes, none completed yet (the
    /// window of the state left is not judged): resilience4j's
    /// `transitionToHalfOpenState`. Already half-open: the probes start again,
    /// unannounced (an internal transition; probes in flight record nothing).
    ///
    /// ```
    /// use heijunka_breaker::{CircuitBreaker, State};
    ///
    /// let breaker = CircuitBreaker::builder()
    ///     .permitted_number_of_calls_in_half_open_state(1)
    /// #   .clock(heijunka_core::ManualClock::new())
    ///     .build()?;
    /// breaker.force_open();
    /// breaker.transition_to_half_open().unwrap();
    /// breaker.call(|| Ok::<_, ()>(())).unwrap(); // the one probe passes
    /// assert_eq!(breaker.state(), State::Closed);
    /// # Ok::<(), heijunka_core::ConfigError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`IllegalTransition`] from closed and from metrics-only (resilience4j's
    /// table); the state is unchanged.
    pub fn transition_to_half_open(&self) -> Result<(), IllegalTransition> {
        self.inner.manual(
            State::HalfOpen,
            TransitionReason::Manual,
            OpenFor::Configured,
        )
    }

    /// Closed now, with an empty window and the growing wait back at its start,
    /// from any state: resilience4j's `transitionToClosedState`. Already closed:
    /// the window is emptied, unannounced (an internal transition). Unlike
    /// [`reset`](Self::reset), it publishes no reset event.
    ///
    /// ```
    /// use heijunka_breaker::{CircuitBreaker, State};
    ///
    /// let breaker = CircuitBreaker::builder()
    /// #   .clock(heijunka_core::ManualClock::new())
    ///     .build()?;
    /// breaker.transition_to_open().unwrap();
    /// breaker.transition_to_closed();
    /// assert_eq!(breaker.state(), State::Closed);
    /// # Ok::<(), heijunka_core::ConfigError>(())
    /// ```
    pub fn transition_to_closed(&self) {
        if let Err(e) =
            self.inner
                .manual(State::Closed, TransitionReason::Manual, OpenFor::Configured)
        {
            debug_assert!(false, "closed is legal from every state: {e}");
        }
    }
}

impl std::fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use std::time::Duration;

    use heijunka_core::ManualClock;

    use crate::sync::thread;
    use crate::{CircuitBreaker, PermitDrop, SlidingWindowType, State};

    /// A breaker with a one-call window that `trip` opens; probes after 1 s.
    fn breaker(clock: &ManualClock, probes: u32) -> CircuitBreaker {
        CircuitBreaker::builder()
            .sliding_window(SlidingWindowType::CountBased, 1)
            .minimum_number_of_calls(1)
            .wait_duration_in_open_state(Duration::from_secs(1))
            .permitted_number_of_calls_in_half_open_state(probes)
            .permit_drop(PermitDrop::Release)
            .clock(clock)
            .build()
            .expect("valid")
    }

    /// Three threads ask for a permit the moment the wait in open state ends: one of
    /// them moves the breaker to half-open, and exactly two (the permitted probes)
    /// are admitted.
    #[test]
    fn exactly_n_probes_at_the_transition() {
        loom::model(|| {
            let clock = ManualClock::new();
            let b = breaker(&clock, 2);
            let _ = b.call(|| Err::<(), ()>(()));
            clock.advance(Duration::from_secs(1));
            let racers: Vec<_> = (0..2)
                .map(|_| {
                    let b = b.clone();
                    thread::spawn(move || match b.try_acquire() {
                        Ok(p) => {
                            assert_eq!(p.admitted_in(), State::HalfOpen);
                            std::mem::forget(p); // keep the slot: a probe in flight
                            1
                        }
                        Err(r) => {
                            assert_eq!(r.state(), State::HalfOpen);
                            0
                        }
                    })
                })
                .collect();
            let mine = match b.try_acquire() {
                Ok(p) => {
                    std::mem::forget(p);
                    1
                }
                Err(_) => 0,
            };
            let admitted: u32 = mine + racers.into_iter().map(|r| r.join().unwrap()).sum::<u32>();
            assert_eq!(admitted, 2);
            assert_eq!(b.stats().available_probes, Some(0));
        });
    }

    /// A probe completing (the breaker closes) races another caller and a probe
    /// given back: the caller is admitted as a second probe only through the slot
    /// given back, or as a closed-state call after the breaker closed.
    #[test]
    fn probe_completion_release_and_admission() {
        loom::model(|| {
            let clock = ManualClock::new();
            let b = breaker(&clock, 1);
            let _ = b.call(|| Err::<(), ()>(()));
            clock.advance(Duration::from_secs(1));
            let probe = b
                .try_acquire()
                .expect("the first call after the wait is a probe");
            let caller = {
                let b = b.clone();
                thread::spawn(move || match b.try_acquire() {
                    Ok(p) => {
                        let admitted = p.admitted_in();
                        p.success();
                        Some(admitted)
                    }
                    Err(_) => None,
                })
            };
            probe.success();
            let admitted = caller.join().unwrap();
            assert!(
                matches!(admitted, None | Some(State::Closed)),
                "a second probe while the first was in flight: {admitted:?}"
            );
            assert_eq!(b.state(), State::Closed);
        });
    }

    /// A lower threshold set while a success is being recorded (on a shard,
    /// without the lock, while the old rules let it) is judged against the whole
    /// window: the breaker ends open whichever comes first.
    #[test]
    fn a_reconfigure_racing_a_success_judges_the_whole_window() {
        loom::model(|| {
            let clock = ManualClock::new();
            let rules = |threshold: f64| {
                CircuitBreaker::builder()
                    .sliding_window(SlidingWindowType::CountBased, 2)
                    .minimum_number_of_calls(2)
                    .failure_rate_threshold(threshold)
                    .clock(&clock)
            };
            let b = rules(1.0).build().expect("valid");
            let _ = b.call(|| Err::<(), ()>(()));
            let lower = rules(0.5).build_config().expect("valid");
            let succeeding = {
                let b = b.clone();
                thread::spawn(move || {
                    let _ = b.call(|| Ok::<(), ()>(()));
                })
            };
            b.reconfigure(&lower).expect("only thresholds change");
            succeeding.join().unwrap();
            // One failure in two calls: 50 %, the new threshold.
            assert_eq!(b.state(), State::Open);
        });
    }
}
