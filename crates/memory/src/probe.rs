//! Resource monitors (Envoy's term): where a sample's figures come from.

use std::fmt;
use std::path::{Path, PathBuf};

use sysinfo::{MemoryRefreshKind, Pid, ProcessRefreshKind, ProcessesToUpdate, System};

use crate::cgroup::{CgroupChain, CgroupMemory};
use crate::error::SampleError;
use crate::file::KeptFile;
use crate::procfs::ProcFiles;
use crate::psi::MemoryStall;
use crate::sync::Arc;
use crate::sync::atomic::{AtomicU64, Ordering};

/// What a probe read: the raw figures a [`MemorySample`](crate::MemorySample) is
/// built from.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ProbeReading {
    /// The process's resident set, in bytes.
    pub rss: u64,
    /// The machine's (or VM's) total memory, in bytes; 0 when unknown.
    pub system_total: u64,
    /// Memory the kernel could hand out without swapping, in bytes; 0 when unknown.
    pub system_available: u64,
    /// The cgroup limit that binds the process (the least headroom along its
    /// cgroup path), when one is set.
    pub cgroup: Option<CgroupMemory>,
    /// Pressure stall information, where the kernel provides it.
    pub stall: Option<MemoryStall>,
}

impl ProbeReading {
    /// A reading without a cgroup limit.
    pub fn new(rss: u64, system_total: u64, system_available: u64) -> Self {
        Self {
            rss,
            system_total,
            system_available,
            cgroup: None,
            stall: None,
        }
    }

    /// The same reading with stall information.
    #[must_use]
    pub fn with_stall(mut self, stall: MemoryStall) -> Self {
        self.stall = Some(stall);
        self
    }

    /// The same reading with a cgroup limit.
    #[must_use]
    pub fn with_cgroup(mut self, cgroup: CgroupMemory) -> Self {
        self.cgroup = Some(cgroup);
        self
    }
}

/// A source of memory readings: the system ([`SystemProbe`]), a test's
/// [`ManualProbe`], or your own (a heap figure from jemalloc's stats, a JVM-style
/// fixed budget).
///
/// The monitor calls [`read`](MemoryProbe::read) from one thread at a time, on its
/// sampling path; it should take microseconds, not block on I/O that can hang.
pub trait MemoryProbe: Send + 'static {
    /// Takes one reading.
    fn read(&mut self) -> Result<ProbeReading, SampleError>;
}

/// Where [`SystemProbe`] reads the process's resident memory and system memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RssSource {
    /// The `/proc` path (Linux): `/proc/self/statm` and `/proc/meminfo` (the file
    /// `sysinfo` reads for system memory), kept open and re-read with one `pread`
    /// each. The default on Linux; each figure falls back to `sysinfo` when its
    /// file is unreadable.
    #[cfg_attr(target_os = "linux", default)]
    Procfs,
    /// `sysinfo`'s process and memory refreshes: portable, and the default
    /// elsewhere, but on Linux it opens and parses several `/proc` files per
    /// refresh, several times the cost of the `/proc` path (see
    /// `docs/benchmarks.md`).
    #[cfg_attr(not(target_os = "linux"), default)]
    Sysinfo,
}

