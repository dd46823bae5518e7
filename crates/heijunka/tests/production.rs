//! The facade as a production service uses it (issue 20): deadline headers in and
//! out, body idle time-outs, outcome classification (HTTP and gRPC, headers and
//! trailers), exempt routes while the inbound policy sheds, readiness mode behind
//! tower's `load_shed`, bounded waiting, and each future dropped at every await.
#![cfg(feature = "tower")]

mod support;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::error_handling::HandleErrorLayer;
use axum::routing::get;
use heijunka::backpressure::{ConcurrencyLimit, Gcra};
use heijunka::breaker::CircuitBreaker;
use heijunka::context::RequestContext;
use heijunka::core::Rejection;
use heijunka::core::cancel::{Outcome, Polled, cancel_points};
use heijunka::policy::{Policy, PolicyError, Stage};
use heijunka::shutdown::Shutdown;
use heijunka::tower::{
    BreakerLayer, DeadlineFormat, GrpcClassifier, PolicyLayer, Rejected, handle_error,
};
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;
use support::{ChannelBody, paused_runtime};
use tokio::sync::mpsc;
use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The `remaining()` a handler behind `layer` sees for `req`.
async fn remaining_seen(layer: PolicyLayer, req: http::Request<()>) -> Duration {
    let mut svc = layer.layer(service_fn(|req: http::Request<()>| async move {
        let ctx = req.extensions().get::<RequestContext>().cloned().unwrap();
        Ok::<_, Infallible>(http::Response::new(format!(
            "{}",
            ctx.remaining().as_millis()
        )))
    }));
    let response = svc.ready().await.unwrap().call(req).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    ms(std::str::from_utf8(&body).unwrap().parse().unwrap())
}

#[tokio::test(start_paused = true)]
async fn a_configured_deadline_header_shortens_the_deadline() {
    let policy = Policy::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let layer = PolicyLayer::new(policy.clone())
        .deadline_header("x-request-deadline", DeadlineFormat::TimeoutMillis)
        .unwrap();
    let req = http::Request::builder()
        .header("x-request-deadline", "250")
        .body(())
        .unwrap();
    assert_eq!(remaining_seen(layer.clone(), req).await, ms(250));
    // Unreadable: the policy's deadline holds.
    let req = http::Request::builder()
        .header("x-request-deadline", "soon")
        .body(())
        .unwrap();
    assert_eq!(remaining_seen(layer, req).await, ms(2000));

    // As Unix milliseconds (the wall clock: a deadline 40 s away is cut to 2 s).
    let layer = PolicyLayer::new(policy.clone())
        .deadline_header("x-request-deadline", DeadlineFormat::UnixMillis)
        .unwrap();
    let far = std::time::SystemTime::now() + Duration::from_secs(40);
    let unix = far
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let req = http::Request::builder()
        .header("x-request-deadline", unix.to_string())
        .body(())
        .unwrap();
    assert_eq!(remaining_seen(layer, req).await, ms(2000));

    let err = PolicyLayer::new(policy)
        .deadline_header("bad header", DeadlineFormat::TimeoutMillis)
        .unwrap_err();
    assert!(err.to_string().contains("deadline_header"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_request_whose_deadline_has_passed_is_refused_before_it_takes_a_permit() {
    let limit = ConcurrencyLimit::new(1).unwrap();
    let policy = Policy::builder()
        .concurrency_limit(limit.clone())
        .build()
        .unwrap();
    let layer = PolicyLayer::new(policy)
        .deadline_header("x-request-deadline", DeadlineFormat::UnixMillis)
        .unwrap();
    let past = std::time::SystemTime::now() - Duration::from_secs(1);
    let unix = past
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let mut svc = layer.layer(service_fn(|_: http::Request<()>| async {
        Ok::<_, Infallible>(http::Response::new(String::new()))
    }));
    let req = http::Request::builder()
        .header("x-request-deadline", unix.to_string())
        .body(())
        .unwrap();
    let err = svc.ready().await.unwrap().call(req).await.unwrap_err();
    let rejected = err.downcast_ref::<Rejected>().unwrap();
    assert_eq!(rejected.stage(), Stage::Deadline);
    assert_eq!(limit.in_use(), 0, "refused before the limit");
}

#[tokio::test(start_paused = true)]
async fn the_body_idle_timeout_ends_a_body_that_stops_sending() {
    let limit = ConcurrencyLimit::new(1).unwrap();
    let policy = Policy::builder()
        .timeout(Duration::from_secs(60))
        .concurrency_limit(limit.clone())
        .build()
        .unwrap();
    let (tx, rx) = mpsc::channel(8);
    let mut rx = Some(rx);
    let layer = PolicyLayer::new(policy).body_idle_timeout(ms(100)).unwrap();
    let mut svc = layer.layer(service_fn(move |_: http::Request<()>| {
        let body = ChannelBody(rx.take().unwrap());
        async move { Ok::<_, Infallible>(http::Response::new(body)) }
    }));
    let mut body = support::body_of(&mut svc, http::Request::new(())).await;
    let start = tokio::time::Instant::now();
    // Frames 80 ms apart keep it alive past the 100 ms idle limit, four times.
    let sender = tokio::spawn({
        let tx = tx.clone();
        async move {
            for _ in 0..4 {
                tokio::time::sleep(ms(80)).await;
                tx.send(Frame::data(Bytes::from("x"))).await.unwrap();
            }
        }
    });
    for _ in 0..4 {
        let frame = body.frame().await.unwrap().unwrap();
        assert!(frame.is_data());
    }
    sender.await.unwrap();
    assert_eq!(limit.in_use(), 1);
    // Then silence: 100 ms after the last frame the body ends with a time-out.
    let err = body.frame().await.unwrap().unwrap_err();
    assert!(err.downcast_ref::<Rejected>().is_some(), "{err}");
    assert_eq!(start.elapsed(), ms(420));
    assert_eq!(limit.in_use(), 0);
    assert!(body.frame().await.is_none(), "ended after the error");
    drop(tx);
}

/// A body of frames that are all ready.
struct Frames(std::collections::VecDeque<Frame<Bytes>>);

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(Ok))
    }
}

