//! [`McpGuard`]: the shared protection state, and the protected `tools/call`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use heijunka_backpressure::{ConcurrencyLimit, KeyedRateLimiter};
use heijunka_breaker::{
    BreakerRegistry, CircuitBreaker, OwnedPermit, Rejected as BreakerRejected,
    State as BreakerState,
};
use heijunka_core::ConfigError;
use heijunka_memory::MemoryGate;
use heijunka_shutdown::{Phase, Shutdown, ShutdownToken};
use rmcp::ErrorData;
use rmcp::ServerHandler;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, InitializeRequestParams, InitializeResult,
};
use rmcp::service::{RequestContext, RoleServer};
use serde::Serialize;
use tokio::time::Instant as TokioInstant;

use crate::config::{DEFAULT_DEADLINE, Limit, McpGuardBuilder, ToolPolicy};
use crate::error::{CancelCause, Refusal, RefusalReason, cancelled_error, is_client_error};
use crate::gate::{Gate, GateRefusal, SlotOutcome};
use crate::http::ClientGone;
use crate::metrics::{GuardMetrics, ToolMetrics};
use crate::protected::Protected;

/// The report name of tools that have no [`ToolPolicy`] of their own.
pub const OTHER_TOOLS: &str = "*";

/// Protection for an rmcp server, shared by all its sessions: the server's slots
/// and fair queue, each tool's bulkhead, the per-session rate limiter, the
/// dependencies' breakers, the memory gate, shutdown, and the counts behind
/// [`stats`](Self::stats).
///
/// Cheap to clone (an `Arc`); every clone is the same guard. Wrap a handler with
/// [`protect`](Self::protect), once per session.
///
/// ```
/// use heijunka_mcp::{McpGuard, ToolPolicy};
/// use rmcp::{ServerHandler, model::ServerConfig};
///
/// #[derive(Clone)]
/// struct Tools;
/// impl ServerHandler for Tools {
///     fn get_info(&self) -> ServerConfig {
///         ServerConfig::default()
///     }
/// }
///
/// let guard = McpGuard::builder().max_concurrent_calls(8).build()?;
/// let protected = guard.protect(Tools);
/// // stdio: `protected.serve(rmcp::transport::stdio()).await?`
/// // streamable HTTP: `StreamableHttpService::new(move || Ok(guard.protect(Tools)), ..)`
/// # let _ = protected;
/// # Ok::<(), heijunka_core::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct McpGuard {
    shared: Arc<Shared>,
}

impl fmt::Debug for McpGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("McpGuard")
            .field("name", &self.shared.name)
            .field("gate", &self.shared.gate)
            .finish_non_exhaustive()
    }
}

struct Shared {
    name: String,
    gate: Arc<Gate>,
    /// Index into `tools` by name; tools not named use the last entry.
    by_name: HashMap<String, usize>,
    tools: Vec<ToolEntry>,
    max_queue_wait: Duration,
    max_sessions: usize,
    max_argument_bytes: usize,
    cancel_on_disconnect: bool,
    rate: Option<KeyedRateLimiter<u64>>,
    memory: Option<MemoryGate>,
    breakers: BreakerRegistry<String>,
    shutdown: Shutdown,
    shutdown_token: ShutdownToken,
    sessions: AtomicUsize,
    sessions_opened: AtomicU64,
    sessions_refused: AtomicU64,
    next_session: AtomicU64,
    calls: AtomicU64,
    completed: AtomicU64,
    tool_errors: AtomicU64,
    errors: AtomicU64,
    bad_requests: AtomicU64,
    refused: [AtomicU64; RefusalReason::ALL.len()],
    cancelled: [AtomicU64; CancelCause::ALL.len()],
    metrics: GuardMetrics,
}

/// One tool's policy and counts.
pub(crate) struct ToolEntry {
    name: String,
    limit: Option<u32>,
    /// The bulkhead, when the tool has a limit.
    bulkhead: Option<ConcurrencyLimit>,
    /// How many may wait for the bulkhead, and how long (none: refuse at once).
    bulkhead_queue: Option<(usize, Duration)>,
    deadline: Duration,
    depends_on: Vec<CircuitBreaker>,
    memory_bytes: Option<u64>,
    running: AtomicU32,
    calls: AtomicU64,
    completed: AtomicU64,
    tool_errors: AtomicU64,
    errors: AtomicU64,
    refused: AtomicU64,
    cancelled: AtomicU64,
    /// Exponentially weighted mean latency of finished calls (weight 1/8), in ns.
    latency_mean_ns: AtomicU64,
    latency_max_ns: AtomicU64,
    metrics: ToolMetrics,
}

