//! `Recycler`: reuse, reset, the capacity bound, the shrink rule, the closure form,
//! bad input (zero capacity, panicking factories and resets) and thread exit.
#![cfg(not(loom))]

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use heijunka_recycler::{
    DEFAULT_CAPACITY, DEFAULT_PER_THREAD, MAX_CAPACITY, Recycle, Recycler, RecyclerStats,
};

fn buffers(capacity: usize, per_thread: usize) -> Recycler<Vec<u8>> {
    Recycler::builder(|| Vec::with_capacity(64))
        .capacity(capacity)
        .per_thread(per_thread)
        .build()
        .unwrap()
}

/// The bookkeeping identities `RecyclerStats` documents.
fn assert_balanced(s: &RecyclerStats) {
    assert_eq!(s.gets, s.hits + s.misses, "{s:?}");
    assert_eq!(
        s.idle,
        s.returns - s.dropped_full - s.dropped_oversize - s.reset_panics - s.hits - s.evicted,
        "{s:?}"
    );
}

#[test]
fn a_returned_value_is_reset_and_handed_out_again() {
    let pool = buffers(4, 2);
    let first_ptr = {
        let mut b = pool.get();
        b.extend_from_slice(b"dirty");
        b.as_ptr()
    };
    let b = pool.get();
    assert!(b.is_empty(), "reset on return");
    assert_eq!(b.as_ptr(), first_ptr, "the same allocation is reused");
    assert!(b.capacity() >= 64);
    drop(b);
    let s = pool.stats();
    assert_eq!(
        (s.gets, s.hits, s.misses, s.returns, s.idle),
        (2, 1, 1, 2, 1)
    );
    assert_eq!((s.capacity, s.per_thread), (4, 2));
    assert_balanced(&s);
}

#[test]
fn values_beyond_capacity_are_dropped_and_counted() {
    for per_thread in [0, 1, 3] {
        let pool = buffers(3, per_thread);
        let held: Vec<_> = (0..10).map(|_| pool.get()).collect();
        drop(held);
        let s = pool.stats();
        assert_eq!(s.misses, 10);
        assert_eq!(s.returns, 10);
        // The shared store keeps 3, this thread's cache `per_thread` more.
        assert_eq!(
            s.idle as usize,
            3 + per_thread,
            "per_thread {per_thread}: {s:?}"
        );
        assert_eq!(s.dropped_full as usize, 10 - 3 - per_thread);
        assert_balanced(&s);
    }
}

#[test]
fn defaults_and_bad_configuration() {
    let pool = Recycler::new(1000, Vec::<u8>::new).unwrap();
    assert_eq!(pool.stats().capacity, 1000);
    assert_eq!(pool.stats().per_thread, DEFAULT_PER_THREAD);
    let small = Recycler::new(3, Vec::<u8>::new).unwrap();
    assert_eq!(
        small.stats().per_thread,
        3,
        "per_thread defaults to at most capacity"
    );
    let default = Recycler::builder(Vec::<u8>::new).build().unwrap();
    assert_eq!(default.stats().capacity, DEFAULT_CAPACITY);

    let err = Recycler::new(0, Vec::<u8>::new).unwrap_err();
    assert_eq!(err.to_string(), "capacity must be at least 1, got 0");
    let err = Recycler::new(MAX_CAPACITY + 1, Vec::<u8>::new).unwrap_err();
    assert_eq!(err.field(), "capacity");
    assert_eq!(err.value(), (MAX_CAPACITY + 1).to_string());
    let err = Recycler::builder(Vec::<u8>::new)
        .capacity(4)
        .per_thread(5)
        .build()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "per_thread must not exceed capacity (4), got 5"
    );
    let err = Recycler::builder(Vec::<u8>::new)
        .max_value_capacity(0)
        .build()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "max_value_capacity must be at least 1, got 0"
    );
    let err = Recycler::with_reset(|| 0_u32, |n| *n = 0)
        .max_value_capacity(10)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "max_value_capacity");
    assert!(
        err.to_string().contains("needs a capacity measure"),
        "{err}"
    );
}

#[test]
fn the_shrink_rule_drops_values_that_grew_too_big() {
    let pool = Recycler::builder(|| Vec::<u8>::with_capacity(16))
        .capacity(8)
        .max_value_capacity(1024)
        .build()
        .unwrap();
    {
        let mut big = pool.get();
        big.resize(100_000, 1); // one huge request
    }
    {
        let mut fine = pool.get();
        fine.resize(1000, 1);
    }
    let s = pool.stats();
    assert_eq!(s.dropped_oversize, 1, "{s:?}");
    assert_eq!(s.idle, 1);
    assert!(
        pool.get().capacity() <= 1024,
        "the kept buffer is the small one"
    );
    assert_balanced(&pool.stats());

    // The closure form measures with `capacity_of`.
    let maps = Recycler::with_reset(HashMap::<u32, u32>::new, HashMap::clear)
        .capacity_of(HashMap::capacity)
        .max_value_capacity(64)
        .build()
        .unwrap();
    {
        let mut m = maps.get();
        m.extend((0..1000).map(|i| (i, i)));
    }
    assert_eq!(maps.stats().dropped_oversize, 1);
}

