//! `WorkerPool`: bounds, rejection hands the closure back, panics, shutdown, stress.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Condvar, Mutex};
use std::time::{Duration, Instant};

use heijunka_core::Rejection;
use heijunka_pool::{TaskError, WorkerPool};

fn pool(workers: usize, queue: usize, name: &str) -> WorkerPool {
    WorkerPool::builder()
        .workers(workers)
        .queue_capacity(queue)
        .name(name)
        .build()
        .unwrap()
}

/// Threads of this process whose name starts with `prefix` (Linux: /proc).
fn threads_named(prefix: &str) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    dir.flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|c| c.trim_end().starts_with(prefix))
        })
        .count()
}

/// Threads set their name as they start: wait (bounded) until `n` carry `prefix`.
fn settle(prefix: &str, n: usize) -> usize {
    for _ in 0..100_000 {
        if threads_named(prefix) == n {
            break;
        }
        std::thread::yield_now();
    }
    threads_named(prefix)
}

#[test]
fn bad_configuration_is_an_error() {
    assert_eq!(
        WorkerPool::builder()
            .workers(0)
            .build()
            .unwrap_err()
            .to_string(),
        "workers must be at least 1, got 0"
    );
    assert_eq!(
        WorkerPool::builder()
            .queue_capacity(0)
            .build()
            .unwrap_err()
            .field(),
        "queue_capacity"
    );
}

/// Tasks the test lets finish one at a time, counting their starts from inside.
#[derive(Clone, Default)]
struct Gate {
    started: Arc<AtomicUsize>,
    permits: Arc<(Mutex<usize>, Condvar)>,
}

impl Gate {
    /// A task that reports its start, then waits for a permit.
    fn task(&self) -> impl FnOnce() + Send + 'static {
        let g = self.clone();
        move || {
            g.started.fetch_add(1, Ordering::SeqCst);
            let (m, cv) = &*g.permits;
            let mut n = m.lock().unwrap();
            while *n == 0 {
                n = cv.wait(n).unwrap();
            }
            *n -= 1;
        }
    }

    fn release(&self, n: usize) {
        let (m, cv) = &*self.permits;
        *m.lock().unwrap() += n;
        cv.notify_all();
    }

    /// Waits (bounded) until `n` tasks have started, seen from inside them.
    fn wait_started(&self, n: usize) {
        let until = Instant::now() + Duration::from_secs(10);
        while self.started.load(Ordering::SeqCst) < n {
            assert!(
                Instant::now() < until,
                "only {} of {n} started",
                self.started.load(Ordering::SeqCst)
            );
            std::thread::yield_now();
        }
    }
}

/// The bound counts exactly the tasks not yet started, observed from inside the
/// tasks (not from the pool's own counter): with every worker held in a task, exactly
/// `capacity` more are accepted; once one more task starts, exactly one more is.
#[test]
fn the_bound_counts_exactly_the_tasks_not_yet_started() {
    const W: usize = 3;
    const C: usize = 6;
    for round in 0..20 {
        let p = pool(W, C, "exact");
        let gate = Gate::default();
        let mut handles = Vec::new();
        for _ in 0..W {
            handles.push(p.try_submit(gate.task()).unwrap());
        }
        gate.wait_started(W);
        for i in 0..C {
            match p.try_submit(gate.task()) {
                Ok(h) => handles.push(h),
                Err(e) => panic!(
                    "round {round}: submit {i} of {C} refused ({:?}) with room",
                    e.reason()
                ),
            }
        }
        assert_eq!(
            p.try_submit(|| ()).unwrap_err().reason(),
            Rejection::QueueFull { capacity: C },
            "round {round}: one past the bound"
        );
        assert_eq!(p.stats().queued, C, "round {round}");
        for k in 1..=2 {
            // One task ends and a queued one starts (seen from inside it): exactly
            // one more fits.
            gate.release(1);
            gate.wait_started(W + k);
            match p.try_submit(gate.task()) {
                Ok(h) => handles.push(h),
                Err(e) => panic!(
                    "round {round}: refused ({:?}) after a task started",
                    e.reason()
                ),
            }
            assert_eq!(
                p.try_submit(|| ()).unwrap_err().reason(),
                Rejection::QueueFull { capacity: C },
                "round {round}: one past the bound after a start"
            );
            assert_eq!(p.stats().queued, C, "round {round}");
        }
        // A blocking submitter waiting for room gets in when a task starts, with
        // every worker still busy.
        let blocked = {
            let (p, task) = (p.clone(), gate.task());
            std::thread::spawn(move || p.submit_timeout(task, Duration::from_secs(10)))
        };
        gate.release(1);
        gate.wait_started(W + 3);
        handles.push(
            blocked
                .join()
                .unwrap()
                .map_err(|e| e.reason())
                .expect("a slot freed"),
        );
        gate.release(usize::MAX / 2);
        for h in handles {
            h.join().unwrap();
        }
        assert!(p.shutdown(Duration::from_secs(10)).clean);
    }
}

