//! heijunka-mcp driven by rmcp's own client over an in-process pipe (rmcp's
//! async read/write transport, the one its stdio transport uses): limits,
//! fairness, refusals, deadlines, cancellation and shutdown, observed from
//! inside the tools.

mod support;

use std::sync::Arc;
use std::time::Duration;

use heijunka_mcp::{CancelCause, McpGuard, RefusalReason, ToolPolicy, codes};
use rmcp::model::{CancelledNotificationParam, PaginatedRequestParams};
use serde_json::json;
use support::{Probe, call, connect, eventually, rpc_error, send_cancellable, tag};

fn reason_of(e: &rmcp::ServiceError) -> Option<String> {
    let e = rpc_error(e)?;
    if e.code != codes::REFUSED {
        return None;
    }
    e.data.as_ref()?.get("reason")?.as_str().map(str::to_owned)
}

/// 200 concurrent calls against a server limited to 8: never more than 8 run
/// (seen inside the tool), the rest are served in order or refused at once with
/// the busy error; every call gets exactly one answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_calls_never_more_than_eight_running() {
    let guard = McpGuard::builder()
        .max_concurrent_calls(8)
        .queue_capacity(64)
        .max_queue_wait(Duration::from_secs(30))
        .build()
        .unwrap();
    let probe = Probe::default();
    let (client, _server) = connect(&guard, &probe).await;
    let client = Arc::new(client);
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..200 {
        let client = Arc::clone(&client);
        calls.spawn(async move { client.call_tool(call("work", tag(format!("{i}"), 5))).await });
    }
    let (mut ok, mut busy) = (0, 0);
    while let Some(answer) = calls.join_next().await {
        match answer.unwrap() {
            Ok(result) => {
                assert_ne!(result.is_error, Some(true));
                ok += 1;
            }
            Err(e) => {
                let reason = reason_of(&e).unwrap_or_else(|| panic!("not a refusal: {e:?}"));
                assert_eq!(reason, "queue_full", "{e:?}");
                let data = rpc_error(&e).unwrap().data.as_ref().unwrap();
                assert_eq!(data["limit"], json!(8));
                busy += 1;
            }
        }
    }
    assert_eq!(ok + busy, 200, "every call answered once");
    assert!(
        probe.seen.max_running() <= 8,
        "max running {}",
        probe.seen.max_running()
    );
    assert_eq!(probe.seen.max_running(), 8, "the limit was used");
    assert_eq!(probe.seen.finished(), ok);
    assert!(busy > 0 && ok >= 8 + 58, "ok {ok} busy {busy}");
    let stats = guard.stats();
    assert_eq!(stats.calls, 200);
    assert_eq!(stats.completed, ok);
    assert_eq!(stats.refused_by[&RefusalReason::QueueFull], busy);
    assert_eq!((stats.in_flight, stats.waiting), (0, 0));
    // The 90 % refuse mark of a 64-call queue: never more than 58 waited.
    assert!(stats.peak_waiting <= 58, "{}", stats.peak_waiting);
}

/// Calls that wait are served in the order they came (one session: FIFO).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_calls_are_served_in_order() {
    let guard = McpGuard::builder().max_concurrent_calls(1).build().unwrap();
    let probe = Probe::default();
    let (client, _server) = connect(&guard, &probe).await;
    let client = Arc::new(client);
    let first = tokio::spawn({
        let client = Arc::clone(&client);
        async move {
            client
                .call_tool(call("gate", json!({"tag": "first"})))
                .await
        }
    });
    assert!(eventually(Duration::from_secs(5), || probe.seen.started() == 1).await);
    let mut rest = Vec::new();
    for i in 0..10 {
        let client = Arc::clone(&client);
        rest.push(tokio::spawn(async move {
            client.call_tool(call("work", tag(format!("{i}"), 1))).await
        }));
        // Each is queued before the next is sent.
        assert!(eventually(Duration::from_secs(5), || guard.stats().waiting == i + 1).await);
    }
    probe.seen.gate.notify_one();
    first.await.unwrap().unwrap();
    for r in rest {
        r.await.unwrap().unwrap();
    }
    let expected: Vec<String> = std::iter::once("first".to_owned())
        .chain((0..10).map(|i| i.to_string()))
        .collect();
    assert_eq!(probe.seen.order(), expected);
}

