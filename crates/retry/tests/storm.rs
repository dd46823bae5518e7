//! The retry-storm simulation of issue #24, on tokio's paused clock (the
//! budget reads a `ManualClock` kept in step with it): 1,000 callers per
//! second, a dependency failing every call for a minute, 3 attempts and a 10 %
//! budget. The dependency counts what it sees itself; nothing here reads the
//! retry's own counters to decide the outcome.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use heijunka_core::ManualClock;
use heijunka_retry::{Backoff, Budget, Retry};
use tokio::time::Instant;

const RATE: u64 = 1000;
const OUTAGE_SECS: u64 = 60;
const RUN_SECS: u64 = 65;
const FLOOR: u32 = 10;
const CAP: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Dependency {
    /// Attempts seen, per second since the start.
    per_sec: Mutex<Vec<u64>>,
    /// First attempts made, per second.
    first_per_sec: Mutex<Vec<u64>>,
}

fn bump(v: &Mutex<Vec<u64>>, sec: usize) {
    let mut v = v.lock().unwrap();
    if v.len() <= sec {
        v.resize(sec + 1, 0);
    }
    v[sec] += 1;
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_failing_dependency_sees_at_most_the_budgeted_share_of_retries() {
    let manual = ManualClock::new();
    let budget = Budget::builder()
        .ratio(0.1)
        .floor_per_sec(FLOOR)
        .window(Duration::from_secs(10))
        .clock(&manual)
        .build()
        .unwrap();
    let retry = Retry::builder()
        .max_attempts(3)
        .backoff(Backoff::exponential(Duration::from_millis(100), CAP))
        .budget(budget.clone())
        .idempotent(true)
        .seed(1)
        .build()
        .unwrap();
    let dep = Arc::new(Dependency::default());
    let start = Instant::now();
    let recovery = start + Duration::from_secs(OUTAGE_SECS);

    // Keep the budget's manual clock in step with tokio's paused one.
    let done = Arc::new(AtomicBool::new(false));
    let ticker = {
        let manual = manual.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut last = Instant::now();
            while !done.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(1)).await;
                let now = Instant::now();
                manual.advance(now - last);
                last = now;
            }
        })
    };

    let last_failure_after_recovery = Arc::new(AtomicU64::new(0));
    let failures_after_recovery = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..RATE * RUN_SECS {
        tokio::time::sleep_until(start + Duration::from_millis(i)).await;
        let retry = retry.clone();
        let dep = dep.clone();
        let last_fail = last_failure_after_recovery.clone();
        let fails = failures_after_recovery.clone();
        tasks.push(tokio::spawn(async move {
            let r = retry
                .call(|attempt| {
                    let now = Instant::now();
                    let sec = (now - start).as_secs() as usize;
                    bump(&dep.per_sec, sec);
                    if attempt.is_first() {
                        bump(&dep.first_per_sec, sec);
                    }
                    async move {
                        if now < recovery {
                            Err("unavailable")
                        } else {
                            Ok(())
                        }
                    }
                })
                .await;
            let now = Instant::now();
            if r.is_err() && now >= recovery {
                fails.fetch_add(1, Ordering::Relaxed);
                last_fail.fetch_max((now - recovery).as_millis() as u64, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    done.store(true, Ordering::Relaxed);
    ticker.await.unwrap();

    let per_sec = dep.per_sec.lock().unwrap().clone();
    let first = dep.first_per_sec.lock().unwrap().clone();
    let mut worst_window = 0.0_f64;
    // Every 10 s window: extra attempts at most 10 % of the window's first
    // attempts plus the floor's 10 per second (and its one-second burst).
    for w in 0..(OUTAGE_SECS as usize - 9) {
        let seen: u64 = per_sec[w..w + 10].iter().sum();
        let firsts: u64 = first[w..w + 10].iter().sum();
        let extra = seen - firsts;
        let bound = firsts / 10 + u64::from(FLOOR) * 11;
        worst_window = worst_window.max(extra as f64 / bound as f64);
        assert!(
            extra <= bound,
            "window {w}..{}: {extra} extra attempts for {firsts} first ones (bound {bound})",
            w + 10
        );
    }
    // Every second: at most 1.1 × 1,000 + the floor.
    let steady_max = per_sec[..OUTAGE_SECS as usize]
        .iter()
        .max()
        .copied()
        .unwrap();
    assert!(
        steady_max <= RATE * 11 / 10 + u64::from(FLOOR),
        "a second saw {steady_max} attempts: {per_sec:?}"
    );
    // Recovery: no call fails later than one backoff period after it.
    let late = last_failure_after_recovery.load(Ordering::Relaxed);
    assert!(
        late <= CAP.as_millis() as u64,
        "a call failed {late} ms after recovery"
    );
    // And every second after that is served with no extra attempts.
    for (s, &n) in per_sec.iter().enumerate().skip(OUTAGE_SECS as usize + 2) {
        assert_eq!(n, first[s], "second {s}");
    }
    eprintln!(
        "storm: steady max {steady_max}/s, worst 10 s window at {:.0} % of its bound, \
         {} calls failed after recovery (last {late} ms after)",
        worst_window * 100.0,
        failures_after_recovery.load(Ordering::Relaxed)
    );
}
