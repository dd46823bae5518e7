//! [`LevelledScheduler`]: bursts in, a steady takt out.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use std::marker::PhantomData;

use heijunka_core::{Clock, ConfigError, Instant, Rejection, validate};
use serde::Serialize;
use std::sync::{Mutex, MutexGuard};
use tokio::sync::Notify;

use crate::{ClassPushError, Rejected};

/// Default bound of each class's buffer.
pub const DEFAULT_CLASS_CAPACITY: usize = 1024;

/// The most classes a [`LevelledScheduler`] may have.
const MAX_CLASSES: usize = 1024;

/// Releases work at a steady takt — `takt` items per `interval`, evenly spaced —
/// from bounded per-class buffers, mixing the classes (work types) in a fixed
/// pattern: heijunka proper. Downstream sees a smooth rate instead of the bursts
/// that arrive.
///
/// **Pacing.** Releases are due at `origin + k * interval / takt`, and every
/// release that is due is released, however late the caller polls: a caller that
/// polls once per interval gets `takt` items per poll, one that polls every
/// millisecond gets them one at a time, and the long-run rate is exact either way.
/// Catching up is bounded by **one interval**: when more than `takt` releases are
/// overdue (the caller polled less than once per interval), the older ones are
/// forfeited, so one poll never releases more than `takt` items. And **idle time
/// banks nothing**: when an item arrives to an empty scheduler whose next release
/// is already past, the schedule restarts at that arrival, so a backlog after an
/// idle gap is released at the takt from its first item, not in a burst; credit
/// only accrues while items wait.
///
/// **Mix.** Each release takes from the non-empty class chosen by smooth weighted
/// round robin over the class [`weights`](LevelledSchedulerBuilder::weights)
/// (default: all 1, plain round robin): with weights `[2, 1]` the pattern is
/// `A B A A B A ...`, the EPEI ("every part every interval") idea of producing a
/// little of every type in every interval instead of long runs of one.
///
/// Drive it with [`try_release`](Self::try_release) from a ticker (it reads the
/// injected [`Clock`], so tests use a `ManualClock`), or with
/// [`release`](Self::release), which sleeps on tokio's timer for the gap the clock
/// reports.
///
/// ```
/// use heijunka_backpressure::LevelledScheduler;
/// use heijunka_core::ManualClock;
/// use std::time::Duration;
///
/// let clock = ManualClock::new();
/// // 2 items per 100 ms, two work types.
/// let s = LevelledScheduler::builder(2, Duration::from_millis(100))
///     .classes(2)
///     .clock(clock.clock())
///     .build()?;
/// for i in 0..3 {
///     s.try_push(0, ("a", i)).unwrap(); // a burst of type a
/// }
/// s.try_push(1, ("b", 0)).unwrap();
/// assert_eq!(s.try_release(), Some((0, ("a", 0))));
/// assert_eq!(s.try_release(), None); // the next is due in 50 ms
/// clock.advance(Duration::from_millis(50));
/// assert_eq!(s.try_release(), Some((1, ("b", 0)))); // mixed in, not after the burst
/// clock.advance(Duration::from_millis(100)); // polled late: both due releases go
/// assert_eq!(s.try_release(), Some((0, ("a", 1))));
/// assert_eq!(s.try_release(), Some((0, ("a", 2))));
/// # Ok::<(), heijunka_core::ConfigError>(())
/// ```
pub struct LevelledScheduler<T> {
    state: Mutex<State<T>>,
    notify: Notify,
    clock: Clock,
    interval: Duration,
    interval_nanos: u128,
    takt: u64,
    class_capacity: usize,
}

struct State<T> {
    classes: Vec<VecDeque<T>>,
    weights: Vec<i64>,
    current: Vec<i64>,
    /// Release `k` (counted from `origin`) is due at `origin + offset(k)`; `k`
    /// stays below `takt` (each full interval moves `origin` on by one interval).
    origin: Instant,
    k: u64,
    len: usize,
    released: u64,
    rejected: u64,
    closed: bool,
}

/// Builds a [`LevelledScheduler`]; see [`LevelledScheduler::builder`].
#[must_use = "a builder does nothing until `build()`"]
pub struct LevelledSchedulerBuilder<T> {
    takt: u32,
    interval: Duration,
    classes: usize,
    class_capacity: usize,
    weights: Option<Vec<u32>>,
    clock: Clock,
    item: PhantomData<fn() -> T>,
}

