//! `CircuitBreaker::reconfigure`: new thresholds on a running breaker, its state
//! and window kept.

use std::time::Duration;

use heijunka_breaker::{BreakerBuilder, CircuitBreaker, SlidingWindowType, State};
use heijunka_core::ManualClock;

fn builder(clock: &ManualClock) -> BreakerBuilder {
    CircuitBreaker::builder()
        .sliding_window(SlidingWindowType::CountBased, 10)
        .minimum_number_of_calls(10)
        .wait_duration_in_open_state(Duration::from_secs(10))
        .permitted_number_of_calls_in_half_open_state(2)
        .clock(clock)
}

fn fail(b: &CircuitBreaker) {
    let _ = b.call(|| Err::<(), _>("down"));
}

fn succeed(b: &CircuitBreaker) {
    let _ = b.call(|| Ok::<_, &str>(()));
}

#[test]
fn an_open_breaker_stays_open_with_its_wait() {
    let clock = ManualClock::new();
    let b = builder(&clock).build().unwrap();
    for _ in 0..10 {
        fail(&b);
    }
    assert_eq!(b.state(), State::Open);
    let longer = builder(&clock)
        .wait_duration_in_open_state(Duration::from_secs(60))
        .failure_rate_threshold(0.9)
        .build_config()
        .unwrap();
    b.reconfigure(&longer).unwrap();
    assert_eq!(b.state(), State::Open, "reconfiguring does not close it");
    assert!(b.try_acquire().is_err());
    // The wait in progress ends when it was due (10 s) ...
    clock.advance(Duration::from_secs(10));
    assert!(b.try_acquire().is_ok(), "a probe after the old wait");
    // ... and the next trip (both half-open probes fail) waits the new 60 s.
    fail(&b);
    fail(&b);
    assert_eq!(b.state(), State::Open);
    clock.advance(Duration::from_secs(59));
    assert!(b.try_acquire().is_err());
    clock.advance(Duration::from_secs(1));
    assert!(b.try_acquire().is_ok());
}

#[test]
fn a_closed_window_is_kept_and_judged_by_the_new_threshold() {
    let clock = ManualClock::new();
    let b = builder(&clock).build().unwrap();
    for i in 0..10 {
        if i < 3 { fail(&b) } else { succeed(&b) }
    }
    assert_eq!(b.state(), State::Closed);
    // A higher threshold: the window (3 of 10) is kept, still closed.
    b.reconfigure(
        &builder(&clock)
            .failure_rate_threshold(0.8)
            .build_config()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(b.stats().failed_calls, 3, "the window is kept");
    assert_eq!(b.state(), State::Closed);
    // A lower one the window already reaches opens it at once.
    b.reconfigure(
        &builder(&clock)
            .failure_rate_threshold(0.3)
            .build_config()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(b.state(), State::Open);
    assert_eq!(b.config().failure_rate_threshold(), 0.3);
}

#[test]
fn a_half_open_period_keeps_its_probes_the_next_takes_the_new_number() {
    let clock = ManualClock::new();
    let b = builder(&clock).build().unwrap();
    for _ in 0..10 {
        fail(&b);
    }
    clock.advance(Duration::from_secs(10));
    let p1 = b.try_acquire().expect("first probe");
    assert_eq!(b.state(), State::HalfOpen);
    b.reconfigure(
        &builder(&clock)
            .permitted_number_of_calls_in_half_open_state(5)
            .build_config()
            .unwrap(),
    )
    .unwrap();
    // This period still has 2 probes; dropping one gives it back, up to 2.
    let p2 = b.try_acquire().expect("second probe");
    assert!(b.try_acquire().is_err(), "only the period's 2 probes");
    drop(p2);
    let p2 = b.try_acquire().expect("the slot given back");
    p1.success();
    p2.success();
    assert_eq!(b.state(), State::Closed, "judged on its 2 probes");
    // The next period hands out 5.
    for _ in 0..10 {
        fail(&b);
    }
    clock.advance(Duration::from_secs(10));
    let probes: Vec<_> = (0..5).map(|_| b.try_acquire().expect("probe")).collect();
    assert!(b.try_acquire().is_err());
    drop(probes);
}

#[test]
fn settings_that_cannot_change_are_refused_and_nothing_changes() {
    let clock = ManualClock::new();
    let b = builder(&clock).build().unwrap();
    let err = b
        .reconfigure(
            &builder(&clock)
                .sliding_window(SlidingWindowType::CountBased, 20)
                .failure_rate_threshold(0.1)
                .build_config()
                .unwrap(),
        )
        .unwrap_err();
    assert_eq!(err.field(), "sliding_window_size");
    assert_eq!(b.config().failure_rate_threshold(), 0.5, "nothing changed");
    let err = b
        .reconfigure(&builder(&clock).name("other").build_config().unwrap())
        .unwrap_err();
    assert_eq!(err.field(), "name");
}
