//! Layers that decide before the call and hold nothing: rate limit and load shed.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use heijunka_backpressure::{RateLimiter, Signal};
use heijunka_core::Rejection;
use heijunka_memory::MemoryGate;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::tower::{BoxError, Rejected, Stage};

/// Refuses requests over a rate: any [`RateLimiter`] ([`Gcra`](crate::backpressure::Gcra),
/// the window limiters, ...) shared by every service the layer makes. A refused
/// request gets [`Rejection::RateLimited`] with the limiter's retry-after, which
/// [`rejection_response`](crate::tower::rejection_response) turns into
/// `429` with `Retry-After`.
///
/// Unlike tower's `RateLimit`, it never waits: a request over the rate is refused
/// at once.
///
/// ```
/// use heijunka::backpressure::Gcra;
/// use heijunka::core::{ManualClock, Rejection};
/// use heijunka::tower::{RateLimitLayer, Rejected};
/// use std::time::Duration;
/// use tower::{Layer, Service, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let clock = ManualClock::new();
/// let limiter = Gcra::builder(10.0).burst(1).clock(clock.clock()).build()?;
/// let mut svc = RateLimitLayer::new(limiter)
///     .layer(service_fn(|_: ()| async { Ok::<_, std::convert::Infallible>("ok") }));
///
/// assert_eq!(svc.ready().await?.call(()).await?, "ok");
/// let err = svc.ready().await?.call(()).await.unwrap_err();
/// assert_eq!(
///     err.downcast_ref::<Rejected>().unwrap().reason(),
///     Rejection::RateLimited { retry_after: Duration::from_millis(100) }
/// );
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RateLimitLayer {
    limiter: Arc<dyn RateLimiter>,
}

impl RateLimitLayer {
    /// A layer admitting requests `limiter` admits, one unit each.
    pub fn new(limiter: impl RateLimiter + 'static) -> Self {
        Self {
            limiter: Arc::new(limiter),
        }
    }

    /// A layer sharing a limiter already in an `Arc` (to read it elsewhere, or to
    /// share it with a [`Policy`](crate::policy::Policy)).
    ///
    /// ```
    /// use heijunka::backpressure::{Gcra, RateLimiter};
    /// use heijunka::tower::RateLimitLayer;
    /// use std::sync::Arc;
    ///
    /// let limiter: Arc<dyn RateLimiter> = Arc::new(Gcra::builder(100.0).build()?);
    /// let layer = RateLimitLayer::from_arc(limiter.clone());
    /// # Ok::<(), heijunka::core::ConfigError>(())
    /// ```
    pub fn from_arc(limiter: Arc<dyn RateLimiter>) -> Self {
        Self { limiter }
    }
}

impl fmt::Debug for RateLimitLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer").finish_non_exhaustive()
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            limiter: Arc::clone(&self.limiter),
        }
    }
}

/// The service [`RateLimitLayer`] makes. Works for any request and response type.
///
/// ```
/// use heijunka::backpressure::Gcra;
/// use heijunka::tower::{RateLimit, RateLimitLayer};
/// use tower::{Layer, service_fn};
///
/// let svc: RateLimit<_> = RateLimitLayer::new(Gcra::builder(100.0).build()?)
///     .layer(service_fn(|x: u32| async move { Ok::<_, std::convert::Infallible>(x) }));
/// # Ok::<(), heijunka::core::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct RateLimit<S> {
    inner: S,
    limiter: Arc<dyn RateLimiter>,
}

impl<S: fmt::Debug> fmt::Debug for RateLimit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, Req> Service<Req> for RateLimit<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match self.limiter.check() {
            Ok(()) => ResponseFuture::called(self.inner.call(req)),
            Err(e) => {
                let reason = e.reason().unwrap_or(Rejection::RateLimited {
                    retry_after: std::time::Duration::ZERO,
                });
                ResponseFuture::rejected(Rejected::by_layer("rate_limit", Stage::RateLimit, reason))
            }
        }
    }
}

/// Sheds requests while a load-shedding [`Signal`] says so: a
/// [`LoadShedder`](heijunka_backpressure::LoadShedder) combining several, a
/// [`MemoryGate`] ([`memory`](Self::memory)), a queue's depth, or any closure
/// ([`from_fn`](Self::from_fn)). The refusal carries the signal's reason, with
/// [`Stage::LoadShed`]; the layer holds nothing once the request is admitted.
///
/// ```
/// use heijunka::core::{PressureLevel, Rejection};
/// use heijunka::memory::{ManualProbe, MemoryGate, MemoryMonitor};
/// use heijunka::tower::{LoadShedLayer, Rejected, Stage};
/// use tower::{Layer, Service, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let probe = ManualProbe::new(64 << 30);
/// let monitor = MemoryMonitor::builder().limit(1_000).probe(probe.clone()).build()?;
/// let gate = MemoryGate::builder(&monitor).build()?;
/// let mut svc = LoadShedLayer::memory(gate)
///     .layer(service_fn(|_: ()| async { Ok::<_, std::convert::Infallible>("ok") }));
///
/// assert!(svc.ready().await?.call(()).await.is_ok());
/// probe.set_rss(990); // 99 %: critical
/// monitor.sample_now()?;
/// let err = svc.ready().await?.call(()).await.unwrap_err();
/// let rejected = err.downcast_ref::<Rejected>().unwrap();
/// assert_eq!(rejected.stage(), Stage::LoadShed);
/// assert_eq!(rejected.reason(), Rejection::MemoryPressure { level: PressureLevel::Critical });
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct LoadShedLayer {
    signal: Arc<dyn Signal>,
}

