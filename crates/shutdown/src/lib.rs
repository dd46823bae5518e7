//! Graceful shutdown for servers: stop taking work, let in-flight work finish within a
//! deadline, stop components in order, and report what happened.
//!
//! ```
//! use heijunka_shutdown::{HookOutcome, Shutdown};
//! use std::time::Duration;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let shutdown = Shutdown::builder()
//!     .grace_period(Duration::from_secs(30))
//!     .build()?;
//! // In a server: shutdown.install_signal_handlers()?;
//!
//! // Components register stop hooks as they start; they stop in reverse order.
//! shutdown.on_stop("database pool", || async { Ok::<_, std::io::Error>(()) })?;
//! shutdown.on_stop("http listener", || async { Ok::<_, std::io::Error>(()) })?;
//!
//! // Requests run as tracked tasks (or hold an `InFlight` guard).
//! shutdown.spawn_named("request 1", async {
//!     tokio::time::sleep(Duration::from_secs(2)).await;
//! })?;
//!
//! shutdown.trigger(); // or SIGTERM
//! assert!(shutdown.try_enter().is_err(), "no new work after the trigger");
//!
//! let report = shutdown.wait().await;
//! assert!(report.is_clean());
//! assert_eq!(report.in_flight_at_trigger, 1);
//! let order: Vec<_> = report.hooks.iter().map(|h| h.name.as_str()).collect();
//! assert_eq!(order, ["http listener", "database pool"]);
//! assert!(report.hooks.iter().all(|h| h.outcome == HookOutcome::Ok));
//! # Ok(())
//! # }
//! ```
//!
//! # Concepts
//!
//! - [`Shutdown`] is the coordinator, cheap to clone. It is triggered by a call
//!   ([`trigger`](Shutdown::trigger)), by OS signals
//!   ([`install_signal_handlers`](Shutdown::install_signal_handlers): SIGINT and
//!   SIGTERM, a second signal forces), or by its parent ([`child`](Shutdown::child)
//!   scopes shut down with their parent, not the reverse).
//! - [`ShutdownToken`]s tell work that shutdown has begun: `is_triggered()` is one
//!   atomic load and needs no runtime; `triggered().await` suits `select!`.
//! - In-flight tracking: [`Shutdown::try_enter`] returns an [`InFlight`] guard, or
//!   [`ShuttingDown`] once the shutdown has begun, so no new work starts after the
//!   trigger. [`Shutdown::spawn`] runs a tokio task as tracked work.
//! - [`Phase`]s: running → draining → stopping → stopped, or forced. Observers
//!   await one with [`Shutdown::reached`] or follow them with
//!   [`Shutdown::phases`].
//! - Stop hooks ([`Shutdown::on_stop`]) run after the drain (or the grace period),
//!   last registered first, each within its timeout; an error, a panic or a hang is
//!   reported and the next hook runs. A component that stops itself within a grace
//!   period registers with [`Shutdown::on_stop_with_grace`]: its limit is that grace
//!   plus [`HOOK_GRACE_MARGIN`], and the report names a hook that overran
//!   ([`ShutdownReport::overran`]).
//! - The sequence (drain, hooks, report) starts at the trigger, as a task of its
//!   own, whether or not anyone waits (see [`Shutdown::trigger`] for where it runs).
//! - [`Shutdown::wait`] (async) or [`Shutdown::wait_blocking`] returns the
//!   [`ShutdownReport`]: clean or forced, time to drain, in-flight counts at the
//!   trigger and at the deadline, each hook's outcome, the tracked tasks abandoned.
//!   Each phase is logged with `tracing`.
//!
//! # Built on tokio-util
//!
//! Tokens are tokio-util [`CancellationToken`](tokio_util::sync::CancellationToken)s.
//! In-flight counting is not tokio-util's `TaskTracker`: a tracker's `token()` cannot
//! be refused once the tracker is closed, and refusing new work after the trigger is
//! the point of `try_enter`. The gate is one atomic word (a closed bit and a count),
//! proven with loom, and its enter + leave costs less than a `TaskTracker` token
//! (see `docs/benchmarks.md`).
//!
//! ## Metrics
//!
//! With the `metrics` feature, a coordinator emits its [`Phase`] (a gauge, one
//! number per phase), the work in flight (guards and tracked tasks), and its
//! triggers by [`TriggerReason`] through the [`metrics`](https://docs.rs/metrics)
//! facade, labelled with its [`name`](ShutdownBuilder::name); the table is in
//! `docs/metrics.md`. The handles are registered when the coordinator is built
//! (install the recorder first); entering and leaving then cost one atomic add
//! more each.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![doc(test(
    no_crate_inject,
    attr(deny(warnings), allow(dead_code, unused_variables))
))]

mod config;
mod drive;
mod error;
mod gate;
mod guard;
mod metrics;
mod report;
mod shutdown;
// tokio compiles its signal driver out under `--cfg loom`; loom builds only run the
// gate's models, so signal handling is left out of them.
#[cfg(not(loom))]
mod signal;
mod token;

pub use crate::{
    config::{DEFAULT_GRACE_PERIOD, DEFAULT_HOOK_TIMEOUT, HOOK_GRACE_MARGIN, ShutdownBuilder},
    error::{ShuttingDown, SpawnError},
    guard::{InFlight, OwnedInFlight},
    report::{HookOutcome, HookReport, Phase, ShutdownReport, TriggerReason},
    shutdown::{HookError, Shutdown},
    token::ShutdownToken,
};
