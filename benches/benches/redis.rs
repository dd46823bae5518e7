//! `redis/*`: the global GCRA against one local Redis (a private `redis-server`
//! the bench starts on a loopback port), against throttle-kit's Redis GCRA
//! backend on the same server: the same Lua-in-Redis decision, one round trip
//! per check, a key that is never refused.
//!
//! - `redis/check`: one check at a time (the round-trip latency).
//! - `redis/pipelined`: 16 checks in flight on the one multiplexed connection
//!   each side has (time per check).
//! - `redis/leasing`: one check at a time with token leasing (32 per round
//!   trip at most) against throttle-kit's one round trip per check; the bench
//!   prints the admissions per round trip it saw.
//! - `redis/down`: Redis killed, the breaker around it open: a check decided by
//!   the fail-open local limiter, against the in-process keyed GCRA it uses (the
//!   failure policy's local path at in-process speed).

use std::future::Future;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use heijunka_backpressure::KeyedRateLimiter;
use heijunka_benches::baselines;
use heijunka_redis::testing::RedisServer;
use heijunka_redis::{RedisBackend, RedisRateLimiter, TokenLeasing};
use throttle_kit::Quota;
use throttle_kit::RateLimitBackend;
use throttle_kit::RedisBackend as ThrottleRedis;

/// In flight at once in `redis/pipelined`.
const IN_FLIGHT: u64 = 16;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A rate no check reaches in a bench run: 1000/s with a burst of 10^9.
fn ours(
    rt: &tokio::runtime::Runtime,
    backend: &RedisBackend,
    name: &str,
    leasing: bool,
) -> RedisRateLimiter {
    let _guard = rt.enter();
    let mut b = RedisRateLimiter::builder(backend.clone(), 1000.0)
        .burst(1_000_000_000)
        .name(name);
    if leasing {
        b = b.token_leasing(TokenLeasing::default());
    }
    b.build().expect("limiter")
}

/// Times `iters` awaits of `check()`, one at a time.
fn one_at_a_time<Fut: Future<Output = ()>>(
    rt: &tokio::runtime::Runtime,
    iters: u64,
    mut check: impl FnMut() -> Fut,
) -> Duration {
    rt.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            check().await;
        }
        start.elapsed()
    })
}

/// Times `iters` checks run by [`IN_FLIGHT`] tasks at once (each made by
/// `task(n)`, doing `n` checks); the time per `iters` checks.
fn in_flight<Fut: Future<Output = ()> + Send + 'static>(
    rt: &tokio::runtime::Runtime,
    iters: u64,
    task: impl Fn(u64) -> Fut,
) -> Duration {
    rt.block_on(async {
        let per = iters.div_ceil(IN_FLIGHT);
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..IN_FLIGHT {
            tasks.spawn(task(per));
        }
        while tasks.join_next().await.is_some() {}
        start
            .elapsed()
            .mul_f64(iters as f64 / (per * IN_FLIGHT) as f64)
    })
}

fn quota() -> Quota {
    Quota::per_second(1000).allow_burst(1_000_000_000)
}

fn bench(c: &mut Criterion) {
    baselines(c);
    let mut server = RedisServer::start().expect("the redis bench needs redis-server");
    let rt = runtime();
    let backend = {
        let _guard = rt.enter();
        RedisBackend::builder(server.url())
            .call_timeout(Duration::from_secs(1))
            .build()
            .expect("backend")
    };
    let throttle = Arc::new(
        rt.block_on(ThrottleRedis::connect(&server.url()))
            .expect("throttle-kit"),
    );
    let limiter = ours(&rt, &backend, "bench", false);
    let q = quota();

    let mut g = c.benchmark_group("redis/check");
    g.bench_function("heijunka", |b| {
        b.iter_custom(|iters| {
            one_at_a_time(&rt, iters, || async {
                limiter.check_key(black_box("k")).await.expect("admitted");
            })
        });
    });
    g.bench_function("throttle-kit", |b| {
        b.iter_custom(|iters| {
            one_at_a_time(&rt, iters, || async {
                let r = throttle.check(black_box("throttle:k"), &q).await;
                assert!(r.allowed);
            })
        });
    });
    g.finish();

    let mut g = c.benchmark_group("redis/pipelined");
    g.bench_function("heijunka", |b| {
        b.iter_custom(|iters| {
            in_flight(&rt, iters, |n| {
                let l = limiter.clone();
                async move {
                    for _ in 0..n {
                        l.check_key(black_box("p")).await.expect("admitted");
                    }
                }
            })
        });
    });
    g.bench_function("throttle-kit", |b| {
        b.iter_custom(|iters| {
            in_flight(&rt, iters, |n| {
                let t = Arc::clone(&throttle);
                async move {
                    for _ in 0..n {
                        assert!(t.check("throttle:p", &q).await.allowed);
                    }
                }
            })
        });
    });
    g.finish();

    let leased = ours(&rt, &backend, "leased", true);
    let mut g = c.benchmark_group("redis/leasing");
    g.bench_function("heijunka", |b| {
        b.iter_custom(|iters| {
            one_at_a_time(&rt, iters, || async {
                leased.check_key(black_box("k")).await.expect("admitted");
            })
        });
    });
    g.bench_function("throttle-kit", |b| {
        b.iter_custom(|iters| {
            one_at_a_time(&rt, iters, || async {
                assert!(throttle.check(black_box("throttle:l"), &q).await.allowed);
            })
        });
    });
    g.finish();
    let s = leased.stats();
    eprintln!(
        "redis/leasing: {} admitted over {} round trips: {:.1} admissions per round trip",
        s.admitted,
        s.round_trips,
        s.admitted as f64 / s.round_trips.max(1) as f64
    );

    // Redis down: the breaker opens after a few failed calls, then every check
    // is the fail-open local limiter's.
    server.kill();
    let down = ours(&rt, &backend, "down", false);
    rt.block_on(async {
        for _ in 0..10 {
            let _ = down.check_key("d").await;
        }
    });
    assert!(backend.is_degraded(), "the breaker around Redis is open");
    let local = KeyedRateLimiter::builder(1000.0)
        .burst(1_000_000_000)
        .build::<String>()
        .expect("local");
    let mut g = c.benchmark_group("redis/down");
    g.bench_function("heijunka", |b| {
        b.iter_custom(|iters| {
            one_at_a_time(&rt, iters, || async {
                down.check_key(black_box("d"))
                    .await
                    .expect("admitted locally");
            })
        });
    });
    g.bench_function("in-process", |b| {
        let key = "d".to_owned();
        b.iter(|| local.check_key(black_box(&key)).expect("admitted"));
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
