//! `metrics/*`: what the `metrics` feature costs (this target needs it:
//! `cargo bench -p heijunka-benches --features metrics --bench metrics`).
//!
//! `metrics/policy_admit`: the admitting path alone, `try_admit` timed (the
//! admissions are held in a vector and released untimed, 512 at a time), and
//! `metrics/policy_request`: one whole request through the policy with every
//! stage configured (`try_admit` + `success`, the workload of
//! `policy/admit_all_stages`), each
//! `heijunka` with a `metrics-exporter-prometheus` recorder installed when the
//! policy was built (every update lands in the exporter's storage: the policy's
//! counter, in-flight gauge, clock read and latency histogram, and the limiter's
//! and breaker's own series), against `no-recorder`, the same build with no
//! recorder installed (every handle a no-op). The feature's cost per request is
//! the difference; `no-recorder` against `policy/admit_all_stages` (built without
//! the feature) is what compiling it in costs when nothing is installed.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use heijunka::context::RequestContext;
use heijunka::policy::Policy;
use heijunka_benches::{all_stages_policy, baselines};

/// `try_admit` alone, `iters` times: the admissions are held (the policy's limit
/// is 1024) and released untimed, 512 at a time.
fn admit_only(policy: &Policy, ctx: &RequestContext, iters: u64) -> Duration {
    let mut held = Vec::with_capacity(512);
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(512);
        let start = Instant::now();
        for _ in 0..n {
            held.push(policy.try_admit(black_box(ctx)).expect("admitted"));
        }
        total += start.elapsed();
        held.clear();
        left -= n;
    }
    total
}

fn policy_admit(c: &mut Criterion) {
    let ctx = RequestContext::new();
    let plain = all_stages_policy();
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let recorded = metrics::with_local_recorder(&recorder, all_stages_policy);

    let mut g = c.benchmark_group("metrics/policy_admit");
    for (id, policy) in [("no-recorder", &plain), ("heijunka", &recorded)] {
        g.bench_function(id, |b| {
            b.iter_custom(|iters| admit_only(policy, &ctx, iters))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("metrics/policy_request");
    for (id, policy) in [("no-recorder", &plain), ("heijunka", &recorded)] {
        g.bench_function(id, |b| {
            b.iter(|| {
                let a = policy.try_admit(black_box(&ctx)).expect("admitted");
                a.success();
            })
        });
    }
    g.finish();
    // The series really were recorded.
    let text = handle.render();
    assert!(
        text.contains("heijunka_policy_admitted_total"),
        "the recorder saw nothing: {text}"
    );
}

criterion_group!(benches, baselines, policy_admit);
criterion_main!(benches);
