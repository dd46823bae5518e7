//! Task groups: concurrency bound, error aggregation, fail-fast, ordering, panics.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use heijunka_pool::{Group, PanicPolicy, TaskFailure, ThreadGroup};

/// Tracks how many tasks run at once and the most ever seen.
#[derive(Default)]
struct Gauge {
    now: AtomicUsize,
    max: AtomicUsize,
}

impl Gauge {
    fn enter(&self) {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
    }
    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_concurrency_is_never_exceeded() {
    let gauge = Arc::new(Gauge::default());
    let mut group = Group::builder().max_concurrency(3).build().unwrap();
    for _ in 0..300 {
        let gauge = Arc::clone(&gauge);
        group
            .spawn(move |_| async move {
                gauge.enter();
                for _ in 0..3 {
                    tokio::task::yield_now().await;
                }
                gauge.leave();
                Ok::<_, ()>(())
            })
            .await;
        assert!(group.running() <= 3);
    }
    group.wait().await.unwrap();
    assert_eq!(
        gauge.max.load(Ordering::SeqCst),
        3,
        "the bound is reached, never passed"
    );
    assert_eq!(gauge.now.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn every_error_is_reported_with_its_index() {
    let mut group = Group::builder().max_concurrency(4).build().unwrap();
    for i in 0..50_u32 {
        group
            .spawn(move |_| async move {
                if i % 7 == 3 {
                    Err(format!("bad {i}"))
                } else {
                    Ok(i)
                }
            })
            .await;
    }
    let errors = group.wait().await.unwrap_err();
    let expected: Vec<u32> = (0..50).filter(|i| i % 7 == 3).collect();
    assert_eq!(errors.len(), expected.len());
    assert_eq!(errors.tasks(), 50);
    let indexes: Vec<usize> = errors.iter().map(|(i, _)| i).collect();
    assert_eq!(
        indexes,
        expected.iter().map(|&i| i as usize).collect::<Vec<_>>()
    );
    let text = errors.to_string();
    assert!(text.starts_with(&format!("{} of 50 tasks failed: ", expected.len())));
    for i in &expected {
        assert!(
            text.contains(&format!("task {i} failed: bad {i}")),
            "{text}"
        );
    }
    let owned: Vec<String> = errors.errors().cloned().collect();
    assert_eq!(
        owned,
        expected
            .iter()
            .map(|i| format!("bad {i}"))
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn fail_fast_cancels_the_rest_and_tasks_observe_the_token() {
    let observed = Arc::new(AtomicUsize::new(0));
    let ran_after = Arc::new(AtomicUsize::new(0));
    let mut group = Group::builder()
        .max_concurrency(4)
        .fail_fast(true)
        .build()
        .unwrap();
    for _ in 0..3 {
        let observed = Arc::clone(&observed);
        group
            .spawn(move |token| async move {
                token.cancelled().await;
                observed.fetch_add(1, Ordering::SeqCst);
                Ok::<(), &str>(())
            })
            .await;
    }
    group.spawn(|_| async { Err("first failure") }).await;
    for _ in 0..6 {
        let ran_after = Arc::clone(&ran_after);
        group
            .spawn(move |_| {
                ran_after.fetch_add(1, Ordering::SeqCst);
                async { Ok(()) }
            })
            .await;
    }
    assert!(group.is_cancelled());
    let errors = group.wait().await.unwrap_err();
    assert_eq!(
        observed.load(Ordering::SeqCst),
        3,
        "every running task saw the token"
    );
    assert_eq!(
        ran_after.load(Ordering::SeqCst),
        0,
        "no task ran after the failure"
    );
    let failures: Vec<_> = errors.into_iter().collect();
    assert_eq!(failures[0], (3, TaskFailure::Error("first failure")));
    assert_eq!(failures.len(), 7);
    assert!(failures[1..].iter().all(|(_, f)| f.is_cancelled()));
}

#[tokio::test]
async fn without_fail_fast_every_task_runs() {
    let ran = Arc::new(AtomicUsize::new(0));
    let mut group = Group::builder().max_concurrency(2).build().unwrap();
    for i in 0..10 {
        let ran = Arc::clone(&ran);
        group
            .spawn(move |token| async move {
                ran.fetch_add(1, Ordering::SeqCst);
                assert!(!token.is_cancelled());
                if i == 0 { Err(i) } else { Ok(i) }
            })
            .await;
    }
    assert_eq!(group.wait().await.unwrap_err().len(), 1);
    assert_eq!(ran.load(Ordering::SeqCst), 10);
}

#[tokio::test(start_paused = true)]
async fn ordered_results_come_back_in_spawn_order() {
    let mut group = Group::builder().max_concurrency(8).build().unwrap();
    for i in 0..20_u64 {
        group
            .spawn(move |_| async move {
                // Later tasks finish first.
                tokio::time::sleep(Duration::from_millis(100 - i)).await;
                Ok::<_, ()>(i * 10)
            })
            .await;
    }
    let values = group.wait_ordered().await.unwrap();
    assert_eq!(values, (0..20).map(|i| i * 10).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn next_streams_results_as_they_complete() {
    let mut group = Group::builder().max_concurrency(4).build().unwrap();
    for (i, ms) in [30_u64, 10, 40, 20].into_iter().enumerate() {
        group
            .spawn(move |_| async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok::<_, ()>(i)
            })
            .await;
    }
    let mut order = Vec::new();
    while let Some((index, result)) = group.next().await {
        assert_eq!(result, Ok(index));
        order.push(index);
    }
    assert_eq!(order, [1, 3, 0, 2]);
}

#[tokio::test]
async fn a_panic_is_reported_with_its_message_and_others_complete() {
    let done = Arc::new(AtomicUsize::new(0));
    let mut group = Group::builder().max_concurrency(2).build().unwrap();
    for i in 0..6 {
        let done = Arc::clone(&done);
        group
            .spawn(move |_| async move {
                tokio::task::yield_now().await;
                if i == 2 {
                    panic!("boom in task {i}");
                }
                done.fetch_add(1, Ordering::SeqCst);
                Ok::<_, String>(i)
            })
            .await;
    }
    let errors = group.wait_ordered().await.unwrap_err();
    let failures: Vec<_> = errors.into_iter().collect();
    assert_eq!(
        failures,
        [(
            2,
            TaskFailure::Panicked {
                message: "boom in task 2".into()
            }
        )]
    );
    assert_eq!(done.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn resume_re_raises_the_panic_in_the_waiter_and_aborts_the_rest() {
    struct Flag(Arc<AtomicBool>);
    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let dropped = Arc::new(AtomicBool::new(false));
    let waiter = {
        let dropped = Arc::clone(&dropped);
        tokio::spawn(async move {
            let mut group = Group::builder()
                .max_concurrency(2)
                .panic_policy(PanicPolicy::Resume)
                .build()
                .unwrap();
            group
                .spawn(move |_| async move {
                    let _flag = Flag(dropped);
                    std::future::pending::<()>().await;
                    Ok::<_, ()>(())
                })
                .await;
            group.spawn(|_| async { panic!("resumed boom") }).await;
            group.wait().await
        })
    };
    let err = waiter.await.unwrap_err();
    assert!(err.is_panic());
    let payload = err.into_panic();
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"resumed boom"));
    // The pending task was aborted with the group: nothing left running unobserved.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(dropped.load(Ordering::SeqCst));
}

#[tokio::test]
async fn cancel_stops_later_spawns_without_running_them() {
    let mut group = Group::builder().max_concurrency(2).build().unwrap();
    group.spawn(|_| async { Ok::<_, ()>(1) }).await;
    group.cancel();
    let index = group
        .spawn(|_| -> std::future::Ready<Result<i32, ()>> { panic!("must not be called") })
        .await;
    assert_eq!(index, 1);
    assert_eq!(group.spawned(), 2);
    let failures: Vec<_> = group.wait().await.unwrap_err().into_iter().collect();
    assert_eq!(failures, [(1, TaskFailure::Cancelled)]);
}

#[test]
fn zero_concurrency_is_a_clear_error() {
    let err = Group::builder()
        .max_concurrency(0)
        .build::<(), ()>()
        .unwrap_err();
    assert_eq!(err.to_string(), "max_concurrency must be at least 1, got 0");
    let err = ThreadGroup::new(0).unwrap_err();
    assert_eq!(err.field(), "max_concurrency");
}

#[test]
fn thread_group_borrows_bounds_and_orders() {
    let gauge = Gauge::default();
    let inputs: Vec<u64> = (0..40).collect();
    let threads = ThreadGroup::new(3).unwrap();
    let squares = threads
        .scope(|s| {
            for x in &inputs {
                let gauge = &gauge;
                s.spawn(move |_| {
                    gauge.enter();
                    for _ in 0..50 {
                        std::thread::yield_now();
                    }
                    gauge.leave();
                    Ok::<_, ()>(x * x)
                });
            }
        })
        .unwrap();
    assert_eq!(squares, inputs.iter().map(|x| x * x).collect::<Vec<_>>());
    assert!(gauge.max.load(Ordering::SeqCst) <= 3);
    assert!(gauge.max.load(Ordering::SeqCst) >= 1);
}

#[test]
fn thread_group_reports_every_error_and_panic() {
    let threads = ThreadGroup::new(4).unwrap();
    let errors = threads
        .scope(|s| {
            for i in 0..12_u32 {
                s.spawn(move |_| match i {
                    3 | 9 => Err(format!("bad {i}")),
                    6 => panic!("thread boom"),
                    _ => Ok(i),
                });
            }
        })
        .unwrap_err();
    let failures: Vec<_> = errors.into_iter().collect();
    assert_eq!(
        failures,
        [
            (3, TaskFailure::Error("bad 3".to_string())),
            (
                6,
                TaskFailure::Panicked {
                    message: "thread boom".into()
                }
            ),
            (9, TaskFailure::Error("bad 9".to_string())),
        ]
    );
}

#[test]
fn thread_group_fail_fast_cancels_the_rest() {
    let threads = Group::builder()
        .max_concurrency(1)
        .fail_fast(true)
        .build_threads()
        .unwrap();
    let ran = AtomicUsize::new(0);
    let errors = threads
        .scope(|s| {
            s.spawn(|_| Err("first"));
            for _ in 0..5 {
                s.spawn(|_| {
                    ran.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                });
            }
        })
        .unwrap_err();
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    assert_eq!(errors.len(), 6);
    assert_eq!(errors.first(), Some(&TaskFailure::Error("first")));
}

#[test]
fn thread_group_resume_re_raises_after_joining() {
    let threads = Group::builder()
        .max_concurrency(2)
        .panic_policy(PanicPolicy::Resume)
        .build_threads()
        .unwrap();
    let finished = AtomicUsize::new(0);
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        threads.scope(|s| {
            s.spawn(|_| -> Result<(), ()> { panic!("thread resumed") });
            s.spawn(|_| {
                finished.fetch_add(1, Ordering::SeqCst);
                Ok(())
            });
        })
    }))
    .unwrap_err();
    assert_eq!(caught.downcast_ref::<&str>(), Some(&"thread resumed"));
    assert_eq!(
        finished.load(Ordering::SeqCst),
        1,
        "the other thread was joined"
    );
}

#[test]
fn tasks_cancelled_by_their_runtime_are_reported_by_index() {
    let first = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut group = first.block_on(async {
        let mut group = Group::builder().max_concurrency(4).build().unwrap();
        group.spawn(|_| async { Ok::<_, ()>(0) }).await;
        group
            .spawn(|_| async { std::future::pending::<Result<i32, ()>>().await })
            .await;
        group.spawn(|_| async { Ok(2) }).await;
        group
            .spawn(|_| async { std::future::pending::<Result<i32, ()>>().await })
            .await;
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        group
    });
    // The runtime goes away with two tasks pending.
    drop(first);
    let second = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut results = second.block_on(async {
        let mut results = Vec::new();
        while let Some(r) = group.next().await {
            results.push(r);
        }
        results
    });
    results.sort_by_key(|(i, _)| *i);
    assert_eq!(
        results,
        [
            (0, Ok(0)),
            (1, Err(TaskFailure::Cancelled)),
            (2, Ok(2)),
            (3, Err(TaskFailure::Cancelled)),
        ]
    );
}

/// A `spawn` given up while it waits for a slot (a caller's time-out) leaves
/// nothing behind: the ordered results are those of the tasks that were spawned.
#[tokio::test(start_paused = true)]
async fn a_cancelled_spawn_leaves_no_task_behind() {
    let mut group = Group::builder().max_concurrency(1).build().unwrap();
    let first = group
        .spawn(|_| async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok::<_, ()>(1)
        })
        .await;
    assert_eq!(first, 0);
    let gave_up = tokio::time::timeout(
        Duration::from_millis(10),
        group.spawn(|_| async { Ok::<_, ()>(2) }),
    )
    .await;
    assert!(gave_up.is_err(), "the only slot is busy");
    let third = group.spawn(|_| async { Ok::<_, ()>(3) }).await;
    assert_eq!(third, 1, "the given-up spawn took no index");
    assert_eq!(group.wait_ordered().await.unwrap(), vec![1, 3]);
}

/// Results stream while spawning: `try_next` between spawns takes what has
/// finished, so a caller never holds more than `max_concurrency` finished outputs
/// (observed: how many each drain returns), and every task's result comes back
/// exactly once, with `next` returning the rest and then `None`.
#[tokio::test(start_paused = true)]
async fn results_stream_while_spawning_with_a_bounded_backlog() {
    const K: usize = 3;
    const N: usize = 200;
    let mut group = Group::builder().max_concurrency(K).build().unwrap();
    let mut seen = vec![0_u32; N];
    let mut most_held = 0;
    for i in 0..N {
        let index = group
            .spawn(move |_| async move {
                tokio::time::sleep(Duration::from_millis((i % 5) as u64)).await;
                if i % 17 == 0 { Err(i) } else { Ok(i) }
            })
            .await;
        assert_eq!(index, i);
        let mut held = 0;
        while let Some((index, result)) = group.try_next() {
            held += 1;
            let expected = if index % 17 == 0 {
                Err(TaskFailure::Error(index))
            } else {
                Ok(index)
            };
            assert_eq!(result, expected);
            seen[index] += 1;
        }
        most_held = most_held.max(held);
    }
    assert!(
        most_held <= K,
        "{most_held} finished outputs held at once, more than {K}"
    );
    while let Some((index, _)) = group.next().await {
        seen[index] += 1;
    }
    assert!(group.try_next().is_none());
    assert!(seen.iter().all(|&n| n == 1), "{seen:?}");
}

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

/// Separates a driven future's output from the outcome `cancel_points` wants.
fn split<T>(
    outcome: heijunka_core::cancel::Outcome<T>,
) -> (heijunka_core::cancel::Outcome<()>, Option<T>) {
    use heijunka_core::cancel::Outcome;
    match outcome {
        Outcome::Completed { output, polls } => {
            (Outcome::Completed { output: (), polls }, Some(output))
        }
        Outcome::Cancelled { polls } => (Outcome::Cancelled { polls }, None),
    }
}

/// Lets the runtime run its ready tasks.
fn settle(rt: &tokio::runtime::Runtime) {
    for _ in 0..8 {
        rt.block_on(tokio::task::yield_now());
    }
}

/// `next` dropped at any poll loses no result: a finished output it did not
/// return is returned by a later `next`; every task's result comes back once.
#[test]
fn a_cancelled_next_loses_no_result() {
    use heijunka_core::cancel::{Polled, cancel_points};
    cancel_points(16, |k| {
        let rt = paused_runtime();
        let _g = rt.enter();
        let mut group = Group::builder().max_concurrency(2).build().unwrap();
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let g = Arc::clone(&gate);
        rt.block_on(group.spawn(move |_| async move {
            g.acquire().await.unwrap().forget();
            Ok::<_, ()>(7)
        }));
        // The task finishes between the first and second polls.
        let outcome = Polled::new(group.next()).drop_after_with(k, |i| {
            if i == 1 {
                gate.add_permits(1);
                settle(&rt);
            }
        });
        let (outcome, output) = split(outcome);
        let mut results: Vec<_> = output.flatten().into_iter().collect();
        gate.add_permits(1); // (one more than the task takes, if it had one)
        while let Some(r) = rt
            .block_on(tokio::time::timeout(Duration::from_secs(1), group.next()))
            .expect("the task has finished")
        {
            results.push(r);
        }
        assert_eq!(results, vec![(0, Ok(7))], "k = {k}");
        outcome
    });
}

/// `spawn` dropped while it waits for a slot spawns nothing (its task never
/// runs, observed from inside the task) and leaks no slot: the next spawn gets
/// the slot and the next index.
#[test]
fn a_cancelled_spawn_spawns_nothing_and_keeps_no_slot() {
    use heijunka_core::cancel::{Polled, cancel_points};
    cancel_points(16, |k| {
        let rt = paused_runtime();
        let _g = rt.enter();
        let mut group = Group::builder().max_concurrency(1).build().unwrap();
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let g = Arc::clone(&gate);
        rt.block_on(group.spawn(move |_| async move {
            g.acquire().await.unwrap().forget();
            Ok::<_, ()>(1)
        }));
        let ran = Arc::new(AtomicUsize::new(0));
        let r = Arc::clone(&ran);
        // The only slot frees before the third poll.
        let outcome = Polled::new(group.spawn(move |_| async move {
            r.fetch_add(1, Ordering::SeqCst);
            Ok(2)
        }))
        .drop_after_with(k, |i| {
            if i == 2 {
                gate.add_permits(1);
                settle(&rt);
            }
        });
        let (outcome, index) = split(outcome);
        gate.add_permits(1);
        let third = rt
            .block_on(tokio::time::timeout(
                Duration::from_secs(1),
                group.spawn(|_| async { Ok(3) }),
            ))
            .expect("a slot is free: the dropped spawn kept none");
        let values = rt.block_on(group.wait_ordered()).unwrap();
        match index {
            Some(index) => {
                assert_eq!((index, third), (1, 2), "k = {k}");
                assert_eq!(values, vec![1, 2, 3], "k = {k}");
                assert_eq!(ran.load(Ordering::SeqCst), 1, "k = {k}");
            }
            None => {
                assert_eq!(third, 1, "k = {k}: the dropped spawn took no index");
                assert_eq!(values, vec![1, 3], "k = {k}");
                assert_eq!(ran.load(Ordering::SeqCst), 0, "k = {k}: nothing spawned");
            }
        }
        outcome
    });
}

/// Counts how a task ended: finished, or dropped before finishing (aborted).
struct Ending {
    finished: Arc<AtomicUsize>,
    aborted: Arc<AtomicUsize>,
    done: bool,
}

impl Drop for Ending {
    fn drop(&mut self) {
        let counter = if self.done {
            &self.finished
        } else {
            &self.aborted
        };
        counter.fetch_add(1, Ordering::SeqCst);
    }
}

/// `wait` and `wait_ordered` take the group: dropped before they complete, the
/// group goes with them and every running task is aborted (observed from inside
/// the tasks: each one's guard is dropped unfinished), its result lost.
#[test]
fn a_cancelled_wait_aborts_every_running_task() {
    use heijunka_core::cancel::{Polled, cancel_points};
    for ordered in [false, true] {
        cancel_points(16, |k| {
            let rt = paused_runtime();
            let _g = rt.enter();
            let mut group = Group::builder().max_concurrency(4).build().unwrap();
            let gate = Arc::new(tokio::sync::Semaphore::new(0));
            let finished = Arc::new(AtomicUsize::new(0));
            let aborted = Arc::new(AtomicUsize::new(0));
            for i in 0..3_u32 {
                let (g, f, a) = (
                    Arc::clone(&gate),
                    Arc::clone(&finished),
                    Arc::clone(&aborted),
                );
                rt.block_on(group.spawn(move |_| async move {
                    let mut ending = Ending {
                        finished: f,
                        aborted: a,
                        done: false,
                    };
                    g.acquire().await.unwrap().forget();
                    ending.done = true;
                    Ok::<_, ()>(i)
                }));
            }
            settle(&rt);
            // The tasks may finish from the third poll on.
            let between = |i: usize| {
                if i == 2 {
                    gate.add_permits(3);
                    settle(&rt);
                }
            };
            let outcome = if ordered {
                split(Polled::new(group.wait_ordered()).drop_after_with(k, between)).0
            } else {
                split(Polled::new(group.wait()).drop_after_with(k, between)).0
            };
            settle(&rt);
            let (f, a) = (
                finished.load(Ordering::SeqCst),
                aborted.load(Ordering::SeqCst),
            );
            assert_eq!(
                f + a,
                3,
                "k = {k}, ordered {ordered}: a task outlived the group"
            );
            if k < 3 && !outcome.is_completed() {
                assert_eq!((f, a), (0, 3), "k = {k}, ordered {ordered}");
            }
            outcome
        });
    }
}

/// `GroupToken::cancelled` dropped at any poll changes nothing: a later call
/// completes once the group is cancelled.
#[test]
fn a_cancelled_token_wait_changes_nothing() {
    use heijunka_core::cancel::{Polled, cancel_points};
    cancel_points(8, |k| {
        let rt = paused_runtime();
        let _g = rt.enter();
        let group: Group<(), ()> = Group::builder().max_concurrency(1).build().unwrap();
        let token = group.token();
        let outcome = Polled::new(token.cancelled()).drop_after_with(k, |i| {
            if i == 1 {
                group.cancel();
            }
        });
        group.cancel();
        rt.block_on(tokio::time::timeout(
            Duration::from_secs(1),
            token.cancelled(),
        ))
        .expect("a later wait sees the cancellation");
        outcome
    });
}
