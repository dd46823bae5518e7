//! Sliding windows of call outcomes and the rules that judge them.
//!
//! These are plain data structures: the breaker keeps them behind its lock and feeds
//! them outcomes in order (folding in the successes counted by the per-thread shards
//! first, see `shards.rs`).

use std::time::Duration;

use heijunka_core::Instant;

use crate::TransitionReason;
use crate::config::{BreakerConfig, FailureCount, SlowCalls};

/// The outcome of one recorded call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub(crate) failed: bool,
    pub(crate) slow: bool,
}

impl Outcome {
    pub(crate) const SUCCESS: Outcome = Outcome {
        failed: false,
        slow: false,
    };

    fn code(self) -> u8 {
        u8::from(self.failed) | (u8::from(self.slow) << 1)
    }

    fn from_code(code: u8) -> Outcome {
        Outcome {
            failed: code & 1 != 0,
            slow: code & 2 != 0,
        }
    }
}

/// Totals over a window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) calls: u64,
    pub(crate) failed: u64,
    pub(crate) slow: u64,
    pub(crate) slow_failed: u64,
}

impl Counts {
    fn add(&mut self, o: Outcome, n: u64) {
        self.calls += n;
        if o.failed {
            self.failed += n;
        }
        if o.slow {
            self.slow += n;
            if o.failed {
                self.slow_failed += n;
            }
        }
    }

    fn remove(&mut self, o: Outcome) {
        self.calls -= 1;
        if o.failed {
            self.failed -= 1;
        }
        if o.slow {
            self.slow -= 1;
            if o.failed {
                self.slow_failed -= 1;
            }
        }
    }

    fn remove_counts(&mut self, other: &Counts) {
        self.calls -= other.calls;
        self.failed -= other.failed;
        self.slow -= other.slow;
        self.slow_failed -= other.slow_failed;
    }

    pub(crate) fn failure_rate(&self) -> f64 {
        ratio(self.failed, self.calls)
    }

    pub(crate) fn slow_call_rate(&self) -> f64 {
        ratio(self.slow, self.calls)
    }
}

/// `part / whole` as resilience4j computes a rate (zero for an empty window).
pub(crate) fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// The last `size` outcomes, in a ring (resilience4j's `FixedSizeSlidingWindowMetrics`).
#[derive(Debug)]
pub(crate) struct CountWindow {
    ring: Box<[u8]>,
    /// Where the next outcome goes; once full, also the oldest outcome.
    head: usize,
    counts: Counts,
}

impl CountWindow {
    pub(crate) fn new(size: u32) -> Self {
        Self {
            ring: vec![0; size as usize].into_boxed_slice(),
            head: 0,
            counts: Counts::default(),
        }
    }

    pub(crate) fn size(&self) -> u64 {
        self.ring.len() as u64
    }

    pub(crate) fn counts(&self) -> Counts {
        self.counts
    }

    pub(crate) fn reset(&mut self) {
        self.ring.fill(0);
        self.head = 0;
        self.counts = Counts::default();
    }

    pub(crate) fn push(&mut self, o: Outcome) {
        if self.counts.calls == self.size() {
            self.counts.remove(Outcome::from_code(self.ring[self.head]));
        }
        self.ring[self.head] = o.code();
        self.counts.add(o, 1);
        self.head = (self.head + 1) % self.ring.len();
    }

