//! State changes, and the reads that apply the ones that are due.

use std::time::Duration;

use heijunka_core::Instant;

use super::ctrl;
use super::{Central, Inner, Now, Shown};
use crate::sync::atomic::Ordering;
use crate::window::CountWindow;
use crate::{
    BreakerEvent, BreakerReset, IllegalTransition, State, StateTransition, TransitionReason,
};

/// How long a move to open keeps the breaker open.
#[derive(Clone, Copy, Debug)]
pub(crate) enum OpenFor {
    /// The configured wait, grown by the trips so far and jittered, as after a trip.
    Configured,
    /// This long (resilience4j's `transitionToOpenStateFor`).
    Duration(Duration),
    /// Until this instant of the breaker's clock, or not at all if it has passed
    /// (resilience4j's `transitionToOpenStateUntil`).
    Until(Instant),
}

impl Inner {
    /// Moves to `to` (under the lock), queues its event for the listeners (in
    /// transition order, under the lock) and returns it, to
    /// [`announce`](Self::announce) once the lock is released. `to` differs from
    /// the state the breaker is in.
    pub(super) fn transition(
        &self,
        central: &mut Central,
        c: u64,
        to: State,
        reason: TransitionReason,
        now: Instant,
    ) -> StateTransition {
        self.transition_with(central, c, to, reason, now, OpenFor::Configured)
    }

    fn transition_with(
        &self,
        central: &mut Central,
        c: u64,
        to: State,
        reason: TransitionReason,
        now: Instant,
        open_for: OpenFor,
    ) -> StateTransition {
        let from = ctrl::state(c);
        debug_assert_ne!(from, to, "a transition changes the state");
        let wait = self.enter(central, c, to, now, open_for);
        self.metrics.transition(from, to);
        central.events += 1;
        let event = StateTransition {
            breaker: self.config.name.clone(),
            from,
            to,
            reason,
            at: now,
            wait,
            sequence: central.events,
        };
        self.listeners
            .enqueue(BreakerEvent::Transition(event.clone()));
        event
    }

    /// Enters `to` under the lock, from the state of control word `c` (`to` itself
    /// for resilience4j's internal transitions, which start the state again): sets
    /// up its window, deadlines and counts, and stores the new control word (a new
    /// generation, so the permits of the state left record nothing). Announces
    /// nothing. Returns the wait in open state when `to` is open.
    ///
    /// What each state starts with: closed, an empty window (and the growing wait
    /// back at its start); open, the window it was in (so the stats show what
    /// tripped it); half-open, no probes completed; the manual overrides, an empty
    /// window.
    fn enter(
        &self,
        central: &mut Central,
        c: u64,
        to: State,
        now: Instant,
        open_for: OpenFor,
    ) -> Option<Duration> {
        let mut wait = None;
        if to != State::Open {
            // Lets the coarse ticker park once no breaker is open (a decrement; the
            // move to open takes a new one in `announce`, outside this lock).
            central.coarse = None;
        }
        let (flags, probes) = match to {
            State::Closed => {
                central.window.reset();
                central.shown = Shown::Window;
                central.trips = 0;
                (self.closed_flags(central), 0)
            }
            State::Open => {
                let w = match open_for {
                    OpenFor::Configured => {
                        let unit = central.next_unit();
                        central.tuning.wait.jittered(central.trips, unit)
                    }
                    OpenFor::Duration(w) => w,
                    OpenFor::Until(until) => until.duration_since(now),
                };
                central.trips = central.trips.saturating_add(1);
                // Relaxed: published by the Release store of the control word below.
                self.open_until
                    .store(now.saturating_add(w).as_nanos(), Ordering::Relaxed);
                wait = Some(w);
                (0, 0)
            }
            State::HalfOpen => {
                // The period takes the settings in force now (see `probe_rules`).
                central.probe_rules = central.tuning.half_open_rules;
                central.probe_cap = central.tuning.permitted_in_half_open;
                if central.probes.size() == u64::from(central.probe_cap) {
                    central.probes.reset();
                } else {
                    central.probes = CountWindow::new(central.probe_cap);
                }
                central.shown = Shown::Probes;
                central.half_open_since = now;
                let deadline = self
                    .config
                    .max_wait_in_half_open
                    .map_or(u64::MAX, |max| now.saturating_add(max).as_nanos());
                // Relaxed: published by the Release store of the control word below.
                self.half_open_deadline.store(deadline, Ordering::Relaxed);
                (0, central.probe_cap)
            }
            State::ForcedOpen | State::Disabled | State::MetricsOnly => {
                central.window.reset();
                central.probes.reset();
                central.shown = Shown::Window;
                (0, 0)
            }
        };
        central.consecutive_failures = 0;
        if let Some(times) = &mut central.failure_times {
            times.reset();
        }
        central.rejected_at_entry = self.rejected.in_state(to);
        let next = ctrl::pack(ctrl::generation(c).wrapping_add(1), to, flags, probes);
        // Release: publishes the new state's deadlines and reset windows to every
        // thread that Acquire-loads the control word. A concurrent probe
        // compare-and-swap on the old word fails and retries against this one.
        self.ctrl.store(next, Ordering::Release);
        wait
    }

