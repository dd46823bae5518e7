//! `AdaptiveLimit`: each algorithm finds a hidden capacity in a simulated server and
//! follows it when the capacity halves.
//!
//! The model is a deterministic discrete-event simulation on a `ManualClock` (no
//! threads, no sleeps): a closed-loop client with unlimited demand keeps as many
//! requests in flight as the limit allows; a request admitted with `n` in flight
//! takes `base * max(1, n / capacity)` (a processor-sharing server: beyond its
//! capacity, work queues and latency grows in proportion). A request slower than
//! the client's timeout is reported `dropped()`.
//!
//! Also: Gradient2 against Netflix's constants, bad configuration, cancellation of
//! every acquire form at every poll, and `close`.
#![cfg(not(loom))]

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt::Write as _;
use std::time::Duration;

use heijunka_backpressure::{
    AcquireError, AcquireTimeoutError, AdaptiveLimit, AdaptivePermit, Aimd, Gradient2,
    LimitAlgorithm, Outcome, Sample, TryAcquireError, Vegas, Windowed,
};
use heijunka_core::cancel::{Outcome as Polling, Polled, cancel_points};
use heijunka_core::{Instant, ManualClock};

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
    // above the knee, within 25 % of the capacity. At the default 1.5 it must not:
    // Netflix defines the tolerance as the latency growth that is acceptable, so it
    // settles where latency is up to 1.5x (about 1.5x the capacity here); see
    // `gradient2_at_the_default_tolerance_accepts_its_latency_growth`.
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
                        Err(r) => assert_eq!(r, TryAcquireError::AtCapacity { limit: 4 }),
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
        fn update(&mut self, _: &Sample) -> usize {
            self.0 += 2;
            self.0
        }
    }
    let limit = AdaptiveLimit::builder(Grow(1)).build().unwrap();
    let first = limit.try_acquire().unwrap();
    let waiters = async {
        let (a, b) = tokio::join!(limit.acquire(), limit.acquire());
        (a.unwrap(), b.unwrap())
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

/// Runs Gradient2 at its default tolerance (1.5) through the same two phases.
///
/// Netflix documents the tolerance as the latency growth that is acceptable ("a
/// value of 2.0 means that a 2x increase in latency is acceptable"), so with 1.5
/// the limit must not settle within 25 % of the capacity (where latency has not
/// grown): it settles where requests take up to about 1.5x the long-term RTT, that
/// is up to about 1.5x the capacity in this processor-sharing server, and never
/// below the capacity (it is not shedding load the server could take). After the
/// capacity halves, the long-term RTT has drifted up with the queueing of phase
/// one (Netflix: "the baseline RTT grows using exponential decay but lags"), so the
/// limit must come down but can only be bounded by what the loaded RTT allows.
#[cfg_attr(miri, ignore)] // too slow under miri
#[test]
fn gradient2_at_the_default_tolerance_accepts_its_latency_growth() {
    let clock = ManualClock::new();
    let gradient = Gradient2::builder().build().unwrap();
    let algorithm = Windowed::builder(gradient).window(WINDOW).build().unwrap();
    let limit = AdaptiveLimit::builder(algorithm)
        .clock(clock.clock())
        .build()
        .unwrap();
    let trace = simulate(&limit, &clock, &[CAPACITY, CAPACITY / 2.0], BASE * 3);
    let end1 = PHASE.as_secs_f64();
    let (lo1, hi1) = trace.range(end1 - 10.0, end1);
    let (lo2, hi2) = trace.range(2.0 * end1 - 10.0, 2.0 * end1);
    assert!(
        lo1 as f64 >= CAPACITY && hi1 as f64 <= 1.5 * CAPACITY * 1.25,
        "capacity {CAPACITY}: limit {lo1}..={hi1}\ntrace: {}",
        trace.render()
    );
    assert!(
        hi2 < lo1 && lo2 as f64 >= CAPACITY / 2.0,
        "capacity {}: limit {lo2}..={hi2} after {lo1}..={hi1}\ntrace: {}",
        CAPACITY / 2.0,
        trace.render()
    );
}

/// Netflix's `Gradient2Limit`: when the long-term RTT is over twice the current
/// one, it is multiplied by 0.95; before that it is an exponential average with
/// factor 2 / (long_window + 1) after a 10-sample mean.
#[test]
fn gradient2_long_rtt_follows_netflix_decay() {
    let mut g = Gradient2::builder().build().unwrap();
    let s = |ms: u64| Sample {
        start: Instant::ZERO,
        end: Instant::ZERO,
        rtt: Duration::from_millis(ms),
        inflight: 100,
        dropped: false,
    };
    for _ in 0..10 {
        g.update(&s(100));
    }
    assert_eq!(g.long_rtt_nanos(), 100e6);
    g.update(&s(40));
    let f = 2.0 / 601.0;
    let ema = 100e6 * (1.0 - f) + 40e6 * f;
    let got = g.long_rtt_nanos();
    assert!(
        (got - ema * 0.95).abs() < 1.0,
        "long rtt {got}, want {} (x 0.95); x 0.9 gives {}",
        ema * 0.95,
        ema * 0.9
    );
    // Within twice the current RTT: no decay.
    g.update(&s(60));
    let ema2 = got * (1.0 - f) + 60e6 * f;
    assert!((g.long_rtt_nanos() - ema2).abs() < 1.0);
}

#[test]
fn gradient2_queue_size_zero_is_a_config_error() {
    let err = Gradient2::builder().queue_size(0).build().unwrap_err();
    assert_eq!(err.field(), "queue_size");
    assert_eq!(err.to_string(), "queue_size must be at least 1, got 0");
}

#[test]
fn builders_take_an_algorithm_chosen_at_run_time() {
    // No turbofish: a boxed algorithm picked at run time goes straight in, and so
    // does a windowed one around it.
    let pick = |vegas: bool| -> Box<dyn LimitAlgorithm> {
        if vegas {
            Box::new(Vegas::builder().build().unwrap())
        } else {
            Box::new(Aimd::builder().build().unwrap())
        }
    };
    let limit = AdaptiveLimit::builder(pick(true)).build().unwrap();
    assert_eq!(limit.limit(), 20);
    let windowed = Windowed::builder(pick(false)).build().unwrap();
    let limit = AdaptiveLimit::builder(windowed).build().unwrap();
    assert_eq!(limit.limit(), 20);
}

fn one_slot() -> AdaptiveLimit {
    let aimd = Aimd::builder()
        .initial_limit(1)
        .min_limit(1)
        .max_limit(1)
        .build()
        .unwrap();
    AdaptiveLimit::builder(aimd).build().unwrap()
}

/// Drives the future `$make` builds from a limit whose one slot is held (`$l`) for
/// k polls, releasing the holder before poll 1, drops it, and checks what is left:
/// nothing in flight, no waiter, no sample counted (the stats see only the holder's
/// `ignore` and, if the future completed, its permit dropped as `ignore`), and the
/// slot free for a second `try_acquire`.
macro_rules! check_cancel {
    (|$l:ident| $make:expr) => {{
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let _g = rt.enter();
        let covered = cancel_points(10, |k| {
            let $l = one_slot();
            let mut held = Some($l.try_acquire().unwrap());
            let out = Polled::new($make).drop_after_with(k, |i| {
                if i == 1 {
                    held = None;
                }
            });
            let completed = out.is_completed();
            drop(out);
            drop(held);
            let st = $l.stats();
            assert_eq!(st.in_flight, 0, "k = {k}: {st:?}");
            assert_eq!(st.waiting, 0, "k = {k}: a waiter left behind");
            assert_eq!(st.successes + st.drops, 0, "k = {k}: a sample counted");
            assert_eq!(st.ignored, 1 + u64::from(completed), "k = {k}: {st:?}");
            assert!($l.try_acquire().is_ok(), "k = {k}: the slot was not freed");
            if completed {
                Polling::Completed {
                    output: (),
                    polls: k,
                }
            } else {
                Polling::Cancelled { polls: k }
            }
        });
        assert_eq!(
            covered, 2,
            "pending on the first poll, admitted on the second"
        );
    }};
}

#[test]
fn acquire_forms_are_cancel_safe() {
    check_cancel!(|l| l.acquire());
    check_cancel!(|l| l.acquire_owned());
    check_cancel!(|l| l.acquire_timeout(Duration::from_secs(1)));
}

#[test]
fn a_cancelled_waiter_passes_its_wake_up_on() {
    let limit = one_slot();
    let held = limit.try_acquire().unwrap();
    let mut first = Polled::new(limit.acquire());
    let mut second = Polled::new(limit.acquire());
    assert!(!first.poll());
    assert!(!second.poll());
    held.success(); // wakes one waiter: the first
    drop(first); // cancelled after its wake-up, before using it
    assert!(
        second.wakes() >= 1,
        "the wake-up was lost with the first waiter"
    );
    assert!(second.poll(), "the second waiter is admitted");
    drop(second);
    let st = limit.stats();
    assert_eq!((st.in_flight, st.waiting), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn close_wakes_waiters_and_refuses_everything_after() {
    let limit = one_slot();
    let held = limit.try_acquire().unwrap();
    let waiter = {
        let limit = limit.clone();
        tokio::spawn(async move { limit.acquire().await.map(drop) })
    };
    tokio::task::yield_now().await;
    assert_eq!(limit.stats().waiting, 1);
    limit.close();
    assert_eq!(waiter.await.unwrap().unwrap_err(), AcquireError::Closed);
    assert_eq!(limit.try_acquire().unwrap_err(), TryAcquireError::Closed);
    assert_eq!(
        limit
            .acquire_timeout(Duration::from_secs(1))
            .await
            .unwrap_err(),
        AcquireTimeoutError::Closed
    );
    // A permit held across the close still reports, and does not reopen it.
    held.success();
    assert!(limit.try_acquire().is_err());
    assert_eq!(limit.stats().successes, 1);
    assert_eq!(limit.in_flight(), 0);
}

#[test]
fn acquire_timeout_that_fires_between_polls_leaves_nothing_behind() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let _g = rt.enter();
    let covered = cancel_points(10, |k| {
        let limit = one_slot();
        let held = limit.try_acquire().unwrap();
        let fut = async {
            limit
                .acquire_timeout(Duration::from_millis(10))
                .await
                .map(drop)
        };
        let out = Polled::new(fut).drop_after_with(k, |i| {
            if i == 1 {
                rt.block_on(tokio::time::advance(Duration::from_millis(10)));
            }
        });
        if let Polling::Completed { output, .. } = &out {
            assert_eq!(
                *output,
                Err(AcquireTimeoutError::TimedOut {
                    after: Duration::from_millis(10)
                })
            );
        }
        let st = limit.stats();
        assert_eq!((st.in_flight, st.waiting), (1, 0), "k = {k}: {st:?}");
        held.success();
        let st = limit.stats();
        assert_eq!(
            (st.in_flight, st.successes, st.ignored),
            (0, 1, 0),
            "k = {k}"
        );
        match out {
            Polling::Completed { polls, .. } => Polling::Completed { output: (), polls },
            Polling::Cancelled { polls } => Polling::Cancelled { polls },
        }
    });
    assert_eq!(covered, 2);
}

/// A permit held on after the work ended (a response body streaming to a slow
/// client) takes its sample at the mark: AIMD with a 1 s time-out sees a 5 ms
/// success and grows, where the 3 s to the release would have been a drop.
#[test]
fn a_marked_end_is_the_samples_end() {
    use heijunka_backpressure::{AdaptiveLimit, Aimd};
    use heijunka_core::ManualClock;
    use std::time::Duration;

    let run = |mark: bool| {
        let manual = ManualClock::new();
        let limit = AdaptiveLimit::builder(
            Aimd::builder()
                .initial_limit(10)
                .min_limit(1)
                .max_limit(100)
                .timeout(Duration::from_secs(1))
                .build()
                .unwrap(),
        )
        .clock(manual.clock())
        .build()
        .unwrap();
        let mut permit = limit.try_acquire_owned().unwrap();
        manual.advance(Duration::from_millis(5));
        if mark {
            permit.mark_end();
        }
        manual.advance(Duration::from_secs(3));
        permit.success();
        limit.limit()
    };
    assert_eq!(run(false), 9, "3 s is past the time-out: a drop");
    assert!(run(true) >= 10, "5 ms: a success ({})", run(true));
}
