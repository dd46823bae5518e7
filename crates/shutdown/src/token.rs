//! [`ShutdownToken`]: a cheap handle for work that watches for shutdown.

use tokio_util::sync::CancellationToken;

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
    pub(crate) trigger: CancellationToken,
    pub(crate) force: CancellationToken,
}

impl ShutdownToken {
    /// Whether shutdown has begun.
    #[inline]
    pub fn is_triggered(&self) -> bool {
        self.trigger.is_cancelled()
    }

    /// Completes when shutdown begins (at once if it has).
    pub async fn triggered(&self) {
        self.trigger.cancelled().await;
    }

    /// Whether the shutdown has been forced: stop now, do not finish.
    #[inline]
    pub fn is_forced(&self) -> bool {
        self.force.is_cancelled()
    }

    /// Completes when the shutdown is forced.
    pub async fn forced(&self) {
        self.force.cancelled().await;
    }

    /// A [`CancellationToken`] cancelled when shutdown begins, and which can also be
    /// cancelled on its own (a per-connection or per-request scope) without
    /// affecting the shutdown.
    pub fn child_token(&self) -> CancellationToken {
        self.trigger.child_token()
    }
}
