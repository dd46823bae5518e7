//! The monitor: samples, levels, subscriptions and callbacks.

use std::fmt;
use std::sync::PoisonError;
use std::time::Duration;

use heijunka_core::{Clock, Instant, PressureLevel, Rejection};
use tokio::sync::watch;

use crate::callbacks::{CallbackId, Callbacks, LevelChange};
use crate::cell::SeqCell;
use crate::config::MemoryMonitorBuilder;
use crate::error::{SampleError, SpawnError};
use crate::level::Thresholds;
use crate::metrics::MonitorMetrics;
use crate::probe::MemoryProbe;
use crate::sample::{LimitSource, MemorySample, MemoryStatus, ratio, resolve};
use crate::stats::MemoryStats;
use crate::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use crate::sync::{Arc, CachePadded, Mutex, MutexGuard};

/// Words of the published status: used, limit, rss, system total, system available,
/// sample number, sampled-at nanos, level | source << 8.
const WORDS: usize = 8;

/// Watches the process's memory against the limit that applies and turns it into a
/// [`PressureLevel`]. Cheap to clone (clones share one monitor).
///
/// Readings are taken by [`sample_now`](Self::sample_now), or every
/// [interval](MemoryMonitorBuilder::interval) by the background sampler from
/// [`spawn_sampler`](Self::spawn_sampler). [`pressure`](Self::pressure) is one
/// atomic load; [`status`](Self::status) reads the latest figures without a lock.
/// Level changes reach [`subscribe`](Self::subscribe)rs, the callbacks registered
/// with [`on_level`](Self::on_level) / [`on_change`](Self::on_change), and `tracing`.
///
/// ```
/// # if heijunka_core::sync::IS_LOOM { return Ok(()); } // loom types work only inside a model
/// use heijunka_core::PressureLevel;
/// use heijunka_memory::{ManualProbe, MemoryMonitor};
///
/// let probe = ManualProbe::new(64 << 30);
/// let monitor = MemoryMonitor::builder()
///     .limit(1_000)
///     .probe(probe.clone())
///     .build()?;
/// probe.set_rss(850);
/// monitor.sample_now()?;
/// assert_eq!(monitor.pressure(), PressureLevel::Elevated);
/// assert_eq!(monitor.status().unwrap().used, 850);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct MemoryMonitor {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    level: CachePadded<AtomicU8>,
    cell: SeqCell<WORDS>,
    sampling: Mutex<Sampling>,
    thresholds: Thresholds,
    pub(crate) interval: Duration,
    limit: Option<u64>,
    clock: Clock,
    watch: watch::Sender<PressureLevel>,
    callbacks: Callbacks,
    /// When the latest successful sample was taken (the monitor's creation before
    /// the first), in the clock's nanoseconds: what a gate's staleness bound reads.
    last_ok: CachePadded<AtomicU64>,
    /// The latest sample's `some` avg10 stall percentage as `f64` bits; NaN when
    /// the sample had no stall information.
    stall: AtomicU64,
    sample_errors: AtomicU64,
    level_changes: AtomicU64,
    to_elevated: AtomicU64,
    to_critical: AtomicU64,
    metrics: MonitorMetrics,
}

