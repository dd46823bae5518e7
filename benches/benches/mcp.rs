//! `mcp/*`: what heijunka-mcp's protection adds to an rmcp server's `tools/call`.
//!
//! - `mcp/tools_call`: one `tools/call` of a trivial tool (`fast`, returns at
//!   once) from an rmcp client to an rmcp server over the in-process transport (a
//!   `tokio::io::duplex` pair, JSON-RPC lines both ways), calls one after another
//!   on a multi-thread tokio runtime. `heijunka` is the server wrapped by
//!   [`McpGuard::protect`] (the defaults, plus a per-tool policy and a session
//!   rate high enough never to refuse); `unprotected` is the same server alone.
//!   The protection's overhead is `heijunka − unprotected` (target: under 2 µs).
//!   After the group, the overhead is also measured in paired rounds (the two
//!   servers alternately, in the same process) and printed, since the difference
//!   of two round trips of tens of µs is easily lost in the noise of one pair of
//!   medians.
//! - `mcp/guard_only`: the guard's admission, the call and the release alone,
//!   without transport: [`Protected`]'s `call_tool` awaited directly with a
//!   request context built from the public API (`RequestContext::new` with the
//!   peer of a served session), against the wrapped handler's `call_tool` called
//!   the same way (`unprotected`).

use std::hint::black_box;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use heijunka_benches::baselines;
use heijunka_mcp::{McpGuard, Protected, ToolPolicy};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, NumberOrString, ServerCapabilities, ServerConfig,
};
use rmcp::service::{Peer, RequestContext, RoleClient, RoleServer, RunningService};
use rmcp::{ServerHandler, ServiceExt, tool, tool_handler, tool_router};
use tokio::runtime::Runtime;

/// The trivial tool server: one tool, `fast`, that answers at once.
#[derive(Clone, Debug)]
struct Fast {
    tool_router: ToolRouter<Self>,
}

impl Fast {
    fn new() -> Self {
        Self {
            tool_router: Self::tool_router(),
        }
    }
}

#[tool_router]
impl Fast {
    /// Answers at once.
    #[tool(description = "Answers at once")]
    async fn fast(&self) -> String {
        "ok".to_owned()
    }
}

// The router built once, not per call (the macro's default builds it per call).
#[tool_handler(router = self.tool_router)]
impl ServerHandler for Fast {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }
}

/// The protected server's guard: the defaults, a policy for `fast` and a session
/// rate high enough never to refuse during a run (every stage on the path that
/// costs something when admitting: argument size, session rate, the tool's
/// bulkhead, shutdown's in-flight count, the server slot, the deadline).
fn guard() -> McpGuard {
    McpGuard::builder()
        .session_rate(1e9, 1_000_000)
        .tool(
            "fast",
            ToolPolicy::new()
                .max_concurrent(64)
                .deadline(Duration::from_secs(30)),
        )
        .build()
        .expect("valid")
}

/// A connected pair: the client, and the server's running service.
struct Session<S: ServerHandler> {
    client: RunningService<RoleClient, ()>,
    server: RunningService<RoleServer, S>,
}

/// Serves `handler` over a duplex pair and connects a client (the whole MCP
/// handshake, `initialize` included).
fn connect<S: ServerHandler>(rt: &Runtime, handler: S) -> Session<S> {
    rt.block_on(async move {
        let (server_io, client_io) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(async move { handler.serve(server_io).await });
        let client = ().serve(client_io).await.expect("client connects");
        let server = server
            .await
            .expect("server task")
            .expect("server initialized");
        Session { client, server }
    })
}

/// `iters` calls of `fast`, one after another; the time they took.
fn calls(rt: &Runtime, client: &RunningService<RoleClient, ()>, iters: u64) -> Duration {
    let params = CallToolRequestParams::new("fast");
    rt.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            let result = client
                .call_tool(black_box(params.clone()))
                .await
                .expect("the call succeeds");
            black_box(result);
        }
        start.elapsed()
    })
}

fn tools_call(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    tools_call_on(c, "mcp/tools_call", &rt);
    // One thread: client, server and tool on one scheduler, so no cross-thread
    // wake-ups (the multi-thread figures are dominated by them on 2 cores).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    tools_call_on(c, "mcp/tools_call_1thread", &rt);
}

