//! `backpressure/*`: the concurrency limit against tokio's semaphore, GCRA against
//! governor (direct and keyed), the bounded queue against crossbeam's `ArrayQueue`.

use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use crossbeam::queue::ArrayQueue;
use governor::{Quota, RateLimiter as Governor};
use heijunka_backpressure::{BoundedQueue, ConcurrencyLimit, Gcra, KeyedRateLimiter, RateLimiter};
use heijunka_benches::{baselines, contended};
use tokio::sync::Semaphore;

/// Fairness: both limiters get a rate so high that every check is admitted, so both
/// take the same path (read the clock, one successful compare-and-swap).
const RATE: u32 = 1_000_000_000;

fn quota() -> Quota {
    Quota::per_second(NonZeroU32::new(RATE).expect("non-zero"))
        .allow_burst(NonZeroU32::new(1000).expect("non-zero"))
}

fn concurrency(c: &mut Criterion) {
    let mut g = c.benchmark_group("backpressure/try_acquire_release");
    let limit = ConcurrencyLimit::new(64).expect("valid");
    g.bench_function("heijunka", |b| {
        b.iter(|| drop(black_box(black_box(&limit).try_acquire())))
    });
    let semaphore = Semaphore::new(64);
    g.bench_function("tokio", |b| {
        b.iter(|| drop(black_box(black_box(&semaphore).try_acquire())))
    });
    g.finish();
}

fn gcra(c: &mut Criterion) {
    let mut g = c.benchmark_group("backpressure/gcra_check");
    let ours = Gcra::builder(f64::from(RATE))
        .burst(1000)
        .build()
        .expect("valid");
    g.bench_function("heijunka", |b| {
        b.iter(|| black_box(black_box(&ours).check()))
    });
    let theirs = Governor::direct(quota());
    g.bench_function("governor", |b| {
        b.iter(|| black_box(black_box(&theirs).check()))
    });
    g.finish();

    let mut g = c.benchmark_group("backpressure/gcra_check_contended");
    for threads in [1_usize, 2] {
        g.bench_with_input(BenchmarkId::new("heijunka", threads), &threads, |b, &t| {
            let ours = Arc::new(
                Gcra::builder(f64::from(RATE))
                    .burst(1000)
                    .build()
                    .expect("valid"),
            );
            b.iter_custom(|iters| {
                let l = Arc::clone(&ours);
                contended(t, iters, move |_| {
                    let _ = black_box(l.check());
                })
            })
        });
        g.bench_with_input(BenchmarkId::new("governor", threads), &threads, |b, &t| {
            let theirs = Arc::new(Governor::direct(quota()));
            b.iter_custom(|iters| {
                let l = Arc::clone(&theirs);
                contended(t, iters, move |_| {
                    let _ = black_box(l.check());
                })
            })
        });
    }
    g.finish();
}

fn keyed(c: &mut Criterion) {
    // 1024 known keys, checked round-robin: the steady state of a per-client limit.
    let mut g = c.benchmark_group("backpressure/keyed_check");
    let ours: KeyedRateLimiter<u64> = KeyedRateLimiter::builder(f64::from(RATE))
        .burst(1000)
        .build()
        .expect("valid");
    let theirs = Governor::dashmap(quota());
    for k in 0..1024_u64 {
        let _ = ours.check_key(&k);
        let _ = theirs.check_key(&k);
    }
    let mut i = 0_u64;
    g.bench_function("heijunka", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            black_box(ours.check_key(black_box(&i)))
        })
    });
    let mut j = 0_u64;
    g.bench_function("governor", |b| {
        b.iter(|| {
            j = (j + 1) & 1023;
            black_box(theirs.check_key(black_box(&j)))
        })
    });
    g.finish();
}

fn queue(c: &mut Criterion) {
    let mut g = c.benchmark_group("backpressure/queue_push_pop");
    let ours = BoundedQueue::new(1024).expect("valid");
    g.bench_function("heijunka", |b| {
        b.iter(|| {
            let q = black_box(&ours);
            let _ = q.try_push(black_box(1_u64));
            black_box(q.try_pop())
        })
    });
    let theirs = ArrayQueue::new(1024);
    g.bench_function("crossbeam", |b| {
        b.iter(|| {
            let q = black_box(&theirs);
            let _ = q.push(black_box(1_u64));
            black_box(q.pop())
        })
    });
    g.finish();
}

criterion_group!(benches, baselines, concurrency, gcra, keyed, queue);
criterion_main!(benches);
