//! The handler runtime: [`Topic::handle`] runs a handler on every event with
//! bounded concurrency, panic isolation, retries and dead letters.

use std::fmt;
use std::future::{Future, poll_fn};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::pin;
use std::sync::PoisonError;
use std::task::Poll;
use std::time::Duration;

use heijunka_core::validate;
use heijunka_pool::TaskPool;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::AbortHandle;

use crate::stats::HandlerStats;
use crate::topic::TopicInner;
use crate::{Event, Policy, SubscribeError, SubscriberBuilder, Topic};

/// How many times a handler is tried on one event when not set: once, and two
/// retries.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// The largest concurrency a handler runtime accepts.
pub const MAX_CONCURRENCY: usize = 1 << 20;

/// What a handler returns: `()` (always a success) or `Result<(), E>` with a
/// displayable error (a failure, retried, then dead-lettered).
pub trait HandlerOutcome {
    /// `Ok`, or the failure's message.
    fn into_outcome(self) -> Result<(), String>;
}

impl HandlerOutcome for () {
    fn into_outcome(self) -> Result<(), String> {
        Ok(())
    }
}

impl<Er: fmt::Display> HandlerOutcome for Result<(), Er> {
    fn into_outcome(self) -> Result<(), String> {
        self.map_err(|e| e.to_string())
    }
}

/// An event whose handler failed every attempt, published to the dead-letter
/// topic set with [`HandlerBuilder::dead_letter`].
pub struct DeadLetter<E: Send + Sync + 'static> {
    /// The event (the same shared payload; a pooled one goes back to its pool
    /// once the dead letter is dropped too).
    pub event: Event<E>,
    /// The topic it came from.
    pub topic: String,
    /// Attempts made.
    pub attempts: u32,
    /// The last failure: the handler's error, or `panicked: <message>`.
    pub error: String,
}

impl<E: Send + Sync + 'static> fmt::Debug for DeadLetter<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetter")
            .field("topic", &self.topic)
            .field("attempts", &self.attempts)
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

/// Configures a handler runtime; made by [`Topic::handler`].
#[must_use = "a builder does nothing until `spawn()`"]
pub struct HandlerBuilder<E: Send + Sync + 'static> {
    concurrency: usize,
    max_attempts: u32,
    dead_letter: Option<Topic<DeadLetter<E>>>,
    subscriber: SubscriberBuilder<E>,
}

