//! The leaky bucket as a shaper: callers leave one interval apart in arrival order,
//! a bounded queue, honest retry-afters, and cancellation that gives the place back.
//! Time: a `ManualClock` (what the bucket reads) moved together with tokio's paused
//! clock (what its waiters sleep on).
#![cfg(not(loom))]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use heijunka_backpressure::{LeakyBucket, RateLimitError};
use heijunka_core::ManualClock;
use heijunka_core::cancel::{Outcome, Polled, cancel_points};

const MS: Duration = Duration::from_millis(1);

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

/// Moves the bucket's clock and tokio's paused clock forward together.
fn advance(rt: &tokio::runtime::Runtime, manual: &ManualClock, d: Duration) {
    manual.advance(d);
    rt.block_on(tokio::time::advance(d));
}

#[test]
fn a_burst_leaves_one_interval_apart_in_arrival_order() {
    let rt = paused_runtime();
    let manual = ManualClock::new();
    let bucket = Arc::new(LeakyBucket::new(10, 10.0, manual.clock()).unwrap());
    let left = Arc::new(Mutex::new(Vec::new()));
    let tasks: Vec<_> = (0..5)
        .map(|i| {
            let (bucket, left, manual) = (Arc::clone(&bucket), Arc::clone(&left), manual.clone());
            let task = rt.spawn(async move {
                bucket.acquire().await.unwrap();
                left.lock()
                    .unwrap()
                    .push((i, manual.now().as_nanos() / 1_000_000));
            });
            // Let it run up to its wait, so arrival order is spawn order.
            rt.block_on(tokio::task::yield_now());
            task
        })
        .collect();
    assert_eq!(bucket.waiting(), 4, "the first left at once, four wait");
    for _ in 0..600 {
        advance(&rt, &manual, MS);
    }
    for t in tasks {
        rt.block_on(t).unwrap();
    }
    // In arrival order, each at its slot (i · 100 ms), up to the timer's 1 ms
    // resolution late, and a late one does not push back the ones after it.
    let left = left.lock().unwrap().clone();
    assert_eq!(
        left.iter().map(|&(i, _)| i).collect::<Vec<_>>(),
        [0, 1, 2, 3, 4]
    );
    for &(i, ms) in &left {
        assert!(
            (i * 100..=i * 100 + 1).contains(&ms),
            "caller {i} left at {ms} ms: {left:?}"
        );
    }
    assert_eq!(bucket.waiting(), 0);
}

#[test]
fn beyond_its_queue_a_caller_is_refused_with_the_time_until_room() {
    let rt = paused_runtime();
    let _g = rt.enter();
    let manual = ManualClock::new();
    let bucket = LeakyBucket::new(2, 10.0, manual.clock()).unwrap();
    bucket.try_acquire().unwrap(); // leaves at 0; the next may leave at 100 ms
    let mut a = Polled::new(bucket.acquire());
    let mut b = Polled::new(bucket.acquire());
    assert!(!a.poll() && !b.poll());
    assert_eq!(bucket.waiting(), 2);
    // The queue is full: room opens when `a` leaves, 100 ms from now.
    let mut c = Polled::new(bucket.acquire());
    assert!(c.poll());
    assert_eq!(
        c.take_output().unwrap(),
        Err(RateLimitError::RateLimited {
            retry_after: 100 * MS
        })
    );
    // `try_acquire` would leave after a and b: 300 ms.
    assert_eq!(
        bucket.try_acquire(),
        Err(RateLimitError::RateLimited {
            retry_after: 300 * MS
        })
    );
    // Honest: 100 ms later `a` leaves and a newcomer gets a place.
    advance(&rt, &manual, 100 * MS);
    assert!(a.poll());
    let mut d = Polled::new(bucket.acquire());
    assert!(!d.poll(), "queued, not refused");
    // The head is due but has not run yet: the wait is one interval, not zero.
    advance(&rt, &manual, 100 * MS);
    let mut e = Polled::new(bucket.acquire());
    assert!(e.poll());
    assert_eq!(
        e.take_output().unwrap(),
        Err(RateLimitError::RateLimited {
            retry_after: 100 * MS
        })
    );
    assert!(b.poll());
}

#[test]
fn try_acquire_is_refused_with_a_wait_above_zero_and_conforms_after_it() {
    let manual = ManualClock::new();
    let bucket = LeakyBucket::new(1, 3.0, manual.clock()).unwrap();
    for step in 0..50_u64 {
        match bucket.try_acquire() {
            Ok(()) => {}
            Err(RateLimitError::RateLimited { retry_after }) => {
                assert!(retry_after > Duration::ZERO);
                manual.advance(retry_after);
                bucket.try_acquire().unwrap();
            }
            Err(other) => panic!("{other:?}"),
        }
        manual.advance(Duration::from_millis(step * 41 % 400));
    }
}

