//! The whole policy as one layer.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use heijunka_backpressure::{OwnedPermit, PollConcurrencyLimit};
use heijunka_core::{ConfigError, Rejection};
use heijunka_shutdown::ShutdownToken;
use http::{HeaderName, HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

use crate::context::{DEFAULT_REQUEST_TIMEOUT, Outcome, RequestContext, TraceId};
use crate::policy::{Admission, Policy};
use crate::tower::body::{AdmissionGuard, BodyDeadline, Guard, OnExpiry};
use crate::tower::classify::{Classify, SharedClassifier, default_classifier};
#[cfg(doc)]
use crate::tower::classify::{GrpcClassifier, HttpClassifier};
use crate::tower::{BoxError, Rejected, ResponseBody, Stage};
use heijunka_core::Criticality;

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
/// `traceparent` header when one is present, and, when trusted
/// ([`criticality_header`](Self::criticality_header)), its
/// [`criticality`](RequestContext::criticality) from an `x-request-criticality`
/// header. With [`shutdown`](Self::shutdown),
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
#[derive(Clone)]
pub struct PolicyLayer {
    cfg: Arc<LayerConfig>,
}

/// Which side of the service a [`PolicyLayer`] guards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    /// Requests coming in: the context is made from the request's headers.
    Inbound,
    /// Requests going out to a dependency: the context is the caller's, and the
    /// deadline is written on the request.
    Outbound,
}

/// How a deadline header's value is written: see
/// [`PolicyLayer::deadline_header`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DeadlineFormat {
    /// The time left, in whole milliseconds (`"250"`), as Envoy's
    /// `x-envoy-expected-rq-timeout-ms`.
    TimeoutMillis,
    /// The deadline as Unix time in milliseconds (`"1767225600000"`): needs the
    /// two hosts' clocks to agree.
    UnixMillis,
}

/// How long a response body may stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BodyTimeout {
    /// Until the request's deadline (the default).
    RequestDeadline,
    /// This long from the headers.
    After(Duration),
    /// No total limit (the idle time-out may still apply).
    Unbounded,
}

#[derive(Clone)]
struct LayerConfig {
    policy: Policy,
    shutdown: Option<ShutdownToken>,
    direction: Direction,
    classifier: SharedClassifier,
    grpc_timeout: bool,
    /// Whether an inbound request's `x-request-criticality` header sets its
    /// criticality.
    criticality_header: bool,
    deadline_header: Option<(HeaderName, DeadlineFormat)>,
    body_timeout: BodyTimeout,
    body_idle_timeout: Option<Duration>,
    reserve: bool,
    /// Whether the request's context is put in its extensions.
    extension: bool,
    /// Path prefixes with their own policy, or none (exempt); first match wins.
    routes: Vec<(String, Option<Policy>)>,
}

impl PolicyLayer {
    /// A layer for incoming requests, running them through `policy` (shared by
    /// every service made): an **inbound** policy — deadline, rate limit, load
    /// shedding, a concurrency or adaptive limit. A breaker on incoming traffic
    /// turns overload into an outage (time-outs caused by our own load open it,
    /// and then every route answers 503), so keep breakers for
    /// [`client`](Self::client) layers around calls to a dependency.
    pub fn new(policy: Policy) -> Self {
        Self::with_direction(policy, Direction::Inbound)
    }

    /// A layer for calls **out** to a dependency, around a client service (a
    /// `hyper_util` client, `reqwest` through a tower adapter, a tonic channel):
    /// an outbound policy — breaker, limit, timeout. Each call's context is the
    /// caller's ([`RequestContext::current`], or one in the request's
    /// extensions), its deadline cut to the policy's timeout; the deadline left is
    /// written on the request as `grpc-timeout` (for a gRPC request) and as the
    /// [`deadline_header`](Self::deadline_header) if one is set, so the
    /// dependency stops when the caller stops waiting.
    ///
    /// ```
    /// use heijunka::breaker::CircuitBreaker;
    /// use heijunka::policy::Policy;
    /// use heijunka::tower::{DeadlineFormat, PolicyLayer};
    /// use std::time::Duration;
    /// use tower::{Layer, Service, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let users = Policy::builder()
    ///     .timeout(Duration::from_millis(300))
    ///     .breaker(CircuitBreaker::builder().name("users").build()?)
    ///     .build()?;
    /// // Stands in for a hyper or reqwest client service.
    /// let client = service_fn(|req: http::Request<String>| async move {
    ///     let left: u64 = req.headers()["x-request-timeout-ms"].to_str()?.parse()?;
    ///     assert!(left <= 300);
    ///     Ok::<_, Box<dyn std::error::Error + Send + Sync>>(http::Response::new(String::from("{}")))
    /// });
    /// let mut client = PolicyLayer::client(users)
    ///     .deadline_header("x-request-timeout-ms", DeadlineFormat::TimeoutMillis)?
    ///     .layer(client);
    /// let response = client.ready().await?.call(http::Request::new(String::new())).await?;
    /// assert_eq!(response.status(), 200);
    /// # Ok(())
    /// # }
    /// ```
    pub fn client(policy: Policy) -> Self {
        Self::with_direction(policy, Direction::Outbound)
    }

