//! Without a readable cgroup, the monitor says so once at WARN and measures the
//! host's memory in use (total less available), not the process's RSS against the
//! host's total.
#![cfg(not(loom))]

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use heijunka_core::PressureLevel;
use heijunka_memory::{LimitSource, MemoryMonitor, SystemProbe};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

const GIB: u64 = 1 << 30;

/// Records the events at WARN and above, each as its message and fields.
#[derive(Clone, Default)]
struct Warnings(Arc<Mutex<Vec<String>>>);

struct Text(String);

impl Visit for Text {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, "{}={:?} ", field.name(), value);
    }
}

impl Subscriber for Warnings {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        if *event.metadata().level() <= Level::WARN {
            let mut text = Text(String::new());
            event.record(&mut text);
            self.0.lock().unwrap().push(text.0);
        }
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

/// A `/proc` without any cgroup: 16 GiB of RAM, 1 GiB available, a process of 400 KiB.
fn host_tree(name: &str) -> PathBuf {
    let root = std::env::temp_dir().join(format!(
        "heijunka-memory-fallback-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("proc/self")).unwrap();
    std::fs::write(root.join("proc/self/statm"), "1000 100 0 0 0 0 0\n").unwrap();
    std::fs::write(
        root.join("proc/meminfo"),
        format!(
            "MemTotal: {} kB\nMemFree: 1 kB\nMemAvailable: {} kB\n",
            16 * GIB / 1024,
            GIB / 1024
        ),
    )
    .unwrap();
    root
}

#[test]
#[cfg_attr(miri, ignore)] // sysinfo calls sysconf(_SC_CLK_TCK), which miri does not implement
fn without_a_cgroup_the_host_memory_in_use_is_measured_and_said_once() {
    let root = host_tree("no-cgroup");
    let warnings = Warnings::default();
    let monitor = tracing::subscriber::with_default(warnings.clone(), || {
        let monitor = MemoryMonitor::builder()
            .probe(SystemProbe::with_root(&root))
            .build()
            .unwrap();
        for _ in 0..3 {
            monitor.sample_now().unwrap();
        }
        monitor
    });
    let status = monitor.status().unwrap();
    assert_eq!(status.limit_source, LimitSource::System);
    // 15 GiB of 16 in use on the host: the OOM killer is near, whatever our RSS.
    assert_eq!((status.used, status.limit), (15 * GIB, 16 * GIB));
    assert_eq!(status.level, PressureLevel::Critical);
    assert_eq!(status.rss, 100 * 4096);

    // (The change to critical is a warning of its own.)
    let all = warnings.0.lock().unwrap();
    let warnings: Vec<_> = all
        .iter()
        .filter(|w| !w.contains("pressure changed"))
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "one warning, not one per sample: {all:?}"
    );
    assert!(
        warnings[0].contains("system memory") && warnings[0].contains("cgroup"),
        "{}",
        warnings[0]
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
#[cfg_attr(miri, ignore)] // sysinfo calls sysconf(_SC_CLK_TCK), which miri does not implement
fn a_cgroup_limit_gives_no_warning() {
    let root = host_tree("cgroup");
    std::fs::write(root.join("proc/self/cgroup"), "0::/app\n").unwrap();
    std::fs::write(
        root.join("proc/self/mountinfo"),
        "25 20 0:22 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
    )
    .unwrap();
    let app = root.join("sys/fs/cgroup/app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("memory.max"), (GIB).to_string()).unwrap();
    std::fs::write(app.join("memory.current"), (GIB / 10).to_string()).unwrap();
    // A roomy host: the cgroup binds.
    std::fs::write(
        root.join("proc/meminfo"),
        format!(
            "MemTotal: {} kB\nMemAvailable: {} kB\n",
            16 * GIB / 1024,
            15 * GIB / 1024
        ),
    )
    .unwrap();
    let warnings = Warnings::default();
    let status = tracing::subscriber::with_default(warnings.clone(), || {
        MemoryMonitor::builder()
            .probe(SystemProbe::with_root(&root))
            .build()
            .unwrap()
            .status()
            .unwrap()
    });
    assert_eq!(status.limit_source, LimitSource::CgroupV2);
    assert_eq!((status.used, status.limit), (GIB / 10, GIB));
    assert!(warnings.0.lock().unwrap().is_empty());
    let _ = std::fs::remove_dir_all(&root);
}
