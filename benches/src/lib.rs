//! Shared workloads for heijunka's criterion benchmarks.
//!
//! Every bench target (`benches/<area>.rs`) names its groups `<area>/<operation>` and
//! times one function per implementation (`heijunka`, and each peer by its crate
//! name) in the same group, so every comparison is side by side in one run;
//! `cargo xtask bench` turns the results into a table of ratios. Each target also
//! calls [`baselines`], so costs can be expressed in units that travel between
//! machines (an uncontended `fetch_add`, an `Instant::now()`, a `Box::new` + drop).

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::Criterion;

/// A memory gate over a manual probe far below its limit: it always admits.
pub fn all_stages_gate() -> heijunka::memory::MemoryGate {
    use heijunka::memory::{ManualProbe, MemoryGate, MemoryMonitor};
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

/// The policy of `policy/admit_all_stages` and `metrics/policy_admit`: every
/// stage configured (timeout, GCRA rate limit, memory gate, a shed signal,
/// concurrency limit, breaker), rates high enough never to refuse.
pub fn all_stages_policy() -> heijunka::policy::Policy {
    use heijunka::backpressure::{ConcurrencyLimit, Gcra};
    use heijunka::breaker::CircuitBreaker;
    heijunka::policy::Policy::builder()
        .name("bench")
        .timeout(Duration::from_secs(30))
        .rate_limiter(Gcra::builder(1e9).burst(1_000_000).build().expect("valid"))
        .memory_gate(all_stages_gate())
        .shed_signal("queue", || Ok(()))
        .concurrency_limit(ConcurrencyLimit::new(1024).expect("valid"))
        .breaker(
            CircuitBreaker::builder()
                .name("dep")
                .build()
                .expect("valid"),
        )
        .build()
        .expect("valid")
}

/// Times the three baselines of `shared/BENCHMARKS.md` in group `baseline`.
pub fn baselines(c: &mut Criterion) {
    let mut g = c.benchmark_group("baseline");
    let counter = AtomicU64::new(0);
    g.bench_function("fetch_add", |b| {
        b.iter(|| black_box(&counter).fetch_add(1, Ordering::Relaxed))
    });
    g.bench_function("instant_now", |b| b.iter(Instant::now));
    g.bench_function("box_new_drop", |b| {
        b.iter(|| drop(black_box(Box::new(black_box(42_u64)))))
    });
    g.finish();
}

/// Runs `op` `iters` times on each of `threads` threads and returns the wall time
/// from a start barrier to the last thread's finish, for `iter_custom`: thread
/// start-up stays outside the timed span. Each thread gets its index.
///
/// The returned time is for `iters` operations per thread running at once, so
/// criterion reports the time per operation *per thread*; aggregate throughput is
/// `threads / time`.
pub fn contended<F>(threads: usize, iters: u64, op: F) -> Duration
where
    F: Fn(usize) + Send + Sync + 'static,
{
    let op = Arc::new(op);
    let start = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let op = Arc::clone(&op);
            let start = Arc::clone(&start);
            std::thread::spawn(move || {
                start.wait();
                for _ in 0..iters {
                    op(t);
                }
            })
        })
        .collect();
    start.wait();
    let began = Instant::now();
    for h in handles {
        h.join().expect("benchmark thread panicked");
    }
    began.elapsed()
}

/// The tower stacks of `policy/tower_policy_stack` and `policy/tower_concurrency`,
/// shared by the bench and by `examples/tower_profile.rs` (a fixed-count loop to
/// run under callgrind): a trivial HTTP service, each stack around it, and the
/// request loop.
pub mod http_stacks {
    use std::convert::Infallible;
    use std::fmt::Debug;
    use std::future::Ready;
    use std::hint::black_box;
    use std::time::Duration;

    use heijunka::backpressure::{ConcurrencyLimit, Gcra};
    use heijunka::breaker::CircuitBreaker;
    use heijunka::policy::Policy;
    use heijunka::shutdown::Shutdown;
    use http_body_util::{BodyExt, Full};
    use tower::{Layer, Service, ServiceBuilder, ServiceExt};

    /// The response body: one static frame, no allocation.
    pub type HttpBody = Full<&'static [u8]>;
    /// The request.
    pub type HttpRequest = http::Request<()>;
    /// The trivial handler's type.
    pub type Handler = fn(HttpRequest) -> Ready<Result<http::Response<HttpBody>, Infallible>>;

    /// The policy timeout of both full stacks.
    pub const TIMEOUT: Duration = Duration::from_secs(30);
    /// A rate (per second) high enough never to refuse during a run.
    pub const RATE: u32 = 1_000_000_000;
    /// The rate limiters' burst.
    pub const BURST: u32 = 1_000_000;
    /// The concurrency limit of every stack.
    pub const LIMIT: u32 = 1024;

    /// The trivial service: `200 OK` with a one-frame body.
    pub fn hello(_req: HttpRequest) -> Ready<Result<http::Response<HttpBody>, Infallible>> {
        std::future::ready(Ok(http::Response::new(Full::new(&b"hello"[..]))))
    }

