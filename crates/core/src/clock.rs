//! The injectable time source.
//!
//! Every heijunka crate reads time through a [`Clock`]. In production that is the
//! system clock; in tests it is a [`ManualClock`] the test advances explicitly, so a
//! rule like "open for 60 s, then half-open" is tested in microseconds and never with
//! a sleep.

use std::fmt;
use std::ops::{Add, AddAssign, Sub, SubAssign};
use std::sync::Arc;
// The manual clock deliberately uses std's atomic, not the loom shim's: it is advanced
// by the test itself, and a loom model that reads it must not count those reads as
// scheduling points of the code under test.
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// A point in time read from a [`Clock`]: nanoseconds since that clock's origin.
///
/// Instants are `Copy`, totally ordered and fit in a `u64` ([`as_nanos`] /
/// [`from_nanos`]), so they can be stored in an `AtomicU64` (a breaker's "open
/// until", a limiter's theoretical arrival time). Compare only instants from the same
/// clock: all system clocks share one origin, each [`ManualClock`] has its own.
///
/// Arithmetic saturates instead of panicking: `instant - duration` stops at the
/// origin, `later - earlier` is zero if `earlier` is in fact later.
///
/// [`as_nanos`]: Instant::as_nanos
/// [`from_nanos`]: Instant::from_nanos
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant {
    nanos: u64,
}

impl Instant {
    /// The clock's origin.
    pub const ZERO: Instant = Instant { nanos: 0 };

    /// Rebuilds an instant from [`Instant::as_nanos`].
    #[inline]
    pub const fn from_nanos(nanos: u64) -> Self {
        Self { nanos }
    }

    /// Nanoseconds since the clock's origin.
    #[inline]
    pub const fn as_nanos(self) -> u64 {
        self.nanos
    }

    /// Time elapsed from `earlier` to `self`, or zero if `earlier` is later.
    #[inline]
    pub const fn saturating_duration_since(self, earlier: Instant) -> Duration {
        Duration::from_nanos(self.nanos.saturating_sub(earlier.nanos))
    }

    /// Same as [`saturating_duration_since`](Self::saturating_duration_since); named
    /// like `std::time::Instant::duration_since`, which also saturates.
    #[inline]
    pub const fn duration_since(self, earlier: Instant) -> Duration {
        self.saturating_duration_since(earlier)
    }

    /// Time elapsed from `earlier` to `self`, or `None` if `earlier` is later.
    #[inline]
    pub const fn checked_duration_since(self, earlier: Instant) -> Option<Duration> {
        match self.nanos.checked_sub(earlier.nanos) {
            Some(n) => Some(Duration::from_nanos(n)),
            None => None,
        }
    }

    /// `self + d`, or `None` on overflow (after about 584 years).
    #[inline]
    pub fn checked_add(self, d: Duration) -> Option<Instant> {
        let d = u64::try_from(d.as_nanos()).ok()?;
        self.nanos.checked_add(d).map(Instant::from_nanos)
    }

    /// `self - d`, or `None` if that is before the clock's origin.
    #[inline]
    pub fn checked_sub(self, d: Duration) -> Option<Instant> {
        let d = u64::try_from(d.as_nanos()).ok()?;
        self.nanos.checked_sub(d).map(Instant::from_nanos)
    }

    /// `self + d`, saturating at the largest instant.
    #[inline]
    pub fn saturating_add(self, d: Duration) -> Instant {
        Instant::from_nanos(self.nanos.saturating_add(saturating_nanos(d)))
    }

    /// `self - d`, saturating at the clock's origin.
    #[inline]
    pub fn saturating_sub(self, d: Duration) -> Instant {
        Instant::from_nanos(self.nanos.saturating_sub(saturating_nanos(d)))
    }
}

#[inline]
fn saturating_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl fmt::Debug for Instant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Instant({:?})", Duration::from_nanos(self.nanos))
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    #[inline]
    fn add(self, d: Duration) -> Instant {
        self.saturating_add(d)
    }
}

impl AddAssign<Duration> for Instant {
    #[inline]
    fn add_assign(&mut self, d: Duration) {
        *self = *self + d;
    }
}

impl Sub<Duration> for Instant {
    type Output = Instant;
    #[inline]
    fn sub(self, d: Duration) -> Instant {
        self.saturating_sub(d)
    }
}

