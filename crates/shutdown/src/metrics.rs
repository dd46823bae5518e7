//! A shutdown coordinator's metric handles (feature `metrics`; see
//! `docs/metrics.md`), registered once when it is built and updated with one
//! atomic operation per event. Without the feature every handle is a no-op,
//! whatever other crates turned on in `heijunka-core`.

use heijunka_core::metrics::{Counter, Gauge};
#[cfg(feature = "metrics")]
use heijunka_core::metrics::{Unit, counter, gauge};

use crate::{Phase, TriggerReason};

/// The label value of a coordinator built without a name.
pub(crate) const DEFAULT_NAME: &str = "default";

/// The number `heijunka_shutdown_phase` shows for `phase` (documented in
/// `docs/metrics.md`).
pub(crate) fn code(phase: Phase) -> f64 {
    match phase {
        Phase::Running => 0.0,
        Phase::Draining => 1.0,
        Phase::Stopping => 2.0,
        Phase::Stopped => 3.0,
        Phase::Forced => 4.0,
    }
}

#[derive(Debug, Default)]
pub(crate) struct ShutdownMetrics {
    /// `heijunka_shutdown_phase`: [`code`] of the phase now.
    pub(crate) phase: Gauge,
    /// `heijunka_shutdown_in_flight`: guards alive now.
    pub(crate) in_flight: Gauge,
    /// `heijunka_shutdown_triggered_total` by reason.
    call: Counter,
    signal: Counter,
    parent: Counter,
}

impl ShutdownMetrics {
    pub(crate) fn new(name: &str) -> Self {
        #[cfg(feature = "metrics")]
        {
            let triggered = |reason: &str| {
                counter(
                    "heijunka_shutdown_triggered_total",
                    Unit::Count,
                    "Shutdowns triggered, by what triggered them.",
                    &[("name", name), ("reason", reason)],
                )
            };
            let phase = gauge(
                "heijunka_shutdown_phase",
                Unit::Count,
                "The shutdown's phase: 0 running, 1 draining, 2 stopping, 3 stopped, 4 forced.",
                &[("name", name)],
            );
            phase.set(code(Phase::Running));
            Self {
                phase,
                in_flight: gauge(
                    "heijunka_shutdown_in_flight",
                    Unit::Count,
                    "Work entered (guards and tracked tasks) and not yet done.",
                    &[("name", name)],
                ),
                call: triggered("call"),
                signal: triggered("signal"),
                parent: triggered("parent"),
            }
        }
        #[cfg(not(feature = "metrics"))]
        {
            let _ = name;
            Self::default()
        }
    }

    pub(crate) fn triggered(&self, reason: &TriggerReason) {
        match reason {
            TriggerReason::Call => &self.call,
            TriggerReason::Signal(_) => &self.signal,
            TriggerReason::Parent => &self.parent,
        }
        .increment(1);
    }
}