/// The control for the test above: the same burst against the bare server runs
/// far more than 8 at once, so the probe observes what the guard prevents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_the_bare_server_runs_the_whole_burst() {
    let probe = Probe::default();
    let (client_io, server_io) = tokio::io::duplex(1 << 20);
    let bare = probe.clone();
    let server = tokio::spawn(async move { rmcp::ServiceExt::serve(bare, server_io).await });
    let client = Arc::new(rmcp::ServiceExt::serve((), client_io).await.unwrap());
    let _server = server.await.unwrap().unwrap();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..50 {
        let client = Arc::clone(&client);
        calls.spawn(async move {
            client
                .call_tool(call("work", tag(format!("{i}"), 50)))
                .await
        });
    }
    while let Some(r) = calls.join_next().await {
        r.unwrap().unwrap();
    }
    assert!(probe.seen.max_running() > 8, "{}", probe.seen.max_running());
}

/// `notifications/cancelled` cancels the running call at once: the tool sees its
/// token cancelled and its future dropped, the slot goes to the next call, and
/// the cancellation is counted (paused time: "at once" is exact).
#[tokio::test(start_paused = true)]
async fn client_cancel_frees_the_slot_and_the_tool_sees_it() {
    let guard = McpGuard::builder().max_concurrent_calls(1).build().unwrap();
    let probe = Probe::default();
    let (client, _server) = connect(&guard, &probe).await;
    let handle = send_cancellable(&client, "block", json!({})).await.unwrap();
    assert!(eventually(Duration::from_secs(1), || probe.seen.running() == 1).await);
    // A second call waits for the only slot.
    let waiting = send_cancellable(&client, "work", json!({"ms": 1}))
        .await
        .unwrap();
    assert!(eventually(Duration::from_secs(1), || guard.stats().waiting == 1).await);

    let cancelled_at = tokio::time::Instant::now();
    handle
        .cancel(Some("user pressed stop".into()))
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_millis(100), || probe.seen.cancelled() == 1).await,
        "the tool did not observe its cancellation"
    );
    // The slot went to the waiting call, which completes.
    let answer = waiting.await_response().await.unwrap();
    assert!(
        matches!(answer, rmcp::model::ServerResult::CallToolResult(_)),
        "{answer:?}"
    );
    assert!(cancelled_at.elapsed() <= Duration::from_millis(100));
    let stats = guard.stats();
    assert_eq!(stats.cancelled_by["client"], 1);
    assert_eq!((stats.in_flight, stats.waiting), (0, 0));
    assert_eq!(stats.completed, 1);
    assert_eq!(
        probe
            .seen
            .dropped_silently
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

/// A client that gives up on a call still waiting in the queue leaves no waiter
/// behind, and the slot goes to the call after it.
#[tokio::test(start_paused = true)]
async fn client_cancel_while_queued_leaves_no_waiter() {
    let guard = McpGuard::builder().max_concurrent_calls(1).build().unwrap();
    let probe = Probe::default();
    let (client, _server) = connect(&guard, &probe).await;
    let running = send_cancellable(&client, "gate", json!({})).await.unwrap();
    assert!(eventually(Duration::from_secs(1), || probe.seen.running() == 1).await);
    let queued = send_cancellable(&client, "work", json!({"tag": "gave-up"}))
        .await
        .unwrap();
    let after = send_cancellable(&client, "work", json!({"tag": "after"}))
        .await
        .unwrap();
    assert!(eventually(Duration::from_secs(1), || guard.stats().waiting == 2).await);
    queued.cancel(None).await.unwrap();
    assert!(eventually(Duration::from_millis(100), || guard.stats().waiting == 1).await);
    probe.seen.gate.notify_one();
    running.await_response().await.unwrap();
    after.await_response().await.unwrap();
    assert_eq!(
        probe.seen.order(),
        ["after"],
        "the cancelled call never ran"
    );
    let stats = guard.stats();
    assert_eq!((stats.in_flight, stats.waiting), (0, 0));
    assert_eq!(stats.cancelled_by["client"], 1);
    assert_eq!(stats.completed, 2);
}

/// A call past its deadline is cancelled (the tool sees it), answered with
/// DEADLINE_EXCEEDED, counted, and its slot freed.
#[tokio::test(start_paused = true)]
async fn deadline_cancels_the_call() {
    let guard = McpGuard::builder()
        .max_concurrent_calls(2)
        .tool(
            "block",
            ToolPolicy::new().deadline(Duration::from_millis(300)),
        )
        .build()
        .unwrap();
    let probe = Probe::default();
    let (client, _server) = connect(&guard, &probe).await;
    let start = tokio::time::Instant::now();
    let err = client
        .call_tool(call("block", json!({})))
        .await
        .unwrap_err();
    let elapsed = start.elapsed();
    let e = rpc_error(&err).expect("a JSON-RPC error");
    assert_eq!(e.code, codes::DEADLINE_EXCEEDED, "{e:?}");
    assert_eq!(e.data.as_ref().unwrap()["deadline_ms"], json!(300));
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_millis(400),
        "{elapsed:?}"
    );
    assert_eq!(probe.seen.cancelled(), 1);
    let stats = guard.stats();
    assert_eq!(stats.cancelled_by["deadline"], 1);
    assert_eq!(stats.in_flight, 0);
    let block = stats.tools.iter().find(|t| t.name == "block").unwrap();
    assert_eq!((block.calls, block.cancelled, block.in_flight), (1, 1, 0));
}

