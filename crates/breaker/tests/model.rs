//! Property test: for any configuration and any sequence of calls (succeeding,
//! failing, ignored, slow or fast) and clock advances, the breaker's state equals
//! that of a small reference model written from the documented rules, and so do the
//! window's counts at the end.
#![cfg(not(loom))]

use std::collections::VecDeque;
use std::time::Duration;

use heijunka_breaker::{CircuitBreaker, SlidingWindowType, State, Verdict};
use heijunka_core::ManualClock;
use proptest::prelude::*;

#[derive(Clone, Debug)]
struct Config {
    time_based: bool,
    size: u32,
    minimum: u32,
    failure_rate: f64,
    slow: Option<(f64, u64)>, // (rate, duration ms)
    consecutive: Option<u32>,
    count: Option<(u32, u64)>, // (failures, window ms)
    wait_ms: u64,
    multiplier: f64,
    max_wait_ms: u64,
    probes: u32,
    half_open_max_ms: Option<u64>,
}

#[derive(Clone, Copy, Debug)]
enum Op {
    /// A call taking `ms` that succeeds.
    Ok(u64),
    /// A call taking `ms` that fails.
    Fail(u64),
    /// A call whose error is ignored.
    Ignored,
    /// Time passes.
    Advance(u64),
}

fn config() -> impl Strategy<Value = Config> {
    (
        any::<bool>(),
        1_u32..8,
        1_u32..10,
        prop::sample::select(vec![0.2, 0.5, 0.75, 1.0]),
        prop::option::of((prop::sample::select(vec![0.5, 1.0]), 5_u64..200)),
        prop::option::of(1_u32..5),
        prop::option::of((1_u32..4, 50_u64..3000)),
        (
            100_u64..3000,
            prop::sample::select(vec![1.0, 2.0]),
            1_u64..4,
        ),
        1_u32..4,
        prop::option::of(100_u64..2000),
    )
        .prop_map(
            |(
                time_based,
                size,
                minimum,
                failure_rate,
                slow,
                consecutive,
                count,
                (wait_ms, multiplier, max_factor),
                probes,
                half_open_max_ms,
            )| Config {
                time_based,
                size,
                minimum,
                failure_rate,
                slow,
                consecutive,
                count,
                wait_ms,
                multiplier,
                max_wait_ms: wait_ms * max_factor,
                probes,
                half_open_max_ms,
            },
        )
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0_u64..300).prop_map(Op::Ok),
        3 => (0_u64..300).prop_map(Op::Fail),
        1 => Just(Op::Ignored),
        2 => (0_u64..2500).prop_map(Op::Advance),
    ]
}

fn build(c: &Config, clock: &ManualClock) -> CircuitBreaker {
    let window = if c.time_based {
        SlidingWindowType::TimeBased
    } else {
        SlidingWindowType::CountBased
    };
    let mut b = CircuitBreaker::builder()
        .sliding_window(window, c.size)
        .minimum_number_of_calls(c.minimum)
        .failure_rate_threshold(c.failure_rate)
        .wait_duration_in_open_state(Duration::from_millis(c.wait_ms))
        .exponential_backoff(c.multiplier, Duration::from_millis(c.max_wait_ms))
        .permitted_number_of_calls_in_half_open_state(c.probes)
        .clock(clock);
    if let Some((rate, ms)) = c.slow {
        b = b
            .slow_call_rate_threshold(rate)
            .slow_call_duration_threshold(Duration::from_millis(ms));
    }
    if let Some(n) = c.consecutive {
        b = b.consecutive_failure_threshold(n);
    }
    if let Some((n, ms)) = c.count {
        b = b.failure_count_threshold(n, Duration::from_millis(ms));
    }
    if let Some(ms) = c.half_open_max_ms {
        b = b.max_wait_duration_in_half_open_state(Duration::from_millis(ms));
    }
    b.build()
        .expect("the strategy only makes valid configurations")
}

