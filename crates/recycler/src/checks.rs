//! The debug checks' side table: which allocations are idle in which recycler, and
//! (the latest [`MAX_DETACHED`]) which were detached from which.
//!
//! Only consulted when [`DEBUG_CHECKS`] is true; in a release build without the
//! `debug-checks` feature every call site is behind `if DEBUG_CHECKS` and compiles
//! away. Values in a live guard have no entry: a guard always goes back to its own
//! recycler, so only idle and detached values need remembering.

use std::collections::{HashMap, VecDeque};
use std::panic::Location;

use crate::Misuse;

/// Whether this build runs the misuse checks: double return on
/// [`Recycler::put`](crate::Recycler::put), poisoning of returned values, and the
/// stale-write check on `get`. True in debug builds and with the `debug-checks`
/// feature; a release build without the feature skips them at no cost.
pub const DEBUG_CHECKS: bool = cfg!(any(debug_assertions, feature = "debug-checks"));

/// Where a value was handed out or given back: the caller's location when the
/// checks are on, nothing at all when they are off.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Origin {
    #[cfg(any(debug_assertions, feature = "debug-checks"))]
    at: &'static Location<'static>,
}

impl Origin {
    /// The caller of the `#[track_caller]` function this is called in.
    #[cfg_attr(any(debug_assertions, feature = "debug-checks"), track_caller)]
    #[inline]
    pub(crate) fn caller() -> Self {
        Self {
            #[cfg(any(debug_assertions, feature = "debug-checks"))]
            at: Location::caller(),
        }
    }

