//! Behaviour of the shutdown coordinator, with tokio's paused clock: no test sleeps in
//! real time.
#![cfg(not(loom))]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use heijunka_shutdown::{HookOutcome, Phase, Shutdown, ShuttingDown, TriggerReason};
use tokio::time::{Instant, sleep};

fn builder(grace_secs: u64) -> Shutdown {
    Shutdown::builder()
        .grace_period(Duration::from_secs(grace_secs))
        .hook_timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn work_within_the_grace_period_is_never_interrupted() {
    let shutdown = builder(10);
    let finished = Arc::new(AtomicU64::new(0));
    for i in 0..5_u64 {
        let finished = Arc::clone(&finished);
        shutdown
            .spawn_named(format!("req-{i}"), async move {
                sleep(Duration::from_secs(1 + i)).await;
                finished.fetch_add(1, Ordering::SeqCst);
            })
            .unwrap();
    }
    // A guard held by synchronous work, released after 3 s.
    let guard = shutdown.try_enter_owned().unwrap();
    tokio::spawn(async move {
        sleep(Duration::from_secs(3)).await;
        drop(guard);
    });
    let start = Instant::now();
    shutdown.trigger();
    let report = shutdown.wait().await;
    assert_eq!(
        finished.load(Ordering::SeqCst),
        5,
        "every task ran to completion"
    );
    assert!(report.is_clean(), "{report}");
    assert!(report.drained);
    assert!(!report.forced);
    assert_eq!(report.in_flight_at_trigger, 6);
    assert_eq!(report.in_flight_at_deadline, 0);
    assert!(report.abandoned_tasks.is_empty());
    assert_eq!(report.trigger, TriggerReason::Call);
    // The slowest task took 5 s: the drain ends then, not at the 10 s grace period.
    assert_eq!(report.drain_time, Duration::from_secs(5));
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    assert_eq!(shutdown.phase(), Phase::Stopped);
}

#[tokio::test(start_paused = true)]
async fn work_outliving_the_grace_period_is_abandoned_and_wait_returns_at_the_deadline() {
    let shutdown = builder(2);
    shutdown
        .spawn_named("quick", sleep(Duration::from_millis(500)))
        .unwrap();
    shutdown
        .spawn_named("stuck-export", sleep(Duration::from_secs(3600)))
        .unwrap();
    let _held = shutdown.try_enter_owned().unwrap(); // never released
    let start = Instant::now();
    shutdown.trigger();
    let report = shutdown.wait().await;
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(2),
        "returns by the grace deadline"
    );
    assert!(!report.drained);
    assert!(!report.is_clean());
    assert!(!report.forced, "abandoning work is not forcing");
    assert_eq!(report.in_flight_at_trigger, 3);
    assert_eq!(report.in_flight_at_deadline, 2);
    assert_eq!(report.abandoned_tasks, ["stuck-export"]);
    assert_eq!(report.drain_time, Duration::from_secs(2));
    assert_eq!(report.phase(), Phase::Stopped);
}