/// A gRPC-like service: 200 with a data frame, its `grpc-status` either in the
/// trailers or (a trailers-only response) in the headers.
fn grpc_service(
    code: &'static str,
    in_trailers: bool,
) -> impl Service<
    http::Request<()>,
    Response = http::Response<Frames>,
    Error = Infallible,
    Future = impl std::future::Future<Output = Result<http::Response<Frames>, Infallible>> + Send,
> + Clone {
    service_fn(move |_: http::Request<()>| async move {
        let mut frames = std::collections::VecDeque::from([Frame::data(Bytes::from("message"))]);
        let mut response_headers = HeaderMap::new();
        if in_trailers {
            let mut t = HeaderMap::new();
            t.insert("grpc-status", HeaderValue::from_static(code));
            frames.push_back(Frame::trailers(t));
        } else {
            response_headers.insert("grpc-status", HeaderValue::from_static(code));
        }
        let mut response = http::Response::new(Frames(frames));
        *response.headers_mut() = response_headers;
        Ok::<_, Infallible>(response)
    })
}

#[tokio::test]
async fn grpc_status_in_trailers_or_headers_decides_the_breaker_outcome() {
    for (code, in_trailers, failed) in [
        ("14", true, 1),  // UNAVAILABLE
        ("4", true, 1),   // DEADLINE_EXCEEDED
        ("5", true, 0),   // NOT_FOUND: an answer, not a failure
        ("0", true, 0),   // OK
        ("14", false, 1), // trailers-only response
        ("5", false, 0),
    ] {
        let breaker = CircuitBreaker::builder().name("grpc").build().unwrap();
        let policy = Policy::builder().breaker(breaker.clone()).build().unwrap();
        let mut svc = PolicyLayer::client(policy)
            .classifier(GrpcClassifier::new())
            .layer(grpc_service(code, in_trailers));
        let response = svc
            .ready()
            .await
            .unwrap()
            .call(http::Request::new(()))
            .await
            .unwrap();
        let collected = response.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers().is_some(), in_trailers);
        let stats = breaker.stats();
        assert_eq!(
            (stats.calls, stats.failed_calls),
            (1, failed),
            "code {code}, in trailers: {in_trailers}"
        );

        // The breaker layer alone classifies the same way.
        let breaker = CircuitBreaker::builder().name("grpc").build().unwrap();
        let mut svc = BreakerLayer::new(breaker.clone())
            .classifier(GrpcClassifier::new())
            .layer(grpc_service(code, in_trailers));
        let response = svc
            .ready()
            .await
            .unwrap()
            .call(http::Request::new(()))
            .await
            .unwrap();
        if in_trailers {
            assert_eq!(
                breaker.stats().calls,
                0,
                "decided at the trailers, not the headers"
            );
        }
        let _ = response.into_body().collect().await.unwrap();
        let stats = breaker.stats();
        assert_eq!(
            (stats.calls, stats.failed_calls),
            (1, failed),
            "breaker layer, code {code}"
        );
    }
}

#[tokio::test]
async fn http_4xx_is_not_a_failure_and_5xx_is() {
    let breaker = CircuitBreaker::builder().name("http").build().unwrap();
    let policy = Policy::builder().breaker(breaker.clone()).build().unwrap();
    let mut svc =
        PolicyLayer::client(policy).layer(service_fn(|req: http::Request<()>| async move {
            let status: u16 = req.uri().path()[1..].parse().unwrap();
            let mut r = http::Response::new(String::from("body"));
            *r.status_mut() = StatusCode::from_u16(status).unwrap();
            Ok::<_, Infallible>(r)
        }));
    for status in [200, 404, 400, 429, 500, 503] {
        let req = http::Request::get(format!("/{status}")).body(()).unwrap();
        let r = svc.ready().await.unwrap().call(req).await.unwrap();
        let _ = r.into_body().collect().await;
    }
    let stats = breaker.stats();
    assert_eq!((stats.calls, stats.failed_calls), (6, 2));
}

