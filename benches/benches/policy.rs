//! `policy/*`: the facade's policy pipeline, admitting path, with every stage
//! configured (rate limit, memory gate, a shed signal, concurrency limit,
//! breaker), against the same stages called one after another by hand; the
//! tower layers against tower's own; and the keyed (per-client) rate-limit layer
//! against tower-governor.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use heijunka::backpressure::{ConcurrencyLimit, Gcra, RateLimiter};
use heijunka::breaker::CircuitBreaker;
use heijunka::context::RequestContext;
use heijunka::memory::{ManualProbe, MemoryGate, MemoryMonitor};
use heijunka::policy::Policy;
use heijunka_benches::baselines;

fn gate() -> MemoryGate {
    let probe = ManualProbe::new(1 << 40);
    probe.set_rss(1);
    let monitor = MemoryMonitor::builder()
        .limit(1 << 30)
        .probe(probe)
        .build()
        .expect("valid");
    monitor.sample_now().expect("sample");
    MemoryGate::builder(&monitor).build().expect("valid")
}

fn admit(c: &mut Criterion) {
    let mut g = c.benchmark_group("policy/admit_all_stages");
    // Rates high enough never to refuse during the run.
    let policy = Policy::builder()
        .timeout(Duration::from_secs(30))
        .rate_limiter(Gcra::builder(1e9).burst(1_000_000).build().expect("valid"))
        .memory_gate(gate())
        .shed_signal("queue", || Ok(()))
        .concurrency_limit(ConcurrencyLimit::new(1024).expect("valid"))
        .breaker(
            CircuitBreaker::builder()
                .name("dep")
                .build()
                .expect("valid"),
        )
        .build()
        .expect("valid");
    let ctx = RequestContext::new();
    g.bench_function("heijunka", |b| {
        b.iter(|| {
            let a = policy.try_admit(black_box(&ctx)).expect("admitted");
            a.success();
        })
    });

    // The same stages by hand: what composition adds on top of them.
    let rate = Gcra::builder(1e9).burst(1_000_000).build().expect("valid");
    let memory = gate();
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
                let start = std::time::Instant::now();
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
                let start = std::time::Instant::now();
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

criterion_group!(benches, baselines, admit, tower_layers, keyed_layer);
criterion_main!(benches);
