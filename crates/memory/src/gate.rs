//! The admission gate: admit or reject work by memory pressure and request size.

use std::fmt;
use std::time::Duration;

use heijunka_core::metrics::Counter;
use heijunka_core::{ConfigError, Criticality, PressureLevel, Rejection, ShardedCounter, validate};
use serde::Serialize;

use crate::monitor::MemoryMonitor;
use crate::sync::Arc;

/// Admits or rejects work by the monitor's pressure level, optionally by request
/// size: by default everything is rejected at `Critical`; with
/// [`large_request_bytes`](MemoryGateBuilder::large_request_bytes), requests at
/// least that large are already rejected at `Elevated` (the seeds' "memory 90 %:
/// reject large requests", one level earlier). Cheap to clone.
///
/// A check is one atomic load of the level and one sharded counter bump; it never
/// samples. Rejections carry [`Rejection::MemoryPressure`] with the level.
///
/// # Stale readings
///
/// The monitor keeps its last level while sampling fails (a revoked cgroup file,
/// a stopped sampler); a gate does not act on a level forever. Once the latest
/// successful sample is older than [`stale_after`](MemoryGateBuilder::stale_after)
/// (default [`DEFAULT_STALE_AFTER_INTERVALS`] sampling intervals), the gate applies
/// its [`StalePolicy`]: by default it fails open (the level is treated as
/// `Normal`: a stale critical level stops rejecting), or it fails closed (treated
/// as `Critical`). [`GateStats::stale`] says whether the reading is stale now, and
/// the stale counts say what was decided on one. With the default policy a check
/// reads the clock only while the level would reject something.
///
/// ```
/// # if heijunka_core::sync::IS_LOOM { return Ok(()); } // loom types work only inside a model
/// use heijunka_core::{PressureLevel, Rejection};
/// use heijunka_memory::{ManualProbe, MemoryGate, MemoryMonitor};
///
/// let probe = ManualProbe::new(64 << 30);
/// let monitor = MemoryMonitor::builder().limit(1_000).probe(probe.clone()).build()?;
/// let gate = MemoryGate::builder(&monitor).large_request_bytes(1 << 20).build()?;
///
/// probe.set_rss(850); // 85 %: elevated
/// monitor.sample_now()?;
/// assert!(gate.check_size(4 << 10).is_ok());
/// assert_eq!(
///     gate.check_size(8 << 20),
///     Err(Rejection::MemoryPressure { level: PressureLevel::Elevated })
/// );
///
/// probe.set_rss(950); // 95 %: critical
/// monitor.sample_now()?;
/// assert!(gate.check_size(1).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct MemoryGate {
    monitor: MemoryMonitor,
    reject_at: PressureLevel,
    large: Option<(u64, PressureLevel)>,
    /// The lowest level at which the gate rejects anything.
    rejects_from: PressureLevel,
    stale_after: Duration,
    stale_policy: StalePolicy,
    /// Stall percentage at or above which the level counts as `Critical`.
    stall_threshold: Option<f64>,
    counts: Arc<Counts>,
}

struct Counts {
    /// Every rejection, emitted as a metric (a rare path: the admitting path
    /// emits nothing, so it stays one sharded bump).
    rejected_metric: Counter,
    admitted: ShardedCounter,
    rejected: ShardedCounter,
    rejected_large: ShardedCounter,
    stale_admitted: ShardedCounter,
    stale_rejected: ShardedCounter,
}

/// By default a gate distrusts a level whose latest successful sample is older
/// than this many of the monitor's sampling intervals (10 s at the default 1 s):
/// long enough that a sampler a few ticks late (a busy runtime) is not stale, short
/// enough that a broken probe does not hold a critical level for minutes.
pub const DEFAULT_STALE_AFTER_INTERVALS: u32 = 10;

/// What a [`MemoryGate`] does with a level whose sample is older than its
/// [`stale_after`](MemoryGateBuilder::stale_after) bound.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum StalePolicy {
    /// Treat the level as `Normal`: admit (the default; a monitor that cannot
    /// measure must not take the service down with it).
    #[default]
    FailOpen,
    /// Treat the level as `Critical`: reject (for work that must never run
    /// without a fresh reading).
    FailClosed,
}

