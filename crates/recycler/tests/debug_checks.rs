//! The debug checks: a value given back twice, a value from another recycler (or
//! at a reused address), a wrong `identity`, and poisoned content (a stale reader sees the pattern, a stale writer is caught).
//! They are compiled where `DEBUG_CHECKS` is on (debug builds, or `--features
//! debug-checks`); the release test is compiled only where they are off.
#![cfg(not(loom))]
// Where the checks are off only the release test is compiled; the helpers of the
// others go unused there.
#![cfg_attr(
    not(any(debug_assertions, feature = "debug-checks")),
    allow(unused_imports, dead_code)
)]

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex};

use heijunka_recycler::{DEBUG_CHECKS, Misuse, POISON_PATTERN, Poison, Recycle, Recycler};

fn panic_message(r: std::thread::Result<()>) -> String {
    let err = r.expect_err("expected a panic");
    err.downcast_ref::<String>()
        .cloned()
        .or_else(|| err.downcast_ref::<&str>().map(|s| (*s).to_string()))
        .unwrap_or_default()
}

/// A handle type whose clones share one buffer: the way a value can really be given
/// back twice in safe code (as the same allocation behind two handles).
#[derive(Clone)]
struct Handle(Arc<Mutex<Vec<u8>>>);

impl Recycle for Handle {
    fn reset(&mut self) {
        self.0.lock().unwrap().clear();
    }
    fn identity(&self) -> Option<usize> {
        Some(Arc::as_ptr(&self.0).addr())
    }
}

fn handles() -> Recycler<Handle> {
    Recycler::new(8, || Handle(Arc::new(Mutex::new(Vec::with_capacity(8))))).unwrap()
}

type Buffer = Arc<Mutex<Vec<u8>>>;

/// Buffers behind shared handles, poisoned with the byte-buffer pattern: a clone
/// kept past a return is a stale reader or writer, in safe code.
fn shared_buffers(capacity: usize) -> Recycler<Buffer> {
    Recycler::with_reset(
        || Arc::new(Mutex::new(Vec::<u8>::with_capacity(8))),
        |b: &mut Buffer| b.lock().unwrap().clear(),
    )
    .capacity(capacity)
    .per_thread(0)
    .poison_with(
        |b| b.lock().unwrap().poison(),
        |b| b.lock().unwrap().is_poisoned(),
    )
    .build()
    .unwrap()
}

