//! Limits shared across replicas through Redis.
//!
//! A service behind a load balancer runs several replicas; with in-process limits,
//! three replicas allow three times the configured rate, and an outage seen by one
//! replica's breaker is learnt separately by each. This crate keeps the state of
//! heijunka's primitives in the Redis a fleet already runs:
//!
//! - [`RedisRateLimiter`]: a keyed GCRA rate limit decided atomically in Redis
//!   (a Lua script called by SHA, on Redis's clock), with the in-process
//!   [`Gcra`](heijunka_backpressure::Gcra)'s semantics, a local refusal cache and
//!   optional [token leasing](TokenLeasing).
//! - [`RedisConcurrencyLimit`]: permits held as leases in a sorted set, refreshed
//!   while held, so a crashed replica's permits come back after the lease time.
//! - [`SharedBreaker`]: when one replica's breaker opens, the others open too
//!   (Redis pub/sub), each still probing on its own schedule.
//! - [`stream`] (feature `bus`): a topic of the event bus published to a Redis
//!   Stream, and a stream consumed into a topic through a consumer group, with
//!   the bus's backpressure.
//!
//! Every primitive goes through one [`RedisBackend`]: a time-out per call, a
//! circuit breaker around Redis itself, and a [`FailurePolicy`] per primitive
//! (fail open to a local limit, or fail closed), so Redis being down, slow or
//! erroring never takes the service down.
//!
//! [`testing::RedisServer`] (feature `test-util`) starts a private
//! `redis-server` for tests.

mod backend;
mod breaker;
mod concurrency;
mod policy;
mod rate;
mod scripts;
#[cfg(feature = "bus")]
pub mod stream;
#[cfg(feature = "test-util")]
pub mod testing;

pub use crate::backend::{
    BackendStats, DEFAULT_BREAKER_WAIT, DEFAULT_CALL_TIMEOUT, DEFAULT_FAILURES_TO_OPEN,
    RedisBackend, RedisBackendBuilder, Unavailable,
};
pub use crate::breaker::{SharedBreaker, SharedBreakerStats, SharedOpen};
pub use crate::concurrency::{
    ConcurrencyStats, DEFAULT_LEASE, LeaseError, RedisConcurrencyLimit,
    RedisConcurrencyLimitBuilder, RedisPermit,
};
pub use crate::policy::FailurePolicy;
/// Locks `m`, taking a poisoned lock as it is (every lock here guards plain
/// data that a panic cannot leave half-written).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub use crate::rate::{
    DEFAULT_MAX_CACHED_KEYS, MAX_TOLERANCE, RateStats, RedisLimitError, RedisRateLimiter,
    RedisRateLimiterBuilder, TokenLeasing,
};
