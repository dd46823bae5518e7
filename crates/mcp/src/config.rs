//! [`McpGuardBuilder`] and [`ToolPolicy`]: what a protected server allows.

use std::fmt;
use std::time::Duration;

use heijunka_backpressure::LimitAlgorithm;
use heijunka_breaker::BreakerConfig;
use heijunka_core::{Clock, ConfigError, validate};
use heijunka_memory::MemoryGate;
use heijunka_shutdown::Shutdown;

use crate::McpGuard;

/// Default server-wide limit on tool calls running at once.
pub const DEFAULT_MAX_CONCURRENT_CALLS: u32 = 64;
/// Default bound on tool calls waiting for a server slot.
pub const DEFAULT_QUEUE_CAPACITY: usize = 256;
/// Default share of the queue at which a warning is logged (the seeds' degradation
/// table: "queue 80 % full: log warning").
pub const DEFAULT_WARN_AT: f64 = 0.8;
/// Default share of the queue at which new calls are refused ("queue 90 % full:
/// reject new requests").
pub const DEFAULT_REJECT_AT: f64 = 0.9;
/// Default longest wait in the queue for a server slot.
pub const DEFAULT_MAX_QUEUE_WAIT: Duration = Duration::from_secs(5);
/// Default deadline of a tool call, queue wait included.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(60);
/// Default bound on live sessions.
pub const DEFAULT_MAX_SESSIONS: usize = 1024;
/// Default bound on the serialized size of one call's arguments (1 MiB).
pub const DEFAULT_MAX_ARGUMENT_BYTES: usize = 1 << 20;
/// Default bound on the sessions whose rate the per-session limiter keeps.
pub const DEFAULT_MAX_RATE_KEYS: usize = 4096;

/// The protection of one tool: its own concurrency limit (a bulkhead, so a slow
/// tool cannot take every server slot), its deadline, the dependencies whose
/// breakers guard it, and how much memory a call may need.
///
/// ```
/// use heijunka_mcp::ToolPolicy;
/// use std::time::Duration;
///
/// let slow = ToolPolicy::new()
///     .max_concurrent(4)
///     .deadline(Duration::from_secs(2))
///     .depends_on("inventory-api");
/// # let _ = slow;
/// ```
#[derive(Clone, Debug, Default)]
pub struct ToolPolicy {
    pub(crate) max_concurrent: Option<u32>,
    pub(crate) bulkhead_queue: Option<(usize, Duration)>,
    pub(crate) deadline: Option<Duration>,
    pub(crate) depends_on: Vec<String>,
    pub(crate) memory_bytes: Option<u64>,
}

impl ToolPolicy {
    /// No limit of its own (the server's applies), the server's default
    /// deadline, no dependencies, no memory estimate.
    pub fn new() -> Self {
        Self::default()
    }

    /// At most `n` calls of this tool run at once; one more is refused at once
    /// with [`RefusalReason::ToolAtCapacity`](crate::RefusalReason::ToolAtCapacity),
    /// or waits with a [`bulkhead_queue`](Self::bulkhead_queue). In
    /// `1..=`[`MAX_PERMITS`](heijunka_backpressure::MAX_PERMITS).
    pub fn max_concurrent(mut self, n: u32) -> Self {
        self.max_concurrent = Some(n);
        self
    }

    /// When the bulkhead is full, up to `max_waiting` calls wait for a place in it,
    /// first come first served, each for at most `max_wait` (and never past its
    /// deadline), instead of being refused at once (resilience4j's bulkhead
    /// `maxWaitDuration`). A call still waiting then is refused with
    /// [`RefusalReason::ToolAtCapacity`](crate::RefusalReason::ToolAtCapacity).
    /// Needs [`max_concurrent`](Self::max_concurrent); `max_waiting` at least 1.
    pub fn bulkhead_queue(mut self, max_waiting: usize, max_wait: Duration) -> Self {
        self.bulkhead_queue = Some((max_waiting, max_wait));
        self
    }

    /// The call's deadline, counted from its arrival (queue wait included). When
    /// it passes, the call is cancelled and the client gets
    /// [`codes::DEADLINE_EXCEEDED`](crate::codes::DEADLINE_EXCEEDED).
    pub fn deadline(mut self, d: Duration) -> Self {
        self.deadline = Some(d);
        self
    }

