//! The refusal error and its HTTP response.

use std::fmt;
use std::time::Duration;

use heijunka_core::Rejection;
use http::{HeaderValue, Response, StatusCode, header};

use crate::tower::{BoxError, QuotaHeaders, Stage};

/// A request refused by a layer: which [`Stage`] said no and why.
///
/// The services in [`heijunka::tower`](crate::tower) return it boxed in a
/// [`BoxError`]; find it with `downcast_ref`, or let [`handle_error`] turn it into
/// a response.
///
/// ```
/// use heijunka::core::Rejection;
/// use heijunka::tower::{BoxError, Rejected, Stage};
/// use std::time::Duration;
///
/// let reason = Rejection::RateLimited { retry_after: Duration::from_millis(20) };
/// let err: BoxError = Rejected::new(Stage::RateLimit, reason).into();
/// let rejected = err.downcast_ref::<Rejected>().unwrap();
/// assert_eq!(rejected.stage(), Stage::RateLimit);
/// assert_eq!(rejected.reason(), reason);
/// assert_eq!(rejected.to_string(), "refused by the rate limit: rate limited: retry after 20ms");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rejected {
    stage: Stage,
    reason: Rejection,
    quota: Option<QuotaHeaders>,
}

impl Rejected {
    /// A refusal by one of the single-primitive layers (`layer` names it),
    /// logged at DEBUG with its stage and reason as the policy logs its own.
    #[cold]
    pub(crate) fn by_layer(layer: &'static str, stage: Stage, reason: Rejection) -> Self {
        tracing::debug!(
            layer,
            stage = stage.as_str(),
            reason = reason.kind(),
            "request rejected"
        );
        Self::new(stage, reason)
    }

    /// A refusal by `stage` for `reason`.
    pub fn new(stage: Stage, reason: Rejection) -> Self {
        Self {
            stage,
            reason,
            quota: None,
        }
    }

    /// The same refusal carrying the client's rate-limit quota, which
    /// [`handle_error`] writes on the `429` as `RateLimit-*` (or `X-RateLimit-*`)
    /// headers. [`KeyedRateLimitLayer`](crate::tower::KeyedRateLimitLayer) refuses
    /// with one.
    ///
    /// ```
    /// use heijunka::backpressure::KeyedRateLimiter;
    /// use heijunka::tower::{BoxError, QuotaHeaders, RateLimitHeaders, Rejected, Stage, handle_error};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let limiter = KeyedRateLimiter::builder(1.0).burst(1).build()?;
    /// limiter.check_key(&"alice")?;
    /// let decision = limiter.check_key_state(&"alice");
    /// let reason = decision.result.unwrap_err().reason().unwrap();
    /// let quota = QuotaHeaders::new(RateLimitHeaders::Ietf, decision.state);
    /// let err: BoxError = Rejected::new(Stage::RateLimit, reason).with_quota(quota).into();
    /// let response = handle_error(err).await;
    /// assert_eq!(response.status(), 429);
    /// assert_eq!(response.headers()["ratelimit-remaining"], "0");
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn with_quota(mut self, quota: QuotaHeaders) -> Self {
        self.quota = Some(quota);
        self
    }

    /// The rate-limit quota this refusal reports, if any (see
    /// [`with_quota`](Self::with_quota)).
    pub fn quota(&self) -> Option<QuotaHeaders> {
        self.quota
    }

    /// The HTTP response for this refusal: [`rejection_response`] for its reason,
    /// plus its [`quota`](Self::quota) headers if it has one. What [`handle_error`]
    /// answers; hyper and tonic users can call it themselves.
    ///
    /// ```
    /// use heijunka::core::Rejection;
    /// use heijunka::tower::{Rejected, Stage};
    ///
    /// let r = Rejected::new(Stage::Concurrency, Rejection::AtCapacity { limit: 8 });
    /// assert_eq!(r.to_response::<String>().status(), 503);
    /// ```
    pub fn to_response<B: From<String>>(&self) -> Response<B> {
        let mut response = rejection_response(&self.reason);
        if let Some(quota) = &self.quota {
            quota.write_to(response.headers_mut());
        }
        response
    }

    /// The stage that refused the request.
    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// Why it was refused.
    pub fn reason(&self) -> Rejection {
        self.reason
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stage = match self.stage {
            Stage::Deadline => "the deadline",
            Stage::RateLimit => "the rate limit",
            Stage::LoadShed => "the load shedder",
            Stage::Concurrency => "the concurrency limit",
            Stage::Breaker => "the circuit breaker",
            #[allow(unreachable_patterns)] // `Stage` may grow
            _ => "a policy stage",
        };
        write!(f, "refused by {stage}: {}", self.reason)
    }
}

impl std::error::Error for Rejected {}

