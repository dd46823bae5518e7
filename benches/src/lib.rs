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
