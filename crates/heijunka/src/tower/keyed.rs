//! The per-client rate-limit layer: a [`KeyedRateLimiter`] keyed by what a
//! [`KeyExtractor`] finds in each request, with rate-limit response headers.

use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use heijunka_backpressure::{KeyedRateLimiter, RateLimitError, RateLimitState};
use heijunka_core::Rejection;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::tower::error::seconds_up;
use crate::tower::{BoxError, KeyExtractor, Rejected, Stage};

/// Which rate-limit headers the [`KeyedRateLimitLayer`] writes, on admitted
/// responses and on the `429` alike.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RateLimitHeaders {
    /// `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset`, as the IETF
    /// httpapi working group's draft "RateLimit header fields for HTTP" named them
    /// (the three-field form its early versions define and most servers send).
    /// The default.
    #[default]
    Ietf,
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset`: the
    /// older, unstandardised names many clients look for. Same values (the reset
    /// is in seconds from now, not a Unix time).
    XRateLimit,
    /// No rate-limit headers (the `429` still has `Retry-After`).
    Off,
}

/// The rate-limit headers of one response: the client's quota as the limiter's
/// decision left it.
///
/// - *limit*: the requests a full bucket admits at once (the burst);
/// - *remaining*: the requests that would be admitted one after another right now;
/// - *reset*: seconds until the bucket is full again, rounded up (never advise
///   coming back early), `0` when it is full.
///
/// Plain numbers, `Copy`; writing them allocates nothing for numbers below 1000
/// (their text is in a static table), one small buffer each for larger ones.
///
/// ```
/// use heijunka::backpressure::KeyedRateLimiter;
/// use heijunka::tower::{QuotaHeaders, RateLimitHeaders};
/// use http::HeaderMap;
///
/// let limiter = KeyedRateLimiter::builder(2.0).burst(10).build()?;
/// let decision = limiter.check_key_state(&"alice");
/// let mut headers = HeaderMap::new();
/// QuotaHeaders::new(RateLimitHeaders::Ietf, decision.state).write_to(&mut headers);
/// assert_eq!(headers["ratelimit-limit"], "10");
/// assert_eq!(headers["ratelimit-remaining"], "9");
/// assert_eq!(headers["ratelimit-reset"], "1"); // 500 ms, rounded up
/// # Ok::<(), heijunka::core::ConfigError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaHeaders {
    style: RateLimitHeaders,
    limit: u32,
    remaining: u32,
    reset_after: Duration,
}

impl QuotaHeaders {
    /// The headers of `style` for a bucket in `state`.
    pub fn new(style: RateLimitHeaders, state: RateLimitState) -> Self {
        Self {
            style,
            limit: state.limit,
            remaining: state.remaining,
            reset_after: state.reset_after,
        }
    }

    /// The requests a full bucket admits at once.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// The requests that would be admitted right now.
    pub fn remaining(&self) -> u32 {
        self.remaining
    }

    /// The time until the bucket is full again.
    pub fn reset_after(&self) -> Duration {
        self.reset_after
    }

    /// Writes the three headers into `headers` (replacing any of the same name);
    /// nothing for [`RateLimitHeaders::Off`].
    pub fn write_to(&self, headers: &mut HeaderMap) {
        let [limit, remaining, reset] = match self.style {
            RateLimitHeaders::Ietf => &IETF,
            RateLimitHeaders::XRateLimit => &X_RATELIMIT,
            RateLimitHeaders::Off => return,
        };
        headers.insert(limit.clone(), number(u64::from(self.limit)));
        headers.insert(remaining.clone(), number(u64::from(self.remaining)));
        headers.insert(reset.clone(), number(seconds_up(self.reset_after)));
    }
}

/// Numbers below this are written from [`DIGITS`] without allocating: the
/// remaining count and the reset seconds of most quotas (a burst up to a
/// thousand, a bucket refilling within a quarter hour).
const SMALL: usize = 1000;

/// The decimal text of `0..SMALL`, three digits each with leading zeros.
static DIGITS: [[u8; 3]; SMALL] = {
    let mut table = [[0_u8; 3]; SMALL];
    let mut i = 0;
    while i < SMALL {
        // Each digit is below 10, so the casts are exact.
        table[i] = [
            b'0' + (i / 100) as u8,
            b'0' + (i / 10 % 10) as u8,
            b'0' + (i % 10) as u8,
        ];
        i += 1;
    }
    table
};