impl ToolEntry {
    fn record_latency(&self, latency: Duration) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        // Relaxed: a statistic; concurrent updates may lose a sample's weight.
        let _ = self
            .latency_mean_ns
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |mean| {
                Some(if mean == 0 {
                    ns
                } else {
                    mean - mean / 8 + ns / 8
                })
            });
        self.latency_max_ns.fetch_max(ns, Ordering::Relaxed);
        self.metrics.latency.record_duration(latency);
    }

    fn mean_latency(&self) -> Option<Duration> {
        match self.latency_mean_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(Duration::from_nanos(ns)),
        }
    }
}

/// A point-in-time view of a guard; `Serialize`, for a `/stats` endpoint.
///
/// Every call counted in `calls` ends in exactly one of `completed`,
/// `tool_errors`, `errors`, `refused` or `cancelled`; until then it is in flight
/// or waiting.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct McpStats {
    /// The guard's name.
    pub name: String,
    /// `tools/call` requests received.
    pub calls: u64,
    /// Calls that returned a result that is not an error.
    pub completed: u64,
    /// Calls whose tool returned an error result (`isError: true`).
    pub tool_errors: u64,
    /// Calls the wrapped server answered with a JSON-RPC error (unknown tool,
    /// invalid arguments, internal error).
    pub errors: u64,
    /// HTTP requests rmcp answered with a 4xx status (malformed JSON-RPC, unknown
    /// session, wrong headers), counted by [`McpHttpLayer`](crate::McpHttpLayer).
    pub bad_requests: u64,
    /// Calls refused before they ran, all reasons together.
    pub refused: u64,
    /// Refusals by reason (every reason listed, zeros included).
    pub refused_by: BTreeMap<RefusalReason, u64>,
    /// Calls cancelled while they waited for a slot or ran, all causes together.
    pub cancelled: u64,
    /// Cancellations by cause (every cause listed, zeros included).
    pub cancelled_by: BTreeMap<&'static str, u64>,
    /// Calls holding a server slot now.
    pub in_flight: usize,
    /// The server-wide limit now (moves when adaptive).
    pub limit: usize,
    /// Calls waiting for a server slot now.
    pub waiting: usize,
    /// The most calls that waited at once.
    pub peak_waiting: usize,
    /// The queue's bound.
    pub queue_capacity: usize,
    /// Live sessions.
    pub sessions: usize,
    /// Sessions admitted since the guard was built.
    pub sessions_opened: u64,
    /// New sessions refused (the session bound, or shutdown); not in `refused`,
    /// which counts calls.
    pub sessions_refused: u64,
    /// Whether shutdown has begun.
    pub shutting_down: bool,
    /// Per tool: the named ones, then [`OTHER_TOOLS`].
    pub tools: Vec<ToolStats>,
}

/// One tool's part of [`McpStats`].
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ToolStats {
    /// The tool's name ([`OTHER_TOOLS`] for the tools without a policy).
    pub name: String,
    /// Its own concurrency limit, if it has one.
    pub limit: Option<u32>,
    /// Its calls admitted past its bulkhead and not yet ended (waiting for a
    /// server slot or running).
    pub in_flight: u32,
    /// Calls waiting for a place in its bulkhead (see
    /// [`ToolPolicy::bulkhead_queue`]).
    pub waiting: usize,
    /// Calls received.
    pub calls: u64,
    /// Calls that returned a result that is not an error.
    pub completed: u64,
    /// Calls that returned an error result.
    pub tool_errors: u64,
    /// Calls answered with a JSON-RPC error by the wrapped server.
    pub errors: u64,
    /// Calls refused.
    pub refused: u64,
    /// Calls cancelled while they waited for a slot or ran (deadline included).
    pub cancelled: u64,
    /// The mean latency of finished calls (exponentially weighted), in ms.
    pub latency_mean_ms: Option<f64>,
    /// The longest finished call, in ms.
    pub latency_max_ms: f64,
}

impl McpGuard {
    /// A builder with the documented defaults.
    pub fn builder() -> McpGuardBuilder {
        McpGuardBuilder::default()
    }

