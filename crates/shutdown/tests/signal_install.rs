//! Installing the signal handlers twice is harmless: one SIGTERM triggers the
//! shutdown and does not force it. Its own test binary: the signal it sends reaches
//! every handler of the process.
#![cfg(all(unix, not(loom)))]

use std::time::Duration;

use heijunka_shutdown::{Shutdown, TriggerReason};

/// Sends `signal` (`libc::SIGTERM`, `libc::SIGINT`) to this process.
fn send(signal: libc::c_int) {
    // SAFETY: `getpid` and `kill` have no memory-safety preconditions; the signal
    // goes to this process, whose handlers (installed by the test) catch it.
    let rc = unsafe { libc::kill(libc::getpid(), signal) };
    assert_eq!(
        rc,
        0,
        "kill({signal}) failed: {}",
        std::io::Error::last_os_error()
    );
}

#[cfg_attr(miri, ignore)] // miri cannot send or receive signals
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

    send(libc::SIGTERM);
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