#[test]
fn the_closure_form_resets_types_without_recycle() {
    struct Conn {
        queries: u32,
        tag: Option<&'static str>,
    }
    let made = Arc::new(AtomicUsize::new(0));
    let m = Arc::clone(&made);
    let pool = Recycler::with_reset(
        move || {
            m.fetch_add(1, Ordering::Relaxed);
            Conn {
                queries: 0,
                tag: None,
            }
        },
        |c: &mut Conn| {
            c.queries = 0;
            c.tag = None;
        },
    )
    .capacity(2)
    .build()
    .unwrap();
    for round in 0..5 {
        let mut c = pool.get();
        assert_eq!((c.queries, c.tag), (0, None), "round {round}");
        c.queries = 7;
        c.tag = Some("used");
    }
    assert_eq!(
        made.load(Ordering::Relaxed),
        1,
        "one value served all rounds"
    );
}

#[test]
fn a_panicking_factory_surfaces_to_get_and_the_pool_stays_usable() {
    let fail = Arc::new(AtomicUsize::new(1));
    let f = Arc::clone(&fail);
    let pool = Recycler::builder(move || {
        assert!(f.fetch_sub(1, Ordering::Relaxed) != 1, "factory failed");
        Vec::<u8>::with_capacity(8)
    })
    .capacity(2)
    .build()
    .unwrap();
    let err = catch_unwind(AssertUnwindSafe(|| drop(pool.get()))).unwrap_err();
    let msg = err
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| err.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("");
    assert!(msg.contains("factory failed"), "{msg}");
    let s = pool.stats();
    assert_eq!(
        (s.gets, s.misses, s.returns),
        (0, 0, 0),
        "no value was made: {s:?}"
    );
    // The next factory call works, and so does reuse.
    drop(pool.get());
    drop(pool.get());
    let s = pool.stats();
    assert_eq!((s.gets, s.hits, s.misses, s.returns), (2, 1, 1, 2));
}

#[derive(Default)]
struct Fragile {
    explode_on_reset: bool,
    resets: u32,
}

impl Recycle for Fragile {
    fn reset(&mut self) {
        assert!(!self.explode_on_reset, "reset exploded");
        self.resets += 1;
    }
}

#[test]
fn a_panicking_reset_drops_the_value_counts_it_and_the_pool_stays_usable() {
    let pool = Recycler::new(4, Fragile::default).unwrap();
    {
        let mut v = pool.get();
        v.explode_on_reset = true;
    } // the reset panics inside the guard's drop: contained, value dropped
    let s = pool.stats();
    assert_eq!((s.returns, s.reset_panics, s.idle), (1, 1, 0), "{s:?}");
    assert_balanced(&s);

    // Also while the guard's scope is already unwinding (no double panic).
    let r = catch_unwind(AssertUnwindSafe(|| {
        let mut v = pool.get();
        v.explode_on_reset = true;
        panic!("handler failed");
    }));
    assert!(r.is_err());
    assert_eq!(pool.stats().reset_panics, 2);

    // Healthy values still recycle.
    drop(pool.get());
    let v = pool.get();
    assert_eq!(v.resets, 1);
    drop(v);
    let s = pool.stats();
    assert_eq!(
        (s.gets, s.returns, s.reset_panics, s.idle),
        (4, 4, 2, 1),
        "{s:?}"
    );
    assert_balanced(&s);
}

#[test]
fn a_guard_returns_its_value_while_unwinding() {
    let pool = buffers(4, 2);
    for _ in 0..3 {
        let r = catch_unwind(AssertUnwindSafe(|| {
            let mut b = pool.get();
            b.push(1);
            panic!("boom");
        }));
        assert!(r.is_err());
    }
    let s = pool.stats();
    assert_eq!((s.gets, s.misses, s.returns, s.idle), (3, 1, 3, 1), "{s:?}");
    assert!(pool.get().is_empty());
}

