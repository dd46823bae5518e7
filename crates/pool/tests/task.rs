//! `TaskPool`: bounds on running and waiting futures, hand-back, panics, shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use heijunka_core::Rejection;
use heijunka_pool::{TaskError, TaskPool};

#[test]
fn bad_configuration_is_an_error() {
    assert_eq!(
        TaskPool::builder()
            .max_running(0)
            .build()
            .unwrap_err()
            .field(),
        "max_running"
    );
}

#[tokio::test(start_paused = true)]
async fn running_and_waiting_are_bounded_and_rejects_hand_the_future_back() {
    let pool = TaskPool::builder()
        .max_running(2)
        .max_waiting(2)
        .build()
        .unwrap();
    let running = Arc::new(AtomicUsize::new(0));
    let max = Arc::new(AtomicUsize::new(0));
    let task = |running: Arc<AtomicUsize>, max: Arc<AtomicUsize>| async move {
        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
        max.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        running.fetch_sub(1, Ordering::SeqCst);
        now
    };
    let mut handles = Vec::new();
    for _ in 0..4 {
        handles.push(pool.try_spawn(task(running.clone(), max.clone())).unwrap());
    }
    assert_eq!(pool.stats().queued, 2);
    let err = pool.try_spawn(async { "handed back" }).unwrap_err();
    assert_eq!(err.reason(), Some(Rejection::QueueFull { capacity: 2 }));
    assert_eq!(err.into_inner().await, "handed back");
    // `spawn` waits for a waiting slot instead.
    let waited = pool
        .spawn(task(running.clone(), max.clone()))
        .await
        .unwrap();
    handles.push(waited);
    for h in handles {
        h.join().await.unwrap();
    }
    assert_eq!(max.load(Ordering::SeqCst), 2);
    let s = pool.stats();
    assert_eq!((s.completed, s.rejected, s.active, s.queued), (5, 1, 0, 0));
    assert!(s.p50 >= Duration::from_millis(99), "{s:?}");
}

#[tokio::test]
async fn panics_are_caught_into_the_handle() {
    let pool = TaskPool::builder().max_running(1).build().unwrap();
    let h = pool
        .try_spawn(async {
            panic!("boom in a task");
        })
        .unwrap();
    assert_eq!(
        h.join().await,
        Err::<(), _>(TaskError::Panicked("boom in a task".into()))
    );
    let ok = pool.try_spawn(async { 5 }).unwrap();
    assert_eq!(ok.join().await, Ok(5));
    assert_eq!(pool.stats().panicked, 1);
}

#[tokio::test(start_paused = true)]
async fn shutdown_drains_within_grace_then_cancels_the_rest() {
    let pool = TaskPool::builder()
        .max_running(1)
        .max_waiting(4)
        .build()
        .unwrap();
    let quick = pool
        .try_spawn(tokio::time::sleep(Duration::from_secs(1)))
        .unwrap();
    let report = pool.shutdown(Duration::from_secs(5)).await;
    assert!(report.clean);
    assert!(quick.join().await.is_ok());
    assert_eq!(
        pool.try_spawn(async {}).unwrap_err().reason(),
        Some(Rejection::ShuttingDown)
    );

    let pool = TaskPool::builder()
        .max_running(1)
        .max_waiting(4)
        .build()
        .unwrap();
    let slow = pool
        .try_spawn(tokio::time::sleep(Duration::from_secs(3600)))
        .unwrap();
    let queued = pool.try_spawn(async { 1 }).unwrap();
    let start = tokio::time::Instant::now();
    let report = pool.shutdown(Duration::from_secs(2)).await;
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert!(!report.clean);
    assert_eq!(slow.join().await, Err(TaskError::Cancelled));
    assert_eq!(queued.join().await, Err(TaskError::Cancelled));
    assert_eq!(pool.stats().cancelled, 2);
}

#[tokio::test(start_paused = true)]
async fn a_registered_task_pool_follows_the_shutdown() {
    let shutdown = heijunka_shutdown::Shutdown::new();
    let pool = TaskPool::builder().max_running(2).build().unwrap();
    pool.register_with(&shutdown, "task pool", Duration::from_secs(5))
        .unwrap();
    let h = pool
        .try_spawn(tokio::time::sleep(Duration::from_millis(10)))
        .unwrap();
    shutdown.trigger();
    assert!(pool.try_spawn(async {}).is_err());
    let report = shutdown.wait().await;
    assert!(report.is_clean(), "{report}");
    assert!(h.join().await.is_ok());
}

