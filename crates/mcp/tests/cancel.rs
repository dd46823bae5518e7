//! Cancellation as an input: the protected `tools/call` future (and
//! `initialize`) dropped after k polls, for every k until it completes, leaves
//! no slot, no waiter and no running tool behind, the tool sees its token
//! cancelled, and the counts still balance.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use heijunka_core::cancel::{Outcome, Polled, cancel_points};
use heijunka_mcp::{McpGuard, McpStats};
use rmcp::ServerHandler;
use rmcp::model::{ClientCapabilities, Implementation, InitializeRequestParams, RequestId};
use rmcp::service::RequestContext;
use serde_json::json;
use support::{Probe, call, connect};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
}

/// Every call counted has ended in exactly one way, or is still active.
fn balanced(stats: &McpStats) -> bool {
    stats.calls
        == stats.completed + stats.tool_errors + stats.errors + stats.refused + stats.cancelled
}

fn assert_nothing_left(guard: &McpGuard, probe: &Probe, k: usize) {
    let stats = guard.stats();
    assert_eq!(
        (stats.in_flight, stats.waiting),
        (0, 0),
        "k = {k}: {stats:?}"
    );
    assert!(stats.tools.iter().all(|t| t.in_flight == 0), "k = {k}");
    assert_eq!(probe.seen.running(), 0, "k = {k}: a tool is still running");
    assert_eq!(
        probe.seen.dropped_silently.load(Ordering::SeqCst),
        0,
        "k = {k}: a tool was dropped without its token cancelled"
    );
    assert!(balanced(&stats), "k = {k}: {stats:?}");
}

#[test]
fn a_running_call_dropped_at_any_poll_leaves_nothing_behind() {
    let rt = runtime();
    let guard = McpGuard::builder().max_concurrent_calls(1).build().unwrap();
    let probe = Probe::default();
    let (_client, server) = rt.block_on(connect(&guard, &probe));
    let _entered = rt.enter();
    let protected = server.service();
    let peer = server.peer().clone();
    let mut cancelled = 0;
    let polls = cancel_points(20, |k| {
        let context = RequestContext::new(RequestId::Number(k as i64), peer.clone());
        let future = protected.call_tool(call("work", json!({"ms": 5})), context);
        let outcome = Polled::new(future).drop_after_with(k, |_| {
            rt.block_on(tokio::time::advance(Duration::from_millis(2)));
        });
        assert_nothing_left(&guard, &probe, k);
        if let Outcome::Cancelled { polls } = &outcome
            && *polls > 0
        {
            cancelled += 1;
            assert_eq!(
                guard.stats().cancelled_by["client"],
                cancelled,
                "polls {polls}"
            );
        }
        outcome
    });
    assert!(polls >= 3, "the call should wait a few times: {polls}");
    // Cut short after it started, the tool saw its token cancelled.
    assert_eq!(probe.seen.cancelled(), cancelled);
}

#[test]
fn a_queued_call_dropped_at_any_poll_leaves_no_waiter() {
    let rt = runtime();
    let guard = McpGuard::builder().max_concurrent_calls(1).build().unwrap();
    let probe = Probe::default();
    let (_client, server) = rt.block_on(connect(&guard, &probe));
    let _entered = rt.enter();
    let protected = server.service();
    let peer = server.peer().clone();
    cancel_points(20, |k| {
        // The only slot is held by a call that takes 5 ms.
        let context = RequestContext::new(RequestId::Number(1_000), peer.clone());
        let mut blocker = Polled::new(protected.call_tool(call("work", json!({"ms": 5})), context));
        assert!(!blocker.poll());
        let context = RequestContext::new(RequestId::Number(k as i64), peer.clone());
        let queued = protected.call_tool(call("work", json!({"ms": 1})), context);
        let outcome = Polled::new(queued).drop_after_with(k, |_| {
            rt.block_on(tokio::time::advance(Duration::from_millis(2)));
            blocker.poll();
        });
        while !blocker.poll() {
            rt.block_on(tokio::time::advance(Duration::from_millis(1)));
        }
        drop(blocker);
        assert_nothing_left(&guard, &probe, k);
        outcome
    });
    // The slot still works.
    let context = RequestContext::new(RequestId::Number(99_999), peer.clone());
    let mut last = Polled::new(protected.call_tool(call("work", json!({"ms": 0})), context));
    while !last.poll() {
        rt.block_on(tokio::time::advance(Duration::from_millis(1)));
    }
    assert!(last.take_output().unwrap().is_ok());
}

#[test]
fn initialize_dropped_at_any_poll_holds_no_session() {
    let rt = runtime();
    let guard = McpGuard::builder().max_sessions(2).build().unwrap();
    let probe = Probe::default();
    let (_client, server) = rt.block_on(connect(&guard, &probe));
    let _entered = rt.enter();
    let peer = server.peer().clone();
    cancel_points(10, |k| {
        let fresh = guard.protect(probe.clone());
        let params = InitializeRequestParams::new(
            ClientCapabilities::default(),
            Implementation::new("cancel-test", "0"),
        );
        let context = RequestContext::new(RequestId::Number(k as i64), peer.clone());
        let outcome = Polled::new(fresh.initialize(params, context)).drop_after(k);
        if outcome.is_completed() {
            assert_eq!(guard.stats().sessions, 2);
        }
        drop(fresh);
        // Dropped or done, the session's place is back once its handler is gone.
        assert_eq!(guard.stats().sessions, 1, "k = {k}");
        outcome
    });
}

/// `ClientGone::gone` only waits: dropped after any number of polls it leaves
/// the signal as it was, for every other clone.
#[test]
fn client_gone_wait_is_cancel_safe() {
    let gone = heijunka_mcp::ClientGone::default();
    for k in 0..3 {
        let outcome = Polled::new(gone.gone()).drop_after(k);
        assert!(!outcome.is_completed());
        assert!(!gone.is_gone());
    }
    let mut other = Polled::new(gone.gone());
    assert!(!other.poll(), "the earlier drops did not fire it");
}

/// A tool that panics is answered with an internal error (rmcp would leave the
/// client waiting forever), counted as an error, and leaves nothing behind.
#[test]
fn a_panicking_tool_is_answered_and_leaves_nothing_behind() {
    let rt = runtime();
    let guard = McpGuard::builder().max_concurrent_calls(1).build().unwrap();
    let probe = Probe::default();
    let (client, _server) = rt.block_on(connect(&guard, &probe));
    let answer = rt.block_on(client.call_tool(call("panic", json!({}))));
    let err = answer.unwrap_err();
    let e = support::rpc_error(&err).expect("a JSON-RPC error answer");
    assert_eq!(e.code, rmcp::model::ErrorCode::INTERNAL_ERROR, "{e:?}");
    let stats = guard.stats();
    assert_eq!((stats.errors, stats.cancelled), (1, 0), "{stats:?}");
    assert_eq!((stats.in_flight, stats.waiting), (0, 0));
    assert!(balanced(&stats));
    // The slot serves the next call.
    rt.block_on(client.call_tool(call("work", json!({"ms": 0}))))
        .unwrap();
}
