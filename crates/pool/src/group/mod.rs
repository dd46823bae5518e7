//! Structured task groups: [`Group`] of futures on tokio, [`ThreadGroup`] of scoped
//! OS threads; at most K at a time, every failure reported.

mod error;
mod thread;

use std::fmt;
use std::future::{Future, poll_fn};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;

use heijunka_core::sync::atomic::{AtomicBool, Ordering};
use heijunka_core::{ConfigError, validate};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub(crate) use self::error::Outcome;
pub use self::error::{GroupErrors, PanicPolicy, TaskFailure};
pub use self::thread::{ThreadGroup, ThreadScope};

/// Builds a [`Group`] or a [`ThreadGroup`].
#[derive(Clone, Copy, Debug)]
#[must_use = "a builder does nothing until `build()`"]
pub struct GroupBuilder {
    max_concurrency: usize,
    fail_fast: bool,
    panic_policy: PanicPolicy,
}

impl GroupBuilder {
    /// The most tasks running at once. Default 64 (as `TaskPool`'s `max_running`).
    pub fn max_concurrency(mut self, n: usize) -> Self {
        self.max_concurrency = n;
        self
    }

    /// On the first failure (an error or a panic), cancel the group's token: tasks
    /// observe it, tasks not yet spawned are not run and are reported
    /// [`TaskFailure::Cancelled`] (errgroup semantics). Default `false`: every task
    /// runs and every failure is reported.
    pub fn fail_fast(mut self, on: bool) -> Self {
        self.fail_fast = on;
        self
    }

    /// What to do with a panic. Default [`PanicPolicy::Capture`].
    pub fn panic_policy(mut self, policy: PanicPolicy) -> Self {
        self.panic_policy = policy;
        self
    }

    fn validate(&self) -> Result<(), ConfigError> {
        validate::at_least("max_concurrency", self.max_concurrency, 1)?;
        validate::at_most(
            "max_concurrency",
            self.max_concurrency,
            Semaphore::MAX_PERMITS,
        )?;
        Ok(())
    }

    /// Validates and builds an async [`Group`].
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for `max_concurrency` of zero or above tokio's semaphore
    /// limit.
    pub fn build<T, E>(self) -> Result<Group<T, E>, ConfigError> {
        self.validate()?;
        Ok(Group {
            semaphore: Arc::new(Semaphore::new(self.max_concurrency)),
            set: JoinSet::new(),
            token: GroupToken::new(),
            spawned: 0,
            seen: Vec::new(),
            lost: 0,
            unrun: Vec::new(),
            max_concurrency: self.max_concurrency,
            fail_fast: self.fail_fast,
            panic_policy: self.panic_policy,
        })
    }

    /// Validates and builds a [`ThreadGroup`].
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for `max_concurrency` of zero.
    pub fn build_threads(self) -> Result<ThreadGroup, ConfigError> {
        self.validate()?;
        Ok(ThreadGroup {
            max_concurrency: self.max_concurrency,
            fail_fast: self.fail_fast,
            panic_policy: self.panic_policy,
        })
    }
}

/// The cancellation token a [`Group`] gives each task.
///
/// Tasks observe it with [`cancelled`](Self::cancelled)`.await` or
/// [`is_cancelled`](Self::is_cancelled); [`cancel`](Self::cancel) cancels the
/// whole group, as [`Group::cancel`] does. Handing it to a task costs one
/// reference count, and checking it one atomic load (a tokio-util
/// [`CancellationToken`] takes a lock for both); for APIs that take a
/// `CancellationToken`, [`child_token`](Self::child_token) gives one that is
/// cancelled with the group.
#[derive(Clone)]
pub struct GroupToken(Arc<TokenInner>);

struct TokenInner {
    /// Set before `token` is cancelled; read without the token's lock.
    cancelled: AtomicBool,
    token: CancellationToken,
}

impl GroupToken {
    fn new() -> Self {
        Self(Arc::new(TokenInner {
            cancelled: AtomicBool::new(false),
            token: CancellationToken::new(),
        }))
    }

    /// Cancels the group: every task's token reports it, later spawns do not run.
    pub fn cancel(&self) {
        // Release: pairs with the Acquire in `is_cancelled`.
        self.0.cancelled.store(true, Ordering::Release);
        self.0.token.cancel();
    }

    /// Whether the group is cancelled.
    pub fn is_cancelled(&self) -> bool {
        // Acquire: pairs with the Release in `cancel`.
        self.0.cancelled.load(Ordering::Acquire)
    }

