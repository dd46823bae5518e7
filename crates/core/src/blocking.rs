//! The rule heijunka's blocking forms follow (all but `Shutdown::wait_blocking`,
//! see [`assert_can_block`]): they refuse to park a thread that drives
//! asynchronous tasks, as tokio's own blocking forms do.
//!
//! Behind the `blocking` feature (it pulls in tokio's `sync` and `rt`), which the
//! crates that block turn on: heijunka-backpressure, heijunka-pool and
//! heijunka-memory.
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
//! A thread with no runtime handle (`Handle::try_current()` fails) drives no
//! runtime, so the check returns at once there: that is the common case, and it
//! costs one thread-local read. A thread with a handle takes tokio's own check (it
//! asks tokio whether this thread has entered a runtime), not the handle alone: a
//! thread of tokio's blocking pool (`spawn_blocking`, `block_in_place`) or one
//! inside `Runtime::enter` has a runtime handle too, yet may block, and tokio
//! allows it there; so does this.
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
/// Called first by heijunka's blocking forms (whether or not they would wait this
/// time, so a misuse shows in the first test, not under load):
/// `ConcurrencyLimit`'s `acquire*_blocking*`, `BoundedQueue::push_blocking` /
/// `pop_blocking`, `WorkerPool::execute` / `submit` / `submit_timeout` /
/// `shutdown` (with a non-zero grace), `TaskHandle::join` / `join_timeout` and
/// `MemoryMonitor::flush_callbacks`. One blocking call does not make it, by
/// design: `Shutdown::wait_blocking`, which detects a runtime itself and waits on
/// a private runtime on another thread, so it neither panics nor deadlocks there.
///
/// # Panics
///
/// On a runtime thread (a programmer error, as with tokio's blocking forms).
/// Inside `tokio::task::spawn_blocking` it does not panic.
#[track_caller]
pub fn assert_can_block() {
    // A thread that drives a runtime always has its handle; one without a
    // handle (or whose thread-locals are being destroyed, as it exits) may
    // block, and tokio's check would build a semaphore to say so.
    if tokio::runtime::Handle::try_current().is_err() {
        return;
    }
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
    fn a_thread_with_no_runtime_may_block() {
        std::thread::spawn(|| {
            assert!(tokio::runtime::Handle::try_current().is_err());
            assert_can_block();
        })
        .join()
        .expect("no panic on a plain thread");
    }

    #[test]
    fn a_thread_that_entered_but_does_not_drive_a_runtime_may_block() {
        let rt = runtime();
        let _entered = rt.enter();
        // It has a handle, so it takes tokio's full check, which allows it.
        assert!(tokio::runtime::Handle::try_current().is_ok());
        assert_can_block();
    }

    #[test]
    fn a_plain_thread_may_block_while_its_thread_locals_are_destroyed() {
        struct AtExit;
        impl Drop for AtExit {
            fn drop(&mut self) {
                assert_can_block();
            }
        }
        std::thread_local! {
            static AT_EXIT: AtExit = const { AtExit };
        }
        std::thread::spawn(|| {
            // Registered first, so destroyed after tokio's own thread-locals
            // (registered by the call below): a panic in its destructor
            // would abort the process.
            AT_EXIT.with(|_| {});
            assert_can_block();
        })
        .join()
        .expect("no panic as the thread exits");
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
