//! [`Budget`]: one admission budget per dependency, shared by retries, hedges and
//! the rate limit.

use std::fmt;
use std::sync::{Arc, PoisonError};

use heijunka_core::sync::Mutex;
use heijunka_core::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use heijunka_backpressure::RateLimiter;
use heijunka_core::{Clock, ConfigError, Criticality, Rejection};
use serde::Serialize;

/// How many slots the window is cut into: deposits and withdrawals expire one
/// slot (a tenth of the window) at a time, as in tower's `TpsBudget`.
const SLOTS: usize = 10;

/// One unit of the ratio's fixed-point arithmetic: a first attempt deposits
/// `SCALE`, an extra attempt costs `SCALE / ratio`.
const SCALE: u64 = 1000;

/// The largest ratio: ten extra attempts for each first attempt.
pub const MAX_RATIO: f64 = 10.0;

/// The default share of extra attempts: 10 % of the first attempts (Finagle's
/// and tower's default is 20 %; the seeds' retry storms argue for less).
pub const DEFAULT_RATIO: f64 = 0.1;

/// The default floor: 10 extra attempts per second however little traffic
/// there is (tower's `TpsBudget` default), so a quiet service can still retry.
pub const DEFAULT_FLOOR_PER_SEC: u32 = 10;

/// The default window over which first attempts are remembered: 10 seconds.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10);

/// The floor: a token bucket refilled at `floor_per_sec`, starting empty and
/// holding at most one second's worth, so while extra attempts are being made
/// the floor adds `floor_per_sec` of them per second, and after a quiet spell
/// one second's worth more at most (a window-long reserve, as tower keeps,
/// would be spent in one burst each time it expired).
struct Floor {
    tokens: f64,
    last: heijunka_core::Instant,
}

/// The deposits and withdrawals of one slot of the window.
#[derive(Default)]
struct Slot {
    deposited: AtomicU64,
    withdrawn: AtomicU64,
}

struct Inner {
    clock: Clock,
    /// The width of one slot in nanoseconds.
    slot_nanos: u64,
    slots: [Slot; SLOTS],
    /// The slot number (clock nanoseconds / `slot_nanos`) the slots hold last;
    /// slot `n` lives at index `n % SLOTS`.
    head: AtomicU64,
    /// Serialises moving `head` (clearing expired slots) and withdrawals, so a
    /// withdrawal sees a consistent balance and two withdrawals cannot both
    /// spend the last unit; holds the floor's bucket. A deposit takes it only
    /// when its reading starts a new slot (once per tenth of the window).
    lock: Mutex<Floor>,
    /// What an extra attempt costs, in units of `SCALE` per first attempt.
    cost: u64,
    ratio: f64,
    floor_per_sec: u32,
    window: Duration,
    rate: Option<Arc<dyn RateLimiter>>,
    withdrawn_total: AtomicU64,
    /// Whether the ratio's share was last found spent: a `tracing` event marks
    /// each change (spent, then available again), never each call.
    exhausted: std::sync::atomic::AtomicBool,
    refused_total: AtomicU64,
    refused_sheddable_total: AtomicU64,
    rate_limited_total: AtomicU64,
}

