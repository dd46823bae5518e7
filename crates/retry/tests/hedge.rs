//! Hedging against a long-tail dependency, on tokio's paused clock; the
//! dependency and the callers measure latency and load themselves.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use heijunka_core::cancel::Polled;
use heijunka_core::rng::SplitMix64;
use heijunka_core::{Criticality, ManualClock};
use heijunka_retry::{Budget, CallOptions, Hedge, HedgeDelay, Retry, Retryable, Stop};
use tokio::time::Instant;

mod support;
use support::Guard;

const MS: fn(u64) -> Duration = Duration::from_millis;

/// A dependency whose calls take 8-12 ms, except a share `slow` of them that
/// take 10× the median (100 ms).
struct LongTail {
    rng: SplitMix64,
    slow: f64,
    calls: AtomicU64,
}

impl LongTail {
    async fn call(&self) -> Result<(), &'static str> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let d = if self.rng.chance(self.slow) {
            MS(100)
        } else {
            MS(8) + Duration::from_micros(self.rng.below(4001))
        };
        tokio::time::sleep(d).await;
        Ok(())
    }
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// Runs `n` calls at 1,000 per second through `hedge` (or straight to the
/// dependency), returning their latencies as the callers saw them, sorted.
async fn run(dep: Arc<LongTail>, hedge: Option<Hedge>, n: u64) -> Vec<Duration> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..n {
        tokio::time::sleep_until(start + MS(i)).await;
        let dep = dep.clone();
        let hedge = hedge.clone();
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            match hedge {
                Some(h) => h.call(|_| dep.call()).await.unwrap(),
                None => dep.call().await.unwrap(),
            }
            t.elapsed()
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.push(t.await.unwrap());
    }
    lat.sort();
    lat
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn hedging_cuts_the_tail_at_little_extra_load() {
    const N: u64 = 20_000;
    let plain = Arc::new(LongTail {
        rng: SplitMix64::new(11),
        slow: 0.02,
        calls: AtomicU64::new(0),
    });
    let base = run(plain.clone(), None, N).await;

    let dep = Arc::new(LongTail {
        rng: SplitMix64::new(11),
        slow: 0.02,
        calls: AtomicU64::new(0),
    });
    let hedge = Hedge::builder()
        .delay(HedgeDelay::p95(MS(50)))
        .idempotent(true)
        .build()
        .unwrap();
    let hedged = run(dep.clone(), Some(hedge.clone()), N).await;

    let (p99_base, p99_hedged) = (quantile(&base, 0.99), quantile(&hedged, 0.99));
    let extra = dep.calls.load(Ordering::Relaxed) as f64 / N as f64 - 1.0;
    eprintln!(
        "hedging: p50 {:?} -> {:?}, p99 {p99_base:?} -> {p99_hedged:?} ({:.1}x), extra load {:.1} %, delay now {:?}",
        quantile(&base, 0.5),
        quantile(&hedged, 0.5),
        p99_base.as_secs_f64() / p99_hedged.as_secs_f64(),
        extra * 100.0,
        hedge.current_delay(),
    );
    assert!(p99_base >= MS(100), "{p99_base:?}");
    assert!(
        p99_hedged * 3 <= p99_base,
        "p99 {p99_base:?} -> {p99_hedged:?}: less than 3x better"
    );
    assert!(extra <= 0.10, "extra load {:.1} %", extra * 100.0);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_budget_caps_hedges_when_everyone_is_slow() {
    const N: u64 = 20_000;
    let manual = ManualClock::new();
    // Every call is slow: each would be hedged.
    let dep = Arc::new(LongTail {
        rng: SplitMix64::new(3),
        slow: 1.0,
        calls: AtomicU64::new(0),
    });
    let budget = Budget::builder()
        .ratio(0.1)
        .floor_per_sec(10)
        .clock(&manual)
        .build()
        .unwrap();
    let hedge = Hedge::builder()
        .delay(HedgeDelay::Fixed(MS(20)))
        .budget(budget)
        .idempotent(true)
        .build()
        .unwrap();
    let ticker = {
        let manual = manual.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(MS(1)).await;
                manual.advance(MS(1));
            }
        })
    };
    run(dep.clone(), Some(hedge.clone()), N).await;
    ticker.abort();
    let extra = dep.calls.load(Ordering::Relaxed) - N;
    // 20 s of traffic (and the last hedges a little after): 10 % of it, plus
    // the floor of 10 per second with one second's burst.
    let bound = N / 10 + 10 * 22;
    eprintln!("everyone slow: {extra} hedges for {N} calls (bound {bound})");
    assert!(extra <= bound, "{extra} hedges");
    assert!(
        extra >= N / 20,
        "the budget should still allow hedges: {extra}"
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn non_idempotent_calls_are_not_hedged() {
    let hedge = Hedge::builder()
        .delay(HedgeDelay::Fixed(MS(5)))
        .build()
        .unwrap();
    let calls = AtomicUsize::new(0);
    hedge
        .call(|_| {
            calls.fetch_add(1, Ordering::Relaxed);
            async {
                tokio::time::sleep(MS(100)).await;
                Ok::<_, ()>(())
            }
        })
        .await
        .unwrap();
    assert_eq!(calls.load(Ordering::Relaxed), 1);
    // Allowed per call.
    hedge
        .call_with(CallOptions::new().idempotent(true), |_| {
            calls.fetch_add(1, Ordering::Relaxed);
            async {
                tokio::time::sleep(MS(100)).await;
                Ok::<_, ()>(())
            }
        })
        .await
        .unwrap();
    assert_eq!(calls.load(Ordering::Relaxed), 3);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_not_retryable_error_ends_the_race_and_a_failure_hedges_at_once() {
    let hedge = Hedge::builder()
        .delay(HedgeDelay::Fixed(MS(50)))
        .max_hedges(2)
        .idempotent(true)
        .classify_errors(|e: &&str| {
            if *e == "not found" {
                Retryable::Never
            } else {
                Retryable::IfIdempotent
            }
        })
        .build()
        .unwrap();
    // The first attempt fails fast: the hedge starts at once, not after 50 ms.
    let start = Instant::now();
    let v = hedge
        .call(|a| async move {
            tokio::time::sleep(MS(1)).await;
            if a.is_first() {
                Err("busy")
            } else {
                Ok(a.number)
            }
        })
        .await
        .unwrap();
    assert_eq!((v, start.elapsed()), (2, MS(2)));
    // A not-found is final.
    let err = hedge
        .call(|_| async { Err::<(), _>("not found") })
        .await
        .unwrap_err();
    assert_eq!((err.attempts(), err.stop()), (1, Some(Stop::NotRetryable)));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn no_hedge_starts_that_could_not_finish_before_the_deadline() {
    let hedge = Hedge::builder()
        .delay(HedgeDelay::Fixed(MS(50)))
        .expected_attempt_time(MS(40))
        .idempotent(true)
        .build()
        .unwrap();
    let starts = std::sync::Mutex::new(Vec::new());
    let start = Instant::now();
    let deadline = start + MS(80);
    let _ = tokio::time::timeout(
        MS(200),
        hedge.call_with(CallOptions::new().deadline(deadline), |_| {
            starts.lock().unwrap().push(Instant::now());
            async {
                tokio::time::sleep(MS(150)).await;
                Ok::<_, ()>(())
            }
        }),
    )
    .await;
    // The hedge would start at 50 ms and need 40: past the 80 ms deadline.
    assert_eq!(starts.lock().unwrap().len(), 1);
    assert_eq!(hedge.stats().deadline, 1);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn shared_budget_bounds_retries_and_hedges_together() {
    let manual = ManualClock::new();
    let budget = Budget::builder()
        .ratio(0.1)
        .floor_per_sec(0)
        // The manual clock stands still: the whole run is one window.
        .clock(&manual)
        .build()
        .unwrap();
    let retry = Retry::builder()
        .max_attempts(3)
        .backoff(heijunka_retry::Backoff::constant(MS(1)))
        .budget(budget.clone())
        .idempotent(true)
        .build()
        .unwrap();
    let hedge = Hedge::builder()
        .delay(HedgeDelay::Fixed(MS(2)))
        .max_hedges(3)
        .budget(budget.clone())
        .idempotent(true)
        .build()
        .unwrap();
    let attempts = Arc::new(AtomicU64::new(0));
    const CALLS: u64 = 2000;
    for _ in 0..CALLS {
        let a = attempts.clone();
        // The retry's attempts are hedged; every attempt is slow and fails.
        let _ = retry
            .call_with(
                CallOptions::new().criticality(Criticality::Critical),
                |_| {
                    let a = a.clone();
                    let hedge = hedge.clone();
                    async move {
                        hedge
                            .call_with(CallOptions::new().nested(), |_| {
                                a.fetch_add(1, Ordering::Relaxed);
                                async {
                                    tokio::time::sleep(MS(3)).await;
                                    Err::<(), _>("down")
                                }
                            })
                            .await
                    }
                },
            )
            .await;
    }
    // The hedge is nested in the retry: only the callers' calls deposit.
    let s = budget.stats();
    assert_eq!(s.deposited_in_window, CALLS);
    let extra = attempts.load(Ordering::Relaxed) - s.deposited_in_window;
    let bound = s.deposited_in_window / 10;
    eprintln!(
        "shared budget: {extra} extra attempts for {} deposits",
        s.deposited_in_window
    );
    assert!(extra <= bound, "{extra} > {bound}");
    assert_eq!(extra, s.withdrawn_total);
    assert_eq!(extra, bound, "the budget is spent to the last attempt");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_dropped_hedge_drops_every_attempt() {
    let hedge = Hedge::builder()
        .delay(HedgeDelay::Fixed(MS(1)))
        .max_hedges(3)
        .idempotent(true)
        .build()
        .unwrap();
    let started = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicUsize::new(0));
    let mut covered = 0;
    for k in 0..8 {
        started.store(0, Ordering::Relaxed);
        dropped.store(0, Ordering::Relaxed);
        let mut p = Polled::new(hedge.call(|_| {
            started.fetch_add(1, Ordering::Relaxed);
            let g = Guard(dropped.clone());
            async move {
                let _g = g;
                tokio::time::sleep(Duration::from_secs(1)).await;
                Ok::<_, ()>(())
            }
        }));
        for _ in 0..k {
            if !p.poll() {
                tokio::time::advance(MS(1)).await;
            }
        }
        drop(p);
        assert_eq!(
            dropped.load(Ordering::Relaxed),
            started.load(Ordering::Relaxed),
            "k = {k}: every attempt started was dropped with the call"
        );
        covered = covered.max(started.load(Ordering::Relaxed));
    }
    assert_eq!(covered, 4, "the cases reach every hedge");
}

#[tokio::test(start_paused = true)]
async fn a_refused_hedge_says_why() {
    let budget = Budget::builder()
        .ratio(0.1)
        .floor_per_sec(0)
        .clock(ManualClock::new())
        .build()
        .unwrap();
    let hedge = Hedge::builder()
        .delay(HedgeDelay::Fixed(MS(10)))
        .budget(budget)
        .idempotent(true)
        .build()
        .unwrap();
    let err = hedge
        .call(|_| async {
            tokio::time::sleep(MS(100)).await;
            Err::<(), _>("down")
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.attempts(), err.stop()),
        (1, Some(Stop::BudgetExhausted))
    );
    assert_eq!(hedge.stats().budget_refused, 1);
}
