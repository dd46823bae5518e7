//! Every `get()` is followed by exactly one return or one counted drop: across
//! threads, panics inside the guard's scope, shared handles dropped on many threads,
//! and thread exit. Bounded in iterations (scaled down under miri).
#![cfg(not(loom))]

use std::collections::HashSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};

use heijunka_recycler::{Recycle, Recycler, RecyclerStats};

/// A value that counts how many of its kind are alive, and carries a serial so a
/// value handed out twice at once would be seen.
struct Tracked {
    serial: u64,
    in_use: bool,
    live: Arc<AtomicU64>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Recycle for Tracked {
    fn reset(&mut self) {
        assert!(self.in_use, "reset twice without a get between");
        self.in_use = false;
    }
}

fn tracked_pool(capacity: usize, per_thread: usize) -> (Recycler<Tracked>, Arc<AtomicU64>) {
    let live = Arc::new(AtomicU64::new(0));
    let serial = Arc::new(AtomicU64::new(0));
    let l = Arc::clone(&live);
    let pool = Recycler::builder(move || {
        l.fetch_add(1, Ordering::Relaxed);
        Tracked {
            serial: serial.fetch_add(1, Ordering::Relaxed),
            in_use: false,
            live: Arc::clone(&l),
        }
    })
    .capacity(capacity)
    .per_thread(per_thread)
    .build()
    .unwrap();
    (pool, live)
}

fn check_accounts(s: &RecyclerStats, gets: u64, live: u64) {
    assert_eq!(s.gets, gets, "{s:?}");
    assert_eq!(s.gets, s.hits + s.misses, "{s:?}");
    assert_eq!(
        s.returns, s.gets,
        "every get was returned exactly once: {s:?}"
    );
    assert_eq!(
        s.idle,
        s.returns - s.dropped_full - s.dropped_oversize - s.reset_panics - s.hits - s.evicted,
        "{s:?}"
    );
    // Values alive = values idle: nothing leaked, nothing dropped twice.
    assert_eq!(live, s.idle, "{s:?}");
    // Values made = idle + dropped.
    assert_eq!(
        s.misses,
        s.idle + s.dropped_full + s.evicted + s.reset_panics + s.dropped_oversize,
        "{s:?}"
    );
}

#[test]
fn every_get_is_returned_once_across_threads_panics_and_exits() {
    let threads = 4;
    let rounds: u64 = if cfg!(miri) { 30 } else { 5_000 };
    let (pool, live) = tracked_pool(16, 4);
    let in_use = Mutex::new(HashSet::new());
    let start = Barrier::new(threads);
    // Threads are joined explicitly: a scope's implicit join does not wait for
    // thread-local destructors (where caches are handed back), an explicit one does.
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (pool, in_use, start) = (&pool, &in_use, &start);
                s.spawn(move || {
                    start.wait();
                    for i in 0..rounds {
                        let scenario = (i + t as u64) % 5;
                        let r = catch_unwind(AssertUnwindSafe(|| {
                            // Hold up to 3 at once so values move between the thread
                            // caches and the shared store, and some overflow.
                            let mut held: Vec<_> = (0..=scenario % 3).map(|_| pool.get()).collect();
                            for v in &mut held {
                                assert!(!v.in_use, "a value was handed out while in use");
                                v.in_use = true;
                                assert!(in_use.lock().unwrap().insert(v.serial));
                            }
                            for v in &held {
                                assert!(in_use.lock().unwrap().remove(&v.serial));
                            }
                            if scenario == 4 {
                                panic!("a handler failed while holding values");
                            }
                        }));
                        assert_eq!(r.is_err(), scenario == 4);
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
    });
    // Every worker thread has exited: their caches were handed back.
    let s = pool.stats();
    let gets: u64 = (0..threads as u64)
        .map(|t| (0..rounds).map(|i| (i + t) % 5 % 3 + 1).sum::<u64>())
        .sum();
    check_accounts(&s, gets, live.load(Ordering::Relaxed));
    assert!(
        s.idle <= 16,
        "threads have exited, only the shared store holds values"
    );
    drop(pool);
    assert_eq!(
        live.load(Ordering::Relaxed),
        0,
        "dropping the recycler drops its values"
    );
}

#[test]
fn shared_handles_dropped_on_many_threads_return_the_value_once() {
    let threads = 4;
    let rounds: u64 = if cfg!(miri) { 10 } else { 2_000 };
    let (pool, live) = tracked_pool(8, 2);
    let start = Arc::new(Barrier::new(threads + 1));
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..threads)
        .map(|_| std::sync::mpsc::sync_channel::<heijunka_recycler::Shared<Tracked>>(4))
        .unzip();
    std::thread::scope(|s| {
        let readers: Vec<_> = receivers
            .into_iter()
            .map(|rx| {
                let start = Arc::clone(&start);
                s.spawn(move || {
                    start.wait();
                    for handle in rx {
                        assert!(
                            handle.in_use,
                            "a shared value is never reset while a handle lives"
                        );
                        drop(handle);
                    }
                })
            })
            .collect();
        start.wait();
        for _ in 0..rounds {
            let mut v = pool.get();
            v.in_use = true;
            let shared = v.into_shared();
            for tx in &senders {
                tx.send(shared.clone()).unwrap();
            }
            drop(shared);
        }
        drop(senders);
        for r in readers {
            r.join().unwrap();
        }
    });
    let s = pool.stats();
    check_accounts(&s, rounds, live.load(Ordering::Relaxed));
}

#[test]
fn threads_that_exit_mid_stream_strand_nothing() {
    let rounds = if cfg!(miri) { 4 } else { 100 };
    let (pool, live) = tracked_pool(4, 4);
    let mut gets = 0;
    for round in 0..rounds {
        // Short-lived threads, each filling its cache past the shared capacity.
        std::thread::scope(|s| {
            let threads: Vec<_> = (0..2)
                .map(|_| {
                    s.spawn(|| {
                        let held: Vec<_> = (0..6)
                            .map(|_| {
                                let mut v = pool.get();
                                v.in_use = true;
                                v
                            })
                            .collect();
                        drop(held);
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
        });
        gets += 12;
        let s = pool.stats();
        check_accounts(&s, gets, live.load(Ordering::Relaxed));
        assert!(
            s.idle <= 4,
            "round {round}: exited threads keep nothing: {s:?}"
        );
    }
}
