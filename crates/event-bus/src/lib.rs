//! An in-process event bus: typed topics, one ring per topic read by every
//! subscriber through its own cursor, a publish policy per subscriber,
//! zero-copy fan-out of pooled events, and a handler runtime.
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
//! assert!(ledger.try_recv().is_none()); // every subscriber is past both ticks...
//! assert_eq!(pool.stats().returns, 2); // ...so both are back in the pool
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
//! - [`Subscription<E>`]: one subscriber: a cursor into its topic's ring, and
//!   a [`Stream`](futures_core::Stream) of events ([`recv`](Subscription::recv),
//!   [`try_recv`](Subscription::try_recv),
//!   [`resubscribe`](Subscription::resubscribe)). Built by [`SubscriberBuilder`]
//!   with a buffer (how far behind it may fall), warn and reject watermarks,
//!   and a [`Policy`] for when it is that far behind: [`Block`](Policy::Block)
//!   (publishers wait), [`Timeout`](Policy::Timeout) (wait up to a bound, the
//!   default, 5 s), [`Reject`](Policy::Reject) (new events skip it) or
//!   [`DropOldest`](Policy::DropOldest) (it loses its oldest, counted).
//!   Defaults from the seeds: [`DEFAULT_BUFFER`] 1000 events,
//!   [`DEFAULT_PUBLISH_TIMEOUT`] 5 s; a topic's ring holds
//!   [`DEFAULT_CAPACITY`] events unless set ([`Topic::with_capacity`]), and a
//!   buffer is at most half of it and at most [`MAX_BUFFER`]. A
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
//! # Design
//!
//! Each event is written once, into one slot of its topic's ring; every
//! subscriber reads it from there (a reference-count bump for a shared
//! payload, a copy for an inline one). Publishers claim a sequence with one
//! compare-and-swap on the topic's tail and need no lock while no subscriber
//! is behind by its buffer: a cached bound (the gate) says so. A subscriber at
//! its bound is handled by its policy on the publisher's slow path, under the
//! topic's lock: waited for, skipped with a mark in its skip bitmap, or (a
//! whole ring behind) lapped, its unread events moved aside. A waiting
//! publisher is woken by the subscriber's next receive; a consumer with
//! nothing to read sleeps until the next claim. Consumers take up to a small
//! batch of events per visit to the ring (an eighth of their buffer, at most
//! 32, one for drop-oldest), so two atomic read-modify-writes serve the batch.
//!
//! The protocol is written down in the `topic`, `subscriber` and `ring`
//! modules, modelled with loom (`cargo xtask loom`: a lap against a read, the
//! consumer's sleep, the publisher's wait for room, reclaim against a write),
//! and the ring's `unsafe` runs under miri (`cargo xtask miri`); the stress
//! tests run under ThreadSanitizer (`cargo xtask tsan`).
//!
//! Events stay in their slots after every subscriber read them, until the slot
//! is reused or a consumer that caught up reclaims them (it takes out what all
//! subscribers have passed when it finds nothing to read, for topics that ever
//! carried a shared payload or a request): a pooled event goes back to its
//! pool then, and a request nobody answered ends with
//! [`RequestError::NoReply`]. A topic that no handle, subscription or handler
//! holds is dropped with its ring and leaves its bus; a handler that finished
//! releases its task pool and leaves its final counters in the topic's stats.
//!
//! # Bad input
//!
//! A zero buffer, one above [`MAX_BUFFER`] or half the topic's ring, a zero
//! timeout or a watermark outside (0, 1] is a [`SubscribeError::Config`]
//! naming the setting; a topic capacity below 2 or above [`MAX_CAPACITY`] is
//! a [`BusError::Config`]; an empty topic name is [`BusError::EmptyName`]; a
//! [critical-kinds](Topic::critical_kinds) predicate that panics is caught and
//! counted;
//! publishing to a closed topic hands the event back in [`PublishError::Closed`];
//! subscribing to one is [`SubscribeError::Closed`].
//!
//! # Metrics
//!
//! With the `metrics` feature, every topic emits `heijunka_bus_*` counters
//! through the `metrics` facade, labelled `topic` (the topic's name): publishes,
//! deliveries (one per subscriber an event was made available to), and drops
//! by reason (the reasons of
//! [`DropCounts`]). The table is in `docs/metrics.md`; install the recorder
//! before creating the topics.
#![deny(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![doc(test(
    no_crate_inject,
    attr(deny(warnings), allow(dead_code, unused_variables))
))]

mod bus;
mod error;
mod event;
mod handler;
#[cfg(all(test, loom))]
mod loom_tests;
mod metrics;
mod publish;
mod ring;
mod stats;
mod subscriber;
mod topic;
mod wake;

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
        DEFAULT_BUFFER, DEFAULT_PUBLISH_TIMEOUT, MAX_BUFFER, Policy, SubscriberBuilder,
        Subscription,
    },
    topic::{DEFAULT_CAPACITY, MAX_CAPACITY, Topic},
};