    /// Appends `n` plain successes.
    pub(crate) fn push_successes(&mut self, n: u64) {
        if n >= self.size() {
            self.ring.fill(Outcome::SUCCESS.code());
            self.head = 0;
            self.counts = Counts {
                calls: self.size(),
                ..Counts::default()
            };
        } else {
            for _ in 0..n {
                self.push(Outcome::SUCCESS);
            }
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    epoch: u64,
    counts: Counts,
}

/// The outcomes of the last `size` seconds, in one-second buckets (resilience4j's
/// `SlidingTimeWindowMetrics`): the window at second `e` holds seconds
/// `e - size + 1 ..= e`.
#[derive(Debug)]
pub(crate) struct TimeWindow {
    buckets: Box<[Bucket]>,
    /// The newest second the window has moved to.
    latest: u64,
    counts: Counts,
}

/// The one-second bucket an instant falls in.
#[inline]
pub(crate) fn epoch_of(now: Instant) -> u64 {
    now.as_nanos() / 1_000_000_000
}

impl TimeWindow {
    pub(crate) fn new(seconds: u32) -> Self {
        Self {
            buckets: vec![Bucket::default(); seconds as usize].into_boxed_slice(),
            latest: 0,
            counts: Counts::default(),
        }
    }

    fn size(&self) -> u64 {
        self.buckets.len() as u64
    }

    pub(crate) fn counts(&self) -> Counts {
        self.counts
    }

    pub(crate) fn reset(&mut self) {
        self.buckets.fill(Bucket::default());
        self.latest = 0;
        self.counts = Counts::default();
    }

    /// Moves the window to second `epoch`, dropping the seconds that leave it.
    pub(crate) fn advance(&mut self, epoch: u64) {
        if epoch <= self.latest {
            return;
        }
        let first = if epoch - self.latest >= self.size() {
            epoch + 1 - self.size()
        } else {
            self.latest + 1
        };
        for e in first..=epoch {
            let bucket = &mut self.buckets[(e % self.size()) as usize];
            self.counts.remove_counts(&bucket.counts);
            *bucket = Bucket {
                epoch: e,
                counts: Counts::default(),
            };
        }
        self.latest = epoch;
    }

    /// Adds `n` outcomes `o` that happened in second `epoch` (moving the window
    /// forward first if `epoch` is newer; dropping them if already outside).
    pub(crate) fn add(&mut self, epoch: u64, o: Outcome, n: u64) {
        self.advance(epoch);
        if epoch + self.size() <= self.latest {
            return;
        }
        let bucket = &mut self.buckets[(epoch % self.size()) as usize];
        if bucket.epoch != epoch {
            self.counts.remove_counts(&bucket.counts);
            *bucket = Bucket {
                epoch,
                counts: Counts::default(),
            };
        }
        bucket.counts.add(o, n);
        self.counts.add(o, n);
    }
}

/// The closed state's window, as configured.
#[derive(Debug)]
pub(crate) enum Window {
    Count(CountWindow),
    Time(TimeWindow),
}

impl Window {
    pub(crate) fn counts(&self) -> Counts {
        match self {
            Self::Count(w) => w.counts(),
            Self::Time(w) => w.counts(),
        }
    }

    pub(crate) fn reset(&mut self) {
        match self {
            Self::Count(w) => w.reset(),
            Self::Time(w) => w.reset(),
        }
    }

    /// Moves a time window to the second of `now` (read only by a time window),
    /// dropping the seconds that leave it; a count window does not move.
    pub(crate) fn slide(&mut self, now: impl FnOnce() -> Instant) {
        if let Self::Time(w) = self {
            w.advance(epoch_of(now()));
        }
    }

    /// Records one outcome; `now` is read only by a time window.
    pub(crate) fn push(&mut self, o: Outcome, now: impl FnOnce() -> Instant) {
        match self {
            Self::Count(w) => w.push(o),
            Self::Time(w) => w.add(epoch_of(now()), o, 1),
        }
    }

    /// Whether this window is full of plain successes, so that one more success
    /// changes nothing.
    pub(crate) fn is_saturated_with_successes(&self) -> bool {
        match self {
            Self::Count(w) => {
                let c = w.counts();
                c.calls == w.size() && c.failed == 0 && c.slow == 0
            }
            Self::Time(_) => false,
        }
    }
}

/// The instants of the last `count` failures, for the failure-count threshold.
#[derive(Debug)]
pub(crate) struct FailureTimes {
    ring: Box<[Instant]>,
    head: usize,
    len: usize,
    window: Duration,
}

impl FailureTimes {
    pub(crate) fn new(rule: FailureCount) -> Self {
        Self {
            ring: vec![Instant::ZERO; rule.count as usize].into_boxed_slice(),
            head: 0,
            len: 0,
            window: rule.window,
        }
    }

    pub(crate) fn reset(&mut self) {
        self.head = 0;
        self.len = 0;
    }

    /// Records a failure at `now`; true when the last `count` failures (this one
    /// included) fall within the window.
    pub(crate) fn push(&mut self, now: Instant) -> bool {
        self.ring[self.head] = now;
        self.head = (self.head + 1) % self.ring.len();
        self.len = (self.len + 1).min(self.ring.len());
        // Once full, `head` is the oldest of the last `count` failures.
        self.len == self.ring.len() && now.duration_since(self.ring[self.head]) < self.window
    }
}

/// The thresholds a window is judged against.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rules {
    pub(crate) failure_rate: f64,
    pub(crate) slow: Option<SlowCalls>,
    /// Calls the window must hold before its rates are judged.
    pub(crate) minimum_calls: u64,
}

impl Rules {
    pub(crate) fn closed(config: &BreakerConfig) -> Self {
        Self {
            failure_rate: config.failure_rate_threshold,
            slow: config.slow_calls,
            minimum_calls: config.effective_minimum_calls(),
        }
    }