#[test]
fn bad_capacity_and_rate_are_config_errors() {
    let clock = ManualClock::new().clock();
    assert_eq!(
        LeakyBucket::new(0, 1.0, clock.clone()).unwrap_err().field(),
        "capacity"
    );
    assert_eq!(
        LeakyBucket::new(usize::MAX, 1.0, clock.clone())
            .unwrap_err()
            .field(),
        "capacity"
    );
    let err = LeakyBucket::new(1, f64::NAN, clock).unwrap_err();
    // The error names the argument the caller passed.
    assert_eq!(err.field(), "per_second");
    assert!(err.to_string().contains("NaN"), "{err}");
}

/// `acquire` dropped after k polls, for every k: a dropped waiter takes no
/// departure, leaves the queue, and the caller behind it moves up and takes the
/// dropped one's departure time (100 ms), so no slot is wasted. One that completed
/// took its slot (100 ms) and the next leaves an interval later.
#[test]
fn cancelled_acquire_gives_its_place_and_slot_to_the_next() {
    let covered = cancel_points(10, |k| {
        let rt = paused_runtime();
        let _g = rt.enter();
        let manual = ManualClock::new();
        let bucket = LeakyBucket::new(4, 10.0, manual.clock()).unwrap();
        bucket.try_acquire().unwrap(); // the next may leave at 100 ms
        let mut behind = Polled::new(bucket.acquire());
        let outcome = Polled::new(bucket.acquire()).drop_after_with(k, |i| {
            if i == 1 {
                assert!(!behind.poll(), "queued behind the one under test");
            }
            if i >= 1 {
                advance(&rt, &manual, 50 * MS);
            }
        });
        let behind_queued = behind.polls() > 0;
        let completed_at = manual.now();
        match &outcome {
            Outcome::Completed { output, .. } => {
                assert_eq!(*output, Ok(()));
                assert_eq!(completed_at.as_nanos(), 100_000_000, "left at its slot");
            }
            Outcome::Cancelled { .. } => {
                assert_eq!(
                    bucket.waiting(),
                    usize::from(behind_queued),
                    "place given up"
                );
                if behind_queued && k > 0 {
                    assert!(behind.wakes() >= 1, "the next was told to move up");
                }
            }
        }
        // Drive the caller behind to its departure.
        while !behind.poll() {
            advance(&rt, &manual, 10 * MS);
        }
        assert_eq!(behind.take_output().unwrap(), Ok(()));
        let expected = if outcome.is_completed() { 200 } else { 100 };
        assert_eq!(
            manual.now().as_nanos() / 1_000_000,
            expected,
            "k = {k}: the next left at the first free slot"
        );
        assert_eq!(bucket.waiting(), 0, "nothing left registered");
        outcome
    });
    assert_eq!(covered, 3, "enqueue, sleep, leave");
}

/// A waiter in the middle of the queue, dropped: the ones behind it move up a
/// place, and departures stay one interval apart.
#[test]
fn a_cancelled_waiter_in_the_middle_moves_the_rest_up() {
    let rt = paused_runtime();
    let _g = rt.enter();
    let manual = ManualClock::new();
    let bucket = LeakyBucket::new(3, 10.0, manual.clock()).unwrap();
    bucket.try_acquire().unwrap();
    let mut first = Polled::new(bucket.acquire());
    let mut middle = Polled::new(bucket.acquire());
    let mut last = Polled::new(bucket.acquire());
    assert!(!first.poll() && !middle.poll() && !last.poll());
    drop(middle);
    assert_eq!(bucket.waiting(), 2);
    let mut left = Vec::new();
    for _ in 0..40 {
        advance(&rt, &manual, 10 * MS);
        for (name, p) in [("first", &mut first), ("last", &mut last)] {
            if !p.is_completed() && p.poll() {
                left.push((name, manual.now().as_nanos() / 1_000_000));
            }
        }
    }
    assert_eq!(left, [("first", 100), ("last", 200)]);
}

#[test]
fn acquire_is_send_so_it_can_be_spawned() {
    fn assert_send<T: Send>(_: &T) {}
    let bucket = LeakyBucket::new(1, 1.0, ManualClock::new().clock()).unwrap();
    let future = bucket.acquire();
    assert_send(&future);
}

/// After a stall (the runtime did not poll the waiters for ten intervals), the
/// backlog is not released at once: the first caller leaves when polled, and the
/// rest keep leaving one interval apart, measured from then. A shaper that made up
/// for lost time would let ~10 callers out back to back, the very burst it exists
/// to smooth.
#[test]
fn after_a_stall_the_backlog_leaves_one_interval_apart_not_at_once() {
    let rt = paused_runtime();
    let _g = rt.enter();
    let manual = ManualClock::new();
    let interval = 10 * MS; // 100 per second
    let bucket = LeakyBucket::new(16, 100.0, manual.clock()).unwrap();
    bucket.try_acquire().unwrap(); // the next may leave at 10 ms
    let mut waiters: Vec<_> = (0..12).map(|_| Polled::new(bucket.acquire())).collect();
    for w in &mut waiters {
        assert!(!w.poll(), "queued");
    }
    // The stall: time passes, nobody is polled.
    advance(&rt, &manual, 10 * interval);
    let mut left = Vec::new();
    for _ in 0..400 {
        for w in &mut waiters {
            if !w.is_completed() && w.poll() {
                assert_eq!(w.take_output().unwrap(), Ok(()));
                left.push(manual.now().as_nanos() / 1_000_000);
            }
        }
        if left.len() == waiters.len() {
            break;
        }
        advance(&rt, &manual, MS);
    }
    assert_eq!(left.len(), waiters.len(), "all left: {left:?}");
    let gaps: Vec<_> = left.windows(2).map(|p| p[1] - p[0]).collect();
    assert!(
        gaps.iter().all(|&g| g >= 10),
        "departures (ms) {left:?}: gaps {gaps:?}, some under one interval (10 ms)"
    );
}