    /// Open to half-open, if the breaker is still in the open period `seen`.
    pub(super) fn wait_elapsed(&self, seen: u64, now: Instant) {
        self.transition_from(seen, State::Open, now, |inner, central, c, now| {
            Some(inner.transition(
                central,
                c,
                State::HalfOpen,
                TransitionReason::WaitElapsed,
                now,
            ))
        });
    }

    /// Half-open to open (or closed, as configured), if the breaker is still in
    /// the half-open period `seen`.
    pub(super) fn half_open_timeout(&self, seen: u64, now: Instant) {
        self.transition_from(seen, State::HalfOpen, now, |inner, central, c, now| {
            let waited = now.duration_since(central.half_open_since);
            let reason = TransitionReason::HalfOpenTimeout { waited };
            let to = inner.config.after_half_open_timeout;
            Some(inner.transition(central, c, to, reason, now))
        });
    }

    fn transition_from(
        &self,
        seen: u64,
        state: State,
        now: Instant,
        change: impl FnOnce(&Self, &mut Central, u64, Instant) -> Option<StateTransition>,
    ) {
        let mut central = self.lock();
        // Acquire: as in `record`.
        let c = self.ctrl.load(Ordering::Acquire);
        if ctrl::generation(c) != ctrl::generation(seen) || ctrl::state(c) != state {
            return; // another thread made this change already
        }
        let event = change(self, &mut central, c, now);
        drop(central);
        if let Some(e) = event {
            self.announce(&e);
        }
    }

    /// A manual move to `to`, as resilience4j's `transitionTo…State` (its
    /// `StateTransition` table): refused from closed to half-open and from
    /// metrics-only to open or half-open; to the state the breaker is in, closed,
    /// open and half-open start again unannounced (an internal transition: a fresh
    /// window, a new wait, fresh probes) and the manual overrides change nothing;
    /// otherwise a transition, announced.
    pub(crate) fn manual(
        &self,
        to: State,
        reason: TransitionReason,
        open_for: OpenFor,
    ) -> Result<(), IllegalTransition> {
        let mut central = self.lock();
        // Acquire: as in `record`.
        let c = self.ctrl.load(Ordering::Acquire);
        let from = ctrl::state(c);
        if matches!(
            (from, to),
            (State::Closed, State::HalfOpen) | (State::MetricsOnly, State::Open | State::HalfOpen)
        ) {
            return Err(IllegalTransition::new(&self.config.name, from, to));
        }
        if from == to && !matches!(to, State::Closed | State::Open | State::HalfOpen) {
            return Ok(());
        }
        let mut now = Now {
            clock: &self.clock,
            at: None,
        };
        if from == State::Closed && to == State::Open {
            // The window it opens with holds every success so far (as a trip's
            // does): the ones still on the shards are folded in first.
            self.fold(&mut central, ctrl::generation(c), &mut now, false);
        }
        let now = now.get();
        if from == to {
            self.enter(&mut central, c, to, now, open_for);
        } else {
            self.transition_with(&mut central, c, to, reason, now, open_for);
        }
        drop(central);
        self.entered(to);
        self.listeners.dispatch(&self.config.name);
        Ok(())
    }