#[tokio::test]
async fn health_routes_answer_while_the_inbound_limit_sheds() {
    let limit = ConcurrencyLimit::new(2).unwrap();
    let policy = Policy::builder()
        .concurrency_limit(limit.clone())
        .build()
        .unwrap();
    let app: Router = Router::new()
        .route("/api/orders", get(|| async { "orders" }))
        .route("/health", get(|| async { "ok" }))
        .route("/health/live", get(|| async { "ok" }))
        .route("/healthz", get(|| async { "not exempt" }))
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(handle_error))
                .layer(PolicyLayer::new(policy).exempt("/health")),
        );
    let status = |path: &'static str| {
        let app = app.clone();
        async move {
            app.oneshot(http::Request::get(path).body(Body::empty()).unwrap())
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(status("/api/orders").await, 200);
    let _held = (
        limit.try_acquire_owned().unwrap(),
        limit.try_acquire_owned().unwrap(),
    );
    assert_eq!(status("/api/orders").await, 503, "the inbound limit sheds");
    assert_eq!(status("/health").await, 200, "health is exempt");
    assert_eq!(status("/health/live").await, 200, "and below it");
    assert_eq!(
        status("/healthz").await,
        503,
        "a prefix is a path segment, not a string prefix"
    );
}

#[tokio::test]
async fn a_route_can_have_its_own_policy() {
    let api = ConcurrencyLimit::new(1).unwrap();
    let metrics = ConcurrencyLimit::new(1).unwrap();
    let layer = PolicyLayer::new(
        Policy::builder()
            .concurrency_limit(api.clone())
            .build()
            .unwrap(),
    )
    .route(
        "/metrics",
        Policy::builder()
            .concurrency_limit(metrics.clone())
            .build()
            .unwrap(),
    );
    let mut svc = layer.layer(service_fn(|_: http::Request<()>| async {
        Ok::<_, Infallible>(http::Response::new(String::from("x")))
    }));
    let r = svc
        .ready()
        .await
        .unwrap()
        .call(http::Request::get("/metrics").body(()).unwrap())
        .await
        .unwrap();
    assert_eq!((api.in_use(), metrics.in_use()), (0, 1));
    drop(r);
    assert_eq!(metrics.in_use(), 0);
}

#[tokio::test]
async fn readiness_mode_lets_load_shed_see_saturation() {
    let limit = ConcurrencyLimit::new(1).unwrap();
    let policy = Policy::builder()
        .concurrency_limit(limit.clone())
        .build()
        .unwrap();
    let mut svc = ServiceBuilder::new()
        .load_shed()
        .layer(PolicyLayer::new(policy).reserve_in_poll_ready(true))
        .service(service_fn(|_: http::Request<()>| async {
            Ok::<_, Infallible>(http::Response::new(String::from("streamed")))
        }));
    let first = svc
        .ready()
        .await
        .unwrap()
        .call(http::Request::new(()))
        .await
        .unwrap();
    assert_eq!(limit.in_use(), 1, "the first body holds the permit");
    // tower's load_shed asks poll_ready; the policy says "not ready", so it sheds
    // at once with its own Overloaded error (the request is not queued).
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(http::Request::new(()))
        .await
        .unwrap_err();
    assert!(
        err.downcast_ref::<tower::load_shed::error::Overloaded>()
            .is_some(),
        "{err}"
    );
    let _ = first.into_body().collect().await;
    // The shed poll_ready kept its place in the limit's queue (as tower's own
    // ConcurrencyLimit does), so the freed permit went to it: set aside for that
    // waiter, not held by anyone yet (`in_use` counts held permits, as issue
    // #26 asked), and not free for another caller; the next call uses it.
    assert_eq!(limit.in_use(), 0);
    assert!(
        limit.try_acquire().is_err(),
        "set aside for the queued poll_ready"
    );
    let again = svc
        .ready()
        .await
        .unwrap()
        .call(http::Request::new(()))
        .await
        .unwrap();
    drop(again);
    assert_eq!(limit.in_use(), 0);
}