    fn with_direction(policy: Policy, direction: Direction) -> Self {
        Self {
            cfg: Arc::new(LayerConfig {
                policy,
                shutdown: None,
                direction,
                classifier: default_classifier(),
                grpc_timeout: true,
                criticality_header: false,
                deadline_header: None,
                body_timeout: BodyTimeout::RequestDeadline,
                body_idle_timeout: None,
                reserve: false,
                extension: true,
                routes: Vec::new(),
            }),
        }
    }

    fn cfg(&mut self) -> &mut LayerConfig {
        Arc::make_mut(&mut self.cfg)
    }

    /// Links each request's cancellation to `shutdown`: once it begins, requests
    /// in flight see their context cancelled and new ones are refused with
    /// [`Rejection::ShuttingDown`]. Lock-free per request: the context keeps the
    /// token and checks its flag.
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
        self.cfg().shutdown = Some(token);
        self
    }

    /// Decides how responses and errors count for the breaker and an adaptive
    /// limit (default [`HttpClassifier`]: `5xx` fail, `4xx` do not; use
    /// [`GrpcClassifier`] for gRPC). Time-outs are always failures.
    ///
    /// ```
    /// use heijunka::policy::Policy;
    /// use heijunka::tower::{GrpcClassifier, PolicyLayer};
    ///
    /// let layer = PolicyLayer::client(Policy::builder().build()?).classifier(GrpcClassifier::new());
    /// # Ok::<(), heijunka::core::ConfigError>(())
    /// ```
    pub fn classifier(mut self, classifier: impl Classify) -> Self {
        self.cfg().classifier = Arc::new(classifier);
        self
    }

    /// Whether an incoming `grpc-timeout` header shortens the request's deadline
    /// (inbound), and whether calls out write one on gRPC requests (outbound).
    /// Default on.
    ///
    /// ```
    /// use heijunka::policy::Policy;
    /// use heijunka::tower::PolicyLayer;
    ///
    /// // Ignore deadlines sent by untrusted clients.
    /// let layer = PolicyLayer::new(Policy::builder().build()?).grpc_timeout(false);
    /// # Ok::<(), heijunka::core::ConfigError>(())
    /// ```
    pub fn grpc_timeout(mut self, honour: bool) -> Self {
        self.cfg().grpc_timeout = honour;
        self
    }

    /// Whether an inbound request's `x-request-criticality` header
    /// ([`Criticality::HEADER`]: `critical`, `default` or `sheddable` in any
    /// case, and the SRE book's `critical_plus` / `sheddable_plus`; anything
    /// else is ignored) sets its [`criticality`](RequestContext::criticality),
    /// which the policy's stages honour. Default **off**: a client that may
    /// claim `critical` can take the capacity kept for critical work, so turn it
    /// on only where the header comes from trusted callers (other services, a
    /// gateway that sets or strips it).
    ///
    /// ```
    /// use heijunka::policy::Policy;
    /// use heijunka::tower::PolicyLayer;
    ///
    /// // Behind a gateway that sets the header for every request.
    /// let layer = PolicyLayer::new(Policy::builder().build()?).criticality_header(true);
    /// # Ok::<(), heijunka::core::ConfigError>(())
    /// ```
    pub fn criticality_header(mut self, trust: bool) -> Self {
        self.cfg().criticality_header = trust;
        self
    }

    /// A deadline header besides `grpc-timeout` (such as `x-request-deadline`):
    /// inbound, a request carrying it gets the earlier of that deadline and the
    /// policy's; outbound, it is written on each call with the time left. An
    /// unreadable value is ignored (the policy's deadline holds).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `deadline_header` for a name that is not a valid
    /// header name.
    pub fn deadline_header(
        mut self,
        name: &str,
        format: DeadlineFormat,
    ) -> Result<Self, ConfigError> {
        let name = HeaderName::try_from(name).map_err(|_| {
            ConfigError::new("deadline_header", name, "must be a valid HTTP header name")
        })?;
        self.cfg().deadline_header = Some((name, format));
        Ok(self)
    }

    /// The most time the response body may take to stream, from the headers.
    /// Default: the body must end by the request's deadline. When it passes, the
    /// body ends with a [`Rejected`] error ([`Stage::Deadline`],
    /// [`Rejection::TimedOut`]), the admission is let go and the outcome recorded
    /// as a time-out (a failure for the breaker; an adaptive limit, which took
    /// its latency sample at the headers, ignores it).
    ///
    /// The deadline is checked whenever the server polls the body. A server that
    /// stops polling it altogether (hyper, while the client's TCP window or
    /// HTTP/2 flow-control window stays shut) cannot be cut from inside the body:
    /// bound that with the server's own settings (hyper's header and keep-alive
    /// time-outs, HTTP/2 keep-alive pings).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `body_timeout` for zero.
    pub fn body_timeout(mut self, timeout: Duration) -> Result<Self, ConfigError> {
        heijunka_core::validate::non_zero_duration("body_timeout", timeout)?;
        self.cfg().body_timeout = BodyTimeout::After(timeout);
        Ok(self)
    }

    /// No total limit on the response body (for server-sent events, long polls,
    /// large downloads): the body holds its admission until it ends, fails or is
    /// dropped. The [`body_idle_timeout`](Self::body_idle_timeout), if set, still
    /// applies. Prefer a separate layer (or [`route`](Self::route)) for such
    /// routes over turning the limit off for all.
    ///
    /// ```
    /// use heijunka::policy::Policy;
    /// use heijunka::tower::PolicyLayer;
    ///
    /// let events = PolicyLayer::new(Policy::builder().build()?).unbounded_body();
    /// # Ok::<(), heijunka::core::ConfigError>(())
    /// ```
    pub fn unbounded_body(mut self) -> Self {
        self.cfg().body_timeout = BodyTimeout::Unbounded;
        self
    }

    /// The most time between two frames of the response body (a client reading
    /// slowly, or a handler stalled mid-stream), within the total deadline. Off
    /// by default.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `body_idle_timeout` for zero.
    ///
    /// ```
    /// use heijunka::policy::Policy;
    /// use heijunka::tower::PolicyLayer;
    /// use std::time::Duration;
    ///
    /// let layer = PolicyLayer::new(Policy::builder().build()?)
    ///     .body_idle_timeout(Duration::from_secs(10))?;
    /// assert!(PolicyLayer::new(Policy::builder().build()?).body_idle_timeout(Duration::ZERO).is_err());
    /// # Ok::<(), heijunka::core::ConfigError>(())
    /// ```
    pub fn body_idle_timeout(mut self, timeout: Duration) -> Result<Self, ConfigError> {
        heijunka_core::validate::non_zero_duration("body_idle_timeout", timeout)?;
        self.cfg().body_idle_timeout = Some(timeout);
        Ok(self)
    }

    /// Readiness mode: the service reserves a concurrency permit in
    /// `poll_ready` (waiting there, so tower's `load_shed`, `Buffer` and
    /// balancers see saturation) and `call` uses it. With the policy's
    /// [`max_wait`](crate::policy::PolicyBuilder::max_wait), the wait is bounded:
    /// counted from the first `poll_ready` that found the limit full, once it
    /// runs out `poll_ready` answers ready and the next `call` is refused with a
    /// [`Rejected`] ([`Stage::Concurrency`]) — as tower's `load_shed` does, since
    /// an error from `poll_ready` would mark the service failed. Needs a static
    /// [`ConcurrencyLimit`](crate::backpressure::ConcurrencyLimit) in the policy
    /// (an adaptive limit has no poll-based acquire; it then refuses in `call`, as
    /// without this mode). A permit reserved for a request that an earlier stage
    /// refuses in `call` is released there.
    ///
    /// `poll_ready` cannot see the request, so in this mode
    /// [`exempt`](Self::exempt) and [`route`](Self::route) paths wait for the
    /// layer's own permit too (and give it back in `call`): keep health and
    /// metrics routes outside such a layer (axum: a separate `Router` merged
    /// after the layer, or `route_layer` on the routes it guards).
    ///
    /// The default (off) refuses in `call` at once, which suits axum; there,
    /// [`max_wait`](crate::policy::PolicyBuilder::max_wait) does not apply (the
    /// layer never waits).
    ///
    /// ```
    /// use heijunka::backpressure::ConcurrencyLimit;
    /// use heijunka::policy::Policy;
    /// use heijunka::tower::PolicyLayer;
    /// use tower::ServiceBuilder;
    ///
    /// let policy = Policy::builder().concurrency_limit(ConcurrencyLimit::new(64)?).build()?;
    /// let stack = ServiceBuilder::new()
    ///     .load_shed()
    ///     .layer(PolicyLayer::new(policy).reserve_in_poll_ready(true));
    /// # Ok::<(), heijunka::core::ConfigError>(())
    /// ```
    pub fn reserve_in_poll_ready(mut self, on: bool) -> Self {
        self.cfg().reserve = on;
        self
    }

    /// Whether each incoming request's [`RequestContext`] is put in its
    /// extensions (axum: `Extension<RequestContext>`). Default on. Off, handlers
    /// still find it with [`RequestContext::current`] (while the layer calls
    /// and polls them), and a request whose extensions map is empty saves its allocation
    /// (about 100 ns on the 2-core machine the benchmarks run on; axum requests
    /// usually have the map already).
    ///
    /// ```
    /// use heijunka::policy::Policy;
    /// use heijunka::tower::PolicyLayer;
    ///
    /// let lean = PolicyLayer::new(Policy::builder().build()?).context_extension(false);
    /// # Ok::<(), heijunka::core::ConfigError>(())
    /// ```
    pub fn context_extension(mut self, on: bool) -> Self {
        self.cfg().extension = on;
        self
    }

    /// Lets requests whose path is `prefix` or below it (`/health` matches
    /// `/health` and `/health/live`, not `/healthz`) through without the policy:
    /// health checks and metrics keep answering while the policy sheds.
    ///
    /// ```
    /// use heijunka::policy::Policy;
    /// use heijunka::tower::PolicyLayer;
    ///
    /// let layer = PolicyLayer::new(Policy::builder().build()?).exempt("/health").exempt("/metrics");
    /// # Ok::<(), heijunka::core::ConfigError>(())
    /// ```
    pub fn exempt(mut self, prefix: impl Into<String>) -> Self {
        self.cfg().routes.push((prefix.into(), None));
        self
    }

    /// Runs requests under `prefix` through `policy` instead of the layer's own
    /// (the first matching [`exempt`](Self::exempt) or `route` wins, in the order
    /// added).
    ///
    /// ```
    /// use heijunka::backpressure::ConcurrencyLimit;
    /// use heijunka::policy::Policy;
    /// use heijunka::tower::PolicyLayer;
    ///
    /// let uploads = Policy::builder().concurrency_limit(ConcurrencyLimit::new(4)?).build()?;
    /// let layer = PolicyLayer::new(Policy::builder().build()?).route("/upload", uploads);
    /// # Ok::<(), heijunka::core::ConfigError>(())
    /// ```
    pub fn route(mut self, prefix: impl Into<String>, policy: Policy) -> Self {
        self.cfg().routes.push((prefix.into(), Some(policy)));
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
        &self.cfg.policy
    }
}

