//! The defects the bus's second design fixes, each written from the behaviour a
//! user relies on (issue 23): a cancelled publish leaves no half-published event,
//! a waiting publisher wakes as soon as there is room, a request/acknowledge
//! consumer does not deadlock, topics and handlers do not outlive their use,
//! a huge buffer does not allocate gigabytes, a panicking predicate does not take
//! the publisher down.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use heijunka_event_bus::{Event, EventBus, Policy, SubscribeError, Topic};
use heijunka_memory::{AllocScope, CountingAlloc};
use heijunka_recycler::Recycler;

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc::system();

fn poll_once<F: Future>(f: std::pin::Pin<&mut F>) -> Poll<F::Output> {
    f.poll(&mut Context::from_waker(Waker::noop()))
}

/// Drops `publish` after every number of polls it survives, and checks the
/// promise of a cancelled publish: either nobody got the event, or it was
/// published (then every subscriber's fate is counted). Pooled events come back.
#[test]
fn a_cancelled_publish_is_all_or_nothing() {
    for polls in 1..4 {
        let pool = Recycler::new(8, || vec![0_u8; 4]).unwrap();
        let topic = Topic::<Vec<u8>>::new("t").unwrap();
        // A lossless subscriber that is full, and a fast one.
        let mut slow = topic
            .subscriber()
            .buffer(1)
            .policy(Policy::Block)
            .subscribe()
            .unwrap();
        let mut fast = topic.subscriber().buffer(8).subscribe().unwrap();
        topic.try_publish(vec![1]).unwrap();
        assert_eq!(fast.try_recv().map(|e| e[0]), Some(1));

        let mut v = pool.get();
        v[0] = 2;
        {
            let mut publish = pin!(topic.publish(Event::pooled(v.into_shared())));
            for _ in 0..polls {
                assert!(
                    poll_once(publish.as_mut()).is_pending(),
                    "the slow one is full"
                );
            }
        } // dropped while waiting for room
        let got_fast = fast.try_recv().map(|e| e[0]);
        let stats = topic.stats();
        if got_fast == Some(2) {
            assert_eq!(stats.published, 2, "a delivered event counts as published");
            assert_eq!(
                stats.dropped.total(),
                1,
                "the slow subscriber's fate is counted"
            );
        } else {
            assert_eq!(got_fast, None);
            assert_eq!(stats.published, 1, "nothing was published");
            assert_eq!(stats.dropped.total(), 0);
        }
        // The slow subscriber still has its first event, and only that.
        assert_eq!(slow.try_recv().map(|e| e[0]), Some(1));
        assert!(slow.try_recv().is_none());
        // The pooled event is back (or held only by what the fast one received).
        drop((slow, fast, topic));
        assert_eq!(pool.stats().returns, 1, "after {polls} polls");
    }
}

/// A `Timeout` publisher against a steady slow consumer: the publish finishes
/// as soon as one receive makes room, not at its deadline.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_waiting_publisher_wakes_within_one_receive() {
    let topic = Topic::<u32>::new("t").unwrap();
    let mut sub = topic
        .subscriber()
        .buffer(64)
        .policy(Policy::Timeout(Duration::from_secs(5)))
        .subscribe()
        .unwrap();
    for i in 0..64 {
        topic.publish(i).await.unwrap();
    }
    let publisher = {
        let topic = topic.clone();
        tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            topic.publish(64).await.unwrap();
            start.elapsed()
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!publisher.is_finished(), "full: the publisher waits");
    assert_eq!(sub.recv().await.map(|e| *e), Some(0)); // one slot of room
    let waited = publisher.await.unwrap();
    assert!(
        waited < Duration::from_millis(200),
        "the publish waited {waited:?}: it must finish once one receive made room"
    );
    assert_eq!(topic.stats().dropped.total(), 0);
}

