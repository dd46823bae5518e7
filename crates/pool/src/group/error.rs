//! How tasks of a group fail: [`TaskFailure`], [`GroupErrors`], [`PanicPolicy`].

use std::any::Any;
use std::fmt;

use crate::error::panic_message;

/// What a group does with a task's panic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum PanicPolicy {
    /// Catch the panic and report it as [`TaskFailure::Panicked`] with its message,
    /// beside every other failure. The default.
    #[default]
    Capture,
    /// Re-raise the panic in the waiter (with [`std::panic::resume_unwind`]) when
    /// its result is collected; the group's other tasks are cancelled (async
    /// groups) or joined (thread groups) first, so none is left running unobserved.
    Resume,
}

/// Why one task of a group produced no value.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TaskFailure<E> {
    /// The task returned this error.
    Error(E),
    /// The task panicked; the panic message where it was a string.
    Panicked {
        /// The panic message.
        message: String,
    },
    /// The task never ran, or was stopped, because the group was cancelled (by
    /// fail-fast, [`Group::cancel`](crate::Group::cancel) or the runtime shutting
    /// down).
    Cancelled,
}

impl<E> TaskFailure<E> {
    /// The task's own error, if it returned one.
    pub fn error(&self) -> Option<&E> {
        match self {
            Self::Error(e) => Some(e),
            _ => None,
        }
    }

    /// Whether the task panicked.
    pub fn is_panic(&self) -> bool {
        matches!(self, Self::Panicked { .. })
    }

    /// Whether the task was cancelled.
    pub fn is_cancelled(&self) -> bool {
        matches!(self, Self::Cancelled)
    }
}

impl<E: fmt::Debug> fmt::Debug for TaskFailure<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Error(e) => f.debug_tuple("Error").field(e).finish(),
            Self::Panicked { message } => f
                .debug_struct("Panicked")
                .field("message", message)
                .finish(),
            Self::Cancelled => f.write_str("Cancelled"),
        }
    }
}

impl<E: fmt::Display> fmt::Display for TaskFailure<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Error(e) => write!(f, "failed: {e}"),
            Self::Panicked { message } => write!(f, "panicked: {message}"),
            Self::Cancelled => f.write_str("cancelled"),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for TaskFailure<E> {}

/// Every failure of a group's tasks, by task index (the order of `spawn` calls,
/// from 0), sorted by index.
///
/// Iterate it for `(index, failure)` pairs; its `Display` lists them all:
///
/// ```
/// use heijunka_pool::{GroupErrors, TaskFailure};
///
/// let errors = GroupErrors::from_failures(
///     5,
///     vec![
///         (3, TaskFailure::Panicked { message: "boom".into() }),
///         (1, TaskFailure::Error("disk full")),
///     ],
/// );
/// assert_eq!(
///     errors.to_string(),
///     "2 of 5 tasks failed: task 1 failed: disk full; task 3 panicked: boom"
/// );
/// let indexes: Vec<usize> = errors.iter().map(|(i, _)| i).collect();
/// assert_eq!(indexes, [1, 3]);
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct GroupErrors<E> {
    tasks: usize,
    failures: Vec<(usize, TaskFailure<E>)>,
}

impl<E> GroupErrors<E> {
    /// Errors of a group of `tasks` tasks; `failures` are sorted by index here.
    pub fn from_failures(tasks: usize, mut failures: Vec<(usize, TaskFailure<E>)>) -> Self {
        failures.sort_by_key(|(i, _)| *i);
        Self { tasks, failures }
    }

    /// How many tasks the group had in all (failed or not).
    pub fn tasks(&self) -> usize {
        self.tasks
    }

    /// How many tasks failed (always at least one in an error returned by a group).
    pub fn len(&self) -> usize {
        self.failures.len()
    }

    /// Whether there is no failure (never true for an error a group returns).
    pub fn is_empty(&self) -> bool {
        self.failures.is_empty()
    }

    /// `(index, failure)` pairs, by index.
    pub fn iter(&self) -> impl Iterator<Item = (usize, &TaskFailure<E>)> {
        self.failures.iter().map(|(i, f)| (*i, f))
    }

