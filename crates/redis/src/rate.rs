//! [`RedisRateLimiter`]: a GCRA rate limit shared by every replica, decided in
//! Redis.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use heijunka_backpressure::{Gcra, KeyedRateLimiter, RateLimitError};
use heijunka_core::{Clock, ConfigError, Instant, Rejection, validate};
use serde::Serialize;

use crate::backend::{RedisBackend, Unavailable};
use crate::lock;
use crate::policy::FailurePolicy;
use crate::scripts;

/// The largest tolerance (`burst × interval`) the Redis limiter takes: Lua
/// computes in doubles, exact below 2^53 nanoseconds (about 104 days).
pub const MAX_TOLERANCE: Duration = Duration::from_nanos(1 << 53);

/// Keys whose local state (a cached refusal, a lease) a limiter keeps at most,
/// by default.
pub const DEFAULT_MAX_CACHED_KEYS: usize = 10_000;

/// Why a distributed limiter did not admit a request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RedisLimitError {
    /// Over the limit, with the same meaning as the in-process limiters'
    /// [`RateLimitError`] (a retry-after, or more asked for than can ever pass).
    #[error(transparent)]
    Limited(#[from] RateLimitError),
    /// Redis did not answer and the [failure policy](FailurePolicy) is
    /// [`FailClosed`](FailurePolicy::FailClosed).
    #[error("refused while redis is unavailable (fail closed): {0}")]
    Unavailable(Unavailable),
}

impl RedisLimitError {
    /// The shared rejection reason: the limit's, or for
    /// [`Unavailable`](Self::Unavailable) [`Rejection::CircuitOpen`] (the
    /// breaker around Redis), with its retry-after where known. `None` where
    /// waiting cannot help.
    pub fn reason(&self) -> Option<Rejection> {
        match self {
            Self::Limited(e) => e.reason(),
            Self::Unavailable(u) => Some(Rejection::CircuitOpen {
                retry_after: u.retry_after(),
            }),
        }
    }

    /// The wait before retrying, where one is known.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Limited(e) => e.retry_after(),
            Self::Unavailable(u) => u.retry_after(),
        }
    }
}

/// Token leasing: a replica takes a batch of tokens from Redis at once and
/// spends them locally.
///
/// A lease takes `floor(available / share)` units, at least the `n` asked for,
/// at most `max_batch`: a replica takes its share of what the bucket holds, so
/// batches shrink as the bucket empties and no replica hoards the last tokens.
/// Tokens not spent within `ttl` are dropped (never spent later), so the
/// admitted count over any span `W` is at most `burst + rate × (W + ttl)`: over
/// `W` the global rate is exceeded by at most `ttl / W` (2.5 % over 10 s with the
/// default 250 ms), and a token taken is never admitted twice.
///
/// ```
/// use heijunka_redis::TokenLeasing;
/// use std::time::Duration;
///
/// // Four replicas, up to 16 tokens per round trip, spent within 100 ms.
/// let leasing = TokenLeasing { max_batch: 16, share: 4, ttl: Duration::from_millis(100) };
/// assert_eq!(TokenLeasing::default().max_batch, 32);
/// # let _ = leasing;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenLeasing {
    /// The most tokens one round trip takes (at least 1). Default 32.
    pub max_batch: u32,
    /// How long leased tokens may be spent. Default 250 ms.
    pub ttl: Duration,
    /// The replicas expected to share the bucket (at least 1). Default 1.
    pub share: u32,
}

impl Default for TokenLeasing {
    fn default() -> Self {
        Self {
            max_batch: 32,
            ttl: Duration::from_millis(250),
            share: 1,
        }
    }
}

