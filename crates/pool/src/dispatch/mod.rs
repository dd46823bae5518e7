//! [`Dispatcher`]: routes each message to the handler registered under its name,
//! on a pool of workers with bounded queues.

mod builder;
mod error;
mod load;
mod reply;
mod stats;
mod worker;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use crossbeam::utils::CachePadded;
use heijunka_core::Rejection;
use heijunka_core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use heijunka_shutdown::{Shutdown, ShutdownToken};
use serde::Serialize;
use tokio::sync::{Semaphore, TryAcquireError, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use self::builder::DispatcherBuilder;
pub use self::error::{DispatchError, HandlerError, RegisterError};
use self::load::Loads;
pub use self::reply::Reply;
use self::stats::HandlerCounters;
pub use self::stats::{DispatcherStats, HandlerStats, WorkerStats};
use self::worker::{Job, Msg};
use crate::metrics::PoolMetrics;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type HandlerFn<Req, Resp, Err> = dyn Fn(Req) -> BoxFuture<Result<Resp, Err>> + Send + Sync;

/// A registered handler: the function and its name's counters.
struct Entry<Req, Resp, Err> {
    call: Box<HandlerFn<Req, Resp, Err>>,
    counters: Arc<HandlerCounters>,
}

type EntryRef<Req, Resp, Err> = Arc<Entry<Req, Resp, Err>>;
type Handlers<Req, Resp, Err> = HashMap<String, EntryRef<Req, Resp, Err>>;

/// What the workers share with the dispatcher (not the senders: when every
/// [`Dispatcher`] clone is dropped, the queues close and the workers end).
struct Shared {
    loads: Loads,
    /// Messages finished, per worker (padded: each worker writes its own).
    processed: Box<[CachePadded<AtomicU64>]>,
    /// Accepted and unfinished messages, at most `global_bound`.
    global: Semaphore,
    /// Stops the workers: what is queued or running is abandoned. `stopping` is
    /// set first, so a worker checks it without the token's lock.
    stop: CancellationToken,
    stopping: AtomicBool,
    abandoned: AtomicU64,
    /// `heijunka_pool_*` with the dispatcher's name: a message is queued from
    /// just before it enters a worker's queue until the worker takes it (or it is
    /// abandoned), then running until its handler ends.
    metrics: PoolMetrics,
}

impl Shared {
    /// Messages finished by every worker.
    fn completed(&self) -> u64 {
        // Relaxed: statistics.
        self.processed
            .iter()
            .map(|p| p.load(Ordering::Relaxed))
            .sum()
    }

    /// A message accepted on `worker` is finished (or its dispatch undone).
    fn finish(&self, worker: usize) {
        self.loads.done(worker);
        self.global.add_permits(1);
    }
}

/// A message counted against the global bound and a worker's load, not yet in
/// the worker's queue: undone on drop unless delivered.
struct Routed<'a> {
    shared: &'a Shared,
    worker: usize,
    delivered: bool,
}

impl Drop for Routed<'_> {
    fn drop(&mut self) {
        if !self.delivered {
            self.shared.finish(self.worker);
        }
    }
}

struct Inner<Req, Resp, Err> {
    shared: Arc<Shared>,
    senders: Box<[mpsc::Sender<Msg<Req, Resp, Err>>]>,
    handlers: ArcSwap<Handlers<Req, Resp, Err>>,
    /// Serialises writers of `handlers`; never held while a handler runs.
    writer: Mutex<()>,
    closed: AtomicBool,
    rejected: AtomicU64,
    unknown: AtomicU64,
    queue_capacity: usize,
    global_bound: usize,
    workers: Mutex<Vec<JoinHandle<()>>>,
    /// The runtime the workers run on; the shutdown runs there too.
    runtime: tokio::runtime::Handle,
    /// The shutdown's outcome, once it has begun: it runs in its own task, so a
    /// caller that stops waiting does not stop it, and every call sees one outcome.
    report: OnceLock<watch::Receiver<Option<DispatchReport>>>,
    token: OnceLock<ShutdownToken>,
}

