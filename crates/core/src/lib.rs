//! The shared foundation of heijunka: time, synchronisation and the vocabulary every
//! other heijunka crate speaks.
//!
//! ```
//! use heijunka_core::{Clock, ConfigError, ManualClock, Rejection, validate};
//! use std::time::Duration;
//!
//! // Time-dependent logic takes a `Clock`; tests hand it a manual one.
//! let manual = ManualClock::new();
//! let clock: Clock = manual.clock();
//! let start = clock.now();
//! manual.advance(Duration::from_secs(3));
//! assert_eq!(clock.now().duration_since(start), Duration::from_secs(3));
//!
//! // Configuration errors name the field and the bad value.
//! let err: ConfigError = validate::ratio("failure_rate_threshold", 1.5).unwrap_err();
//! assert_eq!(err.to_string(), "failure_rate_threshold must be in (0, 1], got 1.5");
//!
//! // Rejections say what the caller can do.
//! let rejected = Rejection::RateLimited { retry_after: Duration::from_millis(40) };
//! assert_eq!(rejected.retry_after(), Some(Duration::from_millis(40)));
//! ```
//!
//! # What is here
//!
//! - [`Clock`], [`ManualClock`] and [`Instant`]: the one injectable time source. Every
//!   heijunka crate reads time through a [`Clock`], so every time-dependent rule is
//!   tested with a [`ManualClock`] rather than with sleeps.
//! - [`sync`]: the loom shim. Under `--cfg loom` the atomics, `Arc`, `Mutex`,
//!   `Condvar`, `thread` and [`sync::UnsafeCell`] come from [`loom`]; otherwise from
//!   `std`.
//! - [`ConfigError`] and [`validate`]: builders return `Result<_, ConfigError>`, and
//!   the error names the field, the rule and the value.
//! - [`Rejection`]: the reason an item was not admitted, shared by every crate.
//! - [`PressureLevel`]: normal / elevated / critical, shared by the memory monitor,
//!   queues and the load shedder.
//! - [`Criticality`]: sheddable / default / critical, the one priority tag every
//!   stage of a stack honours (shed sheddable work first, critical last).
//! - [`classify`]: per-type classifiers (`classify_errors`), shared by the breaker
//!   and the retry crate.
//! - [`rng`]: a seedable lock-free SplitMix64 for jitter and fault injection.
//! - [`ShardedCounter`]: a statistics counter that many threads bump without sharing
//!   a cache line, summed on read.
//! - [`InlineOnce`]: a type-erased `FnOnce(&C)` that stores closures up to
//!   [`INLINE_BYTES`] without a heap allocation (the worker pool's task slot).
//! - [`Bitwise`]: a value of a `Copy` type that generic code clones without a
//!   `T: Clone` bound (the event bus's inline payloads).
//! - `blocking` (feature `blocking`, which pulls in tokio): the check heijunka's
//!   blocking forms make first, refusing (as tokio does) to park a thread that
//!   drives a runtime's tasks.
//! - [`cancel`]: a harness that drives a future for k polls, drops it and lets a
//!   test check what it left behind (every public `async fn` is tested with it).
//! - [`spsc`]: a bounded single-producer single-consumer ring whose push and pop
//!   are plain loads and stores (the event bus's subscriber buffers).
//!
//! [`loom`]: https://docs.rs/loom
// `unsafe` is denied everywhere but `once.rs` (inline closure storage),
// `spsc.rs` (the ring's slots) and `bitwise.rs` (a byte copy of a `Copy`
// value), all run under miri by `cargo xtask miri`.
#![deny(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![doc(test(
    no_crate_inject,
    attr(deny(warnings), allow(dead_code, unused_variables))
))]

#[cfg(feature = "blocking")]
#[cfg_attr(docsrs, doc(cfg(feature = "blocking")))]
pub mod blocking;
pub mod cancel;
pub mod classify;
pub mod metrics;
pub mod rng;
pub mod spsc;
pub mod sync;

mod bitwise;
mod clock;
mod config;
mod counter;
mod criticality;
mod once;
mod pressure;
mod rejection;
pub mod validate;

pub use crate::{
    bitwise::Bitwise,
    clock::{
        COARSE_CHECK_EVERY, COARSE_STALE_AFTER, COARSE_TICK, Clock, CoarseUse, Instant, ManualClock,
    },
    config::ConfigError,
    counter::ShardedCounter,
    criticality::Criticality,
    once::{INLINE_BYTES, InlineOnce},
    pressure::PressureLevel,
    rejection::Rejection,
};
