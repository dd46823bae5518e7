//! The `metrics` feature: a breaker emits the names and labels documented in
//! `docs/metrics.md` on the events that should emit them. The calls are made and
//! counted here; the transitions are checked against the breaker's documented
//! behaviour (resilience4j's state machine) and against what a listener saw.
#![cfg(all(feature = "metrics", not(loom)))]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use heijunka_breaker::{CallError, CircuitBreaker, SlidingWindowType, State};
use heijunka_core::ManualClock;
use heijunka_core::metrics::TestRecorder;

use heijunka_core::metrics::MetricKey as Key;

use heijunka_core::metrics::metric_key as key;

/// The documented numbers of `heijunka_breaker_state`.
fn code(state: State) -> f64 {
    match state {
        State::Closed => 0.0,
        State::Open => 1.0,
        State::HalfOpen => 2.0,
        State::ForcedOpen => 3.0,
        State::Disabled => 4.0,
        State::MetricsOnly => 5.0,
        other => panic!("undocumented state {other:?}"),
    }
}

const STATES: [&str; 6] = [
    "closed",
    "open",
    "half_open",
    "forced_open",
    "disabled",
    "metrics_only",
];

/// The documented transitions: the automatic ones, and the manual ones
/// (`force_open`, `disable`, `metrics_only`, `reset` and `transition_to_closed`
/// from any other state; `transition_to_open` from any other but metrics-only;
/// `transition_to_half_open` from open, forced open and disabled). A move to the
/// state the breaker is in is no transition.
fn documented_transitions() -> Vec<(&'static str, &'static str)> {
    let mut pairs = Vec::new();
    for from in STATES {
        for to in ["closed", "forced_open", "disabled", "metrics_only"] {
            if from != to {
                pairs.push((from, to));
            }
        }
        if !matches!(from, "open" | "metrics_only") {
            pairs.push((from, "open"));
        }
        if matches!(from, "open" | "forced_open" | "disabled") {
            pairs.push((from, "half_open"));
        }
    }
    pairs
}

fn documented_keys(name: &str) -> Vec<Key> {
    let mut keys = vec![
        key("heijunka_breaker_state", &[("name", name)]),
        key("heijunka_breaker_rejected_total", &[("name", name)]),
        key("heijunka_breaker_resets_total", &[("name", name)]),
    ];
    for outcome in [
        "success",
        "failure",
        "slow_success",
        "slow_failure",
        "ignored",
    ] {
        keys.push(key(
            "heijunka_breaker_calls_total",
            &[("name", name), ("outcome", outcome)],
        ));
    }
    for (from, to) in documented_transitions() {
        keys.push(key(
            "heijunka_breaker_transitions_total",
            &[("name", name), ("from", from), ("to", to)],
        ));
    }
    keys.sort();
    keys
}

struct Read<'a> {
    rec: &'a TestRecorder,
    name: &'a str,
}

impl Read<'_> {
    fn state(&self) -> f64 {
        self.rec
            .gauge("heijunka_breaker_state", &[("name", self.name)])
            .expect("registered")
    }
    fn calls(&self, outcome: &str) -> u64 {
        self.rec
            .counter(
                "heijunka_breaker_calls_total",
                &[("name", self.name), ("outcome", outcome)],
            )
            .expect("registered")
    }
    fn rejected(&self) -> u64 {
        self.rec
            .counter("heijunka_breaker_rejected_total", &[("name", self.name)])
            .expect("registered")
    }
    /// Every transition counter that is not 0.
    fn transitions(&self) -> BTreeMap<(String, String), u64> {
        let mut out = BTreeMap::new();
        for from in STATES {
            for to in STATES {
                let n = self.rec.counter(
                    "heijunka_breaker_transitions_total",
                    &[("name", self.name), ("from", from), ("to", to)],
                );
                if let Some(n) = n.filter(|n| *n > 0) {
                    out.insert((from.to_owned(), to.to_owned()), n);
                }
            }
        }
        out
    }
}

fn tally(pairs: &[(&str, &str, u64)]) -> BTreeMap<(String, String), u64> {
    pairs
        .iter()
        .map(|(f, t, n)| (((*f).to_owned(), (*t).to_owned()), *n))
        .collect()
}

/// What a listener saw, as the same tally.
fn seen(log: &Mutex<Vec<(State, State)>>) -> BTreeMap<(String, String), u64> {
    let mut out = BTreeMap::new();
    for (from, to) in log.lock().unwrap().iter() {
        *out.entry((from.as_str().to_owned(), to.as_str().to_owned()))
            .or_insert(0) += 1;
    }
    out
}

