//! The pools' metrics (feature `metrics`): the documented names and labels, and
//! values checked against what the tasks themselves counted.
#![cfg(feature = "metrics")]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use heijunka_core::Rejection;
use heijunka_core::cancel::{Outcome, Polled, cancel_points};
use heijunka_core::metrics::TestRecorder;
use heijunka_pool::{TaskError, TaskPool, WorkerPool};

const NAMES: [&str; 7] = [
    "heijunka_pool_cancelled_total",
    "heijunka_pool_completed_total",
    "heijunka_pool_panicked_total",
    "heijunka_pool_queued",
    "heijunka_pool_rejected_total",
    "heijunka_pool_running",
    "heijunka_pool_task_seconds",
];

fn documented(name: &str) -> Vec<(String, Vec<(String, String)>)> {
    NAMES
        .iter()
        .map(|n| ((*n).to_owned(), vec![("name".to_owned(), name.to_owned())]))
        .collect()
}

fn wait_until(what: &str, f: impl Fn() -> bool) {
    let until = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::yield_now();
    }
}

fn val(rec: &TestRecorder, metric: &str, name: &str) -> f64 {
    rec.gauge(metric, &[("name", name)])
        .unwrap_or_else(|| panic!("{metric} not registered"))
}

fn count(rec: &TestRecorder, metric: &str, name: &str) -> u64 {
    rec.counter(metric, &[("name", name)])
        .unwrap_or_else(|| panic!("{metric} not registered"))
}

