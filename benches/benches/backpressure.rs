//! `backpressure/*`: the concurrency limit against tokio's semaphore, GCRA against
//! governor (direct and keyed), the bounded queue against crossbeam's `ArrayQueue`,
//! the adaptive limit against a static one, and the load shedder's admit path.

use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use crossbeam::queue::ArrayQueue;
use governor::{Quota, RateLimiter as Governor};
use heijunka_backpressure::{
    AdaptiveLimit, BoundedQueue, ConcurrencyLimit, Gcra, Gradient2, KeyedRateLimiter, LoadShedder,
    RateLimiter, Windowed, from_fn,
};
use heijunka_benches::{baselines, contended};
use heijunka_core::{PressureLevel, Rejection};
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

/// `AdaptiveLimit` admit + record a success (Gradient2 fed through a 1 s window, the
/// recommended setup) against a static `ConcurrencyLimit` admit + release: the
/// cost of adapting (two clock reads, one uncontended lock, the algorithm step).
fn adaptive(c: &mut Criterion) {
    let mut g = c.benchmark_group("backpressure/adaptive_acquire_record");
    let algorithm = Windowed::builder(Gradient2::builder().build().expect("valid"))
        .window(Duration::from_secs(1))
        .build()
        .expect("valid");
    let ours = AdaptiveLimit::builder(algorithm).build().expect("valid");
    g.bench_function("heijunka", |b| {
        b.iter(|| {
            if let Ok(p) = black_box(&ours).try_acquire() {
                p.success();
            }
        })
    });
    // The same admit, released with `ignore`: no second clock read, no lock, no
    // algorithm step; the gap to the row above is the cost of the sample.
    g.bench_function("heijunka-ignore", |b| {
        b.iter(|| {
            if let Ok(p) = black_box(&ours).try_acquire() {
                p.ignore();
            }
        })
    });
    let fixed = ConcurrencyLimit::new(64).expect("valid");
    g.bench_function("static-limit", |b| {
        b.iter(|| drop(black_box(black_box(&fixed).try_acquire())))
    });
    g.finish();
}

/// The load shedder's admit path with three signals that all admit: a queue's
/// pressure, a concurrency limit's free permits, and a user signal (a memory level
/// in an atomic).
fn shed(c: &mut Criterion) {
    let mut g = c.benchmark_group("backpressure/shed_admit_3_signals");
    let queue = Arc::new(BoundedQueue::<u64>::new(1024).expect("valid"));
    let limit = ConcurrencyLimit::new(64).expect("valid");
    let memory = Arc::new(AtomicU8::new(0));
    let m = Arc::clone(&memory);
    let shedder = LoadShedder::builder()
        .signal(queue)
        .signal(limit)
        .signal(from_fn(move || {
            if m.load(Ordering::Relaxed) >= 2 {
                Err(Rejection::MemoryPressure {
                    level: PressureLevel::Critical,
                })
            } else {
                Ok(())
            }
        }))
        .build();
    g.bench_function("heijunka", |b| {
        b.iter(|| black_box(black_box(&shedder).check()))
    });
    g.finish();
}

criterion_group!(
    benches,
    baselines,
    concurrency,
    gcra,
    keyed,
    queue,
    adaptive,
    shed
);
criterion_main!(benches);
