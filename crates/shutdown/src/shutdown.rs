//! The [`Shutdown`] coordinator: triggers, in-flight tracking, hooks and children.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
// The coordinator's plumbing uses std's Arc and Mutex directly: it is not part of the
// atomic protocol (the gate, which takes its atomics from the loom shim), and
// children are held through `Weak`, which loom's `Arc` does not offer.
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::Duration;

use heijunka_core::ConfigError;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::HOOK_GRACE_MARGIN;
use crate::config::ShutdownBuilder;
use crate::drive::RunState;
use crate::gate::{Enter, Gate};
use crate::metrics::ShutdownMetrics;
use crate::{
    InFlight, OwnedInFlight, Phase, ShutdownReport, ShutdownToken, ShuttingDown, SpawnError,
    TriggerReason,
};

/// The error a stop hook may return.
pub type HookError = Box<dyn std::error::Error + Send + Sync + 'static>;

type HookFuture = Pin<Box<dyn Future<Output = Result<(), HookError>> + Send + 'static>>;

/// A stop hook's body: called once, when its turn comes.
pub(crate) type HookFn = Box<dyn FnOnce() -> HookFuture + Send + 'static>;

pub(crate) struct Hook {
    pub(crate) name: String,
    pub(crate) timeout: Duration,
    pub(crate) run: HookFn,
}

#[derive(Clone)]
pub(crate) struct TriggerInfo {
    pub(crate) reason: TriggerReason,
    pub(crate) at: Instant,
    pub(crate) in_flight: u64,
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) trigger: Option<TriggerInfo>,
    pub(crate) hooks: Vec<Hook>,
    pub(crate) hooks_started: bool,
    /// Names of the named tracked tasks still running ([`Shutdown::spawn_named`]).
    pub(crate) tasks: TaskNames,
    /// Who runs the shutdown sequence now, and how far it has got.
    pub(crate) run: RunState,
    children: Vec<Weak<Inner>>,
}

/// The names of running named tasks: a slab, so a slot freed by a finished task is
/// reused and, once it has grown to the most tasks running at once, registering a
/// name allocates nothing.
#[derive(Default)]
pub(crate) struct TaskNames {
    slots: Vec<Option<Cow<'static, str>>>,
    free: Vec<usize>,
}

impl TaskNames {
    fn insert(&mut self, name: Cow<'static, str>) -> usize {
        if let Some(slot) = self.free.pop() {
            self.slots[slot] = Some(name);
            slot
        } else {
            self.slots.push(Some(name));
            self.slots.len() - 1
        }
    }

    fn remove(&mut self, slot: usize) {
        if let Some(name) = self.slots.get_mut(slot).and_then(Option::take) {
            drop(name);
            self.free.push(slot);
        }
    }

    /// The names of the tasks still running, sorted.
    pub(crate) fn running(&self) -> Vec<String> {
        let mut names: Vec<String> = self.slots.iter().flatten().map(|n| n.to_string()).collect();
        names.sort();
        names
    }
}

pub(crate) struct Inner {
    pub(crate) gate: Gate,
    pub(crate) drained: Notify,
    pub(crate) signals: Arc<crate::token::Signals>,
    pub(crate) config: ShutdownBuilder,
    pub(crate) phase: watch::Sender<Phase>,
    pub(crate) report: OnceLock<ShutdownReport>,
    /// Set by the first `install_signal_handlers`: later calls do nothing.
    // Signal handlers are not installed under loom.
    #[cfg_attr(loom, allow(dead_code))]
    pub(crate) signals_installed: AtomicBool,
    state: Mutex<State>,
    /// In flight up on `enter`, down on `exit`; the phase set with each change.
    pub(crate) metrics: ShutdownMetrics,
}

impl Inner {
    /// Leaves the gate; the exit that completes a drain wakes the drain waiters.
    #[inline]
    pub(crate) fn exit(&self) {
        // Before leaving the gate: a drain it completes sees the gauge at 0.
        self.metrics.in_flight.decrement(1.0);
        if self.gate.exit() {
            self.drained.notify_waiters();
        }
    }

