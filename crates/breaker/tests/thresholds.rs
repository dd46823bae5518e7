//! What heijunka adds to resilience4j's rules: absolute thresholds, a growing and
//! jittered wait, and bad configuration named field by field.
#![cfg(not(loom))]

use std::time::Duration;

use heijunka_breaker::{
    BreakerStats, CallError, CircuitBreaker, SlidingWindowType, State, TransitionReason,
};
use heijunka_core::ManualClock;

fn fail(b: &CircuitBreaker) {
    assert!(matches!(
        b.call(|| Err::<(), _>("x")),
        Err(CallError::Failed(_))
    ));
}

fn ok(b: &CircuitBreaker) {
    b.call(|| Ok::<_, ()>(())).unwrap();
}

fn last_reason(b: &CircuitBreaker) -> std::sync::Arc<std::sync::Mutex<Option<TransitionReason>>> {
    let reason = std::sync::Arc::new(std::sync::Mutex::new(None));
    let seen = reason.clone();
    b.subscribe(move |t| *seen.lock().unwrap() = Some(t.reason));
    reason
}

/// Consecutive failures trip the breaker before the window holds the minimum
/// number of calls, and a success in between starts the count over.
#[test]
fn consecutive_failures_trip_regardless_of_the_rate() {
    let clock = ManualClock::new();
    let b = CircuitBreaker::builder()
        .consecutive_failure_threshold(3)
        .clock(&clock)
        .build()
        .unwrap();
    let reason = last_reason(&b);
    for _ in 0..50 {
        ok(&b);
    }
    fail(&b);
    fail(&b);
    ok(&b);
    fail(&b);
    fail(&b);
    assert_eq!(b.state(), State::Closed);
    assert_eq!(b.stats().consecutive_failures, 2);
    fail(&b);
    assert_eq!(b.state(), State::Open);
    assert_eq!(
        *reason.lock().unwrap(),
        Some(TransitionReason::ConsecutiveFailures { count: 3 })
    );
}

/// "5 failures a minute", however many calls succeed meanwhile (resilience4j
/// issue 785).
#[test]
fn failures_per_time_window_trip_whatever_the_successes() {
    let clock = ManualClock::new();
    let b = CircuitBreaker::builder()
        .failure_count_threshold(5, Duration::from_secs(60))
        .clock(&clock)
        .build()
        .unwrap();
    let reason = last_reason(&b);
    // 4 failures among 1000 successes, then a fifth more than a minute after the
    // first: the window holds only 4.
    for i in 0..1000 {
        if i % 250 == 0 {
            fail(&b);
        }
        ok(&b);
        clock.advance(Duration::from_millis(20));
    }
    clock.advance(Duration::from_secs(41));
    fail(&b);
    assert_eq!(
        b.state(),
        State::Closed,
        "the first failure is over a minute old"
    );
    for _ in 0..1000 {
        ok(&b);
    }
    // Failures 2..=6 fall within a minute.
    fail(&b);
    assert_eq!(b.state(), State::Open);
    assert_eq!(
        *reason.lock().unwrap(),
        Some(TransitionReason::FailureCount {
            count: 5,
            window: Duration::from_secs(60)
        })
    );
}

/// The absolute thresholds also judge the probes: a half-open breaker re-opens at
/// once instead of waiting for every probe.
#[test]
fn absolute_thresholds_judge_probes_too() {
    let clock = ManualClock::new();
    let b = CircuitBreaker::builder()
        .consecutive_failure_threshold(2)
        .permitted_number_of_calls_in_half_open_state(10)
        .clock(&clock)
        .build()
        .unwrap();
    fail(&b);
    fail(&b);
    clock.advance(Duration::from_secs(60));
    fail(&b);
    assert_eq!(
        b.state(),
        State::HalfOpen,
        "the count restarts in half-open"
    );
    fail(&b);
    assert_eq!(b.state(), State::Open, "2 of 10 probes, both failed");
}

fn trip_and_probe(b: &CircuitBreaker, clock: &ManualClock) -> Duration {
    // Half-open (or closed): one failing call trips it.
    fail(b);
    let wait = b.stats().retry_after.expect("open");
    clock.advance(wait);
    wait
}

/// The wait grows with each trip that follows a failed probe, up to the cap, and
/// starts over once the breaker has closed.
#[test]
fn the_wait_grows_on_repeated_trips_and_resets_on_close() {
    let clock = ManualClock::new();
    let b = CircuitBreaker::builder()
        .sliding_window(SlidingWindowType::CountBased, 1)
        .permitted_number_of_calls_in_half_open_state(1)
        .wait_duration_in_open_state(Duration::from_secs(10))
        .exponential_backoff(2.0, Duration::from_secs(60))
        .clock(&clock)
        .build()
        .unwrap();
    let waits: Vec<u64> = (0..6)
        .map(|_| trip_and_probe(&b, &clock).as_secs())
        .collect();
    assert_eq!(waits, [10, 20, 40, 60, 60, 60]);
    assert_eq!(b.stats().consecutive_trips, 6);
    ok(&b); // the probe passes: closed
    assert_eq!(b.state(), State::Closed);
    assert_eq!(trip_and_probe(&b, &clock), Duration::from_secs(10));
}

