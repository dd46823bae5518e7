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
//! - [`ConcurrencyLimit`]: a work-in-progress limit on tokio's semaphore, with
//!   tokio's names: weighted, FIFO, try / async / timeout / blocking acquisition,
//!   owned permits, `close()`, `add_permits` and a run-time `set_limit` that never
//!   revokes a held permit; [`PollConcurrencyLimit`] acquires by polling, for
//!   tower's `poll_ready`. [`TryAcquireError`], [`AcquireError`] and
//!   [`AcquireTimeoutError`] are the refusals of both this and [`AdaptiveLimit`].
//! - [`BoundedQueue`]: an MPMC queue with warn / reject / full watermarks that hands
//!   items back when over the reject mark, with async, timeout and blocking forms.
//! - [`Watermarks`]: the warn / reject marks of a bounded buffer from fill ratios,
//!   and the pressure level of a length (shared with the event bus's buffers).
//! - Rate limiters behind the [`RateLimiter`] trait: [`Gcra`] (token bucket, and
//!   leaky bucket as a meter; lock-free), [`FixedWindow`], [`SlidingWindow`] and
//!   [`SlidingLog`]; [`until_ready`] waits for one; [`KeyedRateLimiter`] keeps a
//!   bucket per client in a bounded key set (and reports it as a
//!   [`RateLimitState`] in a [`KeyedDecision`]); [`LeakyBucket`] shapes callers into an
//!   even stream from a bounded queue.
//!
//! - [`SlotState`]: the one-word slot-and-sleeper protocol under the queue, for
//!   crates that build their own bounded structures; waiters register through a
//!   [`Registration`] guard, so a cancelled waiter leaves no count behind.
//! - [`AdaptiveLimit`]: a concurrency limit that finds its size from measured
//!   latency and outcomes, with Netflix `concurrency-limits`' algorithms behind
//!   [`LimitAlgorithm`]: [`Aimd`], [`Vegas`], [`Gradient2`], and [`Windowed`] to
//!   feed them one sample per window. Lock-free admission; permits record
//!   `success` / `dropped` / `ignore`.
//! - [`FairScheduler`]: per-client bounded queues served by weighted deficit round
//!   robin over item costs; a flooding client is rejected at its own bound, and a
//!   drained client leaves no state.
//! - [`PriorityQueue`]: bounded, N classes, FIFO within a class, with count-based
//!   aging so low classes are served within a documented bound; a full queue makes
//!   room for a higher class by displacing the lowest class's newest item, handed
//!   back as [`Pushed::Displaced`].
//! - [`Batcher`]: many calls become one batch call (by size or wait), each caller
//!   getting its own result; a refused or timed-out item comes back in
//!   [`BatchError::Rejected`].
//! - [`LevelledScheduler`]: bursts in, a steady takt out whatever the polling
//!   cadence, mixing work types by weighted round robin.
//! - [`LoadShedder`]: combines [`Signal`]s (queue pressure, limits, rate limiters,
//!   [`from_fn`] closures) into admit or reject-with-the-first-reason.
//!
//! Every rejection carries a [`heijunka_core::Rejection`] (with a retry-after for
//! rate limits) and hands the item back ([`Rejected`], [`ClassPushError`]), and
//! every configuration error names the field and value.
//!
//! ## Metrics
//!
//! With the `metrics` feature, [`ConcurrencyLimit`] (and so
//! [`PollConcurrencyLimit`]) and [`AdaptiveLimit`] emit the permits in flight,
//! the limit and their rejections; [`BoundedQueue`] its depth, rejections and
//! watermark crossings; [`LoadShedder`] what it sheds; [`Gcra`] and
//! [`KeyedRateLimiter`] their refusals; all through the
//! [`metrics`](https://docs.rs/metrics) facade, labelled with the component's
//! name ([`ConcurrencyLimit::named`], and `.name(..)` on the builders). The table
//! is in `docs/metrics.md`. The handles are registered when the component is
//! built (install the recorder first); an acquire and its release then cost one
//! atomic add each, a push and a pop the same. The window limiters, the leaky
//! bucket, the priority, fair and levelled schedulers and the batcher emit
//! nothing yet.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![doc(test(
    no_crate_inject,
    attr(deny(warnings), allow(dead_code, unused_variables))
))]

mod acquire;
mod adaptive;
mod batcher;
mod block;
mod fair;
mod level;
mod limit;
mod metrics;
mod priority;
mod queue;
mod rate;
mod rejected;
mod shed;
mod slots;
mod watermarks;

pub use crate::{
    acquire::{AcquireError, AcquireTimeoutError, TryAcquireError},
    adaptive::{
        AdaptiveLimit, AdaptiveLimitBuilder, AdaptivePermit, AdaptiveStats, Aimd, AimdBuilder,
        DEFAULT_REPORT_STEP, Gradient2, Gradient2Builder, LONG_RTT_DECAY, LimitAlgorithm, Outcome,
        OwnedAdaptivePermit, Sample, Vegas, VegasBuilder, Windowed, WindowedBuilder,
    },
    batcher::{
        BatchError, Batcher, BatcherBuilder, DEFAULT_BATCH_QUEUE, DEFAULT_MAX_BATCH,
        DEFAULT_MAX_WAIT, MAX_BATCH_QUEUE,
    },
    fair::{
        DEFAULT_CLIENT_CAPACITY, DEFAULT_MAX_CLIENTS, DEFAULT_MAX_WEIGHTED_CLIENTS,
        DEFAULT_QUANTUM, FairScheduler, FairSchedulerBuilder, FairStats,
    },
    level::{DEFAULT_CLASS_CAPACITY, LevelStats, LevelledScheduler, LevelledSchedulerBuilder},
    limit::{ConcurrencyLimit, LimitStats, MAX_PERMITS, OwnedPermit, Permit, PollConcurrencyLimit},
    priority::{PriorityQueue, PriorityQueueBuilder, PriorityStats, Pushed},
    queue::{
        BoundedQueue, BoundedQueueBuilder, DEFAULT_REJECT_AT, DEFAULT_WARN_AT, PushError,
        QueueStats,
    },
    rate::{
        DEFAULT_MAX_KEYS, EVICTION_PROBES, FixedWindow, Gcra, GcraBuilder, KeyedDecision,
        KeyedRateLimiter, KeyedRateLimiterBuilder, LeakyBucket, OverflowPolicy, RateLimitError,
        RateLimitState, RateLimiter, SlidingLog, SlidingWindow, until_ready,
    },
    rejected::{ClassPushError, Rejected},
    shed::{FnSignal, LoadShedder, LoadShedderBuilder, ShedStats, Signal, from_fn},
    slots::{MAX_CAPACITY, Registered, Registration, Reserve, Side, SlotState},
    watermarks::{DEFAULT_WATERMARK_HYSTERESIS, Watermarks},
};