#[test]
fn detach_and_put_move_values_out_and_back() {
    let pool = buffers(4, 2);
    let mut v = pool.get().detach();
    v.extend_from_slice(b"kept");
    assert_eq!(pool.stats().detaches, 1);
    assert_eq!(pool.stats().idle, 0, "a detached value is not idle");
    pool.put(v);
    let s = pool.stats();
    assert_eq!((s.returns, s.puts, s.idle), (1, 1, 1), "{s:?}");
    assert!(pool.get().is_empty(), "put resets too");

    // A value made elsewhere can be adopted.
    pool.put(Vec::with_capacity(32));
    assert_eq!(pool.stats().puts, 2);
    assert_balanced(&pool.stats());
}

#[test]
fn clear_drops_idle_values() {
    let pool = buffers(8, 2);
    let held: Vec<_> = (0..6).map(|_| pool.get()).collect();
    drop(held);
    assert_eq!(pool.stats().idle, 6);
    assert_eq!(pool.clear(), 6);
    let s = pool.stats();
    assert_eq!((s.idle, s.evicted), (0, 6), "{s:?}");
    assert_balanced(&s);
    drop(pool.get());
    assert_eq!(pool.stats().misses, 7, "the next get calls the factory");
}

/// Counts live values, so a test sees what `trim` really dropped.
struct Counted(Arc<AtomicUsize>);

