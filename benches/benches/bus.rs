//! `bus/*`: one publisher fanning small events out to 1, 4 and 16 subscribers,
//! lossless, against `tokio::sync::broadcast` and `async-broadcast`; 4
//! publishers to 4 subscribers against `tokio::sync::broadcast`
//! (`bus/mpmc_4x4`); and the publish latency (p50 / p99) with 4 subscribers
//! under load, printed.
//!
//! Every side runs on the same 2-worker tokio runtime (this machine has 2
//! cores), each subscriber on its own task receiving all events; the time is
//! per published event, from the first publish to the last subscriber's last
//! receive. Subscribers are started before the clock starts.
//!
//! Fairness: heijunka and async-broadcast are bounded (1024 events) and make
//! the publisher wait when a subscriber is behind. `tokio::sync::broadcast` never
//! waits, it overwrites and reports lag instead; to stay lossless it is given a
//! ring as large as the whole run (no lag is possible), and every receiver
//! asserts it saw no `Lagged`. A second tokio side, `tokio-broadcast-bounded`,
//! has the same 1024-event bound as the others: its publisher keeps a count of
//! the sends that fit, refreshed from `Sender::len` (events the slowest receiver
//! has not seen; it takes the ring's locks) only when the count runs out, and
//! yields while the ring is full. Tokio's broadcast has no way to wait for room,
//! so that wait is a yield loop on the publisher's thread. It is reported, not a
//! target.

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use heijunka_benches::baselines;
use heijunka_event_bus::{Event, Policy, Topic};
use tokio::runtime::Runtime;

/// Buffer of the bounded sides.
const BUFFER: usize = 1024;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Lossless (`Block`) subscribers of `topic`, each on its own task, counting
/// what they see until the topic closes.
fn heijunka_readers(topic: &Topic<u64>, subscribers: usize) -> Vec<tokio::task::JoinHandle<u64>> {
    (0..subscribers)
        .map(|_| {
            let mut sub = topic
                .subscriber()
                .buffer(BUFFER)
                .policy(Policy::Block)
                .subscribe()
                .expect("subscribe");
            tokio::spawn(async move {
                let mut n = 0_u64;
                while let Some(e) = sub.recv().await {
                    n += *e & 1;
                }
                n
            })
        })
        .collect()
}

async fn heijunka(subscribers: usize, events: u64) -> Duration {
    let topic = Topic::<u64>::new("bench").expect("name");
    let readers = heijunka_readers(&topic, subscribers);
    let start = Instant::now();
    for i in 0..events {
        topic.publish(Event::inline(i)).await.expect("delivered");
    }
    topic.close();
    for r in readers {
        std::hint::black_box(r.await.expect("reader"));
    }
    start.elapsed()
}

/// Tokio broadcast receivers, each on its own task: they count what they see
/// and panic on `Lagged` (the tokio sides must stay lossless).
fn tokio_readers(
    tx: &tokio::sync::broadcast::Sender<u64>,
    subscribers: usize,
) -> Vec<tokio::task::JoinHandle<(u64, u64)>> {
    (0..subscribers)
        .map(|_| {
            let mut rx = tx.subscribe();
            tokio::spawn(async move {
                let mut n = 0_u64;
                let mut seen = 0_u64;
                loop {
                    match rx.recv().await {
                        Ok(e) => {
                            n += e & 1;
                            seen += 1;
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(k)) => {
                            panic!("tokio broadcast lagged by {k}")
                        }
                    }
                }
                (n, seen)
            })
        })
        .collect()
}

/// Waits for [`tokio_readers`] and checks each saw every event.
async fn await_tokio_readers(readers: Vec<tokio::task::JoinHandle<(u64, u64)>>, events: u64) {
    for r in readers {
        let (n, seen) = r.await.expect("reader");
        assert_eq!(seen, events, "lossless");
        std::hint::black_box(n);
    }
}

async fn tokio_broadcast(subscribers: usize, events: u64) -> Duration {
    // As large as the run: never lags, so it stays lossless.
    let capacity = (events as usize).max(16).next_power_of_two();
    let (tx, _) = tokio::sync::broadcast::channel::<u64>(capacity);
    let readers = tokio_readers(&tx, subscribers);
    let start = Instant::now();
    for i in 0..events {
        tx.send(i).expect("receivers");
    }
    drop(tx);
    await_tokio_readers(readers, events).await;
    start.elapsed()
}

async fn tokio_broadcast_bounded(subscribers: usize, events: u64) -> Duration {
    let (tx, _) = tokio::sync::broadcast::channel::<u64>(BUFFER);
    let readers = tokio_readers(&tx, subscribers);
    let start = Instant::now();
    // Sends known to fit without overwriting what the slowest receiver has not
    // seen; `len()` (which takes the ring's locks) is asked only when they run
    // out.
    let mut room = 0;
    for i in 0..events {
        while room == 0 {
            room = BUFFER.saturating_sub(tx.len());
            if room == 0 {
                tokio::task::yield_now().await;
            }
        }
        room -= 1;
        tx.send(i).expect("receivers");
    }
    drop(tx);
    await_tokio_readers(readers, events).await;
    start.elapsed()
}

