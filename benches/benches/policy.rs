//! `policy/*`: the facade's policy pipeline, admitting path, with every stage
//! configured (rate limit, memory gate, a shed signal, concurrency limit,
//! breaker), against the same stages called one after another by hand; and the
//! tower layers against tower's own; the whole `PolicyLayer` against
//! tower-resilience's equivalent stack, and the concurrency layer against tower's
//! and tower-resilience's, each with the bare service in the same group (overhead =
//! layer - bare); and the keyed (per-client) rate-limit layer against
//! tower-governor.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use heijunka::backpressure::{ConcurrencyLimit, Gcra, RateLimiter};
use heijunka::breaker::CircuitBreaker;
use heijunka::context::RequestContext;
use heijunka::shutdown::Shutdown;
use heijunka_benches::http_stacks::{
    Handler, HttpRequest, drive, heijunka_limit, heijunka_policy, heijunka_policy_lean, hello,
    hello_empty, resilience_bulkhead, resilience_stack, tower_limit,
};
use heijunka_benches::{all_stages_gate, all_stages_policy, baselines};

fn admit(c: &mut Criterion) {
    let mut g = c.benchmark_group("policy/admit_all_stages");
    // Rates high enough never to refuse during the run.
    let policy = all_stages_policy();
    let ctx = RequestContext::new();
    g.bench_function("heijunka", |b| {
        b.iter(|| {
            let a = policy.try_admit(black_box(&ctx)).expect("admitted");
            a.success();
        })
    });

    // The same stages by hand: what composition adds on top of them.
    let rate = Gcra::builder(1e9).burst(1_000_000).build().expect("valid");
    let memory = all_stages_gate();
    let limit = ConcurrencyLimit::new(1024).expect("valid");
    let breaker = CircuitBreaker::builder()
        .name("dep")
        .build()
        .expect("valid");
    let signal = || Ok::<(), heijunka::core::Rejection>(());
    g.bench_function("stages-by-hand", |b| {
        b.iter(|| {
            rate.check().expect("admitted");
            memory.check().expect("admitted");
            black_box(signal)().expect("admitted");
            let permit = limit.try_acquire_owned().expect("admitted");
            let probe = breaker.try_acquire_owned().expect("admitted");
            probe.success();
            drop(permit);
        })
    });
    g.finish();

    let mut g = c.benchmark_group("policy/call_all_stages");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    g.bench_function("heijunka", |b| {
        b.iter(|| {
            rt.block_on(policy.call(&ctx, |_| async { Ok::<_, ()>(black_box(1)) }))
                .expect("admitted")
        })
    });
    g.bench_function("bare-future", |b| {
        b.iter(|| {
            rt.block_on(async { Ok::<_, ()>(black_box(1)) })
                .expect("ok")
        })
    });
    g.finish();
}

/// One request through heijunka's rate limit + concurrency limit layers against
/// tower's own `RateLimitLayer` + `ConcurrencyLimitLayer`, around the same trivial
/// service: `ready`, `call`, await the response, drop it. Rates are high enough
/// never to refuse. heijunka's concurrency layer also wraps the response body so
/// the permit lives until the body ends (tower's releases it with the headers).
fn tower_layers(c: &mut Criterion) {
    use tower::{Service, ServiceBuilder, ServiceExt};

    type Req = http::Request<String>;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let inner = || {
        tower::service_fn(|_req: Req| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
        })
    };
    let mut g = c.benchmark_group("policy/tower_rate_and_limit");

    let mut ours = ServiceBuilder::new()
        .layer(heijunka::tower::RateLimitLayer::new(
            Gcra::builder(1e9).burst(1_000_000).build().expect("valid"),
        ))
        .layer(heijunka::tower::ConcurrencyLimitLayer::new(
            ConcurrencyLimit::new(1024).expect("valid"),
        ))
        .service(inner());
    g.bench_function("heijunka", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let svc = ours.ready().await.expect("ready");
                    let resp = svc.call(http::Request::new(String::new())).await;
                    drop(black_box(resp));
                }
                start.elapsed()
            })
        })
    });

    let mut theirs = rt.block_on(async {
        ServiceBuilder::new()
            .rate_limit(1_000_000_000, Duration::from_secs(1))
            .concurrency_limit(1024)
            .service(inner())
    });
    g.bench_function("tower", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let svc = theirs.ready().await.expect("ready");
                    let resp = svc.call(http::Request::new(String::new())).await;
                    drop(black_box(resp));
                }
                start.elapsed()
            })
        })
    });
    g.finish();
}

