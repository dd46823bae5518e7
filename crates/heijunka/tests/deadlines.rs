//! Deadlines as the callee sees them: the time a call is given reaches the call
//! (through `Policy::call` and through `PolicyLayer`, shortened by an incoming
//! `grpc-timeout`), the handler finds its request's context as the current one,
//! and a response body that stalls ends with a time-out instead of holding its
//! permit forever. Paused time throughout.
#![cfg(feature = "tower")]

mod support;

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Bytes;
use heijunka::backpressure::ConcurrencyLimit;
use heijunka::breaker::CircuitBreaker;
use heijunka::context::RequestContext;
use heijunka::core::Rejection;
use heijunka::policy::Policy;
use heijunka::tower::{PolicyLayer, Rejected, Stage};
use http_body_util::BodyExt;
use support::ChannelBody;
use tokio::sync::mpsc;
use tower::{Layer, Service, ServiceExt, service_fn};

fn seconds(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[tokio::test(start_paused = true)]
async fn policy_call_gives_the_callee_the_policy_deadline() {
    // The caller allows 30 s; the policy cuts the call at 2 s: the callee must
    // see 2 s, or it plans (and passes on) time it does not have.
    let policy = Policy::builder().timeout(seconds(2)).build().unwrap();
    let caller = RequestContext::builder().timeout(seconds(30)).build();
    let seen = policy
        .call(&caller, |ctx| async move {
            Ok::<_, Infallible>(ctx.remaining())
        })
        .await
        .unwrap();
    assert_eq!(seen, seconds(2), "the callee saw the caller's deadline");
    // A caller with less time than the policy keeps its own.
    let hurried = RequestContext::builder()
        .timeout(Duration::from_millis(500))
        .build();
    let seen = policy
        .call(&hurried, |ctx| async move {
            Ok::<_, Infallible>(ctx.remaining())
        })
        .await
        .unwrap();
    assert_eq!(seen, Duration::from_millis(500));
}

/// What a handler behind `PolicyLayer` saw.
#[derive(Debug)]
struct Seen {
    remaining: Duration,
    current: Option<RequestContext>,
    extension: RequestContext,
}

async fn through_layer(layer: PolicyLayer, req: http::Request<()>) -> Seen {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut svc = layer.layer(service_fn(move |req: http::Request<()>| {
        let tx = tx.clone();
        async move {
            // After an await, as a real handler would be.
            tokio::task::yield_now().await;
            let extension = req.extensions().get::<RequestContext>().cloned().unwrap();
            tx.send(Seen {
                remaining: extension.remaining(),
                current: RequestContext::current(),
                extension,
            })
            .unwrap();
            Ok::<_, Infallible>(http::Response::new(String::from("ok")))
        }
    }));
    let response = svc.ready().await.unwrap().call(req).await.unwrap();
    let _ = response.into_body().collect().await;
    rx.recv().await.unwrap()
}

#[tokio::test(start_paused = true)]
async fn policy_layer_handler_sees_the_admission_deadline() {
    let policy = Policy::builder().timeout(seconds(2)).build().unwrap();
    let seen = through_layer(PolicyLayer::new(policy), http::Request::new(())).await;
    assert_eq!(seen.remaining, seconds(2), "{seen:?}");
}

#[tokio::test(start_paused = true)]
async fn policy_layer_handler_finds_its_context_current() {
    let policy = Policy::builder().build().unwrap();
    let seen = through_layer(PolicyLayer::new(policy), http::Request::new(())).await;
    let current = seen
        .current
        .expect("RequestContext::current() inside the handler");
    assert_eq!(current.trace_id(), seen.extension.trace_id());
}

#[tokio::test(start_paused = true)]
async fn incoming_grpc_timeout_shortens_the_deadline() {
    let policy = Policy::builder().timeout(seconds(2)).build().unwrap();
    let req = http::Request::builder()
        .header("grpc-timeout", "100m")
        .body(())
        .unwrap();
    let seen = through_layer(PolicyLayer::new(policy.clone()), req).await;
    assert_eq!(seen.remaining, Duration::from_millis(100), "{seen:?}");
    // A longer one does not extend the policy's.
    let req = http::Request::builder()
        .header("grpc-timeout", "1H")
        .body(())
        .unwrap();
    let seen = through_layer(PolicyLayer::new(policy), req).await;
    assert_eq!(seen.remaining, seconds(2), "{seen:?}");
}

#[tokio::test(start_paused = true)]
async fn a_stalled_body_times_out_and_releases_its_permit() {
    let limit = ConcurrencyLimit::new(1).unwrap();
    let breaker = CircuitBreaker::builder().name("stall").build().unwrap();
    let policy = Policy::builder()
        .timeout(seconds(1))
        .concurrency_limit(limit.clone())
        .breaker(breaker.clone())
        .build()
        .unwrap();
    let (tx, rx) = mpsc::channel(4);
    let mut rx = Some(rx);
    let mut svc = PolicyLayer::new(policy).layer(service_fn(move |_: http::Request<()>| {
        let body = ChannelBody(rx.take().expect("one request"));
        async move { Ok::<_, Infallible>(http::Response::new(body)) }
    }));
    let response = svc
        .ready()
        .await
        .unwrap()
        .call(http::Request::new(()))
        .await
        .unwrap();
    let mut body = response.into_body();
    tx.send(http_body::Frame::data(Bytes::from("first")))
        .await
        .unwrap();
    let first = body.frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "first");
    assert_eq!(limit.in_use(), 1, "the body is streaming");

    // The sender stays alive: the body stalls. Paused time jumps to the next
    // timer; a body with no deadline would wait for the 10 s bound.
    let next = tokio::time::timeout(seconds(10), body.frame())
        .await
        .expect("the stalled body ends by its deadline, not never");
    let err = next.expect("an error frame").expect_err("a time-out error");
    let rejected = err.downcast_ref::<Rejected>().expect("a Rejected");
    assert_eq!(rejected.stage(), Stage::Deadline);
    assert!(matches!(rejected.reason(), Rejection::TimedOut { .. }));
    assert_eq!(limit.in_use(), 0, "the permit is released at the time-out");
    assert_eq!(breaker.stats().failed_calls, 1, "recorded as a time-out");
    drop(tx);
}
