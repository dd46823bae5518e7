//! [`Gradient2`]: the ratio of a long-term to the current round-trip time.

use heijunka_core::{ConfigError, validate};

use super::{LimitAlgorithm, Sample, check_bounds};

/// Delay-based limit after Netflix's `Gradient2Limit`: compares the current RTT
/// (`short`) with an exponentially smoothed long-term RTT (`long`) and moves the
/// limit by their ratio:
///
/// ```text
/// gradient  = clamp(rtt_tolerance * long / short, 0.5, 1.0)
/// new_limit = limit * gradient + queue_size
/// limit     = limit * (1 - smoothing) + new_limit * smoothing   (then min..=max)
/// ```
///
/// When `long / short > 2` (load has just gone away) the long RTT is cut by
/// [`LONG_RTT_DECAY`] (5 %, Netflix's constant) so the limit recovers sooner; when
/// less than half the limit is in use the limit is left alone.
///
/// Defaults, from Netflix `concurrency-limits` (`Gradient2Limit`): initial limit
/// 20, min 20, max 200, smoothing 0.2, `rtt_tolerance` 1.5, long window 600
/// samples (an exponential average with factor `2 / (600 + 1)` after a 10-sample
/// warm-up mean, then decayed by 0.95 as above), queue size 4. Checked against
/// `Gradient2Limit.java` and `ExpAvgMeasurement.java` of Netflix's repository (the
/// release with `rttTolerance`).
///
/// The tolerance says how much latency growth is acceptable (Netflix: "a value of
/// 2.0 means that a 2x increase in latency is acceptable"): with 1.5 the limit
/// settles where requests take about 1.5× the long-term RTT; with 1.0 it settles
/// just above the point where latency starts to grow. Under sustained queueing the
/// long RTT itself drifts up towards the loaded RTT (that is what `long_window`
/// sets), so over minutes the limit creeps above the 1.5× point too. The long RTT is meant to move
/// slowly: feed it one averaged sample per time window with
/// [`Windowed`](crate::Windowed), as Netflix does with `WindowedLimit`, so 600
/// windows span minutes; fed every request, it follows the current RTT within a few
/// hundred requests and loses its anchor.
///
/// ```
/// # if heijunka_core::sync::IS_LOOM { return Ok(()); } // loom types work only inside a model
/// use heijunka_backpressure::{AdaptiveLimit, Gradient2, Windowed};
/// use std::time::Duration;
///
/// let algorithm = Windowed::builder(Gradient2::builder().build()?)
///     .window(Duration::from_secs(1))
///     .build()?;
/// let limit = AdaptiveLimit::builder(algorithm).build()?;
/// assert_eq!(limit.limit(), 20);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct Gradient2 {
    estimate: f64,
    min: f64,
    max: f64,
    smoothing: f64,
    tolerance: f64,
    queue_size: f64,
    long: ExpAvg,
}

/// Builds a [`Gradient2`]; see [`Gradient2::builder`].
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until `build()`"]
pub struct Gradient2Builder {
    initial: usize,
    min: usize,
    max: usize,
    smoothing: f64,
    tolerance: f64,
    long_window: u32,
    queue_size: usize,
}

impl Gradient2 {
    /// A builder with the defaults above.
    pub fn builder() -> Gradient2Builder {
        Gradient2Builder {
            initial: 20,
            min: 20,
            max: 200,
            smoothing: 0.2,
            tolerance: 1.5,
            long_window: 600,
            queue_size: 4,
        }
    }

    /// The long-term RTT in nanoseconds (0 before the first sample).
    pub fn long_rtt_nanos(&self) -> f64 {
        self.long.value
    }
}

impl Gradient2Builder {
    /// The limit before any sample. Default 20.
    pub fn initial_limit(mut self, n: usize) -> Self {
        self.initial = n;
        self
    }

    /// The limit never goes below this. Default 20.
    pub fn min_limit(mut self, n: usize) -> Self {
        self.min = n;
        self
    }

    /// The limit never goes above this. Default 200.
    pub fn max_limit(mut self, n: usize) -> Self {
        self.max = n;
        self
    }

    /// Weight in (0, 1] of each new estimate. Default 0.2.
    pub fn smoothing(mut self, s: f64) -> Self {
        self.smoothing = s;
        self
    }

    /// Acceptable latency growth, at least 1.0. Default 1.5.
    pub fn rtt_tolerance(mut self, t: f64) -> Self {
        self.tolerance = t;
        self
    }

    /// Samples in the long-term RTT's averaging window. Default 600.
    pub fn long_window(mut self, n: u32) -> Self {
        self.long_window = n;
        self
    }