    /// Moves to `phase`: the gauge first, so whoever sees the phase sees it too.
    pub(crate) fn set_phase(&self, phase: Phase) {
        self.metrics.phase.set(crate::metrics::code(phase));
        self.phase.send_replace(phase);
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        // No user code runs under this lock, so a poisoned lock only means a panic
        // elsewhere (an allocation failure); the state is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Coordinates a graceful shutdown: stop taking work, let in-flight work finish
/// within a grace period, run stop hooks in reverse order, and report.
///
/// Cheap to clone (an `Arc`); every clone is the same coordinator.
///
/// # Where the shutdown runs
///
/// The sequence (drain, hooks, report) runs as a task started by the
/// [`trigger`](Self::trigger): on the caller's tokio runtime, so hooks run there
/// and a paused test clock applies, or, outside a runtime, on the coordinator's
/// own `heijunka-shutdown` thread. Its progress is kept in the coordinator, not in
/// that task, so it always reaches a report: a task lost before the end (its
/// runtime shut down mid-grace, or it panicked because the runtime has no timers)
/// hands the rest over to the coordinator's own thread, and
/// [`wait_blocking`](Self::wait_blocking) on a single-threaded runtime takes over
/// the sequence from the task it freezes. A hook cut short by such a move is
/// reported as an error; the others run. See [`trigger`](Self::trigger).
///
/// ```
/// use heijunka_shutdown::Shutdown;
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let shutdown = Shutdown::builder()
///     .grace_period(Duration::from_secs(10))
///     .build()?;
///
/// // Components register stop hooks; the last registered stops first.
/// shutdown.on_stop("database", || async { Ok::<(), std::io::Error>(()) })?;
///
/// // Work enters the gate; once shutdown begins, new work is refused.
/// let guard = shutdown.try_enter()?;
/// shutdown.trigger();
/// assert!(shutdown.try_enter().is_err());
/// drop(guard); // the last in-flight work finishes
///
/// let report = shutdown.wait().await;
/// assert!(report.is_clean());
/// assert_eq!(report.in_flight_at_trigger, 1);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Shutdown {
    pub(crate) inner: Arc<Inner>,
}

impl Shutdown {
    /// A coordinator with the defaults: 30 s grace period, 5 s per hook, no force
    /// deadline.
    pub fn new() -> Shutdown {
        Shutdown::from_builder(ShutdownBuilder::default())
    }

    /// A builder to set the grace period, force deadline and hook timeout.
    pub fn builder() -> ShutdownBuilder {
        ShutdownBuilder::default()
    }

    pub(crate) fn from_builder(config: ShutdownBuilder) -> Shutdown {
        let (phase, _) = watch::channel(Phase::Running);
        let metrics = ShutdownMetrics::new(&config.name);
        Shutdown {
            inner: Arc::new(Inner {
                gate: Gate::new(),
                drained: Notify::new(),
                signals: Arc::default(),
                config,
                phase,
                report: OnceLock::new(),
                signals_installed: AtomicBool::new(false),
                state: Mutex::new(State::default()),
                metrics,
            }),
        }
    }

    /// A child scope with the same configuration: it shuts down when this one does
    /// (its trigger reason is [`TriggerReason::Parent`]), and can also be shut down
    /// on its own without affecting this one. Forcing this scope forces the child.
    ///
    /// This scope's [`wait`](Self::wait) does not wait for the child; register a
    /// stop hook that awaits `child.wait()` for that.
    pub fn child(&self) -> Shutdown {
        self.child_with(self.inner.config.clone())
            .expect("the parent's configuration was validated")
    }

    /// A child scope (see [`child`](Self::child)) with its own configuration.
    ///
    /// # Errors
    ///
    /// The builder's [`ConfigError`], if its configuration is invalid.
    pub fn child_with(&self, config: ShutdownBuilder) -> Result<Shutdown, ConfigError> {
        config.validate()?;
        let child = Shutdown::from_builder(config);
        let (triggered, forced) = {
            let mut st = self.inner.state();
            st.children.retain(|w| w.strong_count() > 0);
            st.children.push(Arc::downgrade(&child.inner));
            (st.trigger.is_some(), self.inner.signals.is_forced())
        };
        if triggered {
            child.trigger_with(TriggerReason::Parent);
        }
        if forced {
            child.force();
        }
        Ok(child)
    }

    /// A cheap handle for work that needs to know when shutdown begins.
    pub fn token(&self) -> ShutdownToken {
        ShutdownToken {
            signals: Arc::clone(&self.inner.signals),
        }
    }

    /// Whether shutdown has begun. One atomic load; needs no runtime.
    #[inline]
    pub fn is_triggered(&self) -> bool {
        self.inner.signals.is_triggered()
    }

    /// Whether the shutdown has been forced.
    #[inline]
    pub fn is_forced(&self) -> bool {
        self.inner.signals.is_forced()
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        *self.inner.phase.borrow()
    }

