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
