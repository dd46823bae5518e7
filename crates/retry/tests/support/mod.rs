//! Helpers shared by the integration tests.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Counts its own drop in the shared counter: put one in a future (or a
/// closure) to observe, from outside, that it was dropped.
pub(crate) struct Guard(pub(crate) Arc<AtomicUsize>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}