/// Times `iters` requests on one thread (a current-thread runtime).
fn one_thread<S, B>(rt: &tokio::runtime::Runtime, svc: &mut S, iters: u64) -> Duration
where
    S: tower::Service<HttpRequest, Response = http::Response<B>>,
    S::Error: std::fmt::Debug,
    B: http_body::Body + Unpin,
    B::Error: std::fmt::Debug,
{
    rt.block_on(async {
        let start = Instant::now();
        drive(svc, iters).await;
        start.elapsed()
    })
}

/// Times `iters` requests on each of `tasks` tasks of a multi-thread runtime, each
/// task driving its own clone of `svc` (clones share the layers' state: limits,
/// breaker, rate), from a start barrier to the last task's end. Criterion reports
/// the time per request per task, as `heijunka_benches::contended` does.
fn tasks<S, B>(rt: &tokio::runtime::Runtime, tasks: usize, svc: &S, iters: u64) -> Duration
where
    S: tower::Service<HttpRequest, Response = http::Response<B>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug,
    B: http_body::Body + Unpin + Send,
    B::Data: Send,
    B::Error: std::fmt::Debug,
{
    rt.block_on(async {
        let start = Arc::new(tokio::sync::Barrier::new(tasks + 1));
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let mut svc = svc.clone();
                let start = Arc::clone(&start);
                tokio::spawn(async move {
                    start.wait().await;
                    drive(&mut svc, iters).await;
                })
            })
            .collect();
        start.wait().await;
        let began = Instant::now();
        for h in handles {
            h.await.expect("benchmark task panicked");
        }
        began.elapsed()
    })
}

/// `policy/tower_policy_stack/{threads}`: `PolicyLayer` end to end with shutdown
/// wired (timeout 30 s + GCRA rate + concurrency limit + breaker, rates high
/// enough never to refuse) against tower-resilience's equivalent stack
/// (`TimeLimiterLayer` + `RateLimiterLayer` + `BulkheadLayer` +
/// `CircuitBreakerLayer`, same order, same limits, fail-fast like heijunka), and
/// the bare service; each reads the response body to its end. At 1 thread
/// (current-thread runtime) and 2 (two tasks on a 2-worker runtime sharing the
/// layers). Overhead = function - `bare`.
fn tower_policy_stack(c: &mut Criterion) {
    let shutdown = Shutdown::new();
    let mut g = c.benchmark_group("policy/tower_policy_stack");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let mut svc = heijunka_policy(&shutdown, hello);
    g.bench_function(BenchmarkId::new("heijunka", 1), |b| {
        b.iter_custom(|iters| one_thread(&rt, &mut svc, iters))
    });
    let mut svc = rt.block_on(async { resilience_stack(hello) });
    g.bench_function(BenchmarkId::new("tower-resilience", 1), |b| {
        b.iter_custom(|iters| one_thread(&rt, &mut svc, iters))
    });
    let mut svc = tower::service_fn(hello as Handler);
    g.bench_function(BenchmarkId::new("bare", 1), |b| {
        b.iter_custom(|iters| one_thread(&rt, &mut svc, iters))
    });
    // `1-lean`: the context not put in the request's extensions (handlers use
    // `RequestContext::current()`), against the same tower-resilience stack.
    let mut svc = heijunka_policy_lean(&shutdown, hello);
    g.bench_function(BenchmarkId::new("heijunka", "1-lean"), |b| {
        b.iter_custom(|iters| one_thread(&rt, &mut svc, iters))
    });
    let mut svc = rt.block_on(async { resilience_stack(hello) });
    g.bench_function(BenchmarkId::new("tower-resilience", "1-lean"), |b| {
        b.iter_custom(|iters| one_thread(&rt, &mut svc, iters))
    });
    drop(rt);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .expect("runtime");
    let svc = heijunka_policy(&shutdown, hello);
    g.bench_function(BenchmarkId::new("heijunka", 2), |b| {
        b.iter_custom(|iters| tasks(&rt, 2, &svc, iters))
    });
    let svc = rt.block_on(async { resilience_stack(hello) });
    g.bench_function(BenchmarkId::new("tower-resilience", 2), |b| {
        b.iter_custom(|iters| tasks(&rt, 2, &svc, iters))
    });
    let svc = tower::service_fn(hello as Handler);
    g.bench_function(BenchmarkId::new("bare", 2), |b| {
        b.iter_custom(|iters| tasks(&rt, 2, &svc, iters))
    });
    g.finish();
}

