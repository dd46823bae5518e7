//! The in-flight gate: one atomic word holding a "closed" bit and the number of
//! in-flight entries, so that closing and entering cannot race.

use heijunka_core::sync::atomic::{AtomicU64, Ordering};

/// Set once the gate is closed (shutdown triggered).
const CLOSED: u64 = 1 << 63;
/// The low 63 bits count entries that are in flight (or momentarily, a refused
/// entry being undone).
const COUNT: u64 = CLOSED - 1;

/// The outcome of [`Gate::try_enter`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Enter {
    /// Admitted: call [`Gate::exit`] once when done.
    Admitted,
    /// Refused because the gate is closed. `drained`: undoing the refused entry took
    /// the gate to zero in flight, so the caller must wake the drain waiters.
    Refused { drained: bool },
}

/// Counts in-flight work and refuses new work once closed.
///
/// Protocol (proven by the loom models below):
/// - `try_enter` adds one with a single `fetch_add`; if the word it replaced had
///   the closed bit, the entry is refused and undone with `exit`.
/// - `close` sets the closed bit with `fetch_or`. The count in the word it replaced
///   is exactly the entries admitted before the close: an entry whose `fetch_add`
///   comes after the `fetch_or` in the word's modification order sees the bit and is
///   refused, one before it is counted.
/// - `exit` subtracts one; the call that takes a closed gate to zero reports it, so
///   the caller wakes whoever waits for the drain. After the last admitted entry
///   leaves, exactly one call reports: that exit, or a refused entry being undone
///   if its increment was in the word at that moment. (A refusal on a gate that was
///   already drained reports again; waiters re-check the count, so that is
///   harmless.)
#[derive(Debug)]
pub(crate) struct Gate {
    state: AtomicU64,
}

impl Gate {
    pub(crate) fn new() -> Self {
        Self {
            state: AtomicU64::new(0),
        }
    }

    /// Enters unless closed. [`Enter::Admitted`]: the caller must call
    /// [`exit`](Self::exit) once.
    #[inline]
    pub(crate) fn try_enter(&self) -> Enter {
        // Acquire pairs with the Release half of `close`'s AcqRel: a refused entrant
        // sees everything the closing thread did before closing (it reads the
        // trigger as happened). Relaxed would do for admission itself.
        let prev = self.state.fetch_add(1, Ordering::Acquire);
        if prev & CLOSED == 0 {
            Enter::Admitted
        } else {
            // Closed: undo. While the refusal's increment was in the word, a
            // holder's exit could not see zero; then undoing it is the step that
            // reaches zero, and the refusal reports the drain instead.
            Enter::Refused {
                drained: self.exit(),
            }
        }
    }

    /// Leaves. Returns `true` if this exit took a closed gate to zero in flight.
    #[inline]
    pub(crate) fn exit(&self) -> bool {
        // Release pairs with the Acquire in `count`/`close`: the work done inside the
        // guard happens-before a waiter that observes the drain.
        let prev = self.state.fetch_sub(1, Ordering::Release);
        prev == CLOSED | 1
    }

    /// Closes the gate. Returns the number in flight at that moment if this call
    /// closed it, `None` if it was already closed.
    pub(crate) fn close(&self) -> Option<u64> {
        // AcqRel: Acquire pairs with the Release of exits (counted work is
        // visible), Release publishes the closing thread's writes to refused
        // entrants.
        let prev = self.state.fetch_or(CLOSED, Ordering::AcqRel);
        if prev & CLOSED == 0 {
            Some(prev & COUNT)
        } else {
            None
        }
    }

    /// Entries in flight now (including a refused entry being undone, for an
    /// instant).
    #[inline]
    pub(crate) fn count(&self) -> u64 {
        // Acquire pairs with the Release in `exit`.
        self.state.load(Ordering::Acquire) & COUNT
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn counts_entries_and_refuses_after_close() {
        let g = Gate::new();
        assert_eq!(g.try_enter(), Enter::Admitted);
        assert_eq!(g.try_enter(), Enter::Admitted);
        assert_eq!(g.count(), 2);
        assert!(!g.exit());
        assert_eq!(g.close(), Some(1));
        assert_eq!(g.close(), None, "only the first close reports");
        assert_eq!(g.try_enter(), Enter::Refused { drained: false });
        assert_eq!(g.count(), 1, "a refused entry leaves no trace");
        assert!(g.exit(), "the last exit of a closed gate reports the drain");
        assert_eq!(g.count(), 0);
    }

    #[test]
    fn closing_an_idle_gate_reports_zero() {
        let g = Gate::new();
        assert_eq!(g.close(), Some(0));
        // The refusal's undo takes the (idle) gate to zero: it reports a drain,
        // which is harmless (waiters re-check the count).
        assert_eq!(g.try_enter(), Enter::Refused { drained: true });
        assert_eq!(g.count(), 0);
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use heijunka_core::sync::{Arc, thread};

    /// An entrant races the close. It holds its entry until after the close, so it
    /// is admitted exactly when the close counted it: nothing enters after the close,
    /// nothing admitted is missed, and the entry's exit reports the drain.
    #[test]
    fn enter_races_close() {
        loom::model(|| {
            let g = Arc::new(Gate::new());
            let entrant = {
                let g = Arc::clone(&g);
                thread::spawn(move || g.try_enter())
            };
            let at_close = g.close().expect("first close");
            let admitted = entrant.join().unwrap() == Enter::Admitted;
            assert_eq!(
                admitted,
                at_close == 1,
                "admitted {admitted}, counted {at_close}"
            );
            if admitted {
                assert!(g.exit(), "the last exit must report the drain");
            }
            assert_eq!(g.count(), 0);
        });
    }

    /// Two holders exit while the gate closes: exactly one reports the drain if any
    /// were still in flight at the close, none otherwise.
    #[test]
    fn drain_is_reported_once() {
        loom::model(|| {
            let g = Arc::new(Gate::new());
            assert_eq!(g.try_enter(), Enter::Admitted);
            assert_eq!(g.try_enter(), Enter::Admitted);
            let holders: Vec<_> = (0..2)
                .map(|_| {
                    let g = Arc::clone(&g);
                    thread::spawn(move || g.exit())
                })
                .collect();
            let at_close = g.close().expect("first close");
            let reports = holders
                .into_iter()
                .map(|h| h.join().unwrap())
                .filter(|&d| d)
                .count();
            if at_close > 0 {
                assert_eq!(reports, 1);
            } else {
                assert_eq!(reports, 0);
            }
            assert_eq!(g.count(), 0);
        });
    }

    /// A refused entry racing the last exit never hides the drain: at least one of
    /// the two reports it (both do when the refusal comes after the drain, which is
    /// harmless: waiters re-check the count).
    #[test]
    fn refused_entry_and_last_exit() {
        loom::model(|| {
            let g = Arc::new(Gate::new());
            assert_eq!(g.try_enter(), Enter::Admitted);
            assert_eq!(g.close(), Some(1));
            let late = {
                let g = Arc::clone(&g);
                thread::spawn(move || g.try_enter())
            };
            let by_exit = g.exit();
            let Enter::Refused {
                drained: by_refusal,
            } = late.join().unwrap()
            else {
                panic!("entered after close");
            };
            assert!(by_exit || by_refusal, "the drain was never reported");
            assert_eq!(g.count(), 0);
        });
    }
}
