//! A GCRA per client key, with a bounded key set.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::time::Duration;

use crossbeam::queue::SegQueue;
use dashmap::DashMap;
use heijunka_core::metrics::Counter;
use heijunka_core::sync::CachePadded;
use heijunka_core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use heijunka_core::{Clock, ConfigError, validate};

use super::RateLimitError;
use super::gcra::Params;

/// What a [`KeyedRateLimiter`] does with a new key when its key budget is full and
/// none of the keys it examined is idle.
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

/// The state of one key's bucket after a check, as rate-limit response headers
/// report it (`RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateLimitState {
    /// Units a full bucket admits at once (the burst).
    pub limit: u32,
    /// Units that would be admitted one after another right now (0 to `limit`).
    pub remaining: u32,
    /// Time until the bucket is full again, `remaining` back at `limit`
    /// ([`Duration::ZERO`] when it is full now).
    pub reset_after: Duration,
}

/// What [`KeyedRateLimiter::check_key_state`] decided, with the bucket's state
/// after the decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
#[must_use = "the request is admitted only if `result` is `Ok`"]
pub struct KeyedDecision {
    /// Admitted (`Ok`), or the refusal as [`KeyedRateLimiter::check_key`] gives it.
    pub result: Result<(), RateLimitError>,
    /// The bucket after the decision: after the admission, or as it was for a
    /// refusal (which takes nothing).
    pub state: RateLimitState,
}

/// Per-client rate limits: one GCRA state (one `AtomicU64`) per key in a sharded
/// concurrent map ([`dashmap`]), with at most `max_keys` keys.
///
/// A key whose bucket is full again (its theoretical arrival time has passed) is
/// *idle*: dropping it loses nothing, since a fresh bucket behaves identically.
///
/// # The key budget
///
/// - **Exact.** A new key first reserves one unit of a key count with a
///   compare-and-swap that never takes it above `max_keys`, then inserts; a
///   reservation that loses the insert race to the same key is given back. So the
///   map never holds more than `max_keys` keys, however many threads bring new keys
///   at once.
/// - **O(1) per request.** Every held key also sits once in an eviction ring (a
///   FIFO of key clones). A new key arriving at the budget examines at most
///   [`EVICTION_PROBES`] keys from the front of the ring: an idle one is removed
///   (its removal and its idleness test happen under the key's shard write lock, so
///   a concurrent check of that key either lands before, making it busy and kept,
///   or after, on a fresh bucket); a busy one goes to the back. No request scans
///   the key set. New keys do slow known ones somewhat: each new key at a full
///   budget takes up to [`EVICTION_PROBES`] shard write locks (plus one for its
///   own insert), and a known key whose shard is write-locked at that moment waits
///   for it; a flood of new keys costs known keys lock contention, bounded per new
///   key, never a scan. The price is also one clone of each key in the ring, and
///   that an idle key may wait up to `max_keys / EVICTION_PROBES` refused new keys
///   to be found; [`retain_recent`](Self::retain_recent) removes every idle key at
///   once.
/// - **Consistent keys.** `K`'s `Hash` and `Eq` must agree, as for any hash map.
///   If they do not, a held key may be lost to lookups; the limiter then gives its
///   unit of the budget back when the eviction probe finds it missing (and logs a
///   `tracing` warning), but the unreachable map entry stays.
/// - **An honest wait.** A refused new key gets
///   [`RateLimitError::KeyBudgetExhausted`] with a retry-after above zero: the time
///   until the soonest of the keys it examined is idle (or the emission interval if
///   it examined none).
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
///
/// The key map hashes with `S`, std's `RandomState` (SipHash, randomly seeded:
/// safe against keys chosen to collide) unless
/// [`build_with_hasher`](KeyedRateLimiterBuilder::build_with_hasher) chooses
/// another, as governor's `dashmap_with_hasher`.
pub struct KeyedRateLimiter<K: Hash + Eq, S = RandomState> {
    map: DashMap<K, AtomicU64, S>,
    /// Every key in `map` exactly once (but transiently, while a probe holds it),
    /// in the order eviction probes them.
    ring: SegQueue<K>,
    /// Keys in `map` plus reservations in flight: never above `max_keys`.
    count: CachePadded<AtomicUsize>,
    overflow_bucket: AtomicU64,
    params: Params,
    max_keys: usize,
    policy: OverflowPolicy,
    clock: Clock,
    /// Refusals (feature `metrics`); touched only on a refusal.
    rejected: Counter,
}