async fn async_broadcast(subscribers: usize, events: u64) -> Duration {
    let (tx, rx) = async_broadcast::broadcast::<u64>(BUFFER);
    let readers: Vec<_> = (0..subscribers)
        .map(|_| {
            let mut rx = rx.clone();
            tokio::spawn(async move {
                let mut n = 0_u64;
                while let Ok(e) = rx.recv().await {
                    n += e & 1;
                }
                n
            })
        })
        .collect();
    drop(rx); // only the subscribers' receivers count
    let start = Instant::now();
    for i in 0..events {
        tx.broadcast(i).await.expect("receivers");
    }
    drop(tx);
    for r in readers {
        std::hint::black_box(r.await.expect("reader"));
    }
    start.elapsed()
}

fn fanout(c: &mut Criterion) {
    let rt = runtime();
    for subscribers in [1, 4, 16] {
        let mut g = c.benchmark_group(format!("bus/fanout_{subscribers}"));
        g.sample_size(10);
        g.measurement_time(Duration::from_secs(3));
        g.bench_function("heijunka", |b| {
            b.iter_custom(|iters| rt.block_on(heijunka(subscribers, iters)))
        });
        g.bench_function("tokio-broadcast", |b| {
            b.iter_custom(|iters| rt.block_on(tokio_broadcast(subscribers, iters)))
        });
        g.bench_function("tokio-broadcast-bounded", |b| {
            b.iter_custom(|iters| rt.block_on(tokio_broadcast_bounded(subscribers, iters)))
        });
        g.bench_function("async-broadcast", |b| {
            b.iter_custom(|iters| rt.block_on(async_broadcast(subscribers, iters)))
        });
        g.finish();
    }
}

/// 4 publisher tasks, each publishing a quarter of the events, to 4
/// subscribers: heijunka's publishers share no lock (a compare-and-swap on the
/// tail), tokio's broadcast senders take its tail mutex.
async fn heijunka_mpmc(publishers: u64, subscribers: usize, events: u64) -> Duration {
    let topic = Topic::<u64>::new("bench").expect("name");
    let readers = heijunka_readers(&topic, subscribers);
    let start = Instant::now();
    let writers: Vec<_> = (0..publishers)
        .map(|p| {
            let topic = topic.clone();
            let share = events / publishers + u64::from(p < events % publishers);
            tokio::spawn(async move {
                for i in 0..share {
                    topic.publish(Event::inline(i)).await.expect("delivered");
                }
            })
        })
        .collect();
    for w in writers {
        w.await.expect("publisher");
    }
    topic.close();
    for r in readers {
        std::hint::black_box(r.await.expect("reader"));
    }
    start.elapsed()
}

async fn tokio_broadcast_mpmc(publishers: u64, subscribers: usize, events: u64) -> Duration {
    // As large as the run: never lags, so it stays lossless.
    let capacity = (events as usize).max(16).next_power_of_two();
    let (tx, _) = tokio::sync::broadcast::channel::<u64>(capacity);
    let readers = tokio_readers(&tx, subscribers);
    let start = Instant::now();
    let writers: Vec<_> = (0..publishers)
        .map(|p| {
            let tx = tx.clone();
            let share = events / publishers + u64::from(p < events % publishers);
            tokio::spawn(async move {
                for i in 0..share {
                    tx.send(i).expect("receivers");
                }
            })
        })
        .collect();
    drop(tx);
    for w in writers {
        w.await.expect("publisher");
    }
    await_tokio_readers(readers, events).await;
    start.elapsed()
}

fn mpmc(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("bus/mpmc_4x4");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(3));
    g.bench_function("heijunka", |b| {
        b.iter_custom(|iters| rt.block_on(heijunka_mpmc(4, 4, iters)))
    });
    g.bench_function("tokio-broadcast", |b| {
        b.iter_custom(|iters| rt.block_on(tokio_broadcast_mpmc(4, 4, iters)))
    });
    g.finish();
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Publish latency with 4 subscribers draining concurrently: each publish is
/// timed on its own; p50, p99 and p99.9 are printed (criterion's
/// `bus/fanout_4` gives the mean).
fn publish_latency(_: &mut Criterion) {
    const EVENTS: u64 = 200_000;
    let rt = runtime();
    let samples = rt.block_on(async {
        let topic = Topic::<u64>::new("latency").expect("name");
        let readers: Vec<_> = (0..4)
            .map(|_| {
                let mut sub = topic
                    .subscriber()
                    .buffer(BUFFER)
                    .policy(Policy::Block)
                    .subscribe()
                    .expect("subscribe");
                tokio::spawn(async move { while sub.recv().await.is_some() {} })
            })
            .collect();
        let mut samples = Vec::with_capacity(EVENTS as usize);
        for i in 0..EVENTS {
            let t = Instant::now();
            topic.publish(i).await.expect("delivered");
            samples.push(t.elapsed());
        }
        topic.close();
        for r in readers {
            r.await.expect("reader");
        }
        samples
    });
    let mut sorted = samples;
    sorted.sort_unstable();
    println!(
        "bus/publish_latency_4 (heijunka, {EVENTS} publishes, 4 subscribers draining): \
         p50 {:?}, p99 {:?}, p99.9 {:?}, max {:?}",
        percentile(&sorted, 0.50),
        percentile(&sorted, 0.99),
        percentile(&sorted, 0.999),
        sorted[sorted.len() - 1],
    );
}

criterion_group!(benches, baselines, fanout, mpmc, publish_latency);
criterion_main!(benches);
