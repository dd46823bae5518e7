//! [`WorkerPool`]: a fixed set of named OS threads with a bounded, work-stealing
//! queue.

use std::fmt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::deque::{Injector, Steal, Stealer, Worker};
use crossbeam::utils::Backoff;
use heijunka_backpressure::{Reserve, Side, SlotState};
use heijunka_core::sync::CachePadded;
use heijunka_core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use heijunka_core::{ConfigError, InlineOnce, Rejection, validate};
use heijunka_shutdown::{Shutdown, ShutdownToken};
use serde::Serialize;

use crate::handle::{DetachedJob, Job, TaskJob};
use crate::metrics::PoolMetrics;
use crate::park::{Parker, Started};
use crate::stats::{Counters, Timings};
use crate::{PoolStats, Rejected, TaskHandle};

/// A queued job: small closures are stored inline (no allocation per task; see
/// `heijunka_core::InlineOnce`), larger ones boxed.
type BoxedJob = InlineOnce<Counters>;

/// How many started jobs a worker gives back to the queue's count at once (sooner
/// when its deque empties or a submitter waits for room; see `park::Started`).
const RELEASE_BATCH: usize = 16;

/// Idle rounds that see work counted but find none before a worker naps.
const STALE_ROUNDS: u32 = 8;
/// How long such a nap lasts at most (a new task ends it at once).
const STALE_NAP: Duration = Duration::from_millis(1);

/// One worker's numbers.
struct WorkerCell {
    counters: Counters,
    /// 1 while the worker runs a task.
    active: AtomicUsize,
    timings: Timings,
}

/// Builds a [`WorkerPool`]; see [`WorkerPool::builder`].
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until `build()`"]
pub struct WorkerPoolBuilder {
    workers: usize,
    queue: usize,
    name: String,
    clock: heijunka_core::Clock,
}

impl WorkerPoolBuilder {
    /// Worker threads. Default: the number of CPUs; at most
    /// [`WorkerPool::MAX_WORKERS`].
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// The most tasks waiting to run, across all workers. Default 1024.
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.queue = n;
        self
    }

    /// The threads' name prefix (`<name>-<index>`). Default `"heijunka-pool"`.
    /// Must not contain a NUL byte.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The clock that times tasks for the run-time statistics
    /// ([`PoolStats`]'s percentiles and mean). Default: the system clock.
    ///
    /// A limitation: only the statistics read it. Waits are the OS's timed waits
    /// on `std::time::Instant` (condition variables): `submit_timeout`'s time-out,
    /// [`shutdown`](WorkerPool::shutdown)'s grace period and the one given to
    /// [`register_with`](WorkerPool::register_with) are measured on the OS
    /// clock, and a manual clock does not advance them.
    pub fn clock(mut self, clock: heijunka_core::Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Validates and starts the workers.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for zero workers, more than [`MAX_WORKERS`](WorkerPool::MAX_WORKERS),
    /// a queue capacity of zero, a `name` containing a NUL byte; or if the OS refuses
    /// to start a thread (named `workers`, with the OS error).
    pub fn build(self) -> Result<WorkerPool, ConfigError> {
        validate::at_least("workers", self.workers, 1)?;
        validate::at_most("workers", self.workers, WorkerPool::MAX_WORKERS)?;
        if self.name.contains('\0') {
            return Err(ConfigError::new(
                "name",
                &self.name,
                "must not contain a NUL byte (thread names are C strings)",
            ));
        }
        validate::at_least("queue_capacity", self.queue, 1)?;
        validate::at_most(
            "queue_capacity",
            self.queue,
            heijunka_backpressure::MAX_CAPACITY,
        )?;
        WorkerPool::start(self)
    }
}