/// Counted independently of the pool: tasks accepted (by this, the only
/// submitter) against tasks started (seen from inside them). A task the pool has
/// dequeued may not have reached its first line yet, so up to `workers` of them
/// can look unstarted: accepted - started <= capacity + workers at every moment.
/// (The exact bound, at rest, is `the_bound_counts_exactly_the_tasks_not_yet_started`.)
#[test]
fn never_more_than_workers_run_and_never_more_than_the_bound_wait() {
    let p = pool(3, 5, "bound");
    let running = Arc::new(AtomicUsize::new(0));
    let started = Arc::new(AtomicUsize::new(0));
    let max_running = Arc::new(AtomicUsize::new(0));
    let mut max_unstarted = 0;
    let mut accepted = 0;
    let mut handles = Vec::new();
    for _ in 0..200 {
        let (running, max_running, starts) =
            (running.clone(), max_running.clone(), started.clone());
        let task = move || {
            starts.fetch_add(1, Ordering::SeqCst);
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            max_running.fetch_max(now, Ordering::SeqCst);
            std::thread::yield_now();
            running.fetch_sub(1, Ordering::SeqCst);
        };
        match p.try_submit(task) {
            Ok(h) => handles.push(h),
            Err(e) => handles.push(p.submit(e.into_inner()).unwrap()),
        }
        accepted += 1;
        max_unstarted = max_unstarted.max(accepted - started.load(Ordering::SeqCst));
    }
    for h in handles {
        h.join().unwrap();
    }
    assert!(max_running.load(Ordering::SeqCst) <= 3);
    assert!(
        max_unstarted <= 5 + 3,
        "{max_unstarted} accepted and unstarted > 5 + 3"
    );
    assert_eq!(p.stats().completed, 200);
    assert!(p.shutdown(Duration::from_secs(5)).clean);
}

#[test]
fn a_rejected_closure_comes_back_and_still_runs() {
    let p = pool(1, 1, "reject");
    let gate = Arc::new(Barrier::new(2));
    let g = gate.clone();
    let blocker = p.submit(move || g.wait()).unwrap();
    while p.stats().active < 1 {
        std::thread::yield_now();
    }
    let queued = p.try_submit(|| 1).unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    let err = p
        .try_submit(move || {
            r.fetch_add(1, Ordering::SeqCst);
            "ran later"
        })
        .unwrap_err();
    assert_eq!(err.reason(), Rejection::QueueFull { capacity: 1 });
    let closure = err.into_inner();
    assert_eq!(closure(), "ran later");
    assert_eq!(ran.load(Ordering::SeqCst), 1);
    assert_eq!(p.stats().rejected, 1);
    let timed_out = p
        .submit_timeout(|| 2, Duration::from_millis(1))
        .unwrap_err();
    assert!(matches!(timed_out.reason(), Rejection::TimedOut { .. }));
    gate.wait();
    blocker.join().unwrap();
    assert_eq!(queued.join(), Ok(1));
}

