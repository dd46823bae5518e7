//! The state machine against resilience4j's documented behaviour.
//!
//! Each test quotes the sentence of resilience4j's CircuitBreaker documentation
//! (resilience4j.readme.io, "CircuitBreaker" and its configuration table) that it
//! checks. Time is a `ManualClock` throughout.
#![cfg(not(loom))]

use std::time::Duration;

use heijunka_breaker::{
    BreakerBuilder, CallError, CircuitBreaker, SlidingWindowType, State, TransitionReason, Verdict,
};
use heijunka_core::ManualClock;

fn ok(b: &CircuitBreaker) -> Result<(), CallError<&'static str>> {
    b.call(|| Ok(()))
}

fn fail(b: &CircuitBreaker) -> Result<(), CallError<&'static str>> {
    b.call(|| Err("boom"))
}

fn count_window(clock: &ManualClock, size: u32, minimum: u32) -> BreakerBuilder {
    CircuitBreaker::builder()
        .sliding_window(SlidingWindowType::CountBased, size)
        .minimum_number_of_calls(minimum)
        .clock(clock)
}

/// "If the failure rate is equal or greater than the threshold the CircuitBreaker
/// transitions to open and starts short-circuiting calls."
#[test]
fn failure_rate_equal_to_the_threshold_opens() {
    let clock = ManualClock::new();
    let b = count_window(&clock, 10, 10)
        .failure_rate_threshold(0.5)
        .build()
        .unwrap();
    for _ in 0..5 {
        ok(&b).unwrap();
    }
    for _ in 0..4 {
        assert!(fail(&b).is_err());
        assert_eq!(b.state(), State::Closed);
    }
    assert!(matches!(fail(&b), Err(CallError::Failed("boom"))));
    assert_eq!(b.state(), State::Open, "5 of 10 = 50 %");
    assert!(matches!(ok(&b), Err(CallError::Rejected(_))));
}

#[test]
fn failure_rate_below_the_threshold_stays_closed() {
    let clock = ManualClock::new();
    let b = count_window(&clock, 10, 10)
        .failure_rate_threshold(0.5)
        .build()
        .unwrap();
    for i in 0..100 {
        // 4 failures in every 10 consecutive calls: 40 %.
        let _ = if i % 10 < 4 { fail(&b) } else { ok(&b) };
        assert_eq!(b.state(), State::Closed, "call {i}");
    }
    let s = b.stats();
    assert_eq!((s.calls, s.failed_calls), (10, 4));
    assert_eq!(s.failure_rate, Some(0.4));
}

/// "For example, if minimumNumberOfCalls is 10, then at least 10 calls must be
/// recorded, before the failure rate can be calculated. If only 9 calls have been
/// recorded the CircuitBreaker will not transition to open even if all 9 calls have
/// failed."
#[test]
fn minimum_number_of_calls_before_the_rate_is_judged() {
    let clock = ManualClock::new();
    let b = count_window(&clock, 100, 10).build().unwrap();
    for _ in 0..9 {
        let _ = fail(&b);
    }
    assert_eq!(b.state(), State::Closed);
    assert_eq!(b.stats().failure_rate, None, "not judged yet");
    let _ = fail(&b);
    assert_eq!(b.state(), State::Open);
}

/// With the defaults (window 100, minimum 100, 50 %), a success can be the call that
/// makes the window judged: 60 failures then 40 successes open on the 100th call.
#[test]
fn the_call_that_reaches_the_minimum_may_be_a_success() {
    let clock = ManualClock::new();
    let b = CircuitBreaker::builder().clock(&clock).build().unwrap();
    for _ in 0..60 {
        let _ = fail(&b);
    }
    for i in 0..39 {
        ok(&b).unwrap();
        assert_eq!(b.state(), State::Closed, "success {i}");
    }
    ok(&b).unwrap();
    assert_eq!(b.state(), State::Open, "60 of 100 failed");
}

/// "The count-based sliding window aggregates the outcome of the last N calls."
#[test]
fn count_window_slides_over_the_last_n_calls() {
    let clock = ManualClock::new();
    let b = count_window(&clock, 5, 5)
        .failure_rate_threshold(0.6)
        .build()
        .unwrap();
    // F F S S S: 40 %.
    let _ = fail(&b);
    let _ = fail(&b);
    for _ in 0..3 {
        ok(&b).unwrap();
    }
    assert_eq!(b.stats().failure_rate, Some(0.4));
    // One more success pushes the first F out: F S S S S, 20 %.
    ok(&b).unwrap();
    assert_eq!(b.stats().failure_rate, Some(0.2));
    // F F: S S S F F, 40 %; then F: S S F F F, 60 %.
    let _ = fail(&b);
    let _ = fail(&b);
    assert_eq!(b.state(), State::Closed);
    let _ = fail(&b);
    assert_eq!(b.state(), State::Open);
}