impl Counted {
    fn new(live: &Arc<AtomicUsize>) -> Self {
        live.fetch_add(1, Ordering::SeqCst);
        Self(Arc::clone(live))
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Recycle for Counted {
    fn reset(&mut self) {}
}

#[test]
fn trim_drops_up_to_n_idle_values_shared_store_first() {
    let live = Arc::new(AtomicUsize::new(0));
    let l = Arc::clone(&live);
    let pool = Recycler::builder(move || Counted::new(&l))
        .capacity(8)
        .per_thread(2)
        .build()
        .unwrap();
    let held: Vec<_> = (0..6).map(|_| pool.get()).collect();
    drop(held); // 2 in this thread's cache, 4 in the shared store
    assert_eq!((pool.stats().idle, live.load(Ordering::SeqCst)), (6, 6));
    assert_eq!(pool.trim(0), 0);
    assert_eq!(pool.trim(3), 3);
    assert_eq!(
        live.load(Ordering::SeqCst),
        3,
        "dropped, not just uncounted"
    );
    assert_eq!(pool.trim(2), 2, "the last shared one, then one cached");
    let s = pool.stats();
    assert_eq!((s.idle, s.evicted), (1, 5), "{s:?}");
    assert_balanced(&s);
    assert_eq!(pool.trim(usize::MAX), 1);
    assert_eq!(pool.trim(usize::MAX), 0);
    assert_eq!(live.load(Ordering::SeqCst), 0);
    // The pool carries on.
    drop(pool.get());
    assert_eq!(pool.stats().idle, 1);
}

#[test]
fn with_no_thread_caches_capacity_bounds_the_idle_values() {
    // The documented bound: `capacity + threads × per_thread`, `capacity` alone
    // with `per_thread(0)`.
    let pool = Arc::new(buffers(4, 0));
    // Joined explicitly: a scope's implicit join does not wait for thread-local
    // destructors (miri then finds threads still running when the test binary
    // ends), an explicit join does.
    std::thread::scope(|s| {
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let pool = Arc::clone(&pool);
                s.spawn(move || {
                    let held: Vec<_> = (0..4).map(|_| pool.get()).collect();
                    drop(held);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    });
    assert!(pool.stats().idle <= 4, "{:?}", pool.stats());
    let cached = Arc::new(buffers(4, 2));
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let go_rx = std::sync::Mutex::new(go_rx);
    std::thread::scope(|s| {
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let (pool, done_tx) = (Arc::clone(&cached), done_tx.clone());
                let go_rx = &go_rx;
                s.spawn(move || {
                    let held: Vec<_> = (0..4).map(|_| pool.get()).collect();
                    drop(held);
                    done_tx.send(()).unwrap();
                    // Stay alive (caches kept) until every thread has returned.
                    let _ = go_rx.lock().unwrap().recv();
                })
            })
            .collect();
        for _ in 0..3 {
            done_rx.recv().unwrap();
        }
        let idle = cached.stats().idle;
        assert!(idle > 4 && idle <= 4 + 3 * 2, "idle {idle}");
        for _ in 0..3 {
            go_tx.send(()).unwrap();
        }
        for t in threads {
            t.join().unwrap();
        }
    });
}

#[test]
fn a_thread_hands_its_cached_values_back_when_it_exits() {
    let pool = buffers(4, 3);
    // Joined explicitly: a scope's implicit join does not wait for thread-local
    // destructors, an explicit join does.
    std::thread::scope(|s| {
        s.spawn(|| {
            let held: Vec<_> = (0..3).map(|_| pool.get()).collect();
            drop(held); // all three go to this thread's cache
            assert_eq!(pool.stats().idle, 3);
        })
        .join()
        .unwrap();
    });
    // The thread exited: its cache went to the shared store, and its counters
    // still count.
    let s = pool.stats();
    assert_eq!(
        (s.gets, s.returns, s.idle, s.evicted),
        (3, 3, 3, 0),
        "{s:?}"
    );
    let from_main: Vec<_> = (0..3).map(|_| pool.get()).collect();
    assert_eq!(pool.stats().hits, 3, "the main thread reuses them");
    drop(from_main);

    // A thread exiting when the shared store is full drops the rest, counted.
    let full = buffers(2, 2);
    let held: Vec<_> = (0..2).map(|_| full.get()).collect();
    std::thread::scope(|s| {
        s.spawn(|| {
            let mine: Vec<_> = (0..2).map(|_| full.get()).collect();
            drop(mine); // this thread's cache
            drop(held); // the shared store (this thread's cache is full)
        })
        .join()
        .unwrap();
    });
    let s = full.stats();
    assert_eq!((s.idle, s.evicted, s.dropped_full), (2, 2, 0), "{s:?}");
    assert_balanced(&s);
}

#[test]
fn many_recyclers_of_one_type_stay_apart_on_one_thread() {
    let a = Recycler::new(4, || vec![1_u8; 1]).unwrap();
    let b = Recycler::with_reset(|| vec![2_u8; 1], |v: &mut Vec<u8>| v.truncate(1))
        .capacity(4)
        .build()
        .unwrap();
    drop(a.get());
    drop(b.get());
    assert!(a.get().is_empty());
    assert_eq!(&b.get()[..], &[2]);
    // A dropped recycler's slot is reused by the next one; its cached values go.
    let slot_holder = Recycler::new(4, || vec![3_u8; 1]).unwrap();
    drop(slot_holder.get());
    drop(slot_holder);
    let next = Recycler::new(4, || vec![4_u8; 1]).unwrap();
    let v = next.get();
    assert_eq!(&v[..], &[4], "not a value of the dropped recycler");
    drop(v);
    assert_eq!(next.stats().misses, 1);
}

#[test]
fn a_value_dropping_a_guard_of_another_recycler_does_not_deadlock() {
    // The value's own `Drop` uses a recycler while the pool is storing or dropping
    // it: the thread's cache is busy, and the fallback path takes over.
    let inner_pool = Arc::new(Recycler::new(2, || Vec::<u8>::with_capacity(4)).unwrap());
    struct Holder {
        pool: Arc<Recycler<Vec<u8>>>,
    }
    impl Drop for Holder {
        fn drop(&mut self) {
            drop(self.pool.get());
        }
    }
    let p = Arc::clone(&inner_pool);
    let outer = Recycler::with_reset(
        move || Holder {
            pool: Arc::clone(&p),
        },
        |_| {},
    )
    .capacity(1)
    .per_thread(0)
    .build()
    .unwrap();
    let held: Vec<_> = (0..3).map(|_| outer.get()).collect();
    drop(held); // two are dropped (full), each using `inner_pool`
    drop(outer); // the idle one is dropped with the recycler
    let s = inner_pool.stats();
    assert_eq!((s.gets, s.returns), (3, 3), "{s:?}");
}

#[test]
fn stats_and_debug_are_readable() {
    let pool = buffers(4, 1);
    drop(pool.get());
    let json = serde_json::to_value(pool.stats()).unwrap();
    assert_eq!(json["gets"], 1);
    assert_eq!(json["idle"], 1);
    assert_eq!(json["capacity"], 4);
    let dbg = format!("{pool:?}");
    assert!(dbg.contains("Recycler") && dbg.contains("Vec<u8>"), "{dbg}");
    let g = pool.get();
    assert!(format!("{g:?}").contains("Recycled"));
    assert_eq!(g.recycler().id(), pool.id());
}

#[test]
fn guards_can_be_used_from_other_threads() {
    // A `'static` pool, so the guard can go to a plain spawned thread: its `join`
    // returns only after the thread's thread-locals (this recycler's cache among
    // them) are torn down, so the value has reached the shared store by then. (A
    // scoped thread's end is signalled before that.)
    static POOL: std::sync::OnceLock<Recycler<Vec<u8>>> = std::sync::OnceLock::new();
    let pool = POOL.get_or_init(|| buffers(8, 2));
    let mut g = pool.get();
    g.push(9);
    std::thread::spawn(move || {
        let g = g; // dropped, and so returned, on this thread
        assert_eq!(&g[..], &[9]);
    })
    .join()
    .unwrap();
    let s = pool.stats();
    assert_eq!((s.gets, s.returns, s.idle), (1, 1, 1), "{s:?}");
}
