//! Publish policies: drop-oldest, block (backpressure), timeout, reject.

use std::time::Duration;

use heijunka_core::PressureLevel;
use heijunka_event_bus::{Event, Policy, PublishError, SkipReason, Topic};
use heijunka_recycler::Recycler;

#[tokio::test]
async fn drop_oldest_counts_drops_exactly_and_keeps_the_newest() {
    let topic = Topic::<u32>::new("ticks").unwrap();
    let mut sub = topic
        .subscriber()
        .buffer(10)
        .policy(Policy::DropOldest)
        .subscribe()
        .unwrap();
    for i in 0..100 {
        let r = topic.try_publish(i).unwrap();
        assert_eq!(r.delivered, 1);
        assert!(r.is_complete(), "drop-oldest is never skipped");
    }
    assert_eq!(sub.len(), 100, "nothing is lost before it reads");
    let mut got = Vec::new();
    while let Some(e) = sub.try_recv() {
        got.push(*e);
    }
    assert_eq!(got, (90..100).collect::<Vec<_>>(), "the newest ten");
    // Counted when it read: exactly what it lost.
    let s = topic.stats();
    assert_eq!(s.dropped.displaced, 90);
    assert_eq!(s.subscribers[0].dropped.displaced, 90);
    assert_eq!(s.delivered, 100);
}

#[tokio::test]
async fn drop_oldest_a_whole_ring_behind_is_lapped_and_counted_at_once() {
    let topic = Topic::<u32>::with_capacity("ticks", 16).unwrap();
    let mut sub = topic
        .subscriber()
        .buffer(4)
        .policy(Policy::DropOldest)
        .subscribe()
        .unwrap();
    for i in 0..40 {
        topic.try_publish(i).unwrap();
    }
    // A publisher reusing a slot it had not read moved it on: 40 - 16 lost.
    assert_eq!(topic.stats().dropped.displaced, 24);
    let mut got = Vec::new();
    while let Some(e) = sub.try_recv() {
        got.push(*e);
    }
    assert_eq!(got, (36..40).collect::<Vec<_>>(), "the newest four");
    assert_eq!(topic.stats().dropped.displaced, 36);
}

