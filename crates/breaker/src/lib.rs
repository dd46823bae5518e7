//! Circuit breakers: stop calling a failing dependency, probe it after a wait, and
//! let calls through again once it recovers, with resilience4j's state machine and
//! configuration at a few nanoseconds per closed-state call.
//!
//! ```
//! use heijunka_breaker::{CallError, CircuitBreaker, SlidingWindowType, State};
//! use heijunka_core::ManualClock;
//! use std::time::Duration;
//!
//! let clock = ManualClock::new();
//! let breaker = CircuitBreaker::builder()
//!     .name("inventory")
//!     .sliding_window(SlidingWindowType::CountBased, 10)
//!     .minimum_number_of_calls(10)
//!     .failure_rate_threshold(0.5)
//!     .wait_duration_in_open_state(Duration::from_secs(5))
//!     .permitted_number_of_calls_in_half_open_state(2)
//!     .clock(&clock)
//!     .build()?;
//!
//! let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
//! let seen = log.clone();
//! breaker.subscribe(move |t| seen.lock().unwrap().push((t.from, t.to)));
//!
//! // 5 of 10 calls fail: the failure rate reaches 50 % and the breaker opens.
//! for i in 0..10 {
//!     let _ = breaker.call(|| if i % 2 == 0 { Ok(()) } else { Err("503") });
//! }
//! assert_eq!(breaker.state(), State::Open);
//! let rejected = breaker.call(|| Ok::<_, &str>(())).unwrap_err();
//! assert!(matches!(rejected, CallError::Rejected(r) if r.retry_after() == Some(Duration::from_secs(5))));
//!
//! // After the wait, two probes pass; both succeed, so it closes.
//! clock.advance(Duration::from_secs(5));
//! for _ in 0..2 {
//!     breaker.call(|| Ok::<_, &str>(())).unwrap();
//! }
//! assert_eq!(breaker.state(), State::Closed);
//! assert_eq!(
//!     *log.lock().unwrap(),
//!     [
//!         (State::Closed, State::Open),
//!         (State::Open, State::HalfOpen),
//!         (State::HalfOpen, State::Closed),
//!     ]
//! );
//! # Ok::<(), heijunka_core::ConfigError>(())
//! ```
//!
//! # States
//!
//! A [`CircuitBreaker`] is [`Closed`](State::Closed) (calls pass, outcomes are
//! recorded), [`Open`](State::Open) (calls are rejected with
//! [`Rejection::CircuitOpen`](heijunka_core::Rejection::CircuitOpen) and the time
//! until the next probe), or [`HalfOpen`](State::HalfOpen) (exactly
//! `permitted_number_of_calls_in_half_open_state` probes pass; once
//! `min(minimum_number_of_calls, permitted_number_of_calls_in_half_open_state)` of
//! them have completed, as in resilience4j, the breaker closes if their rates are
//! below the thresholds and opens again otherwise). Operators override it with
//! [`force_open`](CircuitBreaker::force_open), [`disable`](CircuitBreaker::disable)
//! and [`metrics_only`](CircuitBreaker::metrics_only) (record, never trip), move
//! it by hand as resilience4j's `transitionTo…State` do
//! ([`transition_to_open`](CircuitBreaker::transition_to_open), also
//! [`_for`](CircuitBreaker::transition_to_open_for) a duration or
//! [`_until`](CircuitBreaker::transition_to_open_until) an instant;
//! [`transition_to_half_open`](CircuitBreaker::transition_to_half_open);
//! [`transition_to_closed`](CircuitBreaker::transition_to_closed)), and return it
//! to normal with [`reset`](CircuitBreaker::reset). A breaker may also start open or
//! metrics-only ([`initial_state`](BreakerBuilder::initial_state)). Every change of
//! state, and only a change, goes to [`subscribe`](CircuitBreaker::subscribe)d
//! listeners as a [`StateTransition`] (from, to, [`TransitionReason`], time) and to
//! `tracing` (`warn` when it opens); [`subscribe_events`](CircuitBreaker::subscribe_events)
//! also gets each reset as a [`BreakerEvent::Reset`] (resilience4j's reset event).
//!
//! # What trips it
//!
//! Any configured threshold, checked after every recorded call, as resilience4j does
//! ([`BreakerBuilder`] has the settings and defaults):
//!
//! - the **failure rate** over the sliding window (default 50 %), and, with slow-call
//!   detection on, the **slow-call rate** (default 100 % of calls longer than 60 s),
//!   judged once the window holds `minimum_number_of_calls` calls; the window is the
//!   last N calls ([`SlidingWindowType::CountBased`], default 100) or the last N
//!   seconds in one-second buckets ([`SlidingWindowType::TimeBased`]);
//! - **consecutive failures** (like the seeds' `max_failures`), and **failures per
//!   time window** ("5 failures a minute", whatever succeeded meanwhile), which
//!   resilience4j lacks.
//!
//! Classifiers set once in the builder
//! ([`classify_errors`](BreakerBuilder::classify_errors),
//! [`classify_results`](BreakerBuilder::classify_results)), or passed to
//! [`call_with`](CircuitBreaker::call_with) for one call, decide whether an
//! error (or an `Ok` result) is a [`Verdict::Failure`], [`Verdict::Ignore`]d or a [`Verdict::Success`];
//! a panic in a guarded call is a failure, and keeps unwinding.
//!
//! # Open and half-open
//!
//! The wait in open state (default 60 s) may grow on repeated trips (exponentially,
//! with a cap) and be jittered so that replicas that tripped together do not probe
//! together. The move to half-open happens on the first call after the wait, or by
//! itself ([`automatic_transition_to_half_open`](BreakerBuilder::automatic_transition_to_half_open)).
//! A maximum wait in half-open re-opens a breaker whose probes hang (or closes it:
//! [`transition_to_state_after_wait_duration`](BreakerBuilder::transition_to_state_after_wait_duration)).
//!
//! While open, calls are rejected by the coarse clock
//! ([`Clock::recent`](heijunka_core::Clock::recent)): on a manual clock that is the
//! exact time; on the system clock it is a sample taken by one process-wide thread
//! every [`COARSE_TICK`](heijunka_core::COARSE_TICK) while at least one breaker is
//! open (it parks when none is); a rejection reads no clock. One call in
//! [`COARSE_CHECK_EVERY`](heijunka_core::COARSE_CHECK_EVERY) on each thread checks
//! the sample against the precise clock and replaces one older than
//! [`COARSE_STALE_AFTER`](heijunka_core::COARSE_STALE_AFTER). So the first call
//! admitted after the wait may come up to that much later (more only while the
//! ticker is starved of CPU, for at most that many calls a thread), and a
//! rejection's retry-after errs long by as much.
//!
//! # Calling through it
//!
//! [`call`](CircuitBreaker::call) and [`call_with`](CircuitBreaker::call_with) wrap a
//! closure; [`call_async`](CircuitBreaker::call_async) a future (any runtime);
//! [`try_acquire`](CircuitBreaker::try_acquire) gives a [`Permit`] for code that
//! cannot be wrapped: it records [`success`](Permit::success),
//! [`failure`](Permit::failure) or nothing ([`ignore`](Permit::ignore)); dropped
//! without an outcome it records nothing, or a failure under
//! [`PermitDrop::RecordFailure`], and always a failure during a panic.
//!
//! # Cost
//!
//! A closed breaker admits a call with one atomic load. A success is recorded with
//! nothing more while the window is full of successes, and otherwise with one
//! compare-and-swap on the calling thread's shard (one cache line per CPU) and a
//! second load of the control word: no lock, no
//! allocation, and no clock read unless a time-based window or slow-call detection
//! needs the time. Failures, slow calls and probes are recorded under a lock, in the
//! exact window, after the shards are folded into it (so are the stats, when read).
//! So a single thread's outcomes reach the window exactly in order, and threads do
//! not contend while the dependency is healthy. `docs/benchmarks.md` compares it with
//! the `failsafe` crate.
//!
//! # Many dependencies
//!
//! A [`BreakerRegistry`] holds one breaker per key, from a default configuration and
//! per-key overrides, up to a capacity.
//!
//! ## Metrics
//!
//! With the `metrics` feature, each breaker emits its state (a gauge, one number
//! per [`State`]), its transitions by `from` and `to`, its calls by outcome
//! (`success`, `failure`, `slow_success`, `slow_failure`, `ignored`) and its
//! rejections through the [`metrics`](https://docs.rs/metrics) facade, labelled with
//! its [`name`](BreakerBuilder::name); the table is in `docs/metrics.md`. The
//! handles are registered when the breaker is built (install the recorder first),
//! every transition pair's up front. Each outcome then costs one atomic add on
//! the recorder's counter, shared by every thread (the one shared write the
//! closed path otherwise avoids); without the feature, nothing.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![doc(test(
    no_crate_inject,
    attr(deny(warnings), allow(dead_code, unused_variables))
))]

