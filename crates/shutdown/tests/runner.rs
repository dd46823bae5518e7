//! The shutdown sequence finishes whatever happens to the runtime its runner started
//! on: dropped mid-grace, without a timer, or blocked by `wait_blocking`. Each test
//! runs its scenario on a thread of its own and bounds it in real time (a guard
//! against a hang, not a measurement): on a hang the test fails instead of blocking.
#![cfg(not(loom))]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use heijunka_shutdown::{HookOutcome, Shutdown, ShutdownReport};

/// A guard against a hang: the scenario gets this long in real time.
const BOUND: Duration = Duration::from_secs(10);

/// Runs `scenario` on a thread of its own; fails the test with `what` if it does
/// not return within [`BOUND`].
fn bounded(
    what: &str,
    scenario: impl FnOnce() -> ShutdownReport + Send + 'static,
) -> ShutdownReport {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(scenario());
    });
    rx.recv_timeout(BOUND)
        .unwrap_or_else(|e| panic!("{what}: no report within {BOUND:?} ({e})"))
}

/// A coordinator with a long grace period and one stop hook that records it ran.
fn fixture() -> (Shutdown, Arc<AtomicBool>) {
    let shutdown = Shutdown::builder()
        .grace_period(Duration::from_secs(3600))
        .build()
        .unwrap();
    let ran = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&ran);
    shutdown
        .on_stop("db", move || async move {
            flag.store(true, Ordering::SeqCst);
            Ok::<_, std::io::Error>(())
        })
        .unwrap();
    (shutdown, ran)
}

fn hook_outcomes(report: &ShutdownReport) -> Vec<(&str, HookOutcome)> {
    report
        .hooks
        .iter()
        .map(|h| (h.name.as_str(), h.outcome.clone()))
        .collect()
}

#[cfg_attr(miri, ignore)] // real threads and a real-time bound
#[test]
fn a_runner_whose_runtime_is_dropped_mid_grace_is_taken_over() {
    let (shutdown, ran) = fixture();
    let held = shutdown.try_enter_owned().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        shutdown.trigger();
        // The runner claims the sequence and waits out the grace period.
        tokio::time::sleep(Duration::from_secs(1)).await;
    });
    assert!(!ran.load(Ordering::SeqCst), "still draining");
    drop(rt); // the runner's runtime goes away mid-grace
    drop(held); // the last in-flight work finishes
    let s = shutdown.clone();
    let report = bounded(
        "wait_blocking after the runner's runtime was dropped",
        move || s.wait_blocking(),
    );
    assert!(report.drained, "{report}");
    assert_eq!(hook_outcomes(&report), [("db", HookOutcome::Ok)]);
    assert!(ran.load(Ordering::SeqCst), "the stop hook ran");
    assert!(report.is_clean(), "{report}");
}

#[cfg_attr(miri, ignore)] // real threads and a real-time bound
#[test]
fn a_trigger_from_a_runtime_without_timers_still_completes() {
    let (shutdown, ran) = fixture();
    let s = shutdown.clone();
    let report = bounded(
        "a shutdown triggered on a runtime without timers",
        move || {
            // No `enable_time`: the runner cannot sleep on this runtime.
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            rt.block_on(async {
                s.trigger();
                s.wait().await
            })
        },
    );
    assert_eq!(hook_outcomes(&report), [("db", HookOutcome::Ok)]);
    assert!(ran.load(Ordering::SeqCst), "the stop hook ran");
    assert!(report.is_clean(), "{report}");
    assert_eq!(
        shutdown.wait_blocking(),
        report,
        "every waiter, the same report"
    );
}

#[cfg_attr(miri, ignore)] // real threads and a real-time bound
#[test]
fn wait_blocking_in_the_current_thread_task_that_triggered_does_not_deadlock() {
    let (shutdown, ran) = fixture();
    let held = shutdown.try_enter_owned().unwrap();
    let s = shutdown.clone();
    let report = bounded("wait_blocking inside the triggering task", move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            s.trigger();
            // The runner is polled: it claims the sequence and waits for the work
            // in flight; then this task blocks the runtime, and another thread
            // finishes that work (a release, not a measurement).
            tokio::time::sleep(Duration::from_millis(1)).await;
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                drop(held);
            });
            s.wait_blocking()
        })
    });
    assert_eq!(hook_outcomes(&report), [("db", HookOutcome::Ok)]);
    assert!(ran.load(Ordering::SeqCst), "the stop hook ran");
    assert!(report.is_clean(), "{report}");
}

