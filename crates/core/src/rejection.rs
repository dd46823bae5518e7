//! Why an item was not admitted.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::PressureLevel;

/// The reason work was turned away, shared by every heijunka crate.
///
/// Each crate's error type carries one of these beside the item it hands back, so a
/// caller can match on the reason the same way whichever primitive said no: retry
/// after [`retry_after`](Rejection::retry_after), route elsewhere, or give up. The
/// `Display` text says what the caller can do.
///
/// ```
/// use heijunka_core::Rejection;
/// use std::time::Duration;
///
/// let reason = Rejection::CircuitOpen { retry_after: Some(Duration::from_secs(5)) };
/// assert_eq!(reason.retry_after(), Some(Duration::from_secs(5)));
/// assert!(reason.is_transient());
/// assert_eq!(
///     reason.to_string(),
///     "circuit open: the dependency is failing; next probe allowed in 5s"
/// );
///
/// match reason {
///     Rejection::ShuttingDown => { /* send the work to another instance */ }
///     _ => match reason.retry_after() {
///         Some(after) => { /* schedule a retry after `after` */ }
///         None => { /* shed it, or retry on the caller's own schedule */ }
///     },
/// }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Rejection {
    /// Every permit of a concurrency limit is taken.
    AtCapacity {
        /// The limit that was reached.
        limit: u64,
    },
    /// A rate limit is exhausted; the same request conforms after `retry_after`.
    RateLimited {
        /// How long until the request would be admitted.
        retry_after: Duration,
    },
    /// A circuit breaker is open; it lets a probe through after `retry_after`.
    CircuitOpen {
        /// Time until the breaker admits its next probe call; `None` when no time is
        /// known (forced open until an operator resets it, or every probe in flight
        /// with no deadline).
        retry_after: Option<Duration>,
    },
    /// Memory use is at or above the level that sheds this work.
    MemoryPressure {
        /// The pressure level when the work was turned away.
        level: PressureLevel,
    },
    /// Shutdown has begun; no new work is accepted.
    ShuttingDown,
    /// The work waited for admission for `after` and gave up.
    TimedOut {
        /// How long it waited.
        after: Duration,
    },
    /// A bounded queue is full, or above its reject watermark.
    QueueFull {
        /// The queue's capacity.
        capacity: usize,
    },
}

impl Rejection {
    /// How long until the same request could succeed, where that is known.
    pub fn retry_after(&self) -> Option<Duration> {
        match *self {
            Self::RateLimited { retry_after } => Some(retry_after),
            Self::CircuitOpen { retry_after } => retry_after,
            _ => None,
        }
    }

    /// Whether trying again later on this instance can succeed. Everything except
    /// [`ShuttingDown`](Self::ShuttingDown) passes with time; a shutting-down
    /// instance will not take the work again, so send it elsewhere.
    pub fn is_transient(&self) -> bool {
        !matches!(self, Self::ShuttingDown)
    }

    /// A short snake-case name for metrics labels (`"rate_limited"`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::AtCapacity { .. } => "at_capacity",
            Self::RateLimited { .. } => "rate_limited",
            Self::CircuitOpen { .. } => "circuit_open",
            Self::MemoryPressure { .. } => "memory_pressure",
            Self::ShuttingDown => "shutting_down",
            Self::TimedOut { .. } => "timed_out",
            Self::QueueFull { .. } => "queue_full",
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AtCapacity { limit } => write!(
                f,
                "at capacity: all {limit} permits are in use; retry later or lower concurrency"
            ),
            Self::RateLimited { retry_after } => {
                write!(f, "rate limited: retry after {retry_after:?}")
            }
            Self::CircuitOpen {
                retry_after: Some(retry_after),
            } => write!(
                f,
                "circuit open: the dependency is failing; next probe allowed in {retry_after:?}"
            ),
            Self::CircuitOpen { retry_after: None } => f.write_str(
                "circuit open: the dependency is failing; no known time for the next probe",
            ),
            Self::MemoryPressure { level } => write!(
                f,
                "memory pressure is {level}: work is shed until memory is freed; retry later"
            ),
            Self::ShuttingDown => {
                f.write_str("shutting down: no new work is accepted; send it to another instance")
            }
            Self::TimedOut { after } => {
                write!(f, "timed out after {after:?} waiting for admission")
            }
            Self::QueueFull { capacity } => write!(
                f,
                "queue full (capacity {capacity}): retry later or slow the producer"
            ),
        }
    }
}

impl std::error::Error for Rejection {}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Rejection> {
        vec![
            Rejection::AtCapacity { limit: 8 },
            Rejection::RateLimited {
                retry_after: Duration::from_millis(20),
            },
            Rejection::CircuitOpen {
                retry_after: Some(Duration::from_secs(1)),
            },
            Rejection::MemoryPressure {
                level: PressureLevel::Critical,
            },
            Rejection::ShuttingDown,
            Rejection::TimedOut {
                after: Duration::from_millis(300),
            },
            Rejection::QueueFull { capacity: 1024 },
        ]
    }

    #[test]
    fn every_reason_says_what_happened_and_names_its_figure() {
        let expected = [
            "at capacity: all 8 permits are in use; retry later or lower concurrency",
            "rate limited: retry after 20ms",
            "circuit open: the dependency is failing; next probe allowed in 1s",
            "memory pressure is critical: work is shed until memory is freed; retry later",
            "shutting down: no new work is accepted; send it to another instance",
            "timed out after 300ms waiting for admission",
            "queue full (capacity 1024): retry later or slow the producer",
        ];
        for (r, text) in all().iter().zip(expected) {
            assert_eq!(r.to_string(), text);
        }
        let unknown = Rejection::CircuitOpen { retry_after: None };
        assert_eq!(
            unknown.to_string(),
            "circuit open: the dependency is failing; no known time for the next probe"
        );
        assert_eq!(unknown.retry_after(), None);
    }

    #[test]
    fn retry_after_and_transience() {
        let with_retry: Vec<_> = all().iter().filter_map(Rejection::retry_after).collect();
        assert_eq!(
            with_retry,
            [Duration::from_millis(20), Duration::from_secs(1)]
        );
        let permanent: Vec<_> = all().into_iter().filter(|r| !r.is_transient()).collect();
        assert_eq!(permanent, [Rejection::ShuttingDown]);
    }

    #[test]
    fn kinds_are_unique_and_match_the_serialised_tag() {
        let mut kinds = std::collections::HashSet::new();
        for r in all() {
            assert!(kinds.insert(r.kind()), "duplicate kind {}", r.kind());
            let json = serde_json::to_value(r).unwrap();
            assert_eq!(json["reason"], r.kind());
        }
    }
}
