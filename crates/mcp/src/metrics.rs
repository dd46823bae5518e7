//! The guard's metric handles (feature `metrics`; see `docs/metrics.md`),
//! registered once when the guard is built and updated with one atomic operation
//! each. Without the feature every handle is a no-op.

use heijunka_core::metrics::{Counter, Gauge, Histogram};
#[cfg(feature = "metrics")]
use heijunka_core::metrics::{Unit, counter, gauge, histogram};

use crate::error::{CancelCause, RefusalReason};

/// Guard-wide handles.
#[derive(Debug, Default)]
pub(crate) struct GuardMetrics {
    /// `heijunka_mcp_sessions`.
    pub(crate) sessions: Gauge,
    /// `heijunka_mcp_refused_total` for refusals not tied to a tool (sessions).
    refused_session: [Counter; 2],
    /// `heijunka_mcp_bad_requests_total`.
    pub(crate) bad_requests: Counter,
}

impl GuardMetrics {
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn new(name: &str) -> Self {
        #[cfg(feature = "metrics")]
        {
            let refused = |reason: RefusalReason| {
                counter(
                    "heijunka_mcp_refused_total",
                    Unit::Count,
                    "MCP requests refused before they ran, by tool and reason.",
                    &[("name", name), ("tool", ""), ("reason", reason.as_str())],
                )
            };
            Self {
                sessions: gauge(
                    "heijunka_mcp_sessions",
                    Unit::Count,
                    "Live MCP sessions.",
                    &[("name", name)],
                ),
                refused_session: [
                    refused(RefusalReason::ShuttingDown),
                    refused(RefusalReason::SessionsFull),
                ],
                bad_requests: counter(
                    "heijunka_mcp_bad_requests_total",
                    Unit::Count,
                    "HTTP requests the MCP server answered with a 4xx status (malformed JSON-RPC, unknown session).",
                    &[("name", name)],
                ),
            }
        }
        #[cfg(not(feature = "metrics"))]
        Self::default()
    }

    /// Counts a refusal of a new session (tool calls count on their tool).
    pub(crate) fn refused(&self, reason: RefusalReason) {
        match reason {
            RefusalReason::SessionsFull => self.refused_session[1].increment(1),
            RefusalReason::ShuttingDown => self.refused_session[0].increment(1),
            _ => {}
        }
    }
}

/// One tool's handles.
#[derive(Debug, Default)]
pub(crate) struct ToolMetrics {
    /// `heijunka_mcp_calls_total`.
    pub(crate) calls: Counter,
    /// `heijunka_mcp_results_total` by outcome.
    pub(crate) completed: Counter,
    pub(crate) tool_errors: Counter,
    pub(crate) errors: Counter,
    /// `heijunka_mcp_refused_total` by reason.
    refused: [Counter; RefusalReason::ALL.len()],
    /// `heijunka_mcp_cancelled_total` by cause.
    cancelled: [Counter; CancelCause::ALL.len()],
    /// `heijunka_mcp_in_flight`.
    pub(crate) in_flight: Gauge,
    /// `heijunka_mcp_call_seconds`.
    pub(crate) latency: Histogram,
}

impl ToolMetrics {
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn new(name: &str, tool: &str) -> Self {
        #[cfg(feature = "metrics")]
        {
            let l = [("name", name), ("tool", tool)];
            let result = |outcome: &str| {
                counter(
                    "heijunka_mcp_results_total",
                    Unit::Count,
                    "MCP tool calls that ran to an answer, by tool and outcome (ok, tool_error, error).",
                    &[("name", name), ("tool", tool), ("outcome", outcome)],
                )
            };
            Self {
                calls: counter(
                    "heijunka_mcp_calls_total",
                    Unit::Count,
                    "MCP tools/call requests received, by tool.",
                    &l,
                ),
                completed: result("ok"),
                tool_errors: result("tool_error"),
                errors: result("error"),
                refused: RefusalReason::ALL.map(|r| {
                    counter(
                        "heijunka_mcp_refused_total",
                        Unit::Count,
                        "MCP requests refused before they ran, by tool and reason.",
                        &[("name", name), ("tool", tool), ("reason", r.as_str())],
                    )
                }),
                cancelled: CancelCause::ALL.map(|c| {
                    counter(
                        "heijunka_mcp_cancelled_total",
                        Unit::Count,
                        "MCP tool calls cancelled while they waited for a slot or ran, by tool and cause.",
                        &[("name", name), ("tool", tool), ("cause", c.as_str())],
                    )
                }),
                in_flight: gauge(
                    "heijunka_mcp_in_flight",
                    Unit::Count,
                    "MCP tool calls admitted and not yet ended, by tool.",
                    &l,
                ),
                latency: histogram(
                    "heijunka_mcp_call_seconds",
                    Unit::Seconds,
                    "Latency of MCP tool calls that ran to an answer, by tool.",
                    &l,
                ),
            }
        }
        #[cfg(not(feature = "metrics"))]
        Self::default()
    }

    pub(crate) fn refused(&self, reason: RefusalReason) {
        self.refused[reason.index()].increment(1);
    }

    pub(crate) fn cancelled(&self, cause: CancelCause) {
        self.cancelled[cause.index()].increment(1);
    }
}
