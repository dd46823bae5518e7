//! `SystemProbe` over fixture trees of `/proc/self` and cgroup v1/v2 files: limits set
//! on parents, "max", v1's "unlimited", missing files and garbage.
#![cfg(not(loom))]

use std::path::{Path, PathBuf};

use heijunka_memory::{
    CgroupVersion, LimitSource, MemoryMonitor, MemoryProbe, RssSource, SystemProbe,
};

const MIB: u64 = 1 << 20;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

#[test]
#[cfg_attr(miri, ignore)] // sysinfo calls sysconf(_SC_CLK_TCK), which miri does not implement
fn only_a_parent_sets_memory_max_and_its_limit_applies() {
    let mut probe = SystemProbe::with_root(fixture("v2_parent_limit"));
    assert!(probe.in_cgroup());
    let reading = probe.read().unwrap();
    // statm: 256 resident pages; the fixture has no auxv, so 4 KiB pages.
    assert_eq!(reading.rss, 256 * 4096);
    let cgroup = reading.cgroup.expect("the pod's limit");
    assert_eq!(cgroup.version, CgroupVersion::V2);
    // container1 says "max"; pod1 sets 512 MiB; kubepods.slice 1 GiB: the smallest wins.
    assert_eq!(cgroup.limit, 512 * MIB);
    assert!(
        cgroup.path.ends_with("sys/fs/cgroup/kubepods.slice/pod1"),
        "{}",
        cgroup.path
    );
    // pod1's usage less its inactive file pages: 256 MiB - 16 MiB.
    assert_eq!(cgroup.usage, Some(240 * MIB));

    // A monitor over it counts the pod's working set against the pod's limit.
    let monitor = MemoryMonitor::builder()
        .probe(SystemProbe::with_root(fixture("v2_parent_limit")))
        .build()
        .unwrap();
    let sample = monitor.last_sample().expect("build takes a first sample");
    assert_eq!(sample.status.limit_source, LimitSource::CgroupV2);
    assert_eq!(
        (sample.status.used, sample.status.limit),
        (240 * MIB, 512 * MIB)
    );
    assert_eq!(sample.cgroup.unwrap().path, cgroup.path);
}

#[test]
#[cfg_attr(miri, ignore)] // sysinfo calls sysconf(_SC_CLK_TCK), which miri does not implement
fn v1_container_view_maps_to_the_mount_point() {
    let reading = SystemProbe::with_root(fixture("v1_container"))
        .read()
        .unwrap();
    assert_eq!(reading.rss, 512 * 4096);
    let cgroup = reading.cgroup.unwrap();
    assert_eq!(cgroup.version, CgroupVersion::V1);
    assert_eq!(cgroup.limit, 256 * MIB);
    // v1 subtracts the hierarchical total_inactive_file, not inactive_file.
    assert_eq!(cgroup.usage, Some(128 * MIB - 4 * MIB));
    assert!(
        cgroup.path.ends_with("sys/fs/cgroup/memory"),
        "{}",
        cgroup.path
    );
}

#[test]
#[cfg_attr(miri, ignore)] // sysinfo calls sysconf(_SC_CLK_TCK), which miri does not implement
fn v1_unlimited_everywhere_is_no_cgroup_limit() {
    let mut probe = SystemProbe::with_root(fixture("v1_unlimited"));
    assert!(probe.in_cgroup());
    let reading = probe.read().unwrap();
    assert_eq!(reading.cgroup, None);
    assert_eq!(reading.rss, 443 * 4096);

    // Then the configured limit (smaller than the system's) applies to the RSS.
    let monitor = MemoryMonitor::builder()
        .probe(SystemProbe::with_root(fixture("v1_unlimited")))
        .limit(2 * MIB)
        .build()
        .unwrap();
    let status = monitor.status().unwrap();
    assert_eq!(status.limit_source, LimitSource::Configured);
    assert_eq!((status.used, status.limit), (443 * 4096, 2 * MIB));
}

