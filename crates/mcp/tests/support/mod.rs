//! A probe MCP server whose tools report, from the inside, what ran and when;
//! and helpers that connect rmcp's own client to it.

#![allow(dead_code, unreachable_pub)]

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use heijunka_mcp::{McpGuard, Protected};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ServerCapabilities,
    ServerConfig,
};
use rmcp::service::{RequestContext, RoleClient, RoleServer, RunningService, ServiceExt};
use rmcp::{ErrorData, ServerHandler};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// What the tools saw, observed inside them.
#[derive(Debug, Default)]
pub struct Seen {
    pub running: AtomicUsize,
    pub max_running: AtomicUsize,
    pub started: AtomicU64,
    pub finished: AtomicU64,
    /// Tool futures dropped with their context's token cancelled.
    pub cancelled: AtomicU64,
    /// Tool futures dropped with the token not cancelled (must stay 0).
    pub dropped_silently: AtomicU64,
    /// `tag` values in the order their calls started.
    pub order: Mutex<Vec<String>>,
    pub started_notify: Notify,
    /// Released by tests to let `gate` calls finish.
    pub gate: Notify,
}

impl Seen {
    pub fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }
    pub fn max_running(&self) -> usize {
        self.max_running.load(Ordering::SeqCst)
    }
    pub fn cancelled(&self) -> u64 {
        self.cancelled.load(Ordering::SeqCst)
    }
    pub fn finished(&self) -> u64 {
        self.finished.load(Ordering::SeqCst)
    }
    pub fn started(&self) -> u64 {
        self.started.load(Ordering::SeqCst)
    }
    pub fn order(&self) -> Vec<String> {
        self.order.lock().unwrap().clone()
    }
}

/// The tools:
/// - `work` {ms}: sleeps `ms` (default 10) and answers `"done"`;
/// - `block`: waits until its context is cancelled;
/// - `gate`: waits for `Seen::gate`;
/// - `fail`: an error result (`isError: true`), as a failing dependency would give;
/// - `echo`: answers its arguments;
/// - `panic`: panics.
///
/// Every call may carry `tag` (recorded in `Seen::order` when it starts).
#[derive(Clone, Default)]
pub struct Probe {
    pub seen: Arc<Seen>,
}

/// Counts a tool future's end from the inside: finished, stopped because its
/// token was cancelled, or dropped (and then whether its token said it was
/// cancelled).
struct Inside {
    seen: Arc<Seen>,
    ct: CancellationToken,
    done: bool,
    /// The tool returned because its token was cancelled.
    saw_cancel: bool,
}

impl Drop for Inside {
    fn drop(&mut self) {
        self.seen.running.fetch_sub(1, Ordering::SeqCst);
        if self.saw_cancel {
            self.seen.cancelled.fetch_add(1, Ordering::SeqCst);
        } else if self.done {
            self.seen.finished.fetch_add(1, Ordering::SeqCst);
        } else if self.ct.is_cancelled() {
            self.seen.cancelled.fetch_add(1, Ordering::SeqCst);
        } else {
            self.seen.dropped_silently.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl ServerHandler for Probe {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let args = Value::Object(request.arguments.clone().unwrap_or_default());
        let name = request.name.as_ref();
        if !matches!(name, "work" | "block" | "gate" | "fail" | "echo" | "panic") {
            return Err(ErrorData::invalid_params(
                format!("unknown tool `{name}`"),
                None,
            ));
        }
        let n = self.seen.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.seen.max_running.fetch_max(n, Ordering::SeqCst);
        self.seen.started.fetch_add(1, Ordering::SeqCst);
        if let Some(tag) = args.get("tag").and_then(Value::as_str) {
            self.seen.order.lock().unwrap().push(tag.to_owned());
        }
        self.seen.started_notify.notify_waiters();
        let mut inside = Inside {
            seen: Arc::clone(&self.seen),
            ct: context.ct.clone(),
            done: false,
            saw_cancel: false,
        };
        let result = match name {
            "work" => {
                let ms = args.get("ms").and_then(Value::as_u64).unwrap_or(10);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                CallToolResult::success(vec![ContentBlock::text("done")])
            }
            "block" => {
                context.ct.cancelled().await;
                inside.saw_cancel = true;
                CallToolResult::success(vec![ContentBlock::text("unblocked")])
            }
            "gate" => {
                self.seen.gate.notified().await;
                CallToolResult::success(vec![ContentBlock::text("released")])
            }
            "fail" => CallToolResult::error(vec![ContentBlock::text("dependency failed")]),
            "panic" => panic!("the tool panicked"),
            _ => CallToolResult::success(vec![ContentBlock::text(args.to_string())]),
        };
        inside.done = true;
        Ok(result.into())
    }
}

pub type Client = RunningService<RoleClient, ()>;
pub type Server = RunningService<RoleServer, Protected<Probe>>;

/// rmcp's client connected to `guard.protect(probe)` over an in-process pipe
/// (rmcp's async read/write transport: the stdio transport's codec).
pub async fn connect(guard: &McpGuard, probe: &Probe) -> (Client, Server) {
    let (client_io, server_io) = tokio::io::duplex(1 << 20);
    let protected = guard.protect(probe.clone());
    let server = tokio::spawn(async move { protected.serve(server_io).await });
    let client = ().serve(client_io).await.expect("client handshake");
    let server = server.await.unwrap().expect("server handshake");
    (client, server)
}

pub fn call(name: &str, args: Value) -> CallToolRequestParams {
    let mut params = CallToolRequestParams::new(name.to_owned());
    if let Value::Object(map) = args {
        params = params.with_arguments(map);
    }
    params
}

pub fn tag(tag: impl Into<String>, ms: u64) -> Value {
    json!({ "tag": tag.into(), "ms": ms })
}

/// The JSON-RPC error of a failed call, if the failure is one.
pub fn rpc_error(e: &rmcp::ServiceError) -> Option<&ErrorData> {
    match e {
        rmcp::ServiceError::McpError(e) => Some(e),
        _ => None,
    }
}

/// Polls `cond` every millisecond of (paused or real) time, up to `within`.
pub async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Sends a `tools/call` whose handle can cancel it (`notifications/cancelled`).
pub fn send_cancellable(
    client: &Client,
    name: &str,
    args: serde_json::Value,
) -> impl std::future::Future<
    Output = Result<rmcp::service::RequestHandle<rmcp::RoleClient>, rmcp::ServiceError>,
> {
    let request = rmcp::model::ClientRequest::CallToolRequest(rmcp::model::CallToolRequest::new(
        call(name, args),
    ));
    let peer = client.peer().clone();
    async move {
        peer.send_cancellable_request(request, rmcp::service::PeerRequestOptions::no_options())
            .await
    }
}
