//! Allocation accounting: a counting global allocator and per-scope / per-task
//! allocation figures (feature `alloc-tracking`).
//!
//! [`CountingAlloc`] wraps another allocator (the system's by default) and adds
//! each allocation's and deallocation's size to counters of the *calling thread*
//! (a `const` thread-local without a destructor: no atomic, no shared cache line,
//! no allocation inside the allocator). A scope reads the thread's counters at its
//! start and end; a [`Tracked`] future does so around each of its polls and sums the
//! differences, so a task's figures follow it across `.await` points even when a
//! multi-threaded runtime moves it between threads.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::future::Future;
use std::marker::PhantomData;
use std::ops::{Add, AddAssign};
use std::pin::Pin;
// The global allocator runs outside any loom model (loom itself allocates through
// it), so this flag is std's atomic, not the loom shim's.
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use serde::Serialize;

/// Set by the first allocation through any [`CountingAlloc`].
static INSTALLED: AtomicBool = AtomicBool::new(false);

#[derive(Clone, Copy)]
struct Counts {
    allocated: u64,
    freed: u64,
    allocations: u64,
    deallocations: u64,
}

thread_local! {
    // `const` and without `Drop`: no lazy initialisation, no destructor to
    // register, so reading it from inside the allocator never allocates.
    static COUNTS: Cell<Counts> = const {
        Cell::new(Counts { allocated: 0, freed: 0, allocations: 0, deallocations: 0 })
    };
}

#[inline(always)]
fn record(allocated: u64, freed: u64) {
    // `try_with` fails only while the thread-local is being torn down, which a
    // destructor-less `const` thread-local never is; a miss then loses one count
    // rather than aborting inside the allocator.
    let _ = COUNTS.try_with(|c| {
        let mut v = c.get();
        v.allocated = v.allocated.wrapping_add(allocated);
        v.freed = v.freed.wrapping_add(freed);
        v.allocations += u64::from(allocated != 0);
        v.deallocations += u64::from(freed != 0);
        c.set(v);
    });
}

#[inline(always)]
fn mark_installed() {
    // Relaxed: a one-way flag, read on its own by `is_installed`.
    if !INSTALLED.load(Ordering::Relaxed) {
        INSTALLED.store(true, Ordering::Relaxed);
    }
}

/// A global allocator that counts, per thread, the bytes allocated and freed through
/// it, and forwards every call to `A` (the system allocator by default; jemalloc's
/// or mimalloc's allocator type works the same way).
///
/// ```
/// use heijunka_memory::{CountingAlloc, measure_allocations};
/// use std::hint::black_box;
///
/// #[global_allocator]
/// static GLOBAL: CountingAlloc = CountingAlloc::system();
///
/// fn main() {
///     let (_, stats) = measure_allocations(|| drop(black_box(vec![1_u8; 1_000])));
///     assert_eq!((stats.allocated, stats.freed), (1_000, 1_000));
///     assert!(CountingAlloc::is_installed());
/// }
/// ```
///
/// A `realloc` counts as a free of the old size and an allocation of the new one.
/// Zero-sized requests never reach a global allocator, so they are not counted.
#[derive(Debug, Default, Clone, Copy)]
pub struct CountingAlloc<A = System> {
    inner: A,
}

impl CountingAlloc<System> {
    /// Counts the system allocator's calls.
    pub const fn system() -> Self {
        Self { inner: System }
    }

    /// Whether any `CountingAlloc` (of any inner allocator) has allocated yet:
    /// `false` means none is the global allocator, and every figure will read zero.
    pub fn is_installed() -> bool {
        // Relaxed: pairs with the Relaxed store in `mark_installed`; a stale `false`
        // is only possible before the first allocation.
        INSTALLED.load(Ordering::Relaxed)
    }
}

impl<A> CountingAlloc<A> {
    /// Counts `inner`'s calls.
    pub const fn new(inner: A) -> Self {
        Self { inner }
    }

    /// The wrapped allocator.
    pub const fn inner(&self) -> &A {
        &self.inner
    }
}

// SAFETY: every method forwards to `self.inner` with the caller's arguments
// unchanged and returns its result unchanged, so `A`'s implementation of the
// `GlobalAlloc` contract is this one's; the only additions are updates to a
// destructor-less `const` thread-local and a relaxed atomic, which neither allocate
// nor unwind.
unsafe impl<A: GlobalAlloc> GlobalAlloc for CountingAlloc<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `alloc`'s contract (non-zero size), which is
        // `inner.alloc`'s.
        let ptr = unsafe { self.inner.alloc(layout) };
        if !ptr.is_null() {
            mark_installed();
            record(layout.size() as u64, 0);
        }
        ptr
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        let ptr = unsafe { self.inner.alloc_zeroed(layout) };
        if !ptr.is_null() {
            mark_installed();
            record(layout.size() as u64, 0);
        }
        ptr
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        record(0, layout.size() as u64);
        // SAFETY: the caller guarantees `ptr` came from this allocator (so from
        // `inner`, which made every block we returned) with this `layout`.
        unsafe { self.inner.dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `ptr` came from this allocator (so from
        // `inner`) with `layout`, and that `new_size` is valid for it.
        let new = unsafe { self.inner.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            record(new_size as u64, layout.size() as u64);
        }
        new
    }
}

