//! heijunka-mcp over rmcp's streamable-HTTP transport on real loopback, driven
//! by rmcp's own client (and, where a client must misbehave, by raw HTTP: a
//! connection dropped mid-call, a flood of `initialize`, malformed JSON-RPC).

mod support;

use std::sync::Arc;
use std::time::Duration;

use heijunka_mcp::{McpGuard, RefusalReason, codes};
use rmcp::service::ServiceExt;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_server::{
    StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
};
use serde_json::{Value, json};
use support::{Probe, call, eventually, rpc_error, send_cancellable, tag};
use tokio_util::sync::CancellationToken;

/// How often an idle SSE response writes a keep-alive: a dropped connection is
/// noticed at the next write, so this bounds how late a disconnect is seen.
const KEEP_ALIVE: Duration = Duration::from_millis(20);

struct TestServer {
    url: String,
    stop: CancellationToken,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn serve(guard: &McpGuard, probe: &Probe) -> TestServer {
    let stop = CancellationToken::new();
    let config = StreamableHttpServerConfig::default()
        .with_sse_keep_alive(Some(KEEP_ALIVE))
        .with_cancellation_token(stop.child_token());
    let service = StreamableHttpService::new(
        {
            let (guard, probe) = (guard.clone(), probe.clone());
            move || Ok(guard.protect(probe.clone()))
        },
        Arc::new(LocalSessionManager::default()),
        config,
    );
    let service = tower::Layer::layer(&guard.http_layer(), service);
    let router = axum::Router::new().nest_service("/mcp", service);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        }
    });
    TestServer {
        url: format!("http://{addr}/mcp"),
        stop,
    }
}

async fn client(url: &str) -> support::Client {
    ().serve(StreamableHttpClientTransport::from_uri(url.to_owned()))
        .await
        .expect("initialize over HTTP")
}

fn reason_of(e: &rmcp::ServiceError) -> Option<String> {
    let e = rpc_error(e)?;
    (e.code == codes::REFUSED).then_some(())?;
    e.data.as_ref()?.get("reason")?.as_str().map(str::to_owned)
}

const PROTOCOL: &str = "2025-06-18";

/// A raw MCP session over HTTP: `initialize`, then `notifications/initialized`.
async fn raw_session(http: &reqwest::Client, url: &str) -> String {
    let init = json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {
            "protocolVersion": PROTOCOL,
            "capabilities": {},
            "clientInfo": { "name": "raw", "version": "0" }
        }
    });
    let response = post(http, url, None, &init).await;
    assert!(response.status().is_success(), "{:?}", response.status());
    let session = response.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let _ = response.text().await.unwrap();
    let initialized = json!({ "jsonrpc": "2.0", "method": "notifications/initialized" });
    let response = post(http, url, Some(&session), &initialized).await;
    assert!(response.status().is_success(), "{:?}", response.status());
    session
}

async fn post(
    http: &reqwest::Client,
    url: &str,
    session: Option<&str>,
    body: &Value,
) -> reqwest::Response {
    let mut request = http
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", PROTOCOL)
        .body(body.to_string());
    if let Some(session) = session {
        request = request.header("mcp-session-id", session);
    }
    request.send().await.unwrap()
}

/// 200 concurrent calls from four sessions against a server limited to 8: never
/// more than 8 running, every call answered (served, or refused with the busy
/// error), nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_calls_over_http_never_more_than_eight_running() {
    let guard = McpGuard::builder()
        .max_concurrent_calls(8)
        .queue_capacity(64)
        .build()
        .unwrap();
    let probe = Probe::default();
    let server = serve(&guard, &probe).await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(Arc::new(client(&server.url).await));
    }
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..200 {
        let client = Arc::clone(&clients[i % 4]);
        calls.spawn(async move { client.call_tool(call("work", tag(format!("{i}"), 5))).await });
    }
    let (mut ok, mut busy) = (0u64, 0u64);
    while let Some(answer) = calls.join_next().await {
        match answer.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => {
                assert_eq!(reason_of(&e).as_deref(), Some("queue_full"), "{e:?}");
                busy += 1;
            }
        }
    }
    assert_eq!(ok + busy, 200);
    assert!(
        probe.seen.max_running() <= 8,
        "{}",
        probe.seen.max_running()
    );
    assert_eq!(probe.seen.finished(), ok);
    let stats = guard.stats();
    assert_eq!((stats.calls, stats.completed), (200, ok));
    assert_eq!(stats.refused_by[&RefusalReason::QueueFull], busy);
    assert_eq!((stats.in_flight, stats.waiting), (0, 0));
}

