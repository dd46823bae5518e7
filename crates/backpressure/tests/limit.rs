//! `ConcurrencyLimit`: rejections, weights and bad `n`, waiting forms, close,
//! resizing (holders kept, later acquires at the new limit, FIFO kept), the poll
//! form, cancellation at every poll, and the stress invariants (never more than the
//! limit held, every permit returned, also while resizing).
#![cfg(not(loom))]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use heijunka_backpressure::{
    AcquireError, AcquireTimeoutError, ConcurrencyLimit, PollConcurrencyLimit, TryAcquireError,
};
use heijunka_core::Rejection;
use heijunka_core::cancel::{Outcome, Polled, cancel_points};

#[test]
fn bad_limits_are_config_errors() {
    // 0 is a closed gate (issue #26, as tokio's `Semaphore::new(0)`), not an error.
    assert_eq!(
        ConcurrencyLimit::new(u32::MAX).unwrap_err().to_string(),
        format!(
            "permits must be at most {}, got {}",
            heijunka_backpressure::MAX_PERMITS,
            u32::MAX
        )
    );
}

#[test]
fn try_acquire_names_the_limit_and_weights_add_up() {
    let limit = ConcurrencyLimit::new(5).unwrap();
    let three = limit.try_acquire_many(3).unwrap();
    assert_eq!(three.num_permits(), 3);
    assert_eq!(limit.in_use(), 3);
    let err = limit.try_acquire_many(3).unwrap_err();
    assert_eq!(err.reason(), Some(Rejection::AtCapacity { limit: 5 }));
    assert_eq!(
        limit.try_acquire_many(6).unwrap_err(),
        TryAcquireError::ExceedsLimit { n: 6, limit: 5 }
    );
    let two = limit.try_acquire_many(2).unwrap();
    assert!(limit.try_acquire().is_err());
    drop(three);
    drop(two);
    assert_eq!(limit.available_permits(), 5);
    assert_eq!(limit.stats().in_use, 0);
}

#[tokio::test(start_paused = true)]
async fn waiters_are_served_in_order_so_large_weights_are_not_starved() {
    let limit = ConcurrencyLimit::new(4).unwrap();
    let held = limit.try_acquire_many(3).unwrap();
    let big = tokio::spawn(limit.acquire_many_owned(4));
    tokio::task::yield_now().await;
    assert_eq!(limit.waiting(), 1);
    // One permit is free, but the big waiter is first in line: FIFO.
    assert!(limit.try_acquire().is_err());
    let small = tokio::spawn(limit.acquire_owned());
    tokio::task::yield_now().await;
    assert_eq!(limit.waiting(), 2);
    drop(held);
    let big = big.await.unwrap().unwrap();
    assert_eq!(big.num_permits(), 4);
    assert!(!small.is_finished());
    drop(big);
    assert_eq!(small.await.unwrap().unwrap().num_permits(), 1);
    assert_eq!(limit.waiting(), 0);
}

#[tokio::test(start_paused = true)]
async fn acquire_timeout_gives_up_with_timed_out() {
    let limit = ConcurrencyLimit::new(1).unwrap();
    let _held = limit.try_acquire().unwrap();
    let start = tokio::time::Instant::now();
    let err = limit
        .acquire_timeout(Duration::from_millis(250))
        .await
        .unwrap_err();
    assert_eq!(
        err.reason(),
        Some(Rejection::TimedOut {
            after: Duration::from_millis(250)
        })
    );
    assert_eq!(start.elapsed(), Duration::from_millis(250));
    assert_eq!(
        limit.waiting(),
        0,
        "a timed-out waiter is no longer counted"
    );
}

#[tokio::test(start_paused = true)]
async fn close_wakes_waiters_with_shutting_down() {
    let limit = ConcurrencyLimit::new(1).unwrap();
    let held = limit.try_acquire_owned().unwrap();
    let waiter = tokio::spawn(limit.acquire_owned());
    tokio::task::yield_now().await;
    limit.close();
    let err = waiter.await.unwrap().unwrap_err();
    assert_eq!(err.reason(), Some(Rejection::ShuttingDown));
    assert_eq!(
        limit.try_acquire().unwrap_err().reason(),
        Some(Rejection::ShuttingDown)
    );
    assert!(limit.is_closed());
    drop(held); // still valid, returned normally
}