/// Bytes and calls counted by [`CountingAlloc`] over some span of one thread or task.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[non_exhaustive]
pub struct AllocStats {
    /// Bytes allocated (a `realloc` adds its new size).
    pub allocated: u64,
    /// Bytes freed (a `realloc` adds its old size).
    pub freed: u64,
    /// Allocation calls (`alloc`, `alloc_zeroed`, `realloc`).
    pub allocations: u64,
    /// Deallocation calls (`dealloc`, `realloc`).
    pub deallocations: u64,
}

impl AllocStats {
    /// The calling thread's totals since it started.
    pub fn current_thread() -> Self {
        let c = COUNTS.try_with(Cell::get).unwrap_or(Counts {
            allocated: 0,
            freed: 0,
            allocations: 0,
            deallocations: 0,
        });
        Self {
            allocated: c.allocated,
            freed: c.freed,
            allocations: c.allocations,
            deallocations: c.deallocations,
        }
    }

    /// Bytes still held: allocated less freed (negative when the span freed memory
    /// allocated before it).
    pub fn net(&self) -> i64 {
        (i128::from(self.allocated) - i128::from(self.freed))
            .clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
    }

    /// The counts between `earlier` and `self` (two readings of one thread).
    #[must_use]
    pub fn since(self, earlier: Self) -> Self {
        Self {
            allocated: self.allocated.wrapping_sub(earlier.allocated),
            freed: self.freed.wrapping_sub(earlier.freed),
            allocations: self.allocations.wrapping_sub(earlier.allocations),
            deallocations: self.deallocations.wrapping_sub(earlier.deallocations),
        }
    }
}

impl Add for AllocStats {
    type Output = Self;
    fn add(self, o: Self) -> Self {
        Self {
            allocated: self.allocated.wrapping_add(o.allocated),
            freed: self.freed.wrapping_add(o.freed),
            allocations: self.allocations.wrapping_add(o.allocations),
            deallocations: self.deallocations.wrapping_add(o.deallocations),
        }
    }
}

impl AddAssign for AllocStats {
    fn add_assign(&mut self, o: Self) {
        *self = *self + o;
    }
}

/// A synchronous scope on one thread: what the thread allocated and freed since
/// [`enter`](Self::enter). Not `Send`: the figures are the entering thread's.
#[derive(Debug)]
pub struct AllocScope {
    start: AllocStats,
    _not_send: PhantomData<*const ()>,
}

impl AllocScope {
    /// Starts counting on this thread.
    pub fn enter() -> Self {
        Self {
            start: AllocStats::current_thread(),
            _not_send: PhantomData,
        }
    }

    /// The counts since [`enter`](Self::enter).
    pub fn stats(&self) -> AllocStats {
        AllocStats::current_thread().since(self.start)
    }
}

/// Runs `f` and returns what it allocated and freed on this thread.
///
/// ```
/// use heijunka_memory::measure_allocations;
///
/// let (len, stats) = measure_allocations(|| vec![0_u8; 1_000].len());
/// assert_eq!(len, 1_000);
/// // With `CountingAlloc` as the global allocator: stats.allocated == 1_000.
/// # let _ = stats;
/// ```
pub fn measure_allocations<R>(f: impl FnOnce() -> R) -> (R, AllocStats) {
    let scope = AllocScope::enter();
    let out = f();
    (out, scope.stats())
}

/// Wraps a future so its output comes with what its polls allocated and freed,
/// summed across `.await` points and threads.
///
/// Each poll's figures are the polling thread's counts during that poll, so they
/// include what the runtime itself allocated on the task's behalf while polling it,
/// and miss work the task hands to other threads (`spawn_blocking`, channels to
/// other tasks).
///
/// # Cancel safety
///
/// Dropping the returned future drops `future` in place (once) and nothing else:
/// it is as cancel safe as `future`. The figures of the polls so far are lost with
/// it; read [`Tracked::stats`] before dropping to keep them.
pub fn track_allocations<F: Future>(future: F) -> Tracked<F> {
    Tracked {
        future,
        stats: AllocStats::default(),
    }
}

/// The future returned by [`track_allocations`].
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct Tracked<F> {
    future: F,
    stats: AllocStats,
}

impl<F> Tracked<F> {
    /// The figures of the polls so far.
    pub fn stats(&self) -> AllocStats {
        self.stats
    }
}

impl<F: Future> Future for Tracked<F> {
    type Output = (F::Output, AllocStats);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: `future` is structurally pinned: it is never moved out of `self`
        // or replaced, `Tracked` has no `Drop` impl, and `Tracked` is `Unpin` only
        // when `F` is (auto trait). `stats` is not pinned and only read and written
        // in place.
        let this = unsafe { self.get_unchecked_mut() };
        // SAFETY: see above; `this.future` stays where the pinned `Tracked` put it.
        let future = unsafe { Pin::new_unchecked(&mut this.future) };
        let before = AllocStats::current_thread();
        let poll = future.poll(cx);
        this.stats += AllocStats::current_thread().since(before);
        poll.map(|out| (out, this.stats))
    }
}