/// A dependency's admission budget: first attempts (optionally through a rate
/// limiter) deposit into it, and every extra attempt — a retry or a hedge —
/// withdraws from it. Extra attempts may add at most `ratio` × the first
/// attempts of the last `window`, plus `floor_per_sec` in any second (a token
/// bucket holding one second's worth), so a failing
/// dependency behind a budget of 10 % sees at most 1.1 × its callers' traffic,
/// never a storm, whatever mix of retries and hedges the callers use.
///
/// This is Finagle's `RetryBudget` and tower's `TpsBudget` (the same ratio
/// over a sliding window), with four differences:
///
/// - **One budget across patterns.** A [`Retry`](crate::Retry) and a
///   [`Hedge`](crate::Hedge) given clones of one budget draw from the same
///   balance; with a [`rate_limiter`](BudgetBuilder::rate_limiter), first
///   attempts pass the limiter too, so the traffic the dependency sees is
///   bounded by the rate × (1 + ratio) plus the floor.
/// - **Criticality.** [`Sheddable`](Criticality::Sheddable) work may spend only
///   while less than half of the window's allowance is spent: under pressure
///   the rest is kept for default and critical work.
/// - **No overdraft.** Two withdrawals cannot both spend the last unit (tower's
///   check-then-subtract can); deposits take no lock.
/// - **A floor per second, not per window.** tower reserves `floor × window`
///   for the whole window, which a failing dependency gets in one burst each
///   time the window turns over; here the floor refills continuously and
///   holds one second's worth.
///
/// Clones share one budget.
///
/// ```
/// use heijunka_core::{Criticality, ManualClock};
/// use heijunka_retry::Budget;
/// use std::time::Duration;
///
/// let clock = ManualClock::new();
/// let budget = Budget::builder()
///     .ratio(0.1)
///     .floor_per_sec(0)
///     .clock(&clock)
///     .build()?;
/// for _ in 0..100 {
///     budget.deposit(); // 100 first attempts...
/// }
/// // ...allow 10 extra attempts.
/// let extra = (0..20).filter(|_| budget.try_withdraw(Criticality::Default)).count();
/// assert_eq!(extra, 10);
/// // They expire with the window.
/// clock.advance(Duration::from_secs(11));
/// assert_eq!(budget.stats().extra_available, 0);
/// # Ok::<(), heijunka_core::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct Budget {
    inner: Arc<Inner>,
}

/// Builds a [`Budget`]; see [`Budget::builder`].
#[must_use = "a builder does nothing until `build()`"]
pub struct BudgetBuilder {
    ratio: f64,
    floor_per_sec: u32,
    window: Duration,
    clock: Clock,
    rate: Option<Arc<dyn RateLimiter>>,
}

impl Default for BudgetBuilder {
    fn default() -> Self {
        Self {
            ratio: DEFAULT_RATIO,
            floor_per_sec: DEFAULT_FLOOR_PER_SEC,
            window: DEFAULT_WINDOW,
            clock: Clock::system(),
            rate: None,
        }
    }
}

impl fmt::Debug for BudgetBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BudgetBuilder")
            .field("ratio", &self.ratio)
            .field("floor_per_sec", &self.floor_per_sec)
            .field("window", &self.window)
            .field("rate_limiter", &self.rate.is_some())
            .finish()
    }
}

impl BudgetBuilder {
    /// Extra attempts allowed per first attempt: `0.1` lets retries and hedges
    /// add 10 % (default [`DEFAULT_RATIO`]). `0` allows only the floor. At most
    /// [`MAX_RATIO`].
    pub fn ratio(mut self, ratio: f64) -> Self {
        self.ratio = ratio;
        self
    }

    /// Extra attempts allowed per second however few first attempts there were
    /// (default [`DEFAULT_FLOOR_PER_SEC`]).
    pub fn floor_per_sec(mut self, floor: u32) -> Self {
        self.floor_per_sec = floor;
        self
    }

    /// How long a first attempt counts (default [`DEFAULT_WINDOW`]); from one
    /// millisecond to one day.
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// The clock (default the system clock; tests pass a manual one).
    pub fn clock(mut self, clock: impl Into<Clock>) -> Self {
        self.clock = clock.into();
        self
    }

    /// First attempts ([`Budget::admit`]) must also pass `limiter`, so one budget
    /// bounds everything the dependency sees: the rate, plus the ratio of it in
    /// retries and hedges, plus the floor.
    pub fn rate_limiter(mut self, limiter: impl RateLimiter + 'static) -> Self {
        self.rate = Some(Arc::new(limiter));
        self
    }

    /// [`rate_limiter`](Self::rate_limiter) with a shared limiter.
    pub fn shared_rate_limiter(mut self, limiter: Arc<dyn RateLimiter>) -> Self {
        self.rate = Some(limiter);
        self
    }

