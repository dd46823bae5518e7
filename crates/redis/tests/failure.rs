//! Redis killed mid-run, then restarted: each failure policy is followed, no
//! call waits past its time-out, nothing panics, and the primitives are back on
//! Redis within a second of its return.

mod support;

use std::time::{Duration, Instant};

use heijunka_redis::{
    FailurePolicy, LeaseError, RedisConcurrencyLimit, RedisLimitError, RedisRateLimiter,
};

/// How long one check may take while Redis is down: the call time-out (100 ms
/// in these tests), plus scheduling slack on a loaded CI machine.
const BOUND: Duration = Duration::from_millis(400);

/// Waits (bounded) until `ok` holds, checking every 10 ms of the test's own
/// clock; returns how long it took.
async fn within(limit: Duration, mut ok: impl AsyncFnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if ok().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_open_the_rate_falls_back_to_its_share_and_recovers() {
    let mut server = support::server();
    let backend = support::backend(&server, "a");
    let limiter = RedisRateLimiter::builder(backend.clone(), 1000.0)
        .burst(40)
        .failure_policy(FailurePolicy::fail_open(4).unwrap())
        .build()
        .unwrap();
    limiter.check().await.unwrap();
    server.kill();

    // Down: every check answers within the bound, from the local limiter at a
    // quarter of the rate (burst 10, 250/s).
    let mut admitted = 0;
    let start = Instant::now();
    for _ in 0..40 {
        let t = Instant::now();
        if limiter.check().await.is_ok() {
            admitted += 1;
        }
        assert!(
            t.elapsed() < BOUND,
            "a check took {:?} with Redis down",
            t.elapsed()
        );
    }
    let allowed = 10.0 + 250.0 * start.elapsed().as_secs_f64();
    assert!(
        admitted >= 10 && f64::from(admitted) <= allowed.ceil(),
        "{admitted} admitted, the local share allows {allowed:.1}"
    );
    assert!(backend.is_degraded(), "the breaker around Redis opened");
    assert!(limiter.stats().fallback_decisions >= 40);
    assert!(
        backend.stats().short_circuited > 0,
        "once open, checks skip Redis"
    );

    server.restart().unwrap();
    let back = within(Duration::from_secs(3), async || {
        let before = limiter.stats().round_trips;
        let _ = limiter.check().await;
        limiter.stats().round_trips > before
    })
    .await;
    assert!(
        back <= Duration::from_secs(1),
        "back on Redis {back:?} after it returned"
    );
    assert!(!backend.is_degraded());
    let s = backend.stats();
    // At least once (the breaker may flap while Redis restarts), and back.
    assert!(
        s.degradations >= 1 && s.recoveries == s.degradations,
        "{s:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_closed_the_rate_refuses_and_recovers() {
    let mut server = support::server();
    let limiter = RedisRateLimiter::builder(support::backend(&server, "a"), 1000.0)
        .burst(40)
        .failure_policy(FailurePolicy::FailClosed)
        .build()
        .unwrap();
    limiter.check().await.unwrap();
    server.kill();
    for _ in 0..20 {
        let t = Instant::now();
        let e = limiter.check().await.unwrap_err();
        assert!(matches!(e, RedisLimitError::Unavailable(_)), "{e:?}");
        assert!(t.elapsed() < BOUND);
        assert!(matches!(
            e.reason(),
            Some(heijunka_core::Rejection::CircuitOpen { .. })
        ));
    }
    assert_eq!(limiter.stats().admitted, 1);
    server.restart().unwrap();
    let back = within(Duration::from_secs(3), async || {
        limiter.check().await.is_ok()
    })
    .await;
    assert!(
        back <= Duration::from_secs(1),
        "admitting {back:?} after Redis returned"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_concurrency_limit_follows_its_policy_while_redis_is_down() {
    let mut server = support::server();
    let open = RedisConcurrencyLimit::builder(support::backend(&server, "a"), 8)
        .name("open")
        .failure_policy(FailurePolicy::fail_open(4).unwrap())
        .build()
        .unwrap();
    let closed = RedisConcurrencyLimit::builder(support::backend(&server, "b"), 8)
        .name("closed")
        .failure_policy(FailurePolicy::FailClosed)
        .build()
        .unwrap();
    let held = open.try_acquire().await.unwrap();
    assert!(!held.is_local());
    server.kill();

    // Failing open: the local share, 8 / 4 = 2 permits.
    let t = Instant::now();
    let a = open.try_acquire().await.unwrap();
    let b = open.try_acquire().await.unwrap();
    assert!(a.is_local() && b.is_local());
    let third = open.try_acquire().await.unwrap_err();
    assert!(
        matches!(third, LeaseError::AtCapacity { limit: 2, .. }),
        "{third:?}"
    );
    assert!(t.elapsed() < 3 * BOUND);
    // Failing closed: refused.
    let t = Instant::now();
    assert!(matches!(
        closed.try_acquire().await.unwrap_err(),
        LeaseError::Unavailable(_)
    ));
    assert!(t.elapsed() < BOUND);
    drop((a, b, held));
    assert_eq!(open.stats().held_locally, 0);

    server.restart().unwrap();
    let back = within(Duration::from_secs(3), async || {
        closed.try_acquire().await.is_ok_and(|p| !p.is_local())
    })
    .await;
    assert!(
        back <= Duration::from_secs(1),
        "leasing again {back:?} after Redis returned"
    );
    let p = within(Duration::from_secs(3), async || {
        open.try_acquire().await.is_ok_and(|p| !p.is_local())
    })
    .await;
    assert!(p <= Duration::from_secs(1));
}

/// A key holding something the script did not write (another format, another
/// type) is one request's problem, not an outage: the breaker around Redis
/// stays closed and other keys go on.
#[tokio::test]
async fn a_malformed_key_is_not_an_outage() {
    let server = support::server();
    let mut raw = support::raw(&server).await;
    let backend = support::backend(&server, "a");
    let limiter = RedisRateLimiter::builder(backend.clone(), 10.0)
        .burst(2)
        .name("odd")
        .build()
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("heijunka:rate:odd:k:text")
        .arg("not a time")
        .query_async(&mut raw)
        .await
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg("heijunka:rate:odd:k:hash")
        .arg("f")
        .arg("v")
        .query_async(&mut raw)
        .await
        .unwrap();
    // An unparsable value counts as an empty bucket.
    limiter.check_key("text").await.unwrap();
    // A key of another type: Redis errors, the failure policy answers for it.
    for _ in 0..5 {
        let _ = limiter.check_key("hash").await;
    }
    assert!(!backend.is_degraded(), "{:?}", backend.stats());
    let before = limiter.stats().round_trips;
    limiter.check_key("fine").await.unwrap();
    assert_eq!(limiter.stats().round_trips, before + 1);
}

/// A connection that goes silent without closing (a failover behind a load
/// balancer, lost NAT state) is abandoned after a time-out: the next call
/// connects afresh, and the backend recovers within about a second instead of
/// waiting for TCP to give up (minutes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_replaced() {
    let server = support::server();
    let proxy = support::Proxy::start(server.port()).await;
    let backend = heijunka_redis::RedisBackend::builder(proxy.url())
        .call_timeout(Duration::from_millis(100))
        .replica_id("a")
        .build()
        .unwrap();
    let limiter = RedisRateLimiter::builder(backend.clone(), 1000.0)
        .burst(100)
        .build()
        .unwrap();
    limiter.check().await.unwrap();
    let trips = limiter.stats().round_trips;
    proxy.stall_existing();
    let stalled = Instant::now();
    let back = within(Duration::from_secs(5), async || {
        let before = limiter.stats().round_trips;
        let _ = limiter.check().await;
        limiter.stats().round_trips > before
    })
    .await;
    assert!(limiter.stats().round_trips > trips);
    assert!(
        back <= Duration::from_secs(2),
        "answered again {back:?} after the connection went silent ({:?} in all)",
        stalled.elapsed()
    );
}
