//! [`RedisConcurrencyLimit`]: a concurrency limit shared by every replica, its
//! permits held as leases in Redis.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use heijunka_backpressure::{ConcurrencyLimit, OwnedPermit};
use heijunka_core::{ConfigError, Rejection, validate};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::backend::{RedisBackend, Unavailable};
use crate::lock;
use crate::policy::FailurePolicy;
use crate::scripts;

/// The default lease: a crashed replica's permits come back this long after its
/// last refresh. Held permits are refreshed every third of it.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);

/// How often a waiting [`acquire_timeout`](RedisConcurrencyLimit::acquire_timeout)
/// asks Redis again, at most (sooner when the earliest lease ends sooner).
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Holder ids per `ZREM` (release) or per refresh script call.
const RELEASE_BATCH: usize = 256;

/// Releases kept for a retry while Redis does not take them, at most (the
/// oldest go first: their leases expire anyway).
const MAX_UNSENT: usize = 10_000;

/// Why a permit was not granted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LeaseError {
    /// Every permit is held (across the fleet, or by the local fail-open limit).
    #[error("all {limit} permits are held; the earliest lease ends in {retry_after:?}")]
    AtCapacity {
        /// The limit (the local one while failing open).
        limit: u32,
        /// When the earliest lease ends, where known: a holder that releases
        /// sooner frees its permit sooner.
        retry_after: Option<Duration>,
    },
    /// [`acquire_timeout`](RedisConcurrencyLimit::acquire_timeout) waited its
    /// whole time-out.
    #[error("no permit within {after:?}")]
    TimedOut {
        /// The time-out.
        after: Duration,
    },
    /// Redis did not answer and the policy is to fail closed.
    #[error("refused while redis is unavailable (fail closed): {0}")]
    Unavailable(Unavailable),
}

impl LeaseError {
    /// The shared rejection reason.
    pub fn reason(&self) -> Rejection {
        match self {
            Self::AtCapacity { limit, .. } => Rejection::AtCapacity {
                limit: u64::from(*limit),
            },
            Self::TimedOut { after } => Rejection::TimedOut { after: *after },
            Self::Unavailable(u) => Rejection::CircuitOpen {
                retry_after: u.retry_after(),
            },
        }
    }
}

/// A distributed concurrency limit's figures.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ConcurrencyStats {
    /// The limit's name.
    pub name: String,
    /// The limit across the fleet.
    pub limit: u32,
    /// Permits this replica holds in Redis now.
    pub held: u64,
    /// Permits this replica holds from the fail-open local limit now.
    pub held_locally: u64,
    /// Permits granted (Redis and local).
    pub acquired: u64,
    /// Refusals (at capacity, timed out, unavailable).
    pub refused: u64,
    /// Leases found expired at a refresh: the permit was held past its lease
    /// while Redis could not be reached, and another replica may hold it now.
    pub leases_lost: u64,
    /// Releases sent to Redis.
    pub released: u64,
    /// Refresh rounds that reached Redis.
    pub refreshes: u64,
}

#[derive(Default)]
struct Counters {
    acquired: AtomicU64,
    refused: AtomicU64,
    leases_lost: AtomicU64,
    released: AtomicU64,
    refreshes: AtomicU64,
    held_locally: AtomicU64,
}

/// A concurrency limit shared by every replica: each permit is a lease in a
/// Redis sorted set (member: a holder id, score: the lease's end on Redis's
/// clock). Held permits are refreshed in the background every third of the
/// lease, so a replica that crashes gives its permits back within one lease;
/// dropping a permit releases it asynchronously (never blocking the drop).
///
/// ```no_run
/// use heijunka_redis::{RedisBackend, RedisConcurrencyLimit};
/// use std::time::Duration;
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let redis = RedisBackend::new("redis://127.0.0.1:6379/")?;
/// // 50 calls to the payment provider at once, across the fleet.
/// let limit = RedisConcurrencyLimit::builder(redis, 50).name("payments").build()?;
/// let permit = limit.acquire_timeout(Duration::from_millis(100)).await?;
/// // ... call the provider ...
/// drop(permit); // released in the background
/// # Ok(())
/// # }
/// ```
///
/// While Redis does not answer, the [`FailurePolicy`] decides: a local limit of
/// `limit / expected_replicas` (default), or refusals.
#[derive(Clone)]
pub struct RedisConcurrencyLimit {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    limit: u32,
    policy: FailurePolicy,
    fallback: ConcurrencyLimit,
    next_id: AtomicU64,
    /// Random, per limit: part of every holder id.
    nonce: u32,
    /// To the background task; it ends when this is dropped (with the limit
    /// and its last permit).
    releases: mpsc::UnboundedSender<String>,
}

