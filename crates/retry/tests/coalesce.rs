//! Request coalescing: one call for concurrent identical requests, a call that
//! outlives its first caller, bounded keys and waiters. The loads are counted
//! inside the shared futures.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use heijunka_core::cancel::Polled;
use heijunka_retry::{Coalesce, CoalesceError};
use tokio::sync::Notify;

mod support;
use support::Guard;

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
    // Every caller has joined (or started the flight) before it may finish.
    loop {
        let s = c.stats();
        if s.joined + s.flights == N as u64 {
            break;
        }
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

#[tokio::test(start_paused = true)]
async fn a_waiter_that_is_not_polled_does_not_stall_the_others() {
    let c: Coalesce<u8, u8> = Coalesce::new();
    let make = || {
        || async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            7
        }
    };
    let mut leader = Polled::new(c.call(1, make()));
    let mut follower = Polled::new(c.call(1, make()));
    assert!(
        !leader.poll(),
        "the leader drives the call and waits on its timer"
    );
    assert!(!follower.poll());
    tokio::time::advance(Duration::from_millis(10)).await;
    tokio::task::yield_now().await;
    // The timer fired: every waiter is woken, not only the leader (which its
    // task may not poll for a long time).
    assert!(follower.wakes() > 0, "the follower was not woken");
    assert!(follower.poll(), "the follower drives the call to its end");
    assert_eq!(follower.take_output(), Some(Ok(7)));
    assert!(leader.poll());
    assert_eq!(leader.take_output(), Some(Ok(7)));
}

#[tokio::test(start_paused = true)]
async fn a_caller_dropped_after_a_wake_leaves_the_others_woken() {
    let c: Coalesce<u8, u8> = Coalesce::new();
    let make = || {
        || async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            7
        }
    };
    let mut leader = Polled::new(c.call(1, make()));
    assert!(!leader.poll());
    let mut follower = Polled::new(c.call(1, make()));
    assert!(!follower.poll());
    tokio::time::advance(Duration::from_millis(10)).await;
    tokio::task::yield_now().await;
    drop(leader);
    // Woken (by the timer's wake or by the leader's hand-off), so its task
    // will poll it and drive the call.
    assert!(follower.wakes() > 0, "nobody would poll the follower");
    assert!(follower.poll());
    assert_eq!(follower.take_output(), Some(Ok(7)));
}

#[tokio::test(flavor = "current_thread")]
async fn a_future_that_wakes_itself_does_not_spin_the_driver() {
    use std::sync::atomic::AtomicBool;
    let c: Coalesce<u8, u8> = Coalesce::new();
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    // Set by another task on this thread: a driver that re-polled in a loop
    // would never let it run.
    tokio::spawn(async move {
        f.store(true, Ordering::Relaxed);
    });
    let fut = c.call(1, move || {
        std::future::poll_fn(move |cx| {
            if flag.load(Ordering::Relaxed) {
                std::task::Poll::Ready(3)
            } else {
                cx.waker().wake_by_ref();
                std::task::Poll::Pending
            }
        })
    });
    let out = tokio::time::timeout(Duration::from_secs(5), fut).await;
    assert_eq!(out, Ok(Ok(3)));
}

#[tokio::test(start_paused = true)]
async fn make_may_call_back_into_the_coalesce() {
    let c: Coalesce<u8, usize> = Coalesce::new();
    let inner = c.clone();
    let out = c
        .call(1, move || {
            // With the map locked around `make`, this would deadlock.
            let keys = inner.stats().keys_in_flight;
            async move { keys }
        })
        .await;
    assert_eq!(out, Ok(1));
}

#[derive(Debug, PartialEq)]
struct CloneOnce(u8);
static CLONES: AtomicUsize = AtomicUsize::new(0);
impl Clone for CloneOnce {
    fn clone(&self) -> Self {
        if CLONES.fetch_add(1, Ordering::Relaxed) == 0 {
            panic!("the first clone fails");
        }
        CloneOnce(self.0)
    }
}

#[tokio::test(start_paused = true)]
async fn a_panicking_clone_does_not_wedge_the_key() {
    let c: Coalesce<u8, CloneOnce> = Coalesce::new();
    let make = || {
        || async {
            tokio::time::sleep(Duration::from_millis(1)).await;
            CloneOnce(9)
        }
    };
    let mut follower = Polled::new(c.call(1, make()));
    assert!(!follower.poll());
    let driver = tokio::spawn({
        let c = c.clone();
        async move { c.call(1, make()).await }
    });
    tokio::task::yield_now().await;
    drop(follower);
    // The spawned caller drives the call; its own clone panics.
    let mut follower = Polled::new(c.call(1, make()));
    let _ = follower.poll();
    tokio::time::advance(Duration::from_millis(1)).await;
    let driven = driver.await;
    assert!(driven.is_err(), "the driving task panics with the clone");
    // The other waiter still gets its value, and the key is free.
    if !follower.is_completed() {
        assert!(follower.poll());
    }
    assert_eq!(follower.take_output(), Some(Ok(CloneOnce(9))));
    assert_eq!(c.stats().keys_in_flight, 0);
}
