//! [`Config::build`]: the live primitives, as a [`Stack`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use heijunka_backpressure::{AdaptiveLimit, Aimd, ConcurrencyLimit, Gcra, Gradient2, Vegas};
use heijunka_breaker::{BreakerConfig, CircuitBreaker, SlidingWindowType};
use heijunka_core::{Clock, ConfigError};
use heijunka_memory::{MemoryGate, MemoryMonitor, MemoryMonitorBuilder, MemoryProbe, Sampler};
use heijunka_pool::{TaskPool, WorkerPool};
use heijunka_shutdown::Shutdown;

use super::error::ConfigErrors;
use super::reload::Live;
use super::{Backend, BreakerSettings, BusConfig, Config, LimitConfig, LimitKind};
use crate::policy::Policy;

/// The live primitives built from a [`Config`] by [`Config::build`].
///
/// Dropping it stops the memory sampler; the worker pool's threads run until it
/// is shut down (see [`Shutdown`]). [`reload`](Self::reload) changes limits,
/// rates, breaker thresholds and the request timeout while it runs.
pub struct Stack {
    /// The inbound request policy: timeout → rate limit → memory gate →
    /// concurrency limit, each stage present when its table is (and the breaker
    /// only with `concurrency.breaker.inbound = true`).
    pub policy: Policy,
    /// The outbound policy for calls to the dependency the breaker guards: the
    /// request timeout and the breaker. Present when `concurrency.breaker` is;
    /// wrap a client with [`client_layer`](Self::client_layer) or call through
    /// [`Policy::call`].
    pub client_policy: Option<Policy>,
    /// The shutdown coordinator, with the configured grace period.
    pub shutdown: Shutdown,
    /// The worker pool, if configured (already running).
    pub worker_pool: Option<WorkerPool>,
    /// The task pool, if configured.
    pub task_pool: Option<TaskPool>,
    /// The memory monitor, if configured, sampled every
    /// `concurrency.memory.check_interval` by a sampler thread the stack owns.
    pub memory: Option<MemoryMonitor>,
    /// The memory gate in the policy, if configured (a clone; for its stats).
    pub memory_gate: Option<MemoryGate>,
    /// The rate limiter in the policy, if configured with the local backend
    /// (shared with it).
    pub rate_limiter: Option<Arc<Gcra>>,
    /// The Redis backend, if a limit has `backend = "redis"` (feature `redis`):
    /// its [`stats`](heijunka_redis::RedisBackend::stats) say whether the
    /// shared limits run on their failure policy.
    #[cfg(feature = "redis")]
    pub redis: Option<heijunka_redis::RedisBackend>,
    /// The shared rate limiter in the policy (`rate_limit.backend = "redis"`).
    #[cfg(feature = "redis")]
    pub redis_rate_limiter: Option<heijunka_redis::RedisRateLimiter>,
    /// The shared concurrency limit in the policy (`limit.backend = "redis"`).
    #[cfg(feature = "redis")]
    pub redis_limit: Option<heijunka_redis::RedisConcurrencyLimit>,
    /// The breaker, if configured (the client policy holds a clone, and the
    /// inbound policy too with `concurrency.breaker.inbound = true`).
    pub breaker: Option<CircuitBreaker>,
    /// The static concurrency limit, if configured (the policy holds a clone).
    pub limit: Option<ConcurrencyLimit>,
    /// The adaptive concurrency limit, if configured (the policy holds a clone).
    pub adaptive_limit: Option<AdaptiveLimit>,
    /// The request deadline the stack was built with
    /// (`concurrency.timeouts.request`); after a [`reload`](Self::reload),
    /// [`Policy::timeout`] holds the one in force.
    pub request_timeout: Duration,
    /// The longest a streaming response body may go between two frames
    /// (`concurrency.timeouts.idle`; `None`: no limit). Give it to the layer
    /// that wraps response bodies (`PolicyLayer`'s body idle time-out).
    pub body_idle_timeout: Option<Duration>,
    /// The event bus settings, if configured (validated).
    pub bus: Option<BusConfig>,
    /// Samples `memory` until the stack is dropped.
    pub(super) sampler: Option<Sampler>,
    /// What reloads change, and the config in force.
    pub(super) live: Arc<Live>,
}