/// What the background task needs, kept alive by it until it ends.
struct Shared {
    backend: RedisBackend,
    name: String,
    key: String,
    lease: Duration,
    /// Leases this replica holds: id → (member, lost flag).
    held: Mutex<HashMap<u64, (String, Arc<AtomicBool>)>>,
    counters: Counters,
}

/// Builds a [`RedisConcurrencyLimit`].
#[derive(Clone, Debug)]
#[must_use]
pub struct RedisConcurrencyLimitBuilder {
    backend: RedisBackend,
    limit: u32,
    name: String,
    lease: Duration,
    policy: FailurePolicy,
}

impl RedisConcurrencyLimitBuilder {
    /// The limit's name: its Redis key is `heijunka:limit:<name>`. Default
    /// `default`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The lease (default [`DEFAULT_LEASE`], at least 30 ms and three of the
    /// backend's call time-outs): how long a crashed
    /// holder's permit stays taken. Shorter returns permits sooner and refreshes
    /// more often (every third of it).
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// What to do while Redis does not answer.
    pub fn failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Builds the limit and starts its background task (refreshes and
    /// releases), which ends when the limit and its last permit are dropped.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the field: `limit` of zero, `lease` under
    /// 30 ms, an empty `name`, `expected_replicas` of zero.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime (the background task needs one).
    pub fn build(self) -> Result<RedisConcurrencyLimit, ConfigError> {
        validate::at_least("limit", self.limit, 1)?;
        let floor = (self.backend.call_timeout() * 3).max(Duration::from_millis(30));
        if self.lease < floor {
            return Err(ConfigError::new(
                "lease",
                self.lease,
                format!(
                    "must be at least 30ms and three call time-outs ({floor:?}): it is refreshed every third of it"
                ),
            ));
        }
        if self.name.is_empty() {
            return Err(ConfigError::new("name", &self.name, "must not be empty"));
        }
        let policy = self.policy.validate()?;
        let local = (self.limit / policy.replicas()).max(1);
        let fallback = ConcurrencyLimit::named(local, &format!("{} (redis fallback)", self.name))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            key: format!("heijunka:limit:{}", self.name),
            name: self.name,
            backend: self.backend,
            lease: self.lease,
            held: Mutex::new(HashMap::new()),
            counters: Counters::default(),
        });
        tokio::spawn(background(Arc::clone(&shared), rx));
        Ok(RedisConcurrencyLimit {
            inner: Arc::new(Inner {
                shared,
                limit: self.limit,
                policy,
                fallback,
                next_id: AtomicU64::new(0),
                nonce: heijunka_core::rng::SplitMix64::from_entropy().next_u64() as u32,
                releases: tx,
            }),
        })
    }
}

impl RedisConcurrencyLimit {
    /// A builder for `limit` permits across every replica using `backend` and
    /// the same [name](RedisConcurrencyLimitBuilder::name).
    pub fn builder(backend: RedisBackend, limit: u32) -> RedisConcurrencyLimitBuilder {
        RedisConcurrencyLimitBuilder {
            backend,
            limit,
            name: "default".to_owned(),
            lease: DEFAULT_LEASE,
            policy: FailurePolicy::default(),
        }
    }

    /// The limit across the fleet.
    pub fn limit(&self) -> u32 {
        self.inner.limit
    }

    /// The lease.
    pub fn lease(&self) -> Duration {
        self.inner.shared.lease
    }

    /// The limit's name.
    pub fn name(&self) -> &str {
        &self.inner.shared.name
    }

