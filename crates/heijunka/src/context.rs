//! [`RequestContext`]: what one request carries through the stack — a trace id, a
//! deadline, cancellation linked to shutdown, its start time and its memory.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use heijunka_core::{ConfigError, Criticality, validate};
use heijunka_shutdown::ShutdownToken;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The deadline a request gets when none is set: 30 seconds, as the seeds
/// configure `timeouts.request`.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

tokio::task_local! {
    static CURRENT: RequestContext;
}

std::thread_local! {
    static THREAD_CURRENT: std::cell::RefCell<Option<RequestContext>> =
        const { std::cell::RefCell::new(None) };
}

/// A 128-bit trace id, shown as 32 lowercase hex digits (the W3C trace-context
/// form, so it can be passed on in a `traceparent` header).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TraceId(u128);

impl TraceId {
    /// A new random id (never zero): 128 bits from a per-thread SplitMix64
    /// generator seeded from std's per-process random hash keys (a few
    /// nanoseconds, no lock, no system call after the thread's first id).
    /// Random enough for correlation and sampling; not a secret.
    pub fn generate() -> Self {
        use std::cell::Cell;
        use std::hash::{BuildHasher, Hasher};
        std::thread_local! {
            static STATE: Cell<u64> = Cell::new({
                let mut h = std::collections::hash_map::RandomState::new().build_hasher();
                h.write_u128(
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos()),
                );
                h.finish()
            });
        }
        // SplitMix64 (Steele, Lea and Flood 2014): a Weyl sequence through a
        // bijective mixer, so one thread never repeats within 2^64 draws.
        fn next(state: &Cell<u64>) -> u64 {
            let s = state.get();
            state.set(s.wrapping_add(0x9E37_79B9_7F4A_7C15));
            heijunka_core::rng::splitmix64(s)
        }
        let id = STATE.with(|s| (u128::from(next(s)) << 64) | u128::from(next(s)));
        Self(id.max(1))
    }

    /// Parses 32 hex digits (as written by `Display`).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `trace_id` for anything else, or an all-zero id
    /// (invalid in W3C trace context).
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        let bad = || ConfigError::new("trace_id", s, "must be 32 hex digits, not all zero");
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        match u128::from_str_radix(s, 16) {
            Ok(0) | Err(_) => Err(bad()),
            Ok(v) => Ok(Self(v)),
        }
    }

    /// The id as a number.
    pub fn as_u128(self) -> u128 {
        self.0
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({self})")
    }
}

/// How a request ended, for [`RequestContext::complete`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It succeeded.
    Success,
    /// It failed (the call's own error).
    Error,
    /// A stage of the stack refused it (see [`Rejection`](heijunka_core::Rejection)).
    Rejected,
    /// Its deadline passed.
    TimedOut,
    /// It was cancelled (shutdown, or the caller went away).
    Cancelled,
}

impl Outcome {
    /// A short lowercase name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Error => "error",
            Outcome::Rejected => "rejected",
            Outcome::TimedOut => "timed_out",
            Outcome::Cancelled => "cancelled",
        }
    }
}

/// Where a context's cancellation comes from besides its own
/// [`cancel`](RequestContext::cancel).
enum Parent {
    None,
    /// Cancelled when shutdown begins.
    Shutdown(ShutdownToken),
    /// Cancelled with the parent context.
    Context(RequestContext),
}

struct Inner {
    trace_id: TraceId,
    criticality: Criticality,
    deadline: Instant,
    start: Instant,
    parent: Parent,
    /// Set by [`RequestContext::cancel`].
    cancelled: AtomicBool,
    /// The request's [`CancellationToken`]: given to the builder, or made on first
    /// use (a child of the parent's) by [`RequestContext::token`] or
    /// [`RequestContext::cancelled`]. Making it takes the parent token's lock, so
    /// a request that never waits for cancellation never makes it: checking
    /// [`is_cancelled`](RequestContext::is_cancelled) is a few atomic loads.
    token: OnceLock<CancellationToken>,
    /// The process's resident set when the request started, if known.
    rss_at_start: Option<u64>,
    /// Bytes allocated while polling this request's futures inside
    /// [`RequestContext::scope`] (counted with the `alloc-tracking` feature).
    allocated: AtomicU64,
}

impl Inner {
    fn new(trace_id: TraceId, deadline: Instant, start: Instant, parent: Parent) -> Self {
        Self {
            trace_id,
            criticality: Criticality::Default,
            deadline,
            start,
            parent,
            cancelled: AtomicBool::new(false),
            token: OnceLock::new(),
            rss_at_start: None,
            allocated: AtomicU64::new(0),
        }
    }
}