/// `policy/tower_concurrency/{body}`: heijunka's `ConcurrencyLimitLayer` (holds
/// its permit until the body ends) against tower's `ConcurrencyLimitLayer`
/// (releases it with the headers) and tower-resilience's `BulkheadLayer`
/// (fail-fast), and the bare service, at 1 thread, each reading the body to its
/// end. `one-frame`: a body with one data frame; `empty`: a body complete at the
/// headers. Overhead = function - `bare`.
fn tower_concurrency(c: &mut Criterion) {
    use tower::Layer;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let mut g = c.benchmark_group("policy/tower_concurrency");
    for (param, handler) in [("one-frame", hello as Handler), ("empty", hello_empty)] {
        let mut svc = heijunka_limit(handler);
        g.bench_function(BenchmarkId::new("heijunka", param), |b| {
            b.iter_custom(|iters| one_thread(&rt, &mut svc, iters))
        });
        let mut svc = tower_limit(handler);
        g.bench_function(BenchmarkId::new("tower", param), |b| {
            b.iter_custom(|iters| one_thread(&rt, &mut svc, iters))
        });
        let mut svc = resilience_bulkhead().layer(tower::service_fn(handler));
        g.bench_function(BenchmarkId::new("tower-resilience", param), |b| {
            b.iter_custom(|iters| one_thread(&rt, &mut svc, iters))
        });
        let mut svc = tower::service_fn(handler);
        g.bench_function(BenchmarkId::new("bare", param), |b| {
            b.iter_custom(|iters| one_thread(&rt, &mut svc, iters))
        });
    }
    g.finish();
}

