//! Worker pools that reject instead of queueing without bound.
//!
//! **Status: scaffold.** This crate exists so the workspace's layers are in place;
//! its API is being built (see the project's issue tracker). It will own:
//!
//! - a thread pool for blocking work with a bounded queue, try-submit rejection,
//!   caught panics and work stealing;
//! - a task pool bounding concurrent futures on tokio;
//! - structured task groups (wait for all, aggregate errors and panics, fail-fast);
//! - a dispatcher routing messages to handlers by least load or key affinity;
//! - live stats with latency percentiles and graceful shutdown.
//!
//! It depends only on the crates below it in heijunka's layer diagram
//! (`ARCHITECTURE.md`): `heijunka-core`, `heijunka-backpressure` (admission) and `heijunka-shutdown` (drain).
#![forbid(unsafe_code)]
