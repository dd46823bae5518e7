//! [`PriorityQueue`]: bounded, N classes, FIFO within a class, with aging.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use heijunka_core::{ConfigError, Rejection, validate};
use serde::Serialize;
use std::sync::{Mutex, MutexGuard};
use tokio::sync::Notify;

use crate::Rejected;

/// A bounded queue with `classes` priority classes (0 is the highest), FIFO within
/// a class.
///
/// Pops take from the highest non-empty class, except that a class is never passed
/// over forever. **Aging** (the documented choice, counted in pops rather than
/// time so it holds at any load): every pop that serves another class while a
/// class has work counts as one skip for that class; a class skipped
/// [`max_skips`](PriorityQueueBuilder::max_skips) times is *aged*, and aged
/// classes are served before the rest, the one skipped most first. A class's count
/// goes back to zero when it is served. So the item at the head of a class is
/// served within **`max_skips + classes` pops** of reaching the head, however
/// busy the higher classes are: `max_skips` pops until its class ages, then at
/// most one pop for each other class that aged before it. Aging is off by default
/// (strict priority); `max_skips(n)` turns it on.
///
/// One capacity bounds all classes together; [`try_push`](Self::try_push) hands
/// the item back when full. A class above the last is read as the last (lowest).
/// The structure sits behind one mutex, held for a few pointer moves.
///
/// ```
/// use heijunka_backpressure::PriorityQueue;
///
/// let q = PriorityQueue::builder(3, 100).max_skips(2).build()?;
/// q.try_push(2, "low").unwrap();
/// for i in 0..5 {
///     q.try_push(0, "high").unwrap();
/// }
/// let order: Vec<_> = std::iter::from_fn(|| q.try_pop()).collect();
/// // "low" is skipped twice, then served.
/// assert_eq!(order, ["high", "high", "low", "high", "high", "high"]);
/// # Ok::<(), heijunka_core::ConfigError>(())
/// ```
pub struct PriorityQueue<T> {
    state: Mutex<State<T>>,
    notify: Notify,
    capacity: usize,
    max_skips: Option<u32>,
}

struct State<T> {
    classes: Vec<VecDeque<T>>,
    skips: Vec<u32>,
    len: usize,
    rejected: u64,
    aged_pops: u64,
    closed: bool,
}

/// Builds a [`PriorityQueue`]; see [`PriorityQueue::builder`].
#[derive(Clone, Copy, Debug)]
#[must_use = "a builder does nothing until `build()`"]
pub struct PriorityQueueBuilder {
    classes: usize,
    capacity: usize,
    max_skips: Option<u32>,
}

impl PriorityQueueBuilder {
    /// Turn aging on: a class passed over `n` times is served next. Off by default.
    pub fn max_skips(mut self, n: u32) -> Self {
        self.max_skips = Some(n);
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the field for 0 `classes`, 0 `capacity` or 0
    /// `max_skips`.
    pub fn build<T>(self) -> Result<PriorityQueue<T>, ConfigError> {
        validate::at_least("classes", self.classes, 1)?;
        validate::at_most("classes", self.classes, 1024)?;
        validate::at_least("capacity", self.capacity, 1)?;
        if let Some(n) = self.max_skips {
            validate::at_least("max_skips", n, 1)?;
        }
        Ok(PriorityQueue {
            state: Mutex::new(State {
                classes: (0..self.classes).map(|_| VecDeque::new()).collect(),
                skips: vec![0; self.classes],
                len: 0,
                rejected: 0,
                aged_pops: 0,
                closed: false,
            }),
            notify: Notify::new(),
            capacity: self.capacity,
            max_skips: self.max_skips,
        })
    }
}

/// Live numbers of a [`PriorityQueue`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PriorityStats {
    /// Items queued per class.
    pub lens: Vec<usize>,
    /// Items handed back.
    pub rejected: u64,
    /// Pops that served an aged class ahead of a higher one.
    pub aged_pops: u64,
}