    /// How far the limit may grow per step while latency stays low, at least 1
    /// (with 0 the limit could never grow). Default 4.
    pub fn queue_size(mut self, n: usize) -> Self {
        self.queue_size = n;
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the field: bounds as for every algorithm,
    /// `smoothing` outside (0, 1], `rtt_tolerance` below 1 or not finite,
    /// `long_window` of 0, `queue_size` of 0.
    pub fn build(self) -> Result<Gradient2, ConfigError> {
        check_bounds(self.initial, self.min, self.max)?;
        validate::ratio("smoothing", self.smoothing)?;
        validate::positive("rtt_tolerance", self.tolerance)?;
        validate::at_least("rtt_tolerance", self.tolerance, 1.0)?;
        validate::at_least("long_window", self.long_window, 1)?;
        validate::at_least("queue_size", self.queue_size, 1)?;
        Ok(Gradient2 {
            estimate: self.initial as f64,
            min: self.min as f64,
            max: self.max as f64,
            smoothing: self.smoothing,
            tolerance: self.tolerance,
            queue_size: self.queue_size as f64,
            long: ExpAvg::new(self.long_window, 10),
        })
    }
}

impl LimitAlgorithm for Gradient2 {
    fn initial_limit(&self) -> usize {
        self.estimate as usize
    }

    fn update(&mut self, sample: &Sample) -> usize {
        let short = (sample.rtt.as_nanos() as f64).max(1.0);
        let long = self.long.add(short);
        if long / short > 2.0 {
            self.long.value *= LONG_RTT_DECAY;
        }
        if (sample.inflight as f64) < self.estimate / 2.0 {
            return self.estimate as usize;
        }
        let gradient = (self.tolerance * long / short).clamp(0.5, 1.0);
        let new = self.estimate * gradient + self.queue_size;
        let new = self.estimate * (1.0 - self.smoothing) + new * self.smoothing;
        self.estimate = new.clamp(self.min, self.max);
        self.estimate as usize
    }
}

/// The factor that cuts the long-term RTT when it is over twice the current one
/// (the load has gone away): Netflix's `Gradient2Limit` multiplies it by 0.95.
pub const LONG_RTT_DECAY: f64 = 0.95;

/// An exponential moving average with a warm-up mean (Netflix's
/// `ExpAvgMeasurement`: during the warm-up the value is the plain mean of the
/// samples so far, recomputed from their sum, so a decay applied then is undone by
/// the next sample, as in Netflix's).
#[derive(Clone, Debug)]
struct ExpAvg {
    value: f64,
    sum: f64,
    factor: f64,
    warmup: u32,
    count: u32,
}

impl ExpAvg {
    fn new(window: u32, warmup: u32) -> Self {
        Self {
            value: 0.0,
            sum: 0.0,
            factor: 2.0 / (f64::from(window) + 1.0),
            warmup,
            count: 0,
        }
    }

    fn add(&mut self, sample: f64) -> f64 {
        if self.count < self.warmup {
            self.count += 1;
            self.sum += sample;
            self.value = self.sum / f64::from(self.count);
        } else {
            self.value = self.value * (1.0 - self.factor) + sample * self.factor;
        }
        self.value
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use heijunka_core::Instant;
    use std::time::Duration;

    fn sample(inflight: usize, rtt_ms: u64) -> Sample {
        Sample {
            start: Instant::ZERO,
            end: Instant::ZERO,
            rtt: Duration::from_millis(rtt_ms),
            inflight,
            dropped: false,
        }
    }

    #[test]
    fn grows_by_smoothed_queue_size_then_backs_off_on_latency() {
        let mut g = Gradient2::builder().build().unwrap();
        // Steady latency: + 0.2 * 4 per sample.
        for _ in 0..10 {
            g.update(&sample(100, 10));
        }
        assert_eq!(g.estimate.round() as usize, 28);
        // Latency four times the long RTT: gradient clamps to 0.5.
        let before = g.estimate;
        g.update(&sample(100, 40));
        let expected = before * 0.8 + (before * 0.5 + 4.0) * 0.2;
        assert!((g.estimate - expected).abs() < 1e-9);
        // App-limited: unchanged.
        let before = g.estimate;
        g.update(&sample(1, 10));
        assert_eq!(g.estimate, before);
    }

    #[test]
    fn bad_config_names_the_field() {
        let f = |b: Gradient2Builder| b.build().unwrap_err().field().to_owned();
        assert_eq!(f(Gradient2::builder().smoothing(-0.1)), "smoothing");
        assert_eq!(f(Gradient2::builder().rtt_tolerance(0.9)), "rtt_tolerance");
        assert_eq!(
            f(Gradient2::builder().rtt_tolerance(f64::NAN)),
            "rtt_tolerance"
        );
        assert_eq!(f(Gradient2::builder().long_window(0)), "long_window");
        assert_eq!(f(Gradient2::builder().queue_size(0)), "queue_size");
        assert_eq!(f(Gradient2::builder().min_limit(300)), "min_limit");
    }
}
