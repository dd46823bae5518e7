//! What a [`Policy`](super::Policy) counts about itself: the figures of
//! [`Policy::stats`](super::Policy::stats), the `metrics` feature's handles, and
//! the rejection logs (DEBUG per rejection, WARN when shedding starts and ends).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use heijunka_breaker::State as BreakerState;
use heijunka_core::metrics::{Counter, Gauge, Histogram};
use heijunka_core::{Rejection, ShardedCounter};
use serde::Serialize;
use tokio::time::Instant;

use super::Stage;

/// Every stage, in the policy's order (the index of [`stage_index`]).
pub(super) const STAGES: [Stage; 5] = [
    Stage::Deadline,
    Stage::RateLimit,
    Stage::LoadShed,
    Stage::Concurrency,
    Stage::Breaker,
];

/// Every reason a rejection is counted under (the index of [`reason_index`]):
/// the [`Rejection`] kinds, `cancelled` for a request whose caller went away
/// before it was admitted, and `other` for kinds added to `Rejection` later.
pub(super) const REASONS: [&str; 9] = [
    "at_capacity",
    "rate_limited",
    "circuit_open",
    "memory_pressure",
    "shutting_down",
    "timed_out",
    "queue_full",
    "cancelled",
    "other",
];

const CANCELLED: usize = 7;

fn stage_index(stage: Stage) -> usize {
    match stage {
        Stage::Deadline => 0,
        Stage::RateLimit => 1,
        Stage::LoadShed => 2,
        Stage::Concurrency => 3,
        Stage::Breaker => 4,
    }
}

fn reason_index(reason: &Rejection) -> usize {
    match reason {
        Rejection::AtCapacity { .. } => 0,
        Rejection::RateLimited { .. } => 1,
        Rejection::CircuitOpen { .. } => 2,
        Rejection::MemoryPressure { .. } => 3,
        Rejection::ShuttingDown => 4,
        Rejection::TimedOut { .. } => 5,
        Rejection::QueueFull { .. } => 6,
        _ => 8,
    }
}

/// The `(stage, reason)` pairs that can occur, registered as metrics (at zero)
/// when the policy is built, so a dashboard's `rate()` works from the start. A
/// load-shedding signal may refuse with any reason.
#[cfg(feature = "metrics")]
fn possible(stage: usize, reason: usize) -> bool {
    match STAGES[stage] {
        Stage::Deadline => matches!(REASONS[reason], "timed_out" | "cancelled"),
        Stage::RateLimit => REASONS[reason] == "rate_limited",
        Stage::LoadShed => REASONS[reason] != "cancelled",
        Stage::Concurrency => matches!(REASONS[reason], "at_capacity" | "shutting_down"),
        Stage::Breaker => REASONS[reason] == "circuit_open",
    }
}

/// How long without a rejection before shedding counts as over.
pub(super) const SHED_QUIET: Duration = Duration::from_secs(1);
/// At most one "started shedding" WARN per this long (and its "stopped" WARN).
pub(super) const SHED_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// A policy's counts. Admission and completion add to per-thread shards;
/// rejections (rare in a healthy service, and already the cheap path under
/// overload) to one atomic per `(stage, reason)`.
pub(super) struct Observer {
    admitted: ShardedCounter,
    timed_out: AtomicU64,
    metrics: Metrics,
    /// The refusals and the shedding episode: apart, so that the task ending an
    /// episode holds them and not the observer (whose reference count is the
    /// number of admissions in flight).
    shed: Arc<Shed>,
}

/// A policy's refusals and its shedding episode.
struct Shed {
    name: Box<str>,
    epoch: Instant,
    rejected: [[AtomicU64; REASONS.len()]; STAGES.len()],
    shedding: AtomicBool,
    /// Whether a task is waiting to end the episode (one at a time).
    watching: AtomicBool,
    gauge: Gauge,
    /// Milliseconds since `epoch` of the last rejection (plus one; 0: none).
    last_rejection: AtomicU64,
    /// Rejections counted (every stage and reason) when shedding started.
    shed_base: AtomicU64,
    /// Milliseconds since `epoch` when shedding started (plus one), and of the
    /// last "started" WARN (plus one; 0: none yet).
    shed_since: AtomicU64,
    last_warn: AtomicU64,
    /// Whether the current shedding episode's start was logged (its end is
    /// logged only then).
    warned: AtomicBool,
}

/// The `metrics` handles, registered when the policy is built.
struct Metrics {
    admitted: Counter,
    rejected: [[Counter; REASONS.len()]; STAGES.len()],
    in_flight: Gauge,
    timed_out: Counter,
    latency: Histogram,
}

