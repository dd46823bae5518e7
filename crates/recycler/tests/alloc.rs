//! The hot paths allocate nothing once warm: get + return, and a shared handle's
//! into_shared + clone + drop. A counting global allocator around the system one.
#![cfg(not(loom))]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use heijunka_recycler::Recycler;

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
fn get_return_and_shared_fan_out_do_not_allocate_once_warm() {
    // Debug builds poison and check the whole buffer on every return and get: keep
    // it small under miri.
    let size = if cfg!(miri) { 64 } else { 4096 };
    let pool = Recycler::builder(move || Vec::<u8>::with_capacity(size))
        .capacity(16)
        .poison()
        .build()
        .unwrap();
    // Warm up: this thread's cache, the first values, a parked shared slot, and the
    // debug checks' side table.
    for _ in 0..2 {
        let a = pool.get();
        let b = pool.get().into_shared();
        let c = b.clone();
        drop((a, b, c));
    }
    let rounds = if cfg!(miri) { 20 } else { 1000 };
    let n = allocations_in(|| {
        for i in 0..rounds {
            let mut buf = pool.get();
            buf.extend_from_slice(&[i as u8; 32]);
            drop(buf);

            let mut event = pool.get();
            event.push(1);
            let event = event.into_shared();
            let copies = [event.clone(), event.clone(), event.clone()];
            drop(event);
            drop(copies);
        }
    });
    assert_eq!(n, 0, "{n} allocations on the hot paths");
    assert_eq!(pool.stats().misses, 2);
}