impl<T> Clone for LevelledSchedulerBuilder<T> {
    fn clone(&self) -> Self {
        Self {
            takt: self.takt,
            interval: self.interval,
            classes: self.classes,
            class_capacity: self.class_capacity,
            weights: self.weights.clone(),
            clock: self.clock.clone(),
            item: PhantomData,
        }
    }
}

impl<T> fmt::Debug for LevelledSchedulerBuilder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LevelledSchedulerBuilder")
            .field("takt", &self.takt)
            .field("interval", &self.interval)
            .field("classes", &self.classes)
            .field("class_capacity", &self.class_capacity)
            .field("weights", &self.weights)
            .finish_non_exhaustive()
    }
}

impl<T> LevelledSchedulerBuilder<T> {
    /// The number of classes (work types). Default 1.
    pub fn classes(mut self, n: usize) -> Self {
        self.classes = n;
        self
    }

    /// The bound of each class's buffer. Default [`DEFAULT_CLASS_CAPACITY`].
    pub fn class_capacity(mut self, n: usize) -> Self {
        self.class_capacity = n;
        self
    }

    /// The mix: one weight per class (default all 1, round robin).
    pub fn weights(mut self, weights: impl Into<Vec<u32>>) -> Self {
        self.weights = Some(weights.into());
        self
    }

    /// The clock that paces releases (default: the system clock).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the field: `takt` of 0 or above the interval in
    /// nanoseconds (releases would be less than 1 ns apart), a zero `interval` or
    /// one above `u64::MAX` nanoseconds (about 584 years), 0 or more than 1024
    /// `classes`, 0 `class_capacity`, or `weights` of the wrong length or with a 0.
    pub fn build(self) -> Result<LevelledScheduler<T>, ConfigError> {
        validate::at_least("takt", self.takt, 1)?;
        validate::non_zero_duration("interval", self.interval)?;
        let interval_nanos = u64::try_from(self.interval.as_nanos()).map_err(|_| {
            ConfigError::new(
                "interval",
                self.interval,
                "must be at most u64::MAX nanoseconds (about 584 years)",
            )
        })?;
        if u64::from(self.takt) > interval_nanos {
            return Err(ConfigError::new(
                "takt",
                self.takt,
                format!(
                    "must be at most the interval in nanoseconds ({interval_nanos}): \
                     releases are at least 1 ns apart"
                ),
            ));
        }
        validate::at_least("classes", self.classes, 1)?;
        validate::at_most("classes", self.classes, MAX_CLASSES)?;
        validate::at_least("class_capacity", self.class_capacity, 1)?;
        let weights = self.weights.unwrap_or_else(|| vec![1; self.classes]);
        if weights.len() != self.classes {
            return Err(ConfigError::new(
                "weights",
                &weights,
                format!("must have one weight per class ({})", self.classes),
            ));
        }
        if weights.contains(&0) {
            return Err(ConfigError::new(
                "weights",
                &weights,
                "must all be at least 1",
            ));
        }
        let now = self.clock.now();
        Ok(LevelledScheduler {
            state: Mutex::new(State {
                classes: (0..self.classes).map(|_| VecDeque::new()).collect(),
                weights: weights.iter().map(|&w| i64::from(w)).collect(),
                current: vec![0; self.classes],
                origin: now,
                k: 0,
                len: 0,
                released: 0,
                rejected: 0,
                closed: false,
            }),
            notify: Notify::new(),
            clock: self.clock,
            interval: self.interval,
            interval_nanos: u128::from(interval_nanos),
            takt: u64::from(self.takt),
            class_capacity: self.class_capacity,
        })
    }
}

/// Live numbers of a [`LevelledScheduler`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LevelStats {
    /// Items buffered per class.
    pub lens: Vec<usize>,
    /// Items released.
    pub released: u64,
    /// Items handed back.
    pub rejected: u64,
}

