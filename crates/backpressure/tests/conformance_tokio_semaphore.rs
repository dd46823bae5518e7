//! tokio 1.54.1's semaphore tests (`tests/sync_semaphore.rs`,
//! `tests/sync_semaphore_owned.rs`, `src/sync/tests/semaphore_batch.rs`),
//! ported to [`ConcurrencyLimit`] with the peer's expectations kept. Each test is
//! named after the peer's file and test; `docs/conformance-governor-tokio.md`
//! lists every peer test, ported or left out (with the reason).
//!
//! `Semaphore::new(n)` is `ConcurrencyLimit::new(n)`; its permits are
//! `Permit`/`OwnedPermit`. Where tokio panics on a misuse (more than
//! `MAX_PERMITS`), heijunka returns a `ConfigError`: the port asserts the error.
#![cfg(not(loom))]

use std::sync::Arc;

use heijunka_backpressure::ConcurrencyLimit;

// ---------------------------------------------------------------------------
// The differences issue #26 names.
// ---------------------------------------------------------------------------

/// tokio hands free permits to the waiter at the head of the queue before it
/// completes; those are not held by anyone yet, so `in_use` (and `stats`) count
/// only the permits of live permit guards.
#[tokio::test]
async fn in_use_counts_only_permits_held_by_permits() {
    let limit = ConcurrencyLimit::new(5).unwrap();
    let one = limit.try_acquire().unwrap();
    let waiter = tokio::spawn(limit.acquire_many_owned(5));
    tokio::task::yield_now().await; // the waiter queues, holding the 4 free permits
    assert_eq!(limit.waiting(), 1);
    assert_eq!(limit.in_use(), 1, "one permit is held");
    assert_eq!(limit.stats().in_use, 1);
    drop(one);
    let five = waiter.await.unwrap().unwrap();
    assert_eq!(limit.in_use(), 5);
    drop(five);
    assert_eq!(limit.in_use(), 0);
}

/// tokio sync_semaphore.rs: blocking_acquire_in_async_context.
#[tokio::test]
#[should_panic = "Cannot block the current thread from within a runtime"]
async fn tokio_sync_semaphore_blocking_acquire_in_async_context() {
    let sem = ConcurrencyLimit::new(1).unwrap();
    // Calling a blocking method from an async context must panic.
    let _permit = sem.acquire_blocking();
}

/// tokio sync_semaphore.rs: no_permits.
#[test]
fn tokio_sync_semaphore_no_permits() {
    // this should not panic (nor be refused)
    ConcurrencyLimit::new(0).unwrap();
}

/// tokio sync_semaphore.rs: add_permits (a limit of 0 is a gate closed until
/// permits are added: `acquire` waits, it is not refused).
#[tokio::test]
async fn tokio_sync_semaphore_add_permits() {
    let sem = Arc::new(ConcurrencyLimit::new(0).unwrap());
    let sem_clone = sem.clone();
    let j = tokio::spawn(async move {
        let _p2 = sem_clone.acquire().await.unwrap();
    });
    tokio::task::yield_now().await;
    sem.add_permits(1).unwrap();
    j.await.unwrap();
}

// ---------------------------------------------------------------------------
// A small stand-in for tokio-test's `task::spawn`: polls a future by hand and
// records whether it was woken.
// ---------------------------------------------------------------------------

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::task::{Context, Poll, Wake, Waker};

use heijunka_backpressure::{MAX_PERMITS, OwnedPermit};

#[derive(Default)]
struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, SeqCst);
    }
}

struct Spawned<'a, T> {
    fut: Pin<Box<dyn Future<Output = T> + 'a>>,
    woken: Arc<Flag>,
}

fn spawn<'a, T>(fut: impl Future<Output = T> + 'a) -> Spawned<'a, T> {
    Spawned {
        fut: Box::pin(fut),
        woken: Arc::default(),
    }
}

impl<T> Spawned<'_, T> {
    fn poll(&mut self) -> Poll<T> {
        let waker = Waker::from(Arc::clone(&self.woken));
        self.fut.as_mut().poll(&mut Context::from_waker(&waker))
    }

    fn is_woken(&self) -> bool {
        self.woken.0.swap(false, SeqCst)
    }
}

/// `Poll::Ready(Ok(v))` → `v`.
fn ready_ok<T, E: std::fmt::Debug>(p: Poll<Result<T, E>>) -> T {
    match p {
        Poll::Ready(Ok(v)) => v,
        Poll::Ready(Err(e)) => panic!("ready with an error: {e:?}"),
        Poll::Pending => panic!("pending"),
    }
}

fn is_ready_err<T, E>(p: Poll<Result<T, E>>) -> bool {
    matches!(p, Poll::Ready(Err(_)))
}

// ---------------------------------------------------------------------------
// tokio tests/sync_semaphore.rs
// ---------------------------------------------------------------------------