/// A rate limiter's figures.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct RateStats {
    /// The limiter's name (its Redis key space).
    pub name: String,
    /// Checks decided (admitted plus refused; a check dropped before its
    /// answer is neither).
    pub checks: u64,
    /// Checks admitted, in all.
    pub admitted: u64,
    /// Checks refused, in all.
    pub refused: u64,
    /// Round trips to Redis that were answered.
    pub round_trips: u64,
    /// Admitted from leased tokens, without a round trip.
    pub admitted_locally: u64,
    /// Refused from a cached refusal, without a round trip (the retry-after
    /// Redis gave had not passed).
    pub refused_locally: u64,
    /// Decided by the fail-open local limiter while Redis was unavailable.
    pub fallback_decisions: u64,
    /// Refused because Redis was unavailable (fail closed).
    pub unavailable: u64,
    /// Leased tokens dropped unspent at the end of their lease.
    pub lease_tokens_expired: u64,
}

#[derive(Default)]
struct Counters {
    admitted: AtomicU64,
    refused: AtomicU64,
    round_trips: AtomicU64,
    admitted_locally: AtomicU64,
    refused_locally: AtomicU64,
    fallback_decisions: AtomicU64,
    unavailable: AtomicU64,
    lease_tokens_expired: AtomicU64,
}

#[derive(Clone, Copy)]
struct Refusal {
    until: Instant,
    n: u32,
}

struct Lease {
    tokens: u32,
    until: Instant,
}

/// A GCRA rate limit shared by every replica: the decision is made atomically
/// in Redis by a Lua script (loaded once, called by SHA) on Redis's own clock,
/// so replicas with skewed clocks agree.
///
/// Semantics are the in-process [`Gcra`]'s: `per_second` units per second,
/// `burst` at once from a full bucket, a refusal carries the exact wait until
/// the same request conforms, and asking for more than the burst at once is
/// [`RateLimitError::InsufficientCapacity`] without a round trip. Keys are
/// independent buckets ([`check_key`](Self::check_key)); a key's Redis state
/// expires when it no longer matters (when its bucket is full again), so idle
/// keys cost nothing.
///
/// Local acceleration: a key just refused is refused locally until the
/// retry-after Redis gave (no round trip), and with [token
/// leasing](RedisRateLimiterBuilder::token_leasing) most admissions are local.
///
/// When Redis does not answer, the [`FailurePolicy`] decides: a local limiter
/// at the rate divided by the expected replicas (default), or refusals.
///
/// ```no_run
/// use heijunka_redis::{RedisBackend, RedisRateLimiter};
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let redis = RedisBackend::new("redis://127.0.0.1:6379/")?;
/// // 100 per second across the fleet, bursts of 10, per client.
/// let limiter = RedisRateLimiter::builder(redis, 100.0).burst(10).name("api").build()?;
/// match limiter.check_key("client-42").await {
///     Ok(()) => { /* serve */ }
///     Err(e) => println!("429, retry after {:?}", e.retry_after()),
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisRateLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    backend: RedisBackend,
    name: String,
    key_prefix: String,
    interval: u64,
    burst: u32,
    tolerance: u64,
    policy: FailurePolicy,
    /// The fail-open limiters: the global bucket's, and the keyed one.
    fallback_global: Gcra,
    fallback: KeyedRateLimiter<String>,
    /// The global bucket's Redis key, made once.
    global_key: String,
    clock: Clock,
    cache_refusals: bool,
    max_cached_keys: usize,
    refusals: DashMap<String, Refusal>,
    global_refusal: Mutex<Option<Refusal>>,
    leasing: Option<TokenLeasing>,
    leases: DashMap<String, Lease>,
    global_lease: Mutex<Option<Lease>>,
    counters: Counters,
}

/// Builds a [`RedisRateLimiter`].
#[derive(Clone, Debug)]
#[must_use]
pub struct RedisRateLimiterBuilder {
    backend: RedisBackend,
    per_second: f64,
    burst: u32,
    name: String,
    policy: FailurePolicy,
    leasing: Option<TokenLeasing>,
    cache_refusals: bool,
    max_cached_keys: usize,
    clock: Clock,
}

impl RedisRateLimiterBuilder {
    /// Units admissible at once from a full bucket. Default 1, as [`Gcra`].
    pub fn burst(mut self, burst: u32) -> Self {
        self.burst = burst;
        self
    }

