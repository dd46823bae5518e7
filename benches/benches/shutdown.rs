//! `shutdown/*`: the in-flight gate against tokio-util's `TaskTracker`, and drain
//! latency.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use heijunka_benches::{baselines, contended};
use heijunka_shutdown::Shutdown;
use tokio_util::task::TaskTracker;

/// `try_enter()` + drop of the guard on the running path, against
/// `TaskTracker::token()` + drop: both count one unit of in-flight work.
fn enter_leave(c: &mut Criterion) {
    let mut g = c.benchmark_group("shutdown/enter_leave");
    let shutdown = Shutdown::new();
    g.bench_function("heijunka", |b| {
        b.iter(|| drop(black_box(black_box(&shutdown).try_enter())))
    });
    let tracker = TaskTracker::new();
    g.bench_function("tokio-util", |b| {
        b.iter(|| drop(black_box(black_box(&tracker).token())))
    });
    g.finish();

    // The owned guard (an Arc clone more), the fair counterpart of a tracker token,
    // which also holds an Arc.
    let mut g = c.benchmark_group("shutdown/enter_leave_owned");
    g.bench_function("heijunka", |b| {
        b.iter(|| drop(black_box(black_box(&shutdown).try_enter_owned())))
    });
    g.bench_function("tokio-util", |b| {
        b.iter(|| drop(black_box(black_box(&tracker).token())))
    });
    g.finish();
}

fn enter_leave_contended(c: &mut Criterion) {
    let mut g = c.benchmark_group("shutdown/enter_leave_contended");
    for threads in [1_usize, 2] {
        g.bench_with_input(BenchmarkId::new("heijunka", threads), &threads, |b, &t| {
            let shutdown = Arc::new(Shutdown::new());
            b.iter_custom(|iters| {
                let s = Arc::clone(&shutdown);
                contended(t, iters, move |_| drop(black_box(s.try_enter())))
            })
        });
        g.bench_with_input(
            BenchmarkId::new("tokio-util", threads),
            &threads,
            |b, &t| {
                let tracker = TaskTracker::new();
                b.iter_custom(|iters| {
                    let tr = tracker.clone();
                    contended(t, iters, move |_| drop(black_box(tr.token())))
                })
            },
        );
    }
    g.finish();
}

/// Time from the last of 10,000 in-flight guards dropping to `wait()` returning.
/// Reported, not compared: the target is under 1 ms.
fn drain_latency(c: &mut Criterion) {
    let mut g = c.benchmark_group("shutdown/drain_latency_10k");
    g.sample_size(20);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    g.bench_function("heijunka", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let shutdown = Shutdown::new();
                let mut guards: Vec<_> = (0..10_000)
                    .map(|_| shutdown.try_enter_owned().expect("running"))
                    .collect();
                let last = guards.pop().expect("10,000 guards");
                {
                    // Inside the runtime, so the sequence the trigger starts runs on
                    // it (as the waiter does), not on a thread of its own.
                    let _rt = rt.enter();
                    shutdown.trigger();
                }
                let waiter = {
                    let s = shutdown.clone();
                    rt.spawn(async move { s.wait().await })
                };
                drop(guards);
                // Let the waiter reach its drain wait with one guard still held.
                while shutdown.phase() == heijunka_shutdown::Phase::Running {
                    std::thread::yield_now();
                }
                std::thread::sleep(Duration::from_millis(1));
                let start = Instant::now();
                drop(last);
                let report = rt.block_on(waiter).expect("waiter");
                total += start.elapsed();
                assert!(report.drained);
            }
            total
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    baselines,
    enter_leave,
    enter_leave_contended,
    drain_latency
);
criterion_main!(benches);
