//! The state machine behind a [`CircuitBreaker`](crate::CircuitBreaker) handle.
//!
//! The hot path reads one word, the control word (`control.rs`, which also states
//! the protocol and its invariant): a closed breaker admits a call with one atomic
//! load, and records a success with nothing more (window full of successes: `FREE`)
//! or with one compare-and-swap on the calling thread's own shard (`SAFE`, see
//! `shards.rs`) and a second load of the control word. Everything else (failures, slow
//! calls, probes, state changes, stats) takes the breaker's lock and works on the
//! exact window. Taking a half-open probe is a compare-and-swap on the control word
//! that decrements the probe count of one generation, so exactly the permitted
//! number of probes pass, however many threads race at the transition.

use std::time::Duration;

use heijunka_core::{Clock, ConfigError, Instant};

use crate::config::{BreakerConfig, OpenWait};
use crate::events::Listeners;
use crate::shards::Shards;
use crate::sync::atomic::{AtomicU64, Ordering};
use crate::sync::{CachePadded, Mutex, MutexGuard};
use crate::window::{CountWindow, FailureTimes, Outcome, Rules, TimeWindow, Window};
use crate::{SlidingWindowType, State, StateTransition, TransitionReason};

mod control;
mod transition;

pub(crate) use control::ctrl;
pub(crate) use transition::OpenFor;

/// What a permit was admitted as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Closed,
    Probe,
    Disabled,
    MetricsOnly,
}

/// What a permit remembers: the generation that admitted it, as what, and when
/// (only when slow-call detection needs it).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ticket {
    pub(crate) generation: u32,
    pub(crate) kind: Kind,
    pub(crate) start: Option<Instant>,
}

/// Which window the stats show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shown {
    Window,
    Probes,
}

/// Everything behind the lock.
#[derive(Debug)]
struct Central {
    window: Window,
    probes: CountWindow,
    shown: Shown,
    consecutive_failures: u32,
    failure_times: Option<FailureTimes>,
    /// Trips since the breaker last closed, for the growing wait.
    trips: u32,
    half_open_since: Instant,
    rng: u64,
    /// Events (transitions and resets) made so far: the last one's sequence number.
    events: u64,
    /// The rejections counter of the current state when the breaker entered it
    /// (0 in states that reject nothing), for `BreakerStats::not_permitted_calls`.
    rejected_at_entry: u64,
    /// Open state on the system clock: keeps the coarse ticker behind
    /// `Clock::recent` running (taken in `announce`, with no lock held; dropped by
    /// the transition out of open).
    coarse: Option<heijunka_core::CoarseUse>,
    /// The settings [`Inner::reconfigure`] may change, read only under the lock.
    tuning: Tuning,
    /// The rules of the half-open period in progress (fixed when it began, so a
    /// change of settings cannot strand it: it hands out `probe_cap` probes and is
    /// judged on as many).
    probe_rules: Rules,
    /// The probes the half-open period in progress was given.
    probe_cap: u32,
}

/// The settings a breaker can change while it runs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tuning {
    pub(crate) failure_rate_threshold: f64,
    pub(crate) slow_rate_threshold: Option<f64>,
    pub(crate) minimum_calls: u32,
    pub(crate) wait: OpenWait,
    pub(crate) permitted_in_half_open: u32,
    /// The closed window's rules, from the settings above.
    pub(crate) closed_rules: Rules,
    /// The next half-open period's rules.
    pub(crate) half_open_rules: Rules,
}

impl Tuning {
    fn of(config: &BreakerConfig) -> Self {
        Self {
            failure_rate_threshold: config.failure_rate_threshold,
            slow_rate_threshold: config.slow_calls.map(|s| s.rate_threshold),
            minimum_calls: config.minimum_calls,
            wait: config.wait,
            permitted_in_half_open: config.permitted_in_half_open,
            closed_rules: Rules::closed(config),
            half_open_rules: Rules::half_open(config),
        }
    }
}

impl Central {
    /// A uniform draw in `[0, 1)` (splitmix64), for the jittered wait.
    fn next_unit(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1_u64 << 53) as f64
    }
}

/// The current time, read at most once and only if needed.
struct Now<'a> {
    clock: &'a Clock,
    at: Option<Instant>,
}

