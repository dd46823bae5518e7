//! `LevelledScheduler`: bursts in, the takt out, within one item per interval.
#![cfg(not(loom))]

use std::time::Duration;

use heijunka_backpressure::LevelledScheduler;
use heijunka_core::ManualClock;

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

#[tokio::test]
async fn release_waits_and_ends_after_close() {
    // The system clock and a takt of one per nanosecond: releases are always due,
    // so this exercises the waiting for items, never a sleep.
    let s = LevelledScheduler::builder(1_000_000, Duration::from_millis(1))
        .build()
        .unwrap();
    let (got, ()) = tokio::join!(s.release(), async {
        tokio::task::yield_now().await;
        s.try_push(0, 'x').unwrap();
    });
    assert_eq!(got, Some((0, 'x')));
    s.try_push(0, 'y').unwrap();
    s.close();
    assert_eq!(s.release().await, Some((0, 'y')));
    assert_eq!(s.release().await, None);
}
