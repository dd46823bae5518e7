//! The global GCRA against a real Redis: the in-process limiter's semantics,
//! idle keys that cost nothing, `NOSCRIPT` recovery, the local refusal cache,
//! and a rate shared by independent connection pools.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use heijunka_backpressure::{Gcra, RateLimitError, RateLimiter};
use heijunka_core::ManualClock;
use heijunka_core::cancel::Polled;
use heijunka_redis::{FailurePolicy, RedisLimitError, RedisRateLimiter, TokenLeasing};

fn limited(e: &RedisLimitError) -> &RateLimitError {
    match e {
        RedisLimitError::Limited(l) => l,
        other => panic!("expected a limit refusal, got {other:?}"),
    }
}

/// The same sequence against the in-process `Gcra` (on a manual clock, so its
/// answers are exact) and the Redis limiter (on Redis's clock): the same
/// admissions and refusals, and retry-afters that differ by no more than the
/// time the Redis sequence took (measured with a second clock).
#[tokio::test]
async fn the_redis_gcra_decides_as_the_in_process_one() {
    let server = support::server();
    let redis = RedisRateLimiter::builder(support::backend(&server, "a"), 10.0)
        .burst(5)
        .cache_refusals(false)
        .build()
        .unwrap();
    let clock = ManualClock::new();
    let local = Gcra::builder(10.0)
        .burst(5)
        .clock(clock.clock())
        .build()
        .unwrap();
    assert_eq!(redis.interval(), local.interval());

    let started = Instant::now();
    // Burst, then refusal with the wait for one interval.
    for i in 0..5 {
        assert!(local.check().is_ok());
        assert!(redis.check().await.is_ok(), "unit {i} of the burst");
    }
    let want = local.check().unwrap_err();
    let got = redis.check().await.unwrap_err();
    let took = started.elapsed();
    let (want, got) = (
        want.retry_after().unwrap(),
        limited(&got).retry_after().unwrap(),
    );
    assert_eq!(want, Duration::from_millis(100));
    assert!(
        got <= want && got + took >= want,
        "retry-after {got:?}, in-process {want:?}, sequence took {took:?}"
    );
    // More than the burst at once: never possible, and no round trip.
    assert_eq!(
        local.check_n(6).unwrap_err(),
        RateLimitError::InsufficientCapacity {
            requested: 6,
            capacity: 5
        }
    );
    let round_trips = redis.stats().round_trips;
    assert_eq!(
        *limited(&redis.check_n(6).await.unwrap_err()),
        RateLimitError::InsufficientCapacity {
            requested: 6,
            capacity: 5
        }
    );
    assert!(redis.check_n(0).await.is_ok());
    assert_eq!(
        redis.stats().round_trips,
        round_trips,
        "decided without Redis"
    );

    // Spacing: after the retry-after one unit conforms, the next does not.
    tokio::time::sleep(got).await;
    clock.advance(want);
    assert!(local.check().is_ok());
    assert!(
        redis.check().await.is_ok(),
        "conforms after the retry-after it was given"
    );
    assert_eq!(local.check().unwrap_err().retry_after(), Some(want));
    let again = redis.check().await.unwrap_err();
    let again = limited(&again).retry_after().unwrap();
    // The unit conformed one interval after the burst; the wait now is one
    // interval less however long past that point this check came (the sleep's
    // overshoot), which the test's clock bounds.
    let late = started.elapsed().saturating_sub(want);
    assert!(
        again <= want && again + late >= want,
        "one interval again: {again:?}, less at most the {late:?} this check came late"
    );
}

/// A key's state lives only as long as it matters: until its bucket is full
/// again. An idle key costs nothing.
#[tokio::test]
async fn a_key_expires_when_its_bucket_is_full_again() {
    let server = support::server();
    let mut raw = support::raw(&server).await;
    let limiter = RedisRateLimiter::builder(support::backend(&server, "a"), 1000.0)
        .burst(10)
        .name("ttl")
        .build()
        .unwrap();
    for _ in 0..4 {
        limiter.check_key("alice").await.unwrap();
    }
    // 4 units ahead at 1 ms each: at most 4 ms to live.
    let pttl: i64 = redis::cmd("PTTL")
        .arg("heijunka:rate:ttl:k:alice")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!((1..=4).contains(&pttl), "PTTL {pttl}");
    // Keys are separate buckets.
    let bob: i64 = redis::cmd("EXISTS")
        .arg("heijunka:rate:ttl:k:bob")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(bob, 0);
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let exists: i64 = redis::cmd("EXISTS")
            .arg("heijunka:rate:ttl:k:alice")
            .query_async(&mut raw)
            .await
            .unwrap();
        if exists == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the key outlived its state");
        tokio::task::yield_now().await;
    }
}