    /// The tool calls the dependency `name`: while its circuit breaker
    /// ([`McpGuard::breaker`]) is open, calls are refused at once with
    /// [`RefusalReason::CircuitOpen`](crate::RefusalReason::CircuitOpen), and each
    /// call's outcome is recorded on it (an error result or a deadline is a
    /// failure; a client error, a cancellation or a refusal says nothing).
    pub fn depends_on(mut self, name: impl Into<String>) -> Self {
        self.depends_on.push(name.into());
        self
    }

    /// A call may need about `bytes` of memory: with a
    /// [memory gate](McpGuardBuilder::memory_gate), it is checked with
    /// [`MemoryGate::check_size`], so expensive tools are refused first (at the
    /// gate's `large_reject_at` level) while cheap ones still run.
    pub fn memory_bytes(mut self, bytes: u64) -> Self {
        self.memory_bytes = Some(bytes);
        self
    }
}

/// How the server-wide limit is set.
pub(crate) enum Limit {
    Static(u32),
    Adaptive(Box<dyn LimitAlgorithm>),
}

impl fmt::Debug for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Static(n) => f.debug_tuple("Static").field(n).finish(),
            Self::Adaptive(a) => f.debug_tuple("Adaptive").field(&a.initial_limit()).finish(),
        }
    }
}

/// Builds an [`McpGuard`]; every setting has a documented default, and
/// [`build`](Self::build) names the field and the value of any that is out of
/// range.
///
/// ```
/// use heijunka_mcp::{McpGuard, ToolPolicy};
/// use std::time::Duration;
///
/// let guard = McpGuard::builder()
///     .max_concurrent_calls(8)
///     .queue_capacity(32)
///     .session_rate(20.0, 10)
///     .tool("search", ToolPolicy::new().max_concurrent(4).deadline(Duration::from_secs(5)))
///     .build()?;
/// assert_eq!(guard.stats().limit, 8);
/// # Ok::<(), heijunka_core::ConfigError>(())
/// ```
#[derive(Debug)]
pub struct McpGuardBuilder {
    pub(crate) name: String,
    pub(crate) limit: Limit,
    pub(crate) queue_capacity: usize,
    pub(crate) warn_at: f64,
    pub(crate) reject_at: f64,
    pub(crate) max_queue_wait: Duration,
    pub(crate) max_sessions: usize,
    pub(crate) session_rate: Option<(f64, u32)>,
    pub(crate) max_rate_keys: usize,
    pub(crate) max_argument_bytes: usize,
    pub(crate) default_tool: ToolPolicy,
    pub(crate) tools: Vec<(String, ToolPolicy)>,
    pub(crate) memory_gate: Option<MemoryGate>,
    pub(crate) breaker: BreakerConfig,
    pub(crate) shutdown: Option<Shutdown>,
    pub(crate) cancel_on_disconnect: bool,
    pub(crate) clock: Clock,
}

impl Default for McpGuardBuilder {
    fn default() -> Self {
        Self {
            name: "mcp".to_owned(),
            limit: Limit::Static(DEFAULT_MAX_CONCURRENT_CALLS),
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            warn_at: DEFAULT_WARN_AT,
            reject_at: DEFAULT_REJECT_AT,
            max_queue_wait: DEFAULT_MAX_QUEUE_WAIT,
            max_sessions: DEFAULT_MAX_SESSIONS,
            session_rate: None,
            max_rate_keys: DEFAULT_MAX_RATE_KEYS,
            max_argument_bytes: DEFAULT_MAX_ARGUMENT_BYTES,
            default_tool: ToolPolicy::new(),
            tools: Vec::new(),
            memory_gate: None,
            breaker: BreakerConfig::default(),
            shutdown: None,
            cancel_on_disconnect: true,
            clock: Clock::system(),
        }
    }
}

impl McpGuardBuilder {
    /// The `name` label of this guard's metrics and logs (default `"mcp"`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// At most `n` tool calls run at once across the server (default
    /// [`DEFAULT_MAX_CONCURRENT_CALLS`]); more wait in the fair queue.
    pub fn max_concurrent_calls(mut self, n: u32) -> Self {
        self.limit = Limit::Static(n);
        self
    }