/// rmcp's client cancels a call (`notifications/cancelled`) over HTTP: the tool
/// sees it and the slot is free within 100 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_cancel_over_http_frees_the_slot_within_100ms() {
    let guard = McpGuard::builder().max_concurrent_calls(1).build().unwrap();
    let probe = Probe::default();
    let server = serve(&guard, &probe).await;
    let client = client(&server.url).await;
    let handle = send_cancellable(&client, "block", json!({})).await.unwrap();
    assert!(eventually(Duration::from_secs(5), || probe.seen.running() == 1).await);
    let cancelled_at = std::time::Instant::now();
    handle.cancel(Some("stop".into())).await.unwrap();
    assert!(
        eventually(Duration::from_millis(100), || probe.seen.cancelled() == 1
            && guard.stats().in_flight == 0)
        .await,
        "slot not freed within 100 ms"
    );
    assert!(cancelled_at.elapsed() < Duration::from_millis(150));
    // rmcp's client sends `notifications/cancelled` and also drops the call's
    // response stream: whichever reaches the server first ends the call.
    let stats = guard.stats();
    assert_eq!(stats.cancelled, 1, "{stats:?}");
    assert_eq!(
        stats.cancelled_by["client"] + stats.cancelled_by["disconnect"],
        1
    );
    // The slot serves the next call.
    client
        .call_tool(call("work", json!({"ms": 1})))
        .await
        .unwrap();
}

/// The HTTP client drops its connection mid-call (no `notifications/cancelled`):
/// the tool sees its cancellation and the slot is free within 100 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_frees_the_slot_within_100ms() {
    let guard = McpGuard::builder().max_concurrent_calls(1).build().unwrap();
    let probe = Probe::default();
    let server = serve(&guard, &probe).await;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let session = raw_session(&http, &server.url).await;
    let body = json!({
        "jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": { "name": "block", "arguments": {} }
    });
    let response = post(&http, &server.url, Some(&session), &body).await;
    assert!(response.status().is_success(), "{:?}", response.status());
    assert!(eventually(Duration::from_secs(5), || probe.seen.running() == 1).await);
    let dropped_at = std::time::Instant::now();
    drop(response);
    drop(http);
    assert!(
        eventually(Duration::from_millis(100), || probe.seen.cancelled() == 1
            && guard.stats().in_flight == 0)
        .await,
        "slot not freed within 100 ms of the disconnect"
    );
    assert!(dropped_at.elapsed() < Duration::from_millis(150));
    assert_eq!(guard.stats().cancelled_by["disconnect"], 1);
    assert_eq!(
        probe
            .seen
            .dropped_silently
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

/// A flood of `initialize` past the session bound: each is answered at once with
/// HTTP 503 and the JSON-RPC refusal (its own id, reason `sessions_full`), and
/// counted; the admitted sessions keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_initialize_flood_is_refused_and_counted() {
    let guard = McpGuard::builder().max_sessions(3).build().unwrap();
    let probe = Probe::default();
    let server = serve(&guard, &probe).await;
    let mut admitted = Vec::new();
    for _ in 0..3 {
        admitted.push(client(&server.url).await);
    }
    let http = reqwest::Client::new();
    let mut flood = tokio::task::JoinSet::new();
    for id in 0..20 {
        let (http, url) = (http.clone(), server.url.clone());
        flood.spawn(async move {
            let init = json!({
                "jsonrpc": "2.0", "id": 100 + id, "method": "initialize",
                "params": {
                    "protocolVersion": PROTOCOL, "capabilities": {},
                    "clientInfo": { "name": "flood", "version": "0" }
                }
            });
            let response = post(&http, &url, None, &init).await;
            let status = response.status();
            let retry_after = response.headers().get("retry-after").cloned();
            let body: Value = response.json().await.unwrap();
            (id, status, retry_after, body)
        });
    }
    while let Some(r) = flood.join_next().await {
        let (id, status, retry_after, body) = r.unwrap();
        assert_eq!(status, 503);
        assert!(retry_after.is_some());
        assert_eq!(body["id"], json!(100 + id));
        assert_eq!(body["error"]["code"], json!(codes::REFUSED.0));
        assert_eq!(body["error"]["data"]["reason"], json!("sessions_full"));
    }
    // rmcp's own client is refused too.
    let refused = ().serve(StreamableHttpClientTransport::from_uri(server.url.clone())).await;
    assert!(refused.is_err());
    let stats = guard.stats();
    assert_eq!(stats.sessions, 3);
    assert_eq!(stats.sessions_refused, 21);
    assert_eq!(stats.refused, 0, "sessions are not calls");
    for c in &admitted {
        c.call_tool(call("work", json!({"ms": 1}))).await.unwrap();
    }
}