    /// The budget.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `ratio` (negative, NaN or above
    /// [`MAX_RATIO`]) or `window` (under a millisecond or over a day).
    pub fn build(self) -> Result<Budget, ConfigError> {
        if !(0.0..=MAX_RATIO).contains(&self.ratio) {
            return Err(ConfigError::new(
                "ratio",
                self.ratio,
                format!("must be in [0, {MAX_RATIO}]"),
            ));
        }
        if self.window < Duration::from_millis(1) || self.window > Duration::from_secs(86_400) {
            return Err(ConfigError::new(
                "window",
                self.window,
                "must be from 1 ms to 1 day",
            ));
        }
        let slot_nanos = (self.window.as_nanos() / SLOTS as u128) as u64;
        // Fixed point: a first attempt deposits SCALE; an extra attempt costs
        // SCALE / ratio (rounded, so a ratio of 0.1 costs exactly 10 deposits).
        // A zero ratio deposits nothing: only the floor remains.
        let cost = if self.ratio == 0.0 {
            SCALE
        } else {
            ((SCALE as f64 / self.ratio).round() as u64).max(1)
        };
        let start = self.clock.now();
        let now = start.as_nanos() / slot_nanos;
        Ok(Budget {
            inner: Arc::new(Inner {
                clock: self.clock,
                slot_nanos,
                slots: Default::default(),
                head: AtomicU64::new(now),
                lock: Mutex::new(Floor {
                    // Empty at first: a budget built as an outage begins adds
                    // no more than the floor in its first second either.
                    tokens: 0.0,
                    last: start,
                }),
                cost,
                ratio: self.ratio,
                floor_per_sec: self.floor_per_sec,
                window: self.window,
                rate: self.rate,
                withdrawn_total: AtomicU64::new(0),
                exhausted: std::sync::atomic::AtomicBool::new(false),
                refused_total: AtomicU64::new(0),
                refused_sheddable_total: AtomicU64::new(0),
                rate_limited_total: AtomicU64::new(0),
            }),
        })
    }
}

/// A [`Budget`]'s figures now.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct BudgetStats {
    /// Extra attempts per first attempt.
    pub ratio: f64,
    /// Extra attempts per second always allowed.
    pub floor_per_sec: u32,
    /// How long a first attempt counts.
    pub window: Duration,
    /// First attempts deposited within the window.
    pub deposited_in_window: u64,
    /// Extra attempts spent within the window from the ratio's share (the
    /// floor's are not counted here).
    pub withdrawn_in_window: u64,
    /// Extra attempts a default-criticality request could spend now.
    pub extra_available: u64,
    /// Extra attempts spent since the budget was built.
    pub withdrawn_total: u64,
    /// Extra attempts refused since the budget was built (all criticalities).
    pub refused_total: u64,
    /// Of those, sheddable attempts refused while the balance was above zero
    /// (more than half the allowance spent).
    pub refused_sheddable_total: u64,
    /// First attempts refused by the rate limiter.
    pub rate_limited_total: u64,
}

impl Budget {
    /// A builder with the defaults: ratio 0.1, floor 10 per second, 10 s window.
    pub fn builder() -> BudgetBuilder {
        BudgetBuilder::default()
    }

    /// Records one first attempt: no lock, one clock read and one atomic add
    /// (plus a lock once per tenth of the window to expire old slots).
    #[inline]
    pub fn deposit(&self) {
        let inner = &*self.inner;
        let slot = inner.advance();
        inner.slots[slot].deposited.fetch_add(1, Ordering::Relaxed);
    }

    /// A first attempt: passes the rate limiter, if the budget has one, then
    /// deposits.
    ///
    /// # Errors
    ///
    /// The limiter's refusal ([`Rejection::RateLimited`] with its retry-after);
    /// nothing is deposited then.
    pub fn admit(&self) -> Result<(), Rejection> {
        self.admit_for(Criticality::Default)
    }

