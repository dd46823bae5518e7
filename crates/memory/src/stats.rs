//! The monitor's stats snapshot.

use std::time::Duration;

use heijunka_core::PressureLevel;
use serde::Serialize;

use crate::level::Thresholds;
use crate::sample::MemoryStatus;

/// A snapshot of a [`MemoryMonitor`](crate::MemoryMonitor), from
/// [`stats`](crate::MemoryMonitor::stats).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct MemoryStats {
    /// The current level.
    pub level: PressureLevel,
    /// Successful samples since the monitor was built.
    pub samples: u64,
    /// Samples that failed (the level was kept).
    pub sample_errors: u64,
    /// Level changes, in either direction.
    pub level_changes: u64,
    /// Changes to `Elevated` (from either side).
    pub changes_to_elevated: u64,
    /// Changes to `Critical`.
    pub changes_to_critical: u64,
    /// Registered callbacks.
    pub callbacks: usize,
    /// Callback runs that panicked (caught and logged).
    pub callback_panics: u64,
    /// Level changes whose callbacks never ran because the callback thread fell
    /// more than [`CALLBACK_QUEUE_CAPACITY`](crate::CALLBACK_QUEUE_CAPACITY)
    /// changes behind.
    pub callback_changes_dropped: u64,
    /// Live [`subscribe`](crate::MemoryMonitor::subscribe) receivers.
    pub subscribers: usize,
    /// The thresholds in force.
    pub thresholds: Thresholds,
    /// The background sampler's interval.
    pub interval: Duration,
    /// The limit given to the builder, if any.
    pub configured_limit: Option<u64>,
    /// The latest sample's figures.
    pub last: Option<MemoryStatus>,
    /// Time since that sample, on the monitor's clock.
    pub since_last_sample: Option<Duration>,
}
