//! Environment overrides: `HEIJUNKA__CONCURRENCY__RATE_LIMIT__PER_SECOND=200` on
//! top of the file.
//!
//! A variable named [`ENV_PREFIX`] followed by the field's path, its segments
//! joined by `__` (double underscore), sets that field: the segments are
//! lowercased, so `HEIJUNKA__CONCURRENCY__BREAKER__FAILURE_THRESHOLD` is
//! `concurrency.breaker.failure_threshold`. The value is read as the field's
//! type: numbers, `true`/`false`, durations (`250ms`), names and levels as
//! written. An override inside a table the file leaves out creates the table,
//! with the defaults for its other fields.

use std::collections::BTreeMap;
use std::time::Duration;

use heijunka_core::{ConfigError, PressureLevel};
use toml::{Table, Value};

use super::error::{Collector, ConfigErrors, Raw};
use super::{
    Backend, BreakerSettings, BusConfig, Concurrency, Config, LimitConfig, LimitKind, MemoryConfig,
    RateLimitConfig, RedisFailure, RedisSettings, TaskPoolConfig, Timeouts, WorkerPoolConfig,
};

/// The prefix of the variables that override configuration fields:
/// `HEIJUNKA__`.
pub const ENV_PREFIX: &str = "HEIJUNKA__";

/// The kind of value at a path, from a config with every table and field present.
fn template() -> Table {
    let full = Config {
        concurrency: Concurrency {
            worker_pool: Some(WorkerPoolConfig {
                max_workers: 1,
                queue_size: 1,
            }),
            task_pool: Some(TaskPoolConfig {
                max_running: 1,
                max_waiting: 0,
            }),
            rate_limit: Some(RateLimitConfig {
                per_second: 1.0,
                burst: Some(1),
                backend: Backend::Redis,
                lease_batch: Some(1),
            }),
            limit: Some(LimitConfig {
                max_concurrent: 1,
                algorithm: LimitKind::Static,
                min_concurrent: 1,
                initial: Some(1),
                backend: Backend::Redis,
            }),
            memory: Some(MemoryConfig {
                threshold_mb: Some(1),
                elevated: 0.8,
                critical: 0.9,
                check_interval: Duration::from_secs(1),
                reject_at: PressureLevel::Critical,
            }),
            breaker: Some(BreakerSettings {
                name: "n".into(),
                failure_threshold: 0.5,
                window: 1,
                minimum_calls: 1,
                reset_timeout: Duration::from_secs(1),
                half_open_max: 1,
                inbound: false,
            }),
            timeouts: Timeouts {
                idle: Some(Duration::from_secs(1)),
                ..Timeouts::default()
            },
            bus: Some(BusConfig {
                buffer_size: 1,
                publish_timeout: Duration::from_secs(1),
            }),
            redis: Some(RedisSettings {
                url: "redis://h/".into(),
                call_timeout: Duration::from_secs(1),
                replica_id: Some("r".into()),
                failure_policy: RedisFailure::FailOpen,
                expected_replicas: 1,
                lease: Duration::from_secs(1),
                name: "n".into(),
            }),
        },
    };
    to_table(&full).expect("the full config serializes to a TOML table")
}

fn to_table(config: &Config) -> Result<Table, toml::ser::Error> {
    Table::try_from(config)
}

/// The value at `path` in `table`, if there is one.
fn lookup<'a>(table: &'a Table, path: &[String]) -> Option<&'a Value> {
    let (last, tables) = path.split_last()?;
    let mut t = table;
    for seg in tables {
        t = t.get(seg)?.as_table()?;
    }
    t.get(last)
}

/// Sets `path` in `table` to `value`, creating tables on the way.
fn insert(table: &mut Table, path: &[String], value: Value) {
    let Some((last, tables)) = path.split_last() else {
        return;
    };
    let mut t = table;
    for seg in tables {
        let entry = t
            .entry(seg.clone())
            .or_insert_with(|| Value::Table(Table::new()));
        if !entry.is_table() {
            *entry = Value::Table(Table::new());
        }
        t = entry.as_table_mut().expect("made a table just above");
    }
    t.insert(last.clone(), value);
}

/// One override: the variable, its value, the field's path.
struct Override {
    var: String,
    value: String,
    path: Vec<String>,
}

impl Override {
    fn error(&self, rule: impl Into<std::borrow::Cow<'static, str>>) -> ConfigError {
        ConfigError::new(self.var.clone(), &self.value, rule)
    }
}

/// The process's `HEIJUNKA__...` variables. Read with `vars_os`, so an
/// unrelated variable that is not UTF-8 is skipped (`std::env::vars` would
/// panic on it); one of ours that is not UTF-8 is an error naming it.
pub(crate) fn process_env() -> (Vec<(String, String)>, Vec<ConfigError>) {
    let mut vars = Vec::new();
    let mut errors = Vec::new();
    for (name, value) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if !name.starts_with(ENV_PREFIX) {
            continue;
        }
        match value.into_string() {
            Ok(value) => vars.push((name.into_owned(), value)),
            Err(raw) => errors.push(ConfigError::new(
                name.into_owned(),
                raw.to_string_lossy(),
                "must be UTF-8",
            )),
        }
    }
    (vars, errors)
}

impl Config {
    /// Reads `path` as [`from_file`](Self::from_file) does, then applies the
    /// process's `HEIJUNKA__...` environment variables on top
    /// ([`with_env_overrides`](Self::with_env_overrides)).
    ///
    /// # Errors
    ///
    /// As [`from_file`](Self::from_file) and
    /// [`with_env_overrides`](Self::with_env_overrides).
    pub fn from_file_with_env(path: impl AsRef<std::path::Path>) -> Result<Self, ConfigErrors> {
        Self::from_file(path)?.with_process_env()
    }

