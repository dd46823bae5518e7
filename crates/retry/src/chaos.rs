//! Fault injection for tests (the `chaos` feature): errors, latency and memory
//! pressure drawn from a seeded random source and scheduled on an injectable
//! clock, so a test can rehearse an outage and get the same faults every run.
//!
//! Off unless the feature is enabled: a production build without it cannot
//! inject faults. A [`Chaos`] can also be switched off at run time
//! ([`set_enabled`](Chaos::set_enabled)).
//!
//! ```
//! use heijunka_core::ManualClock;
//! use heijunka_retry::chaos::Chaos;
//! use std::time::Duration;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), heijunka_core::ConfigError> {
//! let clock = ManualClock::new();
//! let chaos = Chaos::builder(7)
//!     .clock(&clock)
//!     .error_rate(0.0)
//!     // From 10 s to 70 s every call fails.
//!     .outage(Duration::from_secs(10), Duration::from_secs(60))
//!     .build()?;
//! let call = || chaos.call(|| "injected", async { Ok::<_, &str>(1) });
//! assert_eq!(call().await, Ok(1));
//! clock.advance(Duration::from_secs(10));
//! assert_eq!(call().await, Err("injected"));
//! clock.advance(Duration::from_secs(60));
//! assert_eq!(call().await, Ok(1));
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use heijunka_core::rng::SplitMix64;
use heijunka_core::{Clock, ConfigError, Instant, validate};
use heijunka_memory::ManualProbe;
use serde::Serialize;

/// What [`Chaos`] decided for one call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fault {
    /// Wait this long before the call (or before failing it).
    pub delay: Option<Duration>,
    /// Fail the call instead of making it.
    pub error: bool,
}

/// An outage window, relative to the clock's reading when the chaos was built.
#[derive(Clone, Copy, Debug)]
struct Outage {
    from: Duration,
    until: Duration,
}

/// Builds a [`Chaos`]; see [`Chaos::builder`].
#[must_use = "a builder does nothing until `build()`"]
pub struct ChaosBuilder {
    seed: u64,
    error_rate: f64,
    latency_rate: f64,
    latency: (Duration, Duration),
    outages: Vec<Outage>,
    clock: Clock,
    memory: Option<(ManualProbe, u64, u64)>,
}

impl fmt::Debug for ChaosBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChaosBuilder")
            .field("seed", &self.seed)
            .field("error_rate", &self.error_rate)
            .field("latency_rate", &self.latency_rate)
            .field("latency", &self.latency)
            .field("outages", &self.outages)
            .finish()
    }
}

impl ChaosBuilder {
    /// The share of calls failed outside outages (default 0).
    pub fn error_rate(mut self, rate: f64) -> Self {
        self.error_rate = rate;
        self
    }

    /// Delays a share `rate` of calls by a time uniformly in `[min, max]`
    /// (default: none).
    pub fn latency(mut self, rate: f64, min: Duration, max: Duration) -> Self {
        self.latency_rate = rate;
        self.latency = (min, max);
        self
    }

    /// Every call fails from `start` after the chaos was built, for `length`.
    /// May be given several times.
    pub fn outage(mut self, start: Duration, length: Duration) -> Self {
        self.outages.push(Outage {
            from: start,
            until: start.saturating_add(length),
        });
        self
    }

    /// The clock outages are scheduled on (default the system clock; tests pass
    /// a manual one).
    pub fn clock(mut self, clock: impl Into<Clock>) -> Self {
        self.clock = clock.into();
        self
    }

    /// During outages, sets `probe`'s resident set to `during` bytes (and back
    /// to `normal` after), so a memory monitor reading the probe sees pressure
    /// rise with the outage. Applied when [`Chaos::tick`] or a call sees the
    /// outage start or end.
    pub fn memory_pressure(mut self, probe: ManualProbe, normal: u64, during: u64) -> Self {
        self.memory = Some((probe, normal, during));
        self
    }

