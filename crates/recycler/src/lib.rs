//! Object reuse: pooled values handed out as guards that reset and return them on
//! drop, even while unwinding.
//!
//! **Status: scaffold.** This crate exists so the workspace's layers are in place;
//! its API is being built (see the project's issue tracker). It will own:
//!
//! - `Recycler<T>` with a bounded idle capacity and per-thread caches;
//! - the `Recycle` reset trait for std collections, and a closure form;
//! - a shared, refcounted handle that returns the value when its last clone drops
//!   (zero-copy fan-out);
//! - debug checks: double return, foreign values and poisoning of returned memory;
//! - a per-type registry and stats.
//!
//! It depends only on the crates below it in heijunka's layer diagram
//! (`ARCHITECTURE.md`): `heijunka-core`.
#![forbid(unsafe_code)]