#[test]
#[cfg_attr(miri, ignore)] // sysinfo calls sysconf(_SC_CLK_TCK), which miri does not implement
fn hybrid_hierarchy_uses_the_v1_memory_controller() {
    let cgroup = SystemProbe::with_root(fixture("hybrid_v1_limit"))
        .read()
        .unwrap()
        .cgroup
        .unwrap();
    assert_eq!(cgroup.version, CgroupVersion::V1);
    assert_eq!(cgroup.limit, 1024 * MIB);
    // No memory.stat: the usage is taken whole.
    assert_eq!(cgroup.usage, Some(100 * MIB));
}

#[test]
#[cfg_attr(miri, ignore)] // sysinfo calls sysconf(_SC_CLK_TCK), which miri does not implement
fn a_zero_leaf_limit_is_skipped_and_a_missing_usage_is_none() {
    let cgroup = SystemProbe::with_root(fixture("v2_limit_usage_missing"))
        .read()
        .unwrap()
        .cgroup
        .unwrap();
    assert_eq!(cgroup.limit, 2048 * MIB);
    assert_eq!(cgroup.usage, None);
    assert!(cgroup.path.ends_with("sys/fs/cgroup/a"), "{}", cgroup.path);

    // Without a usage figure, the process's RSS is counted against the cgroup limit.
    let monitor = MemoryMonitor::builder()
        .probe(SystemProbe::with_root(fixture("v2_limit_usage_missing")))
        .build()
        .unwrap();
    let status = monitor.status().unwrap();
    if status.limit_source == LimitSource::CgroupV2 {
        assert_eq!(status.used, 50 * 4096);
    } else {
        // A test machine with less than 2 GiB of RAM: the system total is smaller.
        assert_eq!(status.limit_source, LimitSource::System);
    }
}

#[test]
#[cfg_attr(miri, ignore)] // sysinfo calls sysconf(_SC_CLK_TCK), which miri does not implement
fn garbage_files_fall_back_without_panicking() {
    // Garbage statm: the resident set comes from sysinfo (this test process's).
    // Garbage limit files: no cgroup limit.
    let reading = SystemProbe::with_root(fixture("garbage")).read().unwrap();
    assert_eq!(reading.cgroup, None);
    assert!(reading.rss > 0);

    let mut probe = SystemProbe::with_root(fixture("garbage_mountinfo"));
    assert!(!probe.in_cgroup(), "no usable hierarchy in garbage");
    let reading = probe.read().unwrap();
    assert_eq!(reading.rss, 2 * 4096);
    assert_eq!(reading.cgroup, None);
}

#[test]
#[cfg_attr(miri, ignore)] // sysinfo calls sysconf(_SC_CLK_TCK), which miri does not implement
fn missing_files_fall_back_to_sysinfo() {
    let mut probe = SystemProbe::with_root(fixture("does-not-exist"));
    assert!(!probe.in_cgroup());
    let reading = probe.read().unwrap();
    assert!(reading.rss > 0);
    assert!(reading.system_total > 0);
    assert_eq!(reading.cgroup, None);

    // The sysinfo source ignores statm altogether.
    let reading = SystemProbe::with_root(fixture("v2_parent_limit"))
        .rss_source(RssSource::Sysinfo)
        .read()
        .unwrap();
    assert_ne!(reading.rss, 256 * 4096, "the real process, not the fixture");
    assert_eq!(reading.cgroup.unwrap().limit, 512 * MIB);
}

/// A cgroup v2 tree built in a temp dir: `/proc/self/cgroup` puts the process in
/// `/parent/leaf`, each `(dir, memory.max, memory.current)` is written below the
/// mount point. Removed on drop.
struct TempTree {
    root: PathBuf,
}