#[tokio::test]
async fn no_reservation_outlives_a_refused_call() {
    let limit = ConcurrencyLimit::new(4).unwrap();
    let policy = Policy::builder()
        .rate_limiter(Gcra::builder(0.001).burst(1).build().unwrap())
        .concurrency_limit(limit.clone())
        .build()
        .unwrap();
    let mut svc = PolicyLayer::new(policy)
        .reserve_in_poll_ready(true)
        .layer(service_fn(|_: http::Request<()>| async {
            Ok::<_, Infallible>(http::Response::new(String::new()))
        }));
    let ok = svc
        .ready()
        .await
        .unwrap()
        .call(http::Request::new(()))
        .await
        .unwrap();
    drop(ok);
    std::future::poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
    assert!(svc.holds_reservation());
    assert_eq!(limit.in_use(), 1, "reserved in poll_ready");
    let err = svc.call(http::Request::new(())).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<Rejected>().unwrap().stage(),
        Stage::RateLimit
    );
    assert!(!svc.holds_reservation());
    assert_eq!(
        limit.in_use(),
        0,
        "the refused call gave its reservation back"
    );
}

#[tokio::test(start_paused = true)]
async fn readiness_mode_waits_up_to_max_wait_then_refuses_the_call() {
    let limit = ConcurrencyLimit::new(1).unwrap();
    let policy = Policy::builder()
        .concurrency_limit(limit.clone())
        .max_wait(ms(50))
        .build()
        .unwrap();
    let mut svc = PolicyLayer::new(policy)
        .reserve_in_poll_ready(true)
        .layer(service_fn(|_: http::Request<()>| async {
            Ok::<_, Infallible>(http::Response::new(String::new()))
        }));
    let held = limit.try_acquire_owned().unwrap();
    let start = tokio::time::Instant::now();
    // poll_ready stays Ok (an error there would mean the service failed); the
    // call after it is refused.
    std::future::poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
    assert_eq!(start.elapsed(), ms(50));
    assert_eq!(limit.waiting(), 0, "the wait gave up its place");
    let err = svc.call(http::Request::new(())).await.unwrap_err();
    let rejected = err.downcast_ref::<Rejected>().unwrap();
    assert_eq!(rejected.stage(), Stage::Concurrency);
    // A permit that comes back within the wait is taken.
    let release = tokio::spawn(async move {
        tokio::time::sleep(ms(20)).await;
        drop(held);
    });
    std::future::poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
    release.await.unwrap();
    assert!(svc.holds_reservation());
    svc.call(http::Request::new(())).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_max_wait_refusal_does_not_fail_a_buffer_in_front() {
    // tower's Buffer treats an error from poll_ready as the service failing
    // for good; a refusal must fail that one request only.
    let limit = ConcurrencyLimit::new(1).unwrap();
    let policy = Policy::builder()
        .concurrency_limit(limit.clone())
        .max_wait(ms(50))
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .buffer(16)
        .layer(PolicyLayer::new(policy).reserve_in_poll_ready(true))
        .service(service_fn(|_: http::Request<()>| async {
            Ok::<_, Infallible>(http::Response::new(String::new()))
        }));
    let held = limit.try_acquire_owned().unwrap();
    let err = svc
        .clone()
        .oneshot(http::Request::new(()))
        .await
        .unwrap_err();
    assert!(err.downcast_ref::<Rejected>().is_some(), "{err}");
    drop(held);
    let ok = svc.clone().oneshot(http::Request::new(())).await;
    assert!(ok.is_ok(), "the buffer still serves: {:?}", ok.err());
}

#[tokio::test(start_paused = true)]
async fn policy_call_waits_up_to_max_wait() {
    let limit = ConcurrencyLimit::new(1).unwrap();
    let policy = Policy::builder()
        .concurrency_limit(limit.clone())
        .max_wait(ms(50))
        .build()
        .unwrap();
    let ctx = RequestContext::new();
    let held = limit.try_acquire_owned().unwrap();
    let start = tokio::time::Instant::now();
    let err = policy
        .call(&ctx, |_| async { Ok::<_, Infallible>(()) })
        .await
        .unwrap_err();
    assert_eq!(start.elapsed(), ms(50));
    assert!(matches!(
        err,
        PolicyError::Rejected {
            stage: Stage::Concurrency,
            reason: Rejection::AtCapacity { limit: 1 }
        }
    ));
    tokio::spawn(async move {
        tokio::time::sleep(ms(30)).await;
        drop(held);
    });
    let start = tokio::time::Instant::now();
    policy
        .call(&ctx, |_| async { Ok::<_, Infallible>(()) })
        .await
        .unwrap();
    assert_eq!(start.elapsed(), ms(30));
    // The wait stops at the deadline if that comes first.
    let _held = limit.try_acquire_owned().unwrap();
    let hurried = RequestContext::builder().timeout(ms(10)).build();
    let start = tokio::time::Instant::now();
    assert!(
        policy
            .call(&hurried, |_| async { Ok::<_, Infallible>(()) })
            .await
            .is_err()
    );
    assert_eq!(start.elapsed(), ms(10));
}

#[tokio::test(start_paused = true)]
async fn the_client_layer_passes_the_callers_deadline_on() {
    let policy = Policy::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let mut client = PolicyLayer::client(policy)
        .deadline_header("x-request-timeout-ms", DeadlineFormat::TimeoutMillis)
        .unwrap()
        .layer(service_fn(|req: http::Request<()>| async move {
            let h = |name: &str| {
                req.headers()
                    .get(name)
                    .map(|v| v.to_str().unwrap().to_owned())
            };
            Ok::<_, Infallible>(http::Response::new(format!(
                "{:?} {:?}",
                h("x-request-timeout-ms"),
                h("grpc-timeout")
            )))
        }));
    let body = |r: http::Response<_>| async move {
        let b = http_body_util::BodyExt::collect(r.into_body())
            .await
            .unwrap()
            .to_bytes();
        String::from_utf8(b.to_vec()).unwrap()
    };
    // No caller context: the policy's 2 s.
    let r = client
        .ready()
        .await
        .unwrap()
        .call(http::Request::new(()))
        .await
        .unwrap();
    assert_eq!(body(r).await, r#"Some("2000") None"#);
    // A caller with 500 ms left (current in its scope): the call gets 500 ms,
    // and a gRPC request carries it as grpc-timeout too.
    let caller = RequestContext::builder().timeout(ms(500)).build();
    let req = http::Request::builder()
        .header("content-type", "application/grpc")
        .body(())
        .unwrap();
    let r = caller
        .scope(async { client.ready().await.unwrap().call(req).await.unwrap() })
        .await;
    assert_eq!(body(r).await, r#"Some("500") Some("500000u")"#);
}

#[test]
fn policy_call_dropped_at_every_await_holds_nothing() {
    let rt = paused_runtime();
    let _g = rt.enter();
    let covered = cancel_points(16, |k| {
        let limit = ConcurrencyLimit::new(1).unwrap();
        let breaker = CircuitBreaker::builder().name("c").build().unwrap();
        let policy = Policy::builder()
            .concurrency_limit(limit.clone())
            .breaker(breaker.clone())
            .max_wait(ms(100))
            .build()
            .unwrap();
        let ctx = RequestContext::new();
        let held = std::cell::RefCell::new(Some(limit.try_acquire_owned().unwrap()));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let tx = std::cell::RefCell::new(Some(tx));
        let call = policy.call(&ctx, |_| async move {
            let _ = rx.await;
            Ok::<_, Infallible>(7)
        });
        // Poll 0 waits for the permit; before poll 1 it comes back; the call
        // then waits for its answer, which comes before poll 2.
        let outcome = Polled::new(call).drop_after_with(k, |i| match i {
            1 => drop(held.borrow_mut().take()),
            2 => {
                let _ = tx.borrow_mut().take().map(|tx| tx.send(()));
            }
            _ => {}
        });
        drop(held);
        assert_eq!(limit.in_use(), 0, "k = {k}: the permit is back");
        assert_eq!(limit.waiting(), 0, "k = {k}: no waiter left");
        let calls = breaker.stats().calls;
        match &outcome {
            Outcome::Completed { output, .. } => {
                assert_eq!(output.as_ref().ok(), Some(&7));
                assert_eq!(calls, 1);
            }
            Outcome::Cancelled { .. } => {
                assert_eq!(calls, 0, "k = {k}: a cancellation is not recorded")
            }
        }
        outcome
    });
    assert_eq!(covered, 3);
}

#[test]
fn policy_future_dropped_at_every_poll_holds_nothing() {
    let rt = paused_runtime();
    let _g = rt.enter();
    let covered = cancel_points(8, |k| {
        let limit = ConcurrencyLimit::new(1).unwrap();
        let breaker = CircuitBreaker::builder().name("f").build().unwrap();
        let policy = Policy::builder()
            .concurrency_limit(limit.clone())
            .breaker(breaker.clone())
            .build()
            .unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let mut rx = Some(rx);
        let mut svc = PolicyLayer::new(policy).layer(service_fn(move |_: http::Request<()>| {
            let rx = rx.take().unwrap();
            async move {
                let _ = rx.await;
                Ok::<_, Infallible>(http::Response::new(String::from("done")))
            }
        }));
        let tx = std::cell::RefCell::new(Some(tx));
        let future = svc.call(http::Request::new(()));
        let outcome = Polled::new(future).drop_after_with(k, |i| {
            if i == 1 {
                let _ = tx.borrow_mut().take().map(|tx| tx.send(()));
            }
        });
        let completed = match outcome {
            Outcome::Completed { output, polls } => {
                let response = output.unwrap();
                assert_eq!(limit.in_use(), 1, "the unread body holds the permit");
                drop(response);
                Outcome::Completed { output: (), polls }
            }
            Outcome::Cancelled { polls } => Outcome::Cancelled { polls },
        };
        assert_eq!(limit.in_use(), 0, "k = {k}");
        // Cancelled, or answered with a body dropped unread (the client went
        // away): neither says anything about the service's health.
        assert_eq!(breaker.stats().calls, 0, "k = {k}");
        completed
    });
    assert_eq!(covered, 2);
}

#[test]
fn policy_admit_dropped_while_waiting_leaves_no_waiter() {
    let rt = paused_runtime();
    let _g = rt.enter();
    let covered = cancel_points(8, |k| {
        let limit = ConcurrencyLimit::new(1).unwrap();
        let policy = Policy::builder()
            .concurrency_limit(limit.clone())
            .max_wait(Duration::from_secs(1))
            .build()
            .unwrap();
        let ctx = RequestContext::new();
        let held = std::cell::RefCell::new(Some(limit.try_acquire_owned().unwrap()));
        let outcome = Polled::new(policy.admit(&ctx)).drop_after_with(k, |i| {
            if i == 1 {
                drop(held.borrow_mut().take());
            }
        });
        let outcome = match outcome {
            Outcome::Completed { output, polls } => {
                let admission = output.unwrap();
                assert!(admission.holds_permit());
                assert_eq!(limit.in_use(), 1);
                drop(admission);
                Outcome::Completed { output: (), polls }
            }
            Outcome::Cancelled { polls } => Outcome::Cancelled { polls },
        };
        drop(held);
        assert_eq!(limit.in_use(), 0, "k = {k}");
        assert_eq!(limit.waiting(), 0, "k = {k}");
        outcome
    });
    assert_eq!(covered, 2);
}

#[test]
fn context_cancelled_dropped_at_every_poll() {
    let rt = paused_runtime();
    let _g = rt.enter();
    let covered = cancel_points(8, |k| {
        let shutdown = Shutdown::new();
        let ctx = RequestContext::builder()
            .shutdown(&shutdown.token())
            .build();
        let other = ctx.clone();
        let outcome = Polled::new(ctx.cancelled()).drop_after_with(k, |i| {
            if i == 1 {
                shutdown.trigger();
            }
        });
        // Another waiter on the same context still completes.
        if k >= 2 {
            assert!(Polled::new(other.cancelled()).drop_after(1).is_completed());
        }
        outcome
    });
    assert_eq!(covered, 2);
}

#[test]
fn a_context_linked_to_shutdown_sees_it_without_making_a_token() {
    let shutdown = Shutdown::new();
    let ctx = RequestContext::builder()
        .shutdown(&shutdown.token())
        .build();
    let child = ctx.child(None);
    assert!(!ctx.is_cancelled() && !child.is_cancelled());
    shutdown.trigger();
    assert!(ctx.is_cancelled(), "checked through the shutdown flag");
    assert!(child.is_cancelled(), "and through the parent context");
    assert!(
        ctx.token().is_cancelled(),
        "a token made afterwards is cancelled too"
    );

    // cancel() before and after the token exists.
    let ctx = RequestContext::new();
    ctx.cancel();
    assert!(ctx.token().is_cancelled());
    let ctx = RequestContext::new();
    let token = ctx.token().clone();
    ctx.cancel();
    assert!(token.is_cancelled());
    // Cancelling the token cancels the context.
    let ctx = RequestContext::new();
    ctx.token().cancel();
    assert!(ctx.is_cancelled());
}

#[test]
fn cancel_and_token_racing_never_lose_the_cancellation() {
    // Bounded: 2000 rounds of cancel() on one thread against token() on
    // another, lined up by a barrier so the two calls overlap.
    let barrier = Arc::new(std::sync::Barrier::new(2));
    for _ in 0..2000 {
        let ctx = RequestContext::new();
        let other = ctx.clone();
        let b = Arc::clone(&barrier);
        let t = std::thread::spawn(move || {
            b.wait();
            other.token().clone()
        });
        barrier.wait();
        ctx.cancel();
        let token = t.join().unwrap();
        assert!(token.is_cancelled(), "the token missed a cancel()");
    }
}

#[tokio::test]
async fn a_classifier_shared_in_an_arc_decides_for_both_layers() {
    let shared = Arc::new(GrpcClassifier::new());
    let b1 = CircuitBreaker::builder().name("a").build().unwrap();
    let b2 = CircuitBreaker::builder().name("b").build().unwrap();
    let mut a = PolicyLayer::client(Policy::builder().breaker(b1.clone()).build().unwrap())
        .classifier(Arc::clone(&shared))
        .layer(grpc_service("14", false));
    let mut b = BreakerLayer::new(b2.clone())
        .classifier(shared)
        .layer(grpc_service("14", false));
    let r = a
        .ready()
        .await
        .unwrap()
        .call(http::Request::new(()))
        .await
        .unwrap();
    let _ = r.into_body().collect().await;
    let r = b
        .ready()
        .await
        .unwrap()
        .call(http::Request::new(()))
        .await
        .unwrap();
    let _ = r.into_body().collect().await;
    assert_eq!(b1.stats().failed_calls, 1);
    assert_eq!(b2.stats().failed_calls, 1);
}

/// A body that always has a frame ready and never ends (a fast producer read
/// by a slow client: the server polls it only when it has room).
struct Endless;

impl http_body::Body for Endless {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"chunk")))))
    }
}

