//! [`Reply`]: the future of a dispatched message's result.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::oneshot;

use super::HandlerError;

pub(super) type ReplySender<Resp, Err> = oneshot::Sender<Result<Resp, HandlerError<Err>>>;

/// The result of a dispatched message: resolves to the handler's reply, or to a
/// [`HandlerError`] (failed, panicked, abandoned by shutdown).
///
/// # Cancel safety
///
/// Dropping it does not cancel the message; the handler runs and its reply is
/// discarded.
#[must_use = "a reply does nothing unless awaited (the message runs either way)"]
pub struct Reply<Resp, Err> {
    pub(super) rx: oneshot::Receiver<Result<Resp, HandlerError<Err>>>,
}

impl<Resp, Err> Future for Reply<Resp, Err> {
    type Output = Result<Resp, HandlerError<Err>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // A dropped sender means the worker went away with the message (the
        // runtime shut down): the message was abandoned.
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(HandlerError::Abandoned)))
    }
}

impl<Resp, Err> fmt::Debug for Reply<Resp, Err> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reply").finish_non_exhaustive()
    }
}
