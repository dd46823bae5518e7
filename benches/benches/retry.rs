//! `retry/*`: the resilience-pattern layers of `heijunka-retry` on the path
//! where nothing fails, against tower-resilience's equivalent layers and, for
//! retry with a budget, tower's own `Retry` with a `TpsBudget`; each group times
//! the bare service too (overhead = layer - bare). One request at a time on a
//! current-thread runtime; the inner service answers at once.
//!
//! - `retry/retry`: 3 attempts, exponential backoff, no failure.
//! - `retry/retry_budget`: the same with a retry budget (10 %, 10/s, 10 s):
//!   a deposit per request.
//! - `retry/hedge`: one hedge after 100 ms; the first attempt answers at once.
//! - `retry/fallback`: a fallback value, no failure.
//! - `retry/coalesce`: one caller at a time (every call starts and ends its
//!   own flight).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use heijunka_benches::baselines;
use heijunka_retry::tower::{CoalesceLayer, FallbackLayer, HedgeLayer, RetryLayer};
use heijunka_retry::{Backoff, Budget, Coalesce, Fallback, Hedge, HedgeDelay, Retry};
use tower::retry::budget::{Budget as _, TpsBudget};
use tower::{Layer, Service, ServiceExt};

/// The inner service's error: `Clone` and `Error`, as tower-resilience's hedge
/// and coalesce layers require.
#[derive(Clone, Debug)]
struct BenchError;

impl std::fmt::Display for BenchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("bench error")
    }
}

impl std::error::Error for BenchError {}

fn inner() -> impl Service<
    u64,
    Response = u64,
    Error = BenchError,
    Future = std::future::Ready<Result<u64, BenchError>>,
> + Clone
+ Send
+ 'static {
    tower::service_fn(|req: u64| std::future::ready(Ok::<_, BenchError>(req)))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime")
}

/// Times `iters` requests through `svc`, one at a time.
fn drive<S>(rt: &tokio::runtime::Runtime, svc: &mut S, iters: u64) -> Duration
where
    S: Service<u64>,
    S::Error: std::fmt::Debug,
{
    rt.block_on(async {
        let start = Instant::now();
        for i in 0..iters {
            let svc = svc.ready().await.expect("ready");
            let out = svc.call(black_box(i)).await.expect("ok");
            black_box(out);
        }
        start.elapsed()
    })
}

/// tower's `Retry` policy with a `TpsBudget`: deposits on success, withdraws
/// for each retry, at most `attempts` retries.
#[derive(Clone)]
struct Budgeted {
    budget: Arc<TpsBudget>,
    retries_left: usize,
}

impl<Req: Clone, Res, E> tower::retry::Policy<Req, Res, E> for Budgeted {
    type Future = std::future::Ready<()>;

    fn retry(&mut self, _req: &mut Req, result: &mut Result<Res, E>) -> Option<Self::Future> {
        match result {
            Ok(_) => {
                self.budget.deposit();
                None
            }
            Err(_) if self.retries_left > 0 && self.budget.withdraw() => {
                self.retries_left -= 1;
                Some(std::future::ready(()))
            }
            Err(_) => None,
        }
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }
}

fn retry(c: &mut Criterion) {
    let rt = runtime();
    let backoff = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(10));

    let mut g = c.benchmark_group("retry/retry");
    let policy = Retry::builder()
        .max_attempts(3)
        .backoff(backoff)
        .idempotent(true)
        .build()
        .expect("valid");
    let mut ours = RetryLayer::new(policy).layer(inner());
    g.bench_function("heijunka", |b| b.iter_custom(|n| drive(&rt, &mut ours, n)));
    let mut theirs = tower_resilience::retry::RetryLayer::<u64, u64, BenchError>::builder()
        .max_attempts(3)
        .exponential_backoff(Duration::from_millis(100))
        .build()
        .layer(inner());
    g.bench_function("tower-resilience", |b| {
        b.iter_custom(|n| drive(&rt, &mut theirs, n))
    });
    let mut bare = inner();
    g.bench_function("bare", |b| b.iter_custom(|n| drive(&rt, &mut bare, n)));
    g.finish();

    let mut g = c.benchmark_group("retry/retry_budget");
    let budget = Budget::builder()
        .ratio(0.1)
        .floor_per_sec(10)
        .window(Duration::from_secs(10))
        .build()
        .expect("valid");
    let policy = Retry::builder()
        .max_attempts(3)
        .backoff(backoff)
        .budget(budget)
        .idempotent(true)
        .build()
        .expect("valid");
    let mut ours = RetryLayer::new(policy).layer(inner());
    g.bench_function("heijunka", |b| b.iter_custom(|n| drive(&rt, &mut ours, n)));
    let tps = Arc::new(TpsBudget::new(Duration::from_secs(10), 10, 0.1));
    let mut theirs = tower::retry::RetryLayer::new(Budgeted {
        budget: tps,
        retries_left: 2,
    })
    .layer(inner());
    g.bench_function("tower-tps-budget", |b| {
        b.iter_custom(|n| drive(&rt, &mut theirs, n))
    });
    g.finish();
}

fn hedge(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("retry/hedge");
    let policy = Hedge::builder()
        .delay(HedgeDelay::Fixed(Duration::from_millis(100)))
        .max_hedges(1)
        .idempotent(true)
        .build()
        .expect("valid");
    let mut ours = HedgeLayer::new(policy).layer(inner());
    g.bench_function("heijunka", |b| b.iter_custom(|n| drive(&rt, &mut ours, n)));
    let mut theirs = tower_resilience::hedge::HedgeLayer::builder()
        .delay(Duration::from_millis(100))
        .max_hedged_attempts(2)
        .build()
        .layer(inner());
    g.bench_function("tower-resilience", |b| {
        b.iter_custom(|n| drive(&rt, &mut theirs, n))
    });
    let mut bare = inner();
    g.bench_function("bare", |b| b.iter_custom(|n| drive(&rt, &mut bare, n)));
    g.finish();
}

fn fallback(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("retry/fallback");
    let mut ours = FallbackLayer::new(Fallback::value(0_u64)).layer(inner());
    g.bench_function("heijunka", |b| b.iter_custom(|n| drive(&rt, &mut ours, n)));
    let mut theirs =
        tower_resilience::fallback::FallbackLayer::<u64, u64, BenchError>::value(0).layer(inner());
    g.bench_function("tower-resilience", |b| {
        b.iter_custom(|n| drive(&rt, &mut theirs, n))
    });
    let mut bare = inner();
    g.bench_function("bare", |b| b.iter_custom(|n| drive(&rt, &mut bare, n)));
    g.finish();
}

fn coalesce(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("retry/coalesce");
    let mut ours = CoalesceLayer::new(Coalesce::new(), |req: &u64| *req).layer(inner());
    g.bench_function("heijunka", |b| b.iter_custom(|n| drive(&rt, &mut ours, n)));
    let mut theirs =
        tower_resilience::coalesce::CoalesceLayer::new(|req: &u64| *req).layer(inner());
    g.bench_function("tower-resilience", |b| {
        b.iter_custom(|n| drive(&rt, &mut theirs, n))
    });
    let mut bare = inner();
    g.bench_function("bare", |b| b.iter_custom(|n| drive(&rt, &mut bare, n)));
    g.finish();
}

criterion_group!(benches, baselines, retry, hedge, fallback, coalesce);
criterion_main!(benches);