impl fmt::Debug for Stack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut f = f.debug_struct("Stack");
        #[cfg(feature = "redis")]
        f.field("redis", &self.redis)
            .field("redis_rate_limiter", &self.redis_rate_limiter)
            .field("redis_limit", &self.redis_limit);
        f.field("policy", &self.policy)
            .field("client_policy", &self.client_policy)
            .field("shutdown", &self.shutdown)
            .field("worker_pool", &self.worker_pool)
            .field("task_pool", &self.task_pool)
            .field("memory", &self.memory)
            .field("rate_limiter", &self.rate_limiter)
            .field("breaker", &self.breaker)
            .field("limit", &self.limit)
            .field("adaptive_limit", &self.adaptive_limit)
            .field("request_timeout", &self.request_timeout)
            .field("body_idle_timeout", &self.body_idle_timeout)
            .field("bus", &self.bus)
            .field("sampler", &self.sampler)
            .finish_non_exhaustive()
    }
}

impl Stack {
    /// The configuration in force: the one built, or the last one a
    /// [`reload`](Self::reload) applied.
    pub fn config(&self) -> Config {
        self.live.current()
    }

    /// A `PolicyLayer` over this stack's policy, wired to its shutdown: requests
    /// take the configured request timeout (and follow
    /// [reloads](Self::reload) of it), and are cancelled on shutdown.
    ///
    /// ```
    /// use heijunka::config::Config;
    /// use std::time::Duration;
    ///
    /// let stack = Config::from_toml_str("[concurrency.timeouts]\nrequest = \"2s\"")?.build()?;
    /// let layer = stack.policy_layer();
    /// assert_eq!(layer.policy().timeout(), Some(Duration::from_secs(2)));
    /// // axum: `Router::new().route(..).layer(HandleErrorLayer::new(..)).layer(layer)`
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[cfg(feature = "tower")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
    pub fn policy_layer(&self) -> crate::tower::PolicyLayer {
        let layer =
            crate::tower::PolicyLayer::new(self.policy.clone()).shutdown(self.shutdown.token());
        match self.body_idle_timeout {
            // Validated non-zero by the config: cannot fail.
            Some(idle) => layer.clone().body_idle_timeout(idle).unwrap_or(layer),
            None => layer,
        }
    }

    /// A client `PolicyLayer` over the [client policy](Self::client_policy)
    /// (the breaker and the request timeout), wired to the shutdown: wrap the
    /// client of the dependency the breaker guards with it. `None` without a
    /// `concurrency.breaker` table.
    ///
    /// ```
    /// use heijunka::config::Config;
    ///
    /// let stack = Config::from_toml_str("[concurrency.breaker]\nname = \"payments\"")?.build()?;
    /// assert!(stack.policy.breaker().is_none(), "no breaker on incoming traffic");
    /// let client = stack.client_layer().expect("a breaker is configured");
    /// assert_eq!(client.policy().breaker().map(|b| b.name()), Some("payments"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[cfg(feature = "tower")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
    pub fn client_layer(&self) -> Option<crate::tower::PolicyLayer> {
        self.client_policy
            .as_ref()
            .map(|p| crate::tower::PolicyLayer::client(p.clone()).shutdown(self.shutdown.token()))
    }
}

/// What [`Config::build_with`] takes from outside the file: the clock and the
/// memory probe (tests give a `ManualClock` and a `ManualProbe`).
#[derive(Default)]
#[must_use = "options do nothing until given to `Config::build_with`"]
pub struct BuildOptions {
    clock: Option<Clock>,
    probe: Option<Box<dyn FnOnce(MemoryMonitorBuilder) -> MemoryMonitorBuilder + Send>>,
}

impl BuildOptions {
    /// The defaults: the system clock, the system's memory figures.
    pub fn new() -> Self {
        Self::default()
    }

