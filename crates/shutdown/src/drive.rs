//! Running the shutdown: drain, hooks, report.

use std::any::Any;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::ThreadId;
use std::time::Duration;

use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::time::{Instant, sleep_until, timeout};

use crate::shutdown::{Hook, HookFn, TriggerInfo};
use crate::{HookOutcome, HookReport, Phase, Shutdown, ShutdownReport};

/// A started hook's body, shared between its task (which takes it when first
/// polled) and the runner (which takes it back if the task never ran).
type HookSlot = Arc<Mutex<Option<HookFn>>>;

/// Who runs the shutdown sequence, and how far it has got: kept in the coordinator
/// (under its state lock) so that a runner lost on the way can be replaced by one
/// that goes on from there.
#[derive(Default)]
pub(crate) struct RunState {
    /// The claim of the runner running the sequence (0: none).
    claim: u64,
    /// Claims handed out so far (each claim gets a new number).
    claims: u64,
    /// The thread the runner claimed on (a single-threaded runtime's tasks run on
    /// one thread: `wait_blocking` there freezes that runner).
    thread: Option<ThreadId>,
    /// The drain's outcome, once it has ended.
    drain: Option<Drain>,
    /// The hooks that have ended, in the order they ran.
    reports: Vec<HookReport>,
    /// The hook running now.
    current: Option<Running>,
}

impl RunState {
    pub(crate) fn is_claimed(&self) -> bool {
        self.claim != 0
    }
}

#[derive(Clone)]
struct Drain {
    forced: bool,
    drained: bool,
    in_flight_at_deadline: u64,
    abandoned_tasks: Vec<String>,
    drain_time: Duration,
}

struct Running {
    name: String,
    timeout: Duration,
    start: Instant,
    run: HookSlot,
}

/// A runner's claim on the sequence. Dropped before the report is stored (the
/// runner's task was dropped with its runtime, or panicked), it hands the sequence
/// on: a runner on a caller's runtime to the coordinator's own thread; a runner on
/// the coordinator's own thread (which only a bug can stop) ends the sequence with
/// a forced report of what it knows, so no waiter hangs.
pub(crate) struct Claim {
    shutdown: Shutdown,
    id: u64,
    own_thread: bool,
}

impl Drop for Claim {
    fn drop(&mut self) {
        let s = &self.shutdown;
        if s.inner.report.get().is_some() {
            return;
        }
        if self.own_thread {
            s.abandon(self.id);
        } else if s.release(
            self.id,
            "cancelled: the runtime running the shutdown went away while it ran",
        ) {
            tracing::warn!(
                "the task running the shutdown was lost before the end (its runtime shut down or has no timers): going on on the coordinator's own thread"
            );
            s.run_on_own_thread();
        }
    }
}

impl Shutdown {
    /// Waits for the shutdown to be triggered and to finish, and returns the report.
    ///
    /// The sequence (drain in-flight work up to the grace period, then run the stop
    /// hooks in reverse registration order, each within its timeout) runs as a task
    /// of its own, started by the trigger (see [`trigger`](Self::trigger) for where
    /// it runs, and why it always finishes); waiting is not what moves it. Any
    /// number of tasks may wait, before or after the shutdown finishes; all get the
    /// same report.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe. Dropping the future only stops this waiter: it leaves no
    /// waiter behind, the shutdown still runs to its end for everyone else, and a
    /// later `wait` returns the same report.
    pub async fn wait(&self) -> ShutdownReport {
        if let Some(report) = self.inner.report.get() {
            return report.clone();
        }
        // The trigger starts the sequence; a wait after it makes sure it runs (in
        // case no runner holds it). Before the trigger there is nothing to start.
        if self.is_triggered() {
            self.start_driver();
        }
        self.reached(Phase::Stopped).await;
        self.inner
            .report
            .get()
            .expect("the report is stored before the final phase is published")
            .clone()
    }