/// Keys a new key examines for idleness when it arrives at a full key budget.
///
/// Two: with one, a budget whose front key is busy would refuse new keys while
/// idle keys wait behind it; two clears at least as many idle keys as new keys
/// arrive whenever half of the held keys are idle, and keeps a refusal at the cost
/// of a few known-key checks (one shard write lock each).
pub const EVICTION_PROBES: usize = 2;

/// Builds a [`KeyedRateLimiter`].
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until `build()`"]
pub struct KeyedRateLimiterBuilder {
    per_second: f64,
    burst: u32,
    max_keys: usize,
    policy: OverflowPolicy,
    clock: Clock,
    name: String,
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

    /// The `name` label of the limiter's metrics (feature `metrics`, see
    /// `docs/metrics.md`). Default `"default"`.
    ///
    /// ```
    /// use heijunka_backpressure::KeyedRateLimiter;
    ///
    /// let per_client = KeyedRateLimiter::builder(10.0)
    ///     .name("per-client")
    ///     .build::<String>()?;
    /// # let _ = per_client;
    /// # Ok::<(), heijunka_core::ConfigError>(())
    /// ```
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for a rate that is not a finite number above zero or is
    /// above 1e9 per second (as [`Gcra`](crate::Gcra)'s), a burst of zero, or
    /// `max_keys` of zero.
    pub fn build<K: Hash + Eq>(self) -> Result<KeyedRateLimiter<K>, ConfigError> {
        self.build_with_hasher(RandomState::new())
    }

    /// Validates and builds a limiter whose key map hashes with `hasher` (as
    /// governor's `dashmap_with_hasher`): a faster hasher for keys an attacker
    /// cannot choose, or a fixed one for reproducible tests.
    ///
    /// ```
    /// use heijunka_backpressure::KeyedRateLimiter;
    /// use std::hash::BuildHasherDefault;
    /// use std::collections::hash_map::DefaultHasher;
    ///
    /// let limiter = KeyedRateLimiter::builder(10.0)
    ///     .build_with_hasher::<u64, _>(BuildHasherDefault::<DefaultHasher>::default())?;
    /// assert!(limiter.check_key(&7).is_ok());
    /// # Ok::<(), heijunka_core::ConfigError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`build`](Self::build).
    pub fn build_with_hasher<K: Hash + Eq, S: BuildHasher + Clone>(
        self,
        hasher: S,
    ) -> Result<KeyedRateLimiter<K, S>, ConfigError> {
        validate::at_least("max_keys", self.max_keys, 1)?;
        Ok(KeyedRateLimiter {
            map: DashMap::with_hasher(hasher),
            ring: SegQueue::new(),
            count: CachePadded::new(AtomicUsize::new(0)),
            overflow_bucket: AtomicU64::new(0),
            params: Params::new(self.per_second, self.burst)?,
            max_keys: self.max_keys,
            policy: self.policy,
            clock: self.clock,
            rejected: crate::metrics::rate_rejected(&self.name),
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
            name: crate::metrics::DEFAULT_NAME.to_owned(),
        }
    }
}

impl<K: Hash + Eq, S: BuildHasher + Clone> KeyedRateLimiter<K, S> {
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
    /// lookup and one compare-and-swap; a new key takes the shard's write lock once,
    /// and at a full budget examines at most [`EVICTION_PROBES`] held keys.
    ///
    /// # Errors
    ///
    /// [`RateLimitError::RateLimited`], [`RateLimitError::InsufficientCapacity`]
    /// (`n` above the burst, before any key is taken), or
    /// [`RateLimitError::KeyBudgetExhausted`] for a new key under
    /// [`OverflowPolicy::Reject`].
    pub fn check_key_n(&self, key: &K, n: u32) -> Result<(), RateLimitError>
    where
        K: Clone,
    {
        let r = self.check_with(key, n, |state, now| self.params.check(state, now, n), Err);
        crate::metrics::count_rate_refusal(&self.rejected, &r);
        r
    }

