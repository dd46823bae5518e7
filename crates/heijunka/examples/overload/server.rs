//! The service under test (`--role server --mode M --dep URL`), and `--serve`.
//!
//! One axum route, `GET /`, answers each request by calling the dependency over
//! HTTP (a hyper client) and maps its answer to 200 or 502. The protection, when
//! there is one, wraps that route only, so `GET /stats` (JSON: in flight, the
//! adaptive limit, the breaker state) and `GET /metrics` (Prometheus text) stay
//! answerable under any load.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::error_handling::HandleErrorLayer;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{MethodRouter, get};
use heijunka::backpressure::{AdaptiveLimit, Vegas};
use heijunka::breaker::{CircuitBreaker, SlidingWindowType, State as BreakerState};
use heijunka::policy::Policy;
use heijunka::shutdown::Shutdown;
use heijunka::tower::{PolicyLayer, handle_error};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use tower::ServiceBuilder;

use crate::BoxError;
use crate::scenario::{GRACE, REQUEST_TIMEOUT, TOWER_CONCURRENCY, TOWER_TUNED_CONCURRENCY};

/// The server's protection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Plain axum: no time-out, no limit.
    Unprotected,
    /// tower's own layers: `TimeoutLayer` + `LoadShedLayer` + `ConcurrencyLimitLayer`.
    Tower,
    /// heijunka's `PolicyLayer`: time-out, adaptive limit (Vegas), breaker.
    Heijunka,
    /// The sweep's reference: tower's layers with the limit tuned to the
    /// dependency ([`TOWER_TUNED_CONCURRENCY`]).
    TowerTuned,
}

impl Mode {
    /// The storm's three runs.
    pub(crate) const ALL: [Mode; 3] = [Mode::Unprotected, Mode::Tower, Mode::Heijunka];
    /// The sweep's modes: the three, and tower tuned to the dependency.
    pub(crate) const SWEEP: [Mode; 4] = [
        Mode::Unprotected,
        Mode::Tower,
        Mode::Heijunka,
        Mode::TowerTuned,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Mode::Unprotected => "unprotected",
            Mode::Tower => "tower",
            Mode::Heijunka => "heijunka",
            Mode::TowerTuned => "tower-tuned",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        Self::SWEEP.into_iter().find(|m| m.name() == s)
    }
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

#[derive(Clone)]
struct App {
    client: HttpClient,
    dep: http::Uri,
    shutdown: Shutdown,
    in_flight: Arc<AtomicUsize>,
    policy: Option<Policy>,
    prometheus: PrometheusHandle,
}

/// Counts a request in flight while it is in the handler (dropped with it on a
/// time-out).
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn enter(count: &Arc<AtomicUsize>) -> Self {
        // Relaxed: a gauge read by /stats; nothing else depends on it.
        let n = count.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::gauge!("overload_in_flight").set(n as f64);
        Self(Arc::clone(count))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // Relaxed: pairs with `enter` only as a counter.
        let n = self.0.fetch_sub(1, Ordering::Relaxed) - 1;
        metrics::gauge!("overload_in_flight").set(n as f64);
    }
}

async fn handler(State(app): State<App>) -> (StatusCode, &'static str) {
    let _in_flight = InFlight::enter(&app.in_flight);
    // Graceful shutdown: in-flight requests are counted; none start after SIGTERM.
    let Ok(_draining) = app.shutdown.try_enter_owned() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    };
    let answer = match app.client.get(app.dep.clone()).await {
        Ok(response) => {
            let status = response.status();
            match response.into_body().collect().await {
                Ok(_) if status == StatusCode::OK => (StatusCode::OK, "ok"),
                _ => (StatusCode::BAD_GATEWAY, "dependency failed"),
            }
        }
        Err(_) => (StatusCode::BAD_GATEWAY, "dependency unreachable"),
    };
    metrics::counter!("overload_responses_total", "status" => answer.0.as_str().to_owned())
        .increment(1);
    answer
}

/// The operator's view, for the client's sampler and for humans.
fn stats_json(app: &App) -> serde_json::Value {
    let policy = app.policy.as_ref();
    json!({
        // Relaxed: a gauge.
        "in_flight": app.in_flight.load(Ordering::Relaxed),
        "limit": policy.and_then(|p| p.adaptive_limit()).map(AdaptiveLimit::limit),
        "breaker": policy.and_then(|p| p.breaker()).map(|b| breaker_level(b.state())),
        "breaker_state": policy.and_then(|p| p.breaker()).map(|b| b.state().to_string()),
        // The policy's own figures (admitted, refused by stage and reason, in
        // flight, shedding, ...), as a service without a metrics stack serves them.
        "policy": policy.map(Policy::stats),
    })
}

/// The breaker state as a level for a chart: 0 closed, 1 half-open, 2 open.
fn breaker_level(state: BreakerState) -> u8 {
    match state {
        BreakerState::HalfOpen => 1,
        BreakerState::Open | BreakerState::ForcedOpen => 2,
        _ => 0,
    }
}