#[test]
fn closed_open_half_open_closed_with_real_calls() {
    let clock = ManualClock::new();
    let rec = TestRecorder::new();
    let breaker = rec
        .scoped(|| {
            CircuitBreaker::builder()
                .name("payments")
                .sliding_window(SlidingWindowType::CountBased, 4)
                .minimum_number_of_calls(4)
                .failure_rate_threshold(0.5)
                .slow_call_rate_threshold(1.0)
                .slow_call_duration_threshold(Duration::from_secs(1))
                .wait_duration_in_open_state(Duration::from_secs(30))
                .automatic_transition_to_half_open(false)
                .permitted_number_of_calls_in_half_open_state(2)
                .clock(&clock)
                .build()
        })
        .unwrap();
    assert_eq!(rec.keys(), documented_keys("payments"));
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&log);
    breaker.subscribe(move |t| sink.lock().unwrap().push((t.from, t.to)));
    let m = Read {
        rec: &rec,
        name: "payments",
    };
    assert_eq!(m.state(), code(State::Closed));

    // Closed: a success, a slow success, an ignored call, then two failures trip
    // it (2 failures of 4 recorded calls reach 50 %).
    assert!(breaker.call(|| Ok::<_, ()>(())).is_ok());
    assert!(
        breaker
            .call(|| {
                clock.advance(Duration::from_secs(2));
                Ok::<_, ()>(())
            })
            .is_ok()
    );
    breaker.try_acquire().unwrap().ignore();
    assert!(breaker.call(|| Err::<(), _>("down")).is_err());
    assert_eq!(m.state(), code(State::Closed));
    assert!(m.transitions().is_empty());
    assert!(breaker.call(|| Err::<(), _>("down")).is_err());
    assert_eq!(breaker.state(), State::Open);
    assert_eq!(m.state(), code(State::Open));
    assert_eq!(m.transitions(), tally(&[("closed", "open", 1)]));
    assert_eq!(
        [
            m.calls("success"),
            m.calls("slow_success"),
            m.calls("failure"),
            m.calls("slow_failure"),
            m.calls("ignored"),
        ],
        [1, 1, 2, 0, 1]
    );

    // Open: calls are refused, and counted as such only.
    for _ in 0..3 {
        let err = breaker.call(|| Ok::<_, ()>(())).unwrap_err();
        assert!(matches!(err, CallError::Rejected(_)));
    }
    assert_eq!(m.rejected(), 3);
    assert_eq!(m.calls("success"), 1);
    clock.advance(Duration::from_secs(29));
    assert!(breaker.try_acquire().is_err());
    assert_eq!(m.rejected(), 4);
    assert_eq!(m.state(), code(State::Open));

    // The wait elapses: the next call moves to half-open and is a probe.
    clock.advance(Duration::from_secs(1));
    let probe = breaker.try_acquire().unwrap();
    assert_eq!(m.state(), code(State::HalfOpen));
    assert_eq!(
        m.transitions(),
        tally(&[("closed", "open", 1), ("open", "half_open", 1)])
    );
    let second = breaker.try_acquire().unwrap();
    assert!(breaker.try_acquire().is_err(), "every probe taken");
    assert_eq!(m.rejected(), 5);
    // A slow failing probe and a successful one: 50 % fails, which trips.
    clock.advance(Duration::from_secs(2));
    probe.failure();
    assert_eq!(m.calls("slow_failure"), 1);
    assert_eq!(m.state(), code(State::HalfOpen));
    second.success();
    assert_eq!(m.calls("slow_success"), 2);
    assert_eq!(m.state(), code(State::Open));
    assert_eq!(
        m.transitions(),
        tally(&[
            ("closed", "open", 1),
            ("open", "half_open", 1),
            ("half_open", "open", 1),
        ])
    );

    // Half-open again (the doubled wait is not configured: 30 s), two good
    // probes close it.
    clock.advance(Duration::from_secs(30));
    assert!(breaker.call(|| Ok::<_, ()>(())).is_ok());
    assert_eq!(m.state(), code(State::HalfOpen));
    assert!(breaker.call(|| Ok::<_, ()>(())).is_ok());
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(m.state(), code(State::Closed));
    let automatic = tally(&[
        ("closed", "open", 1),
        ("open", "half_open", 2),
        ("half_open", "open", 1),
        ("half_open", "closed", 1),
    ]);
    assert_eq!(m.transitions(), automatic);
    assert_eq!(m.calls("success"), 3);

    // The manual overrides.
    breaker.force_open();
    assert_eq!(m.state(), code(State::ForcedOpen));
    assert!(breaker.call(|| Ok::<_, ()>(())).is_err());
    assert_eq!(m.rejected(), 6);
    breaker.disable();
    assert_eq!(m.state(), code(State::Disabled));
    assert!(breaker.call(|| Err::<(), _>("x")).is_err());
    assert!(breaker.call(|| Ok::<_, ()>(())).is_ok());
    breaker.metrics_only();
    assert_eq!(m.state(), code(State::MetricsOnly));
    breaker.reset();
    assert_eq!(m.state(), code(State::Closed));
    breaker.reset(); // closed already: a reset, no transition
    assert_eq!(m.state(), code(State::Closed));
    assert_eq!(
        rec.counter("heijunka_breaker_resets_total", &[("name", "payments")]),
        Some(2)
    );
    let mut all = automatic.clone();
    all.extend(tally(&[
        ("closed", "forced_open", 1),
        ("forced_open", "disabled", 1),
        ("disabled", "metrics_only", 1),
        ("metrics_only", "closed", 1),
    ]));
    assert_eq!(m.transitions(), all);
    assert_eq!(m.transitions(), seen(&log), "as the listener saw them");
    assert_eq!((m.calls("success"), m.calls("failure")), (4, 3));
    assert_eq!(rec.keys(), documented_keys("payments"), "no other series");
}

