//! What a shutdown did: [`ShutdownReport`] and its parts.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

/// Why shutdown began.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "by", content = "detail", rename_all = "snake_case")]
#[non_exhaustive]
pub enum TriggerReason {
    /// [`Shutdown::trigger`](crate::Shutdown::trigger) or
    /// [`force`](crate::Shutdown::force) was called.
    Call,
    /// An OS signal arrived (`"SIGTERM"`, `"SIGINT"`, `"ctrl-c"`).
    Signal(&'static str),
    /// The parent scope shut down.
    Parent,
}

impl fmt::Display for TriggerReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Call => f.write_str("call"),
            Self::Signal(s) => write!(f, "signal {s}"),
            Self::Parent => f.write_str("parent scope"),
        }
    }
}

/// The lifecycle of a [`Shutdown`](crate::Shutdown).
///
/// `Running → Draining → Stopping → Stopped`, or `Forced` from any phase after
/// `Running` when the shutdown is forced (a second signal,
/// [`force`](crate::Shutdown::force), or the `force_after` deadline).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Accepting work.
    Running,
    /// Triggered: new work is refused, in-flight work is finishing (up to the grace
    /// period).
    Draining,
    /// In-flight work is done or abandoned; stop hooks are running.
    Stopping,
    /// Finished: every hook ran (successfully or not).
    Stopped,
    /// Finished early: the shutdown was forced; remaining work and hooks were
    /// abandoned.
    Forced,
}

impl Phase {
    /// Position in the lifecycle; `Stopped` and `Forced` are both final.
    pub(crate) fn rank(self) -> u8 {
        match self {
            Self::Running => 0,
            Self::Draining => 1,
            Self::Stopping => 2,
            Self::Stopped | Self::Forced => 3,
        }
    }

    /// Whether this phase is at or past `other` (`Forced` is past `Stopping` and
    /// counts as reaching `Stopped`).
    pub fn has_reached(self, other: Phase) -> bool {
        self.rank() >= other.rank()
    }

    /// Whether the shutdown has finished (`Stopped` or `Forced`).
    pub fn is_final(self) -> bool {
        self.rank() == 3
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Running => "running",
            Self::Draining => "draining",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
            Self::Forced => "forced",
        })
    }
}

/// How one stop hook ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", content = "detail", rename_all = "snake_case")]
#[non_exhaustive]
pub enum HookOutcome {
    /// Returned `Ok`.
    Ok,
    /// Returned an error; its message.
    Error(String),
    /// Panicked; the panic message where it was a string.
    Panicked(String),
    /// Did not finish within its timeout and was cancelled.
    TimedOut,
    /// Not run, or cancelled, because the shutdown was forced.
    Skipped,
}

/// One stop hook's entry in the report.
///
/// Built by the coordinator, read by users: `#[non_exhaustive]`, so fields can be
/// added.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct HookReport {
    /// The name it was registered with.
    pub name: String,
    /// How it ended.
    pub outcome: HookOutcome,
    /// Its time limit, the one it was registered with: the coordinator's hook
    /// timeout for [`on_stop`](crate::Shutdown::on_stop), the given one for
    /// [`on_stop_with_timeout`](crate::Shutdown::on_stop_with_timeout), and
    /// `max(grace + HOOK_GRACE_MARGIN, hook_timeout)` for a component registered
    /// with its grace ([`on_stop_with_grace`](crate::Shutdown::on_stop_with_grace),
    /// which every `register_with` uses; see
    /// [`HOOK_GRACE_MARGIN`](crate::HOOK_GRACE_MARGIN)).
    pub timeout: Duration,
    /// How long it ran (zero if skipped before it started).
    pub elapsed: Duration,
}

impl HookReport {
    /// Whether it overran its time limit and was cut off
    /// ([`HookOutcome::TimedOut`]).
    pub fn overran(&self) -> bool {
        self.outcome == HookOutcome::TimedOut
    }
}

/// What a shutdown did, returned by [`Shutdown::wait`](crate::Shutdown::wait).
///
/// Every waiter gets the same report. Built by the coordinator, read by users:
/// `#[non_exhaustive]`, so fields can be added.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// What started the shutdown.
    pub trigger: TriggerReason,
    /// Whether it was forced (second signal, `force()`, or `force_after`).
    pub forced: bool,
    /// Whether all in-flight work finished within the grace period.
    pub drained: bool,
    /// Work in flight when the shutdown was triggered.
    pub in_flight_at_trigger: u64,
    /// Work still in flight when draining ended (0 if it drained); this work was
    /// abandoned.
    pub in_flight_at_deadline: u64,
    /// Names of tracked tasks ([`Shutdown::spawn`](crate::Shutdown::spawn)) still
    /// running when draining ended, sorted.
    pub abandoned_tasks: Vec<String>,
    /// From the trigger to the end of draining (all work done, grace period over,
    /// or forced).
    pub drain_time: Duration,
    /// From the trigger to the end of the shutdown.
    pub total_time: Duration,
    /// The stop hooks, in the order they ran (reverse registration order).
    pub hooks: Vec<HookReport>,
}

impl ShutdownReport {
    /// Clean: not forced, everything drained in time, and every hook returned `Ok`.
    pub fn is_clean(&self) -> bool {
        !self.forced && self.drained && self.hooks.iter().all(|h| h.outcome == HookOutcome::Ok)
    }

    /// The stop hooks that overran their time limit and were cut off, in the order
    /// they ran: each names the component, its limit and how long it ran.
    pub fn overran(&self) -> impl Iterator<Item = &HookReport> {
        self.hooks.iter().filter(|h| h.overran())
    }

    /// The final phase: `Forced` or `Stopped`.
    pub fn phase(&self) -> Phase {
        if self.forced {
            Phase::Forced
        } else {
            Phase::Stopped
        }
    }
}

impl fmt::Display for ShutdownReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "shutdown by {} {} in {:?}: ",
            self.trigger,
            if self.is_clean() {
                "clean"
            } else if self.forced {
                "forced"
            } else {
                "unclean"
            },
            self.total_time
        )?;
        write!(
            f,
            "{} in flight at trigger, {} abandoned after {:?}",
            self.in_flight_at_trigger, self.in_flight_at_deadline, self.drain_time
        )?;
        for h in &self.hooks {
            if h.overran() {
                write!(
                    f,
                    "; hook {}: overran its {:?} limit, cut off after {:?}",
                    h.name, h.timeout, h.elapsed
                )?;
            } else {
                write!(f, "; hook {}: {:?}", h.name, h.outcome)?;
            }
        }
        Ok(())
    }
}
