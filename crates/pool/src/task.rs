//! [`TaskPool`]: bounds how many futures run at once on tokio, with a bounded wait
//! queue.

use std::fmt;
use std::future::{Future, poll_fn};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::pin;
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use std::time::Duration;

use heijunka_backpressure::{Reserve, Side, SlotState};
use heijunka_core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use heijunka_core::{ConfigError, Rejection, validate};
use heijunka_shutdown::{Shutdown, ShutdownToken};
use tokio::runtime::Handle;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::panic_message;
use crate::metrics::{GaugeGuard, PoolMetrics};
use crate::stats::{Counters, Timings};
use crate::{PoolReport, PoolStats, Rejected, SpawnError, TaskError};

const TIMING_SHARDS: usize = 16;

/// Bounds the number of futures running at once on tokio, with a bounded queue of
/// tasks waiting for a turn.
///
/// - [`try_spawn`](Self::try_spawn) starts the future if a running slot is free,
///   queues it if a waiting slot is free, and otherwise hands it back at once.
/// - [`spawn`](Self::spawn) waits for a waiting slot instead.
/// - A panic in a task is caught into its handle and counted; a shutdown cancels
///   what is left after the grace period.
///
/// ```
/// use heijunka_pool::TaskPool;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = TaskPool::builder().max_running(8).max_waiting(64).build()?;
/// let handle = pool.try_spawn(async { 6 * 7 }).map_err(|e| e.to_string())?;
/// assert_eq!(handle.join().await?, 42);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct TaskPool {
    inner: Arc<Inner>,
}

/// A running slot taken from the semaphore and forgotten: given back on drop,
/// when the task ends (or is dropped unfinished).
struct RunningSlot<'a>(&'a Inner);

impl Drop for RunningSlot<'_> {
    fn drop(&mut self) {
        self.0.running.add_permits(1);
    }
}

struct Inner {
    running: Arc<Semaphore>,
    max_running: usize,
    /// Tasks spawned but waiting for a running slot (slots), spawners waiting for a
    /// waiting slot (Push side), and the closed bit.
    waiting: SlotState,
    max_waiting: usize,
    room: Notify,
    /// Notified when the last waiting task of a closed pool takes its running
    /// slot: shutdown waits for that before it takes every slot itself.
    waiting_drained: Notify,
    cancel: CancellationToken,
    /// Set just before `cancel` fires: a plain load for the start-of-task check
    /// (the token's own check takes a lock).
    cancelled: AtomicBool,
    active: AtomicUsize,
    counters: Counters,
    /// Sharded by thread, so completing tasks do not contend on one lock.
    timings: Vec<Timings>,
    token: OnceLock<ShutdownToken>,
    /// The shutdown's outcome, once it has begun: it runs in its own task, so a
    /// caller that stops waiting does not stop it, and every call sees one outcome.
    report: OnceLock<watch::Receiver<Option<PoolReport>>>,
    /// The runtime the pool was built in, if any: `shutdown` runs there when it
    /// is awaited outside a runtime.
    rt: Option<Handle>,
}

/// Builds a [`TaskPool`].
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until `build()`"]
pub struct TaskPoolBuilder {
    max_running: usize,
    max_waiting: usize,
    name: String,
}

impl TaskPoolBuilder {
    /// The most futures running at once. Default 64; at most `u32::MAX`.
    pub fn max_running(mut self, n: usize) -> Self {
        self.max_running = n;
        self
    }

    /// The most tasks waiting for a running slot. Default 1024. Zero is allowed:
    /// then `try_spawn` rejects whenever every running slot is taken.
    pub fn max_waiting(mut self, n: usize) -> Self {
        self.max_waiting = n;
        self
    }