    /// The clock of the rate limiter, the breaker, the adaptive limit and the
    /// memory monitor's samples.
    pub fn clock(mut self, clock: impl Into<Clock>) -> Self {
        self.clock = Some(clock.into());
        self
    }

    /// Where the memory monitor's readings come from.
    pub fn memory_probe(mut self, probe: impl MemoryProbe) -> Self {
        self.probe = Some(Box::new(move |b: MemoryMonitorBuilder| b.probe(probe)));
        self
    }
}

impl fmt::Debug for BuildOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BuildOptions")
            .field("clock", &self.clock)
            .field("memory_probe", &self.probe.is_some())
            .finish()
    }
}

impl Config {
    /// Validates, then builds the live primitives: starts the worker pool's
    /// threads and the memory sampler (a thread of its own, so no runtime is
    /// needed; it stops when the [`Stack`] is dropped).
    ///
    /// # Errors
    ///
    /// [`ConfigErrors`] from [`validate`](Self::validate), each naming the path of
    /// its field; or, rarely, the OS refusing a thread (named by the field of the
    /// part that needed it).
    pub fn build(&self) -> Result<Stack, ConfigErrors> {
        self.build_with(BuildOptions::default())
    }

    /// [`build`](Self::build) with a clock and memory probe of the caller's.
    ///
    /// # Errors
    ///
    /// As [`build`](Self::build).
    pub fn build_with(&self, options: BuildOptions) -> Result<Stack, ConfigErrors> {
        self.check()?;
        let clock = options.clock.unwrap_or_else(Clock::system);
        let c = &self.concurrency;
        let at = |path: &'static str| move |e: ConfigError| e.within(path);
        let shutdown = Shutdown::builder()
            .grace_period(c.timeouts.shutdown)
            .build()
            .map_err(|e| rename(e, "concurrency.timeouts.shutdown"))?;
        let worker_pool = c
            .worker_pool
            .as_ref()
            .map(|p| {
                WorkerPool::builder()
                    .workers(p.max_workers)
                    .queue_capacity(p.queue_size)
                    .build()
            })
            .transpose()
            .map_err(at("concurrency.worker_pool"))?;
        let task_pool = c
            .task_pool
            .as_ref()
            .map(|p| {
                TaskPool::builder()
                    .max_running(p.max_running)
                    .max_waiting(p.max_waiting)
                    .build()
            })
            .transpose()
            .map_err(at("concurrency.task_pool"))?;
        let memory = c
            .memory
            .as_ref()
            .map(|m| {
                let mut b = MemoryMonitor::builder()
                    .elevated_threshold(m.elevated)
                    .critical_threshold(m.critical)
                    .interval(m.check_interval)
                    .clock(clock.clone());
                if let Some(mb) = m.threshold_mb {
                    b = b.limit(mb.saturating_mul(1024 * 1024));
                }
                if let Some(probe) = options.probe {
                    b = probe(b);
                }
                b.build()
            })
            .transpose()
            .map_err(at("concurrency.memory"))?;
        let sampler = memory
            .as_ref()
            .map(|m| {
                m.spawn_sampler_thread().map_err(|e| {
                    ConfigError::new(
                        "concurrency.memory.check_interval",
                        c.memory.as_ref().map(|m| m.check_interval),
                        format!("needs a sampler thread, which could not be started: {e}"),
                    )
                })
            })
            .transpose()?;
        let breaker = c
            .breaker
            .as_ref()
            .map(|b| breaker_config(b, &clock).map(CircuitBreaker::new))
            .transpose()
            .map_err(at("concurrency.breaker"))?;
        let limit = c
            .limit
            .as_ref()
            .filter(|l| l.algorithm == LimitKind::Static && l.backend == Backend::Local)
            .map(|l| ConcurrencyLimit::named(l.max_concurrent, "server"))
            .transpose()
            .map_err(|e| rename(e, "concurrency.limit.max_concurrent"))?;
        let adaptive = c
            .limit
            .as_ref()
            .filter(|l| l.algorithm != LimitKind::Static)
            .map(|l| adaptive_limit(l, &clock))
            .transpose()
            .map_err(at("concurrency.limit"))?;
        let rate = c
            .rate_limit
            .as_ref()
            .filter(|r| r.backend == Backend::Local)
            .map(|r| {
                Gcra::builder(r.per_second)
                    .name("server")
                    .burst(r.burst())
                    .clock(clock.clone())
                    .build()
                    .map(Arc::new)
            })
            .transpose()
            .map_err(at("concurrency.rate_limit"))?;

        // Named for the metrics and logs: the inbound policy and the outbound one.
        let mut policy = Policy::builder().name("server").timeout(c.timeouts.request);
        if let Some(r) = &rate {
            policy = policy.shared_rate_limiter(r.clone());
        }
        let gate = match (&c.memory, &memory) {
            (Some(m), Some(monitor)) => Some(
                MemoryGate::builder(monitor)
                    .reject_at(m.reject_at)
                    .build()
                    .map_err(at("concurrency.memory"))?,
            ),
            _ => None,
        };
        if let Some(g) = &gate {
            policy = policy.memory_gate(g.clone());
        }
        if let Some(l) = &limit {
            policy = policy.concurrency_limit(l.clone());
        }
        if let Some(l) = &adaptive {
            policy = policy.adaptive_limit(l.clone());
        }
        #[cfg(feature = "redis")]
        let redis = self.build_redis(&clock)?;
        #[cfg(feature = "redis")]
        {
            if let Some(r) = &redis.rate {
                policy = policy.redis_rate_limiter(r.clone());
            }
            if let Some(l) = &redis.limit {
                policy = policy.redis_concurrency_limit(l.clone());
            }
        }
        let inbound_breaker = c.breaker.as_ref().is_some_and(|b| b.inbound);
        if let Some(b) = breaker.as_ref().filter(|_| inbound_breaker) {
            policy = policy.breaker(b.clone());
        }
        let policy = policy
            .build()
            .map_err(|e| rename(e, "concurrency.timeouts.request"))?;
        let client_policy = breaker
            .as_ref()
            .map(|b| {
                Policy::builder()
                    .name("client")
                    .timeout(c.timeouts.request)
                    .breaker(b.clone())
                    .build()
                    .map_err(|e| rename(e, "concurrency.timeouts.request"))
            })
            .transpose()?;
        let live = Arc::new(Live::new(
            self.clone(),
            std::iter::once(policy.clone())
                .chain(client_policy.clone())
                .collect(),
            limit.clone(),
            rate.clone(),
            breaker.clone(),
        ));
        Ok(Stack {
            policy,
            client_policy,
            shutdown,
            worker_pool,
            task_pool,
            memory,
            memory_gate: gate,
            rate_limiter: rate,
            #[cfg(feature = "redis")]
            redis: redis.backend,
            #[cfg(feature = "redis")]
            redis_rate_limiter: redis.rate,
            #[cfg(feature = "redis")]
            redis_limit: redis.limit,
            breaker,
            limit,
            adaptive_limit: adaptive,
            request_timeout: c.timeouts.request,
            body_idle_timeout: c.timeouts.idle,
            bus: c.bus.clone(),
            sampler,
            live,
        })
    }
}

