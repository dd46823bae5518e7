//! The tower layers end to end: each wraps a real service and the service
//! counts its own calls.
#![cfg(feature = "tower")]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use heijunka_retry::tower::{CoalesceLayer, FallbackLayer, HedgeLayer, RetryLayer};
use heijunka_retry::{
    Backoff, CallOptions, Coalesce, Fallback, Hedge, HedgeDelay, Retry, RetryError, Stop,
};
use tower::{Layer, Service, ServiceExt, service_fn};

const MS: fn(u64) -> Duration = Duration::from_millis;

#[tokio::test(start_paused = true)]
async fn retry_layer_reads_idempotency_from_the_request() {
    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    let svc = service_fn(move |req: (&'static str, u32)| {
        seen.fetch_add(1, Ordering::Relaxed);
        async move { Err::<u32, _>(req.0) }
    });
    let retry = Retry::builder()
        .backoff(Backoff::constant(MS(1)))
        .build()
        .unwrap();
    let mut svc = RetryLayer::new(retry)
        .options(|req: &(&'static str, u32)| CallOptions::new().idempotent(req.0 == "GET"))
        .layer(svc);
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(("GET", 1))
        .await
        .unwrap_err();
    assert_eq!(err.stop(), Some(Stop::AttemptsExhausted));
    assert_eq!(calls.swap(0, Ordering::Relaxed), 3);
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(("POST", 1))
        .await
        .unwrap_err();
    assert_eq!(err.stop(), Some(Stop::NotIdempotent));
    assert_eq!(calls.load(Ordering::Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn hedge_layer_takes_the_first_answer() {
    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    let svc = service_fn(move |_: ()| {
        let n = seen.fetch_add(1, Ordering::Relaxed);
        async move {
            tokio::time::sleep(if n == 0 { MS(1000) } else { MS(5) }).await;
            Ok::<_, ()>(n)
        }
    });
    let hedge = Hedge::builder()
        .delay(HedgeDelay::Fixed(MS(20)))
        .idempotent(true)
        .build()
        .unwrap();
    let mut svc = HedgeLayer::new(hedge).layer(svc);
    let start = tokio::time::Instant::now();
    assert_eq!(svc.ready().await.unwrap().call(()).await.unwrap(), 1);
    assert_eq!(start.elapsed(), MS(25));
}

#[tokio::test(start_paused = true)]
async fn fallback_outside_retry_answers_when_attempts_run_out() {
    let svc = service_fn(|_: ()| async { Err::<&str, _>("down") });
    let retry = Retry::builder()
        .idempotent(true)
        .backoff(Backoff::None)
        .build()
        .unwrap();
    let fallback = Fallback::from_fn(|e: RetryError<&str>| {
        assert_eq!(e.attempts(), 3);
        "stale"
    });
    let mut svc = FallbackLayer::new(fallback).layer(RetryLayer::new(retry).layer(svc));
    assert_eq!(svc.ready().await.unwrap().call(()).await, Ok("stale"));
}

#[tokio::test(start_paused = true)]
async fn coalesce_layer_shares_calls_by_key() {
    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    let svc = service_fn(move |key: u32| {
        seen.fetch_add(1, Ordering::Relaxed);
        async move {
            tokio::time::sleep(MS(10)).await;
            Ok::<_, ()>(key * 10)
        }
    });
    let layer = CoalesceLayer::new(Coalesce::new(), |k: &u32| *k);
    let svc = layer.layer(svc);
    let futs: Vec<_> = (0..20)
        .map(|i| tokio::spawn(svc.clone().oneshot(i % 2)))
        .collect();
    let mut out = Vec::new();
    for f in futs {
        out.push(f.await.unwrap().unwrap());
    }
    assert_eq!(calls.load(Ordering::Relaxed), 2);
    assert_eq!(out.iter().filter(|v| **v == 10).count(), 10);
}

#[tokio::test(start_paused = true)]
async fn fallback_to_another_service_resends_the_request() {
    use heijunka_retry::tower::FallbackToLayer;
    let secondary_calls = Arc::new(AtomicU32::new(0));
    let seen = secondary_calls.clone();
    let secondary = service_fn(move |req: u32| {
        seen.fetch_add(1, Ordering::Relaxed);
        async move { Ok::<_, &'static str>(req + 1000) }
    });
    let primary = service_fn(|req: u32| async move {
        match req {
            0 => Err("bad request"),
            1 => Err("unavailable"),
            n => Ok(n),
        }
    });
    let mut svc = FallbackToLayer::new(secondary)
        .when(|e: &&str| *e == "unavailable")
        .layer(primary);
    assert_eq!(svc.ready().await.unwrap().call(2).await, Ok(2));
    assert_eq!(svc.ready().await.unwrap().call(1).await, Ok(1001));
    assert_eq!(svc.ready().await.unwrap().call(0).await, Err("bad request"));
    assert_eq!(secondary_calls.load(Ordering::Relaxed), 1);
}