#[test]
fn the_state_gauge_ends_at_the_state_after_concurrent_calls() {
    const THREADS: usize = 4;
    const CALLS: usize = 300;
    for round in 0..5 {
        let clock = ManualClock::new();
        let rec = TestRecorder::new();
        let breaker = rec
            .scoped(|| {
                CircuitBreaker::builder()
                    .name("racy")
                    .sliding_window(SlidingWindowType::CountBased, 4)
                    .minimum_number_of_calls(4)
                    .wait_duration_in_open_state(Duration::from_millis(5))
                    .automatic_transition_to_half_open(false)
                    .permitted_number_of_calls_in_half_open_state(2)
                    .clock(&clock)
                    .build()
            })
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&log);
        breaker.subscribe(move |t| sink.lock().unwrap().push((t.from, t.to)));
        let counts: Vec<[u64; 3]> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..THREADS)
                .map(|t| {
                    let (breaker, clock) = (&breaker, &clock);
                    s.spawn(move || {
                        let mut c = [0_u64; 3]; // ok, failed, rejected
                        for i in 0..CALLS {
                            clock.advance(Duration::from_millis(1));
                            let fail = (i + t + round) % 3 == 0;
                            match breaker.call(|| if fail { Err(()) } else { Ok(()) }) {
                                Ok(()) => c[0] += 1,
                                Err(CallError::Rejected(_)) => c[2] += 1,
                                Err(_) => c[1] += 1,
                            }
                        }
                        c
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let total = counts.iter().fold([0; 3], |mut a, c| {
            (0..3).for_each(|i| a[i] += c[i]);
            a
        });
        let m = Read {
            rec: &rec,
            name: "racy",
        };
        assert_eq!(m.state(), code(breaker.state()), "round {round}");
        assert_eq!(m.calls("success"), total[0]);
        assert_eq!(m.calls("failure"), total[1]);
        assert_eq!(m.rejected(), total[2]);
        assert!(total[2] > 0, "the breaker opened at some point");
        let transitions = m.transitions();
        assert!(transitions.contains_key(&("closed".into(), "open".into())));
        assert_eq!(transitions, seen(&log), "as the listener saw them");
        assert_eq!(rec.keys(), documented_keys("racy"));
    }
}

/// A closed breaker without slow-call detection whose window is full of
/// successes records a success with one load and no lock (the `FREE` path):
/// those successes are counted too, from every thread.
#[test]
fn successes_on_the_lock_free_path_are_counted() {
    const THREADS: u64 = 4;
    const CALLS: u64 = 500;
    let rec = TestRecorder::new();
    let breaker = rec
        .scoped(|| {
            CircuitBreaker::builder()
                .name("fast")
                .sliding_window(SlidingWindowType::CountBased, 4)
                .build()
        })
        .unwrap();
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| {
                for _ in 0..CALLS {
                    breaker.try_acquire().unwrap().success();
                }
            });
        }
    });
    assert!(breaker.call(|| Err::<(), _>(())).is_err());
    let m = Read {
        rec: &rec,
        name: "fast",
    };
    assert_eq!(m.calls("success"), THREADS * CALLS);
    assert_eq!(m.calls("failure"), 1);
    assert_eq!(m.state(), code(breaker.state()));
    assert_eq!(m.state(), code(State::Closed));
}
