//! The generic cell rate algorithm: a token bucket without a refill timer, and
//! equally the leaky bucket in its meter form (the shaper form, which delays
//! instead of refusing, is [`LeakyBucket`](super::LeakyBucket)).

use std::fmt;
use std::time::Duration;

use heijunka_core::metrics::Counter;
use heijunka_core::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
use heijunka_core::sync::{CachePadded, hint, thread};
use heijunka_core::{Clock, ConfigError, Criticality, validate};

use super::{KeyedDecision, RateLimitError, RateLimitState, RateLimiter};

/// The GCRA arithmetic, shared by [`Gcra`] and the keyed limiter.
///
/// State is the theoretical arrival time (TAT) in clock nanoseconds; the interval
/// `T` is `1e9 / rate` nanoseconds, truncated as governor does (a quotient within
/// float noise of an integer is that integer: 125/60 per second is 480 ms). `n` units
/// conform at `now` iff `max(tat, now) + n·T − now ≤ burst·T`; then the TAT becomes
/// `max(tat, now) + n·T`. A fresh bucket (TAT 0) admits `burst` at once.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Params {
    /// Nanoseconds per unit (`T`).
    pub(crate) interval: u64,
    /// Units admissible at once.
    pub(crate) burst: u32,
    /// `burst · T`.
    pub(crate) tolerance: u64,
}

impl Params {
    pub(crate) fn new(per_second: f64, burst: u32) -> Result<Self, ConfigError> {
        validate::positive("rate", per_second)?;
        validate::at_least("burst", burst, 1)?;
        // Truncated, as governor's `Quota::per_second` (`1 s / n`): the limiter
        // is never slower than the rate asked for, so `n` per second admits `n`
        // in exactly one second. A rate above 1e9 per second truncates to 0 ns
        // and is refused (it cannot be honoured with nanosecond timestamps).
        //
        // But a quotient within float noise of an integer is that integer:
        // `125.0 / 60.0` per second is 479_999_999.99999994 ns as floats go,
        // where governor's `per_minute(125)` is exactly 480_000_000 ns. The
        // noise of the two divisions (the caller's and this one) is a few ulps,
        // so "near" is within 16 ulps of the quotient (relative, so it holds for
        // an hour's interval too: 1e-6 ns is below one ulp of 3.6e12): far below
        // a nanosecond up to intervals of days, so a rate truly between two
        // integer intervals is still truncated (and 1.000000001e9 per second
        // still truncates to 0 ns and is refused).
        let quotient = 1e9 / per_second;
        let nearest = quotient.round();
        let noise = quotient * 16.0 * f64::EPSILON;
        let interval = if (quotient - nearest).abs() <= noise {
            nearest
        } else {
            quotient.floor()
        };
        if interval < 1.0 || interval >= u64::MAX as f64 {
            return Err(ConfigError::new(
                "rate",
                per_second,
                "must be between 1 per 584 years and 1e9 per second",
            ));
        }
        let interval = interval as u64;
        let tolerance = interval.checked_mul(u64::from(burst)).ok_or_else(|| {
            ConfigError::new("burst", burst, "times the interval overflows 584 years")
        })?;
        Ok(Self {
            interval,
            burst,
            tolerance,
        })
    }

    /// The new TAT if `n` units conform at `now`, or the error.
    #[inline]
    pub(crate) fn decide(&self, tat: u64, now: u64, n: u32) -> Result<u64, RateLimitError> {
        if n > self.burst {
            return Err(RateLimitError::InsufficientCapacity {
                requested: n,
                capacity: self.burst,
            });
        }
        let new_tat = tat.max(now).saturating_add(self.interval * u64::from(n));
        let allowed_at = now.saturating_add(self.tolerance);
        if new_tat <= allowed_at {
            Ok(new_tat)
        } else {
            Err(RateLimitError::RateLimited {
                retry_after: Duration::from_nanos(new_tat - allowed_at),
            })
        }
    }

