//! [`Vegas`]: TCP Vegas' queue estimate from the no-load round-trip time.

use heijunka_core::{ConfigError, validate};

use super::{LimitAlgorithm, Sample, check_bounds, log10_root};

/// Delay-based limit after TCP Vegas: estimates the queue a request met as
/// `queue = limit * (1 - rtt_noload / rtt)`, where `rtt_noload` is the lowest
/// round-trip time seen (re-probed now and then), and
///
/// - grows by `beta` when `queue <= threshold` (no queueing),
/// - grows by `log10(limit)` when `queue < alpha`,
/// - shrinks by `log10(limit)` when `queue > beta` or the request was dropped,
/// - stays put in between, and when less than half the limit was in use.
///
/// The new value is blended as `(1 - smoothing) * old + smoothing * new`.
///
/// Defaults, from Netflix `concurrency-limits` (`VegasLimit`): initial limit 20,
/// max 1000, smoothing 1.0, `alpha = 3 * log10(limit)`, `beta = 6 * log10(limit)`,
/// `threshold = log10(limit)` (each `log10` is `max(1, floor(log10(limit)))`), and
/// a new `rtt_noload` probe every `probe_multiplier * limit` samples (30, with
/// jitter in [0.5, 1); the jitter here comes from a seeded generator, so runs
/// repeat). Min limit 1.
///
/// ```
/// # if heijunka_core::sync::IS_LOOM { return Ok(()); } // loom types work only inside a model
/// use heijunka_backpressure::{AdaptiveLimit, Vegas};
///
/// let limit = AdaptiveLimit::builder(Vegas::builder().initial_limit(10).build()?).build()?;
/// assert_eq!(limit.limit(), 10);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct Vegas {
    estimate: f64,
    min: f64,
    max: f64,
    smoothing: f64,
    rtt_noload: u64,
    probe_multiplier: f64,
    probe_count: u64,
    probe_jitter: f64,
    rng: u64,
}

/// Builds a [`Vegas`]; see [`Vegas::builder`].
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until `build()`"]
pub struct VegasBuilder {
    initial: usize,
    min: usize,
    max: usize,
    smoothing: f64,
    probe_multiplier: u32,
    seed: u64,
}

impl Vegas {
    /// A builder with the defaults above.
    pub fn builder() -> VegasBuilder {
        VegasBuilder {
            initial: 20,
            min: 1,
            max: 1000,
            smoothing: 1.0,
            probe_multiplier: 30,
            seed: 0x9E37_79B9_7F4A_7C15,
        }
    }

    fn next_jitter(&mut self) -> f64 {
        // xorshift64: enough for jitter, and repeatable.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        0.5 + (self.rng >> 11) as f64 / (1_u64 << 53) as f64 * 0.5
    }

    fn publish(&self) -> usize {
        self.estimate as usize
    }
}

impl VegasBuilder {
    /// The limit before any sample. Default 20.
    pub fn initial_limit(mut self, n: usize) -> Self {
        self.initial = n;
        self
    }

    /// The limit never goes below this. Default 1.
    pub fn min_limit(mut self, n: usize) -> Self {
        self.min = n;
        self
    }

    /// The limit never goes above this. Default 1000.
    pub fn max_limit(mut self, n: usize) -> Self {
        self.max = n;
        self
    }

    /// Weight in (0, 1] of each new estimate. Default 1.0 (no smoothing).
    pub fn smoothing(mut self, s: f64) -> Self {
        self.smoothing = s;
        self
    }

    /// Re-probe the no-load RTT every `m * limit` samples (with jitter). Default 30.
    pub fn probe_multiplier(mut self, m: u32) -> Self {
        self.probe_multiplier = m;
        self
    }

    /// Seed of the probe jitter. Any value; the default is fixed, so runs repeat.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the field: bounds as for every algorithm,
    /// `smoothing` outside (0, 1], `probe_multiplier` of 0.
    pub fn build(self) -> Result<Vegas, ConfigError> {
        check_bounds(self.initial, self.min, self.max)?;
        validate::ratio("smoothing", self.smoothing)?;
        validate::at_least("probe_multiplier", self.probe_multiplier, 1)?;
        let mut v = Vegas {
            estimate: self.initial as f64,
            min: self.min as f64,
            max: self.max as f64,
            smoothing: self.smoothing,
            rtt_noload: 0,
            probe_multiplier: f64::from(self.probe_multiplier),
            probe_count: 0,
            probe_jitter: 1.0,
            rng: self.seed | 1,
        };
        v.probe_jitter = v.next_jitter();
        Ok(v)
    }
}

impl LimitAlgorithm for Vegas {
    fn initial_limit(&self) -> usize {
        self.publish()
    }

    fn update(&mut self, sample: &Sample) -> usize {
        let rtt = u64::try_from(sample.rtt.as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        self.probe_count += 1;
        if self.probe_jitter * self.probe_multiplier * self.estimate <= self.probe_count as f64 {
            self.probe_jitter = self.next_jitter();
            self.probe_count = 0;
            self.rtt_noload = rtt;
            return self.publish();
        }
        if self.rtt_noload == 0 || rtt < self.rtt_noload {
            self.rtt_noload = rtt;
            return self.publish();
        }
        let limit = self.estimate;
        let queue = (limit * (1.0 - self.rtt_noload as f64 / rtt as f64)).ceil();
        let log = log10_root(limit);
        let proposed = if sample.dropped {
            limit - log
        } else if (sample.inflight as f64) * 2.0 < limit {
            return self.publish();
        } else {
            let (alpha, beta, threshold) = (3.0 * log, 6.0 * log, log);
            if queue <= threshold {
                limit + beta
            } else if queue < alpha {
                limit + log
            } else if queue > beta {
                limit - log
            } else {
                return self.publish();
            }
        };
        let proposed = proposed.clamp(self.min, self.max);
        self.estimate = (1.0 - self.smoothing) * limit + self.smoothing * proposed;
        self.publish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use heijunka_core::Instant;
    use std::time::Duration;

    fn sample(inflight: usize, rtt_ms: u64, dropped: bool) -> Sample {
        Sample {
            start: Instant::ZERO,
            end: Instant::ZERO,
            rtt: Duration::from_millis(rtt_ms),
            inflight,
            dropped,
        }
    }

    #[test]
    fn grows_without_queueing_and_shrinks_with_it() {
        let mut v = Vegas::builder().initial_limit(20).build().unwrap();
        assert_eq!(v.update(&sample(20, 10, false)), 20); // first sample sets rtt_noload
        assert_eq!(v.update(&sample(20, 10, false)), 26); // no queue: + beta (6)
        // rtt doubled: queue = 26 * 0.5 = 13 > beta (6): - log10 (1)
        assert_eq!(v.update(&sample(26, 20, false)), 25);
        // app-limited: unchanged
        assert_eq!(v.update(&sample(2, 10, false)), 25);
        assert_eq!(v.update(&sample(2, 10, true)), 24);
    }

    #[test]
    fn bad_config_names_the_field() {
        let f = |b: VegasBuilder| b.build().unwrap_err().field().to_owned();
        assert_eq!(f(Vegas::builder().smoothing(-0.2)), "smoothing");
        assert_eq!(f(Vegas::builder().smoothing(1.5)), "smoothing");
        assert_eq!(f(Vegas::builder().min_limit(50).max_limit(10)), "min_limit");
        assert_eq!(f(Vegas::builder().probe_multiplier(0)), "probe_multiplier");
    }
}
