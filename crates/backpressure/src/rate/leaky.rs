//! The leaky bucket as a shaper: callers queue in a bounded FIFO and leave it one
//! at a time, at a constant rate.
//!
//! As a *meter* (admit or refuse at once), the leaky bucket makes exactly the
//! decisions of the GCRA with `burst = capacity`: that is [`Gcra`](super::Gcra).
//! This type is the other form: it delays instead of refusing, smoothing a burst
//! into an even stream, and refuses only beyond its queue.
//!
//! # Protocol
//!
//! One mutex guards `next_free` (the earliest clock time the next caller may
//! leave) and the queue of waiting tickets. Tickets are issued in increasing order
//! and only pushed at the back, so the queue is sorted and a ticket is found by
//! binary search.
//!
//! - Only the *head* of the queue looks at the time. Its scheduled departure is
//!   `max(next_free, arrived)` (the first free slot after it joined); once the
//!   clock reaches it, it leaves, moves `next_free` one interval past that
//!   scheduled time, and wakes the new head. Until then it sleeps on tokio's timer,
//!   without the lock. (A caller that finds the queue empty and `next_free` past
//!   leaves at once, and `next_free` becomes `now` plus an interval.)
//! - The others wait for a wake-up from the head that leaves (or is dropped).
//! - A dropped waiter removes its ticket. If it was the head, it wakes the next
//!   one, which becomes head and takes the same departure time: `next_free` moves
//!   only when a caller actually leaves, so no slot of the output is wasted on a
//!   caller that gave up, and everyone behind moves up by one place.
//!
//! The invariant: scheduled departures are at least one interval apart, in ticket
//! order, and at most `capacity` callers wait. Actual departures are at or after
//! the scheduled ones: a waiter whose timer fires late (tokio rounds to the
//! millisecond, and its task must be polled) leaves late, but the schedule behind
//! it does not drift, up to a bound: if the head leaves more than one interval
//! (or one 1 ms timer tick, whichever is longer) after its scheduled time, the
//! schedule is re-based to its actual departure. A stall is not made up for by
//! releasing the backlog back to back; the output resumes one interval apart.
//!
//! # Sub-millisecond intervals
//!
//! tokio's timer has a 1 ms resolution. With an interval below 1 ms the waiters
//! due within one tick leave together when the tick fires (about `1 ms / interval`
//! of them), so the rate holds on average over milliseconds, not between
//! consecutive callers.

use std::collections::VecDeque;
use std::fmt;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use heijunka_core::sync::{Mutex, MutexGuard};
use heijunka_core::{Clock, ConfigError, validate};

use super::RateLimitError;
use super::gcra::Params;

/// A leaky bucket that shapes: callers leave at `rate` per second, one interval
/// apart, in arrival order; up to `capacity` wait their turn, and beyond that a
/// caller is refused with the time until the queue has room.
///
/// Where [`Gcra`](super::Gcra) (the leaky bucket's meter form) says *no* to a
/// caller that is early, this says *wait*: a burst of `n` callers comes out as an
/// even stream over `n` intervals. Waiting is async (tokio's timer); the time is
/// read from the [`Clock`], so tests move a `ManualClock` and tokio's paused clock
/// together.
///
/// ```
/// use heijunka_backpressure::LeakyBucket;
/// use heijunka_core::Clock;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // 100 per second (one every 10 ms), at most 50 callers waiting.
/// let bucket = LeakyBucket::new(50, 100.0, Clock::system())?;
/// bucket.acquire().await?; // the first leaves at once
/// assert!(bucket.try_acquire().is_err(), "the next may leave 10 ms later");
/// # Ok(())
/// # }
/// ```
pub struct LeakyBucket {
    /// Nanoseconds between departures.
    interval: u64,
    capacity: usize,
    clock: Clock,
    state: Mutex<State>,
}

struct State {
    /// The earliest clock time (ns) at which the next caller may leave.
    next_free: u64,
    /// The waiting callers, in ticket (arrival) order; the front is the head.
    queue: VecDeque<Waiter>,
    /// The ticket the next waiter gets.
    next_ticket: u64,
}

struct Waiter {
    ticket: u64,
    /// When it joined the queue (clock ns): it may leave no earlier.
    arrived: u64,
    /// Set while the waiter is not the head (the head sleeps on a timer instead).
    waker: Option<Waker>,
}

/// tokio's timer resolution (ns): a sleep ends on a millisecond tick.
const TIMER_GRANULARITY: u64 = 1_000_000;