struct Shared {
    injector: Injector<BoxedJob>,
    stealers: Vec<Stealer<BoxedJob>>,
    /// Queued tasks (slots), sleeping workers (Pop side), blocked submitters (Push
    /// side), and the closed bit.
    state: SlotState,
    capacity: usize,
    workers: usize,
    /// Idle workers sleep here.
    work: Parker,
    /// Submitters waiting for room sleep here.
    space: Parker,
    /// Jobs started but not yet given back to `state`'s count.
    started: Started,
    /// Set when the grace period ends: queued jobs are dropped, not run.
    cancel_queued: AtomicBool,
    alive: Mutex<usize>,
    all_exited: Condvar,
    /// Rejections and cancellations (rare; counted by submitters and shutdown).
    counters: Counters,
    /// Per-worker numbers, each on its own cache line: a worker counting its
    /// tasks never contends with another.
    cells: Vec<CachePadded<WorkerCell>>,
    token: std::sync::OnceLock<ShutdownToken>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    name: String,
    /// Times tasks (the builder's `clock`; by default the TSC-backed system clock,
    /// which costs less than `Instant::now()`).
    clock: heijunka_core::Clock,
}

fn with_handle<F, T>(f: F) -> (BoxedJob, TaskHandle<T>)
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let (job, handle) = TaskJob::new(f);
    (InlineOnce::new(move |c: &Counters| job.run(c)), handle)
}

fn detached<F>(f: F) -> (BoxedJob, ())
where
    F: FnOnce() + Send + 'static,
{
    let job = DetachedJob(f);
    (InlineOnce::new(move |c: &Counters| job.run(c)), ())
}

/// Snoozes with `backoff` until `ready()` or the backoff says to block; `true` if
/// ready (look again), `false` if the caller should sleep. Resets the backoff
/// before returning `false`, for the next round.
fn backoff_until(backoff: &Backoff, ready: impl Fn() -> bool) -> bool {
    while !backoff.is_completed() {
        if ready() {
            return true;
        }
        backoff.snooze();
    }
    backoff.reset();
    ready()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // No user code runs under these locks; a poisoned lock guards consistent data.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A pool of OS threads for blocking and CPU-bound work that says "full" at once
/// instead of queueing without bound.
///
/// - A fixed number of named workers share one bounded queue: submissions go to a
///   global injector and idle workers steal in batches from it and from each other
///   (crossbeam-deque), so uneven tasks balance; the bound counts every task not
///   yet started, wherever it sits: a task that started before a submission
///   (as its caller can know, or ordered by the pool's fences) never counts
///   against it; one starting at the same moment may count either way.
/// - [`try_submit`](Self::try_submit) never blocks and hands the closure back when
///   the queue is full; [`submit`](Self::submit) blocks for room;
///   [`submit_timeout`](Self::submit_timeout) gives up after a while.
/// - A [`TaskHandle`] per task: `join()` returns the value, or that the task
///   panicked (with the message) or was cancelled at shutdown.
/// - A panic is caught, counted, reported through the handle and `tracing`; the
///   worker goes on.
/// - [`shutdown`](Self::shutdown) stops intake, lets queued and running tasks
///   finish within a grace period, cancels what is left, and reports it.
///
/// Clones are handles to the same pool. When the last handle is dropped the pool
/// closes: queued tasks still run, then the workers exit.
///
/// ```
/// use heijunka_pool::WorkerPool;
///
/// let pool = WorkerPool::builder().workers(2).queue_capacity(16).build()?;
/// let handle = pool.try_submit(|| 6 * 7).map_err(|e| e.reason())?;
/// assert_eq!(handle.join()?, 42);
/// let report = pool.shutdown(std::time::Duration::from_secs(1));
/// assert!(report.clean);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct WorkerPool {
    shared: Arc<Shared>,
    _owner: Arc<Owner>,
}

/// Closes the pool when the last user handle goes.
struct Owner(Arc<Shared>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// What [`WorkerPool::shutdown`] did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PoolReport {
    /// Everything queued ran and every worker exited within the grace period.
    pub clean: bool,
    /// Queued tasks dropped unrun after the grace period (their handles say
    /// cancelled).
    pub cancelled: u64,
    /// Tasks still running when the grace period ended; their threads finish them
    /// and exit in the background.
    pub still_running: usize,
    /// Time `shutdown` took.
    pub elapsed: Duration,
}

impl WorkerPool {
    /// The most worker threads a pool may have.
    pub const MAX_WORKERS: usize = 4096;

