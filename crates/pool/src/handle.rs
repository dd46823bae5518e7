//! [`TaskHandle`]: the result of one worker-pool task, and the job that fills it.

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use crossbeam::channel::{Receiver, RecvTimeoutError, Sender};

use crate::TaskError;
use crate::error::panic_message;
use crate::stats::Counters;

/// The handle of a task submitted to a [`WorkerPool`](crate::WorkerPool).
///
/// [`join`](Self::join) waits for the value. Dropping the handle detaches the task:
/// it still runs, and its value is dropped.
pub struct TaskHandle<T> {
    pub(crate) rx: Receiver<Result<T, TaskError>>,
}

impl<T> TaskHandle<T> {
    /// Waits for the task and returns its value, or why there is none.
    ///
    /// # Errors
    ///
    /// [`TaskError::Panicked`] with the panic message, or [`TaskError::Cancelled`]
    /// if the pool shut down before the task ran.
    ///
    /// # Panics
    ///
    /// On a thread that drives a tokio runtime's tasks, finished or not, with
    /// tokio's message (see `heijunka_core::blocking`): blocking there stalls
    /// the runtime. Poll [`is_finished`](Self::is_finished) or wait on
    /// `spawn_blocking` from async code.
    #[track_caller]
    pub fn join(self) -> Result<T, TaskError> {
        heijunka_core::blocking::assert_can_block();
        self.rx.recv().unwrap_or(Err(TaskError::Cancelled))
    }

    /// [`join`](Self::join), giving up after `timeout`; on timeout the handle comes
    /// back (`Err(Err(handle))`) so the caller can wait again.
    ///
    /// # Errors
    ///
    /// `Err(Ok(error))` as for `join`; `Err(Err(handle))` on timeout.
    ///
    /// # Panics
    ///
    /// On a thread that drives a tokio runtime's tasks, finished or not, with
    /// tokio's message (see `heijunka_core::blocking`): blocking there stalls
    /// the runtime. Poll [`is_finished`](Self::is_finished) or wait on
    /// `spawn_blocking` from async code.
    #[track_caller]
    pub fn join_timeout(self, timeout: Duration) -> Result<T, Result<TaskError, Self>> {
        heijunka_core::blocking::assert_can_block();
        match self.rx.recv_timeout(timeout) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(Ok(e)),
            Err(RecvTimeoutError::Disconnected) => Err(Ok(TaskError::Cancelled)),
            Err(RecvTimeoutError::Timeout) => Err(Err(self)),
        }
    }

    /// Whether the task has finished: its value (or why there is none) is ready.
    pub fn is_finished(&self) -> bool {
        !self.rx.is_empty()
    }
}

impl<T> fmt::Debug for TaskHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskHandle")
            .field("finished", &self.is_finished())
            .finish()
    }
}

/// A queued task: runs once, or tells its handle it was cancelled when dropped unrun.
/// It counts its own outcome before publishing its result, so a caller that joined
/// the task sees it in the pool's stats.
pub(crate) trait Job: Send {
    fn run(self, counters: &Counters);
}

pub(crate) struct TaskJob<F, T> {
    f: Option<F>,
    tx: Sender<Result<T, TaskError>>,
}

impl<F, T> TaskJob<F, T> {
    pub(crate) fn new(f: F) -> (Self, TaskHandle<T>) {
        let (tx, rx) = crossbeam::channel::bounded(1);
        (Self { f: Some(f), tx }, TaskHandle { rx })
    }
}

impl<F, T> Job for TaskJob<F, T>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    fn run(mut self, counters: &Counters) {
        let f = self.f.take().expect("a job runs once");
        let result = match catch_unwind(AssertUnwindSafe(f)) {
            Ok(v) => {
                counters.completed();
                Ok(v)
            }
            Err(payload) => {
                let msg = panic_message(&*payload);
                tracing::warn!(task.panic = %msg, "pool task panicked");
                counters.panicked();
                Err(TaskError::Panicked(msg))
            }
        };
        // The handle may have been dropped (detached): then the value is dropped
        // here, and a panic in its `Drop` must not take the worker thread down.
        if let Err(unsent) = self.tx.send(result) {
            let _ = catch_unwind(AssertUnwindSafe(move || drop(unsent)));
        }
    }
}

impl<F, T> Drop for TaskJob<F, T> {
    fn drop(&mut self) {
        if self.f.is_some() {
            let _ = self.tx.send(Err(TaskError::Cancelled));
        }
    }
}

/// A detached task: no handle, so no result channel; a panic is still caught and
/// counted.
pub(crate) struct DetachedJob<F>(pub(crate) F);

impl<F> Job for DetachedJob<F>
where
    F: FnOnce() + Send,
{
    fn run(self, counters: &Counters) {
        match catch_unwind(AssertUnwindSafe(self.0)) {
            Ok(()) => counters.completed(),
            Err(payload) => {
                tracing::warn!(task.panic = %panic_message(&*payload), "pool task panicked");
                counters.panicked();
            }
        }
    }
}
