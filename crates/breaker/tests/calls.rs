//! The calling APIs: closures, futures, permits and their drop rule, panics,
//! classification, and the events a caller can subscribe to.
#![cfg(not(loom))]

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use heijunka_breaker::{
    BreakerBuilder, CallError, CircuitBreaker, PermitDrop, SlidingWindowType, State,
    StateTransition, TransitionReason, Verdict,
};
use heijunka_core::{Instant, ManualClock, Rejection};

fn small(clock: &ManualClock) -> BreakerBuilder {
    CircuitBreaker::builder()
        .sliding_window(SlidingWindowType::CountBased, 4)
        .clock(clock)
}

fn record(b: &CircuitBreaker) -> Arc<Mutex<Vec<StateTransition>>> {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    b.subscribe(move |t| sink.lock().unwrap().push(t.clone()));
    events
}

#[test]
fn a_panic_in_a_guarded_call_is_a_failure_and_keeps_unwinding() {
    let clock = ManualClock::new();
    let b = small(&clock)
        .consecutive_failure_threshold(2)
        .build()
        .unwrap();
    for _ in 0..2 {
        let unwound = catch_unwind(AssertUnwindSafe(|| {
            let _ = b.call(|| -> Result<(), ()> { panic!("bug in the client") });
        }));
        assert!(unwound.is_err(), "the panic reaches the caller");
    }
    assert_eq!(b.stats().failed_calls, 2);
    assert_eq!(b.state(), State::Open);
}

#[test]
fn classification_decides_what_counts() {
    let clock = ManualClock::new();
    let b = small(&clock).build().unwrap();
    let classify = |e: &u16| match *e {
        404 => Verdict::Success,
        400 => Verdict::Ignore,
        _ => Verdict::Failure,
    };
    for code in [404, 400, 400, 503, 404] {
        let r = b.call_with(classify, || Err::<(), u16>(code));
        assert_eq!(
            r.unwrap_err().into_inner(),
            Some(code),
            "the caller sees its error"
        );
    }
    let s = b.stats();
    assert_eq!((s.calls, s.successful_calls, s.failed_calls), (3, 2, 1));
}

#[test]
fn permit_drop_releases_by_default_and_can_record_a_failure() {
    let clock = ManualClock::new();
    let released = small(&clock).build().unwrap();
    drop(released.try_acquire().unwrap());
    assert_eq!(released.stats().calls, 0);

    let failing = small(&clock)
        .permit_drop(PermitDrop::RecordFailure)
        .build()
        .unwrap();
    drop(failing.try_acquire().unwrap());
    assert_eq!(failing.stats().failed_calls, 1);
}

#[test]
fn a_released_probe_slot_goes_to_the_next_caller() {
    let clock = ManualClock::new();
    let b = small(&clock)
        .sliding_window(SlidingWindowType::CountBased, 1)
        .permitted_number_of_calls_in_half_open_state(1)
        .build()
        .unwrap();
    let _ = b.call(|| Err::<(), _>(()));
    clock.advance(Duration::from_secs(60));
    let probe = b.try_acquire().unwrap();
    assert!(b.try_acquire().is_err());
    drop(probe);
    let again = b.try_acquire().unwrap();
    assert_eq!(again.admitted_in(), State::HalfOpen);
    again.ignore();
    b.try_acquire().unwrap().success();
    assert_eq!(b.state(), State::Closed);
}

/// An outcome counts in the state that admitted the call; a call that completes
/// after the breaker changed state is not recorded in the new one.
#[test]
fn late_outcomes_do_not_leak_into_the_next_state() {
    let clock = ManualClock::new();
    let b = small(&clock)
        .permitted_number_of_calls_in_half_open_state(2)
        .build()
        .unwrap();
    let slow_closed_call = b.try_acquire().unwrap();
    for _ in 0..4 {
        let _ = b.call(|| Err::<(), _>(()));
    }
    assert_eq!(b.state(), State::Open);
    clock.advance(Duration::from_secs(60));
    let probe = b.try_acquire().unwrap();
    slow_closed_call.failure(); // admitted while closed: not a probe outcome
    assert_eq!(b.stats().calls, 0);
    probe.success();
    assert_eq!(b.stats().calls, 1);
    assert_eq!(b.state(), State::HalfOpen);
}

#[test]
fn an_owned_permit_moves_to_another_thread() {
    let clock = ManualClock::new();
    let b = small(&clock)
        .consecutive_failure_threshold(1)
        .build()
        .unwrap();
    let permit = b.try_acquire_owned().unwrap();
    assert_eq!(permit.breaker().name(), "circuit-breaker");
    std::thread::spawn(move || permit.failure()).join().unwrap();
    assert_eq!(b.state(), State::Open);
}