impl PriorityQueue<()> {
    /// A builder for `classes` classes sharing `capacity` slots (the item type is
    /// chosen by [`build`](PriorityQueueBuilder::build)).
    pub fn builder(classes: usize, capacity: usize) -> PriorityQueueBuilder {
        PriorityQueueBuilder {
            classes,
            capacity,
            max_skips: None,
        }
    }
}

impl<T> PriorityQueue<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // No user code runs under the lock, so it is never poisoned mid-update.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The number of classes.
    pub fn classes(&self) -> usize {
        self.lock().classes.len()
    }

    /// Queues `item` in `class` (0 is the highest); never waits.
    ///
    /// # Errors
    ///
    /// The item comes back with [`Rejection::QueueFull`] when full, or
    /// [`Rejection::ShuttingDown`] once closed.
    pub fn try_push(&self, class: usize, item: T) -> Result<(), Rejected<T>> {
        let mut st = self.lock();
        if st.closed {
            st.rejected += 1;
            return Err(Rejected::new(item, Rejection::ShuttingDown));
        }
        if st.len >= self.capacity {
            st.rejected += 1;
            return Err(Rejected::new(
                item,
                Rejection::QueueFull {
                    capacity: self.capacity,
                },
            ));
        }
        let class = class.min(st.classes.len() - 1);
        st.classes[class].push_back(item);
        st.len += 1;
        drop(st);
        self.notify.notify_one();
        Ok(())
    }

    /// The next item; never waits.
    pub fn try_pop(&self) -> Option<T> {
        self.try_pop_with_class().map(|(_, item)| item)
    }

    /// The next item and its class; never waits.
    pub fn try_pop_with_class(&self) -> Option<(usize, T)> {
        let mut st = self.lock();
        if st.len == 0 {
            return None;
        }
        let st = &mut *st;
        let highest = st.classes.iter().position(|c| !c.is_empty())?;
        let chosen = match self.max_skips {
            // The aged class that has waited longest (ties: the higher class).
            Some(max) => (0..st.classes.len())
                .filter(|&c| st.skips[c] >= max && !st.classes[c].is_empty())
                .max_by_key(|&c| (st.skips[c], std::cmp::Reverse(c)))
                .unwrap_or(highest),
            None => highest,
        };
        if self.max_skips.is_some() {
            if chosen != highest {
                st.aged_pops += 1;
            }
            // Every other class with work was passed over once.
            for c in 0..st.classes.len() {
                if c == chosen {
                    st.skips[c] = 0;
                } else if !st.classes[c].is_empty() {
                    st.skips[c] = st.skips[c].saturating_add(1);
                }
            }
        }
        let item = st.classes[chosen]
            .pop_front()
            .expect("the chosen class is not empty");
        st.len -= 1;
        if st.classes[chosen].is_empty() {
            st.skips[chosen] = 0;
        }
        Some((chosen, item))
    }

    /// Waits for the next item; `None` once closed and drained.
    pub async fn pop(&self) -> Option<T> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(x) = self.try_pop() {
                return Some(x);
            }
            if self.lock().closed {
                return None;
            }
            notified.await;
        }
    }

    /// [`pop`](Self::pop), giving up after `timeout` (tokio's timer).
    pub async fn pop_timeout(&self, timeout: Duration) -> Option<T> {
        tokio::time::timeout(timeout, self.pop())
            .await
            .ok()
            .flatten()
    }

    /// Items queued, all classes together.
    pub fn len(&self) -> usize {
        self.lock().len
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The capacity.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Refuses new items; consumers drain what is queued, then `pop` returns `None`.
    pub fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_waiters();
    }

    /// A snapshot of the live numbers.
    pub fn stats(&self) -> PriorityStats {
        let st = self.lock();
        PriorityStats {
            lens: st.classes.iter().map(VecDeque::len).collect(),
            rejected: st.rejected,
            aged_pops: st.aged_pops,
        }
    }
}

impl<T> fmt::Debug for PriorityQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PriorityQueue")
            .field("capacity", &self.capacity)
            .field("max_skips", &self.max_skips)
            .finish_non_exhaustive()
    }
}