    /// Takes a permit if one is free across the fleet, in one round trip.
    ///
    /// # Errors
    ///
    /// [`LeaseError::AtCapacity`], or [`LeaseError::Unavailable`] when Redis
    /// does not answer and the policy is to fail closed (failing open, the
    /// local limit's answer).
    ///
    /// # Cancel safety
    ///
    /// Dropped while the round trip is in flight, the lease it may have taken
    /// is released in the background (a holder id is chosen before the call),
    /// so no permit is left held by nobody for longer than that release takes.
    pub async fn try_acquire(&self) -> Result<RedisPermit, LeaseError> {
        let r = self.attempt().await;
        let c = &self.inner.shared.counters;
        match &r {
            Ok(_) => c.acquired.fetch_add(1, Ordering::Relaxed),
            Err(_) => c.refused.fetch_add(1, Ordering::Relaxed),
        };
        r
    }

    /// Takes a permit without a round trip, for callers that cannot wait (a
    /// synchronous admission path): as if Redis were unavailable, a permit of
    /// the failure policy's local limit, or [`LeaseError::Unavailable`] when
    /// failing closed.
    ///
    /// # Errors
    ///
    /// [`LeaseError::AtCapacity`] (the local limit) or
    /// [`LeaseError::Unavailable`].
    pub fn try_acquire_local(&self) -> Result<RedisPermit, LeaseError> {
        let r = self.degraded(Unavailable::Failed {
            message: "decided without a round trip".to_owned(),
        });
        let c = &self.inner.shared.counters;
        match &r {
            Ok(_) => c.acquired.fetch_add(1, Ordering::Relaxed),
            Err(_) => c.refused.fetch_add(1, Ordering::Relaxed),
        };
        r
    }

