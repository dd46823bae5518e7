//! The errors of sampling and of starting background work.

use std::io;

/// A sample could not be taken. The monitor keeps its last level and reports the
/// failure in [`MemoryStats::sample_errors`](crate::MemoryStats::sample_errors).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SampleError {
    /// The process's resident memory could not be read.
    #[error("could not read the process's resident memory: {reason}")]
    Rss {
        /// What failed.
        reason: &'static str,
    },
    /// No limit is known to measure against: no cgroup limit, no configured limit,
    /// and the system total read as 0.
    #[error(
        "no memory limit is known: no cgroup limit, no configured limit, and a system total of 0"
    )]
    NoLimit,
}

/// A background thread (the sampler, or the thread that runs level callbacks) could
/// not be started.
#[derive(Debug, thiserror::Error)]
#[error("could not start the {what} thread: {source}")]
pub struct SpawnError {
    what: &'static str,
    #[source]
    source: io::Error,
}

impl SpawnError {
    pub(crate) fn new(what: &'static str, source: io::Error) -> Self {
        Self { what, source }
    }

    /// Which thread: `"sampler"` or `"callback"`.
    pub fn what(&self) -> &'static str {
        self.what
    }
}
