//! The facade's Redis stages and config blocks against a real Redis: two
//! "replicas" (two stacks built from the same config) share one rate and one
//! concurrency limit through `Policy::admit` and the tower `PolicyLayer`, a
//! synchronous admission follows the failure policy, cancellation leaves no
//! lease, and bad configs name the field. Holders are counted in Redis.
#![cfg(all(feature = "redis", feature = "config", feature = "tower"))]

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use heijunka::config::Config;
use heijunka::context::RequestContext;
use heijunka::core::Rejection;
use heijunka::policy::{PolicyError, Stage};
use heijunka::redis::testing::RedisServer;
use heijunka::tower::PolicyLayer;
use heijunka_core::cancel::{Outcome, Polled};
use tower::{Layer, Service, ServiceExt, service_fn};

fn server() -> RedisServer {
    RedisServer::start().unwrap_or_else(|e| panic!("the Redis tests need redis-server: {e}"))
}

fn config(server: &RedisServer, extra: &str) -> Config {
    Config::from_toml_str(&format!(
        r#"
[concurrency.redis]
url = "{}"
call_timeout = "200ms"
name = "api"
{extra}
"#,
        server.url()
    ))
    .unwrap()
}

async fn holders(server: &RedisServer, name: &str) -> i64 {
    let mut c = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    redis::cmd("ZCARD")
        .arg(format!("heijunka:limit:{name}"))
        .query_async(&mut c)
        .await
        .unwrap()
}