/// `n` as a header value; borrowed from [`DIGITS`] (no allocation) below [`SMALL`].
fn number(n: u64) -> HeaderValue {
    match usize::try_from(n) {
        Ok(i) if i < SMALL => {
            let skip = match i {
                0..=9 => 2,
                10..=99 => 1,
                _ => 0,
            };
            let text = std::str::from_utf8(&DIGITS[i][skip..]).expect("DIGITS holds ASCII digits");
            HeaderValue::from_static(text)
        }
        _ => HeaderValue::from(n),
    }
}

// Made once: `HeaderName::from_static` checks its text each time it runs.
static IETF: [HeaderName; 3] = [
    HeaderName::from_static("ratelimit-limit"),
    HeaderName::from_static("ratelimit-remaining"),
    HeaderName::from_static("ratelimit-reset"),
];
static X_RATELIMIT: [HeaderName; 3] = [
    HeaderName::from_static("x-ratelimit-limit"),
    HeaderName::from_static("x-ratelimit-remaining"),
    HeaderName::from_static("x-ratelimit-reset"),
];

/// What the [`KeyedRateLimitLayer`] does with a request its extractor finds no key
/// in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum MissingKey<K> {
    /// Refuse it with a [`NoKeyError`], which [`handle_error`](crate::tower::handle_error)
    /// answers with `500` (the default). Fails closed and loudly: a server that
    /// forgot to provide the peer address refuses every request at once, instead
    /// of serving every client unlimited.
    #[default]
    Refuse,
    /// Let it through unlimited (and without rate-limit headers).
    Admit,
    /// Limit it under this key: every keyless request shares one bucket (an
    /// "anonymous" quota for requests without an API key, say).
    Fallback(K),
}

/// A request refused because its key extractor found no key in it, under
/// [`MissingKey::Refuse`]. Not a [`Rejected`]: nothing is overloaded, the request
/// (or the server's setup) is missing something, so
/// [`handle_error`](crate::tower::handle_error) answers `500` and logs can tell.
///
/// ```
/// use heijunka::tower::NoKeyError;
///
/// assert_eq!(NoKeyError.to_string(), "no rate-limit key found in the request");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoKeyError;

impl fmt::Display for NoKeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("no rate-limit key found in the request")
    }
}

impl std::error::Error for NoKeyError {}

/// Per-client rate limits: a [`KeyedRateLimiter`] (a GCRA bucket per key, with a
/// bounded key set) keyed by what a [`KeyExtractor`] finds in each request
/// ([`PeerIp`](crate::tower::PeerIp), [`FromHeader`](crate::tower::FromHeader), a
/// closure). One limiter, shared through an `Arc` by every service the layer makes
/// and by its clones.
///
/// A refused request never reaches the inner service: it gets a [`Rejected`] with
/// [`Stage::RateLimit`] and [`Rejection::RateLimited`] (with the retry-after;
/// also when the key budget is exhausted under
/// [`OverflowPolicy::Reject`](crate::backpressure::OverflowPolicy::Reject)), which
/// [`handle_error`](crate::tower::handle_error) turns into `429` with
/// `Retry-After`. Admitted responses and the `429` carry the client's quota as
/// [`RateLimitHeaders`] (the IETF draft's `RateLimit-*` by default).
///
/// # Why the 429's headers travel in the error
///
/// Every heijunka layer refuses with an error and lets one
/// [`handle_error`](crate::tower::handle_error) (or your own handler) make the
/// response, so the service's response type stays the inner one and the refusal
/// stays matchable. The quota rides in the [`Rejected`]
/// ([`Rejected::quota`]), a few plain numbers with no allocation of their own, and
/// is written when the response is made.
///
/// ```
/// use axum::{Router, error_handling::HandleErrorLayer, extract::ConnectInfo, routing::get};
/// use heijunka::backpressure::KeyedRateLimiter;
/// use heijunka::tower::{KeyedRateLimitLayer, PeerIp, handle_error};
/// use std::net::SocketAddr;
/// use tower::ServiceBuilder;
///
/// // 10 requests per second per client IP, bursts of 20.
/// let limiter = KeyedRateLimiter::builder(10.0).burst(20).max_keys(100_000).build()?;
/// let key = PeerIp::new()
///     .trust_proxies(["10.0.0.0/8"])? // our load balancers
///     .peer_addr_from(|ext| ext.get::<ConnectInfo<SocketAddr>>().map(|c| c.0));
/// let app: Router = Router::new().route("/", get(|| async { "hello" })).layer(
///     ServiceBuilder::new()
///         .layer(HandleErrorLayer::new(handle_error))
///         .layer(KeyedRateLimitLayer::new(limiter, key)),
/// );
/// // Serve with `app.into_make_service_with_connect_info::<SocketAddr>()`.
/// # Ok::<(), heijunka::core::ConfigError>(())
/// ```
pub struct KeyedRateLimitLayer<K: Hash + Eq, E> {
    limiter: Arc<KeyedRateLimiter<K>>,
    extractor: E,
    missing: MissingKey<K>,
    headers: RateLimitHeaders,
}