/// Malformed JSON-RPC and an unknown session are answered with the protocol's
/// error and counted; the server keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_answered_and_counted() {
    let guard = McpGuard::builder().build().unwrap();
    let probe = Probe::default();
    let server = serve(&guard, &probe).await;
    let http = reqwest::Client::new();
    let session = raw_session(&http, &server.url).await;
    let garbage = http
        .post(&server.url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", PROTOCOL)
        .header("mcp-session-id", &session)
        .body("{ this is not json")
        .send()
        .await
        .unwrap();
    assert!(garbage.status().is_client_error(), "{:?}", garbage.status());
    let unknown = post(
        &http,
        &server.url,
        Some("no-such-session"),
        &json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list"}),
    )
    .await;
    assert!(unknown.status().is_client_error(), "{:?}", unknown.status());
    assert_eq!(guard.stats().bad_requests, 2);
    let client = client(&server.url).await;
    client
        .call_tool(call("work", json!({"ms": 1})))
        .await
        .unwrap();
}

/// Shutdown over HTTP: new sessions get 503 `shutting_down`, new calls in open
/// sessions the JSON-RPC refusal, and the calls in flight finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_over_http_drains_and_refuses() {
    let shutdown = heijunka_shutdown::Shutdown::builder()
        .grace_period(Duration::from_secs(30))
        .build()
        .unwrap();
    let guard = McpGuard::builder().shutdown(&shutdown).build().unwrap();
    let probe = Probe::default();
    let server = serve(&guard, &probe).await;
    let client = Arc::new(client(&server.url).await);
    let in_flight = tokio::spawn({
        let client = Arc::clone(&client);
        async move { client.call_tool(call("gate", json!({}))).await }
    });
    assert!(eventually(Duration::from_secs(5), || probe.seen.running() == 1).await);
    shutdown.trigger();
    let err = client
        .call_tool(call("work", json!({"ms": 1})))
        .await
        .unwrap_err();
    assert_eq!(reason_of(&err).as_deref(), Some("shutting_down"), "{err:?}");
    let http = reqwest::Client::new();
    let init = json!({
        "jsonrpc": "2.0", "id": 9, "method": "initialize",
        "params": { "protocolVersion": PROTOCOL, "capabilities": {},
                    "clientInfo": { "name": "late", "version": "0" } }
    });
    let late = post(&http, &server.url, None, &init).await;
    assert_eq!(late.status(), 503);
    assert!(late.headers().get("retry-after").is_none(), "not transient");
    let body: Value = late.json().await.unwrap();
    assert_eq!(body["error"]["data"]["reason"], json!("shutting_down"));
    probe.seen.gate.notify_one();
    in_flight.await.unwrap().unwrap();
    let report = tokio::time::timeout(Duration::from_secs(5), shutdown.wait())
        .await
        .unwrap();
    assert!(report.is_clean(), "{report:?}");
}
