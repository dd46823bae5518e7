//! The circuit breaker layer.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use std::sync::Arc;
use std::time::Duration;

use heijunka_breaker::{CircuitBreaker, OwnedPermit};
use http::Response;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::context::DEFAULT_REQUEST_TIMEOUT;
use crate::policy::Admission;
use crate::tower::body::{AdmissionGuard, BodyDeadline, Guard, OnExpiry};
use crate::tower::classify::{Classify, SharedClassifier, default_classifier};
use crate::tower::policy::later;
use crate::tower::{BoxError, Rejected, ResponseBody, Stage};

/// Guards a service with a [`CircuitBreaker`]: each request takes a breaker permit
/// (refused with [`CircuitOpen`](heijunka_core::Rejection::CircuitOpen) and the
/// time to the next probe while the breaker is open), and its outcome is recorded
/// as the [classifier](Self::classifier) says: by default when the response
/// headers arrive, a `5xx` status or an error from the inner service a failure,
/// anything else a success. A classifier that waits for the trailers (as
/// [`GrpcClassifier`](crate::tower::GrpcClassifier) does for a status not in the
/// headers) keeps the permit in the response body until it ends. A call
/// cancelled before it answers (the request future dropped) records per the
/// breaker's [`PermitDrop`](heijunka_breaker::PermitDrop) rule.
///
/// Put it around the client of one dependency (or around a route that needs only
/// that dependency); the layer shares its breaker with every service it makes.
///
/// ```
/// use heijunka::breaker::{CircuitBreaker, SlidingWindowType, State};
/// use heijunka::core::Rejection;
/// use heijunka::tower::{BreakerLayer, Rejected};
/// use tower::{Layer, Service, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let breaker = CircuitBreaker::builder()
///     .sliding_window(SlidingWindowType::CountBased, 4)
///     .minimum_number_of_calls(4)
///     .build()?;
/// let mut svc = BreakerLayer::new(breaker.clone()).layer(service_fn(|_: ()| async {
///     let mut failing = http::Response::new(String::new());
///     *failing.status_mut() = http::StatusCode::BAD_GATEWAY;
///     Ok::<_, std::convert::Infallible>(failing)
/// }));
/// for _ in 0..4 {
///     assert_eq!(svc.ready().await?.call(()).await?.status(), 502);
/// }
/// assert_eq!(breaker.state(), State::Open);
/// let err = svc.ready().await?.call(()).await.unwrap_err();
/// let rejected = err.downcast_ref::<Rejected>().unwrap();
/// assert!(matches!(rejected.reason(), Rejection::CircuitOpen { .. }));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct BreakerLayer {
    breaker: CircuitBreaker,
    classifier: SharedClassifier,
    verdict_timeout: Duration,
}

impl fmt::Debug for BreakerLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerLayer")
            .field("breaker", &self.breaker)
            .field("verdict_timeout", &self.verdict_timeout)
            .finish_non_exhaustive()
    }
}

impl BreakerLayer {
    /// A layer guarding services with `breaker`.
    pub fn new(breaker: CircuitBreaker) -> Self {
        Self {
            breaker,
            classifier: default_classifier(),
            verdict_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }

    /// How long a response whose outcome waits for its trailers may hold the
    /// breaker's permit (a half-open probe slot, while the breaker probes)
    /// before the layer stops waiting: the permit is then let go with nothing
    /// recorded and the body streams on. Default 30 s
    /// ([`DEFAULT_REQUEST_TIMEOUT`]). A long gRPC stream thus never keeps a
    /// half-open breaker from probing.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`](heijunka_core::ConfigError) naming `verdict_timeout` for
    /// zero.
    ///
    /// ```
    /// use heijunka::breaker::CircuitBreaker;
    /// use heijunka::tower::{BreakerLayer, GrpcClassifier};
    /// use std::time::Duration;
    ///
    /// let layer = BreakerLayer::new(CircuitBreaker::builder().name("orders").build()?)
    ///     .classifier(GrpcClassifier::new())
    ///     .verdict_timeout(Duration::from_secs(5))?;
    /// # Ok::<(), heijunka::core::ConfigError>(())
    /// ```
    pub fn verdict_timeout(
        mut self,
        timeout: Duration,
    ) -> Result<Self, heijunka_core::ConfigError> {
        heijunka_core::validate::non_zero_duration("verdict_timeout", timeout)?;
        self.verdict_timeout = timeout;
        Ok(self)
    }

    /// Decides how responses and errors count (default
    /// [`HttpClassifier`](crate::tower::HttpClassifier)).
    ///
    /// ```
    /// use heijunka::breaker::CircuitBreaker;
    /// use heijunka::tower::{BreakerLayer, GrpcClassifier};
    ///
    /// let layer = BreakerLayer::new(CircuitBreaker::builder().name("orders").build()?)
    ///     .classifier(GrpcClassifier::new());
    /// # Ok::<(), heijunka::core::ConfigError>(())
    /// ```
    pub fn classifier(mut self, classifier: impl Classify) -> Self {
        self.classifier = Arc::new(classifier);
        self
    }

    /// The shared breaker, for its state and stats.
    ///
    /// ```
    /// use heijunka::breaker::{CircuitBreaker, State};
    /// use heijunka::tower::BreakerLayer;
    ///
    /// let layer = BreakerLayer::new(CircuitBreaker::builder().name("db").build()?);
    /// assert_eq!(layer.breaker().state(), State::Closed);
    /// # Ok::<(), heijunka::core::ConfigError>(())
    /// ```
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }
}

