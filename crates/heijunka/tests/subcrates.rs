//! Smoke test: every re-export of the facade resolves to its crate.

use std::time::Duration;

// Each module re-export must resolve under its feature; a broken one fails to compile.
#[cfg(feature = "backpressure")]
use heijunka::backpressure as _;
#[cfg(feature = "breaker")]
use heijunka::breaker as _;
#[cfg(feature = "event-bus")]
use heijunka::event_bus as _;
#[cfg(feature = "memory")]
use heijunka::memory as _;
#[cfg(feature = "pool")]
use heijunka::pool as _;
use heijunka::prelude::*;
#[cfg(feature = "recycler")]
use heijunka::recycler as _;
#[cfg(feature = "shutdown")]
use heijunka::shutdown as _;

#[test]
fn core_is_reexported_and_prelude_works() {
    let manual = ManualClock::new();
    let clock: Clock = manual.clock();
    manual.advance(Duration::from_secs(1));
    assert_eq!(clock.now(), Instant::ZERO + Duration::from_secs(1));
    let err: ConfigError = heijunka::core::validate::ratio("x", 2.0).unwrap_err();
    assert_eq!(err.field(), "x");
    assert_eq!(Rejection::ShuttingDown.kind(), "shutting_down");
    assert_eq!(PressureLevel::default(), PressureLevel::Normal);
}
