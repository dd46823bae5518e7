//! [`ShutdownToken`]: a cheap handle for work that watches for shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio_util::sync::CancellationToken;

/// What a [`Shutdown`](crate::Shutdown) shares with its tokens: the two
/// cancellation tokens, for waiting, and a flag beside each, for checking.
///
/// tokio-util's `CancellationToken::is_cancelled` takes the token's mutex (the
/// root of every child made from it), so a check on every request would serialise
/// all threads on one lock; the flags make a check one atomic load.
#[derive(Debug, Default)]
pub(crate) struct Signals {
    pub(crate) trigger: CancellationToken,
    pub(crate) force: CancellationToken,
    triggered: AtomicBool,
    forced: AtomicBool,
}

impl Signals {
    #[inline]
    pub(crate) fn is_triggered(&self) -> bool {
        // Acquire: pairs with the Release in `trigger`, so a reader that sees the
        // flag also sees what the trigger wrote before it.
        self.triggered.load(Ordering::Acquire)
    }

    #[inline]
    pub(crate) fn is_forced(&self) -> bool {
        // Acquire: pairs with the Release in `force`.
        self.forced.load(Ordering::Acquire)
    }

    /// Sets the flag, then wakes the waiters (who then see the flag set).
    pub(crate) fn trigger(&self) {
        // Release: pairs with the Acquire in `is_triggered`.
        self.triggered.store(true, Ordering::Release);
        self.trigger.cancel();
    }

    pub(crate) fn force(&self) {
        // Release: pairs with the Acquire in `is_forced`.
        self.forced.store(true, Ordering::Release);
        self.force.cancel();
    }
}

/// A cheap, cloneable handle that says whether shutdown has begun.
///
/// Made by [`Shutdown::token`](crate::Shutdown::token). [`is_triggered`] is a
/// single atomic load and needs no runtime, for loops on plain threads;
/// [`triggered`] is a future for `select!`. Built on tokio-util's
/// [`CancellationToken`].
///
/// ```
/// use heijunka_shutdown::Shutdown;
///
/// let shutdown = Shutdown::new();
/// let token = shutdown.token();
/// let worker = std::thread::spawn(move || {
///     let mut rounds = 0;
///     while !token.is_triggered() {
///         rounds += 1;
///         std::thread::yield_now();
///     }
///     rounds
/// });
/// shutdown.trigger();
/// worker.join().unwrap();
/// ```
///
/// [`is_triggered`]: ShutdownToken::is_triggered
/// [`triggered`]: ShutdownToken::triggered
#[derive(Clone, Debug)]
pub struct ShutdownToken {
    pub(crate) signals: Arc<Signals>,
}

impl ShutdownToken {
    /// Whether shutdown has begun.
    #[inline]
    pub fn is_triggered(&self) -> bool {
        self.signals.is_triggered()
    }

    /// Completes when shutdown begins (at once if it has).
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: dropping the future removes its registration from the token;
    /// the shutdown and other waiters are unaffected.
    pub async fn triggered(&self) {
        self.signals.trigger.cancelled().await;
    }

    /// Whether the shutdown has been forced: stop now, do not finish.
    #[inline]
    pub fn is_forced(&self) -> bool {
        self.signals.is_forced()
    }

    /// Completes when the shutdown is forced (at once if it was).
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe, as [`triggered`](Self::triggered).
    pub async fn forced(&self) {
        self.signals.force.cancelled().await;
    }

    /// A [`CancellationToken`] cancelled when shutdown begins, and which can also be
    /// cancelled on its own (a per-connection or per-request scope) without
    /// affecting the shutdown.
    pub fn child_token(&self) -> CancellationToken {
        self.signals.trigger.child_token()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::future::Future;

    use heijunka_core::cancel::{Outcome, Polled, cancel_points};

    use crate::{Shutdown, ShutdownToken};

    /// Drives `wait(token)` for k polls, triggering (or forcing) before the third,
    /// then checks that another waiter on the same token still completes and that a
    /// fresh wait completes at once.
    fn case<'a, F: Future<Output = ()> + 'a>(
        rt: &tokio::runtime::Runtime,
        k: usize,
        force: bool,
        shutdown: &Shutdown,
        token: &'a ShutdownToken,
        wait: impl Fn(&'a ShutdownToken) -> F,
    ) -> Outcome<()> {
        let other = {
            let token = token.clone();
            rt.spawn(async move {
                if force {
                    token.forced().await;
                } else {
                    token.triggered().await;
                }
            })
        };
        let outcome = Polled::new(wait(token)).drop_after_with(k, |i| {
            if i == 2 {
                if force {
                    shutdown.force();
                } else {
                    shutdown.trigger();
                }
            }
        });
        shutdown.force();
        rt.block_on(other).expect("the other waiter completes");
        assert!(Polled::new(wait(token)).drop_after(1).is_completed());
        outcome
    }

    #[test]
    fn token_waits_cancelled_at_every_poll() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("a current-thread runtime");
        let _g = rt.enter();
        let covered = cancel_points(8, |k| {
            let shutdown = Shutdown::new();
            let token = shutdown.token();
            case(&rt, k, false, &shutdown, &token, ShutdownToken::triggered)
        });
        assert_eq!(covered, 3, "completes on the poll after the trigger");
        let covered = cancel_points(8, |k| {
            let shutdown = Shutdown::new();
            let token = shutdown.token();
            case(&rt, k, true, &shutdown, &token, ShutdownToken::forced)
        });
        assert_eq!(covered, 3, "completes on the poll after the force");
    }
}