    /// The pool's name: the `name` label of its metrics (feature `metrics`; see
    /// `docs/metrics.md`). Default `"default"`.
    ///
    /// ```
    /// use heijunka_pool::TaskPool;
    ///
    /// let pool = TaskPool::builder().name("io").max_running(8).build()?;
    /// # let _ = pool;
    /// # Ok::<(), heijunka_core::ConfigError>(())
    /// ```
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for `max_running` of zero or above `u32::MAX` (shutdown
    /// waits for every running slot at once, and tokio takes at most `u32::MAX`
    /// permits in one wait), or `max_waiting` above the slot counter's limit.
    pub fn build(self) -> Result<TaskPool, ConfigError> {
        validate::at_least("max_running", self.max_running, 1)?;
        validate::at_most(
            "max_running",
            self.max_running,
            Semaphore::MAX_PERMITS.min(u32::MAX as usize),
        )?;
        validate::at_most(
            "max_waiting",
            self.max_waiting,
            heijunka_backpressure::MAX_CAPACITY,
        )?;
        Ok(TaskPool {
            inner: Arc::new(Inner {
                running: Arc::new(Semaphore::new(self.max_running)),
                max_running: self.max_running,
                waiting: SlotState::new(),
                max_waiting: self.max_waiting,
                room: Notify::new(),
                waiting_drained: Notify::new(),
                cancel: CancellationToken::new(),
                cancelled: AtomicBool::new(false),
                active: AtomicUsize::new(0),
                counters: Counters::with_metrics(PoolMetrics::new(&self.name)),
                timings: (0..TIMING_SHARDS).map(|_| Timings::new()).collect(),
                token: OnceLock::new(),
                report: OnceLock::new(),
                rt: Handle::try_current().ok(),
            }),
        })
    }
}

/// The handle of a [`TaskPool`] task.
pub struct TaskPoolHandle<T> {
    join: JoinHandle<Result<T, TaskError>>,
}

impl<T> TaskPoolHandle<T> {
    /// Waits for the task's value.
    ///
    /// # Errors
    ///
    /// [`TaskError::Panicked`] with the message, or [`TaskError::Cancelled`] if the
    /// pool's shutdown (or the runtime's) stopped it.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future detaches the task, as dropping the handle does: it
    /// still runs (and holds its running slot until it ends); its value is dropped.
    pub async fn join(self) -> Result<T, TaskError> {
        match self.join.await {
            Ok(r) => r,
            Err(e) if e.is_panic() => Err(TaskError::Panicked(panic_message(&*e.into_panic()))),
            Err(_) => Err(TaskError::Cancelled),
        }
    }

    /// Whether the task has finished.
    pub fn is_finished(&self) -> bool {
        self.join.is_finished()
    }
}

impl<T> fmt::Debug for TaskPoolHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskPoolHandle")
            .field("finished", &self.is_finished())
            .finish()
    }
}

impl TaskPool {
    /// A builder (defaults: 64 running, 1024 waiting).
    pub fn builder() -> TaskPoolBuilder {
        TaskPoolBuilder {
            max_running: 64,
            max_waiting: 1024,
            name: "default".into(),
        }
    }

