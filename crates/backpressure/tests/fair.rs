//! `FairScheduler`: a flooding client cannot starve polite ones; weights hold.
#![cfg(not(loom))]

use std::collections::HashMap;

use heijunka_backpressure::FairScheduler;
use heijunka_core::Rejection;

const WEIGHTS: [(&str, u32); 4] = [("flood", 1), ("a", 1), ("b", 1), ("c", 2)];
const TOTAL_WEIGHT: u32 = 5;

fn scheduler() -> FairScheduler<&'static str, u64> {
    let s = FairScheduler::builder()
        .client_capacity(32)
        .build()
        .unwrap();
    for (k, w) in WEIGHTS {
        s.set_weight(k, w).unwrap();
    }
    s
}

/// Polite clients send exactly their weighted share of the consumer's rate; the
/// flooder sends 100 times that. Every polite item is served, none is rejected,
/// and the flooder is turned away at its own bound.
#[cfg_attr(miri, ignore)] // too slow under miri
#[test]
fn polite_clients_get_their_share_while_one_floods() {
    let s = scheduler();
    let mut served: HashMap<&str, u64> = HashMap::new();
    let mut polite_rejected = 0;
    let mut flood_rejected = 0;
    let rounds = 2_000_u64;
    for round in 0..rounds {
        for _ in 0..100 {
            match s.try_push("flood", round) {
                Ok(()) => {}
                Err(e) => {
                    assert_eq!(e.reason(), Rejection::QueueFull { capacity: 32 });
                    flood_rejected += 1;
                }
            }
        }
        for (k, w) in &WEIGHTS[1..] {
            for _ in 0..*w {
                if s.try_push(k, round).is_err() {
                    polite_rejected += 1;
                }
            }
        }
        // The consumer takes one item per unit of total weight each round.
        for _ in 0..TOTAL_WEIGHT {
            let (k, _) = s.try_pop().expect("the flooder keeps work queued");
            *served.entry(k).or_default() += 1;
        }
    }
    assert_eq!(polite_rejected, 0);
    assert!(flood_rejected > 90 * rounds, "{flood_rejected}");
    for (k, w) in &WEIGHTS[1..] {
        let share = u64::from(*w) * rounds;
        let got = served[k];
        assert!(
            got as f64 >= share as f64 * 0.9,
            "{k}: served {got}, weighted share {share}; all: {served:?}"
        );
    }
}

/// Everyone backlogged (polite clients send more than their share too): each gets
/// its weighted share of the output within 10 %.
#[cfg_attr(miri, ignore)] // too slow under miri
#[test]
fn backlogged_clients_split_output_by_weight() {
    let s = scheduler();
    let mut served: HashMap<&str, u64> = HashMap::new();
    let pops = 10_000;
    for round in 0..pops / 5 {
        for (k, _) in WEIGHTS {
            for _ in 0..10 {
                let _ = s.try_push(k, round);
            }
        }
        for _ in 0..5 {
            let (k, _) = s.try_pop().unwrap();
            *served.entry(k).or_default() += 1;
        }
    }
    for (k, w) in WEIGHTS {
        let expected = pops as f64 * f64::from(w) / f64::from(TOTAL_WEIGHT);
        let got = served[k] as f64;
        assert!(
            (got - expected).abs() <= expected * 0.1,
            "{k}: served {got}, expected {expected}; all: {served:?}"
        );
    }
}

#[test]
fn every_item_comes_out_once_in_fifo_order_per_client() {
    let s = FairScheduler::builder()
        .client_capacity(1000)
        .build()
        .unwrap();
    for i in 0..300_u32 {
        s.try_push(i % 7, i).unwrap();
    }
    let mut last: HashMap<u32, u32> = HashMap::new();
    let mut n = 0;
    while let Some((k, i)) = s.try_pop() {
        assert_eq!(i % 7, k);
        if let Some(prev) = last.insert(k, i) {
            assert!(prev < i, "client {k}: {prev} before {i}");
        }
        n += 1;
    }
    assert_eq!(n, 300);
}