    /// Admits one unit for `key` and reports the key's bucket as the decision left
    /// it: what the `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`
    /// response headers say. Same decision, same cost as [`check_key`](Self::check_key)
    /// plus one division.
    ///
    /// The state is the key's own bucket; for a key served by the shared overflow
    /// bucket ([`OverflowPolicy::SharedBucket`]) it is that bucket's; for a new key
    /// refused by an exhausted key budget it is `remaining` 0 and `reset_after`
    /// the refusal's retry-after (it holds no bucket).
    ///
    /// ```
    /// use heijunka_backpressure::KeyedRateLimiter;
    /// use heijunka_core::ManualClock;
    /// use std::time::Duration;
    ///
    /// let clock = ManualClock::new();
    /// // One per second, bursts of 3.
    /// let limiter = KeyedRateLimiter::builder(1.0).burst(3).clock(clock.clock()).build()?;
    /// let d = limiter.check_key_state(&"alice");
    /// assert!(d.result.is_ok());
    /// assert_eq!((d.state.limit, d.state.remaining), (3, 2));
    /// assert_eq!(d.state.reset_after, Duration::from_secs(1));
    /// # Ok::<(), heijunka_core::ConfigError>(())
    /// ```
    pub fn check_key_state(&self, key: &K) -> KeyedDecision
    where
        K: Clone,
    {
        let fresh = self.params.state(0, 0);
        let d = self.check_with(
            key,
            1,
            |state, now| self.params.check_state(state, now, 1),
            |e| KeyedDecision {
                result: Err(e),
                state: match e {
                    RateLimitError::KeyBudgetExhausted { retry_after, .. } => RateLimitState {
                        remaining: 0,
                        reset_after: retry_after,
                        ..fresh
                    },
                    // Refused before any bucket was touched (`n` above the burst).
                    _ => fresh,
                },
            },
        );
        crate::metrics::count_rate_refusal(&self.rejected, &d.result);
        d
    }

    /// The keyed decision: `check` applies it to the key's bucket (or the overflow
    /// bucket), `refuse` makes the answer for a refusal that touched no bucket.
    #[inline]
    fn check_with<R>(
        &self,
        key: &K,
        n: u32,
        check: impl Fn(&AtomicU64, u64) -> R,
        refuse: impl FnOnce(RateLimitError) -> R,
    ) -> R
    where
        K: Clone,
    {
        let now = self.clock.now().as_nanos();
        if let Some(state) = self.map.get(key) {
            return check(&state, now);
        }
        if n > self.params.burst {
            // Never possible: refuse before a key is spent on it.
            return refuse(RateLimitError::InsufficientCapacity {
                requested: n,
                capacity: self.params.burst,
            });
        }
        if let Err(retry_after) = self.reserve(now) {
            return match self.policy {
                OverflowPolicy::Reject => refuse(RateLimitError::KeyBudgetExhausted {
                    max_keys: self.max_keys,
                    retry_after,
                }),
                OverflowPolicy::SharedBucket => check(&self.overflow_bucket, now),
            };
        }
        // From here the unit is given back unless the key goes into both the map and
        // the ring, even if the key's own `Clone`, `Hash` or `Eq` panics.
        let reservation = Reservation(self);
        let ring_key = key.clone();
        let mut inserted = false;
        let state = self
            .map
            .entry(key.clone())
            .or_insert_with(|| {
                inserted = true;
                AtomicU64::new(0)
            })
            .downgrade();
        let result = check(&state, now);
        drop(state);
        if inserted {
            // The unit is now the key's; the key joins the ring (after the shard
            // lock is released: no probe can find it before this push).
            self.ring.push(ring_key);
            std::mem::forget(reservation);
        }
        // Otherwise another thread inserted the same key first and holds its own
        // unit: `reservation` gives this one back as it drops.
        result
    }

    /// The units per key at once (the burst).
    pub fn burst(&self) -> u32 {
        self.params.burst
    }

    /// The interval between units at the steady rate, per key.
    pub fn interval(&self) -> Duration {
        Duration::from_nanos(self.params.interval)
    }