    /// `reset`: closed with an empty window, whatever the state; announces the
    /// transition to closed when the state changes, then a reset event (as
    /// resilience4j's `reset`, which publishes `CircuitBreakerOnResetEvent`).
    pub(crate) fn reset(&self) {
        let mut central = self.lock();
        // Acquire: as in `record`.
        let c = self.ctrl.load(Ordering::Acquire);
        let from = ctrl::state(c);
        let now = self.clock.now();
        if from == State::Closed {
            self.enter(&mut central, c, State::Closed, now, OpenFor::Configured);
        } else {
            self.transition(&mut central, c, State::Closed, TransitionReason::Reset, now);
        }
        self.metrics.resets.increment(1);
        central.events += 1;
        self.listeners.enqueue(BreakerEvent::Reset(BreakerReset {
            breaker: self.config.name.clone(),
            state: from,
            at: now,
            sequence: central.events,
        }));
        drop(central);
        self.entered(State::Closed);
        self.listeners.dispatch(&self.config.name);
    }

    /// Puts a breaker just built in its configured initial state (closed needs
    /// nothing), unannounced: nobody can have subscribed yet.
    pub(crate) fn start(&self) {
        let to = self.config.initial_state;
        if to == State::Closed {
            return;
        }
        let mut central = self.lock();
        // Acquire: as in `record`.
        let c = self.ctrl.load(Ordering::Acquire);
        self.enter(&mut central, c, to, self.clock.now(), OpenFor::Configured);
        self.metrics.set_state(to);
        drop(central);
        self.entered(to);
    }

    pub(super) fn announce(&self, event: &StateTransition) {
        self.entered(event.to);
        self.listeners.dispatch(&self.config.name);
    }

    /// What entering `to` starts outside the lock: the timer thread's watch, and
    /// the coarse clock while open.
    fn entered(&self, to: State) {
        // Under loom the timer and the coarse clock are not modelled.
        #[cfg(loom)]
        let _ = to;
        #[cfg(not(loom))]
        if self.needs_timer(to) {
            self.timer.schedule();
        }
        // Open calls are rejected by the coarse clock (`acquire_slow`); its ticker
        // is one process-wide thread, not started under loom or miri.
        #[cfg(not(loom))]
        if to == State::Open && !cfg!(miri) {
            self.use_coarse_clock();
        }
    }

    /// Keeps the coarse ticker running while this breaker is open: registers a
    /// user with no lock held (it may spawn or unpark the ticker), then keeps it
    /// if the breaker is still open (a later transition out of open drops it).
    #[cfg(not(loom))]
    fn use_coarse_clock(&self) {
        let Some(coarse) = self.clock.coarse_use() else {
            return; // a manual clock: `recent` is exact
        };
        let mut central = self.lock();
        // Acquire: as in `record`.
        if ctrl::state(self.ctrl.load(Ordering::Acquire)) == State::Open {
            central.coarse = Some(coarse);
        }
        drop(central);
    }

    /// Whether the timer thread should watch this breaker in state `to`.
    #[cfg(not(loom))]
    fn needs_timer(&self, to: State) -> bool {
        self.config.automatic_half_open
            && match to {
                State::Open => true,
                State::HalfOpen => self.config.max_wait_in_half_open.is_some(),
                _ => false,
            }
    }