    /// Starts `future` now if a running slot is free, queues it if a waiting slot
    /// is free; never waits. The task runs on the tokio runtime of the caller.
    ///
    /// # Errors
    ///
    /// The future comes back unpolled in [`SpawnError`]: `Rejected` with
    /// [`Rejection::QueueFull`] or [`Rejection::ShuttingDown`], or `NoRuntime`
    /// when called outside a tokio runtime (nothing is taken from the pool then).
    pub fn try_spawn<F>(&self, future: F) -> Result<TaskPoolHandle<F::Output>, SpawnError<F>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let Ok(rt) = Handle::try_current() else {
            self.inner.counters.rejected();
            return Err(SpawnError::NoRuntime(future));
        };
        self.try_spawn_on(&rt, future)
            .map_err(|e| self.refused(e).into())
    }

    fn refused<F>(&self, e: Rejected<F>) -> Rejected<F> {
        self.inner.counters.rejected();
        e
    }

    /// Whether new tasks are refused: closed, or the coordinator triggered.
    fn refuses(&self) -> bool {
        let inner = &self.inner;
        inner.waiting.is_closed() || inner.token.get().is_some_and(ShutdownToken::is_triggered)
    }

    fn try_spawn_on<F>(
        &self,
        rt: &Handle,
        future: F,
    ) -> Result<TaskPoolHandle<F::Output>, Rejected<F>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let inner = &self.inner;
        if self.refuses() {
            return Err(Rejected {
                task: future,
                reason: Rejection::ShuttingDown,
            });
        }
        if let Ok(permit) = inner.running.try_acquire() {
            // The task gives the slot back itself (`RunningSlot`): no `Arc` of the
            // semaphore travels with it.
            permit.forget();
            return Ok(self.launch(rt, future, true));
        }
        match inner.waiting.reserve(inner.max_waiting) {
            Reserve::Reserved { .. } => Ok(self.launch(rt, future, false)),
            Reserve::Full => Err(Rejected {
                task: future,
                reason: Rejection::QueueFull {
                    capacity: inner.max_waiting,
                },
            }),
            Reserve::Closed => Err(Rejected {
                task: future,
                reason: Rejection::ShuttingDown,
            }),
        }
    }

    /// Starts or queues `future`, waiting while the waiting queue is full.
    ///
    /// # Errors
    ///
    /// The future comes back unpolled in [`SpawnError`]: `Rejected` with
    /// [`Rejection::ShuttingDown`] if the pool is (or gets, while this waits)
    /// closed, or `NoRuntime` when polled outside a tokio runtime.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe for the future: dropped while it waits for room, `spawn`
    /// drops `future` with it, unpolled (as `tokio::sync::mpsc::Sender::send`
    /// drops its message). Nothing is left counted: no waiting or running slot is
    /// kept and no waiter stays registered. To keep the future when giving up,
    /// retry [`try_spawn`](Self::try_spawn) instead, which hands it back.
    pub async fn spawn<F>(&self, future: F) -> Result<TaskPoolHandle<F::Output>, SpawnError<F>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let inner = &self.inner;
        let Ok(rt) = Handle::try_current() else {
            inner.counters.rejected();
            return Err(SpawnError::NoRuntime(future));
        };
        let mut future = future;
        loop {
            match self.try_spawn_on(&rt, future) {
                Ok(h) => return Ok(h),
                Err(e) if e.reason == Rejection::ShuttingDown => {
                    return Err(self.refused(e).into());
                }
                Err(e) => future = e.task,
            }
            let notified = inner.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // A guard: unregisters even if this future is dropped while it waits
            // (a `spawn` cancelled mid-wait must not leave its count behind).
            let seen = inner.waiting.register(Side::Push);
            if seen.len >= inner.max_waiting && !seen.closed {
                if seen.counted {
                    // Room in the waiting queue, or a running slot freed directly
                    // (with no waiting queue, `max_waiting(0)`, only the latter
                    // ever comes).
                    tokio::select! {
                        () = &mut notified => {}
                        slot = inner.running.acquire() => match slot {
                            // Woken after shutdown began: refused, and the slot
                            // goes back (dropping the permit returns it).
                            Ok(slot) if !self.refuses() => {
                                slot.forget();
                                return Ok(self.launch(&rt, future, true));
                            }
                            _ => {
                                return Err(self.refused(Rejected {
                                    task: future,
                                    reason: Rejection::ShuttingDown,
                                }).into());
                            }
                        },
                    }
                } else {
                    tokio::task::yield_now().await;
                }
            }
        }
    }

    fn launch<F>(&self, rt: &Handle, future: F, has_slot: bool) -> TaskPoolHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        // Counted as queued from here until it has its running slot (or is
        // dropped unrun, by the runtime too).
        let queued = (!has_slot).then(|| GaugeGuard::up(&self.inner.counters.metrics.queued));
        let join = rt.spawn(async move {
            let _slot = if has_slot {
                RunningSlot(&inner)
            } else {
                let p = inner.running.acquire().await;
                drop(queued);
                let (before, wake) = inner.waiting.release();
                if wake {
                    inner.room.notify_one();
                }
                if before == 1 && inner.waiting.is_closed() {
                    inner.waiting_drained.notify_waiters();
                }
                match p {
                    Ok(p) => {
                        p.forget();
                        RunningSlot(&inner)
                    }
                    Err(_) => {
                        inner.counters.cancelled();
                        return Err(TaskError::Cancelled);
                    }
                }
            };
            if inner.cancelled.load(Ordering::Acquire) {
                inner.counters.cancelled();
                return Err(TaskError::Cancelled);
            }
            // Relaxed: statistics.
            inner.active.fetch_add(1, Ordering::Relaxed);
            let running = GaugeGuard::up(&inner.counters.metrics.running);
            let start = Instant::now();
            let mut future = pin!(future);
            let caught =
                poll_fn(
                    |cx| match catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
                        Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
                        Ok(Poll::Pending) => Poll::Pending,
                        Err(payload) => Poll::Ready(Err(panic_message(&*payload))),
                    },
                );
            // The task first: a future that completes at once never registers with
            // the cancellation token.
            let result = tokio::select! {
                biased;
                r = caught => r.map_err(TaskError::Panicked),
                () = inner.cancel.cancelled() => Err(TaskError::Cancelled),
            };
            let took = start.elapsed();
            inner.timings[heijunka_core::sync::thread_index() % TIMING_SHARDS].record(took);
            inner.active.fetch_sub(1, Ordering::Relaxed);
            drop(running);
            inner.counters.metrics.task_seconds.record_duration(took);
            match &result {
                Ok(_) => inner.counters.completed(),
                Err(TaskError::Panicked(msg)) => {
                    tracing::warn!(task.panic = %msg, "task pool task panicked");
                    inner.counters.panicked();
                }
                Err(_) => inner.counters.cancelled(),
            }
            result
        });
        TaskPoolHandle { join }
    }

    /// Stops intake, waits up to `grace` for running and waiting tasks, then cancels
    /// the rest (their handles report [`TaskError::Cancelled`]). A `grace` of zero
    /// cancels at once.
    ///
    /// The first call stops intake and starts the shutdown (with its `grace`) in a
    /// task of the caller's runtime; every call, concurrent or later, waits for
    /// that one outcome and returns its report. The shutdown task runs on the
    /// current tokio runtime, or else on the one the pool was built in (the grace
    /// period is a tokio timer). With neither (a pool built outside any runtime,
    /// shut down from a plain executor) nothing is done: intake stays open, the
    /// report says unclean with every running task still running, an error is
    /// logged, and a later call from within a runtime shuts the pool down.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future stops only the waiting. The shutdown goes
    /// on, and a later call waits for the same outcome.
    pub async fn shutdown(&self, grace: Duration) -> PoolReport {
        let mut report = match self.inner.report.get() {
            Some(report) => report.clone(),
            None => {
                // Before anything is closed: a pool closed with no shutdown
                // running would refuse work and never drain.
                let Some(rt) = Handle::try_current().ok().or_else(|| self.inner.rt.clone()) else {
                    tracing::error!(
                        "task pool shutdown called outside any tokio runtime, for a pool built outside one: nothing done"
                    );
                    return self.unfinished_report();
                };
                self.inner
                    .report
                    .get_or_init(|| {
                        let inner = &self.inner;
                        let start = Instant::now();
                        inner.waiting.close();
                        inner.room.notify_waiters();
                        let cancelled_before = Counters::get(&inner.counters.cancelled);
                        let (tx, rx) = watch::channel(None);
                        let pool = self.clone();
                        rt.spawn(async move {
                            let report = pool.run_shutdown(grace, start, cancelled_before).await;
                            tx.send_replace(Some(report));
                        });
                        rx
                    })
                    .clone()
            }
        };
        let seen = report.wait_for(Option::is_some).await.map(|r| r.clone());
        match seen {
            Ok(Some(report)) => report,
            // The runtime dropped the shutdown task before it finished.
            _ => self.unfinished_report(),
        }
    }

    /// The report of a shutdown that did not run to its end.
    fn unfinished_report(&self) -> PoolReport {
        PoolReport {
            clean: false,
            cancelled: 0,
            // Relaxed: a statistic.
            still_running: self.inner.active.load(Ordering::Relaxed),
            elapsed: Duration::ZERO,
        }
    }

    /// The shutdown, after intake stopped at `start` with `cancelled_before`
    /// tasks cancelled.
    async fn run_shutdown(
        &self,
        grace: Duration,
        start: Instant,
        cancelled_before: u64,
    ) -> PoolReport {
        let inner = &self.inner;
        // The semaphore is FIFO: taking every permit completes only after every
        // waiting task has had its turn and finished.
        // At most `u32::MAX`: checked by the builder.
        let all = u32::try_from(inner.max_running).unwrap_or(u32::MAX);
        // First every waiting task must reach the semaphore's queue (a task spawned
        // but not yet polled is not in it, and would queue behind us); the pool is
        // closed, so the waiting count only falls.
        let waiting_drained = async {
            loop {
                let notified = inner.waiting_drained.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if inner.waiting.is_empty() {
                    break;
                }
                notified.await;
            }
        };
        let drain = async {
            waiting_drained.await;
            inner.running.acquire_many(all).await
        };
        let drained = tokio::time::timeout(grace, drain)
            .await
            .map(|permits| permits.map(|p| p.forget()).is_ok())
            .unwrap_or(false);
        if !drained {
            inner.cancelled.store(true, Ordering::Release);
            inner.cancel.cancel();
            // Cancelled tasks end at their next poll; give them that poll.
            tokio::task::yield_now().await;
        }
        inner.running.close();
        // Relaxed: a statistic.
        let still_running = inner.active.load(Ordering::Relaxed);
        let report = PoolReport {
            clean: drained,
            cancelled: Counters::get(&inner.counters.cancelled) - cancelled_before,
            still_running: if drained { 0 } else { still_running },
            elapsed: start.elapsed(),
        };
        tracing::info!(
            clean = report.clean,
            cancelled = report.cancelled,
            "task pool shut down"
        );
        report
    }

    /// Refuses work once `shutdown` is triggered, and registers a stop hook that
    /// shuts this pool down with `grace`.
    ///
    /// The hook's time limit is `grace` plus
    /// [`HOOK_GRACE_MARGIN`](heijunka_shutdown::HOOK_GRACE_MARGIN) (or the
    /// coordinator's hook timeout if longer), so the shutdown never cuts this
    /// component off before its grace is over
    /// ([`Shutdown::on_stop_with_grace`](heijunka_shutdown::Shutdown::on_stop_with_grace)).
    ///
    /// # Errors
    ///
    /// [`heijunka_shutdown::ShuttingDown`] if the shutdown's hooks already ran.
    pub fn register_with(
        &self,
        shutdown: &Shutdown,
        name: impl Into<String>,
        grace: Duration,
    ) -> Result<(), heijunka_shutdown::ShuttingDown> {
        let _ = self.inner.token.set(shutdown.token());
        let pool = self.clone();
        shutdown.on_stop_with_grace(name, grace, move || async move {
            let report = pool.shutdown(grace).await;
            if report.clean {
                Ok(())
            } else {
                Err(format!("{} tasks cancelled", report.cancelled))
            }
        })
    }

    /// A snapshot of the pool's numbers.
    pub fn stats(&self) -> PoolStats {
        let inner = &self.inner;
        let (p50, p90, p99, mean) = Timings::percentiles(&inner.timings);
        let panicked = Counters::get(&inner.counters.panicked);
        let cancelled = Counters::get(&inner.counters.cancelled);
        PoolStats {
            workers: inner.max_running,
            // Relaxed: a statistic.
            active: inner.active.load(Ordering::Relaxed),
            queued: inner.waiting.len(),
            completed: Counters::get(&inner.counters.completed),
            failed: panicked + cancelled,
            panicked,
            cancelled,
            rejected: Counters::get(&inner.counters.rejected),
            blocked_submitters: inner.waiting.waiters(Side::Push),
            p50,
            p90,
            p99,
            mean,
        }
    }
}

impl fmt::Debug for TaskPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskPool")
            .field("max_running", &self.inner.max_running)
            .field("max_waiting", &self.inner.max_waiting)
            .finish_non_exhaustive()
    }
}
