//! [`PriorityQueue`]: bounded, N classes, FIFO within a class, with aging.

use std::collections::VecDeque;
use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use heijunka_core::{ConfigError, Criticality, Rejection, validate};
use serde::Serialize;
use std::sync::{Mutex, MutexGuard};
use tokio::sync::Notify;

use crate::{ClassPushError, Rejected};

/// The most classes a [`PriorityQueue`] may have.
const MAX_CLASSES: usize = 1024;

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
/// **Room.** One capacity bounds all classes together, and a lower class never
/// holds room a higher class needs: when the queue is full,
/// [`try_push`](Self::try_push) to class `c` **displaces** the newest item of the
/// lowest non-empty class below `c` and hands it back to the pusher as
/// [`Pushed::Displaced`] (the newest, so the items that have waited longest keep
/// their place). Only when every queued item is of class `c` or higher is the push
/// refused ([`Rejection::QueueFull`], the item handed back). A flood of the lowest
/// class therefore never makes a class-0 push fail while it holds any room.
///
/// A class outside `0..classes` is an error ([`ClassPushError::UnknownClass`]),
/// not read as some other class. The structure sits behind one mutex, held for a
/// few pointer moves.
///
/// ```
/// use heijunka_backpressure::{PriorityQueue, Pushed};
///
/// let q = PriorityQueue::builder(3, 100).max_skips(2).build()?;
/// assert_eq!(q.try_push(2, "low").unwrap(), Pushed::Queued);
/// for i in 0..5 {
///     assert_eq!(q.try_push(0, "high").unwrap(), Pushed::Queued);
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
    /// Slots only class 0 may fill.
    reserve: usize,
}

struct State<T> {
    classes: Vec<VecDeque<T>>,
    skips: Vec<u32>,
    len: usize,
    rejected: u64,
    displaced: u64,
    aged_pops: u64,
    closed: bool,
}

/// What a successful [`PriorityQueue::try_push`] did.
///
/// `#[must_use]`: a displaced item is handed back to the pusher, and dropping this
/// value drops it.
#[must_use = "a displaced item is handed back here; dropping it loses that item"]
#[derive(PartialEq, Eq)]
pub enum Pushed<T> {
    /// The item was queued; nothing else moved.
    Queued,
    /// The item was queued in a full queue by displacing the newest item of a
    /// lower class, which comes back here.
    Displaced {
        /// The class of the displaced item (lower than the pushed one).
        class: usize,
        /// The displaced item.
        item: T,
    },
}

/// Shows the variant and the class, never the displaced item (as
/// [`Rejected`] does), so it is `Debug` for any item type and logs no payload.
impl<T> fmt::Debug for Pushed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pushed::Queued => f.write_str("Queued"),
            Pushed::Displaced { class, .. } => f
                .debug_struct("Displaced")
                .field("class", class)
                .finish_non_exhaustive(),
        }
    }
}

impl<T> Pushed<T> {
    /// The displaced item, if one was.
    pub fn into_displaced(self) -> Option<T> {
        match self {
            Pushed::Queued => None,
            Pushed::Displaced { item, .. } => Some(item),
        }
    }
}

/// Builds a [`PriorityQueue`]; see [`PriorityQueue::builder`].
#[must_use = "a builder does nothing until `build()`"]
pub struct PriorityQueueBuilder<T> {
    classes: usize,
    capacity: usize,
    max_skips: Option<u32>,
    reserve: usize,
    item: PhantomData<fn() -> T>,
}

impl<T> Clone for PriorityQueueBuilder<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for PriorityQueueBuilder<T> {}

impl<T> fmt::Debug for PriorityQueueBuilder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PriorityQueueBuilder")
            .field("classes", &self.classes)
            .field("capacity", &self.capacity)
            .field("max_skips", &self.max_skips)
            .field("reserve", &self.reserve)
            .finish()
    }
}

impl<T> PriorityQueueBuilder<T> {
    /// Keeps the last `slots` of the capacity for class 0 (critical work, see
    /// [`try_push_for`](PriorityQueue::try_push_for)): for any other class the
    /// queue is full at `capacity - slots` items (it displaces a lower class's
    /// newest item then, as in a full queue, or is refused), so critical work
    /// finds room without displacing anything. Default 0; less than the
    /// capacity.
    ///
    /// ```
    /// use heijunka_backpressure::{PriorityQueue, Pushed};
    /// use heijunka_core::Criticality;
    ///
    /// let q = PriorityQueue::builder(3, 4).reserve_for_top(1).build()?;
    /// for i in 0..3 {
    ///     assert_eq!(q.try_push_for(Criticality::Default, i).unwrap(), Pushed::Queued);
    /// }
    /// assert!(q.try_push_for(Criticality::Default, 3).is_err(), "the last slot is kept");
    /// assert!(q.try_push_for(Criticality::Critical, 4).is_ok());
    /// # Ok::<(), heijunka_core::ConfigError>(())
    /// ```
    pub fn reserve_for_top(mut self, slots: usize) -> Self {
        self.reserve = slots;
        self
    }

