//! [`Batcher`]: many calls become one batch call, by size or by time.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use heijunka_core::{ConfigError, Rejection, validate};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::Rejected;

/// Default [`max_size`](BatcherBuilder::max_size) of a batch.
pub const DEFAULT_MAX_BATCH: usize = 64;
/// Default [`max_wait`](BatcherBuilder::max_wait) before a partial batch goes.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_millis(5);
/// Default [`capacity`](BatcherBuilder::capacity): calls waiting for a batch.
pub const DEFAULT_BATCH_QUEUE: usize = 1024;
/// The largest [`capacity`](BatcherBuilder::capacity): the bound of tokio's
/// bounded channel, which holds the calls waiting for a batch
/// (`tokio::sync::Semaphore::MAX_PERMITS`, `usize::MAX >> 3`).
pub const MAX_BATCH_QUEUE: usize = Semaphore::MAX_PERMITS;

/// Why a [`Batcher`] call did not return its result. Where the item never reached
/// the batch function it comes back ([`into_inner`](Self::into_inner)); the
/// `Debug` output does not print it.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BatchError<I> {
    /// The batch function returned a different number of results than it was
    /// given items; every caller of that batch gets this error.
    WrongResultCount {
        /// Items in the batch.
        expected: usize,
        /// Results returned.
        got: usize,
    },
    /// The batch function panicked; every caller of that batch gets this error.
    HandlerPanicked,
    /// The item did not go into a batch, and comes back:
    /// [`Rejection::QueueFull`] from [`try_call`](Batcher::try_call),
    /// [`Rejection::TimedOut`] from [`call_timeout`](Batcher::call_timeout) when
    /// the time ran out before a batch took the item, or
    /// [`Rejection::ShuttingDown`] when the batching task is gone (its runtime
    /// shut down).
    Rejected(Rejected<I>),
    /// The item went into a batch, but its result did not come back:
    /// [`Rejection::TimedOut`] when [`call_timeout`](Batcher::call_timeout) ran
    /// out while the batch ran (the batch still runs to its end; only this
    /// caller's result is dropped), or [`Rejection::ShuttingDown`] when the
    /// runtime stopped the batch.
    ResultLost(Rejection),
}

impl<I> BatchError<I> {
    /// The item, when it never reached the batch function.
    pub fn into_inner(self) -> Option<I> {
        match self {
            Self::Rejected(r) => Some(r.into_inner()),
            _ => None,
        }
    }

    /// The rejection reason, for [`Rejected`](Self::Rejected) and
    /// [`ResultLost`](Self::ResultLost).
    pub fn reason(&self) -> Option<Rejection> {
        match self {
            Self::Rejected(r) => Some(r.reason()),
            Self::ResultLost(reason) => Some(*reason),
            _ => None,
        }
    }
}

impl<I> fmt::Debug for BatchError<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WrongResultCount { expected, got } => f
                .debug_struct("WrongResultCount")
                .field("expected", expected)
                .field("got", got)
                .finish(),
            Self::HandlerPanicked => f.write_str("HandlerPanicked"),
            Self::Rejected(r) => f.debug_tuple("Rejected").field(r).finish(),
            Self::ResultLost(reason) => f.debug_tuple("ResultLost").field(reason).finish(),
        }
    }
}

impl<I> fmt::Display for BatchError<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WrongResultCount { expected, got } => write!(
                f,
                "the batch function returned {got} results for {expected} items"
            ),
            Self::HandlerPanicked => f.write_str("the batch function panicked"),
            Self::Rejected(r) => fmt::Display::fmt(&r.reason(), f),
            Self::ResultLost(reason) => write!(f, "item batched, result lost: {reason}"),
        }
    }
}

impl<I> std::error::Error for BatchError<I> {}

/// What the batching task sends back when a batch fails as a whole.
#[derive(Clone, Copy)]
enum Failed {
    WrongResultCount { expected: usize, got: usize },
    HandlerPanicked,
}

impl<I> From<Failed> for BatchError<I> {
    fn from(f: Failed) -> Self {
        match f {
            Failed::WrongResultCount { expected, got } => {
                BatchError::WrongResultCount { expected, got }
            }
            Failed::HandlerPanicked => BatchError::HandlerPanicked,
        }
    }
}

