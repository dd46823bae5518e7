//! [`Fallback`]: an answer when the call fails.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use heijunka_core::Rejection;
use serde::Serialize;

use crate::RetryError;

/// What a failure says about itself, for a fallback deciding what to answer:
/// the stage of the stack that refused (`"breaker"`, `"rate_limit"`, ...) and
/// the shared [`Rejection`] reason, where the error type knows them.
///
/// Implemented for [`RetryError`] and the breaker's `CallError`; the facade
/// implements it for its `PolicyError`.
pub trait FailureInfo {
    /// The stage that refused the request, if a stage did.
    fn stage(&self) -> Option<&'static str> {
        None
    }

    /// The reason, if the request was refused rather than failed.
    fn rejection(&self) -> Option<Rejection> {
        None
    }
}

impl<E> FailureInfo for RetryError<E> {
    /// `"deadline"` when no attempt was made for lack of time, `"rate_limit"`
    /// when the budget's rate limiter refused the first attempt.
    fn stage(&self) -> Option<&'static str> {
        match self {
            RetryError::Rejected(Rejection::TimedOut { .. }) => Some("deadline"),
            RetryError::Rejected(_) => Some("rate_limit"),
            RetryError::Failed { .. } => None,
        }
    }

    fn rejection(&self) -> Option<Rejection> {
        match self {
            RetryError::Rejected(r) => Some(*r),
            RetryError::Failed { .. } => None,
        }
    }
}

impl<E> FailureInfo for heijunka_breaker::CallError<E> {
    fn stage(&self) -> Option<&'static str> {
        match self {
            heijunka_breaker::CallError::Rejected(_) => Some("breaker"),
            _ => None,
        }
    }

    fn rejection(&self) -> Option<Rejection> {
        match self {
            heijunka_breaker::CallError::Rejected(r) => Some(r.reason()),
            _ => None,
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Which errors fall back.
pub(crate) type Predicate<E> = Arc<dyn Fn(&E) -> bool + Send + Sync>;

enum Handler<T, E> {
    Map(Arc<dyn Fn(E) -> T + Send + Sync>),
    Async(Arc<dyn Fn(E) -> BoxFuture<Result<T, E>> + Send + Sync>),
}

impl<T, E> Clone for Handler<T, E> {
    fn clone(&self) -> Self {
        match self {
            Handler::Map(f) => Handler::Map(f.clone()),
            Handler::Async(f) => Handler::Async(f.clone()),
        }
    }
}

#[derive(Default)]
struct Counters {
    fallbacks: AtomicU64,
    passed_through: AtomicU64,
    fallback_failed: AtomicU64,
}

/// A [`Fallback`]'s counts since it was built.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct FallbackStats {
    /// Failures answered by the fallback.
    pub fallbacks: u64,
    /// Failures passed on because [`when`](Fallback::when) said so.
    pub passed_through: u64,
    /// Fallback services that failed too (their error is returned).
    pub fallback_failed: u64,
}

/// Answers for a failed call: a fixed value, a function of the error, or
/// another service (an async function of the error, such as a cache or a
/// secondary region). The error is handed to the fallback, so it can read the
/// stage and the reason of the failure ([`FailureInfo`]); with
/// [`when`](Self::when) only some errors fall back and the others pass on.
///
/// Successes pass through untouched. Clones share the handler and the counts.
///
/// ```
/// use heijunka_retry::{Fallback, FailureInfo, RetryError};
/// use heijunka_core::Rejection;
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// // A stale price when the pricing service refuses or fails.
/// let fallback = Fallback::from_fn(|e: RetryError<std::io::Error>| match e.rejection() {
///     Some(Rejection::RateLimited { .. }) => -1,
///     _ => 0,
/// });
/// let limited = async { Err(RetryError::Rejected(Rejection::RateLimited { retry_after: Duration::from_secs(1) })) };
/// assert_eq!(fallback.call(limited).await.unwrap(), -1);
/// assert_eq!(fallback.call(async { Ok(7) }).await.unwrap(), 7);
/// assert_eq!(fallback.stats().fallbacks, 1);
/// # }
/// ```
pub struct Fallback<T, E> {
    handler: Handler<T, E>,
    when: Option<Predicate<E>>,
    stats: Arc<Counters>,
}

impl<T, E> Clone for Fallback<T, E> {
    fn clone(&self) -> Self {
        Self {
            handler: self.handler.clone(),
            when: self.when.clone(),
            stats: self.stats.clone(),
        }
    }
}

impl<T, E> fmt::Debug for Fallback<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fallback")
            .field(
                "handler",
                &match self.handler {
                    Handler::Map(_) => "fn",
                    Handler::Async(_) => "service",
                },
            )
            .field("when", &self.when.is_some())
            .finish()
    }
}

impl<T: Send + 'static, E: Send + 'static> Fallback<T, E> {
    /// Answers every failure with a clone of `value`.
    pub fn value(value: T) -> Self
    where
        T: Clone + Sync,
    {
        Self::from_fn(move |_| value.clone())
    }

    /// Answers a failure with `f(error)`.
    pub fn from_fn(f: impl Fn(E) -> T + Send + Sync + 'static) -> Self {
        Self {
            handler: Handler::Map(Arc::new(f)),
            when: None,
            stats: Arc::default(),
        }
    }

    /// Answers a failure with another service: `f(error)` runs, and its result
    /// (success or its own error) is the answer.
    pub fn from_async<Fut>(f: impl Fn(E) -> Fut + Send + Sync + 'static) -> Self
    where
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        Self {
            handler: Handler::Async(Arc::new(move |e| Box::pin(f(e)))),
            when: None,
            stats: Arc::default(),
        }
    }

    /// Falls back only for errors where `pred` is true; the others are
    /// returned as they are.
    #[must_use]
    pub fn when(mut self, pred: impl Fn(&E) -> bool + Send + Sync + 'static) -> Self {
        self.when = Some(Arc::new(pred));
        self
    }

    /// The counts since it was built.
    pub fn stats(&self) -> FallbackStats {
        FallbackStats {
            fallbacks: self.stats.fallbacks.load(Ordering::Relaxed),
            passed_through: self.stats.passed_through.load(Ordering::Relaxed),
            fallback_failed: self.stats.fallback_failed.load(Ordering::Relaxed),
        }
    }

    /// Awaits `fut`; on an error, answers with the fallback.
    ///
    /// # Errors
    ///
    /// An error [`when`](Self::when) excludes; a fallback service's own error.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future drops `fut` or the fallback service's
    /// future, whichever runs; nothing else is held.
    pub async fn call<Fut>(&self, fut: Fut) -> Result<T, E>
    where
        Fut: Future<Output = Result<T, E>>,
    {
        match fut.await {
            Ok(v) => Ok(v),
            Err(e) => self.recover(e).await,
        }
    }

    /// Answers for `error` (the error of a call made elsewhere).
    ///
    /// # Errors
    ///
    /// As [`call`](Self::call).
    ///
    /// # Cancel safety
    ///
    /// As [`call`](Self::call).
    pub async fn recover(&self, error: E) -> Result<T, E> {
        if let Some(when) = &self.when
            && !when(&error)
        {
            self.stats.passed_through.fetch_add(1, Ordering::Relaxed);
            return Err(error);
        }
        self.stats.fallbacks.fetch_add(1, Ordering::Relaxed);
        match &self.handler {
            Handler::Map(f) => Ok(f(error)),
            Handler::Async(f) => {
                let r = f(error).await;
                if r.is_err() {
                    self.stats.fallback_failed.fetch_add(1, Ordering::Relaxed);
                }
                r
            }
        }
    }
}
