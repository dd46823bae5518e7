//! Tower layers: [`RetryLayer`], [`HedgeLayer`], [`FallbackLayer`] (a value or
//! a function of the error), [`FallbackToLayer`] (another service) and
//! [`CoalesceLayer`] (with the `chaos` feature, `ChaosLayer` too).
//!
//! Each wraps a `Clone` service: every attempt calls a clone of it once it is
//! ready, so the layers compose with tower's own (put a timeout outside a
//! retry, a breaker inside it; see the guide's chapter on composing patterns).
//!
//! ```
//! use heijunka_retry::tower::{FallbackLayer, RetryLayer};
//! use heijunka_retry::{Backoff, Fallback, Retry, RetryError};
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use tower::{Layer, Service, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let calls = Arc::new(AtomicU32::new(0));
//! let seen = calls.clone();
//! let flaky = service_fn(move |req: u32| {
//!     let n = seen.fetch_add(1, Ordering::Relaxed);
//!     async move { if n == 0 { Err("busy") } else { Ok(req * 2) } }
//! });
//! let retry = Retry::builder().idempotent(true).backoff(Backoff::None).build()?;
//! let mut svc = RetryLayer::new(retry).layer(flaky);
//! assert_eq!(svc.ready().await.unwrap().call(21).await.unwrap(), 42);
//! assert_eq!(calls.load(Ordering::Relaxed), 2);
//!
//! // A fallback outside: a value when every attempt failed.
//! let down = service_fn(|_: u32| async { Err::<u32, _>("down") });
//! let retry = Retry::builder().max_attempts(1).build()?;
//! let fallback = Fallback::value(0);
//! let mut svc = FallbackLayer::new(fallback).layer(RetryLayer::new(retry).layer(down));
//! assert_eq!(svc.ready().await.unwrap().call(1).await.unwrap(), 0);
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Layer, Service, ServiceExt};

use crate::{CallOptions, Coalesce, CoalesceError, Fallback, Hedge, Retry, RetryError, Stop};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// How a layer reads a request's [`CallOptions`] (deadline, criticality,
/// idempotency): from its headers or extensions, say.
type Options<Req> = Arc<dyn Fn(&Req) -> CallOptions + Send + Sync>;

/// A layer and its service running each request through a policy that makes
/// attempts ([`Retry`], [`Hedge`]): the two differ only in the policy.
macro_rules! attempts_layer {
    (
        $(#[$layer_doc:meta])* $layer:ident,
        $(#[$service_doc:meta])* $service:ident,
        $policy:ty, $new_doc:literal
    ) => {
        $(#[$layer_doc])*
        pub struct $layer<Req> {
            policy: $policy,
            options: Option<Options<Req>>,
        }

        impl<Req> Clone for $layer<Req> {
            fn clone(&self) -> Self {
                Self {
                    policy: self.policy.clone(),
                    options: self.options.clone(),
                }
            }
        }

        impl<Req> fmt::Debug for $layer<Req> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($layer))
                    .field("policy", &self.policy)
                    .finish()
            }
        }

        impl<Req> $layer<Req> {
            #[doc = $new_doc]
            pub fn new(policy: $policy) -> Self {
                Self {
                    policy,
                    options: None,
                }
            }

            /// Reads each request's options (its deadline, criticality and
            /// whether it is idempotent, e.g. from the HTTP method).
            #[must_use]
            pub fn options(
                mut self,
                f: impl Fn(&Req) -> CallOptions + Send + Sync + 'static,
            ) -> Self {
                self.options = Some(Arc::new(f));
                self
            }
        }

        impl<S, Req> Layer<S> for $layer<Req> {
            type Service = $service<S, Req>;

            fn layer(&self, inner: S) -> Self::Service {
                $service {
                    inner,
                    policy: self.policy.clone(),
                    options: self.options.clone(),
                }
            }
        }

        $(#[$service_doc])*
        pub struct $service<S, Req> {
            inner: S,
            policy: $policy,
            options: Option<Options<Req>>,
        }

        impl<S: Clone, Req> Clone for $service<S, Req> {
            fn clone(&self) -> Self {
                Self {
                    inner: self.inner.clone(),
                    policy: self.policy.clone(),
                    options: self.options.clone(),
                }
            }
        }

        impl<S, Req> fmt::Debug for $service<S, Req> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($service))
                    .field("policy", &self.policy)
                    .finish()
            }
        }

        impl<S, Req> Service<Req> for $service<S, Req>
        where
            S: Service<Req> + Clone + Send + 'static,
            S::Future: Send,
            S::Response: Send + 'static,
            S::Error: Send + 'static,
            Req: Clone + Send + 'static,
        {
            type Response = S::Response;
            type Error = RetryError<S::Error>;
            type Future = BoxFuture<Result<S::Response, RetryError<S::Error>>>;

            fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
                // The first attempt goes to the service readied here; each
                // later one waits for a clone of it to be ready. A readiness
                // error is returned as a failure of no attempt.
                self.inner
                    .poll_ready(cx)
                    .map_err(|error| RetryError::Failed {
                        error,
                        attempts: 0,
                        stop: Stop::NotRetryable,
                    })
            }

            fn call(&mut self, req: Req) -> Self::Future {
                let opts = self
                    .options
                    .as_ref()
                    .map_or_else(CallOptions::default, |f| f(&req));
                let policy = self.policy.clone();
                let template = self.inner.clone();
                let readied = std::mem::replace(&mut self.inner, template.clone());
                Box::pin(async move {
                    let mut readied = Some(readied);
                    policy
                        .call_with(opts, move |_| {
                            let first = readied.take();
                            let svc = template.clone();
                            let req = req.clone();
                            async move {
                                match first {
                                    Some(mut svc) => svc.call(req).await,
                                    None => svc.oneshot(req).await,
                                }
                            }
                        })
                        .await
                })
            }
        }
    };
}

