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
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::panic_message;
use crate::stats::{Counters, Timings};
use crate::{PoolReport, PoolStats, Rejected, TaskError};

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
/// let handle = pool.try_spawn(async { 6 * 7 }).map_err(|e| e.reason())?;
/// assert_eq!(handle.join().await?, 42);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct TaskPool {
    inner: Arc<Inner>,
}

/// A registered waiter for room (the `Push` side), removed on drop: a `spawn`
/// cancelled while it waits must not leave its count behind.
struct PushWaiter<'a> {
    state: &'a SlotState,
    counted: bool,
}

impl Drop for PushWaiter<'_> {
    fn drop(&mut self) {
        if self.counted {
            self.state.unregister(Side::Push);
        }
    }
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
}

/// Builds a [`TaskPool`].
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until `build()`"]
pub struct TaskPoolBuilder {
    max_running: usize,
    max_waiting: usize,
}

impl TaskPoolBuilder {
    /// The most futures running at once. Default 64.
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

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for `max_running` of zero (or above tokio's semaphore
    /// limit), or `max_waiting` above the slot counter's limit.
    pub fn build(self) -> Result<TaskPool, ConfigError> {
        validate::at_least("max_running", self.max_running, 1)?;
        validate::at_most("max_running", self.max_running, Semaphore::MAX_PERMITS)?;
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
                counters: Counters::default(),
                timings: (0..TIMING_SHARDS).map(|_| Timings::new()).collect(),
                token: OnceLock::new(),
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
        }
    }

    /// Starts `future` now if a running slot is free, queues it if a waiting slot
    /// is free; never waits. Must be called within a tokio runtime.
    ///
    /// # Errors
    ///
    /// The future comes back unpolled in [`Rejected`]: [`Rejection::QueueFull`]
    /// or [`Rejection::ShuttingDown`].
    pub fn try_spawn<F>(&self, future: F) -> Result<TaskPoolHandle<F::Output>, Rejected<F>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.try_spawn_inner(future)
            .inspect_err(|_| Counters::bump(&self.inner.counters.rejected))
    }

    fn try_spawn_inner<F>(&self, future: F) -> Result<TaskPoolHandle<F::Output>, Rejected<F>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let inner = &self.inner;
        if inner.waiting.is_closed() || inner.token.get().is_some_and(ShutdownToken::is_triggered) {
            return Err(Rejected {
                task: future,
                reason: Rejection::ShuttingDown,
            });
        }
        if let Ok(permit) = inner.running.try_acquire() {
            // The task gives the slot back itself (`RunningSlot`): no `Arc` of the
            // semaphore travels with it.
            permit.forget();
            return Ok(self.launch(future, true));
        }
        match inner.waiting.reserve(inner.max_waiting) {
            Reserve::Reserved { .. } => Ok(self.launch(future, false)),
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
    /// [`Rejection::ShuttingDown`] with the future if the pool is (or gets) closed.
    pub async fn spawn<F>(&self, future: F) -> Result<TaskPoolHandle<F::Output>, Rejected<F>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let inner = &self.inner;
        let mut future = future;
        loop {
            match self.try_spawn_inner(future) {
                Ok(h) => return Ok(h),
                Err(e) if e.reason == Rejection::ShuttingDown => return Err(e),
                Err(e) => future = e.task,
            }
            let notified = inner.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let seen = inner.waiting.register(Side::Push);
            // Unregisters even if this future is dropped while it waits.
            let _registered = PushWaiter {
                state: &inner.waiting,
                counted: seen.counted,
            };
            if seen.len >= inner.max_waiting && !seen.closed {
                if seen.counted {
                    // Room in the waiting queue, or a running slot freed directly
                    // (with no waiting queue, `max_waiting(0)`, only the latter
                    // ever comes).
                    tokio::select! {
                        () = &mut notified => {}
                        slot = inner.running.acquire() => match slot {
                            Ok(slot) => {
                                slot.forget();
                                return Ok(self.launch(future, true));
                            }
                            Err(_) => {
                                Counters::bump(&inner.counters.rejected);
                                return Err(Rejected {
                                    task: future,
                                    reason: Rejection::ShuttingDown,
                                });
                            }
                        },
                    }
                } else {
                    tokio::task::yield_now().await;
                }
            }
        }
    }

    fn launch<F>(&self, future: F, has_slot: bool) -> TaskPoolHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        let join = tokio::spawn(async move {
            let _slot = if has_slot {
                RunningSlot(&inner)
            } else {
                let p = inner.running.acquire().await;
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
                        Counters::bump(&inner.counters.cancelled);
                        return Err(TaskError::Cancelled);
                    }
                }
            };
            if inner.cancelled.load(Ordering::Acquire) {
                Counters::bump(&inner.counters.cancelled);
                return Err(TaskError::Cancelled);
            }
            // Relaxed: statistics.
            inner.active.fetch_add(1, Ordering::Relaxed);
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
            inner.timings[heijunka_core::sync::thread_index() % TIMING_SHARDS]
                .record(start.elapsed());
            inner.active.fetch_sub(1, Ordering::Relaxed);
            match &result {
                Ok(_) => Counters::bump(&inner.counters.completed),
                Err(TaskError::Panicked(msg)) => {
                    tracing::warn!(task.panic = %msg, "task pool task panicked");
                    Counters::bump(&inner.counters.panicked);
                }
                Err(_) => Counters::bump(&inner.counters.cancelled),
            }
            result
        });
        TaskPoolHandle { join }
    }

    /// Stops intake, waits up to `grace` for running and waiting tasks, then cancels
    /// the rest (their handles report [`TaskError::Cancelled`]). A `grace` of zero
    /// cancels at once.
    pub async fn shutdown(&self, grace: Duration) -> PoolReport {
        let inner = &self.inner;
        let start = Instant::now();
        inner.waiting.close();
        inner.room.notify_waiters();
        let cancelled_before = Counters::get(&inner.counters.cancelled);
        // The semaphore is FIFO: taking every permit completes only after every
        // waiting task has had its turn and finished.
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
