//! [`SharedBreaker`]: when one replica's breaker opens, the others open too.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use heijunka_breaker::{CircuitBreaker, State, SubscriptionId, TransitionReason};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::backend::RedisBackend;

/// What a replica announces when its breaker trips (JSON on the channel).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SharedOpen {
    /// The replica whose breaker tripped.
    pub replica: String,
    /// Random, per `SharedBreaker`: tells a replica its own announcements
    /// apart even where two replicas were given one id.
    #[serde(default)]
    pub instance: u64,
    /// The breaker's name.
    pub breaker: String,
    /// Why it tripped, as its transition reason reads.
    pub reason: String,
}

/// A shared breaker's figures.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct SharedBreakerStats {
    /// Trips of this replica's breaker announced to the others.
    pub published: u64,
    /// Announcements that could not be sent (Redis unavailable): the others
    /// learn of the outage by themselves.
    pub publish_failed: u64,
    /// Other replicas' trips received.
    pub received: u64,
    /// Received trips that opened this replica's breaker (it was closed).
    pub applied: u64,
    /// The last trip received from another replica.
    pub last_from: Option<SharedOpen>,
    /// Whether the subscription to the channel is up now.
    pub subscribed: bool,
}

#[derive(Default)]
struct Counters {
    published: AtomicU64,
    publish_failed: AtomicU64,
    received: AtomicU64,
    applied: AtomicU64,
    subscribed: AtomicBool,
    last_from: Mutex<Option<SharedOpen>>,
}

/// Shares one breaker's trips across replicas through Redis pub/sub (opt-in).
///
/// When this replica's breaker trips (a failure rate, slow-call rate,
/// consecutive-failure or failure-count threshold reached, including a failed
/// half-open probe round), a [`SharedOpen`] carrying the replica id goes to the
/// channel `heijunka:breaker:<breaker name>`. A replica whose breaker of the
/// same name is closed when the message arrives opens it
/// ([`transition_to_open`](CircuitBreaker::transition_to_open)), and from then
/// on it waits its own open duration and probes on its own schedule: one
/// replica's outage report spares the others the failures of learning it, while
/// each still decides by its own probes when the dependency is back. Opens
/// caused by another replica are not announced again (no echo), and a
/// replica's own announcement is ignored when it comes back.
///
/// Pub/sub is fire-and-forget: a replica disconnected from Redis when a trip
/// is announced does not hear it and learns of the outage by its own calls, as
/// without sharing. The subscription reconnects by itself.
///
/// ```no_run
/// use heijunka_breaker::CircuitBreaker;
/// use heijunka_redis::{RedisBackend, SharedBreaker};
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let redis = RedisBackend::new("redis://127.0.0.1:6379/")?;
/// let breaker = CircuitBreaker::builder().name("payments").build()?;
/// let shared = SharedBreaker::new(redis, breaker.clone());
/// // ... use `breaker` as usual; trips reach the other replicas.
/// # drop(shared);
/// # Ok(())
/// # }
/// ```
pub struct SharedBreaker {
    breaker: CircuitBreaker,
    channel: String,
    subscription: SubscriptionId,
    counters: Arc<Counters>,
    listener: JoinHandle<()>,
}

impl SharedBreaker {
    /// Shares `breaker`'s trips through `backend`'s Redis; stops when dropped.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime (it spawns its publisher and subscriber).
    pub fn new(backend: RedisBackend, breaker: CircuitBreaker) -> Self {
        let channel = format!("heijunka:breaker:{}", breaker.name());
        let counters = Arc::new(Counters::default());
        let (tx, rx) = mpsc::unbounded_channel();
        let replica = backend.replica_id().to_owned();
        let name = breaker.name().to_owned();
        let instance = heijunka_core::rng::SplitMix64::from_entropy().next_u64();
        let subscription = breaker.subscribe(move |t| {
            if t.to == State::Open && is_trip(&t.reason) {
                // Unbounded: a listener must not block. Fails only once the
                // publisher ended with the `SharedBreaker`.
                let _ = tx.send(SharedOpen {
                    instance,
                    replica: replica.clone(),
                    breaker: name.clone(),
                    reason: t.reason.to_string(),
                });
            }
        });
        tokio::spawn(publisher(
            backend.clone(),
            channel.clone(),
            rx,
            Arc::clone(&counters),
        ));
        let listener = tokio::spawn(subscriber(
            backend,
            channel.clone(),
            breaker.clone(),
            Arc::clone(&counters),
            instance,
        ));
        Self {
            breaker,
            channel,
            subscription,
            counters,
            listener,
        }
    }