impl SubAssign<Duration> for Instant {
    #[inline]
    fn sub_assign(&mut self, d: Duration) {
        *self = *self - d;
    }
}

impl Sub<Instant> for Instant {
    type Output = Duration;
    #[inline]
    fn sub(self, earlier: Instant) -> Duration {
        self.saturating_duration_since(earlier)
    }
}

/// The process-wide system time source; every system [`Clock`] points at it.
struct SystemSource {
    #[cfg(not(miri))]
    quanta: quanta::Clock,
    #[cfg(not(miri))]
    origin: u64,
    // Miri cannot execute `rdtsc`/`cpuid`, so under miri the std clock stands in.
    #[cfg(miri)]
    origin: std::time::Instant,
}

impl SystemSource {
    fn get() -> &'static SystemSource {
        static SOURCE: OnceLock<SystemSource> = OnceLock::new();
        SOURCE.get_or_init(|| {
            #[cfg(not(miri))]
            {
                // `quanta::Clock::new` checks for an invariant TSC and calibrates it
                // against the OS monotonic clock once per process; without one it
                // reads the OS monotonic clock, the same source as std.
                let quanta = quanta::Clock::new();
                let origin = quanta.raw();
                SystemSource { quanta, origin }
            }
            #[cfg(miri)]
            SystemSource {
                origin: std::time::Instant::now(),
            }
        })
    }

    #[inline]
    fn now(&self) -> Instant {
        #[cfg(not(miri))]
        {
            // `delta_as_nanos` returns 0 rather than wrapping if a core's counter is
            // momentarily behind the origin.
            Instant::from_nanos(self.quanta.delta_as_nanos(self.origin, self.quanta.raw()))
        }
        #[cfg(miri)]
        {
            Instant::from_nanos(saturating_nanos(self.origin.elapsed()))
        }
    }
}

#[derive(Clone)]
enum Source {
    System(&'static SystemSource),
    Manual(Arc<AtomicU64>),
}

/// A time source: the system's monotonic clock, or a [`ManualClock`] for tests.
///
/// Cheap to clone (a pointer copy for the system clock, an `Arc` clone for a manual
/// one) and `Send + Sync`. The default is the system clock.
///
/// The system clock reads the CPU's invariant time-stamp counter through
/// [`quanta`](https://docs.rs/quanta) where the CPU has one, which costs less than
/// `std::time::Instant::now()` (see `docs/benchmarks.md`), and falls back to the OS
/// monotonic clock elsewhere. The first system clock created in a process
/// calibrates the counter once (a few milliseconds).
///
/// # What is monotonic
///
/// The counter read is unfenced (`rdtsc`, not `rdtscp` or `lfence; rdtsc`): that
/// is what makes it cheaper than `Instant::now()`. What holds:
///
/// - **On one thread**, successive readings never go backwards while the thread
///   stays on one core, and by at most the counters' skew between cores when the
///   OS moves it (an invariant TSC is synchronised across cores by the hardware
///   and the kernel; the skew is typically tens of nanoseconds).
/// - **Across threads**, instants compare, but a happens-before edge does not
///   order readings exactly: a thread that reads the clock *after* it observed
///   another thread's store (an `Acquire` load) may get an instant slightly
///   *earlier* than the one the other thread read *before* the store, because the
///   unfenced read may execute ahead of the load, plus the skew. The error is
///   bounded by those two effects (well under a microsecond on current
///   hardware; the `cross_thread_readings_are_ordered_within_the_documented_bound`
///   test checks 1 ms on whatever machine runs it).
/// - Never by more than that: an instant is never decades off, never wraps, and
///   [`Instant`] arithmetic saturates, so `later - earlier` of two such readings is
///   zero, never a panic or a huge duration.
///
/// Every heijunka rule that compares instants taken on different threads (a
/// breaker's open-until deadline, a limiter's theoretical arrival time) tolerates
/// that error: it shifts a decision by the error, never inverts a rule. Code that
/// needs readings ordered exactly by happens-before across threads should use
/// `std::time::Instant` (whose OS clock read is serialising).
///
/// ```
/// use heijunka_core::Clock;
///
/// let clock = Clock::system();
/// let start = clock.now();
/// let later = clock.now();
/// assert!(later >= start);
/// ```
#[derive(Clone)]
pub struct Clock {
    source: Source,
}

impl Clock {
    /// The system's monotonic clock. All system clocks share one origin, so their
    /// instants compare with each other.
    #[inline]
    pub fn system() -> Clock {
        Clock {
            source: Source::System(SystemSource::get()),
        }
    }