struct Sampling {
    probe: Box<dyn MemoryProbe>,
    last: Option<MemorySample>,
    samples: u64,
    failing: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The probe is the only foreign code run under this lock; after it panicked the
    // state is still consistent (it is written only after the probe returns).
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MemoryMonitor {
    /// A builder with the defaults (80 % / 90 %, 5 points of hysteresis, 1 s).
    pub fn builder() -> MemoryMonitorBuilder {
        MemoryMonitorBuilder::new()
    }

    pub(crate) fn from_parts(
        probe: Box<dyn MemoryProbe>,
        thresholds: Thresholds,
        interval: Duration,
        limit: Option<u64>,
        clock: Clock,
        metrics: MonitorMetrics,
    ) -> Self {
        let (watch, _) = watch::channel(PressureLevel::Normal);
        let created = clock.now().as_nanos();
        Self {
            inner: Arc::new(Inner {
                level: CachePadded::new(AtomicU8::new(PressureLevel::Normal.as_u8())),
                cell: SeqCell::new(),
                sampling: Mutex::new(Sampling {
                    probe,
                    last: None,
                    samples: 0,
                    failing: false,
                }),
                thresholds,
                interval,
                limit,
                clock,
                watch,
                callbacks: Callbacks::new(),
                last_ok: CachePadded::new(AtomicU64::new(created)),
                stall: AtomicU64::new(f64::NAN.to_bits()),
                sample_errors: AtomicU64::new(0),
                level_changes: AtomicU64::new(0),
                to_elevated: AtomicU64::new(0),
                to_critical: AtomicU64::new(0),
                metrics,
            }),
        }
    }

    /// The current pressure level: one atomic load.
    #[inline]
    pub fn pressure(&self) -> PressureLevel {
        // Acquire: pairs with the Release store in `sample_now`, so a caller that
        // sees a level and then reads `status()` sees that sample or a later one.
        let byte = self.inner.level.load(Ordering::Acquire);
        // Only `as_u8` values are stored, so the fallback is never taken.
        PressureLevel::from_u8(byte).unwrap_or(PressureLevel::Critical)
    }

    /// `Some(Rejection::MemoryPressure)` when pressure is at least `level`: a signal
    /// for a load shedder (see the crate docs).
    #[inline]
    pub fn rejection_at(&self, level: PressureLevel) -> Option<Rejection> {
        let now = self.pressure();
        (now >= level).then_some(Rejection::MemoryPressure { level: now })
    }

    /// The figures of the latest sample, read without a lock; `None` before the
    /// first successful sample.
    pub fn status(&self) -> Option<MemoryStatus> {
        decode(self.inner.cell.read())
    }

    /// How old the latest successful sample is, on the monitor's clock (since the
    /// monitor was built, before the first one). While sampling fails the level is
    /// kept and this grows: a [`MemoryGate`](crate::MemoryGate) stops trusting a
    /// level older than its [`stale_after`](crate::MemoryGateBuilder::stale_after).
    pub fn sample_age(&self) -> Duration {
        // Relaxed: see the store in `sample_now`.
        let at = self.inner.last_ok.load(Ordering::Relaxed);
        self.inner.clock.elapsed(Instant::from_nanos(at))
    }

    /// The latest sample's memory stall: the `some` avg10 of its pressure stall
    /// information (the percentage of the last 10 s in which some task waited for
    /// memory), `None` where the kernel gives none. One atomic load.
    #[inline]
    pub fn stall_percent(&self) -> Option<f64> {
        // Relaxed: pairs with the Relaxed store in `sample_now`; a figure alone.
        let p = f64::from_bits(self.inner.stall.load(Ordering::Relaxed));
        (!p.is_nan()).then_some(p)
    }

    /// Whether the latest successful sample is older than `bound`.
    #[inline]
    pub fn is_stale(&self, bound: Duration) -> bool {
        self.sample_age() > bound
    }

    /// The latest sample in full (with the cgroup path), cloned under the sampling
    /// lock; `None` before the first successful sample.
    pub fn last_sample(&self) -> Option<MemorySample> {
        lock(&self.inner.sampling).last.clone()
    }

    /// The thresholds in force.
    pub fn thresholds(&self) -> Thresholds {
        self.inner.thresholds
    }

    /// Takes a sample now, updates the level and, when it changed, tells
    /// subscribers, callbacks and `tracing`. Samples are serialised: a concurrent
    /// call waits for the one in progress.
    pub fn sample_now(&self) -> Result<MemorySample, SampleError> {
        let inner = &*self.inner;
        let mut sampling = lock(&inner.sampling);
        let figures = sampling.probe.read().and_then(|r| {
            resolve(&r, inner.limit)
                .map(|f| (r, f))
                .ok_or(SampleError::NoLimit)
        });
        let (reading, (used, limit, source)) = match figures {
            Ok(figures) => figures,
            Err(e) => {
                // Relaxed: a statistic.
                inner.sample_errors.fetch_add(1, Ordering::Relaxed);
                inner.metrics.sample_failed();
                if !sampling.failing {
                    sampling.failing = true;
                    tracing::warn!(error = %e, level = %self.pressure(),
                        "memory sampling failed; keeping the last pressure level");
                }
                return Err(e);
            }
        };
        if sampling.failing {
            sampling.failing = false;
            tracing::info!("memory sampling recovered");
        }
        // Relaxed: this thread holds the sampling lock, the level's only writer.
        let from = PressureLevel::from_u8(inner.level.load(Ordering::Relaxed))
            .unwrap_or(PressureLevel::Normal);
        let ratio = ratio(used, limit);
        let to = inner.thresholds.next(from, ratio);
        sampling.samples += 1;
        let status = MemoryStatus {
            level: to,
            used,
            limit,
            limit_source: source,
            rss: reading.rss,
            system_total: reading.system_total,
            system_available: reading.system_available,
            sample: sampling.samples,
            sampled_at: inner.clock.now(),
        };
        inner.cell.write(encode(&status));
        inner.metrics.sampled(to, used, limit, ratio);
        // Relaxed: the age stands alone; a gate that reads an older stamp judges a
        // reading older than it is, which only errs by the race's width.
        inner
            .last_ok
            .store(status.sampled_at.as_nanos(), Ordering::Relaxed);
        if to != from {
            // Release: pairs with the Acquire load in `pressure`; the status above
            // is published first.
            inner.level.store(to.as_u8(), Ordering::Release);
            self.record_change(LevelChange { from, to, status });
        }
        let stall = reading.stall.map_or(f64::NAN, |s| s.some.avg10);
        // Relaxed: a figure standing alone, read by gates (see `stall_percent`).
        inner.stall.store(stall.to_bits(), Ordering::Relaxed);
        let sample = MemorySample {
            status,
            ratio,
            cgroup: reading.cgroup,
            stall: reading.stall,
        };
        sampling.last = Some(sample.clone());
        Ok(sample)
    }

    fn record_change(&self, change: LevelChange) {
        let inner = &*self.inner;
        // Relaxed: statistics.
        inner.level_changes.fetch_add(1, Ordering::Relaxed);
        match change.to {
            PressureLevel::Elevated => inner.to_elevated.fetch_add(1, Ordering::Relaxed),
            PressureLevel::Critical => inner.to_critical.fetch_add(1, Ordering::Relaxed),
            PressureLevel::Normal => 0,
        };
        inner.metrics.changed(change.to);
        let s = &change.status;
        let ratio = s.ratio();
        if change.to == PressureLevel::Critical {
            tracing::warn!(memory.from = %change.from, memory.to = %change.to, memory.used = s.used,
                memory.limit = s.limit, memory.ratio = ratio, memory.limit_source = ?s.limit_source,
                "memory pressure changed");
        } else {
            tracing::info!(memory.from = %change.from, memory.to = %change.to, memory.used = s.used,
                memory.limit = s.limit, memory.ratio = ratio, memory.limit_source = ?s.limit_source,
                "memory pressure changed");
        }
        inner.watch.send_replace(change.to);
        inner.callbacks.notify(change);
    }

    /// A receiver of level changes (tokio's `watch`): it holds the current level,
    /// `changed().await` waits for the next change, and `has_changed()` /
    /// `borrow_and_update()` work without a runtime. A slow receiver sees only the
    /// latest level; use callbacks to see every change.
    pub fn subscribe(&self) -> watch::Receiver<PressureLevel> {
        self.inner.watch.subscribe()
    }

    /// Runs `f` each time the level changes to `level` (for example: evict caches
    /// when it becomes `Elevated`).
    ///
    /// A change that skips a level (normal to critical in one sample) reaches the
    /// callbacks as one change per level crossed, in order, both ways (normal →
    /// elevated, then elevated → critical; each with the sample that moved the
    /// level), so the callback of a level crossed on the way still runs;
    /// [`subscribe`](Self::subscribe)rs, [`stats`](Self::stats) and `tracing` see
    /// the one change.
    ///
    /// Callbacks run in the order the changes happened, and for one change in the
    /// order they were registered, on a thread of their own (started by the first
    /// registration): never on the sampling path. A panic in one is caught, logged
    /// and counted ([`MemoryStats::callback_panics`]); the others still run. A
    /// callback that captures a clone of this monitor keeps it alive.
    pub fn on_level<F>(&self, level: PressureLevel, f: F) -> Result<CallbackId, SpawnError>
    where
        F: Fn(&LevelChange) + Send + Sync + 'static,
    {
        self.inner
            .callbacks
            .register(Some(level), Arc::new(Box::new(f)))
    }

    /// Runs `f` on every level change; see [`on_level`](Self::on_level).
    pub fn on_change<F>(&self, f: F) -> Result<CallbackId, SpawnError>
    where
        F: Fn(&LevelChange) + Send + Sync + 'static,
    {
        self.inner.callbacks.register(None, Arc::new(Box::new(f)))
    }

    /// Unregisters a callback; `false` if it was not registered.
    pub fn remove_callback(&self, id: CallbackId) -> bool {
        self.inner.callbacks.remove(id)
    }

    /// Waits up to `timeout` until every level change so far has run its callbacks;
    /// `false` on timeout. Blocks the calling thread (the callbacks run on their
    /// own thread).
    ///
    /// # Panics
    ///
    /// On a thread that drives a tokio runtime's tasks, with tokio's message, as
    /// heijunka's other blocking forms (see `heijunka_core::blocking`): it would
    /// stall the runtime for up to `timeout`. Call it from a plain thread or
    /// `spawn_blocking`.
    #[track_caller]
    pub fn flush_callbacks(&self, timeout: Duration) -> bool {
        heijunka_core::blocking::assert_can_block();
        self.inner.callbacks.flush(timeout)
    }

    /// Counters and the latest status, as a plain `Serialize` struct.
    pub fn stats(&self) -> MemoryStats {
        let inner = &*self.inner;
        let last = self.status();
        let samples = lock(&inner.sampling).samples;
        // Relaxed loads: statistics, each read on its own.
        MemoryStats {
            level: self.pressure(),
            samples,
            sample_errors: inner.sample_errors.load(Ordering::Relaxed),
            level_changes: inner.level_changes.load(Ordering::Relaxed),
            changes_to_elevated: inner.to_elevated.load(Ordering::Relaxed),
            changes_to_critical: inner.to_critical.load(Ordering::Relaxed),
            callbacks: inner.callbacks.registered(),
            callback_panics: inner.callbacks.panics(),
            callback_changes_dropped: inner.callbacks.dropped(),
            subscribers: inner.watch.receiver_count(),
            thresholds: inner.thresholds,
            interval: inner.interval,
            configured_limit: inner.limit,
            since_last_sample: last.map(|s| inner.clock.elapsed(s.sampled_at)),
            last,
        }
    }
}

fn encode(s: &MemoryStatus) -> [u64; WORDS] {
    [
        s.used,
        s.limit,
        s.rss,
        s.system_total,
        s.system_available,
        s.sample,
        s.sampled_at.as_nanos(),
        u64::from(s.level.as_u8()) | u64::from(s.limit_source.as_u8()) << 8,
    ]
}

fn decode(w: [u64; WORDS]) -> Option<MemoryStatus> {
    if w[5] == 0 {
        return None;
    }
    Some(MemoryStatus {
        used: w[0],
        limit: w[1],
        rss: w[2],
        system_total: w[3],
        system_available: w[4],
        sample: w[5],
        sampled_at: Instant::from_nanos(w[6]),
        level: PressureLevel::from_u8((w[7] & 0xff) as u8).unwrap_or(PressureLevel::Critical),
        limit_source: LimitSource::from_u8((w[7] >> 8) as u8),
    })
}

impl fmt::Debug for MemoryMonitor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryMonitor")
            .field("pressure", &self.pressure())
            .field("status", &self.status())
            .field("thresholds", &self.inner.thresholds)
            .finish_non_exhaustive()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn status_words_round_trip() {
        let status = MemoryStatus {
            level: PressureLevel::Elevated,
            used: 1,
            limit: 2,
            limit_source: LimitSource::CgroupV1,
            rss: 3,
            system_total: 4,
            system_available: 5,
            sample: 6,
            sampled_at: Instant::from_nanos(7),
        };
        assert_eq!(decode(encode(&status)), Some(status));
        assert_eq!(decode([0; WORDS]), None);
    }
}
