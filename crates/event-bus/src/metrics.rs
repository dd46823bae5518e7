//! The event bus's metrics (feature `metrics`; the table is in `docs/metrics.md`).

use heijunka_core::metrics::Counter;

use crate::SkipReason;

/// One topic's handles, registered once when the topic is created, labelled
/// `topic`. Without the crate's `metrics` feature they are no-ops.
#[derive(Clone, Debug, Default)]
pub(crate) struct TopicMetrics {
    /// Publishes that reached at least one subscriber (the topic's `published`).
    pub(crate) published: Counter,
    /// Publishes that reached none: the event was handed back.
    pub(crate) undelivered: Counter,
    /// Events made available to subscribers (one per subscriber per event).
    pub(crate) delivered: Counter,
    pub(crate) dropped: DropMetrics,
}

/// `heijunka_bus_dropped_total{topic, reason}`, one handle per reason (the
/// reasons of [`DropCounts`](crate::DropCounts)).
#[derive(Clone, Debug, Default)]
pub(crate) struct DropMetrics {
    pub(crate) full: Counter,
    pub(crate) timed_out: Counter,
    pub(crate) closed: Counter,
    pub(crate) filtered: Counter,
    pub(crate) displaced: Counter,
    pub(crate) discarded: Counter,
}

impl DropMetrics {
    #[inline]
    pub(crate) fn skipped(&self, reason: SkipReason, n: u64) {
        match reason {
            SkipReason::Filtered => &self.filtered,
            SkipReason::Full => &self.full,
            SkipReason::TimedOut => &self.timed_out,
            SkipReason::Closed => &self.closed,
        }
        .increment(n);
    }
}

impl TopicMetrics {
    pub(crate) fn new(topic: &str) -> Self {
        #[cfg(feature = "metrics")]
        {
            use heijunka_core::metrics::{Unit, counter};
            let l = &[("topic", topic)];
            let dropped = |reason: &str| {
                counter(
                    "heijunka_bus_dropped_total",
                    Unit::Count,
                    "Events that did not reach a subscriber's consumer, by reason.",
                    &[("topic", topic), ("reason", reason)],
                )
            };
            Self {
                published: counter(
                    "heijunka_bus_published_total",
                    Unit::Count,
                    "Publishes that reached at least one subscriber.",
                    l,
                ),
                undelivered: counter(
                    "heijunka_bus_undelivered_total",
                    Unit::Count,
                    "Publishes that reached no subscriber (the event was handed back).",
                    l,
                ),
                delivered: counter(
                    "heijunka_bus_delivered_total",
                    Unit::Count,
                    "Events made available to subscribers (one per subscriber per event).",
                    l,
                ),
                dropped: DropMetrics {
                    full: dropped("full"),
                    timed_out: dropped("timed_out"),
                    closed: dropped("closed"),
                    filtered: dropped("filtered"),
                    displaced: dropped("displaced"),
                    discarded: dropped("discarded"),
                },
            }
        }
        #[cfg(not(feature = "metrics"))]
        {
            let _ = topic;
            Self::default()
        }
    }
}