attempts_layer!(
    /// Retries failed calls of the inner service with a [`Retry`] policy.
    /// Requests must be `Clone` (each attempt sends a clone).
    RetryLayer,
    /// The service [`RetryLayer`] makes.
    RetryService,
    Retry,
    "A layer retrying with `policy`; every request gets the default [`CallOptions`]."
);

attempts_layer!(
    /// Hedges calls of the inner service with a [`Hedge`] policy. Requests must
    /// be `Clone`.
    HedgeLayer,
    /// The service [`HedgeLayer`] makes.
    HedgeService,
    Hedge,
    "A layer hedging with `policy`; every request gets the default [`CallOptions`]."
);

/// Answers the inner service's failures with a [`Fallback`].
pub struct FallbackLayer<T, E> {
    fallback: Fallback<T, E>,
}

impl<T, E> Clone for FallbackLayer<T, E> {
    fn clone(&self) -> Self {
        Self {
            fallback: self.fallback.clone(),
        }
    }
}

impl<T, E> fmt::Debug for FallbackLayer<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackLayer")
            .field("fallback", &self.fallback)
            .finish()
    }
}

impl<T, E> FallbackLayer<T, E> {
    /// A layer answering failures with `fallback`.
    pub fn new(fallback: Fallback<T, E>) -> Self {
        Self { fallback }
    }
}

impl<S, T, E> Layer<S> for FallbackLayer<T, E> {
    type Service = FallbackService<S, T, E>;

    fn layer(&self, inner: S) -> Self::Service {
        FallbackService {
            inner,
            fallback: self.fallback.clone(),
        }
    }
}

/// The service [`FallbackLayer`] makes.
pub struct FallbackService<S, T, E> {
    inner: S,
    fallback: Fallback<T, E>,
}

impl<S: Clone, T, E> Clone for FallbackService<S, T, E> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            fallback: self.fallback.clone(),
        }
    }
}

impl<S, T, E> fmt::Debug for FallbackService<S, T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackService")
            .field("fallback", &self.fallback)
            .finish()
    }
}

impl<S, Req, T, E> Service<Req> for FallbackService<S, T, E>
where
    S: Service<Req, Response = T, Error = E>,
    S::Future: Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
{
    type Response = T;
    type Error = E;
    type Future = BoxFuture<Result<T, E>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), E>> {
        // A service that is not ready is not a failed call: its readiness
        // error passes on (poll_ready cannot answer with a value).
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let fut = self.inner.call(req);
        let fallback = self.fallback.clone();
        Box::pin(async move { fallback.call(fut).await })
    }
}

/// Sends a request the inner service failed to a second service (a replica in
/// another region, a degraded path, a cache in front of the same data): the
/// request is cloned before the first call, and the second service's answer
/// (or its error) is returned. With [`when`](Self::when), only the errors it
/// accepts fall back. A [`FallbackLayer`] answers from a value or a function of
/// the error instead.
///
/// ```
/// use heijunka_retry::tower::FallbackToLayer;
/// use tower::{Layer, Service, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let primary = service_fn(|_: &'static str| async { Err::<&str, _>("region down") });
/// let secondary = service_fn(|req: &'static str| async move { Ok::<_, &str>(req) });
/// let mut svc = FallbackToLayer::new(secondary)
///     .when(|e: &&str| *e == "region down")
///     .layer(primary);
/// assert_eq!(svc.ready().await.unwrap().call("GET /price").await, Ok("GET /price"));
/// # }
/// ```
pub struct FallbackToLayer<S2, E> {
    secondary: S2,
    when: Option<crate::fallback::Predicate<E>>,
}

