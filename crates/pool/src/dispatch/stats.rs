//! Live numbers of the dispatcher: per worker and per handler.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use hdrhistogram::Histogram;
use heijunka_core::sync::atomic::{AtomicU64, Ordering};
use serde::Serialize;

/// A snapshot of a [`Dispatcher`](crate::Dispatcher)'s numbers.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct DispatcherStats {
    /// One entry per worker, by index.
    pub workers: Vec<WorkerStats>,
    /// One entry per registered handler, by name.
    pub handlers: BTreeMap<String, HandlerStats>,
    /// Messages accepted and not yet finished (queued or running), all workers.
    pub in_flight: usize,
    /// Dispatches refused because a queue or the global bound was full.
    pub rejected: u64,
    /// Dispatches to a name with no handler.
    pub unknown: u64,
    /// Messages abandoned by shutdown.
    pub abandoned: u64,
    /// Whether the dispatcher is closed to new messages.
    pub closed: bool,
}

/// One worker's numbers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct WorkerStats {
    /// Messages waiting in this worker's queue now.
    pub queued: usize,
    /// Messages queued plus running: the live counter least-loaded selection reads.
    pub load: usize,
    /// Messages this worker has finished (any outcome).
    pub processed: u64,
}

/// One handler's numbers (kept across [`replace`](crate::Dispatcher::replace)).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct HandlerStats {
    /// Calls finished (any outcome).
    pub calls: u64,
    /// Calls that returned an error.
    pub errors: u64,
    /// Calls that panicked.
    pub panics: u64,
    /// Mean time in the handler (not queueing).
    pub mean: Duration,
    /// 99th percentile time in the handler.
    pub p99: Duration,
}

/// Counters of one handler name. Latency (and with it the call count) is
/// sharded by worker, so workers never contend on one lock or cache line.
pub(super) struct HandlerCounters {
    errors: AtomicU64,
    panics: AtomicU64,
    latency: Box<[Mutex<Histogram<u64>>]>,
}

/// 1 ns to 1 hour at 2 significant digits, as the pools' timings.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 2).expect("constant bounds are valid")
}

pub(super) enum Outcome {
    Ok,
    Error,
    Panic,
}

impl HandlerCounters {
    pub(super) fn new(workers: usize) -> Self {
        Self {
            errors: AtomicU64::new(0),
            panics: AtomicU64::new(0),
            latency: (0..workers).map(|_| Mutex::new(histogram())).collect(),
        }
    }

    pub(super) fn record(&self, worker: usize, outcome: Outcome, took: Duration) {
        // Relaxed (below): statistics.
        match outcome {
            Outcome::Ok => {}
            Outcome::Error => {
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Panic => {
                self.panics.fetch_add(1, Ordering::Relaxed);
            }
        }
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.latency[worker]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .saturating_record(nanos.max(1));
    }

    pub(super) fn snapshot(&self) -> HandlerStats {
        let mut all = histogram();
        for h in &self.latency {
            // Same bounds, so adding cannot fail.
            let _ = all.add(&*h.lock().unwrap_or_else(PoisonError::into_inner));
        }
        let (mean, p99) = if all.is_empty() {
            (Duration::ZERO, Duration::ZERO)
        } else {
            (
                Duration::from_nanos(all.mean() as u64),
                Duration::from_nanos(all.value_at_quantile(0.99)),
            )
        };
        HandlerStats {
            calls: all.len(),
            // Relaxed: statistics.
            errors: self.errors.load(Ordering::Relaxed),
            panics: self.panics.load(Ordering::Relaxed),
            mean,
            p99,
        }
    }
}
