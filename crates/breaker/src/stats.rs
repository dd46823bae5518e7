//! The stats snapshot.

use std::time::Duration;

use serde::Serialize;

use crate::State;

/// A snapshot of a breaker, from [`CircuitBreaker::stats`](crate::CircuitBreaker::stats)
/// (resilience4j's `CircuitBreaker.Metrics`, plus the state and the absolute
/// counts).
///
/// The call counts are those of the window the current state judges: the sliding
/// window when closed, the probes when half-open, and in open state the window that
/// tripped the breaker. A manual override empties them.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct BreakerStats {
    /// The breaker's name.
    pub name: String,
    /// The current state.
    pub state: State,
    /// Calls in the window (resilience4j's "buffered calls").
    pub calls: u64,
    /// Calls in the window that succeeded (slow ones included).
    pub successful_calls: u64,
    /// Calls in the window that failed (slow ones included).
    pub failed_calls: u64,
    /// Calls in the window longer than the slow-call duration.
    pub slow_calls: u64,
    /// Slow calls in the window that failed.
    pub slow_failed_calls: u64,
    /// `failed_calls / calls`, once the window holds the minimum number of calls
    /// (resilience4j reports -1 before that).
    pub failure_rate: Option<f64>,
    /// `slow_calls / calls`, once the window holds the minimum number of calls and
    /// slow-call detection is on.
    pub slow_call_rate: Option<f64>,
    /// Failures in a row, up to the last recorded call.
    pub consecutive_failures: u32,
    /// Trips since the breaker last closed (each one grows the wait in open state).
    pub consecutive_trips: u32,
    /// Half-open: probe calls that may still be admitted.
    pub available_probes: Option<u32>,
    /// Calls rejected since the breaker was built, in every state (resilience4j's
    /// "not permitted calls", which it counts per state).
    pub rejected_calls: u64,
    /// Open: time until the breaker admits probes.
    pub retry_after: Option<Duration>,
    /// State-change events not delivered to the listeners because
    /// [`LISTENER_QUEUE_CAPACITY`](crate::LISTENER_QUEUE_CAPACITY) events were
    /// already waiting (a listener too slow for the rate of changes), since the
    /// breaker was built.
    pub dropped_events: u64,
}
