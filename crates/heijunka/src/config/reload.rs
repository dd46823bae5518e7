//! [`Stack::reload`]: new limits, rates, breaker thresholds and timeouts on a
//! running stack; and [`Stack::watch_file`], which reloads when a file changes.

use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use heijunka_backpressure::{ConcurrencyLimit, Gcra};
use heijunka_breaker::CircuitBreaker;
use heijunka_core::ConfigError;

use super::build::Stack;
use super::error::{Collector, ConfigErrors};
use super::{Backend, Config, LimitKind};
use crate::policy::Policy;

/// How [`Stack::reload_with`] treats what it keeps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReloadOptions {
    /// Close the breaker and empty its window after applying the new thresholds
    /// (default `false`: an open breaker stays open, a window keeps its calls).
    pub reset_breakers: bool,
}

impl ReloadOptions {
    /// The defaults: keep all state.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether to reset the breaker (see the field).
    #[must_use]
    pub fn reset_breakers(mut self, reset: bool) -> Self {
        self.reset_breakers = reset;
        self
    }
}

/// What a [`reload`](Stack::reload) changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReloadReport {
    /// The paths of the fields applied, such as `concurrency.limit.max_concurrent`,
    /// in the order of the tree; empty when the new config equals the old.
    pub changed: Vec<String>,
    /// Whether the breaker was reset ([`ReloadOptions::reset_breakers`]).
    pub breaker_reset: bool,
}

/// The parts of a [`Stack`] a reload changes, and the config in force.
pub(super) struct Live {
    current: Mutex<Current>,
    /// The inbound policy, and the client policy if there is one: both take the
    /// request timeout.
    policies: Vec<Policy>,
    limit: Option<ConcurrencyLimit>,
    rate: Option<Arc<Gcra>>,
    breaker: Option<CircuitBreaker>,
}

/// The config in force, and how many reloads have applied one.
struct Current {
    config: Config,
    version: u64,
}

/// One change to make once the whole new config is known to apply.
enum Action {
    Limit(u32),
    Rate(f64, u32),
    /// New thresholds for the breaker (applied after the config is committed:
    /// see [`Live::sync_breaker`]).
    Breaker,
    Timeout(Duration),
}

