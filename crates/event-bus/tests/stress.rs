//! Every policy at once, on a small ring, from plain threads that never wait:
//! publishers skip full subscribers and lap the ones a whole ring behind,
//! consumers take events while that happens. Each subscriber sees each
//! publisher's events in order, and accounts for every event exactly once:
//! received, skipped (full, timed out) or displaced. Bounded: 2 x 4000 events.

use std::time::Duration;

use heijunka_event_bus::{Policy, Subscription, Topic};

/// Events per publisher (fewer under miri, which interprets every access).
const PER_PUBLISHER: u64 = if cfg!(miri) { 150 } else { 4000 };

fn consume(mut sub: Subscription<u64>, topic: Topic<u64>) -> (Subscription<u64>, u64) {
    let mut last = [None::<u64>; 2];
    let mut received = 0;
    loop {
        match sub.try_recv() {
            Some(e) => {
                let (publisher, seq) = ((*e >> 32) as usize, *e & 0xffff_ffff);
                assert!(
                    last[publisher].is_none_or(|l| l < seq),
                    "out of order: {seq} after {:?}",
                    last[publisher]
                );
                last[publisher] = Some(seq);
                received += 1;
            }
            None if topic.is_closed() && sub.is_empty() => break,
            None => std::thread::yield_now(),
        }
    }
    (sub, received)
}

#[test]
fn stress_every_policy_accounts_for_every_event_across_threads() {
    let topic = Topic::<u64>::with_capacity("stress", 16).unwrap();
    let subs = [
        topic.subscriber().buffer(4).policy(Policy::DropOldest),
        topic.subscriber().buffer(8).policy(Policy::Reject),
        topic.subscriber().buffer(8).policy(Policy::Block),
        topic
            .subscriber()
            .buffer(8)
            .policy(Policy::Timeout(Duration::from_millis(1))),
    ]
    .map(|b| b.subscribe().unwrap());
    let consumers: Vec<_> = subs
        .into_iter()
        .map(|sub| {
            let topic = topic.clone();
            std::thread::spawn(move || consume(sub, topic))
        })
        .collect();
    let publishers: Vec<_> = (0..2_u64)
        .map(|p| {
            let topic = topic.clone();
            std::thread::spawn(move || {
                for i in 0..PER_PUBLISHER {
                    // Drop-oldest never skips: every publish reaches someone.
                    topic.try_publish((p << 32) | i).unwrap();
                }
            })
        })
        .collect();
    for p in publishers {
        p.join().unwrap();
    }
    topic.close();
    for c in consumers {
        let (sub, received) = c.join().unwrap();
        let s = sub.stats();
        let d = s.dropped;
        assert_eq!(s.received, received);
        assert_eq!(
            received + d.full + d.timed_out + d.displaced + d.filtered + d.discarded,
            2 * PER_PUBLISHER,
            "{:?}: every event once: {s:?}",
            s.policy
        );
    }
    assert_eq!(topic.stats().published, 2 * PER_PUBLISHER);
}