/// Routes each message to the handler registered under its name, on `workers`
/// tokio tasks, each with a bounded queue and running one message at a time.
///
/// - Handlers are registered by name at any time, also while messages flow or
///   from inside a handler: a lookup clones the handler out of a lock-free map
///   and calls it with no lock held.
/// - [`try_dispatch`](Self::try_dispatch) picks the least-loaded worker (live
///   counters of queued plus running messages);
///   [`try_dispatch_keyed`](Self::try_dispatch_keyed) picks the worker by the
///   key's hash, so messages for one key run one at a time in the order they were
///   dispatched. Both hand the request back at once if the chosen worker's queue
///   or the global bound is full; [`dispatch`](Self::dispatch) and
///   [`dispatch_keyed`](Self::dispatch_keyed) wait for room instead.
/// - Each accepted message gives a [`Reply`] future: the handler's value, or
///   [`HandlerError::Failed`], [`HandlerError::Panicked`] (the panic is isolated
///   to that message) or [`HandlerError::Abandoned`].
/// - [`shutdown`](Self::shutdown) stops intake, drains the queues within a grace
///   period and reports what was abandoned.
///
/// Cloning is cheap and shares the dispatcher.
///
/// ```
/// use heijunka_pool::{Dispatcher, DispatchError, HandlerError};
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dispatcher: Dispatcher<String, String, String> =
///     Dispatcher::builder().workers(4).queue_capacity(64).build()?;
/// dispatcher.register("echo", |req: String| async move { Ok(req) })?;
/// dispatcher.register("shout", |req: String| async move {
///     if req.is_empty() { Err("nothing to shout".to_string()) } else { Ok(req.to_uppercase()) }
/// })?;
///
/// let reply = dispatcher.try_dispatch("shout", "hello".to_string())?;
/// assert_eq!(reply.await?, "HELLO");
///
/// // Messages for one key keep their order.
/// let a = dispatcher.dispatch_keyed("echo", "user-7", "first".to_string()).await?;
/// let b = dispatcher.dispatch_keyed("echo", "user-7", "second".to_string()).await?;
/// assert_eq!((a.await?, b.await?), ("first".to_string(), "second".to_string()));
///
/// // Failures are typed, and the request comes back when it was not accepted.
/// let failed = dispatcher.try_dispatch("shout", String::new())?.await;
/// assert_eq!(failed, Err(HandlerError::Failed("nothing to shout".to_string())));
/// match dispatcher.try_dispatch("nope", "hi".to_string()) {
///     Err(DispatchError::UnknownHandler { name, request }) => assert_eq!(request, "hi"),
///     _ => unreachable!(),
/// }
///
/// let report = dispatcher.shutdown(Duration::from_secs(1)).await;
/// assert!(report.clean);
/// assert_eq!(report.abandoned, 0);
/// # Ok(())
/// # }
/// ```
pub struct Dispatcher<Req, Resp, Err> {
    inner: Arc<Inner<Req, Resp, Err>>,
}

impl<Req, Resp, Err> Clone for Dispatcher<Req, Resp, Err> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

/// What a [`Dispatcher::shutdown`] did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct DispatchReport {
    /// Every accepted message finished within the grace period.
    pub clean: bool,
    /// Messages that finished during the shutdown (drained from the queues).
    pub completed: u64,
    /// Messages queued or running when the grace period ran out; their replies
    /// resolve to [`HandlerError::Abandoned`].
    pub abandoned: u64,
    /// How long the shutdown took.
    pub elapsed: Duration,
}

