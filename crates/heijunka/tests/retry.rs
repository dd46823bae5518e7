//! The policy's retry and hedge stages: every attempt through every stage,
//! the deadline outside, the breaker inside. Attempts are counted by the
//! called closure itself.
#![cfg(feature = "retry")]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use heijunka::backpressure::ConcurrencyLimit;
use heijunka::breaker::{CircuitBreaker, SlidingWindowType, State};
use heijunka::context::RequestContext;
use heijunka::core::cancel::Polled;
use heijunka::core::{ManualClock, Rejection};
use heijunka::policy::{Policy, PolicyError, Stage};
use heijunka::retry::{Backoff, Budget, FailureInfo, Fallback, Hedge, HedgeDelay, Retry};
use tokio::time::Instant;

const MS: fn(u64) -> Duration = Duration::from_millis;

#[tokio::test(start_paused = true)]
async fn each_attempt_passes_the_breaker_which_stops_the_retries() {
    let clock = ManualClock::new();
    let breaker = CircuitBreaker::builder()
        .sliding_window(SlidingWindowType::CountBased, 2)
        .minimum_number_of_calls(2)
        .wait_duration_in_open_state(Duration::from_secs(30))
        .clock(&clock)
        .build()
        .unwrap();
    let policy = Policy::builder()
        .breaker(breaker.clone())
        .retry(
            Retry::builder()
                .max_attempts(5)
                .backoff(Backoff::constant(MS(10)))
                .idempotent(true)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let calls = AtomicU32::new(0);
    let ctx = RequestContext::builder()
        .timeout(Duration::from_secs(5))
        .build();
    let err = policy
        .call_retrying(&ctx, |_| {
            calls.fetch_add(1, Ordering::Relaxed);
            async { Err::<(), _>("down") }
        })
        .await
        .unwrap_err();
    // Two failures open the breaker; its 30 s wait does not fit the 5 s
    // deadline, so the open breaker's refusal ends the call.
    assert_eq!(
        calls.load(Ordering::Relaxed),
        2,
        "the breaker saw each attempt"
    );
    assert_eq!(breaker.state(), State::Open);
    assert!(matches!(
        err,
        PolicyError::Rejected {
            stage: Stage::Breaker,
            ..
        }
    ));
}

#[tokio::test(start_paused = true)]
async fn the_services_own_shedding_is_not_retried() {
    let limit = ConcurrencyLimit::new(1).unwrap();
    let policy = Policy::builder()
        .concurrency_limit(limit.clone())
        .retry(
            Retry::builder()
                .max_attempts(3)
                .backoff(Backoff::constant(MS(10)))
                .idempotent(true)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    // The limit is full: retrying would hold the request and come back into
    // the same overload, so the refusal is returned at once.
    let _held = limit.try_acquire_owned().unwrap();
    let calls = AtomicU32::new(0);
    let start = Instant::now();
    let err = policy
        .call_retrying(&RequestContext::new(), |_| {
            calls.fetch_add(1, Ordering::Relaxed);
            async { Ok::<_, ()>(7) }
        })
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        PolicyError::Rejected {
            stage: Stage::Concurrency,
            ..
        }
    ));
    assert_eq!(
        (calls.load(Ordering::Relaxed), start.elapsed()),
        (0, Duration::ZERO)
    );
    assert_eq!(limit.in_use(), 1, "only the permit held outside");
}

#[tokio::test(start_paused = true)]
async fn a_rate_limited_attempt_is_retried_after_its_wait() {
    use heijunka::backpressure::Gcra;
    let clock = ManualClock::new();
    let policy = Policy::builder()
        .rate_limiter(Gcra::builder(10.0).clock(clock.clock()).build().unwrap())
        .retry(
            Retry::builder()
                .max_attempts(3)
                .backoff(Backoff::constant(MS(1)))
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let ctx = RequestContext::new();
    policy
        .call_retrying(&ctx, |_| async { Ok::<_, ()>(()) })
        .await
        .unwrap();
    // The next is refused for 100 ms; it never reached the dependency, so it
    // is retried (not idempotent though it is) after the limiter's wait.
    let ticker = {
        let clock = clock.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(MS(1)).await;
                clock.advance(MS(1));
            }
        })
    };
    let start = Instant::now();
    let calls = AtomicU32::new(0);
    policy
        .call_retrying(&ctx, |_| {
            calls.fetch_add(1, Ordering::Relaxed);
            async { Ok::<_, ()>(()) }
        })
        .await
        .unwrap();
    ticker.abort();
    assert_eq!(calls.load(Ordering::Relaxed), 1);
    assert!(start.elapsed() >= MS(100), "{:?}", start.elapsed());
}

