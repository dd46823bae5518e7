//! The control word, and the closed state's success protocol built on it.
//!
//! # The invariant
//!
//! **Every outcome recorded in closed state is judged against the thresholds, in
//! the generation that admitted it, with every success that completed before it:**
//! a success whose window could still trip the breaker is never left unjudged, and
//! an outcome admitted by a state that is over never reaches the next one.
//!
//! # The words
//!
//! The control word (one `AtomicU64`, [`ctrl`]) holds the state, a generation
//! bumped by every state change, the half-open probes still available, and two
//! flags of the closed state:
//!
//! - `SAFE`: no run of successes, however long, can make the window trip
//!   ([`Rules::successes_are_safe`](crate::window::Rules::successes_are_safe)), so a
//!   success may be *counted* on the calling thread's shard (`shards.rs`) instead of
//!   recorded under the lock;
//! - `FREE`: `SAFE`, and the count window is full of plain successes, so a success
//!   changes nothing and is not even counted.
//!
//! Outside the lock only the probe count changes (a compare-and-swap that takes a
//! probe of one generation, and one that gives it back). Every other write of the
//! control word (state changes, the flags) is made under the breaker's lock, and
//! shards are emptied only under the lock.
//!
//! # The protocol
//!
//! A closed-state success, on the calling thread:
//!
//! 1. loads the control word; `FREE` (same generation): done;
//! 2. `SAFE` (same generation): adds one to its shard (a compare-and-swap,
//!    *Acquire*), then
//! 3. loads the control word again: still `SAFE` (or another generation): done.
//!    Otherwise `SAFE` was revoked meanwhile, and the thread takes the lock, folds
//!    the shards into the window and judges it ([`Inner::judge`]);
//! 4. not `SAFE`: records the success under the lock (fold, push, judge).
//!
//! Under the lock, a thread that records a failure or a slow call folds the shards,
//! pushes the outcome, judges the window and re-derives the flags. When that
//! *revokes* `SAFE`, it stores the new word, then **sweeps**: a swap on every
//! shard (*Release*), folds what it finds and judges again.
//!
//! Why no success escapes judgement: take a success added at step 2 and a
//! revocation it did not see at step 3. The shard's modification order holds the
//! add and the sweep's swap. If the add came first, the swap takes it (or an earlier
//! fold under the lock did, and judged it). If the swap came first, the add read
//! the swap's value or a later one in its release sequence, so it synchronizes with
//! the swap; the revocation, stored before the swap, happens before step 3, which
//! therefore sees it (or a later word): a contradiction. A success that sees `SAFE`
//! still set at step 3 sits in a window that successes cannot trip, and is folded
//! before the next failure is pushed. Folds only ever add successes, which never
//! add failures or slow calls, so only a push under the lock can revoke `SAFE`.
//!
//! Generations keep states apart: a permit carries the generation that admitted it,
//! a shard is tagged with the generation of its successes, and every fold, record
//! and flag change checks the generation under the lock, so an outcome that
//! completes after a state change is dropped (see `shards.rs`).

use super::{Central, Inner, Kind, Now, Ticket};
use crate::shards::Added;
use crate::sync::atomic::Ordering;
use crate::window::{Outcome, Window, epoch_of};
use crate::{State, StateTransition};

/// The control word: everything the hot path needs to know in one `AtomicU64`.
///
/// ```text
/// bits 63..32  generation: bumped by every state change
/// bit  31      FREE: closed, and a success needs no recording (count window full of
///              plain successes)
/// bit  30      SAFE: closed, and no run of successes can trip the breaker, so
///              successes may be counted in the per-thread shards
/// bits 29..27  state
/// bits 26..0   half-open probes still available
/// ```
pub(crate) mod ctrl {
    use crate::State;

    pub(crate) const PROBES_MASK: u64 = (1 << 27) - 1;
    const STATE_SHIFT: u32 = 27;
    const STATE_MASK: u64 = 0b111 << STATE_SHIFT;
    pub(crate) const SAFE: u64 = 1 << 30;
    pub(crate) const FREE: u64 = 1 << 31;
    const GEN_SHIFT: u32 = 32;

    const CLOSED: u64 = 0;
    const OPEN: u64 = 1;
    const HALF_OPEN: u64 = 2;
    const FORCED_OPEN: u64 = 3;
    const DISABLED: u64 = 4;
    const METRICS_ONLY: u64 = 5;

