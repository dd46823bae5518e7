//! Lossless policies: every event reaches every subscriber exactly once, and every
//! pooled event goes back to its pool exactly once.

use std::collections::HashSet;

use heijunka_event_bus::{Event, EventBus, Policy};
use heijunka_recycler::Recycler;

#[derive(Debug, Default)]
struct Msg {
    publisher: u32,
    seq: u32,
}

fn pool() -> Recycler<Msg> {
    Recycler::with_reset(Msg::default, |m| *m = Msg::default())
        .capacity(64)
        .build()
        .unwrap()
}

async fn stress(policy: Policy, publishers: u32, subscribers: usize, per_publisher: u32) {
    let bus = EventBus::new();
    let topic = bus.topic::<Msg>("stress").unwrap();
    let pool = pool();
    let readers: Vec<_> = (0..subscribers)
        .map(|_| {
            let mut sub = topic
                .subscriber()
                .buffer(8)
                .policy(policy)
                .subscribe()
                .unwrap();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while let Some(e) = sub.recv().await {
                    seen.push((e.publisher, e.seq));
                }
                seen
            })
        })
        .collect();
    let writers: Vec<_> = (0..publishers)
        .map(|p| {
            let topic = topic.clone();
            let pool = pool.clone();
            tokio::spawn(async move {
                for seq in 0..per_publisher {
                    let mut m = pool.get();
                    m.publisher = p;
                    m.seq = seq;
                    let report = topic.publish(Event::pooled(m.into_shared())).await.unwrap();
                    assert_eq!(report.delivered, subscribers);
                    assert!(report.is_complete());
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    topic.close();
    let total = publishers as usize * per_publisher as usize;
    for r in readers {
        let seen = r.await.unwrap();
        assert_eq!(seen.len(), total, "every event once");
        let unique: HashSet<_> = seen.iter().copied().collect();
        assert_eq!(unique.len(), total, "no duplicates");
        // Each publisher's events arrive in the order it published them.
        for p in 0..publishers {
            let order: Vec<_> = seen
                .iter()
                .filter(|(q, _)| *q == p)
                .map(|(_, s)| *s)
                .collect();
            assert_eq!(order, (0..per_publisher).collect::<Vec<_>>());
        }
    }
    let s = pool.stats();
    assert_eq!(s.gets, total as u64);
    assert_eq!(
        s.returns, s.gets,
        "every pooled event back exactly once: {s:?}"
    );
    let t = topic.stats();
    assert_eq!(t.published, total as u64);
    assert_eq!(t.dropped.total(), 0);
    assert_eq!(t.delivered, (total * subscribers) as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stress_block_policy_many_publishers_many_subscribers() {
    stress(Policy::Block, 4, 4, 400).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stress_timeout_policy_is_lossless_while_consumers_keep_up() {
    // Consumers never stall for 5 s, so the default policy loses nothing.
    stress(Policy::default(), 3, 3, 300).await;
}

#[tokio::test(flavor = "current_thread")]
async fn stress_single_thread_interleaving() {
    stress(Policy::Block, 2, 5, 200).await;
}

#[test]
fn stress_plain_threads_with_try_publish_and_try_recv() {
    // No runtime at all: `try_publish` and `try_recv` never wait.
    let topic = heijunka_event_bus::Topic::<u64>::new("plain").unwrap();
    let mut sub = topic
        .subscriber()
        .buffer(4)
        .reject_at(1.0)
        .subscribe()
        .unwrap();
    let topic2 = topic.clone();
    let publisher = std::thread::spawn(move || {
        let mut sent = 0_u64;
        while sent < 1000 {
            if topic2.try_publish(sent).is_ok() {
                sent += 1;
            } else {
                std::thread::yield_now();
            }
        }
    });
    let mut next = 0;
    while next < 1000 {
        match sub.try_recv() {
            Some(e) => {
                assert_eq!(*e, next);
                next += 1;
            }
            None => std::thread::yield_now(),
        }
    }
    publisher.join().unwrap();
    let s = topic.stats();
    assert_eq!(s.published, 1000);
    assert_eq!(s.subscribers[0].received, 1000);
    assert_eq!(
        s.undelivered, s.dropped.full,
        "each refused try_publish was counted"
    );
}