fn rejected_stage<E>(e: &PolicyError<E>) -> Option<Stage> {
    e.stage()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_rate_through_the_policy() {
    let server = server();
    let text = "[concurrency.rate_limit]\nper_second = 0.01\nburst = 3\nbackend = \"redis\"";
    let a = config(&server, text).build().unwrap();
    let b = config(&server, text).build().unwrap();
    assert!(
        a.rate_limiter.is_none(),
        "no local limiter with the redis backend"
    );
    assert!(a.policy.has_remote_stages());
    let ctx = RequestContext::new();
    drop(a.policy.admit(&ctx).await.unwrap());
    drop(b.policy.admit(&ctx).await.unwrap());
    drop(a.policy.admit(&ctx).await.unwrap());
    let refused = b.policy.admit(&ctx).await.unwrap_err();
    assert_eq!(rejected_stage(&refused), Some(Stage::RateLimit));
    assert!(matches!(
        refused.rejection(),
        Some(Rejection::RateLimited { .. })
    ));
    let stats = b.policy.stats();
    assert_eq!((stats.admitted, stats.rejected), (1, 1));
    assert_eq!(
        b.redis_rate_limiter.as_ref().unwrap().stats().round_trips,
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_lives_as_long_as_the_admission() {
    let server = server();
    let text = "[concurrency.limit]\nmax_concurrent = 1\nbackend = \"redis\"";
    let a = config(&server, text).build().unwrap();
    let b = config(&server, text).build().unwrap();
    assert!(a.limit.is_none());
    let ctx = RequestContext::new();
    let held = a.policy.admit(&ctx).await.unwrap();
    assert_eq!(holders(&server, "api").await, 1);
    let refused = b.policy.admit(&ctx).await.unwrap_err();
    assert_eq!(rejected_stage(&refused), Some(Stage::Concurrency));
    held.success();
    let deadline = Instant::now() + Duration::from_secs(3);
    while holders(&server, "api").await != 0 {
        assert!(
            Instant::now() < deadline,
            "the lease outlived the admission"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(b.policy.admit(&ctx).await.unwrap());
}

/// `admit` dropped after k polls (while Redis decides) leaves no lease and is
/// counted as a cancelled refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_admission_leaves_no_lease() {
    let server = server();
    let stack = config(
        &server,
        "[concurrency.limit]\nmax_concurrent = 1\nbackend = \"redis\"\n[concurrency.rate_limit]\nper_second = 1000.0\nbackend = \"redis\"",
    )
    .build()
    .unwrap();
    let ctx = RequestContext::new();
    // Each admission either is dropped while Redis decides (counted as
    // cancelled), or finishes: admitted (and released at once) or refused
    // (a lease an earlier dropped one took is not released yet).
    let (mut cancelled, mut refused) = (0, 0);
    for polls in 1..=3 {
        match Polled::new(stack.policy.admit(&ctx)).drop_after(polls) {
            Outcome::Cancelled { .. } => cancelled += 1,
            Outcome::Completed { output, .. } => refused += u64::from(output.is_err()),
        }
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while holders(&server, "api").await != 0 {
        assert!(
            Instant::now() < deadline,
            "a cancelled admission left a lease"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(stack.policy.admit(&ctx).await.unwrap());
    let stats = stack.policy.stats();
    assert_eq!(stats.in_flight, 0);
    assert!(cancelled > 0, "some admission was still waiting on Redis");
    assert_eq!(
        stats.rejected,
        cancelled + refused,
        "each dropped admission counted as cancelled"
    );
}

/// The tower layer waits for Redis's answer; a refused request never reaches
/// the service (counted inside it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tower_layer_asks_redis_and_spares_the_service() {
    let server = server();
    let text = "[concurrency.rate_limit]\nper_second = 0.01\nburst = 2\nbackend = \"redis\"";
    let a = config(&server, text).build().unwrap();
    let b = config(&server, text).build().unwrap();
    let served = Arc::new(AtomicU32::new(0));
    let make = |policy| {
        let served = Arc::clone(&served);
        PolicyLayer::new(policy).layer(service_fn(move |_: http::Request<()>| {
            let served = Arc::clone(&served);
            async move {
                served.fetch_add(1, Ordering::Relaxed);
                Ok::<_, Infallible>(http::Response::new(String::new()))
            }
        }))
    };
    let (mut sa, mut sb) = (make(a.policy.clone()), make(b.policy.clone()));
    assert!(
        sa.ready()
            .await
            .unwrap()
            .call(http::Request::new(()))
            .await
            .is_ok()
    );
    assert!(
        sb.ready()
            .await
            .unwrap()
            .call(http::Request::new(()))
            .await
            .is_ok()
    );
    let refused = sa
        .ready()
        .await
        .unwrap()
        .call(http::Request::new(()))
        .await
        .unwrap_err();
    let refused = refused.downcast::<heijunka::tower::Rejected>().unwrap();
    assert_eq!(refused.stage(), Stage::RateLimit);
    assert_eq!(
        served.load(Ordering::Relaxed),
        2,
        "the refused request never reached the service"
    );
    assert_eq!(a.policy.stats().rejected, 1);
}

/// `try_admit` cannot wait for Redis: it follows the failure policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synchronous_admission_follows_the_failure_policy() {
    let server = server();
    let closed = config(
        &server,
        "failure_policy = \"fail_closed\"\n[concurrency.rate_limit]\nper_second = 100.0\nbackend = \"redis\"",
    )
    .build()
    .unwrap();
    let e = closed.policy.try_admit(&RequestContext::new()).unwrap_err();
    assert_eq!(e.stage(), Some(Stage::RateLimit));
    assert!(matches!(e.rejection(), Some(Rejection::CircuitOpen { .. })));
    let open = config(
        &server,
        "expected_replicas = 4\n[concurrency.rate_limit]\nper_second = 100.0\nburst = 8\nbackend = \"redis\"",
    )
    .build()
    .unwrap();
    // The local share: 8 / 4 = 2 at once.
    let ctx = RequestContext::new();
    let admitted = (0..4)
        .filter(|_| open.policy.try_admit(&ctx).is_ok())
        .count();
    assert_eq!(admitted, 2);
}

#[test]
fn redis_configs_are_checked_with_the_field() {
    let no_table =
        Config::from_toml_str("[concurrency.rate_limit]\nper_second = 1.0\nbackend = \"redis\"")
            .unwrap();
    let e = no_table.validate().unwrap_err();
    assert_eq!(e.first().field(), "concurrency.rate_limit.backend");
    let text = "[concurrency.redis]\nurl = \"redis://127.0.0.1:1/\"\nexpected_replicas = 0\nlease = \"1ms\"\n[concurrency.limit]\nmax_concurrent = 4\nalgorithm = \"aimd\"\nbackend = \"redis\"";
    let e = Config::from_toml_str(text).unwrap().validate().unwrap_err();
    let fields: Vec<_> = e.iter().map(|e| e.field().to_owned()).collect();
    for want in [
        "concurrency.limit.backend",
        "concurrency.redis.expected_replicas",
        "concurrency.redis.lease",
    ] {
        assert!(fields.iter().any(|f| f == want), "{want} in {fields:?}");
    }
    let bad_url = Config::from_toml_str("[concurrency.redis]\nurl = \"http://x\"").unwrap();
    assert_eq!(
        bad_url.validate().unwrap_err().first().field(),
        "concurrency.redis.url"
    );
    // Built outside a runtime: a clear error, not a panic.
    let outside = Config::from_toml_str(
        "[concurrency.redis]\nurl = \"redis://127.0.0.1:1/\"\n[concurrency.rate_limit]\nper_second = 1.0\nbackend = \"redis\"",
    )
    .unwrap();
    let e = outside.build().unwrap_err();
    assert_eq!(e.first().field(), "concurrency.redis");
}

#[tokio::test]
async fn the_shared_rate_cannot_be_reloaded_by_one_replica() {
    let server = server();
    let text = "[concurrency.rate_limit]\nper_second = 10.0\nbackend = \"redis\"";
    let stack = config(&server, text).build().unwrap();
    let e = stack
        .reload(config(
            &server,
            "[concurrency.rate_limit]\nper_second = 20.0\nbackend = \"redis\"",
        ))
        .unwrap_err();
    assert_eq!(e.first().field(), "concurrency.rate_limit.per_second");
}