    /// The tasks' own errors (not panics or cancellations), by index.
    pub fn errors(&self) -> impl Iterator<Item = &E> {
        self.failures.iter().filter_map(|(_, f)| f.error())
    }

    /// The failure of the task with the lowest index.
    pub fn first(&self) -> Option<&TaskFailure<E>> {
        self.failures.first().map(|(_, f)| f)
    }
}

impl<E> IntoIterator for GroupErrors<E> {
    type Item = (usize, TaskFailure<E>);
    type IntoIter = std::vec::IntoIter<(usize, TaskFailure<E>)>;

    fn into_iter(self) -> Self::IntoIter {
        self.failures.into_iter()
    }
}

impl<'a, E> IntoIterator for &'a GroupErrors<E> {
    type Item = &'a (usize, TaskFailure<E>);
    type IntoIter = std::slice::Iter<'a, (usize, TaskFailure<E>)>;

    fn into_iter(self) -> Self::IntoIter {
        self.failures.iter()
    }
}

impl<E: fmt::Debug> fmt::Debug for GroupErrors<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupErrors")
            .field("tasks", &self.tasks)
            .field("failures", &self.failures)
            .finish()
    }
}

impl<E: fmt::Display> fmt::Display for GroupErrors<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} of {} tasks failed", self.failures.len(), self.tasks)?;
        for (n, (i, failure)) in self.failures.iter().enumerate() {
            let sep = if n == 0 { ": " } else { "; " };
            write!(f, "{sep}task {i} {failure}")?;
        }
        Ok(())
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for GroupErrors<E> {}

/// A task's result before the panic policy is applied.
pub(crate) enum Outcome<T, E> {
    Done(Result<T, E>),
    Panicked(Box<dyn Any + Send>),
    Cancelled,
}

impl<T, E> Outcome<T, E> {
    pub(crate) fn is_failure(&self) -> bool {
        !matches!(self, Self::Done(Ok(_)))
    }

    /// Applies `policy`: resumes a panic under [`PanicPolicy::Resume`].
    pub(crate) fn settle(self, policy: PanicPolicy) -> Result<T, TaskFailure<E>> {
        match self {
            Self::Done(Ok(v)) => Ok(v),
            Self::Done(Err(e)) => Err(TaskFailure::Error(e)),
            Self::Panicked(payload) => match policy {
                PanicPolicy::Resume => std::panic::resume_unwind(payload),
                PanicPolicy::Capture => Err(TaskFailure::Panicked {
                    message: panic_message(&*payload),
                }),
            },
            Self::Cancelled => Err(TaskFailure::Cancelled),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_display_and_sort_by_index() {
        let errors = GroupErrors::from_failures(
            4,
            vec![
                (2, TaskFailure::Cancelled),
                (0, TaskFailure::Error("x")),
                (
                    1,
                    TaskFailure::Panicked {
                        message: "p".into(),
                    },
                ),
            ],
        );
        assert_eq!(
            errors.to_string(),
            "3 of 4 tasks failed: task 0 failed: x; task 1 panicked: p; task 2 cancelled"
        );
        assert_eq!(errors.first(), Some(&TaskFailure::Error("x")));
        assert_eq!(errors.errors().collect::<Vec<_>>(), [&"x"]);
        assert!(!errors.is_empty());
        let by_ref: Vec<usize> = (&errors).into_iter().map(|(i, _)| *i).collect();
        assert_eq!(by_ref, [0, 1, 2]);
    }

    #[test]
    fn capture_turns_a_panic_into_its_message() {
        let payload: Box<dyn Any + Send> = Box::new(String::from("owned message"));
        let outcome: Outcome<(), ()> = Outcome::Panicked(payload);
        assert!(outcome.is_failure());
        assert_eq!(
            outcome.settle(PanicPolicy::Capture),
            Err(TaskFailure::Panicked {
                message: "owned message".into()
            })
        );
        let ok: Outcome<u8, ()> = Outcome::Done(Ok(1));
        assert!(!ok.is_failure());
        assert_eq!(ok.settle(PanicPolicy::Resume), Ok(1));
    }
}
