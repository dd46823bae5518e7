//! `FairScheduler`: a flooding client cannot starve polite ones; weights hold.
#![cfg(not(loom))]

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use heijunka_backpressure::FairScheduler;
use heijunka_core::Rejection;
use heijunka_core::cancel::{Outcome, Polled, cancel_points};

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

/// A seeded xorshift, for reproducible workloads.
fn xorshift(mut seed: u64) -> impl FnMut(u64) -> u64 {
    move |n| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    }
}

/// The DRR promise (Shreedhar & Varghese): two backlogged clients of equal weight,
/// one sending items of cost 1 and one of cost 10, get equal shares of the served
/// *cost*, within one largest item cost at every point. (Counting every item as 1,
/// the old scheduler gave the cost-10 client ten times the share.)
#[test]
fn drr_equal_weights_get_equal_cost_shares_whatever_the_item_costs() {
    for quantum in [1, 10, 25] {
        let s = FairScheduler::<&str, u64>::builder()
            .client_capacity(10_000)
            .quantum(quantum)
            .cost(|&c: &u64| c)
            .build()
            .unwrap();
        for _ in 0..2_000 {
            s.try_push("small", 1).unwrap();
            s.try_push("big", 10).unwrap();
        }
        let (mut small, mut big) = (0_u64, 0_u64);
        for pop in 0..1_000 {
            let (k, cost) = s.try_pop().unwrap();
            if k == "small" {
                small += cost;
            } else {
                big += cost;
            }
            assert!(
                small.abs_diff(big) <= 10 + u64::from(quantum),
                "quantum {quantum}, pop {pop}: served cost small {small}, big {big}"
            );
        }
        // Over the whole run, within one largest item cost.
        assert!(
            small.abs_diff(big) <= 10,
            "quantum {quantum}: small {small}, big {big}"
        );
        assert!(small >= 400, "quantum {quantum}: small {small}");
    }
}

/// Weights 2:1, random item costs 1..=10 for both: served cost 2:1, within one
/// largest item cost plus a quantum (per unit of weight) at every point.
#[cfg_attr(miri, ignore)] // too slow under miri
#[test]
fn drr_weights_two_to_one_give_a_two_to_one_cost_share() {
    let mut rand = xorshift(0x9E37_79B9_7F4A_7C15);
    let quantum = 10;
    let s = FairScheduler::<&str, u64>::builder()
        .client_capacity(100_000)
        .quantum(quantum)
        .cost(|&c: &u64| c)
        .build()
        .unwrap();
    s.set_weight("gold", 2).unwrap();
    for _ in 0..20_000 {
        s.try_push("gold", 1 + rand(10)).unwrap();
        s.try_push("free", 1 + rand(10)).unwrap();
    }
    let (mut gold, mut free) = (0_i64, 0_i64);
    for pop in 0..20_000 {
        let (k, cost) = s.try_pop().unwrap();
        if k == "gold" {
            gold += cost as i64;
        } else {
            free += cost as i64;
        }
        // Per unit of weight, the two stay within Max + Quantum of each other.
        assert!(
            (gold - 2 * free).abs() <= 2 * (10 + i64::from(quantum)),
            "pop {pop}: gold {gold}, free {free}"
        );
    }
    let ratio = gold as f64 / free as f64;
    assert!((ratio - 2.0).abs() < 0.01, "gold {gold}, free {free}");
}

/// A literal deficit round robin (the paper's loop, one turn at a time, no
/// shortcuts), serving one item per call.
struct ReferenceDrr {
    active: VecDeque<usize>,
    queues: Vec<VecDeque<u64>>,
    deficit: Vec<u64>,
    in_turn: Vec<bool>,
    weights: Vec<u64>,
    quantum: u64,
}

impl ReferenceDrr {
    fn push(&mut self, client: usize, cost: u64) {
        if self.queues[client].is_empty() {
            self.active.push_back(client);
        }
        self.queues[client].push_back(cost);
    }

    fn pop(&mut self) -> Option<(usize, u64)> {
        loop {
            let c = *self.active.front()?;
            if !self.in_turn[c] {
                self.in_turn[c] = true;
                self.deficit[c] += self.quantum * self.weights[c];
            }
            let head = self.queues[c][0];
            if head <= self.deficit[c] {
                self.queues[c].pop_front();
                self.deficit[c] -= head;
                if self.queues[c].is_empty() {
                    self.deficit[c] = 0;
                    self.in_turn[c] = false;
                    self.active.pop_front();
                }
                return Some((c, head));
            }
            self.in_turn[c] = false;
            self.active.rotate_left(1);
        }
    }
}