    /// [`admit`](Self::admit) for work of `criticality`: the rate limiter is
    /// asked with it ([`RateLimiter::check_n_for`]: a GCRA's critical reserve
    /// is left to critical work).
    ///
    /// # Errors
    ///
    /// As [`admit`](Self::admit).
    pub fn admit_for(&self, criticality: Criticality) -> Result<(), Rejection> {
        if let Some(rate) = &self.inner.rate
            && let Err(e) = rate.check_n_for(1, criticality)
        {
            self.inner
                .rate_limited_total
                .fetch_add(1, Ordering::Relaxed);
            return Err(e.reason().unwrap_or(Rejection::RateLimited {
                retry_after: self.inner.window,
            }));
        }
        self.deposit();
        Ok(())
    }

    /// Whether `other` is this budget (a clone of it).
    pub fn same_as(&self, other: &Budget) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Spends one extra attempt (a retry or a hedge) if the balance allows it:
    /// `true` when the attempt may be made. The ratio's share is spent first,
    /// then the floor's. A [`Sheddable`](Criticality::Sheddable) request may
    /// spend only while less than half of the ratio's share, or less than half
    /// of the floor's second, is spent.
    pub fn try_withdraw(&self, criticality: Criticality) -> bool {
        self.decide(criticality, true)
    }

    /// Whether [`try_withdraw`](Self::try_withdraw) would allow an extra
    /// attempt now, without spending anything (a retry asks before waiting out
    /// its backoff, so a call does not wait only to be refused).
    pub fn can_withdraw(&self, criticality: Criticality) -> bool {
        self.decide(criticality, false)
    }

    fn decide(&self, criticality: Criticality, spend: bool) -> bool {
        let inner = &*self.inner;
        let mut floor = inner.lock.lock().unwrap_or_else(PoisonError::into_inner);
        let head = inner.advance_locked();
        let (deposited, withdrawn) = inner.sums();
        // The ratio's share, in units: SCALE per first attempt, `cost` per
        // extra attempt.
        let allowance = deposited.saturating_mul(per_deposit(inner.ratio));
        let after = (withdrawn + 1).saturating_mul(inner.cost);
        let sheddable = criticality == Criticality::Sheddable;
        let from_ratio = after <= allowance && (!sheddable || after.saturating_mul(2) <= allowance);
        let tokens = inner.refill(&mut floor);
        let from_floor = || {
            let burst = f64::from(inner.floor_per_sec);
            tokens >= 1.0 && (!sheddable || tokens - 1.0 >= burst / 2.0)
        };
        let ok = from_ratio || from_floor();
        if !spend {
            return ok;
        }
        if from_ratio {
            inner.slots[(head % SLOTS as u64) as usize]
                .withdrawn
                .fetch_add(1, Ordering::Relaxed);
        } else if ok {
            floor.tokens -= 1.0;
        }
        // The state logged is the ratio's share (the floor's tokens refill
        // every second and would make it flap): spent when a default or
        // critical request finds it spent, available when one is paid from it
        // again. A sheddable refusal says it is strained, not spent. Relaxed:
        // the flag only dedupes log lines, and the lock orders it anyway.
        let change = if from_ratio || !sheddable {
            let was = inner
                .exhausted
                .swap(!from_ratio, std::sync::atomic::Ordering::Relaxed);
            (was == from_ratio).then_some(from_ratio)
        } else {
            None
        };
        if ok {
            inner.withdrawn_total.fetch_add(1, Ordering::Relaxed);
        } else {
            inner.refused_total.fetch_add(1, Ordering::Relaxed);
            if sheddable && (after <= allowance || tokens >= 1.0) {
                inner
                    .refused_sheddable_total
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        // Logged without the lock held.
        drop(floor);
        match change {
            Some(true) => tracing::info!(ratio = inner.ratio, "retry budget available again"),
            Some(false) => tracing::warn!(
                ratio = inner.ratio,
                floor_per_sec = inner.floor_per_sec,
                deposited_in_window = deposited,
                "retry budget's share spent: only the floor's extra attempts remain"
            ),
            None => {}
        }
        ok
    }

    /// The figures now.
    pub fn stats(&self) -> BudgetStats {
        let inner = &*self.inner;
        let mut floor = inner.lock.lock().unwrap_or_else(PoisonError::into_inner);
        inner.advance_locked();
        let (deposited, withdrawn) = inner.sums();
        let allowance = deposited.saturating_mul(per_deposit(inner.ratio));
        let spent = withdrawn.saturating_mul(inner.cost);
        let tokens = inner.refill(&mut floor);
        BudgetStats {
            ratio: inner.ratio,
            floor_per_sec: inner.floor_per_sec,
            window: inner.window,
            deposited_in_window: deposited,
            withdrawn_in_window: withdrawn,
            extra_available: allowance.saturating_sub(spent) / inner.cost + tokens as u64,
            withdrawn_total: inner.withdrawn_total.load(Ordering::Relaxed),
            refused_total: inner.refused_total.load(Ordering::Relaxed),
            refused_sheddable_total: inner.refused_sheddable_total.load(Ordering::Relaxed),
            rate_limited_total: inner.rate_limited_total.load(Ordering::Relaxed),
        }
    }

    /// The clock the budget reads.
    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }
}

/// What one first attempt deposits: `SCALE`, or nothing when the ratio is zero
/// (then only the floor allows extra attempts).
#[inline]
fn per_deposit(ratio: f64) -> u64 {
    if ratio == 0.0 { 0 } else { SCALE }
}

impl Inner {
    /// Refills the floor's bucket to now and returns its tokens.
    fn refill(&self, floor: &mut Floor) -> f64 {
        let now = self.clock.now();
        let elapsed = now.duration_since(floor.last).as_secs_f64();
        let burst = f64::from(self.floor_per_sec);
        floor.tokens = (floor.tokens + elapsed * burst).min(burst);
        floor.last = floor.last.max(now);
        floor.tokens
    }