impl<S2: Clone, E> Clone for FallbackToLayer<S2, E> {
    fn clone(&self) -> Self {
        Self {
            secondary: self.secondary.clone(),
            when: self.when.clone(),
        }
    }
}

impl<S2, E> fmt::Debug for FallbackToLayer<S2, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackToLayer")
            .field("when", &self.when.is_some())
            .finish()
    }
}

impl<S2, E> FallbackToLayer<S2, E> {
    /// A layer falling back to `secondary` on every error.
    pub fn new(secondary: S2) -> Self {
        Self {
            secondary,
            when: None,
        }
    }

    /// Falls back only for errors where `pred` is true; the others are
    /// returned as they are.
    #[must_use]
    pub fn when(mut self, pred: impl Fn(&E) -> bool + Send + Sync + 'static) -> Self {
        self.when = Some(Arc::new(pred));
        self
    }
}

impl<S, S2: Clone, E> Layer<S> for FallbackToLayer<S2, E> {
    type Service = FallbackToService<S, S2, E>;

    fn layer(&self, inner: S) -> Self::Service {
        FallbackToService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`FallbackToLayer`] makes.
pub struct FallbackToService<S, S2, E> {
    inner: S,
    layer: FallbackToLayer<S2, E>,
}

impl<S: Clone, S2: Clone, E> Clone for FallbackToService<S, S2, E> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S, S2, E> fmt::Debug for FallbackToService<S, S2, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackToService")
            .field("layer", &self.layer)
            .finish()
    }
}

impl<S, S2, Req, T, E> Service<Req> for FallbackToService<S, S2, E>
where
    S: Service<Req, Response = T, Error = E>,
    S::Future: Send + 'static,
    S2: Service<Req, Response = T, Error = E> + Clone + Send + 'static,
    S2::Future: Send,
    Req: Clone + Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
{
    type Response = T;
    type Error = E;
    type Future = BoxFuture<Result<T, E>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), E>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let fut = self.inner.call(req.clone());
        let secondary = self.layer.secondary.clone();
        let when = self.layer.when.clone();
        Box::pin(async move {
            match fut.await {
                Ok(v) => Ok(v),
                Err(e) if when.as_ref().is_some_and(|w| !w(&e)) => Err(e),
                Err(_) => secondary.oneshot(req).await,
            }
        })
    }
}

/// Shares one in-flight call among concurrent requests with the same key
/// ([`Coalesce`]). The response and the error must be `Clone` (each waiting
/// request gets a clone).
pub struct CoalesceLayer<K, Req, T, E> {
    coalesce: Coalesce<K, Result<T, E>>,
    key: Arc<dyn Fn(&Req) -> K + Send + Sync>,
}

impl<K, Req, T, E> Clone for CoalesceLayer<K, Req, T, E> {
    fn clone(&self) -> Self {
        Self {
            coalesce: self.coalesce.clone(),
            key: self.key.clone(),
        }
    }
}

impl<K, Req, T, E> fmt::Debug for CoalesceLayer<K, Req, T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CoalesceLayer")
            .field("coalesce", &self.coalesce)
            .finish()
    }
}

impl<K, Req, T, E> CoalesceLayer<K, Req, T, E> {
    /// A layer sharing calls whose requests have the same `key(&req)`.
    pub fn new(
        coalesce: Coalesce<K, Result<T, E>>,
        key: impl Fn(&Req) -> K + Send + Sync + 'static,
    ) -> Self {
        Self {
            coalesce,
            key: Arc::new(key),
        }
    }
}

impl<S, K, Req, T, E> Layer<S> for CoalesceLayer<K, Req, T, E> {
    type Service = CoalesceService<S, K, Req, T, E>;

    fn layer(&self, inner: S) -> Self::Service {
        CoalesceService {
            inner,
            coalesce: self.coalesce.clone(),
            key: self.key.clone(),
        }
    }
}

/// The service [`CoalesceLayer`] makes.
pub struct CoalesceService<S, K, Req, T, E> {
    inner: S,
    coalesce: Coalesce<K, Result<T, E>>,
    key: Arc<dyn Fn(&Req) -> K + Send + Sync>,
}

