//! A response body that holds a permit until it has streamed.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use heijunka_backpressure::OwnedPermit;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::context::{Outcome, RequestContext};
use crate::policy::Admission;

pin_project! {
    /// A response body that holds its request's concurrency permit (or policy
    /// admission) until the body has finished streaming: it lets go when the inner
    /// body reports its end, fails, or is dropped (the client went away), not when
    /// the headers were sent.
    ///
    /// Made by [`ConcurrencyLimitLayer`](crate::tower::ConcurrencyLimitLayer) and
    /// [`PolicyLayer`](crate::tower::PolicyLayer); frames, size hint and errors are
    /// the inner body's.
    ///
    /// ```
    /// use heijunka::backpressure::ConcurrencyLimit;
    /// use heijunka::tower::ConcurrencyLimitLayer;
    /// use http_body_util::BodyExt;
    /// use tower::{Layer, Service, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let limit = ConcurrencyLimit::new(1)?;
    /// let mut svc = ConcurrencyLimitLayer::new(limit.clone()).layer(service_fn(|_: ()| async {
    ///     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("hello")))
    /// }));
    /// let response = svc.ready().await?.call(()).await?;
    /// assert_eq!(limit.in_use(), 1, "headers are back, the body is not read yet");
    /// let body = response.into_body().collect().await?.to_bytes();
    /// assert_eq!(body, "hello");
    /// assert_eq!(limit.in_use(), 0, "the body has ended");
    /// # Ok(())
    /// # }
    /// ```
    pub struct ResponseBody<B> {
        #[pin]
        inner: B,
        guard: Option<Guard>,
    }
}

/// What a [`ResponseBody`] holds.
pub(crate) enum Guard {
    /// A concurrency permit: released on drop.
    Permit(#[allow(dead_code)] OwnedPermit), // held for its `Drop`
    /// A policy admission and the outcome to record when the body ends (boxed:
    /// it is large, and every move of the response would copy it).
    Admission(Box<AdmissionGuard>),
}

/// Records an admission's outcome, and completes the request's context, when
/// dropped.
pub(crate) struct AdmissionGuard {
    admission: Option<Admission>,
    ctx: RequestContext,
    failed: bool,
    /// The body reached its end (or had none).
    ended: bool,
}

impl AdmissionGuard {
    /// Holds `admission`; `failed` is the outcome known so far (a 5xx status).
    pub(crate) fn new(admission: Admission, ctx: RequestContext, failed: bool) -> Self {
        Self {
            admission: Some(admission),
            ctx,
            failed,
            ended: false,
        }
    }

    /// Marks the call failed (the body failed).
    pub(crate) fn fail(&mut self) {
        self.failed = true;
    }

    /// Marks the body ended: the response was delivered whole.
    pub(crate) fn end(&mut self) {
        self.ended = true;
    }
}

impl Drop for AdmissionGuard {
    fn drop(&mut self) {
        if let Some(admission) = self.admission.take() {
            if self.failed {
                admission.failure();
                self.ctx.complete(Outcome::Error);
            } else if self.ended {
                admission.success();
                self.ctx.complete(Outcome::Success);
            } else {
                // Dropped mid-stream (the client went away): says nothing about the
                // service's health.
                admission.ignore();
                self.ctx.complete(Outcome::Cancelled);
            }
        }
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn new(inner: B, guard: Guard) -> Self {
        Self {
            inner,
            guard: Some(guard),
        }
    }

    /// Whether the body still holds its permit (it has not ended yet).
    ///
    /// ```
    /// use heijunka::backpressure::ConcurrencyLimit;
    /// use heijunka::tower::ConcurrencyLimitLayer;
    /// use http_body_util::BodyExt;
    /// use tower::{Layer, Service, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let mut svc = ConcurrencyLimitLayer::new(ConcurrencyLimit::new(4)?).layer(service_fn(|_: ()| async {
    ///     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("hi")))
    /// }));
    /// let mut body = svc.ready().await?.call(()).await?.into_body();
    /// assert!(body.is_holding());
    /// while body.frame().await.is_some() {}
    /// assert!(!body.is_holding());
    /// # Ok(())
    /// # }
    /// ```
    pub fn is_holding(&self) -> bool {
        self.guard.is_some()
    }

    /// The inner body, letting go of the permit.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B: Body> Body for ResponseBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        match &polled {
            Poll::Ready(None) => {
                if let Some(Guard::Admission(a)) = this.guard.as_mut() {
                    a.end();
                }
                drop(this.guard.take());
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(Guard::Admission(a)) = this.guard.as_mut() {
                    a.fail();
                }
                drop(this.guard.take());
            }
            Poll::Ready(Some(Ok(_))) => {
                // A body that knows it is done (a `Full`) may never be polled again.
                if this.inner.is_end_stream() {
                    if let Some(Guard::Admission(a)) = this.guard.as_mut() {
                        a.end();
                    }
                    drop(this.guard.take());
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseBody")
            .field("holding", &self.guard.is_some())
            .finish_non_exhaustive()
    }
}