/// A call's item, taken exactly once: by the batching task when it forms the
/// batch, or back by the caller when it gives up first. The lock is held only to
/// move the `Option` out (never across user code), so the two takers agree on who
/// has the item.
struct Slot<I>(Mutex<Option<I>>);

impl<I> Slot<I> {
    fn take(&self) -> Option<I> {
        // Never poisoned: nothing under the lock can panic.
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

struct Job<I, O> {
    item: Arc<Slot<I>>,
    reply: oneshot::Sender<Result<O, Failed>>,
}

/// The caller's side of one call: its item's slot and the reply.
struct Ticket<I, O> {
    item: Arc<Slot<I>>,
    reply: oneshot::Receiver<Result<O, Failed>>,
}

fn job<I, O>(item: I) -> (Job<I, O>, Ticket<I, O>) {
    let slot = Arc::new(Slot(Mutex::new(Some(item))));
    let (tx, rx) = oneshot::channel();
    (
        Job {
            item: Arc::clone(&slot),
            reply: tx,
        },
        Ticket {
            item: slot,
            reply: rx,
        },
    )
}

impl<I, O> Ticket<I, O> {
    /// Gives up for `reason`: the item comes back if no batch has taken it.
    fn give_up(&self, reason: Rejection) -> BatchError<I> {
        match self.item.take() {
            Some(item) => BatchError::Rejected(Rejected::new(item, reason)),
            None => BatchError::ResultLost(reason),
        }
    }

    async fn answer(&mut self) -> Result<O, BatchError<I>> {
        match (&mut self.reply).await {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(failed)) => Err(failed.into()),
            // The task dropped the reply unanswered: it is gone.
            Err(_) => Err(self.give_up(Rejection::ShuttingDown)),
        }
    }
}

/// Groups calls into batches — by [`max_size`](BatcherBuilder::max_size) or
/// [`max_wait`](BatcherBuilder::max_wait), whichever comes first — runs the batch
/// function once per batch, and gives each caller its own result: result `i` of
/// the batch goes to the caller of item `i`. For request batching: many lookups
/// become one load.
///
/// One tokio task per batcher collects calls from a bounded channel
/// ([`capacity`](BatcherBuilder::capacity)) and runs batches one after another:
/// calls arriving while a batch runs wait in the channel, and the next batch's
/// `max_wait` starts when its first call is taken. The wait is measured on tokio's timer,
/// so tests run it with paused time. The task ends when every handle is dropped.
///
/// If the batch function returns the wrong number of results, or panics, every
/// caller in that batch gets a typed [`BatchError`]; no caller gets another's
/// result. For a fallible batch, return `Vec<Result<_, _>>`.
///
/// An item is never lost silently: until the batch function has it, a call that
/// is refused or gives up hands it back in [`BatchError::Rejected`]. An item
/// taken back by a timed-out [`call_timeout`](Self::call_timeout) before its batch
/// formed is left out of the batch.
///
/// Clones are handles to the same batcher.
///
/// ```
/// use heijunka_backpressure::Batcher;
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // One "database load" for many lookups.
/// let batcher = Batcher::builder()
///     .max_size(100)
///     .max_wait(Duration::from_millis(2))
///     .build(|ids: Vec<u32>| async move { ids.into_iter().map(|id| id * 10).collect() })?;
///
/// let (a, b) = tokio::join!(batcher.call(1), batcher.call(2));
/// assert_eq!((a?, b?), (10, 20));
/// # Ok(())
/// # }
/// ```
pub struct Batcher<I, O> {
    tx: mpsc::Sender<Job<I, O>>,
}

impl<I, O> Clone for Batcher<I, O> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

/// Builds a [`Batcher`]; see [`Batcher::builder`].
#[must_use = "a builder does nothing until `build()`"]
pub struct BatcherBuilder<I, O> {
    max_size: usize,
    max_wait: Duration,
    capacity: usize,
    types: PhantomData<fn(I) -> O>,
}

impl<I, O> Clone for BatcherBuilder<I, O> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<I, O> Copy for BatcherBuilder<I, O> {}

impl<I, O> fmt::Debug for BatcherBuilder<I, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatcherBuilder")
            .field("max_size", &self.max_size)
            .field("max_wait", &self.max_wait)
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl<I, O> BatcherBuilder<I, O> {
    /// The most items in one batch. Default [`DEFAULT_MAX_BATCH`].
    pub fn max_size(mut self, n: usize) -> Self {
        self.max_size = n;
        self
    }

    /// The longest the first item of a batch waits for more. Default
    /// [`DEFAULT_MAX_WAIT`].
    pub fn max_wait(mut self, d: Duration) -> Self {
        self.max_wait = d;
        self
    }

    /// Calls that may wait for a batch before `call` waits too (and `try_call`
    /// refuses). Default [`DEFAULT_BATCH_QUEUE`]; at most [`MAX_BATCH_QUEUE`].
    pub fn capacity(mut self, n: usize) -> Self {
        self.capacity = n;
        self
    }

    /// Validates and starts the batching task on the current tokio runtime.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the field for a `max_size` of 0, a zero
    /// `max_wait`, or a `capacity` of 0 or above [`MAX_BATCH_QUEUE`]; and one
    /// naming `runtime` when called outside a tokio runtime.
    pub fn build<F, Fut>(self, handler: F) -> Result<Batcher<I, O>, ConfigError>
    where
        I: Send + 'static,
        O: Send + 'static,
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<O>> + Send + 'static,
    {
        validate::at_least("max_size", self.max_size, 1)?;
        validate::non_zero_duration("max_wait", self.max_wait)?;
        validate::at_least("capacity", self.capacity, 1)?;
        validate::at_most("capacity", self.capacity, MAX_BATCH_QUEUE)?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            ConfigError::new(
                "runtime",
                "none",
                "must be a running tokio runtime: build() spawns the batching task",
            )
        })?;
        let (tx, rx) = mpsc::channel(self.capacity);
        runtime.spawn(run(rx, Arc::new(handler), self.max_size, self.max_wait));
        Ok(Batcher { tx })
    }
}