/// Tasks queued but not yet polled when shutdown starts still run within the
/// grace period: shutdown must not take the running slots ahead of them.
#[tokio::test(start_paused = true)]
async fn shutdown_right_after_queueing_still_runs_the_queue() {
    let pool = TaskPool::builder()
        .max_running(1)
        .max_waiting(4)
        .build()
        .unwrap();
    let gate = Arc::new(tokio::sync::Notify::new());
    let ran = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for i in 0..5 {
        let (gate, ran) = (gate.clone(), ran.clone());
        handles.push(
            pool.try_spawn(async move {
                if i == 0 {
                    gate.notified().await;
                }
                ran.fetch_add(1, Ordering::SeqCst);
            })
            .map_err(|e| e.reason())
            .unwrap(),
        );
    }
    // No task has been polled yet; shut down at once, then open the gate.
    let shutdown = pool.shutdown(Duration::from_secs(10));
    let open = async {
        tokio::time::sleep(Duration::from_millis(1)).await;
        gate.notify_one();
    };
    let (report, ()) = tokio::join!(shutdown, open);
    assert!(report.clean, "{report:?}");
    assert_eq!(report.cancelled, 0);
    assert_eq!(ran.load(Ordering::SeqCst), 5);
    for h in handles {
        h.join().await.unwrap();
    }
}

/// With no waiting queue, `spawn` waits for a running slot itself.
#[tokio::test(start_paused = true)]
async fn spawn_without_a_waiting_queue_waits_for_a_running_slot() {
    let pool = TaskPool::builder()
        .max_running(1)
        .max_waiting(0)
        .build()
        .unwrap();
    let first = pool
        .try_spawn(tokio::time::sleep(Duration::from_millis(50)))
        .map_err(|e| e.reason())
        .unwrap();
    assert_eq!(
        pool.try_spawn(async {}).map(drop).unwrap_err().reason(),
        Some(Rejection::QueueFull { capacity: 0 })
    );
    // A cancelled wait leaves nothing behind...
    assert!(
        tokio::time::timeout(Duration::from_millis(10), pool.spawn(async {}))
            .await
            .is_err()
    );
    // ...and a patient one starts once the running task ends.
    let second = tokio::time::timeout(Duration::from_secs(1), pool.spawn(async { 7 }))
        .await
        .expect("spawned once the slot freed")
        .map_err(|e| e.reason())
        .unwrap();
    first.join().await.unwrap();
    assert_eq!(second.join().await.unwrap(), 7);
    assert!(pool.shutdown(Duration::from_secs(1)).await.clean);
}

/// Outside a tokio runtime there is nothing to run a task on: `try_spawn` says so
/// and hands the future back, keeping its running slot (with `max_running(1)`, a
/// lost slot would leave every later task waiting for ever).
#[test]
fn try_spawn_outside_a_runtime_hands_the_future_back_and_keeps_the_slot() {
    let pool = TaskPool::builder()
        .max_running(1)
        .max_waiting(4)
        .build()
        .unwrap();
    let refused = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        pool.try_spawn(async { 1 })
            .map(drop)
            .map_err(|e| (e.to_string(), e.into_inner()))
    }))
    .expect("an error, not a panic");
    let (message, future) = refused.expect_err("no runtime: refused");
    assert!(message.contains("runtime"), "{message}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        assert_eq!(future.await, 1);
        let later = pool
            .try_spawn(async { 2 })
            .map_err(|e| e.to_string())
            .unwrap();
        let joined = tokio::time::timeout(Duration::from_secs(5), later.join()).await;
        assert_eq!(joined, Ok(Ok(2)), "the running slot came back");
        assert_eq!(pool.stats().rejected, 1);
        assert!(pool.shutdown(Duration::from_secs(1)).await.clean);
    });
}

/// A `max_running` above `u32::MAX` could never be waited for by shutdown (tokio
/// takes at most `u32::MAX` permits at once, so shutdown would report clean while
/// tasks run): a `ConfigError` naming the field and the value.
#[test]
fn max_running_above_u32_max_is_a_config_error() {
    let too_many = u32::MAX as usize + 1;
    let err = TaskPool::builder()
        .max_running(too_many)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "max_running");
    assert_eq!(
        err.to_string(),
        format!("max_running must be at most {}, got {too_many}", u32::MAX)
    );
}

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

