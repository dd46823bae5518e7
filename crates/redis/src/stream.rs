//! The event bus bridged to Redis Streams (feature `bus`).
//!
//! - [`StreamPublisher`]: every event of a [`Topic`] appended to a stream
//!   (`XADD ... MAXLEN ~ n`, so the stream stays bounded). It reads the topic as
//!   a [`Policy::Block`] subscriber by default: while Redis is slow or down, its
//!   buffer fills and then the topic's publishers wait, and nothing is dropped.
//!   Where publishers must never wait on Redis, give it another policy
//!   ([`PublisherConfig::policy`]: a `Timeout` or `DropOldest` subscriber loses
//!   events instead, counted in the topic's stats).
//! - [`StreamConsumer`]: a stream consumed into a topic through a consumer group
//!   (`XREADGROUP`), each entry acknowledged (`XACK`) only after the topic took
//!   it, so an entry is acknowledged once per delivery into the topic and never
//!   without one. A full topic (a [`Policy::Block`] subscriber at its buffer)
//!   holds the publish, and with it the reading: the stream waits in Redis.
//!   Entries left pending by a consumer that crashed are reclaimed
//!   (`XAUTOCLAIM`) after [`claim_idle`](ConsumerConfig::claim_idle).
//!
//! ```no_run
//! use heijunka_event_bus::{EventBus, Policy};
//! use heijunka_redis::RedisBackend;
//! use heijunka_redis::stream::{ConsumerConfig, StreamConsumer, StreamPublisher};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let redis = RedisBackend::new("redis://127.0.0.1:6379/")?;
//! let bus = EventBus::new();
//! // Out: every order event also goes to the `orders` stream (about 100k kept).
//! let orders = bus.topic::<String>("orders")?;
//! let _out = StreamPublisher::start(&redis, &orders, "orders", 100_000)?;
//! // In: the `payments` stream into a topic, as one consumer of group `billing`.
//! let payments = bus.topic::<String>("payments")?;
//! let mut handled = payments.subscriber().policy(Policy::Block).subscribe()?;
//! let _in = StreamConsumer::start(&redis, "payments", payments.clone(), ConsumerConfig::new("billing"))?;
//! while let Some(payment) = handled.recv().await {
//!     println!("{}", *payment); // acknowledged in Redis once the topic took it
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Events travel as the field `e` of each entry, serialised by a [`Codec`]
//! ([`Json`] unless another is given).
//!
//! Delivery is at least once: an entry is acknowledged once the topic took it,
//! but a consumer that crashes between the two leaves it pending, and whoever
//! reclaims it delivers it again; so does a consumer held up (by a full topic)
//! for longer than [`claim_idle`](ConsumerConfig::claim_idle), whose entries
//! another consumer takes over; and an `XADD` whose answer was lost is retried.
//! Keep an idempotency key in events that must not be handled twice.

use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use heijunka_core::{ConfigError, validate};
use heijunka_event_bus::{Event, Policy, PublishError, SkipReason, SubscribeError, Topic};
use redis::aio::ConnectionManager;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;

use crate::backend::RedisBackend;

/// The field of a stream entry that holds the encoded event.
pub const FIELD: &str = "e";

/// A codec failed on an event or an entry.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CodecError(pub String);

/// Turns events into stream entries and back.
pub trait Codec<E>: Send + Sync + 'static {
    /// The bytes stored for `event`.
    ///
    /// # Errors
    ///
    /// A [`CodecError`] if the event cannot be encoded; the publisher counts
    /// and logs it and goes on.
    fn encode(&self, event: &E) -> Result<Vec<u8>, CodecError>;

    /// The event stored as `bytes`.
    ///
    /// # Errors
    ///
    /// A [`CodecError`] if the bytes are not an event; the consumer counts and
    /// logs it and acknowledges the entry (it can never be delivered).
    fn decode(&self, bytes: &[u8]) -> Result<E, CodecError>;
}

/// JSON through serde: the default codec.
#[derive(Clone, Copy, Debug, Default)]
pub struct Json;

impl<E: Serialize + DeserializeOwned> Codec<E> for Json {
    fn encode(&self, event: &E) -> Result<Vec<u8>, CodecError> {
        serde_json::to_vec(event).map_err(|e| CodecError(e.to_string()))
    }