/// tokio sync_semaphore.rs: try_acquire.
#[test]
fn tokio_sync_semaphore_try_acquire() {
    let sem = ConcurrencyLimit::new(1).unwrap();
    {
        let p1 = sem.try_acquire();
        assert!(p1.is_ok());
        let p2 = sem.try_acquire();
        assert!(p2.is_err());
    }
    let p3 = sem.try_acquire();
    assert!(p3.is_ok());
}

/// tokio sync_semaphore.rs: acquire.
#[tokio::test]
async fn tokio_sync_semaphore_acquire() {
    let sem = Arc::new(ConcurrencyLimit::new(1).unwrap());
    let p1 = sem.try_acquire_owned().unwrap();
    let sem_clone = sem.clone();
    let j = tokio::spawn(async move {
        let _p2 = sem_clone.acquire().await;
    });
    drop(p1);
    j.await.unwrap();
}

/// tokio sync_semaphore.rs: add_permits_open.
#[test]
fn tokio_sync_semaphore_add_permits_open() {
    for size in 0..4 {
        for add in 0..4 {
            let sem = ConcurrencyLimit::new(size).unwrap();
            sem.add_permits(add).unwrap();
            assert_eq!(sem.available_permits(), size + add);
            assert!(!sem.is_closed());
        }
    }
}

/// tokio sync_semaphore.rs: add_permits_closed.
#[test]
fn tokio_sync_semaphore_add_permits_closed() {
    for size in 0..4 {
        for add in 0..4 {
            let sem = ConcurrencyLimit::new(size).unwrap();
            sem.close();
            sem.add_permits(add).unwrap();
            assert_eq!(sem.available_permits(), size + add);
            assert!(sem.is_closed());
        }
    }
}

/// tokio sync_semaphore.rs: close_drops_wakers_outside_lock. Ported with one
/// difference: a waiting `acquire` also listens for limit changes
/// (`set_limit`), which keeps a clone of its waker until the future is dropped;
/// so the permit the waker holds comes back when the pending future is dropped,
/// not at `close`. What the test guards, no deadlock when a waker drop releases a
/// permit during `close`, holds.
#[test]
fn tokio_sync_semaphore_close_drops_wakers_outside_lock() {
    struct ReleaseOnDrop {
        _permit: OwnedPermit,
    }
    impl Wake for ReleaseOnDrop {
        fn wake(self: Arc<Self>) {}
    }
    let sem = ConcurrencyLimit::new(1).unwrap();
    let mut fut = Box::pin(async {
        let _ = sem.acquire().await;
    });
    let waker = Waker::from(Arc::new(ReleaseOnDrop {
        _permit: sem.try_acquire_owned().unwrap(),
    }));
    let mut cx = Context::from_waker(&waker);
    assert!(fut.as_mut().poll(&mut cx).is_pending());
    drop(waker);
    // Waking the waiter drops the last reference to the waker, which releases
    // a permit. This shouldn't deadlock.
    sem.close();
    drop(fut); // heijunka: the last waker clone goes with the future
    assert_eq!(sem.available_permits(), 1);
}

/// tokio sync_semaphore.rs: close_wakes_waiters_outside_lock.
#[test]
fn tokio_sync_semaphore_close_wakes_waiters_outside_lock() {
    struct ReleaseOnWake(ConcurrencyLimit);
    impl Wake for ReleaseOnWake {
        fn wake(self: Arc<Self>) {
            self.0.add_permits(1).unwrap();
        }
    }
    let sem = ConcurrencyLimit::new(0).unwrap();
    let mut fut = Box::pin(async {
        let _ = sem.acquire().await;
    });
    let waker = Waker::from(Arc::new(ReleaseOnWake(sem.clone())));
    let mut cx = Context::from_waker(&waker);
    assert!(fut.as_mut().poll(&mut cx).is_pending());
    // The waker releases a permit when it is woken. This shouldn't deadlock.
    sem.close();
    assert_eq!(sem.available_permits(), 1);
}

/// tokio sync_semaphore.rs: close_wakes_all_waiters.
#[test]
fn tokio_sync_semaphore_close_wakes_all_waiters() {
    // More waiters than are woken in one batch.
    const WAITERS: usize = 100;
    struct CountWakes(AtomicUsize);
    impl Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, SeqCst);
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, SeqCst);
        }
    }
    let sem = ConcurrencyLimit::new(0).unwrap();
    let wakes = Arc::new(CountWakes(AtomicUsize::new(0)));
    let waker = Waker::from(wakes.clone());
    let mut cx = Context::from_waker(&waker);
    let mut acquires: Vec<_> = (0..WAITERS).map(|_| Box::pin(sem.acquire())).collect();
    for acquire in &mut acquires {
        assert!(acquire.as_mut().poll(&mut cx).is_pending());
    }
    sem.close();
    assert_eq!(wakes.0.load(SeqCst), WAITERS);
    for acquire in &mut acquires {
        assert!(matches!(
            acquire.as_mut().poll(&mut cx),
            Poll::Ready(Err(_))
        ));
    }
}