/// One session floods; another's calls still get their fair share of the one
/// slot (deficit round robin per session), instead of waiting behind the flood.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_session_does_not_starve_another() {
    let guard = McpGuard::builder()
        .max_concurrent_calls(1)
        .queue_capacity(100)
        .build()
        .unwrap();
    let probe = Probe::default();
    let (flood, _s1) = connect(&guard, &probe).await;
    let (polite, _s2) = connect(&guard, &probe).await;
    let (flood, polite) = (Arc::new(flood), Arc::new(polite));
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..40 {
        let c = Arc::clone(&flood);
        calls.spawn(async move {
            c.call_tool(call("work", tag(format!("flood-{i}"), 2)))
                .await
        });
    }
    assert!(eventually(Duration::from_secs(5), || guard.stats().waiting >= 30).await);
    for i in 0..5 {
        let c = Arc::clone(&polite);
        calls.spawn(async move {
            c.call_tool(call("work", tag(format!("polite-{i}"), 2)))
                .await
        });
    }
    while let Some(r) = calls.join_next().await {
        r.unwrap().unwrap();
    }
    let order = probe.seen.order();
    let last_polite = order.iter().rposition(|t| t.starts_with("polite")).unwrap();
    let flood_before = order[..last_polite]
        .iter()
        .filter(|t| t.starts_with("flood"))
        .count();
    // FIFO would run all ~40 flood calls first. Fair share: the polite session's
    // 5 calls alternate with the flood's from the moment they queue.
    let flood_started_before_polite = order.iter().position(|t| t.starts_with("polite")).unwrap();
    assert!(
        flood_before <= flood_started_before_polite + 5,
        "polite calls waited behind the flood: {order:?}"
    );
}

