//! Live numbers of the pools, with task-time percentiles.

use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use heijunka_core::sync::atomic::{AtomicU64, Ordering};
use serde::Serialize;

use crate::metrics::PoolMetrics;

/// A snapshot of a pool's numbers (both [`WorkerPool`](crate::WorkerPool) and
/// [`TaskPool`](crate::TaskPool)).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PoolStats {
    /// Workers (threads) or the running-task limit.
    pub workers: usize,
    /// Tasks running now.
    pub active: usize,
    /// Tasks waiting to run now.
    pub queued: usize,
    /// Tasks that ran to completion.
    pub completed: u64,
    /// Tasks that did not complete: panicked or cancelled.
    pub failed: u64,
    /// Tasks that panicked.
    pub panicked: u64,
    /// Tasks cancelled by shutdown (never ran, or stopped).
    pub cancelled: u64,
    /// Submissions refused.
    pub rejected: u64,
    /// Submitters blocked now waiting for room: [`WorkerPool`](crate::WorkerPool)'s
    /// `submit`, `submit_timeout` and `execute` asleep on a full queue,
    /// [`TaskPool`](crate::TaskPool)'s `spawn` waiting for a waiting slot. A
    /// submitter is counted from the moment it registers to sleep (after its
    /// last check for room and for shutdown) until it wakes; one that only spins
    /// or yields briefly on a full queue is not counted.
    pub blocked_submitters: usize,
    /// Task run time (from start to end, not queueing), median.
    pub p50: Duration,
    /// 90th percentile run time.
    pub p90: Duration,
    /// 99th percentile run time.
    pub p99: Duration,
    /// Mean run time.
    pub mean: Duration,
}

/// Counters shared by the pools.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) completed: AtomicU64,
    pub(crate) panicked: AtomicU64,
    pub(crate) cancelled: AtomicU64,
    pub(crate) rejected: AtomicU64,
    /// The same outcomes, emitted as metrics (no-ops without the feature).
    pub(crate) metrics: PoolMetrics,
}

impl Counters {
    pub(crate) fn with_metrics(metrics: PoolMetrics) -> Self {
        Self {
            metrics,
            ..Self::default()
        }
    }

    #[inline]
    pub(crate) fn completed(&self) {
        Self::bump(&self.completed);
        self.metrics.completed.increment(1);
    }

    #[inline]
    pub(crate) fn panicked(&self) {
        Self::bump(&self.panicked);
        self.metrics.panicked.increment(1);
    }

    pub(crate) fn cancelled(&self) {
        Self::bump(&self.cancelled);
        self.metrics.cancelled.increment(1);
    }

    pub(crate) fn rejected(&self) {
        Self::bump(&self.rejected);
        self.metrics.rejected.increment(1);
    }

    #[inline]
    pub(crate) fn bump(counter: &AtomicU64) {
        // Relaxed: statistics.
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn get(counter: &AtomicU64) -> u64 {
        // Relaxed: statistics.
        counter.load(Ordering::Relaxed)
    }
}

/// Task run times in nanoseconds, 1 ns to 1 hour at 2 significant digits.
pub(crate) struct Timings(Mutex<Histogram<u64>>);

impl Timings {
    pub(crate) fn new() -> Self {
        Self(Mutex::new(
            Histogram::new_with_bounds(1, 3_600_000_000_000, 2).expect("constant bounds are valid"),
        ))
    }

    #[inline]
    pub(crate) fn record(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        // `saturating_record` clamps to the histogram's range instead of failing.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .saturating_record(nanos.max(1));
    }

    /// Merges several histograms (one per worker) and reads the percentiles.
    pub(crate) fn percentiles<'a>(
        parts: impl IntoIterator<Item = &'a Timings>,
    ) -> (Duration, Duration, Duration, Duration) {
        let mut all = Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 2)
            .expect("constant bounds are valid");
        for p in parts {
            let h =
                p.0.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            // Same bounds, so adding cannot fail.
            let _ = all.add(&*h);
        }
        if all.is_empty() {
            return Default::default();
        }
        let q = |v: f64| Duration::from_nanos(all.value_at_quantile(v));
        (
            q(0.5),
            q(0.9),
            q(0.99),
            Duration::from_nanos(all.mean() as u64),
        )
    }
}
