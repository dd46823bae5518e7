//! One configuration tree for the whole stack, read from TOML or YAML, in the shape
//! of the seeds' `concurrency:` block; environment overrides on top; applied to a
//! running [`Stack`] by [`Stack::reload`].
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
//! // Bad values are reported together, each with the path of its field.
//! let text = "[concurrency.breaker]\nfailure_threshold = 1.5\nhalf_open_max = 0";
//! let errors = Config::from_toml_str(text)?.validate().unwrap_err();
//! assert_eq!(errors.first().field(), "concurrency.breaker.failure_threshold");
//! assert_eq!(errors.iter().count(), 2);
//! # Ok::<(), heijunka::config::ConfigErrors>(())
//! ```
//!
//! # The file
//!
//! Every table and field is optional; a missing table leaves that part out of the
//! [`Stack`], a missing field takes the default documented on it. Unknown fields
//! are errors (a typo must not be silently ignored), named with their full path
//! (`concurrency.breaker.failur_threshold is not a known field ...`), as are
//! values of the wrong type. Durations are written as `"30s"`, `"250ms"`,
//! `"1m 30s"` ([humantime](https://docs.rs/humantime)).
//! `repo/config/heijunka.example.toml` is a complete example.
//!
//! # Checking
//!
//! [`Config::validate`] applies every rule of the parts [`Config::build`] makes
//! (worker and task pools, rate limiter, concurrency limit, memory monitor and
//! gate, breaker, shutdown, bus), under the config's own field paths, and
//! returns every problem at once as [`ConfigErrors`]. A config it accepts builds.
//!
//! # Environment overrides
//!
//! [`Config::with_env_overrides`] (or [`Config::from_file_with_env`], which reads
//! the process's environment) sets fields from variables named
//! `HEIJUNKA__` + the field's path with its segments joined by `__` (double
//! underscore; the segments are lowercased):
//!
//! | variable | field |
//! | --- | --- |
//! | `HEIJUNKA__CONCURRENCY__RATE_LIMIT__PER_SECOND=200` | `concurrency.rate_limit.per_second` |
//! | `HEIJUNKA__CONCURRENCY__LIMIT__MAX_CONCURRENT=64` | `concurrency.limit.max_concurrent` |
//! | `HEIJUNKA__CONCURRENCY__TIMEOUTS__REQUEST=250ms` | `concurrency.timeouts.request` |
//! | `HEIJUNKA__CONCURRENCY__BREAKER__NAME=payments` | `concurrency.breaker.name` |
//!
//! A value is read as its field's type (a number, a duration, a name, a level
//! such as `elevated`). An override inside a table the file leaves out creates
//! the table, with the defaults for its other fields (a table with a required
//! field, such as `worker_pool.max_workers`, needs that one set too). A variable
//! whose path is no field, and a value that is not of the field's type, are
//! errors naming the variable (and the value). Only the canonical names work
//! (`BREAKER`, not the `circuit_breaker` alias).
//!
//! # Reloading
//!
//! [`Stack::reload`] applies a new config to a running stack, all of it or none:
//! the static concurrency limit, the rate and burst, the breaker's thresholds
//! and the request timeout change in place, keeping permits in flight and the
//! breaker's state (unless [`ReloadOptions::reset_breakers`]); a change to
//! anything else (pool sizes, adding or removing a table, the limit's algorithm,
//! ...) is refused as needing a restart, and a config that fails validation is
//! refused with all its errors. [`Stack::watch_file`] reloads when a file
//! changes, logging what it refuses.

use std::time::Duration;

use heijunka_core::{ConfigError, PressureLevel};
use serde::{Deserialize, Serialize};

mod build;
mod check;
mod env;
mod error;
mod reload;

pub use self::build::{BuildOptions, Stack};
pub use self::env::ENV_PREFIX;
pub use self::error::ConfigErrors;
use self::error::Raw;
pub use self::reload::{ReloadOptions, ReloadReport, WatchHandle};

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