use heijunka_core::sync;

mod breaker;
mod classify;
mod config;
mod error;
mod events;
mod machine;
mod metrics;
mod permit;
mod registry;
mod shards;
mod state;
mod stats;
#[cfg(not(loom))]
mod timer;
mod window;

pub use crate::{
    breaker::CircuitBreaker,
    config::{
        BreakerBuilder, BreakerConfig, DEFAULT_FAILURE_RATE_THRESHOLD,
        DEFAULT_MINIMUM_NUMBER_OF_CALLS, DEFAULT_PERMITTED_NUMBER_OF_CALLS_IN_HALF_OPEN_STATE,
        DEFAULT_SLIDING_WINDOW_SIZE, DEFAULT_SLOW_CALL_DURATION_THRESHOLD,
        DEFAULT_SLOW_CALL_RATE_THRESHOLD, DEFAULT_WAIT_DURATION_IN_OPEN_STATE,
        MAX_COUNT_WINDOW_SIZE, MAX_TIME_WINDOW_SECONDS, PermitDrop, SlidingWindowType,
    },
    error::{CallError, IllegalTransition, RegistryFull, Rejected},
    events::{BreakerEvent, BreakerReset, LISTENER_QUEUE_CAPACITY, SubscriptionId},
    permit::{OwnedPermit, Permit, Verdict},
    registry::{BreakerRegistry, DEFAULT_REGISTRY_CAPACITY, RegistryBuilder},
    state::{State, StateTransition, TransitionReason},
    stats::{BreakerStats, RejectedCalls},
};
