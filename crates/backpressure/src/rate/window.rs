//! Window-based limiters: fixed window, sliding window (counter-interpolated) and
//! the exact sliding log.
//!
//! These keep more than one word of state, so each takes a short, uncontended-case
//! mutex around a few arithmetic operations (no allocation, no call into user code
//! while held). [`Gcra`](super::Gcra) is the lock-free limiter for the hottest paths.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use heijunka_core::sync::{Mutex, MutexGuard};
use heijunka_core::{Clock, ConfigError, validate};

use super::{RateLimitError, RateLimiter, duration_from_nanos, nanos};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The critical sections cannot panic midway (plain arithmetic), so a poisoned
    // lock still guards consistent state.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn check_config(limit: u32, window: Duration) -> Result<u64, ConfigError> {
    validate::at_least("limit", limit, 1)?;
    validate::non_zero_duration("window", window)?;
    Ok(nanos(window))
}

fn too_many(n: u32, limit: u32) -> Result<(), RateLimitError> {
    if n > limit {
        Err(RateLimitError::InsufficientCapacity {
            requested: n,
            capacity: limit,
        })
    } else {
        Ok(())
    }
}

/// At most `limit` units per fixed window of time (`[k·w, (k+1)·w)` on the clock).
///
/// Cheap and simple; allows up to `2·limit` across a window boundary. Use
/// [`SlidingWindow`] or [`SlidingLog`] where that matters.
///
/// ```
/// use heijunka_backpressure::{FixedWindow, RateLimiter};
/// use heijunka_core::ManualClock;
/// use std::time::Duration;
///
/// let clock = ManualClock::new();
/// let limiter = FixedWindow::new(2, Duration::from_secs(1), clock.clock())?;
/// assert!(limiter.check().is_ok());
/// assert!(limiter.check().is_ok());
/// assert_eq!(limiter.check().unwrap_err().retry_after(), Some(Duration::from_secs(1)));
/// # Ok::<(), heijunka_core::ConfigError>(())
/// ```
pub struct FixedWindow {
    limit: u32,
    window: u64,
    clock: Clock,
    state: Mutex<(u64, u32)>,
}

impl FixedWindow {
    /// `limit` units per `window`.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for a zero `limit` or `window`.
    pub fn new(limit: u32, window: Duration, clock: Clock) -> Result<Self, ConfigError> {
        Ok(Self {
            limit,
            window: check_config(limit, window)?,
            clock,
            state: Mutex::new((0, 0)),
        })
    }
}

impl RateLimiter for FixedWindow {
    fn check_n(&self, n: u32) -> Result<(), RateLimitError> {
        too_many(n, self.limit)?;
        let mut st = lock(&self.state);
        // Read under the lock, so the readings that reach the state are in lock
        // order; and never move the window back (readings of the system clock on
        // different threads may still be a little out of order): a reading from an
        // older window counts against the current one, at its start.
        let now = self.clock.now().as_nanos().max(st.0 * self.window);
        let index = now / self.window;
        if index > st.0 {
            *st = (index, 0);
        }
        // Checked: `used + n` overflows a u32 when the limit is near u32::MAX.
        match st.1.checked_add(n).filter(|&total| total <= self.limit) {
            Some(total) => {
                st.1 = total;
                Ok(())
            }
            // The next window starts at `(index + 1)·w`, in u128: near the end of
            // the clock's range it is past u64::MAX nanoseconds. It is after `now`,
            // so the retry-after is above zero.
            None => Err(RateLimitError::RateLimited {
                retry_after: duration_from_nanos(
                    (u128::from(index) + 1) * u128::from(self.window) - u128::from(now),
                ),
            }),
        }
    }

    fn clock(&self) -> &Clock {
        &self.clock
    }
}

/// At most about `limit` units in any window of length `w`, estimated from the
/// previous and current fixed windows: `previous · (1 − elapsed/w) + current`
/// (Cloudflare's sliding-window counter). Constant memory; exact when traffic is
/// even within a window.
///
/// ```
/// use heijunka_backpressure::{RateLimiter, SlidingWindow};
/// use heijunka_core::ManualClock;
/// use std::time::Duration;
///
/// let clock = ManualClock::new();
/// let limiter = SlidingWindow::new(10, Duration::from_secs(1), clock.clock())?;
/// limiter.check_n(10)?;
/// clock.advance(Duration::from_millis(1500)); // half of the last window still counts
/// assert!(limiter.check_n(5).is_ok());
/// assert!(limiter.check().is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct SlidingWindow {
    limit: u32,
    window: u64,
    clock: Clock,
    /// (current window index, count in it, count in the window before)
    state: Mutex<(u64, u32, u32)>,
}

impl SlidingWindow {
    /// About `limit` units per sliding `window`.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for a zero `limit` or `window`.
    pub fn new(limit: u32, window: Duration, clock: Clock) -> Result<Self, ConfigError> {
        Ok(Self {
            limit,
            window: check_config(limit, window)?,
            clock,
            state: Mutex::new((0, 0, 0)),
        })
    }

    /// The estimate `previous · (w − elapsed)/w + current` in exact integer
    /// arithmetic, scaled by `w`.
    fn scaled_estimate(&self, previous: u32, current: u128, elapsed: u64) -> u128 {
        let w = u128::from(self.window);
        u128::from(previous) * (w - u128::from(elapsed)) + current * w
    }
}