    /// The current time.
    #[inline]
    pub fn now(&self) -> Instant {
        match &self.source {
            Source::System(source) => source.now(),
            // Acquire pairs with the Release in `ManualClock::advance`, so whatever a
            // test wrote before advancing the clock is visible to a reader of the
            // new time.
            Source::Manual(nanos) => Instant::from_nanos(nanos.load(Ordering::Acquire)),
        }
    }

    /// Time elapsed since `earlier` (zero if `earlier` is in the future).
    #[inline]
    pub fn elapsed(&self, earlier: Instant) -> Duration {
        self.now().saturating_duration_since(earlier)
    }

    /// Whether this clock is a [`ManualClock`].
    pub fn is_manual(&self) -> bool {
        matches!(self.source, Source::Manual(_))
    }

    /// A slightly late reading, for a path that compares the time with a deadline
    /// far more often than the deadline passes (a breaker rejecting calls while
    /// open), and that may be up to [`COARSE_STALE_AFTER`] late.
    ///
    /// A [`ManualClock`] gives its exact time. The system clock gives the time the
    /// coarse ticker last sampled while one is running (some [`CoarseUse`] is held,
    /// see [`coarse_use`](Self::coarse_use)), otherwise [`now`](Self::now). Reading
    /// the sample is one relaxed load and a thread-local counter: no clock read. One
    /// call in [`COARSE_CHECK_EVERY`] on each thread also reads the precise clock,
    /// and a sample found older than [`COARSE_STALE_AFTER`] (a ticker starved of
    /// CPU, or just woken) is not used: that call returns the precise reading and
    /// publishes it as the sample. So a reading is at most `COARSE_STALE_AFTER`
    /// late, except that a starved ticker's sample may serve up to
    /// `COARSE_CHECK_EVERY - 1` further calls on a thread before that thread's
    /// check replaces it; and it is never later than [`now`](Self::now) read on the
    /// same thread afterwards by more than the cross-thread error (the sample was
    /// read on the ticker's thread; see "What is monotonic" under [`Clock`]).
    ///
    /// ```
    /// use heijunka_core::{COARSE_STALE_AFTER, Clock, ManualClock};
    /// use std::time::Duration;
    ///
    /// let manual = ManualClock::new();
    /// manual.advance(Duration::from_millis(5));
    /// assert_eq!(manual.clock().recent(), manual.now());
    ///
    /// // On the system clock: a sample at most COARSE_STALE_AFTER old while some
    /// // `CoarseUse` keeps the ticker running, the precise time otherwise.
    /// let system = Clock::system();
    /// let _use = system.coarse_use();
    /// let _recent = system.recent();
    /// assert!(COARSE_STALE_AFTER >= Duration::from_millis(1));
    /// ```
    #[inline]
    pub fn recent(&self) -> Instant {
        match &self.source {
            Source::System(source) => {
                // Relaxed: the value is only a time; nothing else is published
                // with it. Zero: no ticker is running.
                let sample = COARSE_NOW.load(Ordering::Relaxed);
                if sample != 0 && !precise_check_due() {
                    return Instant::from_nanos(sample);
                }
                let now = source.now();
                match fresh_sample(sample, now) {
                    Some(sample) => sample,
                    None if sample == 0 => now,
                    None => {
                        // Stale: publish the precise reading so that later readers
                        // see time move on. Relaxed: see above. `fetch_max`: the
                        // sample never goes back.
                        COARSE_NOW.fetch_max(now.as_nanos(), Ordering::Relaxed);
                        now
                    }
                }
            }
            Source::Manual(_) => self.now(),
        }
    }

