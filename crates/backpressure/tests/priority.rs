//! `PriorityQueue`: highest class first, FIFO within a class, and the aging bound.
#![cfg(not(loom))]

use std::collections::VecDeque;

use heijunka_backpressure::PriorityQueue;
use heijunka_core::Rejection;

#[test]
fn highest_class_first_fifo_within() {
    let q = PriorityQueue::builder(3, 100).build().unwrap();
    for (class, item) in [
        (2, "c1"),
        (1, "b1"),
        (0, "a1"),
        (2, "c2"),
        (0, "a2"),
        (1, "b2"),
    ] {
        q.try_push(class, item).unwrap();
    }
    let order: Vec<_> = std::iter::from_fn(|| q.try_pop()).collect();
    assert_eq!(order, ["a1", "a2", "b1", "b2", "c1", "c2"]);
    // A class past the last is the last.
    q.try_push(99, "low").unwrap();
    assert_eq!(q.try_pop_with_class(), Some((2, "low")));
}

#[test]
fn strict_priority_starves_without_aging() {
    let q = PriorityQueue::builder(2, 10).build().unwrap();
    q.try_push(1, 0).unwrap();
    for round in 0..100 {
        q.try_push(0, round).unwrap();
        assert_eq!(q.try_pop_with_class().unwrap().0, 0);
    }
    assert_eq!(q.len(), 1);
}

#[test]
fn bounded_and_closed() {
    let q = PriorityQueue::builder(2, 2).build().unwrap();
    q.try_push(0, 1).unwrap();
    q.try_push(1, 2).unwrap();
    let e = q.try_push(0, 3).unwrap_err();
    assert_eq!(e.reason(), Rejection::QueueFull { capacity: 2 });
    assert_eq!(e.into_inner(), 3);
    q.close();
    assert_eq!(
        q.try_push(0, 4).unwrap_err().reason(),
        Rejection::ShuttingDown
    );
    assert_eq!(q.try_pop(), Some(1));
    assert_eq!(q.stats().rejected, 2);
}

#[test]
fn bad_config_names_the_field() {
    let f = |r: Result<PriorityQueue<u8>, heijunka_core::ConfigError>| {
        r.unwrap_err().field().to_owned()
    };
    assert_eq!(f(PriorityQueue::builder(0, 1).build()), "classes");
    assert_eq!(f(PriorityQueue::builder(1, 0).build()), "capacity");
    assert_eq!(
        f(PriorityQueue::builder(1, 1).max_skips(0).build()),
        "max_skips"
    );
}

/// With aging on, the item at the head of any class is served within
/// `max_skips + classes` pops, under a random workload that keeps the top class
/// busy. Checked against a model that tracks when each item reached its head.
#[cfg_attr(miri, ignore)] // too slow under miri
#[test]
fn aging_serves_every_head_within_the_documented_bound() {
    let mut seed = 0x2545_F491_4F6C_DD1D_u64;
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for (classes, max_skips) in [(2_usize, 1_u32), (3, 2), (4, 4), (5, 8)] {
        let q = PriorityQueue::builder(classes, 10_000)
            .max_skips(max_skips)
            .build()
            .unwrap();
        let bound = u64::from(max_skips) + classes as u64;
        // Per class: (id, pop count when it reached the head, if it has).
        let mut model: Vec<VecDeque<(u64, Option<u64>)>> = vec![VecDeque::new(); classes];
        let mut pops = 0_u64;
        let mut next_id = 0_u64;
        let mut worst = 0;
        for _ in 0..20_000 {
            // Pushes: the top class nearly always gets work; lower ones sometimes.
            for _ in 0..rand(3) {
                let class = if rand(4) == 0 {
                    rand(classes as u64) as usize
                } else {
                    0
                };
                q.try_push(class, (class, next_id)).unwrap();
                let head = model[class].is_empty().then_some(pops);
                model[class].push_back((next_id, head));
                next_id += 1;
            }
            if let Some((class, (c, id))) = q.try_pop_with_class() {
                pops += 1;
                assert_eq!(class, c);
                let (expected, since) = model[class].pop_front().unwrap();
                assert_eq!(id, expected, "FIFO within class {class}");
                let waited = pops - since.expect("the served item was at the head");
                worst = worst.max(waited);
                assert!(
                    waited <= bound,
                    "classes {classes}, max_skips {max_skips}: served after {waited} pops at the head, bound {bound}"
                );
                if let Some(next) = model[class].front_mut() {
                    next.1 = Some(pops);
                }
            }
        }
        // The workload does make low classes wait until they age.
        assert!(worst > u64::from(max_skips), "worst {worst}");
    }
}
