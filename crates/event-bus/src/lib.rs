//! An in-process event bus with bounded fan-out.
//!
//! **Status: scaffold.** This crate exists so the workspace's layers are in place;
//! its API is being built (see the project's issue tracker). It will own:
//!
//! - typed topics with per-subscriber bounded buffers and a publish policy (block,
//!   timeout, reject, drop-oldest);
//! - fan-out sharing one pooled event among subscribers;
//! - a handler runtime with concurrency limits and panic isolation;
//! - request/reply with timeout, routing-version filtering, dead letters, per-topic
//!   stats and watermarks.
//!
//! It depends only on the crates below it in heijunka's layer diagram
//! (`ARCHITECTURE.md`): `heijunka-core`, `heijunka-backpressure`, `heijunka-recycler`, `heijunka-pool` and `heijunka-shutdown`.
#![forbid(unsafe_code)]
