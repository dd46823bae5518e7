//! The event bus bridged to Redis Streams against a real Redis: bounded
//! streams, delivery into a topic once per acknowledged entry, pending entries
//! reclaimed after a consumer crash, a full topic that stops consumption
//! without loss, and a publisher that holds its events while Redis is down.
//! What reached Redis is read with plain commands, not the bridge's counters.

#![cfg(feature = "bus")]

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use heijunka_event_bus::{EventBus, Policy};
use heijunka_redis::stream::{ConsumerConfig, StreamConsumer, StreamPublisher};

type Conn = redis::aio::MultiplexedConnection;
/// An `XRANGE` reply: (id, [(field, value)]).
type Entries = Vec<(String, Vec<(String, Vec<u8>)>)>;

async fn xlen(raw: &mut Conn, stream: &str) -> usize {
    redis::cmd("XLEN")
        .arg(stream)
        .query_async(raw)
        .await
        .unwrap()
}

async fn pending(raw: &mut Conn, stream: &str, group: &str) -> usize {
    let reply: redis::Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .query_async(raw)
        .await
        .unwrap();
    match reply {
        redis::Value::Array(v) => redis::from_redis_value(v[0].clone()).unwrap(),
        other => panic!("XPENDING answered {other:?}"),
    }
}

async fn add(raw: &mut Conn, stream: &str, values: impl IntoIterator<Item = u32>) {
    for v in values {
        let _: String = redis::cmd("XADD")
            .arg(stream)
            .arg("*")
            .arg("e")
            .arg(serde_json::to_vec(&v).unwrap())
            .query_async(raw)
            .await
            .unwrap();
    }
}

async fn until(what: &str, limit: Duration, mut ok: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok().await {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_is_published_to_a_bounded_stream() {
    let server = support::server();
    let mut raw = support::raw(&server).await;
    let bus = EventBus::new();
    let orders = bus.topic::<u32>("orders").unwrap();
    let publisher =
        StreamPublisher::start(&support::backend(&server, "a"), &orders, "orders", 50).unwrap();
    for i in 0..100 {
        orders.publish(i).await.unwrap();
    }
    until("100 appended", Duration::from_secs(3), async || {
        publisher.stats().moved == 100
    })
    .await;
    let entries: Entries = redis::cmd("XRANGE")
        .arg("orders")
        .arg("-")
        .arg("+")
        .query_async(&mut raw)
        .await
        .unwrap();
    let values: Vec<u32> = entries
        .iter()
        .map(|(_, f)| serde_json::from_slice(&f[0].1).unwrap())
        .collect();
    assert!(!values.is_empty());
    assert_eq!(values.last(), Some(&99), "the newest are kept, in order");
    assert!(values.windows(2).all(|w| w[1] == w[0] + 1));
    // MAXLEN ~ trims whole nodes: about 50, never all 100... once trimming ran.
    for i in 100..1000 {
        orders.publish(i).await.unwrap();
    }
    until("1000 appended", Duration::from_secs(5), async || {
        publisher.stats().moved == 1000
    })
    .await;
    let len = xlen(&mut raw, "orders").await;
    assert!(
        (50..1000).contains(&len),
        "the stream is bounded: {len} entries"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_delivered_into_a_topic_once_per_acknowledged_entry() {
    let server = support::server();
    let mut raw = support::raw(&server).await;
    add(&mut raw, "in", 0..200).await;
    let bus = EventBus::new();
    let topic = bus.topic::<u32>("in").unwrap();
    let mut sub = topic
        .subscriber()
        .policy(Policy::Block)
        .buffer(256)
        .subscribe()
        .unwrap();
    let consumer = StreamConsumer::start(
        &support::backend(&server, "a"),
        "in",
        topic.clone(),
        ConsumerConfig::new("g"),
    )
    .unwrap();
    let mut got = Vec::new();
    while got.len() < 200 {
        let e = tokio::time::timeout(Duration::from_secs(3), sub.recv())
            .await
            .expect("delivered")
            .unwrap();
        got.push(*e);
    }
    assert_eq!(got, (0..200).collect::<Vec<_>>(), "each once, in order");
    until("all acknowledged", Duration::from_secs(3), async || {
        pending(&mut raw, "in", "g").await == 0
    })
    .await;
    assert_eq!(consumer.stats().moved, 200);
    // Nothing more arrives: no entry was delivered twice.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), sub.recv())
            .await
            .is_err()
    );
}

/// A consumer that read entries and crashed before delivering them leaves them
/// pending; another consumer reclaims them after `claim_idle` and delivers each
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_left_pending_by_a_crashed_consumer_are_reclaimed() {
    let server = support::server();
    let mut raw = support::raw(&server).await;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg("jobs")
        .arg("g")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut raw)
        .await
        .unwrap();
    add(&mut raw, "jobs", 0..30).await;
    // The crashed consumer: read 20, never acknowledged.
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("g")
        .arg("dead")
        .arg("COUNT")
        .arg(20)
        .arg("STREAMS")
        .arg("jobs")
        .arg(">")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(pending(&mut raw, "jobs", "g").await, 20);

    let bus = EventBus::new();
    let topic = bus.topic::<u32>("jobs").unwrap();
    let mut sub = topic
        .subscriber()
        .policy(Policy::Block)
        .buffer(64)
        .subscribe()
        .unwrap();
    let config = ConsumerConfig::new("g")
        .consumer("alive")
        .claim_idle(Duration::from_millis(200));
    let consumer = StreamConsumer::start(
        &support::backend(&server, "b"),
        "jobs",
        topic.clone(),
        config,
    )
    .unwrap();
    let mut got = BTreeSet::new();
    for _ in 0..30 {
        let e = tokio::time::timeout(Duration::from_secs(5), sub.recv())
            .await
            .expect("delivered")
            .unwrap();
        assert!(got.insert(*e), "{} delivered twice", *e);
    }
    assert_eq!(got, (0..30).collect());
    until("all acknowledged", Duration::from_secs(3), async || {
        pending(&mut raw, "jobs", "g").await == 0
    })
    .await;
    assert_eq!(consumer.stats().reclaimed, 20);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), sub.recv())
            .await
            .is_err(),
        "nothing twice"
    );
}