impl Now<'_> {
    fn get(&mut self) -> Instant {
        *self.at.get_or_insert_with(|| self.clock.now())
    }
}

/// Rejections since the breaker was built, by the state that made them (on
/// per-thread shards: a rejection is the open state's hot path). One padded slot
/// per shard holds the three states' counts side by side (24 bytes of a cache
/// line), a third of the memory of one `ShardedCounter` per state; the three
/// states never count at once (a breaker is in one state), so sharing a line
/// between them costs no contention.
#[derive(Debug)]
pub(crate) struct Rejections {
    /// Power-of-two length; slot `thread_index() & (len - 1)`.
    shards: Box<[CachePadded<[AtomicU64; 3]>]>,
}

impl Default for Rejections {
    fn default() -> Self {
        Self::with_shards(rejection_shards())
    }
}

/// As `ShardedCounter::new`: one shard per available CPU, at most 64, rounded up
/// to a power of two (two under loom).
#[cfg(not(loom))]
fn rejection_shards() -> usize {
    std::thread::available_parallelism()
        .map_or(4, std::num::NonZero::get)
        .clamp(1, 64)
}

#[cfg(loom)]
fn rejection_shards() -> usize {
    2
}

impl Rejections {
    fn with_shards(shards: usize) -> Self {
        let n = shards.clamp(1, 1024).next_power_of_two();
        Self {
            shards: (0..n)
                .map(|_| CachePadded::new(std::array::from_fn(|_| AtomicU64::new(0))))
                .collect(),
        }
    }

    /// The slot of `state`; `None` for the states that reject nothing.
    fn slot(state: State) -> Option<usize> {
        match state {
            State::Open => Some(0),
            State::HalfOpen => Some(1),
            State::ForcedOpen => Some(2),
            _ => None,
        }
    }

    /// Counts one rejection in `state` (nothing for a state that rejects nothing).
    #[inline]
    pub(crate) fn increment(&self, state: State) {
        if let Some(slot) = Self::slot(state) {
            let shard = &self.shards[heijunka_core::sync::thread_index() & (self.shards.len() - 1)];
            // Relaxed: a statistic, as `ShardedCounter::add`.
            shard[slot].fetch_add(1, Ordering::Relaxed);
        }
    }

