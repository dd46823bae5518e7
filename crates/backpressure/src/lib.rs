//! Admission control: decide at once whether work may start, and hand it back with a
//! reason when it may not.
//!
//! ```
//! # if heijunka_core::sync::IS_LOOM { return Ok(()); } // loom types work only inside a model
//! use heijunka_backpressure::{BoundedQueue, ConcurrencyLimit, Gcra, RateLimiter};
//!
//! // At most 64 requests in flight.
//! let limit = ConcurrencyLimit::new(64)?;
//! // 1000 requests per second, bursts of 50.
//! let rate = Gcra::builder(1000.0).burst(50).build()?;
//! // A work queue that warns at 80 % and rejects at 90 %.
//! let queue = BoundedQueue::new(1024)?;
//!
//! let admitted = rate.check().and_then(|()| Ok(()));
//! if admitted.is_ok() {
//!     if let Ok(_permit) = limit.try_acquire() {
//!         queue.try_push("job").map_err(|e| e.reason())?;
//!     }
//! }
//! assert_eq!(queue.try_pop(), Some("job"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # What is here
//!
//! - [`ConcurrencyLimit`]: a work-in-progress limit on tokio's semaphore: weighted,
//!   FIFO, try / async / timeout / blocking acquisition, owned permits, `close()`.
//! - [`BoundedQueue`]: an MPMC queue with warn / reject / full watermarks that hands
//!   items back when over the reject mark, with async, timeout and blocking forms.
//! - Rate limiters behind the [`RateLimiter`] trait: [`Gcra`] (token bucket,
//!   lock-free), [`LeakyBucket`], [`FixedWindow`], [`SlidingWindow`] and
//!   [`SlidingLog`]; [`until_ready`] waits for one; [`KeyedRateLimiter`] keeps a
//!   bucket per client in a bounded key set.
//!
//! - [`SlotState`]: the one-word slot-and-sleeper protocol under the queue, for
//!   crates that build their own bounded structures.
//!
//! Every rejection carries a [`heijunka_core::Rejection`] (with a retry-after for
//! rate limits), and every configuration error names the field and value.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![doc(test(
    no_crate_inject,
    attr(deny(warnings), allow(dead_code, unused_variables))
))]

mod block;
mod limit;
mod queue;
mod rate;
mod slots;

pub use crate::{
    limit::{AcquireError, ConcurrencyLimit, LimitStats, MAX_PERMITS, OwnedPermit, Permit},
    queue::{
        BoundedQueue, BoundedQueueBuilder, DEFAULT_REJECT_AT, DEFAULT_WARN_AT, PushError,
        QueueStats,
    },
    rate::{
        DEFAULT_MAX_KEYS, FixedWindow, Gcra, KeyedRateLimiter, KeyedRateLimiterBuilder,
        LeakyBucket, OverflowPolicy, RateLimitError, RateLimiter, SlidingLog, SlidingWindow,
        until_ready,
    },
    slots::{MAX_CAPACITY, Registered, Reserve, Side, SlotState},
};