#[tokio::test(start_paused = true)]
async fn hooks_run_in_reverse_order_and_failures_do_not_block_the_rest() {
    let shutdown = builder(1);
    let ran = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = |name: &'static str| {
        let ran = Arc::clone(&ran);
        move || ran.lock().unwrap().push(name)
    };
    let r = record("db");
    shutdown
        .on_stop("db", move || async move {
            r();
            Ok::<_, std::io::Error>(())
        })
        .unwrap();
    let r = record("cache");
    shutdown
        .on_stop("cache", move || async move {
            r();
            panic!("cache flush exploded");
            #[allow(unreachable_code)]
            Ok::<_, std::io::Error>(())
        })
        .unwrap();
    let r = record("exporter");
    shutdown
        .on_stop_with_timeout("exporter", Duration::from_secs(3), move || async move {
            r();
            std::future::pending::<()>().await;
            Ok::<_, std::io::Error>(())
        })
        .unwrap();
    let r = record("listener");
    shutdown
        .on_stop("listener", move || async move {
            r();
            Err(std::io::Error::other("address already closed"))
        })
        .unwrap();
    let start = Instant::now();
    shutdown.trigger();
    let report = shutdown.wait().await;

    assert_eq!(
        *ran.lock().unwrap(),
        ["listener", "exporter", "cache", "db"]
    );
    let outcomes: Vec<_> = report
        .hooks
        .iter()
        .map(|h| (h.name.as_str(), h.outcome.clone()))
        .collect();
    assert_eq!(
        outcomes,
        [
            (
                "listener",
                HookOutcome::Error("address already closed".into())
            ),
            ("exporter", HookOutcome::TimedOut),
            (
                "cache",
                HookOutcome::Panicked("cache flush exploded".into())
            ),
            ("db", HookOutcome::Ok),
        ]
    );
    assert_eq!(report.hooks[1].elapsed, Duration::from_secs(3));
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(3),
        "only the hang took time"
    );
    assert!(!report.is_clean());
    assert!(report.drained);
}

#[tokio::test(start_paused = true)]
async fn forcing_while_draining_stops_at_once_and_skips_hooks() {
    let shutdown = builder(30);
    let _held = shutdown.try_enter_owned().unwrap();
    let hook_ran = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&hook_ran);
    shutdown
        .on_stop("db", move || async move {
            flag.store(true, Ordering::SeqCst);
            Ok::<_, std::io::Error>(())
        })
        .unwrap();
    let token = shutdown.token();
    shutdown.trigger();
    let waiter = tokio::spawn({
        let s = shutdown.clone();
        async move { s.wait().await }
    });
    sleep(Duration::from_secs(4)).await;
    assert_eq!(shutdown.phase(), Phase::Draining);
    assert!(!token.is_forced());
    shutdown.force();
    let report = waiter.await.unwrap();
    assert!(token.is_forced());
    assert!(report.forced);
    assert!(!report.drained);
    assert_eq!(report.drain_time, Duration::from_secs(4));
    assert_eq!(report.hooks.len(), 1);
    assert_eq!(report.hooks[0].outcome, HookOutcome::Skipped);
    assert!(!hook_ran.load(Ordering::SeqCst));
    assert_eq!(shutdown.phase(), Phase::Forced);
}

#[tokio::test(start_paused = true)]
async fn force_deadline_cuts_a_hanging_hook_short() {
    let shutdown = Shutdown::builder()
        .grace_period(Duration::from_secs(2))
        .force_after(Duration::from_secs(5))
        .hook_timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    shutdown
        .on_stop("never-returns", || async {
            std::future::pending::<()>().await;
            Ok::<_, std::io::Error>(())
        })
        .unwrap();
    shutdown
        .on_stop("later", || async { Ok::<_, std::io::Error>(()) })
        .unwrap();
    let _held = shutdown.try_enter_owned().unwrap();
    let start = Instant::now();
    shutdown.trigger();
    let report = shutdown.wait().await;
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    assert!(report.forced);
    // "later" was registered last, so it ran first and finished; the hang was cut.
    assert_eq!(report.hooks[0].name, "later");
    assert_eq!(report.hooks[0].outcome, HookOutcome::Ok);
    assert_eq!(report.hooks[1].outcome, HookOutcome::Skipped);
    assert_eq!(report.hooks[1].elapsed, Duration::from_secs(3));
}