    fn sum(&self, slot: usize) -> u64 {
        // Relaxed: as in `increment`.
        self.shards
            .iter()
            .map(|s| s[slot].load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }

    /// Rejections in `state` since the breaker was built.
    pub(crate) fn in_state(&self, state: State) -> u64 {
        Self::slot(state).map_or(0, |slot| self.sum(slot))
    }

    pub(crate) fn by_state(&self) -> crate::RejectedCalls {
        crate::RejectedCalls {
            open: self.sum(0),
            half_open: self.sum(1),
            forced_open: self.sum(2),
        }
    }
}

pub(crate) struct Inner {
    ctrl: CachePadded<AtomicU64>,
    /// When slow-call detection is on, the duration at which a call is slow.
    slow_limit: Option<Duration>,
    time_based: bool,
    /// A count window folds a shard after this many successes (the window's size),
    /// so a window that has become full of successes turns `FREE`.
    fold_every: u64,
    clock: Clock,
    /// Open state: when probes may start (nanoseconds on `clock`).
    open_until: AtomicU64,
    /// Half-open state: when it times out (`u64::MAX` without a maximum wait).
    half_open_deadline: AtomicU64,
    shards: Shards,
    rejected: Rejections,
    central: Mutex<Central>,
    pub(crate) listeners: Listeners,
    /// Updated on outcomes, rejections and transitions.
    pub(crate) metrics: crate::metrics::BreakerMetrics,
    /// The configuration built with; the settings that can change at run time are
    /// in `Central::tuning`.
    pub(crate) config: BreakerConfig,
    #[cfg(not(loom))]
    pub(crate) timer: crate::timer::Registration,
}

impl Inner {
    pub(crate) fn new(config: BreakerConfig) -> Self {
        use std::hash::BuildHasher;
        let window = match config.window_type {
            SlidingWindowType::CountBased => Window::Count(CountWindow::new(config.window_size)),
            SlidingWindowType::TimeBased => Window::Time(TimeWindow::new(config.window_size)),
        };
        let tuning = Tuning::of(&config);
        let generation = 0;
        Self {
            ctrl: CachePadded::new(AtomicU64::new(ctrl::pack(
                generation,
                State::Closed,
                ctrl::SAFE,
                0,
            ))),
            slow_limit: config.slow_calls.map(|s| s.duration_threshold),
            time_based: config.window_type == SlidingWindowType::TimeBased,
            fold_every: u64::from(config.window_size),
            clock: config.clock.clone(),
            open_until: AtomicU64::new(0),
            half_open_deadline: AtomicU64::new(u64::MAX),
            shards: Shards::new(),
            rejected: Rejections::default(),
            central: Mutex::new(Central {
                window,
                probes: CountWindow::new(config.permitted_in_half_open),
                shown: Shown::Window,
                consecutive_failures: 0,
                failure_times: config.failure_count.map(FailureTimes::new),
                trips: 0,
                half_open_since: Instant::ZERO,
                events: 0,
                rejected_at_entry: 0,
                coarse: None,
                rng: std::collections::hash_map::RandomState::new().hash_one(&config.name),
                tuning,
                probe_rules: tuning.half_open_rules,
                probe_cap: tuning.permitted_in_half_open,
            }),
            listeners: Listeners::new(),
            metrics: crate::metrics::BreakerMetrics::new(&config.name),
            config,
            #[cfg(not(loom))]
            timer: crate::timer::Registration::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Central> {
        // Nothing that can panic runs under the lock, but a poisoned lock would
        // still hold a consistent window: keep going rather than panic.
        self.central
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    #[cfg(not(loom))]
    pub(crate) fn clock(&self) -> &Clock {
        &self.clock
    }

    // ---- admission -------------------------------------------------------------

    /// Admits a call or says why not. A closed breaker: one atomic load (and a clock
    /// read when slow-call detection is on).
    #[inline]
    pub(crate) fn acquire(&self) -> Result<Ticket, crate::Rejected> {
        // Acquire: pairs with the Release store of each state change, so a caller
        // that sees a state also sees its deadlines.
        let c = self.ctrl.load(Ordering::Acquire);
        if ctrl::is_closed(c) {
            return Ok(self.ticket(c, Kind::Closed));
        }
        self.acquire_slow(c)
    }

    #[inline]
    fn ticket(&self, c: u64, kind: Kind) -> Ticket {
        Ticket {
            generation: ctrl::generation(c),
            kind,
            start: self.slow_limit.map(|_| self.clock.now()),
        }
    }

    #[inline(never)]
    fn acquire_slow(&self, mut c: u64) -> Result<Ticket, crate::Rejected> {
        loop {
            match ctrl::state(c) {
                State::Closed => return Ok(self.ticket(c, Kind::Closed)),
                State::MetricsOnly => return Ok(self.ticket(c, Kind::MetricsOnly)),
                State::Disabled => {
                    return Ok(Ticket {
                        generation: ctrl::generation(c),
                        kind: Kind::Disabled,
                        start: None,
                    });
                }
                State::ForcedOpen => return Err(self.reject(State::ForcedOpen, None)),
                State::Open => {
                    // Relaxed: written before the Release store of the control word
                    // that our Acquire load saw.
                    let until = Instant::from_nanos(self.open_until.load(Ordering::Relaxed));
                    // The coarse time (`Clock::recent`: exact on a manual clock, a
                    // sample at most `COARSE_STALE_AFTER` old on the system clock)
                    // rejects; its retry-after errs long, by the sample's age. Once
                    // it reaches the deadline, the precise time decides.
                    let recent = self.clock.recent();
                    if recent < until {
                        return Err(self.reject(State::Open, Some(until - recent)));
                    }
                    let now = self.clock.now();
                    if now < until {
                        return Err(self.reject(State::Open, Some(until - now)));
                    }
                    self.wait_elapsed(c, now);
                }
                State::HalfOpen => {
                    // With a maximum wait: the time left until it, the honest
                    // retry-after of a rejection (see `Rejected`).
                    let mut left = None;
                    if self.config.max_wait_in_half_open.is_some() {
                        let now = self.clock.now();
                        if self.half_open_expired(now) {
                            self.half_open_timeout(c, now);
                            // Acquire: as in `acquire`.
                            c = self.ctrl.load(Ordering::Acquire);
                            continue;
                        }
                        // Relaxed: see `half_open_expired`.
                        let deadline = self.half_open_deadline.load(Ordering::Relaxed);
                        left = Some(Duration::from_nanos(deadline - now.as_nanos()));
                    }
                    if ctrl::probes(c) == 0 {
                        return Err(self.reject(State::HalfOpen, left));
                    }
                    // Acquire on success: pairs with the Release store that began this
                    // half-open period. The whole word is compared, generation
                    // included, so a probe is taken from this period's count only.
                    match self.ctrl.compare_exchange_weak(
                        c,
                        c - 1,
                        Ordering::Acquire,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => return Ok(self.ticket(c, Kind::Probe)),
                        Err(actual) => {
                            c = actual;
                            continue;
                        }
                    }
                }
            }
            // Acquire: as in `acquire`.
            c = self.ctrl.load(Ordering::Acquire);
        }
    }

    fn reject(&self, state: State, retry_after: Option<Duration>) -> crate::Rejected {
        self.rejected.increment(state);
        self.metrics.rejected.increment(1);
        crate::Rejected::new(state, retry_after)
    }

    fn half_open_expired(&self, now: Instant) -> bool {
        // Relaxed: written before the Release store that began the half-open period.
        now.as_nanos() >= self.half_open_deadline.load(Ordering::Relaxed)
    }

    // ---- outcomes --------------------------------------------------------------

    /// The end time and slowness of a permit's call, when slow-call detection is on.
    #[inline]
    fn finish(&self, t: &Ticket) -> (Option<Instant>, bool) {
        match (t.start, self.slow_limit) {
            (Some(start), Some(limit)) => {
                let now = self.clock.now();
                // Strictly longer, as resilience4j's `CircuitBreakerMetrics.onSuccess`.
                (Some(now), now.duration_since(start) > limit)
            }
            _ => (None, false),
        }
    }

    pub(crate) fn on_failure(&self, t: Ticket) {
        if t.kind == Kind::Disabled {
            self.metrics.outcome(true, false);
            return;
        }
        let (now, slow) = self.finish(&t);
        self.metrics.outcome(true, slow);
        self.record(t, Outcome { failed: true, slow }, now);
    }

    /// Records nothing; a probe's slot goes back to the half-open period it came from.
    pub(crate) fn release(&self, t: Ticket) {
        self.metrics.ignored.increment(1);
        if t.kind != Kind::Probe {
            return;
        }
        // The lock holds the half-open period still (periods begin and end only
        // under it), so `probe_cap` is the cap of the period the word shows.
        let central = self.lock();
        let cap = central.probe_cap;
        // Relaxed: giving a slot back publishes nothing; the generation in the word
        // keeps the slot in its own half-open period.
        let mut c = self.ctrl.load(Ordering::Relaxed);
        loop {
            if ctrl::state(c) != State::HalfOpen
                || ctrl::generation(c) != t.generation
                || ctrl::probes(c) >= cap
            {
                drop(central);
                return;
            }
            match self
                .ctrl
                .compare_exchange_weak(c, c + 1, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(actual) => c = actual,
            }
        }
    }

    /// Records an outcome in the exact window, under the lock.
    #[inline(never)]
    fn record(&self, t: Ticket, o: Outcome, now: Option<Instant>) {
        let mut now = Now {
            clock: &self.clock,
            at: now,
        };
        let mut central = self.lock();
        // Acquire: pairs with the Release stores of state changes (made under this
        // lock) and of the probe count.
        let c = self.ctrl.load(Ordering::Acquire);
        if ctrl::generation(c) != t.generation {
            return;
        }
        let event = match ctrl::state(c) {
            State::Closed => self.record_closed(&mut central, c, o, &mut now),
            State::HalfOpen => self.record_probe(&mut central, c, o, &mut now),
            State::MetricsOnly => {
                // The successes counted on the shards came before this outcome.
                self.fold(&mut central, t.generation, &mut now, false);
                central.window.push(o, || now.get());
                None
            }
            _ => None,
        };
        drop(central);
        if let Some(e) = event {
            self.announce(&e);
        }
    }

    fn record_closed(
        &self,
        central: &mut Central,
        c: u64,
        o: Outcome,
        now: &mut Now<'_>,
    ) -> Option<StateTransition> {
        self.fold(central, ctrl::generation(c), now, false);
        central.window.push(o, || now.get());
        let absolute = self.count_failure(central, o.failed, now);
        if central
            .tuning
            .closed_rules
            .tripped(&central.window.counts())
            .is_none()
            && let Some(reason) = absolute
        {
            return Some(self.transition(central, c, State::Open, reason, now.get()));
        }
        self.judge_rates(central, c, now)
    }

    fn record_probe(
        &self,
        central: &mut Central,
        c: u64,
        o: Outcome,
        now: &mut Now<'_>,
    ) -> Option<StateTransition> {
        if self.config.max_wait_in_half_open.is_some() && self.half_open_expired(now.get()) {
            let waited = now.get().duration_since(central.half_open_since);
            let reason = TransitionReason::HalfOpenTimeout { waited };
            let to = self.config.after_half_open_timeout;
            return Some(self.transition(central, c, to, reason, now.get()));
        }
        central.probes.push(o);
        let counts = central.probes.counts();
        let rate = central.probe_rules.tripped(&counts);
        let absolute = self.count_failure(central, o.failed, now);
        if let Some(reason) = rate.or(absolute) {
            return Some(self.transition(central, c, State::Open, reason, now.get()));
        }
        // Judged from min(minimum, permitted) probes on, as resilience4j's
        // `HalfOpenState` (see `Rules::half_open`).
        if counts.calls >= central.probe_rules.minimum_calls {
            let reason = TransitionReason::ProbesPassed {
                failure_rate: counts.failure_rate(),
                slow_call_rate: self.config.slow_calls.map(|_| counts.slow_call_rate()),
            };
            return Some(self.transition(central, c, State::Closed, reason, now.get()));
        }
        None
    }

    /// Updates the absolute counts; the absolute threshold reached, if any.
    fn count_failure(
        &self,
        central: &mut Central,
        failed: bool,
        now: &mut Now<'_>,
    ) -> Option<TransitionReason> {
        if !failed {
            central.consecutive_failures = 0;
            return None;
        }
        central.consecutive_failures = central.consecutive_failures.saturating_add(1);
        let mut reason = None;
        if let Some(limit) = self.config.consecutive_failures
            && central.consecutive_failures >= limit
        {
            reason = Some(TransitionReason::ConsecutiveFailures {
                count: central.consecutive_failures,
            });
        }
        if let Some(times) = &mut central.failure_times
            && times.push(now.get())
            && reason.is_none()
        {
            let rule = self
                .config
                .failure_count
                .expect("failure times exist with their rule");
            reason = Some(TransitionReason::FailureCount {
                count: rule.count,
                window: rule.window,
            });
        }
        reason
    }
}

impl Inner {
    /// The configuration with the settings in force now.
    pub(crate) fn current_config(&self) -> BreakerConfig {
        let t = self.lock().tuning;
        let mut config = self.config.clone();
        config.failure_rate_threshold = t.failure_rate_threshold;
        if let (Some(slow), Some(rate)) = (&mut config.slow_calls, t.slow_rate_threshold) {
            slow.rate_threshold = rate;
        }
        config.minimum_calls = t.minimum_calls;
        config.wait = t.wait;
        config.permitted_in_half_open = t.permitted_in_half_open;
        config
    }

    /// Takes the settings of `new` that can change at run time; refuses, changing
    /// nothing, if it differs in one that cannot.
    pub(crate) fn reconfigure(&self, new: &BreakerConfig) -> Result<(), ConfigError> {
        let old = &self.config;
        let fixed = |field: &'static str, was: &dyn std::fmt::Debug, now: &dyn std::fmt::Debug| {
            ConfigError::new(
                field,
                format!("{now:?}"),
                format!("cannot change while the breaker runs (it is {was:?})"),
            )
        };
        if new.name != old.name {
            return Err(fixed("name", &old.name, &new.name));
        }
        if (new.window_type, new.window_size) != (old.window_type, old.window_size) {
            return Err(fixed(
                "sliding_window_size",
                &(old.window_type, old.window_size),
                &(new.window_type, new.window_size),
            ));
        }
        let slow_duration = |c: &BreakerConfig| c.slow_calls.map(|s| s.duration_threshold);
        if slow_duration(new) != slow_duration(old) {
            return Err(fixed(
                "slow_call_duration_threshold",
                &slow_duration(old),
                &slow_duration(new),
            ));
        }
        if new.consecutive_failures != old.consecutive_failures {
            return Err(fixed(
                "consecutive_failure_threshold",
                &old.consecutive_failures,
                &new.consecutive_failures,
            ));
        }
        if new.failure_count != old.failure_count {
            return Err(fixed(
                "failure_count_threshold",
                &old.failure_count,
                &new.failure_count,
            ));
        }
        if new.automatic_half_open != old.automatic_half_open {
            return Err(fixed(
                "automatic_transition_to_half_open",
                &old.automatic_half_open,
                &new.automatic_half_open,
            ));
        }
        if new.max_wait_in_half_open != old.max_wait_in_half_open {
            return Err(fixed(
                "max_wait_duration_in_half_open_state",
                &old.max_wait_in_half_open,
                &new.max_wait_in_half_open,
            ));
        }
        if new.after_half_open_timeout != old.after_half_open_timeout {
            return Err(fixed(
                "transition_to_state_after_wait_duration",
                &old.after_half_open_timeout,
                &new.after_half_open_timeout,
            ));
        }
        if new.permit_drop != old.permit_drop {
            return Err(fixed("permit_drop", &old.permit_drop, &new.permit_drop));
        }
        let mut central = self.lock();
        central.tuning = Tuning::of(new);
        // Acquire: as in `record`.
        let c = self.ctrl.load(Ordering::Acquire);
        // A closed window is judged by the new rules at once (a lower threshold
        // may trip it), and its flags re-derived: whether successes may skip the
        // lock depends on the rules.
        let event = if ctrl::state(c) == State::Closed {
            let mut now = Now {
                clock: &self.clock,
                at: None,
            };
            self.fold_and_judge(&mut central, c, &mut now)
        } else {
            None
        };
        drop(central);
        if let Some(e) = event {
            self.announce(&e);
        }
        Ok(())
    }
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Relaxed: a diagnostic snapshot.
        let c = self.ctrl.load(Ordering::Relaxed);
        f.debug_struct("CircuitBreaker")
            .field("name", &self.config.name)
            .field("state", &ctrl::state(c))
            .field("generation", &ctrl::generation(c))
            .finish_non_exhaustive()
    }
}

#[cfg(all(test, not(loom)))]
mod rejection_tests {
    use super::{AtomicU64, CachePadded, Rejections};
    use crate::State;

