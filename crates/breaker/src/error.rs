//! The errors of a guarded call and of a permission request.

use std::fmt;
use std::time::Duration;

use heijunka_core::Rejection;

use crate::State;

/// The breaker turned a call away: it is open, forced open, or half-open with every
/// probe already taken.
///
/// [`reason`](Self::reason) is the shared [`Rejection::CircuitOpen`] with the time
/// until the next probe call may pass, where one is known:
///
/// - open: the rest of the wait in open state;
/// - half-open with every probe taken: with a maximum wait in half-open, the time
///   left until it (by then the probes have decided, or the breaker has reopened and
///   a new rejection says for how long); without one, `None`: a slot frees up when a
///   probe completes without an outcome, and the state changes when enough probes
///   complete, neither at a known time;
/// - forced open: `None` (it stays open until an operator resets it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rejected {
    retry_after: Option<Duration>,
    state: State,
}

impl Rejected {
    pub(crate) fn new(state: State, retry_after: Option<Duration>) -> Self {
        Self { retry_after, state }
    }

    /// The shared reason: [`Rejection::CircuitOpen`] with the time until the next
    /// probe, where known.
    pub fn reason(&self) -> Rejection {
        Rejection::CircuitOpen {
            retry_after: self.retry_after,
        }
    }

    /// The time until the next probe call may pass, `None` where no time is known
    /// (see the type's docs).
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The state that turned the call away.
    pub fn state(&self) -> State {
        self.state
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.state {
            State::ForcedOpen => f.write_str(
                "circuit forced open by an operator: calls are rejected until it is reset",
            ),
            State::HalfOpen => match self.retry_after {
                Some(after) => write!(
                    f,
                    "circuit half-open: every probe call is in flight; the probes are \
                     judged within {after:?}"
                ),
                None => f.write_str(
                    "circuit half-open: every probe call is in flight; retry when they complete",
                ),
            },
            _ => write!(f, "{}", self.reason()),
        }
    }
}

impl std::error::Error for Rejected {}

impl From<Rejected> for Rejection {
    fn from(r: Rejected) -> Rejection {
        r.reason()
    }
}

/// The error of a guarded call: the breaker rejected it, or it ran and failed.
///
/// An error the classifier ignored or counted as a success is still returned as
/// [`Failed`](Self::Failed): classification decides what the breaker records, not
/// what the caller sees.
#[derive(Clone, PartialEq, Eq)]
pub enum CallError<E> {
    /// The breaker did not run the call.
    Rejected(Rejected),
    /// The call ran and returned this error.
    Failed(E),
}

impl<E> CallError<E> {
    /// The call's own error, if it ran.
    pub fn into_inner(self) -> Option<E> {
        match self {
            Self::Failed(e) => Some(e),
            Self::Rejected(_) => None,
        }
    }

    /// The rejection, if the breaker turned the call away.
    pub fn rejected(&self) -> Option<&Rejected> {
        match self {
            Self::Rejected(r) => Some(r),
            Self::Failed(_) => None,
        }
    }

    /// Whether the breaker turned the call away.
    pub fn is_rejected(&self) -> bool {
        matches!(self, Self::Rejected(_))
    }
}

impl<E: fmt::Debug> fmt::Debug for CallError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rejected(r) => f.debug_tuple("Rejected").field(r).finish(),
            Self::Failed(e) => f.debug_tuple("Failed").field(e).finish(),
        }
    }
}

impl<E: fmt::Display> fmt::Display for CallError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rejected(r) => r.fmt(f),
            Self::Failed(e) => e.fmt(f),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for CallError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Rejected(r) => Some(r),
            Self::Failed(e) => Some(e),
        }
    }
}

impl<E> From<Rejected> for CallError<E> {
    fn from(r: Rejected) -> Self {
        Self::Rejected(r)
    }
}

/// A [`BreakerRegistry`](crate::BreakerRegistry) holds as many breakers as it may;
/// the key is not in it and was not added.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[error(
    "breaker registry full: it holds its capacity of {capacity} breakers; remove one or raise the capacity"
)]
pub struct RegistryFull {
    /// The registry's capacity.
    pub capacity: usize,
}

/// A manual transition the state machine does not allow (resilience4j's
/// `IllegalStateTransitionException`): from closed to half-open, and from
/// metrics-only to open or half-open. Nothing was changed.
///
/// ```
/// use heijunka_breaker::{CircuitBreaker, State};
///
/// let breaker = CircuitBreaker::builder()
///     .name("inventory")
/// #   .clock(heijunka_core::ManualClock::new())
///     .build()?;
/// let err = breaker.transition_to_half_open().unwrap_err();
/// assert_eq!((err.from(), err.to()), (State::Closed, State::HalfOpen));
/// assert_eq!(err.to_string(), "circuit breaker `inventory` cannot go from closed to half-open");
/// assert_eq!(breaker.state(), State::Closed);
/// # Ok::<(), heijunka_core::ConfigError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[error("circuit breaker `{breaker}` cannot go from {from} to {to}")]
pub struct IllegalTransition {
    breaker: String,
    from: State,
    to: State,
}

impl IllegalTransition {
    pub(crate) fn new(breaker: &str, from: State, to: State) -> Self {
        Self {
            breaker: breaker.to_string(),
            from,
            to,
        }
    }

    /// The breaker's name.
    pub fn breaker(&self) -> &str {
        &self.breaker
    }

    /// The state the breaker is in (and stays in).
    pub fn from(&self) -> State {
        self.from
    }

    /// The state asked for.
    pub fn to(&self) -> State {
        self.to
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_state_and_the_wait() {
        let open = Rejected::new(State::Open, Some(Duration::from_secs(5)));
        assert_eq!(
            open.to_string(),
            "circuit open: the dependency is failing; next probe allowed in 5s"
        );
        assert_eq!(
            open.reason(),
            Rejection::CircuitOpen {
                retry_after: Some(Duration::from_secs(5))
            }
        );
        let forced = Rejected::new(State::ForcedOpen, None);
        assert!(forced.to_string().contains("forced open"));
        let err: CallError<std::io::Error> = CallError::Rejected(open);
        assert!(err.is_rejected());
        assert!(std::error::Error::source(&err).is_some());
        assert_eq!(
            RegistryFull { capacity: 3 }.to_string(),
            "breaker registry full: it holds its capacity of 3 breakers; remove one or raise the capacity"
        );
    }
}