/// A slow tool's bulkhead refuses its own extra calls at once while other tools
/// still run.
#[tokio::test(start_paused = true)]
async fn a_slow_tool_cannot_take_every_slot() {
    let guard = McpGuard::builder()
        .max_concurrent_calls(8)
        .tool("gate", ToolPolicy::new().max_concurrent(2))
        .build()
        .unwrap();
    let probe = Probe::default();
    let (client, _server) = connect(&guard, &probe).await;
    let a = send_cancellable(&client, "gate", json!({})).await.unwrap();
    let b = send_cancellable(&client, "gate", json!({})).await.unwrap();
    assert!(eventually(Duration::from_secs(1), || probe.seen.running() == 2).await);
    let err = client.call_tool(call("gate", json!({}))).await.unwrap_err();
    assert_eq!(
        reason_of(&err).as_deref(),
        Some("tool_at_capacity"),
        "{err:?}"
    );
    let data = rpc_error(&err).unwrap().data.clone().unwrap();
    assert_eq!(data["tool"], json!("gate"));
    assert_eq!(data["limit"], json!(2));
    // Another tool is not affected.
    client
        .call_tool(call("work", json!({"ms": 1})))
        .await
        .unwrap();
    probe.seen.gate.notify_one();
    probe.seen.gate.notify_one();
    a.await_response().await.unwrap();
    b.await_response().await.unwrap();
    assert_eq!(guard.stats().refused_by[&RefusalReason::ToolAtCapacity], 1);
}

/// Unknown tools, oversized arguments: the protocol's error, counted, no panic.
#[tokio::test(start_paused = true)]
async fn bad_input_is_answered_and_counted() {
    let guard = McpGuard::builder()
        .max_argument_bytes(1024)
        .build()
        .unwrap();
    let probe = Probe::default();
    let (client, _server) = connect(&guard, &probe).await;
    let err = client.call_tool(call("nope", json!({}))).await.unwrap_err();
    assert_eq!(
        rpc_error(&err).unwrap().code,
        rmcp::model::ErrorCode::INVALID_PARAMS
    );
    let big = "x".repeat(4096);
    let err = client
        .call_tool(call("echo", json!({ "blob": big })))
        .await
        .unwrap_err();
    assert_eq!(
        reason_of(&err).as_deref(),
        Some("arguments_too_large"),
        "{err:?}"
    );
    assert_eq!(
        rpc_error(&err).unwrap().data.as_ref().unwrap()["transient"],
        json!(false)
    );
    // Just under the bound is fine.
    let fits = "x".repeat(900);
    client
        .call_tool(call("echo", json!({ "blob": fits })))
        .await
        .unwrap();
    // The session still works, and the server listed its tools.
    client
        .list_tools(Some(PaginatedRequestParams::default()))
        .await
        .unwrap();
    let stats = guard.stats();
    assert_eq!(stats.errors, 1);
    assert_eq!(stats.refused_by[&RefusalReason::ArgumentsTooLarge], 1);
    assert_eq!(stats.completed, 1);
    assert_eq!(stats.calls, 3);
    assert_eq!(
        probe.seen.started(),
        1,
        "the oversized call never reached the tool"
    );
    let _ = CancelledNotificationParam::new(None, None);
}

/// Per-session rate: the burst passes, the next is refused with a retry-after;
/// another session has its own budget.
#[tokio::test(start_paused = true)]
async fn session_rate_limits_each_session() {
    let clock = heijunka_core::ManualClock::new();
    let guard = McpGuard::builder()
        .session_rate(10.0, 3)
        .clock(clock.clock())
        .build()
        .unwrap();
    let probe = Probe::default();
    let (a, _sa) = connect(&guard, &probe).await;
    let (b, _sb) = connect(&guard, &probe).await;
    for _ in 0..3 {
        a.call_tool(call("work", json!({"ms": 0}))).await.unwrap();
    }
    let err = a
        .call_tool(call("work", json!({"ms": 0})))
        .await
        .unwrap_err();
    assert_eq!(reason_of(&err).as_deref(), Some("rate_limited"));
    let after = rpc_error(&err).unwrap().data.as_ref().unwrap()["retry_after_ms"]
        .as_u64()
        .unwrap();
    assert!((1..=100).contains(&after), "{after}");
    b.call_tool(call("work", json!({"ms": 0}))).await.unwrap();
    clock.advance(Duration::from_millis(after));
    a.call_tool(call("work", json!({"ms": 0}))).await.unwrap();
    assert_eq!(guard.stats().refused_by[&RefusalReason::RateLimited], 1);
}

