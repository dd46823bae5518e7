//! The real thing on this machine: allocate and touch ~200 MiB, see the resident set
//! and the level rise in a fresh sample; free it, see them fall.
//!
//! One test in its own binary, so no other test's allocations move this process's
//! RSS while it measures.
#![cfg(not(loom))]

use std::hint::black_box;
use std::time::{Duration, Instant};

use heijunka_core::PressureLevel;
use heijunka_memory::{LimitSource, MemoryMonitor, MemoryProbe, RssSource, SystemProbe};

const MIB: u64 = 1 << 20;
const BLOCK: usize = 200 << 20;

#[test]
#[cfg_attr(miri, ignore)] // 200 MiB under miri is far too slow, and miri has no /proc
fn touching_200_mib_raises_the_level_and_freeing_it_lowers_it() {
    // The two RSS sources agree on this process (generous margin: they read at
    // different instants).
    let procfs = SystemProbe::new().read().unwrap().rss;
    let sysinfo = SystemProbe::new()
        .rss_source(RssSource::Sysinfo)
        .read()
        .unwrap()
        .rss;
    assert!(procfs.abs_diff(sysinfo) < 32 * MIB, "{procfs} vs {sysinfo}");

    // A budget of the current RSS plus 240 MiB: 200 MiB more is above 80 %.
    let baseline = SystemProbe::new().read().unwrap().rss;
    let monitor = MemoryMonitor::builder()
        .limit(baseline + 240 * MIB)
        .build()
        .unwrap();
    let before = monitor.sample_now().unwrap();
    // (The fullest limit binds: before the block, the machine's memory in use may
    // be a larger share of its total than this process of its budget.)
    assert_eq!(before.status.level, PressureLevel::Normal);

    // Touch every page, so it is resident, not just reserved.
    let block = black_box(vec![1_u8; BLOCK]);
    let grown = monitor.sample_now().unwrap();
    assert!(
        grown.status.rss >= before.status.rss + 180 * MIB,
        "rss {} -> {}",
        before.status.rss,
        grown.status.rss
    );
    assert!(
        grown.status.level >= PressureLevel::Elevated,
        "{:?}",
        grown.status
    );
    assert_eq!(grown.status.limit_source, LimitSource::Configured);
    assert_eq!(monitor.pressure(), grown.status.level);

    drop(black_box(block));
    // glibc returns a block this large to the kernel at once (it was mmapped);
    // another allocator may take a moment. Bounded: at most 2 s of re-sampling.
    let deadline = Instant::now() + Duration::from_secs(2);
    let fallen = loop {
        let s = monitor.sample_now().unwrap();
        if s.status.level == PressureLevel::Normal || Instant::now() >= deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(
        fallen.status.level,
        PressureLevel::Normal,
        "{:?}",
        fallen.status
    );
    assert!(
        fallen.status.rss + 150 * MIB <= grown.status.rss,
        "rss {} -> {}",
        grown.status.rss,
        fallen.status.rss
    );
    let stats = monitor.stats();
    assert!(stats.level_changes >= 2, "{stats:?}");
}
