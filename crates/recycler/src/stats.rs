//! Counters: per-thread tallies written without read-modify-write, summed on read.

use serde::Serialize;

use heijunka_core::sync::CachePadded;
use heijunka_core::sync::atomic::{AtomicU64, Ordering};

/// What a recycler has done, summed over every thread: a snapshot, exact once no
/// operation is in flight.
///
/// Every value handed out by [`get`](crate::Recycler::get) ends in exactly one of:
/// a return (`returns`, then kept or counted in one of the `dropped_*` fields or
/// `reset_panics`), or a [`detach`](crate::Recycled::detach) (`detaches`). Values
/// that enter without a `get` come through [`put`](crate::Recycler::put) (`puts`,
/// also counted in `returns`). An idle value leaves the pool by a hit, an eviction
/// (`evicted`) or a reset that panics when debug checks reset it again on `get`. So
/// once nothing is in flight:
///
/// - `gets == hits + misses`
/// - `gets - detaches == returns - puts` (when every guard has been dropped)
/// - `idle == returns - dropped_full - dropped_oversize - reset_panics - hits - evicted`
///
/// ```
/// # if heijunka_core::sync::IS_LOOM { return Ok(()); } // loom types work only inside a model
/// use heijunka_recycler::Recycler;
///
/// let pool = Recycler::new(8, || Vec::<u8>::with_capacity(64))?;
/// drop(pool.get()); // a miss (factory call), then a return
/// drop(pool.get()); // a hit
/// let s = pool.stats();
/// assert_eq!((s.gets, s.hits, s.misses, s.returns, s.idle), (2, 1, 1, 2, 1));
/// println!("{}", serde_json::to_string(&s)?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct RecyclerStats {
    /// Values handed out by `get()`: `hits + misses`.
    pub gets: u64,
    /// `get()`s served with an idle value.
    pub hits: u64,
    /// `get()`s that called the factory.
    pub misses: u64,
    /// Values given back: guards dropped, last shared handles dropped, `put()`s.
    pub returns: u64,
    /// Of `returns`, those given back through `put()`.
    pub puts: u64,
    /// Values taken out of the recycler's care with `detach()`.
    pub detaches: u64,
    /// Returned values dropped because the recycler already held `capacity` idle
    /// values (and the returning thread's cache was full).
    pub dropped_full: u64,
    /// Returned values dropped by the shrink rule: their capacity had grown past
    /// `max_value_capacity`.
    pub dropped_oversize: u64,
    /// Values dropped because their reset panicked.
    pub reset_panics: u64,
    /// Idle values dropped by the recycler: by `clear()`, when a thread's cache was
    /// handed back at thread exit to a full shared store, or (debug checks) when a
    /// value was found written to while idle, or when a returned guard's value
    /// claimed the [identity](crate::Recycle::identity) of an idle one (a wrong
    /// `identity`; also counted in `returns`).
    pub evicted: u64,
    /// Values idle now: the shared store plus every live thread's cache.
    pub idle: u64,
    /// The shared store's capacity.
    pub capacity: usize,
    /// Each thread's cache capacity.
    pub per_thread: usize,
}

/// One counter of a [`Tally`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Field {
    Hits,
    Misses,
    Returns,
    Puts,
    Detaches,
    DroppedFull,
    DroppedOversize,
    ResetPanics,
    Evicted,
    /// A gauge, not a count: the values in this thread's cache.
    LocalIdle,
}

const FIELDS: usize = 10;

/// A set of counters on its own cache line.
///
/// A thread's tally (one per thread and recycler) is written only by that thread,
/// with a load and a store (no read-modify-write, so no locked instruction and no
/// shared cache line on the hot path); `stats()` reads it from elsewhere. The
/// recycler's fallback tally, used where a thread cannot reach its cache, is
/// written by any thread with `fetch_add`.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    counts: CachePadded<[AtomicU64; FIELDS]>,
}

impl Tally {
    /// Adds one to `field`; only the owning thread may call this.
    #[cfg_attr(loom, allow(dead_code))] // per-thread caches are compiled out under loom
    #[inline]
    pub(crate) fn bump_owned(&self, field: Field) {
        let c = &self.counts[field as usize];
        // Relaxed: this thread is the only writer, so load-then-store loses nothing;
        // readers pair with nothing (a statistic), and the registry mutex orders the
        // final values before a thread's tally is folded at thread exit.
        c.store(c.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
    }

    /// Sets a gauge; only the owning thread may call this.
    #[cfg_attr(loom, allow(dead_code))] // per-thread caches are compiled out under loom
    #[inline]
    pub(crate) fn set_owned(&self, field: Field, value: u64) {
        // Relaxed: single writer, read as a statistic (see `bump_owned`).
        self.counts[field as usize].store(value, Ordering::Relaxed);
    }

    /// Adds one to `field` from any thread.
    pub(crate) fn bump_shared(&self, field: Field) {
        // Relaxed: a statistic; readers pair with nothing.
        self.counts[field as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Adds this tally's counts into `totals`.
    pub(crate) fn add_to(&self, totals: &mut [u64; FIELDS]) {
        for (t, c) in totals.iter_mut().zip(self.counts.iter()) {
            // Relaxed: a statistic (see `bump_owned`).
            *t = t.wrapping_add(c.load(Ordering::Relaxed));
        }
    }
}

/// Counts summed over tallies, turned into the public snapshot.
pub(crate) fn snapshot(
    totals: &[u64; FIELDS],
    shared_idle: usize,
    capacity: usize,
    per_thread: usize,
) -> RecyclerStats {
    let get = |f: Field| totals[f as usize];
    RecyclerStats {
        gets: get(Field::Hits).wrapping_add(get(Field::Misses)),
        hits: get(Field::Hits),
        misses: get(Field::Misses),
        returns: get(Field::Returns),
        puts: get(Field::Puts),
        detaches: get(Field::Detaches),
        dropped_full: get(Field::DroppedFull),
        dropped_oversize: get(Field::DroppedOversize),
        reset_panics: get(Field::ResetPanics),
        evicted: get(Field::Evicted),
        idle: (shared_idle as u64).wrapping_add(get(Field::LocalIdle)),
        capacity,
        per_thread,
    }
}

/// A new, zeroed total.
pub(crate) const fn zero() -> [u64; FIELDS] {
    [0; FIELDS]
}