    fn decode(&self, bytes: &[u8]) -> Result<E, CodecError> {
        serde_json::from_slice(bytes).map_err(|e| CodecError(e.to_string()))
    }
}

/// A bridge's figures.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct BridgeStats {
    /// Publisher: entries appended. Consumer: entries delivered into the topic
    /// and acknowledged.
    pub moved: u64,
    /// Consumer: entries reclaimed from consumers idle past `claim_idle`.
    pub reclaimed: u64,
    /// Events that could not be encoded, or entries that could not be decoded
    /// (acknowledged, so they do not block the group), each logged.
    pub codec_errors: u64,
    /// Redis calls that failed and were retried.
    pub retries: u64,
    /// Consumer: entries every subscriber filtered out by version,
    /// acknowledged without delivery.
    pub filtered: u64,
}

#[derive(Debug, Default)]
struct Counters {
    moved: AtomicU64,
    reclaimed: AtomicU64,
    codec_errors: AtomicU64,
    retries: AtomicU64,
    filtered: AtomicU64,
}

impl Counters {
    fn stats(&self) -> BridgeStats {
        BridgeStats {
            moved: self.moved.load(Ordering::Relaxed),
            reclaimed: self.reclaimed.load(Ordering::Relaxed),
            codec_errors: self.codec_errors.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            filtered: self.filtered.load(Ordering::Relaxed),
        }
    }
}

/// A bridge's task: aborted on demand, joined once (a second join returns at
/// once).
#[derive(Debug)]
struct Task(Option<JoinHandle<()>>);

impl Task {
    fn abort(&self) {
        if let Some(t) = &self.0 {
            t.abort();
        }
    }

    async fn join(&mut self) {
        if let Some(t) = self.0.as_mut() {
            let _ = t.await;
            self.0 = None;
        }
    }
}

/// The wait between retries of a failed Redis call: doubling from 10 ms to 1 s.
struct Backoff(Duration);

impl Backoff {
    const FIRST: Duration = Duration::from_millis(10);

    fn new() -> Self {
        Self(Self::FIRST)
    }

    async fn wait(&mut self, counters: &Counters) {
        counters.retries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_secs(1));
    }

    fn reset(&mut self) {
        self.0 = Self::FIRST;
    }
}

/// A [`StreamPublisher`]'s settings.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PublisherConfig {
    /// The stream's length bound, about (`MAXLEN ~`; at least 1).
    pub max_len: usize,
    /// Events the topic holds for the publisher while Redis is slow or down
    /// (its subscription's buffer). Default 1024.
    pub buffer: usize,
    /// The subscription's policy once that buffer is full: [`Policy::Block`]
    /// (default: lossless, the topic's publishers wait), or a lossy one.
    pub policy: Policy,
}

impl PublisherConfig {
    /// The defaults for a stream of about `max_len` entries.
    pub fn new(max_len: usize) -> Self {
        Self {
            max_len,
            buffer: 1024,
            policy: Policy::Block,
        }
    }

    /// Sets the buffer.
    #[must_use]
    pub fn buffer(mut self, events: usize) -> Self {
        self.buffer = events;
        self
    }

    /// Sets the subscription's policy.
    #[must_use]
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }
}

/// Appends a topic's events to a Redis stream; see the [module](self).
///
/// Runs until the topic closes (it appends what its subscription still holds,
/// then ends: [`join`](Self::join)) or until [`abort`](Self::abort)ed. Dropping
/// the handle leaves it running, like a task's `JoinHandle`.
#[derive(Debug)]
pub struct StreamPublisher {
    task: Task,
    counters: Arc<Counters>,
}