#[tokio::test]
async fn drop_oldest_returns_displaced_pooled_events() {
    let pool = Recycler::new(8, || Vec::<u8>::with_capacity(8)).unwrap();
    let topic = Topic::<Vec<u8>>::new("md").unwrap();
    let mut sub = topic
        .subscriber()
        .buffer(2)
        .policy(Policy::DropOldest)
        .subscribe()
        .unwrap();
    for i in 0..10_u8 {
        let mut v = pool.get();
        v.push(i);
        topic.publish(Event::pooled(v.into_shared())).await.unwrap();
    }
    // The ring keeps them until its subscribers are past them.
    assert_eq!(pool.stats().returns, 0);
    assert_eq!(sub.recv().await.map(|e| e[0]), Some(8));
    assert_eq!(sub.recv().await.map(|e| e[0]), Some(9));
    // Caught up: what every subscriber has passed goes back.
    assert!(sub.try_recv().is_none());
    assert_eq!(pool.stats().returns, 10);
    assert_eq!(topic.stats().dropped.displaced, 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_oldest_with_a_concurrent_consumer_accounts_for_every_event() {
    let topic = Topic::<u64>::new("race").unwrap();
    let mut sub = topic
        .subscriber()
        .buffer(4)
        .policy(Policy::DropOldest)
        .subscribe()
        .unwrap();
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while let Some(e) = sub.recv().await {
            got.push(*e);
        }
        got
    });
    for i in 0..5000 {
        topic.publish(i).await.unwrap();
    }
    topic.close();
    let got = reader.await.unwrap();
    let displaced = topic.stats().dropped.displaced;
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "in order, no duplicates"
    );
    assert_eq!(got.last(), Some(&4999), "the newest is never dropped");
    assert_eq!(
        got.len() as u64 + displaced,
        5000,
        "received + displaced = published"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn block_policy_slows_the_publisher() {
    let topic = Topic::<u32>::new("slow").unwrap();
    let mut sub = topic
        .subscriber()
        .buffer(4)
        .policy(Policy::Block)
        .subscribe()
        .unwrap();
    let t = topic.clone();
    let publisher = tokio::spawn(async move {
        for i in 0..20 {
            t.publish(i).await.unwrap();
        }
    });
    // The publisher runs until the buffer is full, then waits for the consumer.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(!publisher.is_finished());
    assert_eq!(
        topic.stats().published,
        4,
        "stopped at the buffer's capacity"
    );
    assert_eq!(sub.len(), 4);
    assert_eq!(topic.pressure(), PressureLevel::Critical);
    // The waiting publisher goes on at each receive: one free slot is enough.
    for taken in 1..=16_u64 {
        let e = sub.recv().await.unwrap();
        assert_eq!(*e as u64, taken - 1);
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        assert_eq!(topic.stats().published, 4 + taken, "after {taken} taken");
    }
    publisher.await.unwrap();
    let s = topic.stats();
    assert_eq!(s.published, 20);
    assert_eq!(s.dropped.total(), 0);
}

/// A publish waiting on a subscriber that unsubscribes ends with the event
/// back (nobody is left to take it), and the topic counts what the leaving
/// subscriber had not read.
#[tokio::test(flavor = "current_thread")]
async fn a_publish_waiting_on_a_departing_subscriber_is_counted() {
    let topic = Topic::<u32>::new("leaving").unwrap();
    let sub = topic
        .subscriber()
        .buffer(1)
        .policy(Policy::Block)
        .subscribe()
        .unwrap();
    let id = sub.id();
    topic.publish(1).await.unwrap();
    let t = topic.clone();
    let waiting = tokio::spawn(async move { t.publish(2).await });
    for _ in 0..4 {
        tokio::task::yield_now().await;
    }
    assert!(!waiting.is_finished(), "the buffer is full: it waits");
    drop(sub);
    let err = waiting.await.unwrap().unwrap_err();
    let PublishError::NoSubscribers(event) = err else {
        panic!("expected NoSubscribers");
    };
    assert_eq!(*event, 2, "the event comes back");
    let _ = id;
    let s = topic.stats();
    assert_eq!(s.dropped.discarded, 1);
    assert_eq!((s.published, s.undelivered, s.delivered), (1, 1, 1));
}

#[tokio::test(start_paused = true)]
async fn timeout_policy_fails_the_publish_after_the_timeout() {
    let topic = Topic::<u32>::new("t").unwrap();
    let mut sub = topic
        .subscriber()
        .buffer(1)
        .policy(Policy::Timeout(Duration::from_millis(200)))
        .subscribe()
        .unwrap();
    topic.publish(1).await.unwrap();
    let start = tokio::time::Instant::now();
    let err = topic.publish(2).await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_millis(200));
    let PublishError::Undelivered { event, report } = err else {
        panic!("expected Undelivered");
    };
    assert_eq!(*event, 2, "the event comes back");
    assert_eq!(report.skipped, vec![(sub.id(), SkipReason::TimedOut)]);
    assert_eq!(topic.stats().dropped.timed_out, 1);
    assert_eq!(topic.stats().undelivered, 1);
    assert_eq!(sub.recv().await.map(|e| *e), Some(1));
}

#[tokio::test(start_paused = true)]
async fn default_policy_waits_five_seconds() {
    let topic = Topic::<u32>::new("t").unwrap();
    let _sub = topic.subscriber().buffer(1).subscribe().unwrap();
    topic.publish(1).await.unwrap();
    let start = tokio::time::Instant::now();
    assert!(topic.publish(2).await.is_err());
    assert_eq!(start.elapsed(), heijunka_event_bus::DEFAULT_PUBLISH_TIMEOUT);
}