    /// Completes once the group is cancelled.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: dropping the future changes nothing; a later call completes
    /// once the group is cancelled.
    pub async fn cancelled(&self) {
        self.0.token.cancelled().await;
    }

    /// A tokio-util token cancelled with the group (cancelling it does not cancel
    /// the group).
    pub fn child_token(&self) -> CancellationToken {
        self.0.token.child_token()
    }
}

impl fmt::Debug for GroupToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupToken")
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

/// Runs futures on tokio with at most `max_concurrency` at a time, and reports
/// every failure (Go's `conc` pool and `errgroup`).
///
/// - [`spawn`](Self::spawn) waits for a free slot, then starts the task: at most
///   `max_concurrency` tasks exist at once. Each task is given the group's
///   [`GroupToken`].
/// - Results come back as the tasks finish ([`next`](Self::next), or
///   [`try_next`](Self::try_next) between spawns to stream them with a bounded
///   backlog while spawning), in spawn order
///   ([`wait_ordered`](Self::wait_ordered)), or not at all ([`wait`](Self::wait)),
///   with every error, panic and cancellation in [`GroupErrors`].
/// - With [`fail_fast`](GroupBuilder::fail_fast) the first failure cancels the
///   token: running tasks observe it, later spawns do not run.
/// - Dropping a group aborts its tasks: none outlives it unobserved.
///
/// ```
/// use heijunka_pool::Group;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut group = Group::builder().max_concurrency(8).build()?;
/// for n in 0..100_u64 {
///     group.spawn(move |_token| async move {
///         if n % 40 == 39 { Err(format!("item {n} is bad")) } else { Ok(n * n) }
///     }).await;
/// }
/// let errors = group.wait_ordered().await.unwrap_err();
/// assert_eq!(errors.len(), 2);
/// assert_eq!(
///     errors.to_string(),
///     "2 of 100 tasks failed: task 39 failed: item 39 is bad; task 79 failed: item 79 is bad"
/// );
/// # Ok(())
/// # }
/// ```
///
/// Fail-fast, where tasks watch the token:
///
/// ```
/// use heijunka_pool::{Group, TaskFailure};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut group = Group::builder().max_concurrency(2).fail_fast(true).build()?;
/// group.spawn(|token| async move {
///     token.cancelled().await; // runs until the group gives up
///     Err("stopped")
/// }).await;
/// group.spawn(|_| async { Err("bad input") }).await;
/// group.spawn(|_| async { Ok(()) }).await; // never runs: the group has failed
/// let errors = group.wait().await.unwrap_err();
/// let failures: Vec<_> = errors.into_iter().map(|(_, f)| f).collect();
/// assert_eq!(
///     failures,
///     [TaskFailure::Error("stopped"), TaskFailure::Error("bad input"), TaskFailure::Cancelled]
/// );
/// # Ok(())
/// # }
/// ```
pub struct Group<T, E> {
    semaphore: Arc<Semaphore>,
    set: JoinSet<(usize, Outcome<T, E>)>,
    token: GroupToken,
    /// Tasks spawned so far (the next task's index).
    spawned: usize,
    /// One bit per task whose result has been returned, so that tasks the
    /// runtime cancelled (their results carry no index) can be found at the end.
    seen: Vec<u64>,
    /// Tasks the runtime cancelled, not yet reported.
    lost: usize,
    /// Tasks that were never started (the group was cancelled), not yet reported.
    unrun: Vec<usize>,
    max_concurrency: usize,
    fail_fast: bool,
    panic_policy: PanicPolicy,
}

impl Group<(), ()> {
    /// A builder (defaults: 64 at a time, no fail-fast, panics captured). The
    /// group's value and error types are inferred from its tasks.
    pub fn builder() -> GroupBuilder {
        GroupBuilder {
            max_concurrency: 64,
            fail_fast: false,
            panic_policy: PanicPolicy::Capture,
        }
    }
}

