//! Retry behaviour from the caller's side: what is retried, when, and what a
//! dropped call leaves behind. Times are tokio's paused clock, read inside the
//! attempts.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use heijunka_backpressure::Gcra;
use heijunka_breaker::{CircuitBreaker, Verdict};
use heijunka_core::cancel::Polled;
use heijunka_core::{Criticality, ManualClock, Rejection};
use heijunka_retry::{Backoff, Budget, CallOptions, Retry, RetryError, Retryable, Stop};
use tokio::time::Instant;

mod support;
use support::Guard;

const MS: fn(u64) -> Duration = Duration::from_millis;

#[derive(Clone, Debug, PartialEq)]
enum Error {
    Unavailable,
    Refused,
    BadRequest,
    SlowDown(Duration),
}

fn retry() -> heijunka_retry::RetryBuilder {
    Retry::builder()
        .max_attempts(4)
        .backoff(Backoff::exponential(MS(10), MS(1000)))
        .classify_errors(|e: &Error| match e {
            Error::Unavailable | Error::SlowDown(_) => Retryable::IfIdempotent,
            Error::Refused => Retryable::Always,
            Error::BadRequest => Retryable::Never,
        })
        .retry_after(|e: &Error| match e {
            Error::SlowDown(d) => Some(*d),
            _ => None,
        })
}

/// Runs `retry` against attempts that fail with `errors` in turn (then
/// succeed), returning the outcome and each attempt's start time.
async fn run(
    retry: &Retry,
    opts: CallOptions,
    errors: Vec<Error>,
) -> (Result<u32, RetryError<Error>>, Vec<Duration>) {
    let start = Instant::now();
    let errors = Mutex::new(errors.into_iter());
    let starts = Mutex::new(Vec::new());
    let r = retry
        .call_with(opts, |a| {
            starts.lock().unwrap().push(start.elapsed());
            let next = errors.lock().unwrap().next();
            async move { next.map_or(Ok(a.number), Err) }
        })
        .await;
    (r, starts.into_inner().unwrap())
}

#[tokio::test(start_paused = true)]
async fn backs_off_exponentially_between_attempts() {
    let r = retry().idempotent(true).build().unwrap();
    let (out, starts) = run(&r, CallOptions::new(), vec![Error::Unavailable; 3]).await;
    assert_eq!(out.unwrap(), 4);
    assert_eq!(starts, [MS(0), MS(10), MS(30), MS(70)]);
    let s = r.stats();
    assert_eq!((s.calls, s.retries, s.succeeded_after_retry), (1, 3, 1));
}

#[tokio::test(start_paused = true)]
async fn gives_up_after_max_attempts_with_the_last_error() {
    let r = retry().idempotent(true).build().unwrap();
    let (out, starts) = run(&r, CallOptions::new(), vec![Error::Unavailable; 9]).await;
    let err = out.unwrap_err();
    assert_eq!(starts.len(), 4);
    assert_eq!(err.stop(), Some(Stop::AttemptsExhausted));
    assert_eq!(err.attempts(), 4);
    assert_eq!(err.into_error(), Some(Error::Unavailable));
    assert_eq!(r.stats().attempts_exhausted, 1);
}

#[tokio::test(start_paused = true)]
async fn idempotency_is_opt_in() {
    let r = retry().build().unwrap();
    // A 503-like error may have had its effect: not retried by default...
    let (out, starts) = run(&r, CallOptions::new(), vec![Error::Unavailable]).await;
    assert_eq!(starts.len(), 1);
    assert_eq!(out.unwrap_err().stop(), Some(Stop::NotIdempotent));
    // ...a refused connection never reached the dependency: always retried...
    let (out, starts) = run(&r, CallOptions::new(), vec![Error::Refused]).await;
    assert_eq!((out.unwrap(), starts.len()), (2, 2));
    // ...and a call can declare itself idempotent.
    let opts = CallOptions::new().idempotent(true);
    let (out, _) = run(&r, opts, vec![Error::Unavailable]).await;
    assert_eq!(out.unwrap(), 2);
    // A bad request is never retried.
    let (out, starts) = run(&r, opts, vec![Error::BadRequest]).await;
    assert_eq!(
        (out.unwrap_err().stop(), starts.len()),
        (Some(Stop::NotRetryable), 1)
    );
}