impl<K: Hash + Eq, E> KeyedRateLimitLayer<K, E> {
    /// A layer limiting each key `extractor` finds with `limiter`; refuses
    /// requests without a key ([`MissingKey::Refuse`]) and writes
    /// [`RateLimitHeaders::Ietf`].
    ///
    /// ```
    /// use heijunka::backpressure::KeyedRateLimiter;
    /// use heijunka::tower::{FromHeader, HeaderKey, KeyedRateLimitLayer};
    ///
    /// let layer: KeyedRateLimitLayer<HeaderKey, _> = KeyedRateLimitLayer::new(
    ///     KeyedRateLimiter::builder(5.0).burst(10).build()?,
    ///     FromHeader::named("x-api-key")?,
    /// );
    /// # Ok::<(), heijunka::core::ConfigError>(())
    /// ```
    pub fn new(limiter: KeyedRateLimiter<K>, extractor: E) -> Self {
        Self::from_arc(Arc::new(limiter), extractor)
    }

    /// A layer sharing a limiter already in an `Arc` (to read it elsewhere, or to
    /// call [`retain_recent`](KeyedRateLimiter::retain_recent) from a timer).
    ///
    /// ```
    /// use heijunka::backpressure::KeyedRateLimiter;
    /// use heijunka::tower::{KeyedRateLimitLayer, PeerIp};
    /// use std::net::IpAddr;
    /// use std::sync::Arc;
    ///
    /// let limiter: Arc<KeyedRateLimiter<IpAddr>> =
    ///     Arc::new(KeyedRateLimiter::builder(5.0).build()?);
    /// let layer = KeyedRateLimitLayer::from_arc(limiter.clone(), PeerIp::new());
    /// # Ok::<(), heijunka::core::ConfigError>(())
    /// ```
    pub fn from_arc(limiter: Arc<KeyedRateLimiter<K>>, extractor: E) -> Self {
        Self {
            limiter,
            extractor,
            missing: MissingKey::default(),
            headers: RateLimitHeaders::default(),
        }
    }

    /// What to do with a request that has no key. Default [`MissingKey::Refuse`].
    ///
    /// ```
    /// use heijunka::backpressure::KeyedRateLimiter;
    /// use heijunka::tower::{KeyedRateLimitLayer, MissingKey};
    ///
    /// // Anonymous requests (no API key) share one bucket, keyed by the closure's
    /// // own key type: here a `String`.
    /// let layer = KeyedRateLimitLayer::new(
    ///     KeyedRateLimiter::builder(5.0).build()?,
    ///     |req: &http::Request<()>| {
    ///         req.headers().get("x-api-key")?.to_str().ok().map(str::to_owned)
    ///     },
    /// )
    /// .missing_key(MissingKey::Fallback(String::from("anonymous")));
    /// # Ok::<(), heijunka::core::ConfigError>(())
    /// ```
    #[must_use]
    pub fn missing_key(mut self, missing: MissingKey<K>) -> Self {
        self.missing = missing;
        self
    }