impl<E: Send + Sync + 'static> HandlerBuilder<E> {
    /// Tries the handler up to `attempts` times per event (default
    /// [`DEFAULT_MAX_ATTEMPTS`]; at least 1).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// Where events go after failing every attempt. Without one they are dropped,
    /// counted as `abandoned` and logged.
    pub fn dead_letter(mut self, topic: Topic<DeadLetter<E>>) -> Self {
        self.dead_letter = Some(topic);
        self
    }

    /// The handler's buffer (default [`DEFAULT_BUFFER`](crate::DEFAULT_BUFFER)).
    pub fn buffer(mut self, events: usize) -> Self {
        self.subscriber = self.subscriber.buffer(events);
        self
    }

    /// The publish policy toward the handler's buffer (default
    /// [`Policy::Timeout`] of 5 s).
    pub fn policy(mut self, policy: Policy) -> Self {
        self.subscriber = self.subscriber.policy(policy);
        self
    }

    /// Events below this version (and not critical) skip the handler.
    pub fn min_version(mut self, version: u64) -> Self {
        self.subscriber = self.subscriber.min_version(version);
        self
    }

    /// Subscribes and starts the runtime on the current tokio runtime.
    ///
    /// # Errors
    ///
    /// [`SubscribeError::Config`] (concurrency of zero or above
    /// [`MAX_CONCURRENCY`], zero attempts, bad buffer
    /// settings), [`SubscribeError::Closed`], or [`SubscribeError::NoRuntime`]
    /// outside a tokio runtime.
    pub fn spawn<F, Fut>(self, handler: F) -> Result<Handler, SubscribeError>
    where
        F: Fn(Event<E>) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: HandlerOutcome,
    {
        validate::at_least("concurrency", self.concurrency, 1)?;
        validate::at_most("concurrency", self.concurrency, MAX_CONCURRENCY)?;
        validate::at_least("max_attempts", self.max_attempts, 1)?;
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| SubscribeError::NoRuntime)?;
        // As many may wait for a turn as may run: bounded, and the driver never
        // waits on an empty waiting queue for a slot only running tasks free.
        let pool = TaskPool::builder()
            .max_running(self.concurrency)
            .max_waiting(self.concurrency)
            .build()?;
        let topic = self.subscriber.topic.clone();
        let mut sub = self.subscriber.subscribe()?;
        // Weak: the handler is kept in the topic's list; strong references here
        // would make a cycle that keeps the topic alive forever.
        let (intake_topic, intake) = (Arc::downgrade(&sub.topic), Arc::downgrade(&sub.inner));
        let (done, _) = watch::channel(false);
        let id = HANDLER_IDS.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::new(Shared {
            id,
            topic: topic.name().to_owned(),
            dead_letter_topic: self.dead_letter.as_ref().map(|t| t.name().to_owned()),
            concurrency: self.concurrency,
            max_attempts: self.max_attempts,
            pool: std::sync::Mutex::new(Some(pool.clone())),
            last: std::sync::OnceLock::new(),
            close_intake: Box::new(move || {
                if let (Some(topic), Some(sub)) = (intake_topic.upgrade(), intake.upgrade()) {
                    topic.close_subscriber(&sub);
                }
            }),
            retire: retire(Arc::downgrade(&topic.inner)),
            counters: Counters::default(),
            done,
            driver: std::sync::Mutex::new(None),
        });
        let handler = Arc::new(handler);
        let dead_letter = self.dead_letter;
        let s = Arc::clone(&shared);
        // One permit per job from before it is spawned until its future is
        // dropped (finished or cancelled): taking them all means every job is
        // over. As many as the pool runs and queues.
        let slots = 2 * self.concurrency;
        let jobs = Arc::new(Semaphore::new(slots));
        let driver = runtime.spawn(async move {
            while let Some(event) = sub.recv().await {
                Counters::bump(&s.counters.received);
                let Ok(permit) = Arc::clone(&jobs).acquire_owned().await else {
                    break;
                };
                let job = run(
                    Arc::clone(&s),
                    Arc::clone(&handler),
                    dead_letter.clone(),
                    event,
                    permit,
                );
                // Refused only once the pool is shut down: the job (and its
                // event) is dropped here, and the event goes back.
                if pool.spawn(job).await.is_err() {
                    break;
                }
            }
            drop(sub);
            let all = u32::try_from(slots).unwrap_or(u32::MAX);
            let _ = jobs.acquire_many(all).await;
            pool.shutdown(Duration::ZERO).await;
            drop(pool);
            s.finish();
        });
        *shared.driver.lock().unwrap_or_else(PoisonError::into_inner) = Some(driver.abort_handle());
        let handler = Handler { shared };
        topic
            .inner
            .handlers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(HandlerEntry::Live(handler.clone()));
        Ok(handler)
    }
}

impl<E: Send + Sync + 'static> fmt::Debug for HandlerBuilder<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerBuilder")
            .field("concurrency", &self.concurrency)
            .field("max_attempts", &self.max_attempts)
            .field("dead_letter", &self.dead_letter.as_ref().map(Topic::name))
            .field("subscriber", &self.subscriber)
            .finish()
    }
}

impl<E: Send + Sync + 'static> Topic<E> {
    /// Runs `handler` on every event of this topic, at most `concurrency` at a
    /// time (on a [`heijunka_pool::TaskPool`]), with the defaults of
    /// [`handler`](Self::handler): a handler that fails or panics is retried up
    /// to [`DEFAULT_MAX_ATTEMPTS`] times, then the event is dropped and counted.
    /// A panic is caught, counted and logged; the event still goes back to its
    /// pool.
    ///
    /// ```
    /// use heijunka_event_bus::EventBus;
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use std::sync::Arc;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let bus = EventBus::new();
    /// let jobs = bus.topic::<u64>("jobs")?;
    /// let sum = Arc::new(AtomicU64::new(0));
    /// let total = sum.clone();
    /// let worker = jobs.handle(8, move |n| {
    ///     let total = total.clone();
    ///     async move {
    ///         total.fetch_add(*n, Ordering::Relaxed);
    ///     }
    /// })?;
    /// for n in 1..=10 {
    ///     jobs.publish(n).await?;
    /// }
    /// jobs.close();
    /// let stats = worker.join().await; // every buffered event handled
    /// assert_eq!(stats.succeeded, 10);
    /// assert_eq!(sum.load(Ordering::Relaxed), 55);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`HandlerBuilder::spawn`].
    pub fn handle<F, Fut>(&self, concurrency: usize, handler: F) -> Result<Handler, SubscribeError>
    where
        F: Fn(Event<E>) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: HandlerOutcome,
    {
        self.handler(concurrency).spawn(handler)
    }

    /// A builder for a handler runtime: attempts, dead-letter topic, buffer.
    pub fn handler(&self, concurrency: usize) -> HandlerBuilder<E> {
        HandlerBuilder {
            concurrency,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            dead_letter: None,
            subscriber: self.subscriber(),
        }
    }
}