    /// Applies the decision to an atomic TAT with a CAS loop (no lock).
    #[inline]
    pub(crate) fn check(&self, state: &AtomicU64, now: u64, n: u32) -> Result<(), RateLimitError> {
        // Relaxed everywhere: the TAT is the only shared state and each CAS is on
        // that one word; nothing else is published with it.
        let mut tat = state.load(Ordering::Relaxed);
        loop {
            let new_tat = self.decide(tat, now, n)?;
            match state.compare_exchange_weak(tat, new_tat, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Ok(()),
                Err(current) => tat = current,
            }
        }
    }
}

impl Params {
    /// The bucket as a TAT of `tat` stands at `now`: the units that would conform
    /// one after another right now, and the time until the bucket is full (TAT at
    /// or before `now`).
    ///
    /// `k` more units conform at `now` iff `max(tat, now) + k·T − now ≤ burst·T`,
    /// so the count is `⌊(burst·T − ahead) / T⌋` with `ahead = max(tat − now, 0)`.
    #[inline]
    pub(crate) fn state(&self, tat: u64, now: u64) -> RateLimitState {
        let ahead = tat.saturating_sub(now);
        let remaining = self.tolerance.saturating_sub(ahead) / self.interval;
        RateLimitState {
            limit: self.burst,
            // At most `burst`, since `ahead` is never negative.
            remaining: u32::try_from(remaining).unwrap_or(self.burst),
            reset_after: Duration::from_nanos(ahead),
        }
    }

    /// As [`check`](Self::check), also returning the bucket's state after the
    /// decision (after the admission, or unchanged by a refusal).
    #[inline]
    pub(crate) fn check_state(&self, state: &AtomicU64, now: u64, n: u32) -> KeyedDecision {
        // Relaxed: as in `check`.
        let mut tat = state.load(Ordering::Relaxed);
        loop {
            let new_tat = match self.decide(tat, now, n) {
                Ok(new_tat) => new_tat,
                Err(e) => {
                    return KeyedDecision {
                        result: Err(e),
                        state: self.state(tat, now),
                    };
                }
            };
            match state.compare_exchange_weak(tat, new_tat, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => {
                    return KeyedDecision {
                        result: Ok(()),
                        state: self.state(new_tat, now),
                    };
                }
                Err(current) => tat = current,
            }
        }
    }
}

/// A GCRA rate limiter: `rate` units per second with bursts of up to `burst`.
///
/// The generic cell rate algorithm is a token bucket computed from one timestamp
/// instead of a refill timer: one atomic word, one compare-and-swap per check, no
/// lock, no allocation, no background task (the same algorithm as `governor`).
///
/// It is also the leaky bucket as a meter: a bucket of `burst` units leaking
/// `rate` per second admits exactly what this admits (the GCRA is its "virtual
/// scheduling" form). For the leaky bucket that delays callers into an even stream
/// instead of refusing them, see [`LeakyBucket`](super::LeakyBucket).
///
/// ```
/// use heijunka_backpressure::{Gcra, RateLimiter};
///
/// let limiter = Gcra::builder(100.0).burst(10).build()?;
/// assert!(limiter.check().is_ok());
/// # Ok::<(), heijunka_core::ConfigError>(())
/// ```
///
/// # Changing the rate at run time
///
/// [`set_rate`](Gcra::set_rate) replaces the rate and burst while checks run.
/// Each check decides with one whole parameter set, the old or the new, never a
/// mix (the set sits behind a sequence lock: a check reads it with a few loads and
/// no write; a change is rare). The theoretical arrival time is kept, so the
/// transition is continuous in time: the debt already taken (how far the TAT is
/// ahead of now) stays, and is judged by the new burst. Lowering the rate or the
/// burst refuses until the debt has drained below the new tolerance; raising
/// them admits more at once. Nothing is reset, so a reload cannot be used to
/// reopen a full bucket.
pub struct Gcra {
    tat: CachePadded<AtomicU64>,
    params: ParamsCell,
    /// Units of the burst only critical work may take.
    critical_reserve: u32,
    clock: Clock,
    /// Refusals (feature `metrics`); touched only on a refusal.
    rejected: Counter,
}

