//! An MCP server with three tools, the one `cargo xtask demo --mcp` drives with the
//! official Python SDK (`crates/mcp/scenario/burst.py`).
//!
//! - `fast` {n}: answers `n*2` at once.
//! - `slow` {ms = 200}: calls a flaky downstream that takes `ms` when it is not
//!   overloaded, and longer the more callers it has past its capacity of 6 (every
//!   Nth call fails with a tool error, `--flaky-every N`, 0 = never).
//! - `heavy` {mb = 16, at most 256}: allocates and fills `mb` MiB, holds it ~50 ms,
//!   answers its checksum.
//!
//! Every tool watches its request's cancellation token (`notifications/cancelled`
//! fires it) and counts, from inside the tool, how many calls started, finished,
//! saw the cancellation, or were dropped unfinished; `GET /stats` serves the counts.
//!
//! ```text
//! cargo run --release -p heijunka-mcp --example mcp_server -- [--http ADDR | --stdio]
//!     [--unprotected] [--flaky-every N]
//! ```
//!
//! Protected (the default), the handler is wrapped by heijunka-mcp in a few lines
//! (`protection()` below): at most 8 calls run at once, waiting calls are queued
//! fairly per session (refused at 90 % of a 64-call queue), `slow` has a bulkhead
//! of 6 (up to 32 more wait for it, 750 ms at most), a 3 s deadline and a breaker on
//! its downstream, `heavy` a bulkhead of 2 (8 more may wait 1 s) and is refused
//! first under memory pressure, each session may start 100 calls a second. `--unprotected` serves the bare handler.
//!
//! Over HTTP (default `127.0.0.1:0`) it prints one line, `listening on
//! http://IP:PORT/mcp`; SIGTERM or Ctrl-C stops it gracefully (new sessions and
//! calls refused, calls in flight drained within 5 s, the rest cancelled) and it
//! prints the final counters as one line of JSON.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use heijunka_mcp::{McpGuard, Protected, ToolPolicy};
use heijunka_memory::{MemoryGate, MemoryMonitor};
use heijunka_shutdown::Shutdown;
use rmcp::handler::server::{router::tool::ToolRouter, wrapper::Parameters};
use rmcp::model::{CallToolResult, ContentBlock, Implementation, ServerCapabilities, ServerConfig};
use rmcp::transport::streamable_http_server::{
    StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
};
use rmcp::{ErrorData, ServerHandler, ServiceExt, schemars, tool, tool_handler, tool_router};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// One tool's counts, kept by the tool itself. Relaxed everywhere: independent
/// counters read for reporting only, no other memory is published through them.
#[derive(Debug, Default)]
struct ToolStat {
    started: AtomicU64,
    finished: AtomicU64,
    cancelled: AtomicU64,
    dropped: AtomicU64,
}

impl ToolStat {
    fn json(&self) -> Value {
        let [s, f, c, d] = [
            &self.started,
            &self.finished,
            &self.cancelled,
            &self.dropped,
        ]
        .map(|a| a.load(Relaxed));
        json!({"started": s, "finished": f, "cancelled": c, "dropped": d,
               "running": s.saturating_sub(f + c + d)})
    }
}

/// The counts of the three tools, shared by every session's handler.
#[derive(Debug, Default)]
struct ToolCounters {
    fast: ToolStat,
    slow: ToolStat,
    heavy: ToolStat,
}

impl ToolCounters {
    fn json(&self) -> Value {
        json!({"fast": self.fast.json(), "slow": self.slow.json(), "heavy": self.heavy.json()})
    }
}

/// Counts a call as started now, and as dropped unless it is marked finished or
/// cancelled before it goes (a future dropped mid-call still balances).
struct Call<'a> {
    stat: &'a ToolStat,
    /// The call's cancellation token, when it has one: a future dropped with its
    /// token cancelled (heijunka-mcp cancels it first) counts as cancelled.
    ct: Option<CancellationToken>,
    done: bool,
}