    /// The limiter's name: its Redis keys are `heijunka:rate:<name>:k:<key>`
    /// (and `heijunka:rate:<name>:*` for the global bucket), so replicas
    /// sharing a limit use the same name. Default `default`; no `:`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// What to do while Redis does not answer (default
    /// [`FailurePolicy::default`]).
    pub fn failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Turns on [token leasing](TokenLeasing).
    pub fn token_leasing(mut self, leasing: TokenLeasing) -> Self {
        self.leasing = Some(leasing);
        self
    }

    /// Whether a refused key is refused locally until its retry-after (default
    /// true).
    pub fn cache_refusals(mut self, on: bool) -> Self {
        self.cache_refusals = on;
        self
    }

    /// Keys whose local state (cached refusal, lease) is kept at most (default
    /// [`DEFAULT_MAX_CACHED_KEYS`]); beyond it a key simply goes to Redis.
    pub fn max_cached_keys(mut self, keys: usize) -> Self {
        self.max_cached_keys = keys;
        self
    }

    /// The clock of the local state (cached refusals, leases, the fail-open
    /// limiter). The limit itself runs on Redis's clock.
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Builds the limiter.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the field: `rate` or `burst` as [`Gcra`]
    /// refuses them, `burst` whose tolerance (`burst / rate`) reaches
    /// [`MAX_TOLERANCE`], an empty `name`, `expected_replicas`,
    /// `max_batch` or `share` of zero, a zero lease `ttl`.
    pub fn build(self) -> Result<RedisRateLimiter, ConfigError> {
        let gcra = Gcra::builder(self.per_second).burst(self.burst).build()?;
        let interval = u64::try_from(gcra.interval().as_nanos()).unwrap_or(u64::MAX);
        let tolerance = interval.saturating_mul(u64::from(self.burst));
        if tolerance >= 1 << 53 {
            return Err(ConfigError::new(
                "burst",
                self.burst,
                format!(
                    "burst / rate must be under {MAX_TOLERANCE:?} for the Redis limiter (Lua computes in doubles)"
                ),
            ));
        }
        if self.name.is_empty() || self.name.contains(':') {
            return Err(ConfigError::new(
                "name",
                &self.name,
                "must be non-empty and without `:` (it is part of the Redis keys)",
            ));
        }
        let policy = self.policy.validate()?;
        if let Some(l) = self.leasing {
            validate::at_least("max_batch", l.max_batch, 1)?;
            validate::at_least("share", l.share, 1)?;
            validate::non_zero_duration("ttl", l.ttl)?;
        }
        let replicas = policy.replicas();
        let share = self.per_second / f64::from(replicas);
        let share_burst = (self.burst / replicas).max(1);
        let fallback_global = Gcra::builder(share)
            .burst(share_burst)
            .clock(self.clock.clone())
            .name(format!("{} (redis fallback)", self.name))
            .build()?;
        let fallback = KeyedRateLimiter::builder(share)
            .burst(share_burst)
            .max_keys(self.max_cached_keys.max(1))
            .clock(self.clock.clone())
            .name(format!("{} (redis fallback)", self.name))
            .build()?;
        Ok(RedisRateLimiter {
            inner: Arc::new(Inner {
                global_key: format!("heijunka:rate:{}:{GLOBAL_KEY}", self.name),
                fallback_global,
                // `k:` keeps every client key apart from the global bucket.
                key_prefix: format!("heijunka:rate:{}:k:", self.name),
                name: self.name,
                backend: self.backend,
                interval,
                burst: self.burst,
                tolerance,
                policy,
                fallback,
                clock: self.clock,
                cache_refusals: self.cache_refusals,
                max_cached_keys: self.max_cached_keys,
                refusals: DashMap::new(),
                global_refusal: Mutex::new(None),
                leasing: self.leasing,
                leases: DashMap::new(),
                global_lease: Mutex::new(None),
                counters: Counters::default(),
            }),
        })
    }
}

/// The Redis key suffix of the global bucket ([`check`](RedisRateLimiter::check));
/// client keys live under `k:`, so none can reach it.
const GLOBAL_KEY: &str = "*";

