//! `BoundedQueue` under threads whose waits are cancelled at random (timeouts,
//! futures dropped after a few polls): every item is popped exactly once, handed
//! back, or dropped with the push future that owned it; none is lost, duplicated
//! or dropped twice; and no waiter is left registered at the end. Bounded in
//! iterations, and in time by a watchdog, so a lost wake-up fails instead of
//! hanging. CI also runs it under ThreadSanitizer.
#![cfg(not(loom))]

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::task::Poll;
use std::time::Duration;

use heijunka_backpressure::BoundedQueue;
use heijunka_core::Rejection;

/// An item that counts its drops.
struct Tracked {
    id: u64,
    drops: Arc<AtomicUsize>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.drops.fetch_add(1, Ordering::SeqCst);
    }
}

/// xorshift64: a reproducible per-thread choice of operation and timeout.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn micros(&mut self) -> Duration {
        Duration::from_micros(self.below(300))
    }
}

/// Polls `fut` at most `polls` times (waiting for its wake-ups in between), then
/// drops it: `None` if it was cancelled that way.
async fn poll_at_most<F: Future>(fut: F, polls: u64) -> Option<F::Output> {
    let mut fut = pin!(fut);
    let mut left = polls;
    poll_fn(|cx| match fut.as_mut().poll(cx) {
        Poll::Ready(v) => Poll::Ready(Some(v)),
        Poll::Pending => {
            left -= 1;
            if left == 0 {
                Poll::Ready(None)
            } else {
                Poll::Pending
            }
        }
    })
    .await
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime builds")
}

/// What a producer thread saw become of its items.
#[derive(Default)]
struct Produced {
    queued: Vec<u64>,
    handed_back: Vec<u64>,
    dropped_with_a_cancelled_push: Vec<u64>,
}

enum Report {
    Producer(Produced),
    Consumer(Vec<u64>),
    /// A worker thread panicked (its assertion message is on stderr).
    Panicked,
}

/// Runs `work` on a new thread and sends its report, or [`Report::Panicked`].
fn worker(tx: mpsc::Sender<Report>, work: impl FnOnce() -> Report + Send + 'static) {
    std::thread::spawn(move || {
        let report = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
        let _ = tx.send(report.unwrap_or(Report::Panicked));
    });
}