    /// Reserves one unit of the key budget, first evicting idle keys from the
    /// front of the ring if the budget is full. On refusal, the time until the
    /// soonest examined key is idle (never zero).
    fn reserve(&self, now: u64) -> Result<(), Duration> {
        if self.try_reserve() {
            return Ok(());
        }
        let mut soonest: Option<u64> = None;
        let mut freed = false;
        for _ in 0..EVICTION_PROBES {
            let Some(key) = self.ring.pop() else { break };
            match self.evict_if_idle(key, now) {
                None => freed = true,
                Some(busy_until) => {
                    soonest = Some(soonest.map_or(busy_until, |s| s.min(busy_until)))
                }
            }
        }
        // One more try after evicting; a thread that took the freed unit first is
        // served instead, which is as fair as the budget needs to be.
        if freed && self.try_reserve() {
            return Ok(());
        }
        // A busy key's TAT is after `now`; with none examined (the ring was drained
        // by concurrent probes), one emission interval is when a bucket next moves.
        let wait = soonest.map_or(self.params.interval, |t| t - now);
        Err(Duration::from_nanos(wait.max(1)))
    }

    /// Takes one unit of the key count if it is below the budget.
    fn try_reserve(&self) -> bool {
        // Relaxed: the count is a bound on one word, made exact by the CAS itself;
        // it publishes nothing (the map's shard locks order the inserts it guards).
        self.count
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                (c < self.max_keys).then_some(c + 1)
            })
            .is_ok()
    }

    /// Gives back one unit of the key count.
    fn release(&self) {
        // Relaxed: as in `try_reserve`.
        self.count.fetch_sub(1, Ordering::Relaxed);
    }

    /// Removes `key` (just popped from the ring) if idle at `now` and gives its unit
    /// back (`None`); otherwise puts it at the back of the ring and returns the TAT
    /// at which it will be idle.
    fn evict_if_idle(&self, key: K, now: u64) -> Option<u64> {
        let mut busy_until = None;
        // The idleness test runs under the shard's write lock, so no check of this
        // key is between the test and the removal.
        let removed = self.map.remove_if(&key, |_, tat| {
            // Relaxed: the shard lock orders this read after every check of the key.
            let tat = tat.load(Ordering::Relaxed);
            if tat <= now {
                true
            } else {
                busy_until = Some(tat);
                false
            }
        });
        if removed.is_some() {
            self.release();
            None
        } else if let Some(busy_until) = busy_until {
            self.ring.push(key);
            Some(busy_until)
        } else {
            // Not in the map. Each held key is in the ring once and only its popper
            // removes it, so this happens only with a key type whose `Hash` and `Eq`
            // disagree (or whose hash changed while held): the map entry, if any, is
            // unreachable. The ring copy held this key's unit of the budget: give it
            // back, or the budget would shrink for good.
            self.release();
            tracing::warn!(
                "KeyedRateLimiter: a held key was not found in its map (its `Hash` and \
                 `Eq` disagree, or its hash changed); its unit of the key budget is \
                 given back"
            );
            None
        }
    }

    /// Drops every idle key (one whose bucket is full again), keeping the ones that
    /// still remember recent traffic. Exact: an idle key behaves like a new one.
    /// Examines every held key once (O(keys)), one shard lock at a time.
    pub fn retain_recent(&self) {
        let now = self.clock.now().as_nanos();
        for _ in 0..self.ring.len() {
            let Some(key) = self.ring.pop() else { break };
            let _ = self.evict_if_idle(key, now);
        }
    }

    /// The state of `key`'s bucket now, taking nothing: what the
    /// `RateLimit-Remaining` header reports (governor's
    /// `StateSnapshot::remaining_burst_capacity`). A key not held gets what
    /// [`check_key`](Self::check_key) would give it: a full bucket while the key
    /// budget has room; at a full budget, the shared overflow bucket's state
    /// ([`OverflowPolicy::SharedBucket`]) or, under [`OverflowPolicy::Reject`],
    /// `remaining` 0 with `reset_after` one emission interval (when a bucket
    /// next moves). Taking nothing, it examines no held key for idleness (that
    /// would evict it), so at a full budget it reports the case where
    /// `check_key` finds no idle key to evict.
    ///
    /// ```
    /// use heijunka_backpressure::KeyedRateLimiter;
    /// use heijunka_core::ManualClock;
    ///
    /// let clock = ManualClock::new();
    /// let limiter = KeyedRateLimiter::builder(1.0).burst(3).clock(clock.clock()).build()?;
    /// limiter.check_key(&"alice").unwrap();
    /// assert_eq!(limiter.state_of(&"alice").remaining, 2);
    /// assert_eq!(limiter.state_of(&"bob").remaining, 3);
    /// # Ok::<(), heijunka_core::ConfigError>(())
    /// ```
    pub fn state_of(&self, key: &K) -> RateLimitState {
        let now = self.clock.now().as_nanos();
        // Relaxed: as in `Params::check`.
        if let Some(tat) = self.map.get(key) {
            return self.params.state(tat.load(Ordering::Relaxed), now);
        }
        // Relaxed: as in `try_reserve`.
        if self.count.load(Ordering::Relaxed) < self.max_keys {
            return self.params.state(0, now);
        }
        match self.policy {
            OverflowPolicy::SharedBucket => {
                // Relaxed: as in `Params::check`.
                self.params
                    .state(self.overflow_bucket.load(Ordering::Relaxed), now)
            }
            OverflowPolicy::Reject => RateLimitState {
                remaining: 0,
                reset_after: Duration::from_nanos(self.params.interval.max(1)),
                ..self.params.state(0, now)
            },
        }
    }

    /// Whether `key` holds a bucket now (governor's state store
    /// `contains_key`).
    pub fn contains_key(&self, key: &K) -> bool {
        self.map.contains_key(key)
    }

    /// Gives the key map's spare memory back after keys were removed (by
    /// [`retain_recent`](Self::retain_recent) or eviction), as governor's
    /// `shrink_to_fit`. Takes each shard's write lock once.
    pub fn shrink_to_fit(&self) {
        self.map.shrink_to_fit();
    }

    /// Keys the key map can hold without reallocating (summed over its shards;
    /// dashmap's `capacity`): at least [`len`](Self::len), and it stays up after
    /// keys are removed until [`shrink_to_fit`](Self::shrink_to_fit). Takes each
    /// shard's read lock once.
    pub fn capacity(&self) -> usize {
        self.map.capacity()
    }

    /// Keys held now, counting one whose insertion is under way: never above
    /// `max_keys`. (A sum of the map's shard sizes is no snapshot while keys come
    /// and go in other shards; this count is the budget itself.)
    pub fn len(&self) -> usize {
        // Relaxed: as in `try_reserve`.
        self.count.load(Ordering::Relaxed)
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The clock the limiter reads.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }
}