    pub(crate) fn from_builder(b: McpGuardBuilder) -> Result<Self, ConfigError> {
        let (limit, algorithm) = match b.limit {
            Limit::Static(n) => (n as usize, None),
            Limit::Adaptive(a) => (a.initial_limit().max(1), Some(a)),
        };
        let mut registry = BreakerRegistry::builder(b.breaker.clone());
        let mut dependencies: Vec<&String> = b
            .tools
            .iter()
            .flat_map(|(_, p)| &p.depends_on)
            .chain(&b.default_tool.depends_on)
            .collect();
        dependencies.sort();
        dependencies.dedup();
        registry = registry.capacity(dependencies.len().max(1));
        let breakers = registry.build()?;
        let breaker = |name: &String| {
            breakers
                .get(name.as_str())
                .expect("the registry is sized for every declared dependency")
        };
        let default_deadline = b.default_tool.deadline.unwrap_or(DEFAULT_DEADLINE);
        let entry = |name: &str, policy: &ToolPolicy| ToolEntry {
            name: name.to_owned(),
            limit: policy.max_concurrent,
            bulkhead: policy.max_concurrent.map(|n| {
                ConcurrencyLimit::named(n, &format!("{}-{name}", b.name))
                    .expect("validated: at least 1")
            }),
            bulkhead_queue: policy.bulkhead_queue,
            deadline: policy.deadline.unwrap_or(default_deadline),
            depends_on: policy.depends_on.iter().map(breaker).collect(),
            memory_bytes: policy.memory_bytes,
            running: AtomicU32::new(0),
            calls: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            tool_errors: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            latency_mean_ns: AtomicU64::new(0),
            latency_max_ns: AtomicU64::new(0),
            metrics: ToolMetrics::new(&b.name, name),
        };
        let mut tools: Vec<ToolEntry> = b.tools.iter().map(|(n, p)| entry(n, p)).collect();
        tools.push(entry(OTHER_TOOLS, &b.default_tool));
        let by_name = b
            .tools
            .iter()
            .enumerate()
            .map(|(i, (n, _))| (n.clone(), i))
            .collect();
        let rate = match b.session_rate {
            Some((per_second, burst)) => Some(
                KeyedRateLimiter::builder(per_second)
                    .burst(burst)
                    .max_keys(b.max_rate_keys)
                    .clock(b.clock.clone())
                    .name(format!("{}-sessions", b.name))
                    .build()?,
            ),
            None => None,
        };
        let shutdown = match b.shutdown {
            Some(s) => s,
            None => Shutdown::new(),
        };
        let gate = Arc::new(Gate::new(
            limit,
            algorithm,
            b.queue_capacity,
            b.warn_at,
            b.reject_at,
            b.clock.clone(),
        ));
        Ok(Self {
            shared: Arc::new(Shared {
                metrics: GuardMetrics::new(&b.name),
                name: b.name,
                gate,
                by_name,
                tools,
                max_queue_wait: b.max_queue_wait,
                max_sessions: b.max_sessions,
                max_argument_bytes: b.max_argument_bytes,
                cancel_on_disconnect: b.cancel_on_disconnect,
                rate,
                memory: b.memory_gate,
                breakers,
                shutdown_token: shutdown.token(),
                shutdown,
                sessions: AtomicUsize::new(0),
                sessions_opened: AtomicU64::new(0),
                sessions_refused: AtomicU64::new(0),
                next_session: AtomicU64::new(1),
                calls: AtomicU64::new(0),
                completed: AtomicU64::new(0),
                tool_errors: AtomicU64::new(0),
                errors: AtomicU64::new(0),
                bad_requests: AtomicU64::new(0),
                refused: Default::default(),
                cancelled: Default::default(),
            }),
        })
    }

    /// Wraps `handler` for one session. Cheap: rmcp's streamable-HTTP service
    /// calls its factory for every session and also to look up tool schemas, so
    /// a session is counted only once its `initialize` is admitted.
    pub fn protect<H: ServerHandler>(&self, handler: H) -> Protected<H> {
        Protected::new(handler, self.clone())
    }

    /// The circuit breaker of the dependency `name`, if a [`ToolPolicy`] declared
    /// it with [`depends_on`](ToolPolicy::depends_on). A tool may use it around
    /// its own calls to that dependency; the guard records each call's overall
    /// outcome on it too.
    pub fn breaker(&self, name: &str) -> Option<CircuitBreaker> {
        self.shared.breakers.find(name)
    }

    /// The shutdown this guard takes part in (its own, unless the builder was
    /// given one): trigger it to stop taking sessions and calls, and
    /// [`wait`](Shutdown::wait) for its report.
    pub fn shutdown(&self) -> &Shutdown {
        &self.shared.shutdown
    }

    /// The tower layer for rmcp's streamable-HTTP service: a client disconnect
    /// cancels its running tool call, and new sessions are refused with `503`
    /// before rmcp builds them when the server is full or shutting down
    /// ([`McpHttpLayer`](crate::McpHttpLayer)).
    pub fn http_layer(&self) -> crate::McpHttpLayer {
        crate::McpHttpLayer::new(self.clone())
    }

    /// The guard's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Whether a new session would be refused now (shutdown, or the session bound);
    /// the HTTP layer asks before rmcp creates a session.
    pub(crate) fn session_refusal(&self) -> Option<Refusal> {
        let s = &self.shared;
        if s.shutdown_token.is_triggered() {
            return Some(Refusal::new(
                RefusalReason::ShuttingDown,
                "no new sessions are accepted",
            ));
        }
        let live = s.sessions.load(Ordering::Relaxed);
        if live >= s.max_sessions {
            return Some(
                Refusal::new(
                    RefusalReason::SessionsFull,
                    format!(
                        "the server holds its maximum of {} sessions",
                        s.max_sessions
                    ),
                )
                .extra("max_sessions", serde_json::json!(s.max_sessions)),
            );
        }
        None
    }

