//! The dispatcher: routing, order under key affinity, least-loaded balance,
//! registration while messages flow, panic isolation, backpressure, shutdown.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use heijunka_core::Rejection;
use heijunka_pool::{DispatchError, Dispatcher, HandlerError, RegisterError};
use heijunka_shutdown::Shutdown;
use tokio::sync::Semaphore;

type D = Dispatcher<u64, u64, String>;

fn dispatcher(workers: usize, queue: usize) -> D {
    Dispatcher::builder()
        .workers(workers)
        .queue_capacity(queue)
        .build()
        .unwrap()
}

/// A handler that waits for a permit of `gate` before answering.
fn gated(d: &D, name: &str, gate: &Arc<Semaphore>) {
    let gate = Arc::clone(gate);
    d.register(name, move |x| {
        let gate = Arc::clone(&gate);
        async move {
            gate.acquire().await.unwrap().forget();
            Ok(x)
        }
    })
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn key_affinity_keeps_per_key_order_with_many_keys_and_producers() {
    let d = dispatcher(4, 8);
    let seen: Arc<Mutex<HashMap<u64, Vec<u64>>>> = Arc::default();
    {
        let seen = Arc::clone(&seen);
        d.register("record", move |msg: u64| {
            let seen = Arc::clone(&seen);
            async move {
                // A yield inside the handler gives other workers a chance to run.
                tokio::task::yield_now().await;
                let (key, seq) = (msg >> 32, msg & 0xffff_ffff);
                seen.lock().unwrap().entry(key).or_default().push(seq);
                Ok(msg)
            }
        })
        .unwrap();
    }
    const PRODUCERS: u64 = 4;
    const KEYS: u64 = 16; // per producer
    const PER_KEY: u64 = 40;
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let d = d.clone();
            tokio::spawn(async move {
                let mut replies = Vec::new();
                for seq in 0..PER_KEY {
                    for k in 0..KEYS {
                        let key = p * KEYS + k;
                        let reply = d
                            .dispatch_keyed("record", &key, (key << 32) | seq)
                            .await
                            .unwrap();
                        replies.push(reply);
                    }
                }
                for r in replies {
                    r.await.unwrap();
                }
            })
        })
        .collect();
    for p in producers {
        p.await.unwrap();
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len() as u64, PRODUCERS * KEYS);
    for (key, seqs) in seen.iter() {
        assert_eq!(
            *seqs,
            (0..PER_KEY).collect::<Vec<_>>(),
            "key {key} out of order"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn least_loaded_keeps_loads_within_one_on_uniform_work() {
    let d = dispatcher(4, 1024);
    // Uniform work: every message takes 1 ms (paused time).
    d.register("work", |x| async move {
        tokio::time::sleep(Duration::from_millis(1)).await;
        Ok(x)
    })
    .unwrap();
    let mut replies = Vec::new();
    for round in 0..60 {
        for i in 0..3 {
            replies.push(d.try_dispatch("work", round * 3 + i).unwrap());
            let loads: Vec<usize> = d.stats().workers.iter().map(|w| w.load).collect();
            let (min, max) = (loads.iter().min().unwrap(), loads.iter().max().unwrap());
            assert!(max - min <= 1, "round {round}: loads {loads:?}");
        }
        tokio::time::sleep(Duration::from_micros(300)).await;
    }
    for r in replies {
        r.await.unwrap();
    }
    let stats = d.stats();
    let processed: Vec<u64> = stats.workers.iter().map(|w| w.processed).collect();
    assert_eq!(processed.iter().sum::<u64>(), 180);
    assert!(
        processed.iter().max().unwrap() - processed.iter().min().unwrap() <= 1,
        "{processed:?}"
    );
}

#[tokio::test]
async fn least_loaded_queue_depths_stay_within_one_when_workers_are_blocked() {
    let d = dispatcher(4, 64);
    let gate = Arc::new(Semaphore::new(0));
    gated(&d, "gated", &gate);
    let mut replies = Vec::new();
    for i in 0..37 {
        replies.push(d.try_dispatch("gated", i).unwrap());
        // Let the workers pick up what they can.
        tokio::task::yield_now().await;
        let depths: Vec<usize> = d.stats().workers.iter().map(|w| w.queued).collect();
        let (min, max) = (depths.iter().min().unwrap(), depths.iter().max().unwrap());
        assert!(max - min <= 1, "after {i}: depths {depths:?}");
    }
    gate.add_permits(37);
    for (i, r) in replies.into_iter().enumerate() {
        assert_eq!(r.await.unwrap(), i as u64);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn registering_while_messages_flow_neither_deadlocks_nor_drops() {
    let d = dispatcher(4, 16);
    d.register("a", |x| async move { Ok(x) }).unwrap();
    let registrar = {
        let d = d.clone();
        tokio::spawn(async move {
            for i in 0..200_u64 {
                d.register(format!("extra-{i}"), move |x| async move { Ok(x + i) })
                    .unwrap();
                // Swap "a" for an equivalent handler while messages use it.
                assert!(d.replace("a", |x| async move { Ok(x) }).unwrap());
                tokio::task::yield_now().await;
            }
        })
    };
    let producers: Vec<_> = (0..3_u64)
        .map(|p| {
            let d = d.clone();
            tokio::spawn(async move {
                let mut sum = 0;
                for i in 0..300 {
                    let x = p * 1000 + i;
                    sum += d.dispatch("a", x).await.unwrap().await.unwrap();
                }
                sum
            })
        })
        .collect();
    let work = async {
        registrar.await.unwrap();
        let mut total = 0;
        for p in producers {
            total += p.await.unwrap();
        }
        total
    };
    let total = tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .expect("no deadlock");
    let expected: u64 = (0..3_u64)
        .flat_map(|p| (0..300).map(move |i| p * 1000 + i))
        .sum();
    assert_eq!(total, expected, "every message answered");
    assert_eq!(
        d.stats().handlers["a"].calls,
        900,
        "stats carry across replace"
    );
}

#[tokio::test]
async fn a_handler_may_register_and_dispatch_from_inside() {
    // The deadlock lesson: no lock is held while a handler runs.
    let d = dispatcher(2, 8);
    let inner = d.clone();
    d.register("setup", move |x| {
        let d = inner.clone();
        async move {
            d.replace("late", |y| async move { Ok(y * 2) }).unwrap();
            let r = d.try_dispatch("late", x).map_err(|e| e.to_string())?;
            r.await.map_err(|e| e.to_string())
        }
    })
    .unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), d.try_dispatch("setup", 21).unwrap())
        .await
        .expect("no deadlock");
    assert_eq!(reply, Ok(42));
}

#[tokio::test]
async fn a_panicking_handler_does_not_affect_other_messages() {
    let d = dispatcher(1, 64);
    d.register("maybe", |x: u64| async move {
        if x.is_multiple_of(3) {
            panic!("bad message {x}");
        }
        Ok(x)
    })
    .unwrap();
    d.register(
        "sync-panic",
        |_x: u64| -> std::future::Ready<Result<u64, String>> { panic!("before the future") },
    )
    .unwrap();
    let replies: Vec<_> = (0..12)
        .map(|x| d.try_dispatch("maybe", x).unwrap())
        .collect();
    let sync = d.try_dispatch("sync-panic", 0).unwrap();
    for (x, r) in replies.into_iter().enumerate() {
        let got = r.await;
        if x.is_multiple_of(3) {
            assert_eq!(
                got,
                Err(HandlerError::Panicked {
                    message: format!("bad message {x}")
                })
            );
        } else {
            assert_eq!(got, Ok(x as u64));
        }
    }
    assert_eq!(
        sync.await,
        Err(HandlerError::Panicked {
            message: "before the future".into()
        })
    );
    // The single worker survived every panic.
    assert_eq!(d.try_dispatch("maybe", 1).unwrap().await, Ok(1));
    let stats = d.stats();
    assert_eq!(stats.handlers["maybe"].calls, 13);
    assert_eq!(stats.handlers["maybe"].panics, 4);
    assert_eq!(stats.handlers["sync-panic"].panics, 1);
}

#[tokio::test]
async fn outcomes_are_distinct_and_typed() {
    let d = dispatcher(2, 8);
    d.register("fail", |x: u64| async move { Err(format!("no {x}")) })
        .unwrap();
    assert_eq!(
        d.try_dispatch("fail", 7).unwrap().await,
        Err(HandlerError::Failed("no 7".into()))
    );
    match d.try_dispatch("missing", 5) {
        Err(DispatchError::UnknownHandler { name, request }) => {
            assert_eq!((name.as_str(), request), ("missing", 5));
        }
        other => panic!("{other:?}"),
    }
    match d.dispatch("", 6).await {
        Err(e @ DispatchError::UnknownHandler { .. }) => {
            assert_eq!(e.reason(), None);
            assert_eq!(e.into_inner(), 6);
        }
        other => panic!("{other:?}"),
    }
    let stats = d.stats();
    assert_eq!(stats.unknown, 2);
    assert_eq!(stats.handlers["fail"].errors, 1);
}

#[tokio::test]
async fn registration_errors_are_clear() {
    let d = dispatcher(1, 1);
    assert_eq!(
        d.register("", |x| async move { Ok(x) }),
        Err(RegisterError::EmptyName)
    );
    d.register("x", |x| async move { Ok(x) }).unwrap();
    let dup = d.register("x", |x| async move { Ok(x + 1) }).unwrap_err();
    assert_eq!(
        dup.to_string(),
        "a handler is already registered under \"x\"; use replace to swap it"
    );
    assert_eq!(
        d.try_dispatch("x", 1).unwrap().await,
        Ok(1),
        "the first handler stays"
    );
    assert!(d.replace("x", |x| async move { Ok(x + 1) }).unwrap());
    assert_eq!(d.try_dispatch("x", 1).unwrap().await, Ok(2));
    assert!(!d.replace("y", |x| async move { Ok(x) }).unwrap());
    assert!(d.unregister("y"));
    assert!(!d.has_handler("y"));
    d.shutdown(Duration::from_secs(1)).await;
    assert_eq!(
        d.register("z", |x| async move { Ok(x) }),
        Err(RegisterError::Closed)
    );
}

#[test]
fn bad_configuration_is_a_clear_error() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let _enter = rt.enter();
    let err = Dispatcher::builder()
        .workers(0)
        .build::<u8, u8, u8>()
        .unwrap_err();
    assert_eq!(err.to_string(), "workers must be at least 1, got 0");
    let err = Dispatcher::builder()
        .queue_capacity(0)
        .build::<u8, u8, u8>()
        .unwrap_err();
    assert_eq!(err.field(), "queue_capacity");
    let err = Dispatcher::builder()
        .global_bound(0)
        .build::<u8, u8, u8>()
        .unwrap_err();
    assert_eq!(err.field(), "global_bound");
    drop(_enter);
    let err = Dispatcher::builder().build::<u8, u8, u8>().unwrap_err();
    assert_eq!(err.field(), "runtime");
}

#[tokio::test]
async fn try_dispatch_rejects_at_once_when_the_queue_is_full() {
    let d = dispatcher(1, 2);
    let gate = Arc::new(Semaphore::new(0));
    gated(&d, "g", &gate);
    let first = d.try_dispatch("g", 0).unwrap();
    tokio::task::yield_now().await; // the worker takes it and blocks
    let queued: Vec<_> = (1..3).map(|x| d.try_dispatch("g", x).unwrap()).collect();
    let err = d.try_dispatch("g", 99).unwrap_err();
    assert_eq!(err.reason(), Some(Rejection::QueueFull { capacity: 2 }));
    assert_eq!(err.into_inner(), 99);
    assert_eq!(d.stats().rejected, 1);
    // `dispatch` waits for room instead.
    let waiting = tokio::spawn({
        let d = d.clone();
        async move { d.dispatch("g", 3).await.unwrap().await }
    });
    gate.add_permits(4);
    assert_eq!(first.await, Ok(0));
    for (x, r) in queued.into_iter().enumerate() {
        assert_eq!(r.await, Ok(x as u64 + 1));
    }
    assert_eq!(waiting.await.unwrap(), Ok(3));
}

#[tokio::test]
async fn the_global_bound_rejects_across_workers() {
    let d: D = Dispatcher::builder()
        .workers(4)
        .queue_capacity(8)
        .global_bound(3)
        .build()
        .unwrap();
    let gate = Arc::new(Semaphore::new(0));
    gated(&d, "g", &gate);
    let held: Vec<_> = (0..3).map(|x| d.try_dispatch("g", x).unwrap()).collect();
    let err = d.try_dispatch_keyed("g", "k", 9).unwrap_err();
    assert_eq!(err.reason(), Some(Rejection::AtCapacity { limit: 3 }));
    assert_eq!(d.stats().in_flight, 3);
    gate.add_permits(3);
    for r in held {
        r.await.unwrap();
    }
    // Finished messages give their room back.
    gate.add_permits(1);
    assert_eq!(d.try_dispatch_keyed("g", "k", 9).unwrap().await, Ok(9));
    assert_eq!(d.stats().in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn shutdown_drains_the_queues_within_the_grace_period() {
    let d = dispatcher(2, 16);
    d.register("slow", |x| async move {
        tokio::time::sleep(Duration::from_millis(10)).await;
        Ok(x)
    })
    .unwrap();
    let replies: Vec<_> = (0..10)
        .map(|x| d.try_dispatch("slow", x).unwrap())
        .collect();
    let report = d.shutdown(Duration::from_secs(1)).await;
    assert!(report.clean);
    assert_eq!(report.completed, 10);
    assert_eq!(report.abandoned, 0);
    for (x, r) in replies.into_iter().enumerate() {
        assert_eq!(r.await, Ok(x as u64));
    }
    match d.try_dispatch("slow", 1) {
        Err(e @ DispatchError::Closed { .. }) => {
            assert_eq!(e.reason(), Some(Rejection::ShuttingDown));
            assert_eq!(e.into_inner(), 1);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        d.dispatch("slow", 2).await,
        Err(DispatchError::Closed { request: 2 })
    ));
    assert!(d.stats().closed);
    // A second call returns the same report.
    assert_eq!(d.shutdown(Duration::ZERO).await, report);
}

#[tokio::test(start_paused = true)]
async fn shutdown_reports_abandoned_messages_after_the_grace_period() {
    let d = dispatcher(2, 16);
    let gate = Arc::new(Semaphore::new(0));
    gated(&d, "stuck", &gate);
    d.register("quick", |x| async move { Ok(x) }).unwrap();
    let quick = d.try_dispatch_keyed("quick", &1_u8, 5).unwrap();
    let stuck: Vec<_> = (0..6)
        .map(|x| d.try_dispatch("stuck", x).unwrap())
        .collect();
    let report = d.shutdown(Duration::from_millis(50)).await;
    assert!(!report.clean);
    assert_eq!(report.abandoned, 6, "2 running + 4 queued");
    assert_eq!(report.completed, 1);
    assert_eq!(quick.await, Ok(5));
    for r in stuck {
        assert_eq!(r.await, Err(HandlerError::Abandoned));
    }
    assert_eq!(d.stats().abandoned, 6);
    assert_eq!(d.stats().in_flight, 0);
}

#[tokio::test]
async fn a_coordinated_shutdown_closes_the_dispatcher() {
    let shutdown = Shutdown::new();
    let d = dispatcher(2, 4);
    d.register("x", |x| async move { Ok(x) }).unwrap();
    d.register_with(&shutdown, "dispatcher", Duration::from_secs(1))
        .unwrap();
    let reply = d.try_dispatch("x", 3).unwrap();
    shutdown.trigger();
    assert!(matches!(
        d.try_dispatch("x", 4),
        Err(DispatchError::Closed { .. })
    ));
    let report = shutdown.wait().await;
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(reply.await, Ok(3));
}

#[tokio::test]
async fn stats_are_serialisable_and_count_per_worker_and_handler() {
    let d = dispatcher(3, 8);
    d.register("ok", |x| async move { Ok(x) }).unwrap();
    for x in 0..9 {
        d.try_dispatch("ok", x).unwrap().await.unwrap();
    }
    let stats = d.stats();
    assert_eq!(stats.workers.len(), 3);
    assert_eq!(stats.workers.iter().map(|w| w.processed).sum::<u64>(), 9);
    assert_eq!(stats.handlers["ok"].calls, 9);
    assert_eq!(stats.handlers["ok"].errors, 0);
    let json = serde_json::to_value(&stats).unwrap();
    assert_eq!(json["handlers"]["ok"]["calls"], 9);
    assert_eq!(json["workers"][0]["queued"], 0);
}

#[tokio::test(start_paused = true)]
async fn a_dispatch_waiting_for_room_gets_its_request_back_on_shutdown() {
    let d: D = Dispatcher::builder()
        .workers(2)
        .queue_capacity(4)
        .global_bound(1)
        .build()
        .unwrap();
    let gate = Arc::new(Semaphore::new(0));
    gated(&d, "g", &gate);
    let held = d.try_dispatch("g", 1).unwrap();
    let waiting = tokio::spawn({
        let d = d.clone();
        async move { d.dispatch("g", 2).await.map(drop) }
    });
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished(), "waits for room in the global bound");
    let report = d.shutdown(Duration::from_millis(10)).await;
    assert_eq!(report.abandoned, 1);
    assert_eq!(held.await, Err(HandlerError::Abandoned));
    match waiting.await.unwrap() {
        Err(DispatchError::Closed { request }) => assert_eq!(request, 2),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn dropping_the_dispatcher_still_runs_what_was_accepted() {
    let d = dispatcher(2, 8);
    d.register("x", |x| async move { Ok(x + 1) }).unwrap();
    let replies: Vec<_> = (0..6).map(|x| d.try_dispatch("x", x).unwrap()).collect();
    drop(d);
    for (x, r) in replies.into_iter().enumerate() {
        assert_eq!(r.await, Ok(x as u64 + 1));
    }
}

/// A `dispatch` given up while it waits for room (a caller's time-out) gives back
/// its place in the global bound and its worker's load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_dispatch_leaves_nothing_counted() {
    let d: D = Dispatcher::builder()
        .workers(1)
        .queue_capacity(1)
        .global_bound(10)
        .build()
        .unwrap();
    let gate = Arc::new(Semaphore::new(0));
    gated(&d, "g", &gate);
    let first = d.try_dispatch("g", 1).unwrap();
    // The worker takes it and blocks.
    yield_until("the worker takes the first request", || {
        d.stats().workers[0].queued == 0
    })
    .await;
    let second = d.try_dispatch("g", 2).unwrap(); // fills the queue
    for _ in 0..3 {
        let gave_up = tokio::time::timeout(Duration::from_millis(5), d.dispatch("g", 3)).await;
        assert!(gave_up.is_err(), "no room: the dispatch waits");
    }
    gate.add_permits(2);
    assert_eq!(first.await, Ok(1));
    assert_eq!(second.await, Ok(2));
    assert_eq!(d.stats().in_flight, 0, "{:?}", d.stats());
    let report = d.shutdown(Duration::from_secs(1)).await;
    assert!(report.clean, "{report:?}");
}

/// A `dispatch` waiting for room in the global bound when shutdown begins is
/// refused with its request when room appears during the drain: the tokio
/// semaphore is FIFO, so the freed permit would go to it before the drain.
#[tokio::test(start_paused = true)]
async fn a_dispatch_blocked_before_shutdown_is_not_admitted_while_draining() {
    let d: D = dispatcher(1, 1); // global bound 2: one running, one queued
    let gate = Arc::new(Semaphore::new(0));
    gated(&d, "g", &gate);
    let first = d.try_dispatch("g", 1).unwrap();
    yield_until("the worker takes the first request", || {
        d.stats().workers[0].queued == 0
    })
    .await;
    let second = d.try_dispatch("g", 2).unwrap();
    let blocked = tokio::spawn({
        let d = d.clone();
        async move { d.dispatch("g", 3).await.map(drop) }
    });
    for _ in 0..3 {
        tokio::task::yield_now().await;
    }
    assert!(!blocked.is_finished(), "waits for room");
    let shutdown = tokio::spawn({
        let d = d.clone();
        async move { d.shutdown(Duration::from_secs(10)).await }
    });
    for _ in 0..3 {
        tokio::task::yield_now().await;
    }
    gate.add_permits(10);
    match tokio::time::timeout(Duration::from_secs(60), blocked)
        .await
        .expect("the blocked dispatch never woke")
        .unwrap()
    {
        Err(DispatchError::Closed { request }) => assert_eq!(request, 3),
        other => panic!("admitted while draining: {other:?}"),
    }
    assert_eq!((first.await, second.await), (Ok(1), Ok(2)));
    let report = shutdown.await.unwrap();
    assert!(report.clean, "{report:?}");
    assert_eq!(report.completed, 2, "{report:?}");
}

/// The same through a registered coordinator: triggering it refuses a dispatch
/// that was waiting for a worker's queue when it wakes.
#[tokio::test(start_paused = true)]
async fn a_dispatch_blocked_before_the_trigger_is_refused_when_it_wakes() {
    let d: D = Dispatcher::builder()
        .workers(1)
        .queue_capacity(1)
        .global_bound(10)
        .build()
        .unwrap();
    let shutdown = Shutdown::new();
    d.register_with(&shutdown, "dispatcher", Duration::from_secs(10))
        .unwrap();
    let gate = Arc::new(Semaphore::new(0));
    gated(&d, "g", &gate);
    let first = d.try_dispatch("g", 1).unwrap();
    yield_until("the worker takes the first request", || {
        d.stats().workers[0].queued == 0
    })
    .await;
    let second = d.try_dispatch("g", 2).unwrap();
    let blocked = tokio::spawn({
        let d = d.clone();
        async move { d.dispatch("g", 3).await.map(drop) }
    });
    for _ in 0..3 {
        tokio::task::yield_now().await;
    }
    assert!(!blocked.is_finished(), "waits for the worker's queue");
    shutdown.trigger();
    gate.add_permits(10);
    match tokio::time::timeout(Duration::from_secs(60), blocked)
        .await
        .expect("the blocked dispatch never woke")
        .unwrap()
    {
        Err(DispatchError::Closed { request }) => assert_eq!(request, 3),
        other => panic!("admitted after the trigger: {other:?}"),
    }
    assert_eq!((first.await, second.await), (Ok(1), Ok(2)));
    assert!(shutdown.wait().await.is_clean());
}

/// `shutdown` dropped before it finishes (a caller's time-out) does not break the
/// next call: that one waits for the same outcome, clean here, whatever poll the
/// first was dropped at.
#[test]
fn a_cancelled_shutdown_is_finished_by_the_next_call() {
    use heijunka_core::cancel::{Polled, cancel_points};
    cancel_points(16, |k| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let _g = rt.enter();
        let d = dispatcher(2, 4);
        d.register("x", |x| async move { Ok(x) }).unwrap();
        let replies: Vec<_> = (0..4).map(|x| d.try_dispatch("x", x).unwrap()).collect();
        // Between polls the workers run (they drain the queues and end).
        let outcome = Polled::new(d.shutdown(Duration::from_secs(5)))
            .drop_after_with(k, |_| rt.block_on(tokio::task::yield_now()));
        let report = rt.block_on(d.shutdown(Duration::from_secs(5)));
        assert!(report.clean, "k = {k}: {report:?}");
        assert_eq!(report.abandoned, 0, "k = {k}");
        for (x, r) in replies.into_iter().enumerate() {
            assert_eq!(rt.block_on(r), Ok(x as u64), "k = {k}");
        }
        assert_eq!(d.stats().in_flight, 0);
        outcome
    });
}

/// Errors name the fields the user set: too many workers (a documented maximum),
/// a default global bound that overflows is blamed on `workers` and
/// `queue_capacity`, and building outside a runtime names the `runtime` setting,
/// which exists.
#[test]
fn configuration_errors_name_what_the_user_set() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let enter = rt.enter();
    let err = Dispatcher::builder()
        .workers(4097)
        .build::<u8, u8, u8>()
        .unwrap_err();
    assert_eq!(err.to_string(), "workers must be at most 4096, got 4097");
    let err = Dispatcher::builder()
        .workers(4096)
        .queue_capacity(2_000_000)
        .build::<u8, u8, u8>()
        .unwrap_err();
    assert_eq!(err.field(), "queue_capacity", "{err}");
    assert!(err.to_string().contains("workers"), "{err}");
    assert!(err.to_string().contains("global_bound"), "{err}");
    drop(enter);
    let err = Dispatcher::builder().build::<u8, u8, u8>().unwrap_err();
    assert_eq!(err.field(), "runtime");
    // The setting it names exists: a handle makes building outside work.
    let d = Dispatcher::builder()
        .runtime(rt.handle().clone())
        .build::<u8, u8, u8>()
        .unwrap();
    d.register("x", |x| async move { Ok(x) }).unwrap();
    assert_eq!(rt.block_on(d.try_dispatch("x", 3).unwrap()), Ok(3));
    assert!(rt.block_on(d.shutdown(Duration::from_secs(1))).clean);
}

/// `dispatch` (and `dispatch_keyed`) dropped after k polls while waiting for room:
/// the request is dropped with it, undelivered (as documented), and nothing stays
/// counted (global bound, worker load); or, once it got in, the message runs.
#[test]
fn a_cancelled_dispatch_drops_its_request_and_keeps_nothing() {
    use heijunka_core::cancel::{Outcome, Polled, cancel_points};
    use std::sync::atomic::{AtomicUsize, Ordering};
    #[derive(Debug)]
    struct Req(u64, Arc<AtomicUsize>);
    impl Drop for Req {
        fn drop(&mut self) {
            self.1.fetch_add(1, Ordering::SeqCst);
        }
    }
    for keyed in [false, true] {
        cancel_points(16, |k| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            let _g = rt.enter();
            let d: Dispatcher<Req, u64, String> = Dispatcher::builder()
                .workers(1)
                .queue_capacity(1)
                .global_bound(2)
                .build()
                .unwrap();
            let gate = Arc::new(Semaphore::new(0));
            {
                let gate = Arc::clone(&gate);
                d.register("g", move |r: Req| {
                    let gate = Arc::clone(&gate);
                    async move {
                        gate.acquire().await.unwrap().forget();
                        Ok(r.0)
                    }
                })
                .unwrap();
            }
            let drops = Arc::new(AtomicUsize::new(0));
            let first = d.try_dispatch("g", Req(1, drops.clone())).unwrap();
            rt.block_on(async {
                yield_until("the worker takes the first request", || {
                    d.stats().workers[0].queued == 0
                })
                .await;
            });
            let second = d.try_dispatch("g", Req(2, drops.clone())).unwrap();
            let req = Req(3, drops.clone());
            type Fut<'a> = std::pin::Pin<
                Box<
                    dyn std::future::Future<
                            Output = Result<heijunka_pool::Reply<u64, String>, DispatchError<Req>>,
                        > + 'a,
                >,
            >;
            let fut: Fut<'_> = if keyed {
                Box::pin(d.dispatch_keyed("g", &7_u8, req))
            } else {
                Box::pin(d.dispatch("g", req))
            };
            let outcome = Polled::new(fut).drop_after_with(k, |i| {
                // Room appears before the third poll.
                if i == 2 {
                    gate.add_permits(1);
                    for _ in 0..4 {
                        rt.block_on(tokio::task::yield_now());
                    }
                }
            });
            gate.add_permits(8);
            let delivered = matches!(&outcome, Outcome::Completed { output: Ok(_), .. });
            rt.block_on(async {
                assert_eq!(first.await, Ok(1), "k = {k}");
                assert_eq!(second.await, Ok(2), "k = {k}");
            });
            let outcome = match outcome {
                Outcome::Completed { output, polls } => {
                    let reply = output.unwrap();
                    assert_eq!(rt.block_on(reply), Ok(3), "k = {k}");
                    Outcome::Completed { output: (), polls }
                }
                Outcome::Cancelled { polls } => {
                    assert!(!delivered);
                    Outcome::Cancelled { polls }
                }
            };
            // Every request was dropped exactly once: delivered ones by the
            // handler, the cancelled one with its future.
            assert_eq!(drops.load(Ordering::SeqCst), 3, "k = {k}");
            assert_eq!(d.stats().in_flight, 0, "k = {k}: nothing counted");
            let report = rt.block_on(d.shutdown(Duration::from_secs(1)));
            assert!(report.clean, "k = {k}: {report:?}");
            outcome
        });
    }
}

/// Yields (bounded) until `done()` says so: a regression fails here, naming
/// `what`, instead of hanging (an iteration bound, not a timer: under paused time
/// a yielding task keeps the clock from advancing).
async fn yield_until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..100_000 {
        if done() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("never happened: {what}");
}