impl<'a> Call<'a> {
    fn start(stat: &'a ToolStat, ct: Option<&CancellationToken>) -> Self {
        stat.started.fetch_add(1, Relaxed);
        Self {
            stat,
            ct: ct.cloned(),
            done: false,
        }
    }
    fn finish<T>(mut self, v: T) -> T {
        self.done = true;
        self.stat.finished.fetch_add(1, Relaxed);
        v
    }
    fn cancelled(mut self) -> Result<CallToolResult, ErrorData> {
        self.done = true;
        self.stat.cancelled.fetch_add(1, Relaxed);
        Ok(CallToolResult::error(vec![ContentBlock::text("cancelled")]))
    }
}

impl Drop for Call<'_> {
    fn drop(&mut self) {
        if self.done {
        } else if self
            .ct
            .as_ref()
            .is_some_and(CancellationToken::is_cancelled)
        {
            self.stat.cancelled.fetch_add(1, Relaxed);
        } else {
            self.stat.dropped.fetch_add(1, Relaxed);
        }
    }
}

/// How many callers the downstream serves at full speed.
const DOWNSTREAM_CAPACITY: u64 = 6;

/// A downstream that fails every `every`th call (0: never), deterministically, and
/// slows down past its capacity: a call that finds `n` callers in flight takes
/// `ms * max(1, n / 6)` (a shared resource: a database, an API with a quota).
#[derive(Debug)]
struct FlakyDependency {
    every: u64,
    calls: AtomicU64,
    in_flight: AtomicU64,
}

/// Leaves the downstream when the call ends, however it ends.
struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