    /// Waits up to `timeout` for a permit, asking Redis again when the earliest
    /// lease ends and at least every 20 ms (a release elsewhere is seen within
    /// that).
    ///
    /// # Errors
    ///
    /// [`LeaseError::TimedOut`], or [`LeaseError::Unavailable`] (fail closed)
    /// as it comes.
    ///
    /// # Cancel safety
    ///
    /// As [`try_acquire`](Self::try_acquire): a future dropped while it waits
    /// holds nothing, and one dropped during a round trip releases what that
    /// round trip may have taken.
    pub async fn acquire_timeout(&self, timeout: Duration) -> Result<RedisPermit, LeaseError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.attempt().await {
                Ok(p) => {
                    self.inner
                        .shared
                        .counters
                        .acquired
                        .fetch_add(1, Ordering::Relaxed);
                    return Ok(p);
                }
                Err(LeaseError::AtCapacity { retry_after, .. }) => {
                    let now = tokio::time::Instant::now();
                    if now >= deadline {
                        self.inner
                            .shared
                            .counters
                            .refused
                            .fetch_add(1, Ordering::Relaxed);
                        return Err(LeaseError::TimedOut { after: timeout });
                    }
                    let pause = retry_after.map_or(POLL_INTERVAL, |r| r.min(POLL_INTERVAL));
                    tokio::time::sleep_until((now + pause).min(deadline)).await;
                }
                Err(e) => {
                    self.inner
                        .shared
                        .counters
                        .refused
                        .fetch_add(1, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
    }

    async fn attempt(&self) -> Result<RedisPermit, LeaseError> {
        let i = &*self.inner;
        let s = &*i.shared;
        let id = i.next_id.fetch_add(1, Ordering::Relaxed);
        // The per-limit nonce keeps two replicas given one id apart.
        let member = format!("{}:{:08x}:{id}", s.backend.replica_id(), i.nonce);
        // Released on drop unless the round trip settles the member's fate.
        let mut pending = Pending {
            inner: &self.inner,
            member: Some(member.clone()),
        };
        let key = s.key.clone();
        let (limit, lease_ms) = (i.limit, millis(s.lease));
        let m = member.clone();
        let reply = s
            .backend
            .run(|mut conn| async move {
                scripts::LEASE_ACQUIRE
                    .key(key)
                    .arg(limit)
                    .arg(lease_ms)
                    .arg(m)
                    .invoke_async::<Vec<i64>>(&mut conn)
                    .await
            })
            .await;
        match reply {
            Ok(r) if r.len() == 3 && r[0] == 1 => {
                pending.member = None;
                let lost = Arc::new(AtomicBool::new(false));
                lock(&s.held).insert(id, (member, Arc::clone(&lost)));
                Ok(RedisPermit {
                    inner: Arc::clone(&self.inner),
                    kind: Kind::Remote { id, lost },
                })
            }
            Ok(r) if r.len() == 3 => {
                // Refused: the script added nothing.
                pending.member = None;
                Err(LeaseError::AtCapacity {
                    limit,
                    retry_after: u64::try_from(r[2]).ok().map(Duration::from_millis),
                })
            }
            // Unknown outcome (an odd reply, a time-out, an error): the member
            // may be in the set, and `pending` releases it.
            Ok(r) => self.degraded(Unavailable::Failed {
                message: format!("the lease script answered {r:?}"),
            }),
            Err(cause) => {
                if matches!(cause, Unavailable::BreakerOpen { .. }) {
                    // Nothing was sent: nothing to release.
                    pending.member = None;
                }
                self.degraded(cause)
            }
        }
    }

    fn degraded(&self, cause: Unavailable) -> Result<RedisPermit, LeaseError> {
        let i = &*self.inner;
        match i.policy {
            FailurePolicy::FailOpen { .. } => match i.fallback.try_acquire_owned() {
                Ok(p) => {
                    i.shared
                        .counters
                        .held_locally
                        .fetch_add(1, Ordering::Relaxed);
                    Ok(RedisPermit {
                        inner: Arc::clone(&self.inner),
                        kind: Kind::Local(p),
                    })
                }
                Err(_) => Err(LeaseError::AtCapacity {
                    limit: i.fallback.limit(),
                    retry_after: None,
                }),
            },
            FailurePolicy::FailClosed => Err(LeaseError::Unavailable(cause)),
        }
    }

    /// The limit's figures.
    pub fn stats(&self) -> ConcurrencyStats {
        let i = &*self.inner;
        let c = &i.shared.counters;
        ConcurrencyStats {
            name: i.shared.name.clone(),
            limit: i.limit,
            held: lock(&i.shared.held).len() as u64,
            held_locally: c.held_locally.load(Ordering::Relaxed),
            acquired: c.acquired.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
            leases_lost: c.leases_lost.load(Ordering::Relaxed),
            released: c.released.load(Ordering::Relaxed),
            refreshes: c.refreshes.load(Ordering::Relaxed),
        }
    }
}

impl std::fmt::Debug for RedisConcurrencyLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConcurrencyLimit")
            .field("name", &self.inner.shared.name)
            .field("limit", &self.inner.limit)
            .field("lease", &self.inner.shared.lease)
            .field("policy", &self.inner.policy)
            .finish_non_exhaustive()
    }
}

/// A holder id whose lease's fate is unknown until the round trip answers;
/// released on drop unless settled.
struct Pending<'a> {
    inner: &'a Arc<Inner>,
    member: Option<String>,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let Some(member) = self.member.take() {
            // Unbounded: never blocks. Fails only after the background task
            // ended, when the lease expires on its own.
            let _ = self.inner.releases.send(member);
        }
    }
}

/// A permit of a [`RedisConcurrencyLimit`]: a lease in Redis (refreshed in the
/// background while held), or, while Redis is unavailable and the policy is to
/// fail open, a permit of the local limit. Released when dropped, in the
/// background.
pub struct RedisPermit {
    inner: Arc<Inner>,
    kind: Kind,
}

enum Kind {
    Remote { id: u64, lost: Arc<AtomicBool> },
    Local(#[allow(dead_code)] OwnedPermit),
}

impl RedisPermit {
    /// Whether the permit came from the local fail-open limit (Redis was
    /// unavailable when it was taken).
    pub fn is_local(&self) -> bool {
        matches!(self.kind, Kind::Local(_))
    }