#[tokio::test(start_paused = true)]
async fn honours_the_wait_the_dependency_asked_for() {
    let r = retry().idempotent(true).build().unwrap();
    let (out, starts) = run(&r, CallOptions::new(), vec![Error::SlowDown(MS(500))]).await;
    assert_eq!(out.unwrap(), 2);
    assert_eq!(
        starts,
        [MS(0), MS(500)],
        "500 ms asked for beats a 10 ms backoff"
    );
}

#[tokio::test(start_paused = true)]
async fn no_retry_starts_that_could_not_finish_before_the_deadline() {
    let r = retry()
        .idempotent(true)
        .expected_attempt_time(MS(25))
        .build()
        .unwrap();
    let deadline = Instant::now() + MS(60);
    let opts = CallOptions::new().deadline(deadline);
    let (out, starts) = run(&r, opts, vec![Error::Unavailable; 9]).await;
    // Retry 1 at 10 ms (+25 = 35 <= 60), retry 2 would start at 30 ms
    // (+25 = 55 <= 60), retry 3 at 70 ms: past the deadline, not started.
    assert_eq!(starts, [MS(0), MS(10), MS(30)]);
    for s in &starts {
        assert!(*s + MS(25) <= MS(60));
    }
    assert_eq!(out.unwrap_err().stop(), Some(Stop::DeadlineWouldPass));
    // A Retry-After beyond the deadline ends the call at once.
    let (out, starts) = run(
        &r,
        CallOptions::new().deadline(Instant::now() + MS(100)),
        vec![Error::SlowDown(Duration::from_secs(5))],
    )
    .await;
    assert_eq!(starts.len(), 1);
    assert_eq!(out.unwrap_err().stop(), Some(Stop::DeadlineWouldPass));
    // Without an expected time, the failed attempt's own duration is the
    // estimate.
    let r = retry().idempotent(true).build().unwrap();
    let start = Instant::now();
    let deadline = start + MS(100);
    let starts = Mutex::new(Vec::new());
    let _ = r
        .call_with(CallOptions::new().deadline(deadline), |_| {
            starts.lock().unwrap().push(start.elapsed());
            async {
                tokio::time::sleep(MS(40)).await;
                Err::<(), _>(Error::Unavailable)
            }
        })
        .await;
    // 0-40, wait 10, 50-90; a third would start at 110.
    assert_eq!(*starts.lock().unwrap(), [MS(0), MS(50)]);
}

#[tokio::test(start_paused = true)]
async fn the_breaker_classification_is_shared() {
    let breaker = CircuitBreaker::builder()
        .classify_errors(|e: &Error| match e {
            Error::BadRequest => Verdict::Ignore,
            _ => Verdict::Failure,
        })
        .classify_results(|status: &u16| {
            if *status >= 500 {
                Verdict::Failure
            } else {
                Verdict::Success
            }
        })
        .clock(ManualClock::new())
        .build()
        .unwrap();
    let r = Retry::builder()
        .backoff(Backoff::None)
        .breaker(&breaker)
        .idempotent(true)
        .build()
        .unwrap();
    let n = AtomicU32::new(0);
    let err = r
        .call(|_| {
            n.fetch_add(1, Ordering::Relaxed);
            async { Err::<u16, _>(Error::BadRequest) }
        })
        .await
        .unwrap_err();
    assert_eq!(
        (n.swap(0, Ordering::Relaxed), err.stop()),
        (1, Some(Stop::NotRetryable))
    );
    // A 503 `Ok` is what the breaker counts as a failure: retried, and the last
    // one returned when the attempts run out.
    let status = r
        .call(|_| {
            n.fetch_add(1, Ordering::Relaxed);
            async { Ok::<u16, Error>(503) }
        })
        .await
        .unwrap();
    assert_eq!((status, n.load(Ordering::Relaxed)), (503, 3));
}