/// tokio sync_semaphore.rs: forget.
#[test]
fn tokio_sync_semaphore_forget() {
    let sem = ConcurrencyLimit::new(1).unwrap();
    {
        let p = sem.try_acquire().unwrap();
        assert_eq!(sem.available_permits(), 0);
        p.forget();
        assert_eq!(sem.available_permits(), 0);
    }
    assert_eq!(sem.available_permits(), 0);
    assert!(sem.try_acquire().is_err());
}

/// tokio sync_semaphore.rs: forget_open.
#[test]
fn tokio_sync_semaphore_forget_open() {
    for size in 0..4 {
        for sub in 0..4 {
            let sem = ConcurrencyLimit::new(size).unwrap();
            let actual_sub = sem.forget_permits(sub);
            let expected = size.saturating_sub(sub);
            assert_eq!(sem.available_permits(), expected, "case: {size}-{sub}");
            assert_eq!(actual_sub, size - expected);
            assert!(!sem.is_closed());
        }
    }
}

/// tokio sync_semaphore.rs: forget_closed.
#[test]
fn tokio_sync_semaphore_forget_closed() {
    for size in 0..4 {
        for sub in 0..4 {
            let sem = ConcurrencyLimit::new(size).unwrap();
            sem.close();
            let actual_sub = sem.forget_permits(sub);
            let expected = size.saturating_sub(sub);
            assert_eq!(sem.available_permits(), expected, "case: {size}-{sub}");
            assert_eq!(actual_sub, size - expected);
            assert!(sem.is_closed());
        }
    }
}

/// tokio sync_semaphore.rs: merge.
#[test]
fn tokio_sync_semaphore_merge() {
    let sem = ConcurrencyLimit::new(3).unwrap();
    {
        let mut p1 = sem.try_acquire().unwrap();
        assert_eq!(sem.available_permits(), 2);
        let p2 = sem.try_acquire_many(2).unwrap();
        assert_eq!(sem.available_permits(), 0);
        p1.merge(p2);
        assert_eq!(sem.available_permits(), 0);
    }
    assert_eq!(sem.available_permits(), 3);
}

/// tokio sync_semaphore.rs: merge_unrelated_permits.
#[test]
#[should_panic]
fn tokio_sync_semaphore_merge_unrelated_permits() {
    let sem1 = ConcurrencyLimit::new(3).unwrap();
    let sem2 = ConcurrencyLimit::new(3).unwrap();
    let mut p1 = sem1.try_acquire().unwrap();
    let p2 = sem2.try_acquire().unwrap();
    p1.merge(p2);
}

/// tokio sync_semaphore.rs: split.
#[test]
fn tokio_sync_semaphore_split() {
    let sem = ConcurrencyLimit::new(5).unwrap();
    let mut p1 = sem.try_acquire_many(3).unwrap();
    assert_eq!(sem.available_permits(), 2);
    assert_eq!(p1.num_permits(), 3);
    let mut p2 = p1.split(1).unwrap();
    assert_eq!(sem.available_permits(), 2);
    assert_eq!(p1.num_permits(), 2);
    assert_eq!(p2.num_permits(), 1);
    let p3 = p1.split(0).unwrap();
    assert_eq!(p3.num_permits(), 0);
    drop(p1);
    assert_eq!(sem.available_permits(), 4);
    let p4 = p2.split(1).unwrap();
    assert_eq!(p2.num_permits(), 0);
    assert_eq!(p4.num_permits(), 1);
    assert!(p2.split(1).is_none());
    drop(p2);
    assert_eq!(sem.available_permits(), 4);
    drop(p3);
    assert_eq!(sem.available_permits(), 4);
    drop(p4);
    assert_eq!(sem.available_permits(), 5);
}

/// tokio sync_semaphore.rs: stress_test.
#[tokio::test]
async fn tokio_sync_semaphore_stress_test() {
    let sem = Arc::new(ConcurrencyLimit::new(5).unwrap());
    let mut join_handles = Vec::new();
    for _ in 0..1000 {
        let sem_clone = sem.clone();
        join_handles.push(tokio::spawn(async move {
            let _p = sem_clone.acquire().await;
        }));
    }
    for j in join_handles {
        j.await.unwrap();
    }
    // there should be exactly 5 semaphores available now
    let _p1 = sem.try_acquire().unwrap();
    let _p2 = sem.try_acquire().unwrap();
    let _p3 = sem.try_acquire().unwrap();
    let _p4 = sem.try_acquire().unwrap();
    let _p5 = sem.try_acquire().unwrap();
    assert!(sem.try_acquire().is_err());
}

/// tokio sync_semaphore.rs: add_max_amount_permits.
#[test]
fn tokio_sync_semaphore_add_max_amount_permits() {
    let s = ConcurrencyLimit::new(0).unwrap();
    s.add_permits(MAX_PERMITS).unwrap();
    assert_eq!(s.available_permits(), MAX_PERMITS);
}