    pub(crate) fn pack(generation: u32, state: State, flags: u64, probes: u32) -> u64 {
        let code = match state {
            State::Closed => CLOSED,
            State::Open => OPEN,
            State::HalfOpen => HALF_OPEN,
            State::ForcedOpen => FORCED_OPEN,
            State::Disabled => DISABLED,
            State::MetricsOnly => METRICS_ONLY,
        };
        (u64::from(generation) << GEN_SHIFT)
            | (flags & (SAFE | FREE))
            | (code << STATE_SHIFT)
            | (u64::from(probes) & PROBES_MASK)
    }

    #[inline]
    pub(crate) fn generation(c: u64) -> u32 {
        (c >> GEN_SHIFT) as u32
    }

    #[inline]
    pub(crate) fn is_closed(c: u64) -> bool {
        c & STATE_MASK == CLOSED << STATE_SHIFT
    }

    #[inline]
    pub(crate) fn state(c: u64) -> State {
        match (c & STATE_MASK) >> STATE_SHIFT {
            CLOSED => State::Closed,
            OPEN => State::Open,
            HALF_OPEN => State::HalfOpen,
            FORCED_OPEN => State::ForcedOpen,
            METRICS_ONLY => State::MetricsOnly,
            _ => State::Disabled,
        }
    }

    #[inline]
    pub(crate) fn probes(c: u64) -> u32 {
        (c & PROBES_MASK) as u32
    }

    #[inline]
    pub(crate) fn flags(c: u64) -> u64 {
        c & (SAFE | FREE)
    }
}

impl Inner {
    /// Records a success. Inlined into the caller only as far as the common case: a
    /// closed-state call, no clock needed, and a window full of successes (step 1).
    #[inline(always)]
    pub(crate) fn on_success(&self, t: Ticket) {
        if t.kind == Kind::Closed && t.start.is_none() {
            // Acquire: pairs with the Release store of each flag or state change.
            let c = self.ctrl.load(Ordering::Acquire);
            if c & ctrl::FREE != 0 && ctrl::generation(c) == t.generation {
                self.metrics.success.increment(1);
                return; // a window full of successes stays one
            }
        }
        self.on_success_slow(t);
    }

    #[inline(never)]
    fn on_success_slow(&self, t: Ticket) {
        if t.kind == Kind::Disabled {
            self.metrics.success.increment(1);
            return;
        }
        let (mut now, slow) = self.finish(&t);
        self.metrics.outcome(false, slow);
        if t.kind == Kind::MetricsOnly && !slow {
            // Nothing trips in metrics-only state, so a success is only counted on
            // the calling thread's shard, without the lock; `stats()` and the next
            // failure fold the shards into the window (`record`, `stats`).
            let epoch = if self.time_based {
                epoch_of(*now.get_or_insert_with(|| self.clock.now()))
            } else {
                0
            };
            // The shard's generation tag keeps a success admitted by a state that is
            // over out of the window (`Stale`, or dropped when folded).
            match self.shards.add(t.generation, epoch, &self.ctrl) {
                Added::Counted(_) | Added::Stale => return,
                Added::NeedsFold => {} // folded, then recorded, under the lock
            }
        }
        if t.kind == Kind::Closed && !slow {
            // Acquire: as in `on_success`.
            let c = self.ctrl.load(Ordering::Acquire);
            if ctrl::generation(c) != t.generation {
                return; // admitted by a state that is over
            }
            if c & ctrl::FREE != 0 {
                return; // a window full of successes stays one
            }
            if c & ctrl::SAFE != 0 {
                let epoch = if self.time_based {
                    epoch_of(*now.get_or_insert_with(|| self.clock.now()))
                } else {
                    0
                };
                // Step 2: the add is Acquire on success (see `Shards::add`).
                match self.shards.add(t.generation, epoch, &self.ctrl) {
                    Added::Counted(n) => {
                        // Step 3. Acquire: pairs with the Release store of a flag
                        // change, made before the sweep our add may have read from.
                        let again = self.ctrl.load(Ordering::Acquire);
                        if ctrl::generation(again) == t.generation && again & ctrl::SAFE == 0 {
                            self.judge(t.generation);
                        } else if !self.time_based && n.is_multiple_of(self.fold_every) {
                            self.try_fold(t.generation);
                        }
                        return;
                    }
                    Added::Stale => return,
                    Added::NeedsFold => {}
                }
            }
        }
        self.record(
            t,
            Outcome {
                failed: false,
                slow,
            },
            now,
        );
    }