#[test]
fn rejection_carries_the_shared_reason() {
    let clock = ManualClock::new();
    let b = small(&clock)
        .consecutive_failure_threshold(1)
        .wait_duration_in_open_state(Duration::from_secs(8))
        .build()
        .unwrap();
    let _ = b.call(|| Err::<(), _>(()));
    clock.advance(Duration::from_secs(3));
    let r = b.try_acquire().unwrap_err();
    assert_eq!(
        Rejection::from(r),
        Rejection::CircuitOpen {
            retry_after: Some(Duration::from_secs(5))
        }
    );
}

#[tokio::test(flavor = "current_thread")]
async fn async_calls_record_outcomes_and_cancellation_follows_the_drop_rule() {
    let clock = ManualClock::new();
    let b = small(&clock)
        .consecutive_failure_threshold(2)
        .build()
        .unwrap();
    assert_eq!(b.call_async(async { Ok::<_, ()>(1) }).await.unwrap(), 1);
    assert!(matches!(
        b.call_async(async { Err::<(), _>("e") }).await,
        Err(CallError::Failed("e"))
    ));
    // A future dropped before it completes: by default, nothing is recorded.
    let pending = b.call_async(std::future::pending::<Result<(), ()>>());
    let timed_out = tokio::time::timeout(Duration::from_millis(1), pending).await;
    assert!(timed_out.is_err());
    assert_eq!(b.stats().calls, 2);
    let ignored = b
        .call_async_with(|_: &&str| Verdict::Ignore, async { Err::<(), _>("e") })
        .await;
    assert!(ignored.is_err());
    assert_eq!(b.stats().consecutive_failures, 1);
    let _ = b.call_async(async { Err::<(), _>("e") }).await;
    assert_eq!(b.state(), State::Open);
    assert!(
        b.call_async(async { Ok::<_, ()>(()) })
            .await
            .unwrap_err()
            .is_rejected()
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_panic_while_polling_is_a_failure() {
    let clock = ManualClock::new();
    let b = small(&clock).build().unwrap();
    let task = {
        let b = b.clone();
        tokio::spawn(async move {
            b.call_async(async {
                panic!("poll panicked");
                #[allow(unreachable_code)]
                Ok::<(), ()>(())
            })
            .await
        })
    };
    assert!(task.await.unwrap_err().is_panic());
    assert_eq!(b.stats().failed_calls, 1);
}

#[test]
fn events_say_from_to_why_and_when() {
    let clock = ManualClock::starting_at(Instant::from_nanos(1_000));
    let b = small(&clock).name("ledger").build().unwrap();
    let events = record(&b);
    for _ in 0..4 {
        let _ = b.call(|| Err::<(), _>(()));
    }
    clock.advance(Duration::from_secs(60));
    b.try_acquire().unwrap().success();
    b.force_open();
    b.disable();
    b.reset();
    let events = events.lock().unwrap();
    let summary: Vec<_> = events.iter().map(|e| (e.from, e.to)).collect();
    assert_eq!(
        summary,
        [
            (State::Closed, State::Open),
            (State::Open, State::HalfOpen),
            (State::HalfOpen, State::ForcedOpen),
            (State::ForcedOpen, State::Disabled),
            (State::Disabled, State::Closed),
        ]
    );
    let opened = &events[0];
    assert_eq!(opened.breaker, "ledger");
    assert_eq!(
        opened.reason,
        TransitionReason::FailureRate {
            rate: 1.0,
            threshold: 0.5
        }
    );
    assert_eq!(opened.at, Instant::from_nanos(1_000));
    assert_eq!(opened.wait, Some(Duration::from_secs(60)));
    assert_eq!(events[1].reason, TransitionReason::WaitElapsed);
    assert_eq!(
        events[1].at,
        Instant::from_nanos(1_000) + Duration::from_secs(60)
    );
    assert_eq!(events[1].wait, None);
    assert_eq!(events[4].reason, TransitionReason::Reset);
}

#[test]
fn listeners_may_call_back_and_may_panic() {
    let clock = ManualClock::new();
    let b = small(&clock)
        .consecutive_failure_threshold(1)
        .build()
        .unwrap();
    b.subscribe(|_| panic!("a broken listener"));
    let inner = b.clone();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let id = b.subscribe(move |t| {
        // Calling back into the breaker from a listener does not deadlock.
        sink.lock().unwrap().push((t.to, inner.stats().state));
    });
    let _ = b.call(|| Err::<(), _>(()));
    assert_eq!(*seen.lock().unwrap(), [(State::Open, State::Open)]);
    assert!(b.unsubscribe(id));
    assert!(!b.unsubscribe(id));
    b.reset();
    assert_eq!(seen.lock().unwrap().len(), 1, "unsubscribed");
}

/// A guarded call that panics and trips the breaker announces the change while
/// unwinding; a listener that panics then too is caught, and the first panic goes on.
#[test]
fn a_listener_panicking_during_an_unwind_does_not_abort() {
    let clock = ManualClock::new();
    let b = small(&clock)
        .consecutive_failure_threshold(1)
        .build()
        .unwrap();
    b.subscribe(|_| panic!("a broken listener"));
    let unwound = catch_unwind(AssertUnwindSafe(|| {
        let _ = b.call(|| -> Result<(), ()> { panic!("bug in the client") });
    }));
    let message = unwound.unwrap_err();
    assert_eq!(message.downcast_ref::<&str>(), Some(&"bug in the client"));
    assert_eq!(b.state(), State::Open);
}

#[test]
fn forcing_the_state_it_is_in_changes_nothing() {
    let clock = ManualClock::new();
    let b = small(&clock).build().unwrap();
    let events = record(&b);
    b.force_open();
    b.force_open();
    b.disable();
    b.disable();
    assert_eq!(events.lock().unwrap().len(), 2);
}

// ---- retry-after ---------------------------------------------------------------

/// A forced-open breaker has no known time to reopen: the rejection says so with
/// `None`, not a huge duration that prints as 18446744073709551615.999 s (and would
/// become a `Retry-After` header of that many seconds).
#[test]
fn forced_open_has_no_known_retry_after() {
    let clock = ManualClock::new();
    let b = small(&clock).build().unwrap();
    b.force_open();
    let r = b.try_acquire().unwrap_err();
    assert_eq!(r.state(), State::ForcedOpen);
    assert_eq!(r.reason().retry_after(), None, "{r}");
    assert!(
        !r.reason().to_string().contains("18446744073709551615"),
        "{}",
        r.reason()
    );
}

/// Half-open with every probe in flight: the next probe slot depends on the probes
/// in flight, so without a maximum wait in half-open the time is unknown (`None`);
/// with one, the half-open period ends by its deadline, so the time left until then
/// is when the answer is known. Never zero while nothing can pass.
#[test]
fn half_open_with_every_probe_taken_gives_an_honest_retry_after() {
    let clock = ManualClock::new();
    let open = |b: &CircuitBreaker| {
        for _ in 0..4 {
            let _ = b.call(|| Err::<(), _>(()));
        }
        clock.advance(Duration::from_secs(60));
    };
    let b = small(&clock)
        .permitted_number_of_calls_in_half_open_state(1)
        .build()
        .unwrap();
    open(&b);
    let probe = b.try_acquire().unwrap();
    let r = b.try_acquire().unwrap_err();
    assert_eq!(
        (r.state(), r.reason().retry_after()),
        (State::HalfOpen, None)
    );
    probe.success();

    let b = small(&clock)
        .permitted_number_of_calls_in_half_open_state(1)
        .max_wait_duration_in_half_open_state(Duration::from_secs(5))
        .build()
        .unwrap();
    open(&b);
    let probe = b.try_acquire().unwrap();
    clock.advance(Duration::from_secs(2));
    let r = b.try_acquire().unwrap_err();
    assert_eq!(
        (r.state(), r.reason().retry_after()),
        (State::HalfOpen, Some(Duration::from_secs(3)))
    );
    drop(probe);
}

/// The open state rejects by a coarse clock where it can, but the move to
/// half-open still happens at the first call once the wait is over, to the
/// nanosecond on a manual clock.
#[test]
fn open_rejects_until_exactly_the_end_of_the_wait() {
    let clock = ManualClock::new();
    let b = small(&clock)
        .consecutive_failure_threshold(1)
        .wait_duration_in_open_state(Duration::from_secs(10))
        .build()
        .unwrap();
    let _ = b.call(|| Err::<(), _>(()));
    assert_eq!(b.state(), State::Open);
    clock.advance(Duration::from_secs(10) - Duration::from_nanos(1));
    let r = b.try_acquire().unwrap_err();
    assert_eq!(
        (r.state(), r.retry_after()),
        (State::Open, Some(Duration::from_nanos(1)))
    );
    clock.advance(Duration::from_nanos(1));
    let probe = b.try_acquire().expect("the wait is over: a probe");
    assert_eq!(probe.admitted_in(), State::HalfOpen);
    probe.failure();
    // Open again: the same boundary, from the new trip.
    clock.advance(Duration::from_secs(10) - Duration::from_nanos(1));
    assert!(b.try_acquire().is_err());
    clock.advance(Duration::from_nanos(1));
    assert_eq!(b.try_acquire().unwrap().admitted_in(), State::HalfOpen);
}

/// On the system clock the coarse reading may be a little old: the retry-after it
/// gives errs long, never past the configured wait.
#[test]
fn open_retry_after_on_the_system_clock_is_within_the_wait() {
    let b = CircuitBreaker::builder()
        .consecutive_failure_threshold(1)
        .wait_duration_in_open_state(Duration::from_secs(60))
        .build()
        .unwrap();
    let _ = b.call(|| Err::<(), _>(()));
    for _ in 0..if cfg!(miri) { 10 } else { 1_000 } {
        let after = b.try_acquire().unwrap_err().retry_after().expect("open");
        assert!(after <= Duration::from_secs(60), "{after:?}");
        assert!(after > Duration::from_secs(50), "{after:?}");
    }
}
