//! Per-thread caches in front of the shared store, like `sync.Pool`'s per-P caches.
//!
//! Each thread keeps one table of caches, indexed by a slot number each recycler
//! takes when it is built and gives back when it is dropped. A cache holds a few
//! idle values and the thread's counters for that recycler, so the common get and
//! return touch only memory this thread owns: no atomic read-modify-write, no shared
//! cache line.
//!
//! Values never stay behind in a thread that has exited: a cache's `Drop` (run by
//! the thread-local destructor) hands its values to the shared store, or drops and
//! counts them when the store is full or the recycler is gone. A cache left by a
//! dropped recycler is dropped when its slot is reused, or at thread exit.
//!
//! Not compiled under loom: the caches are single-threaded code (a `RefCell` in a
//! thread-local); the loom models cover the shared store and the shared handle.

use std::any::Any;
use std::cell::RefCell;

use heijunka_core::sync::{Arc, Mutex, Weak};

use crate::DEBUG_CHECKS;
use crate::checks;
use crate::metrics::PendingHits;
use crate::recycler::Inner;
use crate::stats::{Field, Tally};

type Table = Vec<Option<Box<dyn Any>>>;

heijunka_core::sync::thread_local! {
    static CACHES: RefCell<Table> = const { RefCell::new(Vec::new()) };
}

/// Slot numbers in use; a freed number is reused first, so tables stay as short as
/// the number of live recyclers.
struct Slots {
    next: usize,
    free: Vec<usize>,
}

static SLOTS: Mutex<Slots> = Mutex::new(Slots {
    next: 0,
    free: Vec::new(),
});

fn slots() -> heijunka_core::sync::MutexGuard<'static, Slots> {
    // Nothing panics while the lock is held: a poisoned lock still holds valid data.
    SLOTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A recycler's slot number in every thread's table, given back on drop.
#[derive(Debug)]
pub(crate) struct Slot(usize);

impl Slot {
    pub(crate) fn take() -> Self {
        let mut s = slots();
        let n = s.free.pop().unwrap_or_else(|| {
            s.next += 1;
            s.next - 1
        });
        Self(n)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        slots().free.push(self.0);
    }
}

/// The counters of every thread that has a cache for one recycler, and the totals
/// of threads that have exited.
#[derive(Debug, Default)]
pub(crate) struct Threads {
    pub(crate) live: Vec<Arc<Tally>>,
    pub(crate) retired: [u64; 10],
}

/// One thread's cache for one recycler.
pub(crate) struct LocalCache<T: Send + 'static> {
    /// The recycler's id: a slot reused by a newer recycler does not match.
    id: u64,
    pub(crate) items: Vec<Box<T>>,
    pub(crate) tally: Arc<Tally>,
    home: Weak<Inner<T>>,
    /// The recycler's identity hook, kept for when the recycler is gone.
    identity: fn(&T) -> Option<usize>,
    /// Hits not yet published as metrics; published when this cache goes too.
    pub(crate) pending: PendingHits,
}

impl<T: Send + 'static> LocalCache<T> {
    /// Records the current number of cached values for `stats()`.
    #[inline]
    pub(crate) fn note_idle(&self) {
        self.tally
            .set_owned(Field::LocalIdle, self.items.len() as u64);
    }
}

impl<T: Send + 'static> Drop for LocalCache<T> {
    fn drop(&mut self) {
        let items = std::mem::take(&mut self.items);
        let Some(inner) = self.home.upgrade() else {
            // The recycler is gone: nothing to hand back to.
            if DEBUG_CHECKS {
                for address in items.iter().filter_map(|v| (self.identity)(v)) {
                    checks::forget(address);
                }
            }
            return;
        };
        // Uncounted here first: a `stats()` read meanwhile sees the values in
        // neither place rather than in both.
        self.tally.set_owned(Field::LocalIdle, 0);
        for value in items {
            if let Err(value) = inner.shared.push(value) {
                if DEBUG_CHECKS && let Some(address) = (inner.hooks.identity)(&value) {
                    checks::forget(address);
                }
                self.tally.bump_owned(Field::Evicted);
                inner.metrics.emit(&[Field::Evicted]);
                drop(value);
            }
        }
        inner.retire(&self.tally);
    }
}