/// `shutdown` dropped part-way (a caller's time-out) does not change the outcome
/// the next call reports: here the grace period runs out on a task that never
/// ends, so every call, whatever poll the first was dropped at, says unclean with
/// that task cancelled.
#[test]
fn a_cancelled_shutdown_is_finished_by_the_next_call() {
    use heijunka_core::cancel::{Polled, cancel_points};
    cancel_points(32, |k| {
        let rt = paused_runtime();
        let _g = rt.enter();
        let pool = TaskPool::builder()
            .max_running(1)
            .max_waiting(1)
            .build()
            .unwrap();
        let stuck = pool.try_spawn(std::future::pending::<()>()).unwrap();
        let outcome = Polled::new(pool.shutdown(Duration::from_secs(1))).drop_after_with(k, |_| {
            rt.block_on(tokio::time::advance(Duration::from_millis(300)));
        });
        let report = rt.block_on(pool.shutdown(Duration::from_secs(1)));
        assert!(!report.clean, "k = {k}: {report:?}");
        assert_eq!(report.cancelled, 1, "k = {k}: {report:?}");
        assert_eq!(
            rt.block_on(stuck.join()),
            Err(TaskError::Cancelled),
            "k = {k}"
        );
        outcome
    });
}

/// A `spawn` dropped while it waits for room (poll k times, then drop): the
/// future is dropped with it, unrun (as documented), and nothing stays counted:
/// the waiting slot is free for the next task, the running slot comes back.
#[test]
fn a_cancelled_spawn_drops_its_future_and_keeps_nothing() {
    use heijunka_core::cancel::{Polled, cancel_points};
    struct Tracked(Arc<AtomicUsize>, Arc<AtomicUsize>);
    impl std::future::Future for Tracked {
        type Output = u32;
        fn poll(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<u32> {
            self.0.fetch_add(1, Ordering::SeqCst);
            std::task::Poll::Ready(9)
        }
    }
    impl Drop for Tracked {
        fn drop(&mut self) {
            self.1.fetch_add(1, Ordering::SeqCst);
        }
    }
    cancel_points(16, |k| {
        let rt = paused_runtime();
        let _g = rt.enter();
        let pool = TaskPool::builder()
            .max_running(1)
            .max_waiting(1)
            .build()
            .unwrap();
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let g = gate.clone();
        let running = pool
            .try_spawn(async move { g.acquire().await.unwrap().forget() })
            .unwrap();
        let queued = pool.try_spawn(async { 1 }).unwrap();
        let (polled, dropped) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let fut = Tracked(polled.clone(), dropped.clone());
        // Room appears before the third poll: the running task ends, the queued
        // one takes the running slot.
        let outcome = Polled::new(pool.spawn(fut)).drop_after_with(k, |i| {
            if i == 2 {
                gate.add_permits(1);
                for _ in 0..4 {
                    rt.block_on(tokio::task::yield_now());
                }
            }
        });
        let spawned = match outcome {
            heijunka_core::cancel::Outcome::Completed { ref output, .. } => output.is_ok(),
            heijunka_core::cancel::Outcome::Cancelled { .. } => false,
        };
        gate.add_permits(8);
        rt.block_on(async {
            running.join().await.ok();
            assert_eq!(queued.join().await, Ok(1), "k = {k}");
        });
        if !spawned {
            assert_eq!(
                dropped.load(Ordering::SeqCst),
                1,
                "k = {k}: dropped with the spawn"
            );
            assert_eq!(polled.load(Ordering::SeqCst), 0, "k = {k}: never ran");
        }
        // Nothing kept: both slots serve new tasks, and the pool drains clean.
        rt.block_on(async {
            let a = pool.try_spawn(async { 2 }).unwrap();
            let b = pool.try_spawn(async { 3 }).unwrap();
            assert_eq!((a.join().await, b.join().await), (Ok(2), Ok(3)), "k = {k}");
            assert_eq!(pool.stats().queued, 0, "k = {k}");
            assert!(pool.shutdown(Duration::from_secs(1)).await.clean, "k = {k}");
        });
        outcome
    });
}

/// `join` dropped after k polls detaches the task: it still runs to the end and
/// gives its running slot back.
#[test]
fn a_cancelled_join_detaches_the_task() {
    use heijunka_core::cancel::{Polled, cancel_points};
    cancel_points(16, |k| {
        let rt = paused_runtime();
        let _g = rt.enter();
        let pool = TaskPool::builder().max_running(1).build().unwrap();
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        let h = pool
            .try_spawn(async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                r.fetch_add(1, Ordering::SeqCst);
                5
            })
            .unwrap();
        let outcome = Polled::new(h.join()).drop_after_with(k, |_| {
            rt.block_on(tokio::time::advance(Duration::from_millis(4)));
        });
        rt.block_on(async {
            let next = pool.spawn(async { 6 }).await.unwrap();
            assert_eq!(next.join().await, Ok(6), "k = {k}: the slot came back");
        });
        assert_eq!(ran.load(Ordering::SeqCst), 1, "k = {k}: the task ran");
        assert_eq!(pool.stats().completed, 2, "k = {k}");
        outcome
    });
}

