//! Running the shutdown: drain, hooks, report.

use std::any::Any;
use std::time::Duration;

use tokio::time::{Instant, sleep_until, timeout};

use crate::shutdown::TriggerInfo;
use crate::{HookOutcome, HookReport, Phase, Shutdown, ShutdownReport};

impl Shutdown {
    /// Waits for the shutdown to be triggered and to finish, and returns the report.
    ///
    /// The sequence (drain in-flight work up to the grace period, then run the stop
    /// hooks in reverse registration order, each within its timeout) runs as a task
    /// of its own, started by the trigger or by the first `wait`, whichever comes
    /// first (see [`trigger`](Self::trigger) for where it runs); waiting is not what
    /// moves it. Any number of tasks may wait, before or after the shutdown
    /// finishes; all get the same report.
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
        self.start_driver();
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
    /// If no runner has started the sequence yet (none was spawned, or the one the
    /// trigger spawned sits on the runtime this call is blocking), it runs on a
    /// private single-threaded tokio runtime (hooks run there too). Do not call it
    /// from inside an async task: that blocks the runtime's thread; use
    /// [`wait`](Self::wait) there. If it is called from inside a runtime anyway, the
    /// private runtime runs on a separate thread, so it does not panic as a nested
    /// `block_on` would.
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

    pub(crate) async fn drive(&self) {
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
        let abandoned_tasks: Vec<String> = if drained {
            Vec::new()
        } else {
            self.inner.state().tasks.running()
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
                    timeout: hook.timeout,
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
                HookOutcome::TimedOut => {
                    tracing::warn!(shutdown.hook = %hook.name, timeout = ?hook.timeout, ?elapsed, "stop hook overran its time limit: cut off");
                }
                other => {
                    tracing::warn!(shutdown.hook = %hook.name, outcome = ?other, ?elapsed, "stop hook failed");
                }
            }
            reports.push(HookReport {
                name: hook.name,
                outcome,
                timeout: hook.timeout,
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
