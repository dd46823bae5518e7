//! A tracked spawn costs nothing beyond the task itself on its common path, counted
//! with `heijunka-memory`'s counting allocator (its own test binary: the allocator is
//! global).
#![cfg(not(loom))]

use std::time::Duration;

use heijunka_memory::{CountingAlloc, measure_allocations};
use heijunka_shutdown::Shutdown;

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc::system();

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

/// Allocation calls made on this thread by a spawn and the task's run to its end:
/// the current-thread runtime polls the task on this thread.
fn spawn_and_finish(
    rt: &tokio::runtime::Runtime,
    spawn: impl Fn() -> tokio::task::JoinHandle<u64>,
) -> u64 {
    let (out, stats) = measure_allocations(|| rt.block_on(spawn()).unwrap());
    assert_eq!(out, 7);
    stats.allocations
}

#[cfg_attr(miri, ignore)] // counts allocations of the real allocator
#[test]
fn an_unnamed_tracked_spawn_allocates_only_the_task() {
    let rt = runtime();
    let shutdown = Shutdown::new();
    let _g = rt.enter();
    let plain = || tokio::spawn(async { 7_u64 });
    let tracked = || {
        shutdown
            .spawn(async { 7_u64 })
            .expect("running: the spawn is accepted")
    };
    // Warm up the runtime's and the coordinator's one-time structures.
    for _ in 0..16 {
        spawn_and_finish(&rt, plain);
        spawn_and_finish(&rt, tracked);
    }
    let bare = spawn_and_finish(&rt, plain);
    let with_tracking = spawn_and_finish(&rt, tracked);
    assert_eq!(
        with_tracking, bare,
        "a tracked spawn + exit made {with_tracking} allocations, tokio::spawn alone {bare}"
    );
    assert_eq!(shutdown.in_flight(), 0);
}

#[cfg_attr(miri, ignore)] // counts allocations of the real allocator
#[test]
fn a_named_task_still_running_at_the_deadline_is_reported_by_name() {
    let rt = runtime();
    let shutdown = Shutdown::builder()
        .grace_period(Duration::from_secs(2))
        .build()
        .unwrap();
    let report = rt.block_on(async {
        shutdown
            .spawn_named(
                "stuck-export",
                tokio::time::sleep(Duration::from_secs(3600)),
            )
            .unwrap();
        shutdown
            .spawn_named(
                String::from("quick"),
                tokio::time::sleep(Duration::from_secs(1)),
            )
            .unwrap();
        shutdown
            .spawn(tokio::time::sleep(Duration::from_secs(3600)))
            .unwrap();
        shutdown.trigger();
        shutdown.wait().await
    });
    assert_eq!(report.abandoned_tasks, ["stuck-export"]);
    assert_eq!(
        report.in_flight_at_deadline, 2,
        "the unnamed task is counted"
    );
}
