//! [`RedisBackend`]: one Redis shared by the distributed primitives, with a time-out
//! per call and a circuit breaker around Redis itself.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use heijunka_breaker::{CircuitBreaker, State};
use heijunka_core::{ConfigError, validate};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::Serialize;

/// The default time-out of one Redis call: long enough for a loopback or
/// same-zone round trip under load, short enough that a request waiting on a
/// Redis that stopped answering is not held up noticeably.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_millis(50);

/// The default wait of the breaker around Redis before it probes again. Short,
/// so the primitives are back on Redis within a second of its return.
pub const DEFAULT_BREAKER_WAIT: Duration = Duration::from_millis(250);

/// Failed or timed-out calls in a row that open the breaker around Redis.
pub const DEFAULT_FAILURES_TO_OPEN: u32 = 3;

/// Why a Redis call did not give an answer. The distributed primitives turn it
/// into their [failure policy](crate::FailurePolicy): a local limit (fail open),
/// or a refusal carrying this (fail closed).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Unavailable {
    /// Redis did not answer within the call's time-out.
    #[error("redis did not answer within {after:?}")]
    TimedOut {
        /// The time-out.
        after: Duration,
    },
    /// Redis (or the connection to it) answered with an error.
    #[error("redis call failed: {message}")]
    Failed {
        /// The error, as the `redis` crate reports it.
        message: String,
    },
    /// The breaker around Redis is open after failures in a row: no call was
    /// made.
    #[error("redis is marked unavailable (its breaker is open); probing again in {retry_after:?}")]
    BreakerOpen {
        /// Time until the breaker lets a probe through, where known.
        retry_after: Option<Duration>,
    },
}

impl Unavailable {
    /// The time after which Redis is worth asking again, where known.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::BreakerOpen { retry_after } => *retry_after,
            Self::TimedOut { .. } | Self::Failed { .. } => None,
        }
    }
}

/// A backend's figures, for dashboards and health checks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct BackendStats {
    /// This replica's id (in shared breaker events, lease holder ids).
    pub replica_id: String,
    /// Whether the primitives run on their failure policy now: the breaker
    /// around Redis is not closed.
    pub degraded: bool,
    /// The state of the breaker around Redis.
    pub breaker: State,
    /// Calls that reached Redis (answered or not).
    pub calls: u64,
    /// Calls answered with an error (connection refused, reset, server error).
    pub errors: u64,
    /// Calls not answered within the time-out.
    pub timeouts: u64,
    /// Calls not made because the breaker was open.
    pub short_circuited: u64,
    /// Times the backend became degraded.
    pub degradations: u64,
    /// Times it recovered.
    pub recoveries: u64,
    /// Times the shared connection was replaced after a call timed out.
    pub reconnects: u64,
}

