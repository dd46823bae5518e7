//! A small sliding latency histogram: the hedge's observed p90/p95.
//!
//! Not `hdrhistogram` (a workspace dependency): its `record` takes `&mut self`,
//! so every call completing through a shared `Hedge` would take a lock to
//! record. Here a record is one relaxed `fetch_add` on an atomic bucket
//! (log-linear, within 12.5 %, which is all a hedge delay needs), and only the
//! rotation to a new period and the quantile read walk the buckets.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// Sub-buckets per power of two: values are kept to within 1/8 (12.5 %).
const SUB: u32 = 8;
/// Values below this many microseconds have a bucket each.
const LINEAR: u64 = 16;
/// Buckets: 16 linear, then 8 per power of two from 2^4 to 2^40 µs (12 days).
const BUCKETS: usize = LINEAR as usize + 37 * SUB as usize;

/// The bucket of a latency in microseconds.
fn bucket(us: u64) -> usize {
    if us < LINEAR {
        return us as usize;
    }
    let exp = 63 - us.leading_zeros(); // >= 4
    let sub = ((us >> (exp - 3)) & u64::from(SUB - 1)) as usize;
    (LINEAR as usize + (exp as usize - 4) * SUB as usize + sub).min(BUCKETS - 1)
}

/// The largest latency in microseconds a bucket holds.
fn upper(bucket: usize) -> u64 {
    if bucket < LINEAR as usize {
        return bucket as u64;
    }
    let i = bucket - LINEAR as usize;
    let exp = (i / SUB as usize) as u32 + 4;
    let sub = (i % SUB as usize) as u64;
    let step = 1u64 << (exp - 3);
    (1u64 << exp) + (sub + 1) * step - 1
}

/// Two periods of latency counts: the current period and the one before, so a
/// quantile always covers at least one full period of samples.
pub(crate) struct LatencyWindow {
    counts: [Box<[AtomicU64]>; 2],
    origin: Instant,
    period: Duration,
    /// The period number (time since `origin` / `period`) of the current counts.
    current: AtomicU64,
    rotate: Mutex<()>,
}

impl LatencyWindow {
    pub(crate) fn new(period: Duration) -> Self {
        let make = || (0..BUCKETS).map(|_| AtomicU64::new(0)).collect();
        Self {
            counts: [make(), make()],
            origin: Instant::now(),
            period,
            current: AtomicU64::new(0),
            rotate: Mutex::new(()),
        }
    }

    fn period_of(&self, now: Instant) -> u64 {
        let nanos = now.saturating_duration_since(self.origin).as_nanos();
        (nanos / self.period.as_nanos().max(1)) as u64
    }

    /// Moves to the period of `now`, clearing counts older than the previous
    /// period. Returns the current period.
    fn advance(&self, now: Instant) -> u64 {
        let p = self.period_of(now);
        // Acquire: pairs with the Release below (cleared counts before the new
        // period number).
        let cur = self.current.load(Ordering::Acquire);
        if p <= cur {
            return cur;
        }
        let _g = self.rotate.lock().unwrap_or_else(PoisonError::into_inner);
        let cur = self.current.load(Ordering::Relaxed);
        if p > cur {
            // Moving one period on clears the older set; two or more clear both.
            let stale: &[u64] = if p == cur + 1 { &[p] } else { &[p, p + 1] };
            for &q in stale {
                for c in self.counts[(q % 2) as usize].iter() {
                    c.store(0, Ordering::Relaxed);
                }
            }
            self.current.store(p, Ordering::Release);
        }
        p.max(cur)
    }

    /// Records one latency.
    pub(crate) fn record(&self, latency: Duration, now: Instant) {
        let p = self.advance(now);
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.counts[(p % 2) as usize][bucket(us)].fetch_add(1, Ordering::Relaxed);
    }

    /// The `q` quantile (0..=1) of the last one to two periods, rounded up to
    /// its bucket's upper bound; `None` with fewer than `min_samples`.
    pub(crate) fn quantile(&self, q: f64, min_samples: u64, now: Instant) -> Option<Duration> {
        self.advance(now);
        let counts: Vec<u64> = (0..BUCKETS)
            .map(|b| {
                self.counts[0][b].load(Ordering::Relaxed)
                    + self.counts[1][b].load(Ordering::Relaxed)
            })
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 || total < min_samples {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (b, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(Duration::from_micros(upper(b)));
            }
        }
        None
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for us in (0..100_000u64).chain([1 << 30, (1 << 40) - 1]) {
            let b = bucket(us);
            assert!(b >= last);
            last = b;
            assert!(upper(b) >= us, "{us} in {b} up to {}", upper(b));
            assert!(upper(b) as f64 <= us as f64 * 1.125 + 1.0, "{us}");
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }

    #[tokio::test(start_paused = true)]
    async fn quantiles_follow_the_recent_periods() {
        let w = LatencyWindow::new(Duration::from_secs(10));
        let now = Instant::now();
        assert_eq!(w.quantile(0.95, 1, now), None);
        for i in 0..100u64 {
            w.record(Duration::from_millis(if i < 95 { 10 } else { 100 }), now);
        }
        let p95 = w.quantile(0.95, 20, now).unwrap();
        assert!(
            p95 >= Duration::from_millis(10) && p95 < Duration::from_millis(12),
            "{p95:?}"
        );
        let p99 = w.quantile(0.99, 20, now).unwrap();
        assert!(p99 >= Duration::from_millis(100), "{p99:?}");
        assert_eq!(w.quantile(0.5, 101, now), None, "too few samples");
        // One period on, the old samples still count; two periods on, gone.
        let later = now + Duration::from_secs(10);
        assert!(w.quantile(0.5, 1, later).is_some());
        let much_later = now + Duration::from_secs(25);
        assert_eq!(w.quantile(0.5, 1, much_later), None);
    }
}
