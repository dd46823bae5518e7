//! The metric handles of this crate's components (feature `metrics`; see
//! `docs/metrics.md`). Each is registered once, when its component is built, and
//! updated with one atomic operation per event. Without the feature every handle
//! is a no-op, whatever other crates turned on in `heijunka-core`.

use heijunka_core::metrics::{Counter, Gauge};
#[cfg(feature = "metrics")]
use heijunka_core::metrics::{Unit, counter, gauge};

/// The label value of a component built without a name.
pub(crate) const DEFAULT_NAME: &str = "default";

/// A concurrency limit's handles ([`ConcurrencyLimit`](crate::ConcurrencyLimit) and
/// [`AdaptiveLimit`](crate::AdaptiveLimit)).
#[derive(Debug, Default)]
pub(crate) struct LimitMetrics {
    /// Permits held now (`heijunka_limiter_in_flight`).
    pub(crate) in_flight: Gauge,
    /// The limit now (`heijunka_limiter_limit`).
    pub(crate) limit: Gauge,
    /// Acquisitions refused for want of a permit (`heijunka_limiter_rejected_total`).
    pub(crate) rejected: Counter,
}

impl LimitMetrics {
    pub(crate) fn new(name: &str) -> Self {
        #[cfg(feature = "metrics")]
        {
            let l = [("name", name)];
            Self {
                in_flight: gauge(
                    "heijunka_limiter_in_flight",
                    Unit::Count,
                    "Permits of the concurrency limit held now.",
                    &l,
                ),
                limit: gauge(
                    "heijunka_limiter_limit",
                    Unit::Count,
                    "The concurrency limit now (set whenever it changes).",
                    &l,
                ),
                rejected: counter(
                    "heijunka_limiter_rejected_total",
                    Unit::Count,
                    "Acquisitions refused for want of a permit: a try_acquire at capacity, or an acquire that timed out.",
                    &l,
                ),
            }
        }
        #[cfg(not(feature = "metrics"))]
        {
            let _ = name;
            Self::default()
        }
    }
}

/// A [`BoundedQueue`](crate::BoundedQueue)'s handles.
#[derive(Debug, Default)]
pub(crate) struct QueueMetrics {
    /// Items queued now (`heijunka_queue_depth`).
    pub(crate) depth: Gauge,
    /// Items handed back (`heijunka_queue_rejected_total`).
    pub(crate) rejected: Counter,
    /// `heijunka_queue_watermark_crossings_total`, by watermark and direction.
    pub(crate) warn_up: Counter,
    pub(crate) warn_down: Counter,
    pub(crate) reject_up: Counter,
    pub(crate) reject_down: Counter,
}

impl QueueMetrics {
    pub(crate) fn new(name: &str) -> Self {
        #[cfg(feature = "metrics")]
        {
            let l = [("name", name)];
            let crossing = |watermark: &str, direction: &str| {
                counter(
                    "heijunka_queue_watermark_crossings_total",
                    Unit::Count,
                    "Times the queue length reached a watermark (up) or cleared it by the hysteresis margin (down).",
                    &[
                        ("name", name),
                        ("watermark", watermark),
                        ("direction", direction),
                    ],
                )
            };
            Self {
                depth: gauge(
                    "heijunka_queue_depth",
                    Unit::Count,
                    "Items in the queue now.",
                    &l,
                ),
                rejected: counter(
                    "heijunka_queue_rejected_total",
                    Unit::Count,
                    "Items handed back: a try_push at or above the reject mark, or a push that timed out.",
                    &l,
                ),
                warn_up: crossing("warn", "up"),
                warn_down: crossing("warn", "down"),
                reject_up: crossing("reject", "up"),
                reject_down: crossing("reject", "down"),
            }
        }
        #[cfg(not(feature = "metrics"))]
        {
            let _ = name;
            Self::default()
        }
    }
}

/// A rate limiter's refusals ([`Gcra`](crate::Gcra) and
/// [`KeyedRateLimiter`](crate::KeyedRateLimiter)):
/// `heijunka_ratelimit_rejected_total`.
pub(crate) fn rate_rejected(name: &str) -> Counter {
    #[cfg(feature = "metrics")]
    {
        counter(
            "heijunka_ratelimit_rejected_total",
            Unit::Count,
            "Requests the rate limiter refused: rate limited, or a new key beyond the key budget.",
            &[("name", name)],
        )
    }
    #[cfg(not(feature = "metrics"))]
    {
        let _ = name;
        Counter::noop()
    }
}

/// Counts `r` on `rejected` if it is a refusal of a request that could pass
/// later (not one above the burst, which never can).
#[inline]
pub(crate) fn count_rate_refusal(rejected: &Counter, r: &Result<(), crate::RateLimitError>) {
    if let Err(
        crate::RateLimitError::RateLimited { .. }
        | crate::RateLimitError::KeyBudgetExhausted { .. },
    ) = r
    {
        rejected.increment(1);
    }
}

/// A [`LoadShedder`](crate::LoadShedder)'s handles.
#[derive(Debug, Default)]
pub(crate) struct ShedMetrics {
    /// Decisions that shed (`heijunka_shed_total`).
    pub(crate) shed: Counter,
}

impl ShedMetrics {
    pub(crate) fn new(name: &str) -> Self {
        #[cfg(feature = "metrics")]
        {
            Self {
                shed: counter(
                    "heijunka_shed_total",
                    Unit::Count,
                    "Requests the load shedder rejected.",
                    &[("name", name)],
                ),
            }
        }
        #[cfg(not(feature = "metrics"))]
        {
            let _ = name;
            Self::default()
        }
    }
}
