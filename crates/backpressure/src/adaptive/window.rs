//! [`Windowed`]: one averaged sample per time window.

use std::time::Duration;

use heijunka_core::{ConfigError, Instant, validate};

use super::{LimitAlgorithm, Sample};

/// Feeds an algorithm one sample per time window instead of one per request: the
/// average RTT of the window's successful requests, the most requests that were in
/// flight, and whether any was dropped. Netflix wraps its limits the same way
/// (`WindowedLimit`); it steadies the delay-based algorithms and makes
/// [`Aimd`](crate::Aimd) take one step per window.
///
/// A window closes at the first sample at least [`window`](WindowedBuilder::window)
/// after it opened, once it holds [`min_samples`](WindowedBuilder::min_samples).
/// Successful samples faster than [`min_rtt`](WindowedBuilder::min_rtt) are
/// skipped (they are usually cache hits or errors that say nothing about load).
///
/// Defaults, from Netflix's `WindowedLimit`: window 1 s, at least 10 samples, min
/// RTT 100 µs.
///
/// ```
/// # if heijunka_core::sync::IS_LOOM { return Ok(()); } // loom types work only inside a model
/// use heijunka_backpressure::{AdaptiveLimit, Aimd, Windowed};
/// use heijunka_core::ManualClock;
/// use std::time::Duration;
///
/// let clock = ManualClock::new();
/// let algorithm = Windowed::builder(Aimd::builder().initial_limit(20).build()?)
///     .window(Duration::from_millis(100))
///     .min_samples(1)
///     .build()?;
/// let limit = AdaptiveLimit::builder(algorithm).clock(clock.clock()).build()?;
/// let p = limit.try_acquire()?;
/// clock.advance(Duration::from_millis(150));
/// p.dropped(); // closes the window: one backoff
/// assert_eq!(limit.limit(), 20); // Aimd's min limit is 20
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct Windowed<A> {
    inner: A,
    limit: usize,
    window: Duration,
    min_samples: u32,
    min_rtt: Duration,
    opened: Option<Instant>,
    count: u32,
    rtt_sum: u128,
    rtt_count: u32,
    max_inflight: usize,
    dropped: bool,
}

/// Builds a [`Windowed`]; see [`Windowed::builder`].
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until `build()`"]
pub struct WindowedBuilder<A> {
    inner: A,
    window: Duration,
    min_samples: u32,
    min_rtt: Duration,
}

impl<A: LimitAlgorithm> Windowed<A> {
    /// A builder around `inner` with the defaults above.
    pub fn builder(inner: A) -> WindowedBuilder<A> {
        WindowedBuilder {
            inner,
            window: Duration::from_secs(1),
            min_samples: 10,
            min_rtt: Duration::from_micros(100),
        }
    }

    /// The wrapped algorithm.
    pub fn inner(&self) -> &A {
        &self.inner
    }
}

impl<A: LimitAlgorithm> WindowedBuilder<A> {
    /// The shortest window. Default 1 s.
    pub fn window(mut self, d: Duration) -> Self {
        self.window = d;
        self
    }

    /// The fewest samples in a window. Default 10.
    pub fn min_samples(mut self, n: u32) -> Self {
        self.min_samples = n;
        self
    }

    /// Successful samples faster than this are skipped. Default 100 µs.
    pub fn min_rtt(mut self, d: Duration) -> Self {
        self.min_rtt = d;
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for a zero `window` or `min_samples` of 0.
    pub fn build(self) -> Result<Windowed<A>, ConfigError> {
        validate::non_zero_duration("window", self.window)?;
        validate::at_least("min_samples", self.min_samples, 1)?;
        Ok(Windowed {
            limit: self.inner.initial_limit(),
            inner: self.inner,
            window: self.window,
            min_samples: self.min_samples,
            min_rtt: self.min_rtt,
            opened: None,
            count: 0,
            rtt_sum: 0,
            rtt_count: 0,
            max_inflight: 0,
            dropped: false,
        })
    }
}

impl<A: LimitAlgorithm> LimitAlgorithm for Windowed<A> {
    fn initial_limit(&self) -> usize {
        self.limit
    }

    fn update(&mut self, sample: &Sample) -> usize {
        if !sample.dropped && sample.rtt < self.min_rtt {
            return self.limit;
        }
        let opened = *self.opened.get_or_insert(sample.end);
        self.count += 1;
        self.max_inflight = self.max_inflight.max(sample.inflight);
        if sample.dropped {
            self.dropped = true;
        } else {
            self.rtt_sum += sample.rtt.as_nanos();
            self.rtt_count += 1;
        }
        if self.count < self.min_samples
            || sample.end.saturating_duration_since(opened) < self.window
        {
            return self.limit;
        }
        let rtt = if self.rtt_count == 0 {
            sample.rtt
        } else {
            let avg = self.rtt_sum / u128::from(self.rtt_count);
            Duration::from_nanos(u64::try_from(avg).unwrap_or(u64::MAX))
        };
        let window_sample = Sample {
            start: opened,
            end: sample.end,
            rtt,
            inflight: self.max_inflight,
            dropped: self.dropped,
        };
        self.limit = self.inner.update(&window_sample);
        self.opened = Some(sample.end);
        self.count = 0;
        self.rtt_sum = 0;
        self.rtt_count = 0;
        self.max_inflight = 0;
        self.dropped = false;
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Aimd;

    #[test]
    fn one_update_per_window_with_the_average() {
        let aimd = Aimd::builder()
            .initial_limit(20)
            .timeout(Duration::from_millis(15))
            .build()
            .unwrap();
        let mut w = Windowed::builder(aimd)
            .window(Duration::from_millis(100))
            .min_samples(3)
            .build()
            .unwrap();
        let at = |ms: u64, rtt: u64| Sample {
            start: Instant::ZERO,
            end: Instant::from_nanos(ms * 1_000_000),
            rtt: Duration::from_millis(rtt),
            inflight: 20,
            dropped: false,
        };
        // Opens at 0; 3 samples but not 100 ms yet.
        for ms in [0, 10, 20] {
            assert_eq!(w.update(&at(ms, 10)), 20);
        }
        // Closes: average 10 ms, in use: + 1.
        assert_eq!(w.update(&at(100, 10)), 21);
        // Next window averages (10 + 10 + 40) / 3 = 20 ms > timeout: back off once.
        w.update(&at(110, 10));
        w.update(&at(120, 10));
        assert_eq!(w.update(&at(200, 40)), 20);
    }

    #[test]
    fn bad_config_names_the_field() {
        let a = || Aimd::builder().build().unwrap();
        assert_eq!(
            Windowed::builder(a())
                .window(Duration::ZERO)
                .build()
                .unwrap_err()
                .field(),
            "window"
        );
        assert_eq!(
            Windowed::builder(a())
                .min_samples(0)
                .build()
                .unwrap_err()
                .field(),
            "min_samples"
        );
    }
}
