//! Request coalescing: one call for concurrent identical requests, a call that
//! outlives its first caller, bounded keys and waiters. The loads are counted
//! inside the shared futures.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use heijunka_core::cancel::Polled;
use heijunka_retry::{Coalesce, CoalesceError};
use tokio::sync::Notify;

struct Guard(Arc<AtomicUsize>);
impl Drop for Guard {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_identical_requests_make_one_call() {
    let c: Coalesce<u32, u64> = Coalesce::new();
    let loads = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Notify::new());
    const N: usize = 500;
    let mut tasks = Vec::new();
    for _ in 0..N {
        let (c, loads, gate) = (c.clone(), loads.clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            c.call(7, move || async move {
                loads.fetch_add(1, Ordering::Relaxed);
                gate.notified().await;
                99
            })
            .await
        }));
    }
    // Every caller has joined before the call may finish.
    while c.stats().calls < N as u64 {
        tokio::task::yield_now().await;
    }
    gate.notify_one();
    for t in tasks {
        assert_eq!(t.await.unwrap(), Ok(99));
    }
    assert_eq!(loads.load(Ordering::Relaxed), 1);
    let s = c.stats();
    assert_eq!(
        (s.flights, s.joined, s.keys_in_flight),
        (1, N as u64 - 1, 0)
    );
    // Done: the next call makes a new one.
    c.call(7, || async { 1 }).await.unwrap();
    assert_eq!(c.stats().flights, 2);
}

#[tokio::test(start_paused = true)]
async fn the_call_survives_its_first_caller() {
    let c: Coalesce<&str, u32> = Coalesce::new();
    let loads = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicUsize::new(0));
    let make = || {
        let loads = loads.clone();
        let g = Guard(dropped.clone());
        move || async move {
            let _g = g;
            loads.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(50)).await;
            5
        }
    };
    let mut leader = Polled::new(c.call("k", make()));
    assert!(!leader.poll(), "the leader starts the call and waits");
    let follower = tokio::spawn(c.call("k", make()));
    tokio::task::yield_now().await;
    drop(leader); // the leader's caller goes away mid-flight
    assert_eq!(
        dropped.load(Ordering::Relaxed),
        1,
        "the follower's unused closure"
    );
    assert_eq!(follower.await.unwrap(), Ok(5));
    assert_eq!(
        loads.load(Ordering::Relaxed),
        1,
        "one load, finished for the follower"
    );
    assert_eq!(dropped.load(Ordering::Relaxed), 2);
    assert_eq!(c.stats().keys_in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn the_last_caller_leaving_cancels_the_call() {
    let c: Coalesce<u8, ()> = Coalesce::new();
    let dropped = Arc::new(AtomicUsize::new(0));
    // Dropped by its only caller after k polls (k = 0: never polled), the
    // shared future is dropped with it and the key is free.
    for k in 0..4 {
        dropped.store(0, Ordering::Relaxed);
        let g = Guard(dropped.clone());
        let out = Polled::new(c.call(1, move || async move {
            let _g = g;
            std::future::pending::<()>().await;
        }))
        .drop_after(k);
        assert!(!out.is_completed());
        assert_eq!(dropped.load(Ordering::Relaxed), 1, "k = {k}");
        assert_eq!(c.stats().keys_in_flight, 0, "k = {k}");
    }
    assert_eq!(c.stats().abandoned, 4);
    // And a follower that leaves does not cancel the leader's call.
    let c: Coalesce<u8, u8> = Coalesce::new();
    let mut leader = Polled::new(c.call(2, || async { 3 }));
    let follower = Polled::new(c.call(2, || async { 4 }));
    drop(follower);
    assert!(leader.poll());
    assert_eq!(leader.take_output(), Some(Ok(3)));
}

#[tokio::test(start_paused = true)]
async fn keys_and_waiters_are_bounded() {
    let c: Coalesce<u32, u32> = Coalesce::with_limits(100, 3).unwrap();
    let mut pending = Vec::new();
    for key in 0..10_000u32 {
        let mut p = Polled::new(c.call(key, move || async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            key
        }));
        assert!(!p.poll());
        pending.push(p);
    }
    let s = c.stats();
    assert_eq!(s.keys_in_flight, 100);
    assert_eq!((s.flights, s.uncoalesced_keys_full), (100, 9_900));
    // A fourth caller of a key with three waiters runs on its own.
    for _ in 0..3 {
        let mut p = Polled::new(c.call(0, || async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            0
        }));
        assert!(!p.poll());
        pending.push(p);
    }
    assert_eq!(c.stats().uncoalesced_waiters_full, 1);
    drop(pending);
    assert_eq!(c.stats().keys_in_flight, 0);
}

#[test]
fn zero_bounds_are_refused_by_name() {
    let e = Coalesce::<u8, u8>::with_limits(0, 1).unwrap_err();
    assert_eq!(e.field(), "max_keys");
    let e = Coalesce::<u8, u8>::with_limits(1, 0).unwrap_err();
    assert_eq!(e.field(), "max_waiters");
}

#[tokio::test(start_paused = true)]
async fn a_panicking_call_fails_the_others_and_frees_the_key() {
    let c: Coalesce<u8, u8> = Coalesce::new();
    let mut follower = Polled::new(c.call(1, || async { 0 }));
    // The follower started the flight: make it the panicking one by joining a
    // leader that panics instead.
    drop(follower);
    let leader = tokio::spawn({
        let c = c.clone();
        async move {
            c.call(2, || async {
                tokio::time::sleep(Duration::from_millis(1)).await;
                panic!("boom")
            })
            .await
        }
    });
    tokio::task::yield_now().await;
    follower = Polled::new(c.call(2, || async { 0 }));
    assert!(!follower.poll());
    assert!(leader.await.is_err(), "the driving caller's task panics");
    assert!(follower.poll());
    assert_eq!(follower.take_output(), Some(Err(CoalesceError::Panicked)));
    assert_eq!(c.stats().keys_in_flight, 0);
}
