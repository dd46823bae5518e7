//! An in-process event bus: typed topics, per-subscriber bounded buffers with a
//! publish policy, zero-copy fan-out of pooled events, and a handler runtime.
//!
//! ```
//! use heijunka_event_bus::{Event, EventBus, Policy};
//! use heijunka_recycler::Recycler;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let bus = EventBus::new();
//! let ticks = bus.topic::<Vec<u8>>("market.ticks")?;
//! // A lossless subscriber that slows publishers down when it falls behind...
//! let mut ledger = ticks.subscriber().policy(Policy::Block).buffer(256).subscribe()?;
//! // ...and a lossy one that only wants the latest ticks.
//! let mut screen = ticks.subscriber().policy(Policy::DropOldest).buffer(1).subscribe()?;
//!
//! // Events come from a pool and go back after the last subscriber is done.
//! let pool = Recycler::new(64, || Vec::<u8>::with_capacity(64))?;
//! for price in [41_u8, 42] {
//!     let mut tick = pool.get();
//!     tick.push(price);
//!     let report = ticks.publish(Event::pooled(tick.into_shared())).await?;
//!     assert_eq!(report.delivered, 2);
//! }
//! assert_eq!(screen.recv().await.map(|t| t[0]), Some(42)); // 41 was displaced
//! assert_eq!(ledger.recv().await.map(|t| t[0]), Some(41));
//! assert_eq!(ledger.recv().await.map(|t| t[0]), Some(42));
//! assert_eq!(ticks.stats().dropped.displaced, 1);
//! assert_eq!(pool.stats().returns, 2); // both ticks are back in the pool
//! # Ok(())
//! # }
//! ```
//!
//! # What is here
//!
//! - [`EventBus`]: topics by name; asking for a name with another event type is
//!   a [`BusError::TypeMismatch`], not a panic. [`EventBus::register_with`]
//!   closes every topic when a `heijunka-shutdown` [`Shutdown`](heijunka_shutdown::Shutdown)
//!   stops, and lets handlers drain.
//! - [`Topic<E>`]: [`publish`](Topic::publish) (each subscriber by its policy),
//!   [`try_publish`](Topic::try_publish) (never waits) and
//!   [`publish_timeout`](Topic::publish_timeout) return a [`PublishReport`]:
//!   how many subscribers got the event, which were skipped and why
//!   ([`SkipReason`]). When none got it the event comes back in the
//!   [`PublishError`]. Also [`request`](Topic::request) (await one reply, typed
//!   [`RequestError::TimedOut`]), [`close`](Topic::close) (subscribers drain,
//!   then end), [`pressure`](Topic::pressure) (for a 503 before buffers fill)
//!   and [`stats`](Topic::stats).
//! - [`Event<E>`]: the shared envelope: a plain value ([`Event::new`], one `Arc`)
//!   or a pooled one ([`Event::pooled`] of a `heijunka-recycler`
//!   [`Shared`](heijunka_recycler::Shared), no allocation), a routing version
//!   and a critical flag. Subscribers get clones of the handle, never of `E`;
//!   small `Copy` values can instead ride in the envelope ([`Event::inline`]).
//! - [`Subscription<E>`]: one subscriber's bounded buffer (a single-producer
//!   single-consumer [`heijunka_core::spsc`] ring with warn and reject
//!   watermarks, `tracing` on crossing), built by [`SubscriberBuilder`] with a
//!   [`Policy`]: [`Block`](Policy::Block), [`Timeout`](Policy::Timeout) (the
//!   default, 5 s), [`Reject`](Policy::Reject) or
//!   [`DropOldest`](Policy::DropOldest) (counted). Defaults from the seeds:
//!   [`DEFAULT_BUFFER`] 1000 events, [`DEFAULT_PUBLISH_TIMEOUT`] 5 s. A
//!   [minimum version](SubscriberBuilder::min_version) filters stale events;
//!   [critical](Event::critical) ones, and kinds marked with
//!   [`Topic::critical_kinds`], always pass.
//! - [`Handler`]: [`Topic::handle`] runs a handler on every event with bounded
//!   concurrency on a `heijunka-pool` [`TaskPool`](heijunka_pool::TaskPool);
//!   panics are caught and counted (the event still goes back), failures are
//!   retried, and after [`max_attempts`](HandlerBuilder::max_attempts) the event
//!   goes to a [`DeadLetter`] topic.
//! - Stats: [`TopicStats`], [`SubscriberStats`], [`HandlerStats`],
//!   [`DropCounts`], all `Serialize`.
//!
//! # Correctness
//!
//! A topic has one lock. A publish holds it while it fills the subscribers'
//! buffers (never while it waits for room), so each buffer has one producer at
//! a time, and publishes that do not wait reach every subscriber in the same
//! order (one that waits for a full buffer may land after later publishes in
//! that buffer only). The buffer is a [`heijunka_core::spsc`] ring (loom-modelled and run under miri in
//! `heijunka-core`) whose producing end sits in the topic's subscriber list and
//! whose consuming end sits in the [`Subscription`]. Its push and pop are plain
//! loads and stores. The two sleep/wake handshakes on top (a consumer waiting
//! for an event, a publisher waiting for room) have loom models in this crate's
//! `buffer` module. The shared payload is `std::sync::Arc` or the recycler's
//! `Shared` (loom-modelled in `heijunka-recycler`). This crate has no `unsafe`.
//!
//! A publisher waiting for room under [`Policy::Block`] or [`Policy::Timeout`]
//! is woken in batches, not at each freed slot: after at most `min(capacity / 2,
//! 512)` receives (the low-water mark), so one wake-up serves many events. The
//! price: a consumer that receives fewer events than that and then waits for
//! the blocked publisher's next move deadlocks, exactly as it would with a full
//! buffer; give such request/acknowledge flows a `Timeout` policy or a buffer
//! they never fill. A timed-out publish tries once more at its deadline and
//! takes any free slot.
//!
//! # Bad input
//!
//! A zero buffer, a zero timeout or a watermark outside (0, 1] is a
//! [`SubscribeError::Config`]; an empty topic name is [`BusError::EmptyName`];
//! publishing to a closed topic hands the event back in [`PublishError::Closed`];
//! subscribing to one is [`SubscribeError::Closed`].
//!
//! # Metrics
//!
//! With the `metrics` feature, every topic emits `heijunka_bus_*` counters
//! through the `metrics` facade, labelled `topic` (the topic's name): publishes,
//! deliveries into subscriber buffers, and drops by reason (the reasons of
//! [`DropCounts`]). The table is in `docs/metrics.md`; install the recorder
//! before creating the topics.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![doc(test(
    no_crate_inject,
    attr(deny(warnings), allow(dead_code, unused_variables))
))]

mod buffer;
mod bus;
mod error;
mod event;
mod handler;
mod metrics;
mod publish;
mod stats;
mod subscriber;
mod topic;

pub use crate::{
    bus::EventBus,
    error::{BusError, PublishError, ReplyError, RequestError, SubscribeError},
    event::Event,
    handler::{
        DEFAULT_MAX_ATTEMPTS, DeadLetter, Handler, HandlerBuilder, HandlerOutcome, MAX_CONCURRENCY,
    },
    publish::{PublishReport, SkipReason, SubscriberId},
    stats::{DropCounts, HandlerStats, SubscriberStats, TopicStats},
    subscriber::{
        DEFAULT_BUFFER, DEFAULT_PUBLISH_TIMEOUT, Policy, SubscriberBuilder, Subscription,
    },
    topic::Topic,
};