    /// Registers a user of [`recent`](Self::recent) (an open breaker): while at
    /// least one [`CoarseUse`] is held, the process-wide coarse ticker samples the
    /// system clock every [`COARSE_TICK`]; when the last one is dropped, the ticker
    /// parks (it stops waking) until the next one. The first call starts the
    /// ticker's thread; later ones wake it if it is parked. `None` for a
    /// [`ManualClock`] (its `recent` is exact).
    ///
    /// Call it with no lock held: it may spawn or unpark a thread. Where a thread
    /// cannot be spawned, `recent` keeps reading the precise clock.
    pub fn coarse_use(&self) -> Option<CoarseUse> {
        let Source::System(source) = &self.source else {
            return None;
        };
        // AcqRel: the ticker's Acquire load of the count pairs with it, so a ticker
        // that sees no user parks only after our unpark below can reach it (the
        // unpark token is never lost: `park` returns at once if it was set).
        if COARSE_USERS.fetch_add(1, Ordering::AcqRel) == 0 {
            let source: &'static SystemSource = source;
            if let Some(ticker) = TICKER.get_or_init(|| spawn_ticker(source)) {
                ticker.unpark();
            }
        }
        Some(CoarseUse { _private: () })
    }

    #[doc(hidden)]
    /// How many times the coarse ticker has woken since the process started: a
    /// test hook (the only way to observe from outside that it parks).
    pub fn coarse_ticker_wakeups() -> u64 {
        // Relaxed: a counter read by tests.
        COARSE_WAKEUPS.load(Ordering::Relaxed)
    }
}

/// How often (one call in this many, per thread) [`Clock::recent`] checks the coarse
/// sample against the precise clock. 64 makes the check's cost (a clock read, about
/// the price of the whole rejection it serves) a small fraction of a rejection,
/// while a starved ticker's stale sample serves at most 63 calls on a thread.
pub const COARSE_CHECK_EVERY: u32 = 64;

std::thread_local! {
    /// Calls of `Clock::recent` on this thread since its last precise check.
    static RECENT_CALLS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Counts a `recent` call on this thread; whether this one checks the sample.
#[inline]
fn precise_check_due() -> bool {
    RECENT_CALLS
        .try_with(|calls| {
            let n = calls.get() + 1;
            let due = n >= COARSE_CHECK_EVERY;
            calls.set(if due { 0 } else { n });
            due
        })
        // A thread whose locals are being destroyed checks every time.
        .unwrap_or(true)
}

/// The coarse `sample` if one is taken (non-zero) and fresh: at most
/// [`COARSE_STALE_AFTER`] before `now`.
#[inline]
fn fresh_sample(sample: u64, now: Instant) -> Option<Instant> {
    let sample = Instant::from_nanos(sample);
    (sample != Instant::ZERO && now.saturating_duration_since(sample) <= COARSE_STALE_AFTER)
        .then_some(sample)
}

/// Spawns the coarse ticker's thread; `None` if it cannot be spawned.
fn spawn_ticker(source: &'static SystemSource) -> Option<std::thread::Thread> {
    std::thread::Builder::new()
        .name("heijunka-coarse-clock".into())
        .spawn(move || {
            loop {
                // Relaxed: a counter read by tests.
                COARSE_WAKEUPS.fetch_add(1, Ordering::Relaxed);
                // Acquire: pairs with the AcqRel increment in `coarse_use`.
                if COARSE_USERS.load(Ordering::Acquire) == 0 {
                    // No user: `recent` reads the precise clock while parked.
                    // Relaxed: see `recent`.
                    COARSE_NOW.store(0, Ordering::Relaxed);
                    // A user that arrived after the load above has unparked us
                    // already (the token), so this returns at once; spurious
                    // wake-ups loop back to the check.
                    std::thread::park();
                    continue;
                }
                // At least 1, so that a sample is never taken for "not running".
                let nanos = source.now().as_nanos().max(1);
                // Relaxed: see `recent`. `fetch_max`: readers never see the time
                // go back.
                COARSE_NOW.fetch_max(nanos, Ordering::Relaxed);
                std::thread::sleep(COARSE_TICK);
            }
        })
        .ok()
        .map(|handle| handle.thread().clone())
}

/// A registered user of [`Clock::recent`] on the system clock, from
/// [`Clock::coarse_use`]: the coarse ticker runs while one is held. Dropping it
/// (no lock needed; it only decrements a count) lets the ticker park.
#[must_use = "the coarse ticker runs only while the CoarseUse is held"]
#[derive(Debug)]
pub struct CoarseUse {
    _private: (),
}

impl Drop for CoarseUse {
    fn drop(&mut self) {
        // Release: pairs with the ticker's Acquire load of the count.
        COARSE_USERS.fetch_sub(1, Ordering::Release);
    }
}

/// How often the coarse ticker behind [`Clock::recent`] samples the system clock
/// while it runs: 1 ms, fine enough for breaker waits (seconds) and retry-after
/// hints, coarse enough that the thread costs nothing measurable.
pub const COARSE_TICK: Duration = Duration::from_millis(1);

/// How old a coarse sample may be before [`Clock::recent`] reads the precise clock
/// instead: 4 ticks. A ticker starved of CPU never makes `recent` later than that,
/// so a breaker never stays open past its wait by more than this.
pub const COARSE_STALE_AFTER: Duration = Duration::from_millis(4);

/// The coarse ticker's last sample of the system clock (nanoseconds since the
/// system origin); zero while no ticker runs.
static COARSE_NOW: AtomicU64 = AtomicU64::new(0);

/// Live [`CoarseUse`]s.
static COARSE_USERS: AtomicUsize = AtomicUsize::new(0);

/// The ticker's thread, once spawned (`None`: it could not be).
static TICKER: OnceLock<Option<std::thread::Thread>> = OnceLock::new();

static COARSE_WAKEUPS: AtomicU64 = AtomicU64::new(0);

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Source::System(_) => f.write_str("Clock::System"),
            Source::Manual(nanos) => f
                .debug_tuple("Clock::Manual")
                .field(&Duration::from_nanos(nanos.load(Ordering::Relaxed)))
                .finish(),
        }
    }
}