    /// Counts a refusal (of a call when `tool` is given, else of a new session)
    /// and turns it into the client's error.
    pub(crate) fn refuse(&self, refusal: Refusal, tool: Option<&ToolEntry>) -> ErrorData {
        let s = &self.shared;
        // Relaxed: statistics.
        match tool {
            Some(tool) => {
                s.refused[refusal.reason.index()].fetch_add(1, Ordering::Relaxed);
                tool.refused.fetch_add(1, Ordering::Relaxed);
                tool.metrics.refused(refusal.reason);
            }
            None => {
                s.sessions_refused.fetch_add(1, Ordering::Relaxed);
                s.metrics.refused(refusal.reason);
            }
        }
        tracing::debug!(
            guard = %s.name,
            reason = refusal.reason.as_str(),
            tool = refusal.tool.as_deref(),
            "MCP call refused"
        );
        refusal.into_error()
    }

    pub(crate) fn count_bad_request(&self) {
        // Relaxed: a statistic.
        self.shared.bad_requests.fetch_add(1, Ordering::Relaxed);
        self.shared.metrics.bad_requests.increment(1);
    }

    pub(crate) fn next_session(&self) -> u64 {
        // Relaxed: a unique number is all that is needed.
        self.shared.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// Counts a cancellation and makes the error for it.
    fn cancelled(
        &self,
        tool: &ToolEntry,
        name: &str,
        cause: CancelCause,
        ran: Option<Duration>,
    ) -> ErrorData {
        let s = &self.shared;
        // Relaxed: statistics.
        s.cancelled[cause.index()].fetch_add(1, Ordering::Relaxed);
        tool.cancelled.fetch_add(1, Ordering::Relaxed);
        tool.metrics.cancelled(cause);
        tracing::debug!(
            guard = %s.name,
            tool = name,
            cause = cause.as_str(),
            ran_ms = ran.map(|d| d.as_millis() as u64),
            "MCP tool call cancelled"
        );
        cancelled_error(name, cause, tool.deadline)
    }

    /// A point-in-time view: calls, refusals by reason, cancellations by cause,
    /// the queue, sessions and each tool's counts and latency.
    pub fn stats(&self) -> McpStats {
        let s = &self.shared;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let gate = s.gate.view();
        let refused_by: BTreeMap<_, _> = RefusalReason::ALL
            .iter()
            .map(|r| (*r, load(&s.refused[r.index()])))
            .collect();
        let cancelled_by: BTreeMap<_, _> = CancelCause::ALL
            .iter()
            .map(|c| (c.as_str(), load(&s.cancelled[c.index()])))
            .collect();
        McpStats {
            name: s.name.clone(),
            calls: load(&s.calls),
            completed: load(&s.completed),
            tool_errors: load(&s.tool_errors),
            errors: load(&s.errors),
            bad_requests: load(&s.bad_requests),
            refused: refused_by.values().sum(),
            refused_by,
            cancelled: cancelled_by.values().sum(),
            cancelled_by,
            in_flight: gate.running,
            limit: gate.limit,
            waiting: gate.waiting,
            peak_waiting: gate.peak_waiting,
            queue_capacity: gate.queue_capacity,
            sessions: s.sessions.load(Ordering::Relaxed),
            sessions_opened: load(&s.sessions_opened),
            sessions_refused: load(&s.sessions_refused),
            shutting_down: s.shutdown_token.is_triggered(),
            tools: s
                .tools
                .iter()
                .map(|t| ToolStats {
                    name: t.name.clone(),
                    limit: t.limit,
                    in_flight: t.running.load(Ordering::Relaxed),
                    waiting: t.bulkhead.as_ref().map_or(0, ConcurrencyLimit::waiting),
                    calls: load(&t.calls),
                    completed: load(&t.completed),
                    tool_errors: load(&t.tool_errors),
                    errors: load(&t.errors),
                    refused: load(&t.refused),
                    cancelled: load(&t.cancelled),
                    latency_mean_ms: t.mean_latency().map(|d| d.as_secs_f64() * 1e3),
                    latency_max_ms: load(&t.latency_max_ns) as f64 / 1e6,
                })
                .collect(),
        }
    }

    fn tool(&self, name: &str) -> &ToolEntry {
        let s = &self.shared;
        let i = s.by_name.get(name).copied().unwrap_or(s.tools.len() - 1);
        &s.tools[i]
    }

    /// `initialize`: admitted while the session bound and shutdown allow.
    pub(crate) async fn initialize<H: ServerHandler>(
        &self,
        slot: &SessionSlot,
        inner: &H,
        request: InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, ErrorData> {
        // Claimed first, so two `initialize` on one handler count one session.
        if slot
            .admitted
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            if let Some(refusal) = self.session_refusal() {
                slot.admitted.store(false, Ordering::Release);
                return Err(self.refuse(refusal, None));
            }
            let s = &self.shared;
            // A compare-and-swap loop so concurrent initializes cannot overshoot.
            let admitted = s
                .sessions
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < s.max_sessions).then_some(n + 1)
                })
                .is_ok();
            if !admitted {
                slot.admitted.store(false, Ordering::Release);
                let refusal = self
                    .session_refusal()
                    .unwrap_or_else(|| Refusal::new(RefusalReason::SessionsFull, "sessions full"));
                return Err(self.refuse(refusal, None));
            }
            s.sessions_opened.fetch_add(1, Ordering::Relaxed);
            s.metrics.sessions.increment(1.0);
        }
        inner.initialize(request, context).await
    }

    /// `tools/call` through every stage, then run under its deadline and every
    /// cancellation source.
    pub(crate) async fn call_tool<H: ServerHandler>(
        &self,
        session: u64,
        inner: &H,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        self.run_call(session, request, context, |request, context| {
            inner.call_tool(request, context)
        })
        .await
    }

    pub(crate) async fn run_call<F, Fut>(
        &self,
        session: u64,
        request: CallToolRequestParams,
        mut context: RequestContext<RoleServer>,
        run: F,
    ) -> Result<CallToolResponse, ErrorData>
    where
        F: FnOnce(CallToolRequestParams, RequestContext<RoleServer>) -> Fut,
        Fut: Future<Output = Result<CallToolResponse, ErrorData>>,
    {
        let arrived = TokioInstant::now();
        let s = &self.shared;
        let tool = self.tool(&request.name);
        // Relaxed: statistics.
        s.calls.fetch_add(1, Ordering::Relaxed);
        tool.calls.fetch_add(1, Ordering::Relaxed);
        tool.metrics.calls.increment(1);
        // Kept for the errors after the request moves into the tool.
        let name_owned = request.name.clone();
        let name = name_owned.as_ref();
        // Counts the call as cancelled by the client if this future is dropped
        // before it ends (rmcp drops handler futures when its runtime goes away).
        let mut end = CallEnd {
            guard: self,
            tool,
            name,
            done: false,
        };

        // 1. Shutdown.
        if s.shutdown_token.is_triggered() {
            let r = Refusal::new(RefusalReason::ShuttingDown, "no new calls are accepted");
            return Err(end.refuse(r.tool(name)));
        }
        // 2. Argument size.
        if let Some(args) = &request.arguments {
            let size = json_size(args, s.max_argument_bytes);
            if size > s.max_argument_bytes {
                let r = Refusal::new(
                    RefusalReason::ArgumentsTooLarge,
                    format!(
                        "the arguments are larger than the limit of {} bytes",
                        s.max_argument_bytes
                    ),
                )
                .extra(
                    "max_argument_bytes",
                    serde_json::json!(s.max_argument_bytes),
                );
                return Err(end.refuse(r.tool(name)));
            }
        }
        // 3. The session's rate.
        if let Some(rate) = &s.rate
            && let Err(e) = rate.check_key(&session)
        {
            let r = match e.reason() {
                Some(rejection) => Refusal::from_rejection(RefusalReason::RateLimited, rejection),
                None => Refusal::new(RefusalReason::RateLimited, e.to_string()),
            };
            return Err(end.refuse(r.tool(name)));
        }
        // 4. The dependencies' breakers: an open one refuses at once (its rejection
        // gives the retry-after). Permits are taken only once the call has a slot
        // (below), so a half-open probe is never held through a queue wait.
        for breaker in &tool.depends_on {
            if matches!(
                breaker.state(),
                BreakerState::Open | BreakerState::ForcedOpen
            ) {
                match breaker.try_acquire_owned() {
                    // Its wait just ended: a probe slot, given back until the call
                    // has its server slot.
                    Ok(permit) => permit.ignore(),
                    Err(rejected) => {
                        return Err(end.refuse(circuit_open(breaker, &rejected, name)));
                    }
                }
            }
        }
        // 5. Memory: expensive tools are refused first.
        if let Some(gate) = &s.memory {
            let checked = match tool.memory_bytes {
                Some(bytes) => gate.check_size(bytes),
                None => gate.check(),
            };
            if let Err(rejection) = checked {
                let r = Refusal::from_rejection(RefusalReason::MemoryPressure, rejection);
                return Err(end.refuse(r.tool(name)));
            }
        }
        // The sources that end a wait or a run early, and the deadline.
        let gone = if s.cancel_on_disconnect {
            client_gone(&context)
        } else {
            None
        };
        let client_ct = context.ct.clone();
        // A deadline too far to represent is no deadline.
        let deadline = arrived.checked_add(tool.deadline);
        let left = || {
            deadline.map_or(Duration::MAX, |d| {
                d.saturating_duration_since(TokioInstant::now())
            })
        };
        // 6. The tool's bulkhead: a place now, or (with a bulkhead queue) a wait for
        // one, first come first served.
        let _bulkhead = match (&tool.bulkhead, tool.bulkhead_queue) {
            (None, _) => None,
            (Some(limit), None) => match limit.try_acquire() {
                Ok(permit) => Some(permit),
                Err(_) => return Err(end.refuse(tool_full(tool, name))),
            },
            (Some(limit), Some((max_waiting, max_wait))) => {
                // The bound on waiters is a check, then a wait: concurrent calls
                // can pass it together, so it may be exceeded by a few.
                if limit.available_permits() == 0 && limit.waiting() >= max_waiting {
                    return Err(end.refuse(tool_full(tool, name)));
                }
                let waited = tokio::select! {
                    biased;
                    () = client_ct.cancelled() => Err(Ok(CancelCause::Client)),
                    () = wait_gone(gone.as_ref()) => Err(Ok(CancelCause::Disconnect)),
                    // A waiter never ran: shutdown refuses it rather than cancel it.
                    () = s.shutdown_token.triggered() => Err(Err(RefusalReason::ShuttingDown)),
                    permit = limit.acquire_timeout(max_wait.min(left())) => {
                        permit.map_err(|_| Err(RefusalReason::ToolAtCapacity))
                    }
                };
                match waited {
                    Ok(permit) => Some(permit),
                    Err(Ok(cause)) => return Err(end.cancelled(cause, None)),
                    Err(Err(RefusalReason::ShuttingDown)) => {
                        let r =
                            Refusal::new(RefusalReason::ShuttingDown, "no new calls are accepted");
                        return Err(end.refuse(r.tool(name)));
                    }
                    Err(Err(_)) => return Err(end.refuse(tool_full(tool, name))),
                }
            }
        };
        let _counted = ToolCount::enter(tool);
        // 7. Shutdown's in-flight count: the drain waits for this call.
        let Ok(_in_flight) = s.shutdown.try_enter_owned() else {
            let r = Refusal::new(RefusalReason::ShuttingDown, "no new calls are accepted");
            return Err(end.refuse(r.tool(name)));
        };
        // 8. A server slot, waiting fairly (per session) within the deadline; the
        // wait ends early if the client cancels or goes away, or shutdown ends it.
        let wait = s.max_queue_wait.min(left());
        if wait.is_zero() && s.max_queue_wait > Duration::ZERO {
            // The deadline has passed already (in the bulkhead's queue).
            return Err(end.refuse(queue_timeout(arrived, name)));
        }
        let mut slot = match s.gate.try_enter() {
            Some(slot) => slot,
            None => {
                let entered = tokio::select! {
                    biased;
                    cause = ended(&client_ct, gone.as_ref(), &s.shutdown) => Err(Ok(cause)),
                    entered = s.gate.enter(session, wait) => entered.map_err(Err),
                };
                match entered {
                    Ok(slot) => slot,
                    Err(Ok(cause)) => return Err(end.cancelled(cause, None)),
                    Err(Err(refused)) => {
                        let view = s.gate.view();
                        let reason = match refused {
                            GateRefusal::QueueFull { .. } => RefusalReason::QueueFull,
                            GateRefusal::TimedOut { .. } => RefusalReason::QueueTimeout,
                        };
                        // Roughly how long until the queue ahead of a retry has drained.
                        let ahead = (view.waiting as u32 + 1).div_ceil(view.limit.max(1) as u32);
                        let r = Refusal::from_rejection(reason, refused.into())
                            .retry_after(tool.mean_latency().map(|m| m * ahead))
                            .extra("limit", serde_json::json!(view.limit));
                        return Err(end.refuse(r.tool(name)));
                    }
                }
            }
        };

        // A slot that came at or after the deadline: the queue took the call's whole
        // time, which says nothing about the tool or its dependencies.
        if deadline.is_some_and(|d| TokioInstant::now() >= d) {
            drop(slot);
            return Err(end.refuse(queue_timeout(arrived, name)));
        }
        // The breakers' permits, for the call that now has a slot (a breaker may
        // have opened while it waited).
        let mut breaker_permits = Permits(Vec::with_capacity(tool.depends_on.len()));
        for breaker in &tool.depends_on {
            match breaker.try_acquire_owned() {
                Ok(permit) => breaker_permits.0.push(Some(permit)),
                Err(rejected) => {
                    return Err(end.refuse(circuit_open(breaker, &rejected, name)));
                }
            }
        }

        // 9. Run: cancelled by the client, a disconnect, shutdown or the deadline
        // (checked first, so a call they end is never reported as done).
        let tool_ct = client_ct.child_token();
        context.ct = tool_ct.clone();
        let started = TokioInstant::now();
        let outcome = {
            // A panic in the tool becomes an internal error the client is answered
            // with (rmcp does not catch it: the client would wait forever).
            let call = CatchUnwind {
                inner: run(request, context),
            };
            tokio::pin!(call);
            // Declared after the call, so dropped before it: however this future
            // ends, the tool's token is cancelled before the tool's future drops.
            let cancel_on_drop = tool_ct.clone().drop_guard();
            // The call first: a tool that answers on its first poll never arms the
            // deadline's timer nor the shutdown watch (arming a timer can wake the
            // runtime's timer driver, microseconds per call).
            let outcome = tokio::select! {
                biased;
                result = &mut call => Ok(result),
                cause = ended(&client_ct, gone.as_ref(), &s.shutdown) => Err(cause),
                () = sleep_until(deadline) => Err(CancelCause::Deadline),
            };
            // An answer nobody will read (the client cancelled, or went away, as it
            // came) counts as that cancellation, not as a result.
            let outcome = match outcome {
                Ok(_) if client_ct.is_cancelled() => Err(CancelCause::Client),
                Ok(_) if gone.as_ref().is_some_and(ClientGone::is_gone) => {
                    Err(CancelCause::Disconnect)
                }
                outcome => outcome,
            };
            if outcome.is_ok() {
                cancel_on_drop.disarm();
            }
            // Otherwise the token is cancelled here, before the tool's future is
            // dropped, so it sees why.
            outcome
            // The tool's future is dropped here: its slots free below.
        };
        let elapsed = started.elapsed();
        match outcome {
            Ok(result) => {
                end.done = true;
                let verdict = classify(&result);
                match verdict {
                    Verdict::Ok => {
                        s.completed.fetch_add(1, Ordering::Relaxed);
                        tool.completed.fetch_add(1, Ordering::Relaxed);
                        tool.metrics.completed.increment(1);
                    }
                    Verdict::ToolError => {
                        s.tool_errors.fetch_add(1, Ordering::Relaxed);
                        tool.tool_errors.fetch_add(1, Ordering::Relaxed);
                        tool.metrics.tool_errors.increment(1);
                    }
                    Verdict::ClientError | Verdict::ServerError => {
                        s.errors.fetch_add(1, Ordering::Relaxed);
                        tool.errors.fetch_add(1, Ordering::Relaxed);
                        tool.metrics.errors.increment(1);
                    }
                }
                tool.record_latency(elapsed);
                slot.set_outcome(SlotOutcome::Success);
                for permit in breaker_permits.take() {
                    match verdict {
                        Verdict::Ok => permit.success(),
                        Verdict::ToolError | Verdict::ServerError => permit.failure(),
                        Verdict::ClientError => permit.ignore(),
                    }
                }
                result
            }
            Err(cause) => {
                let dropped = cause == CancelCause::Deadline;
                slot.set_outcome(if dropped {
                    SlotOutcome::Dropped
                } else {
                    SlotOutcome::Ignore
                });
                for permit in breaker_permits.take() {
                    if dropped {
                        permit.failure();
                    } else {
                        permit.ignore();
                    }
                }
                Err(end.cancelled(cause, Some(elapsed)))
            }
        }
    }
}