/// Optional durations as humantime strings; absent is `None`.
mod opt_duration {
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::duration::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        super::duration::deserialize(d).map(Some)
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
    /// The Redis that limits with `backend = "redis"` share (feature `redis`).
    pub redis: Option<RedisSettings>,
}

/// `concurrency.worker_pool`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerPoolConfig {
    /// Worker threads (1 to 4096).
    pub max_workers: usize,
    /// The most tasks waiting (at least 1, at most
    /// [`MAX_CAPACITY`](heijunka_backpressure::MAX_CAPACITY)). Default 1000.
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
    /// Requests per second: above zero, at most 1e9, at least one per 584 years.
    pub per_second: f64,
    /// Requests admitted at once from a full bucket (at least 1). Default: one
    /// second's worth, `ceil(per_second)` (see [`burst`](Self::burst)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Where the limit's state lives: `local` (default, this process) or
    /// `redis` (shared by every replica through `concurrency.redis`).
    #[serde(default, skip_serializing_if = "Backend::is_local")]
    pub backend: Backend,
    /// With `backend = "redis"`, token leasing: the most tokens one round trip
    /// to Redis takes (see `heijunka_redis::TokenLeasing`). Default: none, one
    /// round trip per request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_batch: Option<u32>,
}

/// Where a limit's state lives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// In this process: each replica enforces the limit by itself.
    #[default]
    Local,
    /// In Redis (`concurrency.redis`): one limit shared by every replica.
    Redis,
}

impl Backend {
    fn is_local(&self) -> bool {
        *self == Backend::Local
    }
}

/// `concurrency.redis`: the Redis shared by the limits with
/// `backend = "redis"` (feature `redis`).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    /// The server, `redis://host:port/db`.
    pub url: String,
    /// The time-out of each Redis call. Default 50 ms.
    #[serde(with = "duration", default = "default_redis_timeout")]
    pub call_timeout: Duration,
    /// This replica's id (lease holders, shared breaker events). Default: the
    /// process id and a random suffix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_id: Option<String>,
    /// `fail_open` (default: each replica enforces its share of the limits
    /// while Redis is unavailable) or `fail_closed` (refuse meanwhile).
    #[serde(default)]
    pub failure_policy: RedisFailure,
    /// Replicas sharing the limits (at least 1): failing open, each enforces
    /// the limit divided by this. Default 1.
    #[serde(default = "one")]
    pub expected_replicas: u32,
    /// The concurrency lease (at least 30 ms and three `call_timeout`s): a crashed replica's permits
    /// come back after it. Default 10 s.
    #[serde(with = "duration", default = "default_lease")]
    pub lease: Duration,
    /// The prefix of the limits' Redis names (`heijunka:rate:<name>:*`,
    /// `heijunka:limit:<name>`): replicas sharing limits use the same one.
    /// Default `"server"`.
    #[serde(default = "default_redis_name")]
    pub name: String,
}

/// What the Redis limits do while Redis is unavailable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RedisFailure {
    /// Enforce the limit divided by `expected_replicas`, locally.
    #[default]
    FailOpen,
    /// Refuse.
    FailClosed,
}

fn default_redis_timeout() -> Duration {
    Duration::from_millis(50)
}
fn default_lease() -> Duration {
    Duration::from_secs(10)
}
fn default_redis_name() -> String {
    "server".into()
}

impl RateLimitConfig {
    /// The burst in effect: the configured one, else one second's worth of the
    /// rate, `ceil(per_second)`, at least 1.
    ///
    /// A burst of one second's worth is what lets ordinary traffic through: with
    /// a burst of 1, Poisson arrivals at half the rate find the bucket empty about
    /// a third of the time (two arrivals closer than one interval), so a limiter
    /// meant to cap abuse refuses honest clients; with `ceil(per_second)` such
    /// traffic is almost never refused (`tests/config.rs` measures both), while a
    /// client sending faster than the rate is still held to it after one second.
    pub fn burst(&self) -> u32 {
        self.burst.unwrap_or_else(|| {
            let second = self.per_second.ceil();
            if second >= f64::from(u32::MAX) {
                u32::MAX
            } else if second >= 1.0 {
                second as u32
            } else {
                1
            }
        })
    }
}