impl FlakyDependency {
    async fn call(&self, ms: u64) -> Result<(), String> {
        let callers = self.in_flight.fetch_add(1, Relaxed) + 1;
        let _leave = InFlight(&self.in_flight);
        let slowdown = (callers as f64 / DOWNSTREAM_CAPACITY as f64).max(1.0);
        tokio::time::sleep(Duration::from_secs_f64(ms as f64 / 1e3 * slowdown)).await;
        let n = self.calls.fetch_add(1, Relaxed) + 1;
        match self.every {
            e if e > 0 && n.is_multiple_of(e) => Err(format!("dependency failed on call {n}")),
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct FastArgs {
    /// The number to double.
    n: u64,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct SlowArgs {
    /// How long the tool works, in milliseconds.
    #[serde(default = "default_ms")]
    ms: u64,
}

fn default_ms() -> u64 {
    200
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct HeavyArgs {
    /// How many MiB to allocate (at most 256).
    #[serde(default = "default_mb")]
    mb: u64,
}

fn default_mb() -> u64 {
    16
}

/// The tools; one per session, all sharing the counters and the dependency.
#[derive(Debug, Clone)]
struct Tools {
    counters: Arc<ToolCounters>,
    flaky: Arc<FlakyDependency>,
    #[allow(dead_code)] // read by the code #[tool_handler] generates
    tool_router: ToolRouter<Self>,
}

#[tool_router]
impl Tools {
    #[tool(description = "Doubles n, at once.")]
    async fn fast(&self, Parameters(FastArgs { n }): Parameters<FastArgs>) -> String {
        Call::start(&self.counters.fast, None).finish(n.wrapping_mul(2).to_string())
    }

    #[tool(
        description = "Calls a flaky downstream that takes ms milliseconds when not overloaded."
    )]
    async fn slow(
        &self,
        Parameters(SlowArgs { ms }): Parameters<SlowArgs>,
        ct: CancellationToken,
    ) -> Result<CallToolResult, ErrorData> {
        let call = Call::start(&self.counters.slow, Some(&ct));
        let answer = tokio::select! {
            () = ct.cancelled() => return call.cancelled(),
            answer = self.flaky.call(ms) => answer,
        };
        call.finish(Ok(match answer {
            Ok(()) => CallToolResult::success(vec![ContentBlock::text(format!("worked {ms} ms"))]),
            Err(e) => CallToolResult::error(vec![ContentBlock::text(e)]),
        }))
    }

    #[tool(description = "Allocates mb MiB (at most 256), holds it ~50 ms, answers its checksum.")]
    async fn heavy(
        &self,
        Parameters(HeavyArgs { mb }): Parameters<HeavyArgs>,
        ct: CancellationToken,
    ) -> Result<CallToolResult, ErrorData> {
        let call = Call::start(&self.counters.heavy, Some(&ct));
        let len = usize::try_from(mb.min(256) << 20).unwrap_or(usize::MAX);
        let buf: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        tokio::select! {
            () = ct.cancelled() => return call.cancelled(),
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        let sum = buf
            .iter()
            .fold(0u64, |acc, &b| acc.wrapping_add(u64::from(b)));
        call.finish(Ok(CallToolResult::success(vec![ContentBlock::text(
            sum.to_string(),
        )])))
    }
}

#[tool_handler]
impl ServerHandler for Tools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build()).with_server_info(
            Implementation::new("heijunka-mcp-example", env!("CARGO_PKG_VERSION")),
        )
    }
}

/// The shared state behind every session's handler and `/stats`.
#[derive(Debug)]
struct App {
    counters: Arc<ToolCounters>,
    flaky: Arc<FlakyDependency>,
    /// The protection; `None` with `--unprotected`.
    guard: Option<McpGuard>,
}

impl App {
    /// The stats `/stats` serves and the final line prints: the tools' own counts,
    /// and the guard's (calls, refusals by reason, cancellations by cause, queue,
    /// per-tool in flight and latency).
    fn stats(&self) -> Value {
        json!({
            "protected": self.guard.is_some(),
            "tools": self.counters.json(),
            "protection": self.guard.as_ref().map(McpGuard::stats),
        })
    }
}

/// The whole protection: a guard the sessions share. `shutdown` drains calls in
/// flight for up to 5 s on SIGTERM, then cancels the rest.
fn protection(
    shutdown: &Shutdown,
    memory: &MemoryMonitor,
) -> Result<McpGuard, Box<dyn std::error::Error>> {
    let memory_gate = MemoryGate::builder(memory)
        .large_request_bytes(32 << 20)
        .build()?;
    Ok(McpGuard::builder()
        .name("example")
        .max_concurrent_calls(8)
        .queue_capacity(64)
        .max_queue_wait(Duration::from_secs(2))
        .session_rate(100.0, 50)
        .tool(
            "slow",
            ToolPolicy::new()
                .max_concurrent(6)
                .bulkhead_queue(32, Duration::from_millis(750))
                .deadline(Duration::from_secs(3))
                .depends_on("flaky-downstream"),
        )
        .tool(
            "heavy",
            ToolPolicy::new()
                .max_concurrent(2)
                .bulkhead_queue(8, Duration::from_secs(1))
                .deadline(Duration::from_secs(2))
                .memory_bytes(64 << 20),
        )
        .memory_gate(memory_gate)
        .shutdown(shutdown)
        .build()?)
}

/// One session's handler.
fn make_handler(app: &App) -> Tools {
    Tools {
        counters: app.counters.clone(),
        flaky: app.flaky.clone(),
        tool_router: Tools::tool_router(),
    }
}

/// Serves `/mcp` (streamable HTTP) and `/stats` on `addr` until `stop` fires.
async fn serve_http(app: Arc<App>, addr: String, stop: CancellationToken) -> std::io::Result<()> {
    // A dropped connection is noticed at the next write: the keep-alive bounds how
    // long a disconnected client's call keeps running.
    let config = StreamableHttpServerConfig::default()
        .with_sse_keep_alive(Some(Duration::from_millis(500)))
        .with_cancellation_token(stop.child_token());
    let for_sessions = app.clone();
    let router = match app.guard.clone() {
        Some(guard) => {
            let service: StreamableHttpService<Protected<Tools>, LocalSessionManager> =
                StreamableHttpService::new(
                    {
                        let guard = guard.clone();
                        move || Ok(guard.protect(make_handler(&for_sessions)))
                    },
                    Arc::new(LocalSessionManager::default()),
                    config,
                );
            // A client that disconnects cancels its call; new sessions are turned
            // away with 503 when full or shutting down.
            let service = tower::Layer::layer(&guard.http_layer(), service);
            axum::Router::new().nest_service("/mcp", service)
        }
        None => {
            let service: StreamableHttpService<Tools, LocalSessionManager> =
                StreamableHttpService::new(
                    move || Ok(make_handler(&for_sessions)),
                    Arc::new(LocalSessionManager::default()),
                    config,
                );
            axum::Router::new().nest_service("/mcp", service)
        }
    };
    let router = router.route(
        "/stats",
        axum::routing::get(move || async move {
            let json = [(http::header::CONTENT_TYPE, "application/json")];
            (json, app.stats().to_string())
        }),
    );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on http://{}/mcp", listener.local_addr()?);
    std::io::Write::flush(&mut std::io::stdout())?;
    axum::serve(listener, router)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
}

/// Resolves on Ctrl-C or (on Unix) SIGTERM.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            },
            Err(_) => drop(tokio::signal::ctrl_c().await),
        }
    }
    #[cfg(not(unix))]
    drop(tokio::signal::ctrl_c().await);
}