impl Live {
    pub(super) fn new(
        config: Config,
        policies: Vec<Policy>,
        limit: Option<ConcurrencyLimit>,
        rate: Option<Arc<Gcra>>,
        breaker: Option<CircuitBreaker>,
    ) -> Self {
        Self {
            current: Mutex::new(Current { config, version: 0 }),
            policies,
            limit,
            rate,
            breaker,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Current> {
        // A panic cannot leave `Current` half-written (two plain stores).
        self.current.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn current(&self) -> Config {
        self.lock().config.clone()
    }

    fn reload(&self, new: Config, options: ReloadOptions) -> Result<ReloadReport, ConfigErrors> {
        new.check()?;
        // One reload at a time: each plans against the config the last one left.
        let mut current = self.lock();
        let (actions, changed) = self.plan(&current.config, &new)?;
        let mut breaker = false;
        for action in actions {
            // Every value was validated and every change planned: these succeed.
            match action {
                Action::Limit(n) => self.limit.as_ref().map(|l| l.set_limit(n)),
                Action::Rate(r, b) => self.rate.as_ref().map(|g| g.set_rate(r, b)),
                Action::Timeout(t) => self
                    .policies
                    .iter()
                    .map(|p| p.set_timeout(Some(t)))
                    .find(Result::is_err),
                Action::Breaker => {
                    breaker = true;
                    None
                }
            }
            .transpose()
            .map_err(|e| e.within("reload"))?;
        }
        current.config = new;
        current.version += 1;
        drop(current);
        // The breaker calls its listeners (code of the caller's) when a change of
        // state is made, so it is told with no lock held.
        if breaker {
            self.sync_breaker()?;
        }
        let breaker_reset = options.reset_breakers && self.breaker.is_some();
        if breaker_reset && let Some(b) = &self.breaker {
            b.reset();
        }
        if !changed.is_empty() || breaker_reset {
            tracing::info!(changed = ?changed, breaker_reset, "heijunka config reloaded");
        }
        Ok(ReloadReport {
            changed,
            breaker_reset,
        })
    }

    /// Gives the breaker the thresholds of the config in force, with no lock held
    /// while it applies them. A reload that overtakes this one may apply its own
    /// in between; each applies the settings of the latest config it reads and
    /// tries again if a newer one was committed meanwhile, so the settings left in
    /// the breaker are the latest config's.
    fn sync_breaker(&self) -> Result<(), ConfigErrors> {
        let Some(breaker) = &self.breaker else {
            return Ok(());
        };
        let clock = breaker.config().clock().clone();
        loop {
            let (settings, version) = {
                let current = self.lock();
                (current.config.concurrency.breaker.clone(), current.version)
            };
            if let Some(s) = &settings {
                let config = super::build::breaker_config(s, &clock)
                    .map_err(|e| e.within("concurrency.breaker"))?;
                breaker
                    .reconfigure(&config)
                    .map_err(|e| e.within("concurrency.breaker"))?;
            }
            if self.lock().version == version {
                return Ok(());
            }
        }
    }

    /// The changes from `old` to `new`, or every change that needs a restart.
    fn plan(&self, old: &Config, new: &Config) -> Result<(Vec<Action>, Vec<String>), ConfigErrors> {
        let (o, n) = (&old.concurrency, &new.concurrency);
        let mut errors = Collector::default();
        let mut actions = Vec::new();
        let mut changed = Vec::new();
        macro_rules! section {
            ($name:literal, $o:expr, $n:expr) => {
                match (&$o, &$n) {
                    (Some(o), Some(n)) => Some((o, n)),
                    (None, None) => None,
                    (o, _) => {
                        let what = if o.is_some() { "removed" } else { "added" };
                        errors.push(ConfigError::new(
                            concat!("concurrency.", $name),
                            super::error::Raw(&format!("the table {what}")),
                            format!("cannot be {what} at run time; it needs a restart"),
                        ));
                        None
                    }
                }
            };
        }
        // Refuses a change of `$field` (fixed once built).
        macro_rules! same {
            ($p:expr, $o:expr, $n:expr, $field:ident) => {
                fixed(
                    &mut errors,
                    &format!("{}.{}", $p, stringify!($field)),
                    &$o.$field,
                    &$n.$field,
                    $o.$field != $n.$field,
                )
            };
        }
        if let Some((o, n)) = section!("worker_pool", o.worker_pool, n.worker_pool) {
            // A pool's thread count and queue are fixed when it starts.
            let p = "concurrency.worker_pool";
            same!(p, o, n, max_workers);
            same!(p, o, n, queue_size);
        }
        if let Some((o, n)) = section!("task_pool", o.task_pool, n.task_pool) {
            let p = "concurrency.task_pool";
            same!(p, o, n, max_running);
            same!(p, o, n, max_waiting);
        }
        let rate = section!("rate_limit", o.rate_limit, n.rate_limit);
        if let Some((o, n)) =
            rate.filter(|(o, n)| o.backend == Backend::Redis || n.backend == Backend::Redis)
        {
            // The shared limit's rate is every replica's: changed by a restart
            // of all of them, not by one replica's reload.
            let p = "concurrency.rate_limit";
            same!(p, o, n, backend);
            same!(p, o, n, per_second);
            same!(p, o, n, burst);
            same!(p, o, n, lease_batch);
        } else if let Some((o, n)) = rate {
            if o.per_second != n.per_second {
                changed.push("concurrency.rate_limit.per_second".to_owned());
            }
            if o.burst() != n.burst() {
                changed.push("concurrency.rate_limit.burst".to_owned());
            }
            if o.per_second != n.per_second || o.burst() != n.burst() {
                actions.push(Action::Rate(n.per_second, n.burst()));
            }
        }
        if let Some((o, n)) = section!("limit", o.limit, n.limit) {
            let p = "concurrency.limit";
            same!(p, o, n, algorithm);
            same!(p, o, n, backend);
            if n.backend == Backend::Redis {
                same!(p, o, n, max_concurrent);
            } else if o.algorithm == n.algorithm && n.algorithm == LimitKind::Static {
                // A static limit has only its size; the adaptive bounds are unused.
                if o.max_concurrent != n.max_concurrent {
                    changed.push(format!("{p}.max_concurrent"));
                    actions.push(Action::Limit(n.max_concurrent));
                }
            } else if o.algorithm == n.algorithm {
                // An adaptive algorithm's bounds are fixed when it is built.
                same!(p, o, n, max_concurrent);
                same!(p, o, n, min_concurrent);
                same!(p, o, n, initial);
            }
        }
        if let Some((o, n)) = section!("memory", o.memory, n.memory) {
            // The monitor's thresholds and the gate's level are fixed when built.
            let p = "concurrency.memory";
            same!(p, o, n, threshold_mb);
            same!(p, o, n, elevated);
            same!(p, o, n, critical);
            same!(p, o, n, check_interval);
            same!(p, o, n, reject_at);
        }
        if let Some((o, n)) = section!("breaker", o.breaker, n.breaker) {
            let p = "concurrency.breaker";
            same!(p, o, n, name);
            same!(p, o, n, window);
            same!(p, o, n, inbound);
            let mut tuned = false;
            for (field, differs) in [
                (
                    "failure_threshold",
                    o.failure_threshold != n.failure_threshold,
                ),
                ("minimum_calls", o.minimum_calls != n.minimum_calls),
                ("reset_timeout", o.reset_timeout != n.reset_timeout),
                ("half_open_max", o.half_open_max != n.half_open_max),
            ] {
                if differs {
                    changed.push(format!("{p}.{field}"));
                    tuned = true;
                }
            }
            if tuned && o.name == n.name && o.window == n.window {
                // Checked now, so that nothing is applied if it would fail.
                if let Some(b) = &self.breaker {
                    super::build::breaker_config(n, b.config().clock()).map_err(|e| e.within(p))?;
                }
                actions.push(Action::Breaker);
            }
        }
        let (ot, nt) = (&o.timeouts, &n.timeouts);
        if ot.request != nt.request {
            changed.push("concurrency.timeouts.request".to_owned());
            actions.push(Action::Timeout(nt.request));
        }
        fixed(
            &mut errors,
            "concurrency.timeouts.shutdown",
            &ot.shutdown,
            &nt.shutdown,
            ot.shutdown != nt.shutdown,
        );
        fixed(
            &mut errors,
            "concurrency.timeouts.idle",
            &ot.idle,
            &nt.idle,
            ot.idle != nt.idle,
        );
        fixed(
            &mut errors,
            "concurrency.bus",
            &o.bus,
            &n.bus,
            o.bus != n.bus,
        );
        fixed(
            &mut errors,
            "concurrency.redis",
            &o.redis,
            &n.redis,
            o.redis != n.redis,
        );
        errors.finish()?;
        Ok((actions, changed))
    }
}

/// Records that `path` cannot change at run time, if it `differ`s.
fn fixed(errors: &mut Collector, path: &str, was: &dyn Debug, now: &dyn Debug, differ: bool) {
    if differ {
        errors.push(ConfigError::new(
            path.to_owned(),
            super::error::Raw(&format!("{now:?}")),
            format!("cannot change at run time (it is {was:?}); it needs a restart"),
        ));
    }
}

impl Stack {
    /// Applies `new` to the running stack, keeping all state
    /// ([`reload_with`](Self::reload_with) with the default options).
    ///
    /// # Errors
    ///
    /// As [`reload_with`](Self::reload_with).
    pub fn reload(&self, new: Config) -> Result<ReloadReport, ConfigErrors> {
        self.reload_with(new, ReloadOptions::default())
    }

    /// Applies `new` to the running stack, all of it or nothing.
    ///
    /// Changed at run time, without dropping a permit or resetting the breaker
    /// (unless `options` ask):
    ///
    /// | field | how |
    /// | --- | --- |
    /// | `limit.max_concurrent` (static) | the limit is resized: permits held stay valid; a lower limit admits again once enough of them are released |
    /// | `rate_limit.per_second`, `.burst` | the limiter takes the new rate; debt already taken is kept and judged by the new burst ([`Gcra::set_rate`]) |
    /// | `breaker.failure_threshold`, `.minimum_calls`, `.reset_timeout`, `.half_open_max` | [`CircuitBreaker::reconfigure`]: state and window kept; an open breaker stays open until its wait ends |
    /// | `timeouts.request` | [`Policy::set_timeout`]: requests admitted from then on |
    ///
    /// Everything else (adding or removing a table, pool sizes, the limit's
    /// algorithm or adaptive bounds, memory thresholds, the breaker's name or
    /// window, `timeouts.shutdown` and `.idle`, the bus) is fixed when the stack
    /// is built: a change to it is refused, naming the field and saying it needs
    /// a restart. A reload either applies all its changes or none.
    ///
    /// ```
    /// use heijunka::config::Config;
    ///
    /// let text = "[concurrency.limit]\nmax_concurrent = 100";
    /// let stack = Config::from_toml_str(text)?.build()?;
    /// let held = stack.limit.as_ref().unwrap().try_acquire_owned()?;
    ///
    /// let report = stack.reload(Config::from_toml_str("[concurrency.limit]\nmax_concurrent = 10")?)?;
    /// assert_eq!(report.changed, ["concurrency.limit.max_concurrent"]);
    /// assert_eq!(stack.limit.as_ref().unwrap().limit(), 10);
    /// drop(held); // still valid, released as usual
    ///
    /// // A change that needs a restart is refused; nothing changes.
    /// let errors = stack
    ///     .reload(Config::from_toml_str("[concurrency.limit]\nmax_concurrent = 20\nalgorithm = \"aimd\"")?)
    ///     .unwrap_err();
    /// assert_eq!(errors.first().field(), "concurrency.limit.algorithm");
    /// assert_eq!(stack.limit.as_ref().unwrap().limit(), 10);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// Every problem at once, the config in force kept: the errors of
    /// [`Config::validate`], or one per change that needs a restart.
    pub fn reload_with(
        &self,
        new: Config,
        options: ReloadOptions,
    ) -> Result<ReloadReport, ConfigErrors> {
        self.live.reload(new, options)
    }

    /// Watches `path` and [reloads](Self::reload) the stack when its content
    /// changes: a thread reads the file every `interval` (with the process's
    /// `HEIJUNKA__` overrides on top, as [`Config::from_file_with_env`] reads it).
    /// A config that cannot be read, parsed, validated or applied is logged with
    /// `tracing::warn!` and the one in force kept; the watcher tries again when
    /// the file changes again. Write the file whole (to a temporary file, then
    /// rename it over the watched one), as deployment tools do: a watcher that
    /// reads a file half-written refuses it, then applies it on the next read
    /// once it is complete. Stops when the handle is dropped or
    /// [`stop`](WatchHandle::stop)ped.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `interval` if it is zero, or `watch` if the OS
    /// refuses the thread.
    pub fn watch_file(
        &self,
        path: impl AsRef<Path>,
        interval: Duration,
    ) -> Result<WatchHandle, ConfigError> {
        heijunka_core::validate::non_zero_duration("interval", interval)?;
        let path = path.as_ref().to_path_buf();
        let live = Arc::clone(&self.live);
        let shared = Arc::new(Watch::default());
        // The file as it is now counts as seen: only a change reloads.
        let seen = std::fs::read_to_string(&path).ok();
        let thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("heijunka-config-watch".into())
                .spawn(move || watch(&live, &path, interval, &shared, seen))
                .map_err(|e| ConfigError::new("watch", e.to_string(), "could not start a thread"))?
        };
        Ok(WatchHandle {
            shared,
            thread: Some(thread),
        })
    }
}

#[derive(Default)]
struct Watch {
    stopped: Mutex<bool>,
    wake: Condvar,
    applied: AtomicU64,
    refused: AtomicU64,
}

fn watch(
    live: &Live,
    path: &PathBuf,
    interval: Duration,
    shared: &Watch,
    mut seen: Option<String>,
) {
    let mut stopped = shared
        .stopped
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    loop {
        stopped = match shared.wake.wait_timeout(stopped, interval) {
            Ok((guard, _)) => guard,
            Err(poisoned) => poisoned.into_inner().0,
        };
        if *stopped {
            return;
        }
        drop(stopped);
        let text = std::fs::read_to_string(path).ok();
        if text.is_some() && text != seen {
            let result = text
                .as_deref()
                .map_or_else(
                    || {
                        Err(
                            ConfigError::new("path", path.display().to_string(), "cannot be read")
                                .into(),
                        )
                    },
                    |t| Config::from_file_text(path, t),
                )
                .and_then(Config::with_process_env)
                .and_then(|c| live.reload(c, ReloadOptions::default()));
            match result {
                // Relaxed: counters read on their own.
                Ok(_) => shared.applied.fetch_add(1, Ordering::Relaxed),
                Err(errors) => {
                    tracing::warn!(path = %path.display(), %errors, "heijunka config not reloaded; the one in force is kept");
                    // Relaxed: as above.
                    shared.refused.fetch_add(1, Ordering::Relaxed)
                }
            };
            seen = text;
        }
        stopped = shared
            .stopped
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
    }
}

/// The file watcher of [`Stack::watch_file`]; stops it when dropped.
#[must_use = "the watcher stops when the handle is dropped"]
pub struct WatchHandle {
    shared: Arc<Watch>,
    thread: Option<JoinHandle<()>>,
}

impl WatchHandle {
    /// Changes of the file applied so far.
    pub fn applied(&self) -> u64 {
        // Relaxed: a counter read on its own.
        self.shared.applied.load(Ordering::Relaxed)
    }

    /// Changes of the file refused so far (each logged).
    pub fn refused(&self) -> u64 {
        // Relaxed: a counter read on its own.
        self.shared.refused.load(Ordering::Relaxed)
    }

    /// Stops watching and waits for the thread (a reload in progress finishes).
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        *self
            .shared
            .stopped
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            // The watcher catches nothing that panics; a panic was already reported.
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for WatchHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchHandle")
            .field("applied", &self.applied())
            .field("refused", &self.refused())
            .finish()
    }
}
