//! The memory monitor's and gate's metrics (feature `metrics`; the table is in
//! `docs/metrics.md`).

use heijunka_core::PressureLevel;
use heijunka_core::metrics::{Counter, Gauge};

/// One monitor's handles, registered once when it is built, labelled `name`.
/// Without the crate's `metrics` feature they are no-ops.
#[derive(Debug, Default)]
pub(crate) struct MonitorMetrics {
    /// The level as a number: normal 0, elevated 1, critical 2.
    level: Gauge,
    usage_bytes: Gauge,
    limit_bytes: Gauge,
    usage_ratio: Gauge,
    /// Level changes by the level changed to, indexed by `PressureLevel::as_u8`.
    changes: [Counter; 3],
    sample_errors: Counter,
}

impl MonitorMetrics {
    pub(crate) fn new(name: &str) -> Self {
        #[cfg(feature = "metrics")]
        {
            use heijunka_core::metrics::{Unit, counter, gauge};
            let l = &[("name", name)];
            let change = |to: PressureLevel| {
                counter(
                    "heijunka_memory_level_changes_total",
                    Unit::Count,
                    "Pressure level changes, by the level changed to.",
                    &[("name", name), ("to", &to.to_string())],
                )
            };
            Self {
                level: gauge(
                    "heijunka_memory_level",
                    Unit::Count,
                    "Memory pressure level: 0 normal, 1 elevated, 2 critical.",
                    l,
                ),
                usage_bytes: gauge(
                    "heijunka_memory_usage_bytes",
                    Unit::Bytes,
                    "Memory used, counted against the binding limit (latest sample).",
                    l,
                ),
                limit_bytes: gauge(
                    "heijunka_memory_limit_bytes",
                    Unit::Bytes,
                    "The binding memory limit (latest sample).",
                    l,
                ),
                usage_ratio: gauge(
                    "heijunka_memory_usage_ratio",
                    Unit::Ratio,
                    "Used / limit, 0..=1 (latest sample).",
                    l,
                ),
                changes: [
                    change(PressureLevel::Normal),
                    change(PressureLevel::Elevated),
                    change(PressureLevel::Critical),
                ],
                sample_errors: counter(
                    "heijunka_memory_sample_errors_total",
                    Unit::Count,
                    "Samples that failed (the level was kept).",
                    l,
                ),
            }
        }
        #[cfg(not(feature = "metrics"))]
        {
            let _ = name;
            Self::default()
        }
    }

    /// A successful sample.
    pub(crate) fn sampled(&self, level: PressureLevel, used: u64, limit: u64, ratio: f64) {
        self.level.set(f64::from(level.as_u8()));
        // Gauges are f64: exact up to 2^53 bytes (8 PiB).
        #[allow(clippy::cast_precision_loss)]
        {
            self.usage_bytes.set(used as f64);
            self.limit_bytes.set(limit as f64);
        }
        self.usage_ratio.set(ratio);
    }

    pub(crate) fn changed(&self, to: PressureLevel) {
        if let Some(c) = self.changes.get(usize::from(to.as_u8())) {
            c.increment(1);
        }
    }

    pub(crate) fn sample_failed(&self) {
        self.sample_errors.increment(1);
    }
}

/// A gate's rejection counter, labelled `name`.
pub(crate) fn gate_rejected(name: &str) -> Counter {
    #[cfg(feature = "metrics")]
    {
        heijunka_core::metrics::counter(
            "heijunka_memory_gate_rejected_total",
            heijunka_core::metrics::Unit::Count,
            "Requests a memory gate rejected (by level, by size, or on a stale reading).",
            &[("name", name)],
        )
    }
    #[cfg(not(feature = "metrics"))]
    {
        let _ = name;
        Counter::noop()
    }
}