/// One unit of a key budget, given back when dropped (see `check_key_n`).
struct Reservation<'a, K: Hash + Eq, S: BuildHasher + Clone>(&'a KeyedRateLimiter<K, S>);

impl<K: Hash + Eq, S: BuildHasher + Clone> Drop for Reservation<'_, K, S> {
    fn drop(&mut self) {
        self.0.release();
    }
}

impl<K: Hash + Eq, S: BuildHasher + Clone> fmt::Debug for KeyedRateLimiter<K, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedRateLimiter")
            .field("keys", &self.len())
            .field("max_keys", &self.max_keys)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    //! `check_key_state` against values worked out by hand from the GCRA rule: with
    //! interval `T` and burst `b`, a check at `now` admits iff
    //! `max(tat, now) + T − now ≤ b·T`, then sets `tat = max(tat, now) + T`;
    //! `remaining = ⌊(b·T − max(tat − now, 0)) / T⌋`, `reset = max(tat − now, 0)`.
    //! Here `T` = 100 ms (10 per second) and `b` = 3 (`b·T` = 300 ms).

    use super::*;
    use heijunka_core::ManualClock;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn limiter(
        clock: &ManualClock,
        max_keys: usize,
        policy: OverflowPolicy,
    ) -> KeyedRateLimiter<&'static str> {
        KeyedRateLimiter::builder(10.0)
            .burst(3)
            .max_keys(max_keys)
            .overflow(policy)
            .clock(clock.clock())
            .build()
            .unwrap()
    }

    fn state(limit: u32, remaining: u32, reset_after: Duration) -> RateLimitState {
        RateLimitState {
            limit,
            remaining,
            reset_after,
        }
    }

    #[test]
    fn a_burst_counts_down_then_refuses_with_the_bucket_unchanged() {
        let clock = ManualClock::new();
        let l = limiter(&clock, 10, OverflowPolicy::Reject);
        // t = 0: tat 0 → 100 → 200 → 300 ms.
        for (remaining, reset) in [(2, 100), (1, 200), (0, 300)] {
            let d = l.check_key_state(&"a");
            assert_eq!(d.result, Ok(()));
            assert_eq!(d.state, state(3, remaining, ms(reset)));
        }
        // tat 300 + T − 0 = 400 > 300: refused, retry after 400 − 300 = 100 ms;
        // the bucket stays at tat 300.
        let d = l.check_key_state(&"a");
        assert_eq!(
            d.result,
            Err(RateLimitError::RateLimited {
                retry_after: ms(100)
            })
        );
        assert_eq!(d.state, state(3, 0, ms(300)));
    }

    #[test]
    fn remaining_rounds_down_between_emissions() {
        let clock = ManualClock::new();
        let l = limiter(&clock, 10, OverflowPolicy::Reject);
        for _ in 0..3 {
            l.check_key_state(&"a").result.unwrap();
        }
        // t = 250: tat 300 → 400; ahead 150 ms; (300 − 150) / 100 = 1.5 → 1.
        clock.advance(ms(250));
        let d = l.check_key_state(&"a");
        assert_eq!(d.result, Ok(()));
        assert_eq!(d.state, state(3, 1, ms(150)));
        // The one remaining: tat 500, ahead 250, (300 − 250) / 100 → 0.
        let d = l.check_key_state(&"a");
        assert_eq!(d.result, Ok(()));
        assert_eq!(d.state, state(3, 0, ms(250)));
        // Then refused: 500 + 100 − (250 + 300) = 50 ms.
        let d = l.check_key_state(&"a");
        assert_eq!(
            d.result,
            Err(RateLimitError::RateLimited {
                retry_after: ms(50)
            })
        );
        assert_eq!(d.state, state(3, 0, ms(250)));
        // t = 1250: tat 500 is past, the bucket is full: as a fresh one.
        clock.advance(ms(1000));
        let d = l.check_key_state(&"a");
        assert_eq!(d.state, state(3, 2, ms(100)));
    }

    #[test]
    fn keys_have_their_own_state() {
        let clock = ManualClock::new();
        let l = limiter(&clock, 10, OverflowPolicy::Reject);
        l.check_key_state(&"a").result.unwrap();
        l.check_key_state(&"a").result.unwrap();
        let d = l.check_key_state(&"b");
        assert_eq!(d.state, state(3, 2, ms(100)));
    }

    #[test]
    fn an_exhausted_key_budget_reports_no_remaining_and_its_wait() {
        let clock = ManualClock::new();
        let l = limiter(&clock, 1, OverflowPolicy::Reject);
        l.check_key_state(&"a").result.unwrap(); // a: tat 100
        // b finds the budget full; a is busy until 100 ms: retry after 100 ms.
        let d = l.check_key_state(&"b");
        assert_eq!(
            d.result,
            Err(RateLimitError::KeyBudgetExhausted {
                max_keys: 1,
                retry_after: ms(100)
            })
        );
        assert_eq!(d.state, state(3, 0, ms(100)));
    }

    #[test]
    fn the_shared_overflow_bucket_reports_its_own_state() {
        let clock = ManualClock::new();
        let l = limiter(&clock, 1, OverflowPolicy::SharedBucket);
        l.check_key_state(&"a").result.unwrap();
        l.check_key_state(&"a").result.unwrap();
        // b and c share the overflow bucket: tat 100, then 200.
        assert_eq!(l.check_key_state(&"b").state, state(3, 2, ms(100)));
        assert_eq!(l.check_key_state(&"c").state, state(3, 1, ms(200)));
    }

    #[test]
    fn check_key_state_decides_as_check_key() {
        // Two limiters on one clock, one driven by each method, same sequence.
        let clock = ManualClock::new();
        let a = limiter(&clock, 2, OverflowPolicy::Reject);
        let b = limiter(&clock, 2, OverflowPolicy::Reject);
        let keys = ["x", "y", "x", "z", "x", "x", "y", "z", "x"];
        for (i, key) in keys.iter().cycle().take(60).enumerate() {
            assert_eq!(a.check_key(key), b.check_key_state(key).result, "step {i}");
            clock.advance(ms(37));
        }
    }
}