/// The parameters of a [`Gcra`], changeable while checks read them: a sequence
/// lock (as crossbeam's `AtomicCell` fallback).
///
/// The protocol: a writer makes `seq` odd (a compare-and-swap from even, which
/// also shuts out other writers), issues a Release fence, stores the fields, and
/// makes `seq` even again with a Release store. A reader loads `seq` (Acquire),
/// retries while it is odd, loads the fields, issues an Acquire fence and loads
/// `seq` again: if it is unchanged, no write overlapped the field loads. For if a
/// field load saw a store of a write, the reader's fence synchronizes with that
/// write's fence, so the write's odd `seq` happens before the second load, which
/// then cannot return the first value; and if the first load saw a write's final
/// even value, the Acquire/Release pair makes that write's fields visible.
struct ParamsCell {
    seq: AtomicU64,
    interval: AtomicU64,
    burst: AtomicU32,
    tolerance: AtomicU64,
}

impl ParamsCell {
    fn new(p: Params) -> Self {
        Self {
            seq: AtomicU64::new(0),
            interval: AtomicU64::new(p.interval),
            burst: AtomicU32::new(p.burst),
            tolerance: AtomicU64::new(p.tolerance),
        }
    }

    /// One whole parameter set.
    #[inline]
    fn load(&self) -> Params {
        let mut spins = 0_u32;
        loop {
            // Acquire: pairs with the Release store that ended the last write.
            let s1 = self.seq.load(Ordering::Acquire);
            if s1 & 1 == 0 {
                // Relaxed: ordered by the fences around them (see the type's docs).
                let p = Params {
                    interval: self.interval.load(Ordering::Relaxed),
                    burst: self.burst.load(Ordering::Relaxed),
                    tolerance: self.tolerance.load(Ordering::Relaxed),
                };
                // Acquire fence: pairs with the writer's Release fence after it made
                // `seq` odd.
                fence(Ordering::Acquire);
                // Relaxed: ordered after the field loads by the fence above.
                if self.seq.load(Ordering::Relaxed) == s1 {
                    return p;
                }
            }
            // A write takes a few stores; one that is taking longer has had its
            // thread descheduled mid-write: give the core back rather than spin
            // through its time slice.
            spins = spins.saturating_add(1);
            if spins < 64 {
                hint::spin_loop();
            } else {
                thread::yield_now();
            }
        }
    }

    /// Replaces the set; concurrent writers take turns.
    fn store(&self, p: Params) {
        // Relaxed: only a starting guess for the compare-and-swap.
        let mut s = self.seq.load(Ordering::Relaxed);
        loop {
            if s & 1 == 0 {
                // Acquire: a writer after another sees its fields as its start.
                match self
                    .seq
                    .compare_exchange_weak(s, s + 1, Ordering::Acquire, Ordering::Relaxed)
                {
                    Ok(_) => break,
                    Err(actual) => s = actual,
                }
            } else {
                hint::spin_loop();
                // Relaxed: a retry's guess, as above.
                s = self.seq.load(Ordering::Relaxed);
            }
        }
        // Release fence: pairs with the readers' Acquire fence (see the docs).
        fence(Ordering::Release);
        // Relaxed: published by the fence above and the Release store below.
        self.interval.store(p.interval, Ordering::Relaxed);
        self.burst.store(p.burst, Ordering::Relaxed);
        self.tolerance.store(p.tolerance, Ordering::Relaxed);
        // Release: pairs with the readers' first Acquire load of `seq`.
        self.seq.store(s + 2, Ordering::Release);
    }
}