#[test]
fn worker_pool_counts_queued_running_and_outcomes() {
    let rec = TestRecorder::new();
    let pool = rec
        .scoped(|| {
            WorkerPool::builder()
                .workers(2)
                .queue_capacity(3)
                .name("wp")
                .build()
        })
        .unwrap();
    assert_eq!(rec.keys(), documented("wp"));

    let started = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Barrier::new(3));
    let blocked: Vec<_> = (0..2)
        .map(|_| {
            let (started, gate) = (started.clone(), gate.clone());
            pool.submit(move || {
                started.fetch_add(1, Ordering::SeqCst);
                gate.wait();
            })
            .unwrap()
        })
        .collect();
    wait_until("both workers busy", || started.load(Ordering::SeqCst) == 2);
    // Both workers held, three tasks queued: one panics.
    let queued: Vec<_> = (0..3)
        .map(|i| {
            pool.try_submit(move || {
                assert_ne!(i, 1, "task 1 panics");
                i
            })
            .unwrap()
        })
        .collect();
    assert_eq!(val(&rec, "heijunka_pool_queued", "wp"), 3.0);
    assert_eq!(val(&rec, "heijunka_pool_running", "wp"), 2.0);
    // The queue is full: refused, handed back.
    let refused = pool.try_submit(|| 99).unwrap_err();
    assert_eq!(refused.reason(), Rejection::QueueFull { capacity: 3 });
    assert_eq!(count(&rec, "heijunka_pool_rejected_total", "wp"), 1);

    gate.wait();
    let (mut ok, mut panicked) = (0_u64, 0_u64);
    for h in blocked {
        h.join().unwrap();
        ok += 1;
    }
    for h in queued {
        match h.join() {
            Ok(_) => ok += 1,
            Err(TaskError::Panicked(_)) => panicked += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!((ok, panicked), (4, 1));
    // Every worker has exited: nothing runs or waits any more.
    assert!(pool.shutdown(Duration::from_secs(10)).clean);
    assert_eq!(count(&rec, "heijunka_pool_completed_total", "wp"), ok);
    assert_eq!(count(&rec, "heijunka_pool_panicked_total", "wp"), panicked);
    assert_eq!(count(&rec, "heijunka_pool_cancelled_total", "wp"), 0);
    assert_eq!(val(&rec, "heijunka_pool_queued", "wp"), 0.0);
    assert_eq!(val(&rec, "heijunka_pool_running", "wp"), 0.0);
    let times = rec
        .histogram("heijunka_pool_task_seconds", &[("name", "wp")])
        .unwrap();
    assert_eq!(times.len() as u64, ok + panicked);
    // After shutdown: refused as shutting down.
    assert!(pool.try_execute(|| ()).is_err());
    assert_eq!(count(&rec, "heijunka_pool_rejected_total", "wp"), 2);
    assert_eq!(rec.keys(), documented("wp"));
}

#[test]
fn worker_pool_tasks_cancelled_while_queued_leave_the_gauge_balanced() {
    let rec = TestRecorder::new();
    let pool = rec
        .scoped(|| {
            WorkerPool::builder()
                .workers(1)
                .queue_capacity(4)
                .name("wc")
                .build()
        })
        .unwrap();
    let started = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Barrier::new(2));
    let (s, g) = (started.clone(), gate.clone());
    let blocked = pool
        .submit(move || {
            s.fetch_add(1, Ordering::SeqCst);
            g.wait();
        })
        .unwrap();
    wait_until("the worker busy", || started.load(Ordering::SeqCst) == 1);
    let ran = Arc::new(AtomicUsize::new(0));
    let queued: Vec<_> = (0..3)
        .map(|_| {
            let ran = ran.clone();
            pool.submit(move || ran.fetch_add(1, Ordering::SeqCst))
                .unwrap()
        })
        .collect();
    assert_eq!(val(&rec, "heijunka_pool_queued", "wc"), 3.0);
    // No grace: the queued tasks are dropped unrun.
    let report = pool.shutdown(Duration::ZERO);
    assert_eq!(report.cancelled, 3);
    for h in queued {
        assert!(matches!(h.join(), Err(TaskError::Cancelled)));
    }
    assert_eq!(val(&rec, "heijunka_pool_queued", "wc"), 0.0);
    assert_eq!(count(&rec, "heijunka_pool_cancelled_total", "wc"), 3);
    assert_eq!(val(&rec, "heijunka_pool_running", "wc"), 1.0);
    gate.wait();
    blocked.join().unwrap();
    wait_until("the running task to end", || {
        val(&rec, "heijunka_pool_running", "wc") == 0.0
    });
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    assert_eq!(count(&rec, "heijunka_pool_completed_total", "wc"), 1);
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

#[test]
fn task_pool_counts_queued_running_and_outcomes() {
    let rec = TestRecorder::new();
    let rt = rt();
    // Unnamed: the label is "default".
    let pool = rec
        .scoped(|| TaskPool::builder().max_running(2).max_waiting(2).build())
        .unwrap();
    assert_eq!(rec.keys(), documented("default"));
    let n = "default";
    rt.block_on(async {
        let started = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let mut handles = Vec::new();
        for i in 0..4 {
            let (started, gate) = (started.clone(), gate.clone());
            handles.push(
                pool.try_spawn(async move {
                    started.fetch_add(1, Ordering::SeqCst);
                    gate.acquire().await.unwrap().forget();
                    assert_ne!(i, 3, "task 3 panics");
                })
                .unwrap(),
            );
        }
        // Two run (before the tasks are even polled: their slots are taken), two
        // wait.
        assert_eq!(val(&rec, "heijunka_pool_queued", n), 2.0);
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(started.load(Ordering::SeqCst), 2);
        assert_eq!(val(&rec, "heijunka_pool_running", n), 2.0);
        assert_eq!(val(&rec, "heijunka_pool_queued", n), 2.0);
        let refused = pool.try_spawn(async {}).unwrap_err();
        assert!(matches!(
            refused,
            heijunka_pool::SpawnError::Rejected(ref r) if r.reason() == Rejection::QueueFull { capacity: 2 }
        ));
        assert_eq!(count(&rec, "heijunka_pool_rejected_total", n), 1);
        gate.add_permits(4);
        let (mut ok, mut panicked) = (0_u64, 0_u64);
        for h in handles {
            match h.join().await {
                Ok(()) => ok += 1,
                Err(TaskError::Panicked(_)) => panicked += 1,
                Err(e) => panic!("unexpected {e}"),
            }
        }
        assert_eq!((ok, panicked), (3, 1));
        assert_eq!(started.load(Ordering::SeqCst), 4);
        assert_eq!(count(&rec, "heijunka_pool_completed_total", n), ok);
        assert_eq!(count(&rec, "heijunka_pool_panicked_total", n), panicked);
        assert_eq!(val(&rec, "heijunka_pool_queued", n), 0.0);
        assert_eq!(val(&rec, "heijunka_pool_running", n), 0.0);
        let times = rec
            .histogram("heijunka_pool_task_seconds", &[("name", n)])
            .unwrap();
        assert_eq!(times.len() as u64, ok + panicked);
        assert!(pool.shutdown(Duration::from_secs(1)).await.clean);
        assert!(pool.try_spawn(async {}).is_err());
        assert_eq!(count(&rec, "heijunka_pool_rejected_total", n), 2);
    });
    assert_eq!(rec.keys(), documented("default"));
}

#[test]
fn task_pool_tasks_cancelled_while_queued_leave_the_gauges_balanced() {
    let rec = TestRecorder::new();
    let rt = rt();
    let pool = rec
        .scoped(|| {
            TaskPool::builder()
                .max_running(1)
                .max_waiting(2)
                .name("tc")
                .build()
        })
        .unwrap();
    rt.block_on(async {
        let ran = Arc::new(AtomicUsize::new(0));
        let blocked = pool.try_spawn(std::future::pending::<()>()).unwrap();
        let queued: Vec<_> = (0..2)
            .map(|_| {
                let ran = ran.clone();
                pool.try_spawn(async move {
                    ran.fetch_add(1, Ordering::SeqCst);
                })
                .unwrap()
            })
            .collect();
        tokio::task::yield_now().await;
        assert_eq!(val(&rec, "heijunka_pool_queued", "tc"), 2.0);
        assert_eq!(val(&rec, "heijunka_pool_running", "tc"), 1.0);
        let report = pool.shutdown(Duration::ZERO).await;
        assert!(!report.clean);
        assert!(matches!(blocked.join().await, Err(TaskError::Cancelled)));
        for h in queued {
            assert!(matches!(h.join().await, Err(TaskError::Cancelled)));
        }
        assert_eq!(ran.load(Ordering::SeqCst), 0);
        assert_eq!(val(&rec, "heijunka_pool_queued", "tc"), 0.0);
        assert_eq!(val(&rec, "heijunka_pool_running", "tc"), 0.0);
        assert_eq!(count(&rec, "heijunka_pool_cancelled_total", "tc"), 3);
    });
}

#[test]
fn task_pool_tasks_dropped_by_their_runtime_leave_the_gauges_balanced() {
    let rec = TestRecorder::new();
    let pool = rec
        .scoped(|| {
            TaskPool::builder()
                .max_running(1)
                .max_waiting(2)
                .name("td")
                .build()
        })
        .unwrap();
    let rt = rt();
    rt.block_on(async {
        pool.try_spawn(std::future::pending::<()>()).unwrap();
        pool.try_spawn(async {}).unwrap();
        tokio::task::yield_now().await;
    });
    assert_eq!(val(&rec, "heijunka_pool_queued", "td"), 1.0);
    assert_eq!(val(&rec, "heijunka_pool_running", "td"), 1.0);
    // The runtime goes, dropping both tasks where they stand.
    drop(rt);
    assert_eq!(val(&rec, "heijunka_pool_queued", "td"), 0.0);
    assert_eq!(val(&rec, "heijunka_pool_running", "td"), 0.0);
}

/// `spawn` dropped at each of its await points while it waits for room: nothing
/// is left counted as queued or running, and the rejection counter does not move
/// (a caller that gives up was not refused).
#[test]
fn task_pool_spawn_cancelled_while_waiting_for_room_counts_nothing() {
    let covered = cancel_points(8, |k| {
        let rec = TestRecorder::new();
        let rt = rt();
        let _g = rt.enter();
        let pool = rec
            .scoped(|| {
                TaskPool::builder()
                    .max_running(1)
                    .max_waiting(1)
                    .name("ts")
                    .build()
            })
            .unwrap();
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let g = gate.clone();
        let first = pool
            .try_spawn(async move { g.acquire().await.unwrap().forget() })
            .unwrap();
        let second = pool.try_spawn(async {}).unwrap();
        let p = pool.clone();
        let outcome =
            Polled::new(async move { p.spawn(async { 7 }).await }).drop_after_with(k, |i| {
                if i == 1 {
                    // Room appears after the first poll.
                    gate.add_permits(1);
                    rt.block_on(async {
                        for _ in 0..10 {
                            tokio::task::yield_now().await;
                        }
                    });
                }
            });
        let (third, polls) = match outcome {
            Outcome::Completed { output, polls } => (Some(output.unwrap()), polls),
            Outcome::Cancelled { polls } => (None, polls),
        };
        let completed = third.is_some();
        gate.add_permits(1);
        rt.block_on(async {
            first.join().await.unwrap();
            second.join().await.unwrap();
            if let Some(h) = third {
                assert_eq!(h.join().await.unwrap(), 7);
            }
        });
        assert_eq!(val(&rec, "heijunka_pool_queued", "ts"), 0.0, "k = {k}");
        assert_eq!(val(&rec, "heijunka_pool_running", "ts"), 0.0, "k = {k}");
        assert_eq!(count(&rec, "heijunka_pool_rejected_total", "ts"), 0);
        assert_eq!(
            count(&rec, "heijunka_pool_completed_total", "ts"),
            2 + u64::from(completed),
            "k = {k}"
        );
        if completed {
            Outcome::Completed { output: (), polls }
        } else {
            Outcome::Cancelled { polls }
        }
    });
    assert!(covered >= 1);
}

type Disp = heijunka_pool::Dispatcher<u32, u32, String>;

fn dispatcher(rec: &TestRecorder, rt: &tokio::runtime::Runtime, name: &str) -> Disp {
    rec.scoped(|| {
        heijunka_pool::Dispatcher::builder()
            .workers(1)
            .queue_capacity(2)
            .runtime(rt.handle().clone())
            .name(name)
            .build()
    })
    .unwrap()
}

/// A handler that waits for a permit of `gate`, then panics on 1, fails on 2.
fn register(d: &Disp, gate: &Arc<tokio::sync::Semaphore>) {
    let gate = gate.clone();
    d.register("work", move |req: u32| {
        let gate = gate.clone();
        async move {
            gate.acquire().await.unwrap().forget();
            assert_ne!(req, 1, "request 1 panics");
            if req == 2 {
                Err("two".to_owned())
            } else {
                Ok(req)
            }
        }
    })
    .unwrap();
}

/// Three messages `from..from + 3` on the one worker: the first running
/// (blocked on the gate), two queued (the queue full).
async fn fill(d: &Disp, from: u32) -> Vec<heijunka_pool::Reply<u32, String>> {
    let mut replies = Vec::new();
    for i in from..from + 3 {
        replies.push(d.try_dispatch("work", i).unwrap());
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }
    replies
}

#[test]
fn dispatcher_counts_queued_running_and_outcomes() {
    let rec = TestRecorder::new();
    let rt = rt();
    let d = dispatcher(&rec, &rt, "d");
    assert_eq!(rec.keys(), documented("d"));
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    register(&d, &gate);
    rt.block_on(async {
        let replies = fill(&d, 0).await;
        // One running, two queued, the queue full: the next is refused.
        assert_eq!(val(&rec, "heijunka_pool_running", "d"), 1.0);
        assert_eq!(val(&rec, "heijunka_pool_queued", "d"), 2.0);
        assert!(d.try_dispatch("work", 9).is_err());
        assert_eq!(count(&rec, "heijunka_pool_rejected_total", "d"), 1);
        gate.add_permits(3);
        let (mut ok, mut failed, mut panicked) = (0_u64, 0_u64, 0_u64);
        for r in replies {
            match r.await {
                Ok(_) => ok += 1,
                Err(heijunka_pool::HandlerError::Failed(_)) => failed += 1,
                Err(heijunka_pool::HandlerError::Panicked { .. }) => panicked += 1,
                Err(e) => panic!("unexpected {e:?}"),
            }
        }
        assert_eq!((ok, failed, panicked), (1, 1, 1));
        // A handler that returned, even an error, ran to completion.
        assert_eq!(
            count(&rec, "heijunka_pool_completed_total", "d"),
            ok + failed
        );
        assert_eq!(count(&rec, "heijunka_pool_panicked_total", "d"), panicked);
        assert_eq!(val(&rec, "heijunka_pool_queued", "d"), 0.0);
        assert_eq!(val(&rec, "heijunka_pool_running", "d"), 0.0);
        let times = rec
            .histogram("heijunka_pool_task_seconds", &[("name", "d")])
            .unwrap();
        assert_eq!(times.len(), 3);

        // Shut down with no grace while one runs and two wait: all abandoned.
        let blocked = fill(&d, 10).await;
        assert_eq!(val(&rec, "heijunka_pool_running", "d"), 1.0);
        let report = d.shutdown(Duration::ZERO).await;
        assert_eq!(report.abandoned, 3);
        for r in blocked {
            assert!(matches!(
                r.await,
                Err(heijunka_pool::HandlerError::Abandoned)
            ));
        }
        assert_eq!(count(&rec, "heijunka_pool_cancelled_total", "d"), 3);
        assert_eq!(val(&rec, "heijunka_pool_queued", "d"), 0.0);
        assert_eq!(val(&rec, "heijunka_pool_running", "d"), 0.0);
    });
    assert_eq!(rec.keys(), documented("d"));
}

#[test]
fn dispatcher_messages_dropped_with_the_runtime_leave_the_gauges_balanced() {
    let rec = TestRecorder::new();
    let rt = rt();
    let d = dispatcher(&rec, &rt, "dr");
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    register(&d, &gate);
    let replies = rt.block_on(fill(&d, 0));
    assert_eq!(val(&rec, "heijunka_pool_running", "dr"), 1.0);
    assert_eq!(val(&rec, "heijunka_pool_queued", "dr"), 2.0);
    drop(rt);
    assert_eq!(val(&rec, "heijunka_pool_running", "dr"), 0.0);
    assert_eq!(val(&rec, "heijunka_pool_queued", "dr"), 0.0);
    assert_eq!(count(&rec, "heijunka_pool_cancelled_total", "dr"), 3);
    drop((replies, d));
}

/// `dispatch` dropped while it waits for room in a full queue: nothing is left
/// counted as queued, and it is not a rejection.
#[test]
fn dispatcher_dispatch_cancelled_while_waiting_counts_nothing() {
    let covered = cancel_points(8, |k| {
        let rec = TestRecorder::new();
        let rt = rt();
        let _g = rt.enter();
        let d = dispatcher(&rec, &rt, "dc");
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        register(&d, &gate);
        let first = rt.block_on(fill(&d, 10));
        let d2 = d.clone();
        let outcome =
            Polled::new(async move { d2.dispatch("work", 20).await }).drop_after_with(k, |i| {
                if i == 1 {
                    // Room appears after the first poll.
                    gate.add_permits(1);
                    rt.block_on(async {
                        for _ in 0..10 {
                            tokio::task::yield_now().await;
                        }
                    });
                }
            });
        let (reply, polls) = match outcome {
            Outcome::Completed { output, polls } => (Some(output.unwrap()), polls),
            Outcome::Cancelled { polls } => (None, polls),
        };
        let completed = reply.is_some();
        gate.add_permits(10);
        rt.block_on(async {
            for r in first {
                r.await.unwrap();
            }
            if let Some(r) = reply {
                assert_eq!(r.await.unwrap(), 20);
            }
        });
        assert_eq!(val(&rec, "heijunka_pool_queued", "dc"), 0.0, "k = {k}");
        assert_eq!(val(&rec, "heijunka_pool_running", "dc"), 0.0, "k = {k}");
        assert_eq!(count(&rec, "heijunka_pool_rejected_total", "dc"), 0);
        assert_eq!(
            count(&rec, "heijunka_pool_completed_total", "dc"),
            3 + u64::from(completed),
            "k = {k}"
        );
        if completed {
            Outcome::Completed { output: (), polls }
        } else {
            Outcome::Cancelled { polls }
        }
    });
    assert!(covered >= 1);
}