#[test]
fn a_panic_is_reported_and_the_worker_goes_on() {
    let name = "panics";
    let p = pool(2, 16, name);
    let bad = p.submit(|| -> u32 { panic!("bad input 42") }).unwrap();
    assert_eq!(bad.join(), Err(TaskError::Panicked("bad input 42".into())));
    let later: Vec<_> = (0..10).map(|i| p.submit(move || i * 2).unwrap()).collect();
    let sum: u32 = later.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(sum, 90);
    let s = p.stats();
    assert_eq!((s.panicked, s.completed, s.failed), (1, 10, 1));
    assert_eq!(settle(name, 2), 2, "the pool kept its workers");
    p.shutdown(Duration::from_secs(5));
}

#[test]
fn shutdown_finishes_queued_work_within_grace_and_leaves_no_thread() {
    let name = "drain";
    let p = pool(2, 64, name);
    let done = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..50)
        .map(|_| {
            let done = done.clone();
            p.submit(move || {
                done.fetch_add(1, Ordering::SeqCst);
            })
            .unwrap()
        })
        .collect();
    assert_eq!(settle(name, 2), 2);
    let report = p.shutdown(Duration::from_secs(10));
    assert!(report.clean, "{report:?}");
    assert_eq!(report.cancelled, 0);
    assert_eq!(done.load(Ordering::SeqCst), 50);
    assert!(handles.into_iter().all(|h| h.join().is_ok()));
    assert_eq!(
        threads_named(name),
        0,
        "threads still running after shutdown"
    );
    assert_eq!(
        p.try_submit(|| ()).unwrap_err().reason(),
        Rejection::ShuttingDown
    );
}

#[test]
fn work_past_the_grace_period_is_cancelled_and_reported() {
    let p = pool(1, 8, "grace");
    let gate = Arc::new(Barrier::new(2));
    let g = gate.clone();
    let long = p.submit(move || g.wait()).unwrap();
    while p.stats().active < 1 {
        std::thread::yield_now();
    }
    let queued: Vec<_> = (0..3).map(|i| p.submit(move || i).unwrap()).collect();
    // Grace zero: cancel what is queued at once; the running task cannot be stopped.
    let report = p.shutdown(Duration::ZERO);
    assert!(!report.clean);
    assert_eq!(report.cancelled, 3);
    assert_eq!(report.still_running, 1);
    for h in queued {
        assert_eq!(h.join(), Err(TaskError::Cancelled));
    }
    gate.wait();
    long.join().unwrap();
    assert_eq!(p.stats().cancelled, 3);
}