/// Builds a [`MemoryGate`]; from [`MemoryGate::builder`].
#[derive(Debug)]
pub struct MemoryGateBuilder {
    monitor: MemoryMonitor,
    reject_at: PressureLevel,
    large_bytes: Option<u64>,
    large_reject_at: PressureLevel,
    stale_after: Option<Duration>,
    stale_policy: StalePolicy,
    stall_threshold: Option<f64>,
    name: String,
}

impl MemoryGateBuilder {
    /// The gate's name: the `name` label of its metrics (feature `metrics`; see
    /// `docs/metrics.md`). Default `"default"`.
    #[must_use]
    ///
    /// ```
    /// use heijunka_memory::{ManualProbe, MemoryGate, MemoryMonitor};
    ///
    /// let monitor = MemoryMonitor::builder()
    ///     .limit(1 << 30)
    ///     .probe(ManualProbe::new(1 << 30))
    ///     .build()?;
    /// let gate = MemoryGate::builder(&monitor).name("uploads").build()?;
    /// # let _ = gate;
    /// # Ok::<(), heijunka_core::ConfigError>(())
    /// ```
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The level at which every request is rejected (default `Critical`; must not
    /// be `Normal`).
    #[must_use]
    pub fn reject_at(mut self, level: PressureLevel) -> Self {
        self.reject_at = level;
        self
    }

    /// Requests of at least `bytes` are "large" and rejected from
    /// [`large_reject_at`](Self::large_reject_at) (default: no size rule; at least
    /// 1 byte).
    #[must_use]
    pub fn large_request_bytes(mut self, bytes: u64) -> Self {
        self.large_bytes = Some(bytes);
        self
    }

    /// The level at which large requests are rejected (default `Elevated`; must not
    /// be `Normal`).
    #[must_use]
    pub fn large_reject_at(mut self, level: PressureLevel) -> Self {
        self.large_reject_at = level;
        self
    }

    /// How old the latest successful sample may be before the gate applies its
    /// [`stale_policy`](Self::stale_policy) (default
    /// [`DEFAULT_STALE_AFTER_INTERVALS`] × the monitor's
    /// [interval](crate::MemoryMonitorBuilder::interval); longer than zero;
    /// `Duration::MAX` trusts a level forever).
    #[must_use]
    pub fn stale_after(mut self, age: Duration) -> Self {
        self.stale_after = Some(age);
        self
    }

    /// Treat the level as `Critical` while the monitor's
    /// [`stall_percent`](MemoryMonitor::stall_percent) (pressure stall
    /// information: the share of the last 10 s in which some task waited for
    /// memory) is at least `percent`, whatever the usage; in `(0, 100]`. Default:
    /// none. Stalls show a shortage the usage figure hides (a cgroup at 85 % of
    /// its limit with nothing left to reclaim); where the kernel gives no stall
    /// information, the rule never fires.
    #[must_use]
    pub fn stall_threshold(mut self, percent: f64) -> Self {
        self.stall_threshold = Some(percent);
        self
    }

    /// What to do with a stale level (default [`StalePolicy::FailOpen`]).
    #[must_use]
    pub fn stale_policy(mut self, policy: StalePolicy) -> Self {
        self.stale_policy = policy;
        self
    }

    /// Checks the settings and builds the gate.
    pub fn build(self) -> Result<MemoryGate, ConfigError> {
        if self.reject_at == PressureLevel::Normal {
            return Err(ConfigError::new(
                "reject_at",
                self.reject_at,
                "must be Elevated or Critical",
            ));
        }
        if self.large_bytes.is_some() && self.large_reject_at == PressureLevel::Normal {
            return Err(ConfigError::new(
                "large_reject_at",
                self.large_reject_at,
                "must be Elevated or Critical",
            ));
        }
        let large = self
            .large_bytes
            .map(|b| validate::at_least("large_request_bytes", b, 1))
            .transpose()?
            .map(|b| (b, self.large_reject_at));
        let stale_after = match self.stale_after {
            Some(age) => validate::non_zero_duration("stale_after", age)?,
            None => self
                .monitor
                .inner
                .interval
                .saturating_mul(DEFAULT_STALE_AFTER_INTERVALS),
        };
        let stall_threshold = match self.stall_threshold {
            Some(p) if !(p > 0.0 && p <= 100.0) => {
                return Err(ConfigError::new(
                    "stall_threshold",
                    p,
                    "must be a percentage in (0, 100]",
                ));
            }
            other => other,
        };
        let rejects_from = large.map_or(self.reject_at, |(_, at)| at.min(self.reject_at));
        Ok(MemoryGate {
            monitor: self.monitor,
            reject_at: self.reject_at,
            large,
            rejects_from,
            stale_after,
            stale_policy: self.stale_policy,
            stall_threshold,
            counts: Arc::new(Counts {
                rejected_metric: crate::metrics::gate_rejected(&self.name),
                admitted: ShardedCounter::new(),
                rejected: ShardedCounter::new(),
                rejected_large: ShardedCounter::new(),
                stale_admitted: ShardedCounter::new(),
                stale_rejected: ShardedCounter::new(),
            }),
        })
    }
}

impl MemoryGate {
    /// A builder for a gate in front of `monitor`.
    pub fn builder(monitor: &MemoryMonitor) -> MemoryGateBuilder {
        MemoryGateBuilder {
            monitor: monitor.clone(),
            reject_at: PressureLevel::Critical,
            large_bytes: None,
            large_reject_at: PressureLevel::Elevated,
            stale_after: None,
            stale_policy: StalePolicy::FailOpen,
            stall_threshold: None,
            name: "default".into(),
        }
    }

