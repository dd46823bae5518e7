//! The coordinator's configuration.

use std::time::Duration;

use heijunka_core::{ConfigError, validate};

use crate::Shutdown;

/// The default grace period: 30 s, the seeds' `timeouts.shutdown`.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(30);
/// The default time limit of each stop hook: 5 s.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(5);
/// What a component registered with
/// [`on_stop_with_grace`](crate::Shutdown::on_stop_with_grace) gets on top of its
/// grace period before its stop hook is cut off: 1 s.
///
/// Once its grace period is over a component only cancels what is left and reports
/// (a poll of each cancelled task, a join of threads that have exited, a report),
/// which takes microseconds; the margin absorbs a loaded machine's scheduling delay
/// for those steps, and is short beside any grace period a server uses.
pub const HOOK_GRACE_MARGIN: Duration = Duration::from_secs(1);

/// Builds a [`Shutdown`]; see [`Shutdown::builder`].
///
/// ```
/// use heijunka_shutdown::Shutdown;
/// use std::time::Duration;
///
/// let shutdown = Shutdown::builder()
///     .grace_period(Duration::from_secs(10))
///     .force_after(Duration::from_secs(20))
///     .hook_timeout(Duration::from_secs(2))
///     .build()?;
/// # Ok::<(), heijunka_core::ConfigError>(())
/// ```
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until `build()`"]
pub struct ShutdownBuilder {
    pub(crate) grace_period: Duration,
    pub(crate) force_after: Option<Duration>,
    pub(crate) hook_timeout: Duration,
    pub(crate) name: String,
}

impl Default for ShutdownBuilder {
    fn default() -> Self {
        Self {
            grace_period: DEFAULT_GRACE_PERIOD,
            force_after: None,
            hook_timeout: DEFAULT_HOOK_TIMEOUT,
            name: crate::metrics::DEFAULT_NAME.to_owned(),
        }
    }
}

impl ShutdownBuilder {
    /// The `name` label of the coordinator's metrics (feature `metrics`, see
    /// `docs/metrics.md`). Default `"default"`. A [`child`](Shutdown::child)
    /// scope takes its parent's; give it its own with
    /// [`child_with`](Shutdown::child_with), or the two share one phase gauge.
    ///
    /// ```
    /// use heijunka_shutdown::Shutdown;
    ///
    /// let shutdown = Shutdown::builder().name("server").build()?;
    /// # let _ = shutdown;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// How long in-flight work may take to finish after the trigger before it is
    /// abandoned and the stop hooks run anyway. Default 30 s. Must be longer than
    /// zero.
    pub fn grace_period(mut self, d: Duration) -> Self {
        self.grace_period = d;
        self
    }

    /// A hard deadline, counted from the trigger, for the whole shutdown (drain and
    /// hooks): when it passes, the shutdown is forced, as by a second signal.
    /// Default: none. Must be at least the grace period.
    pub fn force_after(mut self, d: Duration) -> Self {
        self.force_after = Some(d);
        self
    }

    /// The time limit of each stop hook registered without its own. Default 5 s.
    /// Must be longer than zero.
    pub fn hook_timeout(mut self, d: Duration) -> Self {
        self.hook_timeout = d;
        self
    }

    /// Validates the configuration and builds the coordinator.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the field: a zero `grace_period` or
    /// `hook_timeout`, or a `force_after` shorter than the grace period (or zero).
    pub fn build(self) -> Result<Shutdown, ConfigError> {
        self.validate()?;
        Ok(Shutdown::from_builder(self))
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        validate::non_zero_duration("grace_period", self.grace_period)?;
        validate::non_zero_duration("hook_timeout", self.hook_timeout)?;
        if let Some(force) = self.force_after {
            validate::non_zero_duration("force_after", force)?;
            validate::ordered("grace_period", self.grace_period, "force_after", force).map_err(
                |_| {
                    ConfigError::new(
                        "force_after",
                        force,
                        format!("must be at least grace_period ({:?})", self.grace_period),
                    )
                },
            )?;
        }
        Ok(())
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn bad_durations_name_the_field() {
        let err = Shutdown::builder()
            .grace_period(Duration::ZERO)
            .build()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "grace_period must be longer than zero, got 0ns"
        );
        let err = Shutdown::builder()
            .hook_timeout(Duration::ZERO)
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "hook_timeout");
        let err = Shutdown::builder()
            .grace_period(Duration::from_secs(10))
            .force_after(Duration::from_secs(5))
            .build()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "force_after must be at least grace_period (10s), got 5s"
        );
        let err = Shutdown::builder()
            .force_after(Duration::ZERO)
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "force_after");
    }

    #[test]
    fn equal_force_and_grace_is_allowed() {
        assert!(
            Shutdown::builder()
                .grace_period(Duration::from_secs(5))
                .force_after(Duration::from_secs(5))
                .build()
                .is_ok()
        );
    }
}