fn tools_call_on(c: &mut Criterion, group: &str, rt: &Runtime) {
    let guard = guard();
    let protected = connect(rt, guard.protect(Fast::new()));
    let unprotected = connect(rt, Fast::new());

    let mut ran = [false; 2];
    let mut g = c.benchmark_group(group);
    g.bench_function("heijunka", |b| {
        ran[0] = true;
        b.iter_custom(|iters| calls(rt, &protected.client, iters))
    });
    g.bench_function("unprotected", |b| {
        ran[1] = true;
        b.iter_custom(|iters| calls(rt, &unprotected.client, iters))
    });
    g.finish();

    if ran == [true, true] {
        paired_overhead(group, rt, &protected.client, &unprotected.client);
        let stats = guard.stats();
        assert_eq!(
            stats.refused, 0,
            "the protected server refused calls: {stats:?}"
        );
        assert_eq!(stats.calls, stats.completed, "{stats:?}");
    }
    for session in [protected.client, unprotected.client] {
        drop(rt.block_on(session.cancel()));
    }
    drop((protected.server, unprotected.server));
}

/// The overhead in paired rounds: `ROUNDS` times, `CALLS` calls to each server
/// in turn (which goes first alternates); the median of the rounds' differences.
fn paired_overhead(
    group: &str,
    rt: &Runtime,
    protected: &RunningService<RoleClient, ()>,
    unprotected: &RunningService<RoleClient, ()>,
) {
    const ROUNDS: usize = 21;
    const CALLS: u64 = 500;
    let per_call = |d: Duration| d.as_nanos() as f64 / CALLS as f64;
    let mut diffs = Vec::with_capacity(ROUNDS);
    let mut ours = Vec::with_capacity(ROUNDS);
    let mut theirs = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        let (p, u) = if round % 2 == 0 {
            let p = per_call(calls(rt, protected, CALLS));
            (p, per_call(calls(rt, unprotected, CALLS)))
        } else {
            let u = per_call(calls(rt, unprotected, CALLS));
            (per_call(calls(rt, protected, CALLS)), u)
        };
        ours.push(p);
        theirs.push(u);
        diffs.push(p - u);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "{group} overhead (heijunka − unprotected), median of {ROUNDS} paired rounds \
         of {CALLS} calls: {:+.0} ns per call (heijunka {:.0} ns, unprotected {:.0} ns; \
         target < 2000 ns)",
        median(&mut diffs),
        median(&mut ours),
        median(&mut theirs),
    );
}

/// `iters` calls of `handler.call_tool` awaited directly, each with a fresh
/// request context (as rmcp builds one per request); the time they took.
fn direct<H: ServerHandler>(
    rt: &Runtime,
    handler: &H,
    peer: &Peer<RoleServer>,
    iters: u64,
) -> Duration {
    static ID: AtomicI64 = AtomicI64::new(1);
    let params = CallToolRequestParams::new("fast");
    rt.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            let id = NumberOrString::Number(ID.fetch_add(1, Ordering::Relaxed));
            let context = RequestContext::new(id, peer.clone());
            let result = handler
                .call_tool(black_box(params.clone()), context)
                .await
                .expect("the call succeeds");
            debug_assert!(matches!(result, CallToolResponse::Complete(_)));
            black_box(result);
        }
        start.elapsed()
    })
}

fn guard_only(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // A served session, for its peer: `RequestContext::new` takes one, and rmcp
    // offers no other public way to make a `Peer`.
    let session = connect(&rt, Fast::new());
    let peer = session.server.peer().clone();
    let guard = guard();
    let protected: Protected<Fast> = guard.protect(Fast::new());
    let unprotected = Fast::new();

    let mut g = c.benchmark_group("mcp/guard_only");
    g.bench_function("heijunka", |b| {
        b.iter_custom(|iters| direct(&rt, &protected, &peer, iters))
    });
    g.bench_function("unprotected", |b| {
        b.iter_custom(|iters| direct(&rt, &unprotected, &peer, iters))
    });
    g.finish();
    let stats = guard.stats();
    assert_eq!(stats.refused, 0, "the guard refused calls: {stats:?}");
    drop(peer);
    drop(rt.block_on(session.client.cancel()));
    drop(session.server);
}

criterion_group!(benches, tools_call, guard_only, baselines);
criterion_main!(benches);