/// After `SCRIPT FLUSH` (or a Redis restart) the script is loaded again: the
/// `EVALSHA` that finds `NOSCRIPT` falls back to `EVAL`.
#[tokio::test]
async fn a_flushed_script_is_loaded_again() {
    let server = support::server();
    let mut raw = support::raw(&server).await;
    let limiter = RedisRateLimiter::builder(support::backend(&server, "a"), 100.0)
        .burst(100)
        .build()
        .unwrap();
    limiter.check().await.unwrap();
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut raw)
        .await
        .unwrap();
    limiter.check().await.unwrap();
    limiter.check().await.unwrap();
    assert_eq!(
        limiter.stats().fallback_decisions,
        0,
        "every check went to Redis"
    );
    // The first check and the first after the flush each find NOSCRIPT, load
    // the script and call it again: 3 checks, 5 EVALSHA, 2 loads.
    assert_eq!(support::calls(&mut raw, "evalsha").await, 5);
    assert_eq!(support::calls(&mut raw, "script|load").await, 2);
}

/// A replica just refused does not ask Redis again until the retry-after it was
/// given (the local clock is a manual one; Redis counts the calls).
#[tokio::test]
async fn a_refused_key_is_refused_locally_until_its_retry_after() {
    let server = support::server();
    let mut raw = support::raw(&server).await;
    let clock = ManualClock::new();
    let limiter = RedisRateLimiter::builder(support::backend(&server, "a"), 1.0)
        .burst(1)
        .clock(clock.clock())
        .build()
        .unwrap();
    limiter.check_key("k").await.unwrap();
    let first = limiter.check_key("k").await.unwrap_err();
    let wait = first.retry_after().unwrap();
    let before = support::calls(&mut raw, "evalsha").await;
    for _ in 0..10 {
        let again = limiter.check_key("k").await.unwrap_err();
        assert!(again.retry_after().unwrap() <= wait);
    }
    assert_eq!(
        support::calls(&mut raw, "evalsha").await,
        before,
        "no round trip while refused"
    );
    // Another key, or fewer units than were refused, still asks Redis.
    limiter.check_key("other").await.unwrap();
    assert_eq!(support::calls(&mut raw, "evalsha").await, before + 1);
    // Once the retry-after has passed on the local clock, Redis decides again.
    clock.advance(wait);
    let _ = limiter.check_key("k").await;
    assert_eq!(support::calls(&mut raw, "evalsha").await, before + 2);
    assert_eq!(limiter.stats().refused_locally, 10);
}

