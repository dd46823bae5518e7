//! `policy/*`: the facade's policy pipeline, admitting path, with every stage
//! configured (rate limit, memory gate, a shed signal, concurrency limit,
//! breaker), against the same stages called one after another by hand; and the
//! tower layers against tower's own.

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

criterion_group!(benches, baselines, admit, tower_layers);
criterion_main!(benches);