impl StreamPublisher {
    /// Starts appending `topic`'s events to `stream`, trimmed to about
    /// `max_len` entries, with the [`Json`] codec.
    ///
    /// # Errors
    ///
    /// A [`SubscribeError`] if the topic is closed; a [`ConfigError`] (inside
    /// [`BridgeError`]) for a `max_len` of zero or an empty `stream`.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn start<E>(
        backend: &RedisBackend,
        topic: &Topic<E>,
        stream: impl Into<String>,
        max_len: usize,
    ) -> Result<Self, BridgeError>
    where
        E: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        Self::start_with(backend, topic, stream, PublisherConfig::new(max_len), Json)
    }

    /// [`start`](Self::start) with its settings and a codec.
    ///
    /// # Errors
    ///
    /// As [`start`](Self::start), and a `buffer` the topic refuses.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn start_with<E, C>(
        backend: &RedisBackend,
        topic: &Topic<E>,
        stream: impl Into<String>,
        config: PublisherConfig,
        codec: C,
    ) -> Result<Self, BridgeError>
    where
        E: Send + Sync + 'static,
        C: Codec<E>,
    {
        let stream = stream.into();
        if stream.is_empty() {
            return Err(ConfigError::new("stream", &stream, "must not be empty").into());
        }
        let PublisherConfig {
            max_len,
            buffer,
            policy,
        } = config;
        validate::at_least("max_len", max_len, 1)?;
        let mut events = topic
            .subscriber()
            .policy(policy)
            .buffer(buffer)
            .name(format!("redis stream {stream}"))
            .subscribe()?;
        let counters = Arc::new(Counters::default());
        let c = Arc::clone(&counters);
        // Its own connection: a slow XADD does not hold up the limits' calls.
        const ANSWER_WITHIN: Duration = Duration::from_secs(5);
        let conn = backend.dedicated(ANSWER_WITHIN);
        let backend = backend.clone();
        let task = tokio::spawn(async move {
            let mut conn = conn;
            let mut backoff = Backoff::new();
            while let Some(event) = events.recv().await {
                let bytes = match codec.encode(&event) {
                    Ok(b) => b,
                    Err(e) => {
                        c.codec_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(stream = %stream, error = %e, "an event could not be encoded for the stream; skipped");
                        continue;
                    }
                };
                // Held until Redis takes it: the subscription's buffer, then the
                // topic's publishers, wait meanwhile.
                loop {
                    let appended = redis::cmd("XADD")
                        .arg(&stream)
                        .arg("MAXLEN")
                        .arg("~")
                        .arg(max_len)
                        .arg("*")
                        .arg(FIELD)
                        .arg(&bytes)
                        .query_async::<String>(&mut conn)
                        .await;
                    match appended {
                        Ok(_) => {
                            c.moved.fetch_add(1, Ordering::Relaxed);
                            backoff.reset();
                            break;
                        }
                        Err(e) => {
                            tracing::debug!(stream = %stream, error = %e, "XADD failed; retrying");
                            if e.is_timeout() {
                                // A silent connection: start a new one.
                                conn = backend.dedicated(ANSWER_WITHIN);
                            }
                            backoff.wait(&c).await;
                        }
                    }
                }
            }
        });
        Ok(Self {
            task: Task(Some(task)),
            counters,
        })
    }

    /// The figures.
    pub fn stats(&self) -> BridgeStats {
        self.counters.stats()
    }

    /// Stops at once; events the subscription holds are dropped with it.
    pub fn abort(&self) {
        self.task.abort();
    }

    /// Waits until the publisher ends: after the topic closed and what it held
    /// was appended (while Redis is down that waits for Redis: bound it with a
    /// time-out, then [`abort`](Self::abort)). At once if it already ended.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future leaves the publisher running.
    pub async fn join(&mut self) {
        self.task.join().await;
    }
}

/// Where a new consumer group starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum StartFrom {
    /// Every entry the stream holds (default).
    #[default]
    Beginning,
    /// Only entries appended after the group is created.
    Latest,
}

/// A [`StreamConsumer`]'s settings.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ConsumerConfig {
    /// The consumer group (created if missing).
    pub group: String,
    /// This consumer's name in the group. Default: the backend's replica id,
    /// so a restarted replica with a stable id first finishes its own pending
    /// entries.
    pub consumer: Option<String>,
    /// Entries read at once (default 64).
    pub batch: usize,
    /// How long one read waits for new entries (default 500 ms).
    pub block: Duration,
    /// Entries pending this long with another consumer are taken over
    /// (`XAUTOCLAIM`; default 30 s).
    pub claim_idle: Duration,
    /// Where a new group starts.
    pub start: StartFrom,
}

impl ConsumerConfig {
    /// The defaults for `group`.
    pub fn new(group: impl Into<String>) -> Self {
        Self {
            group: group.into(),
            consumer: None,
            batch: 64,
            block: Duration::from_millis(500),
            claim_idle: Duration::from_secs(30),
            start: StartFrom::Beginning,
        }
    }

