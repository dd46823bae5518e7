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

pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_string()
    }
}