fn one() -> u32 {
    1
}

/// `concurrency.limit`: a static limit, or an adaptive one that moves between
/// `min_concurrent` and `max_concurrent` with measured latency.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// Requests in flight at once (at least 1; a static limit at most
    /// [`MAX_PERMITS`](heijunka_backpressure::MAX_PERMITS)): the limit, or the
    /// adaptive limit's ceiling.
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
    /// Where the limit's state lives: `local` (default) or `redis` (a static
    /// limit shared by every replica through `concurrency.redis`, its permits
    /// leases).
    #[serde(default, skip_serializing_if = "Backend::is_local")]
    pub backend: Backend,
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
    /// Used/limit ratio at which pressure is elevated, in `(0.05, 1]` (above the
    /// monitor's hysteresis, so that pressure can fall back). Default 0.80.
    #[serde(default = "default_elevated")]
    pub elevated: f64,
    /// Used/limit ratio at which pressure is critical. Default 0.90.
    #[serde(default = "default_critical")]
    pub critical: f64,
    /// How often the sampler (started by [`Config::build`]) samples; at least
    /// 1 ms. Default 10 s, as in the seeds.
    #[serde(with = "duration", default = "default_check_interval")]
    pub check_interval: Duration,
    /// The level at which the gate refuses requests: `elevated` or `critical`.
    /// Default `critical`.
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
    /// Calls in the count-based sliding window (1 to 1 000 000). Default 100.
    #[serde(default = "default_window")]
    pub window: u32,
    /// Calls needed before the rate is judged (at least 1). Default 10.
    #[serde(default = "default_min_calls")]
    pub minimum_calls: u32,
    /// Time open before probing. Default 60 s, as in the seeds.
    #[serde(with = "duration", default = "default_reset_timeout")]
    pub reset_timeout: Duration,
    /// Probes let through half-open (1 to 1 000 000). Default 3, as in the seeds.
    #[serde(default = "default_half_open_max")]
    pub half_open_max: u32,
    /// Whether the breaker also guards incoming requests (the inbound
    /// [`Stack::policy`]). Default `false`: the breaker guards calls out to the
    /// dependency ([`Stack::client_policy`]), because on incoming traffic
    /// time-outs caused by our own overload would open it and every route would
    /// answer 503 for the open period.
    #[serde(default)]
    pub inbound: bool,
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
    /// The longest a streaming response body may go between two frames before it
    /// ends with a time-out and releases its permit (exposed as
    /// [`Stack::body_idle_timeout`] for `PolicyLayer`). Default: none, no idle
    /// limit (a long-poll or server-sent-events stream may rightly be quiet for
    /// minutes; set it where bodies are expected to flow).
    #[serde(
        with = "opt_duration",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub idle: Option<Duration>,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            request: thirty_seconds(),
            shutdown: thirty_seconds(),
            idle: None,
        }
    }
}

