//! The hot paths allocate nothing: a counting global allocator around the system one.
#![cfg(not(loom))]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use heijunka_backpressure::{BoundedQueue, ConcurrencyLimit, Gcra, KeyedRateLimiter, RateLimiter};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged;
// counting touches only a thread-local `Cell` (const-initialised, so it never
// allocates).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|a| a.set(a.get() + 1));
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|a| a.set(a.get() + 1));
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_in(f: impl FnOnce()) -> u64 {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

#[test]
fn hot_paths_do_not_allocate() {
    let limit = ConcurrencyLimit::new(4).unwrap();
    let gcra = Gcra::builder(1e6).burst(1000).build().unwrap();
    let queue = BoundedQueue::new(64).unwrap();
    let keyed = KeyedRateLimiter::builder(1e6).burst(1000).build().unwrap();
    keyed.check_key(&7_u64).unwrap(); // the first check of a key inserts it
    // Warm up anything lazily initialised (the clock's calibration, thread-locals).
    let _ = gcra.check();
    let _ = queue.try_push(0_u64);
    let _ = queue.try_pop();

    let n = allocations_in(|| {
        let rounds = if cfg!(miri) { 20 } else { 1000 };
        for i in 0..rounds {
            drop(limit.try_acquire().unwrap());
            let _ = gcra.check();
            queue.try_push(i).unwrap();
            assert_eq!(queue.try_pop(), Some(i));
            let _ = keyed.check_key(&7);
            let _ = keyed.check_key_state(&7);
        }
    });
    assert_eq!(n, 0, "{n} allocations on the hot paths");
}
