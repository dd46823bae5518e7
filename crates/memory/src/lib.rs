//! Memory-pressure awareness: how much memory the process uses against the limit that
//! really applies, as pressure levels the rest of the stack can act on.
//!
//! **Status: scaffold.** This crate exists so the workspace's layers are in place;
//! its API is being built (see the project's issue tracker). It will own:
//!
//! - sampling of process RSS, system memory and the effective cgroup v1/v2 limit
//!   (the smallest one up the hierarchy);
//! - a `MemoryMonitor` whose `pressure()` is one atomic load, with hysteresis;
//! - subscriptions and callbacks per level, and a `MemoryGate` that rejects work
//!   under pressure;
//! - optional allocation accounting per scope.
//!
//! It depends only on the crates below it in heijunka's layer diagram
//! (`ARCHITECTURE.md`): `heijunka-core`.
#![forbid(unsafe_code)]