#[tokio::test(start_paused = true)]
async fn triggering_twice_and_waiting_from_many_tasks_all_see_one_report() {
    let shutdown = builder(5);
    shutdown
        .spawn_named("job", sleep(Duration::from_secs(1)))
        .unwrap();
    let waiters: Vec<_> = (0..8)
        .map(|_| {
            let s = shutdown.clone();
            tokio::spawn(async move { s.wait().await })
        })
        .collect();
    assert!(shutdown.trigger());
    assert!(!shutdown.trigger(), "the second trigger is a no-op");
    let first = shutdown.wait().await;
    for w in waiters {
        assert_eq!(w.await.unwrap(), first);
    }
    assert_eq!(shutdown.wait().await, first, "waiting after the end");
    assert_eq!(
        shutdown.wait_blocking(),
        first,
        "blocking wait after the end"
    );
    assert!(first.is_clean());
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_waiter_does_not_stop_the_shutdown() {
    let shutdown = builder(5);
    let hook_ran = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&hook_ran);
    shutdown
        .on_stop("db", move || async move {
            flag.store(true, Ordering::SeqCst);
            Ok::<_, std::io::Error>(())
        })
        .unwrap();
    shutdown
        .spawn_named("job", sleep(Duration::from_secs(2)))
        .unwrap();
    shutdown.trigger();
    // A waiter that gives up after 1 s.
    assert!(
        tokio::time::timeout(Duration::from_secs(1), shutdown.wait())
            .await
            .is_err()
    );
    shutdown.reached(Phase::Stopped).await;
    assert!(hook_ran.load(Ordering::SeqCst));
    assert!(shutdown.wait().await.is_clean());
}

#[tokio::test(start_paused = true)]
async fn no_new_work_after_the_trigger() {
    let shutdown = builder(5);
    shutdown.trigger();
    assert_eq!(shutdown.try_enter().unwrap_err(), ShuttingDown);
    assert!(shutdown.try_enter_owned().is_err());
    let err = shutdown.spawn(async { 42 }).unwrap_err();
    assert_eq!(err.reason(), heijunka_core::Rejection::ShuttingDown);
    // The refused future is handed back, unpolled, and still works.
    assert_eq!(err.into_inner().await, 42);
    assert_eq!(shutdown.in_flight(), 0);
    let report = shutdown.wait().await;
    assert_eq!(report.in_flight_at_trigger, 0);
    assert!(report.is_clean());
    // Hooks cannot be added once they have run.
    assert_eq!(
        shutdown.on_stop("late", || async { Ok::<_, std::io::Error>(()) }),
        Err(ShuttingDown)
    );
}

#[tokio::test(start_paused = true)]
async fn phases_advance_in_order() {
    let shutdown = builder(5);
    assert_eq!(shutdown.phase(), Phase::Running);
    let seen_in_hook = Arc::new(std::sync::Mutex::new(None));
    {
        let s = shutdown.clone();
        let seen = Arc::clone(&seen_in_hook);
        shutdown
            .on_stop("probe", move || async move {
                *seen.lock().unwrap() = Some(s.phase());
                Ok::<_, std::io::Error>(())
            })
            .unwrap();
    }
    let observers: Vec<_> = [Phase::Draining, Phase::Stopping, Phase::Stopped]
        .into_iter()
        .map(|p| {
            let s = shutdown.clone();
            tokio::spawn(async move {
                s.reached(p).await;
                (p, s.phase())
            })
        })
        .collect();
    let guard = shutdown.try_enter_owned().unwrap();
    shutdown.trigger();
    assert_eq!(shutdown.phase(), Phase::Draining);
    let waiter = tokio::spawn({
        let s = shutdown.clone();
        async move { s.wait().await }
    });
    sleep(Duration::from_secs(1)).await;
    assert_eq!(
        shutdown.phase(),
        Phase::Draining,
        "still draining while work is in flight"
    );
    drop(guard);
    waiter.await.unwrap();
    assert_eq!(*seen_in_hook.lock().unwrap(), Some(Phase::Stopping));
    for o in observers {
        let (awaited, when_seen) = o.await.unwrap();
        assert!(
            when_seen.has_reached(awaited),
            "{awaited} observed at {when_seen}"
        );
    }
    assert!(Phase::Forced.has_reached(Phase::Stopped));
    assert!(!Phase::Stopping.has_reached(Phase::Stopped));
}