async fn stats(State(app): State<App>) -> ([(http::header::HeaderName, &'static str); 1], String) {
    (
        [(http::header::CONTENT_TYPE, "application/json")],
        stats_json(&app).to_string(),
    )
}

async fn metrics_text(State(app): State<App>) -> String {
    app.prometheus.render()
}

/// tower's errors as responses: a shed request 503, a time-out 504.
async fn tower_error(err: BoxError) -> (StatusCode, &'static str) {
    if err.is::<tower::load_shed::error::Overloaded>() {
        (StatusCode::SERVICE_UNAVAILABLE, "overloaded")
    } else if err.is::<tower::timeout::error::Elapsed>() {
        (StatusCode::GATEWAY_TIMEOUT, "timed out")
    } else {
        (StatusCode::INTERNAL_SERVER_ERROR, "error")
    }
}

/// heijunka's policy for this service: the same time-out as tower's, an adaptive
/// limit (Vegas, which finds the concurrency where requests start to queue)
/// partitioned by criticality, and a breaker on the dependency's answers. No figure here comes from the
/// dependency's capacity.
fn policy() -> Result<Policy, BoxError> {
    // Vegas with Netflix's defaults (initial 20, between 1 and 1000): it estimates
    // the queue in front of the dependency from the lowest RTT seen and keeps it
    // between 3 and 6 requests.
    let limit = AdaptiveLimit::builder(Vegas::builder().build()?)
        .name("demo")
        .build()?;
    let breaker = CircuitBreaker::builder()
        .name("dependency")
        .sliding_window(SlidingWindowType::CountBased, 20)
        .minimum_number_of_calls(10)
        .failure_rate_threshold(0.5)
        .wait_duration_in_open_state(Duration::from_millis(500))
        .permitted_number_of_calls_in_half_open_state(3)
        .build()?;
    // Criticality (the client's `x-request-criticality` header, a 20/60/20
    // critical/default/sheddable mix): sheddable requests may fill 30 % of the
    // limit at most, and its upper half is kept for critical ones (a fifth of
    // the traffic, but the part that must get through).
    Ok(Policy::builder()
        .name("demo")
        .timeout(REQUEST_TIMEOUT)
        .adaptive_limit(limit)
        .sheddable_share(0.3)
        .critical_reserve(0.5)
        .breaker(breaker)
        .build()?)
}

fn route(mode: Mode, policy: Option<&Policy>, shutdown: &Shutdown) -> MethodRouter<App> {
    match (mode, policy) {
        (Mode::Heijunka, Some(policy)) => get(handler).layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(handle_error))
                .layer(
                    // The demo's client is trusted to tag its requests.
                    PolicyLayer::new(policy.clone())
                        .shutdown(shutdown.token())
                        .criticality_header(true),
                ),
        ),
        (Mode::Tower | Mode::TowerTuned, _) => get(handler).layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(tower_error))
                .timeout(REQUEST_TIMEOUT)
                .load_shed()
                .concurrency_limit(if mode == Mode::Tower {
                    TOWER_CONCURRENCY
                } else {
                    TOWER_TUNED_CONCURRENCY
                }),
        ),
        _ => get(handler),
    }
}

/// Installs the Prometheus recorder as the global one (before any policy is
/// built, so every handle the crates register goes to it).
fn prometheus() -> Result<PrometheusHandle, BoxError> {
    let handle = PrometheusBuilder::new().install_recorder()?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// Serves `mode` on `listener` until SIGTERM / Ctrl-C, then drains (heijunka-shutdown)
/// and returns the shutdown report as JSON.
async fn run(
    mode: Mode,
    listener: tokio::net::TcpListener,
    dep: http::Uri,
) -> Result<serde_json::Value, BoxError> {
    let prometheus = prometheus()?;
    let policy = match mode {
        Mode::Heijunka => Some(policy()?),
        _ => None,
    };
    let shutdown = Shutdown::builder()
        .name("server")
        .grace_period(GRACE)
        .build()?;
    shutdown.install_signal_handlers()?;
    let app = App {
        client: Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(1024)
            .build_http(),
        dep,
        shutdown: shutdown.clone(),
        in_flight: Arc::new(AtomicUsize::new(0)),
        policy: policy.clone(),
        prometheus,
    };
    let router = Router::new()
        .route("/", route(mode, policy.as_ref(), &shutdown))
        .route("/stats", get(stats))
        .route("/metrics", get(metrics_text))
        .with_state(app);
    crate::announce(&listener)?;
    let token = shutdown.token();
    let server = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move { token.triggered().await })
            .await
    });
    shutdown.on_stop_with_timeout("http server", GRACE, move || async move {
        server.await?.map_err(BoxError::from)
    })?;
    let report = shutdown.wait().await;
    Ok(json!({
        "text": report.to_string(),
        "clean": report.is_clean(),
        "in_flight_at_trigger": report.in_flight_at_trigger,
        "in_flight_at_deadline": report.in_flight_at_deadline,
        "drain_ms": report.drain_time.as_secs_f64() * 1000.0,
    }))
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

/// `--role server`: serves until SIGTERM, then prints `SHUTDOWN {json}`.
pub(crate) fn main(mode: Mode, port: u16, dep: &str) -> Result<(), BoxError> {
    let dep: http::Uri = format!("{dep}/call").parse()?;
    let runtime = runtime()?;
    let report = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        run(mode, listener, dep).await
    })?;
    println!("SHUTDOWN {report}");
    // Abandoned dependency calls may still be pending; do not wait for them.
    runtime.shutdown_timeout(Duration::from_millis(100));
    Ok(())
}

/// `--serve`: the heijunka-mode server with the dependency in a task of the same
/// process, for an external load generator; `/metrics` in Prometheus text.
pub(crate) fn serve(port: u16) -> Result<(), BoxError> {
    let runtime = runtime()?;
    let report = runtime.block_on(async {
        let dep_listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let dep: http::Uri = format!("http://{}/call", dep_listener.local_addr()?).parse()?;
        tokio::spawn(crate::dependency::serve(dep_listener));
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        run(Mode::Heijunka, listener, dep).await
    })?;
    println!("shutdown: {}", report["text"].as_str().unwrap_or("?"));
    runtime.shutdown_timeout(Duration::from_millis(100));
    Ok(())
}