/// A topic whose blocking subscriber is full stops the consumer: entries wait
/// in Redis, unacknowledged, and none is lost or duplicated once it drains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_topic_stops_consumption_without_loss() {
    const BUFFER: usize = 8;
    let server = support::server();
    let mut raw = support::raw(&server).await;
    add(&mut raw, "slow", 0..100).await;
    let bus = EventBus::new();
    let topic = bus.topic::<u32>("slow").unwrap();
    let mut sub = topic
        .subscriber()
        .policy(Policy::Block)
        .buffer(BUFFER)
        .subscribe()
        .unwrap();
    let consumer = StreamConsumer::start(
        &support::backend(&server, "a"),
        "slow",
        topic.clone(),
        ConsumerConfig::new("g").batch(10),
    )
    .unwrap();
    until("the buffer filled", Duration::from_secs(3), async || {
        sub.len() == BUFFER
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let delivered = consumer.stats().moved as usize;
    assert_eq!(delivered, BUFFER, "stopped at the full buffer");
    // Acknowledged only what the topic took: 100 - 8 entries unread or pending.
    let group: Vec<redis::Value> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg("slow")
        .query_async(&mut raw)
        .await
        .unwrap();
    let info: std::collections::HashMap<String, redis::Value> =
        redis::from_redis_value(group[0].clone()).unwrap();
    let pending_now: usize = redis::from_redis_value(info["pending"].clone()).unwrap();
    let read: usize = redis::from_redis_value(info["entries-read"].clone()).unwrap();
    assert!(
        read - pending_now == BUFFER,
        "acknowledged {} with {BUFFER} delivered",
        read - pending_now
    );

    let mut got = Vec::new();
    while got.len() < 100 {
        let e = tokio::time::timeout(Duration::from_secs(3), sub.recv())
            .await
            .expect("delivered")
            .unwrap();
        got.push(*e);
    }
    assert_eq!(got, (0..100).collect::<Vec<_>>());
    until("all acknowledged", Duration::from_secs(3), async || {
        pending(&mut raw, "slow", "g").await == 0
    })
    .await;
}

/// While Redis is down the publisher holds its events (the topic's publishers
/// wait once its buffer is full); after the restart every one is appended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publisher_holds_events_while_redis_is_down() {
    let mut server = support::server();
    let bus = EventBus::new();
    let topic = bus.topic::<u32>("audit").unwrap();
    let publisher =
        StreamPublisher::start(&support::backend(&server, "a"), &topic, "audit", 10_000).unwrap();
    topic.publish(0).await.unwrap();
    until("the first appended", Duration::from_secs(3), async || {
        publisher.stats().moved == 1
    })
    .await;
    server.kill();
    for i in 1..=20 {
        topic.publish(i).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(publisher.stats().moved, 1);
    server.restart().unwrap();
    let mut raw = support::raw(&server).await;
    // The restarted server is empty (no persistence): the 20 held events land.
    until(
        "20 appended after the restart",
        Duration::from_secs(5),
        async || xlen(&mut raw, "audit").await == 20,
    )
    .await;
    assert_eq!(publisher.stats().moved, 21);
}

#[tokio::test]
async fn bad_bridge_settings_name_the_field() {
    let server = support::server();
    let backend = support::backend(&server, "a");
    let bus = EventBus::new();
    let topic = bus.topic::<u32>("t").unwrap();
    let e = StreamPublisher::start(&backend, &topic, "s", 0).unwrap_err();
    assert!(e.to_string().contains("max_len"), "{e}");
    let e =
        StreamConsumer::start(&backend, "s", topic.clone(), ConsumerConfig::new("")).unwrap_err();
    assert!(e.to_string().contains("group"), "{e}");
    let e =
        StreamConsumer::start(&backend, "s", topic, ConsumerConfig::new("g").batch(0)).unwrap_err();
    assert!(e.to_string().contains("batch"), "{e}");
}

/// A consumer ends soon after its topic closes, even on an idle stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_ends_when_its_topic_closes() {
    let server = support::server();
    let bus = EventBus::new();
    let topic = bus.topic::<u32>("idle").unwrap();
    let _sub = topic.subscribe().unwrap();
    let config = ConsumerConfig::new("g").block(Duration::from_millis(100));
    let mut consumer = StreamConsumer::start(
        &support::backend(&server, "a"),
        "idle",
        topic.clone(),
        config,
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    topic.close();
    tokio::time::timeout(Duration::from_secs(2), consumer.join())
        .await
        .expect("the consumer ended after the topic closed");
    consumer.join().await; // again: at once
}

/// A group that disappears (Redis restarted empty) is made again, and new
/// entries flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_group_is_made_again() {
    let mut server = support::server();
    let bus = EventBus::new();
    let topic = bus.topic::<u32>("again").unwrap();
    let mut sub = topic
        .subscriber()
        .policy(Policy::Block)
        .buffer(16)
        .subscribe()
        .unwrap();
    let config = ConsumerConfig::new("g").block(Duration::from_millis(50));
    let _consumer = StreamConsumer::start(
        &support::backend(&server, "a"),
        "again",
        topic.clone(),
        config,
    )
    .unwrap();
    let mut raw = support::raw(&server).await;
    add(&mut raw, "again", [1]).await;
    let first = tokio::time::timeout(Duration::from_secs(3), sub.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(*first, 1);
    server.restart().unwrap();
    let mut raw = support::raw(&server).await;
    // The stream and group are gone; entries added now reach the topic once
    // the consumer has made the group again (it starts from the beginning).
    add(&mut raw, "again", [2, 3]).await;
    for want in [2, 3] {
        let e = tokio::time::timeout(Duration::from_secs(5), sub.recv())
            .await
            .expect("delivered after the group was made again")
            .unwrap();
        assert_eq!(*e, want);
    }
}

/// Entries every subscriber filters out by version are acknowledged, not
/// retried forever: later entries are not held up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_entries_do_not_block_the_group() {
    let server = support::server();
    let mut raw = support::raw(&server).await;
    add(&mut raw, "versions", 0..5).await;
    let bus = EventBus::new();
    let topic = bus.topic::<u32>("versions").unwrap();
    // Wants version 1 and up; the bridge publishes version 0.
    let _picky = topic.subscriber().min_version(1).subscribe().unwrap();
    let consumer = StreamConsumer::start(
        &support::backend(&server, "a"),
        "versions",
        topic.clone(),
        ConsumerConfig::new("g"),
    )
    .unwrap();
    until("all acknowledged", Duration::from_secs(3), async || {
        // (The group exists once the consumer has handled an entry.)
        consumer.stats().filtered == 5 && pending(&mut raw, "versions", "g").await == 0
    })
    .await;
}

/// Dropping `join` leaves the consumer running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_join_leaves_the_consumer_running() {
    let server = support::server();
    let mut raw = support::raw(&server).await;
    let bus = EventBus::new();
    let topic = bus.topic::<u32>("joined").unwrap();
    let mut sub = topic
        .subscriber()
        .policy(Policy::Block)
        .buffer(8)
        .subscribe()
        .unwrap();
    let mut consumer = StreamConsumer::start(
        &support::backend(&server, "a"),
        "joined",
        topic.clone(),
        ConsumerConfig::new("g").block(Duration::from_millis(50)),
    )
    .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(100), consumer.join())
            .await
            .is_err()
    );
    add(&mut raw, "joined", [7]).await;
    let e = tokio::time::timeout(Duration::from_secs(3), sub.recv())
        .await
        .expect("still consuming")
        .unwrap();
    assert_eq!(*e, 7);
}