/// Which bucket a check is for.
#[derive(Clone, Copy)]
enum Key<'a> {
    /// The limiter's one global bucket.
    Global,
    /// A client's bucket.
    Client(&'a str),
}

impl RedisRateLimiter {
    /// A builder for `per_second` units per second across every replica using
    /// `backend` and the same [name](RedisRateLimiterBuilder::name).
    pub fn builder(backend: RedisBackend, per_second: f64) -> RedisRateLimiterBuilder {
        RedisRateLimiterBuilder {
            backend,
            per_second,
            burst: 1,
            name: "default".to_owned(),
            policy: FailurePolicy::default(),
            leasing: None,
            cache_refusals: true,
            max_cached_keys: DEFAULT_MAX_CACHED_KEYS,
            clock: Clock::system(),
        }
    }

    /// The limiter's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Units admissible at once.
    pub fn burst(&self) -> u32 {
        self.inner.burst
    }

    /// The emission interval (one unit's share of a second), as the in-process
    /// [`Gcra::interval`].
    pub fn interval(&self) -> Duration {
        Duration::from_nanos(self.inner.interval)
    }

    /// The failure policy.
    pub fn failure_policy(&self) -> FailurePolicy {
        self.inner.policy
    }

    /// The backend.
    pub fn backend(&self) -> &RedisBackend {
        &self.inner.backend
    }

    /// Admits one unit of the limiter's one global bucket.
    ///
    /// # Errors
    ///
    /// As [`check_key_n`](Self::check_key_n).
    ///
    /// # Cancel safety
    ///
    /// As [`check_key_n`](Self::check_key_n).
    pub async fn check(&self) -> Result<(), RedisLimitError> {
        self.checked(Key::Global, 1).await
    }

    /// Admits `n` units of the global bucket.
    ///
    /// # Errors
    ///
    /// As [`check_key_n`](Self::check_key_n).
    ///
    /// # Cancel safety
    ///
    /// As [`check_key_n`](Self::check_key_n).
    pub async fn check_n(&self, n: u32) -> Result<(), RedisLimitError> {
        self.checked(Key::Global, n).await
    }

    /// Admits one unit for `key`.
    ///
    /// # Errors
    ///
    /// As [`check_key_n`](Self::check_key_n).
    ///
    /// # Cancel safety
    ///
    /// As [`check_key_n`](Self::check_key_n).
    pub async fn check_key(&self, key: &str) -> Result<(), RedisLimitError> {
        self.check_key_n(key, 1).await
    }

    /// Admits `n` units for `key`, or says how long until they would conform.
    /// `n` of zero always conforms; `n` above the burst never does.
    ///
    /// # Errors
    ///
    /// [`RedisLimitError::Limited`] with [`RateLimitError::RateLimited`] (the
    /// retry-after) or [`RateLimitError::InsufficientCapacity`];
    /// [`RedisLimitError::Unavailable`] when Redis does not answer and the
    /// policy is to fail closed (failing open, the local limiter's answer).
    ///
    /// # Cancel safety
    ///
    /// Dropped before the round trip, nothing was taken. Dropped while the
    /// round trip is in flight, Redis may still admit the units (the script runs
    /// whole or not at all) and nobody uses them: the global bucket loses at most
    /// those `n` units (or the lease), never admits more than its rate. No local
    /// state is left half-changed: leases and cached refusals change only after
    /// the reply.
    pub async fn check_key_n(&self, key: &str, n: u32) -> Result<(), RedisLimitError> {
        self.checked(Key::Client(key), n).await
    }

    /// A decision, counted.
    async fn checked(&self, key: Key<'_>, n: u32) -> Result<(), RedisLimitError> {
        let i = &*self.inner;
        let decided = self.decide(key, n).await;
        let counter = if decided.is_ok() {
            &i.counters.admitted
        } else {
            &i.counters.refused
        };
        counter.fetch_add(1, Ordering::Relaxed);
        decided
    }

    async fn decide(&self, key: Key<'_>, n: u32) -> Result<(), RedisLimitError> {
        if let Some(decided) = self.local(key, n) {
            return decided;
        }
        self.remote(key, n).await
    }