/// A running handler runtime. Clones are handles to the same runtime; dropping
/// them leaves it running until its topic closes.
///
/// Once it has finished (its topic closed and drained, or [`stop`](Handler::stop)),
/// it releases its task pool; [`stats`](Handler::stats) and the topic's stats
/// keep its final counters.
#[derive(Clone)]
pub struct Handler {
    shared: Arc<Shared>,
}

impl Handler {
    /// The name of the topic this handler's failures go to, if any.
    pub(crate) fn dead_letter_topic(&self) -> Option<&str> {
        self.shared.dead_letter_topic.as_deref()
    }
}

/// A handler in its topic's list: running, or its final counters.
pub(crate) enum HandlerEntry {
    Live(Handler),
    Done { id: u64, stats: HandlerStats },
}

impl HandlerEntry {
    pub(crate) fn stats(&self) -> HandlerStats {
        match self {
            Self::Live(h) => h.stats(),
            Self::Done { stats, .. } => stats.clone(),
        }
    }

    fn id(&self) -> u64 {
        match self {
            Self::Live(h) => h.shared.id,
            Self::Done { id, .. } => *id,
        }
    }
}

/// What a finished handler does to its topic's list: its entry becomes its
/// final counters (the topic no longer holds the runtime).
fn retire<E: Send + Sync + 'static>(
    home: std::sync::Weak<TopicInner<E>>,
) -> Box<dyn Fn(u64, HandlerStats) + Send + Sync> {
    Box::new(move |id, stats| {
        if let Some(topic) = home.upgrade() {
            let mut list = topic
                .handlers
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(entry) = list.iter_mut().find(|e| e.id() == id) {
                *entry = HandlerEntry::Done { id, stats };
            }
        }
    })
}

/// Handler ids, unique in the process.
static HANDLER_IDS: AtomicU64 = AtomicU64::new(1);

struct Shared {
    id: u64,
    topic: String,
    /// The dead-letter topic's name: the bus closes it only after this handler
    /// has drained, so failures during the drain still reach it.
    dead_letter_topic: Option<String>,
    concurrency: usize,
    max_attempts: u32,
    /// The task pool while the runtime runs; taken when it finishes.
    pool: std::sync::Mutex<Option<TaskPool>>,
    /// The final counters, once finished.
    last: std::sync::OnceLock<HandlerStats>,
    /// Replaces this handler's entry in its topic's list by its final counters.
    retire: Box<dyn Fn(u64, HandlerStats) + Send + Sync>,
    close_intake: Box<dyn Fn() + Send + Sync>,
    counters: Counters,
    done: watch::Sender<bool>,
    driver: std::sync::Mutex<Option<AbortHandle>>,
}

#[derive(Default)]
struct Counters {
    received: AtomicU64,
    succeeded: AtomicU64,
    errors: AtomicU64,
    panics: AtomicU64,
    retries: AtomicU64,
    dead_lettered: AtomicU64,
    abandoned: AtomicU64,
}

impl Counters {
    fn bump(c: &AtomicU64) {
        // Relaxed: a statistic.
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn get(c: &AtomicU64) -> u64 {
        // Relaxed: a statistic.
        c.load(Ordering::Relaxed)
    }
}

impl Handler {
    /// Waits until the topic is closed and every event it buffered for this
    /// handler was handled (or the runtime was [`stop`](Self::stop)ped).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only watches the runtime, which goes on whether or not
    /// anyone waits (`tests/cancel.rs`).
    pub async fn join(&self) -> HandlerStats {
        let mut rx = self.shared.done.subscribe();
        let _ = rx.wait_for(|done| *done).await;
        self.stats()
    }

    /// Stops taking events: the handler finishes what is buffered and running
    /// within `grace`; then whatever is left is cancelled, and its events go
    /// back (pooled ones to their pool). Returns whether it finished in time.
    ///
    /// # Cancel safety
    ///
    /// Its first poll stops the intake; dropped after that, the runtime still
    /// finishes what it buffered (no grace is enforced then), and a later
    /// [`join`](Self::join) or `stop` completes (`tests/cancel.rs`).
    pub async fn stop(&self, grace: Duration) -> bool {
        (self.shared.close_intake)();
        let mut rx = self.shared.done.subscribe();
        let clean = tokio::time::timeout(grace, rx.wait_for(|done| *done))
            .await
            .is_ok();
        if !clean {
            if let Some(driver) = self
                .shared
                .driver
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take()
            {
                driver.abort();
            }
            if let Some(pool) = self.shared.pool() {
                pool.shutdown(Duration::ZERO).await;
            }
            self.shared.finish();
            tracing::warn!(topic = %self.shared.topic, "handler stopped before its events were handled");
        }
        clean
    }

    /// Whether the runtime has finished.
    pub fn is_finished(&self) -> bool {
        *self.shared.done.borrow()
    }