#[test]
#[cfg_attr(miri, ignore)] // thousands of cross-thread submissions: too slow under miri
fn stress_every_accepted_task_runs_exactly_once() {
    let p = pool(3, 32, "stress");
    let runs: Arc<Vec<AtomicUsize>> = Arc::new((0..8_000).map(|_| AtomicUsize::new(0)).collect());
    let submitters: Vec<_> = (0..4)
        .map(|t| {
            let (p, runs) = (p.clone(), runs.clone());
            std::thread::spawn(move || {
                let mut accepted = Vec::new();
                for i in (t..8_000).step_by(4) {
                    let r = runs.clone();
                    let task = move || {
                        r[i].fetch_add(1, Ordering::SeqCst);
                    };
                    let accepted_now = if i % 3 == 0 {
                        p.submit(task).is_ok()
                    } else {
                        p.try_submit(task).is_ok()
                    };
                    if accepted_now {
                        accepted.push(i);
                    }
                }
                accepted
            })
        })
        .collect();
    let accepted: Vec<usize> = submitters
        .into_iter()
        .flat_map(|s| s.join().unwrap())
        .collect();
    assert!(p.shutdown(Duration::from_secs(30)).clean);
    let mut expected = vec![0; 8_000];
    for i in &accepted {
        expected[*i] = 1;
    }
    for (i, r) in runs.iter().enumerate() {
        assert_eq!(r.load(Ordering::SeqCst), expected[i], "task {i}");
    }
    assert_eq!(p.stats().completed as usize, accepted.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_pool_refuses_work_once_draining_and_stops_with_the_hooks() {
    let shutdown = heijunka_shutdown::Shutdown::new();
    let p = pool(1, 8, "hooked");
    p.register_with(&shutdown, "worker pool", Duration::from_secs(5))
        .unwrap();
    let h = p.try_submit(|| 7).unwrap(); // the waiting forms may not run on a runtime thread
    shutdown.trigger();
    assert_eq!(
        p.try_submit(|| 8).unwrap_err().reason(),
        Rejection::ShuttingDown
    );
    let report = shutdown.wait().await;
    assert!(report.is_clean(), "{report}");
    assert_eq!(tokio::task::block_in_place(|| h.join()), Ok(7));
    assert_eq!(threads_named("hooked"), 0);
}

/// A detached task whose value panics when dropped does not take its worker down.
#[test]
fn a_value_that_panics_on_drop_does_not_kill_the_worker() {
    struct Bomb;
    impl Drop for Bomb {
        fn drop(&mut self) {
            panic!("bomb");
        }
    }
    let pool = WorkerPool::builder()
        .workers(1)
        .queue_capacity(4)
        .build()
        .unwrap();
    drop(pool.submit(|| Bomb).unwrap()); // detached: the worker drops the value
    let later = pool.submit(|| 42).unwrap();
    assert_eq!(later.join_timeout(Duration::from_secs(5)).ok(), Some(42));
    assert!(pool.shutdown(Duration::from_secs(5)).clean);
}

/// Durations too long to represent mean "no deadline", never a panic.
#[test]
fn huge_durations_do_not_panic() {
    let pool = WorkerPool::builder()
        .workers(1)
        .queue_capacity(1)
        .build()
        .unwrap();
    let h = pool.submit_timeout(|| 5, Duration::MAX).unwrap();
    assert_eq!(h.join().unwrap(), 5);
    assert!(pool.shutdown(Duration::MAX).clean);
}

/// Waits (bounded) until `n` submitters are blocked waiting for room, as the
/// pool itself reports them (`PoolStats::blocked_submitters`).
fn wait_blocked(p: &WorkerPool, n: usize) {
    let until = Instant::now() + Duration::from_secs(10);
    while p.stats().blocked_submitters < n {
        assert!(
            Instant::now() < until,
            "{n} submitters never blocked: {:?}",
            p.stats()
        );
        std::thread::yield_now();
    }
}

/// A submitter blocked for room is reported while it waits, and no longer once
/// it got in.
#[test]
fn a_blocked_submitter_is_reported_while_it_waits() {
    let p = pool(1, 1, "blocked");
    let gate = Gate::default();
    let running = p.submit(gate.task()).unwrap();
    gate.wait_started(1);
    let queued = p.submit(gate.task()).unwrap();
    assert_eq!(p.stats().blocked_submitters, 0);
    let blocked = {
        let p = p.clone();
        std::thread::spawn(move || p.submit(|| 3).map_err(|e| e.reason()).unwrap().join())
    };
    wait_blocked(&p, 1);
    gate.release(2);
    assert_eq!(blocked.join().unwrap().unwrap(), 3);
    running.join().unwrap();
    queued.join().unwrap();
    assert_eq!(p.stats().blocked_submitters, 0);
}

/// A `submit` blocked for room before the coordinator's trigger is refused, with
/// its closure, when room appears while the pool drains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_blocked_before_the_trigger_is_refused_when_it_wakes() {
    let shutdown = heijunka_shutdown::Shutdown::new();
    let p = pool(1, 1, "trig");
    p.register_with(&shutdown, "worker pool", Duration::from_secs(10))
        .unwrap();
    let gate = Gate::default();
    // `try_submit`: the waiting forms may not run on a runtime thread.
    let running = p.try_submit(gate.task()).unwrap();
    gate.wait_started(1);
    let queued = p.try_submit(gate.task()).unwrap();
    let blocked = {
        let p = p.clone();
        std::thread::Builder::new()
            .name("blocked-submit".into())
            .spawn(move || {
                p.submit(|| "late")
                    .map(drop)
                    .map_err(|e| (e.reason(), (e.into_inner())()))
            })
            .unwrap()
    };
    wait_blocked(&p, 1);
    shutdown.trigger();
    gate.release(2);
    assert_eq!(
        blocked.join().unwrap(),
        Err((Rejection::ShuttingDown, "late")),
        "admitted after the trigger"
    );
    tokio::task::block_in_place(|| {
        running.join().unwrap();
        queued.join().unwrap();
    });
    assert!(shutdown.wait().await.is_clean());
}

/// Bad input is a `ConfigError` naming the field and the value, never a panic:
/// a thread name with a NUL byte (which `std::thread::Builder` panics on) and
/// worker counts past the documented maximum.
#[test]
fn a_nul_in_the_name_or_too_many_workers_is_a_config_error() {
    let err = std::panic::catch_unwind(|| {
        WorkerPool::builder()
            .workers(1)
            .name("bad\0name")
            .build()
            .map(drop)
    })
    .expect("an error, not a panic")
    .unwrap_err();
    assert_eq!(err.field(), "name");
    assert!(err.to_string().contains("NUL"), "{err}");
    let err = WorkerPool::builder().workers(4097).build().unwrap_err();
    assert_eq!(err.to_string(), "workers must be at most 4096, got 4097");
}

/// Task run times come from the pool's clock: with a manual clock that each task
/// advances by a known amount, the percentiles and mean are exact (to the
/// histogram's two significant digits), whatever the machine's speed.
#[test]
fn run_time_statistics_follow_the_pools_clock() {
    let clock = heijunka_core::ManualClock::new();
    let p = WorkerPool::builder()
        .workers(1)
        .queue_capacity(16)
        .clock(clock.clock())
        .build()
        .unwrap();
    let handles: Vec<_> = (0..10)
        .map(|i| {
            let clock = clock.clone();
            let took = Duration::from_millis(if i == 9 { 100 } else { 1 });
            p.submit(move || {
                clock.advance(took);
            })
            .unwrap()
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let s = p.stats();
    let near = |d: Duration, want: Duration| d.abs_diff(want) <= want / 100;
    assert!(near(s.p50, Duration::from_millis(1)), "{s:?}");
    assert!(near(s.p90, Duration::from_millis(1)), "{s:?}");
    assert!(near(s.p99, Duration::from_millis(100)), "{s:?}");
    assert!(near(s.mean, Duration::from_micros(10_900)), "{s:?}");
    assert!(p.shutdown(Duration::from_secs(5)).clean);
}

/// Issue #26: the blocking forms refuse a runtime's thread as tokio's blocking
/// forms do (a panic with tokio's message, even with room in the queue), and
/// work on `spawn_blocking`'s threads.
#[test]
fn blocking_forms_panic_on_a_runtime_thread_and_work_in_spawn_blocking() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let pool = pool(1, 4, "rt-check");
    let inside = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rt.block_on(async { pool.submit(|| 1).map(|h| h.join()) })
    }));
    let message = inside.expect_err("a task must not block");
    let message = message
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| message.downcast_ref::<&str>().copied())
        .unwrap_or_default();
    assert!(
        message.starts_with(heijunka_core::blocking::PANIC_MESSAGE),
        "{message}"
    );
    let pool = Arc::new(pool);
    let p = Arc::clone(&pool);
    let out = rt.block_on(async move {
        tokio::task::spawn_blocking(move || p.submit(|| 7).ok().map(|h| h.join()))
            .await
            .unwrap()
    });
    assert!(matches!(out, Some(Ok(7))));
    // `try_submit` never waits, so it is allowed anywhere.
    let handle = rt.block_on(async { pool.try_submit(|| 8).ok() }).unwrap();
    assert!(matches!(handle.join(), Ok(8)));
}