    /// A builder (defaults: one worker per CPU, a queue of 1024).
    pub fn builder() -> WorkerPoolBuilder {
        WorkerPoolBuilder {
            workers: std::thread::available_parallelism().map_or(4, |n| n.get()),
            queue: 1024,
            name: "heijunka-pool".into(),
            clock: heijunka_core::Clock::system(),
        }
    }

    fn start(cfg: WorkerPoolBuilder) -> Result<WorkerPool, ConfigError> {
        let locals: Vec<Worker<BoxedJob>> = (0..cfg.workers).map(|_| Worker::new_fifo()).collect();
        let metrics = PoolMetrics::new(&cfg.name);
        let shared = Arc::new(Shared {
            injector: Injector::new(),
            stealers: locals.iter().map(Worker::stealer).collect(),
            state: SlotState::new(),
            capacity: cfg.queue,
            workers: cfg.workers,
            work: Parker::new(),
            space: Parker::new(),
            started: Started::new(cfg.workers),
            cancel_queued: AtomicBool::new(false),
            alive: Mutex::new(cfg.workers),
            all_exited: Condvar::new(),
            counters: Counters::with_metrics(metrics.clone()),
            cells: (0..cfg.workers)
                .map(|_| {
                    CachePadded::new(WorkerCell {
                        counters: Counters::with_metrics(metrics.clone()),
                        active: AtomicUsize::new(0),
                        timings: Timings::new(),
                    })
                })
                .collect(),
            token: std::sync::OnceLock::new(),
            threads: Mutex::new(Vec::with_capacity(cfg.workers)),
            name: cfg.name.clone(),
            clock: cfg.clock.clone(),
        });
        for (i, local) in locals.into_iter().enumerate() {
            let s = Arc::clone(&shared);
            let spawned = std::thread::Builder::new()
                .name(format!("{}-{i}", cfg.name))
                .spawn(move || s.work(i, local));
            match spawned {
                Ok(t) => lock(&shared.threads).push(t),
                Err(e) => {
                    // Stop the ones already started; they see the close and exit.
                    *lock(&shared.alive) -= cfg.workers - i;
                    shared.close();
                    return Err(ConfigError::new(
                        "workers",
                        cfg.workers,
                        format!("could not all be started: {e}"),
                    ));
                }
            }
        }
        Ok(WorkerPool {
            _owner: Arc::new(Owner(Arc::clone(&shared))),
            shared,
        })
    }