/// The scheduler serves exactly the order of the literal DRR loop, under random
/// weights, quanta, costs far above the quantum (where the scheduler skips
/// rounds in which nobody can send), and clients that come and go.
#[cfg_attr(miri, ignore)] // too slow under miri
#[test]
fn serves_exactly_the_order_of_the_paper_loop() {
    let mut rand = xorshift(0x2545_F491_4F6C_DD1D);
    for case in 0..200 {
        let clients = 1 + rand(5) as usize;
        let quantum = 1 + rand(8);
        let max_cost = 1 + rand(60);
        let weights: Vec<u64> = (0..clients).map(|_| 1 + rand(4)).collect();
        let s = FairScheduler::<usize, (usize, u64, u64)>::builder()
            .client_capacity(1_000)
            .quantum(quantum as u32)
            .cost(|&(_, cost, _)| cost)
            .build()
            .unwrap();
        for (c, &w) in weights.iter().enumerate() {
            s.set_weight(c, w as u32).unwrap();
        }
        let mut reference = ReferenceDrr {
            active: VecDeque::new(),
            queues: vec![VecDeque::new(); clients],
            deficit: vec![0; clients],
            in_turn: vec![false; clients],
            weights: weights.clone(),
            quantum,
        };
        let mut id = 0;
        for step in 0..400 {
            if rand(2) == 0 {
                let c = rand(clients as u64) as usize;
                let cost = 1 + rand(max_cost);
                s.try_push(c, (c, cost, id)).unwrap();
                reference.push(c, cost);
                id += 1;
            } else {
                let got = s.try_pop().map(|(k, (c, cost, _))| {
                    assert_eq!(k, c);
                    (c, cost)
                });
                assert_eq!(got, reference.pop(), "case {case}, step {step}");
            }
        }
    }
}

/// Costs vastly above the quantum: a pop returns (it skips the empty rounds in
/// one step rather than one quantum at a time) and still alternates fairly.
#[test]
fn huge_costs_with_a_small_quantum_do_not_spin() {
    let s = FairScheduler::<u8, u64>::builder()
        .quantum(1)
        .cost(|&c: &u64| c)
        .build()
        .unwrap();
    for _ in 0..3 {
        s.try_push(1, u64::MAX / 4).unwrap();
        s.try_push(2, u64::MAX / 4).unwrap();
    }
    let order: Vec<u8> = std::iter::from_fn(|| s.try_pop()).map(|(k, _)| k).collect();
    assert_eq!(order, [1, 2, 1, 2, 1, 2]);
}

/// 100,000 distinct clients each push one item and are drained: the scheduler
/// holds no state for any of them afterwards.
#[cfg_attr(miri, ignore)] // too slow under miri
#[test]
fn drained_clients_leave_no_state() {
    let s = FairScheduler::<u32, u32>::builder()
        .max_clients(1_000)
        .build()
        .unwrap();
    let mut served = 0;
    for i in 0..100_000_u32 {
        s.try_push(i, i).unwrap();
        if i % 500 == 499 {
            while let Some((k, v)) = s.try_pop() {
                assert_eq!(k, v);
                served += 1;
            }
            assert_eq!(s.clients(), 0);
        }
        assert!(s.clients() <= 1_000);
    }
    assert_eq!(served, 100_000);
    assert_eq!(s.clients(), 0);
    // All at once, then drained.
    let s = FairScheduler::<u32, u32>::builder()
        .max_clients(100_000)
        .build()
        .unwrap();
    for i in 0..100_000_u32 {
        s.try_push(i, i).unwrap();
    }
    assert_eq!(s.clients(), 100_000);
    assert_eq!(std::iter::from_fn(|| s.try_pop()).count(), 100_000);
    assert_eq!(s.clients(), 0);
    assert_eq!(s.stats().active_clients, 0);
    assert_eq!(s.stats().weighted_clients, 0);
    // Weights are configuration, kept until reset.
    s.set_weight(7, 3).unwrap();
    assert_eq!(s.stats().weighted_clients, 1);
    s.reset_weight(&7);
    assert_eq!(s.stats().weighted_clients, 0);
}

#[test]
fn zero_quantum_capacity_clients_and_weight_are_config_errors() {
    let f = |b: heijunka_backpressure::FairSchedulerBuilder<u8, u8>| {
        b.build().unwrap_err().field().to_owned()
    };
    assert_eq!(f(FairScheduler::builder().quantum(0)), "quantum");
    assert_eq!(
        f(FairScheduler::builder().client_capacity(0)),
        "client_capacity"
    );
    assert_eq!(f(FairScheduler::builder().max_clients(0)), "max_clients");
    let s = FairScheduler::<u8, u8>::builder().build().unwrap();
    assert_eq!(s.set_weight(1, 0).unwrap_err().field(), "weight");
}

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

/// `pop` dropped at every point (an item pushed between the first two polls):
/// a dropped call takes nothing, and the item, its client's state and the counts
/// are as if it had never run.
#[test]
fn pop_cancelled_at_every_point_takes_nothing() {
    let covered = cancel_points(10, |k| {
        let s = FairScheduler::<&str, u8>::builder().build().unwrap();
        let mut pushed = false;
        let outcome = Polled::new(s.pop()).drop_after_with(k, |i| {
            if i == 1 {
                s.try_push("c", 1).unwrap();
                pushed = true;
            }
        });
        match &outcome {
            Outcome::Completed { output, .. } => {
                assert_eq!(*output, Some(("c", 1)));
                assert_eq!(s.clients(), 0);
            }
            Outcome::Cancelled { .. } => {
                assert_eq!(s.len(), usize::from(pushed));
                assert_eq!(s.clients(), usize::from(pushed));
                assert_eq!(s.try_pop(), pushed.then_some(("c", 1)));
            }
        }
        outcome
    });
    assert_eq!(covered, 2);
}

