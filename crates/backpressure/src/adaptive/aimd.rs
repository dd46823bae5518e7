//! [`Aimd`]: additive increase, multiplicative decrease.

use std::time::Duration;

use heijunka_core::{ConfigError, validate};

use super::{LimitAlgorithm, Sample, check_bounds};

/// Loss-based limit: grows by one while requests succeed with the limit in use,
/// shrinks by [`backoff_ratio`](AimdBuilder::backoff_ratio) on a drop or a request
/// slower than [`timeout`](AimdBuilder::timeout).
///
/// As Netflix's `AIMDLimit`: a sample grows the limit only when at least half of it
/// was in use (`inflight * 2 >= limit`), so an idle service does not inflate it; a
/// drop sets `limit = max(min, min(limit - 1, limit * backoff_ratio))`.
///
/// Defaults, from Netflix `concurrency-limits` (`AIMDLimit`): backoff ratio 0.9
/// (allowed range [0.5, 1)), timeout 5 s. Initial limit 20, min 20 and max 200
/// here (Netflix's `AIMDLimit` has used an initial limit of 10 or 20 across
/// releases; 20 and 200 are its `Gradient2Limit` bounds).
///
/// Fed every sample, one sample grows the limit by one, so a busy service doubles
/// it each round trip. Wrap it in [`Windowed`](crate::Windowed) (as Netflix wraps
/// limits in `WindowedLimit`) to take one step per window instead: that is how the
/// simulation tests run it.
///
/// ```
/// # if heijunka_core::sync::IS_LOOM { return Ok(()); } // loom types work only inside a model
/// use heijunka_backpressure::{AdaptiveLimit, Aimd};
/// use std::time::Duration;
///
/// let aimd = Aimd::builder()
///     .initial_limit(10)
///     .min_limit(1)
///     .timeout(Duration::from_millis(500))
///     .build()?;
/// let limit = AdaptiveLimit::builder(aimd).build()?;
/// limit.try_acquire()?.success(); // 1 in flight of 10: not enough use to grow
/// assert_eq!(limit.limit(), 10);
/// limit.try_acquire()?.dropped();
/// assert_eq!(limit.limit(), 9);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct Aimd {
    limit: usize,
    min: usize,
    max: usize,
    backoff_ratio: f64,
    timeout: Duration,
}

/// Builds an [`Aimd`]; see [`Aimd::builder`].
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until `build()`"]
pub struct AimdBuilder {
    initial: usize,
    min: usize,
    max: usize,
    backoff_ratio: f64,
    timeout: Duration,
}

impl Aimd {
    /// A builder with the defaults above.
    pub fn builder() -> AimdBuilder {
        AimdBuilder {
            initial: 20,
            min: 20,
            max: 200,
            backoff_ratio: 0.9,
            timeout: Duration::from_secs(5),
        }
    }
}

impl AimdBuilder {
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

    /// The factor in [0.5, 1) applied on a drop. Default 0.9.
    pub fn backoff_ratio(mut self, r: f64) -> Self {
        self.backoff_ratio = r;
        self
    }

    /// A request slower than this counts as dropped. Default 5 s.
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the field: `min_limit` of 0 or above `max_limit`,
    /// `initial_limit` outside the bounds, `backoff_ratio` outside [0.5, 1), a
    /// zero `timeout`.
    pub fn build(self) -> Result<Aimd, ConfigError> {
        check_bounds(self.initial, self.min, self.max)?;
        if !(0.5..1.0).contains(&self.backoff_ratio) {
            return Err(ConfigError::new(
                "backoff_ratio",
                self.backoff_ratio,
                "must be in [0.5, 1)",
            ));
        }
        validate::non_zero_duration("timeout", self.timeout)?;
        Ok(Aimd {
            limit: self.initial,
            min: self.min,
            max: self.max,
            backoff_ratio: self.backoff_ratio,
            timeout: self.timeout,
        })
    }
}

impl LimitAlgorithm for Aimd {
    fn initial_limit(&self) -> usize {
        self.limit
    }

    fn update(&mut self, sample: &Sample) -> usize {
        if sample.dropped || sample.rtt > self.timeout {
            let backed = (self.limit as f64 * self.backoff_ratio) as usize;
            self.limit = backed.min(self.limit - 1).max(self.min);
        } else if sample.inflight * 2 >= self.limit {
            self.limit = (self.limit + 1).min(self.max);
        }
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use heijunka_core::Instant;

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
    fn grows_when_used_and_backs_off_on_drop_or_timeout() {
        let mut a = Aimd::builder()
            .initial_limit(20)
            .min_limit(5)
            .timeout(Duration::from_millis(100))
            .build()
            .unwrap();
        assert_eq!(a.update(&sample(5, 10, false)), 20); // app-limited
        assert_eq!(a.update(&sample(10, 10, false)), 21);
        assert_eq!(a.update(&sample(10, 10, true)), 18);
        assert_eq!(a.update(&sample(10, 101, false)), 16);
        for _ in 0..100 {
            a.update(&sample(10, 10, true));
        }
        assert_eq!(a.update(&sample(1, 10, true)), 5);
    }

    #[test]
    fn bad_config_names_the_field() {
        let f = |b: AimdBuilder| b.build().unwrap_err().field().to_owned();
        assert_eq!(f(Aimd::builder().min_limit(300)), "min_limit");
        assert_eq!(f(Aimd::builder().min_limit(0)), "min_limit");
        assert_eq!(f(Aimd::builder().initial_limit(1)), "initial_limit");
        assert_eq!(f(Aimd::builder().backoff_ratio(1.0)), "backoff_ratio");
        assert_eq!(f(Aimd::builder().backoff_ratio(-0.5)), "backoff_ratio");
        assert_eq!(f(Aimd::builder().timeout(Duration::ZERO)), "timeout");
    }
}