    /// Submits `f` if the queue has room; never blocks.
    ///
    /// # Errors
    ///
    /// The closure comes back in [`Rejected`]: [`Rejection::QueueFull`] or
    /// [`Rejection::ShuttingDown`].
    pub fn try_submit<F, T>(&self, f: F) -> Result<TaskHandle<T>, Rejected<F>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.submit_until(f, Some(None), with_handle)
    }

    /// Runs `f` without a handle (fire and forget) if the queue has room; never
    /// blocks. Cheaper than [`try_submit`](Self::try_submit): no result channel. A
    /// panic is still caught, counted and logged.
    ///
    /// # Errors
    ///
    /// As [`try_submit`](Self::try_submit).
    pub fn try_execute<F>(&self, f: F) -> Result<(), Rejected<F>>
    where
        F: FnOnce() + Send + 'static,
    {
        self.submit_until(f, Some(None), detached)
    }

    /// [`try_execute`](Self::try_execute), blocking while the queue is full.
    ///
    /// # Errors
    ///
    /// [`Rejection::ShuttingDown`] with the closure if the pool is (or gets) closed.
    ///
    /// # Panics
    ///
    /// On a thread that drives a tokio runtime's tasks, whether or not the queue
    /// is full, with tokio's message ("Cannot block the current thread from
    /// within a runtime...", see `heijunka_core::blocking`): blocking there
    /// stalls the runtime. Use [`try_submit`](Self::try_submit) (or
    /// `spawn_blocking`, where this form works) from async code.
    #[track_caller]
    pub fn execute<F>(&self, f: F) -> Result<(), Rejected<F>>
    where
        F: FnOnce() + Send + 'static,
    {
        self.submit_until(f, None, detached)
    }

    /// Submits `f`, blocking while the queue is full.
    ///
    /// # Errors
    ///
    /// [`Rejection::ShuttingDown`] with the closure if the pool is (or gets) closed.
    ///
    /// # Panics
    ///
    /// On a thread that drives a tokio runtime's tasks, whether or not the queue
    /// is full, with tokio's message ("Cannot block the current thread from
    /// within a runtime...", see `heijunka_core::blocking`): blocking there
    /// stalls the runtime. Use [`try_submit`](Self::try_submit) (or
    /// `spawn_blocking`, where this form works) from async code.
    #[track_caller]
    pub fn submit<F, T>(&self, f: F) -> Result<TaskHandle<T>, Rejected<F>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.submit_until(f, None, with_handle)
    }

    /// [`submit`](Self::submit), giving up after `timeout` (measured on the OS
    /// clock, not the pool's [`clock`](WorkerPoolBuilder::clock)). A `timeout`
    /// too long to represent as a deadline (such as `Duration::MAX`) waits
    /// without one, as [`submit`](Self::submit).
    ///
    /// # Errors
    ///
    /// [`Rejection::TimedOut`] or [`Rejection::ShuttingDown`], with the closure.
    ///
    /// # Panics
    ///
    /// On a thread that drives a tokio runtime's tasks, whether or not the queue
    /// is full, with tokio's message ("Cannot block the current thread from
    /// within a runtime...", see `heijunka_core::blocking`): blocking there
    /// stalls the runtime. Use [`try_submit`](Self::try_submit) (or
    /// `spawn_blocking`, where this form works) from async code.
    #[track_caller]
    pub fn submit_timeout<F, T>(
        &self,
        f: F,
        timeout: Duration,
    ) -> Result<TaskHandle<T>, Rejected<F>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        // A timeout too long to represent waits without one (`None`), as
        // `submit` does; never `Some(None)`, which is the `try_` forms' "never
        // wait" (and would skip the blocking check).
        let deadline = Instant::now()
            .checked_add(timeout)
            .map(|at| Some((at, timeout)));
        self.submit_until(f, deadline, with_handle)
    }

    /// `deadline`: `None` waits forever, `Some(None)` never waits, `Some(Some(..))`
    /// waits until then.
    #[track_caller]
    fn submit_until<F, R>(
        &self,
        f: F,
        deadline: Option<Option<(Instant, Duration)>>,
        make: fn(F) -> (BoxedJob, R),
    ) -> Result<R, Rejected<F>> {
        if deadline != Some(None) {
            // A waiting form (a `try_` one passes `Some(None)`).
            heijunka_core::blocking::assert_can_block();
        }
        let s = &*self.shared;
        let backoff = Backoff::new();
        loop {
            // Every round, not only on entry: a submitter that waited for room
            // must not get in once the coordinator's shutdown has begun.
            if s.token.get().is_some_and(ShutdownToken::is_triggered) {
                return Err(s.reject(f, Rejection::ShuttingDown));
            }
            match s.state.reserve(s.capacity) {
                Reserve::Reserved { wake, .. } => {
                    let (job, handle) = make(f);
                    // Before the push: a worker that takes the job at once must not
                    // take the gauge below zero.
                    s.counters.metrics.queued.increment(1.0);
                    s.injector.push(job);
                    if wake {
                        s.work.wake_one();
                    }
                    return Ok(handle);
                }
                Reserve::Closed => return Err(s.reject(f, Rejection::ShuttingDown)),
                Reserve::Full => {}
            }
            // Full as counted: slots of started jobs may not be given back yet.
            // Fenced (see `Started::collect_checked`): a start that happened
            // before this check is collected.
            if s.started.collect_checked(&s.state, &s.space) > 0 {
                continue;
            }
            let until = match deadline {
                Some(None) => {
                    return Err(s.reject(
                        f,
                        Rejection::QueueFull {
                            capacity: s.capacity,
                        },
                    ));
                }
                Some(Some((at, after))) => {
                    if Instant::now() >= at {
                        return Err(s.reject(f, Rejection::TimedOut { after }));
                    }
                    Some(at)
                }
                None => None,
            };
            // Spin briefly (a worker frees a slot within a task's time), then sleep
            // until a worker takes a task (it wakes us if we are counted).
            if backoff_until(&backoff, || {
                s.state.len() < s.capacity || s.state.is_closed()
            }) {
                continue;
            }
            s.started
                .wait_for_room(&s.state, &s.space, s.capacity, until);
        }
    }

    /// Stops intake, lets queued and running tasks finish within `grace`, then
    /// drops what is still queued (their handles report
    /// [`TaskError::Cancelled`](crate::TaskError::Cancelled)) and returns.
    ///
    /// A `grace` of zero cancels every queued task at once. Running tasks cannot be
    /// interrupted: those still running when the grace period ends are reported, and
    /// their threads exit once they finish. If everything finished in time, every
    /// worker thread has exited (and been joined) when this returns. Calling it again
    /// returns a report of the remaining state.
    ///
    /// # Panics
    ///
    /// With a non-zero `grace`, on a thread that drives a tokio runtime's tasks,
    /// with tokio's message (see `heijunka_core::blocking`): it blocks for up to
    /// `grace`, stalling the runtime, and a task that waits on that runtime
    /// (a value sent by one of its tasks, say) could never finish, so the call
    /// would hang for the whole grace period. Call it from `spawn_blocking` (as
    /// [`register_with`](Self::register_with)'s hook does) or a plain thread. A
    /// zero `grace` never waits, so it is allowed anywhere.
    #[track_caller]
    pub fn shutdown(&self, grace: Duration) -> PoolReport {
        if !grace.is_zero() {
            heijunka_core::blocking::assert_can_block();
        }
        let s = &*self.shared;
        let start = Instant::now();
        s.close();
        // A grace period too long to represent: about 30 years.
        let deadline = start
            .checked_add(grace)
            .unwrap_or_else(|| start + Duration::from_secs(86_400 * 365 * 30));
        let mut alive = lock(&s.alive);
        while *alive > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            alive = s
                .all_exited
                .wait_timeout(alive, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        let drained = *alive == 0;
        drop(alive);
        let cancelled_before = Counters::get(&s.counters.cancelled);
        if !drained {
            s.cancel_queued.store(true, Ordering::SeqCst);
            s.drop_queued();
        }
        let cancelled = Counters::get(&s.counters.cancelled) - cancelled_before;
        if !drained {
            tracing::warn!(pool = %s.name, cancelled, "pool grace period over: queued tasks cancelled");
        }
        // Join the threads that have exited; the others are detached.
        let threads = std::mem::take(&mut *lock(&s.threads));
        let mut still = Vec::new();
        for t in threads {
            if drained || t.is_finished() {
                let _ = t.join();
            } else {
                still.push(t);
            }
        }
        // Relaxed: a statistic.
        let still_running = s.active();
        let report = PoolReport {
            clean: drained,
            cancelled,
            still_running: if drained { 0 } else { still_running },
            elapsed: start.elapsed(),
        };
        tracing::info!(pool = %s.name, clean = report.clean, cancelled, still_running = report.still_running, "pool shut down");
        report
    }

    /// Refuses work once `shutdown` is triggered, and registers a stop hook that
    /// shuts this pool down with `grace` (on a blocking thread of the runtime that
    /// runs the hooks). A pool follows one coordinator: later calls register the
    /// hook but keep the first coordinator's token.
    ///
    /// The hook's time limit is `grace` plus
    /// [`HOOK_GRACE_MARGIN`](heijunka_shutdown::HOOK_GRACE_MARGIN) (or the
    /// coordinator's hook timeout if longer), so the shutdown never cuts this
    /// component off before its grace is over
    /// ([`Shutdown::on_stop_with_grace`](heijunka_shutdown::Shutdown::on_stop_with_grace)).
    ///
    /// The grace is measured on the OS clock (`std::time::Instant` and timed
    /// condition-variable waits), not on the pool's
    /// [`clock`](WorkerPoolBuilder::clock) nor the coordinator's tokio time: a
    /// paused tokio clock or a manual clock does not shorten or extend it.
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
        let _ = self.shared.token.set(shutdown.token());
        let pool = self.clone();
        shutdown.on_stop_with_grace(name, grace, move || async move {
            let report = tokio::task::spawn_blocking(move || pool.shutdown(grace))
                .await
                .map_err(|e| e.to_string())?;
            if report.clean {
                Ok(())
            } else {
                Err(format!(
                    "{} queued tasks cancelled, {} still running",
                    report.cancelled, report.still_running
                ))
            }
        })
    }

    /// A snapshot of the pool's numbers, with task-time percentiles.
    pub fn stats(&self) -> PoolStats {
        self.shared.stats()
    }

    /// Starts a thread that logs [`stats`](Self::stats) with `tracing` every
    /// `interval` until the pool closes, in the shape the seeds log (active
    /// workers, queued tasks, completed, failed, average duration).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for a zero interval, or if the OS refuses the thread.
    pub fn spawn_reporter(&self, interval: Duration) -> Result<(), ConfigError> {
        validate::non_zero_duration("interval", interval)?;
        let weak = Arc::downgrade(&self.shared);
        let name = format!("{}-report", self.shared.name);
        std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                loop {
                    std::thread::park_timeout(interval);
                    let Some(shared) = weak.upgrade() else { return };
                    if shared.state.is_closed() {
                        return;
                    }
                    let pool = shared.stats();
                    tracing::info!(
                        pool = %shared.name,
                        active_workers = pool.active,
                        queued_tasks = pool.queued,
                        completed = pool.completed,
                        failed = pool.failed,
                        avg_duration = ?pool.mean,
                        "pool stats"
                    );
                }
            })
            .map(|_| ())
            .map_err(|e| {
                ConfigError::new(
                    "interval",
                    interval,
                    format!("reporter thread not started: {e}"),
                )
            })
    }
}

