//! Protection for Model Context Protocol servers built on the official Rust SDK,
//! [`rmcp`]: the parts of heijunka an MCP tool server needs, in a few lines.
//!
//! An LLM client can fire many `tools/call` requests at once, tools call slow
//! dependencies, a client cancels (`notifications/cancelled`) or simply goes away,
//! one session can hog the server, and the process must drain its tool calls on
//! deploy. rmcp leaves all of that to the server author. Wrap your
//! [`ServerHandler`](rmcp::ServerHandler) with an [`McpGuard`] and every
//! `tools/call` passes through, in order:
//!
//! 1. **shutdown**: once it has begun, new sessions and calls are refused;
//! 2. **argument size**: larger than [`max_argument_bytes`](McpGuardBuilder::max_argument_bytes) is refused;
//! 3. **the session's rate** ([`session_rate`](McpGuardBuilder::session_rate), a keyed GCRA limiter);
//! 4. **the dependencies' breakers** ([`ToolPolicy::depends_on`]): refused at once while open;
//! 5. **memory pressure** ([`memory_gate`](McpGuardBuilder::memory_gate)): expensive tools ([`ToolPolicy::memory_bytes`]) first;
//! 6. **the tool's bulkhead** ([`ToolPolicy::max_concurrent`]): a slow tool cannot take every slot
//!    (full, it refuses at once, or lets calls wait with a [`ToolPolicy::bulkhead_queue`]);
//! 7. **the server's slots** ([`max_concurrent_calls`](McpGuardBuilder::max_concurrent_calls), or
//!    [`adaptive`](McpGuardBuilder::adaptive)): when all are busy the call waits in a queue that is
//!    **fair across sessions** (the backpressure crate's deficit-round-robin
//!    [`FairScheduler`](heijunka_backpressure::FairScheduler), keyed by session); the seeds'
//!    degradation table applies to that queue: a warning at 80 %, refusal at 90 %.
//!
//! A refusal is immediate and typed: a JSON-RPC error with code
//! [`codes::REFUSED`], whose `data` carries the `reason`
//! ([`RefusalReason`]), the `tool`, and `retry_after_ms` where trying later can
//! succeed. Nothing hangs.
//!
//! An admitted call runs under its **deadline** ([`ToolPolicy::deadline`], queue
//! wait included) and is **cancelled for real** (its future dropped, its slot
//! freed, the cancellation counted by cause) when the client sends
//! `notifications/cancelled`, when the HTTP client disconnects (with
//! [`McpGuard::http_layer`] around rmcp's streamable-HTTP service), when the
//! deadline passes, or when shutdown's grace runs out. The tool sees it through
//! its request context: `context.ct` is cancelled first, so work the tool spawned
//! can stop too.
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use heijunka_mcp::{McpGuard, ToolPolicy};
//! use rmcp::transport::streamable_http_server::{
//!     StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
//! };
//! # #[derive(Clone)] struct MyTools;
//! # impl rmcp::ServerHandler for MyTools {
//! #     fn get_info(&self) -> rmcp::model::ServerConfig { Default::default() }
//! # }
//! # async fn serve() -> Result<(), Box<dyn std::error::Error>> {
//!
//! let guard = McpGuard::builder()
//!     .max_concurrent_calls(8)
//!     .session_rate(20.0, 10)
//!     .tool("search", ToolPolicy::new().max_concurrent(4).deadline(Duration::from_secs(5)))
//!     .build()?;
//! let service = StreamableHttpService::new(
//!     { let guard = guard.clone(); move || Ok(guard.protect(MyTools)) },
//!     Arc::new(LocalSessionManager::default()),
//!     StreamableHttpServerConfig::default(),
//! );
//! let service = tower::Layer::layer(&guard.http_layer(), service);
//! // axum::Router::new().nest_service("/mcp", service) ...
//! # let _ = service; Ok(()) }
//! ```
//!
//! Over stdio: `guard.protect(MyTools).serve(rmcp::transport::stdio()).await?`.

mod config;
mod error;
mod gate;
mod guard;
mod http;
mod metrics;
mod protected;

pub use crate::{
    config::{
        DEFAULT_DEADLINE, DEFAULT_MAX_ARGUMENT_BYTES, DEFAULT_MAX_CONCURRENT_CALLS,
        DEFAULT_MAX_QUEUE_WAIT, DEFAULT_MAX_RATE_KEYS, DEFAULT_MAX_SESSIONS,
        DEFAULT_QUEUE_CAPACITY, DEFAULT_REJECT_AT, DEFAULT_WARN_AT, McpGuardBuilder, ToolPolicy,
    },
    error::{CancelCause, RefusalReason, codes},
    guard::{McpGuard, McpStats, OTHER_TOOLS, ToolStats},
    http::{ClientGone, GuardedBody, LayerBody, McpHttpLayer, McpHttpService, Prefixed},
    protected::Protected,
};
