//! Circuit breakers: stop calling a failing dependency, probe it, and come back when it
//! recovers, with resilience4j's state machine and configuration.
//!
//! **Status: scaffold.** This crate exists so the workspace's layers are in place;
//! its API is being built (see the project's issue tracker). It will own:
//!
//! - closed / open / half-open states plus forced-open and disabled;
//! - count- and time-based sliding windows, failure-rate, slow-call-rate and absolute
//!   failure-count thresholds, minimum calls;
//! - a growing, jittered wait in open and exactly N half-open probes;
//! - sync, async and permission-guard APIs, state-change events, stats, and a
//!   registry of breakers per dependency.
//!
//! It depends only on the crates below it in heijunka's layer diagram
//! (`ARCHITECTURE.md`): `heijunka-core`.
#![forbid(unsafe_code)]