#[tokio::test(start_paused = true)]
async fn children_follow_their_parent_not_the_reverse() {
    let parent = builder(5);
    let child = parent.child();
    let other_child = parent.child();
    child.trigger();
    assert!(child.is_triggered());
    assert!(!parent.is_triggered(), "a child does not stop its parent");
    assert!(!other_child.is_triggered());

    parent.trigger();
    assert!(other_child.is_triggered());
    assert_eq!(other_child.wait().await.trigger, TriggerReason::Parent);
    assert_eq!(child.wait().await.trigger, TriggerReason::Call);

    let late = parent.child();
    assert!(
        late.is_triggered(),
        "a child of a stopped parent starts stopped"
    );
    parent.force();
    assert!(other_child.is_forced());
    assert!(
        parent
            .child_with(Shutdown::builder().grace_period(Duration::ZERO))
            .is_err()
    );
}

#[tokio::test(start_paused = true)]
async fn tokens_report_the_trigger_and_child_tokens_cancel_alone() {
    let shutdown = builder(5);
    let token = shutdown.token();
    let per_request = token.child_token();
    per_request.cancel();
    assert!(
        !token.is_triggered(),
        "cancelling a child token leaves the shutdown alone"
    );
    let another = token.child_token();
    let watcher = tokio::spawn({
        let token = token.clone();
        async move { token.triggered().await }
    });
    sleep(Duration::from_secs(1)).await;
    assert!(!watcher.is_finished());
    shutdown.trigger();
    watcher.await.unwrap();
    assert!(token.is_triggered());
    assert!(another.is_cancelled());
}

#[test]
fn wait_blocking_works_without_a_runtime() {
    let shutdown = builder(5);
    let t = {
        let s = shutdown.clone();
        std::thread::spawn(move || s.wait_blocking())
    };
    let guard = shutdown.try_enter_owned().unwrap();
    shutdown.trigger();
    drop(guard);
    let report = t.join().unwrap();
    assert!(report.is_clean());
    assert_eq!(shutdown.wait_blocking(), report);
}

#[tokio::test]
async fn wait_blocking_inside_a_runtime_does_not_panic() {
    let shutdown = builder(5);
    shutdown.trigger();
    let report = shutdown.wait_blocking();
    assert!(report.is_clean());
}

#[test]
fn concurrent_entering_never_succeeds_after_the_trigger() {
    let rounds = if cfg!(miri) { 2 } else { 50 };
    let per_thread = if cfg!(miri) { 20 } else { 2_000 };
    for _ in 0..rounds {
        let shutdown = builder(5);
        let start = Arc::new(std::sync::Barrier::new(5));
        let entrants: Vec<_> = (0..4)
            .map(|_| {
                let s = shutdown.clone();
                let start = Arc::clone(&start);
                std::thread::spawn(move || {
                    start.wait();
                    let mut held = Vec::new();
                    for _ in 0..per_thread {
                        let was_triggered = s.is_triggered();
                        if let Ok(g) = s.try_enter_owned() {
                            assert!(!was_triggered, "entered after the trigger was visible");
                            held.push(g);
                        }
                    }
                    held
                })
            })
            .collect();
        start.wait();
        std::thread::yield_now();
        shutdown.trigger();
        let held: Vec<_> = entrants
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        assert!(shutdown.try_enter().is_err());
        let admitted = held.len() as u64;
        assert_eq!(shutdown.in_flight(), admitted);
        drop(held);
        let report = shutdown.wait_blocking();
        // Nobody left before the trigger, so the count at the trigger is exactly
        // those admitted: none slipped in after it, none was missed.
        assert_eq!(report.in_flight_at_trigger, admitted);
        assert!(report.is_clean());
        assert_eq!(shutdown.in_flight(), 0);
    }
}