/// One Redis shared by heijunka's distributed primitives: a connection manager
/// (multiplexed, reconnecting), a time-out per call, and a circuit breaker
/// around Redis itself so that a Redis that is down costs one short-circuited
/// check, not a time-out, per request.
///
/// Cheap to clone (one `Arc`); give every primitive of a replica the same one.
/// Built without connecting: a service starts while Redis is down and runs on
/// its failure policy until Redis answers.
///
/// ```no_run
/// use heijunka_redis::RedisBackend;
/// use std::time::Duration;
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), heijunka_core::ConfigError> {
/// let redis = RedisBackend::builder("redis://127.0.0.1:6379/")
///     .call_timeout(Duration::from_millis(20))
///     .replica_id("api-1")
///     .build()?;
/// assert_eq!(redis.replica_id(), "api-1");
/// # Ok(())
/// # }
/// ```
///
/// The state changes of the breaker around Redis are logged with `tracing`:
/// `warn` when the backend becomes degraded, `info` when it recovers.
#[derive(Clone)]
pub struct RedisBackend {
    inner: Arc<Inner>,
}

struct Inner {
    /// The shared connection and its generation: replaced after a call times
    /// out (see [`RedisBackend::call`]).
    conn: Mutex<(u64, ConnectionManager)>,
    reconnects: AtomicU64,
    client: redis::Client,
    timeout: Duration,
    breaker: CircuitBreaker,
    replica_id: String,
    calls: AtomicU64,
    errors: AtomicU64,
    timeouts: AtomicU64,
    short_circuited: AtomicU64,
    health: Arc<Health>,
}

/// Degradation figures kept by the breaker's listener.
#[derive(Default)]
struct Health {
    degraded: AtomicBool,
    degradations: AtomicU64,
    recoveries: AtomicU64,
}

/// Builds a [`RedisBackend`].
#[derive(Clone, Debug)]
#[must_use]
pub struct RedisBackendBuilder {
    url: String,
    timeout: Duration,
    breaker_wait: Duration,
    failures_to_open: u32,
    replica_id: Option<String>,
}

impl RedisBackendBuilder {
    /// The time-out of each Redis call (default [`DEFAULT_CALL_TIMEOUT`]): a
    /// call not answered by then counts as a failure and the primitive follows
    /// its failure policy.
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long the breaker around Redis stays open before it probes again
    /// (default [`DEFAULT_BREAKER_WAIT`]).
    pub fn breaker_wait(mut self, wait: Duration) -> Self {
        self.breaker_wait = wait;
        self
    }

    /// Failed or timed-out calls in a row that open the breaker around Redis
    /// (default [`DEFAULT_FAILURES_TO_OPEN`]).
    pub fn failures_to_open(mut self, failures: u32) -> Self {
        self.failures_to_open = failures;
        self
    }

    /// This replica's id, in shared breaker events, lease holder ids and the
    /// default stream consumer name (default: the process id and a random
    /// suffix). Give each replica its own: two live replicas with one id share
    /// a stream consumer name (lease holders and breaker announcements also
    /// carry a random per-process part, so they stay apart).
    pub fn replica_id(mut self, id: impl Into<String>) -> Self {
        self.replica_id = Some(id.into());
        self
    }

    /// Builds the backend. It does not connect: the first call does, and every
    /// call after a broken connection reconnects.
    ///
    /// Call it within a tokio runtime (the connection manager finds the runtime
    /// when it is built).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the field: `url` that does not parse, a zero
    /// `call_timeout` or `breaker_wait`, `failures_to_open` of zero, an empty
    /// or non-ASCII-graphic `replica_id`.
    pub fn build(self) -> Result<RedisBackend, ConfigError> {
        self.check()?;
        self.build_checked()
    }

    /// Checks every setting as [`build`](Self::build) does, without building
    /// (no runtime needed).
    ///
    /// # Errors
    ///
    /// As [`build`](Self::build).
    pub fn check(&self) -> Result<(), ConfigError> {
        validate::non_zero_duration("call_timeout", self.timeout)?;
        validate::non_zero_duration("breaker_wait", self.breaker_wait)?;
        validate::at_least("failures_to_open", self.failures_to_open, 1)?;
        if let Some(id) = &self.replica_id
            && (id.is_empty() || !id.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(ConfigError::new(
                "replica_id",
                id,
                "must be non-empty printable ASCII without spaces",
            ));
        }
        redis::Client::open(self.url.as_str())
            .map_err(|e| ConfigError::new("url", &self.url, e.to_string()))?;
        Ok(())
    }

    fn build_checked(self) -> Result<RedisBackend, ConfigError> {
        let replica_id = self.replica_id.unwrap_or_else(default_replica_id);
        let client = redis::Client::open(self.url.as_str())
            .map_err(|e| ConfigError::new("url", &self.url, e.to_string()))?;
        let conn =
            ConnectionManager::new_lazy_with_config(client.clone(), manager_config(self.timeout))
                .map_err(|e| ConfigError::new("url", &self.url, e.to_string()))?;
        let breaker = CircuitBreaker::builder()
            .name(format!("redis {}", self.url))
            .consecutive_failure_threshold(self.failures_to_open)
            .wait_duration_in_open_state(self.breaker_wait)
            .permitted_number_of_calls_in_half_open_state(1)
            .build()?;
        let health = Arc::new(Health::default());
        let listener = Arc::clone(&health);
        let url = self.url.clone();
        breaker.subscribe(move |t| {
            let was = listener.degraded.load(Ordering::Relaxed);
            let now = t.to != State::Closed;
            if now && !was {
                listener.degraded.store(true, Ordering::Relaxed);
                listener.degradations.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(redis = %url, reason = %t.reason, "redis unavailable: the distributed limits run on their failure policy");
            } else if !now && was {
                listener.degraded.store(false, Ordering::Relaxed);
                listener.recoveries.fetch_add(1, Ordering::Relaxed);
                tracing::info!(redis = %url, "redis recovered: the distributed limits are global again");
            }
        });
        Ok(RedisBackend {
            inner: Arc::new(Inner {
                conn: Mutex::new((0, conn)),
                reconnects: AtomicU64::new(0),
                client,
                timeout: self.timeout,
                breaker,
                replica_id,
                calls: AtomicU64::new(0),
                errors: AtomicU64::new(0),
                timeouts: AtomicU64::new(0),
                short_circuited: AtomicU64::new(0),
                health,
            }),
        })
    }
}

impl RedisBackend {
    /// A builder for the Redis at `url` (`redis://host:port/db`).
    pub fn builder(url: impl Into<String>) -> RedisBackendBuilder {
        RedisBackendBuilder {
            url: url.into(),
            timeout: DEFAULT_CALL_TIMEOUT,
            breaker_wait: DEFAULT_BREAKER_WAIT,
            failures_to_open: DEFAULT_FAILURES_TO_OPEN,
            replica_id: None,
        }
    }

    /// A backend for the Redis at `url` with the defaults.
    ///
    /// # Errors
    ///
    /// As [`RedisBackendBuilder::build`].
    pub fn new(url: impl Into<String>) -> Result<Self, ConfigError> {
        Self::builder(url).build()
    }

    /// This replica's id.
    pub fn replica_id(&self) -> &str {
        &self.inner.replica_id
    }

    /// The time-out of each call.
    pub fn call_timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// The breaker around Redis (for a health endpoint, or to
    /// [`force_open`](CircuitBreaker::force_open) it in a drill).
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.inner.breaker
    }

    /// Whether the primitives run on their failure policy now.
    pub fn is_degraded(&self) -> bool {
        self.inner.breaker.state() != State::Closed
    }

    /// The backend's figures.
    pub fn stats(&self) -> BackendStats {
        let i = &*self.inner;
        let breaker = i.breaker.state();
        BackendStats {
            replica_id: i.replica_id.clone(),
            degraded: breaker != State::Closed,
            breaker,
            calls: i.calls.load(Ordering::Relaxed),
            errors: i.errors.load(Ordering::Relaxed),
            timeouts: i.timeouts.load(Ordering::Relaxed),
            short_circuited: i.short_circuited.load(Ordering::Relaxed),
            degradations: i.health.degradations.load(Ordering::Relaxed),
            recoveries: i.health.recoveries.load(Ordering::Relaxed),
            reconnects: i.reconnects.load(Ordering::Relaxed),
        }
    }

    /// The `redis` client (for a dedicated connection, such as pub/sub).
    pub(crate) fn client(&self) -> &redis::Client {
        &self.inner.client
    }

    /// A connection of its own (reconnecting), for calls that must not hold
    /// up the shared one (blocking stream reads), answering within
    /// `response_timeout`.
    #[cfg(feature = "bus")]
    pub(crate) fn dedicated(&self, response_timeout: Duration) -> ConnectionManager {
        let config =
            manager_config(self.inner.timeout).set_response_timeout(Some(response_timeout));
        // Only fails for a config that already built the shared manager.
        ConnectionManager::new_lazy_with_config(self.inner.client.clone(), config)
            .unwrap_or_else(|_| crate::lock(&self.inner.conn).1.clone())
    }

    /// Runs one Redis operation through the breaker, with the call time-out.
    ///
    /// Cancel safety: dropping the future abandons the reply; what Redis did
    /// with the request (if it got it) stands, and the breaker's permit is
    /// dropped unjudged.
    pub(crate) async fn run<T, F, Fut>(&self, f: F) -> Result<T, Unavailable>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let permit = self.permit()?;
        self.call(permit, f).await
    }

    /// The breaker's leave to call Redis, or why not (counted): checked before
    /// a call's arguments are built, so a Redis that is down costs no
    /// allocation.
    pub(crate) fn permit(&self) -> Result<heijunka_breaker::Permit<'_>, Unavailable> {
        let i = &*self.inner;
        i.breaker.try_acquire().map_err(|refused| {
            i.short_circuited.fetch_add(1, Ordering::Relaxed);
            Unavailable::BreakerOpen {
                retry_after: refused.retry_after(),
            }
        })
    }

    /// Runs one Redis operation under `permit`, with the call time-out.
    pub(crate) async fn call<T, F, Fut>(
        &self,
        permit: heijunka_breaker::Permit<'_>,
        f: F,
    ) -> Result<T, Unavailable>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let i = &*self.inner;
        i.calls.fetch_add(1, Ordering::Relaxed);
        let (generation, conn) = crate::lock(&i.conn).clone();
        match tokio::time::timeout(i.timeout, f(conn)).await {
            Ok(Ok(value)) => {
                permit.success();
                Ok(value)
            }
            Ok(Err(e)) => {
                // An error about this request (a script error on a malformed
                // value, a key of another type) says nothing about Redis's
                // health: only errors of the connection or the server's state
                // count toward opening the breaker.
                if is_outage(&e) {
                    permit.failure();
                } else {
                    permit.ignore();
                }
                i.errors.fetch_add(1, Ordering::Relaxed);
                Err(Unavailable::Failed {
                    message: e.to_string(),
                })
            }
            Err(_elapsed) => {
                permit.failure();
                i.timeouts.fetch_add(1, Ordering::Relaxed);
                // A connection that stopped answering without closing (a
                // failover, lost NAT state) is never noticed by the
                // connection manager, which reconnects on errors only: TCP
                // would take minutes to give up. The next call connects
                // afresh (once per generation, however many calls time out).
                self.reconnect(generation);
                Err(Unavailable::TimedOut { after: i.timeout })
            }
        }
    }
}

