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
/// tripped the breaker (a time-based window keeps sliding: reading the stats moves
/// it to the current second, in every state, as resilience4j's snapshots do, so the
/// calls that tripped the breaker leave it with time). A manual override empties
/// them.
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
    /// Calls rejected in the current state, since the breaker entered it
    /// (resilience4j's `getNumberOfNotPermittedCalls`, which each state counts
    /// afresh): open, forced open, or half-open with every probe taken; always 0 in
    /// the states that admit every call. A manual transition to the state the
    /// breaker is already in starts the count again. A rejection that races a state
    /// change may be counted in the next period of the state that made it.
    pub not_permitted_calls: u64,
    /// Calls rejected since the breaker was built, in every state: the sum of
    /// [`rejected_calls_by_state`](Self::rejected_calls_by_state).
    pub rejected_calls: u64,
    /// Calls rejected since the breaker was built, by the state that rejected them.
    pub rejected_calls_by_state: RejectedCalls,
    /// Open: time until the breaker admits probes.
    pub retry_after: Option<Duration>,
    /// State-change events not delivered to the listeners because
    /// [`LISTENER_QUEUE_CAPACITY`](crate::LISTENER_QUEUE_CAPACITY) events were
    /// already waiting (a listener too slow for the rate of changes), since the
    /// breaker was built.
    pub dropped_events: u64,
}

/// Calls rejected since a breaker was built, by the state that rejected them (the
/// only states that reject), in [`BreakerStats::rejected_calls_by_state`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct RejectedCalls {
    /// Rejected while open, before the wait ended.
    pub open: u64,
    /// Rejected while half-open, with every probe taken.
    pub half_open: u64,
    /// Rejected while forced open.
    pub forced_open: u64,
}

impl RejectedCalls {
    /// All of them.
    pub fn total(&self) -> u64 {
        self.open + self.half_open + self.forced_open
    }
}