/// tokio sync_semaphore.rs: add_more_than_max_amount_permits1 (tokio panics;
/// heijunka refuses with a `ConfigError` and changes nothing).
#[test]
fn tokio_sync_semaphore_add_more_than_max_amount_permits1() {
    let s = ConcurrencyLimit::new(1).unwrap();
    assert_eq!(s.add_permits(MAX_PERMITS).unwrap_err().field(), "permits");
    assert_eq!(s.limit(), 1);
}

/// tokio sync_semaphore.rs: add_more_than_max_amount_permits2 (an error, as
/// above).
#[test]
fn tokio_sync_semaphore_add_more_than_max_amount_permits2() {
    let s = ConcurrencyLimit::new(MAX_PERMITS - 1).unwrap();
    s.add_permits(1).unwrap();
    assert!(s.add_permits(1).is_err());
}

/// tokio sync_semaphore.rs: panic_when_exceeds_maxpermits (an error, as above).
#[test]
fn tokio_sync_semaphore_panic_when_exceeds_maxpermits() {
    let err = ConcurrencyLimit::new(MAX_PERMITS + 1).unwrap_err();
    assert_eq!(err.field(), "permits");
}

/// tokio sync_semaphore.rs: no_panic_at_maxpermits.
#[test]
fn tokio_sync_semaphore_no_panic_at_maxpermits() {
    let _ = ConcurrencyLimit::new(MAX_PERMITS).unwrap();
    let s = ConcurrencyLimit::new(MAX_PERMITS - 1).unwrap();
    s.add_permits(1).unwrap();
}

/// tokio sync_semaphore.rs: blocking_acquire.
#[test]
fn tokio_sync_semaphore_blocking_acquire() {
    let sem = ConcurrencyLimit::new(1).unwrap();
    let permit = sem.acquire_blocking().unwrap();
    assert_eq!(sem.available_permits(), 0);
    drop(permit);
    assert_eq!(sem.available_permits(), 1);
}

/// tokio sync_semaphore.rs: blocking_acquire_waits_for_permit.
#[test]
fn tokio_sync_semaphore_blocking_acquire_waits_for_permit() {
    let sem = ConcurrencyLimit::new(0).unwrap();
    let sem2 = sem.clone();
    let handle = std::thread::spawn(move || {
        // Blocks until a permit becomes available.
        let _permit = sem2.acquire_blocking().unwrap();
    });
    sem.add_permits(1).unwrap();
    handle.join().unwrap();
}

/// tokio sync_semaphore.rs: blocking_acquire_many.
#[test]
fn tokio_sync_semaphore_blocking_acquire_many() {
    let sem = ConcurrencyLimit::new(5).unwrap();
    let permit = sem.acquire_many_blocking(3).unwrap();
    assert_eq!(sem.available_permits(), 2);
    drop(permit);
    assert_eq!(sem.available_permits(), 5);
}

/// tokio sync_semaphore.rs: blocking_acquire_owned.
#[test]
fn tokio_sync_semaphore_blocking_acquire_owned() {
    let sem = ConcurrencyLimit::new(1).unwrap();
    let permit = sem.acquire_owned_blocking().unwrap();
    assert_eq!(sem.available_permits(), 0);
    drop(permit);
    assert_eq!(sem.available_permits(), 1);
}

/// tokio sync_semaphore.rs: blocking_acquire_many_owned.
#[test]
fn tokio_sync_semaphore_blocking_acquire_many_owned() {
    let sem = ConcurrencyLimit::new(5).unwrap();
    let permit = sem.acquire_many_owned_blocking(3).unwrap();
    assert_eq!(sem.available_permits(), 2);
    drop(permit);
    assert_eq!(sem.available_permits(), 5);
}

/// tokio sync_semaphore.rs: blocking_acquire_closed.
#[test]
fn tokio_sync_semaphore_blocking_acquire_closed() {
    let sem = ConcurrencyLimit::new(1).unwrap();
    sem.close();
    assert!(sem.acquire_blocking().is_err());
    assert!(sem.acquire_many_blocking(2).is_err());
    assert!(sem.acquire_owned_blocking().is_err());
    assert!(sem.acquire_many_owned_blocking(2).is_err());
}

/// tokio sync_semaphore.rs: blocking_acquire_many_in_async_context.
#[tokio::test]
#[should_panic = "Cannot block the current thread from within a runtime"]
async fn tokio_sync_semaphore_blocking_acquire_many_in_async_context() {
    let sem = ConcurrencyLimit::new(1).unwrap();
    // Calling a blocking method from an async context must panic.
    let _permit = sem.acquire_many_blocking(1);
}

/// tokio sync_semaphore.rs: blocking_acquire_owned_in_async_context.
#[tokio::test]
#[should_panic = "Cannot block the current thread from within a runtime"]
async fn tokio_sync_semaphore_blocking_acquire_owned_in_async_context() {
    let sem = ConcurrencyLimit::new(1).unwrap();
    // Calling a blocking method from an async context must panic.
    let _permit = sem.acquire_owned_blocking();
}