impl fmt::Debug for PolicyLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &*self.cfg;
        f.debug_struct("PolicyLayer")
            .field("policy", &c.policy)
            .field("direction", &c.direction)
            .field("shutdown", &c.shutdown.is_some())
            .field("grpc_timeout", &c.grpc_timeout)
            .field("deadline_header", &c.deadline_header)
            .field("body_timeout", &c.body_timeout)
            .field("body_idle_timeout", &c.body_idle_timeout)
            .field("reserve_in_poll_ready", &c.reserve)
            .field("context_extension", &c.extension)
            .field(
                "routes",
                &c.routes
                    .iter()
                    .map(|(p, pol)| (p.as_str(), if pol.is_some() { "policy" } else { "exempt" }))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl<S> Layer<S> for PolicyLayer {
    type Service = PolicyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PolicyService::new(inner, Arc::clone(&self.cfg))
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
pub struct PolicyService<S> {
    inner: S,
    cfg: Arc<LayerConfig>,
    /// Readiness mode: the limit polled in `poll_ready`, the permit it gave and
    /// the `max_wait` timer. In a `Mutex` only to be `Sync` (axum wants
    /// services that are): it is reached through `&mut self` with `get_mut`,
    /// never locked.
    reserve: Option<Box<Mutex<Reservation>>>,
}

struct Reservation {
    limit: PollConcurrencyLimit,
    permit: Option<OwnedPermit>,
    wait: Option<Pin<Box<Sleep>>>,
    /// The wait ran out (or the limit closed): the next call is refused with
    /// this. `poll_ready` itself stays `Ok`, as tower's `load_shed` does: an
    /// error there would mean the service has failed (`Buffer` would fail every
    /// later request, a balancer would evict it).
    refuse: Option<Rejected>,
}

impl<S> PolicyService<S> {
    fn new(inner: S, cfg: Arc<LayerConfig>) -> Self {
        Self {
            inner,
            cfg,
            reserve: None,
        }
    }

    /// Whether the service holds a permit reserved by `poll_ready`.
    pub fn holds_reservation(&mut self) -> bool {
        self.reservation().is_some_and(|r| r.permit.is_some())
    }

    fn reservation(&mut self) -> Option<&mut Reservation> {
        self.reserve
            .as_deref_mut()
            .map(|m| m.get_mut().unwrap_or_else(PoisonError::into_inner))
    }

    /// The reservation, made on first use in readiness mode (clones, which axum
    /// makes per request, allocate nothing until polled ready).
    fn reservation_or_new(&mut self) -> Option<&mut Reservation> {
        if self.reserve.is_none()
            && self.cfg.reserve
            && let Some(l) = self.cfg.policy.concurrency_limit()
        {
            self.reserve = Some(Box::new(Mutex::new(Reservation {
                limit: PollConcurrencyLimit::new(l.clone()),
                permit: None,
                wait: None,
                refuse: None,
            })));
        }
        self.reservation()
    }

    /// The policy for `path`: `None` when the path is exempt.
    fn policy_for(&self, path: &str) -> Option<&Policy> {
        for (prefix, policy) in &self.cfg.routes {
            let below = path.strip_prefix(prefix.as_str()).is_some_and(|rest| {
                rest.is_empty() || rest.starts_with('/') || prefix.ends_with('/')
            });
            if below {
                return policy.as_ref();
            }
        }
        Some(&self.cfg.policy)
    }

    /// The deadline an incoming request asks for: the earlier of its
    /// `grpc-timeout` and the configured header, if any.
    fn incoming_deadline<ReqB>(&self, req: &Request<ReqB>, now: Instant) -> Option<Instant> {
        let c = &*self.cfg;
        let mut deadline: Option<Instant> = None;
        let mut earlier = |d: Instant| deadline = Some(deadline.map_or(d, |x| x.min(d)));
        if c.grpc_timeout
            && let Some(t) = req
                .headers()
                .get(&GRPC_TIMEOUT)
                .and_then(|v| parse_grpc_timeout(v.as_bytes()))
        {
            earlier(later(now, t));
        }
        if let Some((name, format)) = &c.deadline_header
            && let Some(left) = req
                .headers()
                .get(name)
                .and_then(|v| parse_deadline(v, *format))
        {
            earlier(later(now, left));
        }
        deadline
    }

    fn inbound_context<ReqB>(
        &self,
        req: &Request<ReqB>,
        policy: &Policy,
        now: Instant,
    ) -> RequestContext {
        let mut deadline = later(now, policy.timeout().unwrap_or(DEFAULT_REQUEST_TIMEOUT));
        if let Some(d) = self.incoming_deadline(req, now) {
            deadline = deadline.min(d);
        }
        let mut builder = RequestContext::builder().deadline(deadline);
        if let Some(id) = req
            .headers()
            .get(&TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split('-').nth(1))
            .and_then(|id| TraceId::parse(id).ok())
        {
            builder = builder.trace_id(id);
        }
        // An unknown value is ignored (default criticality), never an error: a
        // client cannot make its request fail by sending a bad header.
        if self.cfg.criticality_header
            && let Some(c) = req
                .headers()
                .get(Criticality::HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| Criticality::from_header_value(v).ok())
        {
            builder = builder.criticality(c);
        }
        if let Some(token) = &self.cfg.shutdown {
            builder = builder.shutdown(token);
        }
        builder.build_at(now)
    }

    fn outbound_context<ReqB>(
        &self,
        req: &Request<ReqB>,
        policy: &Policy,
        now: Instant,
    ) -> RequestContext {
        let caller = req
            .extensions()
            .get::<RequestContext>()
            .cloned()
            .or_else(RequestContext::current);
        let timeout = policy.timeout().unwrap_or(DEFAULT_REQUEST_TIMEOUT);
        match caller {
            Some(caller) => caller.until(later(now, timeout)),
            None => {
                let mut builder = RequestContext::builder().timeout(timeout);
                if let Some(token) = &self.cfg.shutdown {
                    builder = builder.shutdown(token);
                }
                builder.build_at(now)
            }
        }
    }

    /// Writes the time left before `deadline` on an outgoing request.
    fn write_deadline<ReqB>(&self, req: &mut Request<ReqB>, deadline: Instant) {
        let left = deadline.saturating_duration_since(Instant::now());
        let c = &*self.cfg;
        let is_grpc = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        if c.grpc_timeout && is_grpc {
            req.headers_mut()
                .insert(GRPC_TIMEOUT.clone(), format_grpc_timeout(left));
        }
        if let Some((name, format)) = &c.deadline_header {
            let value = match format {
                DeadlineFormat::TimeoutMillis => millis(left),
                DeadlineFormat::UnixMillis => std::time::SystemTime::now()
                    .checked_add(left)
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(u64::MAX, millis),
            };
            req.headers_mut()
                .insert(name.clone(), HeaderValue::from(value));
        }
    }
}

impl<S: Clone> Clone for PolicyService<S> {
    /// A clone shares the layer's policy; it holds no reservation of its own
    /// until polled ready.
    fn clone(&self) -> Self {
        Self::new(self.inner.clone(), Arc::clone(&self.cfg))
    }
}

impl<S: fmt::Debug> fmt::Debug for PolicyService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyService")
            .field("inner", &self.inner)
            .field("policy", &self.cfg.policy)
            .field("readiness_mode", &self.cfg.reserve)
            .finish()
    }
}