/// A consumer that takes one event and then waits for the publisher's next move
/// (request/acknowledge) must not deadlock against a `Block` publisher.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_request_acknowledge_consumer_does_not_deadlock() {
    let topic = Topic::<u32>::new("t").unwrap();
    let mut sub = topic
        .subscriber()
        .buffer(16)
        .policy(Policy::Block)
        .subscribe()
        .unwrap();
    let (ack_tx, mut ack_rx) = tokio::sync::mpsc::unbounded_channel();
    let publisher = {
        let topic = topic.clone();
        tokio::spawn(async move {
            for i in 0..40_u32 {
                topic.publish(i).await.unwrap();
                if i >= 16 {
                    ack_tx.send(i).unwrap(); // "I got past the full buffer"
                }
            }
        })
    };
    let consumer = async {
        for i in 0..40_u32 {
            assert_eq!(sub.recv().await.map(|e| *e), Some(i));
            if (1..=24).contains(&i) {
                // Waits for the publisher's acknowledgement of the next publish.
                ack_rx.recv().await.unwrap();
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), consumer)
        .await
        .expect("the consumer and the publisher deadlocked");
    publisher.await.unwrap();
}

/// A topic nobody holds any more (no handle, no subscriber) leaves the bus and
/// frees its memory.
#[tokio::test(flavor = "current_thread")]
async fn a_topic_nobody_holds_is_removed_and_freed() {
    let bus = EventBus::new();
    let keep = bus.topic::<u64>("kept").unwrap();
    // Warm up whatever the bus and the runtime allocate once.
    drop(bus.topic::<u64>("warm").unwrap().subscribe().unwrap());
    let scope = AllocScope::enter();
    for round in 0..20 {
        let name = format!("session.{round}");
        let topic = bus.topic::<u64>(&name).unwrap();
        let mut sub = topic.subscriber().buffer(512).subscribe().unwrap();
        topic.publish(7).await.unwrap();
        assert_eq!(sub.recv().await.map(|e| *e), Some(7));
    }
    let names = bus.topic_names();
    assert!(
        !names.iter().any(|n| n.starts_with("session.")),
        "topics nobody holds are still listed: {names:?}"
    );
    assert!(names.contains(&"kept".to_owned()));
    let net = scope.stats().net();
    assert!(
        net < 16 * 1024,
        "20 topics used and dropped still hold {net} bytes"
    );
    drop(keep);
}

/// A stopped handler releases its task pool and statistics; the topic keeps only
/// its final counters.
#[tokio::test(flavor = "current_thread")]
async fn a_stopped_handler_releases_its_memory() {
    let topic = Topic::<u64>::new("jobs").unwrap();
    // Warm up the runtime's and the pool crate's one-time allocations.
    let h = topic.handle(2, |_| async {}).unwrap();
    h.stop(Duration::from_secs(1)).await;
    drop(h);
    let scope = AllocScope::enter();
    for _ in 0..10 {
        let h = topic.handle(4, |_| async {}).unwrap();
        topic.publish(1).await.unwrap();
        assert!(h.stop(Duration::from_secs(1)).await);
        drop(h);
    }
    tokio::task::yield_now().await;
    let net = scope.stats().net();
    assert!(
        net < 64 * 1024,
        "10 stopped handlers still hold {net} bytes"
    );
    let stats = topic.stats();
    assert_eq!(stats.handlers.len(), 11, "final counters are kept");
    assert_eq!(
        stats.handlers.iter().map(|h| h.succeeded).sum::<u64>(),
        10,
        "each handler's final counters"
    );
}

/// A huge buffer is refused, or costs nothing until used: never gigabytes up
/// front.
#[test]
fn a_huge_buffer_does_not_allocate_up_front() {
    let topic = Topic::<u64>::new("t").unwrap();
    let scope = AllocScope::enter();
    let sub = topic.subscriber().buffer(1 << 28).subscribe();
    let allocated = scope.stats().allocated;
    match sub {
        Err(SubscribeError::Config(e)) => assert_eq!(e.field(), "buffer"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => assert!(
            allocated < 64 << 20,
            "subscribing allocated {allocated} bytes"
        ),
    }
}

/// A `critical_kinds` predicate that panics is caught: the publisher goes on.
#[tokio::test(flavor = "current_thread")]
async fn a_panicking_predicate_does_not_take_the_publisher_down() {
    let topic = Topic::<u32>::new("t").unwrap();
    let called = Arc::new(AtomicBool::new(false));
    let seen = called.clone();
    topic.critical_kinds(move |_| {
        seen.store(true, Ordering::Relaxed);
        panic!("a bug in the predicate")
    });
    let mut old = topic.subscriber().min_version(2).subscribe().unwrap();
    let mut all = topic.subscribe().unwrap();
    let publish = std::panic::AssertUnwindSafe(topic.publish(Event::new(1).with_version(1)));
    let outcome = futures_catch(publish).await;
    assert!(called.load(Ordering::Relaxed), "the predicate ran");
    let report = outcome.expect("the publisher must not unwind").unwrap();
    assert_eq!(report.delivered, 1);
    assert_eq!(all.try_recv().map(|e| *e), Some(1));
    assert!(old.try_recv().is_none(), "not critical: filtered");
}

/// Polls `f`, catching a panic from any poll.
async fn futures_catch<F: Future>(
    f: std::panic::AssertUnwindSafe<F>,
) -> Result<F::Output, Box<dyn std::any::Any + Send>> {
    let mut f = pin!(f.0);
    std::future::poll_fn(|cx| {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f.as_mut().poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(p) => Poll::Ready(Err(p)),
        }
    })
    .await
}