/// Builds a [`Gcra`].
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until `build()`"]
pub struct GcraBuilder {
    per_second: f64,
    burst: u32,
    critical_reserve: u32,
    clock: Clock,
    name: String,
}

impl GcraBuilder {
    /// Units admissible at once from a full bucket. Default 1 (no burst).
    pub fn burst(mut self, burst: u32) -> Self {
        self.burst = burst;
        self
    }

    /// Keeps `units` of the burst for critical work
    /// ([`RateLimiter::check_n_for`] with [`Criticality::Critical`]): other
    /// work, and every plain [`check`](RateLimiter::check), conforms only while
    /// more than `units` remain, so under a sustained overload the last of the
    /// bucket goes to critical requests. Default 0;
    /// less than the burst (a later [`set_rate`](Gcra::set_rate) with a smaller
    /// burst keeps at least one unit for other work).
    ///
    /// Everything that does not pass a criticality is default work and leaves
    /// the reserve alone: [`check`](RateLimiter::check),
    /// [`check_n`](RateLimiter::check_n), [`until_ready`](crate::until_ready)
    /// (which refuses `n` above `burst - units` as
    /// [`InsufficientCapacity`](crate::RateLimitError::InsufficientCapacity)),
    /// and the facade's `RateLimitLayer`. The policy's rate stage, the
    /// load-shed signal and the retry budget pass the request's criticality.
    ///
    /// ```
    /// use heijunka_backpressure::{Gcra, RateLimiter};
    /// use heijunka_core::{Criticality, ManualClock};
    ///
    /// let limiter = Gcra::builder(10.0)
    ///     .burst(4)
    ///     .critical_reserve(1)
    ///     .clock(ManualClock::new().clock())
    ///     .build()?;
    /// for _ in 0..3 {
    ///     limiter.check_n_for(1, Criticality::Default).unwrap();
    /// }
    /// assert!(limiter.check_n_for(1, Criticality::Default).is_err());
    /// assert!(limiter.check_n_for(1, Criticality::Critical).is_ok(), "the reserve");
    /// # Ok::<(), heijunka_core::ConfigError>(())
    /// ```
    pub fn critical_reserve(mut self, units: u32) -> Self {
        self.critical_reserve = units;
        self
    }

    /// The clock to read. Default: the system clock.
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The `name` label of the limiter's metrics (feature `metrics`, see
    /// `docs/metrics.md`). Default `"default"`.
    ///
    /// ```
    /// use heijunka_backpressure::Gcra;
    ///
    /// let api = Gcra::builder(100.0).name("api").build()?;
    /// # let _ = api;
    /// # Ok::<(), heijunka_core::ConfigError>(())
    /// ```
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for a rate that is not a finite number above zero or is
    /// above 1e9 per second (the interval, `1e9 / rate` nanoseconds truncated as
    /// governor does, would be below 1 ns), a burst of zero, or a
    /// `critical_reserve` not below the burst.
    pub fn build(self) -> Result<Gcra, ConfigError> {
        let params = Params::new(self.per_second, self.burst)?;
        if self.critical_reserve > 0 && self.critical_reserve >= self.burst {
            return Err(ConfigError::new(
                "critical_reserve",
                self.critical_reserve,
                format!("must be below the burst ({})", self.burst),
            ));
        }
        Ok(Gcra {
            tat: CachePadded::new(AtomicU64::new(0)),
            params: ParamsCell::new(params),
            critical_reserve: self.critical_reserve,
            clock: self.clock,
            rejected: crate::metrics::rate_rejected(&self.name),
        })
    }
}

impl Gcra {
    /// A builder for `per_second` units per second.
    pub fn builder(per_second: f64) -> GcraBuilder {
        GcraBuilder {
            per_second,
            burst: 1,
            critical_reserve: 0,
            clock: Clock::system(),
            name: crate::metrics::DEFAULT_NAME.to_owned(),
        }
    }