/// tokio sync_semaphore.rs: blocking_acquire_many_owned_in_async_context.
#[tokio::test]
#[should_panic = "Cannot block the current thread from within a runtime"]
async fn tokio_sync_semaphore_blocking_acquire_many_owned_in_async_context() {
    let sem = ConcurrencyLimit::new(1).unwrap();
    // Calling a blocking method from an async context must panic.
    let _permit = sem.acquire_many_owned_blocking(1);
}

/// Not a peer test: what tokio allows and heijunka keeps, a blocking acquire on
/// `spawn_blocking`'s thread (tokio's own check, not `Handle::try_current`).
#[tokio::test]
async fn blocking_acquire_inside_spawn_blocking_is_allowed() {
    let sem = ConcurrencyLimit::new(1).unwrap();
    let s = sem.clone();
    let n = tokio::task::spawn_blocking(move || s.acquire_blocking().map(|p| p.num_permits()))
        .await
        .unwrap();
    assert_eq!(n, Ok(1));
}

// ---------------------------------------------------------------------------
// tokio tests/sync_semaphore_owned.rs
// ---------------------------------------------------------------------------

/// tokio sync_semaphore_owned.rs: try_acquire.
#[test]
fn tokio_sync_semaphore_owned_try_acquire() {
    let sem = ConcurrencyLimit::new(1).unwrap();
    {
        let p1 = sem.try_acquire_owned();
        assert!(p1.is_ok());
        let p2 = sem.try_acquire_owned();
        assert!(p2.is_err());
    }
    let p3 = sem.try_acquire_owned();
    assert!(p3.is_ok());
}

/// tokio sync_semaphore_owned.rs: try_acquire_many.
#[test]
fn tokio_sync_semaphore_owned_try_acquire_many() {
    let sem = ConcurrencyLimit::new(42).unwrap();
    {
        let p1 = sem.try_acquire_many_owned(42);
        assert!(p1.is_ok());
        let p2 = sem.try_acquire_owned();
        assert!(p2.is_err());
    }
    let p3 = sem.try_acquire_many_owned(32);
    assert!(p3.is_ok());
    let p4 = sem.try_acquire_many_owned(10);
    assert!(p4.is_ok());
    assert!(sem.try_acquire_owned().is_err());
}

/// tokio sync_semaphore_owned.rs: acquire.
#[tokio::test]
async fn tokio_sync_semaphore_owned_acquire() {
    let sem = ConcurrencyLimit::new(1).unwrap();
    let p1 = sem.try_acquire_owned().unwrap();
    let sem_clone = sem.clone();
    let j = tokio::spawn(async move {
        let _p2 = sem_clone.acquire_owned().await;
    });
    drop(p1);
    j.await.unwrap();
}

/// tokio sync_semaphore_owned.rs: acquire_many.
#[tokio::test]
async fn tokio_sync_semaphore_owned_acquire_many() {
    let semaphore = ConcurrencyLimit::new(42).unwrap();
    let permit32 = semaphore.try_acquire_many_owned(32).unwrap();
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let join_handle = tokio::spawn(async move {
        let _permit10 = semaphore.acquire_many_owned(10).await.unwrap();
        sender.send(()).unwrap();
        let _permit32 = semaphore.acquire_many_owned(32).await.unwrap();
    });
    receiver.await.unwrap();
    drop(permit32);
    join_handle.await.unwrap();
}

/// tokio sync_semaphore_owned.rs: add_permits.
#[tokio::test]
async fn tokio_sync_semaphore_owned_add_permits() {
    let sem = ConcurrencyLimit::new(0).unwrap();
    let sem_clone = sem.clone();
    let j = tokio::spawn(async move {
        let _p2 = sem_clone.acquire_owned().await;
    });
    sem.add_permits(1).unwrap();
    j.await.unwrap();
}

/// tokio sync_semaphore_owned.rs: forget.
#[test]
fn tokio_sync_semaphore_owned_forget() {
    let sem = ConcurrencyLimit::new(1).unwrap();
    {
        let p = sem.try_acquire_owned().unwrap();
        assert_eq!(sem.available_permits(), 0);
        p.forget();
        assert_eq!(sem.available_permits(), 0);
    }
    assert_eq!(sem.available_permits(), 0);
    assert!(sem.try_acquire_owned().is_err());
}

/// tokio sync_semaphore_owned.rs: merge.
#[test]
fn tokio_sync_semaphore_owned_merge() {
    let sem = ConcurrencyLimit::new(3).unwrap();
    {
        let mut p1 = sem.try_acquire_owned().unwrap();
        assert_eq!(sem.available_permits(), 2);
        let p2 = sem.try_acquire_many_owned(2).unwrap();
        assert_eq!(sem.available_permits(), 0);
        p1.merge(p2);
        assert_eq!(sem.available_permits(), 0);
    }
    assert_eq!(sem.available_permits(), 3);
}