/// The end of one call, counted once: a refusal, a cancellation, or (when the
/// future is dropped before either) a cancellation by the client.
struct CallEnd<'a> {
    guard: &'a McpGuard,
    tool: &'a ToolEntry,
    name: &'a str,
    done: bool,
}

impl CallEnd<'_> {
    fn refuse(&mut self, refusal: Refusal) -> ErrorData {
        self.done = true;
        self.guard.refuse(refusal, Some(self.tool))
    }

    fn cancelled(&mut self, cause: CancelCause, ran: Option<Duration>) -> ErrorData {
        self.done = true;
        self.guard.cancelled(self.tool, self.name, cause, ran)
    }
}

impl Drop for CallEnd<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Dropped before it ended (a tool's panic is caught and answered, so this
        // is the caller giving up).
        let _ = self
            .guard
            .cancelled(self.tool, self.name, CancelCause::Client, None);
    }
}

/// Completes with the first of the sources that end an admitted call early, in
/// this order: the client cancelled, the client went away, shutdown's grace
/// ended (or it was forced).
async fn ended(
    client: &tokio_util::sync::CancellationToken,
    gone: Option<&ClientGone>,
    shutdown: &Shutdown,
) -> CancelCause {
    tokio::select! {
        biased;
        () = client.cancelled() => CancelCause::Client,
        () = wait_gone(gone) => CancelCause::Disconnect,
        () = shutdown.reached(Phase::Stopping) => CancelCause::Shutdown,
    }
}

