//! [`Rejected`]: an item that was not admitted, handed back with the reason; and
//! [`ClassPushError`], the error of a push keyed by class.

use std::fmt;

use heijunka_core::Rejection;

/// An item that a scheduler did not take, handed back with the reason.
///
/// Returned by [`FairScheduler`](crate::FairScheduler) and
/// [`Batcher`](crate::Batcher), and inside [`ClassPushError`] by
/// [`PriorityQueue`](crate::PriorityQueue) and
/// [`LevelledScheduler`](crate::LevelledScheduler). Its `Debug` output does not
/// print the item.
///
/// ```
/// use heijunka_backpressure::FairScheduler;
/// use heijunka_core::Rejection;
///
/// let s = FairScheduler::builder().client_capacity(1).build()?;
/// s.try_push("client", "first").unwrap();
/// let err = s.try_push("client", "second").unwrap_err();
/// assert_eq!(err.reason(), Rejection::QueueFull { capacity: 1 });
/// assert_eq!(err.into_inner(), "second");
/// # Ok::<(), heijunka_core::ConfigError>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Rejected<T> {
    item: T,
    reason: Rejection,
}

impl<T> Rejected<T> {
    pub(crate) fn new(item: T, reason: Rejection) -> Self {
        Self { item, reason }
    }

    /// The item that was not taken.
    pub fn into_inner(self) -> T {
        self.item
    }

    /// Why it was not taken.
    pub fn reason(&self) -> Rejection {
        self.reason
    }
}

impl<T> fmt::Debug for Rejected<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rejected")
            .field("reason", &self.reason)
            .finish_non_exhaustive()
    }
}

impl<T> fmt::Display for Rejected<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "item not taken: {}", self.reason)
    }
}

impl<T> std::error::Error for Rejected<T> {}

/// Why a push to one of several classes did not take its item
/// ([`PriorityQueue::try_push`](crate::PriorityQueue::try_push),
/// [`LevelledScheduler::try_push`](crate::LevelledScheduler::try_push)); the item
/// comes back either way ([`into_inner`](Self::into_inner)). Its `Debug` output
/// does not print the item.
///
/// ```
/// use heijunka_backpressure::{ClassPushError, PriorityQueue};
///
/// let q = PriorityQueue::builder(3, 10).build()?;
/// let err = q.try_push(7, "job").unwrap_err();
/// assert!(matches!(err, ClassPushError::UnknownClass { class: 7, classes: 3, .. }));
/// assert_eq!(err.to_string(), "class 7 is out of range: there are 3 classes (0 to 2)");
/// assert_eq!(err.into_inner(), "job");
/// # Ok::<(), heijunka_core::ConfigError>(())
/// ```
#[non_exhaustive]
pub enum ClassPushError<T> {
    /// Refused for a reason every primitive shares: the class's room is full
    /// ([`Rejection::QueueFull`]) or the scheduler is closed
    /// ([`Rejection::ShuttingDown`]).
    Rejected(Rejected<T>),
    /// `class` is not one of the `classes` classes (`0` to `classes - 1`): a
    /// caller's bug, reported rather than read as some other class.
    UnknownClass {
        /// The item, handed back.
        item: T,
        /// The class asked for.
        class: usize,
        /// How many classes there are.
        classes: usize,
    },
}

impl<T> ClassPushError<T> {
    /// The item that was not taken.
    pub fn into_inner(self) -> T {
        match self {
            Self::Rejected(r) => r.into_inner(),
            Self::UnknownClass { item, .. } => item,
        }
    }

    /// The shared reason, for [`Rejected`](Self::Rejected); `None` for an
    /// unknown class.
    pub fn reason(&self) -> Option<Rejection> {
        match self {
            Self::Rejected(r) => Some(r.reason()),
            Self::UnknownClass { .. } => None,
        }
    }
}

impl<T> From<Rejected<T>> for ClassPushError<T> {
    fn from(r: Rejected<T>) -> Self {
        Self::Rejected(r)
    }
}

impl<T> fmt::Debug for ClassPushError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rejected(r) => f.debug_tuple("Rejected").field(r).finish(),
            Self::UnknownClass { class, classes, .. } => f
                .debug_struct("UnknownClass")
                .field("class", class)
                .field("classes", classes)
                .finish_non_exhaustive(),
        }
    }
}

impl<T> fmt::Display for ClassPushError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rejected(r) => r.fmt(f),
            Self::UnknownClass { class, classes, .. } => write!(
                f,
                "class {class} is out of range: there are {classes} classes (0 to {})",
                classes.saturating_sub(1)
            ),
        }
    }
}

impl<T> std::error::Error for ClassPushError<T> {}
