//! The `metrics` feature: each guard registers its series when built and counts
//! calls, outcomes, refusals, cancellations, in-flight and latency per tool, read
//! back from a test recorder (not from the guard's own stats).
#![cfg(feature = "metrics")]

mod support;

use std::time::Duration;

use heijunka_core::metrics::TestRecorder;
use heijunka_mcp::{McpGuard, ToolPolicy};
use serde_json::json;
use support::{Probe, call, connect};

#[tokio::test(start_paused = true)]
async fn calls_refusals_cancellations_and_latency_per_tool() {
    let rec = TestRecorder::new();
    let guard = rec.scoped(|| {
        McpGuard::builder()
            .name("tools")
            .tool("work", ToolPolicy::new().max_concurrent(4))
            .tool(
                "block",
                ToolPolicy::new().deadline(Duration::from_millis(50)),
            )
            .max_argument_bytes(64)
            .build()
            .unwrap()
    });
    let probe = Probe::default();
    let (client, _server) = connect(&guard, &probe).await;
    let work = [("name", "tools"), ("tool", "work")];
    // Registered at build, at zero.
    assert_eq!(rec.counter("heijunka_mcp_calls_total", &work), Some(0));
    assert_eq!(
        rec.counter(
            "heijunka_mcp_refused_total",
            &[
                ("name", "tools"),
                ("tool", "work"),
                ("reason", "queue_full")
            ]
        ),
        Some(0)
    );
    client
        .call_tool(call("work", json!({"ms": 20})))
        .await
        .unwrap();
    client.call_tool(call("fail", json!({}))).await.unwrap();
    let _ = client
        .call_tool(call("work", json!({"blob": "x".repeat(100)})))
        .await;
    let _ = client.call_tool(call("block", json!({}))).await;

    assert_eq!(rec.counter("heijunka_mcp_calls_total", &work), Some(2));
    assert_eq!(
        rec.counter(
            "heijunka_mcp_results_total",
            &[("name", "tools"), ("tool", "work"), ("outcome", "ok")]
        ),
        Some(1)
    );
    assert_eq!(
        rec.counter(
            "heijunka_mcp_results_total",
            &[("name", "tools"), ("tool", "*"), ("outcome", "tool_error")]
        ),
        Some(1)
    );
    assert_eq!(
        rec.counter(
            "heijunka_mcp_refused_total",
            &[
                ("name", "tools"),
                ("tool", "work"),
                ("reason", "arguments_too_large")
            ]
        ),
        Some(1)
    );
    assert_eq!(
        rec.counter(
            "heijunka_mcp_cancelled_total",
            &[("name", "tools"), ("tool", "block"), ("cause", "deadline")]
        ),
        Some(1)
    );
    assert_eq!(rec.gauge("heijunka_mcp_in_flight", &work), Some(0.0));
    let latency = rec.histogram("heijunka_mcp_call_seconds", &work).unwrap();
    assert_eq!(latency.len(), 1);
    assert!((0.019..0.1).contains(&latency[0]), "{latency:?}");
    assert_eq!(
        rec.gauge("heijunka_mcp_sessions", &[("name", "tools")]),
        Some(1.0)
    );
}
