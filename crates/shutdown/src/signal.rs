//! OS signal triggers.

use std::io;
use std::sync::atomic::Ordering;

use crate::{Phase, Shutdown, TriggerReason};

impl Shutdown {
    /// Listens for the OS's stop signals: SIGINT and SIGTERM on Unix, ctrl-c
    /// elsewhere. The first triggers the shutdown; a signal that arrives once it
    /// has begun (a second ctrl-c) forces it, the convention users expect from
    /// servers. The listener ends when the shutdown finishes.
    ///
    /// Installing is idempotent: a second call on the same coordinator (or a clone)
    /// does nothing, so one signal is never seen twice and taken for a second
    /// signal. Install on one coordinator only (the root): [`child`](Self::child)
    /// scopes follow their parent, and handlers installed on a child as well would
    /// see the parent's first signal again and force the child.
    ///
    /// The handlers are registered before this returns, so a signal sent right after
    /// is seen. As with tokio's signal handling, once registered they stay for the
    /// life of the process (the default "terminate" action does not come back).
    ///
    /// # Errors
    ///
    /// An error if called outside a tokio runtime, or if the OS refuses the
    /// handlers.
    pub fn install_signal_handlers(&self) -> io::Result<()> {
        let handle = tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
        if self.inner.signals_installed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        // Lets a later call try again if the OS refused the handlers.
        #[cfg(unix)]
        let undo = |e: io::Error| {
            self.inner.signals_installed.store(false, Ordering::SeqCst);
            e
        };
        let this = self.clone();
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let mut term = signal(SignalKind::terminate()).map_err(undo)?;
            let mut int = signal(SignalKind::interrupt()).map_err(undo)?;
            handle.spawn(async move {
                let done = this.reached(Phase::Stopped);
                tokio::pin!(done);
                loop {
                    let name = tokio::select! {
                        Some(()) = term.recv() => "SIGTERM",
                        Some(()) = int.recv() => "SIGINT",
                        () = &mut done => return,
                    };
                    this.on_signal(name);
                }
            });
        }
        #[cfg(not(unix))]
        {
            handle.spawn(async move {
                let done = this.reached(Phase::Stopped);
                tokio::pin!(done);
                loop {
                    tokio::select! {
                        res = tokio::signal::ctrl_c() => {
                            if res.is_err() {
                                return;
                            }
                            this.on_signal("ctrl-c");
                        }
                        () = &mut done => return,
                    }
                }
            });
        }
        Ok(())
    }

    fn on_signal(&self, name: &'static str) {
        if !self.trigger_with(TriggerReason::Signal(name)) {
            tracing::warn!(signal = name, "signal during shutdown: forcing");
            self.force();
        }
    }
}
