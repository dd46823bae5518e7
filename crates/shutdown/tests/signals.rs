//! OS signals trigger the shutdown; a second one forces it. Unix only: the test sends
//! real signals to its own process (a file of its own, so its handlers cannot
//! disturb other tests).
#![cfg(all(unix, not(loom)))]

use std::time::Duration;

use heijunka_shutdown::{Phase, Shutdown, TriggerReason};

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
#[tokio::test]
async fn sigterm_triggers_and_a_second_signal_forces() {
    // A real signal takes real time to arrive; bound the wait instead of sleeping.
    const BOUND: Duration = Duration::from_secs(10);
    let shutdown = Shutdown::builder()
        .grace_period(Duration::from_secs(3600))
        .build()
        .unwrap();
    shutdown.install_signal_handlers().unwrap();
    let token = shutdown.token();
    let _held = shutdown.try_enter_owned().unwrap(); // keeps it draining

    send(libc::SIGTERM);
    tokio::time::timeout(BOUND, token.triggered())
        .await
        .expect("SIGTERM triggered the shutdown");
    assert!(!token.is_forced());
    let waiter = tokio::spawn({
        let s = shutdown.clone();
        async move { s.wait().await }
    });
    tokio::time::timeout(BOUND, shutdown.reached(Phase::Draining))
        .await
        .unwrap();

    send(libc::SIGINT);
    let report = tokio::time::timeout(BOUND, waiter)
        .await
        .expect("the second signal forced the shutdown")
        .unwrap();
    assert!(report.forced);
    assert!(!report.drained);
    assert_eq!(report.trigger, TriggerReason::Signal("SIGTERM"));
    assert_eq!(report.in_flight_at_deadline, 1);
}
