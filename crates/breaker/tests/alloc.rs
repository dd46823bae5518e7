//! The closed path allocates nothing: a counting global allocator around the
//! system one.
#![cfg(not(loom))]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Duration;

use heijunka_breaker::{CircuitBreaker, SlidingWindowType};
use heijunka_core::ManualClock;

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
fn closed_calls_and_open_rejections_do_not_allocate() {
    let clock = ManualClock::new();
    let count = CircuitBreaker::builder()
        .sliding_window(SlidingWindowType::CountBased, 100)
        .clock(&clock)
        .build()
        .unwrap();
    let time = CircuitBreaker::builder()
        .sliding_window(SlidingWindowType::TimeBased, 10)
        .slow_call_duration_threshold(Duration::from_secs(1))
        .clock(&clock)
        .build()
        .unwrap();
    let open = CircuitBreaker::builder()
        .consecutive_failure_threshold(1)
        .clock(&clock)
        .build()
        .unwrap();
    let _ = open.call(|| Err::<(), _>(()));
    // Warm up thread-locals (the shard number).
    let _ = count.call(|| Ok::<_, ()>(()));
    let _ = time.call(|| Ok::<_, ()>(()));

    let rounds = if cfg!(miri) { 20 } else { 1000 };
    let n = allocations_in(|| {
        for i in 0..rounds {
            // Successes, and failures folded in under the lock.
            let _ = count.call(|| if i % 5 == 0 { Err(i) } else { Ok(i) });
            let _ = time.call(|| if i % 5 == 0 { Err(i) } else { Ok(i) });
            assert!(open.call(|| Ok::<_, ()>(())).is_err());
        }
    });
    assert_eq!(n, 0);
}
