//! The tower layers in an axum router on loopback, and the properties users rely
//! on: overload answered with 503 / 429 (with `Retry-After`), permits held until a
//! streamed body ends, one limit shared by every service a layer makes.
#![cfg(feature = "tower")]

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::error_handling::HandleErrorLayer;
use axum::extract::Extension;
use axum::routing::get;
use heijunka::backpressure::{ConcurrencyLimit, Gcra};
use heijunka::breaker::{CircuitBreaker, SlidingWindowType, State};
use heijunka::context::RequestContext;
use heijunka::core::Rejection;
use heijunka::policy::Policy;
use heijunka::tower::{
    BreakerLayer, ConcurrencyLimitLayer, LoadShedLayer, PolicyLayer, RateLimitLayer, Rejected,
    Stage, handle_error,
};
use http::{Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::timeout;
use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};

/// Every test is bounded by this.
const LIMIT: Duration = Duration::from_secs(2);

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// Serves `app` on 127.0.0.1 (an OS-chosen port); returns the base URL.
async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn get_status(client: &HttpClient, url: &str) -> (StatusCode, http::HeaderMap) {
    let response = client.get(url.parse().unwrap()).await.unwrap();
    let (parts, body) = response.into_parts();
    let _ = body.collect().await;
    (parts.status, parts.headers)
}

/// A handler that reports it has started, then waits to be released.
#[derive(Clone)]
struct Gate {
    entered: Arc<Semaphore>,
    release: Arc<Semaphore>,
}

impl Gate {
    fn new() -> Self {
        Self {
            entered: Arc::new(Semaphore::new(0)),
            release: Arc::new(Semaphore::new(0)),
        }
    }

