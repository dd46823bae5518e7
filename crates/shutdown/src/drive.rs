//! Running the shutdown: drain, hooks, report.

use std::any::Any;
use std::time::Duration;

use tokio::time::{Instant, sleep_until, timeout};

use crate::shutdown::TriggerInfo;
use crate::{HookOutcome, HookReport, Phase, Shutdown, ShutdownReport};

impl Shutdown {
    /// Waits for the shutdown to be triggered and to finish, and returns the report.
    ///
    /// The first call starts the shutdown sequence on the current tokio runtime as a
    /// task of its own, so cancelling a waiter does not interrupt it: drain in-flight
    /// work (up to the grace period), then run the stop hooks in reverse
    /// registration order, each within its timeout. Any number of tasks may wait,
    /// before or after the shutdown finishes; all get the same report.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime (it spawns the sequence), as `tokio::spawn` does.
    pub async fn wait(&self) -> ShutdownReport {
        if let Some(report) = self.inner.report.get() {
            return report.clone();
        }
        let start_driver = {
            let mut st = self.inner.state();
            !std::mem::replace(&mut st.driver_started, true)
        };
        if start_driver {
            let this = self.clone();
            tokio::spawn(async move { this.drive().await });
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
    /// If no task is running the sequence yet, it runs on a private single-threaded
    /// tokio runtime (hooks run there too). Do not call it from inside an async
    /// task: that blocks the runtime's thread; use [`wait`](Self::wait) there. If
    /// it is called from inside a runtime anyway, the private runtime runs on a
    /// separate thread, so it does not panic as a nested `block_on` would.
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
        if tokio::runtime::Handle::try_current().is_ok() {
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
                    () = self.inner.force.cancelled() => {}
                    () = sleep_until(deadline) => {
                        tracing::warn!("shutdown force deadline passed");
                        self.force();
                    }
                }
            }
            None => self.inner.force.cancelled().await,
        }
    }

    async fn drive(&self) {
        self.inner.trigger.cancelled().await;
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
        let mut forced = self.inner.force.is_cancelled();

        // 1. Drain.
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
        let mut abandoned_tasks: Vec<String> = if drained {
            Vec::new()
        } else {
            self.inner.state().tasks.values().cloned().collect()
        };
        abandoned_tasks.sort();
        if drained {
            tracing::info!(shutdown.drain_time = ?drain_time, "shutdown drained");
        } else {
            tracing::warn!(
                shutdown.abandoned = in_flight_at_deadline,
                shutdown.drain_time = ?drain_time,
                "shutdown abandoned in-flight work"
            );
        }

        // 2. Hooks, last registered first.
        let hooks = {
            let mut st = self.inner.state();
            st.hooks_started = true;
            std::mem::take(&mut st.hooks)
        };
        if !forced {
            self.inner.phase.send_replace(Phase::Stopping);
        }
        let mut reports = Vec::with_capacity(hooks.len());
        for hook in hooks.into_iter().rev() {
            if forced {
                reports.push(HookReport {
                    name: hook.name,
                    outcome: HookOutcome::Skipped,
                    elapsed: Duration::ZERO,
                });
                continue;
            }
            let hook_start = Instant::now();
            let run = hook.run;
            // The hook's own task: its panics are caught by the runtime.
            let mut task = tokio::spawn(async move { run().await });
            let outcome = tokio::select! {
                biased;
                () = &mut force => {
                    forced = true;
                    task.abort();
                    HookOutcome::Skipped
                }
                res = timeout(hook.timeout, &mut task) => match res {
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
            match &outcome {
                HookOutcome::Ok => {
                    tracing::debug!(shutdown.hook = %hook.name, ?elapsed, "stop hook finished");
                }
                other => {
                    tracing::warn!(shutdown.hook = %hook.name, outcome = ?other, ?elapsed, "stop hook failed");
                }
            }
            reports.push(HookReport {
                name: hook.name,
                outcome,
                elapsed,
            });
        }

        let report = ShutdownReport {
            trigger: reason,
            forced,
            drained,
            in_flight_at_trigger,
            in_flight_at_deadline,
            abandoned_tasks,
            drain_time,
            total_time: started.elapsed(),
            hooks: reports,
        };
        tracing::info!(shutdown.clean = report.is_clean(), shutdown.forced = forced, total_time = ?report.total_time, "shutdown finished");
        let phase = report.phase();
        // Store first, then publish the phase: `wait` reads the report once it sees
        // a final phase.
        let _ = self.inner.report.set(report);
        self.inner.phase.send_replace(phase);
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