/// Finds this thread's cache for recycler `id` in `slot`.
#[inline(always)]
fn find<T: Send + 'static>(table: &mut Table, slot: usize, id: u64) -> Option<&mut LocalCache<T>> {
    let cache = table
        .get_mut(slot)?
        .as_mut()?
        .downcast_mut::<LocalCache<T>>()?;
    (cache.id == id).then_some(cache)
}

enum Lookup<R> {
    Done(R),
    Missing,
    Unavailable,
}

impl<T: Send + 'static> Inner<T> {
    /// Runs `f` on this thread's cache for this recycler, creating the cache on
    /// first use. `None` when the thread cannot reach its caches: while its
    /// thread-locals are being destroyed, or from inside another cache operation
    /// (a value's `Drop` that uses a recycler). `f` must not call user code.
    #[inline(always)]
    pub(crate) fn with_local<R>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut LocalCache<T>) -> R,
    ) -> Option<R> {
        let mut f = Some(f);
        for _ in 0..2 {
            let found = CACHES.try_with(|c| {
                let Ok(mut table) = c.try_borrow_mut() else {
                    return Lookup::Unavailable;
                };
                match find::<T>(&mut table, self.slot.0, self.id) {
                    Some(cache) => Lookup::Done((f.take().expect("`f` runs at most once"))(cache)),
                    None => Lookup::Missing,
                }
            });
            match found {
                Ok(Lookup::Done(r)) => return Some(r),
                Ok(Lookup::Missing) => self.install(),
                Ok(Lookup::Unavailable) | Err(_) => return None,
            }
        }
        None
    }

    /// Puts a new cache for this recycler in this thread's table, replacing a
    /// stale one (dropped after the table is released: it may drop values).
    #[cold]
    fn install(self: &Arc<Self>) {
        let tally = Arc::new(Tally::default());
        self.threads_lock().live.push(Arc::clone(&tally));
        let cache = LocalCache {
            id: self.id,
            items: Vec::with_capacity(self.per_thread),
            tally,
            home: Arc::downgrade(self),
            identity: self.hooks.identity,
            pending: PendingHits::new(&self.metrics.hits),
        };
        let slot = self.slot.0;
        let stale = CACHES.try_with(move |c| {
            let mut table = c.try_borrow_mut().ok()?;
            if table.len() <= slot {
                table.resize_with(slot + 1, || None);
            }
            table[slot].replace(Box::new(cache))
        });
        drop(stale);
    }

    /// Folds an exiting thread's counters into the retired totals.
    pub(crate) fn retire(&self, tally: &Arc<Tally>) {
        let mut threads = self.threads_lock();
        tally.add_to(&mut threads.retired);
        threads.live.retain(|t| !Arc::ptr_eq(t, tally));
    }

    pub(crate) fn threads_lock(&self) -> heijunka_core::sync::MutexGuard<'_, Threads> {
        // Counters only, never held across user code: a poisoned lock is still valid.
        self.threads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Drops this thread's cache for `inner`, handing its values back (`clear()`).
pub(crate) fn release<T: Send + 'static>(inner: &Arc<Inner<T>>) {
    let cache = CACHES
        .try_with(|c| {
            let mut table = c.try_borrow_mut().ok()?;
            let entry = table.get_mut(inner.slot.0)?;
            let ours = entry
                .as_mut()?
                .downcast_mut::<LocalCache<T>>()
                .is_some_and(|c| c.id == inner.id);
            if ours { entry.take() } else { None }
        })
        .ok()
        .flatten();
    drop(cache);
}