#[tokio::test(start_paused = true)]
async fn publish_timeout_bounds_a_blocking_subscriber_and_others_still_get_it() {
    let topic = Topic::<u32>::new("t").unwrap();
    let blocked = topic
        .subscriber()
        .buffer(1)
        .policy(Policy::Block)
        .subscribe()
        .unwrap();
    let mut free = topic
        .subscriber()
        .buffer(8)
        .policy(Policy::Block)
        .subscribe()
        .unwrap();
    topic.publish(1).await.unwrap();
    let start = tokio::time::Instant::now();
    let r = topic
        .publish_timeout(2, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert_eq!(r.delivered, 1);
    assert_eq!(r.skipped, vec![(blocked.id(), SkipReason::TimedOut)]);
    assert_eq!(free.recv().await.map(|e| *e), Some(1));
    assert_eq!(free.recv().await.map(|e| *e), Some(2));
}

#[tokio::test]
async fn reject_policy_skips_at_the_reject_mark_and_reports_it() {
    let topic = Topic::<u32>::new("t").unwrap();
    // Buffer 10: warn at 8, reject at 9.
    let rejecting = topic
        .subscriber()
        .buffer(10)
        .policy(Policy::Reject)
        .subscribe()
        .unwrap();
    let mut other = topic
        .subscriber()
        .buffer(100)
        .policy(Policy::Block)
        .subscribe()
        .unwrap();
    for i in 0..9 {
        assert!(topic.publish(i).await.unwrap().is_complete());
    }
    assert_eq!(rejecting.pressure(), PressureLevel::Critical);
    let r = topic.publish(9).await.unwrap();
    assert_eq!(r.delivered, 1);
    assert_eq!(r.skipped, vec![(rejecting.id(), SkipReason::Full)]);
    assert_eq!(r.skipped_for(SkipReason::Full), 1);
    let s = topic.stats();
    assert_eq!(s.dropped.full, 1);
    assert_eq!(s.pressure, PressureLevel::Critical);
    assert_eq!(other.len(), 10);
    assert_eq!(other.recv().await.map(|e| *e), Some(0));
}

#[tokio::test]
async fn try_publish_never_waits_on_a_blocking_subscriber() {
    let topic = Topic::<u32>::new("t").unwrap();
    let sub = topic
        .subscriber()
        .buffer(2)
        .policy(Policy::Block)
        .reject_at(1.0)
        .subscribe()
        .unwrap();
    topic.try_publish(1).unwrap();
    topic.try_publish(2).unwrap();
    let err = topic.try_publish(3).unwrap_err();
    assert_eq!(
        err.report().unwrap().skipped,
        vec![(sub.id(), SkipReason::Full)]
    );
    assert_eq!(*err.into_inner(), 3);
}

#[tokio::test]
async fn pressure_tracks_the_fullest_subscriber() {
    let topic = Topic::<u32>::new("t").unwrap();
    assert_eq!(topic.pressure(), PressureLevel::Normal);
    let _a = topic.subscriber().buffer(10).subscribe().unwrap();
    let mut b = topic.subscriber().buffer(100).subscribe().unwrap();
    for i in 0..8 {
        topic.publish(i).await.unwrap();
    }
    assert_eq!(topic.pressure(), PressureLevel::Elevated);
    while b.try_recv().is_some() {}
    assert_eq!(
        topic.pressure(),
        PressureLevel::Elevated,
        "the fuller one counts"
    );
}

#[tokio::test]
async fn dropping_a_subscription_discards_and_returns_its_events() {
    let pool = Recycler::new(8, || Vec::<u8>::with_capacity(8)).unwrap();
    let topic = Topic::<Vec<u8>>::new("t").unwrap();
    let sub = topic.subscribe().unwrap();
    let mut keep = topic.subscribe().unwrap();
    for _ in 0..3 {
        topic
            .publish(Event::pooled(pool.get().into_shared()))
            .await
            .unwrap();
    }
    drop(sub);
    assert_eq!(topic.subscriber_count(), 1);
    assert_eq!(
        pool.stats().returns,
        0,
        "the other subscriber still holds them"
    );
    while keep.try_recv().is_some() {}
    assert_eq!(pool.stats().returns, 3);
    let s = topic.stats();
    assert_eq!(s.dropped.discarded, 3);
    assert_eq!(s.delivered, 6, "departed subscribers still count");
}

/// An event whose drop calls back into its own topic.
struct Reentrant(Option<Topic<Reentrant>>);

impl Drop for Reentrant {
    fn drop(&mut self) {
        if let Some(topic) = &self.0 {
            // Takes the topic's lock: it must not be held here.
            let _ = topic.subscriber_count();
        }
    }
}

#[test]
fn events_are_dropped_outside_the_topic_lock() {
    // Overwritten by a publisher that lapped the subscriber.
    let topic = Topic::<Reentrant>::with_capacity("t", 2).unwrap();
    let _sub = topic
        .subscriber()
        .buffer(1)
        .policy(Policy::DropOldest)
        .subscribe()
        .unwrap();
    topic.try_publish(Reentrant(Some(topic.clone()))).unwrap();
    topic.try_publish(Reentrant(None)).unwrap();
    topic.try_publish(Reentrant(None)).unwrap(); // reuses the first slot
    assert_eq!(topic.stats().dropped.displaced, 1);

    // Reclaimed once every subscriber read it.
    let topic = Topic::<Reentrant>::new("t").unwrap();
    let mut sub = topic.subscribe().unwrap();
    topic.try_publish(Reentrant(Some(topic.clone()))).unwrap();
    assert!(sub.try_recv().is_some());
    assert!(sub.try_recv().is_none()); // reclaims: drops the event
    assert_eq!(topic.subscriber_count(), 1);
}
