//! `pool/*`: the worker pool against `threadpool`, `rayon::spawn` and tokio's
//! `spawn_blocking` on 100,000 tiny tasks; the task pool's `try_spawn` against
//! `tokio::spawn` behind a semaphore; rejection when full.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use heijunka_benches::baselines;
use heijunka_pool::{TaskPool, WorkerPool};
use tokio::sync::Semaphore;

const TASKS: usize = 100_000;
/// Workers on every side (this machine has 2 cores).
const WORKERS: usize = 2;

fn wait_for(done: &AtomicUsize, n: usize) {
    while done.load(Ordering::Acquire) < n {
        std::thread::yield_now();
    }
}

/// Submit + run + completion signal of 100k tiny tasks; time per batch. heijunka
/// runs with its default bound (1024 queued tasks: the submitter waits while it is
/// full); the peers' queues are unbounded.
fn tiny_tasks(c: &mut Criterion) {
    let mut g = c.benchmark_group("pool/100k_tiny_tasks");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(4));

    let pool = WorkerPool::builder()
        .workers(WORKERS)
        .queue_capacity(1024)
        .build()
        .expect("valid");
    g.bench_function("heijunka", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let done = Arc::new(AtomicUsize::new(0));
                let start = Instant::now();
                for _ in 0..TASKS {
                    let d = Arc::clone(&done);
                    // Detached: the handle is dropped, as with the peers.
                    drop(pool.execute(move || {
                        d.fetch_add(1, Ordering::Release);
                    }));
                }
                wait_for(&done, TASKS);
                total += start.elapsed();
            }
            total
        })
    });

    let tp = threadpool::ThreadPool::new(WORKERS);
    g.bench_function("threadpool", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let done = Arc::new(AtomicUsize::new(0));
                let start = Instant::now();
                for _ in 0..TASKS {
                    let d = Arc::clone(&done);
                    tp.execute(move || {
                        d.fetch_add(1, Ordering::Release);
                    });
                }
                wait_for(&done, TASKS);
                total += start.elapsed();
            }
            total
        })
    });

    let rp = rayon::ThreadPoolBuilder::new()
        .num_threads(WORKERS)
        .build()
        .expect("rayon pool");
    g.bench_function("rayon", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let done = Arc::new(AtomicUsize::new(0));
                let start = Instant::now();
                for _ in 0..TASKS {
                    let d = Arc::clone(&done);
                    rp.spawn(move || {
                        d.fetch_add(1, Ordering::Release);
                    });
                }
                wait_for(&done, TASKS);
                total += start.elapsed();
            }
            total
        })
    });

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(WORKERS)
        .build()
        .expect("runtime");
    g.bench_function("tokio", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let done = Arc::new(AtomicUsize::new(0));
                let start = Instant::now();
                for _ in 0..TASKS {
                    let d = Arc::clone(&done);
                    drop(rt.spawn_blocking(move || {
                        d.fetch_add(1, Ordering::Release);
                    }));
                }
                wait_for(&done, TASKS);
                total += start.elapsed();
            }
            total
        })
    });
    g.finish();
    pool.shutdown(Duration::from_secs(10));
}

/// `TaskPool::try_spawn` against `tokio::spawn` behind a `Semaphore` permit; both
/// spawn a trivial future on the same runtime, which drains them between samples.
fn try_spawn(c: &mut Criterion) {
    let mut g = c.benchmark_group("pool/task_try_spawn");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .expect("runtime");
    let _enter = rt.enter();
    let pool = TaskPool::builder()
        .max_running(1 << 20)
        .max_waiting(0)
        .build()
        .expect("valid");
    g.bench_function("heijunka", |b| {
        b.iter(|| drop(black_box(pool.try_spawn(async {}))))
    });
    let semaphore = Arc::new(Semaphore::new(1 << 20));
    g.bench_function("tokio", |b| {
        b.iter(|| {
            let permit = Arc::clone(&semaphore).try_acquire_owned();
            drop(black_box(tokio::spawn(async move {
                drop(permit);
            })))
        })
    });
    g.finish();
}

/// The cost of being told "full": both pools saturated.
fn rejection(c: &mut Criterion) {
    let mut g = c.benchmark_group("pool/reject_when_full");
    let pool = WorkerPool::builder()
        .workers(1)
        .queue_capacity(1)
        .build()
        .expect("valid");
    let gate = Arc::new(std::sync::Barrier::new(2));
    let g2 = Arc::clone(&gate);
    let _blocker = pool.submit(move || g2.wait());
    while pool.stats().active < 1 {
        std::thread::yield_now();
    }
    let _queued = pool.submit(|| ());
    g.bench_function("heijunka", |b| {
        b.iter(|| black_box(pool.try_submit(|| ())).is_err())
    });
    g.finish();
    gate.wait();
    pool.shutdown(Duration::from_secs(10));
}

criterion_group!(benches, baselines, tiny_tasks, try_spawn, rejection);
criterion_main!(benches);