    /// The fault injector.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `error_rate` or `latency.rate` (outside
    /// [0, 1]), `latency.min` (above `latency.max`) or `outage` (zero length).
    pub fn build(self) -> Result<Chaos, ConfigError> {
        for (field, rate) in [
            ("error_rate", self.error_rate),
            ("latency.rate", self.latency_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(ConfigError::new(field, rate, "must be in [0, 1]"));
            }
        }
        validate::ordered("latency.min", self.latency.0, "latency.max", self.latency.1)?;
        for o in &self.outages {
            validate::non_zero_duration("outage", o.until - o.from)?;
        }
        if let Some((probe, normal, _)) = &self.memory {
            probe.set_rss(*normal);
        }
        let origin = self.clock.now();
        Ok(Chaos {
            inner: Arc::new(Inner {
                rng: SplitMix64::new(self.seed),
                error_rate: self.error_rate,
                latency_rate: self.latency_rate,
                latency: self.latency,
                outages: self.outages,
                origin,
                clock: self.clock,
                memory: self.memory,
                in_outage: AtomicBool::new(false),
                enabled: AtomicBool::new(true),
                calls: AtomicU64::new(0),
                errors: AtomicU64::new(0),
                delays: AtomicU64::new(0),
            }),
        })
    }
}

struct Inner {
    rng: SplitMix64,
    error_rate: f64,
    latency_rate: f64,
    latency: (Duration, Duration),
    outages: Vec<Outage>,
    origin: Instant,
    clock: Clock,
    memory: Option<(ManualProbe, u64, u64)>,
    in_outage: AtomicBool,
    enabled: AtomicBool,
    calls: AtomicU64,
    errors: AtomicU64,
    delays: AtomicU64,
}

/// What a [`Chaos`] injected so far.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ChaosStats {
    /// Calls it decided on.
    pub calls: u64,
    /// Calls it failed.
    pub errors: u64,
    /// Calls it delayed.
    pub delays: u64,
    /// Whether an outage is in progress (as of the last call or tick).
    pub in_outage: bool,
}

/// A seeded fault injector: fails a share of calls, delays a share, and runs
/// scheduled outages (every call fails, memory pressure rises) on its clock.
/// The same seed, schedule and clock readings give the same faults.
///
/// Use it through [`call`](Self::call), the policy stage of the facade, or
/// `ChaosLayer` (with the `tower` feature).
#[derive(Clone)]
pub struct Chaos {
    inner: Arc<Inner>,
}

impl fmt::Debug for Chaos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chaos")
            .field("error_rate", &self.inner.error_rate)
            .field("latency_rate", &self.inner.latency_rate)
            .field("outages", &self.inner.outages)
            .field("enabled", &self.is_enabled())
            .finish()
    }
}

impl Chaos {
    /// A builder drawing from a generator seeded with `seed`.
    pub fn builder(seed: u64) -> ChaosBuilder {
        ChaosBuilder {
            seed,
            error_rate: 0.0,
            latency_rate: 0.0,
            latency: (Duration::ZERO, Duration::ZERO),
            outages: Vec::new(),
            clock: Clock::system(),
            memory: None,
        }
    }

    /// Switches injection on or off (on when built).
    pub fn set_enabled(&self, enabled: bool) {
        self.inner.enabled.store(enabled, Ordering::Relaxed);
    }

    /// Whether injection is on.
    pub fn is_enabled(&self) -> bool {
        self.inner.enabled.load(Ordering::Relaxed)
    }

    /// Whether an outage is scheduled now; applies the memory pressure of an
    /// outage starting or ending.
    pub fn tick(&self) -> bool {
        let inner = &*self.inner;
        let at = inner.clock.now().duration_since(inner.origin);
        let now = self.is_enabled() && inner.outages.iter().any(|o| o.from <= at && at < o.until);
        let was = inner.in_outage.swap(now, Ordering::AcqRel);
        if was != now
            && let Some((probe, normal, during)) = &inner.memory
        {
            probe.set_rss(if now { *during } else { *normal });
        }
        now
    }