#[tokio::test(start_paused = true)]
async fn sheddable_work_is_not_retried_once_the_budget_is_half_spent() {
    let clock = ManualClock::new();
    let budget = Budget::builder()
        .ratio(0.2)
        .floor_per_sec(0)
        .clock(&clock)
        .build()
        .unwrap();
    let r = retry()
        .budget(budget.clone())
        .idempotent(true)
        .build()
        .unwrap();
    let mut retried = [0usize; 3];
    for i in 0..300 {
        let c = Criticality::ALL[i % 3];
        let (_, starts) = run(
            &r,
            CallOptions::new().criticality(c),
            vec![Error::Unavailable],
        )
        .await;
        retried[c.index()] += starts.len() - 1;
    }
    // 300 calls allow 60 retries: sheddable gets at most half.
    assert_eq!(retried.iter().sum::<usize>(), 60);
    assert!(retried[Criticality::Sheddable.index()] <= 30, "{retried:?}");
    assert!(retried[Criticality::Critical.index()] >= 15, "{retried:?}");
}

#[tokio::test(start_paused = true)]
async fn a_rate_limited_budget_refuses_before_any_attempt() {
    let clock = ManualClock::new();
    let budget = Budget::builder()
        .rate_limiter(
            Gcra::builder(10.0)
                .burst(1)
                .clock(clock.clock())
                .build()
                .unwrap(),
        )
        .clock(&clock)
        .build()
        .unwrap();
    let r = retry().budget(budget).build().unwrap();
    let n = AtomicU32::new(0);
    let call = || {
        r.call(|_| {
            n.fetch_add(1, Ordering::Relaxed);
            async { Ok::<_, Error>(()) }
        })
    };
    call().await.unwrap();
    let err = call().await.unwrap_err();
    assert_eq!(
        err,
        RetryError::Rejected(Rejection::RateLimited {
            retry_after: MS(100)
        })
    );
    assert_eq!(n.load(Ordering::Relaxed), 1);
    assert_eq!(r.stats().rejected, 1);
}

#[tokio::test(start_paused = true)]
async fn cancelled_calls_leave_nothing_behind() {
    let clock = ManualClock::new();
    // Ten retries per call: the budget never stops them, so every point of
    // the call is reached.
    let budget = Budget::builder()
        .ratio(10.0)
        .floor_per_sec(0)
        .clock(&clock)
        .build()
        .unwrap();
    let r = retry()
        .budget(budget.clone())
        .idempotent(true)
        .build()
        .unwrap();
    let mut most = 0;
    let made = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicUsize::new(0));
    for k in 0..60 {
        made.store(0, Ordering::Relaxed);
        dropped.store(0, Ordering::Relaxed);
        let withdrawn = budget.stats().withdrawn_total;
        let mut p = Polled::new(r.call(|_| {
            made.fetch_add(1, Ordering::Relaxed);
            let g = Guard(dropped.clone());
            async move {
                let _g = g;
                tokio::time::sleep(MS(5)).await;
                Err::<(), _>(Error::Unavailable)
            }
        }));
        let mut done = false;
        for _ in 0..k {
            if p.poll() {
                done = true;
                break;
            }
            tokio::time::advance(MS(5)).await;
        }
        drop(p);
        let made = made.load(Ordering::Relaxed);
        most = most.max(made);
        // Every attempt future made was dropped (finished or cancelled)...
        assert_eq!(dropped.load(Ordering::Relaxed), made, "k = {k}");
        // ...and the budget paid only for retries that started.
        assert_eq!(
            budget.stats().withdrawn_total - withdrawn,
            made.saturating_sub(1) as u64,
            "k = {k}"
        );
        if done {
            break;
        }
    }
    assert_eq!(most, 4, "the cases reach the last attempt");
}

