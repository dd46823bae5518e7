//! Memory-pressure awareness: how much memory the process uses against the limit that
//! really applies (a container's cgroup limit, not the host's RAM), as pressure
//! levels the rest of the stack acts on before the OOM killer does.
//!
//! ```
//! use heijunka_core::{PressureLevel, Rejection};
//! use heijunka_memory::{MemoryGate, MemoryMonitor};
//! use std::time::Duration;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # if heijunka_core::sync::IS_LOOM { return Ok(()); } // loom types work only inside a model
//! let monitor = MemoryMonitor::builder()
//!     .elevated_threshold(0.80) // the defaults, from the seeds' degradation table
//!     .critical_threshold(0.90)
//!     .interval(Duration::from_secs(1))
//!     .build()?; // finds the cgroup limit and takes a first sample
//! let _sampler = monitor.spawn_sampler()?; // a tokio task, or a thread without a runtime
//!
//! let sample = monitor.sample_now()?;
//! println!(
//!     "{} of {} bytes ({:?}), pressure {}",
//!     sample.status.used, sample.status.limit, sample.status.limit_source, sample.status.level
//! );
//!
//! // React to level changes: evict caches at elevated.
//! monitor.on_level(PressureLevel::Elevated, |change| {
//!     // cache.clear();
//! })?;
//!
//! // Admission: reject everything at critical, large requests already at elevated.
//! let gate = MemoryGate::builder(&monitor).large_request_bytes(1 << 20).build()?;
//! match gate.check_size(512) {
//!     Ok(()) => { /* handle the request */ }
//!     Err(Rejection::MemoryPressure { level }) => { /* 503, retry later */ }
//!     Err(_) => unreachable!("the gate only rejects for memory pressure"),
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Concepts
//!
//! The design follows Envoy's overload manager: a *resource monitor* reads a figure,
//! *thresholds* turn it into a level, *actions* react to the level.
//!
//! - **Probes** ([`MemoryProbe`]) take readings. [`SystemProbe`] reads the process's
//!   resident set and system total and available memory (on Linux from
//!   `/proc/self/statm` and `/proc/meminfo`, kept open and re-read with one `pread`
//!   each; through [`sysinfo`] elsewhere or when asked, see [`RssSource`]), and the cgroup
//!   v2 `memory.max` / `memory.current` (or v1 `memory.limit_in_bytes` /
//!   `memory.usage_in_bytes`) of every directory from the process's cgroup up to
//!   the hierarchy's root: a limit set only on a parent (a Kubernetes pod, a
//!   systemd slice) applies too, which `sysinfo`'s own cgroup reading misses.
//!   [`ManualProbe`] is for tests; implement the trait for other figures.
//! - **The limit that binds** is the one with the least headroom (the largest
//!   `used / limit`) of the cgroup limits along the process's cgroup path, the
//!   [configured](MemoryMonitorBuilder::limit) one and the system's memory: each
//!   of them ends the process when full, whichever is the smallest. Each
//!   [`MemorySample`] says which ([`LimitSource`]) and, for a cgroup, which
//!   directory set it ([`CgroupMemory::path`]). Against a cgroup limit the cgroup's
//!   working set is counted (usage less inactive file pages, the kubelet's figure);
//!   against the configured limit, the process's resident set; against the system
//!   total, when no cgroup limit applies, the memory in use on the machine (total
//!   less `MemAvailable`; [`SystemProbe`] says once with a `tracing` warning that
//!   it fell back to it), and the resident set otherwise.
//! - **Levels**: [`Thresholds`] map `used / limit` to
//!   [`PressureLevel`](heijunka_core::PressureLevel) normal / elevated / critical
//!   (defaults 80 % and 90 %), with hysteresis (default 5 points) so a value
//!   hovering at a threshold does not flap.
//! - **[`MemoryMonitor`]**: [`sample_now`](MemoryMonitor::sample_now), a background
//!   [`Sampler`] ([`spawn_sampler`](MemoryMonitor::spawn_sampler)),
//!   [`pressure`](MemoryMonitor::pressure) (one atomic load) and
//!   [`status`](MemoryMonitor::status) (the latest figures, read without a lock
//!   through a sequence lock).
//! - **Reactions**: [`subscribe`](MemoryMonitor::subscribe) (a tokio `watch`
//!   receiver), callbacks per level ([`on_level`](MemoryMonitor::on_level)) or per
//!   change ([`on_change`](MemoryMonitor::on_change)) run in order on their own
//!   thread, a panic in one isolated and counted; every change is a `tracing`
//!   event (`warn` when it reaches critical, `info` otherwise).
//! - **Admission**: [`MemoryGate`] rejects with
//!   [`Rejection::MemoryPressure`](heijunka_core::Rejection::MemoryPressure) at
//!   critical, and large requests from elevated; a level whose sample is too old
//!   (sampling keeps failing) is not trusted: the gate's [`StalePolicy`] fails open
//!   (the default) or closed. With a
//!   [`stall_threshold`](MemoryGateBuilder::stall_threshold) the gate also acts
//!   on pressure stall information ([`MemoryStall`], from `memory.pressure` or
//!   `/proc/pressure/memory`), which shows a shortage the usage figure hides.
//! - **Stats**: [`MemoryMonitor::stats`] and [`MemoryGate::stats`] are plain
//!   `Serialize` structs.
//!
//! # As a load-shedder signal
//!
//! The backpressure crate's load shedder combines signals, each a cheap closure
//! that returns `Option<Rejection>`; it cannot depend on this crate (both sit in
//! layer 1), so the application (or the `heijunka` facade) wires them together:
//!
//! ```
//! # if heijunka_core::sync::IS_LOOM { return Ok(()); } // loom types work only inside a model
//! # use heijunka_memory::{ManualProbe, MemoryGate, MemoryMonitor};
//! # let monitor = MemoryMonitor::builder().probe(ManualProbe::new(1 << 30)).build().unwrap();
//! let gate = MemoryGate::builder(&monitor).build()?;
//! let memory_signal = move || gate.rejection(); // one atomic load
//! assert_eq!(memory_signal(), None);
//! // shedder_builder.signal("memory", memory_signal)
//! # Ok::<(), heijunka_core::ConfigError>(())
//! ```
//!
//! [`MemoryMonitor::rejection_at`] gives the same signal without a gate.
//!
//! # Allocation accounting (feature `alloc-tracking`)
//!
//! `CountingAlloc` wraps the system allocator (or any other) and counts bytes per
//! thread; `AllocScope`, `measure_allocations` and `track_allocations` report what
//! a scope or a whole async task (across `.await` points and threads) allocated
//! and freed: the per-request memory figure of the seeds' request logs.
//!
//! # Failure and bad input
//!
//! Bad configuration (thresholds out of order or outside `(0, 1]`, an interval under 1 ms,
//! a zero limit) is a [`ConfigError`](heijunka_core::ConfigError) naming the field
//! and the value. Missing, unreadable or garbage `/proc` and cgroup files never
//! panic: a garbage limit file is skipped (as if that directory set no limit), an
//! unreadable `statm` falls back to `sysinfo`, a missing `auxv` to 4 KiB pages, and
//! a sample that cannot be taken at all is a [`SampleError`] that keeps the last
//! level.
//!
//! # Metrics
//!
//! With the `metrics` feature, a [`MemoryMonitor`] emits `heijunka_memory_*`
//! gauges on each sample (level, usage and limit in bytes, usage ratio) and
//! counts level changes by the level reached and failed samples; a
//! [`MemoryGate`] counts its rejections. Both are labelled with their name
//! ([`MemoryMonitorBuilder::name`], [`MemoryGateBuilder::name`]). The table is
//! in `docs/metrics.md`; install the recorder before building them.
#![cfg_attr(not(feature = "alloc-tracking"), forbid(unsafe_code))]
#![cfg_attr(feature = "alloc-tracking", deny(unsafe_code))]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![doc(test(
    no_crate_inject,
    attr(deny(warnings), allow(dead_code, unused_variables))
))]

