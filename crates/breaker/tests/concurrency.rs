//! Stress tests: exactly N half-open probes however many threads race for them, and
//! no outcome lost or counted twice under concurrent calls. Bounded in iterations;
//! time is a `ManualClock`.
#![cfg(not(loom))]

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use heijunka_breaker::{BreakerEvent, CircuitBreaker, SlidingWindowType, State};
use heijunka_core::ManualClock;

const THREADS: usize = 8;

/// Threads spin on `try_acquire` across the moment the wait in open state ends;
/// exactly `permitted` of them get a probe, in every round.
#[test]
#[cfg_attr(miri, ignore)] // spawns and spins 8 threads for many rounds; the loom model covers the protocol
fn half_open_admits_exactly_n_probes_under_a_race() {
    let rounds = 100;
    let permitted = 3;
    let clock = ManualClock::new();
    let breaker = CircuitBreaker::builder()
        .sliding_window(SlidingWindowType::CountBased, 1)
        .permitted_number_of_calls_in_half_open_state(permitted)
        .wait_duration_in_open_state(Duration::from_secs(1))
        .clock(&clock)
        .build()
        .unwrap();
    let _ = breaker.call(|| Err::<(), _>("trip"));
    assert_eq!(breaker.state(), State::Open);

    let start = Arc::new(Barrier::new(THREADS + 1));
    let end = Arc::new(Barrier::new(THREADS + 1));
    let advanced = Arc::new(AtomicBool::new(false));
    let admitted = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..THREADS)
        .map(|_| {
            let (breaker, start, end, advanced, admitted) = (
                breaker.clone(),
                start.clone(),
                end.clone(),
                advanced.clone(),
                admitted.clone(),
            );
            std::thread::spawn(move || {
                for _ in 0..rounds {
                    start.wait();
                    let mut held = Vec::new();
                    // Spin while the breaker is open, across the moment the wait
                    // ends, and for 100 more attempts after it.
                    let mut after = 0;
                    while after < 100 {
                        if advanced.load(Ordering::SeqCst) {
                            after += 1;
                        }
                        if let Ok(p) = breaker.try_acquire() {
                            assert_eq!(p.admitted_in(), State::HalfOpen);
                            held.push(p);
                        }
                    }
                    admitted.fetch_add(held.len(), Ordering::SeqCst);
                    end.wait();
                    // Every probe fails: the breaker opens again for the next round.
                    for p in held {
                        p.failure();
                    }
                    end.wait();
                }
            })
        })
        .collect();
    for round in 0..rounds {
        admitted.store(0, Ordering::SeqCst);
        advanced.store(false, Ordering::SeqCst);
        start.wait();
        // The threads are already spinning on the open breaker when the wait ends.
        std::thread::yield_now();
        clock.advance(Duration::from_secs(1));
        advanced.store(true, Ordering::SeqCst);
        end.wait();
        assert_eq!(
            admitted.load(Ordering::SeqCst),
            permitted as usize,
            "round {round}"
        );
        end.wait();
        // The last probe's failure re-opened the breaker.
        assert_eq!(breaker.state(), State::Open, "round {round}");
    }
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(breaker.stats().consecutive_trips, rounds + 1);
}

