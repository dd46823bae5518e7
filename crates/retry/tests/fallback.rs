//! Fallback from the caller's side, and the tower layers end to end.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use heijunka_breaker::CircuitBreaker;
use heijunka_core::cancel::Polled;
use heijunka_core::{ManualClock, Rejection};
use heijunka_retry::{FailureInfo, Fallback};

mod support;
use support::Guard;

#[tokio::test]
async fn a_value_a_function_or_another_service() {
    let v = Fallback::value(7);
    assert_eq!(v.call(async { Err::<i32, _>("down") }).await, Ok(7));
    assert_eq!(v.call(async { Ok::<_, &str>(1) }).await, Ok(1));
    let f = Fallback::from_fn(|e: &str| e.len());
    assert_eq!(f.call(async { Err("four") }).await, Ok(4));
    let secondary = Fallback::from_async(|e: String| async move {
        if e == "region down" {
            Ok("from the secondary")
        } else {
            Err(e)
        }
    });
    assert_eq!(
        secondary
            .call(async { Err("region down".to_string()) })
            .await,
        Ok("from the secondary")
    );
    assert_eq!(
        secondary
            .call(async { Err("bad request".to_string()) })
            .await,
        Err("bad request".to_string())
    );
    assert_eq!(secondary.stats().fallback_failed, 1);
}

#[tokio::test]
async fn only_the_errors_asked_for_fall_back() {
    let f = Fallback::value(0).when(|e: &&str| *e != "bad request");
    assert_eq!(f.call(async { Err("timeout") }).await, Ok(0));
    assert_eq!(
        f.call(async { Err("bad request") }).await,
        Err("bad request")
    );
    let s = f.stats();
    assert_eq!((s.fallbacks, s.passed_through), (1, 1));
}

#[tokio::test]
async fn the_fallback_sees_the_stage_and_the_reason() {
    let breaker = CircuitBreaker::builder()
        .clock(ManualClock::new())
        .build()
        .unwrap();
    breaker.force_open();
    let seen = Arc::new(std::sync::Mutex::new(None));
    let f = {
        let seen = seen.clone();
        Fallback::from_fn(move |e: heijunka_breaker::CallError<std::io::Error>| {
            *seen.lock().unwrap() = Some((e.stage(), e.rejection()));
            "cached"
        })
    };
    let r = f
        .call(breaker.call_async(async { Ok::<_, std::io::Error>("live") }))
        .await;
    assert_eq!(r.ok(), Some("cached"));
    let (stage, reason) = seen.lock().unwrap().take().unwrap();
    assert_eq!(stage, Some("breaker"));
    assert!(matches!(reason, Some(Rejection::CircuitOpen { .. })));
}

#[tokio::test(start_paused = true)]
async fn a_dropped_fallback_drops_what_it_runs() {
    let dropped = Arc::new(AtomicUsize::new(0));
    let f = {
        let dropped = dropped.clone();
        Fallback::from_async(move |_: ()| {
            let g = Guard(dropped.clone());
            async move {
                let _g = g;
                tokio::time::sleep(Duration::from_secs(1)).await;
                Ok(1)
            }
        })
    };
    for k in 0..3 {
        dropped.store(0, Ordering::Relaxed);
        let g = Guard(dropped.clone());
        let out = Polled::new(f.call(async move {
            let _g = g;
            tokio::task::yield_now().await;
            Err(())
        }))
        .drop_after(k);
        assert!(!out.is_completed());
        // The call's future, and the fallback's once it started.
        let expected = if k >= 2 { 2 } else { 1 };
        assert_eq!(dropped.load(Ordering::Relaxed), expected, "k = {k}");
    }
}
