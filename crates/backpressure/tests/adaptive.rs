//! `AdaptiveLimit`: each algorithm finds a hidden capacity in a simulated server and
//! follows it when the capacity halves.
//!
//! The model is a deterministic discrete-event simulation on a `ManualClock` (no
//! threads, no sleeps): a closed-loop client with unlimited demand keeps as many
//! requests in flight as the limit allows; a request admitted with `n` in flight
//! takes `base * max(1, n / capacity)` (a processor-sharing server: beyond its
//! capacity, work queues and latency grows in proportion). A request slower than
//! the client's timeout is reported `dropped()`.
#![cfg(not(loom))]

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt::Write as _;
use std::time::Duration;

use heijunka_backpressure::{
    AdaptiveLimit, AdaptivePermit, Aimd, Gradient2, LimitAlgorithm, Outcome, Vegas, Windowed,
};
use heijunka_core::{Instant, ManualClock, Rejection};

const BASE: Duration = Duration::from_millis(100);
const CAPACITY: f64 = 100.0;
const PHASE: Duration = Duration::from_secs(60);
const WINDOW: Duration = Duration::from_millis(250);

struct Trace(Vec<(f64, usize)>);

impl Trace {
    fn range(&self, from_s: f64, to_s: f64) -> (usize, usize) {
        let points = self.0.iter().filter(|(t, _)| *t >= from_s && *t < to_s);
        points.fold((usize::MAX, 0), |(lo, hi), &(_, l)| (lo.min(l), hi.max(l)))
    }

    fn render(&self) -> String {
        let mut s = String::new();
        for (t, l) in self
            .0
            .iter()
            .filter(|(t, _)| ((t * 10.0).round() as u64).is_multiple_of(10))
        {
            let _ = write!(s, "{t:.0}s:{l} ");
        }
        s
    }
}

/// Runs the client against the server through `phases` of (capacity, length).
fn simulate(
    limit: &AdaptiveLimit,
    clock: &ManualClock,
    phases: &[f64],
    timeout: Duration,
) -> Trace {
    let mut heap: BinaryHeap<Reverse<(u64, u64)>> = BinaryHeap::new();
    let mut pending: HashMap<u64, (AdaptivePermit<'_>, Outcome)> = HashMap::new();
    let mut seq = 0_u64;
    let mut trace = Vec::new();
    let mut next_trace = 0_u64;
    let step = Duration::from_millis(100).as_nanos() as u64;
    for &capacity in phases {
        let phase_end = clock.now().as_nanos() + PHASE.as_nanos() as u64;
        loop {
            while let Ok(permit) = limit.try_acquire() {
                let n = permit.inflight_at_start() as f64;
                let latency = BASE.mul_f64((n / capacity).max(1.0));
                let (took, outcome) = if latency > timeout {
                    (timeout, Outcome::Dropped)
                } else {
                    (latency, Outcome::Success)
                };
                let end = clock.now().as_nanos() + took.as_nanos() as u64;
                heap.push(Reverse((end, seq)));
                pending.insert(seq, (permit, outcome));
                seq += 1;
            }
            let Some(&Reverse((t, id))) = heap.peek() else {
                panic!(
                    "nothing in flight and nothing admitted: limit {}",
                    limit.limit()
                );
            };
            while next_trace <= t.min(phase_end) {
                trace.push((next_trace as f64 / 1e9, limit.limit()));
                next_trace += step;
            }
            if t > phase_end {
                clock.set(Instant::from_nanos(phase_end));
                break;
            }
            heap.pop();
            clock.set(Instant::from_nanos(t));
            let (permit, outcome) = pending.remove(&id).expect("each event has a permit");
            permit.record(outcome);
        }
    }
    Trace(trace)
}

fn assert_converges(name: &str, algorithm: impl LimitAlgorithm + 'static, timeout: Duration) {
    let clock = ManualClock::new();
    let limit = AdaptiveLimit::builder(algorithm)
        .clock(clock.clock())
        .build()
        .unwrap();
    let trace = simulate(&limit, &clock, &[CAPACITY, CAPACITY / 2.0], timeout);
    let end1 = PHASE.as_secs_f64();
    let end2 = 2.0 * end1;
    let (lo1, hi1) = trace.range(end1 - 10.0, end1);
    let (lo2, hi2) = trace.range(end2 - 10.0, end2);
    let ok1 = lo1 as f64 >= CAPACITY * 0.75 && hi1 as f64 <= CAPACITY * 1.25;
    let ok2 = lo2 as f64 >= CAPACITY / 2.0 * 0.75 && hi2 as f64 <= CAPACITY / 2.0 * 1.25;
    assert!(
        ok1 && ok2,
        "{name}: capacity {CAPACITY}: limit {lo1}..={hi1} over the last 10 s (want within 25 %); \
         capacity {}: {lo2}..={hi2}\ntrace: {}",
        CAPACITY / 2.0,
        trace.render()
    );
    let stats = limit.stats();
    assert_eq!(stats.in_flight, limit.in_flight());
    assert!(stats.successes > 10_000, "{name}: {stats:?}");
}

#[cfg_attr(miri, ignore)] // too slow under miri
#[test]
fn aimd_finds_the_capacity_and_backs_off_when_it_halves() {
    // Loss-based: the client drops requests slower than 1.1 x the base latency.
    let aimd = Aimd::builder().initial_limit(20).build().unwrap();
    let algorithm = Windowed::builder(aimd).window(WINDOW).build().unwrap();
    assert_converges("aimd", algorithm, BASE.mul_f64(1.1));
}

#[cfg_attr(miri, ignore)] // too slow under miri
#[test]
fn vegas_finds_the_capacity_and_backs_off_when_it_halves() {
    let vegas = Vegas::builder().initial_limit(20).build().unwrap();
    let algorithm = Windowed::builder(vegas).window(WINDOW).build().unwrap();
    assert_converges("vegas", algorithm, BASE * 3);
}

#[cfg_attr(miri, ignore)] // too slow under miri
#[test]
fn gradient2_finds_the_capacity_and_backs_off_when_it_halves() {
    // Tolerance 1.0: no latency growth is acceptable, so the limit settles just
    // above the knee (with the default 1.5 it settles where latency is 1.5x).
    let gradient = Gradient2::builder().rtt_tolerance(1.0).build().unwrap();
    let algorithm = Windowed::builder(gradient).window(WINDOW).build().unwrap();
    assert_converges("gradient2", algorithm, BASE * 3);
}

#[test]
fn bad_bounds_name_the_field() {
    let err = Gradient2::builder()
        .min_limit(100)
        .max_limit(10)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "min_limit");
    assert_eq!(
        err.to_string(),
        "min_limit must not exceed max_limit (10), got 100"
    );
    assert_eq!(
        Vegas::builder()
            .smoothing(-1.0)
            .build()
            .unwrap_err()
            .field(),
        "smoothing"
    );
    assert_eq!(
        Aimd::builder().max_limit(5).build().unwrap_err().field(),
        "min_limit"
    );
}

