//! [`Batcher`]: many calls become one batch call, by size or by time.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use heijunka_core::{ConfigError, Rejection, validate};
use tokio::sync::{mpsc, oneshot};

/// Default [`max_size`](BatcherBuilder::max_size) of a batch.
pub const DEFAULT_MAX_BATCH: usize = 64;
/// Default [`max_wait`](BatcherBuilder::max_wait) before a partial batch goes.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_millis(5);
/// Default [`capacity`](BatcherBuilder::capacity): calls waiting for a batch.
pub const DEFAULT_BATCH_QUEUE: usize = 1024;

/// Why a [`Batcher::call`] did not return its result.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    /// The batch function returned a different number of results than it was
    /// given items; every caller of that batch gets this error.
    #[error("the batch function returned {got} results for {expected} items")]
    WrongResultCount {
        /// Items in the batch.
        expected: usize,
        /// Results returned.
        got: usize,
    },
    /// The batch function panicked; every caller of that batch gets this error.
    #[error("the batch function panicked")]
    HandlerPanicked,
    /// Refused: [`Rejection::QueueFull`] from [`try_call`](Batcher::try_call),
    /// [`Rejection::TimedOut`] from [`call_timeout`](Batcher::call_timeout), or
    /// [`Rejection::ShuttingDown`] when the batching task is gone (its runtime shut
    /// down).
    #[error("{0}")]
    Rejected(Rejection),
}

struct Job<I, O> {
    item: I,
    reply: oneshot::Sender<Result<O, BatchError>>,
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
#[derive(Clone, Copy, Debug)]
#[must_use = "a builder does nothing until `build()`"]
pub struct BatcherBuilder {
    max_size: usize,
    max_wait: Duration,
    capacity: usize,
}

impl BatcherBuilder {
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
    /// refuses). Default [`DEFAULT_BATCH_QUEUE`].
    pub fn capacity(mut self, n: usize) -> Self {
        self.capacity = n;
        self
    }

    /// Validates and starts the batching task on the current tokio runtime.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the field for a `max_size` of 0, a zero
    /// `max_wait`, or a `capacity` of 0; and one naming `runtime` when called
    /// outside a tokio runtime.
    pub fn build<I, O, F, Fut>(self, handler: F) -> Result<Batcher<I, O>, ConfigError>
    where
        I: Send + 'static,
        O: Send + 'static,
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<O>> + Send + 'static,
    {
        validate::at_least("max_size", self.max_size, 1)?;
        validate::non_zero_duration("max_wait", self.max_wait)?;
        validate::at_least("capacity", self.capacity, 1)?;
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
        let now = tokio::time::Instant::now();
        // A wait too long to represent: about 30 years, as tokio's own far future.
        let deadline = now
            .checked_add(max_wait)
            .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365 * 30));
        let mut jobs = Vec::with_capacity(max_size.min(64));
        jobs.push(first);
        while jobs.len() < max_size {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(job)) => jobs.push(job),
                Ok(None) | Err(_) => break,
            }
        }
        let (items, replies): (Vec<I>, Vec<_>) =
            jobs.into_iter().map(|j| (j.item, j.reply)).unzip();
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
                let err = BatchError::WrongResultCount {
                    expected,
                    got: results.len(),
                };
                for reply in replies {
                    let _ = reply.send(Err(err.clone()));
                }
            }
            Err(_) => {
                for reply in replies {
                    let _ = reply.send(Err(BatchError::HandlerPanicked));
                }
            }
        }
    }
}

impl Batcher<(), ()> {
    /// A builder with the defaults.
    pub fn builder() -> BatcherBuilder {
        BatcherBuilder {
            max_size: DEFAULT_MAX_BATCH,
            max_wait: DEFAULT_MAX_WAIT,
            capacity: DEFAULT_BATCH_QUEUE,
        }
    }
}

impl<I: Send + 'static, O: Send + 'static> Batcher<I, O> {
    /// Adds `item` to the next batch (waiting for room in the batch queue) and
    /// waits for its result.
    ///
    /// # Errors
    ///
    /// A [`BatchError`] when the batch function misbehaved for this item's batch,
    /// or [`Rejection::ShuttingDown`] when the batching task is gone.
    pub async fn call(&self, item: I) -> Result<O, BatchError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job { item, reply })
            .await
            .map_err(|_| BatchError::Rejected(Rejection::ShuttingDown))?;
        Self::answer(rx).await
    }

    /// Adds `item` to the next batch if the batch queue has room now, and waits for
    /// its result.
    ///
    /// # Errors
    ///
    /// [`Rejection::QueueFull`] at once when the batch queue is full; otherwise as
    /// [`call`](Self::call).
    pub async fn try_call(&self, item: I) -> Result<O, BatchError> {
        let (reply, rx) = oneshot::channel();
        self.tx.try_send(Job { item, reply }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => BatchError::Rejected(Rejection::QueueFull {
                capacity: self.tx.max_capacity(),
            }),
            mpsc::error::TrySendError::Closed(_) => BatchError::Rejected(Rejection::ShuttingDown),
        })?;
        Self::answer(rx).await
    }

    /// [`call`](Self::call), giving up after `timeout` (tokio's timer). An item
    /// already in a batch still runs; only its result is dropped.
    ///
    /// # Errors
    ///
    /// [`Rejection::TimedOut`] after `timeout`; otherwise as [`call`](Self::call).
    pub async fn call_timeout(&self, item: I, timeout: Duration) -> Result<O, BatchError> {
        tokio::time::timeout(timeout, self.call(item))
            .await
            .unwrap_or(Err(BatchError::Rejected(Rejection::TimedOut {
                after: timeout,
            })))
    }

    async fn answer(rx: oneshot::Receiver<Result<O, BatchError>>) -> Result<O, BatchError> {
        rx.await
            .unwrap_or(Err(BatchError::Rejected(Rejection::ShuttingDown)))
    }
}

impl<I, O> fmt::Debug for Batcher<I, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batcher")
            .field("queued", &(self.tx.max_capacity() - self.tx.capacity()))
            .finish_non_exhaustive()
    }
}