    /// Sets the consumer's name.
    #[must_use]
    pub fn consumer(mut self, name: impl Into<String>) -> Self {
        self.consumer = Some(name.into());
        self
    }

    /// Sets the batch size.
    #[must_use]
    pub fn batch(mut self, entries: usize) -> Self {
        self.batch = entries;
        self
    }

    /// Sets the read wait.
    #[must_use]
    pub fn block(mut self, wait: Duration) -> Self {
        self.block = wait;
        self
    }

    /// Sets the idle time after which another consumer's pending entries are
    /// reclaimed.
    #[must_use]
    pub fn claim_idle(mut self, idle: Duration) -> Self {
        self.claim_idle = idle;
        self
    }

    /// Sets where a new group starts.
    #[must_use]
    pub fn start(mut self, start: StartFrom) -> Self {
        self.start = start;
        self
    }
}

/// Why a bridge could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BridgeError {
    /// A setting is out of range.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The topic refused the subscription (closed).
    #[error(transparent)]
    Subscribe(#[from] SubscribeError),
}

/// Consumes a Redis stream into a topic through a consumer group; see the
/// [module](self).
///
/// Runs until the topic closes (entries read but not delivered stay pending
/// for another consumer, or for this one after a restart) or until
/// [`abort`](Self::abort)ed. Dropping the handle leaves it running.
#[derive(Debug)]
pub struct StreamConsumer<E> {
    task: Task,
    counters: Arc<Counters>,
    _event: PhantomData<fn() -> E>,
}

impl<E: Send + Sync + 'static> StreamConsumer<E> {
    /// Starts consuming `stream` into `topic` with the [`Json`] codec.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] (in [`BridgeError`]) naming the field: an empty
    /// `stream` or `group`, a `batch` of zero, a zero `block` or `claim_idle`.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn start(
        backend: &RedisBackend,
        stream: impl Into<String>,
        topic: Topic<E>,
        config: ConsumerConfig,
    ) -> Result<Self, BridgeError>
    where
        E: Serialize + DeserializeOwned,
    {
        Self::start_with(backend, stream, topic, config, Json)
    }

    /// [`start`](Self::start) with a codec.
    ///
    /// # Errors
    ///
    /// As [`start`](Self::start).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn start_with<C: Codec<E>>(
        backend: &RedisBackend,
        stream: impl Into<String>,
        topic: Topic<E>,
        config: ConsumerConfig,
        codec: C,
    ) -> Result<Self, BridgeError> {
        let stream = stream.into();
        if stream.is_empty() {
            return Err(ConfigError::new("stream", &stream, "must not be empty").into());
        }
        if config.group.is_empty() {
            return Err(ConfigError::new("group", &config.group, "must not be empty").into());
        }
        validate::at_least("batch", config.batch, 1)?;
        validate::non_zero_duration("block", config.block)?;
        validate::non_zero_duration("claim_idle", config.claim_idle)?;
        let consumer = config
            .consumer
            .clone()
            .unwrap_or_else(|| backend.replica_id().to_owned());
        let counters = Arc::new(Counters::default());
        let run = Consume {
            // Its own connection: blocking reads must not hold up the
            // limits' calls on the shared one.
            conn: backend.dedicated(config.block + Duration::from_secs(5)),
            backend: backend.clone(),
            stream,
            group: config.group.clone(),
            consumer,
            config,
            topic,
            codec,
            counters: Arc::clone(&counters),
        };
        Ok(Self {
            task: Task(Some(tokio::spawn(run.run()))),
            counters,
            _event: PhantomData,
        })
    }

    /// The figures.
    pub fn stats(&self) -> BridgeStats {
        self.counters.stats()
    }

    /// Stops at once. Entries read and not yet acknowledged stay pending and
    /// are reclaimed by another consumer after `claim_idle`.
    pub fn abort(&self) {
        self.task.abort();
    }

    /// Waits until the consumer ends: soon after the topic closes (within one
    /// read's `block` wait, or one retry while Redis is down). At once if it
    /// already ended.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future leaves the consumer running.
    pub async fn join(&mut self) {
        self.task.join().await;
    }
}

struct Consume<E: Send + Sync + 'static, C> {
    conn: ConnectionManager,
    backend: RedisBackend,
    stream: String,
    group: String,
    consumer: String,
    config: ConsumerConfig,
    topic: Topic<E>,
    codec: C,
    counters: Arc<Counters>,
}