/// tokio sync_semaphore_owned.rs: merge_unrelated_permits.
#[test]
#[should_panic]
fn tokio_sync_semaphore_owned_merge_unrelated_permits() {
    let sem1 = ConcurrencyLimit::new(3).unwrap();
    let sem2 = ConcurrencyLimit::new(3).unwrap();
    let mut p1 = sem1.try_acquire_owned().unwrap();
    let p2 = sem2.try_acquire_owned().unwrap();
    p1.merge(p2)
}

/// tokio sync_semaphore_owned.rs: split.
#[test]
fn tokio_sync_semaphore_owned_split() {
    let sem = ConcurrencyLimit::new(5).unwrap();
    let mut p1 = sem.try_acquire_many_owned(3).unwrap();
    assert_eq!(sem.available_permits(), 2);
    assert_eq!(p1.num_permits(), 3);
    let mut p2 = p1.split(1).unwrap();
    assert_eq!(sem.available_permits(), 2);
    assert_eq!(p1.num_permits(), 2);
    assert_eq!(p2.num_permits(), 1);
    let p3 = p1.split(0).unwrap();
    assert_eq!(p3.num_permits(), 0);
    drop(p1);
    assert_eq!(sem.available_permits(), 4);
    let p4 = p2.split(1).unwrap();
    assert_eq!(p2.num_permits(), 0);
    assert_eq!(p4.num_permits(), 1);
    assert!(p2.split(1).is_none());
    drop(p2);
    assert_eq!(sem.available_permits(), 4);
    drop(p3);
    assert_eq!(sem.available_permits(), 4);
    drop(p4);
    assert_eq!(sem.available_permits(), 5);
}

/// tokio sync_semaphore_owned.rs: stress_test.
#[tokio::test]
async fn tokio_sync_semaphore_owned_stress_test() {
    let sem = ConcurrencyLimit::new(5).unwrap();
    let mut join_handles = Vec::new();
    for _ in 0..1000 {
        let sem_clone = sem.clone();
        join_handles.push(tokio::spawn(async move {
            let _p = sem_clone.acquire_owned().await;
        }));
    }
    for j in join_handles {
        j.await.unwrap();
    }
    // there should be exactly 5 semaphores available now
    let _p1 = sem.try_acquire_owned().unwrap();
    let _p2 = sem.try_acquire_owned().unwrap();
    let _p3 = sem.try_acquire_owned().unwrap();
    let _p4 = sem.try_acquire_owned().unwrap();
    let _p5 = sem.try_acquire_owned().unwrap();
    assert!(sem.try_acquire_owned().is_err());
}

// ---------------------------------------------------------------------------
// tokio src/sync/tests/semaphore_batch.rs (the semaphore under `Semaphore`,
// whose `release(n)` adds permits without a guard: here a held permit of that
// size is dropped, or split off and dropped)
// ---------------------------------------------------------------------------

/// tokio semaphore_batch.rs: poll_acquire_one_available.
#[test]
fn tokio_semaphore_batch_poll_acquire_one_available() {
    let s = ConcurrencyLimit::new(100).unwrap();
    assert_eq!(s.available_permits(), 100);
    // Polling for a permit succeeds immediately
    let p = ready_ok(spawn(s.acquire_many(1)).poll());
    assert_eq!(s.available_permits(), 99);
    p.forget(); // the batch semaphore's permit has no guard
}

/// tokio semaphore_batch.rs: poll_acquire_many_available.
#[test]
fn tokio_semaphore_batch_poll_acquire_many_available() {
    let s = ConcurrencyLimit::new(100).unwrap();
    assert_eq!(s.available_permits(), 100);
    let _a = ready_ok(spawn(s.acquire_many(5)).poll());
    assert_eq!(s.available_permits(), 95);
    let _b = ready_ok(spawn(s.acquire_many(5)).poll());
    assert_eq!(s.available_permits(), 90);
}

/// tokio semaphore_batch.rs: try_acquire_one_available.
#[test]
fn tokio_semaphore_batch_try_acquire_one_available() {
    let s = ConcurrencyLimit::new(100).unwrap();
    assert_eq!(s.available_permits(), 100);
    let _a = s.try_acquire_many(1).unwrap();
    assert_eq!(s.available_permits(), 99);
    let _b = s.try_acquire_many(1).unwrap();
    assert_eq!(s.available_permits(), 98);
}

/// tokio semaphore_batch.rs: try_acquire_many_available.
#[test]
fn tokio_semaphore_batch_try_acquire_many_available() {
    let s = ConcurrencyLimit::new(100).unwrap();
    assert_eq!(s.available_permits(), 100);
    let _a = s.try_acquire_many(5).unwrap();
    assert_eq!(s.available_permits(), 95);
    let _b = s.try_acquire_many(5).unwrap();
    assert_eq!(s.available_permits(), 90);
}

