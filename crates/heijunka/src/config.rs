//! One configuration tree for the whole stack, read from TOML or YAML, in the shape
//! of the seeds' `concurrency:` block.
//!
//! ```
//! use heijunka::config::Config;
//!
//! let config = Config::from_toml_str(r#"
//!     [concurrency.worker_pool]
//!     max_workers = 8
//!     queue_size = 1000
//!
//!     [concurrency.breaker]
//!     failure_threshold = 0.5
//!     reset_timeout = "60s"
//!     half_open_max = 3
//!
//!     [concurrency.timeouts]
//!     request = "30s"
//!     shutdown = "30s"
//! "#)?;
//! assert_eq!(config.concurrency.timeouts.request, std::time::Duration::from_secs(30));
//!
//! // A bad value is reported with the path of its field.
//! let err = Config::from_toml_str("[concurrency.breaker]\nfailure_threshold = 1.5")
//!     .and_then(|c| c.validate())
//!     .unwrap_err();
//! assert!(err.to_string().starts_with("concurrency.breaker.failure_threshold"));
//! # Ok::<(), heijunka::core::ConfigError>(())
//! ```
//!
//! Every table and field is optional; a missing table leaves that part out of the
//! [`Stack`], a missing field takes the default documented on it. Unknown fields
//! are errors (a typo must not be silently ignored). Durations are written as
//! `"30s"`, `"250ms"`, `"1m 30s"` ([humantime](https://docs.rs/humantime)).
//! `repo/config/heijunka.example.toml` is a complete example.

use std::time::Duration;

use heijunka_backpressure::{AdaptiveLimit, Aimd, ConcurrencyLimit, Gcra, Gradient2, Vegas};
use heijunka_breaker::{CircuitBreaker, SlidingWindowType};
use heijunka_core::{ConfigError, PressureLevel, validate};
use heijunka_memory::{MemoryGate, MemoryMonitor};
use heijunka_pool::{TaskPool, WorkerPool};
use heijunka_shutdown::Shutdown;
use serde::{Deserialize, Serialize};

use crate::policy::Policy;

/// Durations as humantime strings (`"30s"`).
mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "{text:?} is not a duration ({e}); write it like \"30s\" or \"250ms\""
            ))
        })
    }
}

/// The root: everything sits under `concurrency`, as in the seeds.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The stack's settings.
    #[serde(default)]
    pub concurrency: Concurrency,
}

/// The `concurrency` block.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Concurrency {
    /// A thread pool for blocking and CPU-bound work.
    pub worker_pool: Option<WorkerPoolConfig>,
    /// A pool bounding concurrently running futures.
    pub task_pool: Option<TaskPoolConfig>,
    /// The request rate limit (GCRA).
    pub rate_limit: Option<RateLimitConfig>,
    /// The in-flight request limit.
    pub limit: Option<LimitConfig>,
    /// Memory pressure: thresholds, sampling and the gate.
    pub memory: Option<MemoryConfig>,
    /// The circuit breaker around the main dependency.
    #[serde(alias = "circuit_breaker")]
    pub breaker: Option<BreakerSettings>,
    /// Request, shutdown and idle time-outs.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Event bus buffers.
    pub bus: Option<BusConfig>,
}

/// `concurrency.worker_pool`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerPoolConfig {
    /// Worker threads (at least 1).
    pub max_workers: usize,
    /// The most tasks waiting (at least 1). Default 1000.
    #[serde(default = "default_queue_size")]
    pub queue_size: usize,
}

fn default_queue_size() -> usize {
    1000
}

/// `concurrency.task_pool`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TaskPoolConfig {
    /// Futures running at once (at least 1).
    pub max_running: usize,
    /// Futures waiting for a slot. Default 0: reject at once when full.
    #[serde(default)]
    pub max_waiting: usize,
}

/// `concurrency.rate_limit`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Requests per second (positive).
    pub per_second: f64,
    /// Requests allowed at once above the rate (at least 1). Default 1.
    #[serde(default = "one")]
    pub burst: u32,
}

fn one() -> u32 {
    1
}

/// `concurrency.limit`: a static limit, or an adaptive one that moves between
/// `min_concurrent` and `max_concurrent` with measured latency.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// Requests in flight at once (at least 1): the limit, or the adaptive
    /// limit's ceiling.
    pub max_concurrent: u32,
    /// `static` (default), `aimd`, `vegas` or `gradient2`.
    #[serde(default)]
    pub algorithm: LimitKind,
    /// The adaptive limit's floor (at least 1). Default 1.
    #[serde(default = "one")]
    pub min_concurrent: u32,
    /// The adaptive limit's start. Default: `min(20, max_concurrent)` (Netflix's
    /// initial limit), and at least `min_concurrent`.
    pub initial: Option<u32>,
}