    /// The level to act on and whether it stands in for a stale reading. With
    /// [`StalePolicy::FailOpen`], a level that rejects nothing needs no age check
    /// (and no clock read).
    #[inline]
    fn level(&self) -> (PressureLevel, bool) {
        self.level_for(self.rejects_from)
    }

    /// [`level`](Self::level) for a check that rejects from `rejects_from`: a
    /// level below it needs no age check under fail-open, one at or above it
    /// is checked for staleness.
    #[inline]
    fn level_for(&self, rejects_from: PressureLevel) -> (PressureLevel, bool) {
        let mut level = self.monitor.pressure();
        if let Some(threshold) = self.stall_threshold
            && self.monitor.stall_percent().is_some_and(|p| p >= threshold)
        {
            level = PressureLevel::Critical;
        }
        if self.stale_policy == StalePolicy::FailOpen && level < rejects_from {
            return (level, false);
        }
        if self.monitor.is_stale(self.stale_after) {
            let stand_in = match self.stale_policy {
                StalePolicy::FailOpen => PressureLevel::Normal,
                StalePolicy::FailClosed => PressureLevel::Critical,
            };
            return (stand_in, true);
        }
        (level, false)
    }

    #[inline]
    fn admit(&self, stale: bool) -> Result<(), Rejection> {
        self.counts.admitted.increment();
        if stale {
            self.counts.stale_admitted.increment();
        }
        Ok(())
    }

    #[inline]
    fn reject(&self, level: PressureLevel, stale: bool, large: bool) -> Result<(), Rejection> {
        self.counts.rejected_metric.increment(1);
        if large {
            self.counts.rejected_large.increment();
        } else {
            self.counts.rejected.increment();
        }
        if stale {
            self.counts.stale_rejected.increment();
        }
        Err(Rejection::MemoryPressure { level })
    }

    /// Admits a request of unknown size, or rejects it at
    /// [`reject_at`](MemoryGateBuilder::reject_at).
    #[inline]
    pub fn check(&self) -> Result<(), Rejection> {
        let (level, stale) = self.level();
        if level >= self.reject_at {
            return self.reject(level, stale, false);
        }
        self.admit(stale)
    }