/// tokio semaphore_batch.rs: poll_acquire_one_unavailable.
#[test]
fn tokio_semaphore_batch_poll_acquire_one_unavailable() {
    let s = ConcurrencyLimit::new(1).unwrap();
    // Acquire the first permit
    let first = ready_ok(spawn(s.acquire_many(1)).poll());
    assert_eq!(s.available_permits(), 0);
    let mut acquire_2 = spawn(s.acquire_many(1));
    // Try to acquire the second permit
    assert!(acquire_2.poll().is_pending());
    assert_eq!(s.available_permits(), 0);
    drop(first); // s.release(1)
    assert_eq!(s.available_permits(), 0);
    assert!(acquire_2.is_woken());
    let second = ready_ok(acquire_2.poll());
    assert_eq!(s.available_permits(), 0);
    drop(second); // s.release(1)
    assert_eq!(s.available_permits(), 1);
}

/// tokio semaphore_batch.rs: poll_acquire_many_unavailable.
#[test]
fn tokio_semaphore_batch_poll_acquire_many_unavailable() {
    let s = ConcurrencyLimit::new(5).unwrap();
    // Acquire the first permit
    let first = ready_ok(spawn(s.acquire_many(1)).poll());
    assert_eq!(s.available_permits(), 4);
    // Try to acquire the second permit
    let mut acquire_2 = spawn(s.acquire_many(5));
    assert!(acquire_2.poll().is_pending());
    assert_eq!(s.available_permits(), 0);
    // Try to acquire the third permit
    let mut acquire_3 = spawn(s.acquire_many(3));
    assert!(acquire_3.poll().is_pending());
    assert_eq!(s.available_permits(), 0);
    drop(first); // s.release(1)
    assert_eq!(s.available_permits(), 0);
    assert!(acquire_2.is_woken());
    let mut five = ready_ok(acquire_2.poll());
    assert!(!acquire_3.is_woken());
    assert_eq!(s.available_permits(), 0);
    drop(five.split(1)); // s.release(1)
    assert!(!acquire_3.is_woken());
    assert_eq!(s.available_permits(), 0);
    drop(five.split(2)); // s.release(2)
    assert!(acquire_3.is_woken());
    let _three = ready_ok(acquire_3.poll());
}

/// tokio semaphore_batch.rs: try_acquire_one_unavailable.
#[test]
fn tokio_semaphore_batch_try_acquire_one_unavailable() {
    let s = ConcurrencyLimit::new(1).unwrap();
    // Acquire the first permit
    let first = s.try_acquire_many(1).unwrap();
    assert_eq!(s.available_permits(), 0);
    assert!(s.try_acquire_many(1).is_err());
    drop(first); // s.release(1)
    assert_eq!(s.available_permits(), 1);
    let second = s.try_acquire_many(1).unwrap();
    drop(second); // s.release(1)
    assert_eq!(s.available_permits(), 1);
}

/// tokio semaphore_batch.rs: try_acquire_many_unavailable.
#[test]
fn tokio_semaphore_batch_try_acquire_many_unavailable() {
    let s = ConcurrencyLimit::new(5).unwrap();
    // Acquire the first permit
    let first = s.try_acquire_many(1).unwrap();
    assert_eq!(s.available_permits(), 4);
    assert!(s.try_acquire_many(5).is_err());
    drop(first); // s.release(1)
    assert_eq!(s.available_permits(), 5);
    let mut five = s.try_acquire_many(5).unwrap();
    drop(five.split(1)); // s.release(1)
    assert_eq!(s.available_permits(), 1);
    drop(five.split(1)); // s.release(1)
    assert_eq!(s.available_permits(), 2);
}

/// tokio semaphore_batch.rs: poll_acquire_one_zero_permits.
#[test]
fn tokio_semaphore_batch_poll_acquire_one_zero_permits() {
    let s = ConcurrencyLimit::new(0).unwrap();
    assert_eq!(s.available_permits(), 0);
    // Try to acquire the permit
    let mut acquire = spawn(s.acquire_many(1));
    assert!(acquire.poll().is_pending());
    s.add_permits(1).unwrap(); // s.release(1)
    assert!(acquire.is_woken());
    let _p = ready_ok(acquire.poll());
}

/// tokio semaphore_batch.rs: max_permits_doesnt_panic.
#[test]
fn tokio_semaphore_batch_max_permits_doesnt_panic() {
    ConcurrencyLimit::new(MAX_PERMITS).unwrap();
}

/// tokio semaphore_batch.rs: validates_max_permits (tokio panics; heijunka
/// refuses with a `ConfigError` naming the field).
#[test]
fn tokio_semaphore_batch_validates_max_permits() {
    assert_eq!(
        ConcurrencyLimit::new(MAX_PERMITS + 1).unwrap_err().field(),
        "permits"
    );
}

/// tokio semaphore_batch.rs: try_acquire_validates_max_permits (tokio panics; a
/// request above any limit is refused as never possible).
#[test]
fn tokio_semaphore_batch_try_acquire_validates_max_permits() {
    let s = ConcurrencyLimit::new(1).unwrap();
    assert!(s.try_acquire_many(MAX_PERMITS + 1).is_err());
}