/// One request through heijunka's `KeyedRateLimitLayer` against tower-governor's
/// `GovernorLayer`, around the same trivial service: `ready`, `call`, await the
/// response, drop it. Side by side in one group, one parameter per case:
///
/// - `keys=1` / `keys=1000`: requests from 1 or 1000 client IPs, round-robin,
///   every key known before timing starts (the steady state of a per-client limit);
/// - `,headers`: both write their rate-limit headers on every response (heijunka
///   `X-RateLimit-Limit`, `-Remaining`, `-Reset`; tower-governor with
///   `use_headers()`: `x-ratelimit-limit`, `-remaining`); without it neither does.
///
/// Fairness: the same per-key quota (1e9 per second, so never refusing, with a
/// typical per-client burst of 100: heijunka writes header numbers below 1000
/// without allocating, larger ones allocate as tower-governor's always do), the
/// same key (the peer IP, read from axum's `ConnectInfo` request extension, which
/// is where tower-governor's `PeerIpKeyExtractor` reads it), the
/// same request built the same way, the same inner service returning an axum
/// body (tower-governor needs `Response<axum::body::Body>: From<GovernorError>`).
fn keyed_layer(c: &mut Criterion) {
    use std::net::{IpAddr, SocketAddr};

    use axum::extract::ConnectInfo;
    use heijunka::backpressure::KeyedRateLimiter;
    use heijunka::tower::{KeyedRateLimitLayer, PeerIp, RateLimitHeaders};
    use tower::{Layer, Service, ServiceExt};
    use tower_governor::GovernorLayer;
    use tower_governor::governor::GovernorConfigBuilder;

    type Req = http::Request<()>;
    type Res = http::Response<axum::body::Body>;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let inner = || {
        tower::service_fn(|_req: Req| async {
            Ok::<_, std::convert::Infallible>(Res::new(axum::body::Body::empty()))
        })
    };
    let request = |addr: SocketAddr| {
        let mut req = Req::new(());
        req.extensions_mut().insert(ConnectInfo(addr));
        req
    };
    /// Times `iters` requests through `svc`, cycling through `addrs`.
    fn run<S>(
        rt: &tokio::runtime::Runtime,
        svc: &mut S,
        addrs: &[SocketAddr],
        request: impl Fn(SocketAddr) -> Req,
        iters: u64,
    ) -> Duration
    where
        S: Service<Req, Response = Res>,
        S::Error: std::fmt::Debug,
    {
        rt.block_on(async {
            let mut i = 0;
            let start = std::time::Instant::now();
            for _ in 0..iters {
                i = if i + 1 == addrs.len() { 0 } else { i + 1 };
                let svc = svc.ready().await.expect("ready");
                let resp = svc
                    .call(request(black_box(addrs[i])))
                    .await
                    .expect("admitted");
                drop(black_box(resp));
            }
            start.elapsed()
        })
    }

    let mut g = c.benchmark_group("policy/keyed_layer");
    for keys in [1_u32, 1000] {
        let addrs: Vec<SocketAddr> = (0..keys)
            .map(|k| SocketAddr::new(IpAddr::from([10, 0, (k >> 8) as u8, k as u8]), 40_000))
            .collect();
        for headers in [false, true] {
            let param = format!("keys={keys}{}", if headers { ",headers" } else { "" });

            let limiter = KeyedRateLimiter::builder(1e9)
                .burst(100)
                .max_keys(2 * keys as usize)
                .build()
                .expect("valid");
            let key = PeerIp::new()
                .peer_addr_from(|ext| ext.get::<ConnectInfo<SocketAddr>>().map(|c| c.0));
            let mut ours = KeyedRateLimitLayer::new(limiter, key)
                .headers(if headers {
                    RateLimitHeaders::XRateLimit
                } else {
                    RateLimitHeaders::Off
                })
                .layer(inner());
            // Every key known before timing.
            run(&rt, &mut ours, &addrs, request, u64::from(keys));
            g.bench_function(criterion::BenchmarkId::new("heijunka", &param), |b| {
                b.iter_custom(|iters| run(&rt, &mut ours, &addrs, request, iters))
            });

            let mut config = GovernorConfigBuilder::default();
            config.per_nanosecond(1).burst_size(100);
            if headers {
                let layer = GovernorLayer::new(config.use_headers().finish().expect("valid"));
                let mut theirs = layer.layer(inner());
                run(&rt, &mut theirs, &addrs, request, u64::from(keys));
                g.bench_function(criterion::BenchmarkId::new("tower_governor", &param), |b| {
                    b.iter_custom(|iters| run(&rt, &mut theirs, &addrs, request, iters))
                });
            } else {
                let layer = GovernorLayer::new(config.finish().expect("valid"));
                let mut theirs = layer.layer(inner());
                run(&rt, &mut theirs, &addrs, request, u64::from(keys));
                g.bench_function(criterion::BenchmarkId::new("tower_governor", &param), |b| {
                    b.iter_custom(|iters| run(&rt, &mut theirs, &addrs, request, iters))
                });
            }
        }
    }
    g.finish();
}

criterion_group!(
    benches,
    baselines,
    admit,
    tower_layers,
    tower_policy_stack,
    tower_concurrency,
    keyed_layer
);
criterion_main!(benches);
