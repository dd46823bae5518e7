//! The pools' metrics (feature `metrics`; the table is in `docs/metrics.md`).

use heijunka_core::metrics::{Counter, Gauge, Histogram};

/// One pool's handles, registered once when it is built. Without the crate's
/// `metrics` feature they are no-ops.
#[derive(Clone, Debug, Default)]
pub(crate) struct PoolMetrics {
    /// Submitted, not yet started.
    pub(crate) queued: Gauge,
    /// Running now.
    pub(crate) running: Gauge,
    pub(crate) completed: Counter,
    pub(crate) panicked: Counter,
    /// Dropped unrun (or stopped) by a shutdown.
    pub(crate) cancelled: Counter,
    pub(crate) rejected: Counter,
    /// Run time of each task, from the pool's existing timing (no extra clock read).
    pub(crate) task_seconds: Histogram,
}

impl PoolMetrics {
    pub(crate) fn new(name: &str) -> Self {
        #[cfg(feature = "metrics")]
        {
            use heijunka_core::metrics::{Unit, counter, gauge, histogram};
            let l = &[("name", name)];
            Self {
                queued: gauge(
                    "heijunka_pool_queued",
                    Unit::Count,
                    "Tasks submitted and not yet started.",
                    l,
                ),
                running: gauge(
                    "heijunka_pool_running",
                    Unit::Count,
                    "Tasks running now.",
                    l,
                ),
                completed: counter(
                    "heijunka_pool_completed_total",
                    Unit::Count,
                    "Tasks that ran to completion.",
                    l,
                ),
                panicked: counter(
                    "heijunka_pool_panicked_total",
                    Unit::Count,
                    "Tasks that panicked.",
                    l,
                ),
                cancelled: counter(
                    "heijunka_pool_cancelled_total",
                    Unit::Count,
                    "Tasks cancelled by a shutdown (dropped unrun, or stopped).",
                    l,
                ),
                rejected: counter(
                    "heijunka_pool_rejected_total",
                    Unit::Count,
                    "Submissions refused (queue full, timed out, shutting down, no runtime).",
                    l,
                ),
                task_seconds: histogram(
                    "heijunka_pool_task_seconds",
                    Unit::Seconds,
                    "Task run time, from start to end (not queueing).",
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
}

/// Decrements a counting gauge when dropped (a task dropped by its runtime before
/// it got to its decrement still leaves the gauge balanced).
pub(crate) struct GaugeGuard(pub(crate) Gauge);

impl GaugeGuard {
    pub(crate) fn up(g: &Gauge) -> Self {
        g.increment(1.0);
        Self(g.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}