    /// The decision local state makes alone: the burst, a cached refusal, a
    /// lease; `None` when Redis must decide.
    fn local(&self, key: Key<'_>, n: u32) -> Option<Result<(), RedisLimitError>> {
        let i = &*self.inner;
        if n > i.burst {
            return Some(Err(RateLimitError::InsufficientCapacity {
                requested: n,
                capacity: i.burst,
            }
            .into()));
        }
        if n == 0 {
            return Some(Ok(()));
        }
        let now = i.clock.now();
        if i.cache_refusals
            && let Some(r) = self.refusal(key)
            && r.until > now
            && n >= r.n
        {
            i.counters.refused_locally.fetch_add(1, Ordering::Relaxed);
            return Some(Err(RateLimitError::RateLimited {
                retry_after: r.until.saturating_duration_since(now),
            }
            .into()));
        }
        if i.leasing.is_some() {
            let spend = |lease: &mut Lease| {
                if lease.until > now {
                    if lease.tokens >= n {
                        lease.tokens -= n;
                        i.counters.admitted_locally.fetch_add(1, Ordering::Relaxed);
                        return true;
                    }
                } else if lease.tokens > 0 {
                    i.counters
                        .lease_tokens_expired
                        .fetch_add(u64::from(lease.tokens), Ordering::Relaxed);
                    lease.tokens = 0;
                }
                false
            };
            let spent = match key {
                Key::Global => lock(&i.global_lease).as_mut().is_some_and(spend),
                Key::Client(k) => i.leases.get_mut(k).is_some_and(|mut l| spend(&mut l)),
            };
            if spent {
                return Some(Ok(()));
            }
        }
        None
    }

    /// The cached refusal of `key`, if any.
    fn refusal(&self, key: Key<'_>) -> Option<Refusal> {
        let i = &*self.inner;
        match key {
            Key::Global => *lock(&i.global_refusal),
            Key::Client(k) => i.refusals.get(k).map(|r| *r),
        }
    }

    /// The round trip: Redis decides.
    async fn remote(&self, key: Key<'_>, n: u32) -> Result<(), RedisLimitError> {
        let i = &*self.inner;
        let (max_batch, share) = match i.leasing {
            Some(l) => (l.max_batch.max(n), l.share),
            None => (0, 1),
        };
        // A Redis known to be down costs no allocation.
        let permit = match i.backend.permit() {
            Ok(p) => p,
            Err(cause) => return self.degraded(key, n, cause),
        };
        let redis_key = match key {
            Key::Global => i.global_key.clone(),
            Key::Client(k) => format!("{}{k}", i.key_prefix),
        };
        let (interval, tolerance) = (i.interval, i.tolerance);
        let reply = i
            .backend
            .call(permit, |mut conn| async move {
                scripts::GCRA
                    .key(redis_key)
                    .arg(interval)
                    .arg(tolerance)
                    .arg(n)
                    .arg(max_batch)
                    .arg(share)
                    .invoke_async::<Vec<i64>>(&mut conn)
                    .await
            })
            .await;
        let reply = match reply {
            Ok(r) if r.len() == 4 => r,
            Ok(r) => {
                return self.degraded(
                    key,
                    n,
                    Unavailable::Failed {
                        message: format!("the GCRA script answered {r:?}"),
                    },
                );
            }
            Err(cause) => return self.degraded(key, n, cause),
        };
        i.counters.round_trips.fetch_add(1, Ordering::Relaxed);
        let now = i.clock.now();
        if reply[0] == 1 {
            let granted = u32::try_from(reply[1]).unwrap_or(n);
            if let Some(l) = i.leasing
                && granted > n
            {
                self.store_lease(key, granted - n, now, now + l.ttl);
            }
            if i.cache_refusals {
                match key {
                    Key::Global => *lock(&i.global_refusal) = None,
                    Key::Client(k) => {
                        i.refusals.remove(k);
                    }
                }
            }
            Ok(())
        } else {
            let retry_after = Duration::from_nanos(u64::try_from(reply[2]).unwrap_or(1).max(1));
            if i.cache_refusals {
                self.store_refusal(
                    key,
                    Refusal {
                        until: now + retry_after,
                        n,
                    },
                );
            }
            Err(RateLimitError::RateLimited { retry_after }.into())
        }
    }