impl From<ManualClock> for Clock {
    fn from(manual: ManualClock) -> Clock {
        manual.clock()
    }
}

impl From<&ManualClock> for Clock {
    fn from(manual: &ManualClock) -> Clock {
        manual.clock()
    }
}

/// A clock that only moves when told to: the time source for tests.
///
/// Starts at [`Instant::ZERO`]. Clones share the same time, so a test can hand
/// [`clock()`](ManualClock::clock) to the code under test (on any thread) and keep the
/// `ManualClock` to advance it.
///
/// ```
/// use heijunka_core::{Clock, Instant, ManualClock};
/// use std::time::Duration;
///
/// let manual = ManualClock::new();
/// let clock: Clock = manual.clock();
/// assert_eq!(clock.now(), Instant::ZERO);
///
/// manual.advance(Duration::from_secs(60));
/// assert_eq!(clock.now(), Instant::ZERO + Duration::from_secs(60));
///
/// // Advancing is visible from every thread that holds a clone.
/// let handle = std::thread::spawn({
///     let clock = clock.clone();
///     move || clock.now()
/// });
/// assert_eq!(handle.join().unwrap(), Instant::ZERO + Duration::from_secs(60));
/// ```
#[derive(Clone, Default)]
pub struct ManualClock {
    nanos: Arc<AtomicU64>,
}

impl ManualClock {
    /// A manual clock at [`Instant::ZERO`].
    pub fn new() -> Self {
        Self::default()
    }

    /// A manual clock starting at `start`.
    pub fn starting_at(start: Instant) -> Self {
        Self {
            nanos: Arc::new(AtomicU64::new(start.as_nanos())),
        }
    }

    /// A [`Clock`] reading this manual clock's time.
    pub fn clock(&self) -> Clock {
        Clock {
            source: Source::Manual(Arc::clone(&self.nanos)),
        }
    }

    /// The current time.
    pub fn now(&self) -> Instant {
        // Acquire: pairs with the Release in `advance`/`set`.
        Instant::from_nanos(self.nanos.load(Ordering::Acquire))
    }