    /// Each state's rejections are counted apart, from many threads, and the
    /// states that reject nothing count nothing.
    #[test]
    fn rejections_are_counted_by_state_across_threads() {
        let r = Rejections::with_shards(4);
        std::thread::scope(|s| {
            for t in 0..8_u64 {
                let r = &r;
                s.spawn(move || {
                    for _ in 0..100 {
                        r.increment(State::Open);
                        r.increment(State::Closed);
                    }
                    for _ in 0..t {
                        r.increment(State::HalfOpen);
                    }
                    r.increment(State::ForcedOpen);
                });
            }
        });
        let by = r.by_state();
        assert_eq!((by.open, by.half_open, by.forced_open), (800, 28, 8));
        assert_eq!(r.in_state(State::Open), 800);
        assert_eq!(r.in_state(State::Closed), 0);
        assert_eq!(r.in_state(State::Disabled), 0);
    }

    /// One padded slot per shard for the three states (not three counters).
    #[test]
    fn one_padded_slot_per_shard_holds_the_three_states() {
        let r = Rejections::with_shards(64);
        assert_eq!(r.shards.len(), 64);
        assert_eq!(
            std::mem::size_of::<CachePadded<[AtomicU64; 3]>>(),
            std::mem::size_of::<CachePadded<AtomicU64>>()
        );
    }
}