impl TempTree {
    fn v2(name: &str, membership: &str, dirs: &[(&str, &str, u64)]) -> Self {
        let root = std::env::temp_dir().join(format!(
            "heijunka-memory-tree-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&root);
        let proc_self = root.join("proc/self");
        std::fs::create_dir_all(&proc_self).unwrap();
        std::fs::write(proc_self.join("cgroup"), format!("0::{membership}\n")).unwrap();
        std::fs::write(
            proc_self.join("mountinfo"),
            "25 20 0:22 / /sys/fs/cgroup rw,relatime shared:9 - cgroup2 cgroup2 rw\n",
        )
        .unwrap();
        std::fs::write(proc_self.join("statm"), "1000 100 0 0 0 0 0\n").unwrap();
        for (dir, max, current) in dirs {
            let d = root.join("sys/fs/cgroup").join(dir);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("memory.max"), format!("{max}\n")).unwrap();
            std::fs::write(d.join("memory.current"), format!("{current}\n")).unwrap();
        }
        Self { root }
    }

    fn write(&self, relative: &str, text: &str) {
        let path = self.root.join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
}

impl Drop for TempTree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

const GIB: u64 = 1 << 30;

#[test]
#[cfg_attr(miri, ignore)] // sysinfo calls sysconf(_SC_CLK_TCK), which miri does not implement
fn pressure_is_the_least_headroom_along_the_chain_not_the_smallest_limit() {
    // The leaf is at 10 % of 1 GiB; its parent (the pod, shared with siblings) at 98 %
    // of 2 GiB. The parent's OOM killer is about to fire: the pressure is critical
    // and the limit reported is the parent's, the one that binds.
    let leaf_used = GIB / 10;
    let parent_used = 2 * GIB * 98 / 100;
    let tree = TempTree::v2(
        "headroom",
        "/parent/leaf",
        &[
            ("parent", &(2 * GIB).to_string(), parent_used),
            ("parent/leaf", &GIB.to_string(), leaf_used),
        ],
    );
    let cgroup = SystemProbe::with_root(&tree.root)
        .read()
        .unwrap()
        .cgroup
        .unwrap();
    assert_eq!(
        (cgroup.limit, cgroup.usage),
        (2 * GIB, Some(parent_used)),
        "the binding limit is the parent's: {}",
        cgroup.path
    );
    assert!(
        cgroup.path.ends_with("sys/fs/cgroup/parent"),
        "{}",
        cgroup.path
    );

    let monitor = MemoryMonitor::builder()
        .probe(SystemProbe::with_root(&tree.root))
        .limit(64 * GIB) // larger than both: the cgroup binds
        .build()
        .unwrap();
    let status = monitor.status().unwrap();
    assert_eq!(status.level, heijunka_core::PressureLevel::Critical);
    assert_eq!((status.used, status.limit), (parent_used, 2 * GIB));

    // With the parent relieved, the leaf (now the fuller one) binds again.
    tree.write(
        "sys/fs/cgroup/parent/memory.current",
        &(GIB / 2).to_string(),
    );
    tree.write(
        "sys/fs/cgroup/parent/leaf/memory.current",
        &(GIB * 85 / 100).to_string(),
    );
    let s = monitor.sample_now().unwrap();
    assert_eq!((s.status.used, s.status.limit), (GIB * 85 / 100, GIB));
    assert_eq!(s.status.level, heijunka_core::PressureLevel::Elevated);
}

#[test]
#[cfg_attr(miri, ignore)] // sysinfo calls sysconf(_SC_CLK_TCK), which miri does not implement
fn a_configured_budget_does_not_hide_a_full_cgroup() {
    // A 1 GiB budget the process's RSS (400 KiB) is far from, inside a 4 GiB cgroup
    // at 95 %: the cgroup binds although its limit is larger.
    let tree = TempTree::v2(
        "budget",
        "/svc",
        &[("svc", &(4 * GIB).to_string(), 4 * GIB * 95 / 100)],
    );
    let monitor = MemoryMonitor::builder()
        .probe(SystemProbe::with_root(&tree.root))
        .limit(GIB)
        .build()
        .unwrap();
    let status = monitor.status().unwrap();
    assert_eq!(status.limit_source, LimitSource::CgroupV2);
    assert_eq!(status.level, heijunka_core::PressureLevel::Critical);
}

#[test]
#[cfg_attr(miri, ignore)] // sysinfo calls sysconf(_SC_CLK_TCK), which miri does not implement
fn a_namespaced_path_outside_the_mount_never_escapes_it() {
    // Inside a cgroup namespace a process moved out of the namespace's root sees
    // `0::/../sibling`: that directory is not below the mount point; reading
    // `sys/fs/sibling` (the mount point joined with `..`) would be someone else's.
    let tree = TempTree::v2("namespace", "/../sibling", &[("", "max", 1)]);
    tree.write("sys/fs/sibling/memory.max", &GIB.to_string());
    tree.write("sys/fs/sibling/memory.current", &GIB.to_string());
    let reading = SystemProbe::with_root(&tree.root).read().unwrap();
    assert_eq!(
        reading.cgroup, None,
        "read outside the mount: {:?}",
        reading.cgroup
    );
}

#[test]
#[cfg_attr(miri, ignore)] // sysinfo calls sysconf(_SC_CLK_TCK), which miri does not implement
fn of_several_mounts_of_one_hierarchy_the_one_showing_the_cgroup_is_used() {
    // The same cgroup2 hierarchy mounted twice: first a container's view of another
    // subtree (root /other), then the full hierarchy. The process's cgroup is only
    // visible through the second.
    let tree = TempTree::v2("mounts", "/app", &[]);
    tree.write(
        "proc/self/mountinfo",
        "30 20 0:22 /other /mnt/other rw - cgroup2 cgroup2 rw\n\
         25 20 0:22 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
    );
    tree.write("mnt/other/memory.max", &(8 * GIB).to_string());
    tree.write("mnt/other/memory.current", "1");
    tree.write("sys/fs/cgroup/app/memory.max", &GIB.to_string());
    tree.write("sys/fs/cgroup/app/memory.current", &(GIB / 2).to_string());
    let cgroup = SystemProbe::with_root(&tree.root)
        .read()
        .unwrap()
        .cgroup
        .expect("the app's limit, through the mount that shows it");
    assert_eq!(cgroup.limit, GIB);
    assert!(
        cgroup.path.ends_with("sys/fs/cgroup/app"),
        "{}",
        cgroup.path
    );
}

#[test]
#[cfg_attr(miri, ignore)] // sysinfo calls sysconf(_SC_CLK_TCK), which miri does not implement
fn stall_information_comes_from_the_cgroup_then_the_system() {
    let tree = TempTree::v2("psi", "/app", &[("app", &GIB.to_string(), GIB / 10)]);
    tree.write(
        "proc/pressure/memory",
        "some avg10=1.00 avg60=2.00 avg300=3.00 total=10\nfull avg10=0.50 avg60=0.25 avg300=0.00 total=5\n",
    );
    // No memory.pressure in the cgroup (cgroup v1, an old kernel): the system's.
    let reading = SystemProbe::with_root(&tree.root).read().unwrap();
    let stall = reading.stall.expect("the system's stall information");
    assert_eq!((stall.some.avg10, stall.some.avg60), (1.0, 2.0));
    assert_eq!(stall.full.unwrap().avg10, 0.5);

    // The cgroup's own, where it has one.
    tree.write(
        "sys/fs/cgroup/app/memory.pressure",
        "some avg10=42.00 avg60=10.00 avg300=1.00 total=99\nfull avg10=20.00 avg60=5.00 avg300=0.50 total=50\n",
    );
    let monitor = MemoryMonitor::builder()
        .probe(SystemProbe::with_root(&tree.root))
        .build()
        .unwrap();
    let sample = monitor.last_sample().unwrap();
    assert_eq!(sample.stall.unwrap().some.avg10, 42.0);
    assert_eq!(monitor.stall_percent(), Some(42.0));
    // 10 % of its limit, but tasks stalled 42 % of the time: a gate with a stall
    // threshold rejects.
    assert_eq!(sample.status.level, heijunka_core::PressureLevel::Normal);
    let gate = heijunka_memory::MemoryGate::builder(&monitor)
        .stall_threshold(25.0)
        .build()
        .unwrap();
    assert!(gate.check().is_err());
    let plain = heijunka_memory::MemoryGate::builder(&monitor)
        .build()
        .unwrap();
    assert!(plain.check().is_ok());

    // Garbage: no stall information, and the rule never fires.
    tree.write("sys/fs/cgroup/app/memory.pressure", "some avg10=oops");
    tree.write("proc/pressure/memory", "");
    monitor.sample_now().unwrap();
    assert_eq!(monitor.stall_percent(), None);
    assert!(gate.check().is_ok());
}