/// Waits until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<TokioInstant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// A session's place in the session bound, released when the session's handler
/// is dropped (rmcp drops it when the session ends).
#[derive(Debug)]
pub(crate) struct SessionSlot {
    guard: Arc<Shared>,
    admitted: AtomicBool,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl SessionSlot {
    pub(crate) fn new(guard: &McpGuard) -> Self {
        Self {
            guard: Arc::clone(&guard.shared),
            admitted: AtomicBool::new(false),
        }
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        if *self.admitted.get_mut() {
            self.guard.sessions.fetch_sub(1, Ordering::AcqRel);
            self.guard.metrics.sessions.decrement(1.0);
        }
    }
}

/// A call of the tool admitted past its bulkhead and not yet ended (its
/// in-flight count, kept with or without a limit).
struct ToolCount<'a> {
    tool: &'a ToolEntry,
}

impl<'a> ToolCount<'a> {
    fn enter(tool: &'a ToolEntry) -> Self {
        // Relaxed: a statistic; the bulkhead's permit is what limits.
        tool.running.fetch_add(1, Ordering::Relaxed);
        tool.metrics.in_flight.increment(1.0);
        Self { tool }
    }
}

impl Drop for ToolCount<'_> {
    fn drop(&mut self) {
        self.tool.running.fetch_sub(1, Ordering::Relaxed);
        self.tool.metrics.in_flight.decrement(1.0);
    }
}