    /// The slot number of `now`.
    #[inline]
    fn slot_of_now(&self) -> u64 {
        self.clock.now().as_nanos() / self.slot_nanos
    }

    /// Moves the window to now if it has moved on, and returns the index of the
    /// slot to write. A reading behind `head` (another thread's clock a little
    /// ahead) writes into `head`'s slot.
    #[inline]
    fn advance(&self) -> usize {
        // The coarse sample while the process's ticker runs (a breaker is
        // open somewhere; see `Clock::recent`), the precise time otherwise: a
        // reading a little behind lands in the head's slot. (The budget does
        // not keep the ticker running: it would wake a thousand times a second
        // for the life of the process.)
        let now = self.clock.recent().as_nanos() / self.slot_nanos;
        // Acquire: pairs with the Release store in `advance_to`, so a thread that
        // sees the new head also sees the expired slots cleared before it
        // writes into one.
        let head = self.head.load(Ordering::Acquire);
        if now > head {
            let _g = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
            self.advance_to(now);
        }
        (now.max(head) % SLOTS as u64) as usize
    }

    /// [`advance`](Self::advance) with the lock held; returns the head.
    fn advance_locked(&self) -> u64 {
        let now = self.slot_of_now();
        self.advance_to(now);
        self.head.load(Ordering::Relaxed)
    }

    /// Clears the slots between `head` and `now` and publishes `now` as the head.
    /// The caller holds the lock.
    fn advance_to(&self, now: u64) {
        let head = self.head.load(Ordering::Relaxed);
        if now <= head {
            return;
        }
        let expired = (now - head).min(SLOTS as u64);
        for i in 1..=expired {
            let slot = &self.slots[((head + i) % SLOTS as u64) as usize];
            slot.deposited.store(0, Ordering::Relaxed);
            slot.withdrawn.store(0, Ordering::Relaxed);
        }
        // Release: see `advance`.
        self.head.store(now, Ordering::Release);
    }

    /// First attempts and extra attempts within the window.
    fn sums(&self) -> (u64, u64) {
        self.slots.iter().fold((0, 0), |(d, w), s| {
            (
                d + s.deposited.load(Ordering::Relaxed),
                w + s.withdrawn.load(Ordering::Relaxed),
            )
        })
    }
}

impl fmt::Debug for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Budget")
            .field("ratio", &self.inner.ratio)
            .field("floor_per_sec", &self.inner.floor_per_sec)
            .field("window", &self.inner.window)
            .field("rate_limiter", &self.inner.rate.is_some())
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use heijunka_core::ManualClock;