/// What one request carries through the stack: a [`TraceId`], a deadline
/// (default [`DEFAULT_REQUEST_TIMEOUT`]), cancellation (linked to shutdown when
/// built with [`shutdown`](RequestContextBuilder::shutdown), to its parent for a
/// [`child`](Self::child); a [`CancellationToken`] is made only when asked for),
/// its start time and, when known, the process's memory at the start. Making a
/// context and checking it take no lock.
///
/// Clones share one context. [`scope`](Self::scope) makes it the
/// [`current`](Self::current) context across `.await`s of a future, and
/// [`wrap`](Self::wrap) does the same for a closure run on a pool thread.
/// [`complete`](Self::complete) logs one `tracing` event with the duration, the
/// memory delta and the outcome.
///
/// ```
/// use heijunka::context::{Outcome, RequestContext};
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let ctx = RequestContext::builder().timeout(Duration::from_secs(2)).build();
/// let trace = ctx.trace_id();
/// let seen = ctx
///     .scope(async {
///         tokio::task::yield_now().await;
///         // Anywhere below, the current context is the request's.
///         RequestContext::current().map(|c| c.trace_id())
///     })
///     .await;
/// assert_eq!(seen, Some(trace));
/// assert!(ctx.remaining() <= Duration::from_secs(2));
/// ctx.complete(Outcome::Success);
/// # }
/// ```
#[derive(Clone)]
pub struct RequestContext {
    inner: Arc<Inner>,
}

/// Builds a [`RequestContext`]; see [`RequestContext::builder`].
#[derive(Debug)]
#[must_use = "a builder does nothing until `build()`"]
pub struct RequestContextBuilder {
    trace_id: Option<TraceId>,
    criticality: Criticality,
    timeout: Duration,
    deadline: Option<Instant>,
    token: Option<CancellationToken>,
    shutdown: Option<ShutdownToken>,
    rss: Option<u64>,
}

impl RequestContextBuilder {
    /// Takes the caller's trace id (for example from an incoming `traceparent`
    /// header) instead of generating one.
    pub fn trace_id(mut self, id: TraceId) -> Self {
        self.trace_id = Some(id);
        self
    }

    /// How much the request matters under overload (default
    /// [`Criticality::Default`]): every stage reads it — the load-shedding stage
    /// sheds sheddable work first and critical work last, and retries and
    /// hedges are not spent on sheddable work while the budget is strained.
    /// [`PolicyLayer`](crate::tower::PolicyLayer) reads it from the
    /// `x-request-criticality` header ([`Criticality::HEADER`]) where the
    /// callers are trusted
    /// ([`criticality_header`](crate::tower::PolicyLayer::criticality_header)).
    ///
    /// ```
    /// use heijunka::context::RequestContext;
    /// use heijunka::core::Criticality;
    ///
    /// let ctx = RequestContext::builder().criticality(Criticality::Critical).build();
    /// assert_eq!(ctx.criticality(), Criticality::Critical);
    /// assert_eq!(ctx.child(None).criticality(), Criticality::Critical, "inherited");
    /// ```
    pub fn criticality(mut self, criticality: Criticality) -> Self {
        self.criticality = criticality;
        self
    }

    /// The time the request may take from now. Default
    /// [`DEFAULT_REQUEST_TIMEOUT`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self.deadline = None;
        self
    }

    /// An absolute deadline (overrides [`timeout`](Self::timeout)).
    pub fn deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Cancels the request when `shutdown` begins. Lock-free: the context keeps a
    /// clone of the shutdown token and checks its flag; the context's own
    /// [`token`](RequestContext::token), a child of the shutdown's, is made only
    /// if someone asks for it. Replaces a [`token`](Self::token) set before.
    pub fn shutdown(mut self, shutdown: &ShutdownToken) -> Self {
        self.shutdown = Some(shutdown.clone());
        self.token = None;
        self
    }

    /// Uses `token` (or, to link it to a parent, `parent.child_token()`) as the
    /// request's cancellation. Replaces a [`shutdown`](Self::shutdown) link set
    /// before.
    pub fn token(mut self, token: CancellationToken) -> Self {
        self.token = Some(token);
        self.shutdown = None;
        self
    }

    /// Records the process's resident set at the start from a memory monitor's
    /// last sample (no new sample is taken).
    pub fn memory(mut self, monitor: &heijunka_memory::MemoryMonitor) -> Self {
        self.rss = monitor.status().map(|s| s.rss);
        self
    }

    /// The context. The deadline is measured on tokio's clock (the system's
    /// monotonic clock, or paused time in tests).
    pub fn build(self) -> RequestContext {
        self.build_at(Instant::now())
    }

    /// [`build`](Self::build) with the start time the caller has just read.
    pub(crate) fn build_at(self, start: Instant) -> RequestContext {
        let deadline = self
            .deadline
            .unwrap_or_else(|| start.checked_add(self.timeout).unwrap_or_else(far_future));
        let parent = match self.shutdown {
            Some(s) => Parent::Shutdown(s),
            None => Parent::None,
        };
        let mut inner = Inner::new(
            self.trace_id.unwrap_or_else(TraceId::generate),
            deadline,
            start,
            parent,
        );
        inner.rss_at_start = self.rss;
        inner.criticality = self.criticality;
        if let Some(token) = self.token {
            inner.token = OnceLock::from(token);
        }
        RequestContext {
            inner: Arc::new(inner),
        }
    }
}