/// The refusal for a call whose deadline passed while it waited.
fn queue_timeout(arrived: TokioInstant, name: &str) -> Refusal {
    Refusal::from_rejection(
        RefusalReason::QueueTimeout,
        heijunka_core::Rejection::TimedOut {
            after: arrived.elapsed(),
        },
    )
    .tool(name)
}

pin_project_lite::pin_project! {
    /// The tool's future, with a panic caught and turned into an internal error.
    struct CatchUnwind<F> {
        #[pin]
        inner: F,
    }
}

impl<F> Future for CatchUnwind<F>
where
    F: Future<Output = Result<CallToolResponse, ErrorData>>,
{
    type Output = Result<CallToolResponse, ErrorData>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let inner = self.project().inner;
        // AssertUnwindSafe: after a panic the future is never polled again (it is
        // dropped with the call), so no broken state is observed.
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(poll) => poll,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".to_owned());
                tracing::error!(panic = %what, "MCP tool panicked");
                std::task::Poll::Ready(Err(ErrorData::internal_error(
                    "the tool failed (it panicked)",
                    None,
                )))
            }
        }
    }
}

/// The refusal for a tool whose bulkhead is full.
fn tool_full(tool: &ToolEntry, name: &str) -> Refusal {
    let limit = tool.limit.unwrap_or(u32::MAX);
    Refusal::new(
        RefusalReason::ToolAtCapacity,
        format!("all {limit} slots of tool `{name}` are busy"),
    )
    .retry_after(tool.mean_latency())
    .extra("limit", serde_json::json!(limit))
    .tool(name)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Ok,
    ToolError,
    ClientError,
    ServerError,
}