    /// [`wait`](Self::wait) for code without a runtime (a thread pool's shutdown
    /// path): blocks the calling thread until the shutdown finishes.
    ///
    /// It waits on a private single-threaded tokio runtime, which runs the sequence
    /// if no runner holds it. Prefer [`wait`](Self::wait) inside an async task:
    /// this call blocks the runtime's thread. Called there anyway, it does not
    /// deadlock: the private runtime runs on a separate thread (no nested
    /// `block_on` panic), and on a single-threaded runtime, whose tasks this call
    /// freezes, it takes over the sequence if a task of that runtime was running it
    /// (see [`trigger`](Self::trigger)).
    ///
    /// # Panics
    ///
    /// If the operating system refuses to create the private runtime or its thread.
    pub fn wait_blocking(&self) -> ShutdownReport {
        if let Some(report) = self.inner.report.get() {
            return report.clone();
        }
        let run = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cannot create the runtime for Shutdown::wait_blocking")
                .block_on(self.wait())
        };
        if let Ok(handle) = Handle::try_current() {
            if handle.runtime_flavor() == RuntimeFlavor::CurrentThread {
                self.release_frozen_runner();
            }
            std::thread::scope(|s| {
                std::thread::Builder::new()
                    .name("heijunka-shutdown-wait".into())
                    .spawn_scoped(s, run)
                    .expect("cannot spawn the thread for Shutdown::wait_blocking")
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
        } else {
            run()
        }
    }

    /// Called on a single-threaded runtime's thread that is about to block: a
    /// runner claimed on this thread cannot be polled until the block ends, so its
    /// claim is released for another runner to go on.
    fn release_frozen_runner(&self) {
        let me = std::thread::current().id();
        let frozen = {
            let st = self.inner.state();
            (st.run.thread == Some(me)).then_some(st.run.claim)
        };
        if let Some(id) = frozen {
            self.release(
                id,
                "cancelled: Shutdown::wait_blocking blocked the runtime running it",
            );
        }
    }

    /// Releases claim `id` if it still holds the sequence: the hook it was running
    /// is put back to run again if its future had not started, reported as an
    /// error (`why`) if it had. Returns whether it released anything.
    pub(crate) fn release(&self, id: u64, why: &str) -> bool {
        let mut st = self.inner.state();
        if id == 0 || st.run.claim != id {
            return false;
        }
        st.run.claim = 0;
        st.run.thread = None;
        if let Some(cur) = st.run.current.take() {
            let body = cur
                .run
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            match body {
                Some(run) => st.hooks.push(Hook {
                    name: cur.name,
                    timeout: cur.timeout,
                    run,
                }),
                None => st.run.reports.push(HookReport {
                    name: cur.name,
                    outcome: HookOutcome::Error(why.to_string()),
                    timeout: cur.timeout,
                    elapsed: cur.start.elapsed(),
                }),
            }
        }
        true
    }

    /// Ends the sequence held by claim `id` with a forced report of what is known
    /// (the runner on the coordinator's own thread was lost: a bug).
    fn abandon(&self, id: u64) {
        let report = {
            let mut st = self.inner.state();
            if st.run.claim != id {
                return;
            }
            let Some(info) = st.trigger.clone() else {
                return;
            };
            let drain = st.run.drain.clone().unwrap_or_else(|| Drain {
                forced: true,
                drained: false,
                in_flight_at_deadline: self.inner.gate.count(),
                abandoned_tasks: st.tasks.running(),
                drain_time: info.at.elapsed(),
            });
            let mut hooks = std::mem::take(&mut st.run.reports);
            if let Some(cur) = st.run.current.take() {
                hooks.push(HookReport {
                    name: cur.name,
                    outcome: HookOutcome::Error("cancelled: the shutdown's runner was lost".into()),
                    timeout: cur.timeout,
                    elapsed: cur.start.elapsed(),
                });
            }
            st.hooks_started = true;
            for hook in std::mem::take(&mut st.hooks).into_iter().rev() {
                hooks.push(HookReport {
                    name: hook.name,
                    outcome: HookOutcome::Skipped,
                    timeout: hook.timeout,
                    elapsed: Duration::ZERO,
                });
            }
            let report = ShutdownReport {
                trigger: info.reason,
                forced: true,
                drained: drain.drained,
                in_flight_at_trigger: info.in_flight,
                in_flight_at_deadline: drain.in_flight_at_deadline,
                abandoned_tasks: drain.abandoned_tasks,
                drain_time: drain.drain_time,
                total_time: info.at.elapsed(),
                hooks,
            };
            let _ = self.inner.report.set(report);
            self.inner.report.get().map(ShutdownReport::phase)
        };
        tracing::error!("the shutdown's runner was lost: the shutdown ends forced");
        if let Some(phase) = report {
            self.inner.set_phase(phase);
        }
    }

    /// Completes when in-flight work reaches zero.
    async fn drained(&self) {
        loop {
            let notified = self.inner.drained.notified();
            tokio::pin!(notified);
            // Register before checking, so an exit between the check and the await
            // still wakes us.
            notified.as_mut().enable();
            if self.inner.gate.count() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Completes when the shutdown is forced: by `force()` or when the `force_after`
    /// deadline passes (which forces it).
    async fn forced(&self, deadline: Option<Instant>) {
        match deadline {
            Some(deadline) => {
                tokio::select! {
                    () = self.inner.signals.force.cancelled() => {}
                    () = sleep_until(deadline) => {
                        tracing::warn!("shutdown force deadline passed");
                        self.force();
                    }
                }
            }
            None => self.inner.signals.force.cancelled().await,
        }
    }

    /// A runner: once triggered, claims the sequence unless another runner holds
    /// it (or it has ended), and runs it from where it is. Sets `claimed` when it
    /// has claimed (from then on its `Claim` hands the sequence on if it is lost).
    pub(crate) async fn run_sequence(&self, own_thread: bool, claimed: &mut bool) {
        self.inner.signals.trigger.cancelled().await;
        if self.inner.report.get().is_some() {
            return;
        }
        let id = {
            let mut st = self.inner.state();
            if st.run.claim != 0 {
                return;
            }
            st.run.claims += 1;
            st.run.claim = st.run.claims;
            st.run.thread = Some(std::thread::current().id());
            st.run.claim
        };
        *claimed = true;
        let claim = Claim {
            shutdown: self.clone(),
            id,
            own_thread,
        };
        self.drive(claim.id).await;
        drop(claim);
    }

    /// Runs the sequence under claim `id`, from where a former runner left it;
    /// returns early once the claim was taken away (`wait_blocking`).
    async fn drive(&self, id: u64) {
        let TriggerInfo {
            reason,
            at: started,
            in_flight: in_flight_at_trigger,
        } = self
            .inner
            .state()
            .trigger
            .clone()
            .expect("trigger info is stored before the token is cancelled");
        let config = &self.inner.config;
        let force_at = config.force_after.map(|d| started + d);
        let force = self.forced(force_at);
        tokio::pin!(force);

        // 1. Drain, unless a former runner saw it end.
        let done = self.inner.state().run.drain.clone();
        let drain = match done {
            Some(drain) => drain,
            None => {
                let mut forced = self.inner.signals.is_forced();
                let drained = if forced {
                    self.inner.gate.count() == 0
                } else {
                    tokio::select! {
                        biased;
                        () = &mut force => {
                            forced = true;
                            self.inner.gate.count() == 0
                        }
                        () = self.drained() => true,
                        () = sleep_until(started + config.grace_period) => self.inner.gate.count() == 0,
                    }
                };
                let drain_time = started.elapsed();
                let in_flight_at_deadline = if drained { 0 } else { self.inner.gate.count() };
                let drain = {
                    let mut st = self.inner.state();
                    if st.run.claim != id {
                        return;
                    }
                    let drain = Drain {
                        forced,
                        drained,
                        in_flight_at_deadline,
                        abandoned_tasks: if drained {
                            Vec::new()
                        } else {
                            st.tasks.running()
                        },
                        drain_time,
                    };
                    st.run.drain = Some(drain.clone());
                    drain
                };
                if drained {
                    tracing::info!(shutdown.drain_time = ?drain_time, "shutdown drained");
                } else {
                    tracing::warn!(
                        shutdown.abandoned = in_flight_at_deadline,
                        shutdown.drain_time = ?drain_time,
                        "shutdown abandoned in-flight work"
                    );
                }
                drain
            }
        };
        let mut forced = drain.forced || self.inner.signals.is_forced();

        // 2. Hooks, last registered first.
        self.inner.state().hooks_started = true;
        if !forced {
            self.inner.set_phase(Phase::Stopping);
        }
        loop {
            // Take the next hook and mark it running in one step, so a runner lost
            // from here on hands it on (see `release`).
            let (name, limit, slot) = {
                let mut st = self.inner.state();
                if st.run.claim != id {
                    return;
                }
                let Some(hook) = st.hooks.pop() else {
                    break;
                };
                if forced {
                    st.run.reports.push(HookReport {
                        name: hook.name,
                        outcome: HookOutcome::Skipped,
                        timeout: hook.timeout,
                        elapsed: Duration::ZERO,
                    });
                    continue;
                }
                let slot: HookSlot = Arc::new(Mutex::new(Some(hook.run)));
                st.run.current = Some(Running {
                    name: hook.name.clone(),
                    timeout: hook.timeout,
                    start: Instant::now(),
                    run: Arc::clone(&slot),
                });
                (hook.name, hook.timeout, slot)
            };
            let hook_start = Instant::now();
            // The hook's own task: its panics are caught by the runtime. It takes
            // the body when first polled; a body taken back by `release` runs
            // elsewhere, and this task ends at once.
            let mut task = tokio::spawn(async move {
                let body = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
                match body {
                    Some(run) => run().await,
                    None => Ok(()),
                }
            });
            let outcome = tokio::select! {
                biased;
                () = &mut force => {
                    forced = true;
                    task.abort();
                    HookOutcome::Skipped
                }
                res = timeout(limit, &mut task) => match res {
                    Err(_) => {
                        task.abort();
                        HookOutcome::TimedOut
                    }
                    Ok(Ok(Ok(()))) => HookOutcome::Ok,
                    Ok(Ok(Err(e))) => HookOutcome::Error(e.to_string()),
                    Ok(Err(e)) if e.is_panic() => HookOutcome::Panicked(panic_message(e.into_panic())),
                    Ok(Err(_)) => HookOutcome::Error("the hook's task was cancelled".into()),
                }
            };
            let elapsed = hook_start.elapsed();
            {
                let mut st = self.inner.state();
                if st.run.claim != id {
                    return;
                }
                st.run.current = None;
                st.run.reports.push(HookReport {
                    name: name.clone(),
                    outcome: outcome.clone(),
                    timeout: limit,
                    elapsed,
                });
            }
            match &outcome {
                HookOutcome::Ok => {
                    tracing::debug!(shutdown.hook = %name, ?elapsed, "stop hook finished");
                }
                HookOutcome::TimedOut => {
                    tracing::warn!(shutdown.hook = %name, timeout = ?limit, ?elapsed, "stop hook overran its time limit: cut off");
                }
                other => {
                    tracing::warn!(shutdown.hook = %name, outcome = ?other, ?elapsed, "stop hook failed");
                }
            }
        }

        // Store the report under the lock (no runner can take over meanwhile), then
        // publish the phase: `wait` reads the report once it sees a final phase.
        let phase = {
            let mut st = self.inner.state();
            if st.run.claim != id {
                return;
            }
            let report = ShutdownReport {
                trigger: reason,
                forced,
                drained: drain.drained,
                in_flight_at_trigger,
                in_flight_at_deadline: drain.in_flight_at_deadline,
                abandoned_tasks: drain.abandoned_tasks,
                drain_time: drain.drain_time,
                total_time: started.elapsed(),
                hooks: std::mem::take(&mut st.run.reports),
            };
            let summary = (report.phase(), report.is_clean(), report.total_time);
            let _ = self.inner.report.set(report);
            summary
        };
        let (phase, clean, total_time) = phase;
        tracing::info!(
            shutdown.clean = clean,
            shutdown.forced = forced,
            ?total_time,
            "shutdown finished"
        );
        self.inner.set_phase(phase);
    }
}

fn panic_message(payload: Box<dyn Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_string()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::time::Duration;

    use heijunka_core::cancel::{Outcome, Polled, cancel_points};

    use crate::{Phase, Shutdown, ShutdownReport};

    fn paused_runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("a current-thread runtime")
    }

    /// A coordinator with one in-flight guard and one stop hook that takes 1 s.
    fn fixture() -> (Shutdown, Option<crate::OwnedInFlight>) {
        let shutdown = Shutdown::builder()
            .grace_period(Duration::from_secs(5))
            .build()
            .expect("valid configuration");
        shutdown
            .on_stop("db", || async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                Ok::<_, std::io::Error>(())
            })
            .expect("hooks have not run");
        let guard = shutdown.try_enter_owned().expect("running");
        (shutdown, Some(guard))
    }

    /// Between polls: trigger before the second, release the work before the
    /// third, and let the runtime run with 500 ms of paused time passing.
    fn world(
        rt: &tokio::runtime::Runtime,
        shutdown: &Shutdown,
        guard: &mut Option<crate::OwnedInFlight>,
    ) -> impl FnMut(usize) {
        move |i| {
            if i == 1 {
                shutdown.trigger();
            }
            if i == 2 {
                drop(guard.take());
            }
            rt.block_on(async {
                tokio::task::yield_now().await;
                tokio::time::advance(Duration::from_millis(500)).await;
            });
        }
    }

    /// After the future was dropped: the shutdown still finishes for another
    /// waiter, a later `wait` gets the same report, and no phase receiver (a
    /// waiter) is left.
    fn check_after_drop(
        rt: &tokio::runtime::Runtime,
        shutdown: &Shutdown,
        guard: Option<crate::OwnedInFlight>,
        other: tokio::task::JoinHandle<ShutdownReport>,
    ) -> ShutdownReport {
        shutdown.trigger();
        drop(guard);
        let report = rt.block_on(other).expect("the other waiter finishes");
        assert!(report.is_clean(), "{report}");
        assert_eq!(rt.block_on(shutdown.wait()), report, "a second wait");
        assert_eq!(
            shutdown.inner.phase.receiver_count(),
            0,
            "a dropped waiter left its receiver behind"
        );
        report
    }

    /// A runner lost after it took a hook but before the hook's task ran (its
    /// runtime never polled it) puts the hook back: it runs exactly once, on the
    /// coordinator's own thread, and the report says it ran.
    #[cfg_attr(miri, ignore)] // a real thread runs the rest
    #[test]
    fn a_lost_runner_puts_back_a_hook_that_had_not_started() {
        let rt = paused_runtime();
        let _g = rt.enter();
        let shutdown = Shutdown::new();
        let runs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = std::sync::Arc::clone(&runs);
        shutdown
            .on_stop("db", move || async move {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok::<_, std::io::Error>(())
            })
            .expect("hooks have not run");
        shutdown.trigger(); // its runner's task sits on `rt`, which never runs it
        let mut claimed = false;
        let mut runner = Polled::new(shutdown.run_sequence(false, &mut claimed));
        // One poll: claims, drains (nothing in flight), spawns the hook's task on
        // `rt` (not run: nothing drives `rt`) and waits for it.
        assert!(!runner.poll(), "the runner waits for its hook");
        assert_eq!(shutdown.phase(), Phase::Stopping);
        drop(runner); // the runner is lost
        let report = shutdown.wait_blocking();
        assert!(report.is_clean(), "{report}");
        assert_eq!(
            runs.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "the hook ran once"
        );
    }

    #[test]
    fn wait_cancelled_at_every_poll() {
        let covered = cancel_points(64, |k| {
            let rt = paused_runtime();
            let _g = rt.enter();
            let (shutdown, mut guard) = fixture();
            let other = rt.spawn({
                let s = shutdown.clone();
                async move { s.wait().await }
            });
            let outcome =
                Polled::new(shutdown.wait()).drop_after_with(k, world(&rt, &shutdown, &mut guard));
            let report = check_after_drop(&rt, &shutdown, guard, other);
            if let Outcome::Completed { output, .. } = &outcome {
                assert_eq!(*output, report, "every waiter gets the same report");
            }
            outcome
        });
        assert!(covered > 3, "the wait completed after {covered} polls");
    }

    #[cfg_attr(miri, ignore)] // too slow under miri: a runtime per cancel point and phase
    #[test]
    fn reached_cancelled_at_every_poll() {
        for phase in [Phase::Draining, Phase::Stopping, Phase::Stopped] {
            cancel_points(64, |k| {
                let rt = paused_runtime();
                let _g = rt.enter();
                let (shutdown, mut guard) = fixture();
                let other = rt.spawn({
                    let s = shutdown.clone();
                    async move { s.wait().await }
                });
                let outcome = Polled::new(shutdown.reached(phase))
                    .drop_after_with(k, world(&rt, &shutdown, &mut guard));
                if outcome.is_completed() {
                    assert!(shutdown.phase().has_reached(phase));
                }
                check_after_drop(&rt, &shutdown, guard, other);
                outcome
            });
        }
    }
}