    /// Moves time forward by `d` (saturating at the largest instant) and returns the
    /// new time. Safe to call from several threads: advances add up.
    pub fn advance(&self, d: Duration) -> Instant {
        let d = saturating_nanos(d);
        // Release: publishes what the advancing thread did before, for readers that
        // Acquire-load the new time. A CAS loop so that concurrent advances add up
        // and saturate instead of wrapping.
        let prev = self
            .nanos
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_add(d))
            })
            .unwrap_or_else(|n| n);
        Instant::from_nanos(prev.saturating_add(d))
    }

    /// Moves time to `to`. Time never goes backwards: setting an earlier instant
    /// leaves the clock where it is. Returns the clock's time afterwards.
    pub fn set(&self, to: Instant) -> Instant {
        // Release/Acquire as in `advance`.
        let prev = self.nanos.fetch_max(to.as_nanos(), Ordering::AcqRel);
        Instant::from_nanos(prev.max(to.as_nanos()))
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ManualClock")
            .field(&Duration::from_nanos(self.nanos.load(Ordering::Relaxed)))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_is_monotonic_and_shares_an_origin() {
        let a = Clock::system();
        let b = Clock::default();
        let mut last = a.now();
        for i in 0..1_000 {
            let now = if i % 2 == 0 { a.now() } else { b.now() };
            assert!(now >= last, "{now:?} went back from {last:?}");
            last = now;
        }
        assert!(!a.is_manual());
    }

    #[test]
    #[cfg_attr(miri, ignore)] // sleeps on a real clock; too slow and pointless under miri
    fn system_clock_tracks_real_time() {
        // The one test that must use real time: it checks the system clock itself.
        let clock = Clock::system();
        let std_start = std::time::Instant::now();
        let start = clock.now();
        std::thread::sleep(Duration::from_millis(20));
        let ours = clock.elapsed(start);
        let theirs = std_start.elapsed();
        assert!(ours >= Duration::from_millis(19), "measured {ours:?}");
        let diff = ours.abs_diff(theirs);
        assert!(
            diff < Duration::from_millis(5),
            "ours {ours:?} std {theirs:?}"
        );
    }

    #[test]
    fn recent_is_exact_for_a_manual_clock() {
        let manual = ManualClock::new();
        let clock = manual.clock();
        assert!(clock.coarse_use().is_none(), "no ticker for a manual clock");
        for step in [0, 1, 999_999, 1_000_000_000] {
            manual.advance(Duration::from_nanos(step));
            assert_eq!(clock.recent(), manual.now());
        }
    }

    /// A sample is used while at most `COARSE_STALE_AFTER` old, never after;
    /// zero means no sample. Instants from a manual clock, so no real time passes.
    #[test]
    fn a_stale_sample_is_not_used() {
        let manual = ManualClock::starting_at(Instant::from_nanos(1_000_000_000));
        let sample = manual.now();
        for (age, fresh) in [
            (Duration::ZERO, true),
            (COARSE_TICK, true),
            (COARSE_STALE_AFTER, true),
            (COARSE_STALE_AFTER + Duration::from_nanos(1), false),
            (Duration::from_secs(60), false),
        ] {
            let now = sample + age;
            assert_eq!(
                fresh_sample(sample.as_nanos(), now),
                fresh.then_some(sample),
                "a sample {age:?} old"
            );
        }
        assert_eq!(fresh_sample(0, manual.now()), None, "no sample taken");
    }

    /// `recent` is never later than a `now` read after it by more than the
    /// documented cross-thread error (the sample is read on the ticker's thread),
    /// and never goes back by more than that error either.
    #[test]
    #[cfg_attr(miri, ignore)] // starts the ticker thread
    fn recent_is_within_its_documented_bounds_of_now() {
        const CROSS_THREAD: Duration = Duration::from_millis(1);
        let clock = Clock::system();
        let _use = clock.coarse_use().expect("a system clock");
        let mut last = clock.recent();
        for _ in 0..1_000 {
            let recent = clock.recent();
            let now = clock.now();
            assert!(
                last.saturating_duration_since(recent) <= CROSS_THREAD,
                "went back: {recent:?} after {last:?}"
            );
            assert!(
                recent.saturating_duration_since(now) <= CROSS_THREAD,
                "{recent:?} later than now {now:?}"
            );
            last = recent;
        }
    }

    /// One `recent` call in `COARSE_CHECK_EVERY` on a thread checks the sample
    /// against the precise clock; the others read no clock. Counted on a fresh
    /// thread, whose counter starts at zero.
    #[test]
    fn one_recent_call_in_coarse_check_every_checks_the_sample() {
        let due: Vec<usize> = std::thread::spawn(|| {
            (1..=3 * COARSE_CHECK_EVERY as usize)
                .filter(|_| precise_check_due())
                .collect()
        })
        .join()
        .unwrap();
        let every = COARSE_CHECK_EVERY as usize;
        assert_eq!(due, [every, 2 * every, 3 * every]);
    }

    #[test]
    fn manual_clock_moves_only_when_advanced() {
        let manual = ManualClock::new();
        let clock = manual.clock();
        assert!(clock.is_manual());
        assert_eq!(clock.now(), Instant::ZERO);
        assert_eq!(clock.now(), Instant::ZERO);
        assert_eq!(
            manual.advance(Duration::from_millis(1500)),
            Instant::from_nanos(1_500_000_000)
        );
        assert_eq!(clock.elapsed(Instant::ZERO), Duration::from_millis(1500));
        // set never goes back
        assert_eq!(
            manual.set(Instant::ZERO),
            Instant::from_nanos(1_500_000_000)
        );
        assert_eq!(
            manual.set(Instant::from_nanos(2_000_000_000)),
            Instant::from_nanos(2_000_000_000)
        );
        assert_eq!(Clock::from(&manual).now(), manual.now());
    }

    #[test]
    fn manual_clock_saturates_instead_of_wrapping() {
        let manual = ManualClock::starting_at(Instant::from_nanos(u64::MAX - 10));
        assert_eq!(
            manual.advance(Duration::from_secs(1)),
            Instant::from_nanos(u64::MAX)
        );
        assert_eq!(manual.advance(Duration::MAX), Instant::from_nanos(u64::MAX));
    }

    #[test]
    fn concurrent_advances_add_up() {
        let manual = ManualClock::new();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let m = manual.clone();
                std::thread::spawn(move || {
                    for _ in 0..250 {
                        m.advance(Duration::from_nanos(3));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(manual.now(), Instant::from_nanos(4 * 250 * 3));
    }

    #[test]
    fn instant_arithmetic_saturates() {
        let t = Instant::from_nanos(100);
        assert_eq!(t - Duration::from_nanos(200), Instant::ZERO);
        assert_eq!(t.checked_sub(Duration::from_nanos(200)), None);
        assert_eq!(
            t.checked_sub(Duration::from_nanos(40)),
            Some(Instant::from_nanos(60))
        );
        assert_eq!(Instant::ZERO - t, Duration::ZERO);
        assert_eq!(Instant::ZERO.checked_duration_since(t), None);
        assert_eq!(
            t.checked_duration_since(Instant::ZERO),
            Some(Duration::from_nanos(100))
        );
        assert_eq!(t + Duration::MAX, Instant::from_nanos(u64::MAX));
        assert_eq!(t.checked_add(Duration::MAX), None);
        let mut u = t;
        u += Duration::from_nanos(5);
        u -= Duration::from_nanos(1);
        assert_eq!(u.as_nanos(), 104);
        assert_eq!(format!("{u:?}"), "Instant(104ns)");
    }

    /// The documented cross-thread bound: a reading taken after an `Acquire` load
    /// that observed another thread's published reading is never earlier than it
    /// by more than `TOLERANCE`; and one thread's successive readings never go
    /// backwards by more than it either. Observed with a second thread, not with
    /// the clock's own state.
    #[test]
    #[cfg_attr(miri, ignore)] // 2 x 20,000 real clock reads; too slow under miri
    fn cross_thread_readings_are_ordered_within_the_documented_bound() {
        use std::sync::atomic::AtomicBool;

        const TOLERANCE: Duration = Duration::from_millis(1);
        const READS: usize = 20_000;
        let clock = Clock::system();
        let published = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let writer = {
            let (clock, published, done) = (clock.clone(), published.clone(), done.clone());
            std::thread::spawn(move || {
                let mut worst_step_back = Duration::ZERO;
                let mut last = clock.now();
                for _ in 0..READS {
                    let now = clock.now();
                    worst_step_back = worst_step_back.max(last.saturating_duration_since(now));
                    last = now;
                    // Release pairs with the reader's Acquire: the reading happens
                    // before the reader's load that sees it.
                    published.store(now.as_nanos(), Ordering::Release);
                }
                done.store(true, Ordering::Release);
                worst_step_back
            })
        };
        let mut worst_inversion = Duration::ZERO;
        let mut reads = 0;
        while !done.load(Ordering::Acquire) || reads < READS {
            let theirs = Instant::from_nanos(published.load(Ordering::Acquire));
            let mine = clock.now();
            worst_inversion = worst_inversion.max(theirs.saturating_duration_since(mine));
            reads += 1;
            if reads > 50 * READS {
                break; // bounded: the writer is done or stalled; enough samples
            }
        }
        let worst_step_back = writer.join().unwrap();
        assert!(
            worst_inversion <= TOLERANCE,
            "a reading after observing another thread's was {worst_inversion:?} earlier"
        );
        assert!(
            worst_step_back <= TOLERANCE,
            "one thread's readings went back by {worst_step_back:?}"
        );
    }
}