/// Why a consumer stopped reading.
enum Lost {
    /// The consumer group is gone: make it again.
    Group,
    /// The topic closed: stop.
    Topic,
}

/// What became of one entry.
enum Delivered {
    /// The topic took it (or it could never be decoded): acknowledge it.
    Ack,
    /// The topic closed: stop, leaving it pending.
    Closed,
}

impl<E: Send + Sync + 'static, C: Codec<E>> Consume<E, C> {
    async fn run(mut self) {
        let mut backoff = Backoff::new();
        // Until the topic closes: make sure of the group, then read; a group
        // that disappeared (a Redis restarted empty, a deleted stream) is made
        // again.
        while !self.topic.is_closed() {
            if let Err(e) = self.create_group().await {
                self.failed("XGROUP CREATE", &e, &mut backoff).await;
                continue;
            }
            backoff.reset();
            match self.consume(&mut backoff).await {
                Lost::Group => continue,
                Lost::Topic => return,
            }
        }
    }

    async fn create_group(&mut self) -> redis::RedisResult<()> {
        let start = match self.config.start {
            StartFrom::Beginning => "0",
            StartFrom::Latest => "$",
        };
        let created = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(start)
            .arg("MKSTREAM")
            .query_async::<()>(&mut self.conn)
            .await;
        match created {
            Err(e) if e.code() != Some("BUSYGROUP") => Err(e),
            _ => Ok(()),
        }
    }

    /// Logs a failed call (`warn` the first time in a row, then `debug`) and
    /// waits before the retry.
    async fn failed(&mut self, what: &str, e: &redis::RedisError, backoff: &mut Backoff) {
        if e.is_timeout() {
            // A silent connection: start a new one.
            self.conn = self
                .backend
                .dedicated(self.config.block + Duration::from_secs(5));
        }
        if backoff.0 == Backoff::FIRST {
            tracing::warn!(stream = %self.stream, group = %self.group, error = %e, "{what} failed; retrying until redis answers");
        } else {
            tracing::debug!(stream = %self.stream, error = %e, "{what} failed again");
        }
        backoff.wait(&self.counters).await;
    }

    /// Reads and delivers until the topic closes or the group is gone: this
    /// consumer's own pending entries first (a restart), then new ones, taking
    /// over others' idle entries every `claim_idle` (at most every 5 s), all of
    /// them when there are more than a batch.
    async fn consume(&mut self, backoff: &mut Backoff) -> Lost {
        let mut own_pending = true;
        let mut last_claim: Option<tokio::time::Instant> = None;
        loop {
            if self.topic.is_closed() {
                return Lost::Topic;
            }
            let claim_due = last_claim.is_none_or(|at| {
                at.elapsed() >= self.config.claim_idle.min(Duration::from_secs(5))
            });
            if claim_due {
                match self.claim().await {
                    Ok((entries, more)) => {
                        backoff.reset();
                        // More to take over: again at once.
                        last_claim = if more {
                            None
                        } else {
                            Some(tokio::time::Instant::now())
                        };
                        let n = entries.len() as u64;
                        self.counters.reclaimed.fetch_add(n, Ordering::Relaxed);
                        if n > 0 {
                            tracing::info!(stream = %self.stream, group = %self.group, entries = n, "took over entries left pending by an idle consumer");
                        }
                        if !self.deliver_all(entries).await {
                            return Lost::Topic;
                        }
                    }
                    Err(e) if e.code() == Some("NOGROUP") => return Lost::Group,
                    Err(e) => {
                        self.failed("XAUTOCLAIM", &e, backoff).await;
                        continue;
                    }
                }
            }
            match self.read(if own_pending { "0" } else { ">" }).await {
                Ok(entries) => {
                    backoff.reset();
                    if own_pending && entries.is_empty() {
                        own_pending = false;
                    }
                    if !self.deliver_all(entries).await {
                        return Lost::Topic;
                    }
                }
                Err(e) if e.code() == Some("NOGROUP") => return Lost::Group,
                Err(e) => self.failed("XREADGROUP", &e, backoff).await,
            }
        }
    }

    async fn read(&mut self, from: &str) -> redis::RedisResult<Vec<StreamId>> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(self.config.batch);
        if from == ">" {
            cmd.arg("BLOCK")
                .arg(u64::try_from(self.config.block.as_millis()).unwrap_or(u64::MAX));
        }
        cmd.arg("STREAMS").arg(&self.stream).arg(from);
        let reply: Option<StreamReadReply> = cmd.query_async(&mut self.conn).await?;
        Ok(reply
            .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
            .unwrap_or_default())
    }

    /// Entries idle past `claim_idle` with any consumer, taken over; and
    /// whether more remain.
    async fn claim(&mut self) -> redis::RedisResult<(Vec<StreamId>, bool)> {
        let mut all = Vec::new();
        let mut start = "0-0".to_owned();
        loop {
            let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                .arg(&self.stream)
                .arg(&self.group)
                .arg(&self.consumer)
                .arg(u64::try_from(self.config.claim_idle.as_millis()).unwrap_or(u64::MAX))
                .arg(&start)
                .arg("COUNT")
                .arg(self.config.batch)
                .query_async(&mut self.conn)
                .await?;
            // Entries deleted meanwhile (trimmed) are dropped from the pending
            // list by XAUTOCLAIM itself.
            all.extend(reply.claimed);
            if reply.next_stream_id == "0-0" {
                return Ok((all, false));
            }
            if all.len() >= self.config.batch {
                return Ok((all, true));
            }
            start = reply.next_stream_id;
        }
    }

    /// Delivers and acknowledges each entry in order; false when the topic
    /// closed.
    async fn deliver_all(&mut self, entries: Vec<StreamId>) -> bool {
        for entry in entries {
            match self.deliver(&entry).await {
                Delivered::Ack => self.ack(&entry.id).await,
                Delivered::Closed => return false,
            }
        }
        true
    }

    async fn deliver(&self, entry: &StreamId) -> Delivered {
        let decoded = entry
            .get::<Vec<u8>>(FIELD)
            .ok_or_else(|| CodecError(format!("no field `{FIELD}`")))
            .and_then(|bytes| self.codec.decode(&bytes));
        let event = match decoded {
            Ok(e) => e,
            Err(e) => {
                self.counters.codec_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(stream = %self.stream, id = %entry.id, error = %e, "a stream entry could not be decoded; acknowledged without delivery");
                return Delivered::Ack;
            }
        };
        let mut event = Event::new(event);
        let mut backoff = Backoff::new();
        loop {
            // Waits while a blocking subscriber is full: reading stops here.
            match self.topic.publish(event).await {
                Ok(_) => {
                    self.counters.moved.fetch_add(1, Ordering::Relaxed);
                    return Delivered::Ack;
                }
                Err(PublishError::Closed(_)) => return Delivered::Closed,
                // Every subscriber filtered it out by version: they chose not
                // to take it, and they never will.
                Err(PublishError::Undelivered { report, .. })
                    if report
                        .skipped
                        .iter()
                        .all(|(_, r)| *r == SkipReason::Filtered) =>
                {
                    self.counters.filtered.fetch_add(1, Ordering::Relaxed);
                    return Delivered::Ack;
                }
                // No subscriber took it (none yet, or every one full): keep it,
                // unacknowledged, and try again.
                Err(e) => {
                    if self.topic.is_closed() {
                        return Delivered::Closed;
                    }
                    event = e.into_inner();
                    backoff.wait(&self.counters).await;
                }
            }
        }
    }

    async fn ack(&mut self, id: &str) {
        let mut backoff = Backoff::new();
        loop {
            let acked = redis::cmd("XACK")
                .arg(&self.stream)
                .arg(&self.group)
                .arg(id)
                .query_async::<i64>(&mut self.conn)
                .await;
            match acked {
                Ok(_) => return,
                // Retried until Redis takes it: the event is in the topic, and an
                // entry left pending would be delivered again by a reclaim.
                // Once the topic has closed, given up after a few tries (the
                // entry is then delivered again: at least once).
                Err(e) => {
                    if self.topic.is_closed() && backoff.0 >= Duration::from_millis(80) {
                        return;
                    }
                    tracing::debug!(stream = %self.stream, id, error = %e, "XACK failed; retrying");
                    if e.is_timeout() {
                        self.conn = self
                            .backend
                            .dedicated(self.config.block + Duration::from_secs(5));
                    }
                    backoff.wait(&self.counters).await;
                }
            }
        }
    }
}