fn thirty_seconds() -> Duration {
    Duration::from_secs(30)
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

impl Config {
    /// Parses TOML (values are checked by [`validate`](Self::validate) or
    /// [`build`](Self::build)).
    ///
    /// # Errors
    ///
    /// A syntax error, or a field that is unknown, missing or of the wrong type,
    /// named with its full path (`concurrency.breaker.failur_threshold`) and
    /// position.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigErrors> {
        let de = toml::de::Deserializer::parse(text).map_err(|e| {
            // The line the error is on, as the value.
            let line = e
                .span()
                .and_then(|s| text.get(..s.start))
                .map_or("", |before| {
                    let start = before.rfind('\n').map_or(0, |i| i + 1);
                    text[start..].lines().next().unwrap_or("")
                });
            ConfigError::new(
                "config",
                line.trim(),
                format!(
                    "is not valid TOML: {}{}",
                    e.message(),
                    span_note(text, e.span())
                ),
            )
        })?;
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let value = inner.span().and_then(|s| text.get(s)).map(str::to_owned);
            de_error(
                &path,
                inner.message(),
                value.as_deref(),
                &span_note(text, inner.span()),
            )
            .into()
        })
    }

    /// Parses YAML.
    ///
    /// # Errors
    ///
    /// As [`from_toml_str`](Self::from_toml_str).
    pub fn from_yaml_str(text: &str) -> Result<Self, ConfigErrors> {
        let de = serde_yaml_ng::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let note = inner
                .location()
                .map(|l| format!(" (line {}, column {})", l.line(), l.column()))
                .unwrap_or_default();
            // The YAML error's text carries its own position; the bare message is
            // what comes before it.
            let text = inner.to_string();
            let message = text.split(" at line ").next().unwrap_or(&text);
            // serde_yaml_ng puts its own path first: `concurrency.limit: unknown ...`.
            let message = match message.split_once(": ") {
                Some((prefix, rest)) if !prefix.contains(char::is_whitespace) => rest,
                _ => message,
            };
            de_error(&path, message, None, &note).into()
        })
    }

    /// Reads a file, TOML or YAML by its extension (`.toml`, `.yaml`, `.yml`).
    ///
    /// # Errors
    ///
    /// An error naming `path` if it cannot be read or has another extension;
    /// parse errors as above.
    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<Self, ConfigErrors> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(
                "path",
                path.display().to_string(),
                format!("cannot be read: {e}"),
            )
        })?;
        Self::from_file_text(path, &text)
    }

    /// Parses `text` read from `path`, by the path's extension.
    fn from_file_text(path: &std::path::Path, text: &str) -> Result<Self, ConfigErrors> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("toml") => Self::from_toml_str(text),
            Some("yaml" | "yml") => Self::from_yaml_str(text),
            _ => Err(ConfigError::new(
                "path",
                path.display().to_string(),
                "must end in .toml, .yaml or .yml",
            )
            .into()),
        }
    }
}

/// A deserialization error at `path` (`.` for the root) as a [`ConfigError`] naming
/// the full path of the field: an unknown field is named by its own path, a
/// missing one too.
fn de_error(path: &str, message: &str, value: Option<&str>, note: &str) -> ConfigError {
    let path = if path == "." { "" } else { path };
    let join = |name: &str| {
        if path.is_empty() || path.ends_with(&format!(".{name}")) || path == name {
            if path.is_empty() {
                name.to_owned()
            } else {
                path.to_owned()
            }
        } else {
            format!("{path}.{name}")
        }
    };
    // serde's wording: "unknown field `x`, expected one of `a`, `b`" and
    // "missing field `x`".
    let quoted = |prefix: &str| {
        message
            .strip_prefix(prefix)
            .and_then(|rest| rest.split_once('`'))
            .map(|(name, rest)| {
                (
                    name.to_owned(),
                    rest.trim_start_matches(',').trim().to_owned(),
                )
            })
    };
    if let Some((name, expected)) = quoted("unknown field `") {
        let rule = if expected.is_empty() {
            format!("is not a known field{note}")
        } else {
            format!("is not a known field ({expected}){note}")
        };
        return ConfigError::new(join(&name), &name, rule);
    }
    if let Some((name, _)) = quoted("missing field `") {
        return ConfigError::new(join(&name), Raw("nothing"), format!("is required{note}"));
    }
    let field = if path.is_empty() { "config" } else { path };
    ConfigError::new(
        field.to_owned(),
        Raw(value.unwrap_or("an invalid value")),
        format!("is invalid: {message}{note}"),
    )
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