/// A deadline `d` from now, or about 30 years (tokio's own far future) when that
/// is not representable.
fn deadline_after(d: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365 * 30))
}

async fn run<I, O, F, Fut>(
    mut rx: mpsc::Receiver<Job<I, O>>,
    handler: Arc<F>,
    max_size: usize,
    max_wait: Duration,
) where
    I: Send + 'static,
    O: Send + 'static,
    F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Vec<O>> + Send + 'static,
{
    while let Some(first) = rx.recv().await {
        let deadline = deadline_after(max_wait);
        let mut jobs = Vec::with_capacity(max_size.min(64));
        jobs.push(first);
        while jobs.len() < max_size {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(job)) => jobs.push(job),
                Ok(None) | Err(_) => break,
            }
        }
        let mut items = Vec::with_capacity(jobs.len());
        let mut replies = Vec::with_capacity(jobs.len());
        for job in jobs {
            // An empty slot: the caller timed out and took its item back.
            if let Some(item) = job.item.take() {
                items.push(item);
                replies.push(job.reply);
            }
        }
        if items.is_empty() {
            continue;
        }
        let expected = items.len();
        // The batch runs in its own task so a panic in it is caught and reported.
        let handler = Arc::clone(&handler);
        let outcome = tokio::spawn(async move { handler(items).await }).await;
        match outcome {
            Ok(results) if results.len() == expected => {
                for (reply, result) in replies.into_iter().zip(results) {
                    // A caller that gave up no longer listens; nothing to do.
                    let _ = reply.send(Ok(result));
                }
            }
            Ok(results) => {
                let err = Failed::WrongResultCount {
                    expected,
                    got: results.len(),
                };
                for reply in replies {
                    let _ = reply.send(Err(err));
                }
            }
            Err(_) => {
                for reply in replies {
                    let _ = reply.send(Err(Failed::HandlerPanicked));
                }
            }
        }
    }
}

impl<I, O> Batcher<I, O> {
    /// A builder with the defaults (the item and output types are inferred from
    /// the batch function, or named as `Batcher::<I, O>::builder`).
    pub fn builder() -> BatcherBuilder<I, O> {
        BatcherBuilder {
            max_size: DEFAULT_MAX_BATCH,
            max_wait: DEFAULT_MAX_WAIT,
            capacity: DEFAULT_BATCH_QUEUE,
            types: PhantomData,
        }
    }