    /// [`with_env_overrides`](Self::with_env_overrides) with the process's
    /// environment ([`process_env`]), every problem at once: the unreadable
    /// variables with the bad overrides.
    pub(crate) fn with_process_env(self) -> Result<Self, ConfigErrors> {
        let (vars, unreadable) = process_env();
        match self.with_env_overrides(vars) {
            Ok(config) => ConfigErrors::from_vec(unreadable).map_or(Ok(config), Err),
            Err(mut errors) => {
                errors.extend(unreadable);
                Err(errors)
            }
        }
    }

    /// Applies the overrides among `vars` (name, value pairs; those not starting
    /// with [`ENV_PREFIX`] are ignored) on top of this config; the
    /// [module docs](crate::config#environment-overrides) give the convention. For
    /// the process's environment use [`from_file_with_env`](Self::from_file_with_env)
    /// (it reads it without panicking on a variable that is not UTF-8, as
    /// `std::env::vars()` would).
    ///
    /// ```
    /// use heijunka::config::Config;
    /// use std::time::Duration;
    ///
    /// let vars = [
    ///     ("HEIJUNKA__CONCURRENCY__RATE_LIMIT__PER_SECOND", "200"),
    ///     ("HEIJUNKA__CONCURRENCY__TIMEOUTS__REQUEST", "250ms"),
    ///     ("PATH", "/usr/bin"),
    /// ];
    /// let config = Config::default()
    ///     .with_env_overrides(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))?;
    /// let c = &config.concurrency;
    /// assert_eq!(c.rate_limit.as_ref().unwrap().per_second, 200.0);
    /// assert_eq!(c.timeouts.request, Duration::from_millis(250));
    ///
    /// let err = Config::default()
    ///     .with_env_overrides([("HEIJUNKA__CONCURRENCY__LIMIT__MAX".to_string(), "5".to_string())])
    ///     .unwrap_err();
    /// assert!(err.to_string().starts_with("HEIJUNKA__CONCURRENCY__LIMIT__MAX names no setting"));
    /// # Ok::<(), heijunka::config::ConfigErrors>(())
    /// ```
    ///
    /// # Errors
    ///
    /// Every bad override at once, each naming its variable: one whose path is
    /// no field, one whose value is not of the field's type (with the value), or
    /// one that leaves its table incomplete (a required field missing).
    pub fn with_env_overrides<I, K, V>(self, vars: I) -> Result<Self, ConfigErrors>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let overrides: BTreeMap<String, String> = vars
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        if overrides.is_empty() {
            return Ok(self);
        }
        let template = template();
        let mut table = to_table(&self).map_err(|e| {
            ConfigError::new(
                "config",
                Raw("the file's config"),
                format!("cannot take overrides: {e}"),
            )
        })?;
        let mut errors = Collector::default();
        let mut applied = Vec::new();
        for (var, value) in overrides {
            let path: Vec<String> = var[ENV_PREFIX.len()..]
                .split("__")
                .map(str::to_lowercase)
                .collect();
            let o = Override { var, value, path };
            let dotted = o.path.join(".");
            let typed = match lookup(&template, &o.path) {
                None | Some(Value::Table(_)) => {
                    errors.push(o.error(format!(
                        "names no setting (`{dotted}`); the path's segments are joined by `__`"
                    )));
                    continue;
                }
                Some(Value::Integer(_)) => o
                    .value
                    .trim()
                    .parse::<i64>()
                    .map(Value::Integer)
                    .map_err(|_| format!("must be a whole number for `{dotted}`")),
                Some(Value::Float(_)) => o
                    .value
                    .trim()
                    .parse::<f64>()
                    .map(Value::Float)
                    .map_err(|_| format!("must be a number for `{dotted}`")),
                Some(Value::Boolean(_)) => o
                    .value
                    .trim()
                    .parse::<bool>()
                    .map(Value::Boolean)
                    .map_err(|_| format!("must be `true` or `false` for `{dotted}`")),
                Some(_) => Ok(Value::String(o.value.clone())),
            };
            match typed {
                Ok(v) => {
                    insert(&mut table, &o.path, v);
                    applied.push(o);
                }
                Err(rule) => errors.push(o.error(rule)),
            }
        }
        // The tree is read once with every override that has the right kind of
        // value, so its error comes with those found above.
        match serde_path_to_error::deserialize(Value::Table(table)) {
            Ok(config) => errors.finish().map(|()| config),
            Err(e) => {
                let path = e.path().to_string();
                let message = e.inner().message().to_owned();
                errors.push(blame(&applied, super::de_error(&path, &message, None, "")));
                Err(errors.finish().expect_err("an error was just recorded"))
            }
        }
    }
}

/// `err`, found reading the tree, as the error of the override that set its
/// field, or else of the first that made its table; as is if none did.
fn blame(applied: &[Override], err: ConfigError) -> ConfigError {
    let table_of = |o: &Override| o.path[..o.path.len() - 1].join(".");
    if let Some(o) = applied.iter().find(|o| o.path.join(".") == err.field()) {
        let rule = err.rule();
        let rule = rule.strip_prefix("is invalid: ").unwrap_or(rule);
        return o.error(format!("is not valid for `{}`: {rule}", o.path.join(".")));
    }
    match applied
        .iter()
        .find(|o| err.field().starts_with(&format!("{}.", table_of(o))))
    {
        Some(o) => o.error(format!(
            "makes the table `{}`, in which {} {}",
            table_of(o),
            err.field(),
            err.rule()
        )),
        None => err,
    }
}
