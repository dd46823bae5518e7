//! Errors: work refused because shutdown has begun.

use std::fmt;

use heijunka_core::Rejection;

/// Refused because shutdown has begun: returned by
/// [`Shutdown::try_enter`](crate::Shutdown::try_enter) and when registering a stop
/// hook too late.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", Rejection::ShuttingDown)]
pub struct ShuttingDown;

impl ShuttingDown {
    /// The shared rejection reason, [`Rejection::ShuttingDown`].
    pub fn reason(&self) -> Rejection {
        Rejection::ShuttingDown
    }
}

/// A tracked spawn was refused because shutdown has begun; the future is handed back
/// unpolled ([`into_inner`](SpawnError::into_inner)).
pub struct SpawnError<F> {
    pub(crate) future: F,
}

impl<F> SpawnError<F> {
    /// The future that was not spawned.
    pub fn into_inner(self) -> F {
        self.future
    }

    /// The shared rejection reason, [`Rejection::ShuttingDown`].
    pub fn reason(&self) -> Rejection {
        Rejection::ShuttingDown
    }
}

impl<F> fmt::Debug for SpawnError<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpawnError").finish_non_exhaustive()
    }
}

impl<F> fmt::Display for SpawnError<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "task not spawned: {}", Rejection::ShuttingDown)
    }
}

impl<F> std::error::Error for SpawnError<F> {}
