//! [`Config::validate`]: every rule the builders behind [`Config::build`] apply,
//! checked up front under the config's own field paths.
//!
//! Each block names the builder whose rules it mirrors; the test
//! `validate_agrees_with_build` in `tests/config.rs` drives edge values of every
//! field through both and checks they agree.

use heijunka_backpressure::{Gcra, MAX_CAPACITY, MAX_PERMITS};
use heijunka_core::{ConfigError, PressureLevel, validate};
use heijunka_memory::{DEFAULT_HYSTERESIS, MIN_INTERVAL};
use heijunka_pool::WorkerPool;

use super::error::{Collector, ConfigErrors};
use super::{Backend, Config, LimitKind};

/// The most probes half-open and the largest count window: the breaker's
/// `MAX_COUNT_WINDOW_SIZE`.
const MAX_BREAKER_CALLS: u32 = heijunka_breaker::MAX_COUNT_WINDOW_SIZE;

/// The most futures a task pool runs at once (its semaphore's bound, in `u32`).
const MAX_RUNNING: usize = {
    let max = tokio::sync::Semaphore::MAX_PERMITS;
    if max < u32::MAX as usize {
        max
    } else {
        u32::MAX as usize
    }
};

impl Config {
    /// Checks every value against the rules of the part it configures; returns
    /// the config, or every problem at once.
    ///
    /// A config that passes builds: [`build`](Self::build) refuses nothing that
    /// `validate` accepts (short of the OS refusing a thread).
    ///
    /// # Errors
    ///
    /// [`ConfigErrors`], each naming the full path of its field, such as
    /// `concurrency.breaker.failure_threshold`.
    pub fn validate(self) -> Result<Self, ConfigErrors> {
        self.check()?;
        Ok(self)
    }