    /// The trivial service with an empty body (complete at the headers).
    pub fn hello_empty(_req: HttpRequest) -> Ready<Result<http::Response<HttpBody>, Infallible>> {
        std::future::ready(Ok(http::Response::new(Full::new(&b""[..]))))
    }

    /// heijunka's `PolicyLayer` with shutdown wired: timeout + GCRA rate +
    /// concurrency limit + breaker around `handler`.
    pub fn heijunka_policy(
        shutdown: &Shutdown,
        handler: Handler,
    ) -> heijunka::tower::PolicyService<tower::util::ServiceFn<Handler>> {
        heijunka::tower::PolicyLayer::new(policy())
            .shutdown(shutdown.token())
            .layer(tower::service_fn(handler))
    }

    /// [`heijunka_policy`] without the context in the request's extensions
    /// (handlers reach it with `RequestContext::current()`): the request's
    /// extensions map stays unallocated.
    pub fn heijunka_policy_lean(
        shutdown: &Shutdown,
        handler: Handler,
    ) -> heijunka::tower::PolicyService<tower::util::ServiceFn<Handler>> {
        heijunka::tower::PolicyLayer::new(policy())
            .shutdown(shutdown.token())
            .context_extension(false)
            .layer(tower::service_fn(handler))
    }

    /// The policy of [`heijunka_policy`]: timeout + GCRA rate + concurrency limit +
    /// breaker, rates high enough never to refuse.
    pub fn policy() -> Policy {
        Policy::builder()
            .timeout(TIMEOUT)
            .rate_limiter(
                Gcra::builder(f64::from(RATE))
                    .burst(BURST)
                    .build()
                    .expect("valid"),
            )
            .concurrency_limit(ConcurrencyLimit::new(LIMIT).expect("valid"))
            .breaker(
                CircuitBreaker::builder()
                    .name("dep")
                    .build()
                    .expect("valid"),
            )
            .build()
            .expect("valid")
    }

    /// tower-resilience's equivalent of [`heijunka_policy`], in the same order:
    /// `TimeLimiterLayer` + `RateLimiterLayer` (token bucket, no waiting) +
    /// `BulkheadLayer` (fail-fast) + `CircuitBreakerLayer` (a 5xx is a failure).
    /// Build it inside a runtime.
    pub fn resilience_stack(
        handler: Handler,
    ) -> impl Service<
        HttpRequest,
        Response = http::Response<HttpBody>,
        Error: Debug + Send,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static {
        use tower_resilience::circuitbreaker::CircuitBreakerLayer;
        use tower_resilience::ratelimiter::RateLimiterLayer;
        use tower_resilience::timelimiter::TimeLimiterLayer;
        ServiceBuilder::new()
            .layer(
                TimeLimiterLayer::builder()
                    .timeout_duration(TIMEOUT)
                    .cancel_running_future(true)
                    .build(),
            )
            .layer(
                RateLimiterLayer::burst(RATE as usize, BURST as usize)
                    .timeout_duration(Duration::ZERO)
                    .build()
                    .expect("valid"),
            )
            .layer(resilience_bulkhead())
            .layer(
                CircuitBreakerLayer::builder()
                    .name("dep")
                    .classify_response(|r: &http::Response<HttpBody>| r.status().is_server_error())
                    .build()
                    .expect("valid"),
            )
            .service(tower::service_fn(handler))
    }

    /// tower-resilience's `BulkheadLayer`, fail-fast as heijunka's limit.
    pub fn resilience_bulkhead() -> tower_resilience::bulkhead::BulkheadLayer {
        tower_resilience::bulkhead::BulkheadLayer::builder()
            .max_concurrent_calls(LIMIT as usize)
            .reject_when_full()
            .build()
            .expect("valid")
    }

    /// heijunka's `ConcurrencyLimitLayer` around `handler`.
    pub fn heijunka_limit(
        handler: Handler,
    ) -> heijunka::tower::ConcurrencyLimited<tower::util::ServiceFn<Handler>> {
        heijunka::tower::ConcurrencyLimitLayer::new(ConcurrencyLimit::new(LIMIT).expect("valid"))
            .layer(tower::service_fn(handler))
    }

    /// tower's `ConcurrencyLimitLayer` around `handler`.
    pub fn tower_limit(
        handler: Handler,
    ) -> tower::limit::ConcurrencyLimit<tower::util::ServiceFn<Handler>> {
        tower::limit::ConcurrencyLimitLayer::new(LIMIT as usize).layer(tower::service_fn(handler))
    }

    /// `iters` requests through `svc`: `ready`, `call`, await the response, then
    /// read its body to the end (when heijunka's layers let go of the permit; a
    /// body-agnostic layer let go with the headers): the same work for every stack.
    pub async fn drive<S, B>(svc: &mut S, iters: u64)
    where
        S: Service<HttpRequest, Response = http::Response<B>>,
        S::Error: Debug,
        B: http_body::Body + Unpin,
        B::Error: Debug,
    {
        for _ in 0..iters {
            let svc = svc.ready().await.expect("ready");
            let response = svc
                .call(black_box(http::Request::new(())))
                .await
                .expect("admitted");
            let mut body = response.into_body();
            while let Some(frame) = body.frame().await {
                drop(black_box(frame.expect("frame")));
            }
        }
    }
}
