//! `memory/*`: the pressure read, a full sample on the `/proc` path against a
//! `sysinfo` refresh of the same figures, and the counting allocator against the
//! plain system allocator.
//!
//! No peer crate does what the monitor does; the peers here are the primitives it
//! is measured against: a bare atomic load (`pressure()` should cost one), `sysinfo`
//! (the portable way to read the same figures), and `std::alloc::System` (what
//! `CountingAlloc` wraps).

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU8, Ordering};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use heijunka_benches::{baselines, contended};
use heijunka_memory::{
    CountingAlloc, MemoryGate, MemoryMonitor, MemoryProbe, RssSource, SystemProbe,
};
use sysinfo::{MemoryRefreshKind, ProcessRefreshKind, ProcessesToUpdate, System as SysinfoSystem};

fn pressure(c: &mut Criterion) {
    let mut g = c.benchmark_group("memory/pressure");
    let monitor = MemoryMonitor::builder()
        .build()
        .expect("default configuration is valid");
    g.bench_function("heijunka", |b| b.iter(|| black_box(&monitor).pressure()));
    // The floor: one Acquire load of a byte, what `pressure()` is made of.
    let level = AtomicU8::new(0);
    g.bench_function("std", |b| {
        b.iter(|| black_box(&level).load(Ordering::Acquire))
    });
    g.finish();
}

fn pressure_contended(c: &mut Criterion) {
    // Readers on every request path while the level is stable: the cache line is
    // shared read-only, so the per-thread cost should not grow with threads.
    let mut g = c.benchmark_group("memory/pressure_contended");
    for threads in [1_usize, 2] {
        g.bench_with_input(BenchmarkId::new("heijunka", threads), &threads, |b, &t| {
            let monitor = MemoryMonitor::builder()
                .build()
                .expect("default configuration is valid");
            b.iter_custom(|iters| {
                let monitor = monitor.clone();
                contended(t, iters, move |_| {
                    black_box(monitor.pressure());
                })
            })
        });
    }
    g.finish();
}

fn gate(c: &mut Criterion) {
    // An admit through the gate: the level load plus a sharded counter bump.
    let mut g = c.benchmark_group("memory/gate_check");
    let monitor = MemoryMonitor::builder()
        .build()
        .expect("default configuration is valid");
    let gate = MemoryGate::builder(&monitor)
        .large_request_bytes(1 << 20)
        .build()
        .expect("valid gate");
    g.bench_function("heijunka", |b| {
        b.iter(|| black_box(&gate).check_size(black_box(4_096)))
    });
    g.finish();
}

fn sample(c: &mut Criterion) {
    // A full sample: statm, the cgroup limit files of every directory up the
    // hierarchy, system memory through sysinfo's /proc/meminfo read, the level
    // logic and the publish. Against it, sysinfo refreshing the same figures (this
    // process's memory and system memory), configured as narrowly as sysinfo
    // allows for fairness: memory only, no thread list, one pid.
    let mut g = c.benchmark_group("memory/sample");
    let monitor = MemoryMonitor::builder()
        .build()
        .expect("default configuration is valid");
    g.bench_function("heijunka", |b| {
        b.iter(|| black_box(&monitor).sample_now().expect("sample"))
    });
    let pid = sysinfo::get_current_pid().expect("own pid");
    let mut sys = SysinfoSystem::new();
    g.bench_function("sysinfo", |b| {
        b.iter(|| {
            sys.refresh_processes_specifics(
                ProcessesToUpdate::Some(&[pid]),
                false,
                ProcessRefreshKind::nothing().with_memory().without_tasks(),
            );
            sys.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
            let rss = sys.process(pid).map(sysinfo::Process::memory);
            black_box((rss, sys.total_memory(), sys.available_memory()))
        })
    });
    g.finish();
}

fn probe_rss_source(c: &mut Criterion) {
    // The same probe reading (cgroup chain and system memory included), differing
    // only in where the resident set comes from: /proc/self/statm or sysinfo.
    let mut g = c.benchmark_group("memory/probe_read");
    let mut procfs = SystemProbe::new().rss_source(RssSource::Procfs);
    g.bench_function("heijunka", |b| b.iter(|| procfs.read().expect("read")));
    let mut via_sysinfo = SystemProbe::new().rss_source(RssSource::Sysinfo);
    g.bench_function("sysinfo", |b| b.iter(|| via_sysinfo.read().expect("read")));
    g.finish();
}

fn alloc_small(c: &mut Criterion) {
    // alloc + dealloc of one small block, through the counting wrapper and through
    // the system allocator it wraps. Both are called directly (a bench binary has
    // one global allocator); the wrapper runs the same code it runs when global.
    let mut g = c.benchmark_group("memory/alloc_small");
    let counting = CountingAlloc::system();
    for size in [16_usize, 64, 256] {
        let layout = Layout::from_size_align(size, 8).expect("valid layout");
        g.bench_with_input(BenchmarkId::new("heijunka", size), &layout, |b, &l| {
            b.iter(|| {
                // SAFETY: `l` has a non-zero size; the block is freed with the same
                // allocator and layout, and only if the allocation succeeded.
                unsafe {
                    let p = black_box(&counting).alloc(black_box(l));
                    if !p.is_null() {
                        p.write(1);
                        counting.dealloc(black_box(p), l);
                    }
                }
            })
        });
        g.bench_with_input(BenchmarkId::new("std", size), &layout, |b, &l| {
            b.iter(|| {
                // SAFETY: as above, with `System` on both sides.
                unsafe {
                    let p = black_box(&System).alloc(black_box(l));
                    if !p.is_null() {
                        p.write(1);
                        System.dealloc(black_box(p), l);
                    }
                }
            })
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    baselines,
    pressure,
    pressure_contended,
    gate,
    sample,
    probe_rss_source,
    alloc_small
);
criterion_main!(benches);
