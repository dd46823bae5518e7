//! `pool/*` (part 2): a task group of 10,000 tiny tasks at most 8 at a time
//! against the hand-rolled `tokio::sync::Semaphore` + `JoinSet` equivalent; the
//! dispatcher's per-message time through 4 workers, least-loaded and by key.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use heijunka_benches::baselines;
use heijunka_pool::{Dispatcher, Group};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;

const TASKS: u64 = 10_000;
const MAX: usize = 8;

async fn heijunka_group() -> u64 {
    let mut group = Group::builder()
        .max_concurrency(MAX)
        .build()
        .expect("valid");
    for i in 0..TASKS {
        group
            .spawn(move |_| async move { Ok::<_, ()>(black_box(i)) })
            .await;
    }
    let mut sum = 0;
    while let Some((_, r)) = group.next().await {
        sum += r.expect("no failure");
    }
    sum
}

/// The same shape as the group, by hand: a permit before each spawn, the permit
/// dropped when the task ends, every result joined.
async fn semaphore_joinset() -> u64 {
    let semaphore = Arc::new(Semaphore::new(MAX));
    let mut set = JoinSet::new();
    for i in 0..TASKS {
        let permit = Arc::clone(&semaphore)
            .acquire_owned()
            .await
            .expect("never closed");
        set.spawn(async move {
            let v = black_box(i);
            drop(permit);
            Ok::<_, ()>(v)
        });
    }
    let mut sum = 0;
    while let Some(r) = set.join_next().await {
        sum += r.expect("no panic").expect("no failure");
    }
    sum
}

/// Spawn 10,000 futures that return their input, at most 8 at a time, wait for
/// all and sum the values; on a current-thread runtime (the overhead alone) and
/// on a two-thread runtime (this machine has 2 cores; cross-thread wake-ups
/// dominate there).
fn group_10k(c: &mut Criterion) {
    let mut g = c.benchmark_group("pool/group_10k_c8");
    g.sample_size(20);
    let runtimes = [
        (
            "current_thread",
            tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime"),
        ),
        (
            "multi_thread_2",
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .build()
                .expect("runtime"),
        ),
    ];
    for (flavor, rt) in &runtimes {
        g.bench_function(BenchmarkId::new("heijunka", flavor), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        assert_eq!(heijunka_group().await, TASKS * (TASKS - 1) / 2);
                    }
                    start.elapsed()
                })
            })
        });
        g.bench_function(BenchmarkId::new("tokio-semaphore-joinset", flavor), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        assert_eq!(semaphore_joinset().await, TASKS * (TASKS - 1) / 2);
                    }
                    start.elapsed()
                })
            })
        });
    }
    g.finish();
}

type Job = (u64, oneshot::Sender<u64>);

/// The floor a dispatcher is measured against: 4 tokio tasks, each draining its
/// own bounded mpsc channel and answering through a oneshot, with no handler
/// lookup, no load counters, no panic catching and no statistics.
fn hand_rolled(rt: &tokio::runtime::Runtime, capacity: usize) -> Vec<mpsc::Sender<Job>> {
    (0..4)
        .map(|_| {
            let (tx, mut rx) = mpsc::channel::<Job>(capacity);
            rt.spawn(async move {
                while let Some((x, reply)) = rx.recv().await {
                    let _ = reply.send(x);
                }
            });
            tx
        })
        .collect()
}

/// Messages per second through 4 workers with a trivial handler: `iters`
/// messages dispatched (waiting for room when a queue is full), every reply
/// awaited; criterion reports the time per message. `tokio-mpsc` is the
/// hand-rolled floor of [`hand_rolled`], round-robin (least-loaded) or by
/// `key % 4` (affinity).
fn dispatch(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("runtime");
    let d: Dispatcher<u64, u64, ()> = rt.block_on(async {
        let d = Dispatcher::builder()
            .workers(4)
            .queue_capacity(1024)
            .build()
            .expect("valid");
        d.register("echo", |x| async move { Ok(x) })
            .expect("fresh name");
        d
    });
    for (name, keyed) in [
        ("pool/dispatch_4w_least_loaded", false),
        ("pool/dispatch_4w_affinity", true),
    ] {
        let mut g = c.benchmark_group(name);
        g.measurement_time(Duration::from_secs(3));
        g.bench_function("heijunka", |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut replies = Vec::with_capacity(iters as usize);
                    let start = Instant::now();
                    for i in 0..iters {
                        let reply = if keyed {
                            d.dispatch_keyed("echo", &(i % 64), i).await
                        } else {
                            d.dispatch("echo", i).await
                        };
                        replies.push(reply.expect("accepted"));
                    }
                    for r in replies.drain(..) {
                        black_box(r.await.expect("echo"));
                    }
                    start.elapsed()
                })
            })
        });
        let peers = hand_rolled(&rt, 1024);
        g.bench_function("tokio-mpsc", |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut replies = Vec::with_capacity(iters as usize);
                    let start = Instant::now();
                    for i in 0..iters {
                        let w = if keyed { (i % 64) % 4 } else { i % 4 };
                        let (tx, rx) = oneshot::channel();
                        peers[w as usize].send((i, tx)).await.expect("open");
                        replies.push(rx);
                    }
                    for r in replies.drain(..) {
                        black_box(r.await.expect("echo"));
                    }
                    start.elapsed()
                })
            })
        });
        g.finish();
    }
    // The caller-side cost alone: `try_dispatch` into queues large enough for a
    // whole sample, drained (outside the timing) before the next.
    let mut g = c.benchmark_group("pool/dispatch_try_overhead");
    let big: Dispatcher<u64, u64, ()> = rt.block_on(async {
        let d = Dispatcher::builder()
            .workers(4)
            .queue_capacity(1 << 20)
            .build()
            .expect("valid");
        d.register("echo", |x| async move { Ok(x) })
            .expect("fresh name");
        d
    });
    g.bench_function("heijunka", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut replies = Vec::with_capacity(iters as usize);
                let start = Instant::now();
                for i in 0..iters {
                    match big.try_dispatch("echo", i) {
                        Ok(r) => replies.push(r),
                        Err(e) => panic!("rejected: {e}"),
                    }
                }
                let took = start.elapsed();
                for r in replies.drain(..) {
                    black_box(r.await.expect("echo"));
                }
                took
            })
        })
    });
    let peers = hand_rolled(&rt, 1 << 20);
    g.bench_function("tokio-mpsc", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut replies = Vec::with_capacity(iters as usize);
                let start = Instant::now();
                for i in 0..iters {
                    let (tx, rx) = oneshot::channel();
                    if peers[(i % 4) as usize].try_send((i, tx)).is_err() {
                        panic!("rejected");
                    }
                    replies.push(rx);
                }
                let took = start.elapsed();
                for r in replies.drain(..) {
                    black_box(r.await.expect("echo"));
                }
                took
            })
        })
    });
    g.finish();
}

criterion_group!(benches, baselines, group_10k, dispatch);
criterion_main!(benches);