impl RedisBackend {
    /// Replaces the shared connection of `generation` with a new, lazy one.
    fn reconnect(&self, generation: u64) {
        let i = &*self.inner;
        let mut conn = crate::lock(&i.conn);
        if conn.0 != generation {
            return;
        }
        if let Ok(fresh) =
            ConnectionManager::new_lazy_with_config(i.client.clone(), manager_config(i.timeout))
        {
            *conn = (generation + 1, fresh);
            i.reconnects.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("replica_id", &self.inner.replica_id)
            .field("call_timeout", &self.inner.timeout)
            .field("breaker", &self.inner.breaker.state())
            .finish_non_exhaustive()
    }
}

/// Whether `e` says Redis (or the way to it) is unavailable, rather than that
/// this one request was wrong.
fn is_outage(e: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    e.is_io_error()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_unrecoverable_error()
        || matches!(
            e.kind(),
            ErrorKind::AuthenticationFailed
                | ErrorKind::Server(
                    ServerErrorKind::BusyLoading
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::TryAgain
                        | ServerErrorKind::ClusterDown
                        | ServerErrorKind::ReadOnly
                )
        )
}

/// The connection manager's own retries are kept short: our time-out bounds
/// every call, and our breaker decides when Redis is worth asking again.
fn manager_config(timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        // Every call is bounded by our own time-out (one timer, not two).
        .set_response_timeout(None)
        .set_connection_timeout(Some(timeout.max(Duration::from_millis(100))))
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(5))
        .set_max_delay(Duration::from_millis(50))
}

/// The process id and 32 random bits: unique across replicas and restarts.
fn default_replica_id() -> String {
    let rng = heijunka_core::rng::SplitMix64::from_entropy();
    format!("{}-{:08x}", std::process::id(), rng.next_u64() as u32)
}