impl<T> LevelledScheduler<T> {
    /// A builder releasing `takt` items per `interval` (the item type is inferred,
    /// or named as `LevelledScheduler::<T>::builder`).
    pub fn builder(takt: u32, interval: Duration) -> LevelledSchedulerBuilder<T> {
        LevelledSchedulerBuilder {
            takt,
            interval,
            classes: 1,
            class_capacity: DEFAULT_CLASS_CAPACITY,
            weights: None,
            clock: Clock::system(),
            item: PhantomData,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // No user code runs under the lock, so it is never poisoned mid-update.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Time from a schedule's origin to its release `k`. Exact to the nanosecond
    /// (`k * interval / takt` rounded down), so `offset(k + takt)` is exactly
    /// `offset(k)` plus one interval; `k < takt` and `interval <= u64::MAX` ns keep
    /// the product within `u128`.
    fn offset(&self, k: u64) -> Duration {
        let nanos = u128::from(k) * self.interval_nanos / u128::from(self.takt);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    fn due(&self, st: &State<T>) -> Instant {
        st.origin.saturating_add(self.offset(st.k))
    }

    /// Buffers `item` as work of `class`; never waits.
    ///
    /// # Errors
    ///
    /// The item comes back in a [`ClassPushError`]:
    /// [`UnknownClass`](ClassPushError::UnknownClass) naming the class and the
    /// number of classes when `class` is not below it, [`Rejection::QueueFull`]
    /// naming the class capacity when that class's buffer is full, or
    /// [`Rejection::ShuttingDown`] once closed.
    pub fn try_push(&self, class: usize, item: T) -> Result<(), ClassPushError<T>> {
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
        if st.classes[class].len() >= self.class_capacity {
            st.rejected += 1;
            return Err(Rejected::new(
                item,
                Rejection::QueueFull {
                    capacity: self.class_capacity,
                },
            )
            .into());
        }
        if st.len == 0 {
            // The first item after an idle spell: if its release time has passed,
            // the schedule restarts now, so the idle time banks no credit.
            let now = self.clock.now();
            if self.due(&st) < now {
                st.origin = now;
                st.k = 0;
            }
        }
        st.classes[class].push_back(item);
        st.len += 1;
        drop(st);
        self.notify.notify_one();
        Ok(())
    }

    /// Releases the next item with its class if one is buffered and a release is
    /// due now; never waits.
    pub fn try_release(&self) -> Option<(usize, T)> {
        let now = self.clock.now();
        let mut st = self.lock();
        if st.len == 0 {
            return None;
        }
        let due = self.due(&st);
        if now < due {
            return None;
        }
        if now.saturating_duration_since(due) >= self.interval {
            // More than `takt` releases are overdue (release `k + takt` is due too):
            // keep only the last interval's worth, so `takt` are due now, the last
            // of them at `now`.
            st.origin = now.saturating_sub(self.offset(self.takt - 1));
            st.k = 0;
        }
        let st = &mut *st;
        let mut total = 0;
        let mut best: Option<usize> = None;
        for c in 0..st.classes.len() {
            if st.classes[c].is_empty() {
                st.current[c] = 0;
                continue;
            }
            st.current[c] += st.weights[c];
            total += st.weights[c];
            if best.is_none_or(|b| st.current[c] > st.current[b]) {
                best = Some(c);
            }
        }
        let class = best.expect("len > 0, so a class has work");
        st.current[class] -= total;
        let item = st.classes[class]
            .pop_front()
            .expect("the chosen class has work");
        st.len -= 1;
        st.k += 1;
        if st.k == self.takt {
            st.origin = st.origin.saturating_add(self.interval);
            st.k = 0;
        }
        st.released += 1;
        Some((class, item))
    }

    /// Time until the next release is due (zero if due now), while items are
    /// buffered. (An item pushed into an empty scheduler is due at once if this is
    /// zero.)
    pub fn next_due(&self) -> Duration {
        let st = self.lock();
        self.due(&st).saturating_duration_since(self.clock.now())
    }

    /// Waits for an item and its release time, then releases it; `None` once closed
    /// and drained. Sleeps on tokio's timer for the gap the clock reports, so use it
    /// with the system clock (with a `ManualClock`, drive
    /// [`try_release`](Self::try_release) instead, or advance tokio's paused time
    /// with it).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: an item leaves its buffer only in the poll that returns it, so
    /// a dropped `release` takes nothing, every item stays buffered, and the
    /// schedule is unchanged (the next call releases at the same time). A wake-up
    /// meant for a dropped `release` is passed on to another waiting one.
    pub async fn release(&self) -> Option<(usize, T)> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(x) = self.try_release() {
                return Some(x);
            }
            let (empty, closed) = {
                let st = self.lock();
                (st.len == 0, st.closed)
            };
            if empty {
                if closed {
                    return None;
                }
                notified.await;
            } else {
                tokio::time::sleep(self.next_due().max(Duration::from_nanos(1))).await;
            }
        }
    }

    /// Items buffered, all classes together.
    pub fn len(&self) -> usize {
        self.lock().len
    }

    /// Whether nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Refuses new items; what is buffered is still released, then `release`
    /// returns `None`.
    pub fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_waiters();
    }