    /// A snapshot of the runtime's numbers (its final ones once it finished).
    pub fn stats(&self) -> HandlerStats {
        self.shared.stats()
    }
}

impl Shared {
    fn pool(&self) -> Option<TaskPool> {
        self.pool
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The runtime finished: keeps its final counters, releases its pool, and
    /// leaves only the counters in its topic's list.
    fn finish(&self) {
        let stats = self.stats();
        let _ = self.last.set(stats.clone());
        drop(
            self.pool
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        (self.retire)(self.id, stats);
        self.done.send_replace(true);
    }

    fn stats(&self) -> HandlerStats {
        if let Some(last) = self.last.get() {
            return last.clone();
        }
        let c = &self.counters;
        // The pool is there until `finish` (which sets `last` first).
        let pool = self.pool().map(|p| p.stats());
        let pool = pool.as_ref();
        let latency = |f: fn(&heijunka_pool::PoolStats) -> Duration| pool.map_or(Duration::ZERO, f);
        HandlerStats {
            concurrency: self.concurrency,
            running: pool.map_or(0, |p| p.active),
            received: Counters::get(&c.received),
            succeeded: Counters::get(&c.succeeded),
            errors: Counters::get(&c.errors),
            panics: Counters::get(&c.panics),
            retries: Counters::get(&c.retries),
            dead_lettered: Counters::get(&c.dead_lettered),
            abandoned: Counters::get(&c.abandoned),
            p50: latency(|p| p.p50),
            p90: latency(|p| p.p90),
            p99: latency(|p| p.p99),
            mean: latency(|p| p.mean),
        }
    }
}

impl fmt::Debug for Handler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handler")
            .field("topic", &self.shared.topic)
            .field("concurrency", &self.shared.concurrency)
            .field("finished", &self.is_finished())
            .finish_non_exhaustive()
    }
}

/// One event through the handler: attempts, then the dead-letter topic.
async fn run<E, F, Fut>(
    s: Arc<Shared>,
    handler: Arc<F>,
    dead_letter: Option<Topic<DeadLetter<E>>>,
    event: Event<E>,
    _job: OwnedSemaphorePermit,
) where
    E: Send + Sync + 'static,
    F: Fn(Event<E>) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: HandlerOutcome,
{
    let mut error = String::new();
    for attempt in 1..=s.max_attempts {
        if attempt > 1 {
            Counters::bump(&s.counters.retries);
        }
        match attempt_once(&*handler, event.clone()).await {
            Ok(Ok(())) => {
                Counters::bump(&s.counters.succeeded);
                return;
            }
            Ok(Err(e)) => {
                Counters::bump(&s.counters.errors);
                tracing::debug!(topic = %s.topic, attempt, error = %e, "handler failed");
                error = e;
            }
            Err(panic) => {
                Counters::bump(&s.counters.panics);
                tracing::warn!(topic = %s.topic, attempt, panic = %panic, "handler panicked");
                error = format!("panicked: {panic}");
            }
        }
    }
    let letter = DeadLetter {
        event,
        topic: s.topic.clone(),
        attempts: s.max_attempts,
        error,
    };
    match dead_letter {
        Some(dl) => match dl.publish(letter).await {
            Ok(_) => Counters::bump(&s.counters.dead_lettered),
            Err(e) => {
                Counters::bump(&s.counters.abandoned);
                tracing::error!(topic = %s.topic, dead_letter = %dl.name(), error = %e, "dead letter not delivered");
            }
        },
        None => {
            Counters::bump(&s.counters.abandoned);
            tracing::warn!(topic = %s.topic, attempts = letter.attempts, error = %letter.error, "event abandoned after every attempt failed");
        }
    }
}

/// One call: `Err` with the panic message if it panicked (creating the future
/// or polling it).
async fn attempt_once<E, F, Fut>(handler: &F, event: Event<E>) -> Result<Result<(), String>, String>
where
    E: Send + Sync + 'static,
    F: Fn(Event<E>) -> Fut,
    Fut: Future,
    Fut::Output: HandlerOutcome,
{
    let fut = catch_unwind(AssertUnwindSafe(|| handler(event))).map_err(|p| panic_message(&*p))?;
    let mut fut = pin!(fut);
    poll_fn(
        |cx| match catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v.into_outcome())),
            Ok(Poll::Pending) => Poll::Pending,
            Err(p) => Poll::Ready(Err(panic_message(&*p))),
        },
    )
    .await
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_owned()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_finished_handler_does_not_keep_its_topic_alive() {
        let topic = Topic::<u32>::new("t").unwrap();
        let handler = topic.handle(1, |_| async {}).unwrap();
        topic.publish(1).await.unwrap();
        topic.close();
        handler.join().await;
        // The handler stays in the topic's list; it must not hold the topic.
        assert_eq!(Arc::strong_count(&topic.inner), 1);
    }
}