/// "The time-based sliding window aggregates the outcome of the calls of the last
/// N seconds."
#[test]
fn time_window_forgets_calls_older_than_n_seconds() {
    let clock = ManualClock::new();
    let b = CircuitBreaker::builder()
        .sliding_window(SlidingWindowType::TimeBased, 10)
        .minimum_number_of_calls(5)
        .clock(&clock)
        .build()
        .unwrap();
    for _ in 0..4 {
        let _ = fail(&b);
    }
    assert_eq!(b.stats().calls, 4);
    clock.advance(Duration::from_secs(9));
    assert_eq!(b.stats().calls, 4, "second 0 is still within the last 10");
    clock.advance(Duration::from_secs(1));
    assert_eq!(b.stats().calls, 0, "second 0 left the window");
    // Fresh failures must reach the minimum on their own.
    for _ in 0..4 {
        let _ = fail(&b);
    }
    assert_eq!(b.state(), State::Closed);
    let _ = fail(&b);
    assert_eq!(b.state(), State::Open);
}

/// A time-based window's minimum is not capped by its size in seconds.
#[test]
fn time_window_minimum_is_a_number_of_calls() {
    let clock = ManualClock::new();
    let b = CircuitBreaker::builder()
        .sliding_window(SlidingWindowType::TimeBased, 2)
        .minimum_number_of_calls(20)
        .clock(&clock)
        .build()
        .unwrap();
    for _ in 0..19 {
        let _ = fail(&b);
    }
    assert_eq!(b.state(), State::Closed);
    let _ = fail(&b);
    assert_eq!(b.state(), State::Open);
}

/// Successes counted in the per-thread shards land in the bucket of their own second.
#[test]
fn time_window_successes_expire_with_their_second() {
    let clock = ManualClock::new();
    let b = CircuitBreaker::builder()
        .sliding_window(SlidingWindowType::TimeBased, 3)
        .minimum_number_of_calls(4)
        .clock(&clock)
        .build()
        .unwrap();
    for _ in 0..6 {
        ok(&b).unwrap();
    }
    clock.advance(Duration::from_secs(2));
    let _ = fail(&b);
    let _ = fail(&b);
    let _ = fail(&b);
    assert_eq!(b.state(), State::Closed, "3 of 9 failed");
    clock.advance(Duration::from_secs(1)); // the 6 successes leave
    let _ = fail(&b);
    assert_eq!(b.state(), State::Open, "4 of 4 failed");
}

/// "slowCallRateThreshold: ... When the percentage of slow calls is equal or greater
/// the threshold, the CircuitBreaker transitions to open." "slowCallDurationThreshold:
/// ... the duration threshold above which calls are considered as slow."
#[test]
fn slow_call_rate_opens() {
    let clock = ManualClock::new();
    let b = count_window(&clock, 4, 4)
        .slow_call_rate_threshold(0.5)
        .slow_call_duration_threshold(Duration::from_secs(2))
        .build()
        .unwrap();
    // Slow means longer than the threshold (see the next section): 2 s + 1 ms.
    let slow = |b: &CircuitBreaker| {
        b.call(|| {
            clock.advance(Duration::from_millis(2001));
            Ok::<_, &str>(())
        })
    };
    ok(&b).unwrap();
    ok(&b).unwrap();
    slow(&b).unwrap();
    assert_eq!(b.state(), State::Closed);
    b.call(|| {
        clock.advance(Duration::from_millis(1999));
        Ok::<_, &str>(())
    })
    .unwrap();
    assert_eq!(b.state(), State::Closed, "1.999 s is not slow");
    let reason = std::sync::Arc::new(std::sync::Mutex::new(None));
    let seen = reason.clone();
    b.subscribe(move |t| *seen.lock().unwrap() = Some(t.reason));
    slow(&b).unwrap();
    assert_eq!(b.state(), State::Open);
    assert_eq!(
        *reason.lock().unwrap(),
        Some(TransitionReason::SlowCallRate {
            rate: 0.5,
            threshold: 0.5
        })
    );
}