/// The largest queue a [`LeakyBucket`] takes: each waiting caller holds one entry.
const MAX_CAPACITY: usize = 1 << 24;

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    // The critical sections do not panic midway (queue edits and arithmetic), so a
    // poisoned lock still guards consistent state.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl LeakyBucket {
    /// A bucket that lets `per_second` callers leave per second, with up to
    /// `capacity` waiting.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for a zero `capacity` (or one above 16,777,216), or a
    /// `per_second` that is not a finite number above zero (or is above 1e9 per
    /// second).
    pub fn new(capacity: usize, per_second: f64, clock: Clock) -> Result<Self, ConfigError> {
        validate::at_least("capacity", capacity, 1)?;
        validate::at_most("capacity", capacity, MAX_CAPACITY)?;
        let params = Params::new(per_second, 1)
            .map_err(|e| ConfigError::new("per_second", per_second, e.rule().to_string()))?;
        Ok(Self {
            interval: params.interval,
            capacity,
            clock,
            state: Mutex::new(State {
                next_free: 0,
                queue: VecDeque::new(),
                next_ticket: 0,
            }),
        })
    }

    /// Leaves now if nobody is waiting and the previous departure was at least an
    /// interval ago; never waits.
    ///
    /// # Errors
    ///
    /// [`RateLimitError::RateLimited`] with the time until a caller arriving now
    /// would leave, were it to queue (above zero).
    pub fn try_acquire(&self) -> Result<(), RateLimitError> {
        let now = self.clock.now().as_nanos();
        let mut st = lock(&self.state);
        if st.queue.is_empty() && st.next_free <= now {
            st.next_free = now.saturating_add(self.interval);
            return Ok(());
        }
        // The head leaves at max(next_free, now), each waiter one interval later;
        // a newcomer after them all.
        let waiting = u64::try_from(st.queue.len()).unwrap_or(u64::MAX);
        let leaves_at = st
            .next_free
            .max(now)
            .saturating_add(waiting.saturating_mul(self.interval));
        Err(RateLimitError::RateLimited {
            retry_after: Duration::from_nanos((leaves_at - now).max(1)),
        })
    }

    /// Waits for this caller's turn to leave: at once if nobody waits and the
    /// previous departure was an interval ago, otherwise after the callers ahead,
    /// one interval apart.
    ///
    /// # Errors
    ///
    /// [`RateLimitError::RateLimited`] at once if `capacity` callers are already
    /// waiting, with the time until the queue is expected to have room: until the
    /// head's departure, or one interval when the head is already due.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe. A dropped `acquire` that had not completed takes no departure:
    /// it leaves the queue, the callers behind it move up one place, and if it was
    /// next to leave, the next caller takes its departure time. Nothing is left
    /// registered.
    pub async fn acquire(&self) -> Result<(), RateLimitError> {
        let ticket = match self.enqueue() {
            Enqueued::Left => return Ok(()),
            Enqueued::Refused(retry_after) => {
                return Err(RateLimitError::RateLimited { retry_after });
            }
            Enqueued::Waiting(ticket) => ticket,
        };
        let mut place = Place {
            bucket: self,
            ticket,
            left: false,
        };
        loop {
            match std::future::poll_fn(|cx| self.poll_turn(ticket, cx)).await {
                Turn::Left => {
                    place.left = true;
                    return Ok(());
                }
                Turn::Sleep(d) => tokio::time::sleep(d).await,
            }
        }
    }

    /// [`acquire`](Self::acquire), giving up after `timeout` (tokio's timer).
    ///
    /// ```
    /// use heijunka_backpressure::{LeakyBucket, RateLimitError};
    /// use heijunka_core::ManualClock;
    /// use std::time::Duration;
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build()?.block_on(async {
    /// let bucket = LeakyBucket::new(10, 10.0, ManualClock::new().clock())?;
    /// bucket.try_acquire()?; // the next may leave 100 ms later
    /// let err = bucket.acquire_timeout(Duration::from_millis(10)).await.unwrap_err();
    /// assert_eq!(err, RateLimitError::TimedOut { after: Duration::from_millis(10) });
    /// assert_eq!(bucket.waiting(), 0, "it gave its place back");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`RateLimitError::TimedOut`] if it has not left within `timeout`,
    /// otherwise as [`acquire`](Self::acquire).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`acquire`](Self::acquire): dropped or timed out, it takes
    /// no departure and gives its place in the queue back.
    pub async fn acquire_timeout(&self, timeout: Duration) -> Result<(), RateLimitError> {
        tokio::time::timeout(timeout, self.acquire())
            .await
            .unwrap_or(Err(RateLimitError::TimedOut { after: timeout }))
    }

    /// Callers waiting now.
    pub fn waiting(&self) -> usize {
        lock(&self.state).queue.len()
    }

    /// The most callers that wait at once.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The time between departures.
    pub fn interval(&self) -> Duration {
        Duration::from_nanos(self.interval)
    }

    /// The clock the bucket reads.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    fn enqueue(&self) -> Enqueued {
        let now = self.clock.now().as_nanos();
        let mut st = lock(&self.state);
        if st.queue.is_empty() && st.next_free <= now {
            st.next_free = now.saturating_add(self.interval);
            return Enqueued::Left;
        }
        if st.queue.len() >= self.capacity {
            // Room opens when the head leaves, at its scheduled time. If that has
            // come, the head is leaving as soon as its task runs: one interval is
            // when the next departure is due, by which the head's place has opened.
            let head_arrived = st.queue.front().map_or(now, |w| w.arrived);
            let wait = match st.next_free.max(head_arrived).checked_sub(now) {
                Some(wait) if wait > 0 => wait,
                _ => self.interval,
            };
            return Enqueued::Refused(Duration::from_nanos(wait));
        }
        let ticket = st.next_ticket;
        st.next_ticket += 1;
        st.queue.push_back(Waiter {
            ticket,
            arrived: now,
            waker: None,
        });
        Enqueued::Waiting(ticket)
    }

    /// The head leaves if its time has come, or learns how long to sleep; the
    /// others register their waker and wait for the head to wake them.
    fn poll_turn(&self, ticket: u64, cx: &mut Context<'_>) -> Poll<Turn> {
        let now = self.clock.now().as_nanos();
        let mut st = lock(&self.state);
        let head = st.queue.front().filter(|w| w.ticket == ticket);
        let Some(arrived) = head.map(|w| w.arrived) else {
            let at = find(&st.queue, ticket);
            let slot = &mut st.queue[at].waker;
            match slot {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => *slot = Some(cx.waker().clone()),
            }
            return Poll::Pending;
        };
        // Its scheduled time: the first free slot after it arrived. Scheduling from
        // this, not from `now`, keeps a late wake-up (tokio's timer has a
        // millisecond resolution) from shifting everyone behind it.
        let leaves_at = st.next_free.max(arrived);
        if leaves_at > now {
            return Poll::Ready(Turn::Sleep(Duration::from_nanos(leaves_at - now)));
        }
        // But the schedule may fall behind by at most `slack`: after a longer stall
        // (the task was not polled, the timer fired very late) this departure counts
        // as now, so the backlog resumes one interval apart instead of leaving back
        // to back to make up for lost time.
        let departed = if now - leaves_at > self.slack() {
            now
        } else {
            leaves_at
        };
        st.next_free = departed.saturating_add(self.interval);
        st.queue.pop_front();
        let next = st.queue.front_mut().and_then(|w| w.waker.take());
        drop(st);
        if let Some(next) = next {
            next.wake();
        }
        Poll::Ready(Turn::Left)
    }

    /// How far behind its schedule the queue may fall and still catch up: one
    /// interval, or tokio's timer granularity (1 ms) when the interval is shorter,
    /// so that sub-millisecond intervals keep their rate (the waiters due within
    /// one timer tick leave together at the tick).
    fn slack(&self) -> u64 {
        self.interval.max(TIMER_GRANULARITY)
    }

    /// Removes a waiter that gave up; if it was the head, the next one is woken to
    /// take its place (and its departure time).
    fn leave_queue(&self, ticket: u64) {
        let mut st = lock(&self.state);
        let at = find(&st.queue, ticket);
        st.queue.remove(at);
        let next = if at == 0 {
            st.queue.front_mut().and_then(|w| w.waker.take())
        } else {
            None
        };
        drop(st);
        if let Some(next) = next {
            next.wake();
        }
    }
}

/// The index of `ticket` in the queue (sorted by ticket).
fn find(queue: &VecDeque<Waiter>, ticket: u64) -> usize {
    queue
        .binary_search_by_key(&ticket, |w| w.ticket)
        .expect("a waiting ticket stays in the queue until it leaves or is dropped")
}

enum Enqueued {
    Left,
    Refused(Duration),
    Waiting(u64),
}

enum Turn {
    Left,
    Sleep(Duration),
}

/// A caller's place in the queue; dropping it before it left gives the place up.
struct Place<'a> {
    bucket: &'a LeakyBucket,
    ticket: u64,
    left: bool,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        if !self.left {
            self.bucket.leave_queue(self.ticket);
        }
    }
}

impl fmt::Debug for LeakyBucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeakyBucket")
            .field("interval", &self.interval())
            .field("capacity", &self.capacity)
            .field("waiting", &self.waiting())
            .finish_non_exhaustive()
    }
}
