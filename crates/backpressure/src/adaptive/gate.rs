//! The admission gate under [`AdaptiveLimit`](super::AdaptiveLimit): an in-flight
//! counter that only grows while it is below a published limit.
//!
//! Every operation is `SeqCst`: on x86 the read-modify-writes cost the same, and the
//! waiter protocol in the parent module relies on one total order between a
//! release (`leave`) and a waiter's registration. Proven by the loom models in the
//! parent module.

use heijunka_core::sync::CachePadded;
use heijunka_core::sync::atomic::{AtomicUsize, Ordering};

/// The limit of a closed gate; an open one is at least 1.
pub(super) const CLOSED: usize = 0;

pub(super) struct Gate {
    inflight: CachePadded<AtomicUsize>,
    limit: CachePadded<AtomicUsize>,
}

impl Gate {
    pub(super) fn new(limit: usize) -> Self {
        Self {
            inflight: CachePadded::new(AtomicUsize::new(0)),
            limit: CachePadded::new(AtomicUsize::new(limit)),
        }
    }

    /// Enters if fewer than the limit are inside: `Ok(inside, self included)`, or
    /// `Err(limit)`.
    #[inline]
    pub(super) fn try_enter(&self) -> Result<usize, usize> {
        let limit = self.limit.load(Ordering::SeqCst);
        let mut current = self.inflight.load(Ordering::SeqCst);
        loop {
            if current >= limit {
                return Err(limit);
            }
            match self.inflight.compare_exchange_weak(
                current,
                current + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return Ok(current + 1),
                Err(actual) => current = actual,
            }
        }
    }

    #[inline]
    pub(super) fn leave(&self) {
        self.inflight.fetch_sub(1, Ordering::SeqCst);
    }

    /// Publishes a new limit (at least 1) unless the gate is closed; returns the
    /// old one (0 when closed). A compare-and-swap that never overwrites
    /// [`CLOSED`], so `close` needs no lock shared with the callers of this.
    #[inline]
    pub(super) fn set_limit(&self, limit: usize) -> usize {
        debug_assert!(limit >= 1, "a limit of 0 means closed");
        let mut old = self.limit.load(Ordering::SeqCst);
        while old != limit && old != CLOSED {
            match self
                .limit
                .compare_exchange_weak(old, limit, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => break,
                Err(actual) => old = actual,
            }
        }
        old
    }

    /// Closes the gate for good: a limit of 0 admits nothing, and `set_limit`
    /// leaves it. Lock-free; safe to race with `set_limit`.
    pub(super) fn close(&self) {
        // A swap, not a store: the same on hardware, and loom (tokio-rs/loom#254)
        // lets a plain store fall between the read and the write of a racing
        // `set_limit` compare-and-swap, which no real execution can.
        self.limit.swap(CLOSED, Ordering::SeqCst);
    }

    #[inline]
    pub(super) fn is_closed(&self) -> bool {
        self.limit.load(Ordering::SeqCst) == CLOSED
    }

    #[inline]
    pub(super) fn limit(&self) -> usize {
        self.limit.load(Ordering::SeqCst)
    }

    #[inline]
    pub(super) fn in_flight(&self) -> usize {
        self.inflight.load(Ordering::SeqCst)
    }
}