/// The HTTP response for a refusal: `429 Too Many Requests` for
/// [`RateLimited`](Rejection::RateLimited), `504 Gateway Timeout` for
/// [`TimedOut`](Rejection::TimedOut), and `503 Service Unavailable` for everything
/// else (at capacity, queue full, circuit open, memory pressure, shutting down).
///
/// Where the reason knows when a retry can succeed, a `Retry-After` header gives it
/// in whole seconds, rounded up (so `1` for 20 ms: never advise retrying early).
/// The body is the reason's text, and an `x-heijunka-rejection` header carries its
/// [`kind`](Rejection::kind) for clients and logs. `B` is any body type that can
/// be made from a `String` (`String` itself, axum's `Body`, `Full<Bytes>`).
///
/// ```
/// use heijunka::core::Rejection;
/// use heijunka::tower::rejection_response;
/// use std::time::Duration;
///
/// let r = rejection_response::<String>(&Rejection::RateLimited {
///     retry_after: Duration::from_millis(1500),
/// });
/// assert_eq!(r.status(), 429);
/// assert_eq!(r.headers()["retry-after"], "2");
/// assert_eq!(r.headers()["x-heijunka-rejection"], "rate_limited");
///
/// let r = rejection_response::<String>(&Rejection::AtCapacity { limit: 64 });
/// assert_eq!(r.status(), 503);
/// assert!(r.headers().get("retry-after").is_none());
/// ```
pub fn rejection_response<B: From<String>>(reason: &Rejection) -> Response<B> {
    let status = match reason {
        Rejection::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        Rejection::TimedOut { .. } => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    let mut response = Response::new(B::from(reason.to_string()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(
        "x-heijunka-rejection",
        HeaderValue::from_static(reason.kind()),
    );
    if let Some(after) = reason.retry_after() {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds_up(after)));
    }
    response
}

/// Whole seconds in `d`, rounded up.
pub(crate) fn seconds_up(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Turns a layer's error into a response, for axum's `HandleErrorLayer`: a
/// [`Rejected`] becomes [`rejection_response`] (with its rate-limit
/// [`quota`](Rejected::quota) headers, if it carries some), any other error a bare
/// `500 Internal Server Error` (the error's text is not sent to the client).
///
/// ```
/// use axum::{Router, error_handling::HandleErrorLayer, routing::get};
/// use heijunka::backpressure::ConcurrencyLimit;
/// use heijunka::tower::{ConcurrencyLimitLayer, handle_error};
/// use tower::ServiceBuilder;
///
/// let app: Router = Router::new().route("/", get(|| async { "hello" })).layer(
///     ServiceBuilder::new()
///         .layer(HandleErrorLayer::new(handle_error))
///         .layer(ConcurrencyLimitLayer::new(ConcurrencyLimit::new(64)?)),
/// );
/// # Ok::<(), heijunka::core::ConfigError>(())
/// ```
pub async fn handle_error(err: BoxError) -> Response<String> {
    error_response(&err)
}

/// The synchronous form of [`handle_error`].
pub(crate) fn error_response(err: &BoxError) -> Response<String> {
    match err.downcast_ref::<Rejected>() {
        Some(rejected) => rejected.to_response(),
        None => {
            let mut response = Response::new(String::from("internal server error"));
            *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use heijunka_core::PressureLevel;

    #[test]
    fn statuses_and_retry_after() {
        let ms = Duration::from_millis;
        let cases = [
            (Rejection::AtCapacity { limit: 1 }, 503, None),
            (Rejection::QueueFull { capacity: 1 }, 503, None),
            (
                Rejection::CircuitOpen {
                    retry_after: Some(Duration::from_secs(5)),
                },
                503,
                Some("5"),
            ),
            (Rejection::CircuitOpen { retry_after: None }, 503, None),
            (
                Rejection::MemoryPressure {
                    level: PressureLevel::Critical,
                },
                503,
                None,
            ),
            (Rejection::ShuttingDown, 503, None),
            (
                Rejection::RateLimited { retry_after: ms(1) },
                429,
                Some("1"),
            ),
            (
                Rejection::RateLimited {
                    retry_after: Duration::ZERO,
                },
                429,
                Some("0"),
            ),
            (Rejection::TimedOut { after: ms(100) }, 504, None),
        ];
        for (reason, status, retry) in cases {
            let r = rejection_response::<String>(&reason);
            assert_eq!(r.status(), status, "{reason:?}");
            assert_eq!(
                r.headers().get("retry-after").map(|v| v.to_str().unwrap()),
                retry,
                "{reason:?}"
            );
            assert_eq!(r.headers()["x-heijunka-rejection"], reason.kind());
            assert_eq!(r.body(), &reason.to_string());
        }
    }

    #[test]
    fn seconds_round_up() {
        assert_eq!(seconds_up(Duration::ZERO), 0);
        assert_eq!(seconds_up(Duration::from_nanos(1)), 1);
        assert_eq!(seconds_up(Duration::from_secs(2)), 2);
        assert_eq!(seconds_up(Duration::from_millis(2001)), 3);
    }

    #[test]
    fn other_errors_are_500_without_their_text() {
        let err: BoxError = "database password is hunter2".into();
        let r = error_response(&err);
        assert_eq!(r.status(), 500);
        assert!(!r.body().contains("hunter2"));
        let err: BoxError = Rejected::new(Stage::Breaker, Rejection::ShuttingDown).into();
        assert_eq!(error_response(&err).status(), 503);
    }
}