impl Metrics {
    fn new(name: &str) -> Self {
        #[cfg(feature = "metrics")]
        {
            use heijunka_core::metrics::{Unit, counter, gauge, histogram};
            let l = [("name", name)];
            Self {
                admitted: counter(
                    "heijunka_policy_admitted_total",
                    Unit::Count,
                    "Requests the policy let in.",
                    &l,
                ),
                rejected: std::array::from_fn(|s| {
                    std::array::from_fn(|r| {
                        if possible(s, r) {
                            counter(
                                "heijunka_policy_rejected_total",
                                Unit::Count,
                                "Requests the policy refused, by the stage that refused and why.",
                                &[
                                    ("name", name),
                                    ("stage", STAGES[s].as_str()),
                                    ("reason", REASONS[r]),
                                ],
                            )
                        } else {
                            Counter::noop()
                        }
                    })
                }),
                in_flight: gauge(
                    "heijunka_policy_in_flight",
                    Unit::Count,
                    "Requests admitted and not yet finished (response body included).",
                    &l,
                ),
                timed_out: counter(
                    "heijunka_policy_timed_out_total",
                    Unit::Count,
                    "Admitted requests stopped at their deadline (the call or its response body).",
                    &l,
                ),
                latency: histogram(
                    "heijunka_policy_latency_seconds",
                    Unit::Seconds,
                    "Time from admission to the end of the response (its headers when a body streams on).",
                    &l,
                ),
            }
        }
        #[cfg(not(feature = "metrics"))]
        {
            let _ = name;
            Self {
                admitted: Counter::noop(),
                rejected: std::array::from_fn(|_| std::array::from_fn(|_| Counter::noop())),
                in_flight: Gauge::noop(),
                timed_out: Counter::noop(),
                latency: Histogram::noop(),
            }
        }
    }
}

fn millis_since(epoch: Instant, now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(epoch).as_millis())
        .unwrap_or(u64::MAX - 1)
        .saturating_add(1)
}

/// The `heijunka_policy_shedding` gauge.
fn shedding_gauge(name: &str) -> Gauge {
    #[cfg(feature = "metrics")]
    {
        heijunka_core::metrics::gauge(
            "heijunka_policy_shedding",
            heijunka_core::metrics::Unit::Count,
            "1 while the policy is refusing requests (a refusal in the last second), else 0.",
            &[("name", name)],
        )
    }
    #[cfg(not(feature = "metrics"))]
    {
        let _ = name;
        Gauge::noop()
    }
}

impl Observer {
    pub(super) fn new(name: &str) -> Self {
        Self {
            admitted: ShardedCounter::new(),
            timed_out: AtomicU64::new(0),
            metrics: Metrics::new(name),
            shed: Arc::new(Shed {
                name: name.into(),
                epoch: Instant::now(),
                rejected: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
                shedding: AtomicBool::new(false),
                watching: AtomicBool::new(false),
                gauge: shedding_gauge(name),
                last_rejection: AtomicU64::new(0),
                shed_base: AtomicU64::new(0),
                shed_since: AtomicU64::new(0),
                last_warn: AtomicU64::new(0),
                warned: AtomicBool::new(false),
            }),
        }
    }

    pub(super) fn name(&self) -> &str {
        &self.shed.name
    }

    /// A request was let in at `now`.
    #[inline]
    pub(super) fn admitted(&self, now: Instant) {
        self.admitted.increment();
        self.metrics.admitted.increment(1);
        self.metrics.in_flight.increment(1.0);
        // Relaxed: a hint read on every admission; `end_shedding` decides with a
        // compare-exchange.
        if self.shed.shedding.load(Ordering::Relaxed) {
            self.shed.end_shedding(now);
        }
    }

    /// An admitted request finished (whatever its outcome), `started` being its
    /// admission and `end` when its own work ended, if known.
    #[inline]
    pub(super) fn completed(&self, started: Instant, end: Option<Instant>) {
        self.metrics.in_flight.decrement(1.0);
        // The clock is read for the histogram only.
        #[cfg(feature = "metrics")]
        self.metrics.latency.record_duration(
            end.unwrap_or_else(Instant::now)
                .saturating_duration_since(started),
        );
        #[cfg(not(feature = "metrics"))]
        let _ = (started, end, &self.metrics.latency);
    }

    /// An admitted request was stopped at its deadline.
    pub(super) fn timed_out(&self) {
        // Relaxed: a statistic, read on its own.
        self.timed_out.fetch_add(1, Ordering::Relaxed);
        self.metrics.timed_out.increment(1);
    }