/// The Redis parts of a [`Stack`].
#[cfg(feature = "redis")]
#[derive(Default)]
struct RedisParts {
    backend: Option<heijunka_redis::RedisBackend>,
    rate: Option<heijunka_redis::RedisRateLimiter>,
    limit: Option<heijunka_redis::RedisConcurrencyLimit>,
}

#[cfg(feature = "redis")]
impl Config {
    /// The backend and the shared limits, where a limit has
    /// `backend = "redis"` (`check` made sure `concurrency.redis` is there).
    fn build_redis(&self, clock: &Clock) -> Result<RedisParts, ConfigError> {
        use heijunka_redis::{
            FailurePolicy, RedisBackend, RedisConcurrencyLimit, RedisRateLimiter, TokenLeasing,
        };
        let c = &self.concurrency;
        let rate = c
            .rate_limit
            .as_ref()
            .filter(|r| r.backend == Backend::Redis);
        let limit = c.limit.as_ref().filter(|l| l.backend == Backend::Redis);
        let Some(r) = c
            .redis
            .as_ref()
            .filter(|_| rate.is_some() || limit.is_some())
        else {
            return Ok(RedisParts::default());
        };
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(ConfigError::new(
                "concurrency.redis",
                super::error::Raw(&r.url),
                "the Redis limits need a tokio runtime: build the stack inside one",
            ));
        }
        let at = |e: ConfigError| e.within("concurrency.redis");
        let mut b = RedisBackend::builder(r.url.clone()).call_timeout(r.call_timeout);
        if let Some(id) = &r.replica_id {
            b = b.replica_id(id.clone());
        }
        let backend = b.build().map_err(at)?;
        let policy = match r.failure_policy {
            super::RedisFailure::FailOpen => {
                FailurePolicy::fail_open(r.expected_replicas).map_err(at)?
            }
            super::RedisFailure::FailClosed => FailurePolicy::FailClosed,
        };
        let rate = rate
            .map(|rl| {
                let mut b = RedisRateLimiter::builder(backend.clone(), rl.per_second)
                    .burst(rl.burst())
                    .name(r.name.clone())
                    .failure_policy(policy)
                    .clock(clock.clone());
                if let Some(batch) = rl.lease_batch {
                    b = b.token_leasing(TokenLeasing {
                        max_batch: batch,
                        share: r.expected_replicas.max(1),
                        ..TokenLeasing::default()
                    });
                }
                b.build()
            })
            .transpose()
            .map_err(|e| e.within("concurrency.rate_limit"))?;
        let limit = limit
            .map(|l| {
                RedisConcurrencyLimit::builder(backend.clone(), l.max_concurrent)
                    .name(r.name.clone())
                    .lease(r.lease)
                    .failure_policy(policy)
                    .build()
            })
            .transpose()
            .map_err(|e| e.within("concurrency.limit"))?;
        Ok(RedisParts {
            backend: Some(backend),
            rate,
            limit,
        })
    }
}

