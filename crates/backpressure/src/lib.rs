//! Admission control: decide at once whether work may start, and hand it back with a
//! reason when it may not.
//!
//! **Status: scaffold.** This crate exists so the workspace's layers are in place;
//! its API is being built (see the project's issue tracker). It will own:
//!
//! - concurrency limits (weighted, try / timeout / async / blocking acquire, owned
//!   permits);
//! - bounded queues with warn / reject / full watermarks;
//! - rate limiters behind one trait (GCRA, leaky bucket, fixed and sliding windows)
//!   and keyed per-client limiters with a bounded key set;
//! - adaptive concurrency limits (AIMD, Vegas, Gradient2), fair and priority
//!   scheduling, batching, a levelled (takt-time) scheduler and a load shedder.
//!
//! It depends only on the crates below it in heijunka's layer diagram
//! (`ARCHITECTURE.md`): `heijunka-core`.
#![forbid(unsafe_code)]
