//! [`Rejected`]: an item that was not admitted, handed back with the reason.

use std::fmt;

use heijunka_core::Rejection;

/// An item that a scheduler did not take, handed back with the reason.
///
/// Returned by [`FairScheduler`](crate::FairScheduler),
/// [`PriorityQueue`](crate::PriorityQueue) and
/// [`LevelledScheduler`](crate::LevelledScheduler). Its `Debug` output does not
/// print the item.
///
/// ```
/// use heijunka_backpressure::PriorityQueue;
/// use heijunka_core::Rejection;
///
/// let q = PriorityQueue::builder(2, 1).build()?;
/// q.try_push(0, "first").unwrap();
/// let err = q.try_push(0, "second").unwrap_err();
/// assert_eq!(err.reason(), Rejection::QueueFull { capacity: 1 });
/// assert_eq!(err.into_inner(), "second");
/// # Ok::<(), heijunka_core::ConfigError>(())
/// ```
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
