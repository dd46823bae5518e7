//! Per-thread shards of successes not yet folded into the window.
//!
//! While no run of successes can trip the breaker (the control word's `SAFE` flag),
//! a success in closed state is only counted: one compare-and-swap on the calling
//! thread's own cache line, never on a line that other threads write. The breaker
//! folds the shards into its window under its lock. When and why, and how a success
//! counted here is always judged, is the protocol in `machine/control.rs`; this
//! file is the counting.
//!
//! Each shard is one word:
//!
//! ```text
//! bits 63..48  generation tag: the low 16 bits of the control word's generation
//! bits 47..20  second of the successes (time-based window; 0 for a count window)
//! bits 19..0   number of successes
//! ```
//!
//! A success carries the generation of the permit it was admitted under, so a
//! success that completes after the breaker changed state is never counted in the
//! new state's window: the shard is either re-tagged (its old successes belonged to
//! a state that is gone) or the success is dropped (its own state is gone).

use crate::machine::ctrl;
use crate::sync::CachePadded;
use crate::sync::atomic::{AtomicU64, Ordering};

const COUNT_BITS: u32 = 20;
pub(crate) const COUNT_MAX: u64 = (1 << COUNT_BITS) - 1;
const EPOCH_BITS: u32 = 28;
pub(crate) const EPOCH_MASK: u64 = (1 << EPOCH_BITS) - 1;
const TAG_SHIFT: u32 = COUNT_BITS + EPOCH_BITS;

fn pack(tag: u64, epoch: u64, count: u64) -> u64 {
    (tag << TAG_SHIFT) | ((epoch & EPOCH_MASK) << COUNT_BITS) | count
}

fn tag_of(w: u64) -> u64 {
    w >> TAG_SHIFT
}

fn epoch_of(w: u64) -> u64 {
    (w >> COUNT_BITS) & EPOCH_MASK
}

fn count_of(w: u64) -> u64 {
    w & COUNT_MAX
}

fn tag(generation: u32) -> u64 {
    u64::from(generation & 0xFFFF)
}

/// What [`Shards::add`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Added {
    /// Counted; the shard now holds this many successes.
    Counted(u64),
    /// The permit's generation is over: nothing to record.
    Stale,
    /// The shard holds successes of another second, or is full: fold, then record
    /// this success under the lock.
    NeedsFold,
}

/// The shards, one cache line each.
pub(crate) struct Shards {
    slots: Box<[CachePadded<AtomicU64>]>,
}

impl Shards {
    pub(crate) fn new() -> Self {
        Self {
            slots: (0..default_shards())
                .map(|_| CachePadded::new(AtomicU64::new(0)))
                .collect(),
        }
    }

    /// Counts one success of `generation` in second `epoch` (0 for a count window)
    /// on this thread's shard. `control` is read only when the shard holds another
    /// generation, to tell which of the two is over.
    #[inline]
    pub(crate) fn add(&self, generation: u32, epoch: u64, control: &AtomicU64) -> Added {
        let slot = &self.slots[heijunka_core::sync::thread_index() & (self.slots.len() - 1)];
        let tag = tag(generation);
        let epoch = epoch & EPOCH_MASK;
        // Relaxed: the first read only guesses the word for the compare-and-swap.
        // Every read-modify-write of a shard (ours, another thread's on the same
        // shard, `drain`'s swap) is atomic, so no success is lost or taken twice; the
        // generation in the word, not memory ordering, keeps states apart.
        let mut w = slot.load(Ordering::Relaxed);
        loop {
            let new = if count_of(w) == 0 {
                pack(tag, epoch, 1)
            } else if tag_of(w) != tag {
                // Acquire: pairs with the Release store of a state change, like the
                // permit's own load of the control word.
                if ctrl::generation(control.load(Ordering::Acquire)) != generation {
                    return Added::Stale;
                }
                // The shard's successes belong to a state that is over.
                pack(tag, epoch, 1)
            } else if epoch_of(w) != epoch || count_of(w) == COUNT_MAX {
                return Added::NeedsFold;
            } else {
                w + 1
            };
            // Acquire on success: pairs with the Release swap of a sweep
            // (`drain(.., sweep: true)`), so a caller whose add comes after a sweep
            // then sees the flag change stored before it (control.rs, step 3).
            // Relaxed on failure: the loop retries with the value read.
            match slot.compare_exchange_weak(w, new, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => return Added::Counted(count_of(new)),
                Err(current) => w = current,
            }
        }
    }