    /// `stage` refused a request with `reason` (`None`: the request was
    /// cancelled) at `now`.
    #[cold]
    pub(super) fn rejected(&self, stage: Stage, reason: Option<&Rejection>, now: Instant) {
        let (s, r) = (stage_index(stage), reason.map_or(CANCELLED, reason_index));
        self.metrics.rejected[s][r].increment(1);
        self.shed.rejected(stage, s, r, now);
    }

    /// Whether the policy is shedding at `now` (see [`Shed::shedding_at`]).
    fn shedding_at(&self, now: Instant) -> bool {
        self.shed.shedding_at(now)
    }
}

impl Shed {
    /// Counts a refusal, logs it, and starts a shedding episode (or keeps it
    /// going).
    #[cold]
    fn rejected(self: &Arc<Self>, stage: Stage, s: usize, r: usize, now: Instant) {
        // Relaxed: statistics, each read on its own.
        self.rejected[s][r].fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            policy = %self.name,
            stage = stage.as_str(),
            reason = REASONS[r],
            "request rejected"
        );
        if r == CANCELLED {
            // The caller went away: not the policy shedding load.
            return;
        }
        let at = millis_since(self.epoch, now);
        // Relaxed: the shedding episode's bookkeeping is approximate by design
        // (a log line and a gauge); the flag's compare-exchange picks one logger.
        if self.last_rejection.load(Ordering::Relaxed) < at {
            self.last_rejection.store(at, Ordering::Relaxed);
        }
        if !self.shedding.load(Ordering::Relaxed)
            && self
                .shedding
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.start_shedding(stage, REASONS[r], at);
        } else if !self.warned.load(Ordering::Relaxed)
            && at.saturating_sub(self.last_warn.load(Ordering::Relaxed))
                >= SHED_LOG_INTERVAL.as_millis() as u64
            && self.shedding.load(Ordering::Relaxed)
            && self
                .warned
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            // An episode that started within the rate limit of the last WARN,
            // and is still going when the limit has passed: said now, once.
            self.last_warn.store(at, Ordering::Relaxed);
            tracing::warn!(
                policy = %self.name,
                stage = stage.as_str(),
                reason = REASONS[r],
                since_ms = at.saturating_sub(self.shed_since.load(Ordering::Relaxed)),
                "policy still shedding load"
            );
        }
    }

    #[cold]
    fn start_shedding(self: &Arc<Self>, stage: Stage, reason: &str, at: u64) {
        self.gauge.set(1.0);
        // Relaxed: only the thread that won the flag writes these. This
        // refusal is already counted: the episode's count starts before it.
        self.shed_base
            .store(self.rejected_total().saturating_sub(1), Ordering::Relaxed);
        self.shed_since.store(at, Ordering::Relaxed);
        let last = self.last_warn.load(Ordering::Relaxed);
        let interval = SHED_LOG_INTERVAL.as_millis() as u64;
        let log = last == 0 || at.saturating_sub(last) >= interval;
        self.warned.store(log, Ordering::Relaxed);
        if log {
            self.last_warn.store(at, Ordering::Relaxed);
            tracing::warn!(
                policy = %self.name,
                stage = stage.as_str(),
                reason,
                "policy started shedding load"
            );
        }
        self.watch();
    }

    /// Ends the episode a quiet second after its last refusal even when no
    /// request comes to notice (and so the gauge and the "stopped" WARN do not
    /// wait for traffic): a task on the current tokio runtime, if there is one,
    /// one at a time. Without a runtime the next admission or
    /// [`stats`](super::Policy::stats) call ends it.
    fn watch(self: &Arc<Self>) {
        if self.watching.swap(true, Ordering::SeqCst) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.watching.store(false, Ordering::SeqCst);
            return;
        };
        let shed = Arc::clone(self);
        drop(runtime.spawn(async move {
            loop {
                if !shed.shedding.load(Ordering::SeqCst) {
                    shed.watching.store(false, Ordering::SeqCst);
                    // An episode that started after the check found this task
                    // watching and spawned none: take it on.
                    if shed.shedding.load(Ordering::SeqCst)
                        && !shed.watching.swap(true, Ordering::SeqCst)
                    {
                        continue;
                    }
                    return;
                }
                let last = shed.last_rejection.load(Ordering::Relaxed);
                let quiet_at =
                    shed.epoch + Duration::from_millis(last.saturating_sub(1)) + SHED_QUIET;
                tokio::time::sleep_until(quiet_at).await;
                shed.end_shedding(Instant::now());
            }
        }));
    }

    #[cold]
    fn end_shedding(&self, now: Instant) {
        let at = millis_since(self.epoch, now);
        let quiet = SHED_QUIET.as_millis() as u64;
        if at.saturating_sub(self.last_rejection.load(Ordering::Relaxed)) < quiet {
            return;
        }
        if self
            .shedding
            .compare_exchange(true, false, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        self.gauge.set(0.0);
        if self.warned.load(Ordering::Relaxed) {
            let since = self.shed_since.load(Ordering::Relaxed);
            let last = self.last_rejection.load(Ordering::Relaxed);
            tracing::warn!(
                policy = %self.name,
                rejected = self
                    .rejected_total()
                    .saturating_sub(self.shed_base.load(Ordering::Relaxed)),
                lasted_ms = last.saturating_sub(since),
                "policy stopped shedding load"
            );
        }
    }

    /// Every refusal so far, `cancelled` ones excluded.
    fn rejected_total(&self) -> u64 {
        self.rejected
            .iter()
            .flat_map(|s| s.iter().enumerate())
            .filter(|(r, _)| *r != CANCELLED)
            .map(|(_, c)| c.load(Ordering::Relaxed))
            .sum()
    }

    /// Whether the policy is shedding at `now`: a rejection within the last
    /// [`SHED_QUIET`] (ends the episode, with its log line, if not).
    fn shedding_at(&self, now: Instant) -> bool {
        if self.shedding.load(Ordering::Relaxed) {
            self.end_shedding(now);
        }
        self.shedding.load(Ordering::Relaxed)
    }
}