/// The session bound: one more `initialize` is refused with the busy error; a
/// session that ends makes room.
#[tokio::test(start_paused = true)]
async fn sessions_are_bounded() {
    let guard = McpGuard::builder().max_sessions(2).build().unwrap();
    let probe = Probe::default();
    let (a, sa) = connect(&guard, &probe).await;
    let (_b, _sb) = connect(&guard, &probe).await;
    let (client_io, server_io) = tokio::io::duplex(1 << 16);
    let protected = guard.protect(probe.clone());
    let server = tokio::spawn(async move { rmcp::ServiceExt::serve(protected, server_io).await });
    let refused = rmcp::ServiceExt::serve((), client_io).await;
    assert!(refused.is_err(), "the third session was admitted");
    assert!(server.await.unwrap().is_err());
    let stats = guard.stats();
    assert_eq!(stats.sessions, 2);
    assert_eq!(stats.sessions_refused, 1);
    assert_eq!(stats.refused, 0, "sessions are not calls");
    // A session that ends frees its place.
    a.cancel().await.unwrap();
    let _ = sa.cancel().await;
    assert!(eventually(Duration::from_secs(1), || guard.stats().sessions == 1).await);
    let (_c, _sc) = connect(&guard, &probe).await;
    assert_eq!(guard.stats().sessions, 2);
    let _ = CancelCause::Client;
}

/// A dependency's breaker: the tool's error results trip it; then the tool is
/// refused at once with `circuit_open` and a retry-after, without running.
#[tokio::test(start_paused = true)]
async fn an_open_breaker_refuses_the_tools_that_depend_on_it() {
    let clock = heijunka_core::ManualClock::new();
    let breaker = heijunka_breaker::BreakerConfig::builder()
        .sliding_window(heijunka_breaker::SlidingWindowType::CountBased, 4)
        .minimum_number_of_calls(4)
        .failure_rate_threshold(0.5)
        .wait_duration_in_open_state(Duration::from_secs(30))
        .clock(clock.clock())
        .build_config()
        .unwrap();
    let guard = McpGuard::builder()
        .tool("fail", ToolPolicy::new().depends_on("flaky-api"))
        .breaker_config(breaker)
        .build()
        .unwrap();
    let probe = Probe::default();
    let (client, _server) = connect(&guard, &probe).await;
    for _ in 0..4 {
        let result = client.call_tool(call("fail", json!({}))).await.unwrap();
        assert_eq!(result.is_error, Some(true));
    }
    assert_eq!(probe.seen.started(), 4);
    let err = client.call_tool(call("fail", json!({}))).await.unwrap_err();
    assert_eq!(reason_of(&err).as_deref(), Some("circuit_open"), "{err:?}");
    let data = rpc_error(&err).unwrap().data.clone().unwrap();
    assert_eq!(data["dependency"], json!("flaky-api"));
    assert_eq!(data["retry_after_ms"], json!(30_000));
    assert_eq!(probe.seen.started(), 4, "refused without running");
    // Tools that do not depend on it still run.
    client
        .call_tool(call("work", json!({"ms": 1})))
        .await
        .unwrap();
    assert_eq!(
        guard.breaker("flaky-api").unwrap().state(),
        heijunka_breaker::State::Open
    );
    let stats = guard.stats();
    assert_eq!(stats.tool_errors, 4);
    assert_eq!(stats.refused_by[&RefusalReason::CircuitOpen], 1);
}