/// Header names made once (a `&str` name is parsed on every lookup).
static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// About 30 years: a deadline that never comes.
const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);

/// `now + d`, or about 30 years from now if that does not fit.
pub(crate) fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(FAR))
        .unwrap_or(now)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Parses a `grpc-timeout` value: at most 8 ASCII digits and a unit (`H`, `M`,
/// `S`, `m`, `u`, `n`), as the gRPC over HTTP/2 specification writes it.
pub(crate) fn parse_grpc_timeout(v: &[u8]) -> Option<Duration> {
    let (unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Writes `d` as a `grpc-timeout` value: the finest unit whose count fits in 8
/// digits, rounded up to a whole unit (so the callee may get up to one unit more
/// than is left, as grpc-go writes it; never zero for time that is left).
pub(crate) fn format_grpc_timeout(d: Duration) -> HeaderValue {
    const MAX: u128 = 99_999_999;
    let nanos = d.as_nanos();
    let units: [(u128, char); 6] = [
        (1, 'n'),
        (1_000, 'u'),
        (1_000_000, 'm'),
        (1_000_000_000, 'S'),
        (60_000_000_000, 'M'),
        (3_600_000_000_000, 'H'),
    ];
    for (per, unit) in units {
        let n = nanos.div_ceil(per);
        if n <= MAX {
            return HeaderValue::try_from(format!("{n}{unit}"))
                .unwrap_or(HeaderValue::from_static("99999999H"));
        }
    }
    HeaderValue::from_static("99999999H")
}

/// Parses a deadline header: the time left, or `None` when unreadable.
fn parse_deadline(v: &HeaderValue, format: DeadlineFormat) -> Option<Duration> {
    let n: u64 = v.to_str().ok()?.trim().parse().ok()?;
    Some(match format {
        DeadlineFormat::TimeoutMillis => Duration::from_millis(n),
        DeadlineFormat::UnixMillis => {
            let at = std::time::UNIX_EPOCH.checked_add(Duration::from_millis(n))?;
            // A deadline already past leaves no time.
            at.duration_since(std::time::SystemTime::now())
                .unwrap_or(Duration::ZERO)
        }
    })
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
        let max_wait = self.cfg.policy.max_wait();
        if let Some(r) = self.reservation_or_new()
            && r.permit.is_none()
            && r.refuse.is_some()
        {
            // A refusal waiting for the next call: a permit free by now (a
            // balancer asking again later) replaces it.
            if let Ok(permit) = r.limit.limit().try_acquire_owned() {
                r.permit = Some(permit);
                r.refuse = None;
            }
        }
        if let Some(r) = self.reservation_or_new()
            && r.permit.is_none()
            && r.refuse.is_none()
        {
            match r.limit.poll_acquire(cx) {
                Poll::Ready(Ok(permit)) => {
                    r.permit = Some(permit);
                    r.wait = None;
                }
                Poll::Ready(Err(e)) => {
                    // Closed: the next call is refused.
                    let limit = u64::from(r.limit.limit().limit());
                    r.wait = None;
                    r.refuse = Some(Rejected::new(
                        Stage::Concurrency,
                        e.reason().unwrap_or(Rejection::AtCapacity { limit }),
                    ));
                }
                Poll::Pending => {
                    let Some(max_wait) = max_wait else {
                        return Poll::Pending;
                    };
                    let timer = r
                        .wait
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(max_wait)));
                    if timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    // Give up the place in the queue with the wait; the next
                    // call is refused.
                    r.wait = None;
                    let limit = r.limit.limit().clone();
                    let capacity = u64::from(limit.limit());
                    r.limit = PollConcurrencyLimit::new(limit);
                    r.refuse = Some(Rejected::new(
                        Stage::Concurrency,
                        Rejection::AtCapacity { limit: capacity },
                    ));
                }
            }
        }
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        // Taken whatever happens next: no reservation outlives a call.
        let (reserved, refuse) = self
            .reservation()
            .map_or((None, None), |r| (r.permit.take(), r.refuse.take()));
        let Some(policy) = self.policy_for(req.uri().path()) else {
            drop(reserved);
            return PolicyFuture::exempt(self.inner.call(req));
        };
        // The reservation and a refusal from `poll_ready` are the layer's own
        // policy's: a route with its own policy takes neither.
        let own = std::ptr::eq(policy, &self.cfg.policy);
        if own && let Some(refused) = refuse {
            policy.record_rejection(refused.stage(), &refused.reason());
            return PolicyFuture::rejected(refused);
        }
        let reserved = reserved.filter(|_| own);
        let outbound = self.cfg.direction == Direction::Outbound;
        let now = Instant::now();
        let ctx = if outbound {
            self.outbound_context(&req, policy, now)
        } else {
            self.inbound_context(&req, policy, now)
        };
        #[cfg(feature = "redis")]
        if policy.has_remote_stages() {
            return self.call_remote(req, policy.clone(), ctx, reserved, now);
        }
        match policy.try_admit_reserved(&ctx, reserved, now) {
            Ok(admission) => {
                if outbound {
                    self.write_deadline(&mut req, admission.deadline());
                } else if self.cfg.extension {
                    req.extensions_mut().insert(ctx.clone());
                }
                // Current while `call` makes the future too: a service may look
                // for it there (a client layer below takes its deadline).
                let future = ctx.enter(|| self.inner.call(req));
                PolicyFuture {
                    future: Some(future),
                    sleep: None,
                    admitted: Some(Admitted {
                        admission,
                        ctx,
                        cfg: Arc::clone(&self.cfg),
                    }),
                    rejected: None,
                    remote: None,
                }
            }
            Err(e) => PolicyFuture::rejected(Rejected::new(
                e.stage().unwrap_or(Stage::Deadline),
                e.rejection().unwrap_or(Rejection::ShuttingDown),
            )),
        }
    }
}