    /// Empties every shard, calling `fold(epoch, count)` for the successes of
    /// `generation` (the low bits of their second, see [`EPOCH_MASK`]) and dropping
    /// the rest. A `sweep` swaps every shard, idle or not, with Release ordering:
    /// the step after a revocation of `SAFE` (control.rs). Otherwise shards that
    /// read as idle are skipped, so that they are not written.
    pub(crate) fn drain(&self, generation: u32, sweep: bool, mut fold: impl FnMut(u64, u64)) {
        let tag = tag(generation);
        for slot in self.slots.iter() {
            let w = if sweep {
                // Release: pairs with the Acquire compare-and-swap in `add`.
                slot.swap(0, Ordering::Release)
            } else {
                // Relaxed: see `add`; a load first so that idle shards are not
                // written, then a swap that takes the count atomically.
                if slot.load(Ordering::Relaxed) == 0 {
                    continue;
                }
                slot.swap(0, Ordering::Relaxed)
            };
            if count_of(w) != 0 && tag_of(w) == tag {
                fold(epoch_of(w), count_of(w));
            }
        }
    }
}

impl std::fmt::Debug for Shards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shards")
            .field("shards", &self.slots.len())
            .finish_non_exhaustive()
    }
}

/// Rebuilds a full second from its low bits, as the second nearest `now_epoch` with
/// those bits: up to 2^27 s (four years) behind it, or just ahead of it (a thread
/// that read the clock after the folding thread did).
pub(crate) fn full_epoch(low: u64, now_epoch: u64) -> u64 {
    let ahead = low.wrapping_sub(now_epoch) & EPOCH_MASK;
    if ahead < 1 << (EPOCH_BITS - 1) {
        now_epoch.saturating_add(ahead)
    } else {
        now_epoch.saturating_sub((1 << EPOCH_BITS) - ahead)
    }
}

/// One shard per available CPU, rounded up to a power of two, at most 64 (the same
/// rule as `heijunka_core::ShardedCounter`).
#[cfg(not(loom))]
fn default_shards() -> usize {
    // std's `OnceLock`, not the shim: a process-wide constant, not shared state.
    use std::sync::OnceLock;
    static SHARDS: OnceLock<usize> = OnceLock::new();
    *SHARDS.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(4, |n| n.get())
            .clamp(1, 64)
            .next_power_of_two()
    })
}