    /// The recorded location; this function's own when the checks are off (never
    /// consulted then).
    pub(crate) fn location(self) -> &'static Location<'static> {
        #[cfg(any(debug_assertions, feature = "debug-checks"))]
        {
            self.at
        }
        #[cfg(not(any(debug_assertions, feature = "debug-checks")))]
        {
            Location::caller()
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum State {
    Idle {
        recycler: u64,
        at: &'static Location<'static>,
    },
    Detached {
        recycler: u64,
        at: &'static Location<'static>,
        /// Which detach this is: the record of an address detached again (or
        /// returned and detached) is a new one, so an older place in the queue
        /// does not remove it.
        generation: u64,
    },
}

/// The most detached values the table remembers; the oldest are forgotten. A
/// detached value may live for ever or die unseen (the recycler never hears of its
/// drop), so its record cannot wait for it: the bound keeps the table from
/// growing with every detach.
pub(crate) const MAX_DETACHED: usize = 1024;

#[derive(Default)]
struct Table {
    states: HashMap<usize, State>,
    /// Detached records, oldest first, as (address, generation); an entry whose
    /// record was since replaced is skipped when it reaches the front.
    detached: VecDeque<(usize, u64)>,
    next_generation: u64,
}

#[cfg(not(loom))]
fn with_table<R>(f: impl FnOnce(&mut Table) -> R) -> R {
    use heijunka_core::sync::Mutex;
    static TABLE: Mutex<Option<Table>> = Mutex::new(None);
    // The table is only read and written here, never across user code, so a
    // poisoned lock means a panic in `HashMap` itself: the data is still usable.
    let mut guard = TABLE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    f(guard.get_or_insert_with(Table::default))
}

/// Under loom the table is per model execution, so loom can replay it.
#[cfg(loom)]
fn with_table<R>(f: impl FnOnce(&mut Table) -> R) -> R {
    use heijunka_core::sync::Mutex;
    loom::lazy_static! {
        static ref TABLE: Mutex<Table> = Mutex::new(Table::default());
    }
    let mut guard = TABLE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    f(&mut guard)
}

/// A value comes back to `recycler`. A value already idle is refused
/// ([`Misuse::ReturnedTwice`]). A value last seen detached from another recycler
/// is accepted: it may be that value moved between recyclers, or a new value the
/// allocator placed at the address of a detached one since freed, and the two
/// cannot be told apart; `put` (`strict`) logs it at `debug`.
pub(crate) fn returned(
    address: usize,
    recycler: u64,
    at: &'static Location<'static>,
    strict: bool,
) -> Result<(), Misuse> {
    with_table(|t| {
        match t.states.get(&address) {
            Some(&State::Idle {
                recycler: holder,
                at: first,
            }) => {
                return Err(Misuse::ReturnedTwice {
                    address,
                    recycler: holder,
                    first,
                    second: at,
                });
            }
            Some(&State::Detached {
                recycler: owner,
                at: detached_at,
                ..
            }) if strict && owner != recycler => {
                tracing::debug!(
                    address,
                    recycler.owner = owner,
                    recycler.id = recycler,
                    %detached_at,
                    "heijunka-recycler: put a value at the address of one detached from another recycler (moved between recyclers, or a new value at a freed one's address)"
                );
            }
            _ => {}
        }
        t.states.insert(address, State::Idle { recycler, at });
        Ok(())
    })
}

/// A value that `returned` accepted changed its allocation while being reset.
pub(crate) fn moved(
    before: usize,
    after: Option<usize>,
    recycler: u64,
    at: &'static Location<'static>,
) {
    with_table(|t| {
        t.states.remove(&before);
        if let Some(after) = after {
            t.states.insert(after, State::Idle { recycler, at });
        }
    });
}

/// An idle value left its recycler: into a guard, or dropped.
pub(crate) fn forget(address: usize) {
    with_table(|t| {
        t.states.remove(&address);
    });
}

/// A value was taken out of `recycler`'s care. The oldest detached record beyond
/// [`MAX_DETACHED`] is forgotten.
pub(crate) fn detached(address: usize, recycler: u64, at: &'static Location<'static>) {
    with_table(|t| {
        let generation = t.next_generation;
        t.next_generation += 1;
        t.states.insert(
            address,
            State::Detached {
                recycler,
                at,
                generation,
            },
        );
        t.detached.push_back((address, generation));
        while t.detached.len() > MAX_DETACHED {
            let Some((old, g)) = t.detached.pop_front() else {
                break;
            };
            if matches!(t.states.get(&old), Some(&State::Detached { generation, .. }) if generation == g)
            {
                t.states.remove(&old);
            }
        }
    });
}

/// How many detached values the table remembers now.
#[cfg(all(test, not(loom)))]
fn detached_records() -> usize {
    with_table(|t| {
        t.states
            .values()
            .filter(|s| matches!(s, State::Detached { .. }))
            .count()
    })
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    // Addresses no allocation can have (odd, near the top of the address space), so
    // these tests cannot collide with the recyclers other tests run at the same time.
    const A: usize = usize::MAX - 1;
    const B: usize = usize::MAX - 3;

    #[test]
    fn a_second_return_names_both_places() {
        let first = Location::caller();
        returned(A, 1, first, true).unwrap();
        let second = Location::caller();
        let err = returned(A, 1, second, true).unwrap_err();
        assert_eq!(
            err,
            Misuse::ReturnedTwice {
                address: A,
                recycler: 1,
                first,
                second
            }
        );
        let msg = err.to_string();
        assert!(msg.contains("given back twice to recycler #1"), "{msg}");
        assert!(msg.contains(&first.to_string()), "{msg}");
        forget(A);
        returned(A, 1, second, true).unwrap();
        forget(A);
    }

    /// One test (the table is global): the flood below would push out the
    /// records of a test running beside it.
    #[test]
    fn detached_records_are_bounded() {
        let at = Location::caller();
        // Detached from 7, put into 8: a move between recyclers or a reused
        // address; either way accepted.
        detached(B, 7, at);
        returned(B, 8, at, true).unwrap();
        assert!(returned(B, 8, at, true).is_err(), "now idle in 8");
        forget(B);
        // A record detached again is newer than its old queue entry: flooding the
        // queue past the bound forgets the old entries, not the new record.
        detached(B, 7, at);
        returned(B, 7, at, true).unwrap();
        forget(B);
        detached(B, 7, at);
        let base = usize::MAX / 4 + 1;
        for i in 0..(MAX_DETACHED - 1) {
            detached(base + 2 * i + 1, 9, at);
        }
        assert!(with_table(|t| matches!(
            t.states.get(&B),
            Some(State::Detached { recycler: 7, .. })
        )));
        returned(B, 7, at, true).unwrap();
        forget(B);

        // Values detached and then dropped (their owner never hears of it): the
        // table must not keep one record per detach forever.
        let at = Location::caller();
        let base = usize::MAX / 2 + 1; // odd addresses no allocation has
        for i in 0..(3 * MAX_DETACHED) {
            detached(base + 2 * i + 1, 9, at);
        }
        assert!(
            detached_records() <= MAX_DETACHED,
            "{} records",
            detached_records()
        );
    }
}
