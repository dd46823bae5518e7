//! The monitor's builder, its defaults and their validation.

use std::fmt;
use std::time::Duration;

use heijunka_core::{Clock, ConfigError, validate};

use crate::level::{
    DEFAULT_CRITICAL_THRESHOLD, DEFAULT_ELEVATED_THRESHOLD, DEFAULT_HYSTERESIS, Thresholds,
};
use crate::metrics::MonitorMetrics;
use crate::monitor::MemoryMonitor;
use crate::probe::{MemoryProbe, SystemProbe};

/// The default sampling interval of the background sampler: one second, Envoy's
/// default overload-manager refresh interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

/// The shortest sampling interval the builder accepts: 1 ms. A sample costs
/// microseconds of kernel file reads; sampling more often than this spends a core
/// on it while no memory figure (the kernel's cgroup counters, RSS) moves that fast
/// in a way worth acting on.
pub const MIN_INTERVAL: Duration = Duration::from_millis(1);

/// Builds a [`MemoryMonitor`]; from [`MemoryMonitor::builder`].
///
/// | setting | default | rule |
/// | --- | --- | --- |
/// | [`elevated_threshold`](Self::elevated_threshold) | 0.80 | in `(0, 1]`, at most `critical_threshold` |
/// | [`critical_threshold`](Self::critical_threshold) | 0.90 | in `(0, 1]` |
/// | [`hysteresis`](Self::hysteresis) | 0.05 | in `[0, elevated_threshold)` |
/// | [`interval`](Self::interval) | 1 s | at least [`MIN_INTERVAL`] (1 ms) |
/// | [`limit`](Self::limit) | none | at least 1 byte |
/// | [`probe`](Self::probe) | [`SystemProbe::new()`] | |
/// | [`clock`](Self::clock) | the system clock | |
pub struct MemoryMonitorBuilder {
    elevated: f64,
    critical: f64,
    hysteresis: f64,
    interval: Duration,
    limit: Option<u64>,
    probe: Option<Box<dyn MemoryProbe>>,
    clock: Clock,
    name: String,
}

impl MemoryMonitorBuilder {
    pub(crate) fn new() -> Self {
        Self {
            elevated: DEFAULT_ELEVATED_THRESHOLD,
            critical: DEFAULT_CRITICAL_THRESHOLD,
            hysteresis: DEFAULT_HYSTERESIS,
            interval: DEFAULT_INTERVAL,
            limit: None,
            probe: None,
            clock: Clock::system(),
            name: "default".into(),
        }
    }

    /// The ratio of the limit at which pressure becomes
    /// [`Elevated`](heijunka_core::PressureLevel::Elevated).
    #[must_use]
    pub fn elevated_threshold(mut self, ratio: f64) -> Self {
        self.elevated = ratio;
        self
    }

    /// The ratio of the limit at which pressure becomes
    /// [`Critical`](heijunka_core::PressureLevel::Critical).
    #[must_use]
    pub fn critical_threshold(mut self, ratio: f64) -> Self {
        self.critical = ratio;
        self
    }

    /// How far (as a ratio of the limit) usage must fall below a level's threshold
    /// before the level is left.
    #[must_use]
    pub fn hysteresis(mut self, ratio: f64) -> Self {
        self.hysteresis = ratio;
        self
    }

    /// How often the background sampler ([`MemoryMonitor::spawn_sampler`]) samples.
    #[must_use]
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// A memory budget for the process, in bytes, against which the process's
    /// resident set is counted. Of this, the cgroup limits and the system's memory,
    /// the one with the least headroom binds (each of them would end the process).
    #[must_use]
    pub fn limit(mut self, bytes: u64) -> Self {
        self.limit = Some(bytes);
        self
    }

    /// Where readings come from (default: [`SystemProbe::new()`]).
    #[must_use]
    pub fn probe(mut self, probe: impl MemoryProbe) -> Self {
        self.probe = Some(Box::new(probe));
        self
    }

    /// The clock that stamps samples (a `ManualClock`'s in tests).
    #[must_use]
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The monitor's name: the `name` label of its metrics (feature `metrics`;
    /// see `docs/metrics.md`). Default `"default"`.
    #[must_use]
    ///
    /// ```
    /// use heijunka_memory::{ManualProbe, MemoryMonitor};
    ///
    /// let probe = ManualProbe::new(1 << 30);
    /// let monitor = MemoryMonitor::builder()
    ///     .name("process")
    ///     .limit(1 << 30)
    ///     .probe(probe)
    ///     .build()?;
    /// # let _ = monitor;
    /// # Ok::<(), heijunka_core::ConfigError>(())
    /// ```
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Checks the settings, builds the monitor and takes its first sample (a failed
    /// first sample is counted in the stats, not returned: sampling failures are
    /// not configuration errors).
    pub fn build(self) -> Result<MemoryMonitor, ConfigError> {
        let thresholds = Thresholds::new(self.elevated, self.critical, self.hysteresis)?;
        let interval = validate::non_zero_duration("interval", self.interval)?;
        if interval < MIN_INTERVAL {
            return Err(ConfigError::new(
                "interval",
                interval,
                format!("must be at least {MIN_INTERVAL:?}"),
            ));
        }
        let limit = self
            .limit
            .map(|l| validate::at_least("limit", l, 1))
            .transpose()?;
        let probe = self.probe.unwrap_or_else(|| Box::new(SystemProbe::new()));
        let monitor = MemoryMonitor::from_parts(
            probe,
            thresholds,
            interval,
            limit,
            self.clock,
            MonitorMetrics::new(&self.name),
        );
        // The error is counted in the stats and logged; the monitor starts at Normal.
        let _ = monitor.sample_now();
        Ok(monitor)
    }
}

impl fmt::Debug for MemoryMonitorBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryMonitorBuilder")
            .field("elevated_threshold", &self.elevated)
            .field("critical_threshold", &self.critical)
            .field("hysteresis", &self.hysteresis)
            .field("interval", &self.interval)
            .field("limit", &self.limit)
            .field("custom_probe", &self.probe.is_some())
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}
