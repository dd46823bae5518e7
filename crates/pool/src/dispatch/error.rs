//! Errors of the dispatcher: [`DispatchError`], [`HandlerError`], [`RegisterError`].

use std::fmt;

use heijunka_core::Rejection;

/// A message was not accepted; the request comes back unrun
/// ([`into_inner`](Self::into_inner)).
#[non_exhaustive]
pub enum DispatchError<Req> {
    /// The chosen worker's queue ([`Rejection::QueueFull`]) or the global bound
    /// ([`Rejection::AtCapacity`]) is full.
    Rejected {
        /// The request, unrun.
        request: Req,
        /// Which bound was full.
        reason: Rejection,
    },
    /// No handler is registered under `name`.
    UnknownHandler {
        /// The name asked for.
        name: String,
        /// The request, unrun.
        request: Req,
    },
    /// The dispatcher is shutting down or shut down.
    Closed {
        /// The request, unrun.
        request: Req,
    },
}

impl<Req> DispatchError<Req> {
    /// The request that was not accepted.
    pub fn into_inner(self) -> Req {
        match self {
            Self::Rejected { request, .. }
            | Self::UnknownHandler { request, .. }
            | Self::Closed { request } => request,
        }
    }

    /// The shared rejection reason: the full bound, or
    /// [`Rejection::ShuttingDown`] when closed; `None` for an unknown handler
    /// (not a matter of load).
    pub fn reason(&self) -> Option<Rejection> {
        match self {
            Self::Rejected { reason, .. } => Some(*reason),
            Self::Closed { .. } => Some(Rejection::ShuttingDown),
            Self::UnknownHandler { .. } => None,
        }
    }
}

impl<Req> fmt::Debug for DispatchError<Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rejected { reason, .. } => f
                .debug_struct("Rejected")
                .field("reason", reason)
                .finish_non_exhaustive(),
            Self::UnknownHandler { name, .. } => f
                .debug_struct("UnknownHandler")
                .field("name", name)
                .finish_non_exhaustive(),
            Self::Closed { .. } => f.debug_struct("Closed").finish_non_exhaustive(),
        }
    }
}

impl<Req> fmt::Display for DispatchError<Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rejected { reason, .. } => write!(f, "message rejected: {reason}"),
            Self::UnknownHandler { name, .. } => {
                write!(f, "no handler is registered under {name:?}")
            }
            Self::Closed { .. } => f.write_str("the dispatcher is shut down"),
        }
    }
}

impl<Req> std::error::Error for DispatchError<Req> {}

/// Why a dispatched message produced no reply value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandlerError<Err> {
    /// The handler returned this error.
    #[error("handler failed: {0}")]
    Failed(Err),
    /// The handler panicked (the panic was isolated to this message); the panic
    /// message where it was a string.
    #[error("handler panicked: {message}")]
    Panicked {
        /// The panic message.
        message: String,
    },
    /// The dispatcher shut down before the message ran, or stopped it at the end
    /// of the grace period.
    #[error("message abandoned: the dispatcher shut down before it finished")]
    Abandoned,
}

/// A handler could not be registered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegisterError {
    /// Handler names must not be empty.
    #[error("handler name must not be empty")]
    EmptyName,
    /// A handler is already registered under this name;
    /// [`replace`](crate::Dispatcher::replace) swaps it.
    #[error("a handler is already registered under {name:?}; use replace to swap it")]
    Duplicate {
        /// The name.
        name: String,
    },
    /// The dispatcher is shutting down or shut down.
    #[error("the dispatcher is shut down")]
    Closed,
}