#[cfg_attr(miri, ignore)] // too slow under miri
#[test]
fn concurrent_acquire_never_exceeds_the_limit_and_returns_every_permit() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let limit = AdaptiveLimit::builder(
        Aimd::builder()
            .initial_limit(4)
            .min_limit(4)
            .max_limit(4)
            .build()
            .unwrap(),
    )
    .build()
    .unwrap();
    let held = Arc::new(AtomicUsize::new(0));
    let max_seen = Arc::new(AtomicUsize::new(0));
    std::thread::scope(|s| {
        for t in 0..4 {
            let (limit, held, max_seen) = (&limit, &held, &max_seen);
            s.spawn(move || {
                for i in 0..2_000 {
                    match limit.try_acquire() {
                        Ok(p) => {
                            let now = held.fetch_add(1, Ordering::SeqCst) + 1;
                            max_seen.fetch_max(now, Ordering::SeqCst);
                            held.fetch_sub(1, Ordering::SeqCst);
                            match (t + i) % 3 {
                                0 => p.success(),
                                1 => p.dropped(),
                                _ => drop(p),
                            }
                        }
                        Err(r) => assert_eq!(r, Rejection::AtCapacity { limit: 4 }),
                    }
                }
            });
        }
    });
    assert!(max_seen.load(Ordering::SeqCst) <= 4);
    assert_eq!(limit.in_flight(), 0);
    let st = limit.stats();
    assert_eq!(st.successes + st.drops + st.ignored + st.rejected, 8_000);
}

#[tokio::test(start_paused = true)]
async fn waiters_are_woken_when_the_limit_grows() {
    struct Grow(usize);
    impl LimitAlgorithm for Grow {
        fn initial_limit(&self) -> usize {
            self.0
        }
        fn update(&mut self, _: &heijunka_backpressure::Sample) -> usize {
            self.0 += 2;
            self.0
        }
    }
    let limit = AdaptiveLimit::builder(Grow(1)).build().unwrap();
    let first = limit.try_acquire().unwrap();
    let waiters = async {
        let (a, b) = tokio::join!(limit.acquire(), limit.acquire());
        (a, b)
    };
    let grow = async {
        tokio::task::yield_now().await;
        first.success(); // limit 1 -> 3: both waiters fit
    };
    let ((a, b), ()) = tokio::join!(waiters, grow);
    assert_eq!(limit.in_flight(), 2);
    drop((a, b));
    assert_eq!(limit.in_flight(), 0);
}