/// "waitDurationInOpenState: The time that the CircuitBreaker should wait before
/// transitioning from open to half-open." Calls are rejected meanwhile with the time
/// that is left.
#[test]
fn open_waits_before_half_open() {
    let clock = ManualClock::new();
    let b = count_window(&clock, 2, 2)
        .wait_duration_in_open_state(Duration::from_secs(60))
        .build()
        .unwrap();
    let _ = fail(&b);
    let _ = fail(&b);
    clock.advance(Duration::from_secs(45));
    match ok(&b) {
        Err(CallError::Rejected(r)) => {
            assert_eq!(r.retry_after(), Some(Duration::from_secs(15)));
            assert_eq!(r.state(), State::Open);
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(b.stats().rejected_calls, 1);
    assert_eq!(b.stats().retry_after, Some(Duration::from_secs(15)));
    clock.advance(Duration::from_secs(15));
    // "automaticTransitionFromOpenToHalfOpenEnabled: ... If set to false the
    // transition to HALF_OPEN only happens if a call is made."
    assert_eq!(b.state(), State::Open);
    ok(&b).unwrap();
    assert_eq!(b.state(), State::HalfOpen);
}

/// "If set to true the CircuitBreaker will automatically transition from open to
/// half-open state and no call is needed to trigger the transition."
#[test]
#[cfg_attr(miri, ignore)] // the process-wide timer thread outlives the test, which miri reports as a leak
fn automatic_transition_needs_no_call() {
    let clock = ManualClock::new();
    let b = count_window(&clock, 2, 2)
        .automatic_transition_to_half_open(true)
        .build()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    b.subscribe(move |t| {
        let _ = tx.send((t.from, t.to));
    });
    let _ = fail(&b);
    let _ = fail(&b);
    assert_eq!(rx.recv().unwrap(), (State::Closed, State::Open));
    clock.advance(Duration::from_secs(60));
    // Nothing reads the breaker: the timer thread makes the transition.
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(10)).unwrap(),
        (State::Open, State::HalfOpen)
    );
    assert_eq!(b.stats().available_probes, Some(10));
}

