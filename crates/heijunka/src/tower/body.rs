//! A response body that holds a permit until it has streamed.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use heijunka_backpressure::OwnedPermit;
use heijunka_core::Rejection;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use crate::context::{Outcome, RequestContext};
use crate::policy::{Admission, Classification};
use crate::tower::classify::SharedClassifier;
use crate::tower::{BoxError, Rejected, Stage};

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
        // The body's deadline passed: it ended with an error and ends now.
        timed_out: bool,
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

/// When the body must be done, for [`AdmissionGuard`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct BodyDeadline {
    /// The whole body must have ended by then.
    pub(crate) total: Instant,
    /// At most this long between two frames.
    pub(crate) idle: Option<Duration>,
    /// What passing it does.
    pub(crate) on_expiry: OnExpiry,
}

/// What a [`BodyDeadline`] that passes does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OnExpiry {
    /// Ends the body with a time-out error; the outcome is a time-out
    /// ([`PolicyLayer`](crate::tower::PolicyLayer)).
    Cut,
    /// Stops waiting for the outcome: the admission is let go with nothing
    /// recorded and the body streams on unguarded (the breaker layer waiting for
    /// trailers of a long stream).
    Release,
}

/// Records an admission's outcome, and completes the request's context, when
/// dropped.
pub(crate) struct AdmissionGuard {
    admission: Option<Admission>,
    ctx: Option<RequestContext>,
    classifier: SharedClassifier,
    /// The outcome known so far: from the headers, the trailers or an error;
    /// `None` while the classifier waits for the end of the body.
    verdict: Option<Classification>,
    /// The body reached its end (or had none).
    ended: bool,
    /// The body ran past its deadline.
    timed_out: bool,
    deadline: Option<BodyDeadline>,
    /// Made when the body first waits (a body that never waits needs no timer).
    timer: Option<Pin<Box<Sleep>>>,
}

impl AdmissionGuard {
    /// Holds `admission`; `verdict` is what the classifier said at the headers.
    pub(crate) fn new(
        admission: Admission,
        ctx: Option<RequestContext>,
        classifier: SharedClassifier,
        verdict: Option<Classification>,
        deadline: Option<BodyDeadline>,
    ) -> Self {
        Self {
            admission: Some(admission),
            ctx,
            classifier,
            verdict,
            ended: false,
            timed_out: false,
            deadline,
            timer: None,
        }
    }

    /// The body failed with `error`.
    fn fail(&mut self, error: &(dyn std::error::Error + 'static)) {
        self.verdict = Some(match self.classifier.classify_error(error) {
            // A body that failed did not deliver the response: never a success.
            Classification::Success => Classification::Ignore,
            other => other,
        });
    }

    /// The body delivered its trailers.
    fn trailers(&mut self, trailers: &http::HeaderMap) {
        if self.verdict.is_none() {
            self.verdict = Some(self.classifier.classify_end(Some(trailers)));
        }
    }

    /// Marks the body ended: the response was delivered whole.
    pub(crate) fn end(&mut self) {
        if self.verdict.is_none() {
            self.verdict = Some(self.classifier.classify_end(None));
        }
        self.ended = true;
    }

    /// Runs `f` with the request's context as the current one.
    fn enter<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.ctx {
            Some(ctx) => ctx.enter(f),
            None => f(),
        }
    }

    /// Polls the body's deadline: `Ready` once it has passed. Makes the timer on
    /// the first call.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(deadline) = self.deadline else {
            return Poll::Pending;
        };
        let timer = self.timer.get_or_insert_with(|| {
            let at = deadline
                .idle
                .and_then(|idle| Instant::now().checked_add(idle))
                .map_or(deadline.total, |t| t.min(deadline.total));
            Box::pin(tokio::time::sleep_until(at))
        });
        timer.as_mut().poll(cx)
    }

    fn on_expiry(&self) -> OnExpiry {
        self.deadline.map_or(OnExpiry::Cut, |d| d.on_expiry)
    }

    /// Lets the admission go with nothing recorded (and the context completed
    /// as a success: the response was delivered, its outcome unknown).
    fn release(&mut self) {
        if let Some(admission) = self.admission.take() {
            admission.ignore();
            if let Some(ctx) = &self.ctx {
                ctx.complete(Outcome::Success);
            }
        }
    }

    /// A frame arrived: the idle deadline starts again.
    fn frame(&mut self) {
        if let (Some(deadline), Some(timer)) = (self.deadline, self.timer.as_mut())
            && let Some(idle) = deadline.idle
        {
            let at = Instant::now()
                .checked_add(idle)
                .map_or(deadline.total, |t| t.min(deadline.total));
            timer.as_mut().reset(at);
        }
    }
}

