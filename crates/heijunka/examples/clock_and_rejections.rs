//! The shared vocabulary every heijunka part speaks: an injectable clock, validated
//! configuration and typed rejections.
//!
//! Run with `cargo run -p heijunka --example clock_and_rejections`.

use std::time::Duration;

use heijunka::core::validate;
use heijunka::prelude::*;

/// A toy fixed-window limiter written against the core clock, to show how a
/// time-dependent rule is driven by a manual clock instead of sleeps.
struct Window {
    clock: Clock,
    limit: u32,
    period: Duration,
    started: Instant,
    used: u32,
}

impl Window {
    fn new(clock: Clock, limit: u32, period: Duration) -> Result<Self, ConfigError> {
        validate::at_least("limit", limit, 1)?;
        validate::non_zero_duration("period", period)?;
        let started = clock.now();
        Ok(Self {
            clock,
            limit,
            period,
            started,
            used: 0,
        })
    }

    fn check(&mut self) -> Result<(), Rejection> {
        let now = self.clock.now();
        if now - self.started >= self.period {
            self.started = now;
            self.used = 0;
        }
        if self.used < self.limit {
            self.used += 1;
            Ok(())
        } else {
            Err(Rejection::RateLimited {
                retry_after: self.period - (now - self.started),
            })
        }
    }
}

fn main() {
    println!("== configuration errors name the field and the value");
    for (limit, period) in [(0, Duration::from_secs(1)), (5, Duration::ZERO)] {
        match Window::new(Clock::system(), limit, period) {
            Ok(_) => println!("  limit={limit} period={period:?}: ok"),
            Err(e) => println!("  limit={limit} period={period:?}: {e}"),
        }
    }

    println!("== a manual clock drives time-dependent rules without sleeping");
    let manual = ManualClock::new();
    let mut window =
        Window::new(manual.clock(), 3, Duration::from_secs(1)).expect("valid configuration");
    for step in 0..5 {
        match window.check() {
            Ok(()) => println!("  t={:?} request {step}: admitted", manual.now()),
            Err(no) => println!("  t={:?} request {step}: {no}", manual.now()),
        }
        manual.advance(Duration::from_millis(100));
    }
    manual.advance(Duration::from_secs(1));
    println!(
        "  t={:?} after the window rolls: {:?}",
        manual.now(),
        window.check()
    );

    println!("== every rejection reason, as a caller sees it");
    let reasons = [
        Rejection::AtCapacity { limit: 64 },
        Rejection::QueueFull { capacity: 1024 },
        Rejection::CircuitOpen {
            retry_after: Some(Duration::from_secs(30)),
        },
        Rejection::MemoryPressure {
            level: PressureLevel::Critical,
        },
        Rejection::TimedOut {
            after: Duration::from_millis(250),
        },
        Rejection::ShuttingDown,
    ];
    for r in reasons {
        println!("  {:<16} transient={:<5} {r}", r.kind(), r.is_transient());
    }

    let clock = Clock::system();
    let start = clock.now();
    let mut spins = 0_u64;
    while clock.elapsed(start) < Duration::from_millis(1) {
        spins += 1;
    }
    println!("== the system clock: {spins} reads of now() in 1 ms");
}