    /// Decides the fault for one call.
    pub fn next_fault(&self) -> Fault {
        let inner = &*self.inner;
        let outage = self.tick();
        if !self.is_enabled() {
            return Fault::default();
        }
        inner.calls.fetch_add(1, Ordering::Relaxed);
        // Both draws are made whatever the outcome, so one decision does not
        // shift the sequence of the next.
        let delay_draw = inner.rng.next_f64();
        let error_draw = inner.rng.next_f64();
        let delay = (delay_draw < inner.latency_rate).then(|| {
            let (min, max) = inner.latency;
            let span = u64::try_from((max - min).as_nanos()).unwrap_or(u64::MAX);
            min + Duration::from_nanos(inner.rng.below(span.saturating_add(1)))
        });
        let error = outage || error_draw < inner.error_rate;
        if delay.is_some() {
            inner.delays.fetch_add(1, Ordering::Relaxed);
        }
        if error {
            inner.errors.fetch_add(1, Ordering::Relaxed);
        }
        Fault { delay, error }
    }

    /// Runs `fut` with a fault injected: waits the delay (tokio's timer), then
    /// fails with `error()` or awaits `fut`.
    ///
    /// # Errors
    ///
    /// `error()` when the fault is an error; otherwise `fut`'s own.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it holds only `fut` and a timer, both dropped with it.
    pub async fn call<T, E, Fut>(&self, error: impl FnOnce() -> E, fut: Fut) -> Result<T, E>
    where
        Fut: Future<Output = Result<T, E>>,
    {
        let fault = self.next_fault();
        if let Some(d) = fault.delay {
            tokio::time::sleep(d).await;
        }
        if fault.error {
            return Err(error());
        }
        fut.await
    }

    /// What it injected so far.
    pub fn stats(&self) -> ChaosStats {
        let inner = &*self.inner;
        ChaosStats {
            calls: inner.calls.load(Ordering::Relaxed),
            errors: inner.errors.load(Ordering::Relaxed),
            delays: inner.delays.load(Ordering::Relaxed),
            in_outage: inner.in_outage.load(Ordering::Relaxed),
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use heijunka_core::ManualClock;

    #[test]
    fn the_same_seed_gives_the_same_faults() {
        let faults = |seed| {
            let c = Chaos::builder(seed)
                .clock(ManualClock::new())
                .error_rate(0.3)
                .latency(0.5, Duration::from_millis(1), Duration::from_millis(9))
                .build()
                .unwrap();
            (0..200).map(|_| c.next_fault()).collect::<Vec<_>>()
        };
        assert_eq!(faults(1), faults(1));
        assert_ne!(faults(1), faults(2));
        let f = faults(3);
        let errors = f.iter().filter(|f| f.error).count();
        assert!((40..80).contains(&errors), "{errors}");
        assert!(
            f.iter()
                .filter_map(|f| f.delay)
                .all(|d| d >= Duration::from_millis(1) && d <= Duration::from_millis(9))
        );
    }

    #[test]
    fn outages_raise_memory_pressure_and_end() {
        let clock = ManualClock::new();
        let probe = ManualProbe::new(1 << 30);
        let c = Chaos::builder(0)
            .clock(&clock)
            .outage(Duration::from_secs(5), Duration::from_secs(5))
            .memory_pressure(probe.clone(), 1 << 20, 1 << 29)
            .build()
            .unwrap();
        let mut reader = probe.clone();
        use heijunka_memory::MemoryProbe;
        assert!(!c.next_fault().error);
        clock.advance(Duration::from_secs(5));
        assert!(c.next_fault().error);
        assert_eq!(reader.read().unwrap().rss, 1 << 29);
        c.set_enabled(false);
        assert_eq!(c.next_fault(), Fault::default());
        c.set_enabled(true);
        clock.advance(Duration::from_secs(5));
        assert!(!c.next_fault().error);
        assert_eq!(reader.read().unwrap().rss, 1 << 20);
    }

    #[test]
    fn bad_rates_name_the_field() {
        let e = Chaos::builder(0).error_rate(1.5).build().unwrap_err();
        assert_eq!(e.field(), "error_rate");
        let e = Chaos::builder(0)
            .latency(0.5, Duration::from_secs(2), Duration::from_secs(1))
            .build()
            .unwrap_err();
        assert_eq!(e.field(), "latency.min");
    }
}