/// A `pop` woken for an item and dropped before it ran passes the wake-up on.
#[test]
fn a_dropped_woken_pop_passes_the_wake_up_on() {
    let s = FairScheduler::<u8, u8>::builder().build().unwrap();
    let mut first = Polled::new(s.pop());
    let mut second = Polled::new(s.pop());
    assert!(!first.poll());
    assert!(!second.poll());
    s.try_push(1, 2).unwrap();
    assert_eq!(first.wakes(), 1);
    drop(first);
    assert_eq!(
        second.wakes(),
        1,
        "the wake-up was lost with the dropped waiter"
    );
    assert!(second.poll());
    assert_eq!(second.take_output(), Some(Some((1, 2))));
}

/// `pop_timeout` dropped at every point with paused time advancing: a dropped
/// call takes nothing; one that times out returns `None` and takes nothing.
#[test]
fn pop_timeout_cancelled_at_every_point_takes_nothing() {
    let rt = paused_runtime();
    let _g = rt.enter();
    let covered = cancel_points(10, |k| {
        let s = FairScheduler::<u8, char>::builder().build().unwrap();
        let mut pushed = false;
        let outcome =
            Polled::new(s.pop_timeout(Duration::from_millis(10))).drop_after_with(k, |i| match i {
                1 => rt.block_on(tokio::time::advance(Duration::from_millis(5))),
                2 => {
                    s.try_push(0, 'y').unwrap();
                    pushed = true;
                }
                _ => {}
            });
        match &outcome {
            Outcome::Completed { output, .. } => assert_eq!(*output, Some((0, 'y'))),
            Outcome::Cancelled { .. } => assert_eq!(s.try_pop(), pushed.then_some((0, 'y'))),
        }
        assert!(s.is_empty());
        outcome
    });
    assert_eq!(covered, 3);
    let s = FairScheduler::<u8, u8>::builder().build().unwrap();
    assert_eq!(rt.block_on(s.pop_timeout(Duration::from_millis(3))), None);
    s.try_push(0, 1).unwrap();
    assert_eq!(s.len(), 1);
}

/// 100,000 distinct clients each get a weight, push one item and are drained:
/// the weights of those idle clients do not pile up (ARCHITECTURE principle 2:
/// every map is bounded), they stay within the default `max_weighted_clients`.
#[cfg_attr(miri, ignore)] // too slow under miri
#[test]
fn weights_of_drained_idle_clients_stay_bounded() {
    let s = FairScheduler::<u32, u32>::builder().build().unwrap();
    for i in 0..100_000_u32 {
        s.set_weight(i, 2).unwrap();
        s.try_push(i, i).unwrap();
        assert_eq!(s.try_pop(), Some((i, i)));
    }
    assert_eq!(s.clients(), 0);
    let weighted = s.stats().weighted_clients;
    assert!(
        weighted <= 1_024,
        "{weighted} weights held for 100,000 idle clients"
    );
}

/// A weight survives its client's queue draining (it is configuration while
/// there is room), is in effect on the next push, and idle weights beyond
/// `max_weighted_clients` evict the longest idle, which goes back to weight 1.
#[test]
fn idle_weights_are_kept_up_to_the_bound_then_the_oldest_goes() {
    let s = FairScheduler::<u32, u32>::builder()
        .max_weighted_clients(2)
        .build()
        .unwrap();
    let turn = |s: &FairScheduler<u32, u32>, a: u32| {
        for i in 0..4 {
            s.try_push(a, i).unwrap();
            s.try_push(99, i).unwrap();
        }
        let order: Vec<u32> = std::iter::from_fn(|| s.try_pop()).map(|(k, _)| k).collect();
        order
    };
    s.set_weight(1, 3).unwrap();
    // Weight 3 in effect, and again after the first drain.
    assert_eq!(turn(&s, 1), [1, 1, 1, 99, 1, 99, 99, 99]);
    assert_eq!(turn(&s, 1), [1, 1, 1, 99, 1, 99, 99, 99]);
    assert_eq!(s.stats().weighted_clients, 1);
    s.set_weight(2, 2).unwrap();
    s.set_weight(3, 2).unwrap(); // evicts client 1, idle longest
    assert_eq!(s.stats().weighted_clients, 2);
    assert_eq!(turn(&s, 1), [1, 99, 1, 99, 1, 99, 1, 99]);
    assert_eq!(turn(&s, 3), [3, 3, 99, 3, 3, 99, 99, 99]);
    assert_eq!(
        FairScheduler::<u8, u8>::builder()
            .max_weighted_clients(0)
            .build()
            .unwrap_err()
            .field(),
        "max_weighted_clients"
    );
}