fn usage(msg: &str) -> ! {
    eprintln!(
        "mcp_server: {msg}\nusage: mcp_server [--http ADDR | --stdio] [--unprotected] [--flaky-every N]"
    );
    std::process::exit(2)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (mut addr, mut stdio, mut protected, mut every) =
        ("127.0.0.1:0".to_string(), false, true, 5);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--http" => {
                addr = args
                    .next()
                    .unwrap_or_else(|| usage("--http needs an address"))
            }
            "--stdio" => stdio = true,
            "--unprotected" => protected = false,
            "--flaky-every" => {
                every = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage("--flaky-every needs a whole number"));
            }
            other => usage(&format!("unknown argument `{other}`")),
        }
    }
    let shutdown = Shutdown::builder()
        .grace_period(Duration::from_secs(5))
        .build()?;
    let memory = MemoryMonitor::builder().build()?;
    let _sampler = memory.spawn_sampler()?;
    let app = Arc::new(App {
        counters: Arc::default(),
        flaky: Arc::new(FlakyDependency {
            every,
            calls: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
        }),
        guard: if protected {
            Some(protection(&shutdown, &memory)?)
        } else {
            None
        },
    });
    if stdio {
        // stdout carries the protocol: the summary goes to stderr.
        let handler = make_handler(&app);
        let waiting = match &app.guard {
            Some(guard) => {
                let running = guard
                    .protect(handler)
                    .serve(rmcp::transport::stdio())
                    .await?;
                tokio::spawn(async move { running.waiting().await.map(drop) })
            }
            None => {
                let running = handler.serve(rmcp::transport::stdio()).await?;
                tokio::spawn(async move { running.waiting().await.map(drop) })
            }
        };
        tokio::select! {
            r = waiting => r??,
            () = stop_signal() => {
                shutdown.trigger();
                let report = shutdown.wait().await;
                eprintln!("mcp_server: shutdown {}", if report.is_clean() { "clean" } else { "forced" });
            }
        }
        eprintln!("{}", app.stats());
        return Ok(());
    }
    let stop = CancellationToken::new();
    let mut server = tokio::spawn(serve_http(app.clone(), addr, stop.clone()));
    tokio::select! {
        r = &mut server => return Ok(r??),
        () = stop_signal() => {}
    }
    // Stop taking sessions and calls, let the calls in flight finish within the
    // grace (the rest are cancelled), then end the sessions' streams and let axum
    // finish the answers in flight.
    shutdown.trigger();
    let report = shutdown.wait().await;
    eprintln!(
        "mcp_server: shutdown {} in {:?} ({} calls in flight at the signal)",
        if report.is_clean() { "clean" } else { "forced" },
        report.total_time,
        report.in_flight_at_trigger,
    );
    // The answers of calls cancelled at the end of the grace are on their way to
    // the sessions' streams: give them a moment before the streams end.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.cancel();
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(r) => r??,
        Err(_) => eprintln!("mcp_server: connections still open after 5 s; stopping anyway"),
    }
    println!("{}", app.stats());
    Ok(())
}