    /// The server-wide limit moves with measured latency: one of the backpressure
    /// crate's algorithms ([`Vegas`](heijunka_backpressure::Vegas),
    /// [`Gradient2`](heijunka_backpressure::Gradient2),
    /// [`Aimd`](heijunka_backpressure::Aimd)) or your own. A completed call is a
    /// sample, a call past its deadline is a drop, a cancelled one says nothing.
    pub fn adaptive(mut self, algorithm: impl LimitAlgorithm + 'static) -> Self {
        self.limit = Limit::Adaptive(Box::new(algorithm));
        self
    }

    /// At most `n` calls wait for a server slot (default
    /// [`DEFAULT_QUEUE_CAPACITY`]); a warning is logged at 80 % and new calls are
    /// refused at 90 % (see [`watermarks`](Self::watermarks)).
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.queue_capacity = n;
        self
    }

    /// The shares of the queue at which to warn and to refuse (defaults 0.8 and
    /// 0.9, the seeds' degradation table); `0 < warn <= reject <= 1`.
    pub fn watermarks(mut self, warn: f64, reject: f64) -> Self {
        self.warn_at = warn;
        self.reject_at = reject;
        self
    }

    /// The longest a call waits in the queue (default
    /// [`DEFAULT_MAX_QUEUE_WAIT`]; never past the call's deadline). `ZERO` means
    /// never wait: refuse at once when every slot is busy.
    pub fn max_queue_wait(mut self, d: Duration) -> Self {
        self.max_queue_wait = d;
        self
    }

    /// At most `n` live sessions (default [`DEFAULT_MAX_SESSIONS`]); one more
    /// `initialize` is refused with
    /// [`RefusalReason::SessionsFull`](crate::RefusalReason::SessionsFull).
    pub fn max_sessions(mut self, n: usize) -> Self {
        self.max_sessions = n;
        self
    }

    /// Each session may start `per_second` tool calls a second, `burst` at once
    /// (a keyed GCRA limiter, key = session; off by default).
    pub fn session_rate(mut self, per_second: f64, burst: u32) -> Self {
        self.session_rate = Some((per_second, burst));
        self
    }

    /// How many sessions the rate limiter tracks at once (default
    /// [`DEFAULT_MAX_RATE_KEYS`]).
    pub fn max_rate_keys(mut self, n: usize) -> Self {
        self.max_rate_keys = n;
        self
    }

    /// The largest serialized size of one call's arguments (default
    /// [`DEFAULT_MAX_ARGUMENT_BYTES`]); larger calls are refused with
    /// [`RefusalReason::ArgumentsTooLarge`](crate::RefusalReason::ArgumentsTooLarge).
    pub fn max_argument_bytes(mut self, n: usize) -> Self {
        self.max_argument_bytes = n;
        self
    }

    /// The deadline of tools without their own (default [`DEFAULT_DEADLINE`]).
    pub fn default_deadline(mut self, d: Duration) -> Self {
        self.default_tool.deadline = Some(d);
        self
    }

    /// The policy of tools not named with [`tool`](Self::tool); they share its
    /// limit and are reported together as `"*"`.
    pub fn default_tool(mut self, policy: ToolPolicy) -> Self {
        let deadline = self.default_tool.deadline;
        self.default_tool = policy;
        if self.default_tool.deadline.is_none() {
            self.default_tool.deadline = deadline;
        }
        self
    }

    /// The policy of the tool `name` (its bulkhead, deadline, dependencies, memory).
    pub fn tool(mut self, name: impl Into<String>, policy: ToolPolicy) -> Self {
        let name = name.into();
        self.tools.retain(|(n, _)| *n != name);
        self.tools.push((name, policy));
        self
    }

    /// Refuse tools under memory pressure: each call is checked against `gate`
    /// (with its [`ToolPolicy::memory_bytes`], so expensive tools go first).
    pub fn memory_gate(mut self, gate: MemoryGate) -> Self {
        self.memory_gate = Some(gate);
        self
    }

    /// The configuration of each dependency's breaker (default resilience4j's);
    /// each gets the dependency's name.
    pub fn breaker_config(mut self, config: BreakerConfig) -> Self {
        self.breaker = config;
        self
    }

    /// Take part in `shutdown`: once triggered, new sessions and calls are refused;
    /// calls in flight hold it open until they end, and are cancelled when its grace
    /// runs out. Without one, the guard has its own ([`McpGuard::shutdown`]).
    pub fn shutdown(mut self, shutdown: &Shutdown) -> Self {
        self.shutdown = Some(shutdown.clone());
        self
    }

    /// Whether a client that disconnects over HTTP cancels its running call
    /// (default `true`; needs [`McpGuard::http_layer`]). Streamable HTTP lets a
    /// client resume a broken stream (`Last-Event-ID`) and MCP asks servers not to
    /// treat a disconnect as a cancel; a server whose clients resume streams should
    /// turn this off, and then a call whose client never comes back runs to its
    /// deadline.
    pub fn cancel_on_disconnect(mut self, cancel: bool) -> Self {
        self.cancel_on_disconnect = cancel;
        self
    }

    /// The clock for latency samples (default the system clock).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Checks every setting and builds the guard.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the field and value: a zero limit, queue or
    /// session bound, watermarks outside `0 < warn <= reject <= 1`, a zero
    /// deadline, a rate that is not positive or a zero burst, a tool limit of 0,
    /// an empty tool name.
    pub fn build(self) -> Result<McpGuard, ConfigError> {
        if let Limit::Static(n) = self.limit {
            validate::at_least("max_concurrent_calls", n, 1)?;
        }
        validate::at_least("queue_capacity", self.queue_capacity, 1)?;
        validate::at_least("max_sessions", self.max_sessions, 1)?;
        validate::at_least("max_argument_bytes", self.max_argument_bytes, 1)?;
        validate::at_least("max_rate_keys", self.max_rate_keys, 1)?;
        let warn = validate::ratio("watermarks.warn", self.warn_at)?;
        let reject = validate::ratio("watermarks.reject", self.reject_at)?;
        if warn <= 0.0 {
            return Err(ConfigError::new("watermarks.warn", warn, "must be above 0"));
        }
        validate::ordered("watermarks.warn", warn, "watermarks.reject", reject)?;
        if let Some((per_second, burst)) = self.session_rate {
            validate::positive("session_rate.per_second", per_second)?;
            validate::at_least("session_rate.burst", burst, 1)?;
        }
        check_tool("default_tool", &self.default_tool)?;
        for (name, policy) in &self.tools {
            if name.is_empty() {
                return Err(ConfigError::new("tool", name, "must not be empty"));
            }
            check_tool(&format!("tool.{name}"), policy)?;
        }
        McpGuard::from_builder(self)
    }
}