    /// Whether the lease was found expired at a refresh: the permit was held
    /// past its lease while Redis could not be reached, and another replica may
    /// have taken it. The work may go on; the fleet may briefly exceed the limit.
    pub fn is_lost(&self) -> bool {
        match &self.kind {
            Kind::Remote { lost, .. } => lost.load(Ordering::Relaxed),
            Kind::Local(_) => false,
        }
    }
}

impl Drop for RedisPermit {
    fn drop(&mut self) {
        match &self.kind {
            Kind::Remote { id, .. } => {
                let removed = lock(&self.inner.shared.held).remove(id);
                if let Some((member, _)) = removed {
                    let _ = self.inner.releases.send(member);
                }
            }
            Kind::Local(_) => {
                self.inner
                    .shared
                    .counters
                    .held_locally
                    .fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

impl std::fmt::Debug for RedisPermit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPermit")
            .field("limit", &self.inner.shared.name)
            .field("local", &self.is_local())
            .field("lost", &self.is_lost())
            .finish()
    }
}

/// Releases (batched `ZREM`) and refreshes (every third of the lease) until
/// the limit and its permits are gone, then sends the last releases.
async fn background(shared: Arc<Shared>, mut releases: mpsc::UnboundedReceiver<String>) {
    let mut refresh = tokio::time::interval(shared.lease / 3);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Releases Redis did not take yet: (member, when first tried).
    let mut unsent: Vec<(String, tokio::time::Instant)> = Vec::new();
    let mut open = true;
    while open {
        tokio::select! {
            got = releases.recv() => match got {
                Some(first) => {
                    let now = tokio::time::Instant::now();
                    unsent.push((first, now));
                    while unsent.len() < RELEASE_BATCH {
                        match releases.try_recv() {
                            Ok(m) => unsent.push((m, now)),
                            Err(_) => break,
                        }
                    }
                }
                None => open = false,
            },
            _ = refresh.tick() => refresh_held(&shared).await,
        }
        if !unsent.is_empty() {
            send_releases(&shared, &mut unsent).await;
        }
    }
}

async fn send_releases(inner: &Shared, unsent: &mut Vec<(String, tokio::time::Instant)>) {
    while !unsent.is_empty() {
        let n = unsent.len().min(RELEASE_BATCH);
        let members: Vec<String> = unsent[..n].iter().map(|(m, _)| m.clone()).collect();
        let key = inner.key.clone();
        let sent = inner
            .backend
            .run(|mut conn| async move {
                redis::cmd("ZREM")
                    .arg(key)
                    .arg(&members)
                    .query_async::<i64>(&mut conn)
                    .await
            })
            .await;
        if sent.is_err() {
            // Kept for the next round, until their leases have expired anyway,
            // and at most `MAX_UNSENT` of them.
            let now = tokio::time::Instant::now();
            unsent.retain(|(_, since)| now.duration_since(*since) < inner.lease);
            let excess = unsent.len().saturating_sub(MAX_UNSENT);
            unsent.drain(..excess);
            return;
        }
        inner
            .counters
            .released
            .fetch_add(n as u64, Ordering::Relaxed);
        unsent.drain(..n);
    }
}

async fn refresh_held(inner: &Shared) {
    let held: Vec<(String, Arc<AtomicBool>)> = lock(&inner.held)
        .values()
        .filter(|(_, lost)| !lost.load(Ordering::Relaxed))
        .cloned()
        .collect();
    if held.is_empty() {
        return;
    }
    for chunk in held.chunks(RELEASE_BATCH) {
        let key = inner.key.clone();
        let lease_ms = millis(inner.lease);
        let members: Vec<&str> = chunk.iter().map(|(m, _)| m.as_str()).collect();
        let lost = inner
            .backend
            .run(|mut conn| async move {
                let mut invocation = scripts::LEASE_REFRESH.key(key);
                invocation.arg(lease_ms);
                for m in members {
                    invocation.arg(m);
                }
                invocation.invoke_async::<Vec<i64>>(&mut conn).await
            })
            .await;
        let Ok(lost) = lost else { return };
        inner.counters.refreshes.fetch_add(1, Ordering::Relaxed);
        for index in lost {
            if let Some((member, flag)) = usize::try_from(index - 1).ok().and_then(|i| chunk.get(i))
            {
                flag.store(true, Ordering::Relaxed);
                inner.counters.leases_lost.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(limit = %inner.name, holder = %member, "a distributed concurrency lease expired while held (redis was unreachable for longer than the lease)");
            }
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}