/// Under memory pressure the gate refuses expensive tools first: at the elevated
/// level the tool that declared a large memory need is refused while cheap tools
/// run; at the critical level everything is refused.
#[tokio::test(start_paused = true)]
async fn memory_pressure_refuses_expensive_tools_first() {
    use heijunka_core::PressureLevel;
    use heijunka_memory::{ManualProbe, MemoryGate, MemoryMonitor};
    let probe_mem = ManualProbe::new(1 << 40);
    let monitor = MemoryMonitor::builder()
        .limit(1000)
        .probe(probe_mem.clone())
        .build()
        .unwrap();
    let gate = MemoryGate::builder(&monitor)
        .large_request_bytes(64 << 20)
        .large_reject_at(PressureLevel::Elevated)
        .build()
        .unwrap();
    let guard = McpGuard::builder()
        .tool("echo", ToolPolicy::new().memory_bytes(256 << 20))
        .memory_gate(gate)
        .build()
        .unwrap();
    let probe = Probe::default();
    let (client, _server) = connect(&guard, &probe).await;
    client.call_tool(call("echo", json!({}))).await.unwrap();
    probe_mem.set_rss(850);
    monitor.sample_now().unwrap();
    let err = client.call_tool(call("echo", json!({}))).await.unwrap_err();
    assert_eq!(
        reason_of(&err).as_deref(),
        Some("memory_pressure"),
        "{err:?}"
    );
    client
        .call_tool(call("work", json!({"ms": 1})))
        .await
        .unwrap();
    probe_mem.set_rss(950);
    monitor.sample_now().unwrap();
    let err = client
        .call_tool(call("work", json!({"ms": 1})))
        .await
        .unwrap_err();
    assert_eq!(
        reason_of(&err).as_deref(),
        Some("memory_pressure"),
        "{err:?}"
    );
    assert_eq!(guard.stats().refused_by[&RefusalReason::MemoryPressure], 2);
}

/// Shutdown with calls in flight: new calls are refused at once, the calls in
/// flight finish within the grace, the report is clean.
#[tokio::test(start_paused = true)]
async fn shutdown_drains_calls_in_flight_and_refuses_new_ones() {
    let shutdown = heijunka_shutdown::Shutdown::builder()
        .grace_period(Duration::from_secs(10))
        .build()
        .unwrap();
    let guard = McpGuard::builder().shutdown(&shutdown).build().unwrap();
    let probe = Probe::default();
    let (client, _server) = connect(&guard, &probe).await;
    let in_flight: Vec<_> = futures_join(&client, 3).await;
    assert!(eventually(Duration::from_secs(1), || probe.seen.running() == 3).await);
    shutdown.trigger();
    let err = client
        .call_tool(call("work", json!({"ms": 1})))
        .await
        .unwrap_err();
    assert_eq!(reason_of(&err).as_deref(), Some("shutting_down"), "{err:?}");
    assert_eq!(
        rpc_error(&err).unwrap().data.as_ref().unwrap()["transient"],
        json!(false)
    );
    // The drain waits for them.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!shutdown.phase().is_final());
    for _ in 0..3 {
        probe.seen.gate.notify_one();
    }
    for handle in in_flight {
        handle.await_response().await.unwrap();
    }
    let report = shutdown.wait().await;
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.in_flight_at_trigger, 3);
    assert_eq!(probe.seen.finished(), 3);
    assert_eq!(guard.stats().refused_by[&RefusalReason::ShuttingDown], 1);
}