    /// [`validate`](Self::validate) by reference.
    pub(super) fn check(&self) -> Result<(), ConfigErrors> {
        let c = &self.concurrency;
        let mut errors = Collector::default();
        if let Some(p) = &c.worker_pool {
            // `WorkerPoolBuilder::build`.
            let at = "concurrency.worker_pool";
            errors.at(at, validate::at_least("max_workers", p.max_workers, 1));
            errors.at(
                at,
                validate::at_most("max_workers", p.max_workers, WorkerPool::MAX_WORKERS),
            );
            errors.at(at, validate::at_least("queue_size", p.queue_size, 1));
            errors.at(
                at,
                validate::at_most("queue_size", p.queue_size, MAX_CAPACITY),
            );
        }
        if let Some(p) = &c.task_pool {
            // `TaskPoolBuilder::build`.
            let at = "concurrency.task_pool";
            errors.at(at, validate::at_least("max_running", p.max_running, 1));
            errors.at(
                at,
                validate::at_most("max_running", p.max_running, MAX_RUNNING),
            );
            errors.at(
                at,
                validate::at_most("max_waiting", p.max_waiting, MAX_CAPACITY),
            );
        }
        if let Some(r) = &c.rate_limit {
            // `GcraBuilder::build` (its `rate` is our `per_second`).
            let at = "concurrency.rate_limit";
            errors.at(at, validate::positive("per_second", r.per_second));
            if let Some(b) = r.burst {
                errors.at(at, validate::at_least("burst", b, 1));
            }
            // The range and overflow rules, once the simple ones hold (each field
            // reported once).
            if r.per_second > 0.0 && r.per_second.is_finite() && r.burst != Some(0) {
                errors.at(
                    at,
                    Gcra::builder(r.per_second)
                        .burst(r.burst())
                        .build()
                        .map_err(|e| rename(e, &[("rate", "per_second")])),
                );
            }
        }
        if let Some(l) = &c.limit {
            // At least 1 is the config's own rule (`ConcurrencyLimit::new(0)` is
            // a closed gate, but a server configured with no concurrency is a
            // mistake); at most `MAX_PERMITS` is `ConcurrencyLimit::new`'s; the
            // rest is `check_bounds` of the adaptive algorithms.
            let at = "concurrency.limit";
            errors.at(
                at,
                validate::at_least("max_concurrent", l.max_concurrent, 1),
            );
            if l.algorithm == LimitKind::Static {
                errors.at(
                    at,
                    validate::at_most("max_concurrent", l.max_concurrent, MAX_PERMITS),
                );
            }
            errors.at(
                at,
                validate::at_least("min_concurrent", l.min_concurrent, 1),
            );
            errors.at(
                at,
                validate::ordered(
                    "min_concurrent",
                    l.min_concurrent,
                    "max_concurrent",
                    l.max_concurrent,
                ),
            );
            if let Some(i) = l.initial {
                errors.at(at, validate::at_least("initial", i, l.min_concurrent));
                errors.at(at, validate::at_most("initial", i, l.max_concurrent));
            }
        }
        self.check_redis(&mut errors);
        if let Some(m) = &c.memory {
            // `MemoryMonitorBuilder::build` (`Thresholds::new`) and
            // `MemoryGateBuilder::build`.
            let at = "concurrency.memory";
            if let Some(mb) = m.threshold_mb {
                errors.at(at, validate::at_least("threshold_mb", mb, 1));
            }
            errors.at(at, validate::ratio("elevated", m.elevated));
            if m.elevated > 0.0 && m.elevated <= DEFAULT_HYSTERESIS {
                errors.push(ConfigError::new(
                    format!("{at}.elevated"),
                    m.elevated,
                    format!(
                        "must be above the hysteresis ({DEFAULT_HYSTERESIS}), \
                         so that pressure can fall back to normal"
                    ),
                ));
            }
            errors.at(at, validate::ratio("critical", m.critical));
            if m.critical < m.elevated {
                errors.push(ConfigError::new(
                    format!("{at}.critical"),
                    m.critical,
                    format!("must be at least `elevated` ({})", m.elevated),
                ));
            }
            if m.check_interval < MIN_INTERVAL {
                errors.push(ConfigError::new(
                    format!("{at}.check_interval"),
                    m.check_interval,
                    format!("must be at least {MIN_INTERVAL:?}"),
                ));
            }
            if m.reject_at == PressureLevel::Normal {
                errors.push(ConfigError::new(
                    format!("{at}.reject_at"),
                    m.reject_at,
                    "must be `elevated` or `critical`",
                ));
            }
        }
        if let Some(b) = &c.breaker {
            // `BreakerBuilder::build_config`.
            let at = "concurrency.breaker";
            if b.name.trim().is_empty() {
                errors.push(ConfigError::new(
                    format!("{at}.name"),
                    &b.name,
                    "must not be empty",
                ));
            }
            errors.at(
                at,
                validate::ratio("failure_threshold", b.failure_threshold),
            );
            errors.at(at, validate::at_least("window", b.window, 1));
            errors.at(at, validate::at_most("window", b.window, MAX_BREAKER_CALLS));
            errors.at(at, validate::at_least("minimum_calls", b.minimum_calls, 1));
            errors.at(
                at,
                validate::non_zero_duration("reset_timeout", b.reset_timeout),
            );
            errors.at(at, validate::at_least("half_open_max", b.half_open_max, 1));
            errors.at(
                at,
                validate::at_most("half_open_max", b.half_open_max, MAX_BREAKER_CALLS),
            );
        }
        // `PolicyBuilder::build` (request), `ShutdownBuilder::build` (shutdown).
        let at = "concurrency.timeouts";
        errors.at(
            at,
            validate::non_zero_duration("request", c.timeouts.request),
        );
        errors.at(
            at,
            validate::non_zero_duration("shutdown", c.timeouts.shutdown),
        );
        if let Some(idle) = c.timeouts.idle {
            errors.at(at, validate::non_zero_duration("idle", idle));
        }
        if let Some(b) = &c.bus {
            // The event bus's `SubscriberBuilder::subscribe` (a buffer of at
            // most `MAX_BUFFER`; a topic's ring is twice the largest buffer).
            let at = "concurrency.bus";
            errors.at(at, validate::at_least("buffer_size", b.buffer_size, 1));
            errors.at(
                at,
                validate::at_most("buffer_size", b.buffer_size, heijunka_event_bus::MAX_BUFFER),
            );
            errors.at(
                at,
                validate::non_zero_duration("publish_timeout", b.publish_timeout),
            );
        }
        errors.finish()
    }
}

