//! A statistics counter that scales with the number of threads bumping it.

use std::fmt;

use crate::sync::CachePadded;
use crate::sync::atomic::{AtomicU64, Ordering};

/// A monotonically increasing `u64` counter split into cache-line-padded shards.
///
/// Each thread adds to its own shard, so threads counting calls at the same time do
/// not bounce one cache line between cores, the way a single shared `AtomicU64`
/// does. [`sum`](Self::sum) folds the shards. This is the counter heijunka's stats
/// use on hot paths (a breaker's outcome counts, a recycler's hits).
///
/// Under `--cfg loom` it is built on loom atomics and usable only inside a model.
///
/// Guarantees, proven by a loom model (`cargo xtask loom`):
/// - no increment is lost: once the adding threads are joined (or otherwise
///   synchronised with the reader), `sum()` equals the total added;
/// - a thread's successive `sum()` calls never decrease while others add.
///
/// `sum()` while adds are in flight is a snapshot of no particular instant: each
/// shard is read once, in turn. Sums wrap on overflow of `u64`.
///
/// ```
/// # if heijunka_core::sync::IS_LOOM { return; } // loom types work only inside a model
/// use heijunka_core::ShardedCounter;
/// use std::sync::Arc;
///
/// let calls = Arc::new(ShardedCounter::new());
/// let workers: Vec<_> = (0..4)
///     .map(|_| {
///         let calls = Arc::clone(&calls);
///         std::thread::spawn(move || {
///             for _ in 0..1000 {
///                 calls.increment();
///             }
///         })
///     })
///     .collect();
/// for w in workers {
///     w.join().unwrap();
/// }
/// assert_eq!(calls.sum(), 4000);
/// ```
pub struct ShardedCounter {
    shards: Box<[CachePadded<AtomicU64>]>,
}

impl ShardedCounter {
    /// A counter at zero with one shard per available CPU (rounded up to a power of
    /// two, at most 64).
    pub fn new() -> Self {
        Self::with_shards(default_shards())
    }

    /// A counter at zero with `shards` shards (rounded up to a power of two,
    /// between 1 and 1024).
    pub fn with_shards(shards: usize) -> Self {
        let n = shards.clamp(1, 1024).next_power_of_two();
        Self {
            shards: (0..n)
                .map(|_| CachePadded::new(AtomicU64::new(0)))
                .collect(),
        }
    }

    /// Adds `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        let shard = &self.shards[crate::sync::thread_index() & (self.shards.len() - 1)];
        // Relaxed: a statistic; readers synchronise through whatever joined the
        // adding threads (thread join, a channel), and per-location coherence keeps
        // each shard monotonic for every reader.
        shard.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds one.
    #[inline]
    pub fn increment(&self) {
        self.add(1);
    }

    /// The total of every shard.
    pub fn sum(&self) -> u64 {
        self.shards
            .iter()
            // Relaxed: see `add`.
            .map(|s| s.load(Ordering::Relaxed))
            .fold(0_u64, u64::wrapping_add)
    }

    /// The number of shards.
    pub fn shards(&self) -> usize {
        self.shards.len()
    }
}

impl Default for ShardedCounter {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for ShardedCounter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardedCounter")
            .field("sum", &self.sum())
            .field("shards", &self.shards.len())
            .finish()
    }
}

#[cfg(not(loom))]
fn default_shards() -> usize {
    use std::sync::OnceLock;
    static SHARDS: OnceLock<usize> = OnceLock::new();
    *SHARDS.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(4, |n| n.get())
            .clamp(1, 64)
    })
}

#[cfg(loom)]
fn default_shards() -> usize {
    2
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn shard_counts_are_powers_of_two_within_bounds() {
        assert_eq!(ShardedCounter::with_shards(0).shards(), 1);
        assert_eq!(ShardedCounter::with_shards(3).shards(), 4);
        assert_eq!(ShardedCounter::with_shards(5000).shards(), 1024);
        assert!(ShardedCounter::new().shards().is_power_of_two());
        assert!(ShardedCounter::new().shards() <= 64);
    }

    #[test]
    fn no_increment_is_lost_across_threads() {
        let threads = 4;
        let per_thread = if cfg!(miri) { 50 } else { 20_000 };
        let counter = Arc::new(ShardedCounter::with_shards(2));
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let counter = Arc::clone(&counter);
                std::thread::spawn(move || {
                    for _ in 0..per_thread {
                        counter.add(t + 1);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        // 1 + 2 + 3 + 4 = 10 per round
        assert_eq!(counter.sum(), 10 * per_thread);
    }

    #[test]
    fn sum_wraps_instead_of_panicking() {
        let c = ShardedCounter::with_shards(1);
        c.add(u64::MAX);
        c.add(2);
        assert_eq!(c.sum(), 1);
        assert!(format!("{c:?}").contains("sum: 1"));
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::sync::{Arc, thread};

    /// Two threads add concurrently, on their own shards or sharing one; once
    /// joined, the sum is exact.
    #[test]
    fn no_lost_increment() {
        for shards in [1, 2] {
            no_lost_increment_with(shards);
        }
    }

    fn no_lost_increment_with(shards: usize) {
        loom::model(move || {
            let c = Arc::new(ShardedCounter::with_shards(shards));
            let handles: Vec<_> = (0..2)
                .map(|_| {
                    let c = Arc::clone(&c);
                    thread::spawn(move || {
                        c.add(1);
                        c.add(2);
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap();
            }
            assert_eq!(c.sum(), 6);
        });
    }

    /// A reader racing two adders never sees the sum go down.
    #[test]
    fn sum_is_monotonic_for_a_reader() {
        loom::model(|| {
            let c = Arc::new(ShardedCounter::with_shards(2));
            let adders: Vec<_> = (0..2)
                .map(|_| {
                    let c = Arc::clone(&c);
                    thread::spawn(move || c.add(1))
                })
                .collect();
            let first = c.sum();
            let second = c.sum();
            assert!(second >= first, "sum went from {first} to {second}");
            assert!(second <= 2);
            for a in adders {
                a.join().unwrap();
            }
            assert_eq!(c.sum(), 2);
        });
    }
}