/// Calls still running when the grace runs out are cancelled (the tools see it),
/// answered with CANCELLED, and the report says the drain was forced.
#[tokio::test(start_paused = true)]
async fn calls_past_the_grace_are_cancelled() {
    let shutdown = heijunka_shutdown::Shutdown::builder()
        .grace_period(Duration::from_secs(2))
        .build()
        .unwrap();
    let guard = McpGuard::builder().shutdown(&shutdown).build().unwrap();
    let probe = Probe::default();
    let (client, _server) = connect(&guard, &probe).await;
    let in_flight = futures_join(&client, 2).await;
    assert!(eventually(Duration::from_secs(1), || probe.seen.running() == 2).await);
    let triggered = tokio::time::Instant::now();
    shutdown.trigger();
    for handle in in_flight {
        let answer = handle.await_response().await.unwrap_err();
        let e = rpc_error(&answer).expect("an error answer");
        assert_eq!(e.code, codes::CANCELLED, "{e:?}");
        assert_eq!(e.data.as_ref().unwrap()["cause"], json!("shutdown"));
    }
    let waited = triggered.elapsed();
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_millis(2100),
        "{waited:?}"
    );
    let report = shutdown.wait().await;
    assert!(!report.is_clean(), "{report:?}");
    assert_eq!(probe.seen.cancelled(), 2);
    let stats = guard.stats();
    assert_eq!(stats.cancelled_by["shutdown"], 2);
    assert_eq!(stats.in_flight, 0);
}

/// Starts `n` `gate` calls and returns their handles.
async fn futures_join(
    client: &support::Client,
    n: usize,
) -> Vec<rmcp::service::RequestHandle<rmcp::RoleClient>> {
    let mut handles = Vec::new();
    for _ in 0..n {
        handles.push(send_cancellable(client, "gate", json!({})).await.unwrap());
    }
    handles
}

/// A call that waits for a slot longer than the queue allows is refused with
/// `queue_timeout`, leaving no waiter.
#[tokio::test(start_paused = true)]
async fn a_wait_past_the_queue_allowance_is_refused() {
    let guard = McpGuard::builder()
        .max_concurrent_calls(1)
        .max_queue_wait(Duration::from_millis(200))
        .build()
        .unwrap();
    let probe = Probe::default();
    let (client, _server) = connect(&guard, &probe).await;
    let running = send_cancellable(&client, "gate", json!({})).await.unwrap();
    assert!(eventually(Duration::from_secs(1), || probe.seen.running() == 1).await);
    let start = tokio::time::Instant::now();
    let err = client
        .call_tool(call("work", json!({"ms": 1})))
        .await
        .unwrap_err();
    assert_eq!(reason_of(&err).as_deref(), Some("queue_timeout"), "{err:?}");
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(200) && waited < Duration::from_millis(250));
    assert_eq!(guard.stats().waiting, 0);
    probe.seen.gate.notify_one();
    running.await_response().await.unwrap();
}

/// An adaptive server limit: calls that run past their deadline are drops, and
/// the limit comes down (AIMD halves it), so fewer run at once after.
#[tokio::test(start_paused = true)]
async fn an_adaptive_limit_shrinks_when_calls_time_out() {
    let aimd = heijunka_backpressure::Aimd::builder()
        .initial_limit(8)
        .min_limit(1)
        .backoff_ratio(0.5)
        .build()
        .unwrap();
    let guard = McpGuard::builder()
        .adaptive(aimd)
        .tool(
            "block",
            ToolPolicy::new().deadline(Duration::from_millis(100)),
        )
        .build()
        .unwrap();
    let probe = Probe::default();
    let (client, _server) = connect(&guard, &probe).await;
    assert_eq!(guard.stats().limit, 8);
    let _ = client
        .call_tool(call("block", json!({})))
        .await
        .unwrap_err();
    assert_eq!(guard.stats().limit, 4);
    let _ = client
        .call_tool(call("block", json!({})))
        .await
        .unwrap_err();
    assert_eq!(guard.stats().limit, 2);
}

