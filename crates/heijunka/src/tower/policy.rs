//! The whole policy as one layer.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use heijunka_core::Rejection;
use heijunka_shutdown::ShutdownToken;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower::{Layer, Service};

use crate::context::{Outcome, RequestContext, TraceId};
use crate::policy::{Admission, Policy};
use crate::tower::body::{AdmissionGuard, Guard};
use crate::tower::{BoxError, Rejected, ResponseBody, Stage};

/// Runs every request through a [`Policy`]: its stages admit or refuse the request
/// at once (deadline, rate limit, load shed, concurrency limit, breaker, in the
/// policy's order), the inner service runs under the admission's deadline (the
/// earlier of the request's 30 s default and the policy's timeout), and the
/// admission (its concurrency permit and breaker probe) is held until the
/// response body has finished streaming. The breaker records a failure for a
/// `5xx` status, an inner error, a failed body or a time-out (a time-out is also a
/// drop for an adaptive limit), a success for a body streamed to its end, and
/// nothing for a body dropped mid-stream (the client went away).
///
/// Each request gets a [`RequestContext`], put in the request's extensions for the
/// handler (axum: `Extension<RequestContext>`); its trace id is taken from a W3C
/// `traceparent` header when one is present. With [`shutdown`](Self::shutdown),
/// contexts are cancelled when shutdown begins, and new requests are refused with
/// [`Rejection::ShuttingDown`].
///
/// A refusal is a [`Rejected`] (its stage and reason); a time-out is a `Rejected`
/// with [`Stage::Deadline`] and [`Rejection::TimedOut`]. An admitted request's
/// context is [`complete`](RequestContext::complete)d (one `tracing` event) when
/// its body ends, it fails or it times out. The layer does not stop a running
/// handler when its context is cancelled (a graceful shutdown lets in-flight work
/// finish); handlers that want to stop early watch `ctx.token()`.
///
/// ```
/// use heijunka::backpressure::ConcurrencyLimit;
/// use heijunka::core::Rejection;
/// use heijunka::policy::Policy;
/// use heijunka::tower::{PolicyLayer, Rejected, Stage};
/// use std::time::Duration;
/// use tower::{Layer, Service, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let policy = Policy::builder()
///     .timeout(Duration::from_millis(100))
///     .concurrency_limit(ConcurrencyLimit::new(8)?)
///     .build()?;
/// let mut svc = PolicyLayer::new(policy).layer(service_fn(|req: http::Request<String>| async move {
///     if req.uri().path() == "/slow" {
///         tokio::time::sleep(Duration::from_secs(1)).await;
///     }
///     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
/// }));
///
/// let fast = svc.ready().await?.call(http::Request::new(String::new())).await?;
/// assert_eq!(fast.status(), 200);
///
/// let slow = http::Request::get("/slow").body(String::new())?;
/// let err = svc.ready().await?.call(slow).await.unwrap_err();
/// let rejected = err.downcast_ref::<Rejected>().unwrap();
/// assert_eq!(rejected.stage(), Stage::Deadline);
/// assert!(matches!(rejected.reason(), Rejection::TimedOut { .. }));
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct PolicyLayer {
    policy: Policy,
    shutdown: Option<ShutdownToken>,
}

impl PolicyLayer {
    /// A layer running requests through `policy` (shared by every service made).
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            shutdown: None,
        }
    }

    /// Links each request's cancellation to `shutdown`: once it begins, requests
    /// in flight see their context cancelled and new ones are refused with
    /// [`Rejection::ShuttingDown`].
    ///
    /// ```
    /// use heijunka::policy::Policy;
    /// use heijunka::shutdown::Shutdown;
    /// use heijunka::tower::PolicyLayer;
    ///
    /// let shutdown = Shutdown::new();
    /// let layer = PolicyLayer::new(Policy::builder().build()?).shutdown(shutdown.token());
    /// # Ok::<(), heijunka::core::ConfigError>(())
    /// ```
    pub fn shutdown(mut self, token: ShutdownToken) -> Self {
        self.shutdown = Some(token);
        self
    }

    /// The policy.
    ///
    /// ```
    /// use heijunka::policy::Policy;
    /// use heijunka::tower::PolicyLayer;
    /// use std::time::Duration;
    ///
    /// let layer = PolicyLayer::new(Policy::builder().timeout(Duration::from_secs(1)).build()?);
    /// assert_eq!(layer.policy().timeout(), Some(Duration::from_secs(1)));
    /// # Ok::<(), heijunka::core::ConfigError>(())
    /// ```
    pub fn policy(&self) -> &Policy {
        &self.policy
    }
}

impl<S> Layer<S> for PolicyLayer {
    type Service = PolicyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PolicyService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`PolicyLayer`] makes.