/// `shutdown` awaited outside any tokio runtime (a plain executor), for a pool
/// built outside one: no panic, and the pool is not left closed with no shutdown
/// running: the call reports unclean, intake stays open, and a shutdown from a
/// runtime later does the work.
#[test]
fn shutdown_outside_any_runtime_neither_panics_nor_strands_the_pool() {
    use heijunka_core::cancel::Polled;
    use std::panic::{AssertUnwindSafe, catch_unwind};
    let pool = TaskPool::builder().max_running(1).build().unwrap();
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        Polled::new(pool.shutdown(Duration::from_secs(1))).drop_after(1)
    }))
    .expect("shutdown panicked outside a runtime");
    let report = outcome.output().expect("it completes at once");
    assert!(!report.clean, "{report:?}");
    let rt = paused_runtime();
    let _g = rt.enter();
    let task = pool
        .try_spawn(async { 5 })
        .map_err(|e| e.to_string())
        .expect("intake is still open");
    assert_eq!(rt.block_on(task.join()), Ok(5));
    let report = rt.block_on(pool.shutdown(Duration::from_secs(1)));
    assert!(report.clean, "{report:?}");
}

/// `shutdown` polled outside a runtime context for a pool built inside one: the
/// shutdown runs on the runtime the pool was built in.
#[test]
fn shutdown_polled_off_the_runtime_runs_on_the_pools_runtime() {
    use heijunka_core::cancel::Polled;
    let rt = paused_runtime();
    let pool = {
        let _g = rt.enter();
        TaskPool::builder().max_running(1).build().unwrap()
    };
    let outcome = Polled::new(pool.shutdown(Duration::from_secs(1))).drop_after_with(16, |_| {
        for _ in 0..4 {
            rt.block_on(tokio::task::yield_now());
        }
    });
    let report = outcome.output().expect("the shutdown completes");
    assert!(report.clean, "{report:?}");
}

/// A `spawn` waiting for a waiting slot is reported in `blocked_submitters`
/// while it waits, and no longer once it got in.
#[test]
fn a_spawn_waiting_for_room_is_reported_while_it_waits() {
    let rt = paused_runtime();
    let _g = rt.enter();
    let pool = TaskPool::builder()
        .max_running(1)
        .max_waiting(1)
        .build()
        .unwrap();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let g = gate.clone();
    let running = pool
        .try_spawn(async move { g.acquire().await.unwrap().forget() })
        .unwrap();
    let queued = pool.try_spawn(async { 1 }).unwrap();
    assert_eq!(pool.stats().blocked_submitters, 0);
    let p = pool.clone();
    let blocked = rt.spawn(async move { p.spawn(async { 2 }).await.map(drop).is_ok() });
    for _ in 0..4 {
        rt.block_on(tokio::task::yield_now());
    }
    assert_eq!(pool.stats().blocked_submitters, 1, "{:?}", pool.stats());
    gate.add_permits(1);
    assert!(rt.block_on(blocked).unwrap());
    rt.block_on(running.join()).unwrap();
    assert_eq!(rt.block_on(queued.join()), Ok(1));
    assert_eq!(pool.stats().blocked_submitters, 0);
}
