//! The debug checks' side table: which allocations are idle in which recycler, and
//! which were detached from which.
//!
//! Only consulted when [`DEBUG_CHECKS`] is true; in a release build without the
//! `debug-checks` feature every call site is behind `if DEBUG_CHECKS` and compiles
//! away. Values in a live guard have no entry: a guard always goes back to its own
//! recycler, so only idle and detached values need remembering.

use std::collections::HashMap;
use std::panic::Location;

use crate::Misuse;

/// Whether this build runs the misuse checks: double return and foreign values on
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
    },
}

type Table = HashMap<usize, State>;

#[cfg(not(loom))]
fn with_table<R>(f: impl FnOnce(&mut Table) -> R) -> R {
    use heijunka_core::sync::Mutex;
    static TABLE: Mutex<Option<Table>> = Mutex::new(None);
    // The table is only read and written here, never across user code, so a
    // poisoned lock means a panic in `HashMap` itself: the data is still usable.
    let mut guard = TABLE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    f(guard.get_or_insert_with(HashMap::new))
}

/// Under loom the table is per model execution, so loom can replay it.
#[cfg(loom)]
fn with_table<R>(f: impl FnOnce(&mut Table) -> R) -> R {
    use heijunka_core::sync::Mutex;
    loom::lazy_static! {
        static ref TABLE: Mutex<Table> = Mutex::new(HashMap::new());
    }
    let mut guard = TABLE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    f(&mut guard)
}

/// A value comes back to `recycler`. `strict` (the `put` path) also refuses a value
/// detached from another recycler; a guard's return accepts one (the user swapped
/// values between guards, which is harmless).
pub(crate) fn returned(
    address: usize,
    recycler: u64,
    at: &'static Location<'static>,
    strict: bool,
) -> Result<(), Misuse> {
    with_table(|t| {
        match t.get(&address) {
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
            }) if strict && owner != recycler => {
                return Err(Misuse::Foreign {
                    address,
                    owner,
                    recycler,
                    detached_at,
                });
            }
            _ => {}
        }
        t.insert(address, State::Idle { recycler, at });
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
        t.remove(&before);
        if let Some(after) = after {
            t.insert(after, State::Idle { recycler, at });
        }
    });
}

/// An idle value left its recycler: into a guard, or dropped.
pub(crate) fn forget(address: usize) {
    with_table(|t| {
        t.remove(&address);
    });
}

/// A value was taken out of `recycler`'s care.
pub(crate) fn detached(address: usize, recycler: u64, at: &'static Location<'static>) {
    with_table(|t| {
        t.insert(address, State::Detached { recycler, at });
    });
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

    #[test]
    fn detached_values_go_home_only() {
        let at = Location::caller();
        detached(B, 7, at);
        let err = returned(B, 8, at, true).unwrap_err();
        assert!(matches!(
            err,
            Misuse::Foreign {
                owner: 7,
                recycler: 8,
                ..
            }
        ));
        assert!(
            err.to_string()
                .contains("belongs to recycler #7, not to recycler #8")
        );
        // A guard's return is not strict.
        returned(B, 8, at, false).unwrap();
        moved(B, None, 8, at);
        detached(B, 7, at);
        returned(B, 7, at, true).unwrap();
        forget(B);
    }
}
