//! The recycler's metrics (feature `metrics`; the table is in `docs/metrics.md`).
//!
//! The get and return paths of the per-thread caches do no atomic
//! read-modify-write, and a metric update would be one on a shared cache line:
//! so hits are counted in the thread's cache and published in batches (at most
//! [`HIT_BATCH`] at a time, and whenever the thread touches the shared store,
//! which is an atomic operation already, or its cache goes). Misses and discards
//! are cold paths (a factory call, a dropped value) and are published at once;
//! returns are not published at all.

use heijunka_core::metrics::Counter;

use crate::stats::Field;

/// The most hits a thread holds back before publishing them.
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(crate) const HIT_BATCH: u64 = 64;

/// One recycler's handles, registered once when it is built, labelled `name`.
/// Without the crate's `metrics` feature they are no-ops.
#[derive(Clone, Debug, Default)]
pub(crate) struct RecyclerMetrics {
    pub(crate) hits: Counter,
    misses: Counter,
    full: Counter,
    oversize: Counter,
    reset_panicked: Counter,
    evicted: Counter,
}

impl RecyclerMetrics {
    pub(crate) fn new(name: &str) -> Self {
        #[cfg(feature = "metrics")]
        {
            use heijunka_core::metrics::{Unit, counter};
            let l = &[("name", name)];
            let discarded = |reason: &str| {
                counter(
                    "heijunka_recycler_discarded_total",
                    Unit::Count,
                    "Values the recycler dropped instead of keeping, by reason.",
                    &[("name", name), ("reason", reason)],
                )
            };
            Self {
                hits: counter(
                    "heijunka_recycler_hits_total",
                    Unit::Count,
                    "Gets served with an idle value (published in per-thread batches).",
                    l,
                ),
                misses: counter(
                    "heijunka_recycler_misses_total",
                    Unit::Count,
                    "Gets that called the factory.",
                    l,
                ),
                full: discarded("full"),
                oversize: discarded("oversize"),
                reset_panicked: discarded("reset_panicked"),
                evicted: discarded("evicted"),
            }
        }
        #[cfg(not(feature = "metrics"))]
        {
            let _ = name;
            Self::default()
        }
    }

    /// Publishes the cold-path counts among `fields` (not hits, not returns).
    #[inline]
    pub(crate) fn emit(&self, fields: &[Field]) {
        for f in fields {
            match f {
                Field::Misses => &self.misses,
                Field::DroppedFull => &self.full,
                Field::DroppedOversize => &self.oversize,
                Field::ResetPanics => &self.reset_panicked,
                Field::Evicted => &self.evicted,
                _ => continue,
            }
            .increment(1);
        }
    }
}

/// Hits a thread's cache holds back (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct PendingHits {
    #[cfg(feature = "metrics")]
    n: u64,
    #[cfg(feature = "metrics")]
    hits: Counter,
}

#[cfg_attr(loom, allow(dead_code))] // per-thread caches are compiled out under loom
impl PendingHits {
    pub(crate) fn new(hits: &Counter) -> Self {
        #[cfg(feature = "metrics")]
        {
            Self {
                n: 0,
                hits: hits.clone(),
            }
        }
        #[cfg(not(feature = "metrics"))]
        {
            let _ = hits;
            Self::default()
        }
    }

    /// One hit; published now when `flush` (the get touched the shared store) or
    /// the batch is full.
    #[inline(always)]
    pub(crate) fn hit(&mut self, flush: bool) {
        #[cfg(feature = "metrics")]
        {
            self.n += 1;
            if flush || self.n >= HIT_BATCH {
                self.flush();
            }
        }
        #[cfg(not(feature = "metrics"))]
        let _ = flush;
    }

    /// Publishes what is held back.
    #[inline]
    pub(crate) fn flush(&mut self) {
        #[cfg(feature = "metrics")]
        if self.n > 0 {
            self.hits.increment(self.n);
            self.n = 0;
        }
    }
}

impl Drop for PendingHits {
    fn drop(&mut self) {
        self.flush();
    }
}