    /// Step 3's slow path: `SAFE` was revoked after this thread counted a success of
    /// `generation`; fold it in and judge the window.
    #[cold]
    fn judge(&self, generation: u32) {
        let mut central = self.lock();
        // Acquire: as in `record`.
        let c = self.ctrl.load(Ordering::Acquire);
        if !ctrl::is_closed(c) || ctrl::generation(c) != generation {
            return; // the state that counted it is over
        }
        let mut now = Now {
            clock: &self.clock,
            at: None,
        };
        let event = self.fold_and_judge(&mut central, c, &mut now);
        drop(central);
        if let Some(e) = event {
            self.announce(&e);
        }
    }

    /// Folds from the hot path every `sliding_window_size` successes of one shard,
    /// if the lock is free (so a count window full of successes turns `FREE`).
    #[cold]
    pub(super) fn try_fold(&self, generation: u32) {
        let mut central = match self.central.try_lock() {
            Ok(guard) => guard,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return,
        };
        // Acquire: as in `record`.
        let c = self.ctrl.load(Ordering::Acquire);
        if !ctrl::is_closed(c) || ctrl::generation(c) != generation {
            return;
        }
        let mut now = Now {
            clock: &self.clock,
            at: None,
        };
        let event = self.fold_and_judge(&mut central, c, &mut now);
        drop(central);
        if let Some(e) = event {
            self.announce(&e);
        }
    }

    /// Folds the shards' successes of `generation` into the closed window. They
    /// all came after the last recorded outcome, so they also end any run of
    /// failures. `sweep`: an RMW on every shard, the revoker's step (see the module
    /// docs); otherwise idle shards are skipped.
    pub(super) fn fold(
        &self,
        central: &mut Central,
        generation: u32,
        now: &mut Now<'_>,
        sweep: bool,
    ) {
        let mut folded = 0;
        match &mut central.window {
            Window::Count(w) => self.shards.drain(generation, sweep, |_, n| {
                w.push_successes(n);
                folded += n;
            }),
            Window::Time(w) => {
                let current = epoch_of(now.get());
                w.advance(current);
                self.shards.drain(generation, sweep, |low, n| {
                    w.add(crate::shards::full_epoch(low, current), Outcome::SUCCESS, n);
                    folded += n;
                });
            }
        }
        if folded > 0 {
            central.consecutive_failures = 0;
        }
    }

    /// Under the lock, in closed state `c`: folds the shards, judges the window's
    /// rates, and re-derives the flags; the transition to announce, if it tripped.
    pub(super) fn fold_and_judge(
        &self,
        central: &mut Central,
        c: u64,
        now: &mut Now<'_>,
    ) -> Option<StateTransition> {
        self.fold(central, ctrl::generation(c), now, false);
        self.judge_rates(central, c, now)
    }

    /// Judges the closed window's rates (after an outcome was pushed or successes
    /// folded) and, below the thresholds, re-derives the flags.
    pub(super) fn judge_rates(
        &self,
        central: &mut Central,
        c: u64,
        now: &mut Now<'_>,
    ) -> Option<StateTransition> {
        if let Some(reason) = central
            .tuning
            .closed_rules
            .tripped(&central.window.counts())
        {
            return Some(self.transition(central, c, State::Open, reason, now.get()));
        }
        self.refresh_flags(central, c, now)
    }

    pub(super) fn closed_flags(&self, central: &Central) -> u64 {
        let counts = central.window.counts();
        if !central.tuning.closed_rules.successes_are_safe(&counts) {
            0
        } else if central.window.is_saturated_with_successes() {
            ctrl::SAFE | ctrl::FREE
        } else {
            ctrl::SAFE
        }
    }