impl Drop for AdmissionGuard {
    fn drop(&mut self) {
        let Some(admission) = self.admission.take() else {
            return;
        };
        let outcome = if self.timed_out {
            admission.body_timed_out();
            Outcome::TimedOut
        } else {
            match (self.verdict, self.ended) {
                (Some(Classification::Failure), _) => {
                    admission.failure();
                    Outcome::Error
                }
                (Some(Classification::Success), true) => {
                    admission.success();
                    Outcome::Success
                }
                (Some(Classification::Ignore), true) => {
                    admission.ignore();
                    Outcome::Success
                }
                // Dropped mid-stream (the client went away): says nothing about
                // the service's health.
                _ => {
                    admission.ignore();
                    Outcome::Cancelled
                }
            }
        };
        if let Some(ctx) = &self.ctx {
            ctx.complete(outcome);
        }
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn new(inner: B, guard: Guard) -> Self {
        Self {
            inner,
            guard: Some(guard),
            timed_out: false,
        }
    }

    /// A body holding nothing (a route exempt from the policy).
    pub(crate) fn unguarded(inner: B) -> Self {
        Self {
            inner,
            guard: None,
            timed_out: false,
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

impl<B> Body for ResponseBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let Some(Guard::Admission(guard)) = this.guard.as_mut() else {
            // A plain permit (or nothing left to hold): the inner body as it is.
            if *this.timed_out {
                return Poll::Ready(None);
            }
            let polled = this.inner.as_mut().poll_frame(cx);
            if matches!(polled, Poll::Ready(None | Some(Err(_))))
                || (matches!(polled, Poll::Ready(Some(Ok(_)))) && this.inner.is_end_stream())
            {
                // Ended, failed, or known to be done (a `Full` may never be polled
                // again): let go of the permit.
                drop(this.guard.take());
            }
            return polled.map(|f| f.map(|r| r.map_err(Into::into)));
        };
        let inner = this.inner.as_mut();
        let polled = guard.enter(|| inner.poll_frame(cx));
        let expired = match &polled {
            Poll::Ready(None) => {
                guard.end();
                drop(this.guard.take());
                return Poll::Ready(None);
            }
            Poll::Ready(Some(Err(_))) => false,
            Poll::Ready(Some(Ok(frame))) => {
                let trailers = frame.trailers_ref();
                if let Some(trailers) = trailers {
                    guard.trailers(trailers);
                }
                if trailers.is_some() || this.inner.is_end_stream() {
                    // Trailers are the last frame (whatever the body says of its
                    // end), and a body that knows it is done (a `Full`) may never
                    // be polled again: the response was delivered whole, even
                    // past the deadline.
                    guard.end();
                    drop(this.guard.take());
                    return polled.map(|f| f.map(|r| r.map_err(Into::into)));
                }
                // More to come: the deadline holds for a body that always has a
                // frame ready too (a slow reader polls it only when it has room).
                let expired = guard.poll_deadline(cx).is_ready();
                guard.frame();
                expired
            }
            Poll::Pending => guard.poll_deadline(cx).is_ready(),
        };
        if let Poll::Ready(Some(Err(e))) = polled {
            let e: BoxError = e.into();
            guard.fail(&*e);
            drop(this.guard.take());
            return Poll::Ready(Some(Err(e)));
        }
        if expired {
            if guard.on_expiry() == OnExpiry::Release {
                // Stop waiting for the outcome; the body goes on.
                guard.release();
                drop(this.guard.take());
                return polled.map(|f| f.map(|r| r.map_err(Into::into)));
            }
            guard.timed_out = true;
            let after = guard
                .admission
                .as_ref()
                .map_or(Duration::ZERO, Admission::elapsed);
            drop(this.guard.take());
            *this.timed_out = true;
            return Poll::Ready(Some(Err(Box::new(Rejected::new(
                Stage::Deadline,
                Rejection::TimedOut { after },
            )))));
        }
        polled.map(|f| f.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.timed_out || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.timed_out {
            return SizeHint::with_exact(0);
        }
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