#[test]
#[cfg(any(debug_assertions, feature = "debug-checks"))] // the checks exist only there
fn a_value_given_back_twice_is_reported_with_both_call_sites() {
    const { assert!(DEBUG_CHECKS) };
    let pool = handles();
    let h = pool.get().detach();
    let copy = h.clone();
    let first_line = line!() + 1;
    pool.put(h);
    // The second `put` of the same allocation is not kept: dropped (a clone of a
    // handle owns its reference) and counted as evicted, never a panic.
    let r = catch_unwind(AssertUnwindSafe(|| {
        pool.put(copy.clone()); // the same allocation, again
    }));
    assert!(r.is_ok(), "put panicked: {}", panic_message(r));
    assert_eq!(pool.stats().evicted, 1);
    // `try_put` names both call sites.
    let second_line = line!() + 1;
    let err = pool.try_put(copy).unwrap_err();
    let msg = err.misuse().to_string();
    assert!(msg.contains("given back twice"), "{msg}");
    assert!(
        msg.contains(&format!("debug_checks.rs:{first_line}:")),
        "first site: {msg}"
    );
    assert!(
        msg.contains(&format!("debug_checks.rs:{second_line}:")),
        "second site: {msg}"
    );
    drop(err.into_inner());
    assert_eq!(
        pool.stats().puts,
        2,
        "the refused put is counted as a put (and evicted)"
    );

    // `try_put` hands the duplicate back instead.
    let dup = pool.get();
    let dup2 = (*dup).clone();
    drop(dup); // back in the pool via the guard (first return: the `get` site)
    let err = pool.try_put(dup2).unwrap_err();
    match err.misuse() {
        Misuse::ReturnedTwice {
            recycler, first, ..
        } => {
            assert_eq!(recycler, pool.id());
            assert!(first.file().ends_with("debug_checks.rs"));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains("given back twice"));
    drop(err.into_inner()); // a clone of a handle: safe to drop
}

#[test]
fn a_value_from_another_recycler_is_accepted() {
    // Detached from `a`, put into `b`: the checks cannot tell a value moved between
    // recyclers from a new one at a freed detached value's address, so neither is
    // refused (a refusal would be a false alarm for the second).
    let a = Recycler::new(4, || Vec::<u8>::with_capacity(32)).unwrap();
    let b = Recycler::new(4, || Vec::<u8>::with_capacity(32)).unwrap();
    let v = a.get().detach();
    b.try_put(v).unwrap();
    b.put(a.get().detach());
    assert_eq!((b.stats().puts, a.stats().detaches), (2, 2));
}

#[test]
#[cfg(any(debug_assertions, feature = "debug-checks"))] // the checks exist only there
fn returned_buffers_are_poisoned_so_a_stale_reader_sees_garbage() {
    const { assert!(DEBUG_CHECKS) };
    // A stale reader: a clone of a shared handle kept past the value's return.
    let pool = shared_buffers(4);
    let stale = {
        let g = pool.get();
        g.lock().unwrap().extend_from_slice(b"card=4111");
        Arc::clone(&g)
    }; // returned: reset, then poisoned
    let seen = stale.lock().unwrap().clone();
    assert!(!seen.windows(4).any(|w| w == b"card"), "old data is gone");
    assert_eq!(&seen[..4], &[0xDE, 0xAD, 0xBE, 0xEF]);
    assert_eq!(seen.len(), seen.capacity(), "filled to capacity");
    assert!(seen.chunks(4).all(|c| c == &POISON_PATTERN[..c.len()]));
    // The next user gets it reset, not poisoned.
    assert!(pool.get().lock().unwrap().is_empty());
}

#[test]
#[cfg(any(debug_assertions, feature = "debug-checks"))] // the checks exist only there
fn a_write_to_an_idle_value_is_caught_on_the_next_get() {
    const { assert!(DEBUG_CHECKS) };
    let pool = shared_buffers(1);
    // A stale writer: a clone kept past the return writes into the idle buffer.
    let stale = {
        let g = pool.get();
        Arc::clone(&g)
    };
    stale.lock().unwrap()[0] = b'!';
    let msg = panic_message(catch_unwind(AssertUnwindSafe(|| drop(pool.get()))));
    assert!(
        msg.contains("was written to after it was given back"),
        "{msg}"
    );
    assert!(msg.contains(&format!("recycler #{}", pool.id())), "{msg}");
    let s = pool.stats();
    assert_eq!(
        (s.evicted, s.idle),
        (1, 0),
        "the corrupted value was dropped: {s:?}"
    );
    // The pool carries on, and an untouched idle value passes the check.
    drop(pool.get());
    assert!(pool.get().lock().unwrap().is_empty());
    assert_eq!(pool.stats().hits, 1);
}

/// Compiled only where the checks are off (`cargo test --release` without the
/// `debug-checks` feature, a CI step of its own), so it never passes by returning
/// early: the release return path (`return_plain`) runs here and nowhere else.
#[test]
#[cfg(not(any(debug_assertions, feature = "debug-checks")))]
fn release_builds_without_the_feature_skip_the_checks() {
    const { assert!(!DEBUG_CHECKS) };
    // A value given back twice is not detected: no side table, no panic.
    let pool = handles();
    let h = pool.get().detach();
    let copy = h.clone();
    pool.put(h);
    pool.put(copy);
    assert_eq!(pool.stats().puts, 2);

    // Guards take the plain return path: reset, kept, not poisoned.
    let buffers = shared_buffers(4);
    let stale = {
        let g = buffers.get();
        g.lock().unwrap().extend_from_slice(b"card=4111");
        Arc::clone(&g)
    };
    assert!(stale.lock().unwrap().is_empty(), "reset, not poisoned");
    stale.lock().unwrap().push(b'!'); // a stale write: not caught without checks
    let g = buffers.get();
    assert_eq!(*g.lock().unwrap(), b"!");
    drop(g);
    let s = buffers.stats();
    assert_eq!(
        (s.gets, s.hits, s.misses, s.returns, s.idle),
        (2, 1, 1, 2, 1)
    );

    // A lying identity is never consulted: both values are kept.
    let lying = Recycler::builder(|| Liar(Arc::default()))
        .per_thread(0)
        .build()
        .unwrap();
    let (first, second) = (lying.get(), lying.get());
    drop(first);
    drop(second);
    assert_eq!(lying.stats().idle, 2);

    // A reset that panics on the plain path: counted, the value dropped.
    let panicky = Recycler::with_reset(Vec::<u8>::new, |v| {
        if !v.is_empty() {
            panic!("reset bug");
        }
    })
    .build()
    .unwrap();
    let r = catch_unwind(AssertUnwindSafe(|| {
        let mut g = panicky.get();
        g.push(1);
    }));
    assert!(r.is_ok(), "the reset's panic is contained");
    let s = panicky.stats();
    assert_eq!((s.returns, s.reset_panics, s.idle), (1, 1, 0));
}

#[test]
#[cfg(any(debug_assertions, feature = "debug-checks"))]
fn a_freed_detached_value_does_not_make_its_address_foreign() {
    // A value detached from `a` and dropped: the allocator hands its address to the
    // next allocation of that size, a fresh vector that `b` must accept.
    let a = Recycler::new(4, || Vec::<u8>::with_capacity(48)).unwrap();
    let b = Recycler::new(4, || Vec::<u8>::with_capacity(48)).unwrap();
    let v = a.get().detach();
    let address = v.as_ptr().addr();
    drop(v);
    let mut others = Vec::new();
    let fresh = loop {
        let f = Vec::<u8>::with_capacity(48);
        if f.as_ptr().addr() == address || others.len() == 1_000 {
            break f;
        }
        others.push(f);
    };
    let reused = fresh.as_ptr().addr() == address;
    let r = catch_unwind(AssertUnwindSafe(|| b.put(fresh)));
    assert!(r.is_ok(), "reused address {reused}: {}", panic_message(r));
    assert_eq!(b.stats().puts, 1);
}

/// A value whose `identity` is wrong (every value claims one address), counting
/// its drops.
struct Liar(Arc<std::sync::atomic::AtomicUsize>);

impl Recycle for Liar {
    fn reset(&mut self) {}
    fn identity(&self) -> Option<usize> {
        Some(0x1000)
    }
}

impl Drop for Liar {
    fn drop(&mut self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
#[cfg(any(debug_assertions, feature = "debug-checks"))]
fn a_lying_identity_neither_leaks_nor_panics_a_guard() {
    let drops = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let made = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (d, m) = (Arc::clone(&drops), Arc::clone(&made));
    let pool = Recycler::builder(move || {
        m.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Liar(Arc::clone(&d))
    })
    .per_thread(0)
    .build()
    .unwrap();
    let first = pool.get();
    let second = pool.get();
    drop(first);
    // The second claims the address of the idle first: "given back twice".
    let r = catch_unwind(AssertUnwindSafe(|| drop(second)));
    assert!(r.is_ok(), "a guard's drop panicked: {}", panic_message(r));
    drop(pool);
    assert_eq!(
        drops.load(std::sync::atomic::Ordering::SeqCst),
        made.load(std::sync::atomic::Ordering::SeqCst),
        "every value made was dropped"
    );
}

#[test]
#[cfg(any(debug_assertions, feature = "debug-checks"))]
fn a_lying_identity_neither_leaks_nor_panics_a_put() {
    let drops = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let made = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (d, m) = (Arc::clone(&drops), Arc::clone(&made));
    let pool = Recycler::builder(move || {
        m.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Liar(Arc::clone(&d))
    })
    .per_thread(0)
    .build()
    .unwrap();
    let first = pool.get().detach();
    let second = pool.get().detach();
    pool.put(first);
    // The second claims the address of the idle first: "given back twice".
    let r = catch_unwind(AssertUnwindSafe(|| pool.put(second)));
    assert!(r.is_ok(), "put panicked: {}", panic_message(r));
    assert_eq!(
        drops.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the refused value was dropped at once"
    );
    let s = pool.stats();
    assert_eq!((s.puts, s.evicted, s.idle), (2, 1, 1), "{s:?}");
    drop(pool);
    assert_eq!(
        drops.load(std::sync::atomic::Ordering::SeqCst),
        made.load(std::sync::atomic::Ordering::SeqCst),
        "every value made was dropped"
    );
}