/// Reads the real system: the process's resident set, system memory, and the cgroup
/// v1/v2 limits along the process's cgroup path.
///
/// The cgroup path is found once, when the probe is built (from `/proc/self/cgroup`
/// and `/proc/self/mountinfo`); every reading then reads the limit and usage files
/// of each directory from the process's cgroup up to the hierarchy's root and keeps
/// the one with the least headroom (the largest usage / limit), so a limit set only
/// on a parent (a Kubernetes pod's, a systemd slice's), or a parent shared with
/// siblings that fill it, is found. Files that are missing or hold garbage are
/// skipped: a probe outside any container reports no cgroup limit, and says so
/// once with a `tracing` warning (the monitor then measures the system's memory in
/// use, total less available). A file missing at one reading is looked for again
/// every 64 readings.
///
/// The files are kept open and re-read from the start at each reading (the kernel
/// regenerates them), so a probe holds a few file descriptors: two, plus up to
/// three per cgroup directory in the chain. Resident and system memory come from
/// `/proc` or `sysinfo` as [`RssSource`] says. Stall information comes from the
/// process's cgroup v2 `memory.pressure`, else `/proc/pressure/memory`, where the
/// kernel provides them.
///
/// ```
/// # if heijunka_core::sync::IS_LOOM { return Ok(()); } // loom types work only inside a model
/// use heijunka_memory::{MemoryProbe, SystemProbe};
///
/// let mut probe = SystemProbe::new();
/// let reading = probe.read()?;
/// assert!(reading.rss > 0 && reading.system_total > 0);
/// if let Some(cgroup) = &reading.cgroup {
///     println!("limited to {} bytes by {}", cgroup.limit, cgroup.path);
/// }
/// # Ok::<(), heijunka_memory::SampleError>(())
/// ```
pub struct SystemProbe {
    root: PathBuf,
    rss_source: RssSource,
    proc: ProcFiles,
    chain: CgroupChain,
    system: System,
    pid: Option<Pid>,
    statm_failed: bool,
    /// The fall back to system memory (no cgroup limit) was logged.
    fallback_said: bool,
    /// Where stall information is read: the process's cgroup v2 `memory.pressure`,
    /// then the system's `/proc/pressure/memory`; the first that parses is used.
    psi: Vec<KeptFile>,
}

impl SystemProbe {
    /// A probe of this process, reading `/proc` and `/sys` at `/`.
    pub fn new() -> Self {
        Self::with_options(Path::new("/"), RssSource::default())
    }

    /// A probe that reads its `proc/self/...` and cgroup files under `root` instead
    /// of `/`: for tests with a fixture tree, or a tool reading another mount
    /// namespace. System memory still comes from `sysinfo`.
    pub fn with_root(root: impl AsRef<Path>) -> Self {
        Self::with_options(root.as_ref(), RssSource::default())
    }

    /// The same probe reading the resident set from `source`.
    #[must_use]
    pub fn rss_source(mut self, source: RssSource) -> Self {
        self.rss_source = source;
        self
    }

    fn with_options(root: &Path, rss_source: RssSource) -> Self {
        let chain = CgroupChain::discover(root);
        let psi = chain
            .v2_leaf()
            .map(|leaf| KeptFile::new(leaf.join("memory.pressure")))
            .into_iter()
            .chain([KeptFile::new(root.join("proc/pressure/memory"))])
            .collect();
        Self {
            root: root.to_path_buf(),
            rss_source,
            proc: ProcFiles::new(root),
            chain,
            psi,
            system: System::new(),
            pid: sysinfo::get_current_pid().ok(),
            statm_failed: false,
            fallback_said: false,
        }
    }

    /// Whether a cgroup hierarchy was found for this process (limits may still be
    /// unset).
    pub fn in_cgroup(&self) -> bool {
        !self.chain.is_empty()
    }

    fn sysinfo_rss(&mut self) -> Result<u64, SampleError> {
        let pid = self.pid.ok_or(SampleError::Rss {
            reason: "sysinfo cannot tell this process's id",
        })?;
        self.system.refresh_processes_specifics(
            ProcessesToUpdate::Some(&[pid]),
            false,
            ProcessRefreshKind::nothing().with_memory().without_tasks(),
        );
        self.system
            .process(pid)
            .map(sysinfo::Process::memory)
            .ok_or(SampleError::Rss {
                reason: "sysinfo found no entry for this process",
            })
    }
}

impl Default for SystemProbe {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for SystemProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SystemProbe")
            .field("root", &self.root)
            .field("rss_source", &self.rss_source)
            .field("page_size", &self.proc.page_size())
            .field("in_cgroup", &self.in_cgroup())
            .finish_non_exhaustive()
    }
}

