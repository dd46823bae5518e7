//! [`DispatcherBuilder`]: validates a dispatcher's configuration and starts its
//! workers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::ArcSwap;
use crossbeam::utils::CachePadded;
use heijunka_core::sync::atomic::{AtomicBool, AtomicU64};
use heijunka_core::{ConfigError, validate};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::load::Loads;
use super::{Dispatcher, Inner, Shared, worker};
use crate::metrics::PoolMetrics;

/// Builds a [`Dispatcher`].
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until `build()`"]
pub struct DispatcherBuilder {
    workers: usize,
    queue_capacity: usize,
    global_bound: Option<usize>,
    runtime: Option<tokio::runtime::Handle>,
    name: String,
}

/// The most workers a dispatcher may have.
const MAX_WORKERS: usize = 4096;

impl DispatcherBuilder {
    /// Worker tasks, each running one message at a time. Default 4, at most
    /// 4096.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// Each worker's queue capacity. Default 1024.
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.queue_capacity = n;
        self
    }

    /// The most messages accepted and unfinished (queued or running) across all
    /// workers. Default `workers * (queue_capacity + 1)`: every queue full and
    /// every worker busy, so only the per-worker queues bound.
    pub fn global_bound(mut self, n: usize) -> Self {
        self.global_bound = Some(n);
        self
    }

    /// The tokio runtime the workers (and the shutdown) run on. Default: the
    /// runtime `build` is called in.
    pub fn runtime(mut self, handle: tokio::runtime::Handle) -> Self {
        self.runtime = Some(handle);
        self
    }

    /// The dispatcher's name: the `name` label of its metrics (feature
    /// `metrics`; see `docs/metrics.md`). Default `"default"`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Validates, builds and starts the workers on the [`runtime`](Self::runtime).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for zero `workers`, `queue_capacity` or `global_bound`,
    /// more than 4096 `workers`, a `global_bound` above `u32::MAX` (or, with none
    /// set, a default `workers * (queue_capacity + 1)` above it, named as
    /// `queue_capacity`), or with no `runtime` set when called outside a tokio
    /// runtime.
    pub fn build<Req, Resp, Err>(self) -> Result<Dispatcher<Req, Resp, Err>, ConfigError>
    where
        Req: Send + 'static,
        Resp: Send + 'static,
        Err: Send + 'static,
    {
        validate::at_least("workers", self.workers, 1)?;
        validate::at_most("workers", self.workers, MAX_WORKERS)?;
        validate::at_least("queue_capacity", self.queue_capacity, 1)?;
        validate::at_most(
            "queue_capacity",
            self.queue_capacity,
            Semaphore::MAX_PERMITS,
        )?;
        let global_bound = match self.global_bound {
            Some(n) => {
                validate::at_least("global_bound", n, 1)?;
                validate::at_most("global_bound", n, u32::MAX as usize)?
            }
            None => {
                // The default is derived: blame the settings it is derived from.
                let n = self
                    .workers
                    .saturating_mul(self.queue_capacity.saturating_add(1));
                if n > u32::MAX as usize {
                    return Err(ConfigError::new(
                        "queue_capacity",
                        self.queue_capacity,
                        format!(
                            "makes workers * (queue_capacity + 1) = {n} with {} workers, above \
                             the {} messages a dispatcher can count: lower it or set a \
                             global_bound",
                            self.workers,
                            u32::MAX
                        ),
                    ));
                }
                n
            }
        };
        let runtime = match self.runtime {
            Some(handle) => handle,
            None => tokio::runtime::Handle::try_current().map_err(|_| {
                ConfigError::new(
                    "runtime",
                    "none",
                    "must be given (`.runtime(handle)`) when building outside a tokio runtime",
                )
            })?,
        };
        let shared = Arc::new(Shared {
            loads: Loads::new(self.workers),
            processed: (0..self.workers)
                .map(|_| CachePadded::new(AtomicU64::new(0)))
                .collect(),
            global: Semaphore::new(global_bound),
            stop: CancellationToken::new(),
            stopping: AtomicBool::new(false),
            abandoned: AtomicU64::new(0),
            metrics: PoolMetrics::new(&self.name),
        });
        let mut senders = Vec::with_capacity(self.workers);
        let mut joins = Vec::with_capacity(self.workers);
        for index in 0..self.workers {
            let (tx, rx) = mpsc::channel(self.queue_capacity);
            senders.push(tx);
            joins.push(runtime.spawn(worker::run(index, Arc::clone(&shared), rx)));
        }
        Ok(Dispatcher {
            inner: Arc::new(Inner {
                shared,
                senders: senders.into_boxed_slice(),
                handlers: ArcSwap::from_pointee(HashMap::new()),
                writer: Mutex::new(()),
                closed: AtomicBool::new(false),
                rejected: AtomicU64::new(0),
                unknown: AtomicU64::new(0),
                queue_capacity: self.queue_capacity,
                global_bound,
                workers: Mutex::new(joins),
                runtime,
                report: OnceLock::new(),
                token: OnceLock::new(),
            }),
        })
    }
}

impl Dispatcher<(), (), ()> {
    /// A builder (defaults: 4 workers, queues of 1024, no global bound beyond
    /// the queues). Request, reply and error types are inferred from use.
    pub fn builder() -> DispatcherBuilder {
        DispatcherBuilder {
            workers: 4,
            queue_capacity: 1024,
            global_bound: None,
            runtime: None,
            name: "default".into(),
        }
    }
}