    /// Admits work of `criticality`: sheddable work is refused from the elevated
    /// level on (the seeds' band where optional work is shed), default and
    /// critical work as [`check`](Self::check) does.
    ///
    /// ```
    /// # if heijunka_core::sync::IS_LOOM { return Ok(()); } // loom types work only inside a model
    /// use heijunka_core::Criticality;
    /// use heijunka_memory::{ManualProbe, MemoryGate, MemoryMonitor};
    ///
    /// let probe = ManualProbe::new(64 << 30);
    /// let monitor = MemoryMonitor::builder().limit(1_000).probe(probe.clone()).build()?;
    /// let gate = MemoryGate::builder(&monitor).build()?;
    /// probe.set_rss(850); // 85 %: elevated
    /// monitor.sample_now()?;
    /// assert!(gate.check_for(Criticality::Sheddable).is_err());
    /// assert!(gate.check_for(Criticality::Default).is_ok());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[inline]
    pub fn check_for(&self, criticality: Criticality) -> Result<(), Rejection> {
        if criticality != Criticality::Sheddable {
            return self.check();
        }
        let from = self.reject_at.min(PressureLevel::Elevated);
        // A stale reading stands in as the stale policy says, as for `check`.
        let (level, stale) = self.level_for(from.min(self.rejects_from));
        if level >= from {
            return self.reject(level, stale, false);
        }
        self.admit(stale)
    }

    /// Admits a request of `bytes`, or rejects it: at
    /// [`reject_at`](MemoryGateBuilder::reject_at) whatever its size, and at
    /// [`large_reject_at`](MemoryGateBuilder::large_reject_at) when it is at least
    /// [`large_request_bytes`](MemoryGateBuilder::large_request_bytes).
    #[inline]
    pub fn check_size(&self, bytes: u64) -> Result<(), Rejection> {
        let (level, stale) = self.level();
        if level >= self.reject_at {
            return self.reject(level, stale, false);
        }
        if let Some((large, at)) = self.large
            && bytes >= large
            && level >= at
        {
            return self.reject(level, stale, true);
        }
        self.admit(stale)
    }

    /// The load-shedder signal: the rejection a request of unknown size would get
    /// now, without counting it (the stale policy applies). One atomic load while
    /// the level rejects nothing.
    #[inline]
    pub fn rejection(&self) -> Option<Rejection> {
        let (level, _) = self.level();
        (level >= self.reject_at).then_some(Rejection::MemoryPressure { level })
    }

    /// The monitor the gate reads.
    pub fn monitor(&self) -> &MemoryMonitor {
        &self.monitor
    }

    /// Admission counts since the gate was built (shared by its clones).
    pub fn stats(&self) -> GateStats {
        GateStats {
            level: self.monitor.pressure(),
            admitted: self.counts.admitted.sum(),
            rejected: self.counts.rejected.sum(),
            rejected_large: self.counts.rejected_large.sum(),
            reject_at: self.reject_at,
            large_request_bytes: self.large.map(|(b, _)| b),
            stale: self.monitor.is_stale(self.stale_after),
            sample_age: self.monitor.sample_age(),
            stale_after: self.stale_after,
            stale_policy: self.stale_policy,
            stale_admitted: self.counts.stale_admitted.sum(),
            stale_rejected: self.counts.stale_rejected.sum(),
        }
    }
}

impl fmt::Debug for MemoryGate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryGate")
            .field("reject_at", &self.reject_at)
            .field("large", &self.large)
            .field("stale_after", &self.stale_after)
            .field("stale_policy", &self.stale_policy)
            .field("stall_threshold", &self.stall_threshold)
            .field("level", &self.monitor.pressure())
            .finish_non_exhaustive()
    }
}

/// A [`MemoryGate`]'s counts, from [`MemoryGate::stats`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct GateStats {
    /// The monitor's level now.
    pub level: PressureLevel,
    /// Requests admitted.
    pub admitted: u64,
    /// Requests rejected whatever their size.
    pub rejected: u64,
    /// Large requests rejected by the size rule.
    pub rejected_large: u64,
    /// The level that rejects everything.
    pub reject_at: PressureLevel,
    /// The size rule's threshold, if any.
    pub large_request_bytes: Option<u64>,
    /// Whether the monitor's latest successful sample is older than
    /// [`stale_after`](Self::stale_after) now, so the [`stale_policy`](Self::stale_policy)
    /// decides instead of the level.
    pub stale: bool,
    /// The age of the monitor's latest successful sample.
    pub sample_age: Duration,
    /// The staleness bound.
    pub stale_after: Duration,
    /// What a stale reading means.
    pub stale_policy: StalePolicy,
    /// Requests admitted on a stale reading (also counted in `admitted`).
    pub stale_admitted: u64,
    /// Requests rejected on a stale reading (also counted in `rejected` or
    /// `rejected_large`).
    pub stale_rejected: u64,
}