    fn budget(clock: &ManualClock, ratio: f64, floor: u32) -> Budget {
        Budget::builder()
            .ratio(ratio)
            .floor_per_sec(floor)
            .clock(clock)
            .build()
            .unwrap()
    }

    fn spend(b: &Budget, c: Criticality, n: usize) -> usize {
        (0..n).filter(|_| b.try_withdraw(c)).count()
    }

    #[test]
    fn the_floor_allows_floor_per_second_never_more() {
        let clock = ManualClock::new();
        let b = budget(&clock, 0.1, 10);
        // It starts empty and refills at 10 per second...
        assert_eq!(spend(&b, Criticality::Default, 1000), 0);
        clock.advance(Duration::from_secs(1));
        assert_eq!(spend(&b, Criticality::Default, 1000), 10);
        // ...saving up one second's worth at most, however long it was idle.
        clock.advance(Duration::from_millis(500));
        assert_eq!(spend(&b, Criticality::Default, 1000), 5);
        clock.advance(Duration::from_secs(3600));
        assert_eq!(spend(&b, Criticality::Critical, 1000), 10);
        // Sheddable work leaves half of the second's floor to the others.
        clock.advance(Duration::from_secs(1));
        assert_eq!(spend(&b, Criticality::Sheddable, 1000), 5);
        assert_eq!(spend(&b, Criticality::Default, 1000), 5);
    }

    #[test]
    fn ratio_zero_leaves_only_the_floor() {
        let clock = ManualClock::new();
        let b = budget(&clock, 0.0, 1);
        for _ in 0..1000 {
            b.deposit();
        }
        clock.advance(Duration::from_secs(5));
        assert_eq!(spend(&b, Criticality::Default, 1000), 1);
    }

    #[test]
    fn sheddable_spends_only_the_first_half() {
        let clock = ManualClock::new();
        let b = budget(&clock, 0.2, 0);
        for _ in 0..100 {
            b.deposit();
        }
        // 20 allowed: sheddable gets 10, default the other 10.
        assert_eq!(spend(&b, Criticality::Sheddable, 100), 10);
        assert_eq!(spend(&b, Criticality::Default, 100), 10);
        let s = b.stats();
        assert_eq!(s.withdrawn_total, 20);
        assert_eq!(s.refused_sheddable_total, 90);
        assert_eq!(s.extra_available, 0);
    }

    #[test]
    fn old_deposits_expire_slot_by_slot() {
        let clock = ManualClock::new();
        let b = budget(&clock, 0.5, 0);
        for _ in 0..10 {
            b.deposit();
        }
        clock.advance(Duration::from_secs(5));
        for _ in 0..10 {
            b.deposit();
        }
        assert_eq!(b.stats().deposited_in_window, 20);
        clock.advance(Duration::from_secs(5));
        // The first ten are 10 s old: expired.
        assert_eq!(b.stats().deposited_in_window, 10);
        assert_eq!(b.stats().extra_available, 5);
        clock.advance(Duration::from_secs(3600));
        assert_eq!(b.stats().deposited_in_window, 0);
    }

    #[test]
    fn bad_config_names_the_field() {
        for (ratio, field) in [(-0.1, "ratio"), (f64::NAN, "ratio"), (11.0, "ratio")] {
            let e = Budget::builder().ratio(ratio).build().unwrap_err();
            assert_eq!(e.field(), field);
        }
        let e = Budget::builder()
            .window(Duration::from_micros(10))
            .build()
            .unwrap_err();
        assert_eq!(e.field(), "window");
    }

    #[test]
    fn concurrent_withdrawals_never_overdraw() {
        let clock = ManualClock::new();
        let b = budget(&clock, 0.1, 0);
        for _ in 0..1000 {
            b.deposit();
        }
        let spent: usize = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| s.spawn(|| spend(&b, Criticality::Critical, 100)))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(spent, 100);
    }
}
