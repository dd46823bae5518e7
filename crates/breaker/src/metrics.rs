//! A breaker's metric handles (feature `metrics`; see `docs/metrics.md`),
//! registered once when the breaker is built and updated with one atomic
//! operation per event. Without the feature every handle is a no-op, whatever
//! other crates turned on in `heijunka-core`.

use heijunka_core::metrics::{Counter, Gauge};
#[cfg(feature = "metrics")]
use heijunka_core::metrics::{Unit, counter, gauge};

use crate::State;

/// Every state, in the order of [`code`].
#[cfg(any(feature = "metrics", test))]
pub(crate) const STATES: [State; 6] = [
    State::Closed,
    State::Open,
    State::HalfOpen,
    State::ForcedOpen,
    State::Disabled,
    State::MetricsOnly,
];

/// The number `heijunka_breaker_state` shows for `state` (documented in
/// `docs/metrics.md`; also the index into [`STATES`]).
pub(crate) fn code(state: State) -> usize {
    match state {
        State::Closed => 0,
        State::Open => 1,
        State::HalfOpen => 2,
        State::ForcedOpen => 3,
        State::Disabled => 4,
        State::MetricsOnly => 5,
    }
}

/// Whether the breaker can move from `from` to `to`: the pairs whose transition
/// counters are registered.
pub(crate) fn can_transition(from: State, to: State) -> bool {
    // A transition changes the state (a move to the state the breaker is in is
    // internal: not counted, not announced).
    from != to
        && match to {
            // Probes passed or timed out (from half-open), `reset` or
            // `transition_to_closed` (from any state).
            State::Closed => true,
            // The manual overrides, from any other state.
            State::ForcedOpen | State::Disabled | State::MetricsOnly => true,
            // Tripped while closed, by the probes or their timeout, or
            // `transition_to_open` (from any state but metrics-only).
            State::Open => from != State::MetricsOnly,
            // The wait in open state elapsed, or `transition_to_half_open` (from
            // open, forced open or disabled).
            State::HalfOpen => matches!(from, State::Open | State::ForcedOpen | State::Disabled),
        }
}

#[derive(Debug, Default)]
pub(crate) struct BreakerMetrics {
    /// `heijunka_breaker_state`: [`code`] of the state now.
    state: Gauge,
    /// `heijunka_breaker_transitions_total`, indexed `[from][to]` by [`code`]; a
    /// no-op where [`can_transition`] is false.
    transitions: [[Counter; 6]; 6],
    /// `heijunka_breaker_calls_total` by outcome.
    pub(crate) success: Counter,
    pub(crate) failure: Counter,
    pub(crate) slow_success: Counter,
    pub(crate) slow_failure: Counter,
    pub(crate) ignored: Counter,
    /// `heijunka_breaker_rejected_total`.
    pub(crate) rejected: Counter,
    /// `heijunka_breaker_resets_total`.
    pub(crate) resets: Counter,
}

impl BreakerMetrics {
    pub(crate) fn new(name: &str) -> Self {
        #[cfg(feature = "metrics")]
        {
            let calls = |outcome: &str| {
                counter(
                    "heijunka_breaker_calls_total",
                    Unit::Count,
                    "Outcomes of the calls the breaker admitted, as it classified them.",
                    &[("name", name), ("outcome", outcome)],
                )
            };
            let transitions = std::array::from_fn(|from| {
                std::array::from_fn(|to| {
                    let (from, to) = (STATES[from], STATES[to]);
                    if can_transition(from, to) {
                        counter(
                            "heijunka_breaker_transitions_total",
                            Unit::Count,
                            "State transitions of the breaker.",
                            &[("name", name), ("from", from.as_str()), ("to", to.as_str())],
                        )
                    } else {
                        Counter::noop()
                    }
                })
            });
            let state = gauge(
                "heijunka_breaker_state",
                Unit::Count,
                "The breaker's state: 0 closed, 1 open, 2 half-open, 3 forced open, 4 disabled, 5 metrics only.",
                &[("name", name)],
            );
            state.set(0.0);
            Self {
                state,
                transitions,
                success: calls("success"),
                failure: calls("failure"),
                slow_success: calls("slow_success"),
                slow_failure: calls("slow_failure"),
                ignored: calls("ignored"),
                rejected: counter(
                    "heijunka_breaker_rejected_total",
                    Unit::Count,
                    "Calls the breaker refused: open, forced open, or half-open with every probe taken.",
                    &[("name", name)],
                ),
                resets: counter(
                    "heijunka_breaker_resets_total",
                    Unit::Count,
                    "Calls of reset: back to closed with an empty window, whatever the state.",
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

    /// A transition made (under the breaker's lock, so the gauge ends at the last
    /// state).
    pub(crate) fn transition(&self, from: State, to: State) {
        debug_assert!(can_transition(from, to), "{from:?} -> {to:?} unregistered");
        self.transitions[code(from)][code(to)].increment(1);
        self.state.set(code(to) as f64);
    }

    /// The state a breaker starts in (no transition).
    pub(crate) fn set_state(&self, state: State) {
        self.state.set(code(state) as f64);
    }

    /// An outcome reported: success or failure, slow or not.
    #[inline]
    pub(crate) fn outcome(&self, failed: bool, slow: bool) {
        match (failed, slow) {
            (false, false) => &self.success,
            (true, false) => &self.failure,
            (false, true) => &self.slow_success,
            (true, true) => &self.slow_failure,
        }
        .increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_index_the_states() {
        for (i, s) in STATES.iter().enumerate() {
            assert_eq!(code(*s), i);
        }
    }
}