/// Four replicas (independent backends and limiters, failing closed with a
/// generous time-out: a slow answer on a loaded machine is a refusal, never an
/// admission by a local limiter) hammer one key for `span`, each sleeping out
/// its refusals; returns the limiters and the admissions counted inside the
/// tasks, checked against `rate` within `tolerance`, timed by the test's clock.
async fn four_replicas_within(
    server: &heijunka_redis::testing::RedisServer,
    rate: f64,
    burst: u32,
    span: Duration,
    leasing: Option<TokenLeasing>,
    tolerance: f64,
) -> (Vec<RedisRateLimiter>, f64) {
    let admitted = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    let mut limiters = Vec::new();
    for replica in 0..4 {
        let backend = support::backend_with(server, &format!("r{replica}"), Duration::from_secs(1));
        let mut b = RedisRateLimiter::builder(backend, rate)
            .burst(burst)
            .failure_policy(FailurePolicy::FailClosed)
            .name("shared");
        if let Some(l) = leasing {
            b = b.token_leasing(l);
        }
        let limiter = b.build().unwrap();
        limiters.push(limiter.clone());
        let admitted = Arc::clone(&admitted);
        tasks.push(tokio::spawn(async move {
            while start.elapsed() < span {
                match limiter.check().await {
                    Ok(()) => {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        // A rate refusal's wait, or a short pause after an
                        // unanswered call.
                        let wait = e.retry_after().unwrap_or(Duration::from_millis(1));
                        tokio::time::sleep(wait.min(span.saturating_sub(start.elapsed()))).await;
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    let expected = f64::from(burst) + rate * secs;
    let got = admitted.load(Ordering::Relaxed) as f64;
    let error = (got - expected) / expected;
    assert!(
        error.abs() <= tolerance,
        "admitted {got} in {secs:.3} s, expected {expected:.0} ({:+.2} %)",
        error * 100.0
    );
    (limiters, got)
}

/// Four independent connection pools sharing one key admit the configured
/// global rate within ±2 % over 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_pools_share_one_rate_within_two_percent() {
    let server = support::server();
    four_replicas_within(&server, 400.0, 20, Duration::from_secs(10), None, 0.02).await;
}

/// With token leasing, four replicas stay within ±5 % of the global rate while
/// most admissions need no round trip (at least 10 per round trip below the
/// limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leasing_keeps_the_global_rate_with_few_round_trips() {
    let server = support::server();
    let mut raw = support::raw(&server).await;
    let leasing = TokenLeasing {
        max_batch: 32,
        share: 4,
        ..TokenLeasing::default()
    };
    let (mut limiters, got) = four_replicas_within(
        &server,
        2000.0,
        200,
        Duration::from_secs(5),
        Some(leasing),
        0.05,
    )
    .await;
    let scripts = support::calls(&mut raw, "evalsha").await as f64;
    let per_trip = got / scripts;
    eprintln!(
        "leasing at the limit: {got} admitted, {scripts} round trips, {per_trip:.1} per round trip"
    );

    // Below the limit (a quarter of the rate, one replica), batches stay large.
    let limiter = limiters.pop().unwrap();
    let name_stats = limiter.stats();
    let before = name_stats.round_trips;
    let admitted_before = name_stats.admitted;
    let quiet = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_micros(2000));
    while quiet.elapsed() < Duration::from_secs(1) {
        tick.tick().await;
        let _ = limiter.check_key("quiet").await;
    }
    let s = limiter.stats();
    let per_trip = (s.admitted - admitted_before) as f64 / (s.round_trips - before).max(1) as f64;
    assert!(
        per_trip >= 10.0,
        "{per_trip:.1} admitted per round trip below the limit: {s:?}"
    );
}

/// A check dropped while its round trip is in flight takes at most the units it
/// asked for from the global bucket, and leaves no local state behind.
#[tokio::test]
async fn a_cancelled_check_takes_at_most_its_units() {
    let server = support::server();
    let limiter = RedisRateLimiter::builder(support::backend(&server, "a"), 0.001)
        .burst(3)
        .build()
        .unwrap();
    for polls in 1..=2 {
        let outcome = Polled::new(limiter.check()).drop_after(polls);
        assert!(!outcome.is_completed(), "still in flight");
    }
    let stats = limiter.stats();
    assert_eq!(
        (stats.admitted, stats.refused),
        (0, 0),
        "cancelled checks are neither"
    );
    let mut admitted = 0;
    for _ in 0..3 {
        if limiter.check().await.is_ok() {
            admitted += 1;
        }
    }
    assert!(
        (1..=3).contains(&admitted),
        "two cancelled checks took at most 2 of 3 units: {admitted} left"
    );
}

/// `until_ready` dropped while it sleeps out a retry-after has taken nothing:
/// the next unit still goes to the next caller once it conforms.
#[tokio::test]
async fn a_cancelled_until_ready_takes_nothing() {
    let server = support::server();
    let limiter = RedisRateLimiter::builder(support::backend(&server, "a"), 20.0)
        .burst(1)
        .cache_refusals(false)
        .build()
        .unwrap();
    limiter.check().await.unwrap();
    for polls in 1..=4 {
        let _ = Polled::new(limiter.until_ready(1)).drop_after(polls);
    }
    let s = limiter.stats();
    // Each drop happened before the unit conformed (50 ms away): refused
    // checks only, nothing admitted beyond the first.
    assert_eq!(s.admitted, 1, "{s:?}");
    // The unit that conforms next goes to the next caller.
    tokio::time::timeout(Duration::from_secs(2), limiter.until_ready(1))
        .await
        .expect("admitted once the interval passed")
        .unwrap();
}

/// A client key is never the global bucket, whatever its spelling.
#[tokio::test]
async fn a_client_key_never_aliases_the_global_bucket() {
    let server = support::server();
    let limiter = RedisRateLimiter::builder(support::backend(&server, "a"), 0.001)
        .burst(1)
        .build()
        .unwrap();
    limiter.check().await.unwrap();
    assert!(limiter.check().await.is_err());
    for key in ["*", "", "k:*"] {
        limiter.check_key(key).await.unwrap();
    }
}
