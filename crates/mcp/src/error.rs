//! The JSON-RPC errors a protected server answers with, and their codes.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use heijunka_core::Rejection;
use rmcp::ErrorData;
use rmcp::model::ErrorCode;
use serde::Serialize;
use serde_json::{Value, json};

/// The JSON-RPC error codes heijunka-mcp answers with: in the part of JSON-RPC's
/// implementation range (`-32000` to `-32099`) that MCP leaves to
/// implementations (`-32000` to `-32019`; MCP allocates its own codes from
/// `-32020` on), clear of `-32000` and `-32001`, which SDKs use for a closed
/// connection and a time-out.
pub mod codes {
    use rmcp::model::ErrorCode;

    /// The call was refused before it ran: the server, the tool, the session's
    /// rate, a dependency's breaker, memory pressure, or shutdown. The error's
    /// `data.reason` says which ([`RefusalReason`](crate::RefusalReason)), and
    /// `data.retry_after_ms` when trying again later can succeed.
    pub const REFUSED: ErrorCode = ErrorCode(-32010);
    /// The call ran past its deadline and was cancelled.
    pub const DEADLINE_EXCEEDED: ErrorCode = ErrorCode(-32011);
    /// The call was cancelled: by the end of shutdown's grace period, or by the
    /// client (whose cancelled request MCP answers with nothing; rmcp drops this
    /// answer for a `notifications/cancelled`, and a client that went away cannot
    /// read it).
    pub const CANCELLED: ErrorCode = ErrorCode(-32012);
}

/// Why a call (or a new session) was refused; `data.reason` of a
/// [`codes::REFUSED`] error, and the key of the refusal counts in
/// [`McpStats`](crate::McpStats).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RefusalReason {
    /// Shutdown has begun: no new sessions or calls.
    ShuttingDown,
    /// The server already holds its maximum number of sessions.
    SessionsFull,
    /// The call's arguments are larger than the configured bound.
    ArgumentsTooLarge,
    /// The session is over its rate.
    RateLimited,
    /// A dependency the tool declared has its circuit breaker open.
    CircuitOpen,
    /// Memory pressure is at the level that sheds this tool.
    MemoryPressure,
    /// The tool's own concurrency limit (its bulkhead) is full, or the wait for a
    /// place in it ran out.
    ToolAtCapacity,
    /// Every server slot is busy and the queue is at its refuse mark (90 %).
    QueueFull,
    /// The call waited in the queue for its whole allowance, or its deadline
    /// passed while it waited.
    QueueTimeout,
}

impl RefusalReason {
    /// Every reason, in declaration order.
    pub const ALL: [RefusalReason; 9] = [
        Self::ShuttingDown,
        Self::SessionsFull,
        Self::ArgumentsTooLarge,
        Self::RateLimited,
        Self::CircuitOpen,
        Self::MemoryPressure,
        Self::ToolAtCapacity,
        Self::QueueFull,
        Self::QueueTimeout,
    ];

    /// The snake-case name used in errors, stats and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ShuttingDown => "shutting_down",
            Self::SessionsFull => "sessions_full",
            Self::ArgumentsTooLarge => "arguments_too_large",
            Self::RateLimited => "rate_limited",
            Self::CircuitOpen => "circuit_open",
            Self::MemoryPressure => "memory_pressure",
            Self::ToolAtCapacity => "tool_at_capacity",
            Self::QueueFull => "queue_full",
            Self::QueueTimeout => "queue_timeout",
        }
    }

    /// Whether the same call can succeed later on this server (everything but
    /// shutdown and oversized arguments).
    pub fn is_transient(self) -> bool {
        !matches!(self, Self::ShuttingDown | Self::ArgumentsTooLarge)
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a running call was cancelled; the key of the cancellation counts in
/// [`McpStats`](crate::McpStats).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CancelCause {
    /// The client sent `notifications/cancelled`, its stdio stream ended, or the
    /// guard's own future was dropped (the caller gave up).
    Client,
    /// The HTTP client went away (its response stream was dropped).
    Disconnect,
    /// The call's deadline passed.
    Deadline,
    /// Shutdown's grace ran out.
    Shutdown,
}