/// The kind of concurrency limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitKind {
    /// A fixed number of permits.
    #[default]
    Static,
    /// Additive increase, multiplicative decrease on drops and time-outs.
    Aimd,
    /// TCP Vegas: a queue-size estimate from the minimum latency.
    Vegas,
    /// Netflix's Gradient2: long- against short-term latency.
    Gradient2,
}

/// `concurrency.memory`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {
    /// The memory limit in MiB. Default: the cgroup limit, else the system's memory.
    pub threshold_mb: Option<u64>,
    /// Used/limit ratio at which pressure is elevated. Default 0.80.
    #[serde(default = "default_elevated")]
    pub elevated: f64,
    /// Used/limit ratio at which pressure is critical. Default 0.90.
    #[serde(default = "default_critical")]
    pub critical: f64,
    /// How often to sample. Default 10 s, as in the seeds.
    #[serde(with = "duration", default = "default_check_interval")]
    pub check_interval: Duration,
    /// The level at which the gate refuses requests. Default `critical`.
    #[serde(default = "default_reject_at")]
    pub reject_at: PressureLevel,
}

fn default_elevated() -> f64 {
    heijunka_memory::DEFAULT_ELEVATED_THRESHOLD
}
fn default_critical() -> f64 {
    heijunka_memory::DEFAULT_CRITICAL_THRESHOLD
}
fn default_check_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_reject_at() -> PressureLevel {
    PressureLevel::Critical
}

/// `concurrency.breaker` (also accepted as `circuit_breaker`).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerSettings {
    /// The breaker's name in logs. Default `"default"`.
    #[serde(default = "default_breaker_name")]
    pub name: String,
    /// Failure rate over the window that opens the breaker, in (0, 1]. Default 0.5.
    #[serde(default = "default_failure_threshold")]
    pub failure_threshold: f64,
    /// Calls in the count-based sliding window (at least 1). Default 100.
    #[serde(default = "default_window")]
    pub window: u32,
    /// Calls needed before the rate is judged (at least 1). Default 10.
    #[serde(default = "default_min_calls")]
    pub minimum_calls: u32,
    /// Time open before probing. Default 60 s, as in the seeds.
    #[serde(with = "duration", default = "default_reset_timeout")]
    pub reset_timeout: Duration,
    /// Probes let through half-open (at least 1). Default 3, as in the seeds.
    #[serde(default = "default_half_open_max")]
    pub half_open_max: u32,
}

fn default_breaker_name() -> String {
    "default".into()
}
fn default_failure_threshold() -> f64 {
    0.5
}
fn default_window() -> u32 {
    100
}
fn default_min_calls() -> u32 {
    10
}
fn default_reset_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_half_open_max() -> u32 {
    3
}

/// `concurrency.timeouts`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// A request's deadline. Default 30 s.
    #[serde(with = "duration", default = "thirty_seconds")]
    pub request: Duration,
    /// The shutdown grace period. Default 30 s.
    #[serde(with = "duration", default = "thirty_seconds")]
    pub shutdown: Duration,
    /// How long an idle connection is kept. Default 120 s.
    #[serde(with = "duration", default = "idle_default")]
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            request: thirty_seconds(),
            shutdown: thirty_seconds(),
            idle: idle_default(),
        }
    }
}

fn thirty_seconds() -> Duration {
    Duration::from_secs(30)
}
fn idle_default() -> Duration {
    Duration::from_secs(120)
}

/// `concurrency.bus`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BusConfig {
    /// Events buffered per subscriber (at least 1). Default 1000.
    #[serde(default = "default_queue_size")]
    pub buffer_size: usize,
    /// How long a blocking publish waits for room. Default 5 s.
    #[serde(with = "duration", default = "five_seconds")]
    pub publish_timeout: Duration,
}

fn five_seconds() -> Duration {
    Duration::from_secs(5)
}

