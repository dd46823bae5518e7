//! The bus's metrics (feature `metrics`): the documented names and labels, and
//! values checked against what each policy's spec says must happen, and against
//! what the consumers actually find in their buffers.
#![cfg(feature = "metrics")]

use std::time::Duration;

use heijunka_core::cancel::{Outcome, Polled, cancel_points};
use heijunka_core::metrics::TestRecorder;
use heijunka_event_bus::{Event, Policy, PublishError, Subscription, Topic};

const REASONS: [&str; 6] = [
    "closed",
    "discarded",
    "displaced",
    "filtered",
    "full",
    "timed_out",
];

fn documented(topic: &str) -> Vec<(String, Vec<(String, String)>)> {
    let t = |n: &str| (n.to_owned(), vec![("topic".to_owned(), topic.to_owned())]);
    let mut keys = vec![
        t("heijunka_bus_delivered_total"),
        t("heijunka_bus_published_total"),
        t("heijunka_bus_undelivered_total"),
    ];
    for r in REASONS {
        keys.push((
            "heijunka_bus_dropped_total".to_owned(),
            vec![
                ("reason".to_owned(), r.to_owned()),
                ("topic".to_owned(), topic.to_owned()),
            ],
        ));
    }
    keys.sort();
    keys
}

fn counter(rec: &TestRecorder, name: &str, topic: &str) -> u64 {
    rec.counter(name, &[("topic", topic)])
        .unwrap_or_else(|| panic!("{name} not registered"))
}

/// Every drop reason's count, in `REASONS` order.
fn dropped(rec: &TestRecorder, topic: &str) -> [u64; 6] {
    REASONS.map(|r| {
        rec.counter(
            "heijunka_bus_dropped_total",
            &[("topic", topic), ("reason", r)],
        )
        .unwrap_or_else(|| panic!("reason {r} not registered"))
    })
}