impl Shared {
    fn stats(&self) -> PoolStats {
        let (p50, p90, p99, mean) = Timings::percentiles(self.cells.iter().map(|c| &c.timings));
        let sum = |f: fn(&Counters) -> &AtomicU64| {
            self.cells
                .iter()
                .map(|c| Counters::get(f(&c.counters)))
                .sum::<u64>()
        };
        let panicked = sum(|c| &c.panicked);
        let cancelled = Counters::get(&self.counters.cancelled);
        PoolStats {
            workers: self.workers,
            // Relaxed: a statistic.
            active: self.active(),
            // Started jobs whose slots are not yet given back are not queued.
            queued: self.state.len().saturating_sub(self.started.held()),
            completed: sum(|c| &c.completed),
            failed: panicked + cancelled,
            panicked,
            cancelled,
            rejected: Counters::get(&self.counters.rejected),
            blocked_submitters: self.state.waiters(Side::Push),
            p50,
            p90,
            p99,
            mean,
        }
    }

    /// Workers running a task now.
    fn active(&self) -> usize {
        // Relaxed: a statistic.
        self.cells
            .iter()
            .map(|c| c.active.load(Ordering::Relaxed))
            .sum()
    }

    fn reject<F>(&self, task: F, reason: Rejection) -> Rejected<F> {
        self.counters.rejected();
        Rejected { task, reason }
    }