impl Observer {
    /// The figures now; `in_flight` is the number of live admissions (each
    /// holds a reference to this observer: the count is the `Arc`'s).
    pub(super) fn stats(
        &self,
        in_flight: u64,
        limit: Option<u64>,
        breaker: Option<BreakerState>,
    ) -> PolicyStats {
        let admitted = self.admitted.sum();
        let shed = &self.shed;
        let mut rejected_by = Vec::new();
        let mut rejected = 0;
        for (s, stage) in STAGES.iter().enumerate() {
            for (r, reason) in REASONS.iter().enumerate() {
                let count = shed.rejected[s][r].load(Ordering::Relaxed);
                if count > 0 {
                    rejected += count;
                    rejected_by.push(RejectedCount {
                        stage: *stage,
                        reason,
                        count,
                    });
                }
            }
        }
        PolicyStats {
            name: shed.name.to_string(),
            admitted,
            // Read one after the other while requests come and go: under load,
            // off by the requests admitted in between.
            completed: admitted.saturating_sub(in_flight),
            in_flight,
            rejected,
            rejected_by,
            timed_out: self.timed_out.load(Ordering::Relaxed),
            limit,
            breaker,
            shedding: self.shedding_at(Instant::now()),
        }
    }
}

/// A [`Policy`](super::Policy)'s figures at one moment, from
/// [`Policy::stats`](super::Policy::stats): the ones the `metrics` feature
/// exports (docs/metrics.md) but latency, for a service without a metrics stack
/// (log it, serve it as JSON). Latency percentiles need a histogram, and timing
/// every request a clock read at its end (about 20 ns): the `metrics` feature's
/// `heijunka_policy_latency_seconds` pays for that, only when it is on.
///
/// Counts are since the policy was built; clones of a policy share them.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct PolicyStats {
    /// The policy's [name](super::PolicyBuilder::name).
    pub name: String,
    /// Requests let in.
    pub admitted: u64,
    /// Admitted requests that have finished (successfully or not, cancelled
    /// included).
    pub completed: u64,
    /// Admitted requests not yet finished (their response bodies included).
    pub in_flight: u64,
    /// Requests refused, every stage together.
    pub rejected: u64,
    /// The refusals by stage and reason (only those that happened).
    pub rejected_by: Vec<RejectedCount>,
    /// Admitted requests stopped at their deadline.
    pub timed_out: u64,
    /// The concurrency limit now (the adaptive limit's current value), if the
    /// policy has one.
    pub limit: Option<u64>,
    /// The breaker's state, if the policy has one.
    pub breaker: Option<BreakerState>,
    /// Whether the policy is shedding: it refused a request in the last second.
    pub shedding: bool,
}

/// Refusals by one stage for one reason, in [`PolicyStats::rejected_by`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct RejectedCount {
    /// The stage that refused.
    pub stage: Stage,
    /// Why: a [`Rejection`] kind (`at_capacity`, `rate_limited`, ...),
    /// `cancelled` (the caller went away first) or `other`.
    pub reason: &'static str,
    /// How many.
    pub count: u64,
}