fn drain<E: Send + Sync>(sub: &mut Subscription<E>) -> u64 {
    let mut n = 0;
    while sub.try_recv().is_some() {
        n += 1;
    }
    n
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

#[test]
fn reject_drop_oldest_and_filter_count_as_their_specs_say() {
    let rec = TestRecorder::new();
    let topic = rec.scoped(|| Topic::<u32>::new("orders")).unwrap();
    assert_eq!(rec.keys(), documented("orders"));
    // Reject at a full buffer of 4: takes 4 of 6, skips 2 as full.
    let mut reject = topic
        .subscriber()
        .buffer(4)
        .reject_at(1.0)
        .policy(Policy::Reject)
        .subscribe()
        .unwrap();
    // Drop-oldest with room for 2: takes all 6, displaces the 4 oldest.
    let mut oldest = topic
        .subscriber()
        .buffer(2)
        .policy(Policy::DropOldest)
        .subscribe()
        .unwrap();
    // Wants version 2 and up: filters all 6 (version 1, not critical)...
    let mut picky = topic
        .subscriber()
        .buffer(8)
        .min_version(2)
        .subscribe()
        .unwrap();
    for i in 0..6 {
        topic.try_publish(Event::new(i).with_version(1)).unwrap();
    }
    // ...but takes a critical one (and so do the others, by their policies:
    // reject skips it as full, drop-oldest displaces one more).
    topic
        .try_publish(Event::new(99).with_version(1).critical())
        .unwrap();
    let got = [drain(&mut reject), drain(&mut oldest), drain(&mut picky)];
    assert_eq!(got, [4, 2, 1]);
    assert_eq!(counter(&rec, "heijunka_bus_published_total", "orders"), 7);
    // Delivered: everything that went into a buffer, received or displaced.
    assert_eq!(
        counter(&rec, "heijunka_bus_delivered_total", "orders"),
        4 + 7 + 1
    );
    //                                 closed discarded displaced filtered full timed_out
    assert_eq!(dropped(&rec, "orders"), [0, 0, 5, 6, 3, 0]);
    assert_eq!(counter(&rec, "heijunka_bus_undelivered_total", "orders"), 0);
    // A subscription dropped with events still buffered discards them.
    topic.try_publish(Event::new(7).with_version(5)).unwrap();
    topic.try_publish(Event::new(8).with_version(5)).unwrap();
    drop(picky);
    assert_eq!(dropped(&rec, "orders")[1], 2);
    // The metrics agree with the topic's own numbers, past subscribers included.
    let s = topic.stats();
    assert_eq!(
        counter(&rec, "heijunka_bus_delivered_total", "orders"),
        s.delivered
    );
    assert_eq!(
        counter(&rec, "heijunka_bus_published_total", "orders"),
        s.published
    );
    assert_eq!(
        dropped(&rec, "orders").iter().sum::<u64>(),
        s.dropped.total()
    );
    // No subscriber left: handed back, counted undelivered.
    drop((reject, oldest));
    assert!(matches!(
        topic.try_publish(1),
        Err(PublishError::NoSubscribers(_))
    ));
    assert_eq!(counter(&rec, "heijunka_bus_undelivered_total", "orders"), 1);
    assert_eq!(rec.keys(), documented("orders"));
}

#[test]
fn timeout_and_closed_count_as_their_specs_say() {
    let rec = TestRecorder::new();
    let rt = rt();
    let topic = rec.scoped(|| Topic::<u32>::new("slow")).unwrap();
    rt.block_on(async {
        let mut timed = topic
            .subscriber()
            .buffer(1)
            .policy(Policy::Timeout(Duration::from_millis(10)))
            .subscribe()
            .unwrap();
        topic.publish(1).await.unwrap();
        // Full for the whole timeout: skipped, handed back.
        let err = topic.publish(2).await.unwrap_err();
        assert!(matches!(err, PublishError::Undelivered { .. }));
        assert_eq!(drain(&mut timed), 1);
        assert_eq!(dropped(&rec, "slow"), [0, 0, 0, 0, 0, 1]);
        assert_eq!(counter(&rec, "heijunka_bus_published_total", "slow"), 1);
        assert_eq!(counter(&rec, "heijunka_bus_undelivered_total", "slow"), 1);
        drop(timed);

        // A blocked publisher whose subscriber leaves: nobody is left, the
        // event comes back; the event it had not read is discarded.
        let blocking = topic
            .subscriber()
            .buffer(1)
            .policy(Policy::Block)
            .subscribe()
            .unwrap();
        topic.publish(3).await.unwrap();
        let t = topic.clone();
        let waiting = tokio::spawn(async move { t.publish(4).await });
        for _ in 0..5 {
            tokio::task::yield_now().await;
        }
        assert!(!waiting.is_finished());
        drop(blocking);
        assert!(matches!(
            waiting.await.unwrap(),
            Err(PublishError::NoSubscribers(_))
        ));
        assert_eq!(dropped(&rec, "slow"), [0, 1, 0, 0, 0, 1]);
        assert_eq!(counter(&rec, "heijunka_bus_delivered_total", "slow"), 2);
        assert_eq!(counter(&rec, "heijunka_bus_published_total", "slow"), 2);
        assert_eq!(counter(&rec, "heijunka_bus_undelivered_total", "slow"), 2);
        // A closed topic hands the event back before any subscriber is asked.
        topic.close();
        assert!(matches!(topic.try_publish(5), Err(PublishError::Closed(_))));
        assert_eq!(counter(&rec, "heijunka_bus_undelivered_total", "slow"), 2);
    });
}

/// A publish dropped at each of its await points (waiting for a blocking
/// subscriber's room) published nothing: no delivery, no drop, no publish is
/// counted for it; finished, it counts once, with both deliveries.
#[test]
fn a_cancelled_publish_leaves_the_counters_balanced() {
    let covered = cancel_points(8, |k| {
        let rec = TestRecorder::new();
        let rt = rt();
        let _g = rt.enter();
        let topic = rec.scoped(|| Topic::<u32>::new("c")).unwrap();
        let mut fast = topic.subscriber().buffer(4).subscribe().unwrap();
        let mut slow = topic
            .subscriber()
            .buffer(1)
            .policy(Policy::Block)
            .subscribe()
            .unwrap();
        // Fills the slow subscriber: the next publish waits for it.
        topic.try_publish(0).unwrap();
        let t = topic.clone();
        let mut taken = 0;
        let outcome = Polled::new(async move { t.publish(2).await }).drop_after_with(k, |i| {
            if i == 1 {
                // Room appears after the first poll.
                taken += u64::from(slow.try_recv().is_some());
            }
        });
        let completed = outcome.is_completed();
        let polls = match outcome {
            Outcome::Completed { output, polls } => {
                assert_eq!(output.unwrap().delivered, 2);
                polls
            }
            Outcome::Cancelled { polls } => polls,
        };
        let in_buffers = taken + drain(&mut fast) + drain(&mut slow);
        assert_eq!(
            counter(&rec, "heijunka_bus_delivered_total", "c"),
            in_buffers,
            "k = {k}"
        );
        assert_eq!(
            counter(&rec, "heijunka_bus_published_total", "c"),
            1 + u64::from(completed),
            "k = {k}"
        );
        assert_eq!(
            counter(&rec, "heijunka_bus_published_total", "c"),
            topic.stats().published
        );
        assert_eq!(dropped(&rec, "c"), [0; 6], "k = {k}");
        if completed {
            Outcome::Completed { output: (), polls }
        } else {
            Outcome::Cancelled { polls }
        }
    });
    assert!(covered >= 2, "the publish waited (covered {covered})");
}