    /// The interval between units at the steady rate.
    pub fn interval(&self) -> Duration {
        Duration::from_nanos(self.params.load().interval)
    }

    /// Units admissible at once from a full bucket.
    pub fn burst(&self) -> u32 {
        self.params.load().burst
    }

    /// Changes the rate and the burst while the limiter is in use: checks after
    /// it returns decide with the new values; the state (the theoretical arrival
    /// time) is kept, so debt already taken is judged by the new burst (see
    /// [Changing the rate at run time](Gcra#changing-the-rate-at-run-time)).
    ///
    /// ```
    /// use heijunka_backpressure::{Gcra, RateLimiter};
    /// use heijunka_core::ManualClock;
    ///
    /// let clock = ManualClock::new();
    /// let limiter = Gcra::builder(10.0).burst(1).clock(clock.clock()).build()?;
    /// assert!(limiter.check().is_ok());
    /// assert!(limiter.check().is_err(), "one per 100 ms");
    /// limiter.set_rate(10.0, 5)?;
    /// assert!(limiter.check().is_ok(), "the new burst has room");
    /// # Ok::<(), heijunka_core::ConfigError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As the builder's `build` (the fields are named `rate` and `burst`); the
    /// old values are kept.
    pub fn set_rate(&self, per_second: f64, burst: u32) -> Result<(), ConfigError> {
        self.params.store(Params::new(per_second, burst)?);
        Ok(())
    }
}

impl Gcra {
    /// The bucket now, taking nothing: the units default work could take one
    /// after another right now (the `RateLimit-Remaining` header; governor's
    /// `StateSnapshot::remaining_burst_capacity`), the burst, and the time until
    /// the bucket is full. With a
    /// [`critical_reserve`](GcraBuilder::critical_reserve), `limit` and
    /// `remaining` leave the reserve out, as [`check`](RateLimiter::check) does.
    ///
    /// ```
    /// use heijunka_backpressure::{Gcra, RateLimiter};
    /// use heijunka_core::ManualClock;
    /// use std::time::Duration;
    ///
    /// let clock = ManualClock::new();
    /// let limiter = Gcra::builder(4.0).burst(4).clock(clock.clock()).build()?;
    /// limiter.check()?;
    /// let state = limiter.state();
    /// assert_eq!((state.limit, state.remaining), (4, 3));
    /// assert_eq!(state.reset_after, Duration::from_millis(250));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn state(&self) -> RateLimitState {
        let p = self.params_for(Criticality::Default);
        // Relaxed: as in `Params::check`.
        p.state(
            self.tat.load(Ordering::Relaxed),
            self.clock.now().as_nanos(),
        )
    }

    /// The parameters work of `criticality` is judged by: without the critical
    /// reserve, except for critical work.
    #[inline]
    fn params_for(&self, criticality: Criticality) -> Params {
        let mut p = self.params.load();
        if self.critical_reserve > 0 && criticality != Criticality::Critical {
            let reserve = self.critical_reserve.min(p.burst.saturating_sub(1));
            p.burst -= reserve;
            p.tolerance = p
                .tolerance
                .saturating_sub(u64::from(reserve).saturating_mul(p.interval));
        }
        p
    }
}

impl RateLimiter for Gcra {
    /// Admits `n` units of default work: with a
    /// [`critical_reserve`](GcraBuilder::critical_reserve), the reserve is left
    /// alone.
    #[inline]
    fn check_n(&self, n: u32) -> Result<(), RateLimitError> {
        self.check_n_for(n, Criticality::Default)
    }

    /// Critical work may take the whole burst; other work leaves the
    /// [`critical_reserve`](GcraBuilder::critical_reserve) untouched.
    #[inline]
    fn check_n_for(&self, n: u32, criticality: Criticality) -> Result<(), RateLimitError> {
        let p = self.params_for(criticality);
        let r = p.check(&self.tat, self.clock.now().as_nanos(), n);
        crate::metrics::count_rate_refusal(&self.rejected, &r);
        r
    }