    /// The breaker shared.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// The pub/sub channel.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// Whether the subscription to the channel is up (trips of other replicas
    /// are heard).
    pub fn is_subscribed(&self) -> bool {
        self.counters.subscribed.load(Ordering::Acquire)
    }

    /// The figures.
    pub fn stats(&self) -> SharedBreakerStats {
        let c = &*self.counters;
        SharedBreakerStats {
            published: c.published.load(Ordering::Relaxed),
            publish_failed: c.publish_failed.load(Ordering::Relaxed),
            received: c.received.load(Ordering::Relaxed),
            applied: c.applied.load(Ordering::Relaxed),
            last_from: crate::lock(&c.last_from).clone(),
            subscribed: c.subscribed.load(Ordering::Acquire),
        }
    }
}

impl Drop for SharedBreaker {
    fn drop(&mut self) {
        // Drops the listener's sender: the publisher sends what it has, then ends.
        self.breaker.unsubscribe(self.subscription);
        self.listener.abort();
    }
}

impl std::fmt::Debug for SharedBreaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedBreaker")
            .field("breaker", &self.breaker.name())
            .field("channel", &self.channel)
            .field("subscribed", &self.is_subscribed())
            .finish_non_exhaustive()
    }
}

/// A transition this replica's own calls caused (not an operator's, not a
/// shared one).
fn is_trip(reason: &TransitionReason) -> bool {
    matches!(
        reason,
        TransitionReason::FailureRate { .. }
            | TransitionReason::SlowCallRate { .. }
            | TransitionReason::ConsecutiveFailures { .. }
            | TransitionReason::FailureCount { .. }
            | TransitionReason::HalfOpenTimeout { .. }
    )
}

async fn publisher(
    backend: RedisBackend,
    channel: String,
    mut trips: mpsc::UnboundedReceiver<SharedOpen>,
    counters: Arc<Counters>,
) {
    while let Some(trip) = trips.recv().await {
        let Ok(payload) = serde_json::to_string(&trip) else {
            continue;
        };
        let channel = channel.clone();
        let sent = backend
            .run(|mut conn| async move {
                redis::cmd("PUBLISH")
                    .arg(channel)
                    .arg(payload)
                    .query_async::<i64>(&mut conn)
                    .await
            })
            .await;
        let counter = if sent.is_ok() {
            &counters.published
        } else {
            tracing::warn!(breaker = %trip.breaker, "could not announce a breaker trip to the other replicas: redis unavailable");
            &counters.publish_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

async fn subscriber(
    backend: RedisBackend,
    channel: String,
    breaker: CircuitBreaker,
    counters: Arc<Counters>,
    instance: u64,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let connect = async {
            let mut pubsub = backend.client().get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            redis::RedisResult::Ok(pubsub)
        };
        let pubsub = match tokio::time::timeout(Duration::from_secs(2), connect).await {
            Ok(Ok(p)) => p,
            _ => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        counters.subscribed.store(true, Ordering::Release);
        let mut messages = pubsub.into_on_message();
        while let Some(msg) = std::future::poll_fn(|cx| {
            futures_core::Stream::poll_next(std::pin::Pin::new(&mut messages), cx)
        })
        .await
        {
            let Ok(trip) = serde_json::from_slice::<SharedOpen>(msg.get_payload_bytes()) else {
                tracing::debug!(channel = %channel, "ignored a malformed breaker announcement");
                continue;
            };
            if trip.instance == instance {
                continue;
            }
            counters.received.fetch_add(1, Ordering::Relaxed);
            if breaker.state() == State::Closed && breaker.transition_to_open().is_ok() {
                counters.applied.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(breaker = %trip.breaker, from = %trip.replica, reason = %trip.reason, "breaker opened: another replica's breaker tripped");
            }
            *crate::lock(&counters.last_from) = Some(trip);
        }
        counters.subscribed.store(false, Ordering::Release);
    }
}