    /// A receiver of phase changes (a `tokio::sync::watch`), for observers that
    /// follow every phase.
    pub fn phases(&self) -> watch::Receiver<Phase> {
        self.inner.phase.subscribe()
    }

    /// Completes once the shutdown has reached `phase` (see
    /// [`Phase::has_reached`]): `reached(Phase::Stopped)` also completes when the
    /// shutdown was forced. Observing does not drive: the sequence runs on its own
    /// once triggered (see [`trigger`](Self::trigger)).
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: the future holds only its own phase receiver, which dropping it
    /// releases; the shutdown and other observers are unaffected.
    pub async fn reached(&self, phase: Phase) {
        let mut rx = self.inner.phase.subscribe();
        // The sender lives in `self.inner`, which `self` keeps alive, so the
        // channel cannot close while we wait.
        let _ = rx.wait_for(|p| p.has_reached(phase)).await;
    }

    /// Begins the shutdown: new work is refused from now on, tokens report it, and
    /// the shutdown sequence (drain, stop hooks, report) runs to its end whether or
    /// not anyone [`wait`](Self::wait)s. Returns `true` if this call began it,
    /// `false` if it had begun already (triggering twice is fine).
    ///
    /// # Where the sequence runs
    ///
    /// The sequence starts at the trigger as a task of its own: on the tokio
    /// runtime of the caller if there is one (so hooks run there, and a paused test
    /// clock applies), otherwise on a thread of its own (`heijunka-shutdown`) with a
    /// private single-threaded runtime with timers. A `wait` (or `wait_blocking`)
    /// that finds no task running the sequence starts one the same way.
    ///
    /// The sequence keeps its progress (drain result, hooks run, their reports) in
    /// the coordinator, not in the task, so it always finishes:
    ///
    /// - if the task is dropped before the end (its runtime shuts down, say
    ///   mid-grace) or panics (its runtime has no timers: `enable_time` was not
    ///   called), the sequence goes on from where it was on the coordinator's own
    ///   `heijunka-shutdown` thread. A hook whose future had started on the lost
    ///   runtime is reported as [`HookOutcome::Error`](crate::HookOutcome::Error)
    ///   (it was cancelled with that runtime); one not yet started runs there.
    /// - if [`wait_blocking`](Self::wait_blocking) blocks the single-threaded
    ///   runtime whose task runs the sequence (trigger, an `.await`, then
    ///   `wait_blocking` in the same task), `wait_blocking` takes the sequence over
    ///   on a private runtime in the same way.
    ///
    /// After such a move the grace period and hook timeouts are measured on the
    /// new runtime's clock (real time), from the same trigger instant.
    pub fn trigger(&self) -> bool {
        self.trigger_with(TriggerReason::Call)
    }

    pub(crate) fn trigger_with(&self, reason: TriggerReason) -> bool {
        let Some(in_flight) = self.inner.gate.close() else {
            return false;
        };
        let children: Vec<Shutdown> = {
            let mut st = self.inner.state();
            st.trigger = Some(TriggerInfo {
                reason: reason.clone(),
                at: Instant::now(),
                in_flight,
            });
            st.children
                .iter()
                .filter_map(Weak::upgrade)
                .map(|inner| Shutdown { inner })
                .collect()
        };
        self.inner.metrics.triggered(&reason);
        self.inner.set_phase(Phase::Draining);
        tracing::info!(
            shutdown.trigger = %reason,
            shutdown.in_flight = in_flight,
            "shutdown triggered: draining"
        );
        self.inner.signals.trigger();
        self.start_driver();
        for child in children {
            child.trigger_with(TriggerReason::Parent);
        }
        true
    }

    /// Makes sure the shutdown sequence runs: unless a runner holds it, spawns a
    /// candidate runner on the current tokio runtime if there is one, on the
    /// coordinator's own thread otherwise (see [`trigger`](Self::trigger)). Once
    /// triggered, the first candidate to be polled claims the sequence and runs it;
    /// later ones end at once. A candidate that never runs claims nothing, and a
    /// runner lost before the end hands its claim back (see `drive::Claim`).
    pub(crate) fn start_driver(&self) {
        if self.inner.report.get().is_some() || self.inner.state().run.is_claimed() {
            return;
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let mut candidate = Candidate {
                shutdown: self.clone(),
                claimed: false,
            };
            handle.spawn(async move {
                let this = candidate.shutdown.clone();
                this.run_sequence(false, &mut candidate.claimed).await;
            });
            return;
        }
        self.run_on_own_thread();
    }

