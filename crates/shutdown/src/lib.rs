//! Graceful shutdown: stop taking work, drain what is in flight within a deadline, stop
//! components in order, and report what happened.
//!
//! **Status: scaffold.** This crate exists so the workspace's layers are in place;
//! its API is being built (see the project's issue tracker). It will own:
//!
//! - a `Shutdown` coordinator triggered by OS signals (a second signal forces), by a
//!   call, or by a parent scope, with cheap cloneable tokens and child scopes;
//! - in-flight tracking: guards created with `try_enter()` that fail once draining has
//!   begun, and tracked tokio spawns;
//! - phases (running, draining, stopped or forced) with ordered, time-limited
//!   component hooks (last registered, first stopped);
//! - a `ShutdownReport`: clean or forced, time to drain, what was abandoned.
//!
//! It depends only on the crates below it in heijunka's layer diagram
//! (`ARCHITECTURE.md`): `heijunka-core`.
#![forbid(unsafe_code)]