    /// Turn aging on: a class passed over `n` times is served next. Off by default.
    pub fn max_skips(mut self, n: u32) -> Self {
        self.max_skips = Some(n);
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the field for 0 or more than 1024 `classes`, 0
    /// `capacity` or 0 `max_skips`.
    pub fn build(self) -> Result<PriorityQueue<T>, ConfigError> {
        validate::at_least("classes", self.classes, 1)?;
        validate::at_most("classes", self.classes, MAX_CLASSES)?;
        validate::at_least("capacity", self.capacity, 1)?;
        if let Some(n) = self.max_skips {
            validate::at_least("max_skips", n, 1)?;
        }
        if self.reserve > 0 && self.reserve >= self.capacity {
            return Err(ConfigError::new(
                "reserve_for_top",
                self.reserve,
                format!("must be below the capacity ({})", self.capacity),
            ));
        }
        Ok(PriorityQueue {
            state: Mutex::new(State {
                classes: (0..self.classes).map(|_| VecDeque::new()).collect(),
                skips: vec![0; self.classes],
                len: 0,
                rejected: 0,
                displaced: 0,
                aged_pops: 0,
                closed: false,
            }),
            notify: Notify::new(),
            capacity: self.capacity,
            max_skips: self.max_skips,
            reserve: self.reserve,
        })
    }
}

/// Live numbers of a [`PriorityQueue`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PriorityStats {
    /// Items queued per class.
    pub lens: Vec<usize>,
    /// Items handed back by a refused push (full or closed).
    pub rejected: u64,
    /// Queued items displaced by a push of a higher class into a full queue (and
    /// handed back to that pusher).
    pub displaced: u64,
    /// Pops that served an aged class ahead of a higher one.
    pub aged_pops: u64,
}

impl<T> PriorityQueue<T> {
    /// A builder for `classes` classes sharing `capacity` slots (the item type is
    /// inferred, or named as `PriorityQueue::<T>::builder`).
    pub fn builder(classes: usize, capacity: usize) -> PriorityQueueBuilder<T> {
        PriorityQueueBuilder {
            classes,
            capacity,
            max_skips: None,
            reserve: 0,
            item: PhantomData,
        }
    }

    /// [`try_push`](Self::try_push) into the class of `criticality`: critical
    /// work in class 0, default work in class 1 and sheddable work in class 2
    /// (each capped at the last class, so a two-class queue puts default and
    /// sheddable work together).
    ///
    /// # Errors
    ///
    /// As [`try_push`](Self::try_push) (never an unknown class).
    pub fn try_push_for(
        &self,
        criticality: Criticality,
        item: T,
    ) -> Result<Pushed<T>, ClassPushError<T>> {
        let class = (Criticality::Critical.index() - criticality.index()).min(self.classes() - 1);
        self.try_push(class, item)
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // No user code runs under the lock, so it is never poisoned mid-update.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The number of classes.
    pub fn classes(&self) -> usize {
        self.lock().classes.len()
    }

    /// Queues `item` in `class` (0 is the highest); never waits. In a full queue it
    /// displaces the newest item of the lowest class below `class`, if there is
    /// one, and hands it back in [`Pushed::Displaced`].
    ///
    /// # Errors
    ///
    /// The item comes back in a [`ClassPushError`]:
    /// [`UnknownClass`](ClassPushError::UnknownClass) naming the class and the
    /// number of classes when `class` is not below it; [`Rejection::QueueFull`]
    /// when full of items of `class` or higher (for a class other than 0,
    /// "full" stops short of the
    /// [`reserve_for_top`](PriorityQueueBuilder::reserve_for_top) slots);
    /// [`Rejection::ShuttingDown`] once closed.
    pub fn try_push(&self, class: usize, item: T) -> Result<Pushed<T>, ClassPushError<T>> {
        let mut st = self.lock();
        let classes = st.classes.len();
        if class >= classes {
            return Err(ClassPushError::UnknownClass {
                item,
                class,
                classes,
            });
        }
        if st.closed {
            st.rejected += 1;
            return Err(Rejected::new(item, Rejection::ShuttingDown).into());
        }
        let mut pushed = Pushed::Queued;
        // Class 0 may fill the whole capacity; the others stop short of the
        // reserve (and displace lower classes against that bound).
        let room = if class == 0 {
            self.capacity
        } else {
            self.capacity - self.reserve
        };
        if st.len >= room {
            // The lowest class with work, if it is below `class`, gives up its newest.
            let lowest = st.classes.iter().rposition(|c| !c.is_empty());
            match lowest {
                Some(low) if low > class => {
                    let out = st.classes[low]
                        .pop_back()
                        .expect("rposition found this class non-empty");
                    if st.classes[low].is_empty() {
                        st.skips[low] = 0;
                    }
                    st.len -= 1;
                    st.displaced += 1;
                    pushed = Pushed::Displaced {
                        class: low,
                        item: out,
                    };
                }
                _ => {
                    st.rejected += 1;
                    return Err(Rejected::new(
                        item,
                        Rejection::QueueFull {
                            capacity: self.capacity,
                        },
                    )
                    .into());
                }
            }
        }
        st.classes[class].push_back(item);
        st.len += 1;
        drop(st);
        self.notify.notify_one();
        Ok(pushed)
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
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: an item is taken from the queue only in the poll that returns
    /// it, so a dropped `pop` takes nothing and every item stays queued. A wake-up
    /// meant for a dropped `pop` is passed on to another waiting `pop` (tokio's
    /// `Notify` forwards the notification of a dropped, notified waiter).
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
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`pop`](Self::pop): a dropped or timed-out call takes no
    /// item.
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
            displaced: st.displaced,
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