    /// Re-derives the closed state's flags from the window (under the lock, in
    /// closed state `c`, where nothing else writes the control word). Revoking
    /// `SAFE` is followed by the sweep, which may trip the breaker: the transition
    /// to announce, if so.
    pub(super) fn refresh_flags(
        &self,
        central: &mut Central,
        c: u64,
        now: &mut Now<'_>,
    ) -> Option<StateTransition> {
        let flags = self.closed_flags(central);
        if flags == ctrl::flags(c) {
            return None;
        }
        let next = (c & !(ctrl::SAFE | ctrl::FREE)) | flags;
        // Release: pairs with the hot path's Acquire loads (steps 1 and 3): a success
        // that sees the new flags also sees the window state they were derived from.
        self.ctrl.store(next, Ordering::Release);
        if c & ctrl::SAFE == 0 || flags & ctrl::SAFE != 0 {
            return None;
        }
        // `SAFE` revoked: sweep the successes counted by threads that saw it set.
        self.fold(central, ctrl::generation(next), now, true);
        if let Some(reason) = central
            .tuning
            .closed_rules
            .tripped(&central.window.counts())
        {
            return Some(self.transition(central, next, State::Open, reason, now.get()));
        }
        // The folded successes can only make the window safer.
        let flags = self.closed_flags(central);
        if flags != ctrl::flags(next) {
            // Release: as above.
            self.ctrl.store(
                (next & !(ctrl::SAFE | ctrl::FREE)) | flags,
                Ordering::Release,
            );
        }
        None
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn control_word_round_trips() {
        for state in [
            State::Closed,
            State::Open,
            State::HalfOpen,
            State::ForcedOpen,
            State::Disabled,
            State::MetricsOnly,
        ] {
            for (generation, flags, probes) in [
                (0, 0, 0),
                (u32::MAX, ctrl::SAFE | ctrl::FREE, 1_000_000),
                (7, ctrl::SAFE, 10),
            ] {
                let c = ctrl::pack(generation, state, flags, probes);
                assert_eq!(ctrl::state(c), state);
                assert_eq!(ctrl::generation(c), generation);
                assert_eq!(ctrl::flags(c), flags);
                assert_eq!(ctrl::probes(c), probes);
                assert_eq!(ctrl::is_closed(c), state == State::Closed);
            }
        }
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use heijunka_core::ManualClock;

    use crate::sync::thread;
    use crate::{CircuitBreaker, SlidingWindowType, State};

    /// A window of two calls judged at 50 %: one success and one failure, in either
    /// order, reach the threshold.
    fn two_call_breaker() -> CircuitBreaker {
        CircuitBreaker::builder()
            .sliding_window(SlidingWindowType::CountBased, 2)
            .minimum_number_of_calls(2)
            .failure_rate_threshold(0.5)
            .clock(ManualClock::new())
            .build()
            .expect("valid")
    }

    /// A success and a failure race: whichever order they take, one failure in two
    /// calls reaches the threshold, so the breaker must open. The success may see
    /// `SAFE` before the failure revokes it (steps 1-2); step 3 or the sweep must
    /// still judge it.
    #[test]
    fn a_success_racing_a_failure_is_judged() {
        loom::model(|| {
            let b = two_call_breaker();
            let succeeding = {
                let b = b.clone();
                thread::spawn(move || b.call(|| Ok::<_, ()>(())).is_ok())
            };
            assert!(b.call(|| Err::<(), ()>(())).is_err());
            assert!(
                succeeding.join().unwrap(),
                "both calls are admitted while closed"
            );
            assert_eq!(
                b.state(),
                State::Open,
                "1 failure in 2 calls reached the 50 % threshold"
            );
        });
    }

    /// Successes counted on the shards and a failure recorded under the lock race;
    /// once joined, the window holds every outcome once.
    #[test]
    fn no_outcome_lost_between_shards_and_lock() {
        loom::model(|| {
            let b = CircuitBreaker::builder()
                .sliding_window(SlidingWindowType::CountBased, 4)
                .failure_rate_threshold(1.0)
                .clock(ManualClock::new())
                .build()
                .expect("valid");
            let succeeding = {
                let b = b.clone();
                thread::spawn(move || {
                    for _ in 0..2 {
                        b.call(|| Ok::<_, ()>(())).unwrap();
                    }
                })
            };
            let _ = b.call(|| Err::<(), ()>(()));
            succeeding.join().unwrap();
            let s = b.stats();
            assert_eq!((s.calls, s.failed_calls), (3, 1));
            assert_eq!(s.state, State::Closed);
        });
    }
}
