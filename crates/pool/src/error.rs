//! Errors of the pools.

use std::fmt;

use heijunka_core::Rejection;

/// How a task failed to produce its value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TaskError {
    /// The task panicked; the panic message where it was a string.
    #[error("task panicked: {0}")]
    Panicked(String),
    /// The task never ran, or was stopped, because the pool shut down.
    #[error("task cancelled: the pool shut down before it finished")]
    Cancelled,
}

/// A task was not accepted; the task comes back unrun
/// ([`into_inner`](Rejected::into_inner)) with the reason.
pub struct Rejected<F> {
    pub(crate) task: F,
    pub(crate) reason: Rejection,
}

impl<F> Rejected<F> {
    /// The task that was not accepted.
    pub fn into_inner(self) -> F {
        self.task
    }

    /// Why: [`Rejection::QueueFull`] (the pool's queue is full),
    /// [`Rejection::TimedOut`] (a timed submit gave up) or
    /// [`Rejection::ShuttingDown`].
    pub fn reason(&self) -> Rejection {
        self.reason
    }
}

impl<F> fmt::Debug for Rejected<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rejected")
            .field("reason", &self.reason)
            .finish_non_exhaustive()
    }
}

impl<F> fmt::Display for Rejected<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "task rejected: {}", self.reason)
    }
}

impl<F> std::error::Error for Rejected<F> {}

/// Why a [`TaskPool`](crate::TaskPool) did not take a future; the future comes
/// back unpolled ([`into_inner`](SpawnError::into_inner)).
#[non_exhaustive]
pub enum SpawnError<F> {
    /// Not accepted: the waiting queue is full, or the pool shuts down.
    Rejected(Rejected<F>),
    /// Called outside a tokio runtime: there is nothing to run the task on.
    /// Nothing was taken from the pool.
    NoRuntime(F),
}

impl<F> SpawnError<F> {
    /// The future that was not taken.
    pub fn into_inner(self) -> F {
        match self {
            Self::Rejected(r) => r.task,
            Self::NoRuntime(f) => f,
        }
    }

    /// Why it was rejected: [`Rejection::QueueFull`] or
    /// [`Rejection::ShuttingDown`]; `None` for [`SpawnError::NoRuntime`].
    pub fn reason(&self) -> Option<Rejection> {
        match self {
            Self::Rejected(r) => Some(r.reason),
            Self::NoRuntime(_) => None,
        }
    }
}

impl<F> From<Rejected<F>> for SpawnError<F> {
    fn from(r: Rejected<F>) -> Self {
        Self::Rejected(r)
    }
}

impl<F> fmt::Debug for SpawnError<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rejected(r) => f.debug_tuple("Rejected").field(r).finish(),
            Self::NoRuntime(_) => f.write_str("NoRuntime(..)"),
        }
    }
}

impl<F> fmt::Display for SpawnError<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rejected(r) => fmt::Display::fmt(r, f),
            Self::NoRuntime(_) => f.write_str(
                "task not spawned: no tokio runtime here (spawn within one, e.g. from a task or under `Runtime::enter`)",
            ),
        }
    }
}

impl<F> std::error::Error for SpawnError<F> {}

pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_string()
    }
}
