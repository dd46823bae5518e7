//! A bounded registry of breakers, one per dependency.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;

use heijunka_core::{Clock, ConfigError, validate};

use crate::events::Listener;
use crate::sync::RwLock;
use crate::{
    BreakerConfig, BreakerEvent, BreakerStats, CircuitBreaker, RegistryFull, StateTransition,
};

/// The number of breakers a registry holds unless told otherwise.
pub const DEFAULT_REGISTRY_CAPACITY: usize = 1024;

/// Breakers per dependency key (a host, a service, a route), created on first use
/// from a default configuration or a per-key override, like resilience4j's
/// `CircuitBreakerRegistry`.
///
/// Bounded: once it holds `capacity` breakers, a new key is refused with
/// [`RegistryFull`] (an existing breaker is never evicted: its state is what
/// protects the dependency). Each breaker is named after its key.
///
/// ```
/// use heijunka_breaker::{BreakerConfig, BreakerRegistry, State};
///
/// let default = BreakerConfig::builder().failure_rate_threshold(0.5).build_config()?;
/// let strict = BreakerConfig::builder().consecutive_failure_threshold(1).build_config()?;
/// let registry = BreakerRegistry::builder(default)
///     .config_for("payments".to_string(), strict)
///     .capacity(100)
/// #   .clock(heijunka_core::ManualClock::new())
///     .build()?;
///
/// let payments = registry.get("payments")?;
/// let _ = payments.call(|| Err::<(), _>("declined"));
/// assert_eq!(payments.state(), State::Open);
/// assert_eq!(registry.get("search")?.state(), State::Closed);
/// assert_eq!(registry.get("payments")?.name(), "payments");
/// assert_eq!(registry.len(), 2);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct BreakerRegistry<K> {
    default: BreakerConfig,
    overrides: HashMap<K, BreakerConfig>,
    breakers: RwLock<HashMap<K, CircuitBreaker>>,
    capacity: usize,
    listeners: Vec<Listener>,
}

impl<K> BreakerRegistry<K>
where
    K: Hash + Eq + Clone + fmt::Display,
{
    /// A builder with `default` for every key without an override.
    pub fn builder(default: BreakerConfig) -> RegistryBuilder<K> {
        RegistryBuilder {
            default,
            overrides: HashMap::new(),
            capacity: DEFAULT_REGISTRY_CAPACITY,
            clock: None,
            listeners: Vec::new(),
        }
    }

    /// The breaker for `key`, created if this is the key's first use.
    pub fn get<Q>(&self, key: &Q) -> Result<CircuitBreaker, RegistryFull>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        if let Some(b) = self.read().get(key) {
            return Ok(b.clone());
        }
        let mut breakers = self
            .breakers
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(b) = breakers.get(key) {
            return Ok(b.clone());
        }
        if breakers.len() >= self.capacity {
            return Err(RegistryFull {
                capacity: self.capacity,
            });
        }
        let key: K = key.to_owned();
        let mut config = self
            .overrides
            .get::<K>(&key)
            .unwrap_or(&self.default)
            .clone();
        config.name = key.to_string();
        let breaker = CircuitBreaker::new(config);
        for l in &self.listeners {
            breaker.inner.listeners.add(std::sync::Arc::clone(l));
        }
        breakers.insert(key, breaker.clone());
        Ok(breaker)
    }

    /// The breaker for `key`, if it was created.
    pub fn find<Q>(&self, key: &Q) -> Option<CircuitBreaker>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.read().get(key).cloned()
    }

    /// Removes the breaker for `key` (handles already taken keep working). The next
    /// `get` creates a fresh one.
    pub fn remove<Q>(&self, key: &Q) -> Option<CircuitBreaker>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.breakers
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(key)
    }

    /// The number of breakers.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether no breaker was created yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most breakers it holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Every breaker's stats, sorted by name.
    pub fn stats(&self) -> Vec<BreakerStats> {
        let breakers: Vec<CircuitBreaker> = self.read().values().cloned().collect();
        let mut stats: Vec<BreakerStats> = breakers.iter().map(CircuitBreaker::stats).collect();
        stats.sort_by(|a, b| a.name.cmp(&b.name));
        stats
    }

    fn read(&self) -> impl std::ops::Deref<Target = HashMap<K, CircuitBreaker>> + '_ {
        self.breakers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl<K> fmt::Debug for BreakerRegistry<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerRegistry")
            .field("capacity", &self.capacity)
            .field("overrides", &self.overrides.len())
            .finish_non_exhaustive()
    }
}

/// Builds a [`BreakerRegistry`].
pub struct RegistryBuilder<K> {
    default: BreakerConfig,
    overrides: HashMap<K, BreakerConfig>,
    capacity: usize,
    clock: Option<Clock>,
    listeners: Vec<Listener>,
}

impl<K> RegistryBuilder<K>
where
    K: Hash + Eq + Clone + fmt::Display,
{
    /// Uses `config` for `key` instead of the default.
    pub fn config_for(mut self, key: K, config: BreakerConfig) -> Self {
        self.overrides.insert(key, config);
        self
    }

    /// The most breakers the registry holds (default
    /// [`DEFAULT_REGISTRY_CAPACITY`]).
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    /// One clock for every breaker, replacing the one in each configuration.
    pub fn clock(mut self, clock: impl Into<Clock>) -> Self {
        self.clock = Some(clock.into());
        self
    }

    /// Calls `listener` on every state change of every breaker the registry creates
    /// (see [`CircuitBreaker::subscribe`]); [`StateTransition::breaker`] names the key.
    pub fn on_state_change<F>(mut self, listener: F) -> Self
    where
        F: Fn(&StateTransition) + Send + Sync + 'static,
    {
        self.listeners
            .push(std::sync::Arc::new(move |e: &BreakerEvent| {
                if let BreakerEvent::Transition(t) = e {
                    listener(t);
                }
            }));
        self
    }

    /// Calls `listener` on every event (state changes and resets) of every breaker
    /// the registry creates (see [`CircuitBreaker::subscribe_events`]);
    /// [`BreakerEvent::breaker`] names the key.
    pub fn on_event<F>(mut self, listener: F) -> Self
    where
        F: Fn(&BreakerEvent) + Send + Sync + 'static,
    {
        self.listeners.push(std::sync::Arc::new(listener));
        self
    }

    /// Checks the capacity and builds the registry.
    pub fn build(mut self) -> Result<BreakerRegistry<K>, ConfigError> {
        validate::at_least("capacity", self.capacity, 1)?;
        if let Some(clock) = self.clock {
            self.default.clock = clock.clone();
            for config in self.overrides.values_mut() {
                config.clock = clock.clone();
            }
        }
        Ok(BreakerRegistry {
            default: self.default,
            overrides: self.overrides,
            breakers: RwLock::new(HashMap::new()),
            capacity: self.capacity,
            listeners: self.listeners,
        })
    }
}

impl<K> fmt::Debug for RegistryBuilder<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryBuilder")
            .field("capacity", &self.capacity)
            .field("overrides", &self.overrides.len())
            .finish_non_exhaustive()
    }
}