    /// The failure policy's answer while Redis does not give one.
    fn degraded(&self, key: Key<'_>, n: u32, cause: Unavailable) -> Result<(), RedisLimitError> {
        let i = &*self.inner;
        match i.policy {
            FailurePolicy::FailOpen { .. } => {
                i.counters
                    .fallback_decisions
                    .fetch_add(1, Ordering::Relaxed);
            }
            FailurePolicy::FailClosed => {
                i.counters.unavailable.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.fallback(key, n, cause)
    }

    /// The failure policy's answer, uncounted: the local limiter's (failing
    /// open), or the refusal (failing closed).
    fn fallback(&self, key: Key<'_>, n: u32, cause: Unavailable) -> Result<(), RedisLimitError> {
        let i = &*self.inner;
        match i.policy {
            FailurePolicy::FailOpen { .. } => {
                let decided = if let Key::Client(key) = key {
                    // The keyed store takes a `&String`: one buffer per thread,
                    // so the local path allocates nothing once warm.
                    thread_local!(static KEY: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) });
                    KEY.with(|k| {
                        let mut k = k.borrow_mut();
                        k.clear();
                        k.push_str(key);
                        i.fallback.check_key_n(&k, n)
                    })
                } else {
                    heijunka_backpressure::RateLimiter::check_n(&i.fallback_global, n)
                };
                decided
                    .map_err(|e| match e {
                        // More than the local share's burst (but within the
                        // global one): possible again once Redis answers, so a
                        // wait, not "never".
                        RateLimitError::InsufficientCapacity { .. } => {
                            RateLimitError::RateLimited {
                                retry_after: cause
                                    .retry_after()
                                    .unwrap_or(crate::backend::DEFAULT_BREAKER_WAIT)
                                    .max(Duration::from_nanos(
                                        i.interval.saturating_mul(u64::from(n)),
                                    )),
                            }
                        }
                        other => other,
                    })
                    .map_err(RedisLimitError::Limited)
            }
            FailurePolicy::FailClosed => Err(RedisLimitError::Unavailable(cause)),
        }
    }

    fn store_lease(&self, key: Key<'_>, tokens: u32, now: Instant, until: Instant) {
        let i = &*self.inner;
        let key = match key {
            Key::Global => {
                let mut lease = lock(&i.global_lease);
                if let Some(old) = lease.as_ref().filter(|l| l.until > now) {
                    i.counters
                        .lease_tokens_expired
                        .fetch_add(u64::from(old.tokens), Ordering::Relaxed);
                }
                *lease = Some(Lease { tokens, until });
                return;
            }
            Key::Client(k) => k,
        };
        if let Some(mut lease) = i.leases.get_mut(key) {
            // Fewer than asked for were left (or they had run out): they go, so
            // that every token is spent within `ttl` of being taken.
            if lease.until > now {
                i.counters
                    .lease_tokens_expired
                    .fetch_add(u64::from(lease.tokens), Ordering::Relaxed);
            }
            lease.tokens = tokens;
            lease.until = until;
            return;
        }
        if i.leases.len() >= i.max_cached_keys {
            i.leases.retain(|_, l| l.until > now && l.tokens > 0);
            if i.leases.len() >= i.max_cached_keys {
                return;
            }
        }
        i.leases.insert(key.to_owned(), Lease { tokens, until });
    }

    fn store_refusal(&self, key: Key<'_>, refusal: Refusal) {
        let i = &*self.inner;
        let key = match key {
            Key::Global => {
                *lock(&i.global_refusal) = Some(refusal);
                return;
            }
            Key::Client(k) => k,
        };
        if let Some(mut r) = i.refusals.get_mut(key) {
            *r = refusal;
            return;
        }
        if i.refusals.len() >= i.max_cached_keys {
            let now = i.clock.now();
            i.refusals.retain(|_, r| r.until > now);
            if i.refusals.len() >= i.max_cached_keys {
                return;
            }
        }
        i.refusals.insert(key.to_owned(), refusal);
    }