/// Probes given back (dropped without an outcome) are handed out again, never more
/// than `permitted` at once, and the breaker closes after exactly `permitted`
/// recorded probes.
#[test]
#[cfg_attr(miri, ignore)] // many threads and iterations; the loom model covers the protocol
fn released_probes_are_reused_but_never_exceed_n() {
    let permitted = 4_u32;
    let clock = ManualClock::new();
    let breaker = CircuitBreaker::builder()
        .sliding_window(SlidingWindowType::CountBased, 1)
        .permitted_number_of_calls_in_half_open_state(permitted)
        .clock(&clock)
        .build()
        .unwrap();
    let _ = breaker.call(|| Err::<(), _>("trip"));
    clock.advance(Duration::from_secs(60));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..THREADS)
        .map(|_| {
            let (breaker, in_flight, most) = (breaker.clone(), in_flight.clone(), most.clone());
            std::thread::spawn(move || {
                for _ in 0..5_000 {
                    if let Ok(p) = breaker.try_acquire() {
                        let n = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(n, Ordering::SeqCst);
                        in_flight.fetch_sub(1, Ordering::SeqCst);
                        drop(p); // no outcome: the slot goes back
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    assert!(most.load(Ordering::SeqCst) <= permitted as usize);
    assert_eq!(breaker.state(), State::HalfOpen);
    assert_eq!(breaker.stats().available_probes, Some(permitted));
    for _ in 0..permitted {
        breaker.try_acquire().unwrap().success();
    }
    assert_eq!(breaker.state(), State::Closed);
}

/// Concurrent calls, with failures mixed in: once the threads are joined, the
/// window holds every recorded call exactly once, whichever path recorded it
/// (shard, fold, lock).
#[test]
fn no_outcome_is_lost_in_a_count_window() {
    let per_thread: u64 = if cfg!(miri) { 40 } else { 20_000 };
    let threads = if cfg!(miri) { 2 } else { 4 };
    let breaker = CircuitBreaker::builder()
        // Large enough to hold every call; never trips.
        .sliding_window(SlidingWindowType::CountBased, 1_000_000)
        .minimum_number_of_calls(1_000_000)
        .clock(ManualClock::new())
        .build()
        .unwrap();
    let failures = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (breaker, failures) = (breaker.clone(), failures.clone());
            std::thread::spawn(move || {
                for i in 0..per_thread {
                    let fail = (i + t) % 7 == 0;
                    if fail {
                        failures.fetch_add(1, Ordering::SeqCst);
                    }
                    let _ = breaker.call(|| if fail { Err(i) } else { Ok(i) });
                    if i % 4096 == 0 {
                        let _ = breaker.stats(); // a fold racing the calls
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let s = breaker.stats();
    assert_eq!(s.calls, threads * per_thread);
    assert_eq!(s.failed_calls, failures.load(Ordering::SeqCst));
    assert_eq!(s.state, State::Closed);
}

/// The same in a time-based window while another thread moves the clock, so that
/// shards keep meeting successes of other seconds.
#[test]
fn no_outcome_is_lost_in_a_time_window() {
    let per_thread: u64 = if cfg!(miri) { 40 } else { 20_000 };
    let threads = if cfg!(miri) { 2 } else { 3 };
    let clock = ManualClock::new();
    let breaker = CircuitBreaker::builder()
        // Wider than the time the clock moves: nothing expires.
        .sliding_window(SlidingWindowType::TimeBased, 3600)
        .minimum_number_of_calls(u32::MAX)
        .clock(&clock)
        .build()
        .unwrap();
    let failures = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let ticker = {
        let (clock, done) = (clock.clone(), done.clone());
        std::thread::spawn(move || {
            let mut ticks = 0;
            while done.load(Ordering::SeqCst) < threads as usize && ticks < 1000 {
                clock.advance(Duration::from_millis(700));
                ticks += 1;
                std::thread::yield_now();
            }
        })
    };
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (breaker, failures, done) = (breaker.clone(), failures.clone(), done.clone());
            std::thread::spawn(move || {
                for i in 0..per_thread {
                    let fail = (i * 3 + t) % 11 == 0;
                    if fail {
                        failures.fetch_add(1, Ordering::SeqCst);
                    }
                    let _ = breaker.call(|| if fail { Err(i) } else { Ok(i) });
                }
                done.fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    ticker.join().unwrap();
    let s = breaker.stats();
    assert_eq!(s.calls, threads * per_thread);
    assert_eq!(s.failed_calls, failures.load(Ordering::SeqCst));
}

/// A breaker that trips and recovers while threads hammer it stays consistent:
/// its window never holds more than its size, and it ends closed after a reset.
#[test]
fn trips_under_load_keep_the_window_consistent() {
    let per_thread = if cfg!(miri) { 30 } else { 5_000 };
    let clock = ManualClock::new();
    let breaker = CircuitBreaker::builder()
        .sliding_window(SlidingWindowType::CountBased, 16)
        .minimum_number_of_calls(8)
        .wait_duration_in_open_state(Duration::from_millis(1))
        .permitted_number_of_calls_in_half_open_state(2)
        .clock(&clock)
        .build()
        .unwrap();
    let workers: Vec<_> = (0..THREADS.min(if cfg!(miri) { 2 } else { THREADS }))
        .map(|t| {
            let (breaker, clock) = (breaker.clone(), clock.clone());
            std::thread::spawn(move || {
                for i in 0..per_thread {
                    let fail = (i / 50 + t) % 3 == 0; // bursts of failures
                    let _ = breaker.call(|| if fail { Err(()) } else { Ok(()) });
                    if i % 100 == 0 {
                        clock.advance(Duration::from_millis(1));
                        let s = breaker.stats();
                        assert!(s.calls <= 16, "{s:?}");
                        assert!(s.failed_calls <= s.calls, "{s:?}");
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    breaker.reset();
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(breaker.stats().calls, 0);
}

/// Threads race failures and successes into a count window judged only once it is
/// full; after they join, the outcomes the test itself recorded decide the verdict:
/// a final window whose failure rate reaches the threshold (with at least the
/// minimum number of calls) must have opened the breaker. A success that slipped
/// into a per-thread shard after a concurrent failure made successes unsafe, and
/// was never judged, leaves it closed.
#[test]
#[cfg_attr(miri, ignore)] // spawns threads for many rounds; the loom model covers the protocol
fn stress_a_threshold_crossing_is_never_missed() {
    const WORKERS: usize = 4;
    const PER_THREAD: usize = 4;
    const CALLS: usize = WORKERS * PER_THREAD;
    const THRESHOLD: f64 = 0.5;
    let rounds = 3_000;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    for round in 0..rounds {
        if std::time::Instant::now() > deadline {
            break;
        }
        let breaker = CircuitBreaker::builder()
            .sliding_window(SlidingWindowType::CountBased, CALLS as u32)
            .minimum_number_of_calls(CALLS as u32)
            .failure_rate_threshold(THRESHOLD)
            .clock(ManualClock::new())
            .build()
            .unwrap();
        let start = Arc::new(Barrier::new(WORKERS));
        let workers: Vec<_> = (0..WORKERS)
            .map(|t| {
                let (breaker, start) = (breaker.clone(), start.clone());
                std::thread::spawn(move || {
                    // Half the threads fail every call, half succeed.
                    let fail = t % 2 == 0;
                    let (mut calls, mut failures) = (0, 0);
                    start.wait();
                    for _ in 0..PER_THREAD {
                        match breaker.call(|| if fail { Err(()) } else { Ok(()) }) {
                            Ok(()) => calls += 1,
                            Err(e) if !e.is_rejected() => {
                                calls += 1;
                                failures += 1;
                            }
                            Err(_) => {}
                        }
                    }
                    (calls, failures)
                })
            })
            .collect();
        let (mut calls, mut failures) = (0usize, 0usize);
        for w in workers {
            let (c, f) = w.join().unwrap();
            calls += c;
            failures += f;
        }
        // The window holds every admitted call (it is as large as the round), so
        // its failure rate is the round's.
        let crossed = calls >= CALLS && failures as f64 / calls as f64 >= THRESHOLD;
        if crossed {
            assert_ne!(
                breaker.state(),
                State::Closed,
                "round {round}: {failures} failures in {calls} calls reached {THRESHOLD} \
                 but the breaker is closed"
            );
        }
    }
}

/// Threads race manual transitions; every listener sees the changes in the order
/// they were made: each event leaves the state the previous one entered, and the
/// last one entered the state the breaker ends in.
#[test]
#[cfg_attr(miri, ignore)] // many threads and iterations
fn stress_listeners_see_transitions_in_order() {
    let per_thread = 2_000;
    let breaker = CircuitBreaker::builder()
        .clock(ManualClock::new())
        .build()
        .unwrap();
    let logs: Vec<_> = (0..2)
        .map(|_| {
            let log = Arc::new(std::sync::Mutex::new(Vec::new()));
            let sink = log.clone();
            // Every event: resets share the sequence with the transitions.
            breaker.subscribe_events(move |e| sink.lock().unwrap().push(e.clone()));
            log
        })
        .collect();
    let start = Arc::new(Barrier::new(4));
    let workers: Vec<_> = (0..4)
        .map(|t| {
            let (breaker, start) = (breaker.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                for i in 0..per_thread {
                    match (i + t) % 4 {
                        0 => breaker.force_open(),
                        1 => breaker.disable(),
                        2 => breaker.metrics_only(),
                        _ => breaker.reset(),
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let end = breaker.state();
    // Delivers what a dispatching thread left, and says how many events the
    // bounded listener queue dropped (`LISTENER_QUEUE_CAPACITY`): a dropped event
    // leaves a gap in the sequence numbers, for every listener alike.
    let dropped = breaker.stats().dropped_events;
    for log in logs {
        let log = log.lock().unwrap();
        assert!(!log.is_empty());
        let mut missing = 0;
        // The state each event leaves the breaker in.
        let entered = |e: &BreakerEvent| match e {
            BreakerEvent::Transition(t) => t.to,
            _ => State::Closed, // a reset
        };
        for pair in log.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            assert!(
                b.sequence() > a.sequence(),
                "sequence numbers must increase: {} then {}",
                a.sequence(),
                b.sequence()
            );
            missing += b.sequence() - a.sequence() - 1;
            if b.sequence() == a.sequence() + 1 {
                // Each event starts from the state the previous one entered.
                let left = match b {
                    BreakerEvent::Transition(t) => t.from,
                    BreakerEvent::Reset(r) => {
                        // A reset of a breaker that was not closed follows its
                        // own transition to closed, at once.
                        if r.state != State::Closed {
                            assert!(
                                matches!(a, BreakerEvent::Transition(t)
                                    if (t.from, t.to) == (r.state, State::Closed)),
                                "{a:?} then {b:?}"
                            );
                        }
                        State::Closed
                    }
                    other => panic!("unexpected event {other:?}"),
                };
                assert_eq!(left, entered(a), "delivered out of order: {a:?} then {b:?}");
            }
        }
        assert!(
            missing <= dropped,
            "{missing} events missing between delivered ones, but only {dropped} dropped"
        );
        if dropped == 0 {
            assert_eq!(
                entered(log.last().unwrap()),
                end,
                "the last event matches the state"
            );
        }
    }
}
