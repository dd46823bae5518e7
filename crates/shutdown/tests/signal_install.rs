//! Installing the signal handlers twice is harmless: one SIGTERM triggers the
//! shutdown and does not force it. Its own test binary: the signal it sends reaches
//! every handler of the process.
#![cfg(all(unix, not(loom)))]

use std::time::Duration;

use heijunka_shutdown::{Shutdown, TriggerReason};

fn send(signal: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &std::process::id().to_string()])
        .status()
        .expect("the `kill` command runs");
    assert!(status.success(), "kill -{signal} failed");
}

#[cfg_attr(miri, ignore)] // miri cannot run processes or receive signals
#[tokio::test(flavor = "current_thread")]
async fn installing_twice_does_not_turn_one_signal_into_two() {
    // A real signal takes real time to arrive; bound the wait instead of sleeping.
    const BOUND: Duration = Duration::from_secs(10);
    let shutdown = Shutdown::builder()
        .grace_period(Duration::from_secs(3600))
        .build()
        .unwrap();
    shutdown.install_signal_handlers().unwrap();
    shutdown.install_signal_handlers().unwrap();
    let token = shutdown.token();
    let held = shutdown.try_enter_owned().unwrap(); // keeps it draining

    send("TERM");
    tokio::time::timeout(BOUND, token.triggered())
        .await
        .expect("SIGTERM triggered the shutdown");
    // Every listener was woken by the same delivery, before the trigger woke this
    // task (one thread: tasks run in wake order); let each of them run.
    for _ in 0..32 {
        tokio::task::yield_now().await;
    }
    assert!(!token.is_forced(), "one SIGTERM forced the shutdown");
    drop(held);
    let report = tokio::time::timeout(BOUND, shutdown.wait())
        .await
        .expect("the shutdown finishes once drained");
    assert!(!report.forced, "{report}");
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.trigger, TriggerReason::Signal("SIGTERM"));
}