    /// Which rate-limit headers to write. Default [`RateLimitHeaders::Ietf`];
    /// [`Off`](RateLimitHeaders::Off) also skips computing them.
    ///
    /// ```
    /// use heijunka::backpressure::KeyedRateLimiter;
    /// use heijunka::tower::{KeyedRateLimitLayer, PeerIp, RateLimitHeaders};
    /// use std::net::IpAddr;
    ///
    /// let layer: KeyedRateLimitLayer<IpAddr, _> =
    ///     KeyedRateLimitLayer::new(KeyedRateLimiter::builder(5.0).build()?, PeerIp::new())
    ///         .headers(RateLimitHeaders::XRateLimit);
    /// # Ok::<(), heijunka::core::ConfigError>(())
    /// ```
    #[must_use]
    pub fn headers(mut self, headers: RateLimitHeaders) -> Self {
        self.headers = headers;
        self
    }

    /// The limiter.
    pub fn limiter(&self) -> &Arc<KeyedRateLimiter<K>> {
        &self.limiter
    }
}

impl<K: Hash + Eq + Clone, E: Clone> Clone for KeyedRateLimitLayer<K, E> {
    fn clone(&self) -> Self {
        Self {
            limiter: Arc::clone(&self.limiter),
            extractor: self.extractor.clone(),
            missing: self.missing.clone(),
            headers: self.headers,
        }
    }
}

impl<K: Hash + Eq, E> fmt::Debug for KeyedRateLimitLayer<K, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedRateLimitLayer")
            .field("limiter", &self.limiter)
            .field("headers", &self.headers)
            .finish_non_exhaustive()
    }
}

impl<S, K: Hash + Eq + Clone, E: Clone> Layer<S> for KeyedRateLimitLayer<K, E> {
    type Service = KeyedRateLimit<S, K, E>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedRateLimit {
            inner,
            limiter: Arc::clone(&self.limiter),
            extractor: self.extractor.clone(),
            missing: self.missing.clone(),
            headers: self.headers,
        }
    }
}

/// The service [`KeyedRateLimitLayer`] makes, for `http::Request`s.
///
/// ```
/// use heijunka::backpressure::KeyedRateLimiter;
/// use heijunka::tower::{KeyedRateLimit, KeyedRateLimitLayer, PeerIp};
/// use http::{Request, Response};
/// use std::net::IpAddr;
/// use tower::{Layer, service_fn};
///
/// let svc: KeyedRateLimit<_, IpAddr, PeerIp> =
///     KeyedRateLimitLayer::new(KeyedRateLimiter::builder(5.0).build()?, PeerIp::new())
///         .layer(service_fn(|_: Request<()>| async {
///             Ok::<_, std::convert::Infallible>(Response::new(()))
///         }));
/// # Ok::<(), heijunka::core::ConfigError>(())
/// ```
pub struct KeyedRateLimit<S, K: Hash + Eq, E> {
    inner: S,
    limiter: Arc<KeyedRateLimiter<K>>,
    extractor: E,
    missing: MissingKey<K>,
    headers: RateLimitHeaders,
}

impl<S: Clone, K: Hash + Eq + Clone, E: Clone> Clone for KeyedRateLimit<S, K, E> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            limiter: Arc::clone(&self.limiter),
            extractor: self.extractor.clone(),
            missing: self.missing.clone(),
            headers: self.headers,
        }
    }
}

impl<S: fmt::Debug, K: Hash + Eq, E> fmt::Debug for KeyedRateLimit<S, K, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedRateLimit")
            .field("inner", &self.inner)
            .field("limiter", &self.limiter)
            .finish_non_exhaustive()
    }
}

impl<S, K, E, B, R> Service<Request<B>> for KeyedRateLimit<S, K, E>
where
    S: Service<Request<B>, Response = Response<R>>,
    S::Error: Into<BoxError>,
    K: Hash + Eq + Clone,
    E: KeyExtractor<B, Key = K>,
{
    type Response = Response<R>;
    type Error = BoxError;
    type Future = KeyedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let extracted = self.extractor.extract(&req);
        let key = match (&extracted, &self.missing) {
            (Some(key), _) | (None, MissingKey::Fallback(key)) => key,
            (None, MissingKey::Admit) => return KeyedFuture::called(self.inner.call(req), None),
            (None, MissingKey::Refuse) => return KeyedFuture::refused(Refusal::NoKey),
        };
        if self.headers == RateLimitHeaders::Off {
            return match self.limiter.check_key(key) {
                Ok(()) => KeyedFuture::called(self.inner.call(req), None),
                Err(e) => KeyedFuture::refused(Refusal::Rejected(rejected(e))),
            };
        }
        let decision = self.limiter.check_key_state(key);
        let quota = QuotaHeaders::new(self.headers, decision.state);
        match decision.result {
            Ok(()) => KeyedFuture::called(self.inner.call(req), Some(quota)),
            Err(e) => KeyedFuture::refused(Refusal::Rejected(rejected(e).with_quota(quota))),
        }
    }
}