#[cfg(loom)]
fn default_shards() -> usize {
    2
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::State;

    fn control(generation: u32) -> AtomicU64 {
        AtomicU64::new(ctrl::pack(generation, State::Closed, ctrl::SAFE, 0))
    }

    #[test]
    fn counts_per_generation_and_second() {
        let shards = Shards::new();
        let c = control(3);
        assert_eq!(shards.add(3, 7, &c), Added::Counted(1));
        assert_eq!(shards.add(3, 7, &c), Added::Counted(2));
        assert_eq!(shards.add(3, 8, &c), Added::NeedsFold, "another second");
        let mut folded = Vec::new();
        shards.drain(3, false, |e, n| folded.push((e, n)));
        assert_eq!(folded, [(7, 2)]);
        assert_eq!(
            shards.add(3, 8, &c),
            Added::Counted(1),
            "drained: starts over"
        );
    }

    #[test]
    fn a_dead_generation_is_never_counted() {
        let shards = Shards::new();
        let c = control(4);
        assert_eq!(shards.add(4, 0, &c), Added::Counted(1));
        // A permit of generation 3 completes late: its state is over.
        assert_eq!(shards.add(3, 0, &c), Added::Stale);
        // The breaker moves on to generation 5: generation 4's successes are over.
        c.store(
            ctrl::pack(5, State::Closed, ctrl::SAFE, 0),
            Ordering::SeqCst,
        );
        assert_eq!(shards.add(5, 0, &c), Added::Counted(1), "re-tagged");
        let mut total = 0;
        shards.drain(4, false, |_, n| total += n);
        assert_eq!(total, 0);
        shards.drain(5, true, |_, n| total += n);
        assert_eq!(total, 0, "the first drain emptied the shard");
    }

    #[test]
    fn epochs_are_rebuilt_from_their_low_bits() {
        let now = (5 << EPOCH_BITS) + 100;
        assert_eq!(full_epoch(100, now), now);
        assert_eq!(full_epoch(90, now), now - 10);
        assert_eq!(full_epoch(EPOCH_MASK, now), now - 101);
        assert_eq!(full_epoch(3, 10), 3);
        assert_eq!(full_epoch(101, now), now + 1, "a second just ahead");
    }

    #[test]
    fn no_success_is_lost_across_threads() {
        let shards = std::sync::Arc::new(Shards::new());
        let c = std::sync::Arc::new(control(1));
        let per_thread: u64 = if cfg!(miri) { 50 } else { 20_000 };
        let drained = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let workers: Vec<_> = (0..3)
            .map(|_| {
                let (shards, c, drained) = (shards.clone(), c.clone(), drained.clone());
                std::thread::spawn(move || {
                    for i in 0..per_thread {
                        assert_eq!(
                            std::mem::discriminant(&shards.add(1, 0, &c)),
                            std::mem::discriminant(&Added::Counted(0))
                        );
                        if i % 1000 == 0 {
                            let mut n = 0;
                            shards.drain(1, false, |_, k| n += k);
                            drained.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        let mut rest = 0;
        shards.drain(1, false, |_, k| rest += k);
        assert_eq!(
            drained.load(std::sync::atomic::Ordering::SeqCst) + rest,
            3 * per_thread
        );
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::State;
    use crate::sync::{Arc, thread};

    /// Two threads count successes while a third drains: every success is folded
    /// exactly once. (The counting happens on the main thread too, so that a
    /// drain's read and write of a shard can be split by an add within loom's
    /// preemption bound.)
    #[test]
    fn every_success_is_folded_once() {
        loom::model(|| {
            let shards = Arc::new(Shards::new());
            let control = Arc::new(AtomicU64::new(ctrl::pack(1, State::Closed, ctrl::SAFE, 0)));
            let drainer = {
                let shards = Arc::clone(&shards);
                thread::spawn(move || {
                    let mut folded = 0;
                    shards.drain(1, false, |_, n| folded += n);
                    folded
                })
            };
            let adder = {
                let (shards, control) = (Arc::clone(&shards), Arc::clone(&control));
                thread::spawn(move || {
                    assert!(matches!(shards.add(1, 0, &control), Added::Counted(_)));
                })
            };
            for _ in 0..2 {
                assert!(matches!(shards.add(1, 0, &control), Added::Counted(_)));
            }
            let mut folded = drainer.join().unwrap();
            adder.join().unwrap();
            shards.drain(1, false, |_, n| folded += n);
            assert_eq!(folded, 3);
        });
    }

    /// A success racing a state change is counted in its own generation or
    /// dropped, never in the next one.
    #[test]
    fn a_late_success_never_reaches_the_next_state() {
        loom::model(|| {
            let shards = Arc::new(Shards::new());
            let control = Arc::new(AtomicU64::new(ctrl::pack(1, State::Closed, ctrl::SAFE, 0)));
            let late = {
                let (shards, control) = (Arc::clone(&shards), Arc::clone(&control));
                thread::spawn(move || shards.add(1, 0, &control))
            };
            // The state changes: generation 2 starts and counts one success.
            control.store(
                ctrl::pack(2, State::Closed, ctrl::SAFE, 0),
                Ordering::SeqCst,
            );
            assert!(matches!(shards.add(2, 0, &control), Added::Counted(_)));
            let outcome = late.join().unwrap();
            let mut second = 0;
            shards.drain(2, false, |_, n| second += n);
            assert_eq!(second, 1, "only generation 2's own success: {outcome:?}");
        });
    }
}