#[tokio::test(start_paused = true)]
async fn no_attempt_starts_past_the_request_deadline() {
    let policy = Policy::builder()
        .timeout(MS(100))
        .retry(
            Retry::builder()
                .max_attempts(10)
                .backoff(Backoff::constant(MS(40)))
                .idempotent(true)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let ctx = RequestContext::builder().timeout(MS(150)).build();
    let deadline = ctx.deadline();
    let starts = std::sync::Mutex::new(Vec::new());
    let _ = policy
        .call_retrying(&ctx, |_| {
            starts.lock().unwrap().push(Instant::now());
            async {
                tokio::time::sleep(MS(30)).await;
                Err::<(), _>("slow failure")
            }
        })
        .await;
    let starts = starts.into_inner().unwrap();
    // 0-30, 70-100; a third at 140 would need 30 ms more than the 150 ms.
    assert_eq!(starts.len(), 2, "{starts:?}");
    for s in &starts {
        assert!(*s + MS(30) <= deadline);
    }
}

#[tokio::test(start_paused = true)]
async fn hedges_take_their_own_permits_and_the_first_success_wins() {
    let limit = ConcurrencyLimit::new(4).unwrap();
    let budget = Budget::builder()
        .ratio(1.0)
        .clock(ManualClock::new())
        .build()
        .unwrap();
    let policy = Policy::builder()
        .concurrency_limit(limit.clone())
        .hedge(
            Hedge::builder()
                .delay(HedgeDelay::Fixed(MS(10)))
                .budget(budget)
                .idempotent(true)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let calls = AtomicU32::new(0);
    let peak = Arc::new(AtomicU32::new(0));
    let start = Instant::now();
    let v = policy
        .call_retrying(&RequestContext::new(), |_| {
            let n = calls.fetch_add(1, Ordering::Relaxed);
            let (limit, peak) = (limit.clone(), peak.clone());
            async move {
                peak.fetch_max(limit.in_use(), Ordering::Relaxed);
                tokio::time::sleep(if n == 0 { MS(1000) } else { MS(5) }).await;
                Ok::<_, ()>(n)
            }
        })
        .await
        .unwrap();
    assert_eq!((v, start.elapsed()), (1, MS(15)));
    assert_eq!(
        peak.load(Ordering::Relaxed),
        2,
        "the hedge held a permit of its own"
    );
    assert_eq!(limit.in_use(), 0, "the slow attempt's permit came back");
}

#[tokio::test(start_paused = true)]
async fn a_fallback_reads_the_stage_that_refused() {
    let limit = ConcurrencyLimit::new(1).unwrap();
    let _held = limit.try_acquire().unwrap();
    let policy = Policy::builder()
        .concurrency_limit(limit.clone())
        .build()
        .unwrap();
    let fallback =
        Fallback::from_fn(
            |e: PolicyError<()>| match (FailureInfo::stage(&e), e.rejection()) {
                (Some("concurrency"), Some(Rejection::AtCapacity { .. })) => "busy",
                _ => "other",
            },
        );
    let out = fallback
        .call(policy.call_retrying(&RequestContext::new(), |_| async { Ok("live") }))
        .await;
    assert_eq!(out, Ok("busy"));
}

#[tokio::test(start_paused = true)]
async fn a_dropped_retrying_call_releases_everything() {
    let limit = ConcurrencyLimit::new(2).unwrap();
    let policy = Policy::builder()
        .concurrency_limit(limit.clone())
        .retry(
            Retry::builder()
                .max_attempts(4)
                .backoff(Backoff::constant(MS(5)))
                .idempotent(true)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let ctx = RequestContext::new();
    let calls = AtomicU32::new(0);
    let mut completed = false;
    for k in 0..30 {
        let mut p = Polled::new(policy.call_retrying(&ctx, |_| {
            calls.fetch_add(1, Ordering::Relaxed);
            async {
                tokio::time::sleep(MS(5)).await;
                Err::<(), _>("down")
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
        assert_eq!(limit.in_use(), 0, "k = {k}: a permit leaked");
        if done {
            completed = true;
            break;
        }
    }
    // Every point was covered: the last case ran all four attempts.
    assert!(completed);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_request_stops_waiting_between_attempts() {
    let policy = Policy::builder()
        .retry(
            Retry::builder()
                .max_attempts(3)
                .backoff(Backoff::constant(Duration::from_secs(10)))
                .idempotent(true)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let ctx = RequestContext::builder()
        .timeout(Duration::from_secs(60))
        .build();
    let canceller = {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            ctx.cancel();
        })
    };
    let start = Instant::now();
    let err = policy
        .call_retrying(&ctx, |_| async { Err::<(), _>("down") })
        .await
        .unwrap_err();
    canceller.await.unwrap();
    assert!(matches!(err, PolicyError::Cancelled));
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(1),
        "not the 10 s backoff"
    );
}

#[tokio::test(start_paused = true)]
async fn a_hedge_refused_by_the_limit_leaves_the_first_attempt_running() {
    let limit = ConcurrencyLimit::new(1).unwrap();
    let policy = Policy::builder()
        .concurrency_limit(limit.clone())
        .hedge(
            Hedge::builder()
                .delay(HedgeDelay::Fixed(MS(10)))
                .max_hedges(3)
                .idempotent(true)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let calls = AtomicU32::new(0);
    let start = Instant::now();
    let v = policy
        .call_retrying(&RequestContext::new(), |_| {
            calls.fetch_add(1, Ordering::Relaxed);
            async {
                tokio::time::sleep(MS(50)).await;
                Ok::<_, ()>("first")
            }
        })
        .await
        .unwrap();
    // The hedge at 10 ms found the only permit taken: no further hedge, and
    // the first attempt's answer at 50 ms is the call's.
    assert_eq!((v, start.elapsed()), ("first", MS(50)));
    assert_eq!(calls.load(Ordering::Relaxed), 1);
    assert_eq!(policy.stats().rejected, 1, "one hedge refused, not three");
}

#[tokio::test(start_paused = true)]
async fn the_breaker_judges_each_attempt_with_its_classifiers() {
    let breaker = CircuitBreaker::builder()
        .sliding_window(SlidingWindowType::CountBased, 4)
        .minimum_number_of_calls(4)
        .classify_errors(|e: &&str| {
            if *e == "bad request" {
                heijunka::breaker::Verdict::Ignore
            } else {
                heijunka::breaker::Verdict::Failure
            }
        })
        .clock(ManualClock::new())
        .build()
        .unwrap();
    let policy = Policy::builder()
        .breaker(breaker.clone())
        .retry(
            Retry::builder()
                .backoff(Backoff::None)
                .breaker(&breaker)
                .idempotent(true)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    for _ in 0..10 {
        let err = policy
            .call_retrying(&RequestContext::new(), |_| async {
                Err::<(), _>("bad request")
            })
            .await
            .unwrap_err();
        assert!(matches!(err, PolicyError::Call("bad request")));
    }
    // Ignored by the breaker (and so not retried): nothing recorded, still closed.
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(breaker.stats().failed_calls, 0);
}

#[tokio::test(start_paused = true)]
async fn a_breaker_forced_open_is_not_retried() {
    let breaker = CircuitBreaker::builder()
        .clock(ManualClock::new())
        .build()
        .unwrap();
    breaker.force_open();
    let policy = Policy::builder()
        .breaker(breaker)
        .retry(
            Retry::builder()
                .max_attempts(5)
                .backoff(Backoff::constant(MS(10)))
                .idempotent(true)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let start = Instant::now();
    let err = policy
        .call_retrying(&RequestContext::new(), |_| async { Ok::<_, ()>(()) })
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        PolicyError::Rejected {
            stage: Stage::Breaker,
            ..
        }
    ));
    assert_eq!(start.elapsed(), Duration::ZERO);
}