/// With automatic transitions, reading the breaker also applies a transition that
/// is due; the reader and the timer thread never both make it.
#[test]
#[cfg_attr(miri, ignore)] // the process-wide timer thread outlives the test, which miri reports as a leak
fn automatic_transition_is_made_once_by_the_timer_or_a_reader() {
    let clock = ManualClock::new();
    let b = count_window(&clock, 1, 1)
        .automatic_transition_to_half_open(true)
        .permitted_number_of_calls_in_half_open_state(1)
        .wait_duration_in_open_state(Duration::from_secs(1))
        .build()
        .unwrap();
    let half_opened = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = half_opened.clone();
    b.subscribe(move |t| {
        if t.to == State::HalfOpen {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    for round in 1..=50 {
        let _ = fail(&b); // closed (or half-open) to open
        assert_eq!(b.state(), State::Open);
        clock.advance(Duration::from_secs(1));
        assert_eq!(b.state(), State::HalfOpen, "round {round}");
        // The timer thread announces after it made the change: wait (bounded) for
        // its listener call.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while half_opened.load(std::sync::atomic::Ordering::SeqCst) < round
            && std::time::Instant::now() < deadline
        {
            std::thread::yield_now();
        }
        assert_eq!(
            half_opened.load(std::sync::atomic::Ordering::SeqCst),
            round,
            "one transition per wait"
        );
    }
}

/// "permittedNumberOfCallsInHalfOpenState: Configures the number of permitted calls
/// when the CircuitBreaker is half open." "If the failure rate or slow call rate is
/// then equal or greater than the configured threshold, the state changes back to
/// open. If the failure rate and slow call rate is below the threshold, the state
/// changes back to closed."
#[test]
fn half_open_admits_exactly_the_permitted_probes() {
    let clock = ManualClock::new();
    // A minimum of 3 calls (capped at the window's 2 in closed state) so that the
    // half-open state judges its probes after all 3 (min(minimum, permitted)).
    let b = count_window(&clock, 2, 3)
        .permitted_number_of_calls_in_half_open_state(3)
        .build()
        .unwrap();
    let _ = fail(&b);
    let _ = fail(&b);
    clock.advance(Duration::from_secs(60));
    let probes: Vec<_> = (0..3).map(|_| b.try_acquire().unwrap()).collect();
    let extra = b.try_acquire().unwrap_err();
    assert_eq!(
        (extra.state(), extra.retry_after()),
        (State::HalfOpen, None)
    );
    assert!(probes.iter().all(|p| p.admitted_in() == State::HalfOpen));
    let mut probes = probes.into_iter();
    probes.next().unwrap().success();
    probes.next().unwrap().failure();
    assert_eq!(b.state(), State::HalfOpen, "2 of 3 probes done");
    probes.next().unwrap().success();
    assert_eq!(b.state(), State::Closed, "1 of 3 failed: 33 % < 50 %");
    assert_eq!(b.stats().calls, 0, "a closed breaker starts a fresh window");
}

#[test]
fn failing_probes_reopen_and_the_wait_starts_over() {
    let clock = ManualClock::new();
    let b = count_window(&clock, 2, 2)
        .permitted_number_of_calls_in_half_open_state(2)
        .build()
        .unwrap();
    let _ = fail(&b);
    let _ = fail(&b);
    clock.advance(Duration::from_secs(60));
    ok(&b).unwrap();
    let _ = fail(&b);
    assert_eq!(b.state(), State::Open, "1 of 2 failed: 50 %");
    assert_eq!(b.stats().retry_after, Some(Duration::from_secs(60)));
}

/// "maxWaitDurationInHalfOpenState: ... the longest amount of time a CircuitBreaker
/// could stay in Half Open state, before it switches to open."
#[test]
fn max_wait_in_half_open_reopens() {
    let clock = ManualClock::new();
    let b = count_window(&clock, 2, 2)
        .permitted_number_of_calls_in_half_open_state(1)
        .max_wait_duration_in_half_open_state(Duration::from_secs(5))
        .build()
        .unwrap();
    let _ = fail(&b);
    let _ = fail(&b);
    clock.advance(Duration::from_secs(60));
    let stuck = b.try_acquire().unwrap();
    clock.advance(Duration::from_secs(4));
    assert_eq!(b.state(), State::HalfOpen);
    clock.advance(Duration::from_secs(1));
    assert_eq!(b.state(), State::Open);
    stuck.success(); // too late: its half-open period is over
    assert_eq!(b.state(), State::Open);
}

/// "DISABLED (always allow access) ... FORCED_OPEN (always deny access) ... The only
/// way to exit from those states are to trigger a state transition or to reset the
/// CircuitBreaker."
#[test]
fn forced_open_and_disabled_until_reset() {
    let clock = ManualClock::new();
    let b = count_window(&clock, 2, 2).build().unwrap();
    b.force_open();
    assert_eq!(b.state(), State::ForcedOpen);
    clock.advance(Duration::from_secs(3600));
    let r = ok(&b).unwrap_err();
    assert_eq!(r.rejected().unwrap().retry_after(), None);
    b.disable();
    for _ in 0..10 {
        let _ = fail(&b);
    }
    assert_eq!(b.state(), State::Disabled);
    assert_eq!(b.stats().calls, 0, "a disabled breaker records nothing");
    b.reset();
    assert_eq!(b.state(), State::Closed);
    let _ = fail(&b);
    let _ = fail(&b);
    assert_eq!(b.state(), State::Open, "recording again after the reset");
}

/// "reset: ... The CircuitBreaker transitions to closed and clears all metrics."
#[test]
fn reset_clears_the_window() {
    let clock = ManualClock::new();
    let b = count_window(&clock, 4, 4).build().unwrap();
    let _ = fail(&b);
    ok(&b).unwrap();
    b.reset();
    let s = b.stats();
    assert_eq!((s.state, s.calls, s.failed_calls), (State::Closed, 0, 0));
}

/// "ignoreExceptions: ... An ignored exception neither counts as failure nor
/// success, even if the exception is part of recordExceptions."
#[test]
fn ignored_errors_count_as_nothing() {
    let clock = ManualClock::new();
    let b = count_window(&clock, 2, 2).build().unwrap();
    for _ in 0..10 {
        let r = b.call_with(|_: &&str| Verdict::Ignore, || Err::<(), _>("bad request"));
        assert!(matches!(r, Err(CallError::Failed("bad request"))));
    }
    assert_eq!(b.stats().calls, 0);
    assert_eq!(b.state(), State::Closed);
}

/// "numberOfNotPermittedCalls": every rejection is counted.
#[test]
fn rejections_are_counted() {
    let clock = ManualClock::new();
    let b = count_window(&clock, 1, 1).build().unwrap();
    let _ = fail(&b);
    for _ in 0..7 {
        assert!(ok(&b).unwrap_err().is_rejected());
    }
    assert_eq!(b.stats().rejected_calls, 7);
}

// ---- From resilience4j's source --------------------------------------------------
//
// The tests below follow resilience4j's Java source (resilience4j-circuitbreaker,
// package `io.github.resilience4j.circuitbreaker.internal`) where the documentation
// leaves a detail open; each names the class and method it follows.

/// `CircuitBreakerMetrics.onSuccess` / `onError`: a call is recorded as slow when
/// `durationUnit.toNanos(duration) > slowCallDurationThresholdInNanos`: strictly
/// longer than the threshold; a call that takes exactly the threshold is not slow.
#[test]
fn a_call_of_exactly_the_slow_call_duration_is_not_slow() {
    let clock = ManualClock::new();
    let b = count_window(&clock, 2, 2)
        .slow_call_rate_threshold(0.5)
        .slow_call_duration_threshold(Duration::from_secs(2))
        .build()
        .unwrap();
    for _ in 0..2 {
        b.call(|| {
            clock.advance(Duration::from_secs(2));
            Ok::<_, &str>(())
        })
        .unwrap();
    }
    assert_eq!(b.stats().slow_calls, 0, "2 s is not longer than 2 s");
    assert_eq!(b.state(), State::Closed);
    b.call(|| {
        clock.advance(Duration::from_secs(2) + Duration::from_nanos(1));
        Ok::<_, &str>(())
    })
    .unwrap();
    assert_eq!(b.state(), State::Open, "1 slow call of 2: 50 %");
}

/// `CircuitBreakerMetrics.forHalfOpen` builds a count-based window of
/// `permittedNumberOfCallsInHalfOpenState` calls, whose constructor caps the minimum
/// at `Math.min(minimumNumberOfCalls, slidingWindowSize)`; `HalfOpenState
/// .checkIfThresholdsExceeded` closes on `BELOW_THRESHOLDS` and opens on an exceeded
/// threshold. So half-open is judged once `min(minimum, permitted)` probes have
/// completed, not only once every permitted probe has.
#[test]
fn half_open_is_judged_after_min_of_minimum_calls_and_permitted_probes() {
    let clock = ManualClock::new();
    let b = count_window(&clock, 2, 2)
        .permitted_number_of_calls_in_half_open_state(4)
        .build()
        .unwrap();
    let _ = fail(&b);
    let _ = fail(&b);
    clock.advance(Duration::from_secs(60));
    let late = b.try_acquire().unwrap();
    ok(&b).unwrap();
    assert_eq!(b.state(), State::HalfOpen, "1 of min(2, 4) probes");
    ok(&b).unwrap();
    assert_eq!(b.state(), State::Closed, "2 probes, 0 % failed");
    late.failure(); // admitted by the half-open period that is over
    assert_eq!(b.stats().failed_calls, 0);

    // The other way: a minimum above the permitted probes is capped at them.
    let b = count_window(&clock, 2, 10)
        .permitted_number_of_calls_in_half_open_state(2)
        .build()
        .unwrap();
    let _ = fail(&b);
    let _ = fail(&b);
    clock.advance(Duration::from_secs(60));
    ok(&b).unwrap();
    let _ = fail(&b);
    assert_eq!(b.state(), State::Open, "min(10, 2) probes, 50 % failed");
}

/// `CircuitBreakerStateMachine.transitionToMetricsOnlyState` and its
/// `MetricsOnlyState`: every call is permitted (`tryAcquirePermission` returns true),
/// outcomes are recorded in a fresh closed-state window (`CircuitBreakerMetrics
/// .forMetricsOnly` is `forClosed`), thresholds are checked but never change the
/// state; `reset` returns to closed.
#[test]
fn metrics_only_records_and_never_trips() {
    let clock = ManualClock::new();
    let b = count_window(&clock, 4, 4).build().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    b.subscribe(move |t| log.lock().unwrap().push((t.from, t.to, t.reason)));
    ok(&b).unwrap();
    b.metrics_only();
    assert_eq!(b.state(), State::MetricsOnly);
    assert_eq!(b.stats().calls, 0, "a fresh window");
    for _ in 0..10 {
        assert!(matches!(fail(&b), Err(CallError::Failed("boom"))));
    }
    let p = b.try_acquire().unwrap();
    assert_eq!(p.admitted_in(), State::MetricsOnly);
    p.success();
    assert_eq!(
        b.state(),
        State::MetricsOnly,
        "100 % failures never trip it"
    );
    let s = b.stats();
    assert_eq!((s.calls, s.failed_calls), (4, 3), "the last 4 outcomes");
    b.metrics_only(); // already there: no event
    b.reset();
    assert_eq!(b.state(), State::Closed);
    assert_eq!(b.stats().calls, 0);
    assert_eq!(
        *seen.lock().unwrap(),
        [
            (
                State::Closed,
                State::MetricsOnly,
                TransitionReason::MetricsOnly
            ),
            (State::MetricsOnly, State::Closed, TransitionReason::Reset),
        ]
    );
}

/// `CircuitBreakerStateMachine.handleThrowable`: an error the ignore predicate
/// matches releases the permission and records nothing; one the record predicate
/// matches is a failure (`state.onError`); any other is a success
/// (`state.onSuccess`). Here set once in the builder and applied by `call` and
/// `call_async`; the caller still receives every error.
#[test]
fn builder_error_classification_records_ignores_or_counts_as_success() {
    #[derive(Debug, PartialEq)]
    enum ApiError {
        Unavailable,
        BadRequest,
        NotFound,
    }
    let clock = ManualClock::new();
    let b = count_window(&clock, 4, 4)
        .permitted_number_of_calls_in_half_open_state(1)
        .classify_errors(|e: &ApiError| match e {
            ApiError::Unavailable => Verdict::Failure,
            ApiError::BadRequest => Verdict::Ignore,
            ApiError::NotFound => Verdict::Success,
        })
        .build()
        .unwrap();
    let call = |e: ApiError| b.call(|| Err::<(), _>(e));
    assert!(matches!(
        call(ApiError::BadRequest),
        Err(CallError::Failed(ApiError::BadRequest))
    ));
    assert!(matches!(
        call(ApiError::NotFound),
        Err(CallError::Failed(ApiError::NotFound))
    ));
    let _ = call(ApiError::Unavailable);
    let s = b.stats();
    assert_eq!(
        (s.calls, s.failed_calls),
        (2, 1),
        "ignored: not in the window"
    );
    // Errors of another type keep the default: a failure.
    let _ = b.call(|| Err::<(), _>("other type"));
    assert_eq!(b.stats().failed_calls, 2);
    // A per-call classifier replaces the builder's for that call.
    let _ = b.call_with(|_| Verdict::Ignore, || Err::<(), _>(ApiError::Unavailable));
    assert_eq!(b.stats().calls, 3);
    // The async form applies it too.
    let r = block_on(b.call_async(async { Err::<(), _>(ApiError::NotFound) }));
    assert!(r.is_err());
    assert_eq!((b.stats().calls, b.stats().failed_calls), (4, 2));
    assert_eq!(b.state(), State::Open, "2 of 4 failed: 50 %");

    // An ignored probe gives its slot back (`releasePermission`).
    clock.advance(Duration::from_secs(60));
    let _ = call(ApiError::BadRequest);
    assert_eq!(b.state(), State::HalfOpen);
    assert_eq!(b.stats().available_probes, Some(1));
    let _ = call(ApiError::NotFound);
    assert_eq!(
        b.state(),
        State::Closed,
        "a success-classified probe closes it"
    );
}

/// `CircuitBreakerStateMachine.onResult`: a result the `recordResult` predicate
/// matches is recorded as a failure (`ResultRecordedAsFailureException`); any other
/// result is a success. The caller still receives the result.
#[test]
fn builder_result_classification_records_results_as_failures() {
    let clock = ManualClock::new();
    let b = count_window(&clock, 2, 2)
        .classify_results(|status: &u16| {
            if *status >= 500 {
                Verdict::Failure
            } else {
                Verdict::Success
            }
        })
        .build()
        .unwrap();
    assert_eq!(b.call(|| Ok::<u16, ()>(200)).unwrap(), 200);
    assert_eq!(b.call(|| Ok::<u16, ()>(503)).unwrap(), 503);
    assert_eq!(b.state(), State::Open, "1 of 2 failed: 50 %");
    // Results of another type keep the default: a success.
    let b = count_window(&clock, 2, 2)
        .classify_results(|_: &u16| Verdict::Failure)
        .build()
        .unwrap();
    b.call(|| Ok::<&str, ()>("fine")).unwrap();
    b.call(|| Ok::<&str, ()>("fine")).unwrap();
    assert_eq!((b.stats().calls, b.stats().failed_calls), (2, 0));
}

/// Polls a future that never waits to completion (no runtime needed).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => panic!("the future waited"),
    }
}
