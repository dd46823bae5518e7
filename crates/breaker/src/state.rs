//! The breaker's states and the transitions between them.

use std::fmt;
use std::time::Duration;

use heijunka_core::Instant;
use serde::Serialize;

/// The state of a circuit breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum State {
    /// Calls pass and their outcomes are recorded in the sliding window.
    Closed,
    /// Calls are rejected until the wait in open state ends.
    Open,
    /// A fixed number of probe calls pass; their outcomes close or re-open the
    /// breaker.
    HalfOpen,
    /// Calls are rejected until an operator calls
    /// [`reset`](crate::CircuitBreaker::reset) (a manual override).
    ForcedOpen,
    /// Calls pass and nothing is recorded until an operator calls
    /// [`reset`](crate::CircuitBreaker::reset) (a manual override).
    Disabled,
    /// Calls pass and their outcomes are recorded in the sliding window (the
    /// [`stats`](crate::CircuitBreaker::stats) show them), but no threshold ever
    /// trips the breaker, until an operator calls
    /// [`reset`](crate::CircuitBreaker::reset) (a manual override, resilience4j's
    /// `METRICS_ONLY`, entered with
    /// [`metrics_only`](crate::CircuitBreaker::metrics_only)).
    MetricsOnly,
}

impl State {
    /// A short snake-case name for metrics labels (`"half_open"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
            Self::ForcedOpen => "forced_open",
            Self::Disabled => "disabled",
            Self::MetricsOnly => "metrics_only",
        }
    }

    /// Whether calls are rejected in this state (open or forced open; half-open
    /// rejects only the calls beyond its probes).
    pub fn rejects_calls(self) -> bool {
        matches!(self, Self::Open | Self::ForcedOpen)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half-open",
            Self::ForcedOpen => "forced open",
            Self::Disabled => "disabled",
            Self::MetricsOnly => "metrics only",
        })
    }
}

/// Why a breaker changed state.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
#[non_exhaustive]
pub enum TransitionReason {
    /// The window's failure rate reached the threshold.
    FailureRate {
        /// The failure rate, a ratio in `[0, 1]`.
        rate: f64,
        /// The configured threshold.
        threshold: f64,
    },
    /// The window's slow-call rate reached the threshold.
    SlowCallRate {
        /// The slow-call rate, a ratio in `[0, 1]`.
        rate: f64,
        /// The configured threshold.
        threshold: f64,
    },
    /// This many calls failed in a row.
    ConsecutiveFailures {
        /// The number of consecutive failures, equal to the threshold.
        count: u32,
    },
    /// This many calls failed within `window`.
    FailureCount {
        /// The number of failures, equal to the threshold.
        count: u32,
        /// The span they fell within.
        window: Duration,
    },
    /// The wait in open state ended (open to half-open).
    WaitElapsed,
    /// Enough probes completed (`min(minimum_number_of_calls,
    /// permitted_number_of_calls_in_half_open_state)`) and their rates stayed below
    /// the thresholds (half-open to closed).
    ProbesPassed {
        /// The probes' failure rate.
        failure_rate: f64,
        /// The probes' slow-call rate, when slow-call detection is on.
        slow_call_rate: Option<f64>,
    },
    /// The probes did not all complete within the maximum wait in half-open.
    HalfOpenTimeout {
        /// How long the breaker was half-open.
        waited: Duration,
    },
    /// [`force_open`](crate::CircuitBreaker::force_open) was called.
    ForcedOpen,
    /// [`disable`](crate::CircuitBreaker::disable) was called.
    Disabled,
    /// [`metrics_only`](crate::CircuitBreaker::metrics_only) was called.
    MetricsOnly,
    /// [`reset`](crate::CircuitBreaker::reset) was called.
    Reset,
    /// An operator asked for this state:
    /// [`transition_to_open`](crate::CircuitBreaker::transition_to_open) (and its
    /// `_for` and `_until` forms),
    /// [`transition_to_half_open`](crate::CircuitBreaker::transition_to_half_open) or
    /// [`transition_to_closed`](crate::CircuitBreaker::transition_to_closed)
    /// (resilience4j's `transitionTo…State`).
    Manual,
}

impl fmt::Display for TransitionReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::FailureRate { rate, threshold } => write!(
                f,
                "failure rate {:.1}% reached the threshold of {:.1}%",
                rate * 100.0,
                threshold * 100.0
            ),
            Self::SlowCallRate { rate, threshold } => write!(
                f,
                "slow-call rate {:.1}% reached the threshold of {:.1}%",
                rate * 100.0,
                threshold * 100.0
            ),
            Self::ConsecutiveFailures { count } => write!(f, "{count} consecutive failures"),
            Self::FailureCount { count, window } => {
                write!(f, "{count} failures within {window:?}")
            }
            Self::WaitElapsed => f.write_str("the wait in open state elapsed"),
            Self::ProbesPassed { failure_rate, .. } => write!(
                f,
                "the probes completed with a failure rate of {:.1}%",
                failure_rate * 100.0
            ),
            Self::HalfOpenTimeout { waited } => {
                write!(f, "the probes did not complete within {waited:?}")
            }
            Self::ForcedOpen => f.write_str("forced open by an operator"),
            Self::Disabled => f.write_str("disabled by an operator"),
            Self::MetricsOnly => f.write_str("set to record metrics only by an operator"),
            Self::Reset => f.write_str("reset by an operator"),
            Self::Manual => f.write_str("moved by an operator"),
        }
    }
}

/// A state change, as delivered to [`subscribe`](crate::CircuitBreaker::subscribe)d
/// listeners and logged with `tracing`.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct StateTransition {
    /// The breaker's name.
    pub breaker: String,
    /// The state it left.
    pub from: State,
    /// The state it entered.
    pub to: State,
    /// Why.
    pub reason: TransitionReason,
    /// When, on the breaker's clock.
    pub at: Instant,
    /// Entering [`State::Open`]: how long until the breaker admits probes (the
    /// grown and jittered wait). `None` for other states.
    pub wait: Option<Duration>,
    /// The event's number, from 1, in the order the breaker made its events
    /// (transitions and [resets](crate::BreakerReset) share one sequence):
    /// listeners receive them in this order, so it increases by one from each event
    /// a [`subscribe_events`](crate::CircuitBreaker::subscribe_events) listener sees
    /// to the next (unless it subscribed in between, or events were dropped); a
    /// [`subscribe`](crate::CircuitBreaker::subscribe) listener, which sees only
    /// transitions, also skips the numbers of resets.
    pub sequence: u64,
}

impl fmt::Display for StateTransition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "circuit breaker `{}` went from {} to {}: {}",
            self.breaker, self.from, self.to, self.reason
        )?;
        if let Some(wait) = self.wait {
            write!(f, "; probes allowed in {wait:?}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_read_as_sentences() {
        let opened = StateTransition {
            breaker: "payments".into(),
            from: State::Closed,
            to: State::Open,
            reason: TransitionReason::FailureRate {
                rate: 0.6,
                threshold: 0.5,
            },
            at: Instant::ZERO,
            wait: Some(Duration::from_secs(60)),
            sequence: 1,
        };
        assert_eq!(
            opened.to_string(),
            "circuit breaker `payments` went from closed to open: failure rate 60.0% \
             reached the threshold of 50.0%; probes allowed in 60s"
        );
        assert_eq!(State::HalfOpen.as_str(), "half_open");
        assert_eq!(
            TransitionReason::FailureCount {
                count: 5,
                window: Duration::from_secs(60)
            }
            .to_string(),
            "5 failures within 60s"
        );
    }
}
