//! Chaos for tests: a rehearsed outage through the tower layer, and a dropped
//! injected call.
#![cfg(feature = "chaos")]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use heijunka_core::ManualClock;
use heijunka_core::cancel::Polled;
use heijunka_retry::chaos::Chaos;

mod support;
use support::Guard;

#[cfg(feature = "tower")]
#[tokio::test(start_paused = true)]
async fn the_layer_rehearses_an_outage_with_latency() {
    use heijunka_retry::tower::ChaosLayer;
    use tower::{Layer, Service, ServiceExt, service_fn};
    let clock = ManualClock::new();
    let chaos = Chaos::builder(42)
        .clock(&clock)
        .latency(1.0, Duration::from_millis(5), Duration::from_millis(5))
        .outage(Duration::from_secs(10), Duration::from_secs(5))
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let mut svc = ChaosLayer::new(chaos.clone(), || "injected").layer(service_fn(move |r: u8| {
        seen.fetch_add(1, Ordering::Relaxed);
        async move { Ok::<_, &str>(r) }
    }));
    let start = tokio::time::Instant::now();
    assert_eq!(svc.ready().await.unwrap().call(1).await, Ok(1));
    assert_eq!(
        start.elapsed(),
        Duration::from_millis(5),
        "the injected latency"
    );
    clock.advance(Duration::from_secs(10));
    assert_eq!(svc.ready().await.unwrap().call(2).await, Err("injected"));
    assert_eq!(
        calls.load(Ordering::Relaxed),
        1,
        "the outage never reaches the service"
    );
    clock.advance(Duration::from_secs(5));
    assert_eq!(svc.ready().await.unwrap().call(3).await, Ok(3));
    let s = chaos.stats();
    assert_eq!((s.calls, s.errors, s.delays), (3, 1, 3));
}

#[tokio::test(start_paused = true)]
async fn a_dropped_injected_call_drops_the_call() {
    let chaos = Chaos::builder(1)
        .clock(ManualClock::new())
        .latency(1.0, Duration::from_millis(10), Duration::from_millis(10))
        .build()
        .unwrap();
    let dropped = Arc::new(AtomicUsize::new(0));
    for k in 0..3 {
        dropped.store(0, Ordering::Relaxed);
        let g = Guard(dropped.clone());
        let out = Polled::new(chaos.call(|| (), async move {
            let _g = g;
            Ok::<_, ()>(())
        }))
        .drop_after(k);
        assert!(!out.is_completed(), "still in the injected delay");
        assert_eq!(dropped.load(Ordering::Relaxed), 1, "k = {k}");
    }
}