/// The live primitives built from a [`Config`] by [`Config::build`].
#[derive(Debug)]
pub struct Stack {
    /// The request policy: timeout → rate limit → memory gate → concurrency limit
    /// → breaker, with each stage present when its table is.
    pub policy: Policy,
    /// The shutdown coordinator, with the configured grace period.
    pub shutdown: Shutdown,
    /// The worker pool, if configured (already running).
    pub worker_pool: Option<WorkerPool>,
    /// The task pool, if configured.
    pub task_pool: Option<TaskPool>,
    /// The memory monitor, if configured (start sampling with
    /// `spawn_sampler()`).
    pub memory: Option<MemoryMonitor>,
    /// The breaker, if configured (the policy holds a clone).
    pub breaker: Option<CircuitBreaker>,
    /// The static concurrency limit, if configured (the policy holds a clone).
    pub limit: Option<ConcurrencyLimit>,
    /// The adaptive concurrency limit, if configured (the policy holds a clone).
    pub adaptive_limit: Option<AdaptiveLimit>,
    /// The request deadline for [`RequestContext`](crate::context::RequestContext)s.
    pub request_timeout: Duration,
    /// The event bus settings, if configured (validated).
    pub bus: Option<BusConfig>,
}

impl Config {
    /// Parses TOML (fields are checked by [`validate`](Self::validate) or
    /// [`build`](Self::build)).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] with the parser's message (line, column and the unknown
    /// or malformed field) for a syntax or type error.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| {
            ConfigError::new(
                "config",
                "TOML",
                e.message().to_owned() + &span_note(text, e.span()),
            )
        })
    }

    /// Parses YAML.
    ///
    /// # Errors
    ///
    /// As [`from_toml_str`](Self::from_toml_str).
    pub fn from_yaml_str(text: &str) -> Result<Self, ConfigError> {
        serde_yaml_ng::from_str(text).map_err(|e| ConfigError::new("config", "YAML", e.to_string()))
    }

    /// Reads a file, TOML or YAML by its extension (`.toml`, `.yaml`, `.yml`).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `path` if it cannot be read or has another
    /// extension; parse errors as above.
    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(
                "path",
                path.display().to_string(),
                format!("cannot be read: {e}"),
            )
        })?;
        match path.extension().and_then(|e| e.to_str()) {
            Some("toml") => Self::from_toml_str(&text),
            Some("yaml" | "yml") => Self::from_yaml_str(&text),
            _ => Err(ConfigError::new(
                "path",
                path.display().to_string(),
                "must end in .toml, .yaml or .yml",
            )),
        }
    }

    /// Checks every value; the error names the path of the first bad field.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] whose field is the full path, such as
    /// `concurrency.breaker.failure_threshold`.
    pub fn validate(self) -> Result<Self, ConfigError> {
        let c = &self.concurrency;
        let at = |path: &'static str| move |e: ConfigError| e.within(path);
        if let Some(p) = &c.worker_pool {
            (|| {
                validate::at_least("max_workers", p.max_workers, 1)?;
                validate::at_most("max_workers", p.max_workers, 4096)?;
                validate::at_least("queue_size", p.queue_size, 1).map(drop)
            })()
            .map_err(at("concurrency.worker_pool"))?;
        }
        if let Some(p) = &c.task_pool {
            validate::at_least("max_running", p.max_running, 1)
                .map_err(at("concurrency.task_pool"))?;
        }
        if let Some(r) = &c.rate_limit {
            (|| {
                validate::positive("per_second", r.per_second)?;
                validate::at_least("burst", r.burst, 1).map(drop)
            })()
            .map_err(at("concurrency.rate_limit"))?;
        }
        if let Some(l) = &c.limit {
            (|| {
                validate::at_least("max_concurrent", l.max_concurrent, 1)?;
                validate::at_least("min_concurrent", l.min_concurrent, 1)?;
                validate::ordered(
                    "min_concurrent",
                    l.min_concurrent,
                    "max_concurrent",
                    l.max_concurrent,
                )?;
                if let Some(i) = l.initial {
                    validate::at_least("initial", i, l.min_concurrent)?;
                    validate::at_most("initial", i, l.max_concurrent)?;
                }
                Ok(())
            })()
            .map_err(at("concurrency.limit"))?;
        }
        if let Some(m) = &c.memory {
            (|| {
                if let Some(mb) = m.threshold_mb {
                    validate::at_least("threshold_mb", mb, 1)?;
                }
                validate::ratio("elevated", m.elevated)?;
                validate::ratio("critical", m.critical)?;
                if m.critical < m.elevated {
                    return Err(ConfigError::new(
                        "critical",
                        m.critical,
                        format!("must be at least `elevated` ({})", m.elevated),
                    ));
                }
                validate::non_zero_duration("check_interval", m.check_interval).map(drop)
            })()
            .map_err(at("concurrency.memory"))?;
        }
        if let Some(b) = &c.breaker {
            (|| {
                if b.name.trim().is_empty() {
                    return Err(ConfigError::new("name", &b.name, "must not be empty"));
                }
                if !(b.failure_threshold > 0.0 && b.failure_threshold <= 1.0) {
                    return Err(ConfigError::new(
                        "failure_threshold",
                        b.failure_threshold,
                        "must be in (0, 1]",
                    ));
                }
                validate::at_least("window", b.window, 1)?;
                validate::at_least("minimum_calls", b.minimum_calls, 1)?;
                validate::non_zero_duration("reset_timeout", b.reset_timeout)?;
                validate::at_least("half_open_max", b.half_open_max, 1).map(drop)
            })()
            .map_err(at("concurrency.breaker"))?;
        }
        (|| {
            validate::non_zero_duration("request", c.timeouts.request)?;
            validate::non_zero_duration("idle", c.timeouts.idle).map(drop)
        })()
        .map_err(at("concurrency.timeouts"))?;
        if let Some(b) = &c.bus {
            (|| {
                validate::at_least("buffer_size", b.buffer_size, 1)?;
                validate::non_zero_duration("publish_timeout", b.publish_timeout).map(drop)
            })()
            .map_err(at("concurrency.bus"))?;
        }
        Ok(self)
    }

    /// Validates, then builds the live primitives. Starts the worker pool's
    /// threads; needs a tokio runtime only if a task pool is configured.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the path of the bad field.
    pub fn build(&self) -> Result<Stack, ConfigError> {
        let cfg = self.clone().validate()?;
        let c = &cfg.concurrency;
        let at = |path: &'static str| move |e: ConfigError| e.within(path);
        let shutdown = Shutdown::builder()
            .grace_period(c.timeouts.shutdown)
            .build()
            .map_err(at("concurrency.timeouts"))?;
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
                    .interval(m.check_interval);
                if let Some(mb) = m.threshold_mb {
                    b = b.limit(mb.saturating_mul(1024 * 1024));
                }
                b.build()
            })
            .transpose()
            .map_err(at("concurrency.memory"))?;
        let breaker = c
            .breaker
            .as_ref()
            .map(|b| {
                CircuitBreaker::builder()
                    .name(b.name.clone())
                    .failure_rate_threshold(b.failure_threshold)
                    .sliding_window(SlidingWindowType::CountBased, b.window)
                    .minimum_number_of_calls(b.minimum_calls)
                    .wait_duration_in_open_state(b.reset_timeout)
                    .permitted_number_of_calls_in_half_open_state(b.half_open_max)
                    .build()
            })
            .transpose()
            .map_err(at("concurrency.breaker"))?;
        let limit = c
            .limit
            .as_ref()
            .filter(|l| l.algorithm == LimitKind::Static)
            .map(|l| ConcurrencyLimit::new(l.max_concurrent))
            .transpose()
            .map_err(at("concurrency.limit"))?;
        let adaptive = c
            .limit
            .as_ref()
            .filter(|l| l.algorithm != LimitKind::Static)
            .map(adaptive_limit)
            .transpose()
            .map_err(at("concurrency.limit"))?;

        let mut policy = Policy::builder().timeout(c.timeouts.request);
        if let Some(r) = &c.rate_limit {
            let gcra = Gcra::builder(r.per_second)
                .burst(r.burst)
                .build()
                .map_err(at("concurrency.rate_limit"))?;
            policy = policy.rate_limiter(gcra);
        }
        if let (Some(m), Some(monitor)) = (&c.memory, &memory) {
            let gate = MemoryGate::builder(monitor)
                .reject_at(m.reject_at)
                .build()
                .map_err(at("concurrency.memory"))?;
            policy = policy.memory_gate(gate);
        }
        if let Some(l) = &limit {
            policy = policy.concurrency_limit(l.clone());
        }
        if let Some(l) = &adaptive {
            policy = policy.adaptive_limit(l.clone());
        }
        if let Some(b) = &breaker {
            policy = policy.breaker(b.clone());
        }
        let policy = policy.build().map_err(at("concurrency.timeouts"))?;
        Ok(Stack {
            policy,
            shutdown,
            worker_pool,
            task_pool,
            memory,
            breaker,
            limit,
            adaptive_limit: adaptive,
            request_timeout: c.timeouts.request,
            bus: c.bus.clone(),
        })
    }
}

/// An adaptive limit from `concurrency.limit` (the algorithm's published
/// defaults for everything not in the file).
fn adaptive_limit(l: &LimitConfig) -> Result<AdaptiveLimit, ConfigError> {
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
    builder.build()
}

/// " (line L, column C)" for a byte span of `text`, or nothing.
fn span_note(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    let Some(span) = span else {
        return String::new();
    };
    let before = &text[..span.start.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    format!(" (line {line}, column {column})")
}