/// A coordinator whose first hook to run (`stuck`, registered last) waits forever
/// once started, followed by `db` (registered first).
fn fixture_with_a_stuck_hook() -> (Shutdown, Arc<AtomicBool>, Arc<AtomicBool>) {
    let (shutdown, ran) = fixture();
    let started = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&started);
    shutdown
        .on_stop("stuck", move || async move {
            flag.store(true, Ordering::SeqCst);
            std::future::pending::<()>().await;
            Ok::<_, std::io::Error>(())
        })
        .unwrap();
    (shutdown, ran, started)
}

/// A hook whose future had started on the runtime that went away was cancelled
/// with it: reported as an error, and the hooks after it still run.
#[cfg_attr(miri, ignore)] // real threads and a real-time bound
#[test]
fn a_hook_cancelled_with_its_runtime_is_reported_and_the_rest_run() {
    let (shutdown, ran, started) = fixture_with_a_stuck_hook();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        shutdown.trigger();
        tokio::time::sleep(Duration::from_secs(1)).await;
    });
    assert!(started.load(Ordering::SeqCst), "the stuck hook is running");
    drop(rt);
    let s = shutdown.clone();
    let report = bounded(
        "wait_blocking after the hook's runtime was dropped",
        move || s.wait_blocking(),
    );
    assert_eq!(report.hooks.len(), 2, "{report}");
    assert_eq!(report.hooks[0].name, "stuck");
    assert!(
        matches!(&report.hooks[0].outcome, HookOutcome::Error(m) if m.contains("went away")),
        "{report}"
    );
    assert_eq!(report.hooks[1].name, "db");
    assert_eq!(report.hooks[1].outcome, HookOutcome::Ok);
    assert!(ran.load(Ordering::SeqCst), "the stop hook after it ran");
    assert!(!report.is_clean(), "a hook was cut off: {report}");
}

/// `wait_blocking` on the single-threaded runtime whose hook it freezes: the
/// frozen hook is reported as cancelled, the rest run, and the call returns.
#[cfg_attr(miri, ignore)] // real threads and a real-time bound
#[test]
fn wait_blocking_that_freezes_a_running_hook_reports_it_and_returns() {
    let (shutdown, ran, started) = fixture_with_a_stuck_hook();
    let s = shutdown.clone();
    let report = bounded("wait_blocking freezing a running hook", move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            s.trigger();
            while !started.load(Ordering::SeqCst) {
                tokio::task::yield_now().await;
            }
            s.wait_blocking()
        })
    });
    assert_eq!(report.hooks.len(), 2, "{report}");
    assert!(
        matches!(&report.hooks[0].outcome, HookOutcome::Error(m) if m.contains("wait_blocking")),
        "{report}"
    );
    assert_eq!(report.hooks[1].outcome, HookOutcome::Ok);
    assert!(ran.load(Ordering::SeqCst), "the stop hook after it ran");
}

/// The trigger's runner was spawned on a runtime that went away before polling it:
/// the sequence still runs without anyone calling `wait`, so an observer of the
/// final phase is not left hanging.
#[cfg_attr(miri, ignore)] // real threads and a real-time bound
#[test]
fn a_runner_dropped_before_its_first_poll_still_gets_the_sequence_run() {
    let (shutdown, ran) = fixture();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    // Triggered inside the runtime, which ends before running the runner's task.
    rt.block_on(async { shutdown.trigger() });
    drop(rt);
    let s = shutdown.clone();
    let report = bounded(
        "reached(Stopped) with the runner dropped unpolled",
        move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap();
            rt.block_on(async {
                s.reached(heijunka_shutdown::Phase::Stopped).await;
                s.wait().await
            })
        },
    );
    assert_eq!(hook_outcomes(&report), [("db", HookOutcome::Ok)]);
    assert!(ran.load(Ordering::SeqCst), "the stop hook ran");
}

/// Waiting before the trigger starts nothing: a `wait` polled in a loop (under a
/// timeout, in a `select!`) leaves no task behind; the trigger starts the sequence.
#[tokio::test(start_paused = true)]
async fn waiting_before_the_trigger_leaves_no_task_behind() {
    let (shutdown, ran) = fixture();
    let metrics = tokio::runtime::Handle::current().metrics();
    let before = metrics.num_alive_tasks();
    for _ in 0..20 {
        let waited = tokio::time::timeout(Duration::from_millis(1), shutdown.wait()).await;
        assert!(waited.is_err(), "not triggered yet");
    }
    assert_eq!(metrics.num_alive_tasks(), before, "tasks left by waiting");
    shutdown.trigger();
    let report = shutdown.wait().await;
    assert!(report.is_clean(), "{report}");
    assert!(ran.load(Ordering::SeqCst));
}
