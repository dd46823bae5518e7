//! The debug checks: a value given back twice, a value from another recycler, and
//! poisoned content (a stale reader sees the pattern, a stale writer is caught).
//! They run where `DEBUG_CHECKS` is on (debug builds, or `--features debug-checks`);
//! the last test checks that they are off otherwise.
#![cfg(not(loom))]

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
fn a_value_given_back_twice_is_reported_with_both_call_sites() {
    if !DEBUG_CHECKS {
        return;
    }
    let pool = handles();
    let h = pool.get().detach();
    let copy = h.clone();
    let first_line = line!() + 1;
    pool.put(h);
    if cfg!(miri) {
        // `put` leaks the refused duplicate on purpose (for a value rebuilt from a raw
        // pointer, dropping it would free memory twice), and miri reports leaks:
        // check the same refusal through `try_put` there.
        let err = pool.try_put(copy).unwrap_err();
        assert!(matches!(err.misuse(), Misuse::ReturnedTwice { .. }));
        drop(err.into_inner());
    } else {
        let second_line = line!() + 2;
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.put(copy); // the same allocation, again
        }));
        let msg = panic_message(r);
        assert!(msg.contains("given back twice"), "{msg}");
        assert!(
            msg.contains(&format!("debug_checks.rs:{first_line}:")),
            "first site: {msg}"
        );
        assert!(
            msg.contains(&format!("debug_checks.rs:{second_line}:")),
            "second site: {msg}"
        );
    }
    assert_eq!(pool.stats().puts, 1, "the second put was refused");

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
fn a_value_from_another_recycler_is_refused() {
    if !DEBUG_CHECKS {
        return;
    }
    let a = Recycler::new(4, || Vec::<u8>::with_capacity(32)).unwrap();
    let b = Recycler::new(4, || Vec::<u8>::with_capacity(32)).unwrap();
    let detach_line = line!() + 1;
    let v = a.get().detach();
    let err = b.try_put(v).unwrap_err();
    match err.misuse() {
        Misuse::Foreign {
            owner,
            recycler,
            detached_at,
            ..
        } => {
            assert_eq!((owner, recycler), (a.id(), b.id()));
            assert_eq!(detached_at.line(), detach_line);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(
        err.to_string().contains(&format!(
            "belongs to recycler #{}, not to recycler #{}",
            a.id(),
            b.id()
        )),
        "{err}"
    );
    // `put` panics instead.
    let v = err.into_inner();
    let v2 = a.get().detach();
    let msg = panic_message(catch_unwind(AssertUnwindSafe(|| b.put(v2))));
    assert!(msg.contains("belongs to recycler"), "{msg}");
    assert_eq!(b.stats().returns, 0);
    // It goes home without complaint.
    a.put(v);
    assert_eq!(a.stats().puts, 1);
}

#[test]
fn returned_buffers_are_poisoned_so_a_stale_reader_sees_garbage() {
    if !DEBUG_CHECKS {
        return;
    }
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
fn a_write_to_an_idle_value_is_caught_on_the_next_get() {
    if !DEBUG_CHECKS {
        return;
    }
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

#[test]
fn release_builds_without_the_feature_skip_the_checks() {
    if DEBUG_CHECKS {
        return;
    }
    let pool = handles();
    let h = pool.get().detach();
    let copy = h.clone();
    pool.put(h);
    pool.put(copy); // not detected: no side table, no panic
    assert_eq!(pool.stats().puts, 2);
}