impl RateLimiter for SlidingWindow {
    fn check_n(&self, n: u32) -> Result<(), RateLimitError> {
        too_many(n, self.limit)?;
        let mut st = lock(&self.state);
        // As in `FixedWindow`: read under the lock, and a reading from an older
        // window counts against the current one, at its start (never resets it).
        let now = self.clock.now().as_nanos().max(st.0 * self.window);
        let index = now / self.window;
        let elapsed = now % self.window;
        if index > st.0 {
            let previous = if st.0.checked_add(1) == Some(index) {
                st.1
            } else {
                0
            };
            *st = (index, 0, previous);
        }
        let (_, current, previous) = *st;
        let w = u128::from(self.window);
        let budget = u128::from(self.limit) * w;
        // All in u128: `current + n` overflows a u32 near u32::MAX.
        let wanted = u128::from(current) + u128::from(n);
        if self.scaled_estimate(previous, wanted, elapsed) <= budget {
            // The estimate is at least `wanted`, so `wanted <= limit <= u32::MAX`.
            st.1 = u32::try_from(wanted).expect("an admitted count is within the limit");
            return Ok(());
        }
        // When would it fit? Within this window the previous window's weight falls
        // as time passes: previous·(w − e) ≤ budget − (current + n)·w.
        // Smallest `e` with `weight·(w − e) ≤ rest`: `w − ⌊rest / weight⌋`.
        let smallest = |weight: u32, rest: u128| -> u128 {
            if weight == 0 {
                0
            } else {
                w.saturating_sub(rest / u128::from(weight))
            }
        };
        // Within this window the previous window's weight falls as time passes:
        // previous·(w − e) ≤ budget − (current + n)·w.
        let in_this_window = budget
            .checked_sub(wanted * w)
            .map(|rest| smallest(previous, rest))
            .filter(|&e| e < w);
        let wait = match in_this_window {
            Some(e) => e.saturating_sub(u128::from(elapsed)),
            None => {
                // In the next window this window's count becomes the previous one:
                // current·(w − e) + n·w ≤ budget (n ≤ limit, so this is ≥ 0). Up to
                // two windows: u128, as a window may be near u64::MAX nanoseconds.
                let rest = budget - u128::from(n) * w;
                (w - u128::from(elapsed)) + smallest(current, rest)
            }
        };
        // At least a nanosecond: it was refused now, so it cannot conform now.
        Err(RateLimitError::RateLimited {
            retry_after: duration_from_nanos(wait.max(1)),
        })
    }

    fn clock(&self) -> &Clock {
        &self.clock
    }
}

/// Exactly at most `limit` units in any window `(now − w, now]`: remembers the time
/// of each admitted unit, so memory is bounded by `limit` timestamps.
///
/// ```
/// use heijunka_backpressure::{RateLimiter, SlidingLog};
/// use heijunka_core::ManualClock;
/// use std::time::Duration;
///
/// let clock = ManualClock::new();
/// let limiter = SlidingLog::new(2, Duration::from_secs(1), clock.clock())?;
/// limiter.check()?;
/// clock.advance(Duration::from_millis(600));
/// limiter.check()?;
/// // The first unit leaves the window 400 ms from now.
/// assert_eq!(limiter.check().unwrap_err().retry_after(), Some(Duration::from_millis(400)));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct SlidingLog {
    limit: u32,
    window: u64,
    clock: Clock,
    log: Mutex<VecDeque<u64>>,
}

impl SlidingLog {
    /// Exactly `limit` units per sliding `window`; allocates room for `limit`
    /// timestamps up front.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for a zero `limit` or `window`, or a `limit` above
    /// 1,000,000 (the log keeps one timestamp per unit).
    pub fn new(limit: u32, window: Duration, clock: Clock) -> Result<Self, ConfigError> {
        let window = check_config(limit, window)?;
        validate::at_most("limit", limit, 1_000_000)?;
        Ok(Self {
            limit,
            window,
            clock,
            log: Mutex::new(VecDeque::with_capacity(limit as usize)),
        })
    }
}

impl RateLimiter for SlidingLog {
    fn check_n(&self, n: u32) -> Result<(), RateLimitError> {
        too_many(n, self.limit)?;
        let mut log = lock(&self.log);
        // Read under the lock, and never before the newest entry (readings of the
        // system clock on different threads may be a little out of order): the log
        // stays sorted, so the front is the oldest unit and `leaving + w > now`.
        let now = self.clock.now().as_nanos();
        let now = log.back().map_or(now, |&newest| now.max(newest));
        debug_assert!(log.iter().is_sorted(), "the sliding log is sorted");
        while log
            .front()
            .is_some_and(|&t| t.saturating_add(self.window) <= now)
        {
            log.pop_front();
        }
        let used = log.len();
        let limit = self.limit as usize;
        if used + n as usize <= limit {
            log.extend(std::iter::repeat_n(now, n as usize));
            Ok(())
        } else {
            // The unit that must leave for `n` to fit.
            let leaving = log[used + n as usize - limit - 1];
            // It leaves at `leaving + w > now` (the log is sorted and the front is
            // still in the window); u128, as that can be past u64::MAX nanoseconds.
            // Saturating, and at least a nanosecond, all the same: it was refused now.
            let leaves_at = u128::from(leaving) + u128::from(self.window);
            Err(RateLimitError::RateLimited {
                retry_after: duration_from_nanos(leaves_at.saturating_sub(u128::from(now)).max(1)),
            })
        }
    }

    fn clock(&self) -> &Clock {
        &self.clock
    }
}

macro_rules! debug_window {
    ($t:ty) => {
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($t))
                    .field("limit", &self.limit)
                    .field("window", &Duration::from_nanos(self.window))
                    .finish_non_exhaustive()
            }
        }
    };
}
debug_window!(FixedWindow);
debug_window!(SlidingWindow);
debug_window!(SlidingLog);
