//! The rule every `_blocking` form in heijunka follows: it refuses to park a
//! thread that drives asynchronous tasks, as tokio's own blocking forms do.
//!
//! A thread that runs a tokio runtime's tasks (a worker of a multi-threaded
//! runtime, the thread inside `Runtime::block_on` or a current-thread runtime)
//! must not block: every other task it runs stops with it, and on a
//! current-thread runtime the task that would unblock it can never run, so the
//! call never returns. tokio's `Semaphore::blocking_acquire`,
//! `mpsc::Receiver::blocking_recv` and `Mutex::blocking_lock` panic there with
//! a clear message; [`assert_can_block`] gives heijunka's blocking forms the same
//! check, with the same message.
//!
//! The check is tokio's own (it asks tokio whether this thread has entered a
//! runtime), not `Handle::try_current()`: a thread of tokio's blocking pool
//! (`spawn_blocking`, `block_in_place`) has a runtime handle too, yet may block,
//! and tokio allows it there; so does this.
//!
//! ```
//! // A plain thread may block.
//! heijunka_core::blocking::assert_can_block();
//!
//! // A runtime's task may not.
//! let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
//! let inside = std::panic::catch_unwind(|| rt.block_on(async {
//!     heijunka_core::blocking::assert_can_block();
//! }));
//! assert!(inside.is_err());
//! ```

/// The start of the panic message of [`assert_can_block`] (tokio's own).
pub const PANIC_MESSAGE: &str = "Cannot block the current thread from within a runtime";

/// Panics, with tokio's message ([`PANIC_MESSAGE`]), if the calling thread drives
/// a tokio runtime's tasks: a blocking call there would stall every task of that
/// thread, or deadlock a current-thread runtime. Returns at once elsewhere.
///
/// Called first by every `_blocking` form of heijunka (whether or not it would
/// wait this time, so a misuse shows in the first test, not under load).
///
/// # Panics
///
/// On a runtime thread (a programmer error, as with tokio's blocking forms).
/// Inside `tokio::task::spawn_blocking` it does not panic.
#[track_caller]
pub fn assert_can_block() {
    probe();
}

#[track_caller]
fn probe() {
    let gate = tokio::sync::Semaphore::new(1);
    // Panics on a runtime thread with tokio's message; else the permit is free,
    // so it returns at once (and the permit goes back as it drops).
    drop(gate.blocking_acquire());
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::{PANIC_MESSAGE, assert_can_block};

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
    }

    #[test]
    fn a_plain_thread_may_block() {
        assert_can_block();
    }

    #[test]
    fn a_task_may_not_and_is_told_why() {
        let rt = runtime();
        let panic = std::panic::catch_unwind(|| rt.block_on(async { assert_can_block() }))
            .expect_err("a task must not block");
        let message = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        assert!(message.starts_with(PANIC_MESSAGE), "{message}");
    }

    #[test]
    fn a_spawn_blocking_thread_may_block() {
        let rt = runtime();
        rt.block_on(async {
            tokio::task::spawn_blocking(assert_can_block)
                .await
                .expect("no panic on the blocking pool");
        });
    }
}
