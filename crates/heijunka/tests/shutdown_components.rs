//! Components registered with a [`Shutdown`] get the grace they were given: a
//! component whose drain takes longer than the default hook timeout, but less than
//! its grace, is not cut off.
//!
//! Time: tokio's paused clock drives the task pool, the dispatcher and the event bus
//! (their 3 s tasks are `tokio::time::sleep`s). The worker pool runs real threads: its
//! 3 s task blocks on a channel that a tokio task releases after 3 s of paused time,
//! so no test thread sleeps in real time. The worker pool's own wait inside its stop
//! hook is a real condition variable, but its task is released before that hook
//! starts, so it never waits.
#![cfg(all(feature = "pool", feature = "event-bus", feature = "shutdown"))]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use heijunka::event_bus::EventBus;
use heijunka::pool::{Dispatcher, TaskPool, WorkerPool};
use heijunka::shutdown::{DEFAULT_HOOK_TIMEOUT, HOOK_GRACE_MARGIN, HookOutcome, Shutdown};
use tokio::sync::oneshot;
use tokio::time::{Instant, sleep};

const GRACE: Duration = Duration::from_secs(10);
const TASK: Duration = Duration::from_secs(3);

/// The receiving end of a one-shot signal, which a handler (called through `Fn`)
/// takes and waits for once.
type Baton = Arc<Mutex<Option<oneshot::Receiver<()>>>>;

fn baton() -> (oneshot::Sender<()>, Baton) {
    let (tx, rx) = oneshot::channel();
    (tx, Arc::new(Mutex::new(Some(rx))))
}

/// One 3 s task in each registered component. The event bus handler, the
/// dispatcher's handler and the task pool's task form a pipeline (each starts when
/// the one before it has finished: 0-3 s, 3-6 s, 6-9 s), and a second task pool
/// task follows it (9-12 s); the worker pool's task runs 0-3 s. The hooks run
/// dispatcher, event bus, task pool, worker pool (reverse registration order), so
/// the dispatcher's stop hook waits 6 s for its message (0-6 s) and the task pool's
/// 6 s for its two tasks (6-12 s): each more than the default 5 s hook timeout,
/// within its 10 s grace.
#[tokio::test(start_paused = true)]
async fn every_registered_component_drains_within_the_grace_it_was_given() {
    let shutdown = Shutdown::builder().grace_period(GRACE).build().unwrap();

    // Worker pool: a real thread blocked on a channel, released after 3 s of
    // paused time.
    let workers = WorkerPool::builder()
        .workers(1)
        .queue_capacity(4)
        .name("accept-workers")
        .build()
        .unwrap();
    let (release, blocked) = std::sync::mpsc::channel::<()>();
    // `try_submit` and a join on the blocking pool: the waiting forms panic on
    // a runtime's thread (issue #26).
    let worker_job = workers
        .try_submit(move || blocked.recv().map(|()| 1_u64).unwrap_or(0))
        .unwrap();
    tokio::spawn(async move {
        sleep(TASK).await;
        release.send(()).unwrap();
    });

    // Event bus handler: 0-3 s, then hands the baton to the dispatcher.
    let bus = EventBus::new();
    let topic = bus.topic::<u32>("orders").unwrap();
    let (bus_done, dispatch_go) = baton();
    let bus_done = Arc::new(Mutex::new(Some(bus_done)));
    let _handler = topic
        .handle(1, move |_event| {
            let done = bus_done.lock().unwrap().take();
            async move {
                sleep(TASK).await;
                if let Some(done) = done {
                    let _ = done.send(());
                }
            }
        })
        .unwrap();

    // Dispatcher: 3-6 s, then hands the baton to the task pool.
    let dispatcher: Dispatcher<u64, u64, String> = Dispatcher::builder()
        .workers(1)
        .queue_capacity(4)
        .build()
        .unwrap();
    let (dispatch_done, pool_go) = baton();
    let dispatch_done = Arc::new(Mutex::new(Some(dispatch_done)));
    dispatcher
        .register("bill", move |x| {
            let go = dispatch_go.lock().unwrap().take();
            let done = dispatch_done.lock().unwrap().take();
            async move {
                if let Some(go) = go {
                    let _ = go.await;
                }
                sleep(TASK).await;
                if let Some(done) = done {
                    let _ = done.send(());
                }
                Ok(x)
            }
        })
        .unwrap();

    // Task pool: 6-9 s, then hands the baton to its second task: 9-12 s.
    let tasks = TaskPool::builder().max_running(2).build().unwrap();
    let go = pool_go.lock().unwrap().take().unwrap();
    let (pool_done, second_go) = oneshot::channel::<()>();
    let pool_task = tasks
        .try_spawn(async move {
            let _ = go.await;
            sleep(TASK).await;
            let _ = pool_done.send(());
            3_u64
        })
        .unwrap();
    let second_pool_task = tasks
        .try_spawn(async move {
            let _ = second_go.await;
            sleep(TASK).await;
            4_u64
        })
        .unwrap();

    // Registered first stops last.
    workers
        .register_with(&shutdown, "worker pool", GRACE)
        .unwrap();
    tasks.register_with(&shutdown, "task pool", GRACE).unwrap();
    bus.register_with(&shutdown, GRACE).unwrap();
    dispatcher
        .register_with(&shutdown, "dispatcher", GRACE)
        .unwrap();

    topic.publish(1).await.unwrap();
    let reply = dispatcher.try_dispatch("bill", 2).unwrap();

    let start = Instant::now();
    shutdown.trigger();
    let report = shutdown.wait().await;

    let hooks: Vec<_> = report
        .hooks
        .iter()
        .map(|h| (h.name.as_str(), h.outcome.clone(), h.elapsed))
        .collect();
    assert!(report.is_clean(), "{report}");
    assert_eq!(
        hooks,
        [
            ("dispatcher", HookOutcome::Ok, Duration::from_secs(6)),
            ("event bus", HookOutcome::Ok, Duration::ZERO),
            ("task pool", HookOutcome::Ok, Duration::from_secs(6)),
            ("worker pool", HookOutcome::Ok, Duration::ZERO),
        ]
    );
    // The promise of `register_with`: the hook's limit is the component's grace
    // plus the margin, or the coordinator's hook timeout if that is longer.
    let promised = GRACE
        .saturating_add(HOOK_GRACE_MARGIN)
        .max(DEFAULT_HOOK_TIMEOUT);
    for h in &report.hooks {
        assert_eq!(h.timeout, promised, "{}'s hook time limit", h.name);
    }
    // Two components drained for longer than the default hook timeout.
    let long: Vec<_> = report
        .hooks
        .iter()
        .filter(|h| h.elapsed > DEFAULT_HOOK_TIMEOUT)
        .map(|h| h.name.as_str())
        .collect();
    assert_eq!(long, ["dispatcher", "task pool"]);
    assert_eq!(start.elapsed(), Duration::from_secs(12));
    assert_eq!(reply.await, Ok(2));
    assert_eq!(pool_task.join().await, Ok(3));
    assert_eq!(second_pool_task.join().await, Ok(4));
    let joined = tokio::task::spawn_blocking(move || worker_job.join());
    assert_eq!(joined.await.unwrap(), Ok(1));
}
