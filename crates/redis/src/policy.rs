//! [`FailurePolicy`]: what a distributed primitive does while Redis does not
//! answer.

use heijunka_core::{ConfigError, validate};

/// What a distributed primitive does when Redis does not answer (down, slow
/// beyond the call time-out, erroring, or its breaker open).
///
/// Neither choice takes the service down: a call never waits longer than the
/// backend's [call time-out](crate::RedisBackendBuilder::call_timeout), and
/// once the breaker around Redis opens, not even that.
///
/// | policy | while Redis is down | guarantee kept |
/// |---|---|---|
/// | [`FailOpen`](Self::FailOpen) (default, 1 replica) | a local limiter per replica at the configured limit ÷ `expected_replicas` | the service stays up; the global limit holds if the replica count is right |
/// | [`FailClosed`](Self::FailClosed) | every request refused (`Unavailable`) | the limit is never exceeded; the protected path is down with Redis |
///
/// The default is [`FailOpen`](Self::FailOpen) with one expected replica: a
/// single replica keeps its full limit. With more replicas, say how many, or
/// the fleet allows that many times the limit during an outage.
///
/// ```
/// use heijunka_redis::FailurePolicy;
///
/// // Three replicas: each keeps a third of the limit while Redis is down.
/// let open = FailurePolicy::fail_open(3)?;
/// assert_eq!(open, FailurePolicy::FailOpen { expected_replicas: 3 });
/// assert_eq!(FailurePolicy::default(), FailurePolicy::FailOpen { expected_replicas: 1 });
/// // No replicas is a configuration error naming the field.
/// assert_eq!(FailurePolicy::fail_open(0).unwrap_err().field(), "expected_replicas");
/// # Ok::<(), heijunka_core::ConfigError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailurePolicy {
    /// Serve on a local limit: the configured rate (or concurrency) divided by
    /// `expected_replicas`, at least one unit.
    FailOpen {
        /// How many replicas share the limit (at least 1).
        expected_replicas: u32,
    },
    /// Refuse while Redis does not answer.
    FailClosed,
}

impl FailurePolicy {
    /// [`FailOpen`](Self::FailOpen) with `expected_replicas` sharing the limit.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for `expected_replicas` of zero.
    pub fn fail_open(expected_replicas: u32) -> Result<Self, ConfigError> {
        validate::at_least("expected_replicas", expected_replicas, 1)?;
        Ok(Self::FailOpen { expected_replicas })
    }

    /// The replicas a fail-open limit is divided among (1 when failing closed).
    pub(crate) fn replicas(self) -> u32 {
        match self {
            Self::FailOpen { expected_replicas } => expected_replicas.max(1),
            Self::FailClosed => 1,
        }
    }

    pub(crate) fn validate(self) -> Result<Self, ConfigError> {
        if let Self::FailOpen { expected_replicas } = self {
            validate::at_least("expected_replicas", expected_replicas, 1)?;
        }
        Ok(self)
    }
}

impl Default for FailurePolicy {
    fn default() -> Self {
        Self::FailOpen {
            expected_replicas: 1,
        }
    }
}