#[cfg(feature = "redis")]
impl<S> PolicyService<S> {
    /// A request for a policy with Redis stages: the deadline now, then (in the
    /// future) Redis's answers, then the in-process stages. The inner service's
    /// `call` makes its future now; it is polled only once every stage admitted
    /// the request, and dropped unpolled if one refuses.
    fn call_remote<ReqB, B>(
        &mut self,
        mut req: Request<ReqB>,
        policy: Policy,
        ctx: RequestContext,
        reserved: Option<OwnedPermit>,
        now: Instant,
    ) -> PolicyFuture<S::Future>
    where
        S: Service<Request<ReqB>, Response = Response<B>>,
    {
        let deadline = match policy.front_deadline(&ctx, now) {
            Ok(d) => d,
            Err(e) => {
                // Counted as the other path counts it (a cancellation as
                // `cancelled`, not as a shutdown).
                policy.record_refusal(&e);
                return PolicyFuture::rejected(Rejected::new(
                    e.stage().unwrap_or(Stage::Deadline),
                    e.rejection().unwrap_or(Rejection::ShuttingDown),
                ));
            }
        };
        if self.cfg.direction == Direction::Outbound {
            self.write_deadline(&mut req, deadline);
        } else if self.cfg.extension {
            req.extensions_mut().insert(ctx.clone());
        }
        let future = ctx.enter(|| self.inner.call(req));
        let (p, c) = (policy.clone(), ctx.clone());
        let remote = Box::pin(async move { p.admit_remote(&c, deadline).await });
        PolicyFuture {
            future: Some(future),
            sleep: None,
            admitted: None,
            rejected: None,
            remote: Some(Box::new(Remote {
                future: remote,
                policy,
                ctx,
                reserved,
                cfg: Arc::clone(&self.cfg),
            })),
        }
    }
}

