//! Named starting points: [`Preset::Standard`], [`Preset::FastFail`] and
//! [`Preset::Tolerant`], each a builder to adjust further.
//!
//! | preset | attempts | backoff | budget (ratio, floor, window) | hedge |
//! | --- | --- | --- | --- | --- |
//! | `standard` | 3 | full jitter 100 ms → 10 s | 10 %, 10/s, 10 s | 1 after p95 (100 ms at first) |
//! | `fast_fail` | 2 | constant 10 ms | 5 %, 1/s, 10 s | 1 after p99 (50 ms at first) |
//! | `tolerant` | 5 | decorrelated jitter 200 ms → 30 s | 20 %, 20/s, 30 s | 2 after p90 (200 ms at first) |
//!
//! `standard` suits a call on a user's request path with a deadline of a
//! second or more; `fast_fail` a latency-critical path where a second attempt
//! is the most the caller can afford; `tolerant` background work that would
//! rather wait than fail. None is idempotent: opt in per policy or per call.
//!
//! ```
//! use heijunka_retry::presets::Preset;
//!
//! let budget = Preset::Standard.budget().build()?;
//! let retry = Preset::Standard.retry().budget(budget.clone()).idempotent(true).build()?;
//! let hedge = Preset::Standard.hedge().budget(budget).build()?;
//! assert_eq!(retry.max_attempts(), 3);
//! # drop(hedge);
//! # Ok::<(), heijunka_core::ConfigError>(())
//! ```

use std::time::Duration;

use crate::{Backoff, Budget, BudgetBuilder, Hedge, HedgeBuilder, HedgeDelay, Retry, RetryBuilder};

/// A named starting point for the patterns (values in the [module docs](self)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Preset {
    /// A request path with a deadline of a second or more.
    Standard,
    /// A latency-critical path: at most one retry, soon.
    FastFail,
    /// Background work that would rather wait than fail.
    Tolerant,
}

impl Preset {
    /// Every preset.
    pub const ALL: [Preset; 3] = [Preset::Standard, Preset::FastFail, Preset::Tolerant];

    /// Its name: `standard`, `fast_fail` or `tolerant`.
    pub fn as_str(self) -> &'static str {
        match self {
            Preset::Standard => "standard",
            Preset::FastFail => "fast_fail",
            Preset::Tolerant => "tolerant",
        }
    }

    /// The preset named `name`, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == name)
    }

    /// Its retry policy's builder (no budget: add the dependency's).
    pub fn retry(self) -> RetryBuilder {
        let ms = Duration::from_millis;
        match self {
            Preset::Standard => Retry::builder()
                .max_attempts(3)
                .backoff(Backoff::full_jitter(ms(100), Duration::from_secs(10))),
            Preset::FastFail => Retry::builder()
                .max_attempts(2)
                .backoff(Backoff::constant(ms(10))),
            Preset::Tolerant => {
                Retry::builder()
                    .max_attempts(5)
                    .backoff(Backoff::decorrelated_jitter(
                        ms(200),
                        Duration::from_secs(30),
                    ))
            }
        }
    }

    /// Its budget's builder.
    pub fn budget(self) -> BudgetBuilder {
        match self {
            Preset::Standard => Budget::builder()
                .ratio(0.1)
                .floor_per_sec(10)
                .window(Duration::from_secs(10)),
            Preset::FastFail => Budget::builder()
                .ratio(0.05)
                .floor_per_sec(1)
                .window(Duration::from_secs(10)),
            Preset::Tolerant => Budget::builder()
                .ratio(0.2)
                .floor_per_sec(20)
                .window(Duration::from_secs(30)),
        }
    }

    /// Its hedging policy's builder (no budget: add the dependency's).
    pub fn hedge(self) -> HedgeBuilder {
        let ms = Duration::from_millis;
        let quantile = |q, initial| HedgeDelay::Quantile {
            quantile: q,
            initial,
            min: ms(1),
            period: Duration::from_secs(10),
        };
        match self {
            Preset::Standard => Hedge::builder()
                .max_hedges(1)
                .delay(quantile(0.95, ms(100))),
            Preset::FastFail => Hedge::builder().max_hedges(1).delay(quantile(0.99, ms(50))),
            Preset::Tolerant => Hedge::builder()
                .max_hedges(2)
                .delay(quantile(0.90, ms(200))),
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn every_preset_builds_and_round_trips_its_name() {
        for p in Preset::ALL {
            assert_eq!(Preset::from_name(p.as_str()), Some(p));
            p.retry().build().unwrap();
            p.budget().build().unwrap();
            p.hedge().build().unwrap();
        }
        assert_eq!(Preset::from_name("aggressive"), None);
    }
}
