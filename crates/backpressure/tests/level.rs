//! `LevelledScheduler`: bursts in, the takt out, within one item per interval.
#![cfg(not(loom))]

use std::time::Duration;

use heijunka_backpressure::{ClassPushError, LevelledScheduler};
use heijunka_core::cancel::{Outcome, Polled, cancel_points};
use heijunka_core::{ManualClock, Rejection};

/// Releases everything due now; returns how many.
fn drain_due<T>(s: &LevelledScheduler<T>) -> u32 {
    std::iter::from_fn(|| s.try_release()).map(|_| 1).sum()
}

/// The defect: with a backlog and a caller that polls once per interval, one item
/// came out per poll instead of the takt. Backlog of 100, takt 10 per interval:
/// after the first poll, every poll releases 10.
#[test]
fn polled_once_per_interval_it_releases_the_takt_per_poll() {
    let clock = ManualClock::new();
    let interval = Duration::from_millis(100);
    let s = LevelledScheduler::builder(10, interval)
        .clock(clock.clock())
        .build()
        .unwrap();
    for i in 0..100 {
        s.try_push(0, i).unwrap();
    }
    let mut per_poll = Vec::new();
    for _ in 0..11 {
        per_poll.push(drain_due(&s));
        clock.advance(interval);
    }
    // The first poll releases the first item; then 10 per interval until the
    // backlog of 100 is gone.
    assert_eq!(per_poll, [1, 10, 10, 10, 10, 10, 10, 10, 10, 10, 9]);
}

/// Idle for 10 intervals, then a backlog: no burst beyond one interval's worth
/// (in fact none at all: credit accrues only while items wait).
#[test]
fn idle_time_banks_no_burst_then_the_takt_resumes() {
    let clock = ManualClock::new();
    let interval = Duration::from_millis(100);
    let s = LevelledScheduler::builder(10, interval)
        .clock(clock.clock())
        .build()
        .unwrap();
    s.try_push(0, 0).unwrap();
    assert_eq!(drain_due(&s), 1);
    clock.advance(interval * 10);
    for i in 0..100 {
        s.try_push(0, i).unwrap();
    }
    let burst = drain_due(&s);
    assert!(burst <= 10, "a burst of {burst} after idling");
    assert_eq!(burst, 1, "idle time banked credit");
    assert_eq!(s.next_due(), Duration::from_millis(10));
    clock.advance(interval);
    assert_eq!(drain_due(&s), 10);
}

/// A caller that polls less than once per interval catches up at most one
/// interval's worth per poll: the takt is a rate, not a debt.
#[test]
fn catching_up_is_bounded_by_one_interval() {
    let clock = ManualClock::new();
    let interval = Duration::from_millis(100);
    let s = LevelledScheduler::builder(10, interval)
        .clock(clock.clock())
        .build()
        .unwrap();
    for i in 0..1_000 {
        s.try_push(0, i).unwrap();
    }
    assert_eq!(drain_due(&s), 1);
    for gap in [2, 5, 50] {
        clock.advance(interval * gap);
        assert_eq!(drain_due(&s), 10, "after a gap of {gap} intervals");
        // ...and the schedule continues from there at the takt.
        clock.advance(interval / 2);
        assert_eq!(drain_due(&s), 5);
    }
}

/// Against a reference model: with a standing backlog and polls at random gaps of
/// at most one interval (a seeded xorshift), the count released by time `t` is
/// exactly the number of release times in `[0, t]`: `floor(t * takt / interval) + 1`.
#[cfg_attr(miri, ignore)] // too slow under miri
#[test]
fn any_polling_cadence_within_an_interval_keeps_the_exact_schedule() {
    let mut seed = 0x2545_F491_4F6C_DD1D_u64;
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for (takt, interval_ms) in [(10_u32, 100_u64), (3, 100), (7, 1_000), (1, 10)] {
        let clock = ManualClock::new();
        let interval = Duration::from_millis(interval_ms);
        let s = LevelledScheduler::builder(takt, interval)
            .class_capacity(100_000)
            .clock(clock.clock())
            .build()
            .unwrap();
        for i in 0..100_000 {
            s.try_push(0, i).unwrap();
        }
        let mut released = 0_u64;
        let mut t_us = 0_u64;
        for _ in 0..2_000 {
            released += u64::from(drain_due(&s));
            let expected = t_us * u64::from(takt) / (interval_ms * 1_000) + 1;
            assert_eq!(
                released, expected,
                "takt {takt} per {interval_ms} ms, at {t_us} us"
            );
            let gap = rand(interval_ms * 1_000 + 1);
            clock.advance(Duration::from_micros(gap));
            t_us += gap;
        }
    }
}