/// tokio semaphore_batch.rs: close_semaphore_prevents_acquire.
#[test]
fn tokio_semaphore_batch_close_semaphore_prevents_acquire() {
    let s = ConcurrencyLimit::new(5).unwrap();
    s.close();
    assert_eq!(5, s.available_permits());
    assert!(is_ready_err(spawn(s.acquire_many(1)).poll()));
    assert_eq!(5, s.available_permits());
    assert!(is_ready_err(spawn(s.acquire_many(1)).poll()));
    assert_eq!(5, s.available_permits());
}

/// tokio semaphore_batch.rs: close_semaphore_notifies_permit1.
#[test]
fn tokio_semaphore_batch_close_semaphore_notifies_permit1() {
    let s = ConcurrencyLimit::new(0).unwrap();
    let mut acquire = spawn(s.acquire_many(1));
    assert!(acquire.poll().is_pending());
    s.close();
    assert!(acquire.is_woken());
    assert!(is_ready_err(acquire.poll()));
}

/// tokio semaphore_batch.rs: close_semaphore_notifies_permit2.
#[test]
fn tokio_semaphore_batch_close_semaphore_notifies_permit2() {
    let s = ConcurrencyLimit::new(2).unwrap();
    // Acquire a couple of permits
    let p1 = ready_ok(spawn(s.acquire_many(1)).poll());
    let p2 = ready_ok(spawn(s.acquire_many(1)).poll());
    let mut acquire3 = spawn(s.acquire_many(1));
    let mut acquire4 = spawn(s.acquire_many(1));
    assert!(acquire3.poll().is_pending());
    assert!(acquire4.poll().is_pending());
    s.close();
    assert!(acquire3.is_woken());
    assert!(acquire4.is_woken());
    assert!(is_ready_err(acquire3.poll()));
    assert!(is_ready_err(acquire4.poll()));
    assert_eq!(0, s.available_permits());
    drop(p1); // s.release(1)
    assert_eq!(1, s.available_permits());
    assert!(is_ready_err(spawn(s.acquire_many(1)).poll()));
    drop(p2); // s.release(1)
    assert_eq!(2, s.available_permits());
}

/// tokio semaphore_batch.rs: cancel_acquire_releases_permits.
#[test]
fn tokio_semaphore_batch_cancel_acquire_releases_permits() {
    let s = ConcurrencyLimit::new(10).unwrap();
    let _four = s
        .try_acquire_many(4)
        .expect("uncontended try_acquire succeeds");
    assert_eq!(6, s.available_permits());
    let mut acquire = spawn(s.acquire_many(8));
    assert!(acquire.poll().is_pending());
    assert_eq!(0, s.available_permits());
    assert_eq!(s.in_use(), 4, "the 6 set aside for the waiter are not held");
    drop(acquire);
    assert_eq!(6, s.available_permits());
    let _six = s.try_acquire_many(6).unwrap();
}

/// tokio semaphore_batch.rs: release_permits_at_drop.
#[test]
fn tokio_semaphore_batch_release_permits_at_drop() {
    struct ReleaseOnDrop(#[allow(dead_code)] Option<OwnedPermit>);
    impl Wake for ReleaseOnDrop {
        fn wake(self: Arc<Self>) {}
    }
    let sem = ConcurrencyLimit::new(1).unwrap();
    let mut fut = Box::pin(async {
        let _permit = sem.acquire().await.unwrap();
    });
    // Second iteration shouldn't deadlock.
    for _ in 0..=1 {
        let waker = Waker::from(Arc::new(ReleaseOnDrop(sem.try_acquire_owned().ok())));
        let mut cx = Context::from_waker(&waker);
        assert!(fut.as_mut().poll(&mut cx).is_pending());
    }
}

/// tokio semaphore_batch.rs: forget_permits_basic.
#[test]
fn tokio_semaphore_batch_forget_permits_basic() {
    let s = ConcurrencyLimit::new(10).unwrap();
    assert_eq!(s.forget_permits(4), 4);
    assert_eq!(s.available_permits(), 6);
    assert_eq!(s.forget_permits(10), 6);
    assert_eq!(s.available_permits(), 0);
}

/// tokio semaphore_batch.rs: acquire_validates_max_permits (tokio panics; a
/// request above a limit is refused at once as never possible. On a limit of 0
/// it would wait for the gate to open, so the port uses a limit of 1).
#[test]
fn tokio_semaphore_batch_acquire_validates_max_permits() {
    let s = ConcurrencyLimit::new(1).unwrap();
    assert!(is_ready_err(spawn(s.acquire_many(MAX_PERMITS + 1)).poll()));
}

/// tokio semaphore_batch.rs: acquire_validates_top_bit_permits (as above).
#[test]
fn tokio_semaphore_batch_acquire_validates_top_bit_permits() {
    let s = ConcurrencyLimit::new(1).unwrap();
    assert!(is_ready_err(spawn(s.acquire_many(1_u32 << 31)).poll()));
}
