//! `metrics/*`: what the `metrics` feature costs (this target needs it:
//! `cargo bench -p heijunka-benches --features metrics --bench metrics`).
//!
//! `metrics/policy_admit`: one request through the policy with every stage
//! configured (`try_admit` + `success`, the workload of `policy/admit_all_stages`):
//! `heijunka` with a `metrics-exporter-prometheus` recorder installed when the
//! policy was built (every update lands in the exporter's storage: the policy's
//! counter, in-flight gauge, clock read and latency histogram, and the limiter's
//! and breaker's own series), against `no-recorder`, the same build with no
//! recorder installed (every handle a no-op). The feature's cost per request is
//! the difference; `no-recorder` against `policy/admit_all_stages` (built without
//! the feature) is what compiling it in costs when nothing is installed.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use heijunka::context::RequestContext;
use heijunka::policy::Policy;
use heijunka_benches::{all_stages_policy, baselines};

fn policy_admit(c: &mut Criterion) {
    let mut g = c.benchmark_group("metrics/policy_admit");
    let ctx = RequestContext::new();
    let mut run = |id: &str, policy: &Policy| {
        g.bench_function(id, |b| {
            b.iter(|| {
                let a = policy.try_admit(black_box(&ctx)).expect("admitted");
                a.success();
            })
        });
    };
    run("no-recorder", &all_stages_policy());
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let policy = metrics::with_local_recorder(&recorder, all_stages_policy);
    run("heijunka", &policy);
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