#[test]
#[cfg_attr(miri, ignore)] // thousands of timed waits on several threads: too slow under miri
fn stress_cancelled_waits_lose_nothing_and_leave_no_waiter() {
    const PRODUCERS: u64 = 3;
    const CONSUMERS: u64 = 3;
    const PER_PRODUCER: u64 = 20_000;
    const WATCHDOG: Duration = Duration::from_secs(120);

    let q = BoundedQueue::<Tracked>::new(4).unwrap();
    let drops = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel();

    for p in 0..PRODUCERS {
        let (q, drops, tx) = (q.clone(), Arc::clone(&drops), tx.clone());
        worker(tx, move || {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (p + 1));
            let mut out = Produced::default();
            runtime().block_on(async {
                for i in 0..PER_PRODUCER {
                    let id = p * PER_PRODUCER + i;
                    let item = Tracked {
                        id,
                        drops: Arc::clone(&drops),
                    };
                    match rng.below(4) {
                        0 => match q.push_timeout(item, rng.micros()).await {
                            Ok(()) => out.queued.push(id),
                            Err(e) => {
                                assert!(matches!(e.reason(), Rejection::TimedOut { .. }));
                                out.handed_back.push(e.into_inner().id);
                            }
                        },
                        1 => match poll_at_most(q.push(item), 1 + rng.below(3)).await {
                            Some(r) => {
                                assert!(r.is_ok(), "not closed yet");
                                out.queued.push(id);
                            }
                            None => out.dropped_with_a_cancelled_push.push(id),
                        },
                        2 => match tokio::time::timeout(rng.micros(), q.push(item)).await {
                            Ok(r) => {
                                assert!(r.is_ok(), "not closed yet");
                                out.queued.push(id);
                            }
                            Err(_) => out.dropped_with_a_cancelled_push.push(id),
                        },
                        _ => match q.try_push(item) {
                            Ok(()) => out.queued.push(id),
                            Err(e) => out.handed_back.push(e.into_inner().id),
                        },
                    }
                }
            });
            Report::Producer(out)
        });
    }
    for c in 0..CONSUMERS {
        let (q, tx) = (q.clone(), tx.clone());
        worker(tx, move || {
            let mut rng = Rng(0xD1B5_4A32_D192_ED03 ^ (c + 1));
            let mut got = Vec::new();
            runtime().block_on(async {
                loop {
                    let item = match rng.below(4) {
                        0 => q.pop_timeout(rng.micros()).await,
                        1 => poll_at_most(q.pop(), 1 + rng.below(3)).await.flatten(),
                        2 => q.pop().await,
                        _ => q.try_pop(),
                    };
                    match item {
                        Some(t) => got.push(t.id),
                        None if q.is_closed() && q.is_empty() => break,
                        None => {}
                    }
                }
            });
            Report::Consumer(got)
        });
    }
    drop(tx);

    let mut produced = Vec::new();
    let mut consumed = Vec::new();
    while produced.len() < PRODUCERS as usize {
        match rx.recv_timeout(WATCHDOG) {
            Ok(Report::Producer(p)) => produced.push(p),
            Ok(Report::Consumer(c)) => consumed.push(c),
            Ok(Report::Panicked) => panic!("a worker thread panicked"),
            Err(e) => panic!("a producer neither finished nor panicked in time: {e}"),
        }
    }
    // Producers are done: close, and the consumers drain and stop.
    q.close();
    while consumed.len() < CONSUMERS as usize {
        match rx.recv_timeout(WATCHDOG) {
            Ok(Report::Consumer(c)) => consumed.push(c),
            Ok(Report::Producer(_)) => unreachable!("every producer reported"),
            Ok(Report::Panicked) => panic!("a worker thread panicked"),
            Err(e) => panic!("a consumer did not stop after the close: {e}"),
        }
    }

    let total = PRODUCERS * PER_PRODUCER;
    let mut fate = vec![0_u8; total as usize];
    let mut mark = |id: u64, what: &str| {
        let f = &mut fate[id as usize];
        assert_eq!(*f, 0, "item {id} {what}, but it was already accounted for");
        *f = 1;
    };
    let mut queued = vec![false; total as usize];
    for p in &produced {
        for &id in &p.handed_back {
            mark(id, "handed back");
        }
        for &id in &p.dropped_with_a_cancelled_push {
            mark(id, "dropped with its cancelled push");
        }
        for &id in &p.queued {
            queued[id as usize] = true;
        }
    }
    for c in &consumed {
        for &id in c {
            assert!(queued[id as usize], "item {id} was popped but never queued");
            mark(id, "popped");
        }
    }
    let missing: Vec<_> = (0..total).filter(|&i| fate[i as usize] == 0).collect();
    assert!(missing.is_empty(), "items lost: {missing:?}");
    assert_eq!(
        drops.load(Ordering::SeqCst),
        total as usize,
        "every item dropped exactly once"
    );
    let s = q.stats();
    assert!(q.is_empty());
    assert_eq!(
        (s.waiting_consumers, s.waiting_producers),
        (0, 0),
        "no waiter left registered"
    );
    let handed_back: usize = produced.iter().map(|p| p.handed_back.len()).sum();
    assert_eq!(
        s.rejected, handed_back as u64,
        "each hand-back counted once"
    );
    let cancelled: usize = produced
        .iter()
        .map(|p| p.dropped_with_a_cancelled_push.len())
        .sum();
    assert!(
        handed_back > 0 && cancelled > 0,
        "the run exercised hand-backs ({handed_back}) and cancelled pushes ({cancelled})"
    );
}