use heijunka_core::sync;

#[cfg(feature = "alloc-tracking")]
#[allow(unsafe_code)] // the `GlobalAlloc` impl and a pin projection, each with its SAFETY comment
mod alloc;
mod callbacks;
mod cell;
mod cgroup;
mod config;
mod error;
mod file;
mod gate;
mod level;
mod metrics;
mod monitor;
mod probe;
mod procfs;
mod psi;
mod sample;
mod sampler;
mod stats;

#[cfg(feature = "alloc-tracking")]
#[cfg_attr(docsrs, doc(cfg(feature = "alloc-tracking")))]
pub use crate::alloc::{
    AllocScope, AllocStats, CountingAlloc, Tracked, measure_allocations, track_allocations,
};
pub use crate::{
    callbacks::{CALLBACK_QUEUE_CAPACITY, CallbackId, LevelChange},
    cgroup::{CgroupMemory, CgroupVersion},
    config::{DEFAULT_INTERVAL, MIN_INTERVAL, MemoryMonitorBuilder},
    error::{SampleError, SpawnError},
    gate::{DEFAULT_STALE_AFTER_INTERVALS, GateStats, MemoryGate, MemoryGateBuilder, StalePolicy},
    level::{
        DEFAULT_CRITICAL_THRESHOLD, DEFAULT_ELEVATED_THRESHOLD, DEFAULT_HYSTERESIS, Thresholds,
    },
    monitor::MemoryMonitor,
    probe::{ManualProbe, MemoryProbe, ProbeReading, RssSource, SystemProbe},
    psi::{MemoryStall, StallAverages},
    sample::{LimitSource, MemorySample, MemoryStatus},
    sampler::Sampler,
    stats::MemoryStats,
};