/// The breaker's configuration from `concurrency.breaker`.
pub(super) fn breaker_config(
    b: &BreakerSettings,
    clock: &Clock,
) -> Result<BreakerConfig, ConfigError> {
    CircuitBreaker::builder()
        .name(b.name.clone())
        .failure_rate_threshold(b.failure_threshold)
        .sliding_window(SlidingWindowType::CountBased, b.window)
        .minimum_number_of_calls(b.minimum_calls)
        .wait_duration_in_open_state(b.reset_timeout)
        .permitted_number_of_calls_in_half_open_state(b.half_open_max)
        .clock(clock.clone())
        .build_config()
}

/// A builder's error about its one field, named by the config's `path`.
fn rename(e: ConfigError, path: &'static str) -> ConfigError {
    ConfigError::new(path, super::error::Raw(e.value()), e.rule().to_owned())
}

/// An adaptive limit from `concurrency.limit` (the algorithm's published
/// defaults for everything not in the file).
fn adaptive_limit(l: &LimitConfig, clock: &Clock) -> Result<AdaptiveLimit, ConfigError> {
    let (min, max) = (l.min_concurrent as usize, l.max_concurrent as usize);
    let initial = l.initial.map_or(20.clamp(min, max), |i| i as usize);
    let builder = match l.algorithm {
        LimitKind::Aimd => AdaptiveLimit::builder(
            Aimd::builder()
                .initial_limit(initial)
                .min_limit(min)
                .max_limit(max)
                .build()?,
        ),
        LimitKind::Vegas => AdaptiveLimit::builder(
            Vegas::builder()
                .initial_limit(initial)
                .min_limit(min)
                .max_limit(max)
                .build()?,
        ),
        LimitKind::Gradient2 | LimitKind::Static => AdaptiveLimit::builder(
            Gradient2::builder()
                .initial_limit(initial)
                .min_limit(min)
                .max_limit(max)
                .build()?,
        ),
    };
    builder.name("server").clock(clock.clone()).build()
}
