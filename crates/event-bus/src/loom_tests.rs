//! Loom models of the topic's protocols, through the real API on rings of two
//! slots: the claim/write/lap protocol against a reader holding its cursor,
//! the consumer's sleep/wake handshake, the publisher's wait for room, and
//! reclaim against a writer. Each side runs on a spawned loom thread (loom
//! explores far fewer interleavings against the model's main thread).

use std::future::poll_fn;

use crate::{Event, Policy, Topic};

/// A publisher laps a drop-oldest reader (a whole ring behind) while the
/// reader takes events: the lap and the read never touch one slot at once
/// (loom's cell checks), the reader sees events in order, and every event is
/// received or counted as displaced.
#[test]
fn a_lap_and_a_read_never_overlap() {
    loom::model(|| {
        let topic = Topic::<String>::with_capacity("t", 2).unwrap();
        let mut sub = topic
            .subscriber()
            .buffer(1)
            .policy(Policy::DropOldest)
            .subscribe()
            .unwrap();
        let publisher = {
            let topic = topic.clone();
            loom::thread::spawn(move || {
                for i in 0..3 {
                    topic.try_publish(i.to_string()).unwrap();
                }
            })
        };
        let consumer = loom::thread::spawn(move || {
            let mut got = Vec::new();
            for _ in 0..2 {
                if let Some(e) = sub.try_recv() {
                    got.push(e.parse::<u32>().unwrap());
                }
            }
            (got, sub)
        });
        publisher.join().unwrap();
        let (mut got, mut sub) = consumer.join().unwrap();
        while let Some(e) = sub.try_recv() {
            got.push(e.parse::<u32>().unwrap());
        }
        assert!(got.windows(2).all(|w| w[0] < w[1]), "{got:?}");
        assert_eq!(got.last(), Some(&2), "the newest is never lost");
        let displaced = topic.stats().dropped.displaced;
        assert_eq!(got.len() as u64 + displaced, 3, "{got:?}");
    });
}

/// A consumer that finds nothing and sleeps is woken by a publish, whichever
/// comes first.
#[test]
fn a_sleeping_consumer_is_woken_by_a_publish() {
    loom::model(|| {
        let topic = Topic::<u32>::with_capacity("t", 2).unwrap();
        let mut sub = topic.subscriber().buffer(1).subscribe().unwrap();
        let publisher = {
            let topic = topic.clone();
            loom::thread::spawn(move || {
                topic.try_publish(Event::inline(7)).unwrap();
            })
        };
        let consumer = loom::thread::spawn(move || {
            loom::future::block_on(poll_fn(|cx| sub.poll_recv(cx))).map(|e| *e)
        });
        publisher.join().unwrap();
        assert_eq!(consumer.join().unwrap(), Some(7));
    });
}

/// A publisher waiting for a full `Block` subscriber is woken by that
/// subscriber's next receive.
#[test]
fn a_waiting_publisher_is_woken_by_one_receive() {
    loom::model(|| {
        let topic = Topic::<u32>::with_capacity("t", 2).unwrap();
        let mut sub = topic
            .subscriber()
            .buffer(1)
            .policy(Policy::Block)
            .subscribe()
            .unwrap();
        topic.try_publish(Event::inline(1)).unwrap();
        let publisher = {
            let topic = topic.clone();
            loom::thread::spawn(move || {
                let report = loom::future::block_on(topic.publish(Event::inline(2))).unwrap();
                assert_eq!(report.delivered, 1);
            })
        };
        let consumer = loom::thread::spawn(move || {
            assert_eq!(sub.try_recv().map(|e| *e), Some(1));
            sub
        });
        publisher.join().unwrap();
        let mut sub = consumer.join().unwrap();
        assert_eq!(sub.try_recv().map(|e| *e), Some(2));
    });
}

/// A consumer that caught up reclaims what every subscriber read while a
/// publisher that loaded the open gate claims and writes the next sequence:
/// reclaim never takes from the slot that write reuses (loom's cell checks).
#[test]
fn reclaim_and_a_write_never_overlap() {
    loom::model(|| {
        let topic = Topic::<String>::with_capacity("t", 4).unwrap();
        let mut sub = topic
            .subscriber()
            .buffer(2)
            .policy(Policy::Block)
            .subscribe()
            .unwrap();
        // Publishes 0..=4 and reads them, without ever finding the ring empty
        // (which would reclaim): the last slow path (at 4) leaves the gate at
        // 5 + 2, so the publish of 5 below takes the fast path.
        let mut read = |sub: &mut crate::Subscription<String>, n: usize| {
            for _ in 0..n {
                assert!(sub.try_recv().is_some());
            }
        };
        for i in 0..2 {
            topic.try_publish(i.to_string()).unwrap();
        }
        read(&mut sub, 2);
        for i in 2..4 {
            topic.try_publish(i.to_string()).unwrap();
        }
        read(&mut sub, 2);
        topic.try_publish(String::from("4")).unwrap();
        read(&mut sub, 1);
        let publisher = {
            let topic = topic.clone();
            loom::thread::spawn(move || {
                topic.try_publish(String::from("5")).unwrap();
            })
        };
        let consumer = loom::thread::spawn(move || {
            // Empty (or "5"), then reclaims.
            let first = sub.try_recv().map(|e| e.to_string());
            let second = sub.try_recv().map(|e| e.to_string());
            assert!(first.is_none() || second.is_none());
            sub
        });
        publisher.join().unwrap();
        drop(consumer.join().unwrap());
        assert_eq!(topic.stats().published, 6);
    });
}

/// A drop-oldest consumer jumps ahead while a slow-path publisher (whose event
/// this subscriber's version filter refuses) is between its claim and its
/// mark: the jump never passes an event whose mark may still come, so each
/// event is counted once, as received, displaced or filtered.
#[test]
fn a_jump_never_passes_a_mark_still_to_come() {
    loom::model(|| {
        let topic = Topic::<u32>::with_capacity("t", 4).unwrap();
        let mut latest = topic
            .subscriber()
            .buffer(1)
            .policy(Policy::DropOldest)
            .min_version(5)
            .subscribe()
            .unwrap();
        // Takes every event (never skipped): every publish is claimed.
        let _all = topic
            .subscriber()
            .buffer(2)
            .policy(Policy::DropOldest)
            .subscribe()
            .unwrap();
        topic.try_publish(Event::inline(0).with_version(5)).unwrap();
        let old = {
            let topic = topic.clone();
            loom::thread::spawn(move || {
                // Filtered for `latest`: the slow path marks it.
                let _ = topic.try_publish(Event::inline(1).with_version(1));
            })
        };
        let new = {
            let topic = topic.clone();
            loom::thread::spawn(move || {
                for i in [2, 3] {
                    let _ = topic.try_publish(Event::inline(i).with_version(5));
                }
            })
        };
        let consumer = loom::thread::spawn(move || {
            let mut got = 0_u64;
            got += u64::from(latest.try_recv().is_some());
            (latest, got)
        });
        old.join().unwrap();
        new.join().unwrap();
        let (mut latest, mut got) = consumer.join().unwrap();
        while latest.try_recv().is_some() {
            got += 1;
        }
        let s = latest.stats();
        assert_eq!(
            got + s.dropped.displaced + s.dropped.filtered,
            topic.stats().published,
            "{s:?}"
        );
    });
}