/// The reference: resilience4j's rules (plus the absolute thresholds) written as
/// plainly as possible. Times in milliseconds.
#[derive(Debug)]
struct Model {
    c: Config,
    state: State,
    /// Closed: every recorded outcome as (time ms, failed, slow); the window is the
    /// last `size` of them, or those of the last `size` seconds.
    records: Vec<(u64, bool, bool)>,
    probes: Vec<(bool, bool)>,
    available_probes: u32,
    consecutive: u32,
    failure_times: VecDeque<u64>,
    trips: u32,
    open_until: u64,
    half_open_since: u64,
}

impl Model {
    fn new(c: Config) -> Self {
        Self {
            c,
            state: State::Closed,
            records: Vec::new(),
            probes: Vec::new(),
            available_probes: 0,
            consecutive: 0,
            failure_times: VecDeque::new(),
            trips: 0,
            open_until: 0,
            half_open_since: 0,
        }
    }

    /// (calls, failed, slow) in the closed window at `now`.
    fn window(&self, now: u64) -> (u64, u64, u64) {
        let in_window: Vec<_> = if self.c.time_based {
            let second = now / 1000;
            self.records
                .iter()
                .filter(|(t, _, _)| t / 1000 + u64::from(self.c.size) > second)
                .collect()
        } else {
            self.records
                .iter()
                .rev()
                .take(self.c.size as usize)
                .collect()
        };
        let failed = in_window.iter().filter(|r| r.1).count() as u64;
        let slow = in_window.iter().filter(|r| r.2).count() as u64;
        (in_window.len() as u64, failed, slow)
    }

    fn rates_trip(&self, (calls, failed, slow): (u64, u64, u64), minimum: u64) -> bool {
        calls >= minimum
            && (failed as f64 / calls as f64 >= self.c.failure_rate
                || self
                    .c
                    .slow
                    .is_some_and(|(rate, _)| slow as f64 / calls as f64 >= rate))
    }

    fn absolute_trip(&mut self, failed: bool, now: u64) -> bool {
        if !failed {
            self.consecutive = 0;
            return false;
        }
        self.consecutive += 1;
        let consecutive = self.c.consecutive.is_some_and(|n| self.consecutive >= n);
        let mut count = false;
        if let Some((n, window)) = self.c.count {
            self.failure_times.push_back(now);
            if self.failure_times.len() > n as usize {
                self.failure_times.pop_front();
            }
            count = self.failure_times.len() == n as usize && now - self.failure_times[0] < window;
        }
        consecutive || count
    }

    fn enter(&mut self, state: State, now: u64) {
        self.state = state;
        self.consecutive = 0;
        self.failure_times.clear();
        match state {
            State::Closed => {
                self.records.clear();
                self.trips = 0;
            }
            State::Open => {
                let grown = self.c.wait_ms as f64 * self.c.multiplier.powi(self.trips as i32);
                let wait = (grown as u64).min(self.c.max_wait_ms);
                self.trips += 1;
                self.open_until = now + wait;
            }
            State::HalfOpen => {
                self.probes.clear();
                self.available_probes = self.c.probes;
                self.half_open_since = now;
            }
            _ => unreachable!("the model makes no manual changes"),
        }
    }

    fn half_open_expired(&self, now: u64) -> bool {
        self.c
            .half_open_max_ms
            .is_some_and(|max| now >= self.half_open_since + max)
    }

    /// Reading the state applies a half-open timeout that is due.
    fn observe(&mut self, now: u64) -> State {
        if self.state == State::HalfOpen && self.half_open_expired(now) {
            self.enter(State::Open, now);
        }
        self.state
    }

    /// Asks to make a call at `now`: admitted as closed (false) or as a probe (true).
    fn acquire(&mut self, now: u64) -> Option<bool> {
        loop {
            match self.state {
                State::Closed => return Some(false),
                State::Open if now >= self.open_until => self.enter(State::HalfOpen, now),
                State::Open => return None,
                State::HalfOpen if self.half_open_expired(now) => self.enter(State::Open, now),
                State::HalfOpen if self.available_probes == 0 => return None,
                State::HalfOpen => {
                    self.available_probes -= 1;
                    return Some(true);
                }
                _ => unreachable!(),
            }
        }
    }