    async fn pass(&self) -> &'static str {
        self.entered.add_permits(1);
        self.release.acquire().await.unwrap().forget();
        "done"
    }

    async fn wait_entered(&self, n: u32) {
        self.entered.acquire_many(n).await.unwrap().forget();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_sheds_with_503_once_the_concurrency_limit_is_full() {
    timeout(LIMIT, async {
        let gate = Gate::new();
        let handler_gate = gate.clone();
        let limit = ConcurrencyLimit::new(2).unwrap();
        let app = Router::new()
            .route("/", get(move || async move { handler_gate.pass().await }))
            .layer(
                ServiceBuilder::new()
                    .layer(HandleErrorLayer::new(handle_error))
                    .layer(ConcurrencyLimitLayer::new(limit.clone())),
            );
        let url = serve(app).await;
        let client = client();

        // Two requests (two connections) take both permits and wait in the handler.
        let held: Vec<_> = (0..2)
            .map(|_| {
                let (client, url) = (client.clone(), url.clone());
                tokio::spawn(async move { get_status(&client, &url).await.0 })
            })
            .collect();
        gate.wait_entered(2).await;
        assert_eq!(limit.in_use(), 2);

        // The overload: every further request is refused at once with 503.
        for _ in 0..10 {
            let (status, headers) = get_status(&client, &url).await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(headers["x-heijunka-rejection"], "at_capacity");
            assert!(headers.get("retry-after").is_none());
        }

        gate.release.add_permits(2);
        for h in held {
            assert_eq!(h.await.unwrap(), StatusCode::OK);
        }
        gate.release.add_permits(1);
        assert_eq!(get_status(&client, &url).await.0, StatusCode::OK);
        assert_eq!(limit.in_use(), 0);
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_answers_429_with_retry_after_over_the_rate() {
    timeout(LIMIT, async {
        // One request per 10 s, bursts of 2: the third request in a row is over the
        // rate however slow this machine is.
        let rate = Gcra::builder(0.1).burst(2).build().unwrap();
        let app = Router::new().route("/", get(|| async { "ok" })).layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(handle_error))
                .layer(RateLimitLayer::new(rate)),
        );
        let url = serve(app).await;
        let client = client();
        assert_eq!(get_status(&client, &url).await.0, StatusCode::OK);
        assert_eq!(get_status(&client, &url).await.0, StatusCode::OK);
        for _ in 0..5 {
            let (status, headers) = get_status(&client, &url).await;
            assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
            let after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
            assert!((1..=10).contains(&after), "retry-after {after}");
        }
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_breaker_opens_on_5xx_and_answers_503_with_retry_after() {
    timeout(LIMIT, async {
        let breaker = CircuitBreaker::builder()
            .sliding_window(SlidingWindowType::CountBased, 4)
            .minimum_number_of_calls(4)
            .wait_duration_in_open_state(Duration::from_secs(30))
            .build()
            .unwrap();
        let app = Router::new()
            .route(
                "/",
                get(|| async { (StatusCode::BAD_GATEWAY, "downstream failed") }),
            )
            .route("/missing", get(|| async { StatusCode::NOT_FOUND }))
            .layer(
                ServiceBuilder::new()
                    .layer(HandleErrorLayer::new(handle_error))
                    .layer(BreakerLayer::new(breaker.clone())),
            );
        let url = serve(app).await;
        let client = client();
        // 4xx is the client's fault, not the dependency's: recorded as success.
        for _ in 0..4 {
            assert_eq!(
                get_status(&client, &format!("{url}/missing")).await.0,
                StatusCode::NOT_FOUND
            );
        }
        assert_eq!(breaker.state(), State::Closed);
        // Two 502s make the last four calls 50 % failures: the breaker opens.
        for _ in 0..2 {
            assert_eq!(get_status(&client, &url).await.0, StatusCode::BAD_GATEWAY);
        }
        assert_eq!(breaker.state(), State::Open);
        let (status, headers) = get_status(&client, &url).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(headers["x-heijunka-rejection"], "circuit_open");
        let after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=30).contains(&after), "retry-after {after}");
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_policy_sheds_at_capacity_times_out_with_504_and_passes_the_context() {
    timeout(LIMIT, async {
        let gate = Gate::new();
        let handler_gate = gate.clone();
        let policy = Policy::builder()
            .timeout(Duration::from_millis(200))
            .concurrency_limit(ConcurrencyLimit::new(1).unwrap())
            .build()
            .unwrap();
        let app = Router::new()
            .route(
                "/wait",
                get(move || async move { handler_gate.pass().await }),
            )
            .route(
                "/trace",
                get(|Extension(ctx): Extension<RequestContext>| async move {
                    ctx.trace_id().to_string()
                }),
            )
            .layer(
                ServiceBuilder::new()
                    .layer(HandleErrorLayer::new(handle_error))
                    .layer(PolicyLayer::new(policy.clone())),
            );
        let url = serve(app).await;
        let client = client();

        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        let req = http::Request::get(format!("{url}/trace"))
            .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
            .body(Empty::new())
            .unwrap();
        let body = client.request(req).await.unwrap().into_body();
        assert_eq!(body.collect().await.unwrap().to_bytes(), trace);

        let waiting = {
            let (client, url) = (client.clone(), format!("{url}/wait"));
            tokio::spawn(async move { get_status(&client, &url).await.0 })
        };
        gate.wait_entered(1).await;
        let (status, headers) = get_status(&client, &format!("{url}/trace")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(headers["x-heijunka-rejection"], "at_capacity");
        // Never released: the policy's 200 ms timeout answers 504 and frees the permit.
        assert_eq!(waiting.await.unwrap(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(policy.concurrency_limit().unwrap().in_use(), 0);
        assert_eq!(
            get_status(&client, &format!("{url}/trace")).await.0,
            StatusCode::OK
        );
    })
    .await
    .expect("bounded");
}

/// A body streaming what a channel sends, ending when the sender is dropped.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b))))
    }
}

/// Serves a router, wrapped by `layered`, whose `/stream` sends one chunk and then
/// holds its body open until the test drops the body's sender; checks that a second
/// request is refused while the first body is still streaming, and admitted once
/// it has ended. `in_use` reads the permits held.
async fn check_streaming(layered: impl FnOnce(Router) -> Router, in_use: impl Fn() -> u32) {
    let (senders_tx, mut senders_rx) = mpsc::channel::<mpsc::Sender<Bytes>>(8);
    let app = Router::new()
        .route(
            "/stream",
            get(move || {
                let senders_tx = senders_tx.clone();
                async move {
                    let (tx, rx) = mpsc::channel(4);
                    tx.send(Bytes::from_static(b"first")).await.unwrap();
                    senders_tx.send(tx).await.unwrap();
                    Body::new(ChannelBody(rx))
                }
            }),
        )
        .route("/", get(|| async { "ok" }));
    let url = serve(layered(app)).await;
    let client = client();

    let response = client
        .get(format!("{url}/stream").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "first");
    let sender = senders_rx.recv().await.unwrap();

    // Headers and a chunk are through, the body is still streaming: still held.
    assert_eq!(in_use(), 1);
    let (status, headers) = get_status(&client, &url).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["x-heijunka-rejection"], "at_capacity");

    sender.send(Bytes::from_static(b"second")).await.unwrap();
    let second = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(second, "second");
    assert_eq!(in_use(), 1);

    // The body ends: the permit comes back.
    drop(sender);
    assert!(body.frame().await.is_none());
    for _ in 0..100 {
        if in_use() == 0 {
            break;
        }
        tokio::task::yield_now().await; // the server's side of the body ends first
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(in_use(), 0);
    assert_eq!(get_status(&client, &url).await.0, StatusCode::OK);

    // A client that goes away mid-body also gives the permit back.
    let response = client
        .get(format!("{url}/stream").parse().unwrap())
        .await
        .unwrap();
    let sender = senders_rx.recv().await.unwrap();
    assert_eq!(in_use(), 1);
    drop(response);
    for _ in 0..100 {
        if in_use() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(in_use(), 0, "the connection closed, the body was dropped");
    drop(sender);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_permit_is_held_until_the_streamed_body_ends() {
    timeout(LIMIT, async {
        let limit = ConcurrencyLimit::new(1).unwrap();
        let layer = ServiceBuilder::new()
            .layer(HandleErrorLayer::new(handle_error))
            .layer(ConcurrencyLimitLayer::new(limit.clone()));
        check_streaming(|app| app.layer(layer), || limit.in_use()).await;
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_admission_is_held_until_the_streamed_body_ends() {
    timeout(LIMIT, async {
        let policy = Policy::builder()
            .concurrency_limit(ConcurrencyLimit::new(1).unwrap())
            .build()
            .unwrap();
        let layer = ServiceBuilder::new()
            .layer(HandleErrorLayer::new(handle_error))
            .layer(PolicyLayer::new(policy.clone()));
        check_streaming(
            |app| app.layer(layer),
            || policy.concurrency_limit().unwrap().in_use(),
        )
        .await;
    })
    .await
    .expect("bounded");
}

/// A handler answering `200 OK` with an empty body.
fn ok_service()
-> impl Service<(), Response = Response<String>, Error = Infallible, Future: Send> + Clone {
    service_fn(|()| async { Ok::<_, Infallible>(Response::new(String::from("ok"))) })
}

#[tokio::test]
async fn one_layer_shares_its_limit_across_the_services_it_makes() {
    let layer = ConcurrencyLimitLayer::new(ConcurrencyLimit::new(2).unwrap());
    // As a server would make them: one service per connection, and a cloned layer.
    let mut services: Vec<_> = (0..3).map(|_| layer.layer(ok_service())).collect();
    services.push(layer.clone().layer(ok_service()));
    let mut held = Vec::new();
    for svc in &mut services[..2] {
        held.push(svc.ready().await.unwrap().call(()).await.unwrap());
    }
    for svc in &mut services[2..] {
        let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
        let rejected = err.downcast_ref::<Rejected>().unwrap();
        assert_eq!(rejected.stage(), Stage::Concurrency);
        assert_eq!(rejected.reason(), Rejection::AtCapacity { limit: 2 });
    }
    assert_eq!(layer.limit().in_use(), 2);
    held.clear();
    assert_eq!(layer.limit().in_use(), 0);
    assert!(services[3].ready().await.unwrap().call(()).await.is_ok());
}

#[tokio::test]
async fn rate_and_shed_layers_share_their_state_across_services() {
    let rate = RateLimitLayer::new(Gcra::builder(0.1).burst(1).build().unwrap());
    let mut a = rate.layer(ok_service());
    let mut b = rate.layer(ok_service());
    assert!(a.ready().await.unwrap().call(()).await.is_ok());
    let err = b.ready().await.unwrap().call(()).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<Rejected>().unwrap().stage(),
        Stage::RateLimit
    );

    let shedding = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = shedding.clone();
    let shed = LoadShedLayer::from_fn(move || {
        if flag.load(std::sync::atomic::Ordering::Relaxed) {
            Err(Rejection::QueueFull { capacity: 8 })
        } else {
            Ok(())
        }
    });
    let mut a = shed.layer(ok_service());
    assert!(a.ready().await.unwrap().call(()).await.is_ok());
    shedding.store(true, std::sync::atomic::Ordering::Relaxed);
    let err = a.ready().await.unwrap().call(()).await.unwrap_err();
    let rejected = err.downcast_ref::<Rejected>().unwrap();
    assert_eq!(rejected.stage(), Stage::LoadShed);
    assert_eq!(rejected.reason(), Rejection::QueueFull { capacity: 8 });
}

#[tokio::test]
async fn breaker_counts_inner_errors_as_failures_and_passes_them_through() {
    let breaker = CircuitBreaker::builder()
        .sliding_window(SlidingWindowType::CountBased, 2)
        .minimum_number_of_calls(2)
        .build()
        .unwrap();
    let mut svc = BreakerLayer::new(breaker.clone()).layer(service_fn(|()| async {
        Err::<Response<String>, _>(std::io::Error::other("connection reset"))
    }));
    for _ in 0..2 {
        let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
        assert!(err.downcast_ref::<std::io::Error>().is_some());
    }
    assert_eq!(breaker.state(), State::Open);
    let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<Rejected>().unwrap().stage(),
        Stage::Breaker
    );
}

#[tokio::test(start_paused = true)]
async fn policy_time_out_and_5xx_bodies_are_breaker_failures() {
    let breaker = CircuitBreaker::builder()
        .sliding_window(SlidingWindowType::CountBased, 2)
        .minimum_number_of_calls(2)
        .build()
        .unwrap();
    let policy = Policy::builder()
        .timeout(Duration::from_millis(50))
        .breaker(breaker.clone())
        .build()
        .unwrap();
    let mut svc = PolicyLayer::new(policy).layer(service_fn(|req: http::Request<()>| async move {
        if req.uri().path() == "/hang" {
            std::future::pending::<()>().await;
        }
        let mut r = Response::new(String::from("boom"));
        *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        Ok::<_, Infallible>(r)
    }));
    let hang = http::Request::get("/hang").body(()).unwrap();
    let err = svc.ready().await.unwrap().call(hang).await.unwrap_err();
    let rejected = err.downcast_ref::<Rejected>().unwrap();
    assert_eq!(rejected.stage(), Stage::Deadline);
    assert_eq!(
        rejected.reason(),
        Rejection::TimedOut {
            after: Duration::from_millis(50)
        }
    );
    assert_eq!(breaker.state(), State::Closed);
    // The 500's outcome is recorded when its body is done, here when it is dropped.
    let response = svc
        .ready()
        .await
        .unwrap()
        .call(http::Request::new(()))
        .await
        .unwrap();
    assert_eq!(
        breaker.state(),
        State::Closed,
        "not recorded before the body ends"
    );
    drop(response);
    assert_eq!(breaker.state(), State::Open);
}

/// Outcomes of the policy layer: a body streamed to its end is a success, a body
/// dropped mid-stream (the client went away) records nothing, and a time-out is a
/// failure in the breaker and a drop for an adaptive limit.
#[tokio::test(start_paused = true)]
async fn policy_layer_outcomes_follow_the_body() {
    use heijunka::backpressure::{AdaptiveLimit, Aimd};
    let breaker = CircuitBreaker::builder()
        .sliding_window(SlidingWindowType::CountBased, 10)
        .minimum_number_of_calls(10)
        .build()
        .unwrap();
    let aimd = Aimd::builder()
        .initial_limit(10)
        .min_limit(1)
        .max_limit(10)
        .build()
        .unwrap();
    let limit = AdaptiveLimit::builder(aimd).build().unwrap();
    let policy = Policy::builder()
        .timeout(Duration::from_millis(50))
        .adaptive_limit(limit.clone())
        .breaker(breaker.clone())
        .build()
        .unwrap();
    let senders = Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = senders.clone();
    let mut svc = PolicyLayer::new(policy).layer(service_fn(move |req: http::Request<()>| {
        let keep = keep.clone();
        async move {
            if req.uri().path() == "/hang" {
                std::future::pending::<()>().await;
            }
            let (tx, rx) = mpsc::channel(4);
            tx.send(Bytes::from_static(b"chunk")).await.unwrap();
            if req.uri().path() == "/whole" {
                drop(tx); // the body ends after one chunk
            } else {
                keep.lock().unwrap().push(tx); // the body stays open
            }
            Ok::<_, Infallible>(Response::new(ChannelBody(rx)))
        }
    }));

    // Streamed to its end: a success.
    let whole = http::Request::get("/whole").body(()).unwrap();
    let mut body = svc
        .ready()
        .await
        .unwrap()
        .call(whole)
        .await
        .unwrap()
        .into_body();
    while body.frame().await.is_some() {}
    drop(body);
    assert_eq!(breaker.stats().successful_calls, 1);
    assert_eq!(limit.stats().successes, 1);

    // Dropped after one chunk of an open body: nothing recorded.
    let cut = http::Request::get("/cut").body(()).unwrap();
    let mut body = svc
        .ready()
        .await
        .unwrap()
        .call(cut)
        .await
        .unwrap()
        .into_body();
    assert!(body.frame().await.is_some());
    drop(body);
    let stats = breaker.stats();
    assert_eq!((stats.successful_calls, stats.failed_calls), (1, 0));
    assert_eq!(limit.stats().ignored, 1);
    assert_eq!(limit.in_flight(), 0);

    // A time-out: a breaker failure and an adaptive drop.
    let hang = http::Request::get("/hang").body(()).unwrap();
    let err = svc.ready().await.unwrap().call(hang).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<Rejected>().unwrap().stage(),
        Stage::Deadline
    );
    assert_eq!(breaker.stats().failed_calls, 1);
    assert_eq!(limit.stats().drops, 1);
    assert_eq!(limit.in_flight(), 0);
}
