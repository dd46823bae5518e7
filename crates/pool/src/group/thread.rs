//! [`ThreadGroup`]: scoped OS threads, at most K at a time, borrowing from the
//! caller's stack (`std::thread::scope` underneath).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::Scope;

use tokio_util::sync::CancellationToken;

use super::{GroupErrors, Outcome, PanicPolicy};

/// Runs closures on scoped OS threads with at most `max_concurrency` at a time; the
/// closures may borrow from the caller's stack. Results come back in spawn order,
/// with every failure.
///
/// Built with [`Group::builder()`](crate::Group::builder) and
/// [`build_threads`](crate::GroupBuilder::build_threads); one configuration serves any
/// number of [`scope`](Self::scope) calls.
///
/// ```
/// use heijunka_pool::Group;
///
/// let words = vec!["alpha", "beta", "gamma", "delta"];
/// let threads = Group::builder().max_concurrency(2).build_threads()?;
/// let lengths = threads.scope(|s| {
///     for w in &words {
///         // Borrows `words`: the scope joins every thread before returning.
///         s.spawn(move |_token| Ok::<_, std::convert::Infallible>(w.len()));
///     }
/// })?;
/// assert_eq!(lengths, [5, 4, 5, 5]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug)]
pub struct ThreadGroup {
    pub(super) max_concurrency: usize,
    pub(super) fail_fast: bool,
    pub(super) panic_policy: PanicPolicy,
}

impl ThreadGroup {
    /// A thread group of at most `max_concurrency` threads at once, other settings
    /// default (no fail-fast, panics captured).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`](heijunka_core::ConfigError) for zero.
    pub fn new(max_concurrency: usize) -> Result<Self, heijunka_core::ConfigError> {
        crate::Group::builder()
            .max_concurrency(max_concurrency)
            .build_threads()
    }

    /// Calls `f` with a [`ThreadScope`] to spawn tasks on, waits for every task,
    /// and returns their values in spawn order.
    ///
    /// [`spawn`](ThreadScope::spawn) blocks the caller while `max_concurrency`
    /// tasks are running. Every thread is joined before this returns.
    ///
    /// # Errors
    ///
    /// [`GroupErrors`] with every failure, if any task failed.
    ///
    /// # Panics
    ///
    /// Resumes the first (lowest-index) task panic after every thread is joined,
    /// under [`PanicPolicy::Resume`]; a panic of `f` itself propagates.
    pub fn scope<'env, T, E, F>(&self, f: F) -> Result<Vec<T>, GroupErrors<E>>
    where
        T: Send + 'env,
        E: Send + 'env,
        F: for<'scope> FnOnce(&ThreadScope<'scope, 'env, T, E>),
    {
        let shared = Arc::new(Shared {
            slots: Slots {
                running: Mutex::new(0),
                freed: Condvar::new(),
            },
            outcomes: Mutex::new(Vec::new()),
            token: CancellationToken::new(),
        });
        std::thread::scope(|scope| {
            let s = ThreadScope {
                scope,
                shared: Arc::clone(&shared),
                group: *self,
            };
            f(&s);
        });
        // Every thread is joined: the outcomes are all in.
        let outcomes = std::mem::take(
            &mut *shared
                .outcomes
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let tasks = outcomes.len();
        let mut values = Vec::with_capacity(tasks);
        let mut failures = Vec::new();
        for (index, outcome) in outcomes.into_iter().enumerate() {
            let outcome = outcome.unwrap_or(Outcome::Cancelled);
            match outcome.settle(self.panic_policy) {
                Ok(v) => values.push(v),
                Err(f) => failures.push((index, f)),
            }
        }
        if failures.is_empty() {
            Ok(values)
        } else {
            Err(GroupErrors::from_failures(tasks, failures))
        }
    }

    /// The most tasks running at once.
    pub fn max_concurrency(&self) -> usize {
        self.max_concurrency
    }
}

/// Spawns tasks of a [`ThreadGroup::scope`] call.
pub struct ThreadScope<'scope, 'env, T, E> {
    scope: &'scope Scope<'scope, 'env>,
    shared: Arc<Shared<T, E>>,
    group: ThreadGroup,
}

struct Shared<T, E> {
    slots: Slots,
    /// One per spawned task, by index; `None` until it finishes.
    outcomes: Mutex<Vec<Option<Outcome<T, E>>>>,
    token: CancellationToken,
}

/// A counting semaphore: `running` tasks of at most `max`.
struct Slots {
    running: Mutex<usize>,
    freed: Condvar,
}

impl Slots {
    /// Takes a slot, or returns `false` once `token` is cancelled.
    fn acquire(&self, max: usize, token: &CancellationToken) -> bool {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if token.is_cancelled() {
                return false;
            }
            if *running < max {
                *running += 1;
                return true;
            }
            running = self
                .freed
                .wait(running)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn release(&self) {
        *self.running.lock().unwrap_or_else(PoisonError::into_inner) -= 1;
        self.freed.notify_all();
    }
}

impl<T, E> ThreadScope<'_, '_, T, E> {
    /// Cancels the group: tasks see it on their token, later spawns do not run.
    pub fn cancel(&self) {
        self.shared.token.cancel();
        self.shared.slots.freed.notify_all();
    }

    /// Whether the group is cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.shared.token.is_cancelled()
    }
}

impl<'scope, 'env, T, E> ThreadScope<'scope, 'env, T, E>
where
    T: Send + 'env,
    E: Send + 'env,
{
    /// Waits (blocking this thread) for a free slot, then runs `task(&token)` on a
    /// new scoped thread; returns the task's index (its place in the results).
    ///
    /// If the group is cancelled (fail-fast after a failure, or
    /// [`cancel`](Self::cancel)) before a slot frees, `task` is not run and is
    /// reported as [`TaskFailure::Cancelled`](crate::TaskFailure::Cancelled).
    pub fn spawn<F>(&self, task: F) -> usize
    where
        F: FnOnce(&CancellationToken) -> Result<T, E> + Send + 'scope,
    {
        let shared = &self.shared;
        let index = {
            let mut outcomes = shared
                .outcomes
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            outcomes.push(None);
            outcomes.len() - 1
        };
        if !shared
            .slots
            .acquire(self.group.max_concurrency, &shared.token)
        {
            return index;
        }
        let fail_fast = self.group.fail_fast;
        let shared = Arc::clone(shared);
        self.scope.spawn(move || {
            let outcome = match catch_unwind(AssertUnwindSafe(|| task(&shared.token))) {
                Ok(r) => Outcome::Done(r),
                Err(payload) => Outcome::Panicked(payload),
            };
            if fail_fast && outcome.is_failure() {
                shared.token.cancel();
            }
            shared
                .outcomes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)[index] = Some(outcome);
            shared.slots.release();
        });
        index
    }
}

impl<T, E> std::fmt::Debug for ThreadScope<'_, '_, T, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadScope")
            .field("group", &self.group)
            .field("cancelled", &self.is_cancelled())
            .finish_non_exhaustive()
    }
}
