//! `McpHttpLayer` around a stand-in for rmcp's service: the request carries a
//! `ClientGone` that fires when the response future is dropped before the
//! response exists, or when the response body is dropped; a session refusal
//! reads the request's id.

mod support;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use heijunka_core::cancel::{Polled, cancel_points};
use heijunka_mcp::{ClientGone, LayerBody, McpGuard};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tokio::sync::Notify;
use tower::{Layer, Service, ServiceExt};

type Seen = Arc<Mutex<Option<ClientGone>>>;

/// Records the request's `ClientGone`, then answers once `release` is notified.
fn stand_in(
    seen: Seen,
    release: Arc<Notify>,
) -> impl Service<
    Request<LayerBody<Full<Bytes>>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |req: Request<LayerBody<Full<Bytes>>>| {
        let (seen, release) = (Arc::clone(&seen), Arc::clone(&release));
        async move {
            *seen.lock().unwrap() = req.extensions().get::<ClientGone>().cloned();
            release.notified().await;
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                b"data: {}\n\n",
            ))))
        }
    })
}

fn post() -> Request<Full<Bytes>> {
    Request::post("/mcp")
        .header("mcp-session-id", "s")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap()
}

#[test]
fn the_response_future_dropped_at_any_poll_fires_client_gone() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _entered = rt.enter();
    let guard = McpGuard::builder().build().unwrap();
    cancel_points(5, |k| {
        let seen = Seen::default();
        let release = Arc::new(Notify::new());
        let mut service = guard
            .http_layer()
            .layer(stand_in(Arc::clone(&seen), Arc::clone(&release)));
        let future = service.call(post());
        let outcome = Polled::new(future).drop_after_with(k, |i| {
            if i == 2 {
                release.notify_one();
            }
        });
        let gone = seen.lock().unwrap().clone();
        match &outcome {
            heijunka_core::cancel::Outcome::Completed { output, .. } => {
                let gone = gone.expect("the request carried a ClientGone");
                assert!(!gone.is_gone(), "k = {k}: fired while the body lives");
                let response = output.as_ref().unwrap();
                assert!(response.status().is_success());
            }
            heijunka_core::cancel::Outcome::Cancelled { .. } => {
                if let Some(gone) = gone {
                    assert!(
                        gone.is_gone(),
                        "k = {k}: dropped before the response, not fired"
                    );
                }
            }
        }
        outcome
    });
}

#[tokio::test]
async fn a_body_read_to_its_end_does_not_fire_client_gone() {
    let guard = McpGuard::builder().build().unwrap();
    let seen = Seen::default();
    let release = Arc::new(Notify::new());
    release.notify_one();
    let service = guard
        .http_layer()
        .layer(stand_in(Arc::clone(&seen), release));
    let response = service.oneshot(post()).await.unwrap();
    let gone = seen.lock().unwrap().clone().unwrap();
    assert!(!gone.is_gone());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"data: {}\n\n");
    // Read to its end and dropped: the client got everything, no disconnect.
    assert!(!gone.is_gone());
}

#[tokio::test]
async fn a_body_dropped_before_its_end_fires_client_gone() {
    let guard = McpGuard::builder().build().unwrap();
    let seen = Seen::default();
    let release = Arc::new(Notify::new());
    release.notify_one();
    let service = guard
        .http_layer()
        .layer(stand_in(Arc::clone(&seen), release));
    let response = service.oneshot(post()).await.unwrap();
    let gone = seen.lock().unwrap().clone().unwrap();
    drop(response);
    assert!(gone.is_gone());
}

#[tokio::test]
async fn a_refused_session_gets_503_with_its_own_id() {
    let shutdown = heijunka_shutdown::Shutdown::new();
    let guard = McpGuard::builder().shutdown(&shutdown).build().unwrap();
    shutdown.trigger();
    let seen = Seen::default();
    let service = guard
        .http_layer()
        .layer(stand_in(Arc::clone(&seen), Arc::new(Notify::new())));
    let init = Request::post("/mcp")
        .body(Full::new(Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":"init-7","method":"initialize","params":{}}"#,
        )))
        .unwrap();
    let response = service.oneshot(init).await.unwrap();
    assert_eq!(response.status(), 503);
    let body: serde_json::Value =
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["id"], "init-7");
    assert_eq!(body["error"]["data"]["reason"], "shutting_down");
    assert!(
        seen.lock().unwrap().is_none(),
        "never reached the inner service"
    );
    assert_eq!(guard.stats().sessions_refused, 1);
}

/// While new sessions are refused, a session-less `POST` that is not an
/// `initialize` (a stateless request) still reaches rmcp, body intact.
#[tokio::test]
async fn a_stateless_request_passes_while_sessions_are_refused() {
    let guard = McpGuard::builder().max_sessions(1).build().unwrap();
    // Fill the session bound.
    let _session = support::connect(&guard, &support::Probe::default()).await;
    let seen = Seen::default();
    let release = Arc::new(Notify::new());
    release.notify_one();
    // Larger than what the layer reads to look for an `initialize`: passed on
    // whole, the part it read first.
    let blob = "x".repeat(200 * 1024);
    let body: &'static [u8] = format!(
        r#"{{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{{"name":"x","arguments":{{"blob":"{blob}"}}}}}}"#
    )
    .into_bytes()
    .leak();
    let service = guard.http_layer().layer(tower::service_fn({
        let seen = Arc::clone(&seen);
        move |req: Request<LayerBody<Chunks>>| {
            let seen = Arc::clone(&seen);
            async move {
                let bytes = req.into_body().collect().await.unwrap().to_bytes();
                *seen.lock().unwrap() = Some(ClientGone::default());
                assert_eq!(&bytes[..], body);
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
            }
        }
    }));
    // Sent in 8 KiB chunks, as a client's upload arrives.
    let chunks: Vec<Result<http_body::Frame<Bytes>, Infallible>> = body
        .chunks(8 * 1024)
        .map(|c| Ok(http_body::Frame::data(Bytes::from_static(c))))
        .collect();
    let stateless = Request::post("/mcp")
        .body(http_body_util::StreamBody::new(futures_util::stream::iter(
            chunks,
        )))
        .unwrap();
    let response = service.oneshot(stateless).await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(seen.lock().unwrap().is_some());
    assert_eq!(guard.stats().sessions_refused, 0);
}

type Chunks = http_body_util::StreamBody<
    futures_util::stream::Iter<std::vec::IntoIter<Result<http_body::Frame<Bytes>, Infallible>>>,
>;
