//! `BoundedQueue` watermark events, as an operator sees them: the seeds' table says
//! "queue 80 % full: log a warning", so reaching the warn mark logs one WARN, and a
//! queue hovering at a mark logs once, not once per item, until its length has
//! fallen below the mark by the hysteresis margin.
//!
//! Events are captured by a small `tracing` subscriber that counts them by level
//! and message, installed for the current thread only.
#![cfg(not(loom))]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use heijunka_backpressure::BoundedQueue;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// Counts this crate's events by (level, message).
#[derive(Default)]
struct Captured(Mutex<HashMap<(Level, String), usize>>);

impl Captured {
    fn count(&self, level: Level, message: &str) -> usize {
        let events = self.0.lock().unwrap();
        events
            .get(&(level, message.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    fn at(&self, level: Level) -> usize {
        let events = self.0.lock().unwrap();
        events
            .iter()
            .filter(|((l, _), _)| *l == level)
            .map(|(_, n)| n)
            .sum()
    }
}

struct Counting(Arc<Captured>);

struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

impl Subscriber for Counting {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let meta = event.metadata();
        if !meta.target().starts_with("heijunka_backpressure") {
            return;
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        *self
            .0
            .0
            .lock()
            .unwrap()
            .entry((*meta.level(), message.0))
            .or_default() += 1;
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

/// Runs `f` with this thread's events captured.
fn capture(f: impl FnOnce(&Captured)) {
    let captured = Arc::new(Captured::default());
    tracing::subscriber::with_default(Counting(Arc::clone(&captured)), || f(&captured));
}

const ELEVATED: &str = "queue pressure elevated";
const CRITICAL: &str = "queue pressure critical: rejecting new items";

#[test]
fn hovering_at_the_warn_mark_warns_once_until_it_falls_below_the_margin() {
    capture(|events| {
        // 100 slots: warn at 80, reject at 90; the default hysteresis (5 % of
        // capacity, 5 slots) means the warn mark counts again once the length
        // has fallen below 80 - 5 = 75.
        let q = BoundedQueue::new(100).unwrap();
        for i in 0..79 {
            q.try_push(i).unwrap();
        }
        assert_eq!(events.at(Level::WARN), 0, "79 % is below the warn mark");
        for i in 0..1000 {
            q.try_push(i).unwrap(); // 80
            q.try_pop().unwrap(); // 79
        }
        assert_eq!(
            events.count(Level::WARN, ELEVATED),
            1,
            "1000 items hovering at 80 %: exactly one WARN"
        );
        assert_eq!(events.at(Level::WARN), 1, "and nothing else at WARN");
        // Down to 75, within the margin, and up again: still the same crossing.
        while q.len() > 75 {
            q.try_pop().unwrap();
        }
        while q.len() < 80 {
            q.try_push(0).unwrap();
        }
        assert_eq!(
            events.count(Level::WARN, ELEVATED),
            1,
            "75 is within the margin"
        );
        // Below the margin (74), then up to the mark: a new crossing, a new WARN.
        while q.len() > 74 {
            q.try_pop().unwrap();
        }
        while q.len() < 80 {
            q.try_push(0).unwrap();
        }
        assert_eq!(events.count(Level::WARN, ELEVATED), 2, "a new crossing");
        let s = q.stats();
        assert_eq!(s.elevated_crossings, 2, "the stats count what was logged");
        assert_eq!(s.critical_crossings, 0);
    });
}

#[test]
fn hovering_at_the_reject_mark_warns_once() {
    capture(|events| {
        let q = BoundedQueue::new(100).unwrap(); // reject at 90, re-armed below 85
        for i in 0..89 {
            q.try_push(i).unwrap();
        }
        for i in 0..1000 {
            q.try_push(i).unwrap(); // 90
            assert!(q.try_push(i).is_err(), "rejected at the reject mark");
            q.try_pop().unwrap(); // 89
        }
        assert_eq!(events.count(Level::WARN, CRITICAL), 1);
        assert_eq!(events.count(Level::WARN, ELEVATED), 1);
        assert_eq!(events.at(Level::WARN), 2);
        let s = q.stats();
        assert_eq!((s.elevated_crossings, s.critical_crossings), (1, 1));
        assert_eq!(s.rejected, 1000, "each refused item is still counted");
        // Falling below 85 and back to 90 is a new critical crossing, but the
        // warn mark (80, re-armed below 75) was never cleared.
        while q.len() > 84 {
            q.try_pop().unwrap();
        }
        while q.len() < 90 {
            q.try_push(0).unwrap();
        }
        assert_eq!(events.count(Level::WARN, CRITICAL), 2);
        assert_eq!(events.count(Level::WARN, ELEVATED), 1);
    });
}

#[test]
fn the_way_down_is_logged_once_per_mark() {
    capture(|events| {
        let q = BoundedQueue::new(100).unwrap();
        for i in 0..90 {
            q.try_push(i).unwrap();
        }
        // Hover at the reject mark: nothing is logged on the way down per item.
        for _ in 0..100 {
            q.try_pop().unwrap();
            q.try_push(0).unwrap();
        }
        let quiet = |events: &Captured| events.at(Level::DEBUG) + events.at(Level::INFO);
        assert_eq!(quiet(events), 0, "hovering logs nothing on the way down");
        while q.try_pop().is_some() {}
        assert_eq!(
            quiet(events),
            2,
            "draining logs clearing the reject mark once and the warn mark once"
        );
    });
}

#[test]
fn without_hysteresis_every_crossing_counts() {
    capture(|events| {
        let q = BoundedQueue::builder(10).hysteresis(0.0).build().unwrap(); // warn 8
        for i in 0..7 {
            q.try_push(i).unwrap();
        }
        for i in 0..10 {
            q.try_push(i).unwrap(); // 8
            q.try_pop().unwrap(); // 7: below the mark, re-armed
        }
        assert_eq!(events.count(Level::WARN, ELEVATED), 10);
        assert_eq!(q.stats().elevated_crossings, 10);
    });
}

#[test]
fn hysteresis_is_validated() {
    let err = |h: f64| {
        BoundedQueue::<u8>::builder(10)
            .hysteresis(h)
            .build()
            .unwrap_err()
    };
    assert_eq!(
        err(0.8).to_string(),
        "hysteresis must be in [0, warn_at) = [0, 0.8), got 0.8"
    );
    assert_eq!(err(-0.1).field(), "hysteresis");
    assert_eq!(err(f64::NAN).field(), "hysteresis");
    let q = BoundedQueue::<u8>::builder(10)
        .warn_at(0.5)
        .hysteresis(0.3)
        .build()
        .unwrap();
    assert_eq!(q.stats().warn_at, 5);
}