/// A timeout too long to represent (`Duration::MAX`) waits without a deadline, as
/// `submit` does: on a full pool it waits for room rather than refusing at once
/// as a `try_` form would.
#[test]
fn submit_timeout_with_a_huge_timeout_waits_for_room() {
    let p = pool(1, 1, "huge-wait");
    let gate = Gate::default();
    let running = p.submit(gate.task()).unwrap();
    gate.wait_started(1);
    let queued = p.submit(gate.task()).unwrap();
    let blocked = {
        let p = p.clone();
        std::thread::spawn(move || {
            p.submit_timeout(|| 3, Duration::MAX)
                .map_err(|e| e.reason())
                .map(|h| h.join())
        })
    };
    // Bounded: until it is seen waiting, or has returned (the bug).
    let until = Instant::now() + Duration::from_secs(10);
    while p.stats().blocked_submitters < 1 && !blocked.is_finished() {
        assert!(Instant::now() < until, "never blocked: {:?}", p.stats());
        std::thread::yield_now();
    }
    assert!(
        !blocked.is_finished(),
        "returned on a full pool: {:?}",
        blocked.join().unwrap().err()
    );
    gate.release(2);
    assert!(matches!(blocked.join().unwrap(), Ok(Ok(3))));
    running.join().unwrap();
    queued.join().unwrap();
    assert!(p.shutdown(Duration::from_secs(10)).clean);
}