#[tokio::test(start_paused = true)]
async fn report_serialises_for_logs() {
    let shutdown = builder(5);
    shutdown
        .on_stop("db", || async { Ok::<_, std::io::Error>(()) })
        .unwrap();
    shutdown.trigger();
    let report = shutdown.wait().await;
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["trigger"]["by"], "call");
    assert_eq!(json["hooks"][0]["outcome"]["outcome"], "ok");
    assert_eq!(json["drained"], true);
    assert!(report.to_string().contains("clean"), "{report}");
}

/// Nobody calls `wait()`: the trigger alone drives the shutdown through its phases
/// and runs the hooks.
#[tokio::test(start_paused = true)]
async fn a_trigger_alone_runs_the_shutdown_to_the_end() {
    let shutdown = builder(5);
    let hook_ran = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&hook_ran);
    shutdown
        .on_stop("db", move || async move {
            flag.store(true, Ordering::SeqCst);
            Ok::<_, std::io::Error>(())
        })
        .unwrap();
    let guard = shutdown.try_enter_owned().unwrap();
    tokio::spawn(async move {
        sleep(Duration::from_secs(1)).await;
        drop(guard);
    });
    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(60), shutdown.reached(Phase::Stopped))
        .await
        .expect("the shutdown reached Stopped without a waiter");
    assert!(hook_ran.load(Ordering::SeqCst), "the stop hook ran");
    assert_eq!(shutdown.phase(), Phase::Stopped);
}

/// The same from a thread with no runtime: the trigger starts the sequence on a
/// thread of its own. The bound is real time (the sequence runs on another thread,
/// where this runtime's paused clock does not reach); nothing sleeps.
#[test]
fn a_trigger_outside_a_runtime_runs_the_shutdown_to_the_end() {
    let shutdown = builder(5);
    let hook_ran = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&hook_ran);
    shutdown
        .on_stop("db", move || async move {
            flag.store(true, Ordering::SeqCst);
            Ok::<_, std::io::Error>(())
        })
        .unwrap();
    shutdown.trigger();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(30), shutdown.reached(Phase::Stopped)).await
    })
    .expect("the shutdown reached Stopped without a waiter");
    assert!(hook_ran.load(Ordering::SeqCst), "the stop hook ran");
}

/// A component registered with its grace gets that grace plus the margin (or the
/// hook timeout if longer); one that overruns it is cut off and named in the report
/// with its limit and how long it ran.
#[tokio::test(start_paused = true)]
async fn a_component_that_overruns_its_grace_is_named_in_the_report() {
    use heijunka_shutdown::HOOK_GRACE_MARGIN;
    let shutdown = builder(5); // hook timeout 5 s
    shutdown
        .on_stop_with_grace("quick cache", Duration::from_secs(1), || async {
            Ok::<_, std::io::Error>(())
        })
        .unwrap();
    shutdown
        .on_stop_with_grace("stuck exporter", Duration::from_secs(10), || async {
            std::future::pending::<()>().await;
            Ok::<_, std::io::Error>(())
        })
        .unwrap();
    let start = Instant::now();
    shutdown.trigger();
    let report = shutdown.wait().await;
    let limit = Duration::from_secs(10) + HOOK_GRACE_MARGIN;
    assert_eq!(
        start.elapsed(),
        limit,
        "cut off at its grace plus the margin"
    );
    let overran: Vec<_> = report
        .overran()
        .map(|h| (h.name.as_str(), h.timeout, h.elapsed))
        .collect();
    assert_eq!(overran, [("stuck exporter", limit, limit)]);
    assert_eq!(
        report.hooks[1].timeout,
        Duration::from_secs(5),
        "a short grace still gets the hook timeout"
    );
    assert_eq!(report.hooks[1].outcome, HookOutcome::Ok);
    assert!(
        report
            .to_string()
            .contains("stuck exporter: overran its 11s limit"),
        "{report}"
    );
}