impl MemoryProbe for SystemProbe {
    fn read(&mut self) -> Result<ProbeReading, SampleError> {
        let rss = match self.rss_source {
            RssSource::Procfs => match self.proc.rss() {
                Some(rss) => rss,
                None => {
                    if !self.statm_failed {
                        self.statm_failed = true;
                        tracing::warn!(
                            root = %self.root.display(),
                            "proc/self/statm unreadable; reading resident memory through sysinfo"
                        );
                    }
                    self.sysinfo_rss()?
                }
            },
            RssSource::Sysinfo => self.sysinfo_rss()?,
        };
        let system = match self.rss_source {
            RssSource::Procfs => self.proc.system(),
            RssSource::Sysinfo => None,
        };
        let (system_total, system_available) = system.unwrap_or_else(|| {
            self.system
                .refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
            (self.system.total_memory(), self.system.available_memory())
        });
        let cgroup = self.chain.read(rss);
        if cgroup.is_none() && !self.fallback_said {
            self.fallback_said = true;
            let reason = if self.chain.is_empty() {
                "no cgroup hierarchy found for this process"
            } else {
                "no cgroup on this process's path sets a readable memory limit"
            };
            tracing::warn!(
                root = %self.root.display(),
                memory.system_total = system_total,
                memory.system_available = system_available,
                "{reason}; measuring against system memory (total less available) instead of a cgroup limit"
            );
        }
        let stall = self
            .psi
            .iter_mut()
            .find_map(|f| f.read().and_then(MemoryStall::parse));
        Ok(ProbeReading {
            rss,
            system_total,
            system_available,
            cgroup,
            stall,
        })
    }
}

/// A probe whose figures the caller sets: for tests of pressure logic, and for
/// feeding figures from elsewhere. Clones share the figures.
///
/// ```
/// # if heijunka_core::sync::IS_LOOM { return; } // loom types work only inside a model
/// use heijunka_memory::{ManualProbe, MemoryProbe};
///
/// let probe = ManualProbe::new(8 << 30);
/// let mut reader = probe.clone();
/// probe.set_rss(1 << 30);
/// assert_eq!(reader.read().unwrap().rss, 1 << 30);
/// ```
#[derive(Clone, Debug)]
pub struct ManualProbe {
    figures: Arc<Figures>,
}

#[derive(Debug)]
struct Figures {
    rss: AtomicU64,
    system_total: AtomicU64,
    cgroup_limit: AtomicU64,
    cgroup_usage: AtomicU64,
}

impl ManualProbe {
    /// A probe of a machine with `system_total` bytes, all available, and a process
    /// using none of it.
    pub fn new(system_total: u64) -> Self {
        Self {
            figures: Arc::new(Figures {
                rss: AtomicU64::new(0),
                system_total: AtomicU64::new(system_total),
                cgroup_limit: AtomicU64::new(0),
                cgroup_usage: AtomicU64::new(0),
            }),
        }
    }

    /// Sets the process's resident set.
    pub fn set_rss(&self, bytes: u64) {
        // Relaxed: each figure stands alone; the monitor reads them under its own
        // sampling lock, after the test's call returns.
        self.figures.rss.store(bytes, Ordering::Relaxed);
    }

    /// Sets the system total.
    pub fn set_system_total(&self, bytes: u64) {
        // Relaxed: as in `set_rss`.
        self.figures.system_total.store(bytes, Ordering::Relaxed);
    }

    /// Puts the process under a cgroup v2 limit of `limit` bytes whose working set
    /// is `usage` bytes; a `limit` of 0 removes it.
    pub fn set_cgroup(&self, limit: u64, usage: u64) {
        // Relaxed: as in `set_rss`.
        self.figures.cgroup_limit.store(limit, Ordering::Relaxed);
        self.figures.cgroup_usage.store(usage, Ordering::Relaxed);
    }
}

impl MemoryProbe for ManualProbe {
    fn read(&mut self) -> Result<ProbeReading, SampleError> {
        // Relaxed loads: they pair with the Relaxed stores of the setters.
        let rss = self.figures.rss.load(Ordering::Relaxed);
        let total = self.figures.system_total.load(Ordering::Relaxed);
        let limit = self.figures.cgroup_limit.load(Ordering::Relaxed);
        let usage = self.figures.cgroup_usage.load(Ordering::Relaxed);
        let mut reading = ProbeReading::new(rss, total, total.saturating_sub(rss));
        if limit > 0 {
            reading = reading.with_cgroup(
                CgroupMemory::new(crate::CgroupVersion::V2, "/manual", limit).with_usage(usage),
            );
        }
        Ok(reading)
    }
}
