//! A GCRA per client key, with a bounded key set.

use std::fmt;
use std::hash::Hash;

use dashmap::DashMap;
use heijunka_core::sync::atomic::{AtomicU64, Ordering};
use heijunka_core::{Clock, ConfigError, validate};

use super::RateLimitError;
use super::gcra::Params;

/// What a [`KeyedRateLimiter`] does with a new key when its key budget is full and
/// no key is idle.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum OverflowPolicy {
    /// Refuse the new key with [`RateLimitError::KeyBudgetExhausted`] (the default:
    /// a flood of new client ids cannot grow memory or steal from known clients).
    #[default]
    Reject,
    /// Let every key beyond the budget share one overflow bucket with the same
    /// rate and burst: unknown clients are served, collectively limited.
    SharedBucket,
}

/// Per-client rate limits: one GCRA state (one `AtomicU64`) per key in a sharded
/// concurrent map ([`dashmap`]), with at most `max_keys` keys.
///
/// A key whose bucket is full again (its theoretical arrival time has passed) is
/// *idle*: dropping it loses nothing, since a fresh bucket behaves identically.
/// [`retain_recent`](Self::retain_recent) drops idle keys, and a new key arriving at
/// the budget triggers it before the [`OverflowPolicy`] applies.
///
/// ```
/// use heijunka_backpressure::{KeyedRateLimiter, OverflowPolicy};
/// use heijunka_core::ManualClock;
///
/// let clock = ManualClock::new();
/// let limiter = KeyedRateLimiter::builder(1.0)
///     .burst(2)
///     .max_keys(1000)
///     .overflow(OverflowPolicy::Reject)
///     .clock(clock.clock())
///     .build()?;
/// assert!(limiter.check_key(&"alice").is_ok());
/// assert!(limiter.check_key(&"alice").is_ok());
/// assert!(limiter.check_key(&"alice").is_err());
/// assert!(limiter.check_key(&"bob").is_ok(), "bob has his own bucket");
/// # Ok::<(), heijunka_core::ConfigError>(())
/// ```
pub struct KeyedRateLimiter<K: Hash + Eq> {
    map: DashMap<K, AtomicU64>,
    overflow_bucket: AtomicU64,
    params: Params,
    max_keys: usize,
    policy: OverflowPolicy,
    clock: Clock,
}

/// Builds a [`KeyedRateLimiter`].
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until `build()`"]
pub struct KeyedRateLimiterBuilder {
    per_second: f64,
    burst: u32,
    max_keys: usize,
    policy: OverflowPolicy,
    clock: Clock,
}

/// The default key budget.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

impl KeyedRateLimiterBuilder {
    /// Units each key may pass at once. Default 1.
    pub fn burst(mut self, burst: u32) -> Self {
        self.burst = burst;
        self
    }

    /// The most keys held at once. Default 100,000.
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys;
        self
    }

    /// What happens to new keys beyond the budget. Default [`OverflowPolicy::Reject`].
    pub fn overflow(mut self, policy: OverflowPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The clock to read. Default: the system clock.
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for a rate that is not a finite number above zero, a burst
    /// of zero, or `max_keys` of zero.
    pub fn build<K: Hash + Eq>(self) -> Result<KeyedRateLimiter<K>, ConfigError> {
        validate::at_least("max_keys", self.max_keys, 1)?;
        Ok(KeyedRateLimiter {
            map: DashMap::new(),
            overflow_bucket: AtomicU64::new(0),
            params: Params::new(self.per_second, self.burst)?,
            max_keys: self.max_keys,
            policy: self.policy,
            clock: self.clock,
        })
    }
}

impl KeyedRateLimiter<()> {
    /// A builder: `per_second` units per second for each key. The key type is
    /// chosen by [`build`](KeyedRateLimiterBuilder::build) (usually inferred).
    pub fn builder(per_second: f64) -> KeyedRateLimiterBuilder {
        KeyedRateLimiterBuilder {
            per_second,
            burst: 1,
            max_keys: DEFAULT_MAX_KEYS,
            policy: OverflowPolicy::default(),
            clock: Clock::system(),
        }
    }
}

impl<K: Hash + Eq> KeyedRateLimiter<K> {
    /// Admits one unit for `key`.
    ///
    /// # Errors
    ///
    /// As [`check_key_n`](Self::check_key_n).
    #[inline]
    pub fn check_key(&self, key: &K) -> Result<(), RateLimitError>
    where
        K: Clone,
    {
        self.check_key_n(key, 1)
    }

    /// Admits `n` units for `key`. The known-key path is a shard read lock, a hash
    /// lookup and one compare-and-swap; a new key takes the shard's write lock once.
    ///
    /// # Errors
    ///
    /// [`RateLimitError::RateLimited`], [`RateLimitError::InsufficientCapacity`],
    /// or [`RateLimitError::KeyBudgetExhausted`] for a new key under
    /// [`OverflowPolicy::Reject`].
    pub fn check_key_n(&self, key: &K, n: u32) -> Result<(), RateLimitError>
    where
        K: Clone,
    {
        let now = self.clock.now().as_nanos();
        if let Some(state) = self.map.get(key) {
            return self.params.check(&state, now, n);
        }
        if self.map.len() >= self.max_keys {
            self.retain_recent();
            if self.map.len() >= self.max_keys {
                return match self.policy {
                    OverflowPolicy::Reject => Err(RateLimitError::KeyBudgetExhausted {
                        max_keys: self.max_keys,
                    }),
                    OverflowPolicy::SharedBucket => {
                        self.params.check(&self.overflow_bucket, now, n)
                    }
                };
            }
        }
        let state = self
            .map
            .entry(key.clone())
            .or_insert_with(|| AtomicU64::new(0))
            .downgrade();
        self.params.check(&state, now, n)
    }

    /// Drops every idle key (one whose bucket is full again), keeping the ones that
    /// still remember recent traffic. Exact: an idle key behaves like a new one.
    pub fn retain_recent(&self) {
        let now = self.clock.now().as_nanos();
        // Relaxed: reading each key's one word of state.
        self.map.retain(|_, tat| tat.load(Ordering::Relaxed) > now);
    }

    /// Keys held now.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The clock the limiter reads.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }
}

impl<K: Hash + Eq> fmt::Debug for KeyedRateLimiter<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedRateLimiter")
            .field("keys", &self.map.len())
            .field("max_keys", &self.max_keys)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}