impl<S> Layer<S> for BreakerLayer {
    type Service = Breaker<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Breaker {
            inner,
            breaker: self.breaker.clone(),
            classifier: Arc::clone(&self.classifier),
            verdict_timeout: self.verdict_timeout,
        }
    }
}

/// The service [`BreakerLayer`] makes.
///
/// ```
/// use heijunka::breaker::CircuitBreaker;
/// use heijunka::tower::{Breaker, BreakerLayer};
/// use tower::{Layer, service_fn};
///
/// let svc: Breaker<_> = BreakerLayer::new(CircuitBreaker::builder().build()?)
///     .layer(service_fn(|_: ()| async {
///         Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
///     }));
/// # Ok::<(), heijunka::core::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct Breaker<S> {
    inner: S,
    breaker: CircuitBreaker,
    classifier: SharedClassifier,
    verdict_timeout: Duration,
}

impl<S: fmt::Debug> fmt::Debug for Breaker<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breaker")
            .field("inner", &self.inner)
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

impl<S, Req, B> Service<Req> for Breaker<S>
where
    S: Service<Req, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: http_body::Body,
{
    type Response = Response<ResponseBody<B>>;
    type Error = BoxError;
    type Future = BreakerFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match self.breaker.try_acquire_owned() {
            Ok(permit) => BreakerFuture {
                future: Some(self.inner.call(req)),
                permit: Some(permit),
                classifier: Some(Arc::clone(&self.classifier)),
                verdict_timeout: self.verdict_timeout,
                rejected: None,
            },
            Err(e) => BreakerFuture {
                future: None,
                permit: None,
                classifier: None,
                verdict_timeout: self.verdict_timeout,
                rejected: Some(Rejected::by_layer("breaker", Stage::Breaker, e.reason())),
            },
        }
    }
}

pin_project! {
    /// The future of [`Breaker`]: the refusal, or the inner call whose outcome it
    /// records when it answers.
    ///
    /// ```
    /// use heijunka::breaker::CircuitBreaker;
    /// use heijunka::tower::{BreakerFuture, BreakerLayer};
    /// use tower::{Layer, Service, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let mut svc = BreakerLayer::new(CircuitBreaker::builder().build()?)
    ///     .layer(service_fn(|_: ()| async {
    ///         Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
    ///     }));
    /// let future: BreakerFuture<_> = svc.call(());
    /// assert_eq!(future.await?.status(), 200);
    /// # Ok(())
    /// # }
    /// ```
    pub struct BreakerFuture<F> {
        #[pin]
        future: Option<F>,
        permit: Option<OwnedPermit>,
        classifier: Option<SharedClassifier>,
        verdict_timeout: Duration,
        rejected: Option<Rejected>,
    }
}

impl<F, B, E> Future for BreakerFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: http_body::Body,
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
        let result = std::task::ready!(future.poll(cx));
        // Fused: a later poll answers "polled after completion".
        this.future.set(None);
        let (Some(permit), Some(classifier)) = (this.permit.take(), this.classifier.take()) else {
            return Poll::Ready(Err("polled after completion".into()));
        };
        Poll::Ready(match result {
            Ok(response) => {
                match classifier.classify_response(response.status(), response.headers()) {
                    Some(verdict) => {
                        Admission::from_breaker(permit).record(verdict);
                        Ok(response.map(ResponseBody::unguarded))
                    }
                    // Decided at the end of the body (trailers): the body holds
                    // the probe until then.
                    None => {
                        let total = later(tokio::time::Instant::now(), *this.verdict_timeout);
                        let mut guard = AdmissionGuard::new(
                            Admission::from_breaker(permit),
                            None,
                            classifier,
                            None,
                            Some(BodyDeadline {
                                total,
                                idle: None,
                                on_expiry: OnExpiry::Release,
                            }),
                        );
                        if response.body().is_end_stream() {
                            guard.end();
                            drop(guard);
                            Ok(response.map(ResponseBody::unguarded))
                        } else {
                            let guard = Guard::Admission(Box::new(guard));
                            Ok(response.map(|b| ResponseBody::new(b, guard)))
                        }
                    }
                }
            }
            Err(e) => {
                let e: BoxError = e.into();
                Admission::from_breaker(permit).record(classifier.classify_error(&*e));
                Err(e)
            }
        })
    }
}

impl<F> fmt::Debug for BreakerFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerFuture")
            .field("rejected", &self.rejected)
            .finish_non_exhaustive()
    }
}
