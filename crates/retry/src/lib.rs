//! Resilience patterns for calls to a dependency, built so that they cannot
//! turn one failing dependency into a storm: retries with backoff, hedging,
//! fallback and request coalescing, all drawing extra attempts from **one
//! [`Budget`] per dependency**, and all honouring the request's
//! [`Criticality`](heijunka_core::Criticality) and deadline.
//!
//! - [`Retry`]: max attempts; constant, exponential or jittered [`Backoff`]
//!   (AWS's full, equal and decorrelated jitter); which outcomes are
//!   [`Retryable`], per type or as a breaker classifies them; idempotency
//!   opt-in; a `Retry-After` the dependency sent; no attempt that could not
//!   finish before the deadline.
//! - [`Hedge`]: after a delay (fixed, or the dependency's observed p90/p95),
//!   up to N extra attempts; the first success wins and the rest are
//!   cancelled.
//! - [`Fallback`]: a value, a function of the error, or another service, with
//!   the failure's stage and reason ([`FailureInfo`]).
//! - [`Coalesce`]: concurrent identical requests share one call, which
//!   survives its first caller going away; bounded keys and waiters.
//! - [`Budget`]: Finagle's retry budget (extra attempts at most a ratio of
//!   first attempts, plus a floor), shared across retries and hedges and
//!   optionally gating first attempts through a rate limiter, so the
//!   amplification a dependency sees is bounded by one number.
//! - [`presets`]: `standard`, `fast_fail` and `tolerant` starting points.
//! - With the `tower` feature, a layer for each ([`tower`]); with the `chaos`
//!   feature, seeded fault injection for tests (`chaos`).
//!
//! ```
//! use heijunka_core::Criticality;
//! use heijunka_retry::{Budget, CallOptions, Hedge, HedgeDelay, Retry};
//! use std::time::Duration;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // One budget for the inventory service: retries and hedges together may add
//! // at most 10 % to its traffic.
//! let budget = Budget::builder().ratio(0.1).build()?;
//! let retry = Retry::builder().budget(budget.clone()).idempotent(true).build()?;
//! let hedge = Hedge::builder()
//!     .budget(budget.clone())
//!     .delay(HedgeDelay::p95(Duration::from_millis(50)))
//!     .idempotent(true)
//!     .build()?;
//!
//! let opts = CallOptions::new()
//!     .deadline(tokio::time::Instant::now() + Duration::from_secs(1))
//!     .criticality(Criticality::Critical);
//! // Each retry's attempt is hedged; `nested` keeps the hedge from counting the
//! // retry's attempts as new requests.
//! let stock = retry
//!     .call_with(opts, |_| {
//!         hedge.call_with(opts.nested(), |_| async { Ok::<_, std::io::Error>(7) })
//!     })
//!     .await?;
//! assert_eq!(stock, 7);
//! # Ok(())
//! # }
//! ```
#![deny(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod backoff;
mod budget;
#[cfg(feature = "chaos")]
pub mod chaos;
mod classify;
mod coalesce;
mod fallback;
mod hedge;
mod latency;
#[cfg(all(test, loom))]
mod loom_tests;
pub mod presets;
mod retry;
#[cfg(feature = "tower")]
pub mod tower;

pub use crate::backoff::Backoff;
pub use crate::budget::{
    Budget, BudgetBuilder, BudgetStats, DEFAULT_FLOOR_PER_SEC, DEFAULT_RATIO, DEFAULT_WINDOW,
    MAX_RATIO,
};
pub use crate::classify::{Attempt, CallOptions, Retryable, Stop};
pub use crate::coalesce::{
    Coalesce, CoalesceError, CoalesceStats, Coalesced, DEFAULT_MAX_KEYS, DEFAULT_MAX_WAITERS,
};
pub use crate::fallback::{FailureInfo, Fallback, FallbackStats};
pub use crate::hedge::{Hedge, HedgeBuilder, HedgeDelay, HedgeStats, MAX_HEDGES, MIN_SAMPLES};
pub use crate::retry::{
    DEFAULT_BACKOFF, DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_RETRY_AFTER, MAX_ATTEMPTS, Retry,
    RetryBuilder, RetryError, RetryStats,
};
