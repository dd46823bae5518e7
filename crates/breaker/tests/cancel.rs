//! Cancellation as an input: every future the breaker returns (`call_async`,
//! `call_async_with`) is polled k = 0, 1, 2, ... times and dropped, and what it left
//! behind is checked from outside: a half-open probe slot comes back (a later
//! `try_acquire` gets it), nothing is recorded under the default drop rule (a
//! failure under `PermitDrop::RecordFailure`), and a future never polled takes
//! nothing.
#![cfg(not(loom))]

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use heijunka_breaker::{CircuitBreaker, PermitDrop, SlidingWindowType, State, Verdict};
use heijunka_core::ManualClock;
use heijunka_core::cancel::{Outcome, Polled, cancel_points};

/// The guarded call: pending `polls` times (waking itself), then `result`.
struct Pending {
    polls: u32,
    result: Result<u32, &'static str>,
}

impl Future for Pending {
    type Output = Result<u32, &'static str>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.polls == 0 {
            return Poll::Ready(self.result);
        }
        self.polls -= 1;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

fn guarded(result: Result<u32, &'static str>) -> Pending {
    Pending { polls: 2, result }
}

/// A breaker half-open with one probe slot (opened by two failures, wait over).
fn half_open(clock: &ManualClock, drop_rule: PermitDrop) -> CircuitBreaker {
    let b = CircuitBreaker::builder()
        .sliding_window(SlidingWindowType::CountBased, 2)
        .minimum_number_of_calls(2)
        .wait_duration_in_open_state(Duration::from_secs(1))
        .permitted_number_of_calls_in_half_open_state(1)
        .permit_drop(drop_rule)
        .clock(clock)
        .build()
        .unwrap();
    for _ in 0..2 {
        let _ = b.call(|| Err::<(), _>("down"));
    }
    clock.advance(Duration::from_secs(1));
    // The first call after the wait moves it to half-open; this one gives its
    // probe slot straight back.
    b.try_acquire().expect("the wait is over").ignore();
    assert_eq!(b.state(), State::HalfOpen);
    b
}

/// The probe slot is free: a later caller gets it (and gives it back).
fn probe_slot_is_free(b: &CircuitBreaker) -> bool {
    match b.try_acquire() {
        Ok(p) => {
            let probe = p.admitted_in() == State::HalfOpen;
            p.ignore();
            probe
        }
        Err(_) => false,
    }
}

#[test]
fn call_async_dropped_at_any_point_gives_the_probe_back_and_records_nothing() {
    let covered = cancel_points(10, |k| {
        let clock = ManualClock::new();
        let b = half_open(&clock, PermitDrop::Release);
        let outcome = Polled::new(b.call_async(guarded(Ok(7)))).drop_after(k);
        match &outcome {
            Outcome::Cancelled { .. } => {
                assert_eq!(b.state(), State::HalfOpen, "k={k}: nothing recorded");
                assert_eq!(b.stats().calls, 0, "k={k}: no probe outcome");
                assert!(probe_slot_is_free(&b), "k={k}: the probe slot came back");
            }
            Outcome::Completed { output, .. } => {
                assert_eq!(*output.as_ref().unwrap(), 7);
                assert_eq!(b.state(), State::Closed, "the probe's success closed it");
            }
        }
        outcome
    });
    assert_eq!(
        covered, 3,
        "k = 0 (never polled), 1, 2 cancelled; 3 completes"
    );
}

#[test]
fn call_async_with_dropped_at_any_point_gives_the_probe_back() {
    let covered = cancel_points(10, |k| {
        let clock = ManualClock::new();
        let b = half_open(&clock, PermitDrop::Release);
        let fut = b.call_async_with(|_: &&str| Verdict::Ignore, guarded(Err("bad request")));
        let outcome = Polled::new(fut).drop_after(k);
        // Cancelled or completed with an ignored error: the slot is back either way.
        assert_eq!(b.state(), State::HalfOpen, "k={k}");
        assert_eq!(b.stats().calls, 0, "k={k}");
        assert!(probe_slot_is_free(&b), "k={k}");
        outcome
    });
    assert_eq!(covered, 3);
}

/// Under `PermitDrop::RecordFailure` a future dropped after it took its permit
/// records a failure (the probe fails: open again); one never polled took no permit
/// and records nothing.
#[test]
fn record_failure_rule_counts_a_started_call_only() {
    let covered = cancel_points(10, |k| {
        let clock = ManualClock::new();
        let b = half_open(&clock, PermitDrop::RecordFailure);
        let outcome = Polled::new(b.call_async(guarded(Ok(1)))).drop_after(k);
        match (&outcome, k) {
            (Outcome::Cancelled { .. }, 0) => {
                assert_eq!(b.state(), State::HalfOpen, "never polled: no permit taken");
                assert!(probe_slot_is_free(&b));
            }
            (Outcome::Cancelled { .. }, _) => {
                assert_eq!(b.state(), State::Open, "k={k}: the dropped probe failed");
            }
            (Outcome::Completed { .. }, _) => assert_eq!(b.state(), State::Closed),
        }
        outcome
    });
    assert_eq!(covered, 3);
}

/// The breaker changes state while the call is pending (an operator resets it);
/// the dropped permit belongs to the half-open period that is over, so it neither
/// records anything nor adds a slot to a later half-open period.
#[test]
fn a_permit_dropped_after_a_state_change_touches_nothing() {
    let covered = cancel_points(10, |k| {
        let clock = ManualClock::new();
        let b = half_open(&clock, PermitDrop::RecordFailure);
        let outcome = Polled::new(b.call_async(guarded(Err("down")))).drop_after_with(k, |i| {
            if i == 1 {
                b.reset();
            }
        });
        if k < 2 {
            b.reset(); // dropped before the reset between polls: reset now
        }
        assert_eq!(b.state(), State::Closed, "k={k}");
        assert_eq!(b.stats().calls, 0, "k={k}: nothing reached the new window");
        // Open it again and reach half-open: exactly one probe slot, as configured.
        for _ in 0..2 {
            let _ = b.call(|| Err::<(), _>("down"));
        }
        clock.advance(Duration::from_secs(1));
        let probe = b.try_acquire().expect("one probe");
        assert_eq!(probe.admitted_in(), State::HalfOpen);
        assert!(b.try_acquire().is_err(), "k={k}: no extra slot");
        drop(probe);
        outcome
    });
    assert_eq!(covered, 3);
}

/// Closed state: many calls dropped at every point leave the window balanced: it
/// holds exactly the calls that completed.
#[test]
fn closed_state_counts_only_completed_calls() {
    let clock = ManualClock::new();
    let b = CircuitBreaker::builder()
        .sliding_window(SlidingWindowType::CountBased, 100)
        .clock(&clock)
        .build()
        .unwrap();
    let mut completed = 0;
    for k in 0..4 {
        if Polled::new(b.call_async(guarded(Ok(0))))
            .drop_after(k)
            .is_completed()
        {
            completed += 1;
        }
    }
    assert_eq!(completed, 1);
    assert_eq!(b.stats().calls, completed);
}
