//! Worker pools that reject at once instead of queueing without bound.
//!
//! ```
//! use heijunka_pool::WorkerPool;
//! use heijunka_core::Rejection;
//! use std::time::Duration;
//!
//! let pool = WorkerPool::builder().workers(2).queue_capacity(1).build()?;
//! let gate = std::sync::Arc::new(std::sync::Barrier::new(3));
//! // Two tasks occupy both workers, one waits in the queue...
//! let running: Vec<_> = (0..2)
//!     .map(|_| {
//!         let gate = gate.clone();
//!         pool.submit(move || { gate.wait(); }).unwrap()
//!     })
//!     .collect();
//! # while pool.stats().active < 2 { std::thread::yield_now(); }
//! let queued = pool.try_submit(|| "queued").unwrap();
//! // ...and the next is handed back at once, unrun.
//! let rejected = pool.try_submit(|| "rejected").unwrap_err();
//! assert_eq!(rejected.reason(), Rejection::QueueFull { capacity: 1 });
//! assert_eq!((rejected.into_inner())(), "rejected");
//! gate.wait();
//! assert_eq!(queued.join()?, "queued");
//! assert!(pool.shutdown(Duration::from_secs(5)).clean);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # What is here
//!
//! - [`WorkerPool`]: named OS threads for blocking and CPU-bound work, one bounded
//!   work-stealing queue, [`TaskHandle`]s, panic isolation, graceful
//!   [`shutdown`](WorkerPool::shutdown) and integration with `heijunka-shutdown`.
//! - [`TaskPool`]: bounds concurrently running futures on tokio, with a bounded
//!   waiting queue.
//! - [`PoolStats`]: live numbers with task-time percentiles (p50, p90, p99), a
//!   `Serialize` struct.
//! - [`Group`]: structured task groups on tokio: at most K futures at a time,
//!   results unit, in spawn order or as they complete, every failure in
//!   [`GroupErrors`], optional fail-fast through a cancellation token, panics
//!   captured or resumed ([`PanicPolicy`]).
//! - [`ThreadGroup`]: the same on scoped OS threads that borrow from the caller's
//!   stack (`std::thread::scope` underneath).
//! - [`Dispatcher`]: routes each message to the handler registered under its
//!   name, on N workers with bounded queues, least-loaded or by key affinity,
//!   with immediate rejection, typed failures, graceful shutdown and
//!   [`DispatcherStats`].
//!
//! # Metrics
//!
//! With the `metrics` feature, [`WorkerPool`], [`TaskPool`] and [`Dispatcher`]
//! emit `heijunka_pool_*` metrics (queued, running, completed, panicked,
//! cancelled, rejected, task run time) through the `metrics` facade, labelled
//! with the pool's name ([`WorkerPoolBuilder::name`], [`TaskPoolBuilder::name`],
//! [`DispatcherBuilder::name`]). The table is in `docs/metrics.md`; install the
//! recorder before building the pool.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![doc(test(
    no_crate_inject,
    attr(deny(warnings), allow(dead_code, unused_variables))
))]

mod dispatch;
mod error;
mod group;
mod handle;
mod metrics;
mod park;
mod stats;
mod task;
mod worker;

pub use crate::{
    dispatch::{
        DispatchError, DispatchReport, Dispatcher, DispatcherBuilder, DispatcherStats,
        HandlerError, HandlerStats, RegisterError, Reply, WorkerStats,
    },
    error::{Rejected, SpawnError, TaskError},
    group::{
        Group, GroupBuilder, GroupErrors, GroupToken, PanicPolicy, TaskFailure, ThreadGroup,
        ThreadScope,
    },
    handle::TaskHandle,
    stats::PoolStats,
    task::{TaskPool, TaskPoolBuilder, TaskPoolHandle},
    worker::{PoolReport, WorkerPool, WorkerPoolBuilder},
};