    fn clock(&self) -> &Clock {
        &self.clock
    }
}

impl fmt::Debug for Gcra {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.params.load();
        f.debug_struct("Gcra")
            .field("interval", &Duration::from_nanos(p.interval))
            .field("burst", &p.burst)
            .finish_non_exhaustive()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::time::Duration;

    use heijunka_core::ManualClock;

    use crate::{Gcra, RateLimiter};

    /// Admissions in `window` of arrivals every `gap`.
    fn admitted(limiter: &Gcra, clock: &ManualClock, gap: Duration, window: Duration) -> u32 {
        let mut n = 0;
        let mut elapsed = Duration::ZERO;
        while elapsed < window {
            if limiter.check().is_ok() {
                n += 1;
            }
            clock.advance(gap);
            elapsed += gap;
        }
        n
    }

    #[test]
    fn a_new_rate_applies_to_the_next_check_and_keeps_the_debt() {
        let clock = ManualClock::new();
        let limiter = Gcra::builder(10.0)
            .burst(1)
            .clock(clock.clock())
            .build()
            .unwrap();
        let ms = Duration::from_millis;
        // Arrivals every millisecond for a second: the rate, 10.
        assert_eq!(admitted(&limiter, &clock, ms(1), ms(1000)), 10);
        limiter.set_rate(100.0, 1).unwrap();
        assert_eq!((limiter.interval(), limiter.burst()), (ms(10), 1));
        assert_eq!(admitted(&limiter, &clock, ms(1), ms(1000)), 100);
        // Lowering the burst keeps the debt: a full burst of 50 taken, then the
        // burst cut to 1 refuses until the debt has drained (0.5 s at 100/s).
        limiter.set_rate(100.0, 50).unwrap();
        clock.advance(ms(1000));
        for _ in 0..50 {
            limiter.check().unwrap();
        }
        limiter.set_rate(100.0, 1).unwrap();
        let mut refused_for = Duration::ZERO;
        while limiter.check().is_err() {
            clock.advance(ms(1));
            refused_for += ms(1);
            assert!(refused_for < ms(2000), "never drained");
        }
        assert!(
            (ms(480)..=ms(500)).contains(&refused_for),
            "refused for {refused_for:?}"
        );
        // A bad value is refused and the old one kept.
        assert!(limiter.set_rate(0.0, 1).is_err());
        assert!(limiter.set_rate(10.0, 0).is_err());
        assert_eq!((limiter.interval(), limiter.burst()), (ms(10), 1));
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use heijunka_core::sync::{Arc, thread};

    use super::{Params, ParamsCell};

    fn set(per_second: f64, burst: u32) -> Params {
        Params::new(per_second, burst).expect("valid")
    }

    /// A reader racing a writer (and a second writer) sees one whole parameter
    /// set, never a mix of two.
    #[test]
    fn a_check_sees_one_whole_parameter_set() {
        loom::model(|| {
            let (old, new, third) = (set(10.0, 1), set(1000.0, 7), set(1.0, 3));
            let cell = Arc::new(ParamsCell::new(old));
            let writer = {
                let cell = Arc::clone(&cell);
                thread::spawn(move || cell.store(new))
            };
            let second = {
                let cell = Arc::clone(&cell);
                thread::spawn(move || cell.store(third))
            };
            let p = cell.load();
            let whole = |q: &Params| (q.interval, q.burst, q.tolerance);
            assert!(
                [old, new, third].iter().any(|q| whole(q) == whole(&p)),
                "a mixed set: {p:?}"
            );
            writer.join().unwrap();
            second.join().unwrap();
            let last = whole(&cell.load());
            assert!(last == whole(&new) || last == whole(&third));
        });
    }
}
