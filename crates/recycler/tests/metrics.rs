//! The recycler's metrics (feature `metrics`): the documented names and labels,
//! values checked against gets the test counts itself, and the documented
//! granularity of hits (per-thread batches of at most 64, published at once when a
//! get touches the shared store, and when the thread's cache goes).
#![cfg(all(feature = "metrics", not(loom)))]

use heijunka_core::metrics::TestRecorder;
use heijunka_recycler::Recycler;

const REASONS: [&str; 4] = ["evicted", "full", "oversize", "reset_panicked"];

fn documented(name: &str) -> Vec<(String, Vec<(String, String)>)> {
    let n = vec![("name".to_owned(), name.to_owned())];
    let mut keys = vec![
        ("heijunka_recycler_hits_total".to_owned(), n.clone()),
        ("heijunka_recycler_misses_total".to_owned(), n),
    ];
    for r in REASONS {
        keys.push((
            "heijunka_recycler_discarded_total".to_owned(),
            vec![
                ("name".to_owned(), name.to_owned()),
                ("reason".to_owned(), r.to_owned()),
            ],
        ));
    }
    keys.sort();
    keys
}

fn hits(rec: &TestRecorder, name: &str) -> u64 {
    rec.counter("heijunka_recycler_hits_total", &[("name", name)])
        .expect("registered")
}

fn misses(rec: &TestRecorder, name: &str) -> u64 {
    rec.counter("heijunka_recycler_misses_total", &[("name", name)])
        .expect("registered")
}

/// Discards by reason, in `REASONS` order.
fn discarded(rec: &TestRecorder, name: &str) -> [u64; 4] {
    REASONS.map(|r| {
        rec.counter(
            "heijunka_recycler_discarded_total",
            &[("name", name), ("reason", r)],
        )
        .expect("registered")
    })
}

/// Without per-thread caches every get and return goes through the shared store,
/// so every hit is published at once.
#[test]
fn shared_store_gets_and_discards_are_published_at_once() {
    let rec = TestRecorder::new();
    let pool = rec
        .scoped(|| {
            Recycler::builder(|| Vec::<u8>::with_capacity(8))
                .capacity(2)
                .per_thread(0)
                .max_value_capacity(64)
                .name("bufs")
                .build()
        })
        .unwrap();
    assert_eq!(rec.keys(), documented("bufs"));
    // Four at once: four factory calls.
    let held: Vec<_> = (0..4).map(|_| pool.get()).collect();
    assert_eq!((hits(&rec, "bufs"), misses(&rec, "bufs")), (0, 4));
    // Room for two: two kept, two dropped as full.
    drop(held);
    //                               evicted full oversize reset_panicked
    assert_eq!(discarded(&rec, "bufs"), [0, 2, 0, 0]);
    // Two reused, one new.
    let a = pool.get();
    let mut b = pool.get();
    let c = pool.get();
    assert_eq!((hits(&rec, "bufs"), misses(&rec, "bufs")), (2, 5));
    // One grew past the shrink bound: dropped on return.
    b.extend_from_slice(&[0; 100]);
    drop((a, b, c));
    assert_eq!(discarded(&rec, "bufs"), [0, 2, 1, 0]);
    // Two idle: `clear` evicts them.
    assert_eq!(pool.clear(), 2);
    assert_eq!(discarded(&rec, "bufs"), [2, 2, 1, 0]);
    let s = pool.stats();
    assert_eq!(
        (
            s.hits,
            s.misses,
            s.dropped_full,
            s.dropped_oversize,
            s.evicted
        ),
        (2, 5, 2, 1, 2)
    );
    assert_eq!(rec.keys(), documented("bufs"));
}

#[test]
fn a_reset_that_panics_is_a_discard() {
    let rec = TestRecorder::new();
    // Unnamed: the label is "default".
    let pool = rec
        .scoped(|| {
            Recycler::with_reset(Vec::<u8>::new, |v| {
                assert!(v.first() != Some(&0xFF), "reset refuses 0xFF");
                v.clear();
            })
            .per_thread(0)
            .build()
        })
        .unwrap();
    let mut v = pool.get();
    v.push(0xFF);
    drop(v);
    assert_eq!(discarded(&rec, "default"), [0, 0, 0, 1]);
    assert_eq!(misses(&rec, "default"), 1);
}

/// With per-thread caches, a thread's hits are published in batches of 64, and
/// the rest when its cache goes (at thread exit): the total is then exact.
#[test]
fn per_thread_hits_are_published_in_batches_and_in_full_at_thread_exit() {
    let rec = TestRecorder::new();
    let pool = rec
        .scoped(|| {
            Recycler::builder(|| Vec::<u8>::with_capacity(8))
                .per_thread(4)
                .name("local")
                .build()
        })
        .unwrap();
    const THREADS: u64 = 3;
    const GETS: u64 = 200;
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (pool, rec) = (pool.clone(), rec.clone());
            std::thread::spawn(move || {
                for i in 0..GETS {
                    drop(pool.get());
                    if t == 0 && i == 64 {
                        // Thread 0's own hits so far: 64 (its first get was a
                        // miss, or a hit from the shared store, published at
                        // once); whatever the other threads published is in
                        // batches of 64 or single shared-store hits.
                        let published = hits(&rec, "local");
                        assert!(published >= 64, "published {published}");
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let (h, m) = (hits(&rec, "local"), misses(&rec, "local"));
    assert_eq!(h + m, THREADS * GETS, "every get is a hit or a miss");
    assert!((1..=THREADS).contains(&m), "misses {m}");
    let s = pool.stats();
    assert_eq!((s.hits, s.misses), (h, m));
}

/// One thread, counted exactly: nothing is published until the 64th local hit.
#[test]
fn a_thread_publishes_its_local_hits_64_at_a_time() {
    let rec = TestRecorder::new();
    let pool = rec
        .scoped(|| {
            Recycler::builder(|| Vec::<u8>::with_capacity(8))
                .per_thread(4)
                .name("one")
                .build()
        })
        .unwrap();
    let r = rec.clone();
    std::thread::spawn(move || {
        drop(pool.get()); // a miss; the value goes to this thread's cache
        assert_eq!(misses(&r, "one"), 1);
        for i in 1..=150_u64 {
            drop(pool.get()); // a hit from the cache
            assert_eq!(hits(&r, "one"), i / 64 * 64, "after {i} hits");
        }
    })
    .join()
    .unwrap();
    // The thread is gone, and its last 22 hits with it: published.
    assert_eq!(hits(&rec, "one"), 150);
}
