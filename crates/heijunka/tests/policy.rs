//! The policy pipeline: each stage's refusal surfaces with its reason, the stages
//! run in the documented order (one test per pair that could be confused), and the
//! deadline and cancellation reach the call.
#![cfg(feature = "policy")]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use heijunka::backpressure::{ConcurrencyLimit, Gcra};
use heijunka::breaker::{CircuitBreaker, SlidingWindowType, State};
use heijunka::context::RequestContext;
use heijunka::core::{ManualClock, PressureLevel, Rejection};
use heijunka::memory::{ManualProbe, MemoryGate, MemoryMonitor};
use heijunka::policy::{Policy, PolicyError, Stage};

type Io = std::io::Error;

async fn ok() -> Result<u32, Io> {
    Ok(7)
}

/// A rate limiter with one token left (manual clock: it never refills).
fn one_token(clock: &ManualClock) -> Gcra {
    Gcra::builder(1.0)
        .burst(1)
        .clock(clock.clock())
        .build()
        .unwrap()
}

fn breaker(clock: &ManualClock) -> CircuitBreaker {
    CircuitBreaker::builder()
        .name("dep")
        .sliding_window(SlidingWindowType::CountBased, 4)
        .minimum_number_of_calls(4)
        .failure_rate_threshold(0.5)
        .wait_duration_in_open_state(Duration::from_secs(10))
        .permitted_number_of_calls_in_half_open_state(1)
        .clock(clock)
        .build()
        .unwrap()
}

/// A memory gate whose monitor reads `rss` of a 1000-byte limit.
fn memory_gate(rss: u64) -> MemoryGate {
    let probe = ManualProbe::new(1 << 40);
    let monitor = MemoryMonitor::builder()
        .limit(1000)
        .probe(probe.clone())
        .build()
        .unwrap();
    probe.set_rss(rss);
    monitor.sample_now().unwrap();
    MemoryGate::builder(&monitor).build().unwrap()
}

