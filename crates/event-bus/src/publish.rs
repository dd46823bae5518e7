//! What a publish did: [`PublishReport`], [`SkipReason`], [`SubscriberId`].

use std::fmt;

use serde::Serialize;

/// A subscriber's number within its topic, unique for the topic's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct SubscriberId(pub(crate) u64);

impl SubscriberId {
    /// The number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for SubscriberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "subscriber#{}", self.0)
    }
}

/// Why a subscriber did not get an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[non_exhaustive]
pub enum SkipReason {
    /// The event's version is below the subscriber's minimum and it is not
    /// critical.
    Filtered,
    /// The buffer was at its reject mark (reject policy, or any policy under
    /// [`try_publish`](crate::Topic::try_publish)).
    Full,
    /// The buffer stayed full for the whole timeout.
    TimedOut,
    /// The subscriber (or the topic) closed meanwhile. Not produced since the
    /// bus's second design: a subscriber that stopped taking events is not
    /// offered new ones, and a closed topic refuses the publish
    /// ([`PublishError::Closed`](crate::PublishError::Closed)).
    Closed,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Filtered => "filtered by version",
            Self::Full => "buffer full",
            Self::TimedOut => "timed out",
            Self::Closed => "closed",
        })
    }
}

/// What one publish did: to how many subscribers the event was made
/// available, and which were skipped and why.
///
/// The skips are known on the publisher's slow path (a subscriber at its
/// buffer, or an event some subscriber's version filter refuses); a publish
/// on the fast path reports none, because there are none. What happens to an
/// event later (a drop-oldest subscriber falling behind, a subscription
/// dropped unread) is counted in the topic's stats, not here.
///
/// Building a report allocates nothing unless a subscriber is skipped.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PublishReport {
    /// Subscribers the event was made available to.
    pub delivered: usize,
    /// Subscribers that did not get it, with the reason.
    pub skipped: Vec<(SubscriberId, SkipReason)>,
}

impl PublishReport {
    /// Whether every subscriber got the event.
    pub fn is_complete(&self) -> bool {
        self.skipped.is_empty()
    }

    /// How many subscribers were skipped for `reason`.
    pub fn skipped_for(&self, reason: SkipReason) -> usize {
        self.skipped.iter().filter(|(_, r)| *r == reason).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_counts_skips_by_reason() {
        let report = PublishReport {
            delivered: 1,
            skipped: vec![
                (SubscriberId(1), SkipReason::Full),
                (SubscriberId(2), SkipReason::Filtered),
                (SubscriberId(3), SkipReason::Full),
            ],
        };
        assert!(!report.is_complete());
        assert_eq!(report.skipped_for(SkipReason::Full), 2);
        assert_eq!(SubscriberId(2).to_string(), "subscriber#2");
        assert_eq!(SubscriberId(2).get(), 2);
    }
}