#[tokio::test(start_paused = true)]
async fn the_body_timeout_cuts_a_body_that_is_always_ready() {
    let limit = ConcurrencyLimit::new(1).unwrap();
    let breaker = CircuitBreaker::builder()
        .name("slow reader")
        .build()
        .unwrap();
    let policy = Policy::builder()
        .concurrency_limit(limit.clone())
        .breaker(breaker.clone())
        .build()
        .unwrap();
    let mut svc = PolicyLayer::new(policy)
        .body_timeout(Duration::from_secs(1))
        .unwrap()
        .layer(service_fn(|_: http::Request<()>| async {
            Ok::<_, Infallible>(http::Response::new(Endless))
        }));
    let mut body = support::body_of(&mut svc, http::Request::new(())).await;
    let start = tokio::time::Instant::now();
    // The client reads a chunk every 300 ms.
    let mut chunks = 0;
    let err = loop {
        match body.frame().await.expect("the body does not end by itself") {
            Ok(_) => chunks += 1,
            Err(e) => break e,
        }
        tokio::time::sleep(ms(300)).await;
        assert!(start.elapsed() < Duration::from_secs(10), "never cut");
    };
    assert!(err.downcast_ref::<Rejected>().is_some(), "{err}");
    assert_eq!(chunks, 4, "frames at 0, 300, 600 and 900 ms; cut at 1200");
    assert_eq!(limit.in_use(), 0);
    assert_eq!(breaker.stats().failed_calls, 1);
    assert!(http_body::Body::is_end_stream(&body));
    assert_eq!(http_body::Body::size_hint(&body).exact(), Some(0));
}

