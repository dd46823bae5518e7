//! The registry: one breaker per key, defaults and overrides, a bound.
#![cfg(not(loom))]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use heijunka_breaker::{BreakerConfig, BreakerRegistry, RegistryFull, SlidingWindowType, State};
use heijunka_core::ManualClock;

fn config(window: u32) -> BreakerConfig {
    BreakerConfig::builder()
        .sliding_window(SlidingWindowType::CountBased, window)
        .build_config()
        .unwrap()
}

#[test]
fn one_breaker_per_key_with_overrides() {
    let clock = ManualClock::new();
    let registry = BreakerRegistry::builder(config(10))
        .config_for("flaky".to_string(), config(2))
        .clock(&clock)
        .build()
        .unwrap();
    let flaky = registry.get("flaky").unwrap();
    let steady = registry.get("steady").unwrap();
    for _ in 0..2 {
        let _ = flaky.call(|| Err::<(), _>(()));
        let _ = steady.call(|| Err::<(), _>(()));
    }
    assert_eq!(flaky.state(), State::Open, "window of 2 from the override");
    assert_eq!(
        steady.state(),
        State::Closed,
        "window of 10 from the default"
    );
    // The same key gives the same breaker.
    assert_eq!(registry.get("flaky").unwrap().state(), State::Open);
    assert_eq!(registry.find("steady").unwrap().stats().failed_calls, 2);
    assert!(registry.find("unknown").is_none());
    // The registry's clock drives every breaker.
    clock.advance(Duration::from_secs(60));
    assert!(flaky.call(|| Ok::<_, ()>(())).is_ok());
    assert_eq!(flaky.state(), State::HalfOpen);
}

#[test]
fn bounded_and_removable() {
    let registry: BreakerRegistry<u32> = BreakerRegistry::builder(config(10))
        .capacity(2)
        .clock(ManualClock::new())
        .build()
        .unwrap();
    registry.get(&1).unwrap();
    registry.get(&2).unwrap();
    assert_eq!(registry.get(&3).unwrap_err(), RegistryFull { capacity: 2 });
    assert!(registry.get(&1).is_ok(), "existing keys still resolve");
    assert!(registry.remove(&1).is_some());
    assert!(registry.get(&3).is_ok());
    assert_eq!(registry.len(), 2);
    let names: Vec<_> = registry.stats().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["2", "3"]);
    let err = BreakerRegistry::<u32>::builder(config(1))
        .capacity(0)
        .build()
        .unwrap_err();
    assert_eq!(err.to_string(), "capacity must be at least 1, got 0");
}

#[test]
fn registry_listeners_hear_every_breaker() {
    let heard = Arc::new(Mutex::new(Vec::new()));
    let sink = heard.clone();
    let registry = BreakerRegistry::builder(config(1))
        .clock(ManualClock::new())
        .on_state_change(move |t| sink.lock().unwrap().push((t.breaker.clone(), t.to)))
        .build()
        .unwrap();
    let _ = registry.get("a").unwrap().call(|| Err::<(), _>(()));
    let _ = registry.get("b").unwrap().call(|| Err::<(), _>(()));
    assert_eq!(
        *heard.lock().unwrap(),
        [
            ("a".to_string(), State::Open),
            ("b".to_string(), State::Open)
        ]
    );
}

#[test]
fn concurrent_first_use_creates_one_breaker() {
    let registry = Arc::new(
        BreakerRegistry::builder(config(100))
            .clock(ManualClock::new())
            .build()
            .unwrap(),
    );
    let threads = if cfg!(miri) { 2 } else { 8 };
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let registry = registry.clone();
            std::thread::spawn(move || {
                registry
                    .get("shared")
                    .unwrap()
                    .call(|| Ok::<_, ()>(()))
                    .unwrap();
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(registry.len(), 1);
    // Every thread's call landed in the same breaker.
    assert_eq!(registry.get("shared").unwrap().stats().calls, threads);
}