    /// Runs the sequence on the coordinator's own thread (`heijunka-shutdown`),
    /// with a private single-threaded runtime with timers.
    pub(crate) fn run_on_own_thread(&self) {
        let this = self.clone();
        let started = std::thread::Builder::new()
            .name("heijunka-shutdown".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(this.run_sequence(true, &mut false)),
                    Err(e) => tracing::error!(error = %e, "cannot start the shutdown's runtime"),
                }
            });
        if let Err(e) = started {
            tracing::error!(error = %e, "cannot start the shutdown's thread");
        }
    }

    /// Forces the shutdown: stop draining and skip the remaining hooks (a hook that
    /// is running is cancelled). Triggers first if needed. Tokens report
    /// [`is_forced`](ShutdownToken::is_forced); child scopes are forced too.
    pub fn force(&self) {
        self.trigger();
        if !self.inner.signals.is_forced() {
            tracing::warn!("shutdown forced");
        }
        self.inner.signals.force();
        let children: Vec<Shutdown> = self
            .inner
            .state()
            .children
            .iter()
            .filter_map(Weak::upgrade)
            .map(|inner| Shutdown { inner })
            .collect();
        for child in children {
            child.force();
        }
    }

    /// Marks one unit of work in flight until the guard drops; refused once shutdown
    /// has begun, so no new work starts after the trigger.
    ///
    /// The running path is two atomic operations (enter and leave), no allocation.
    ///
    /// # Errors
    ///
    /// [`ShuttingDown`] once the shutdown has been triggered.
    #[inline]
    pub fn try_enter(&self) -> Result<InFlight<'_>, ShuttingDown> {
        self.enter()?;
        Ok(InFlight { shutdown: self })
    }

    /// [`try_enter`](Self::try_enter) with an owned (`'static`) guard, for moving
    /// into a task or thread. Costs an `Arc` clone more.
    ///
    /// # Errors
    ///
    /// [`ShuttingDown`] once the shutdown has been triggered.
    pub fn try_enter_owned(&self) -> Result<OwnedInFlight, ShuttingDown> {
        self.enter()?;
        Ok(OwnedInFlight {
            inner: Arc::clone(&self.inner),
        })
    }

    #[inline]
    fn enter(&self) -> Result<(), ShuttingDown> {
        match self.inner.gate.try_enter() {
            Enter::Admitted => {
                self.inner.metrics.in_flight.increment(1.0);
                Ok(())
            }
            Enter::Refused { drained } => {
                if drained {
                    self.inner.drained.notify_waiters();
                }
                Err(ShuttingDown)
            }
        }
    }

    /// Work in flight now.
    pub fn in_flight(&self) -> u64 {
        self.inner.gate.count()
    }

    /// Spawns `future` on the current tokio runtime as tracked work: it counts as in
    /// flight until it finishes (or is aborted), like work holding an [`InFlight`]
    /// guard. A task still running when the grace period ends is counted in the
    /// report's `in_flight_at_deadline`; use [`spawn_named`](Self::spawn_named) to
    /// have it listed by name too.
    ///
    /// Costs what `tokio::spawn` costs plus two atomic operations (enter and leave)
    /// and an `Arc` clone: no lock, no allocation of its own.
    ///
    /// # Errors
    ///
    /// Once shutdown has begun the future is not spawned and comes back in the
    /// [`SpawnError`].
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, as `tokio::spawn` does.
    ///
    /// # Cancel safety
    ///
    /// The returned [`JoinHandle`] is tokio's: dropping it detaches the task, which
    /// keeps running and keeps counting as in flight until it ends.
    pub fn spawn<F>(&self, future: F) -> Result<JoinHandle<F::Output>, SpawnError<F>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let Ok(guard) = self.try_enter_owned() else {
            return Err(SpawnError { future });
        };
        Ok(tokio::spawn(async move {
            // Dropped when the task ends, also on panic or abort.
            let _guard = guard;
            future.await
        }))
    }

    /// [`spawn`](Self::spawn), and if the task is still running when the grace
    /// period ends, its `name` is listed in the report's `abandoned_tasks`.
    ///
    /// The name is kept in a slab under the coordinator's lock while the task runs
    /// (a lock on spawn and on exit; a `&'static str` name allocates nothing once
    /// the slab has grown to the most named tasks running at once). Use
    /// [`spawn`](Self::spawn) on hot paths.
    ///
    /// # Errors
    ///
    /// Once shutdown has begun the future is not spawned and comes back in the
    /// [`SpawnError`].
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, as `tokio::spawn` does.
    ///
    /// # Cancel safety
    ///
    /// As for [`spawn`](Self::spawn): dropping the [`JoinHandle`] detaches the task.
    pub fn spawn_named<F>(
        &self,
        name: impl Into<Cow<'static, str>>,
        future: F,
    ) -> Result<JoinHandle<F::Output>, SpawnError<F>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let Ok(guard) = self.try_enter_owned() else {
            return Err(SpawnError { future });
        };
        let slot = self.inner.state().tasks.insert(name.into());
        let entry = TaskEntry {
            inner: Arc::clone(&self.inner),
            slot,
        };
        Ok(tokio::spawn(async move {
            // Dropped in reverse order, also on panic or abort: the name goes before
            // the in-flight mark, so a completed drain never lists a finished task.
            let _guard = guard;
            let _entry = entry;
            future.await
        }))
    }

    /// Registers a stop hook, run after in-flight work drains (or the grace period
    /// ends), in reverse registration order, with the default hook timeout.
    ///
    /// `hook` is called when its turn comes and its future is run as a task of its
    /// own: an error, a panic or a timeout is reported and the next hook runs.
    ///
    /// # Errors
    ///
    /// [`ShuttingDown`] if the hooks have already started running.
    pub fn on_stop<F, Fut, E>(&self, name: impl Into<String>, hook: F) -> Result<(), ShuttingDown>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<HookError>,
    {
        self.on_stop_with_timeout(name, self.inner.config.hook_timeout, hook)
    }

    /// [`on_stop`](Self::on_stop) for a component that stops itself within
    /// `grace` (a pool, a dispatcher, a bus: their `register_with`): the hook's
    /// time limit is `grace` plus [`HOOK_GRACE_MARGIN`], or the coordinator's hook
    /// timeout if that is longer, so the component gets the whole grace it was given
    /// and is cut off only if it overruns it. The report names a hook that overran
    /// ([`ShutdownReport::overran`]).
    ///
    /// # Errors
    ///
    /// [`ShuttingDown`] if the hooks have already started running.
    pub fn on_stop_with_grace<F, Fut, E>(
        &self,
        name: impl Into<String>,
        grace: Duration,
        hook: F,
    ) -> Result<(), ShuttingDown>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<HookError>,
    {
        let timeout = grace
            .saturating_add(HOOK_GRACE_MARGIN)
            .max(self.inner.config.hook_timeout);
        self.on_stop_with_timeout(name, timeout, hook)
    }

    /// [`on_stop`](Self::on_stop) with this hook's own time limit. A zero timeout
    /// means the hook is reported as timed out without being given any time.
    ///
    /// # Errors
    ///
    /// [`ShuttingDown`] if the hooks have already started running.
    pub fn on_stop_with_timeout<F, Fut, E>(
        &self,
        name: impl Into<String>,
        timeout: Duration,
        hook: F,
    ) -> Result<(), ShuttingDown>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<HookError>,
    {
        let mut st = self.inner.state();
        if st.hooks_started {
            return Err(ShuttingDown);
        }
        st.hooks.push(Hook {
            name: name.into(),
            timeout,
            run: Box::new(move || {
                let fut = hook();
                Box::pin(async move { fut.await.map_err(Into::into) })
            }),
        });
        Ok(())
    }
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown::new()
    }
}

impl fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shutdown")
            .field("phase", &self.phase())
            .field("in_flight", &self.in_flight())
            .field("grace_period", &self.inner.config.grace_period)
            .field("force_after", &self.inner.config.force_after)
            .finish_non_exhaustive()
    }
}

/// A runner spawned on a caller's runtime. Dropped without having claimed the
/// sequence (its runtime went away before polling it, or after the trigger woke
/// it) while the sequence is triggered, unclaimed and unfinished, it hands the
/// sequence to the coordinator's own thread: nobody need `wait` for it to run.
/// (A runner that claimed hands it on through its `Claim`.)
struct Candidate {
    shutdown: Shutdown,
    claimed: bool,
}

impl Drop for Candidate {
    fn drop(&mut self) {
        let s = &self.shutdown;
        if !self.claimed
            && s.is_triggered()
            && s.inner.report.get().is_none()
            && !s.inner.state().run.is_claimed()
        {
            s.run_on_own_thread();
        }
    }
}

/// Removes a named task's name when the task ends, however it ends.
struct TaskEntry {
    inner: Arc<Inner>,
    slot: usize,
}

impl Drop for TaskEntry {
    fn drop(&mut self) {
        self.inner.state().tasks.remove(self.slot);
    }
}
