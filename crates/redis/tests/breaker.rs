//! Shared breaker state through Redis pub/sub: one replica's trip opens the
//! others, each still probes on its own schedule, events carry the replica id,
//! and nothing echoes.

mod support;

use std::time::{Duration, Instant};

use heijunka_breaker::{CircuitBreaker, State, TransitionReason};
use heijunka_core::ManualClock;
use heijunka_redis::SharedBreaker;

fn breaker(clock: &ManualClock, wait: Duration) -> CircuitBreaker {
    CircuitBreaker::builder()
        .name("payments")
        .consecutive_failure_threshold(2)
        .wait_duration_in_open_state(wait)
        .clock(clock)
        .build()
        .unwrap()
}

async fn until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(3);
    while !ok() {
        assert!(Instant::now() < deadline, "{what}: not within 3 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replicas_trip_opens_the_others_which_probe_on_their_own() {
    let server = support::server();
    let (clock_a, clock_b, clock_c) = (ManualClock::new(), ManualClock::new(), ManualClock::new());
    let a = breaker(&clock_a, Duration::from_secs(10));
    let b = breaker(&clock_b, Duration::from_secs(30));
    let c = breaker(&clock_c, Duration::from_secs(30));
    let shared_a = SharedBreaker::new(support::backend(&server, "replica-a"), a.clone());
    let shared_b = SharedBreaker::new(support::backend(&server, "replica-b"), b.clone());
    let shared_c = SharedBreaker::new(support::backend(&server, "replica-c"), c.clone());
    until("subscribed", || {
        shared_a.is_subscribed() && shared_b.is_subscribed() && shared_c.is_subscribed()
    })
    .await;
    let seen_by_b = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = std::sync::Arc::clone(&seen_by_b);
    b.subscribe(move |t| seen.lock().unwrap().push((t.from, t.to, t.reason)));

    // A sees two failures and trips.
    for _ in 0..2 {
        a.try_acquire().unwrap().failure();
    }
    assert_eq!(a.state(), State::Open);
    until("B and C open", || {
        b.state() == State::Open && c.state() == State::Open
    })
    .await;
    assert_eq!(
        seen_by_b.lock().unwrap().as_slice(),
        [(State::Closed, State::Open, TransitionReason::Manual)]
    );
    let from = shared_b
        .stats()
        .last_from
        .expect("the trip, with who sent it");
    assert_eq!(
        (from.replica.as_str(), from.breaker.as_str()),
        ("replica-a", "payments")
    );
    assert!(
        from.reason.contains("2 consecutive failures"),
        "{}",
        from.reason
    );
    until("published", || shared_a.stats().published == 1).await;

    // B probes on its own schedule (its own 30 s wait), not A's 10 s.
    clock_b.advance(Duration::from_secs(10));
    assert!(b.try_acquire().is_err(), "still open after A's wait");
    clock_b.advance(Duration::from_secs(20));
    let probe = b.try_acquire().expect("a probe after its own wait");
    assert_eq!(b.state(), State::HalfOpen);
    probe.success();

    // No echo: B and C opening did not announce anything, and A heard nobody.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(shared_b.stats().published, 0);
    assert_eq!(shared_c.stats().published, 0);
    assert_eq!(
        shared_a.stats().received,
        0,
        "A ignores its own announcement"
    );
    assert_eq!((shared_b.stats().applied, shared_c.stats().applied), (1, 1));
}

/// A replica whose breaker is not closed (probing, or forced open by an
/// operator) keeps its own state when another trips.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breaker_that_is_not_closed_keeps_its_state() {
    let server = support::server();
    let (clock_a, clock_b) = (ManualClock::new(), ManualClock::new());
    let a = breaker(&clock_a, Duration::from_secs(10));
    let b = breaker(&clock_b, Duration::from_secs(10));
    let shared_a = SharedBreaker::new(support::backend(&server, "replica-a"), a.clone());
    let shared_b = SharedBreaker::new(support::backend(&server, "replica-b"), b.clone());
    until("subscribed", || {
        shared_a.is_subscribed() && shared_b.is_subscribed()
    })
    .await;
    b.force_open();
    for _ in 0..2 {
        a.try_acquire().unwrap().failure();
    }
    until("B heard it", || shared_b.stats().received == 1).await;
    assert_eq!(b.state(), State::ForcedOpen);
    assert_eq!(shared_b.stats().applied, 0);
}

/// Dropping the `SharedBreaker` stops sharing: the breaker goes on alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_share_stops_it() {
    let server = support::server();
    let (clock_a, clock_b) = (ManualClock::new(), ManualClock::new());
    let a = breaker(&clock_a, Duration::from_secs(10));
    let b = breaker(&clock_b, Duration::from_secs(10));
    let shared_a = SharedBreaker::new(support::backend(&server, "replica-a"), a.clone());
    let shared_b = SharedBreaker::new(support::backend(&server, "replica-b"), b.clone());
    until("subscribed", || {
        shared_a.is_subscribed() && shared_b.is_subscribed()
    })
    .await;
    drop(shared_b);
    for _ in 0..2 {
        a.try_acquire().unwrap().failure();
    }
    until("published", || shared_a.stats().published == 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(b.state(), State::Closed);
}
