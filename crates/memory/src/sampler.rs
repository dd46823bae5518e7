//! The background sampler: a tokio task, or a plain thread where there is no runtime.

use std::fmt;
use std::sync::PoisonError;

use tokio::time::MissedTickBehavior;

use crate::error::SpawnError;
use crate::monitor::MemoryMonitor;
use crate::sync::{Arc, Condvar, Mutex, thread};

/// The background sampler of a [`MemoryMonitor`]; from
/// [`MemoryMonitor::spawn_sampler`]. Sampling stops when it is dropped (or
/// [`stop`](Self::stop)ped). While it runs it keeps the monitor alive.
#[must_use = "the sampler stops when dropped"]
pub struct Sampler {
    kind: Kind,
}

enum Kind {
    Task(tokio::task::JoinHandle<()>),
    Thread {
        stop: Arc<Stop>,
        handle: Option<thread::JoinHandle<()>>,
    },
}

struct Stop {
    stopped: Mutex<bool>,
    wake: Condvar,
}

impl MemoryMonitor {
    /// Starts sampling every [interval](crate::MemoryMonitorBuilder::interval),
    /// the first sample at once: as a tokio task when called inside a tokio runtime
    /// (which must have its time driver enabled, as `#[tokio::main]` does), else on
    /// a thread of its own.
    ///
    /// Sampling reads a few small `/proc` and cgroup files (microseconds; see
    /// `docs/benchmarks.md`), which is cheap enough to run on a runtime worker.
    pub fn spawn_sampler(&self) -> Result<Sampler, SpawnError> {
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => Ok(self.spawn_task(&handle)),
            Err(_) => self.spawn_sampler_thread(),
        }
    }

    /// Starts sampling on a thread of its own, runtime or not.
    pub fn spawn_sampler_thread(&self) -> Result<Sampler, SpawnError> {
        let stop = Arc::new(Stop {
            stopped: Mutex::new(false),
            wake: Condvar::new(),
        });
        let monitor = self.clone();
        let interval = self.inner.interval;
        let stop2 = Arc::clone(&stop);
        let handle = thread::Builder::new()
            .name("heijunka-memory-sampler".into())
            .spawn(move || {
                let mut stopped = stop2.stopped.lock().unwrap_or_else(PoisonError::into_inner);
                while !*stopped {
                    drop(stopped);
                    // Errors are counted and logged by `sample_now`.
                    let _ = monitor.sample_now();
                    stopped = stop2.stopped.lock().unwrap_or_else(PoisonError::into_inner);
                    if *stopped {
                        break;
                    }
                    stopped = match stop2.wake.wait_timeout(stopped, interval) {
                        Ok((guard, _)) => guard,
                        Err(poisoned) => poisoned.into_inner().0,
                    };
                }
            })
            .map_err(|e| SpawnError::new("sampler", e))?;
        tracing::debug!(?interval, "memory sampler thread started");
        Ok(Sampler {
            kind: Kind::Thread {
                stop,
                handle: Some(handle),
            },
        })
    }

    fn spawn_task(&self, handle: &tokio::runtime::Handle) -> Sampler {
        let monitor = self.clone();
        let interval = self.inner.interval;
        let task = handle.spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                // Errors are counted and logged by `sample_now`.
                let _ = monitor.sample_now();
            }
        });
        tracing::debug!(?interval, "memory sampler task started");
        Sampler {
            kind: Kind::Task(task),
        }
    }
}

impl Sampler {
    /// Whether it runs as a tokio task (`false`: a thread).
    pub fn is_task(&self) -> bool {
        matches!(self.kind, Kind::Task(_))
    }

    /// Stops sampling; a thread sampler is joined (it finishes the sample in
    /// progress, if any).
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        match &mut self.kind {
            Kind::Task(task) => task.abort(),
            Kind::Thread { stop, handle } => {
                *stop.stopped.lock().unwrap_or_else(PoisonError::into_inner) = true;
                stop.wake.notify_all();
                if let Some(handle) = handle.take() {
                    // A panic in the sampler thread would come from the probe; it was
                    // already reported by the panic hook.
                    let _ = handle.join();
                }
            }
        }
        tracing::debug!("memory sampler stopped");
    }
}

impl fmt::Debug for Sampler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sampler")
            .field("is_task", &self.is_task())
            .finish()
    }
}