    /// Calls waiting in the batch queue (queued, not yet taken into a batch).
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

impl<I: Send + 'static, O: Send + 'static> Batcher<I, O> {
    /// Adds `item` to the next batch (waiting for room in the batch queue) and
    /// waits for its result.
    ///
    /// # Errors
    ///
    /// A [`BatchError`] when the batch function misbehaved for this item's batch,
    /// or [`Rejection::ShuttingDown`] when the batching task is gone (with the
    /// item, in [`BatchError::Rejected`], if no batch took it).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future while it waits for room in the batch queue drops the
    /// item with it (nothing was queued; as tokio's `mpsc::Sender::send`). Once
    /// the item is queued it stays queued: it runs in a batch as any other, and
    /// only this caller's result is lost; the batch and every other caller in it
    /// are unaffected, and the queue slot is freed when the batch forms.
    pub async fn call(&self, item: I) -> Result<O, BatchError<I>> {
        let (job, mut ticket) = job(item);
        if self.tx.send(job).await.is_err() {
            // The job came back in the error and was dropped; the slot still holds
            // the item.
            return Err(ticket.give_up(Rejection::ShuttingDown));
        }
        ticket.answer().await
    }

    /// Adds `item` to the next batch if the batch queue has room now, and waits for
    /// its result.
    ///
    /// # Errors
    ///
    /// [`BatchError::Rejected`] with the item and [`Rejection::QueueFull`] at once
    /// when the batch queue is full; otherwise as [`call`](Self::call).
    ///
    /// # Cancel safety
    ///
    /// The item is queued (or handed back) in the first poll; dropped after that,
    /// it behaves as a dropped [`call`](Self::call) whose item is queued: it runs
    /// in a batch, and only this caller's result is lost.
    pub async fn try_call(&self, item: I) -> Result<O, BatchError<I>> {
        let (job, mut ticket) = job(item);
        if let Err(e) = self.tx.try_send(job) {
            let reason = match e {
                mpsc::error::TrySendError::Full(_) => Rejection::QueueFull {
                    capacity: self.tx.max_capacity(),
                },
                mpsc::error::TrySendError::Closed(_) => Rejection::ShuttingDown,
            };
            return Err(ticket.give_up(reason));
        }
        ticket.answer().await
    }

    /// [`call`](Self::call), giving up after `timeout` (tokio's timer).
    ///
    /// # Errors
    ///
    /// When `timeout` runs out: [`BatchError::Rejected`] with the item and
    /// [`Rejection::TimedOut`] if no batch had taken it yet (it is then left out
    /// of its batch), or [`BatchError::ResultLost`] with
    /// [`Rejection::TimedOut`] if it was already in a batch (the batch runs to its
    /// end; this result is dropped). Otherwise as [`call`](Self::call).
    ///
    /// # Cancel safety
    ///
    /// As [`call`](Self::call): dropped before the item is queued, the item is
    /// dropped with the future; dropped after, it stays queued and runs, and only
    /// the result is lost. (It is the timeout, not a drop, that takes a queued
    /// item back.)
    pub async fn call_timeout(&self, item: I, timeout: Duration) -> Result<O, BatchError<I>> {
        let deadline = deadline_after(timeout);
        let timed_out = Rejection::TimedOut { after: timeout };
        let (job, mut ticket) = job(item);
        match tokio::time::timeout_at(deadline, self.tx.send(job)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(ticket.give_up(Rejection::ShuttingDown)),
            // The send (and the job in it) was dropped; the slot holds the item.
            Err(_) => return Err(ticket.give_up(timed_out)),
        }
        let answered = tokio::time::timeout_at(deadline, ticket.answer()).await;
        match answered {
            Ok(result) => result,
            Err(_) => Err(ticket.give_up(timed_out)),
        }
    }
}

impl<I, O> fmt::Debug for Batcher<I, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batcher")
            .field("queued", &self.queued())
            .finish_non_exhaustive()
    }
}