#[test]
fn a_class_out_of_range_is_an_error_with_the_item_back() {
    let s = LevelledScheduler::builder(1, Duration::from_millis(1))
        .classes(2)
        .build()
        .unwrap();
    let err = s.try_push(2, "job").unwrap_err();
    assert!(
        matches!(
            err,
            ClassPushError::UnknownClass {
                class: 2,
                classes: 2,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.into_inner(), "job");
    assert!(s.is_empty());
    assert_eq!(s.stats().rejected, 0);
    s.close();
    assert_eq!(
        s.try_push(0, "late").unwrap_err().reason(),
        Some(Rejection::ShuttingDown)
    );
}

#[test]
fn a_takt_finer_than_a_nanosecond_is_a_config_error() {
    let err = LevelledScheduler::<u8>::builder(1_000, Duration::from_nanos(10))
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "takt");
    assert_eq!(err.value(), "1000");
    assert!(err.to_string().contains("(10)"), "{err}");
}

/// 10 items per 100 ms, fed a burst of 120 items (3 work types) every second for a
/// minute, polled every millisecond: every 100 ms interval releases 10 ± 1.
#[cfg_attr(miri, ignore)] // too slow under miri
#[test]
fn output_rate_equals_the_takt_under_bursts() {
    let clock = ManualClock::new();
    let takt = 10;
    let interval = Duration::from_millis(100);
    let s = LevelledScheduler::builder(takt, interval)
        .classes(3)
        .class_capacity(2_000)
        .clock(clock.clock())
        .build()
        .unwrap();
    let mut per_interval = vec![0_u32; 600];
    let mut per_class = [0_u64; 3];
    let mut classes_in_interval = vec![[false; 3]; 600];
    for ms in 0..60_000_u64 {
        if ms.is_multiple_of(1_000) {
            for i in 0..120_u64 {
                // A burst of each type in turn: 40 of type 0, then 40 of type 1, ...
                s.try_push((i / 40) as usize, i).unwrap();
            }
        }
        while let Some((class, _)) = s.try_release() {
            let slot = (ms / 100) as usize;
            per_interval[slot] += 1;
            per_class[class] += 1;
            classes_in_interval[slot][class] = true;
        }
        clock.advance(Duration::from_millis(1));
    }
    for (i, &n) in per_interval.iter().enumerate() {
        assert!(
            n.abs_diff(takt) <= 1,
            "interval {i}: released {n}, takt {takt}; all: {per_interval:?}"
        );
    }
    let total: u32 = per_interval.iter().sum();
    assert!(total.abs_diff(6_000) <= 1, "{total}");
    // The mix: every type is released in every interval while all are backlogged,
    // not in long runs of one.
    assert!(
        classes_in_interval.iter().all(|c| c.iter().all(|&b| b)),
        "a type missed an interval"
    );
    assert!(per_class.iter().all(|&n| n >= 1_900), "{per_class:?}");
}

#[cfg_attr(miri, ignore)] // too slow under miri
#[test]
fn late_polls_keep_the_long_run_rate() {
    let clock = ManualClock::new();
    let s = LevelledScheduler::builder(4, Duration::from_millis(100))
        .clock(clock.clock())
        .build()
        .unwrap();
    for i in 0..1_000 {
        s.try_push(0, i).unwrap();
    }
    // Polled every 7 ms (never on a release time): 4 per 100 ms still.
    let mut released = 0;
    for _ in 0..(10_000 / 7) {
        while s.try_release().is_some() {
            released += 1;
        }
        clock.advance(Duration::from_millis(7));
    }
    let elapsed_ms = (10_000 / 7) * 7;
    let expected = elapsed_ms * 4 / 100;
    assert!(
        (released as i64 - expected as i64).abs() <= 1,
        "{released} vs {expected}"
    );
}

#[tokio::test(start_paused = true)]
async fn release_waits_and_ends_after_close() {
    // A manual clock and tokio's paused time: nothing here depends on the
    // machine's clock. Each await is bounded by a (paused, so instant) hour: a
    // release that never comes fails the test instead of hanging it.
    let bound = Duration::from_secs(3_600);
    let step = Duration::from_millis(10);
    let clock = ManualClock::new();
    let s = LevelledScheduler::builder(1, step)
        .clock(clock.clock())
        .build()
        .unwrap();
    // Waits for an item; the first release is due at once.
    let (got, ()) = tokio::join!(tokio::time::timeout(bound, s.release()), async {
        tokio::task::yield_now().await;
        s.try_push(0, 'x').unwrap();
    });
    assert_eq!(got.expect("released"), Some((0, 'x')));
    s.try_push(0, 'y').unwrap();
    s.close();
    // Closed, but what is buffered is still released, on its takt.
    assert_eq!(s.try_release(), None, "released before its time");
    clock.advance(step);
    let got = tokio::time::timeout(bound, s.release()).await;
    assert_eq!(got.expect("released"), Some((0, 'y')));
    let got = tokio::time::timeout(bound, s.release()).await;
    assert_eq!(got.expect("ends after close"), None);
}

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

/// `release` dropped at every point: waiting for an item (poll 0), waiting for the
/// item's release time (poll 1, after a push), released (poll 2, after the manual
/// clock and tokio's paused time both advance to the release time). A dropped
/// call takes nothing: the item is still buffered, nothing counted as released,
/// and the schedule is unchanged (a later `try_release` gets it on time).
#[test]
fn release_cancelled_at_every_point_takes_nothing() {
    let rt = paused_runtime();
    let _g = rt.enter();
    let step = Duration::from_millis(10);
    let covered = cancel_points(10, |k| {
        let clock = ManualClock::new();
        let s = LevelledScheduler::builder(1, step)
            .clock(clock.clock())
            .build()
            .unwrap();
        // One release already made: the next is due in 10 ms.
        s.try_push(0, 'a').unwrap();
        assert_eq!(s.try_release(), Some((0, 'a')));
        let mut pushed = false;
        let outcome = Polled::new(s.release()).drop_after_with(k, |i| match i {
            1 => {
                s.try_push(0, 'b').unwrap();
                pushed = true;
            }
            2 => {
                clock.advance(step);
                rt.block_on(tokio::time::advance(step));
            }
            _ => {}
        });
        match &outcome {
            Outcome::Completed { output, .. } => {
                assert_eq!(*output, Some((0, 'b')));
                assert_eq!(s.stats().released, 2);
            }
            Outcome::Cancelled { .. } => {
                assert_eq!(s.len(), usize::from(pushed), "k {k}");
                assert_eq!(s.stats().released, 1);
                if pushed {
                    assert_eq!(s.next_due(), step, "the schedule moved");
                    clock.advance(step);
                    assert_eq!(s.try_release(), Some((0, 'b')));
                }
            }
        }
        outcome
    });
    assert_eq!(covered, 3);
}

/// A `release` woken for an item and dropped before it ran passes the wake-up on.
#[test]
fn a_dropped_woken_release_passes_the_wake_up_on() {
    let rt = paused_runtime();
    let _g = rt.enter();
    let clock = ManualClock::new();
    let s = LevelledScheduler::builder(1, Duration::from_millis(10))
        .clock(clock.clock())
        .build()
        .unwrap();
    let mut first = Polled::new(s.release());
    let mut second = Polled::new(s.release());
    assert!(!first.poll());
    assert!(!second.poll());
    s.try_push(0, 1).unwrap();
    assert_eq!(first.wakes(), 1);
    drop(first);
    assert_eq!(
        second.wakes(),
        1,
        "the wake-up was lost with the dropped waiter"
    );
    assert!(second.poll());
    assert_eq!(second.take_output(), Some(Some((0, 1))));
}