/// About 30 years from now: a deadline that never comes.
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365 * 30)
}

impl Default for RequestContext {
    fn default() -> Self {
        Self::new()
    }
}

impl RequestContext {
    /// A context with a new trace id, the default 30 s deadline and its own
    /// cancellation token.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// A builder.
    pub fn builder() -> RequestContextBuilder {
        RequestContextBuilder {
            criticality: Criticality::Default,
            trace_id: None,
            timeout: DEFAULT_REQUEST_TIMEOUT,
            deadline: None,
            token: None,
            shutdown: None,
            rss: None,
        }
    }

    /// Checks a request timeout taken from configuration: it must not be zero.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `timeout`.
    pub fn validate_timeout(timeout: Duration) -> Result<Duration, ConfigError> {
        validate::non_zero_duration("timeout", timeout)?;
        Ok(timeout)
    }

    /// The trace id.
    pub fn trace_id(&self) -> TraceId {
        self.inner.trace_id
    }

    /// How much the request matters under overload (see
    /// [`RequestContextBuilder::criticality`]); children inherit it.
    pub fn criticality(&self) -> Criticality {
        self.inner.criticality
    }

    /// When the request must be done.
    pub fn deadline(&self) -> Instant {
        self.inner.deadline
    }

    /// Time left before the deadline (zero once it has passed).
    pub fn remaining(&self) -> Duration {
        self.inner
            .deadline
            .saturating_duration_since(Instant::now())
    }

    /// Whether the deadline has passed.
    pub fn is_expired(&self) -> bool {
        Instant::now() >= self.inner.deadline
    }

    /// When the request started.
    pub fn start(&self) -> Instant {
        self.inner.start
    }

    /// Time since the start.
    pub fn elapsed(&self) -> Duration {
        self.inner.start.elapsed()
    }

    /// The request's cancellation token: cancelled with the request (by
    /// [`cancel`](Self::cancel), its parent, or shutdown), and cancelling it
    /// cancels the request. Made on the first call (a child of the parent's
    /// token, which takes that token's lock once); a request that only checks
    /// [`is_cancelled`](Self::is_cancelled) never makes it.
    pub fn token(&self) -> &CancellationToken {
        let inner = &*self.inner;
        let token = inner.token.get_or_init(|| match &inner.parent {
            Parent::None => CancellationToken::new(),
            Parent::Shutdown(s) => s.child_token(),
            Parent::Context(c) => c.token().child_token(),
        });
        // SeqCst fence: pairs with the one in `cancel`. Either `cancel` sees the
        // token made here, or this sees the flag `cancel` set; never neither.
        std::sync::atomic::fence(Ordering::SeqCst);
        if inner.cancelled.load(Ordering::Relaxed) {
            token.cancel();
        }
        token
    }

    /// Whether the request was cancelled (by [`cancel`](Self::cancel), its
    /// token, its parent, or shutdown for a context linked to it). Lock-free: a
    /// few atomic loads, unless the context's token was made (then one
    /// uncontended lock of that token's own).
    pub fn is_cancelled(&self) -> bool {
        let inner = &*self.inner;
        // Acquire: pairs with the Release of `cancel`'s store.
        inner.cancelled.load(Ordering::Acquire)
            || match &inner.parent {
                Parent::None => false,
                Parent::Shutdown(s) => s.is_triggered(),
                Parent::Context(c) => c.is_cancelled(),
            }
            || inner
                .token
                .get()
                .is_some_and(CancellationToken::is_cancelled)
    }

