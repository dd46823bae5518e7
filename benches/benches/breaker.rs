//! `breaker/*`: the circuit breaker against the `failsafe` crate.
//!
//! Policies, configured to be equivalent on both sides (no workload here trips
//! either breaker, so every call takes the closed path):
//!
//! - rate rows (`closed_call`, `closed_call_mixed`, the contended rows): heijunka's
//!   defaults (trip at a 50 % failure rate over the last 100 calls, judged from 100
//!   calls) against failsafe's success-rate policy set to the same figures (trip
//!   below a 50 % success rate, judged from 100 requests, over its 30 s window);
//! - `_consecutive` rows: 5 consecutive failures on both sides (failsafe's
//!   `consecutive_failures`; heijunka's `consecutive_failure_threshold(5)`, which
//!   also keeps its default failure-rate window: more work on heijunka's side);
//! - `closed_call_time_window`: heijunka's time-based window (30 s, 50 %) against
//!   the same failsafe success-rate policy, itself a time window.
//!
//! Both sides run the same closure, with `black_box` inputs.
//!
//! Contended rows run on 1 and 2 threads (this machine has 2 cores); set
//! `HEIJUNKA_BENCH_THREADS=1,2,4,8,16` on a larger machine for the scaling curve.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use failsafe::{CircuitBreaker as _, Config, backoff, failure_policy};
use heijunka_benches::{baselines, contended};
use heijunka_breaker::{CircuitBreaker, SlidingWindowType};

/// The guarded call: cheap, so the breaker's own cost dominates. Fails when `i` is
/// a multiple of `fail_every` (never when it is 0).
#[inline]
fn work(i: u64, fail_every: u64) -> Result<u64, u64> {
    let i = black_box(i);
    if fail_every != 0 && i.is_multiple_of(fail_every) {
        Err(i)
    } else {
        Ok(i)
    }
}

/// heijunka's defaults: 50 % over the last 100 calls, judged from 100 calls.
fn ours_rate() -> CircuitBreaker {
    CircuitBreaker::builder().build().expect("valid")
}

/// The defaults plus 5 consecutive failures.
fn ours_consecutive() -> CircuitBreaker {
    CircuitBreaker::builder()
        .consecutive_failure_threshold(5)
        .build()
        .expect("valid")
}

/// 50 % over the last 30 s, judged from 100 calls.
fn ours_time_window() -> CircuitBreaker {
    CircuitBreaker::builder()
        .sliding_window(SlidingWindowType::TimeBased, 30)
        .build()
        .expect("valid")
}

type Failsafe =
    failsafe::StateMachine<failure_policy::SuccessRateOverTimeWindow<backoff::Constant>, ()>;

/// failsafe's success-rate policy (its default kind) with heijunka's figures: trip
/// below 50 % success, judged from 100 requests, over a 30 s window. It reads the
/// clock on every call.
fn theirs_rate() -> Failsafe {
    let policy = failure_policy::success_rate_over_time_window(
        0.5,
        100,
        Duration::from_secs(30),
        backoff::constant(Duration::from_secs(60)),
    );
    Config::new().failure_policy(policy).build()
}

/// failsafe's consecutive-failures policy: 5, then a constant 60 s open.
fn theirs_consecutive()
-> failsafe::StateMachine<failure_policy::ConsecutiveFailures<backoff::Constant>, ()> {
    let policy =
        failure_policy::consecutive_failures(5, backoff::constant(Duration::from_secs(60)));
    Config::new().failure_policy(policy).build()
}

fn threads() -> Vec<usize> {
    std::env::var("HEIJUNKA_BENCH_THREADS")
        .ok()
        .and_then(|s| s.split(',').map(|t| t.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 2])
}

/// Times `call` on a breaker of each side, in group `group`.
macro_rules! pair {
    ($c:expr, $group:expr, $ours:expr, $theirs:expr, $fail_every:expr) => {{
        let mut g = $c.benchmark_group($group);
        let b = $ours;
        let mut i = 0_u64;
        g.bench_function("heijunka", |bench| {
            bench.iter(|| {
                i += 1;
                black_box(black_box(&b).call(|| work(i, $fail_every)))
            })
        });
        let f = $theirs;
        let mut i = 0_u64;
        g.bench_function("failsafe", |bench| {
            bench.iter(|| {
                i += 1;
                black_box(black_box(&f).call(|| work(i, $fail_every)))
            })
        });
        g.finish();
    }};
}