fn stage<T: std::fmt::Debug>(r: Result<T, PolicyError<Io>>) -> (Stage, Rejection) {
    match r {
        Err(PolicyError::Rejected { stage, reason }) => (stage, reason),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test]
async fn every_stage_refuses_with_its_reason() {
    let clock = ManualClock::new();
    let ctx = RequestContext::new();

    // Deadline: a context already past its deadline.
    let expired = RequestContext::builder().timeout(Duration::ZERO).build();
    let p = Policy::builder().build().unwrap();
    let (s, r) = stage(p.call(&expired, |_| ok()).await);
    assert_eq!(s, Stage::Deadline);
    assert!(matches!(r, Rejection::TimedOut { .. }));

    // Rate limit: the second call finds no token, with a retry-after.
    let p = Policy::builder()
        .rate_limiter(one_token(&clock))
        .build()
        .unwrap();
    assert_eq!(p.call(&ctx, |_| ok()).await.unwrap(), 7);
    let (s, r) = stage(p.call(&ctx, |_| ok()).await);
    assert_eq!(s, Stage::RateLimit);
    assert_eq!(
        r,
        Rejection::RateLimited {
            retry_after: Duration::from_secs(1)
        }
    );

    // Load shed: the memory gate at critical pressure, then a signal.
    let p = Policy::builder()
        .memory_gate(memory_gate(990))
        .build()
        .unwrap();
    let (s, r) = stage(p.call(&ctx, |_| ok()).await);
    assert_eq!(s, Stage::LoadShed);
    assert_eq!(
        r,
        Rejection::MemoryPressure {
            level: PressureLevel::Critical
        }
    );
    let p = Policy::builder()
        .shed_signal("queue", || Err(Rejection::QueueFull { capacity: 8 }))
        .build()
        .unwrap();
    let (s, r) = stage(p.call(&ctx, |_| ok()).await);
    assert_eq!(
        (s, r),
        (Stage::LoadShed, Rejection::QueueFull { capacity: 8 })
    );

    // Concurrency: every permit held elsewhere.
    let limit = ConcurrencyLimit::new(2).unwrap();
    let _held = limit.try_acquire_many(2).unwrap();
    let p = Policy::builder()
        .concurrency_limit(limit.clone())
        .build()
        .unwrap();
    let (s, r) = stage(p.call(&ctx, |_| ok()).await);
    assert_eq!(
        (s, r),
        (Stage::Concurrency, Rejection::AtCapacity { limit: 2 })
    );

    // Breaker: forced open.
    let b = breaker(&clock);
    b.force_open();
    let p = Policy::builder().breaker(b).build().unwrap();
    let (s, r) = stage(p.call(&ctx, |_| ok()).await);
    assert_eq!(s, Stage::Breaker);
    assert!(matches!(r, Rejection::CircuitOpen { .. }));
}

#[tokio::test]
async fn deadline_before_everything() {
    // Every stage would refuse; the expired deadline is reported, and nothing is
    // consumed (the rate limiter's token is still there).
    let clock = ManualClock::new();
    let limiter = Arc::new(one_token(&clock));
    let p = Policy::builder()
        .shared_rate_limiter(limiter.clone())
        .shed_signal("always", || Err(Rejection::QueueFull { capacity: 1 }))
        .build()
        .unwrap();
    let expired = RequestContext::builder().timeout(Duration::ZERO).build();
    assert_eq!(stage(p.call(&expired, |_| ok()).await).0, Stage::Deadline);
    use heijunka::backpressure::RateLimiter;
    assert!(
        limiter.check().is_ok(),
        "the deadline stage took a rate token"
    );
}

#[tokio::test]
async fn rate_limit_before_load_shed_and_concurrency() {
    let clock = ManualClock::new();
    let limiter = Arc::new(one_token(&clock));
    use heijunka::backpressure::RateLimiter;
    limiter.check().unwrap(); // spend the only token
    let shed_checked = Arc::new(AtomicBool::new(false));
    let seen = shed_checked.clone();
    let limit = ConcurrencyLimit::new(1).unwrap();
    let p = Policy::builder()
        .shared_rate_limiter(limiter)
        .shed_signal("probe", move || {
            seen.store(true, Ordering::SeqCst);
            Ok(())
        })
        .concurrency_limit(limit.clone())
        .build()
        .unwrap();
    assert_eq!(
        stage(p.call(&RequestContext::new(), |_| ok()).await).0,
        Stage::RateLimit
    );
    assert!(
        !shed_checked.load(Ordering::SeqCst),
        "load shed ran after a rate refusal"
    );
    assert_eq!(
        limit.available_permits(),
        1,
        "a rate-limited request took a permit"
    );
}

#[tokio::test]
async fn load_shed_before_concurrency() {
    // Shedding refuses without taking a permit (a shed request must not starve
    // admitted ones of permits).
    let limit = ConcurrencyLimit::new(1).unwrap();
    let p = Policy::builder()
        .memory_gate(memory_gate(990))
        .concurrency_limit(limit.clone())
        .build()
        .unwrap();
    let (s, _) = stage(p.call(&RequestContext::new(), |_| ok()).await);
    assert_eq!(s, Stage::LoadShed);
    assert_eq!(limit.available_permits(), 1);
    // And memory first among the load-shed checks, then signals in order.
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (a, b) = (order.clone(), order.clone());
    let p = Policy::builder()
        .shed_signal("first", move || {
            a.lock().unwrap().push("first");
            Ok(())
        })
        .shed_signal("second", move || {
            b.lock().unwrap().push("second");
            Err(Rejection::QueueFull { capacity: 2 })
        })
        .build()
        .unwrap();
    let _ = p.call(&RequestContext::new(), |_| ok()).await;
    assert_eq!(*order.lock().unwrap(), ["first", "second"]);
}

#[tokio::test]
async fn concurrency_before_breaker() {
    // A half-open breaker has one probe slot; a request refused for concurrency
    // must not use it up.
    let clock = ManualClock::new();
    let b = breaker(&clock);
    for _ in 0..4 {
        let _ = b.call(|| Err::<(), _>("boom"));
    }
    assert_eq!(b.state(), State::Open);
    clock.advance(Duration::from_secs(10));
    let limit = ConcurrencyLimit::new(1).unwrap();
    let p = Policy::builder()
        .concurrency_limit(limit.clone())
        .breaker(b.clone())
        .build()
        .unwrap();
    {
        let _held = limit.try_acquire().unwrap();
        assert_eq!(
            stage(p.call(&RequestContext::new(), |_| ok()).await).0,
            Stage::Concurrency
        );
    }
    // The probe is still available: this call is admitted as the half-open probe
    // and closes the breaker.
    assert_eq!(p.call(&RequestContext::new(), |_| ok()).await.unwrap(), 7);
    assert_eq!(b.state(), State::Closed);
}

#[tokio::test]
async fn breaker_refusal_releases_the_permit() {
    let clock = ManualClock::new();
    let b = breaker(&clock);
    b.force_open();
    let limit = ConcurrencyLimit::new(1).unwrap();
    let p = Policy::builder()
        .concurrency_limit(limit.clone())
        .breaker(b)
        .build()
        .unwrap();
    assert_eq!(
        stage(p.call(&RequestContext::new(), |_| ok()).await).0,
        Stage::Breaker
    );
    assert_eq!(
        limit.available_permits(),
        1,
        "the permit taken before the breaker leaked"
    );
}

#[tokio::test(start_paused = true)]
async fn the_deadline_stops_the_call_and_counts_as_a_failure() {
    let clock = ManualClock::new();
    let b = breaker(&clock);
    let p = Policy::builder()
        .timeout(Duration::from_millis(100))
        .breaker(b.clone())
        .build()
        .unwrap();
    // The context allows 30 s; the policy's 100 ms wins, and the call sees it.
    let ctx = RequestContext::new();
    let err = p
        .call(&ctx, |_| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<_, Io>(())
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, PolicyError::TimedOut { after } if after == Duration::from_millis(100)),
        "{err:?}"
    );
    assert_eq!(
        err.rejection(),
        Some(Rejection::TimedOut {
            after: Duration::from_millis(100)
        })
    );
    assert_eq!(b.stats().failed_calls, 1);

    // A shorter request deadline wins over the policy's timeout.
    let ctx = RequestContext::builder()
        .timeout(Duration::from_millis(20))
        .build();
    let err = p
        .call(&ctx, |_| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<_, Io>(())
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, PolicyError::TimedOut { after } if after == Duration::from_millis(20)),
        "{err:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn cancellation_reaches_the_call() {
    let p = Policy::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let shutdown = heijunka::shutdown::Shutdown::builder().build().unwrap();
    let ctx = RequestContext::builder()
        .shutdown(&shutdown.token())
        .build();
    // One call watches the request's token itself; one ignores it.
    let observed = Arc::new(AtomicBool::new(false));
    let seen = observed.clone();
    let watching = p.call(&ctx, move |ctx| async move {
        ctx.cancelled().await;
        seen.store(true, Ordering::SeqCst);
        Ok::<_, Io>("stopped early")
    });
    let ignoring = p.call(&ctx, |_| async {
        tokio::time::sleep(Duration::from_secs(50)).await;
        Ok::<_, Io>("finished")
    });
    let trigger = async {
        tokio::time::sleep(Duration::from_millis(10)).await;
        shutdown.trigger();
    };
    let start = tokio::time::Instant::now();
    let (watched, ignored, ()) = tokio::join!(watching, ignoring, trigger);
    assert_eq!(watched.unwrap(), "stopped early");
    assert!(observed.load(Ordering::SeqCst));
    // The policy stops a call that ignores the cancellation when it fires.
    assert!(
        matches!(ignored, Err(PolicyError::Cancelled)),
        "{ignored:?}"
    );
    assert_eq!(start.elapsed(), Duration::from_millis(10));
    // A cancelled context is refused before any stage.
    let err = p.call(&ctx, |_| ok()).await.unwrap_err();
    assert!(matches!(err, PolicyError::Cancelled));
    assert_eq!(err.stage(), Some(Stage::Deadline));
}