    /// A snapshot of the live numbers.
    pub fn stats(&self) -> LevelStats {
        let st = self.lock();
        LevelStats {
            lens: st.classes.iter().map(VecDeque::len).collect(),
            released: st.released,
            rejected: st.rejected,
        }
    }
}

impl<T> fmt::Debug for LevelledScheduler<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LevelledScheduler")
            .field("takt", &self.takt)
            .field("interval_nanos", &self.interval_nanos)
            .field("class_capacity", &self.class_capacity)
            .finish_non_exhaustive()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use heijunka_core::ManualClock;

    #[test]
    fn weighted_mix_follows_the_pattern() {
        let clock = ManualClock::new();
        let s = LevelledScheduler::builder(1, Duration::from_millis(1))
            .classes(2)
            .weights([2, 1])
            .clock(clock.clock())
            .build()
            .unwrap();
        for i in 0..6 {
            s.try_push(0, i).unwrap();
            s.try_push(1, i).unwrap();
        }
        let mut classes = String::new();
        for _ in 0..6 {
            let (c, _) = s.try_release().unwrap();
            classes.push(if c == 0 { 'A' } else { 'B' });
            clock.advance(Duration::from_millis(1));
        }
        assert_eq!(classes, "ABAABA");
    }

    #[test]
    fn idle_time_banks_no_burst() {
        let clock = ManualClock::new();
        let s = LevelledScheduler::builder(1, Duration::from_millis(10))
            .clock(clock.clock())
            .build()
            .unwrap();
        clock.advance(Duration::from_secs(10));
        for i in 0..5 {
            s.try_push(0, i).unwrap();
        }
        assert!(s.try_release().is_some());
        assert!(s.try_release().is_none());
        assert_eq!(s.next_due(), Duration::from_millis(10));
    }

    #[test]
    fn bad_config_names_the_field() {
        let b = || LevelledScheduler::builder(1, Duration::from_millis(1));
        let f = |r: Result<LevelledScheduler<u8>, ConfigError>| r.unwrap_err().field().to_owned();
        assert_eq!(
            f(LevelledScheduler::builder(0, Duration::from_millis(1)).build()),
            "takt"
        );
        assert_eq!(
            f(LevelledScheduler::builder(1, Duration::ZERO).build()),
            "interval"
        );
        assert_eq!(f(b().classes(2).weights([1]).build()), "weights");
        assert_eq!(f(b().classes(2).weights([1, 0]).build()), "weights");
        assert_eq!(f(b().class_capacity(0).build()), "class_capacity");
        // 1001 releases in 1000 ns would be spaced 0 ns apart.
        let err = LevelledScheduler::<u8>::builder(1_001, Duration::from_nanos(1_000))
            .build()
            .unwrap_err();
        assert_eq!((err.field(), err.value()), ("takt", "1001"));
        assert!(
            LevelledScheduler::<u8>::builder(1_000, Duration::from_nanos(1_000))
                .build()
                .is_ok()
        );
        let err = LevelledScheduler::<u8>::builder(1, Duration::MAX)
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "interval");
        assert_eq!(f(b().classes(1025).build()), "classes");
    }

    #[test]
    fn full_class_hands_back() {
        let s = LevelledScheduler::builder(1, Duration::from_millis(1))
            .classes(2)
            .class_capacity(1)
            .build()
            .unwrap();
        s.try_push(0, 'a').unwrap();
        let e = s.try_push(0, 'b').unwrap_err();
        assert_eq!(e.reason(), Some(Rejection::QueueFull { capacity: 1 }));
        assert_eq!(e.into_inner(), 'b');
        s.try_push(1, 'c').unwrap(); // the other class has room
        assert_eq!(s.stats().rejected, 1);
    }
}