/// The single-threaded closed path, every call succeeding or one in five failing
/// (failsafe's own benchmark workload).
fn closed(c: &mut Criterion) {
    pair!(c, "breaker/closed_call", ours_rate(), theirs_rate(), 0);
    pair!(
        c,
        "breaker/closed_call_mixed",
        ours_rate(),
        theirs_rate(),
        5
    );
    pair!(
        c,
        "breaker/closed_call_consecutive",
        ours_consecutive(),
        theirs_consecutive(),
        0
    );
    pair!(
        c,
        "breaker/closed_call_mixed_consecutive",
        ours_consecutive(),
        theirs_consecutive(),
        5
    );
    pair!(
        c,
        "breaker/closed_call_time_window",
        ours_time_window(),
        theirs_rate(),
        0
    );

    // Slow-call detection costs two clock reads per call; no peer measures it.
    let mut g = c.benchmark_group("breaker/closed_call_slow_detection");
    let b = CircuitBreaker::builder()
        .slow_call_duration_threshold(Duration::from_secs(1))
        .build()
        .expect("valid");
    let mut i = 0_u64;
    g.bench_function("heijunka", |bench| {
        bench.iter(|| {
            i += 1;
            black_box(black_box(&b).call(|| work(i, 0)))
        })
    });
    g.finish();
}

/// The breaker's cost over the bare closure it guards.
fn overhead(c: &mut Criterion) {
    let mut g = c.benchmark_group("breaker/overhead");
    let b = ours_rate();
    let mut i = 0_u64;
    g.bench_function("heijunka", |bench| {
        bench.iter(|| {
            i += 1;
            black_box(black_box(&b).call(|| work(i, 0)))
        })
    });
    let mut i = 0_u64;
    g.bench_function("bare", |bench| {
        bench.iter(|| {
            i += 1;
            black_box(work(i, 0))
        })
    });
    g.finish();
}

/// An open breaker turning a call away, both tripped by 5 consecutive failures
/// (the time until the next probe needs a clock read; failsafe reads its clock too).
fn open(c: &mut Criterion) {
    let mut g = c.benchmark_group("breaker/open_reject");
    let b = ours_consecutive();
    for _ in 0..5 {
        let _ = b.call(|| Err::<(), _>(()));
    }
    assert!(
        b.call(|| Ok::<_, ()>(())).is_err(),
        "heijunka breaker is open"
    );
    g.bench_function("heijunka", |bench| {
        bench.iter(|| black_box(black_box(&b).call(|| work(1, 0))))
    });
    let f = theirs_consecutive();
    for _ in 0..5 {
        let _ = f.call(|| Err::<(), _>(()));
    }
    assert!(!f.is_call_permitted(), "failsafe breaker is open");
    g.bench_function("failsafe", |bench| {
        bench.iter(|| black_box(black_box(&f).call(|| work(1, 0))))
    });
    g.finish();
}

/// Aggregate closed-state throughput on several threads sharing one breaker.
fn closed_contended(c: &mut Criterion) {
    for (group, fail_every) in [
        ("breaker/closed_call_contended", 0),
        ("breaker/closed_call_mixed_contended", 5),
    ] {
        let mut g = c.benchmark_group(group);
        for threads in threads() {
            g.bench_with_input(
                BenchmarkId::new("heijunka", threads),
                &threads,
                |bench, &t| {
                    let b = ours_rate();
                    bench.iter_custom(|iters| {
                        let b = b.clone();
                        contended(t, iters, move |_| {
                            black_box(b.call(|| work(call_number(), fail_every)).ok());
                        })
                    })
                },
            );
            g.bench_with_input(
                BenchmarkId::new("failsafe", threads),
                &threads,
                |bench, &t| {
                    let f = theirs_rate();
                    bench.iter_custom(|iters| {
                        let f = f.clone();
                        contended(t, iters, move |_| {
                            black_box(f.call(|| work(call_number(), fail_every)).ok());
                        })
                    })
                },
            );
        }
        g.finish();
    }
}

/// A per-thread call counter (no shared state), so each thread's own sequence of
/// outcomes follows the same 1-in-`fail_every` pattern on both sides.
fn call_number() -> u64 {
    use std::cell::Cell;
    thread_local! {
        static N: Cell<u64> = const { Cell::new(0) };
    }
    N.with(|n| {
        let v = n.get() + 1;
        n.set(v);
        v
    })
}

criterion_group!(benches, baselines, closed, overhead, open, closed_contended);
criterion_main!(benches);