/// The Redis stages of a request in flight, and what the in-process stages
/// need after them.
#[cfg(feature = "redis")]
struct Remote {
    future: Pin<Box<RemoteFuture>>,
    policy: Policy,
    ctx: RequestContext,
    reserved: Option<OwnedPermit>,
    cfg: Arc<LayerConfig>,
}

#[cfg(feature = "redis")]
type RemoteFuture = dyn Future<
        Output = Result<
            Option<heijunka_redis::RedisPermit>,
            crate::policy::PolicyError<std::convert::Infallible>,
        >,
    > + Send;

/// No Redis stages without the `redis` feature.
#[cfg(not(feature = "redis"))]
enum Remote {}

/// What an admitted request's future holds.
struct Admitted {
    admission: Admission,
    ctx: RequestContext,
    cfg: Arc<LayerConfig>,
}

pin_project! {
    /// The future of [`PolicyService`]: the inner call under the admission's
    /// deadline, with the request's context as the
    /// [current](RequestContext::current) one, holding the admission; the
    /// response comes back with its body wrapped in a [`ResponseBody`] that holds
    /// the admission on.
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
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before the response drops the inner call and the
    /// admission: the permit is released, the breaker records nothing (a
    /// cancellation says nothing about the service's health) and the request's
    /// context is completed as cancelled.
    pub struct PolicyFuture<F> {
        #[pin]
        future: Option<F>,
        // Made (boxed, so the future stays small to move) when the inner call
        // first waits: a call that is ready at once never makes a timer.
        sleep: Option<Pin<Box<Sleep>>>,
        admitted: Option<Admitted>,
        rejected: Option<Rejected>,
        // The Redis stages, while Redis has not answered (feature `redis`;
        // without it the type is empty and this is always `None`).
        remote: Option<Box<Remote>>,
    }

    impl<F> PinnedDrop for PolicyFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(a) = this.admitted.take() {
                a.admission.ignore();
                a.ctx.complete(Outcome::Cancelled);
            }
            // Dropped while Redis decides: counted as a refusal for
            // `cancelled`, as a waiting `Policy::admit` is.
            #[cfg(feature = "redis")]
            if let Some(r) = this.remote.take() {
                r.policy.record_cancelled();
                r.ctx.complete(Outcome::Cancelled);
            }
        }
    }
}