impl<T, E> Group<T, E>
where
    T: Send + 'static,
    E: Send + 'static,
{
    /// Waits for a free slot, then starts `task(token)` on the current tokio
    /// runtime; returns the task's index (0 for the first spawn, then 1, 2...).
    ///
    /// If the group is cancelled by the time a slot is free, `task` is not run and
    /// is reported as [`TaskFailure::Cancelled`]. (A task that cancels the token
    /// and keeps running holds its slot: the spawner waits for a slot, then sees
    /// the cancellation.)
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: dropping the returned future before it completes (while it
    /// waits for a slot) spawns nothing, takes no index and keeps no slot; `task`
    /// is dropped unrun.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime (as `tokio::spawn`).
    pub async fn spawn<F, Fut>(&mut self, task: F) -> usize
    where
        F: FnOnce(GroupToken) -> Fut,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        // The same path as a hand-rolled `Semaphore` + `JoinSet`: wait for a
        // permit, then spawn. A failing fail-fast task cancels the token before it
        // frees its slot, so the spawner that gets the slot sees the cancellation.
        let permit = Arc::clone(&self.semaphore)
            .acquire_owned()
            .await
            .ok()
            .filter(|_| !self.token.is_cancelled());
        // The index is taken only now: a `spawn` dropped while it waits (a caller's
        // time-out) leaves no task behind that `wait` would look for.
        let index = self.spawned;
        self.spawned += 1;
        if index.is_multiple_of(64) {
            self.seen.push(0);
        }
        let Some(permit) = permit else {
            self.unrun.push(index);
            return index;
        };
        let future = task(self.token.clone());
        // Only a fail-fast group's tasks cancel it.
        let token = self.fail_fast.then(|| self.token.clone());
        self.set.spawn(async move {
            let mut future = pin!(future);
            let outcome =
                poll_fn(
                    |cx| match catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
                        Ok(Poll::Ready(r)) => Poll::Ready(Outcome::Done(r)),
                        Ok(Poll::Pending) => Poll::Pending,
                        Err(payload) => Poll::Ready(Outcome::Panicked(payload)),
                    },
                )
                .await;
            // Cancel before the slot is freed, so a spawner waiting for the slot
            // sees the cancellation first.
            if let Some(token) = token
                && outcome.is_failure()
            {
                token.cancel();
            }
            drop(permit);
            (index, outcome)
        });
        index
    }

    /// Waits for the next task to finish and returns its index and result, or
    /// `None` once every spawned task has been returned. Tasks that never ran come
    /// first; tasks the runtime cancelled (it is shutting down) come last.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: dropping the future before it completes loses no result; a
    /// task that finished meanwhile is returned by a later `next` (or
    /// [`try_next`](Self::try_next)).
    ///
    /// # Panics
    ///
    /// Resumes a task's panic under [`PanicPolicy::Resume`].
    pub async fn next(&mut self) -> Option<(usize, Result<T, TaskFailure<E>>)> {
        let (index, outcome) = self.next_outcome().await?;
        Some((index, outcome.settle(self.panic_policy)))
    }

    /// Returns the next result of a task that has already finished, without
    /// waiting; `None` if none has (tasks may still be running: [`next`](Self::next)
    /// waits for them).
    ///
    /// Use it to stream results while spawning: draining it after each
    /// [`spawn`](Self::spawn) keeps at most `max_concurrency` finished outputs
    /// held at once (a spawn waits until a task finishes, and at most
    /// `max_concurrency` can have finished meanwhile), instead of every output
    /// until spawning ends.
    ///
    /// ```
    /// use heijunka_pool::Group;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut group = Group::builder().max_concurrency(4).build()?;
    /// let mut sum = 0;
    /// for n in 0..1_000_u64 {
    ///     group.spawn(move |_| async move { Ok::<_, String>(n) }).await;
    ///     while let Some((_, value)) = group.try_next() {
    ///         sum += value?;
    ///     }
    /// }
    /// while let Some((_, value)) = group.next().await {
    ///     sum += value?;
    /// }
    /// assert_eq!(sum, 499_500);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Panics
    ///
    /// Resumes a task's panic under [`PanicPolicy::Resume`].
    pub fn try_next(&mut self) -> Option<(usize, Result<T, TaskFailure<E>>)> {
        let (index, outcome) = loop {
            if let Some(r) = self.unrun_or_lost() {
                break r;
            }
            match self.set.try_join_next() {
                Some(Ok(r)) => break r,
                // A cancellation, as in `next_outcome`.
                Some(Err(_)) => self.lost += 1,
                None => return None,
            }
        };
        self.mark_seen(index);
        Some((index, outcome.settle(self.panic_policy)))
    }

    /// A task that never ran, or (once the set is empty) one the runtime
    /// cancelled.
    fn unrun_or_lost(&mut self) -> Option<(usize, Outcome<T, E>)> {
        if let Some(index) = self.unrun.pop() {
            return Some((index, Outcome::Cancelled));
        }
        if self.lost > 0 && self.set.is_empty() {
            self.lost -= 1;
            let index = (0..self.spawned)
                .find(|&i| self.seen[i / 64] & (1 << (i % 64)) == 0)
                .expect("a cancelled task's result was never returned");
            return Some((index, Outcome::Cancelled));
        }
        None
    }

    fn mark_seen(&mut self, index: usize) {
        self.seen[index / 64] |= 1 << (index % 64);
    }

    async fn next_outcome(&mut self) -> Option<(usize, Outcome<T, E>)> {
        let (index, outcome) = loop {
            if let Some(r) = self.unrun_or_lost() {
                break r;
            }
            match self.set.join_next().await {
                Some(Ok(r)) => break r,
                // The wrapper catches panics, so this is a cancellation (the
                // runtime shutting down). Its index is found once the set is empty.
                Some(Err(_)) => self.lost += 1,
                None => return None,
            }
        };
        self.mark_seen(index);
        Some((index, outcome))
    }

    /// Waits for every task and discards their values.
    ///
    /// # Cancel safety
    ///
    /// Not cancel-safe: it takes the group, so dropping the future before it
    /// completes drops the group, which aborts every task still running and loses
    /// every result and failure not yet collected.
    ///
    /// # Errors
    ///
    /// [`GroupErrors`] with every failure, if any task failed.
    ///
    /// # Panics
    ///
    /// Resumes a task's panic under [`PanicPolicy::Resume`] (the other tasks are
    /// aborted when the group drops).
    pub async fn wait(mut self) -> Result<(), GroupErrors<E>> {
        let mut failures = Vec::new();
        while let Some((index, outcome)) = self.next_outcome().await {
            if let Err(f) = outcome.settle(self.panic_policy) {
                failures.push((index, f));
            }
        }
        self.finish(failures, ())
    }

    /// Waits for every task and returns their values in spawn order.
    ///
    /// # Cancel safety
    ///
    /// Not cancel-safe: it takes the group, so dropping the future before it
    /// completes drops the group, which aborts every task still running and loses
    /// every value and failure, collected or not. To keep results across a
    /// time-out, collect them with [`next`](Self::next) instead.
    ///
    /// # Errors
    ///
    /// [`GroupErrors`] with every failure, if any task failed (the successful
    /// values are dropped).
    ///
    /// # Panics
    ///
    /// Resumes a task's panic under [`PanicPolicy::Resume`].
    pub async fn wait_ordered(mut self) -> Result<Vec<T>, GroupErrors<E>> {
        let mut failures = Vec::new();
        let mut values: Vec<Option<T>> = Vec::new();
        values.resize_with(self.spawned, || None);
        while let Some((index, outcome)) = self.next_outcome().await {
            match outcome.settle(self.panic_policy) {
                Ok(v) => values[index] = Some(v),
                Err(f) => failures.push((index, f)),
            }
        }
        let values = if failures.is_empty() {
            values
                .into_iter()
                .map(|v| v.expect("every task without a failure has a value"))
                .collect()
        } else {
            Vec::new()
        };
        self.finish(failures, values)
    }

    fn finish<V>(&self, failures: Vec<(usize, TaskFailure<E>)>, v: V) -> Result<V, GroupErrors<E>> {
        if failures.is_empty() {
            Ok(v)
        } else {
            Err(GroupErrors::from_failures(self.spawned, failures))
        }
    }
}

impl<T, E> Group<T, E> {
    /// Cancels the group's token: running tasks observe it, later spawns do not
    /// run. Tasks can do the same with their token's `cancel()`.
    pub fn cancel(&self) {
        self.token.cancel();
    }

    /// Whether the group's token is cancelled (by [`cancel`](Self::cancel) or by
    /// fail-fast).
    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// A clone of the token every task is given.
    pub fn token(&self) -> GroupToken {
        self.token.clone()
    }

    /// Tasks spawned so far (including those that did not run).
    pub fn spawned(&self) -> usize {
        self.spawned
    }

    /// Tasks running now (started and not finished).
    pub fn running(&self) -> usize {
        self.max_concurrency - self.semaphore.available_permits()
    }

    /// The most tasks running at once.
    pub fn max_concurrency(&self) -> usize {
        self.max_concurrency
    }
}

impl<T, E> fmt::Debug for Group<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Group")
            .field("max_concurrency", &self.max_concurrency)
            .field("spawned", &self.spawned)
            .field("fail_fast", &self.fail_fast)
            .field("panic_policy", &self.panic_policy)
            .field("cancelled", &self.token.is_cancelled())
            .finish_non_exhaustive()
    }
}