    /// Cancels the request (and its children, and everything holding a child of
    /// its token).
    pub fn cancel(&self) {
        let inner = &*self.inner;
        inner.cancelled.store(true, Ordering::Release);
        // SeqCst fence: pairs with the one in `token`.
        std::sync::atomic::fence(Ordering::SeqCst);
        if let Some(token) = inner.token.get() {
            token.cancel();
        }
    }

    /// Completes when the request is cancelled (at once if it was).
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: dropping the future removes its registration from the
    /// context's token; the context and other waiters are unaffected.
    pub async fn cancelled(&self) {
        self.token().cancelled().await;
    }

    /// A context for a sub-request: the same trace id, the earlier of the two
    /// deadlines, and a child token (cancelling the child leaves this one alone;
    /// cancelling this one cancels the child).
    pub fn child(&self, timeout: Option<Duration>) -> RequestContext {
        let now = Instant::now();
        let deadline = timeout
            .and_then(|t| now.checked_add(t))
            .map_or(self.inner.deadline, |d| d.min(self.inner.deadline));
        self.derived(deadline, now)
    }

    /// This context with its deadline cut to `deadline` if that is earlier: the
    /// same trace id and start, cancelled with this one (a child). Returns a
    /// clone of this context when `deadline` is not earlier.
    ///
    /// ```
    /// use heijunka::context::RequestContext;
    /// use std::time::Duration;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let ctx = RequestContext::builder().timeout(Duration::from_secs(30)).build();
    /// let soon = tokio::time::Instant::now() + Duration::from_secs(2);
    /// let call = ctx.until(soon);
    /// assert_eq!(call.deadline(), soon);
    /// assert_eq!(call.trace_id(), ctx.trace_id());
    /// ctx.cancel();
    /// assert!(call.is_cancelled());
    /// # }
    /// ```
    pub fn until(&self, deadline: Instant) -> RequestContext {
        if deadline >= self.inner.deadline {
            return self.clone();
        }
        self.derived(deadline, self.inner.start)
    }

    fn derived(&self, deadline: Instant, start: Instant) -> RequestContext {
        let mut inner = Inner::new(
            self.inner.trace_id,
            deadline,
            start,
            Parent::Context(self.clone()),
        );
        inner.rss_at_start = self.inner.rss_at_start;
        inner.criticality = self.inner.criticality;
        RequestContext {
            inner: Arc::new(inner),
        }
    }

    /// The process's resident set at the start, if it was recorded.
    pub fn rss_at_start(&self) -> Option<u64> {
        self.inner.rss_at_start
    }

    /// Bytes allocated while this context's futures were polled inside
    /// [`scope`](Self::scope) and its closures ran inside [`wrap`](Self::wrap).
    /// Always zero without the `alloc-tracking` feature (and its
    /// `CountingAlloc` installed as the global allocator).
    pub fn allocated_bytes(&self) -> u64 {
        // Relaxed: a statistic.
        self.inner.allocated.load(Ordering::Relaxed)
    }

    /// The context of the running task (set by [`scope`](Self::scope)) or thread
    /// (set by [`wrap`](Self::wrap)), if any.
    pub fn current() -> Option<RequestContext> {
        CURRENT
            .try_with(Clone::clone)
            .ok()
            .or_else(|| THREAD_CURRENT.with(|c| c.borrow().clone()))
    }

    /// Runs `fut` with this context as the [`current`](Self::current) one across
    /// every `.await` (a tokio task-local), counting its allocations with the
    /// `alloc-tracking` feature.
    pub fn scope<F: Future>(&self, fut: F) -> impl Future<Output = F::Output> + use<F> {
        let ctx = self.clone();
        CURRENT.scope(self.clone(), async move {
            let mut fut = std::pin::pin!(fut);
            std::future::poll_fn(|cx| ctx.measure(|| fut.as_mut().poll(cx))).await
        })
    }

    /// Wraps `f` (for a pool thread) so that it runs with this context as the
    /// [`current`](Self::current) one, counting its allocations with the
    /// `alloc-tracking` feature.
    ///
    /// ```
    /// use heijunka::context::RequestContext;
    ///
    /// let ctx = RequestContext::new();
    /// let id = ctx.trace_id();
    /// let job = ctx.wrap(|| RequestContext::current().map(|c| c.trace_id()));
    /// let seen = std::thread::spawn(job).join().unwrap();
    /// assert_eq!(seen, Some(id));
    /// ```
    pub fn wrap<F, T>(&self, f: F) -> impl FnOnce() -> T + Send + 'static + use<F, T>
    where
        F: FnOnce() -> T + Send + 'static,
    {
        let ctx = self.clone();
        move || {
            let previous = THREAD_CURRENT.with(|c| c.replace(Some(ctx.clone())));
            // Restore the thread's previous context even if `f` panics.
            struct Restore(Option<RequestContext>);
            impl Drop for Restore {
                fn drop(&mut self) {
                    let previous = self.0.take();
                    THREAD_CURRENT.with(|c| *c.borrow_mut() = previous);
                }
            }
            let _restore = Restore(previous);
            ctx.measure(f)
        }
    }

