//! Keep servers standing under load: the heijunka stack in one crate.
//!
//! Heijunka (平準化, "levelling") is the Toyota Production System's word for smoothing
//! load so that flow stays steady. This facade re-exports each heijunka crate under a
//! short module name, each behind a default-on feature of the same name, so a user
//! can turn parts off (`default-features = false, features = ["breaker"]`) or depend
//! on a single crate such as `heijunka-breaker` directly.
//!
//! ```
//! use heijunka::prelude::*;
//! use std::time::Duration;
//!
//! // Every time-dependent part takes a `Clock`; tests use a manual one.
//! let manual = ManualClock::new();
//! let clock: Clock = manual.clock();
//! let start = clock.now();
//! manual.advance(Duration::from_millis(10));
//! assert_eq!(clock.elapsed(start), Duration::from_millis(10));
//!
//! // Every admission decision speaks the same `Rejection` vocabulary.
//! let no = Rejection::QueueFull { capacity: 64 };
//! assert_eq!(no.kind(), "queue_full");
//! ```
//!
//! | module | crate | what it gives |
//! | --- | --- | --- |
//! | [`core`] | `heijunka-core` | clock, loom sync shim, `ConfigError`, `Rejection` |
//! | `shutdown` | `heijunka-shutdown` | signals, cancellation, in-flight tracking, drain |
//! | `backpressure` | `heijunka-backpressure` | limits, queues, rate limiters, shedding |
//! | `breaker` | `heijunka-breaker` | circuit breakers and a registry per dependency |
//! | `recycler` | `heijunka-recycler` | object reuse with RAII return |
//! | `memory` | `heijunka-memory` | memory sampling and pressure levels |
//! | `pool` | `heijunka-pool` | thread and task pools, task groups, dispatcher |
//! | `event_bus` | `heijunka-event-bus` | topics, bounded fan-out, handler runtime |
//!
//! # Seeing what it sheds
//!
//! - The `metrics` feature (off by default) turns on every crate's `metrics`
//!   feature: each component emits through the [`metrics`](https://docs.rs/metrics)
//!   facade, so any exporter works. Install the recorder before building the
//!   components. The names, types and labels are in one table, `docs/metrics.md`
//!   (for example `heijunka_policy_rejected_total{name, stage, reason}`).
//! - `Policy::stats()` returns the policy's figures as a `Serialize` struct, for a
//!   service without a metrics stack.
//! - Every refusal is logged at DEBUG with its stage and reason, and a WARN says
//!   when a policy starts and stops shedding (at most once per 10 s).
//!
//! # Wiring parts that cannot see each other
//!
//! Crates of one layer do not depend on each other (the recycler and the memory
//! monitor are both layer 1), so the application connects them. Memory pressure
//! trimming idle recycled values: half of them at elevated, all at critical.
//!
//! ```
//! # #[cfg(all(feature = "memory", feature = "recycler"))]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use heijunka::core::PressureLevel;
//! use heijunka::memory::{ManualProbe, MemoryMonitor};
//! use heijunka::recycler::Recycler;
//! use std::time::Duration;
//!
//! let probe = ManualProbe::new(64 << 30); // the real thing: the default SystemProbe
//! let monitor = MemoryMonitor::builder().limit(1_000).probe(probe.clone()).build()?;
//! let buffers = Recycler::builder(|| Vec::<u8>::with_capacity(4096)).per_thread(0).build()?;
//!
//! let pool = buffers.clone();
//! monitor.on_level(PressureLevel::Elevated, move |_| {
//!     pool.trim(pool.stats().idle.div_ceil(2) as usize);
//! })?;
//! let pool = buffers.clone();
//! monitor.on_level(PressureLevel::Critical, move |_| {
//!     pool.clear();
//! })?;
//!
//! drop((0..8).map(|_| buffers.get()).collect::<Vec<_>>()); // eight idle buffers
//! probe.set_rss(850); // 85 %: elevated
//! monitor.sample_now()?;
//! assert!(monitor.flush_callbacks(Duration::from_secs(10)));
//! assert_eq!(buffers.stats().idle, 4);
//! probe.set_rss(950); // critical
//! monitor.sample_now()?;
//! assert!(monitor.flush_callbacks(Duration::from_secs(10)));
//! assert_eq!(buffers.stats().idle, 0);
//! # Ok(())
//! # }
//! # #[cfg(not(all(feature = "memory", feature = "recycler")))]
//! # fn main() {}
//! ```
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![doc(test(
    no_crate_inject,
    attr(deny(warnings), allow(dead_code, unused_variables))
))]

#[doc(inline)]
pub use heijunka_core as core;

#[cfg(feature = "shutdown")]
#[cfg_attr(docsrs, doc(cfg(feature = "shutdown")))]
#[doc(inline)]
pub use heijunka_shutdown as shutdown;

#[cfg(feature = "backpressure")]
#[cfg_attr(docsrs, doc(cfg(feature = "backpressure")))]
#[doc(inline)]
pub use heijunka_backpressure as backpressure;

#[cfg(feature = "breaker")]
#[cfg_attr(docsrs, doc(cfg(feature = "breaker")))]
#[doc(inline)]
pub use heijunka_breaker as breaker;

#[cfg(feature = "recycler")]
#[cfg_attr(docsrs, doc(cfg(feature = "recycler")))]
#[doc(inline)]
pub use heijunka_recycler as recycler;

#[cfg(feature = "memory")]
#[cfg_attr(docsrs, doc(cfg(feature = "memory")))]
#[doc(inline)]
pub use heijunka_memory as memory;

#[cfg(feature = "pool")]
#[cfg_attr(docsrs, doc(cfg(feature = "pool")))]
#[doc(inline)]
pub use heijunka_pool as pool;

#[cfg(feature = "event-bus")]
#[cfg_attr(docsrs, doc(cfg(feature = "event-bus")))]
#[doc(inline)]
pub use heijunka_event_bus as event_bus;

#[cfg(feature = "event-bus")]
#[cfg_attr(docsrs, doc(cfg(feature = "event-bus")))]
#[doc(inline)]
/// The event bus (`heijunka-event-bus`), under its short name.
pub use heijunka_event_bus as bus;

#[cfg(feature = "retry")]
#[cfg_attr(docsrs, doc(cfg(feature = "retry")))]
#[doc(inline)]
pub use heijunka_retry as retry;

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
#[doc(inline)]
/// Limits shared across replicas through Redis (`heijunka-redis`).
pub use heijunka_redis as redis;

#[cfg(feature = "policy")]
#[cfg_attr(docsrs, doc(cfg(feature = "policy")))]
pub mod context;

#[cfg(feature = "policy")]
#[cfg_attr(docsrs, doc(cfg(feature = "policy")))]
pub mod policy;

#[cfg(feature = "config")]
#[cfg_attr(docsrs, doc(cfg(feature = "config")))]
pub mod config;

#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub mod tower;

/// The types most programs using heijunka need, for `use heijunka::prelude::*`.
pub mod prelude {
    #[doc(no_inline)]
    pub use heijunka_core::{Clock, ConfigError, Instant, ManualClock, PressureLevel, Rejection};

    #[cfg(feature = "policy")]
    #[doc(no_inline)]
    pub use crate::context::{Outcome, RequestContext, TraceId};
    #[cfg(feature = "policy")]
    #[doc(no_inline)]
    pub use crate::policy::{Admission, Policy, PolicyError, Stage};
}