    /// Applies the transitions that are due without a call (automatic open to
    /// half-open; half-open timeout) and returns how long until the next one, if
    /// one is pending.
    pub(crate) fn poll(&self) -> Option<Duration> {
        loop {
            // Acquire: as in `acquire`.
            let c = self.ctrl.load(Ordering::Acquire);
            match ctrl::state(c) {
                State::Open if self.config.automatic_half_open => {
                    // Relaxed: see `acquire_slow`.
                    let until = Instant::from_nanos(self.open_until.load(Ordering::Relaxed));
                    let now = self.clock.now();
                    if now < until {
                        return Some(until - now);
                    }
                    self.wait_elapsed(c, now);
                }
                State::HalfOpen if self.config.max_wait_in_half_open.is_some() => {
                    let now = self.clock.now();
                    if !self.half_open_expired(now) {
                        // Relaxed: see `half_open_expired`.
                        let deadline = self.half_open_deadline.load(Ordering::Relaxed);
                        return Some(Duration::from_nanos(deadline - now.as_nanos()));
                    }
                    self.half_open_timeout(c, now);
                }
                _ => return None,
            }
        }
    }

    pub(crate) fn state(&self) -> State {
        self.poll();
        // Acquire: as in `acquire`.
        ctrl::state(self.ctrl.load(Ordering::Acquire))
    }

    pub(crate) fn stats(&self) -> crate::BreakerStats {
        self.poll();
        let mut now = Now {
            clock: &self.clock,
            at: None,
        };
        let mut central = self.lock();
        // Acquire: as in `record`.
        let c = self.ctrl.load(Ordering::Acquire);
        let state = ctrl::state(c);
        if ctrl::is_closed(c) || state == State::MetricsOnly {
            // The shards' successes are folded in so the counts are exact, and not
            // judged: a closed-state success was counted on a shard only while no
            // run of successes could trip the window (`SAFE`, control.rs), and a
            // fold only adds successes and lets old outcomes expire, neither of
            // which can make `SAFE` wrong. As in resilience4j, the thresholds are
            // judged when a call is recorded, never by reading the metrics: a
            // time-based window whose fast calls have expired may show a slow-call
            // (or failure) rate at its threshold while closed, until the next
            // recorded call judges it. Metrics-only successes never trip.
            self.fold(&mut central, ctrl::generation(c), &mut now, false);
        } else if central.shown == Shown::Window {
            // In the other states nothing is recorded in the window, but a
            // time-based one still slides to the current second, as resilience4j's
            // snapshots do (the calls that tripped an open breaker leave it with
            // time). Only the stats: no state reads this window until the breaker
            // closes, with a fresh one.
            central.window.slide(|| now.get());
        }
        let (counts, rules) = match central.shown {
            Shown::Window => (central.window.counts(), &central.tuning.closed_rules),
            Shown::Probes => (central.probes.counts(), &central.probe_rules),
        };
        let judged = counts.calls >= rules.minimum_calls;
        let by_state = self.rejected.by_state();
        let retry_after = (state == State::Open).then(|| {
            // Relaxed: see `acquire_slow`.
            Instant::from_nanos(self.open_until.load(Ordering::Relaxed)).duration_since(now.get())
        });
        let stats = crate::BreakerStats {
            name: self.config.name.clone(),
            state,
            calls: counts.calls,
            successful_calls: counts.calls - counts.failed,
            failed_calls: counts.failed,
            slow_calls: counts.slow,
            slow_failed_calls: counts.slow_failed,
            failure_rate: judged.then(|| counts.failure_rate()),
            slow_call_rate: (judged && self.slow_limit.is_some()).then(|| counts.slow_call_rate()),
            consecutive_failures: central.consecutive_failures,
            consecutive_trips: central.trips,
            available_probes: (state == State::HalfOpen).then(|| ctrl::probes(c)),
            not_permitted_calls: self
                .rejected
                .in_state(state)
                .saturating_sub(central.rejected_at_entry),
            rejected_calls: by_state.total(),
            rejected_calls_by_state: by_state,
            retry_after,
            dropped_events: self.listeners.dropped(),
        };
        drop(central);
        // Delivers the events a dispatching thread left (see `Listeners`).
        self.listeners.dispatch(&self.config.name);
        stats
    }
}