    /// Runs `f` with this context as the [`current`](Self::current) one (the
    /// task-local [`scope`](Self::scope) sets, for one synchronous call such as
    /// one poll), counting its allocations with the `alloc-tracking` feature.
    #[cfg_attr(not(feature = "tower"), allow(dead_code))]
    pub(crate) fn enter<R>(&self, f: impl FnOnce() -> R) -> R {
        CURRENT.sync_scope(self.clone(), || self.measure(f))
    }

    #[cfg(feature = "alloc-tracking")]
    fn measure<T>(&self, f: impl FnOnce() -> T) -> T {
        let before = heijunka_memory::AllocStats::current_thread();
        let out = f();
        let delta = heijunka_memory::AllocStats::current_thread().since(before);
        // Relaxed: a statistic.
        self.inner
            .allocated
            .fetch_add(delta.allocated, Ordering::Relaxed);
        out
    }

    #[cfg(not(feature = "alloc-tracking"))]
    #[inline]
    fn measure<T>(&self, f: impl FnOnce() -> T) -> T {
        f()
    }

    /// Logs the request's end as one `tracing` event (`info`, or `warn` for errors
    /// and time-outs) with the trace id, duration, bytes allocated, the resident
    /// set at the start and the outcome.
    pub fn complete(&self, outcome: Outcome) {
        // The field values are computed only when a subscriber wants the event
        // (reading the clock is most of this function's cost otherwise).
        match outcome {
            Outcome::Error | Outcome::TimedOut => tracing::warn!(
                trace_id = %self.inner.trace_id,
                duration = ?self.elapsed(),
                allocated_bytes = self.allocated_bytes(),
                rss_at_start = self.inner.rss_at_start.unwrap_or(0),
                outcome = outcome.as_str(),
                "request complete"
            ),
            _ => tracing::info!(
                trace_id = %self.inner.trace_id,
                duration = ?self.elapsed(),
                allocated_bytes = self.allocated_bytes(),
                rss_at_start = self.inner.rss_at_start.unwrap_or(0),
                outcome = outcome.as_str(),
                "request complete"
            ),
        }
    }
}

impl fmt::Debug for RequestContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestContext")
            .field("trace_id", &self.inner.trace_id)
            .field("remaining", &self.remaining())
            .field("cancelled", &self.is_cancelled())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_ids_round_trip_and_reject_garbage() {
        let id = TraceId::generate();
        assert_eq!(TraceId::parse(&id.to_string()).unwrap(), id);
        assert_ne!(TraceId::generate(), id);
        for bad in ["", "xyz", "00000000000000000000000000000000", "123"] {
            let e = TraceId::parse(bad).unwrap_err();
            assert!(e.to_string().contains("trace_id"), "{e}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_and_child() {
        let ctx = RequestContext::builder()
            .timeout(Duration::from_secs(10))
            .build();
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(ctx.remaining(), Duration::from_secs(6));
        let child = ctx.child(Some(Duration::from_secs(60)));
        assert_eq!(
            child.deadline(),
            ctx.deadline(),
            "a child never outlives its parent"
        );
        let short = ctx.child(Some(Duration::from_secs(1)));
        assert_eq!(short.remaining(), Duration::from_secs(1));
        short.cancel();
        assert!(!ctx.is_cancelled());
        ctx.cancel();
        assert!(child.is_cancelled());
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(ctx.is_expired());
    }

    #[tokio::test]
    async fn current_crosses_awaits_and_spawned_blocking() {
        let ctx = RequestContext::new();
        let id = ctx.trace_id();
        assert!(RequestContext::current().is_none());
        let inner = ctx
            .scope(async move {
                tokio::task::yield_now().await;
                let here = RequestContext::current().unwrap();
                tokio::task::spawn_blocking(here.wrap(|| RequestContext::current().unwrap()))
                    .await
                    .unwrap()
            })
            .await;
        assert_eq!(inner.trace_id(), id);
        assert!(RequestContext::current().is_none());
    }
}