/// The refusal for a limiter's error.
fn rejected(e: RateLimitError) -> Rejected {
    // Every refusal of a one-unit check has a retry-after (`InsufficientCapacity`
    // needs more than the burst, which is at least one).
    let reason = e.reason().unwrap_or(Rejection::RateLimited {
        retry_after: Duration::ZERO,
    });
    Rejected::by_layer("keyed_rate_limit", Stage::RateLimit, reason)
}

/// Why a [`KeyedFuture`] fails without calling the inner service.
#[derive(Clone, Copy, Debug)]
enum Refusal {
    Rejected(Rejected),
    NoKey,
}

pin_project! {
    /// The future of [`KeyedRateLimit`]: the refusal, or the inner call with the
    /// quota headers written on its response and its error boxed.
    ///
    /// # Cancel safety
    ///
    /// Holds nothing but the inner future and a few numbers: the limiter decided
    /// in `call`, and an admission is spent there (as any rate limit's is: a
    /// request that was let through and then dropped still counted). Dropping it
    /// at any point drops the inner future and leaves the limiter as `call` left it.
    ///
    /// ```
    /// use heijunka::backpressure::KeyedRateLimiter;
    /// use heijunka::tower::{KeyedFuture, KeyedRateLimitLayer};
    /// use http::{Request, Response};
    /// use tower::{Layer, Service, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let limiter = KeyedRateLimiter::builder(5.0).build()?;
    /// let mut svc = KeyedRateLimitLayer::new(limiter, |_: &Request<()>| Some("everyone"))
    ///     .layer(service_fn(|_: Request<()>| async {
    ///         Ok::<_, std::convert::Infallible>(Response::new(()))
    ///     }));
    /// let future: KeyedFuture<_> = svc.call(Request::new(()));
    /// assert_eq!(future.await?.headers()["ratelimit-remaining"], "0");
    /// # Ok(())
    /// # }
    /// ```
    pub struct KeyedFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    /// What a [`KeyedFuture`] holds: the call, or the refusal (boxed: the slow
    /// path, and it keeps the future small to move).
    #[project = StateProj]
    enum State<F> {
        Called {
            #[pin]
            future: F,
            quota: Option<QuotaHeaders>,
        },
        Refused {
            refusal: Option<Box<Refusal>>,
        },
    }
}

impl<F> KeyedFuture<F> {
    fn called(future: F, quota: Option<QuotaHeaders>) -> Self {
        Self {
            state: State::Called { future, quota },
        }
    }

    fn refused(refusal: Refusal) -> Self {
        Self {
            state: State::Refused {
                refusal: Some(Box::new(refusal)),
            },
        }
    }
}

impl<F, R, E> Future for KeyedFuture<F>
where
    F: Future<Output = Result<Response<R>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<R>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Called { future, quota } => {
                let mut response = ready!(future.poll(cx)).map_err(Into::into)?;
                if let Some(quota) = quota.take() {
                    quota.write_to(response.headers_mut());
                }
                Poll::Ready(Ok(response))
            }
            StateProj::Refused { refusal } => Poll::Ready(Err(match refusal.take().map(|r| *r) {
                Some(Refusal::Rejected(rejected)) => rejected.into(),
                Some(Refusal::NoKey) => NoKeyError.into(),
                None => "polled after completion".into(),
            })),
        }
    }
}

impl<F> fmt::Debug for KeyedFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("KeyedFuture");
        match &self.state {
            State::Called { quota, .. } => d.field("quota", quota),
            State::Refused { refusal } => d.field("refused", refusal),
        };
        d.finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_as_header_values() {
        for n in [
            0,
            1,
            9,
            10,
            42,
            99,
            100,
            101,
            999,
            1000,
            1001,
            65_536,
            u64::MAX,
        ] {
            assert_eq!(number(n).to_str().unwrap(), n.to_string(), "{n}");
        }
    }
}
