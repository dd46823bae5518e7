//! `core/*`: the core clock against `std::time::Instant`.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use heijunka_benches::{baselines, contended};
use heijunka_core::Clock;

fn now(c: &mut Criterion) {
    let mut g = c.benchmark_group("core/now");
    let clock = Clock::system();
    g.bench_function("heijunka", |b| b.iter(|| black_box(&clock).now()));
    g.bench_function("std", |b| b.iter(std::time::Instant::now));
    g.finish();
}

fn elapsed(c: &mut Criterion) {
    // Elapsed time since a start instant: the operation rate limiters and breakers
    // actually perform.
    let mut g = c.benchmark_group("core/elapsed");
    let clock = Clock::system();
    let start = clock.now();
    g.bench_function("heijunka", |b| b.iter(|| black_box(&clock).elapsed(start)));
    let std_start = std::time::Instant::now();
    g.bench_function("std", |b| b.iter(|| black_box(std_start).elapsed()));
    g.finish();
}

fn now_contended(c: &mut Criterion) {
    let mut g = c.benchmark_group("core/now_contended");
    for threads in [1_usize, 2] {
        g.bench_with_input(BenchmarkId::new("heijunka", threads), &threads, |b, &t| {
            let clock = Clock::system();
            b.iter_custom(|iters| {
                let clock = clock.clone();
                contended(t, iters, move |_| {
                    black_box(clock.now());
                })
            })
        });
        g.bench_with_input(BenchmarkId::new("std", threads), &threads, |b, &t| {
            b.iter_custom(|iters| {
                contended(t, iters, |_| {
                    black_box(std::time::Instant::now());
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, baselines, now, elapsed, now_contended);
criterion_main!(benches);