impl<F> PolicyFuture<F> {
    fn rejected(rejected: Rejected) -> Self {
        Self {
            future: None,
            sleep: None,
            admitted: None,
            rejected: Some(rejected),
            remote: None,
        }
    }

    fn exempt(future: F) -> Self {
        Self {
            future: Some(future),
            sleep: None,
            admitted: None,
            rejected: None,
            remote: None,
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
        #[cfg(feature = "redis")]
        if let Some(remote) = this.remote.as_mut() {
            let passed = ready!(remote.future.as_mut().poll(cx));
            let Some(r) = this.remote.take() else {
                unreachable!("just polled")
            };
            let admitted = match passed {
                Ok(lease) => r.policy.try_admit_with(
                    &r.ctx,
                    r.reserved,
                    Instant::now(),
                    crate::policy::RemoteStages::Passed(lease),
                ),
                Err(e) => {
                    r.policy.record_refusal(&e);
                    Err(e)
                }
            };
            match admitted {
                Ok(admission) => {
                    *this.admitted = Some(Admitted {
                        admission,
                        ctx: r.ctx,
                        cfg: r.cfg,
                    });
                }
                Err(e) => {
                    this.future.set(None);
                    return Poll::Ready(Err(Rejected::new(
                        e.stage().unwrap_or(Stage::Deadline),
                        e.rejection().unwrap_or(Rejection::ShuttingDown),
                    )
                    .into()));
                }
            }
        }
        let Some(future) = this.future.as_mut().as_pin_mut() else {
            return Poll::Ready(Err(this
                .rejected
                .take()
                .map_or_else(|| "polled after completion".into(), Into::into)));
        };
        let polled = match this.admitted.as_ref() {
            Some(a) => a.ctx.enter(|| future.poll(cx)),
            None => future.poll(cx),
        };
        if let Poll::Ready(result) = polled {
            this.future.set(None);
            *this.sleep = None;
            let Some(Admitted {
                mut admission,
                ctx,
                cfg,
            }) = this.admitted.take()
            else {
                // An exempt route: nothing held.
                return Poll::Ready(
                    result
                        .map(|r| r.map(ResponseBody::unguarded))
                        .map_err(Into::into),
                );
            };
            return Poll::Ready(match result {
                Ok(response) => {
                    let verdict = cfg
                        .classifier
                        .classify_response(response.status(), response.headers());
                    let total = match cfg.body_timeout {
                        BodyTimeout::RequestDeadline => Some(admission.deadline()),
                        BodyTimeout::After(t) => Some(later(Instant::now(), t)),
                        BodyTimeout::Unbounded => None,
                    };
                    let deadline = match (total, cfg.body_idle_timeout) {
                        (None, None) => None,
                        (total, idle) => Some(BodyDeadline {
                            total: total.unwrap_or_else(|| later(Instant::now(), FAR)),
                            idle,
                            on_expiry: OnExpiry::Cut,
                        }),
                    };
                    // The work answered: an adaptive limit's sample ends here,
                    // not when a slow client has read the body.
                    admission.mark_end();
                    let mut guard = AdmissionGuard::new(
                        admission,
                        Some(ctx),
                        Arc::clone(&cfg.classifier),
                        verdict,
                        deadline,
                    );
                    if response.body().is_end_stream() {
                        // Nothing left to stream: record the outcome now, hold
                        // nothing.
                        guard.end();
                        drop(guard);
                        Ok(response.map(ResponseBody::unguarded))
                    } else {
                        let guard = Guard::Admission(Box::new(guard));
                        Ok(response.map(|b| ResponseBody::new(b, guard)))
                    }
                }
                Err(e) => {
                    let e: BoxError = e.into();
                    admission.record(cfg.classifier.classify_error(&*e));
                    ctx.complete(Outcome::Error);
                    Err(e)
                }
            });
        }
        let Some(a) = this.admitted.as_ref() else {
            return Poll::Pending;
        };
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(a.admission.deadline())));
        ready!(sleep.as_mut().poll(cx));
        this.future.set(None);
        *this.sleep = None;
        let after = match this.admitted.take() {
            Some(a) => {
                let after = a.admission.elapsed();
                a.admission.timed_out();
                a.ctx.complete(Outcome::TimedOut);
                after
            }
            None => Duration::ZERO,
        };
        Poll::Ready(Err(Rejected::new(
            Stage::Deadline,
            Rejection::TimedOut { after },
        )
        .into()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_round_trips() {
        let ms = Duration::from_millis;
        for (text, want) in [
            ("1H", Some(Duration::from_secs(3600))),
            ("2M", Some(Duration::from_secs(120))),
            ("3S", Some(Duration::from_secs(3))),
            ("250m", Some(ms(250))),
            ("7u", Some(Duration::from_micros(7))),
            ("99999999n", Some(Duration::from_nanos(99_999_999))),
            ("123456789m", None), // nine digits
            ("m", None),
            ("10x", None),
            ("-1S", None),
            ("", None),
        ] {
            assert_eq!(parse_grpc_timeout(text.as_bytes()), want, "{text:?}");
        }
        for d in [
            ms(1),
            ms(250),
            Duration::from_secs(30),
            Duration::from_secs(86_400 * 400),
        ] {
            let v = format_grpc_timeout(d);
            let back = parse_grpc_timeout(v.as_bytes()).unwrap();
            assert!(back >= d, "{v:?} gives {back:?} < {d:?}");
        }
        assert_eq!(format_grpc_timeout(ms(250)), "250000u"); // 250000000n has nine digits
        assert_eq!(format_grpc_timeout(Duration::from_secs(30)), "30000000u");
    }
}