impl<S: Clone, K, Req, T, E> Clone for CoalesceService<S, K, Req, T, E> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            coalesce: self.coalesce.clone(),
            key: self.key.clone(),
        }
    }
}

impl<S, K, Req, T, E> fmt::Debug for CoalesceService<S, K, Req, T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CoalesceService")
            .field("coalesce", &self.coalesce)
            .finish()
    }
}

/// Why a coalesced call failed: the inner service's error, or the shared call
/// panicked in another request's task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CoalescedError<E> {
    /// The inner service's error (shared by every request of the flight).
    Inner(E),
    /// The shared call panicked.
    Coalesce(CoalesceError),
}

impl<E: fmt::Display> fmt::Display for CoalescedError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CoalescedError::Inner(e) => e.fmt(f),
            CoalescedError::Coalesce(e) => e.fmt(f),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for CoalescedError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CoalescedError::Inner(e) => Some(e),
            CoalescedError::Coalesce(e) => Some(e),
        }
    }
}

impl<S, K, Req, T, E> Service<Req> for CoalesceService<S, K, Req, T, E>
where
    S: Service<Req, Response = T, Error = E> + Clone + Send + 'static,
    S::Future: Send + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    Req: Send + 'static,
    T: Clone + Send + 'static,
    E: Clone + Send + 'static,
{
    type Response = T;
    type Error = CoalescedError<E>;
    type Future = BoxFuture<Result<T, CoalescedError<E>>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The call that starts a flight waits for a clone to be ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let key = (self.key)(&req);
        let svc = self.inner.clone();
        let fut = self.coalesce.call(key, move || svc.oneshot(req));
        Box::pin(async move {
            match fut.await {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(CoalescedError::Inner(e)),
                Err(e) => Err(CoalescedError::Coalesce(e)),
            }
        })
    }
}

/// Injects the faults of a [`Chaos`](crate::chaos::Chaos) into the inner
/// service's calls (the `chaos` feature): a delay before the call, or an error
/// made by `error()` instead of it.
#[cfg(feature = "chaos")]
pub struct ChaosLayer<E> {
    chaos: crate::chaos::Chaos,
    error: Arc<dyn Fn() -> E + Send + Sync>,
}

#[cfg(feature = "chaos")]
impl<E> Clone for ChaosLayer<E> {
    fn clone(&self) -> Self {
        Self {
            chaos: self.chaos.clone(),
            error: self.error.clone(),
        }
    }
}

#[cfg(feature = "chaos")]
impl<E> fmt::Debug for ChaosLayer<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChaosLayer")
            .field("chaos", &self.chaos)
            .finish()
    }
}

#[cfg(feature = "chaos")]
impl<E> ChaosLayer<E> {
    /// A layer injecting `chaos`'s faults; an injected error is `error()`.
    pub fn new(chaos: crate::chaos::Chaos, error: impl Fn() -> E + Send + Sync + 'static) -> Self {
        Self {
            chaos,
            error: Arc::new(error),
        }
    }
}

#[cfg(feature = "chaos")]
impl<S, E> Layer<S> for ChaosLayer<E> {
    type Service = ChaosService<S, E>;

    fn layer(&self, inner: S) -> Self::Service {
        ChaosService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`ChaosLayer`] makes.
#[cfg(feature = "chaos")]
pub struct ChaosService<S, E> {
    inner: S,
    layer: ChaosLayer<E>,
}

#[cfg(feature = "chaos")]
impl<S: Clone, E> Clone for ChaosService<S, E> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

#[cfg(feature = "chaos")]
impl<S, E> fmt::Debug for ChaosService<S, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChaosService")
            .field("chaos", &self.layer.chaos)
            .finish()
    }
}

#[cfg(feature = "chaos")]
impl<S, Req, E> Service<Req> for ChaosService<S, E>
where
    S: Service<Req, Error = E>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    E: Send + 'static,
{
    type Response = S::Response;
    type Error = E;
    type Future = BoxFuture<Result<S::Response, E>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), E>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let fault = self.layer.chaos.next_fault();
        if fault.error {
            let e = (self.layer.error)();
            return Box::pin(async move {
                if let Some(d) = fault.delay {
                    tokio::time::sleep(d).await;
                }
                Err(e)
            });
        }
        let fut = self.inner.call(req);
        Box::pin(async move {
            if let Some(d) = fault.delay {
                tokio::time::sleep(d).await;
            }
            fut.await
        })
    }
}