fn classify(result: &Result<CallToolResponse, ErrorData>) -> Verdict {
    match result {
        Ok(CallToolResponse::Complete(r)) if r.is_error == Some(true) => Verdict::ToolError,
        Ok(_) => Verdict::Ok,
        Err(e) if is_client_error(e.code) => Verdict::ClientError,
        Err(_) => Verdict::ServerError,
    }
}

/// The breaker permits a call holds; any not given a verdict (the call was
/// refused or dropped) are released as saying nothing about the dependency.
struct Permits(Vec<Option<OwnedPermit>>);

impl Permits {
    fn take(&mut self) -> impl Iterator<Item = OwnedPermit> + use<> {
        std::mem::take(&mut self.0).into_iter().flatten()
    }
}

impl Drop for Permits {
    fn drop(&mut self) {
        for permit in self.take() {
            permit.ignore();
        }
    }
}

/// The refusal for a dependency whose breaker is open.
fn circuit_open(breaker: &CircuitBreaker, rejected: &BreakerRejected, tool: &str) -> Refusal {
    Refusal::from_rejection(RefusalReason::CircuitOpen, rejected.reason())
        .extra("dependency", serde_json::json!(breaker.name()))
        .tool(tool)
}

/// The disconnect signal the HTTP layer put in the request, if any.
fn client_gone(context: &RequestContext<RoleServer>) -> Option<ClientGone> {
    context
        .extensions
        .get::<http::request::Parts>()
        .and_then(|parts| parts.extensions.get::<ClientGone>())
        .cloned()
}

async fn wait_gone(gone: Option<&ClientGone>) {
    match gone {
        Some(gone) => gone.gone().await,
        None => std::future::pending().await,
    }
}

/// The serialized size of `value`, counting no further than just past `limit`.
fn json_size(value: &impl Serialize, limit: usize) -> usize {
    struct Counter {
        n: usize,
        limit: usize,
    }
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.n += buf.len();
            if self.n > self.limit {
                // Stop serializing: the answer is already known.
                return Err(std::io::Error::other("over the limit"));
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Counter { n: 0, limit };
    let _ = serde_json::to_writer(&mut c, value);
    c.n
}