/// Jitter spreads the waits of breakers that trip together over the band, so a
/// fleet does not probe in lockstep.
#[test]
fn jitter_spreads_the_wait_within_its_band() {
    let clock = ManualClock::new();
    let waits: Vec<Duration> = (0..32)
        .map(|_| {
            let b = CircuitBreaker::builder()
                .sliding_window(SlidingWindowType::CountBased, 1)
                .wait_duration_in_open_state(Duration::from_secs(10))
                .wait_duration_jitter(0.5)
                .clock(&clock)
                .build()
                .unwrap();
            fail(&b);
            b.stats().retry_after.unwrap()
        })
        .collect();
    for w in &waits {
        assert!(
            (Duration::from_secs(5)..Duration::from_secs(15)).contains(w),
            "{w:?}"
        );
    }
    let distinct: std::collections::HashSet<_> = waits.iter().collect();
    assert!(distinct.len() > 16, "waits barely differ: {waits:?}");
}

/// Every bad value is a `ConfigError` naming the field and the value, never a panic.
#[test]
fn bad_configuration_names_field_and_value() {
    let d = Duration::from_secs(1);
    let cases: Vec<(heijunka_breaker::BreakerBuilder, &str)> = vec![
        (
            CircuitBreaker::builder().failure_rate_threshold(0.0),
            "failure_rate_threshold must be in (0, 1], got 0.0",
        ),
        (
            CircuitBreaker::builder().failure_rate_threshold(1.01),
            "failure_rate_threshold must be in (0, 1], got 1.01",
        ),
        (
            CircuitBreaker::builder().failure_rate_threshold(f64::NAN),
            "failure_rate_threshold must be in (0, 1], got NaN",
        ),
        (
            CircuitBreaker::builder().slow_call_rate_threshold(-0.5),
            "slow_call_rate_threshold must be in (0, 1], got -0.5",
        ),
        (
            CircuitBreaker::builder().slow_call_duration_threshold(Duration::ZERO),
            "slow_call_duration_threshold must be longer than zero, got 0ns",
        ),
        (
            CircuitBreaker::builder().sliding_window(SlidingWindowType::CountBased, 0),
            "sliding_window_size must be at least 1, got 0",
        ),
        (
            CircuitBreaker::builder().sliding_window(SlidingWindowType::TimeBased, 0),
            "sliding_window_size must be at least 1, got 0",
        ),
        (
            CircuitBreaker::builder().sliding_window(SlidingWindowType::CountBased, 2_000_000),
            "sliding_window_size must be at most 1000000, got 2000000",
        ),
        (
            CircuitBreaker::builder().minimum_number_of_calls(0),
            "minimum_number_of_calls must be at least 1, got 0",
        ),
        (
            CircuitBreaker::builder().permitted_number_of_calls_in_half_open_state(0),
            "permitted_number_of_calls_in_half_open_state must be at least 1, got 0",
        ),
        (
            CircuitBreaker::builder().wait_duration_in_open_state(Duration::ZERO),
            "wait_duration_in_open_state must be longer than zero, got 0ns",
        ),
        (
            CircuitBreaker::builder().exponential_backoff(0.5, d * 100),
            "wait_duration_multiplier must be a finite number of at least 1, got 0.5",
        ),
        (
            CircuitBreaker::builder().exponential_backoff(2.0, d),
            "max_wait_duration_in_open_state must be at least wait_duration_in_open_state (60s), got 1s",
        ),
        (
            CircuitBreaker::builder().wait_duration_jitter(1.5),
            "wait_duration_jitter must be in (0, 1], got 1.5",
        ),
        (
            CircuitBreaker::builder().consecutive_failure_threshold(0),
            "consecutive_failure_threshold must be at least 1, got 0",
        ),
        (
            CircuitBreaker::builder().failure_count_threshold(0, d),
            "failure_count_threshold must be at least 1, got 0",
        ),
        (
            CircuitBreaker::builder().failure_count_threshold(3, Duration::ZERO),
            "failure_count_window must be longer than zero, got 0ns",
        ),
        (
            CircuitBreaker::builder().max_wait_duration_in_half_open_state(Duration::ZERO),
            "max_wait_duration_in_half_open_state must be longer than zero, got 0ns",
        ),
        (
            CircuitBreaker::builder().name(""),
            "name must not be empty, got \"\"",
        ),
    ];
    for (builder, message) in cases {
        let err = builder.build().unwrap_err();
        assert_eq!(err.to_string(), message);
        assert!(message.starts_with(err.field()));
    }
}

#[test]
fn stats_serialize_as_plain_fields() {
    let clock = ManualClock::new();
    let b = CircuitBreaker::builder()
        .name("search")
        .sliding_window(SlidingWindowType::CountBased, 4)
        .clock(&clock)
        .build()
        .unwrap();
    ok(&b);
    fail(&b);
    ok(&b);
    fail(&b);
    let stats: BreakerStats = b.stats();
    let json = serde_json::to_value(&stats).unwrap();
    assert_eq!(json["name"], "search");
    assert_eq!(json["state"], "open");
    assert_eq!(json["calls"], 4);
    assert_eq!(json["failed_calls"], 2);
    assert_eq!(json["failure_rate"], 0.5);
    assert_eq!(json["slow_call_rate"], serde_json::Value::Null);
    assert_eq!(json["retry_after"]["secs"], 60);
}