/// `submit_timeout(.., Duration::MAX)` is a blocking form: on a runtime thread it
/// panics with tokio's message, even with room in the queue.
#[test]
fn submit_timeout_with_a_huge_timeout_panics_on_a_runtime_thread() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let pool = pool(1, 4, "huge-rt");
    let inside = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rt.block_on(async { pool.submit_timeout(|| 1, Duration::MAX).is_ok() })
    }));
    let message = inside.expect_err("a task must not block");
    let message = message
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| message.downcast_ref::<&str>().copied())
        .unwrap_or_default();
    assert!(
        message.starts_with(heijunka_core::blocking::PANIC_MESSAGE),
        "{message}"
    );
    assert!(pool.shutdown(Duration::from_secs(10)).clean);
}

/// `shutdown` with a grace period blocks the caller until the workers exit: a
/// task that waits on the runtime the caller drives could never finish, so on a
/// runtime thread it panics with tokio's message, as the other blocking forms.
/// A zero grace never waits, so it is allowed there; `spawn_blocking` may wait.
#[test]
fn shutdown_with_a_grace_period_panics_on_a_runtime_thread() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let zero = pool(1, 4, "shut-zero");
    let pool = Arc::new(pool(1, 4, "shut-rt"));
    let inside = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rt.block_on(async { pool.shutdown(Duration::from_secs(10)) })
    }));
    let message = inside.expect_err("a task must not block");
    let message = message
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| message.downcast_ref::<&str>().copied())
        .unwrap_or_default();
    assert!(
        message.starts_with(heijunka_core::blocking::PANIC_MESSAGE),
        "{message}"
    );
    let p = Arc::clone(&pool);
    let report = rt.block_on(async move {
        tokio::task::spawn_blocking(move || p.shutdown(Duration::from_secs(10)))
            .await
            .unwrap()
    });
    assert!(report.clean);
    let _ = rt.block_on(async { zero.shutdown(Duration::ZERO) });
}