    fn close(&self) {
        if self.state.close() {
            tracing::debug!(pool = %self.name, "pool closed");
        }
        self.work.wake_all();
        self.space.wake_all();
    }

    /// Drops every queued job (their handles see `Cancelled`).
    fn drop_queued(&self) {
        let steal = |st: &dyn Fn() -> Steal<BoxedJob>| loop {
            match st() {
                Steal::Success(j) => break Some(j),
                Steal::Retry => continue,
                Steal::Empty => break None,
            }
        };
        loop {
            let job = steal(&|| self.injector.steal())
                .or_else(|| self.stealers.iter().find_map(|st| steal(&|| st.steal())));
            let Some(job) = job else { return };
            self.dequeued();
            self.counters.metrics.queued.decrement(1.0);
            drop(job);
            self.counters.cancelled();
        }
    }

    /// A job left the queue: free its slot and wake a blocked submitter.
    #[inline]
    fn dequeued(&self) {
        crate::park::release(1, &self.state, &self.space);
    }

    fn find_job(&self, me: usize, local: &Worker<BoxedJob>) -> Option<BoxedJob> {
        if let Some(j) = local.pop() {
            return Some(j);
        }
        loop {
            let mut retry = false;
            match self.injector.steal_batch_and_pop(local) {
                Steal::Success(j) => return Some(j),
                Steal::Retry => retry = true,
                Steal::Empty => {}
            }
            let n = self.stealers.len();
            for k in 1..n {
                match self.stealers[(me + k) % n].steal() {
                    Steal::Success(j) => return Some(j),
                    Steal::Retry => retry = true,
                    Steal::Empty => {}
                }
            }
            if !retry {
                return None;
            }
        }
    }