    pub(crate) fn half_open(config: &BreakerConfig) -> Self {
        Self {
            failure_rate: config.failure_rate_threshold,
            slow: config.slow_calls,
            // resilience4j's `CircuitBreakerMetrics.forHalfOpen`: a count window of
            // the permitted probes, whose minimum is capped at its size.
            minimum_calls: u64::from(config.minimum_calls.min(config.permitted_in_half_open)),
        }
    }

    /// The rate threshold `counts` reach, if any (resilience4j's
    /// `checkIfThresholdsExceeded`: rates are judged from the minimum number of
    /// calls on, and a rate equal to its threshold trips).
    pub(crate) fn tripped(&self, counts: &Counts) -> Option<TransitionReason> {
        if counts.calls < self.minimum_calls {
            return None;
        }
        let rate = counts.failure_rate();
        if rate >= self.failure_rate {
            return Some(TransitionReason::FailureRate {
                rate,
                threshold: self.failure_rate,
            });
        }
        if let Some(slow) = self.slow {
            let rate = counts.slow_call_rate();
            if rate >= slow.rate_threshold {
                return Some(TransitionReason::SlowCallRate {
                    rate,
                    threshold: slow.rate_threshold,
                });
            }
        }
        None
    }

    /// Whether no sequence of successes, however long, can make `counts` trip.
    ///
    /// Successes never add failures or slow calls, and a window is judged only
    /// with at least `minimum_calls` calls, so any judged rate is at most
    /// `failed / minimum_calls` (and `slow / minimum_calls`): below the threshold
    /// there, below it for good, until the next failure or slow call.
    pub(crate) fn successes_are_safe(&self, counts: &Counts) -> bool {
        ratio(counts.failed, self.minimum_calls) < self.failure_rate
            && self
                .slow
                .is_none_or(|s| ratio(counts.slow, self.minimum_calls) < s.rate_threshold)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: Outcome = Outcome {
        failed: true,
        slow: false,
    };
    const SLOW_F: Outcome = Outcome {
        failed: true,
        slow: true,
    };

    #[test]
    fn count_window_keeps_the_last_n_outcomes() {
        let mut w = CountWindow::new(4);
        for o in [F, Outcome::SUCCESS, F, SLOW_F] {
            w.push(o);
        }
        assert_eq!(
            w.counts(),
            Counts {
                calls: 4,
                failed: 3,
                slow: 1,
                slow_failed: 1
            }
        );
        w.push(Outcome::SUCCESS); // evicts the first F
        assert_eq!(w.counts().failed, 2);
        w.push_successes(2); // evicts S and F
        assert_eq!(w.counts().failed, 1);
        assert_eq!(w.counts().slow, 1);
        w.push_successes(10);
        assert_eq!(
            w.counts(),
            Counts {
                calls: 4,
                ..Counts::default()
            }
        );
        w.push(F);
        assert_eq!(w.counts().failed, 1);
        assert_eq!(w.counts().calls, 4);
    }

    #[test]
    fn time_window_drops_seconds_that_leave_it() {
        let mut w = TimeWindow::new(3);
        w.add(10, F, 2);
        w.add(11, Outcome::SUCCESS, 5);
        w.add(12, F, 1);
        assert_eq!(w.counts().calls, 8);
        w.advance(13); // second 10 leaves
        assert_eq!(w.counts().calls, 6);
        assert_eq!(w.counts().failed, 1);
        w.add(12, F, 1); // late, still inside
        assert_eq!(w.counts().failed, 2);
        w.add(10, F, 1); // late, outside: dropped
        assert_eq!(w.counts().calls, 7);
        w.advance(100);
        assert_eq!(w.counts(), Counts::default());
    }

    #[test]
    fn failure_times_trip_when_count_fall_within_the_window() {
        let mut t = FailureTimes::new(FailureCount {
            count: 3,
            window: Duration::from_secs(10),
        });
        let at = |s: u64| Instant::from_nanos(s * 1_000_000_000);
        assert!(!t.push(at(0)));
        assert!(!t.push(at(5)));
        assert!(!t.push(at(10)), "0..=10 spans the whole window");
        assert!(t.push(at(11)), "5, 10, 11 are within 10 s");
    }

    #[test]
    fn rates_trip_at_the_threshold_from_the_minimum_on() {
        let rules = Rules {
            failure_rate: 0.5,
            slow: None,
            minimum_calls: 4,
        };
        let c = |calls, failed| Counts {
            calls,
            failed,
            ..Counts::default()
        };
        assert_eq!(rules.tripped(&c(3, 3)), None);
        assert!(rules.tripped(&c(4, 2)).is_some());
        assert_eq!(rules.tripped(&c(5, 2)), None);
        assert!(rules.successes_are_safe(&c(3, 1)));
        assert!(!rules.successes_are_safe(&c(3, 2)), "2 / 4 would trip");
    }
}
