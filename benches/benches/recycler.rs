//! `recycler/*`: get + return of a 4 KiB `Vec<u8>` against `lockfree-object-pool`
//! (its linear and spin-lock pools) and `object-pool`, single-threaded and with
//! threads; against allocating a fresh `Vec::with_capacity(4096)`; and the shared
//! handle's clone + drop against `Arc`'s.
//!
//! Every side does the same work per operation: take a buffer, write one byte,
//! clear it (the reset), give it back. Every pool is warmed before timing.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use heijunka_benches::{baselines, contended};
use heijunka_recycler::Recycler;
use lockfree_object_pool::{LinearObjectPool, SpinLockObjectPool};

const SIZE: usize = 4096;

fn buffer() -> Vec<u8> {
    Vec::with_capacity(SIZE)
}

fn heijunka_pool() -> Recycler<Vec<u8>> {
    // Default per-thread cache (8); a shared store large enough for any thread count
    // here, as the peers grow without bound.
    Recycler::builder(buffer)
        .capacity(1024)
        .build()
        .expect("valid")
}

// The peers reset with `clear` too (lockfree-object-pool's reset closure runs on
// return); `object-pool` has no reset hook, so its side clears before dropping.
fn linear_pool() -> LinearObjectPool<Vec<u8>> {
    LinearObjectPool::new(buffer, |v| v.clear())
}

fn spin_lock_pool() -> SpinLockObjectPool<Vec<u8>> {
    SpinLockObjectPool::new(buffer, |v| v.clear())
}

fn object_pool() -> object_pool::Pool<Vec<u8>> {
    object_pool::Pool::new(64, buffer)
}

/// Thread counts for the contended cases: 1 and 2 here (2 cores), up to 16 where
/// the machine has the cores.
fn thread_counts() -> Vec<usize> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    [1, 2, 4, 8, 16]
        .into_iter()
        .filter(|&t| t <= cores.max(2))
        .collect()
}

fn get_return(c: &mut Criterion) {
    let mut g = c.benchmark_group("recycler/get_return");

    let pool = heijunka_pool();
    drop(pool.get());
    g.bench_function("heijunka", |b| {
        b.iter(|| {
            let mut v = black_box(&pool).get();
            v.push(black_box(1));
        })
    });

    let linear = linear_pool();
    drop(linear.pull());
    g.bench_function("lockfree_object_pool_linear", |b| {
        b.iter(|| {
            let mut v = black_box(&linear).pull();
            v.push(black_box(1));
        })
    });

    let spin = spin_lock_pool();
    drop(spin.pull());
    g.bench_function("lockfree_object_pool_spin_lock", |b| {
        b.iter(|| {
            let mut v = black_box(&spin).pull();
            v.push(black_box(1));
        })
    });

    let op = object_pool();
    g.bench_function("object_pool", |b| {
        b.iter(|| {
            let mut v = black_box(&op).pull(buffer);
            v.push(black_box(1));
            v.clear();
        })
    });

    // No pool: what recycling saves.
    g.bench_function("vec_with_capacity", |b| {
        b.iter(|| {
            let mut v = buffer();
            v.push(black_box(1));
            black_box(&v);
        })
    });
    g.finish();
}

fn get_return_threads(c: &mut Criterion) {
    // Each thread takes and returns its own buffers from one pool shared by all;
    // criterion's time is per operation per thread, so aggregate throughput is
    // threads / time.
    let mut g = c.benchmark_group("recycler/get_return_threads");
    for threads in thread_counts() {
        let pool = heijunka_pool();
        g.bench_with_input(BenchmarkId::new("heijunka", threads), &threads, |b, &t| {
            b.iter_custom(|iters| {
                let pool = pool.clone();
                contended(t, iters, move |_| {
                    let mut v = pool.get();
                    v.push(black_box(1));
                })
            })
        });

        let linear = Arc::new(linear_pool());
        g.bench_with_input(
            BenchmarkId::new("lockfree_object_pool_linear", threads),
            &threads,
            |b, &t| {
                b.iter_custom(|iters| {
                    let linear = Arc::clone(&linear);
                    contended(t, iters, move |_| {
                        let mut v = linear.pull();
                        v.push(black_box(1));
                    })
                })
            },
        );

        let spin = Arc::new(spin_lock_pool());
        g.bench_with_input(
            BenchmarkId::new("lockfree_object_pool_spin_lock", threads),
            &threads,
            |b, &t| {
                b.iter_custom(|iters| {
                    let spin = Arc::clone(&spin);
                    contended(t, iters, move |_| {
                        let mut v = spin.pull();
                        v.push(black_box(1));
                    })
                })
            },
        );

        let op = Arc::new(object_pool());
        g.bench_with_input(
            BenchmarkId::new("object_pool", threads),
            &threads,
            |b, &t| {
                b.iter_custom(|iters| {
                    let op = Arc::clone(&op);
                    contended(t, iters, move |_| {
                        let mut v = op.pull(buffer);
                        v.push(black_box(1));
                        v.clear();
                    })
                })
            },
        );
    }
    g.finish();
}

fn shared_clone_drop(c: &mut Criterion) {
    // One more handle to a value many readers hold: clone + drop, the last handle
    // staying alive (as while an event is being fanned out).
    let mut g = c.benchmark_group("recycler/shared_clone_drop");
    let pool = heijunka_pool();
    let shared = pool.get().into_shared();
    g.bench_function("heijunka", |b| b.iter(|| drop(black_box(&shared).clone())));
    let arc = Arc::new(buffer());
    g.bench_function("arc", |b| b.iter(|| drop(black_box(&arc).clone())));
    g.finish();
}

fn shared_fan_out(c: &mut Criterion) {
    // A whole fan-out to 4 subscribers: take a buffer, share it, 4 clones, all
    // dropped (the value goes back). Against a fresh `Arc<Vec>` per event.
    let mut g = c.benchmark_group("recycler/shared_fan_out_4");
    let pool = heijunka_pool();
    drop(pool.get().into_shared());
    g.bench_function("heijunka", |b| {
        b.iter(|| {
            let mut v = black_box(&pool).get();
            v.push(black_box(1));
            let event = v.into_shared();
            let subscribers = [event.clone(), event.clone(), event.clone(), event];
            black_box(&subscribers);
        })
    });
    g.bench_function("arc_with_capacity", |b| {
        b.iter(|| {
            let mut v = buffer();
            v.push(black_box(1));
            let event = Arc::new(v);
            let subscribers = [event.clone(), event.clone(), event.clone(), event];
            black_box(&subscribers);
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    baselines,
    get_return,
    get_return_threads,
    shared_clone_drop,
    shared_fan_out
);
criterion_main!(benches);