impl<Req, Resp, Err> Dispatcher<Req, Resp, Err>
where
    Req: Send + 'static,
    Resp: Send + 'static,
    Err: Send + 'static,
{
    /// Registers `handler` under `name`.
    ///
    /// # Errors
    ///
    /// [`RegisterError::EmptyName`], [`RegisterError::Duplicate`] if `name` is
    /// taken (use [`replace`](Self::replace) to swap), [`RegisterError::Closed`]
    /// after shutdown began.
    pub fn register<F, Fut>(&self, name: impl Into<String>, handler: F) -> Result<(), RegisterError>
    where
        F: Fn(Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, Err>> + Send + 'static,
    {
        self.insert(name.into(), handler, false).map(|_| ())
    }

    /// Registers `handler` under `name`, replacing any handler there; returns
    /// whether one was replaced. Messages already dispatched run the handler they
    /// were dispatched to; the name's statistics carry on.
    ///
    /// # Errors
    ///
    /// [`RegisterError::EmptyName`] or [`RegisterError::Closed`].
    pub fn replace<F, Fut>(
        &self,
        name: impl Into<String>,
        handler: F,
    ) -> Result<bool, RegisterError>
    where
        F: Fn(Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, Err>> + Send + 'static,
    {
        self.insert(name.into(), handler, true)
    }

    fn insert<F, Fut>(&self, name: String, handler: F, replace: bool) -> Result<bool, RegisterError>
    where
        F: Fn(Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, Err>> + Send + 'static,
    {
        if name.is_empty() {
            return Err(RegisterError::EmptyName);
        }
        if self.is_closed() {
            return Err(RegisterError::Closed);
        }
        let _writer = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let current = self.inner.handlers.load_full();
        let previous = current.get(&name);
        if previous.is_some() && !replace {
            return Err(RegisterError::Duplicate { name });
        }
        let counters = previous.map_or_else(
            || Arc::new(HandlerCounters::new(self.inner.senders.len())),
            |p| Arc::clone(&p.counters),
        );
        let existed = previous.is_some();
        let entry = Arc::new(Entry {
            call: Box::new(move |req| Box::pin(handler(req)) as BoxFuture<_>),
            counters,
        });
        let mut next = HashMap::clone(&current);
        next.insert(name, entry);
        self.inner.handlers.store(Arc::new(next));
        Ok(existed)
    }

    /// Removes the handler under `name`; returns whether there was one. Messages
    /// already dispatched to it still run.
    pub fn unregister(&self, name: &str) -> bool {
        let _writer = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let current = self.inner.handlers.load_full();
        if !current.contains_key(name) {
            return false;
        }
        let mut next = HashMap::clone(&current);
        next.remove(name);
        self.inner.handlers.store(Arc::new(next));
        true
    }

    /// Whether a handler is registered under `name`.
    pub fn has_handler(&self, name: &str) -> bool {
        self.inner.handlers.load().contains_key(name)
    }

    /// Sends `request` to the handler `name` on the least-loaded worker; never
    /// waits.
    ///
    /// Least-loaded is exact for one producer; producers racing may both pick
    /// the same worker (the counters are read, then incremented, not reserved).
    ///
    /// # Errors
    ///
    /// The request comes back in [`DispatchError`]: `UnknownHandler`, `Closed`,
    /// or `Rejected` with [`Rejection::QueueFull`] (the worker's queue) or
    /// [`Rejection::AtCapacity`] (the global bound).
    pub fn try_dispatch(
        &self,
        name: &str,
        request: Req,
    ) -> Result<Reply<Resp, Err>, DispatchError<Req>> {
        self.try_route(name, None, request)
    }

    /// Sends `request` to the handler `name` on the worker chosen by `key`'s hash:
    /// messages with equal keys run one at a time, in dispatch order. Never waits.
    ///
    /// # Errors
    ///
    /// As [`try_dispatch`](Self::try_dispatch); a full queue is not bypassed (that
    /// would break the key's order).
    pub fn try_dispatch_keyed<K: Hash + ?Sized>(
        &self,
        name: &str,
        key: &K,
        request: Req,
    ) -> Result<Reply<Resp, Err>, DispatchError<Req>> {
        self.try_route(name, Some(self.worker_for(key)), request)
    }

    /// Sends `request` to the handler `name` on the least-loaded worker, waiting
    /// for room in the global bound and the worker's queue.
    ///
    /// # Errors
    ///
    /// `UnknownHandler`, or `Closed` if the dispatcher is (or gets, while this
    /// waits) shut down; the request comes back.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe for the request: dropped while it waits for room, the
    /// future drops `request` with it, undelivered (as
    /// `tokio::sync::mpsc::Sender::send` drops its message). Nothing stays
    /// counted: its place in the global bound and its worker's load come back.
    /// To keep the request when giving up, retry
    /// [`try_dispatch`](Self::try_dispatch) instead, which hands it back.
    pub async fn dispatch(
        &self,
        name: &str,
        request: Req,
    ) -> Result<Reply<Resp, Err>, DispatchError<Req>> {
        self.route(name, None, request).await
    }

    /// [`dispatch`](Self::dispatch) on the worker chosen by `key`'s hash, keeping
    /// the order of messages with equal keys.
    ///
    /// # Errors
    ///
    /// As [`dispatch`](Self::dispatch).
    ///
    /// # Cancel safety
    ///
    /// As [`dispatch`](Self::dispatch): dropped while it waits, the request is
    /// dropped with it and nothing stays counted.
    pub async fn dispatch_keyed<K: Hash + ?Sized>(
        &self,
        name: &str,
        key: &K,
        request: Req,
    ) -> Result<Reply<Resp, Err>, DispatchError<Req>> {
        let worker = self.worker_for(key);
        self.route(name, Some(worker), request).await
    }

    fn worker_for<K: Hash + ?Sized>(&self, key: &K) -> usize {
        // SipHash with fixed keys: the same key maps to the same worker for the
        // dispatcher's life.
        let mut h = std::hash::DefaultHasher::new();
        key.hash(&mut h);
        (h.finish() % self.inner.senders.len() as u64) as usize
    }

    /// The handler under `name`, cloned out: the map guard is dropped before
    /// anything runs. `None` when closed or unknown (told apart by `refuse`).
    fn lookup(&self, name: &str) -> Option<EntryRef<Req, Resp, Err>> {
        if self.is_closed() {
            return None;
        }
        self.inner.handlers.load().get(name).cloned()
    }

    /// The error for a failed [`lookup`](Self::lookup).
    fn refuse(&self, name: &str, request: Req) -> DispatchError<Req> {
        if self.is_closed() {
            return DispatchError::Closed { request };
        }
        // Relaxed: a statistic.
        self.inner.unknown.fetch_add(1, Ordering::Relaxed);
        DispatchError::UnknownHandler {
            name: name.to_owned(),
            request,
        }
    }

    fn try_route(
        &self,
        name: &str,
        worker: Option<usize>,
        request: Req,
    ) -> Result<Reply<Resp, Err>, DispatchError<Req>> {
        let inner = &*self.inner;
        let Some(entry) = self.lookup(name) else {
            return Err(self.refuse(name, request));
        };
        let w = worker.unwrap_or_else(|| inner.shared.loads.least_loaded());
        match inner.shared.global.try_acquire() {
            // Given back by `Shared::finish` when the message is done.
            Ok(permit) => permit.forget(),
            Err(_) => {
                if self.is_closed() {
                    return Err(DispatchError::Closed { request });
                }
                // Name the worker's queue when it is full too: with the default
                // bound (every queue full) that is the real cause.
                let reason = if inner.senders[w].capacity() == 0 {
                    Rejection::QueueFull {
                        capacity: inner.queue_capacity,
                    }
                } else {
                    Rejection::AtCapacity {
                        limit: inner.global_bound as u64,
                    }
                };
                return Err(self.reject(request, reason));
            }
        }
        inner.shared.loads.add(w);
        let (tx, rx) = oneshot::channel();
        let job = Job {
            entry,
            request,
            reply: tx,
        };
        // Before the send: a worker that takes the message at once must not take
        // the gauge below zero.
        inner.shared.metrics.queued.increment(1.0);
        match inner.senders[w].try_send(Msg::Job(job)) {
            Ok(()) => Ok(Reply { rx }),
            Err(e) => {
                inner.shared.metrics.queued.decrement(1.0);
                inner.shared.finish(w);
                match e {
                    mpsc::error::TrySendError::Full(msg) => Err(self.reject(
                        msg.into_request(),
                        Rejection::QueueFull {
                            capacity: inner.queue_capacity,
                        },
                    )),
                    mpsc::error::TrySendError::Closed(msg) => Err(DispatchError::Closed {
                        request: msg.into_request(),
                    }),
                }
            }
        }
    }

    fn reject(&self, request: Req, reason: Rejection) -> DispatchError<Req> {
        // Relaxed: a statistic.
        self.inner.rejected.fetch_add(1, Ordering::Relaxed);
        self.inner.shared.metrics.rejected.increment(1);
        DispatchError::Rejected { request, reason }
    }

    async fn route(
        &self,
        name: &str,
        worker: Option<usize>,
        request: Req,
    ) -> Result<Reply<Resp, Err>, DispatchError<Req>> {
        let inner = &*self.inner;
        let Some(entry) = self.lookup(name) else {
            return Err(self.refuse(name, request));
        };
        // Given back by `Shared::finish` when the message is done. The
        // non-waiting path first: it skips building an `Acquire` future.
        match inner.shared.global.try_acquire() {
            Ok(permit) => permit.forget(),
            Err(TryAcquireError::NoPermits) => match inner.shared.global.acquire().await {
                Ok(permit) => permit.forget(),
                // Closed by shutdown.
                Err(_) => return Err(DispatchError::Closed { request }),
            },
            Err(TryAcquireError::Closed) => return Err(DispatchError::Closed { request }),
        }
        let w = worker.unwrap_or_else(|| inner.shared.loads.least_loaded());
        inner.shared.loads.add(w);
        // Gives the permit and the load count back if the message never reaches
        // the queue: refused, or this future dropped while it waits for room.
        let mut routed = Routed {
            shared: &inner.shared,
            worker: w,
            delivered: false,
        };
        // Room in the worker's queue first; the request stays here until then.
        let Ok(slot) = inner.senders[w].reserve().await else {
            return Err(DispatchError::Closed { request });
        };
        // This dispatch may have waited: if shutdown began meanwhile (here or in
        // the registered coordinator), it is refused, not admitted while draining.
        if self.is_closed() {
            return Err(DispatchError::Closed { request });
        }
        let (tx, rx) = oneshot::channel();
        inner.shared.metrics.queued.increment(1.0);
        slot.send(Msg::Job(Job {
            entry,
            request,
            reply: tx,
        }));
        // The worker calls `finish` when the message is done.
        routed.delivered = true;
        Ok(Reply { rx })
    }
}

impl<Req, Resp, Err> Dispatcher<Req, Resp, Err> {
    /// Whether the dispatcher refuses new messages (shutdown began, here or in a
    /// registered [`Shutdown`]).
    pub fn is_closed(&self) -> bool {
        // SeqCst: pairs with the store in `run_shutdown`, so a dispatch that waited
        // for room and woke after shutdown began sees it.
        self.inner.closed.load(Ordering::SeqCst)
            || self
                .inner
                .token
                .get()
                .is_some_and(ShutdownToken::is_triggered)
    }

    /// The shutdown, after intake stopped at `start` with `completed_before`
    /// messages finished.
    async fn run_shutdown(
        inner: &Inner<Req, Resp, Err>,
        grace: Duration,
        start: Instant,
        completed_before: u64,
    ) -> DispatchReport {
        let shared = &inner.shared;
        // Every accepted message holds one permit until it is finished: taking all
        // of them means every queue is drained.
        let all = u32::try_from(inner.global_bound).unwrap_or(u32::MAX);
        let clean = tokio::time::timeout(grace, shared.global.acquire_many(all))
            .await
            .map(|p| p.map(tokio::sync::SemaphorePermit::forget).is_ok())
            .unwrap_or(false);
        shared.global.close();
        shared.stopping.store(true, Ordering::SeqCst);
        shared.stop.cancel();
        // Wake workers waiting on an empty queue; a full queue's worker is not
        // waiting and sees `stopping` after its next message.
        for tx in &inner.senders {
            let _ = tx.try_send(Msg::Wake);
        }
        let joins =
            std::mem::take(&mut *inner.workers.lock().unwrap_or_else(PoisonError::into_inner));
        for j in joins {
            // A worker never panics (handlers are caught); an error means the
            // runtime is going away, and its messages are reported abandoned by
            // their replies.
            let _ = j.await;
        }
        let report = DispatchReport {
            clean,
            completed: shared.completed() - completed_before,
            abandoned: shared.abandoned.load(Ordering::Relaxed),
            elapsed: start.elapsed(),
        };
        tracing::info!(
            clean = report.clean,
            completed = report.completed,
            abandoned = report.abandoned,
            "dispatcher shut down"
        );
        report
    }

    /// A snapshot of the dispatcher's numbers.
    pub fn stats(&self) -> DispatcherStats {
        let inner = &*self.inner;
        let shared = &inner.shared;
        let workers = inner
            .senders
            .iter()
            .enumerate()
            .map(|(w, tx)| WorkerStats {
                queued: tx.max_capacity() - tx.capacity(),
                load: shared.loads.get(w),
                // Relaxed: statistics.
                processed: shared.processed[w].load(Ordering::Relaxed),
            })
            .collect();
        let handlers = inner
            .handlers
            .load()
            .iter()
            .map(|(name, e)| (name.clone(), e.counters.snapshot()))
            .collect::<BTreeMap<_, _>>();
        DispatcherStats {
            workers,
            handlers,
            in_flight: shared.loads.total(),
            // Relaxed: statistics.
            rejected: inner.rejected.load(Ordering::Relaxed),
            unknown: inner.unknown.load(Ordering::Relaxed),
            abandoned: shared.abandoned.load(Ordering::Relaxed),
            closed: self.is_closed(),
        }
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.inner.senders.len()
    }
}

impl<Req, Resp, Err> Dispatcher<Req, Resp, Err>
where
    Req: Send + 'static,
    Resp: Send + 'static,
    Err: Send + 'static,
{
    /// Stops accepting messages, lets the workers drain their queues for up to
    /// `grace`, then abandons what is left (queued messages and running handlers;
    /// their replies resolve to [`HandlerError::Abandoned`]) and ends the workers.
    ///
    /// The first call starts the shutdown (with its `grace`) in a task of the
    /// dispatcher's runtime; every call, concurrent or later, waits for that one
    /// outcome and returns its report.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future stops only the waiting. The shutdown goes
    /// on, and a later call waits for the same outcome.
    pub async fn shutdown(&self, grace: Duration) -> DispatchReport {
        let mut report = self
            .inner
            .report
            .get_or_init(|| {
                // Intake stops now, in the call, not when the task first runs.
                let start = Instant::now();
                self.inner.closed.store(true, Ordering::SeqCst);
                let completed_before = self.inner.shared.completed();
                let (tx, rx) = watch::channel(None);
                let inner = Arc::clone(&self.inner);
                self.inner.runtime.spawn(async move {
                    let report = Self::run_shutdown(&inner, grace, start, completed_before).await;
                    tx.send_replace(Some(report));
                });
                rx
            })
            .clone();
        let seen = report.wait_for(Option::is_some).await.map(|r| r.clone());
        match seen {
            Ok(Some(report)) => report,
            // The runtime dropped the shutdown task before it finished: nothing
            // more can be drained.
            _ => DispatchReport {
                clean: false,
                completed: 0,
                // Relaxed: a statistic.
                abandoned: self.inner.shared.abandoned.load(Ordering::Relaxed),
                elapsed: Duration::ZERO,
            },
        }
    }

    /// Refuses messages once `shutdown` is triggered, and registers a stop hook
    /// that shuts this dispatcher down with `grace` (the hook fails, naming the
    /// count, if messages were abandoned).
    ///
    /// The hook's time limit is `grace` plus
    /// [`HOOK_GRACE_MARGIN`](heijunka_shutdown::HOOK_GRACE_MARGIN) (or the
    /// coordinator's hook timeout if longer), so the shutdown never cuts this
    /// component off before its grace is over
    /// ([`Shutdown::on_stop_with_grace`](heijunka_shutdown::Shutdown::on_stop_with_grace)).
    ///
    /// # Errors
    ///
    /// [`heijunka_shutdown::ShuttingDown`] if the shutdown's hooks already ran.
    pub fn register_with(
        &self,
        shutdown: &Shutdown,
        name: impl Into<String>,
        grace: Duration,
    ) -> Result<(), heijunka_shutdown::ShuttingDown> {
        let _ = self.inner.token.set(shutdown.token());
        let dispatcher = self.clone();
        shutdown.on_stop_with_grace(name, grace, move || async move {
            let report = dispatcher.shutdown(grace).await;
            if report.clean {
                Ok(())
            } else {
                Err(format!("{} messages abandoned", report.abandoned))
            }
        })
    }
}

impl<Req, Resp, Err> fmt::Debug for Dispatcher<Req, Resp, Err> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dispatcher")
            .field("workers", &self.inner.senders.len())
            .field("queue_capacity", &self.inner.queue_capacity)
            .field("global_bound", &self.inner.global_bound)
            .field("handlers", &self.inner.handlers.load().len())
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}
