//! The system clock's coarse ticker runs only while a breaker is open. Its own
//! binary: no other test here opens a breaker on the system clock.
#![cfg(not(loom))]
#![cfg(not(miri))]

use std::time::{Duration, Instant as StdInstant};

use heijunka_breaker::{CircuitBreaker, SlidingWindowType, State};
use heijunka_core::Clock;

/// Waits (bounded) until `f` holds; false on time-out.
fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = StdInstant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    f()
}

#[test]
fn the_ticker_parks_once_no_breaker_is_open() {
    let b = CircuitBreaker::builder()
        .sliding_window(SlidingWindowType::CountBased, 2)
        .minimum_number_of_calls(2)
        .build()
        .unwrap();
    for _ in 0..2 {
        let _ = b.call(|| Err::<(), ()>(()));
    }
    assert_eq!(b.state(), State::Open);
    // Open: the ticker runs.
    let start = Clock::coarse_ticker_wakeups();
    assert!(
        eventually(Duration::from_secs(5), || Clock::coarse_ticker_wakeups()
            > start + 3),
        "the ticker runs while a breaker is open"
    );
    b.reset();
    assert_eq!(b.state(), State::Closed);
    // Closed: after at most one more wake-up, it parks.
    let mut last = Clock::coarse_ticker_wakeups();
    let parked = eventually(Duration::from_secs(5), || {
        std::thread::sleep(Duration::from_millis(30)); // 30 ticks
        let now = Clock::coarse_ticker_wakeups();
        let still = now == last;
        last = now;
        still
    });
    assert!(parked, "the ticker keeps waking with no breaker open");
    // Open again: it is unparked.
    for _ in 0..2 {
        let _ = b.call(|| Err::<(), ()>(()));
    }
    assert_eq!(b.state(), State::Open);
    let start = Clock::coarse_ticker_wakeups();
    assert!(
        eventually(Duration::from_secs(5), || Clock::coarse_ticker_wakeups()
            > start + 3),
        "the ticker is unparked when a breaker opens again"
    );
    b.reset();
}