fn check_tool(field: &str, policy: &ToolPolicy) -> Result<(), ConfigError> {
    if let Some(n) = policy.max_concurrent
        && !(1..=heijunka_backpressure::MAX_PERMITS).contains(&n)
    {
        return Err(ConfigError::new(
            format!("{field}.max_concurrent"),
            n,
            format!("must be in 1..={}", heijunka_backpressure::MAX_PERMITS),
        ));
    }
    if let Some((max_waiting, _)) = policy.bulkhead_queue {
        if policy.max_concurrent.is_none() {
            return Err(ConfigError::new(
                format!("{field}.bulkhead_queue"),
                max_waiting,
                "needs max_concurrent",
            ));
        }
        if max_waiting == 0 {
            return Err(ConfigError::new(
                format!("{field}.bulkhead_queue.max_waiting"),
                max_waiting,
                "must be at least 1",
            ));
        }
    }
    if let Some(d) = policy.deadline
        && d.is_zero()
    {
        return Err(ConfigError::new(
            format!("{field}.deadline"),
            d,
            "must be above zero",
        ));
    }
    if policy.depends_on.iter().any(String::is_empty) {
        return Err(ConfigError::new(
            format!("{field}.depends_on"),
            &policy.depends_on,
            "must not contain an empty name",
        ));
    }
    Ok(())
}