impl LoadShedLayer {
    /// A layer admitting requests while `signal` admits them: a
    /// [`LoadShedder`](heijunka_backpressure::LoadShedder), a
    /// [`BoundedQueue`](heijunka_backpressure::BoundedQueue) (sheds above its
    /// reject watermark), any other [`Signal`], or an `Arc` of one.
    ///
    /// ```
    /// use heijunka::backpressure::{BoundedQueue, LoadShedder};
    /// use heijunka::tower::LoadShedLayer;
    ///
    /// let jobs = BoundedQueue::<u64>::new(1024)?;
    /// let shedder = LoadShedder::builder().signal(jobs.clone()).build();
    /// let layer = LoadShedLayer::new(shedder);
    /// # Ok::<(), heijunka::core::ConfigError>(())
    /// ```
    pub fn new(signal: impl Signal + 'static) -> Self {
        Self {
            signal: Arc::new(signal),
        }
    }

    /// A layer shedding while `check` says so.
    ///
    /// ```
    /// use heijunka::core::Rejection;
    /// use heijunka::tower::LoadShedLayer;
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicBool, Ordering};
    ///
    /// let draining = Arc::new(AtomicBool::new(false));
    /// let flag = draining.clone();
    /// let layer = LoadShedLayer::from_fn(move || {
    ///     if flag.load(Ordering::Relaxed) { Err(Rejection::ShuttingDown) } else { Ok(()) }
    /// });
    /// ```
    pub fn from_fn<F>(check: F) -> Self
    where
        F: Fn() -> Result<(), Rejection> + Send + Sync + 'static,
    {
        Self::new(heijunka_backpressure::from_fn(check))
    }

    /// A layer shedding by memory pressure: while `gate` rejects (by default at
    /// [`Critical`](heijunka_core::PressureLevel::Critical)).
    ///
    /// ```
    /// use heijunka::memory::{MemoryGate, MemoryMonitor};
    /// use heijunka::tower::LoadShedLayer;
    ///
    /// let monitor = MemoryMonitor::builder().limit(512 << 20).build()?;
    /// let layer = LoadShedLayer::memory(MemoryGate::builder(&monitor).build()?);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn memory(gate: MemoryGate) -> Self {
        Self::from_fn(move || gate.check())
    }
}

impl fmt::Debug for LoadShedLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadShedLayer").finish_non_exhaustive()
    }
}

impl<S> Layer<S> for LoadShedLayer {
    type Service = LoadShed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LoadShed {
            inner,
            signal: Arc::clone(&self.signal),
        }
    }
}

/// The service [`LoadShedLayer`] makes. Works for any request and response type.
///
/// ```
/// use heijunka::tower::{LoadShed, LoadShedLayer};
/// use tower::{Layer, service_fn};
///
/// let svc: LoadShed<_> = LoadShedLayer::from_fn(|| Ok(()))
///     .layer(service_fn(|x: u32| async move { Ok::<_, std::convert::Infallible>(x) }));
/// ```
#[derive(Clone)]
pub struct LoadShed<S> {
    inner: S,
    signal: Arc<dyn Signal>,
}

impl<S: fmt::Debug> fmt::Debug for LoadShed<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadShed")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, Req> Service<Req> for LoadShed<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match self.signal.check() {
            Ok(()) => ResponseFuture::called(self.inner.call(req)),
            Err(reason) => {
                ResponseFuture::rejected(Rejected::by_layer("load_shed", Stage::LoadShed, reason))
            }
        }
    }
}

pin_project! {
    /// The future of [`RateLimit`] and [`LoadShed`]: the refusal, or the inner
    /// call with its error boxed.
    ///
    /// ```
    /// use heijunka::tower::{LoadShedLayer, ResponseFuture};
    /// use tower::{Layer, Service, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let mut svc = LoadShedLayer::from_fn(|| Ok(()))
    ///     .layer(service_fn(|x: u32| async move { Ok::<_, std::convert::Infallible>(x) }));
    /// let future: ResponseFuture<_> = svc.call(7);
    /// assert_eq!(future.await?, 7);
    /// # Ok(())
    /// # }
    /// ```
    pub struct ResponseFuture<F> {
        #[pin]
        future: Option<F>,
        rejected: Option<Rejected>,
    }
}

impl<F> ResponseFuture<F> {
    fn called(future: F) -> Self {
        Self {
            future: Some(future),
            rejected: None,
        }
    }

    fn rejected(rejected: Rejected) -> Self {
        Self {
            future: None,
            rejected: Some(rejected),
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.future.as_pin_mut() {
            Some(future) => future.poll(cx).map_err(Into::into),
            None => Poll::Ready(Err(this
                .rejected
                .take()
                .map_or_else(|| "polled after completion".into(), Into::into))),
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("rejected", &self.rejected)
            .finish_non_exhaustive()
    }
}