#[tokio::test(start_paused = true)]
async fn the_default_body_deadline_is_the_request_deadline_and_can_be_lifted() {
    let limit = ConcurrencyLimit::new(1).unwrap();
    let policy = Policy::builder()
        .timeout(ms(500))
        .concurrency_limit(limit.clone())
        .build()
        .unwrap();
    let endless = || {
        service_fn(|_: http::Request<()>| async {
            Ok::<_, Infallible>(http::Response::new(Endless))
        })
    };
    let mut svc = PolicyLayer::new(policy.clone()).layer(endless());
    let mut body = support::body_of(&mut svc, http::Request::new(())).await;
    let start = tokio::time::Instant::now();
    while body.frame().await.unwrap().is_ok() {
        tokio::time::sleep(ms(100)).await;
        assert!(start.elapsed() < Duration::from_secs(10), "never cut");
    }
    assert_eq!(start.elapsed(), ms(500), "cut at the request's deadline");
    assert_eq!(limit.in_use(), 0);

    // unbounded_body: a stream (SSE, a download) runs past it.
    let mut svc = PolicyLayer::new(policy).unbounded_body().layer(endless());
    let mut body = support::body_of(&mut svc, http::Request::new(())).await;
    for _ in 0..100 {
        assert!(body.frame().await.unwrap().is_ok());
        tokio::time::sleep(ms(100)).await;
    }
    assert_eq!(
        limit.in_use(),
        1,
        "10 s later the stream still holds its permit"
    );
    drop(body);
    assert_eq!(limit.in_use(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_breaker_layer_stops_waiting_for_trailers_without_cutting_the_stream() {
    // A long gRPC stream must not keep the breaker's permit (in half-open, its
    // only probe) until it ends.
    let breaker = CircuitBreaker::builder().name("stream").build().unwrap();
    let (tx, rx) = mpsc::channel(8);
    let mut rx = Some(rx);
    let mut svc = BreakerLayer::new(breaker.clone())
        .classifier(GrpcClassifier::new())
        .verdict_timeout(Duration::from_secs(1))
        .unwrap()
        .layer(service_fn(move |_: http::Request<()>| {
            let body = ChannelBody(rx.take().unwrap());
            async move { Ok::<_, Infallible>(http::Response::new(body)) }
        }));
    let mut body = support::body_of(&mut svc, http::Request::new(())).await;
    assert!(body.is_holding());
    let feeder = tokio::spawn(async move {
        for _ in 0..5 {
            tokio::time::sleep(ms(400)).await;
            tx.send(Frame::data(Bytes::from("m"))).await.unwrap();
        }
    });
    for _ in 0..5 {
        assert!(body.frame().await.unwrap().is_ok(), "the stream goes on");
    }
    assert!(!body.is_holding(), "the permit was let go after 1 s");
    feeder.await.unwrap();
    assert!(body.frame().await.is_none());
    let stats = breaker.stats();
    assert_eq!(
        (stats.calls, stats.failed_calls),
        (0, 0),
        "nothing recorded"
    );
}

#[tokio::test]
async fn an_adaptive_limit_samples_at_the_headers_not_the_end_of_the_body() {
    use heijunka::backpressure::{AdaptiveLimit, Aimd};
    use heijunka::core::ManualClock;
    // AIMD with a 1 s time-out: a 3 s read of the body after a fast answer must
    // not count as a slow call. Observed through the limit's own drop count,
    // on the limit's own (manual) clock.
    let manual = ManualClock::new();
    let limit = AdaptiveLimit::builder(
        Aimd::builder()
            .initial_limit(2)
            .min_limit(1)
            .max_limit(10)
            .timeout(Duration::from_secs(1))
            .build()
            .unwrap(),
    )
    .clock(manual.clock())
    .build()
    .unwrap();
    let policy = Policy::builder()
        .adaptive_limit(limit.clone())
        .build()
        .unwrap();
    let mut svc =
        PolicyLayer::new(policy)
            .unbounded_body()
            .layer(service_fn(|_: http::Request<()>| async {
                Ok::<_, Infallible>(http::Response::new(String::from("a slow read")))
            }));
    let mut body = support::body_of(&mut svc, http::Request::new(())).await;
    manual.advance(Duration::from_secs(3)); // the client takes 3 s to read
    while body.frame().await.is_some() {}
    // AIMD grows on a fast success with half the limit in use (1 * 2 >= 2) and
    // shrinks on a sample slower than its time-out.
    assert_eq!(limit.stats().successes, 1);
    assert_eq!(
        limit.limit(),
        3,
        "the sample must end at the headers, not after the 3 s read"
    );
}

#[tokio::test(start_paused = true)]
async fn trailers_that_arrive_at_the_deadline_are_delivered_and_count() {
    // A stream body that does not say it has ended after its trailers: the
    // trailers are still the last frame, delivered whole.
    let breaker = CircuitBreaker::builder().name("late").build().unwrap();
    let policy = Policy::builder().breaker(breaker.clone()).build().unwrap();
    let (tx, rx) = mpsc::channel(8);
    let mut rx = Some(rx);
    let mut svc = PolicyLayer::client(policy)
        .classifier(GrpcClassifier::new())
        .body_timeout(Duration::from_secs(1))
        .unwrap()
        .layer(service_fn(move |_: http::Request<()>| {
            let body = ChannelBody(rx.take().unwrap());
            async move { Ok::<_, Infallible>(http::Response::new(body)) }
        }));
    let mut body = support::body_of(&mut svc, http::Request::new(())).await;
    tx.send(Frame::data(Bytes::from("m"))).await.unwrap();
    assert!(body.frame().await.unwrap().unwrap().is_data());
    // Nothing more for now: the body waits, its timer set for 1 s.
    assert!(
        tokio::time::timeout(ms(10), body.frame()).await.is_err(),
        "pending"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    tx.send(Frame::trailers(trailers)).await.unwrap();
    let frame = body
        .frame()
        .await
        .unwrap()
        .expect("the trailers, not a time-out");
    assert!(frame.is_trailers());
    let stats = breaker.stats();
    assert_eq!((stats.calls, stats.failed_calls), (1, 0), "a success");
    drop(tx);
}

#[tokio::test(start_paused = true)]
async fn a_max_wait_refusal_does_not_refuse_an_exempt_path_and_does_not_go_stale() {
    let limit = ConcurrencyLimit::new(1).unwrap();
    let policy = Policy::builder()
        .concurrency_limit(limit.clone())
        .max_wait(ms(50))
        .build()
        .unwrap();
    let mut svc = PolicyLayer::new(policy)
        .reserve_in_poll_ready(true)
        .exempt("/health")
        .layer(service_fn(|_: http::Request<()>| async {
            Ok::<_, Infallible>(http::Response::new(String::new()))
        }));
    let held = limit.try_acquire_owned().unwrap();
    std::future::poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
    // The wait ran out, but the next request is to an exempt path.
    let health = http::Request::get("/health").body(()).unwrap();
    assert!(svc.call(health).await.is_ok(), "health is exempt");

    // A refusal waiting for a call does not outlive a freed permit.
    std::future::poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
    drop(held);
    std::future::poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
    assert!(svc.holds_reservation());
    assert!(svc.call(http::Request::new(())).await.is_ok());
}

#[tokio::test]
async fn without_the_extension_the_handler_still_finds_its_context() {
    let mut svc = PolicyLayer::new(Policy::builder().build().unwrap())
        .context_extension(false)
        .layer(service_fn(|req: http::Request<()>| {
            let in_call = RequestContext::current().is_some();
            async move {
                tokio::task::yield_now().await;
                let body = format!(
                    "{} {} {}",
                    in_call,
                    RequestContext::current().is_some(),
                    req.extensions().get::<RequestContext>().is_some()
                );
                Ok::<_, Infallible>(http::Response::new(body))
            }
        }));
    let r = svc
        .ready()
        .await
        .unwrap()
        .call(http::Request::new(()))
        .await
        .unwrap();
    let body = r.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "true true false");
}