/// A `Reject` subscriber at its mark keeps its oldest events, on a ring of 64
/// (where a skip mark and the slot a publish reuses would share a bit of a
/// ring-sized bitmap), and the events it skipped are not delivered.
#[test]
fn a_reject_subscriber_keeps_its_oldest_events_on_a_large_ring() {
    let topic = Topic::<u32>::with_capacity("t", 64).unwrap();
    let mut reject = topic
        .subscriber()
        .buffer(10)
        .policy(Policy::Reject)
        .subscribe()
        .unwrap(); // reject mark 9
    let _latest = topic
        .subscriber()
        .buffer(1)
        .policy(Policy::DropOldest)
        .subscribe()
        .unwrap();
    for i in 0..=72 {
        topic.try_publish(i).unwrap();
    }
    let got: Vec<u32> = std::iter::from_fn(|| reject.try_recv().map(|e| *e)).collect();
    assert_eq!(got, (0..9).collect::<Vec<_>>());
    assert_eq!(reject.stats().dropped.full, 73 - 9);
}

/// A subscription dropped with events moved aside by a lap drops them outside
/// the topic's lock: an event whose drop calls back into the topic does not
/// deadlock.
#[test]
fn dropping_a_lapped_subscription_drops_its_events_outside_the_lock() {
    struct Reentrant(Option<Topic<Reentrant>>);
    impl Drop for Reentrant {
        fn drop(&mut self) {
            if let Some(topic) = &self.0 {
                let _ = topic.subscriber_count(); // takes the topic's lock
            }
        }
    }
    let topic = Topic::<Reentrant>::with_capacity("t", 2).unwrap();
    let reject = topic
        .subscriber()
        .buffer(1)
        .policy(Policy::Reject)
        .subscribe()
        .unwrap();
    let _latest = topic
        .subscriber()
        .buffer(1)
        .policy(Policy::DropOldest)
        .subscribe()
        .unwrap();
    topic.try_publish(Reentrant(Some(topic.clone()))).unwrap();
    topic.try_publish(Reentrant(None)).unwrap();
    topic.try_publish(Reentrant(None)).unwrap(); // laps `reject`: event 0 moves aside
    drop(reject); // drops event 0's last handle
    assert_eq!(topic.subscriber_count(), 1);
}

/// A publisher waiting for a `Block` subscriber goes on at its next receive,
/// also when that receive is served from events the consumer took from the
/// ring earlier, in a batch.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_waiting_publisher_goes_on_at_a_receive_served_from_a_batch() {
    let topic = Topic::<u32>::new("t").unwrap();
    let mut sub = topic
        .subscriber()
        .buffer(64)
        .policy(Policy::Block)
        .subscribe()
        .unwrap();
    for i in 0..64 {
        topic.try_publish(i).unwrap();
    }
    // Takes a batch from the ring (room for a few), receives the first.
    assert_eq!(sub.recv().await.map(|e| *e), Some(0));
    let mut next = 64;
    while topic.try_publish(next).is_ok() {
        next += 1;
    }
    assert!(next > 64, "the batch made room");
    let publisher = {
        let topic = topic.clone();
        tokio::spawn(async move { topic.publish(next).await.map(|r| r.delivered) })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(!publisher.is_finished(), "full again: it waits");
    assert_eq!(sub.recv().await.map(|e| *e), Some(1)); // from the batch
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(
        publisher.is_finished(),
        "the receive must make room for the waiting publisher"
    );
    assert_eq!(publisher.await.unwrap().unwrap(), 1);
}