    fn work(&self, me: usize, local: Worker<BoxedJob>) {
        let backoff = Backoff::new();
        // Sleeps that ended with work counted but none found: work in transit, or
        // slots a busy peer holds for jobs it has already taken.
        let mut stale = 0_u32;
        loop {
            if let Some(job) = self.find_job(me, &local) {
                backoff.reset();
                stale = 0;
                let m = &self.counters.metrics;
                m.queued.decrement(1.0);
                // The job has left the queue: count it in this worker's own cell
                // (no contended write per task), and give the cell back to the
                // shared count at the batch size, when no more taken work waits in
                // this worker's deque, or when a submitter waits for room. Anyone
                // who finds the queue full fences and collects the cells first, so
                // the bound counts exactly the jobs not yet started as of that check;
                // a start racing the check counts either way (see `park::Started`).
                let held = self.started.take(me);
                if held >= RELEASE_BATCH || local.is_empty() || self.started.room_wanted() {
                    self.started.give_back(me, &self.state, &self.space);
                }
                if self.cancel_queued.load(Ordering::SeqCst) {
                    drop(job);
                    self.counters.cancelled();
                    continue;
                }
                let cell = &self.cells[me];
                // Relaxed: statistics; only this worker writes its cell.
                cell.active.store(1, Ordering::Relaxed);
                m.running.increment(1.0);
                let start = self.clock.now();
                job.call(&cell.counters);
                let took = self.clock.elapsed(start);
                cell.timings.record(took);
                cell.active.store(0, Ordering::Relaxed);
                m.running.decrement(1.0);
                m.task_seconds.record_duration(took);
                continue;
            }
            // Nothing found: give back what we took, spin briefly (tiny tasks arrive
            // faster than a sleep and wake-up take), then exit if closed and
            // drained, else sleep.
            self.started.give_back(me, &self.state, &self.space);
            if !backoff.is_completed() {
                backoff.snooze();
                continue;
            }
            backoff.reset();
            // About to sleep: collect the slots busy peers still hold for jobs they
            // started, so a non-zero count below means work that can be found.
            self.started.collect(&self.state, &self.space);
            // Sleep unless tasks are queued (perhaps in transit: being pushed, or
            // in a peer's deque mid-steal), then look again. Should work stay
            // counted but unfound round after round (a safety net: the collection
            // above frees busy peers' slots), nap (a new task still wakes us)
            // instead of spinning.
            let nap = stale >= STALE_ROUNDS;
            let seen = self.work.park(
                &self.state,
                Side::Pop,
                |seen| seen.len == 0 || nap,
                nap.then(|| Instant::now() + STALE_NAP),
            );
            if seen.len == 0 && seen.closed {
                break;
            }
            stale = if seen.len > 0 {
                stale.saturating_add(1)
            } else {
                0
            };
        }
        let mut alive = lock(&self.alive);
        *alive -= 1;
        if *alive == 0 {
            self.all_exited.notify_all();
        }
    }
}

impl fmt::Debug for WorkerPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerPool")
            .field("name", &self.shared.name)
            .field("workers", &self.shared.workers)
            .field("capacity", &self.shared.capacity)
            .field("queued", &self.shared.state.len())
            .finish_non_exhaustive()
    }
}