#[tokio::test]
async fn outcomes_are_recorded_in_the_breaker_and_permits_released() {
    let clock = ManualClock::new();
    let b = breaker(&clock);
    let limit = ConcurrencyLimit::new(4).unwrap();
    let p = Policy::builder()
        .concurrency_limit(limit.clone())
        .breaker(b.clone())
        .build()
        .unwrap();
    let ctx = RequestContext::new();
    let calls = Arc::new(AtomicUsize::new(0));
    for i in 0..4 {
        let calls = calls.clone();
        let r = p
            .call(&ctx, move |_| async move {
                calls.fetch_add(1, Ordering::SeqCst);
                if i % 2 == 0 {
                    Ok(())
                } else {
                    Err(Io::other("boom"))
                }
            })
            .await;
        assert_eq!(r.is_ok(), i % 2 == 0);
        if let Err(e) = r {
            assert!(e.into_call_error().is_some());
        }
    }
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    let stats = b.stats();
    assert_eq!((stats.successful_calls, stats.failed_calls), (2, 2));
    assert_eq!(
        b.state(),
        State::Open,
        "50 % failures over 4 calls trips it"
    );
    assert_eq!(limit.available_permits(), 4);
}

#[test]
fn bad_configuration_names_the_field() {
    let e = Policy::builder()
        .timeout(Duration::ZERO)
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("timeout"), "{e}");
    let e = Policy::builder()
        .shed_signal(" ", || Ok(()))
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("shed_signal.name"), "{e}");
}

#[tokio::test(start_paused = true)]
async fn an_adaptive_limit_learns_from_each_outcome() {
    use heijunka::backpressure::{AdaptiveLimit, Aimd, LoadShedder};
    let aimd = Aimd::builder()
        .initial_limit(2)
        .min_limit(1)
        .max_limit(10)
        .build()
        .unwrap();
    let limit = AdaptiveLimit::builder(aimd).build().unwrap();
    let shedder = LoadShedder::builder().build();
    let p = Policy::builder()
        .timeout(Duration::from_millis(50))
        .load_shedder("shedder", shedder)
        .adaptive_limit(limit.clone())
        .build()
        .unwrap();
    assert!(p.adaptive_limit().is_some() && p.concurrency_limit().is_none());
    let ctx = RequestContext::new();
    // Success: a sample. Error: ignored. Time-out: a drop.
    p.call(&ctx, |_| ok()).await.unwrap();
    let _ = p
        .call(&ctx, |_| async { Err::<(), _>(Io::other("boom")) })
        .await;
    let slow = p
        .call(&ctx, |_| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<_, Io>(())
        })
        .await;
    assert!(matches!(slow, Err(PolicyError::TimedOut { .. })));
    let stats = limit.stats();
    assert_eq!((stats.successes, stats.ignored, stats.drops), (1, 1, 1));
    assert_eq!(stats.in_flight, 0);

    // Full: refused at the concurrency stage.
    let held: Vec<_> = (0..limit.limit())
        .map(|_| limit.try_acquire().unwrap())
        .collect();
    let (s, r) = stage(p.call(&ctx, |_| ok()).await);
    assert_eq!(s, Stage::Concurrency);
    assert!(matches!(r, Rejection::AtCapacity { .. }));
    drop(held);
}