    /// [`check_key_local_n`](Self::check_key_local_n) of one unit of the
    /// global bucket.
    ///
    /// # Errors
    ///
    /// As [`check_key_n`](Self::check_key_n).
    pub fn check_local(&self) -> Result<(), RedisLimitError> {
        self.decided_locally(Key::Global, 1)
    }

    /// Decides without a round trip, for callers that cannot wait (a
    /// synchronous admission path): from a lease or a cached refusal where
    /// there is one, else as if Redis were unavailable (the failure policy's
    /// local limit, or [`RedisLimitError::Unavailable`] when failing closed).
    ///
    /// # Errors
    ///
    /// As [`check_key_n`](Self::check_key_n).
    pub fn check_key_local_n(&self, key: &str, n: u32) -> Result<(), RedisLimitError> {
        self.decided_locally(Key::Client(key), n)
    }

    fn decided_locally(&self, key: Key<'_>, n: u32) -> Result<(), RedisLimitError> {
        let i = &*self.inner;
        let decided = match self.local(key, n) {
            Some(d) => d,
            None => self.fallback(
                key,
                n,
                Unavailable::Failed {
                    message: "decided without a round trip".to_owned(),
                },
            ),
        };
        let counter = if decided.is_ok() {
            &i.counters.admitted
        } else {
            &i.counters.refused
        };
        counter.fetch_add(1, Ordering::Relaxed);
        decided
    }

    /// Waits until `n` units of the global bucket are admitted, sleeping
    /// (tokio's timer) for each retry-after.
    ///
    /// # Errors
    ///
    /// As [`until_key_ready`](Self::until_key_ready).
    ///
    /// # Cancel safety
    ///
    /// As [`until_key_ready`](Self::until_key_ready).
    pub async fn until_ready(&self, n: u32) -> Result<(), RedisLimitError> {
        self.wait_until_ready(Key::Global, n).await
    }

    /// Waits until `n` units for `key` are admitted, sleeping (tokio's timer)
    /// for each retry-after.
    ///
    /// # Errors
    ///
    /// [`RateLimitError::InsufficientCapacity`] at once; a fail-closed
    /// [`RedisLimitError::Unavailable`] as it comes (waiting on Redis is the
    /// caller's choice).
    ///
    /// # Cancel safety
    ///
    /// As [`check_key_n`](Self::check_key_n): a future dropped while it sleeps
    /// has taken nothing.
    pub async fn until_key_ready(&self, key: &str, n: u32) -> Result<(), RedisLimitError> {
        self.wait_until_ready(Key::Client(key), n).await
    }

    async fn wait_until_ready(&self, key: Key<'_>, n: u32) -> Result<(), RedisLimitError> {
        loop {
            match self.checked(key, n).await {
                Err(RedisLimitError::Limited(RateLimitError::RateLimited { retry_after })) => {
                    tokio::time::sleep(retry_after.max(Duration::from_nanos(1))).await;
                }
                other => return other,
            }
        }
    }

    /// The limiter's figures.
    pub fn stats(&self) -> RateStats {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RateStats {
            name: self.inner.name.clone(),
            checks: get(&c.admitted) + get(&c.refused),
            admitted: get(&c.admitted),
            refused: get(&c.refused),
            round_trips: get(&c.round_trips),
            admitted_locally: get(&c.admitted_locally),
            refused_locally: get(&c.refused_locally),
            fallback_decisions: get(&c.fallback_decisions),
            unavailable: get(&c.unavailable),
            lease_tokens_expired: get(&c.lease_tokens_expired),
        }
    }
}

impl std::fmt::Debug for RedisRateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRateLimiter")
            .field("name", &self.inner.name)
            .field("interval", &Duration::from_nanos(self.inner.interval))
            .field("burst", &self.inner.burst)
            .field("policy", &self.inner.policy)
            .field("leasing", &self.inner.leasing)
            .finish_non_exhaustive()
    }
}