#[test]
fn blocking_acquire_needs_no_runtime_and_times_out() {
    let limit = ConcurrencyLimit::new(1).unwrap();
    let held = limit.try_acquire_owned().unwrap();
    let waiter = {
        let limit = limit.clone();
        std::thread::spawn(move || limit.acquire_blocking().map(|p| p.num_permits()))
    };
    // Bounded, so a waiter that never registers fails the test instead of
    // hanging it (the deadline only guards; nothing is timed).
    let give_up = std::time::Instant::now() + Duration::from_secs(30);
    while limit.waiting() == 0 {
        assert!(
            std::time::Instant::now() < give_up,
            "the blocked acquire never showed as waiting"
        );
        std::thread::yield_now();
    }
    drop(held);
    assert_eq!(waiter.join().unwrap().unwrap(), 1);
    let _held = limit.try_acquire().unwrap();
    // Real time, but the wait is the behaviour under test and it is 1 ms.
    let err = limit
        .acquire_blocking_timeout(Duration::from_millis(1))
        .unwrap_err();
    assert!(matches!(err.reason(), Some(Rejection::TimedOut { .. })));
}

#[test]
#[cfg_attr(miri, ignore)] // thousands of thread-synchronised iterations: too slow under miri
fn stress_never_more_than_the_limit_and_every_permit_returns_even_on_panic() {
    const LIMIT: u32 = 3;
    let limit = ConcurrencyLimit::new(LIMIT).unwrap();
    let held = Arc::new(AtomicU32::new(0));
    let max_seen = Arc::new(AtomicU32::new(0));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (limit, held, max_seen) = (limit.clone(), held.clone(), max_seen.clone());
            std::thread::spawn(move || {
                for i in 0..2_000_u32 {
                    let weight = 1 + (i + t) % 2;
                    let permit = if i % 3 == 0 {
                        limit.acquire_many_blocking(weight).unwrap()
                    } else {
                        match limit.try_acquire_many(weight) {
                            Ok(p) => p,
                            Err(_) => continue,
                        }
                    };
                    let now = held.fetch_add(weight, Ordering::SeqCst) + weight;
                    max_seen.fetch_max(now, Ordering::SeqCst);
                    held.fetch_sub(weight, Ordering::SeqCst);
                    if t == 0 && i % 500 == 499 {
                        // Panic while holding the permit: it must still come back.
                        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            let _p = permit;
                            panic!("worker failed while holding a permit");
                        }));
                        assert!(r.is_err());
                    } else {
                        drop(permit);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(
        max_seen.load(Ordering::SeqCst) <= LIMIT,
        "held {} > {LIMIT}",
        max_seen.load(Ordering::SeqCst)
    );
    assert!(
        max_seen.load(Ordering::SeqCst) >= 2,
        "the stress never overlapped"
    );
    assert_eq!(limit.available_permits(), LIMIT, "every permit returned");
}

#[test]
fn zero_permits_is_a_named_error_not_a_permit_of_weight_zero() {
    let limit = ConcurrencyLimit::new(2).unwrap();
    let err = limit.try_acquire_many(0).unwrap_err();
    assert_eq!(err, TryAcquireError::ZeroPermits);
    assert_eq!(err.to_string(), "n must be at least 1, got 0");
    assert_eq!(
        limit.try_acquire_many_owned(0).unwrap_err(),
        TryAcquireError::ZeroPermits
    );
    assert_eq!(
        limit.acquire_many_blocking(0).unwrap_err(),
        AcquireError::ZeroPermits
    );
    assert_eq!(limit.available_permits(), 2);
}

#[test]
fn more_than_the_limit_is_refused_at_once_as_never_possible() {
    let limit = ConcurrencyLimit::new(5).unwrap();
    let _held = limit.try_acquire().unwrap();
    // Blocking without a deadline: a forever wait would hang the test.
    let err = limit.acquire_many_blocking(6).unwrap_err();
    assert_eq!(err, AcquireError::ExceedsLimit { n: 6, limit: 5 });
    assert_eq!(
        err.to_string(),
        "n must be at most the limit 5, got 6: it can never be granted"
    );
    assert_eq!(err.reason(), None);
    assert_eq!(limit.waiting(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_is_refused_when_the_limit_shrinks_below_what_it_asks() {
    let limit = ConcurrencyLimit::new(4).unwrap();
    let held = limit.try_acquire().unwrap();
    let waiter = tokio::spawn(limit.acquire_many_owned(4));
    tokio::task::yield_now().await;
    assert_eq!(limit.waiting(), 1);
    limit.set_limit(2).unwrap();
    let err = tokio::time::timeout(Duration::from_secs(1), waiter)
        .await
        .expect("woken, not left waiting forever")
        .unwrap()
        .unwrap_err();
    assert_eq!(err, AcquireError::ExceedsLimit { n: 4, limit: 2 });
    assert_eq!(limit.waiting(), 0);
    drop(held);
    assert_eq!(limit.available_permits(), 2);
}

#[test]
fn shrinking_keeps_holders_and_applies_to_later_acquires() {
    let limit = ConcurrencyLimit::new(4).unwrap();
    let held: Vec<_> = (0..3).map(|_| limit.try_acquire().unwrap()).collect();
    limit.set_limit(2).unwrap();
    assert_eq!(limit.limit(), 2);
    // The free permit went with the shrink; the three holders keep theirs.
    assert_eq!(limit.in_use(), 3);
    assert_eq!(limit.available_permits(), 0);
    assert_eq!(
        limit.try_acquire().unwrap_err(),
        TryAcquireError::AtCapacity { limit: 2 }
    );
    // Counted from outside: how many permits can be taken after each release.
    let grantable = |limit: &ConcurrencyLimit| {
        let got: Vec<_> = std::iter::from_fn(|| limit.try_acquire().ok())
            .take(10)
            .collect();
        got.len()
    };
    let mut held = held;
    held.pop(); // 2 held, limit 2: the excess is paid off
    assert_eq!(grantable(&limit), 0);
    held.pop(); // 1 held
    assert_eq!(grantable(&limit), 1);
    held.pop();
    assert_eq!(grantable(&limit), 2);
    // Growing again adds permits at once.
    limit.set_limit(3).unwrap();
    assert_eq!(grantable(&limit), 3);
    assert_eq!(limit.stats().in_use, 0);
}

#[test]
fn growing_while_in_debt_pays_the_debt_first() {
    let limit = ConcurrencyLimit::new(4).unwrap();
    let held: Vec<_> = (0..4).map(|_| limit.try_acquire().unwrap()).collect();
    limit.set_limit(1).unwrap(); // 3 held above the limit
    limit.add_permits(1).unwrap(); // limit 2: still 2 held above it
    assert_eq!(limit.limit(), 2);
    assert!(limit.try_acquire().is_err());
    drop(held);
    let two: Vec<_> = std::iter::from_fn(|| limit.try_acquire().ok())
        .take(10)
        .collect();
    assert_eq!(two.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_is_not_served_by_releases_that_pay_off_a_shrink() {
    let limit = ConcurrencyLimit::new(2).unwrap();
    let a = limit.try_acquire().unwrap();
    let b = limit.try_acquire().unwrap();
    let waiter = tokio::spawn(limit.acquire_owned());
    tokio::task::yield_now().await;
    limit.set_limit(1).unwrap();
    drop(a); // pays the excess
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished(), "served above the new limit");
    drop(b);
    let permit = waiter.await.unwrap().unwrap();
    assert_eq!(limit.in_use(), 1);
    drop(permit);
    assert_eq!(limit.available_permits(), 1);
}

#[test]
fn bad_resizes_are_config_errors_and_change_nothing() {
    let limit = ConcurrencyLimit::new(4).unwrap();
    assert_eq!(limit.set_limit(u32::MAX).unwrap_err().field(), "permits");
    let err = limit.add_permits(u32::MAX).unwrap_err();
    assert_eq!(err.field(), "permits");
    assert_eq!(limit.limit(), 4);
    assert_eq!(limit.available_permits(), 4);
}

#[tokio::test(start_paused = true)]
async fn poll_acquire_waits_in_line_and_gives_back_on_drop() {
    use std::future::poll_fn;
    let limit = ConcurrencyLimit::new(1).unwrap();
    let held = limit.try_acquire_owned().unwrap();
    let mut poll = PollConcurrencyLimit::new(limit.clone());
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(poll.poll_acquire(&mut cx).is_pending());
    assert_eq!(limit.waiting(), 1);
    drop(held);
    let permit = poll_fn(|cx| poll.poll_acquire(cx)).await.unwrap();
    assert_eq!(limit.available_permits(), 0);
    drop(permit);
    // Dropped while waiting: no waiter left, the permit assigned meanwhile comes back.
    let held = limit.try_acquire_owned().unwrap();
    assert!(poll.poll_acquire(&mut cx).is_pending());
    drop(held);
    drop(poll);
    assert_eq!(limit.waiting(), 0);
    assert_eq!(limit.available_permits(), 1);
    let mut poll = PollConcurrencyLimit::new(limit.clone());
    limit.close();
    assert_eq!(
        poll_fn(|cx| poll.poll_acquire(cx)).await.unwrap_err(),
        AcquireError::Closed
    );
}

/// Drives the future `$make` builds from a full limit (`$l`) for k polls,
/// releasing the holder before poll 1, drops it, and checks that nothing is left
/// behind: no waiter, and every permit back (seen by taking them all again).
macro_rules! check_cancel {
    (|$l:ident| $make:expr) => {{
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let _g = rt.enter();
        let covered = cancel_points(10, |k| {
            let $l = ConcurrencyLimit::new(3).unwrap();
            let mut held = Some($l.try_acquire_many(3).unwrap());
            let out = Polled::new($make).drop_after_with(k, |i| {
                if i == 1 {
                    held = None;
                }
            });
            let completed = out.is_completed();
            drop(out); // a completed future's permit is dropped here
            drop(held);
            assert_eq!($l.waiting(), 0, "k = {k}: a waiter left behind");
            assert_eq!($l.in_use(), 0, "k = {k}");
            let all = $l.try_acquire_many(3);
            assert!(all.is_ok(), "k = {k}: a permit not given back: {all:?}");
            if completed {
                Outcome::Completed {
                    output: (),
                    polls: k,
                }
            } else {
                Outcome::Cancelled { polls: k }
            }
        });
        assert_eq!(
            covered, 2,
            "pending on the first poll, granted on the second"
        );
    }};
}

#[test]
fn acquire_forms_are_cancel_safe() {
    check_cancel!(|l| l.acquire());
    check_cancel!(|l| l.acquire_many(2));
    check_cancel!(|l| l.acquire_owned());
    check_cancel!(|l| l.acquire_many_owned(3));
    check_cancel!(|l| l.acquire_timeout(Duration::from_secs(1)));
    check_cancel!(|l| l.acquire_many_timeout(2, Duration::from_secs(1)));
}

#[test]
fn a_cancelled_waiter_at_the_head_does_not_block_the_next() {
    let limit = ConcurrencyLimit::new(2).unwrap();
    let held = limit.try_acquire_many(2).unwrap();
    let mut big = Polled::new(limit.acquire_many(2));
    let mut small = Polled::new(limit.acquire());
    assert!(!big.poll());
    assert!(!small.poll());
    drop(held);
    // The big waiter was granted (its permits assigned) but never polled again.
    drop(big);
    assert!(small.wakes() >= 1, "the next waiter was woken");
    assert!(small.poll(), "the next waiter gets a permit");
    assert_eq!(limit.waiting(), 0);
    drop(small);
    assert_eq!(limit.available_permits(), 2);
}

#[test]
fn timed_out_waiters_leave_nothing_behind() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let limit = ConcurrencyLimit::new(1).unwrap();
    let held = limit.try_acquire().unwrap();
    let err = rt
        .block_on(limit.acquire_timeout(Duration::from_millis(5)))
        .unwrap_err();
    assert_eq!(
        err,
        AcquireTimeoutError::TimedOut {
            after: Duration::from_millis(5)
        }
    );
    drop(held);
    assert_eq!(limit.waiting(), 0);
    assert_eq!(limit.available_permits(), 1);
}

#[test]
fn waiters_keep_their_order_while_releases_pay_off_a_shrink() {
    let limit = ConcurrencyLimit::new(3).unwrap();
    let a = limit.try_acquire().unwrap();
    let b = limit.try_acquire().unwrap();
    let c = limit.try_acquire().unwrap();
    let mut first = Polled::new(limit.acquire());
    let mut second = Polled::new(limit.acquire());
    assert!(!first.poll());
    assert!(!second.poll());
    limit.set_limit(2).unwrap();
    drop(a); // pays off the shrink: nobody is served
    assert!(
        !first.poll() && !second.poll(),
        "served above the new limit"
    );
    drop(b); // one permit free: the first in line gets it
    let second_done = second.poll();
    let first_done = first.poll();
    assert!(
        first_done && !second_done,
        "FIFO lost: first {first_done}, second {second_done}"
    );
    drop(c);
    assert!(second.poll());
    drop((first, second));
    assert_eq!(limit.available_permits(), 2);
    assert_eq!(limit.waiting(), 0);
}

#[test]
fn timeout_forms_that_fire_between_polls_leave_nothing_behind() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let _g = rt.enter();
    for many in [false, true] {
        let covered = cancel_points(10, |k| {
            let limit = ConcurrencyLimit::new(2).unwrap();
            let held = limit.try_acquire().unwrap();
            let fut = async {
                if many {
                    limit
                        .acquire_many_timeout(2, Duration::from_millis(10))
                        .await
                        .map(drop)
                } else {
                    let _second = limit.try_acquire().unwrap();
                    limit
                        .acquire_timeout(Duration::from_millis(10))
                        .await
                        .map(drop)
                }
            };
            let out = Polled::new(fut).drop_after_with(k, |i| {
                if i == 1 {
                    rt.block_on(tokio::time::advance(Duration::from_millis(10)));
                }
            });
            if let Outcome::Completed { output, .. } = &out {
                assert_eq!(
                    *output,
                    Err(AcquireTimeoutError::TimedOut {
                        after: Duration::from_millis(10)
                    })
                );
            }
            assert_eq!(limit.waiting(), 0, "k = {k}");
            drop(held);
            assert_eq!(limit.available_permits(), 2, "k = {k}");
            match out {
                Outcome::Completed { polls, .. } => Outcome::Completed { output: (), polls },
                Outcome::Cancelled { polls } => Outcome::Cancelled { polls },
            }
        });
        assert_eq!(covered, 2);
    }
}

#[test]
#[cfg_attr(miri, ignore)] // thousands of thread-synchronised iterations: too slow under miri
fn stress_resizing_while_in_use_loses_and_leaks_no_permit() {
    let limit = ConcurrencyLimit::new(4).unwrap();
    let held = Arc::new(AtomicU32::new(0));
    let max_seen = Arc::new(AtomicU32::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let start = Arc::new(std::sync::Barrier::new(4));
    let workers: Vec<_> = (0..3)
        .map(|t| {
            let (limit, held, max_seen, stop, start) = (
                limit.clone(),
                held.clone(),
                max_seen.clone(),
                stop.clone(),
                start.clone(),
            );
            std::thread::spawn(move || {
                start.wait();
                let mut granted = 0_u32;
                let mut i = 0_u32;
                // At least 100 rounds each, and on until the resizer is done.
                while i < 100 || !stop.load(Ordering::SeqCst) {
                    i += 1;
                    let n = 1 + (i + t) % 2;
                    let permit = match i % 3 {
                        0 => limit
                            .acquire_many_blocking_timeout(n, Duration::from_millis(1))
                            .ok(),
                        1 => limit.try_acquire_many(n).ok(),
                        _ => limit.try_acquire().ok(),
                    };
                    if let Some(p) = permit {
                        granted += 1;
                        let w = p.num_permits();
                        let now = held.fetch_add(w, Ordering::SeqCst) + w;
                        max_seen.fetch_max(now, Ordering::SeqCst);
                        held.fetch_sub(w, Ordering::SeqCst);
                    }
                }
                granted
            })
        })
        .collect();
    start.wait();
    for i in 0..1_000_u32 {
        limit.set_limit(if i % 2 == 0 { 2 } else { 6 }).unwrap();
        if i % 100 == 0 {
            limit.add_permits(1).unwrap();
        }
        std::thread::yield_now();
    }
    stop.store(true, Ordering::SeqCst);
    let granted: u32 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    assert!(granted > 0, "no permit was ever granted");
    // Never more held than the largest limit ever set (6; 3 after an add to 2).
    assert!(max_seen.load(Ordering::SeqCst) <= 6, "{max_seen:?}");
    assert_eq!(limit.waiting(), 0);
    assert_eq!(limit.in_use(), 0);
    let final_limit = limit.limit();
    assert_eq!(limit.available_permits(), final_limit);
    // Counted from outside: exactly `limit` single permits can be taken.
    let all: Vec<_> = std::iter::from_fn(|| limit.try_acquire().ok())
        .take(100)
        .collect();
    assert_eq!(all.len() as u32, final_limit);
}

/// A limit of 0 is a gate closed until permits are added (issue #26): waiters
/// wait instead of being refused; opening the gate serves those that fit and
/// refuses, as never possible, one above the new limit.
#[tokio::test]
async fn a_zero_limit_is_a_closed_gate_until_opened() {
    let limit = ConcurrencyLimit::new(2).unwrap();
    limit.set_limit(0).unwrap();
    assert_eq!(
        limit.try_acquire().unwrap_err(),
        TryAcquireError::AtCapacity { limit: 0 }
    );
    let one = tokio::spawn(limit.acquire_owned());
    let five = tokio::spawn(limit.acquire_many_owned(5));
    tokio::task::yield_now().await;
    assert_eq!(limit.waiting(), 2);
    limit.set_limit(2).unwrap();
    assert_eq!(one.await.unwrap().unwrap().num_permits(), 1);
    assert_eq!(
        five.await.unwrap().unwrap_err(),
        AcquireError::ExceedsLimit { n: 5, limit: 2 }
    );
    assert_eq!((limit.in_use(), limit.available_permits()), (0, 2));
}

/// `forget` after a shrink pays the debt first: the limit set stays.
#[test]
fn a_forgotten_permit_pays_the_debt_before_lowering_the_limit() {
    let limit = ConcurrencyLimit::new(3).unwrap();
    let a = limit.try_acquire().unwrap();
    let b = limit.try_acquire().unwrap();
    limit.set_limit(1).unwrap(); // 2 held, 1 owed
    a.forget(); // pays the debt
    assert_eq!((limit.limit(), limit.in_use()), (1, 1));
    assert!(limit.try_acquire().is_err());
    b.forget(); // lowers the limit
    assert_eq!(
        (limit.limit(), limit.in_use(), limit.available_permits()),
        (0, 0, 0)
    );
    limit.add_permits(1).unwrap();
    assert!(limit.try_acquire().is_ok());
}

/// A request above `MAX_PERMITS` can never be granted, whatever the limit: at a
/// limit of 0 (a closed gate, where a request up to `MAX_PERMITS` waits) it is
/// refused at once too, and never reaches tokio's semaphore (whose
/// `n <= usize::MAX >> 3` assertion fails for it on 32-bit targets).
#[test]
fn a_request_above_max_permits_is_refused_even_at_limit_zero() {
    use heijunka_backpressure::MAX_PERMITS;
    let gate = ConcurrencyLimit::new(0).unwrap();
    let too_many = TryAcquireError::ExceedsLimit {
        n: u32::MAX,
        limit: MAX_PERMITS,
    };
    assert_eq!(gate.try_acquire_many(u32::MAX).unwrap_err(), too_many);
    assert_eq!(
        gate.try_acquire_many(MAX_PERMITS + 1).unwrap_err(),
        TryAcquireError::ExceedsLimit {
            n: MAX_PERMITS + 1,
            limit: MAX_PERMITS,
        }
    );
    // Up to MAX_PERMITS, the closed gate is only at capacity.
    assert_eq!(
        gate.try_acquire_many(MAX_PERMITS).unwrap_err(),
        TryAcquireError::AtCapacity { limit: 0 }
    );
    // The waiting form: refused on its first poll, not left waiting.
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let mut waiting = std::pin::pin!(gate.acquire_many(u32::MAX));
    match waiting.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(Err(e)) => assert_eq!(
            e,
            AcquireError::ExceedsLimit {
                n: u32::MAX,
                limit: MAX_PERMITS,
            }
        ),
        other => panic!("expected a refusal, got {:?}", other.map(|r| r.is_ok())),
    }
    // A request within MAX_PERMITS waits at the closed gate.
    let mut within = std::pin::pin!(gate.acquire_many(MAX_PERMITS));
    assert!(within.as_mut().poll(&mut cx).is_pending());
    // A limit above 0 refuses the same request naming that limit.
    let limit = ConcurrencyLimit::new(3).unwrap();
    assert_eq!(
        limit.try_acquire_many(u32::MAX).unwrap_err(),
        TryAcquireError::ExceedsLimit {
            n: u32::MAX,
            limit: 3
        }
    );
}