///
/// ```
/// use heijunka::policy::Policy;
/// use heijunka::tower::{PolicyLayer, PolicyService};
/// use tower::{Layer, service_fn};
///
/// let svc: PolicyService<_> = PolicyLayer::new(Policy::builder().build()?)
///     .layer(service_fn(|_: http::Request<String>| async {
///         Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
///     }));
/// # Ok::<(), heijunka::core::ConfigError>(())
/// ```
#[derive(Clone, Debug)]
pub struct PolicyService<S> {
    inner: S,
    layer: PolicyLayer,
}

impl<S> PolicyService<S> {
    fn context<ReqB>(&self, req: &Request<ReqB>) -> RequestContext {
        let mut builder = RequestContext::builder();
        if let Some(id) = req
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split('-').nth(1))
            .and_then(|id| TraceId::parse(id).ok())
        {
            builder = builder.trace_id(id);
        }
        if let Some(token) = &self.layer.shutdown {
            builder = builder.shutdown(token);
        }
        builder.build()
    }
}

impl<S, ReqB, B> Service<Request<ReqB>> for PolicyService<S>
where
    S: Service<Request<ReqB>, Response = Response<B>>,
    B: http_body::Body,
    S::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<B>>;
    type Error = BoxError;
    type Future = PolicyFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let ctx = self.context(&req);
        match self.layer.policy.try_admit(&ctx) {
            Ok(admission) => {
                let deadline = admission.deadline();
                req.extensions_mut().insert(ctx.clone());
                PolicyFuture {
                    future: Some(self.inner.call(req)),
                    sleep: Some(tokio::time::sleep_until(deadline)),
                    admitted: Some((admission, ctx)),
                    rejected: None,
                }
            }
            Err(e) => PolicyFuture::rejected(Rejected::new(
                e.stage().unwrap_or(Stage::Deadline),
                e.rejection().unwrap_or(Rejection::ShuttingDown),
            )),
        }
    }
}

pin_project! {
    /// The future of [`PolicyService`]: the inner call under the admission's
    /// deadline, holding the admission; the response comes back with its body
    /// wrapped in a [`ResponseBody`] that holds the admission on.
    ///
    /// ```
    /// use heijunka::policy::Policy;
    /// use heijunka::tower::{PolicyFuture, PolicyLayer};
    /// use tower::{Layer, Service, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let mut svc = PolicyLayer::new(Policy::builder().build()?)
    ///     .layer(service_fn(|_: http::Request<()>| async {
    ///         Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
    ///     }));
    /// let future: PolicyFuture<_> = svc.call(http::Request::new(()));
    /// assert_eq!(future.await?.status(), 200);
    /// # Ok(())
    /// # }
    /// ```
    pub struct PolicyFuture<F> {
        #[pin]
        future: Option<F>,
        #[pin]
        sleep: Option<Sleep>,
        admitted: Option<(Admission, RequestContext)>,
        rejected: Option<Rejected>,
    }
}

impl<F> PolicyFuture<F> {
    fn rejected(rejected: Rejected) -> Self {
        Self {
            future: None,
            sleep: None,
            admitted: None,
            rejected: Some(rejected),
        }
    }
}

impl<F, B, E> Future for PolicyFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: http_body::Body,
    E: Into<BoxError>,
{
    type Output = Result<Response<ResponseBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let Some(future) = this.future.as_mut().as_pin_mut() else {
            return Poll::Ready(Err(this
                .rejected
                .take()
                .map_or_else(|| "polled after completion".into(), Into::into)));
        };
        if let Poll::Ready(result) = future.poll(cx) {
            this.future.set(None);
            let Some((admission, ctx)) = this.admitted.take() else {
                return Poll::Ready(Err("polled after completion".into()));
            };
            return Poll::Ready(match result {
                Ok(response) => {
                    let failed = response.status().is_server_error();
                    let mut guard = AdmissionGuard::new(admission, ctx, failed);
                    if response.body().is_end_stream() {
                        // An empty body may never be polled: it has ended already.
                        guard.end();
                    }
                    let guard = Guard::Admission(Box::new(guard));
                    Ok(response.map(|b| ResponseBody::new(b, guard)))
                }
                Err(e) => {
                    admission.failure();
                    ctx.complete(Outcome::Error);
                    Err(e.into())
                }
            });
        }
        if let Some(sleep) = this.sleep.as_mut().as_pin_mut() {
            ready!(sleep.poll(cx));
            this.future.set(None);
            let after = match this.admitted.take() {
                Some((admission, ctx)) => {
                    let after = admission.elapsed();
                    admission.timed_out();
                    ctx.complete(Outcome::TimedOut);
                    after
                }
                None => std::time::Duration::ZERO,
            };
            return Poll::Ready(Err(Rejected::new(
                Stage::Deadline,
                Rejection::TimedOut { after },
            )
            .into()));
        }
        Poll::Pending
    }
}

impl<F> fmt::Debug for PolicyFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyFuture")
            .field("running", &self.future.is_some())
            .field("rejected", &self.rejected)
            .finish_non_exhaustive()
    }
}