#[tokio::test(start_paused = true)]
async fn an_empty_budget_gives_up_without_waiting_out_the_backoff() {
    let clock = ManualClock::new();
    let budget = Budget::builder()
        .ratio(0.1)
        .floor_per_sec(0)
        .clock(&clock)
        .build()
        .unwrap();
    let r = Retry::builder()
        .backoff(Backoff::constant(Duration::from_secs(5)))
        .budget(budget)
        .idempotent(true)
        .build()
        .unwrap();
    let start = Instant::now();
    let err = r
        .call(|_| async { Err::<(), _>(Error::Unavailable) })
        .await
        .unwrap_err();
    assert_eq!(err.stop(), Some(Stop::BudgetExhausted));
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "refused before the 5 s wait"
    );
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_beyond_the_cap_gives_up_at_once() {
    let r = retry()
        .idempotent(true)
        .max_retry_after(Duration::from_secs(30))
        .build()
        .unwrap();
    let start = Instant::now();
    let (out, starts) = run(&r, CallOptions::new(), vec![Error::SlowDown(Duration::MAX)]).await;
    assert_eq!(starts.len(), 1);
    assert_eq!(out.unwrap_err().stop(), Some(Stop::RetryAfterTooLong));
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(r.stats().retry_after_too_long, 1);
}

#[tokio::test(start_paused = true)]
async fn no_first_attempt_after_the_deadline() {
    let r = retry().idempotent(true).build().unwrap();
    let n = AtomicU32::new(0);
    let past = Instant::now();
    tokio::time::advance(MS(1)).await;
    let err = r
        .call_with(CallOptions::new().deadline(past), |_| {
            n.fetch_add(1, Ordering::Relaxed);
            async { Ok::<_, Error>(()) }
        })
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        RetryError::Rejected(Rejection::TimedOut { .. })
    ));
    // With an expected attempt time, a deadline too close refuses too.
    let r = retry().expected_attempt_time(MS(50)).build().unwrap();
    let soon = Instant::now() + MS(20);
    let err = r
        .call_with(CallOptions::new().deadline(soon), |_| {
            n.fetch_add(1, Ordering::Relaxed);
            async { Ok::<_, Error>(()) }
        })
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        RetryError::Rejected(Rejection::TimedOut { .. })
    ));
    assert_eq!(n.load(Ordering::Relaxed), 0, "no attempt was made");
}

#[tokio::test(start_paused = true)]
async fn a_breaker_inside_is_retried_after_its_own_wait() {
    use heijunka_breaker::{CallError, SlidingWindowType};
    let clock = ManualClock::new();
    let breaker = CircuitBreaker::builder()
        .sliding_window(SlidingWindowType::CountBased, 2)
        .minimum_number_of_calls(2)
        .failure_rate_threshold(0.5)
        .wait_duration_in_open_state(MS(200))
        .clock(&clock)
        .build()
        .unwrap();
    let r = Retry::builder()
        .max_attempts(4)
        .backoff(Backoff::constant(MS(1)))
        .breaker_inside::<Error>(&breaker)
        .classify_errors(|e: &Error| match e {
            Error::BadRequest => Retryable::Never,
            _ => Retryable::IfIdempotent,
        })
        .idempotent(true)
        .build()
        .unwrap();
    let calls = AtomicU32::new(0);
    let start = Instant::now();
    // Keep the breaker's manual clock with tokio's.
    let ticker = {
        let clock = clock.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(MS(1)).await;
                clock.advance(MS(1));
            }
        })
    };
    let ran = AtomicU32::new(0);
    let out = r
        .call(|_| {
            let n = calls.fetch_add(1, Ordering::Relaxed);
            let ran = &ran;
            breaker.call_async(async move {
                ran.fetch_add(1, Ordering::Relaxed);
                if n < 2 {
                    Err(Error::Unavailable)
                } else {
                    Ok(n)
                }
            })
        })
        .await;
    ticker.abort();
    // Two failures open it; the third attempt is refused by the open breaker
    // (its call never runs) and retried after the breaker's 200 ms wait; the
    // fourth is the half-open probe, and succeeds.
    assert_eq!(out.ok(), Some(3));
    assert_eq!(calls.load(Ordering::Relaxed), 4);
    assert_eq!(
        ran.load(Ordering::Relaxed),
        3,
        "the refused attempt never ran"
    );
    assert!(start.elapsed() >= MS(200), "{:?}", start.elapsed());
    // The user's classifier for `Error` still decides a failure inside.
    let err = r
        .call(|_| breaker.call_async(async { Err::<u32, _>(Error::BadRequest) }))
        .await
        .unwrap_err();
    assert_eq!(err.stop(), Some(Stop::NotRetryable));
    assert!(matches!(
        err.into_error(),
        Some(CallError::Failed(Error::BadRequest))
    ));
}
