//! In-flight guards.

use std::fmt;
use std::sync::Arc;

use crate::Shutdown;
use crate::shutdown::Inner;

/// Marks one unit of work in flight; dropping it (also while unwinding) marks it
/// done. Made by [`Shutdown::try_enter`].
///
/// Borrows the coordinator; [`OwnedInFlight`] is the `'static` form for moving into
/// tasks and threads.
#[must_use = "the work counts as in flight only while the guard is alive"]
pub struct InFlight<'a> {
    pub(crate) shutdown: &'a Shutdown,
}

impl Drop for InFlight<'_> {
    #[inline]
    fn drop(&mut self) {
        self.shutdown.inner.exit();
    }
}

impl fmt::Debug for InFlight<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InFlight").finish_non_exhaustive()
    }
}

/// An owned [`InFlight`] guard: `Send + 'static`, for moving into a spawned task or
/// thread. Made by [`Shutdown::try_enter_owned`].
#[must_use = "the work counts as in flight only while the guard is alive"]
pub struct OwnedInFlight {
    pub(crate) inner: Arc<Inner>,
}

impl Drop for OwnedInFlight {
    #[inline]
    fn drop(&mut self) {
        self.inner.exit();
    }
}

impl fmt::Debug for OwnedInFlight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnedInFlight").finish_non_exhaustive()
    }
}