    fn record(&mut self, probe: bool, failed: bool, slow: bool, now: u64) {
        if probe {
            if self.state != State::HalfOpen {
                return;
            }
            if self.half_open_expired(now) {
                self.enter(State::Open, now);
                return;
            }
            self.probes.push((failed, slow));
            let calls = self.probes.len() as u64;
            let f = self.probes.iter().filter(|p| p.0).count() as u64;
            let s = self.probes.iter().filter(|p| p.1).count() as u64;
            // resilience4j's half-open window: the permitted probes, judged from
            // min(minimum, permitted) calls on.
            let judged = u64::from(self.c.minimum.min(self.c.probes));
            let rates = self.rates_trip((calls, f, s), judged);
            let absolute = self.absolute_trip(failed, now);
            if rates || absolute {
                self.enter(State::Open, now);
            } else if calls >= judged {
                self.enter(State::Closed, now);
            }
        } else {
            if self.state != State::Closed {
                return;
            }
            self.records.push((now, failed, slow));
            let minimum = if self.c.time_based {
                self.c.minimum
            } else {
                self.c.minimum.min(self.c.size)
            };
            let rates = self.rates_trip(self.window(now), u64::from(minimum));
            let absolute = self.absolute_trip(failed, now);
            if rates || absolute {
                self.enter(State::Open, now);
            }
        }
    }

    fn release(&mut self, probe: bool) {
        if probe && self.state == State::HalfOpen {
            self.available_probes += 1;
        }
    }
}

fn now_ms(clock: &ManualClock) -> u64 {
    clock.now().as_nanos() / 1_000_000
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: if cfg!(miri) { 4 } else { 512 },
        ..ProptestConfig::default()
    })]

    #[test]
    fn breaker_follows_the_reference_model(
        c in config(),
        ops in prop::collection::vec(op(), 1..if cfg!(miri) { 20 } else { 120 }),
    ) {
        let clock = ManualClock::new();
        let breaker = build(&c, &clock);
        let mut model = Model::new(c.clone());
        for (i, op) in ops.iter().enumerate() {
            match *op {
                Op::Advance(ms) => {
                    clock.advance(Duration::from_millis(ms));
                }
                Op::Ok(ms) | Op::Fail(ms) => {
                    let failed = matches!(op, Op::Fail(_));
                    let admitted = model.acquire(now_ms(&clock));
                    let result = breaker.call(|| {
                        clock.advance(Duration::from_millis(ms));
                        if failed { Err("down") } else { Ok(()) }
                    });
                    prop_assert_eq!(admitted.is_none(), matches!(&result, Err(e) if e.is_rejected()),
                        "op {} {:?}: admission differs", i, op);
                    if let Some(probe) = admitted {
                        let slow = c.slow.is_some_and(|(_, limit)| ms > limit);
                        model.record(probe, failed, slow, now_ms(&clock));
                    }
                }
                Op::Ignored => {
                    let admitted = model.acquire(now_ms(&clock));
                    let result = breaker.call_with(|_| Verdict::Ignore, || Err::<(), _>("no"));
                    prop_assert_eq!(admitted.is_none(), matches!(&result, Err(e) if e.is_rejected()),
                        "op {} {:?}: admission differs", i, op);
                    if let Some(probe) = admitted {
                        model.release(probe);
                    }
                }
            }
            let expected = model.observe(now_ms(&clock));
            prop_assert_eq!(breaker.state(), expected, "after op {} {:?}; model {:?}", i, op, model);
        }
        let stats = breaker.stats();
        let now = now_ms(&clock);
        match model.observe(now) {
            State::Closed => {
                let (calls, failed, slow) = model.window(now);
                prop_assert_eq!((stats.calls, stats.failed_calls, stats.slow_calls), (calls, failed, slow));
            }
            State::HalfOpen => {
                prop_assert_eq!(stats.calls, model.probes.len() as u64);
                prop_assert_eq!(stats.available_probes, Some(model.available_probes));
            }
            _ => {}
        }
        prop_assert_eq!(stats.consecutive_trips, model.trips);
    }
}