/// `acquire_timeout` leaves at its slot if that comes within the timeout, and
/// otherwise gives up at the timeout with `TimedOut`, its place given back.
#[test]
fn acquire_timeout_leaves_in_time_or_times_out_and_gives_its_place_back() {
    let rt = paused_runtime();
    let _g = rt.enter();
    let manual = ManualClock::new();
    let bucket = LeakyBucket::new(4, 10.0, manual.clock()).unwrap();
    bucket.try_acquire().unwrap(); // the next may leave at 100 ms
    let mut late = Polled::new(bucket.acquire_timeout(70 * MS));
    let mut in_time = Polled::new(bucket.acquire_timeout(500 * MS));
    assert!(!late.poll() && !in_time.poll());
    assert_eq!(bucket.waiting(), 2);
    advance(&rt, &manual, 70 * MS);
    assert!(late.poll());
    let err = late.take_output().unwrap().unwrap_err();
    assert_eq!(err, RateLimitError::TimedOut { after: 70 * MS });
    assert_eq!(
        err.reason(),
        Some(heijunka_core::Rejection::TimedOut { after: 70 * MS })
    );
    assert_eq!(bucket.waiting(), 1, "the timed-out caller left the queue");
    // The one behind moved up and takes the first free slot, 100 ms.
    advance(&rt, &manual, 30 * MS);
    assert!(in_time.poll());
    assert_eq!(in_time.take_output().unwrap(), Ok(()));
    assert_eq!(manual.now().as_nanos(), 100_000_000);
}

/// `acquire_timeout` dropped after k polls, for every k, with 40 ms passing
/// between polls and a 70 ms timeout against a slot at 100 ms: it times out on
/// its third poll; dropped earlier it is simply gone. Either way nothing is left
/// registered and the slot at 100 ms was not spent: a caller then leaves at once.
#[test]
fn cancelled_or_timed_out_acquire_timeout_leaves_nothing_behind() {
    let covered = cancel_points(10, |k| {
        let rt = paused_runtime();
        let _g = rt.enter();
        let manual = ManualClock::new();
        let bucket = LeakyBucket::new(4, 10.0, manual.clock()).unwrap();
        bucket.try_acquire().unwrap(); // the next may leave at 100 ms
        let outcome = Polled::new(bucket.acquire_timeout(70 * MS)).drop_after_with(k, |i| {
            if i >= 1 {
                advance(&rt, &manual, 40 * MS);
            }
        });
        if let Outcome::Completed { output, .. } = &outcome {
            assert_eq!(*output, Err(RateLimitError::TimedOut { after: 70 * MS }));
        }
        assert_eq!(bucket.waiting(), 0, "k = {k}: nothing left registered");
        let to_slot = Duration::from_millis(100)
            .saturating_sub(Duration::from_nanos(manual.now().as_nanos()));
        advance(&rt, &manual, to_slot);
        assert_eq!(
            bucket.try_acquire(),
            Ok(()),
            "k = {k}: the slot was not spent"
        );
        outcome
    });
    assert_eq!(covered, 3, "enqueue, sleep, time out");
}

/// Sub-millisecond intervals against tokio's 1 ms timer: the waiters due within a
/// tick leave together at the tick, so the rate holds on average (10,000 per
/// second: 40 callers in about 4 ms), and no tick lets out more than one tick's
/// worth (10) plus the one due at the tick itself.
#[test]
fn sub_millisecond_intervals_keep_their_rate_per_timer_tick() {
    let rt = paused_runtime();
    let _g = rt.enter();
    let manual = ManualClock::new();
    let bucket = LeakyBucket::new(64, 10_000.0, manual.clock()).unwrap();
    bucket.try_acquire().unwrap();
    let mut waiters: Vec<_> = (0..40).map(|_| Polled::new(bucket.acquire())).collect();
    for w in &mut waiters {
        assert!(!w.poll());
    }
    let mut per_tick = Vec::new();
    for _ in 0..10 {
        advance(&rt, &manual, MS);
        let before = waiters.iter().filter(|w| w.is_completed()).count();
        for w in &mut waiters {
            if !w.is_completed() {
                w.poll();
            }
        }
        per_tick.push(waiters.iter().filter(|w| w.is_completed()).count() - before);
    }
    assert!(
        waiters.iter().all(Polled::is_completed),
        "all 40 left within 10 ms: {per_tick:?}"
    );
    assert!(per_tick.iter().all(|&n| n <= 11), "{per_tick:?}");
    assert!(per_tick[..5].iter().sum::<usize>() == 40, "{per_tick:?}");
}