impl CancelCause {
    /// Every cause, in declaration order.
    pub const ALL: [CancelCause; 4] = [
        Self::Client,
        Self::Disconnect,
        Self::Deadline,
        Self::Shutdown,
    ];

    /// The snake-case name used in stats and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Disconnect => "disconnect",
            Self::Deadline => "deadline",
            Self::Shutdown => "shutdown",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// A refusal, before it becomes the JSON-RPC error the client sees.
#[derive(Clone, Debug)]
pub(crate) struct Refusal {
    pub(crate) reason: RefusalReason,
    pub(crate) tool: Option<String>,
    pub(crate) retry_after: Option<Duration>,
    pub(crate) detail: Cow<'static, str>,
    pub(crate) extra: Option<(&'static str, Value)>,
}

impl Refusal {
    pub(crate) fn new(reason: RefusalReason, detail: impl Into<Cow<'static, str>>) -> Self {
        Self {
            reason,
            tool: None,
            retry_after: None,
            detail: detail.into(),
            extra: None,
        }
    }

    pub(crate) fn tool(mut self, tool: &str) -> Self {
        self.tool = Some(tool.to_owned());
        self
    }

    pub(crate) fn retry_after(mut self, after: Option<Duration>) -> Self {
        // Never 0 when the caller must wait: a millisecond at least.
        self.retry_after = after.map(|d| d.max(Duration::from_millis(1)));
        self
    }

    pub(crate) fn extra(mut self, key: &'static str, value: Value) -> Self {
        self.extra = Some((key, value));
        self
    }

    /// From a shared [`Rejection`] of one of the stages.
    pub(crate) fn from_rejection(reason: RefusalReason, rejection: Rejection) -> Self {
        Self::new(reason, rejection.to_string()).retry_after(rejection.retry_after())
    }

    pub(crate) fn into_error(self) -> ErrorData {
        let mut data = json!({ "reason": self.reason.as_str() });
        if let Some(tool) = &self.tool {
            data["tool"] = json!(tool);
        }
        if let Some(after) = self.retry_after {
            data["retry_after_ms"] = json!(u64::try_from(after.as_millis()).unwrap_or(u64::MAX));
        }
        if let Some((key, value)) = self.extra {
            data[key] = value;
        }
        data["transient"] = json!(self.reason.is_transient());
        let message = match self.reason {
            RefusalReason::ShuttingDown => format!("server shutting down: {}", self.detail),
            RefusalReason::ArgumentsTooLarge => format!("arguments too large: {}", self.detail),
            _ => format!("server busy: {}", self.detail),
        };
        ErrorData::new(codes::REFUSED, message, Some(data))
    }
}

/// The error for a call cancelled by the deadline or by shutdown.
pub(crate) fn cancelled_error(tool: &str, cause: CancelCause, deadline: Duration) -> ErrorData {
    match cause {
        CancelCause::Deadline => ErrorData::new(
            codes::DEADLINE_EXCEEDED,
            format!("tool `{tool}` exceeded its deadline of {deadline:?} and was cancelled"),
            Some(json!({
                "reason": "deadline",
                "tool": tool,
                "deadline_ms": u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX),
            })),
        ),
        cause => ErrorData::new(
            codes::CANCELLED,
            format!("tool `{tool}` was cancelled ({})", cause.as_str()),
            Some(json!({ "reason": "cancelled", "cause": cause.as_str(), "tool": tool })),
        ),
    }
}

/// Whether an error the wrapped server returned is the client's fault (unknown
/// tool, bad arguments), which says nothing about a dependency's health.
pub(crate) fn is_client_error(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::INVALID_PARAMS | ErrorCode::METHOD_NOT_FOUND | ErrorCode::INVALID_REQUEST
    )
}
