//! The admission gate: admit or reject work by memory pressure and request size.

use std::fmt;

use heijunka_core::{ConfigError, PressureLevel, Rejection, ShardedCounter, validate};
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
    counts: Arc<Counts>,
}

struct Counts {
    admitted: ShardedCounter,
    rejected: ShardedCounter,
    rejected_large: ShardedCounter,
}

/// Builds a [`MemoryGate`]; from [`MemoryGate::builder`].
#[derive(Debug)]
pub struct MemoryGateBuilder {
    monitor: MemoryMonitor,
    reject_at: PressureLevel,
    large_bytes: Option<u64>,
    large_reject_at: PressureLevel,
}

impl MemoryGateBuilder {
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
        Ok(MemoryGate {
            monitor: self.monitor,
            reject_at: self.reject_at,
            large,
            counts: Arc::new(Counts {
                admitted: ShardedCounter::new(),
                rejected: ShardedCounter::new(),
                rejected_large: ShardedCounter::new(),
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
        }
    }

    /// Admits a request of unknown size, or rejects it at
    /// [`reject_at`](MemoryGateBuilder::reject_at).
    #[inline]
    pub fn check(&self) -> Result<(), Rejection> {
        let level = self.monitor.pressure();
        if level >= self.reject_at {
            self.counts.rejected.increment();
            return Err(Rejection::MemoryPressure { level });
        }
        self.counts.admitted.increment();
        Ok(())
    }

    /// Admits a request of `bytes`, or rejects it: at
    /// [`reject_at`](MemoryGateBuilder::reject_at) whatever its size, and at
    /// [`large_reject_at`](MemoryGateBuilder::large_reject_at) when it is at least
    /// [`large_request_bytes`](MemoryGateBuilder::large_request_bytes).
    #[inline]
    pub fn check_size(&self, bytes: u64) -> Result<(), Rejection> {
        let level = self.monitor.pressure();
        if level >= self.reject_at {
            self.counts.rejected.increment();
            return Err(Rejection::MemoryPressure { level });
        }
        if let Some((large, at)) = self.large
            && bytes >= large
            && level >= at
        {
            self.counts.rejected_large.increment();
            return Err(Rejection::MemoryPressure { level });
        }
        self.counts.admitted.increment();
        Ok(())
    }

    /// The load-shedder signal: the rejection a request of unknown size would get
    /// now, without counting it. One atomic load.
    #[inline]
    pub fn rejection(&self) -> Option<Rejection> {
        self.monitor.rejection_at(self.reject_at)
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
        }
    }
}

impl fmt::Debug for MemoryGate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryGate")
            .field("reject_at", &self.reject_at)
            .field("large", &self.large)
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
}
