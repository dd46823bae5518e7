//! The concurrency limit layer.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use heijunka_backpressure::{ConcurrencyLimit, OwnedPermit};
use heijunka_core::Rejection;
use http::Response;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::tower::body::{Guard, ResponseBody};
use crate::tower::{BoxError, Rejected, Stage};

/// Limits how many requests are in flight: a request that finds every permit
/// taken is refused at once with [`Rejection::AtCapacity`] (no queueing), and an
/// admitted one holds its permit until its response body has finished streaming
/// (see [`ResponseBody`]).
///
/// The layer holds the [`ConcurrencyLimit`] (an `Arc` inside), so every service it
/// makes, one per connection in hyper and axum, shares the one limit.
///
/// ```
/// use heijunka::backpressure::ConcurrencyLimit;
/// use heijunka::core::Rejection;
/// use heijunka::tower::{ConcurrencyLimitLayer, Rejected, Stage};
/// use tower::{Layer, Service, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let layer = ConcurrencyLimitLayer::new(ConcurrencyLimit::new(1)?);
/// let handler = service_fn(|_: ()| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("hello")))
/// });
/// // Two services from one layer, as two connections would get.
/// let mut a = layer.layer(handler.clone());
/// let mut b = layer.layer(handler);
///
/// let held = a.ready().await?.call(()).await?; // body not read yet
/// let err = b.ready().await?.call(()).await.unwrap_err();
/// let rejected = err.downcast_ref::<Rejected>().unwrap();
/// assert_eq!(rejected.stage(), Stage::Concurrency);
/// assert_eq!(rejected.reason(), Rejection::AtCapacity { limit: 1 });
///
/// drop(held); // the body is dropped: the permit comes back
/// assert!(b.ready().await?.call(()).await.is_ok());
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct ConcurrencyLimitLayer {
    limit: ConcurrencyLimit,
}

impl ConcurrencyLimitLayer {
    /// A layer admitting requests while `limit` has a permit free.
    pub fn new(limit: ConcurrencyLimit) -> Self {
        Self { limit }
    }

    /// The shared limit, for its live numbers.
    ///
    /// ```
    /// use heijunka::backpressure::ConcurrencyLimit;
    /// use heijunka::tower::ConcurrencyLimitLayer;
    ///
    /// let layer = ConcurrencyLimitLayer::new(ConcurrencyLimit::new(8)?);
    /// assert_eq!(layer.limit().available_permits(), 8);
    /// # Ok::<(), heijunka::core::ConfigError>(())
    /// ```
    pub fn limit(&self) -> &ConcurrencyLimit {
        &self.limit
    }
}

impl<S> Layer<S> for ConcurrencyLimitLayer {
    type Service = ConcurrencyLimited<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ConcurrencyLimited {
            inner,
            limit: self.limit.clone(),
        }
    }
}

/// The service [`ConcurrencyLimitLayer`] makes.
///
/// ```
/// use heijunka::backpressure::ConcurrencyLimit;
/// use heijunka::tower::{ConcurrencyLimitLayer, ConcurrencyLimited};
/// use tower::{Layer, service_fn};
///
/// let svc: ConcurrencyLimited<_> = ConcurrencyLimitLayer::new(ConcurrencyLimit::new(8)?)
///     .layer(service_fn(|_: ()| async {
///         Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
///     }));
/// # Ok::<(), heijunka::core::ConfigError>(())
/// ```
#[derive(Clone, Debug)]
pub struct ConcurrencyLimited<S> {
    inner: S,
    limit: ConcurrencyLimit,
}

impl<S, Req, B> Service<Req> for ConcurrencyLimited<S>
where
    S: Service<Req, Response = Response<B>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<B>>;
    type Error = BoxError;
    type Future = GuardedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match self.limit.try_acquire_owned() {
            Ok(permit) => GuardedFuture::called(self.inner.call(req), permit),
            Err(e) => {
                let reason = e.reason().unwrap_or(Rejection::AtCapacity {
                    limit: u64::from(self.limit.limit()),
                });
                GuardedFuture::rejected(Rejected::by_layer(
                    "concurrency_limit",
                    Stage::Concurrency,
                    reason,
                ))
            }
        }
    }
}

pin_project! {
    /// The future of [`ConcurrencyLimited`]: the inner call, holding its permit;
    /// the response comes back with its body wrapped in a [`ResponseBody`] that
    /// holds the permit on.
    ///
    /// # Cancel safety
    ///
    /// Dropping it before it completes drops the inner call and gives the permit
    /// back at once; a refused call holds nothing. Once it has returned a
    /// response, the permit lives in the response's body.
    ///
    /// ```
    /// use heijunka::backpressure::ConcurrencyLimit;
    /// use heijunka::tower::{ConcurrencyLimitLayer, GuardedFuture};
    /// use tower::{Layer, Service, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let mut svc = ConcurrencyLimitLayer::new(ConcurrencyLimit::new(8)?).layer(service_fn(|_: ()| async {
    ///     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
    /// }));
    /// let future: GuardedFuture<_> = svc.call(());
    /// assert_eq!(future.await?.status(), 200);
    /// # Ok(())
    /// # }
    /// ```
    pub struct GuardedFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    /// One enum rather than three `Option`s: the future is smaller (less to copy
    /// on every move) and a poll checks one discriminant and one `Option`.
    #[project = StateProj]
    enum State<F> {
        /// Admitted: the inner call and the permit its response body takes on;
        /// `None` once the output was returned (the call is not polled again).
        Running {
            #[pin]
            future: F,
            permit: Option<OwnedPermit>,
        },
        /// Refused at `call`: nothing held; the refusal is the output (`None`
        /// once returned).
        Rejected { rejected: Option<Rejected> },
    }
}

impl<F> GuardedFuture<F> {
    fn called(future: F, permit: OwnedPermit) -> Self {
        Self {
            state: State::Running {
                future,
                permit: Some(permit),
            },
        }
    }

    fn rejected(rejected: Rejected) -> Self {
        Self {
            state: State::Rejected {
                rejected: Some(rejected),
            },
        }
    }
}

impl<F, B, E> Future for GuardedFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<ResponseBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Running { future, permit } => {
                if permit.is_none() {
                    return Poll::Ready(Err("polled after completion".into()));
                }
                let result = ready!(future.poll(cx));
                // An error drops the permit here; a response's body takes it on.
                let permit = permit.take();
                Poll::Ready(match (result, permit) {
                    (Ok(response), Some(permit)) => {
                        Ok(response.map(|b| ResponseBody::new(b, Guard::Permit(permit))))
                    }
                    (Ok(_), None) => Err("polled after completion".into()),
                    (Err(e), _) => Err(e.into()),
                })
            }
            StateProj::Rejected { rejected } => Poll::Ready(Err(rejected
                .take()
                .map_or_else(|| "polled after completion".into(), Into::into))),
        }
    }
}

impl<F> fmt::Debug for GuardedFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("GuardedFuture");
        match &self.state {
            State::Running { permit, .. } => d.field("running", &permit.is_some()),
            State::Rejected { rejected } => d.field("running", &false).field("rejected", rejected),
        };
        d.finish_non_exhaustive()
    }
}
