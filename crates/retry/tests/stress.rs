//! Stress tests (run under ThreadSanitizer by `cargo xtask tsan`): many threads
//! on the coalescing protocol and the budget, each invariant observed from the
//! callers' side. Bounded in count.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use heijunka_core::rng::SplitMix64;
use heijunka_core::{Criticality, ManualClock};
use heijunka_retry::{Budget, Coalesce};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stress_coalesce_with_callers_that_go_away() {
    const CALLS: u64 = 4_000;
    const KEYS: u64 = 8;
    let c: Coalesce<u64, u64> = Coalesce::with_limits(64, 64).unwrap();
    let loads = Arc::new(AtomicU64::new(0));
    let rng = Arc::new(SplitMix64::new(5));
    let mut tasks = Vec::new();
    for i in 0..CALLS {
        let (c, loads, rng) = (c.clone(), loads.clone(), rng.clone());
        tasks.push(tokio::spawn(async move {
            let key = i % KEYS;
            let fut = c.call(key, move || async move {
                loads.fetch_add(1, Ordering::Relaxed);
                for _ in 0..3 {
                    tokio::task::yield_now().await;
                }
                key * 100
            });
            // A third of the callers give up after a few polls' worth of time.
            if rng.below(3) == 0 {
                let _ = tokio::time::timeout(Duration::from_micros(rng.below(50)), fut).await;
                None
            } else {
                Some(fut.await)
            }
        }));
    }
    let mut answered = 0;
    for (i, t) in tasks.into_iter().enumerate() {
        if let Some(out) = t.await.unwrap() {
            // Every caller that waited got its own key's value.
            assert_eq!(out, Ok((i as u64 % KEYS) * 100));
            answered += 1;
        }
    }
    assert!(answered > 0);
    // Callers of a key in flight shared its call.
    assert!(
        loads.load(Ordering::Relaxed) < CALLS,
        "nothing was coalesced"
    );
    assert_eq!(c.stats().keys_in_flight, 0, "a flight was left behind");
}

#[test]
fn stress_budget_never_overdraws_under_contention() {
    let clock = ManualClock::new();
    let budget = Budget::builder()
        .ratio(0.1)
        .floor_per_sec(0)
        .clock(&clock)
        .build()
        .unwrap();
    let spent = AtomicU64::new(0);
    let deposited = AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..4 {
            let (budget, spent, deposited) = (&budget, &spent, &deposited);
            s.spawn(move || {
                for i in 0..5_000 {
                    if (i + t) % 3 == 0 {
                        budget.deposit();
                        deposited.fetch_add(1, Ordering::Relaxed);
                    } else if budget.try_withdraw(Criticality::Default) {
                        spent.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    // The clock stood still: one window; every withdrawal was covered by the
    // deposits made before it, so the total never exceeds 10 % of them.
    let (spent, deposited) = (spent.into_inner(), deposited.into_inner());
    assert!(
        spent <= deposited / 10,
        "{spent} spent for {deposited} deposits"
    );
    assert!(spent + 8 >= deposited / 10, "the budget was used: {spent}");
}