/// A call whose queue wait uses up its deadline is refused `queue_timeout`: the
/// tool never runs, and neither its dependency's breaker nor the limit is told
/// anything about the tool.
#[tokio::test(start_paused = true)]
async fn a_slot_that_comes_at_the_deadline_is_a_queue_timeout() {
    let guard = McpGuard::builder()
        .max_concurrent_calls(1)
        .max_queue_wait(Duration::from_secs(10))
        .tool(
            "work",
            ToolPolicy::new()
                .deadline(Duration::from_millis(100))
                .depends_on("db"),
        )
        .build()
        .unwrap();
    let probe = Probe::default();
    let (client, _server) = connect(&guard, &probe).await;
    let running = send_cancellable(&client, "gate", json!({})).await.unwrap();
    assert!(eventually(Duration::from_secs(1), || probe.seen.running() == 1).await);
    let err = client
        .call_tool(call("work", json!({"ms": 1})))
        .await
        .unwrap_err();
    assert_eq!(reason_of(&err).as_deref(), Some("queue_timeout"), "{err:?}");
    assert_eq!(probe.seen.started(), 1, "the queued call never ran");
    let stats = guard.stats();
    assert_eq!(stats.cancelled, 0);
    assert_eq!(
        guard.breaker("db").unwrap().stats().failed_calls,
        0,
        "no failure blamed on the dependency"
    );
    probe.seen.gate.notify_one();
    running.await_response().await.unwrap();
}

/// A deadline too long to represent means no deadline, not a panic.
#[tokio::test(start_paused = true)]
async fn an_unrepresentable_deadline_is_no_deadline() {
    let guard = McpGuard::builder()
        .default_deadline(Duration::MAX)
        .build()
        .unwrap();
    let probe = Probe::default();
    let (client, _server) = connect(&guard, &probe).await;
    client
        .call_tool(call("work", json!({"ms": 5})))
        .await
        .unwrap();
}

/// A bulkhead with a queue: calls past the limit wait (first come first served)
/// instead of being refused; past `max_waiting` they are refused at once, and a
/// wait that runs out is refused too; a cancelled waiter leaves no waiter.
#[tokio::test(start_paused = true)]
async fn a_bulkhead_queue_lets_calls_wait_for_the_tool() {
    let guard = McpGuard::builder()
        .tool(
            "gate",
            ToolPolicy::new()
                .max_concurrent(1)
                .bulkhead_queue(2, Duration::from_secs(1)),
        )
        .build()
        .unwrap();
    let probe = Probe::default();
    let (client, _server) = connect(&guard, &probe).await;
    let tool = |g: &McpGuard| {
        g.stats()
            .tools
            .into_iter()
            .find(|t| t.name == "gate")
            .unwrap()
    };
    let first = send_cancellable(&client, "gate", json!({"tag": "1"}))
        .await
        .unwrap();
    assert!(eventually(Duration::from_millis(50), || probe.seen.running() == 1).await);
    let second = send_cancellable(&client, "gate", json!({"tag": "2"}))
        .await
        .unwrap();
    let third = send_cancellable(&client, "gate", json!({"tag": "3"}))
        .await
        .unwrap();
    assert!(eventually(Duration::from_millis(50), || tool(&guard).waiting == 2).await);
    // A fourth finds the bulkhead's queue full: refused at once.
    let err = client.call_tool(call("gate", json!({}))).await.unwrap_err();
    assert_eq!(
        reason_of(&err).as_deref(),
        Some("tool_at_capacity"),
        "{err:?}"
    );
    // The third gives up: no waiter left behind.
    third.cancel(None).await.unwrap();
    assert!(eventually(Duration::from_millis(50), || tool(&guard).waiting == 1).await);
    // The first ends; the second gets the place.
    probe.seen.gate.notify_one();
    first.await_response().await.unwrap();
    assert!(
        eventually(Duration::from_millis(50), || probe.seen.order()
            == ["1", "2"])
        .await
    );
    // A waiter whose wait runs out is refused.
    let late = client
        .call_tool(call("gate", json!({"tag": "late"})))
        .await
        .unwrap_err();
    assert_eq!(
        reason_of(&late).as_deref(),
        Some("tool_at_capacity"),
        "{late:?}"
    );
    probe.seen.gate.notify_one();
    second.await_response().await.unwrap();
    let stats = guard.stats();
    assert_eq!(stats.refused_by[&RefusalReason::ToolAtCapacity], 2);
    assert_eq!(stats.cancelled_by["client"], 1);
    assert_eq!((tool(&guard).waiting, tool(&guard).in_flight), (0, 0));
}
