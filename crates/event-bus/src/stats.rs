//! Plain `Serialize` snapshots of topics, subscribers and handlers.

use std::time::Duration;

use heijunka_core::PressureLevel;
use serde::Serialize;

use crate::{Policy, SubscriberId};

/// Events that did not reach a subscriber's consumer, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DropCounts {
    /// Skipped at publish: the subscriber was at its reject mark (or full,
    /// under `try_publish`).
    pub full: u64,
    /// Skipped at publish: the subscriber stayed full for the whole publish
    /// timeout, or had timed out before and not received since.
    pub timed_out: u64,
    /// Skipped: the subscriber or topic closed during the publish (not
    /// produced since the second design, see [`SkipReason::Closed`](crate::SkipReason::Closed)).
    pub closed: u64,
    /// Below the subscriber's minimum version and not critical: counted at
    /// publish (or, for a subscriber that joined during that publish, when its
    /// consumer passes over the event).
    pub filtered: u64,
    /// Lost by a drop-oldest subscriber that fell behind by more than its
    /// buffer: counted when it next receives (or when a publisher laps it).
    /// An event passed over this way that its version filter would have
    /// refused counts here too, unless marked filtered at publish (it always
    /// is, but for a subscriber that joined during that publish).
    pub displaced: u64,
    /// Not read because the subscriber went away.
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
    /// Its buffer: how far behind it may fall before its policy acts.
    pub capacity: usize,
    /// Events waiting for it now.
    pub len: usize,
    /// Its pressure now: `len` against its watermarks.
    pub level: PressureLevel,
    /// Events its consumer received.
    pub received: u64,
    /// Events made available to it (not skipped at publish, not filtered):
    /// received, waiting, displaced or discarded.
    pub delivered: u64,
    /// Events skipped or lost, by reason.
    pub dropped: DropCounts,
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
    /// Events its ring holds.
    pub capacity: usize,
    /// Publishes that reached at least one subscriber.
    pub published: u64,
    /// Publishes that reached none (the event was handed back).
    pub undelivered: u64,
    /// Events made available to subscribers (one per subscriber per event),
    /// past subscribers included.
    pub delivered: u64,
    /// Drops over all subscribers, past ones included.
    pub dropped: DropCounts,
    /// Times the [critical-kinds](crate::Topic::critical_kinds) predicate
    /// panicked (caught; the event counted as not critical).
    pub predicate_panics: u64,
    /// The highest pressure among the subscribers' buffers now.
    pub pressure: PressureLevel,
    /// The current subscribers.
    pub subscribers: Vec<SubscriberStats>,
    /// The topic's handler runtimes: live ones, and the final counters of
    /// stopped ones.
    pub handlers: Vec<HandlerStats>,
}
