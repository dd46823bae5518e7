//! Plain `Serialize` snapshots of topics, subscribers and handlers.

use std::time::Duration;

use heijunka_core::PressureLevel;
use serde::Serialize;

use crate::{Policy, SubscriberId};

/// Events that did not reach a subscriber's consumer, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DropCounts {
    /// Skipped: the buffer was at its reject mark.
    pub full: u64,
    /// Skipped: the buffer stayed full for the whole publish timeout.
    pub timed_out: u64,
    /// Skipped: the subscriber or topic closed during the publish.
    pub closed: u64,
    /// Skipped: below the subscriber's minimum version and not critical.
    pub filtered: u64,
    /// Buffered, then discarded by drop-oldest to make room for a newer event.
    pub displaced: u64,
    /// Buffered, then discarded because the subscriber went away.
    pub discarded: u64,
}

impl DropCounts {
    /// All drops together.
    pub fn total(&self) -> u64 {
        self.full + self.timed_out + self.closed + self.filtered + self.displaced + self.discarded
    }

    pub(crate) fn add(&mut self, o: &DropCounts) {
        self.full += o.full;
        self.timed_out += o.timed_out;
        self.closed += o.closed;
        self.filtered += o.filtered;
        self.displaced += o.displaced;
        self.discarded += o.discarded;
    }
}

/// A snapshot of one subscriber.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SubscriberStats {
    /// Its id.
    pub id: SubscriberId,
    /// Its name, if given.
    pub name: Option<String>,
    /// Its policy.
    pub policy: Policy,
    /// Its minimum accepted version.
    pub min_version: u64,
    /// Buffer capacity.
    pub capacity: usize,
    /// Events buffered now.
    pub len: usize,
    /// Buffer pressure now.
    pub level: PressureLevel,
    /// Events taken out by the consumer.
    pub received: u64,
    /// Events put into the buffer.
    pub delivered: u64,
    /// Events skipped or discarded, by reason.
    pub dropped: DropCounts,
    /// Times a publish found the buffer risen to its warn mark. Levels are
    /// observed at pushes: a buffer that drains below the mark and refills
    /// between two pushes counts once.
    pub elevated_crossings: u64,
    /// Times a publish found the buffer risen to its reject mark (observed as
    /// for `elevated_crossings`).
    pub critical_crossings: u64,
}

/// A snapshot of a handler runtime ([`Topic::handle`](crate::Topic::handle)).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HandlerStats {
    /// The most handlers running at once.
    pub concurrency: usize,
    /// Handler calls running now.
    pub running: usize,
    /// Events taken from the topic.
    pub received: u64,
    /// Events a handler call finished without error.
    pub succeeded: u64,
    /// Handler calls that returned an error.
    pub errors: u64,
    /// Handler calls that panicked (caught; the event still went back).
    pub panics: u64,
    /// Calls repeated after a failure.
    pub retries: u64,
    /// Events that failed every attempt and went to the dead-letter topic.
    pub dead_lettered: u64,
    /// Events that failed every attempt and were dropped: no dead-letter topic,
    /// or it did not take them.
    pub abandoned: u64,
    /// Time per event (every attempt), median.
    pub p50: Duration,
    /// 90th percentile.
    pub p90: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Mean.
    pub mean: Duration,
}

/// A snapshot of a topic.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TopicStats {
    /// The topic's name.
    pub name: String,
    /// The event type.
    pub event_type: &'static str,
    /// Whether it is closed.
    pub closed: bool,
    /// Publishes that reached at least one subscriber.
    pub published: u64,
    /// Publishes that reached none (the event was handed back).
    pub undelivered: u64,
    /// Events put into subscriber buffers (one per subscriber per event), past
    /// subscribers included.
    pub delivered: u64,
    /// Drops over all subscribers, past ones included.
    pub dropped: DropCounts,
    /// The highest pressure among the subscribers' buffers now.
    pub pressure: PressureLevel,
    /// The current subscribers.
    pub subscribers: Vec<SubscriberStats>,
    /// The topic's handler runtimes.
    pub handlers: Vec<HandlerStats>,
}