/// `e` with its field renamed by `names` (builder name → config name); the rule
/// and value unchanged.
impl Config {
    /// `concurrency.redis` and the limits with `backend = "redis"`:
    /// `RedisBackendBuilder::check`, `RedisRateLimiterBuilder::build` and
    /// `RedisConcurrencyLimitBuilder::build`.
    fn check_redis(&self, errors: &mut Collector) {
        let c = &self.concurrency;
        let rate = c
            .rate_limit
            .as_ref()
            .filter(|r| r.backend == Backend::Redis);
        let limit = c.limit.as_ref().filter(|l| l.backend == Backend::Redis);
        for (at, used) in [
            ("concurrency.rate_limit", rate.is_some()),
            ("concurrency.limit", limit.is_some()),
        ] {
            if !used {
                continue;
            }
            if !cfg!(feature = "redis") {
                errors.at(
                    at,
                    Err::<(), _>(ConfigError::new(
                        "backend",
                        "redis",
                        "needs heijunka's `redis` feature",
                    )),
                );
            }
            if c.redis.is_none() {
                errors.at(
                    at,
                    Err::<(), _>(ConfigError::new(
                        "backend",
                        "redis",
                        "needs a `concurrency.redis` table (the server's url)",
                    )),
                );
            }
        }
        if let Some(l) = limit
            && l.algorithm != LimitKind::Static
        {
            errors.at(
                "concurrency.limit",
                Err::<(), _>(ConfigError::new(
                    "backend",
                    "redis",
                    "shares a static limit only: set `algorithm = \"static\"`",
                )),
            );
        }
        if let Some(r) = rate {
            let at = "concurrency.rate_limit";
            if let Some(b) = r.lease_batch {
                errors.at(at, validate::at_least("lease_batch", b, 1));
            }
            // Lua computes in doubles: `RedisRateLimiterBuilder::build`.
            let tolerance = f64::from(r.burst()) / r.per_second;
            if r.per_second > 0.0 && tolerance * 1e9 >= 9_007_199_254_740_992.0 {
                errors.at(
                    at,
                    Err::<(), _>(ConfigError::new(
                        "burst",
                        r.burst(),
                        "burst / per_second must be under 104 days for the Redis limiter",
                    )),
                );
            }
        }
        if let Some(r) = &c.redis {
            let at = "concurrency.redis";
            errors.at(
                at,
                validate::non_zero_duration("call_timeout", r.call_timeout),
            );
            errors.at(
                at,
                validate::at_least("expected_replicas", r.expected_replicas, 1),
            );
            // `RedisConcurrencyLimitBuilder::build`: refreshed every third.
            let floor = (r.call_timeout * 3).max(std::time::Duration::from_millis(30));
            if r.lease < floor {
                errors.at(
                    at,
                    Err::<(), _>(ConfigError::new(
                        "lease",
                        r.lease,
                        format!("must be at least 30ms and three call_timeouts ({floor:?})"),
                    )),
                );
            }
            if r.name.is_empty() || r.name.contains(':') {
                errors.at(
                    at,
                    Err::<(), _>(ConfigError::new(
                        "name",
                        &r.name,
                        "must be non-empty and without `:` (it is part of the Redis keys)",
                    )),
                );
            }
            #[cfg(feature = "redis")]
            {
                let mut b = heijunka_redis::RedisBackend::builder(r.url.clone());
                if let Some(id) = &r.replica_id {
                    b = b.replica_id(id.clone());
                }
                // The url and the replica id (`call_timeout` is checked above).
                errors.at(at, b.check());
            }
        }
    }
}

fn rename(e: ConfigError, names: &[(&str, &'static str)]) -> ConfigError {
    let field = names
        .iter()
        .find(|(from, _)| *from == e.field())
        .map_or_else(|| e.field().to_owned(), |(_, to)| (*to).to_owned());
    ConfigError::new(field, super::error::Raw(e.value()), e.rule().to_owned())
}
