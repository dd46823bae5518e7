//! The `metrics` feature: each component emits the names and labels documented in
//! `docs/metrics.md` on the events that should emit them, counted here from the
//! outside (permits held, items queued, checks made), and its gauges return to 0
//! once the work drains, cancelled acquisitions and pushes included.
#![cfg(all(feature = "metrics", not(loom)))]

use std::cell::RefCell;
use std::time::Duration;

use heijunka_backpressure::{
    AcquireTimeoutError, AdaptiveLimit, Aimd, BoundedQueue, ConcurrencyLimit, Gcra,
    KeyedRateLimiter, LoadShedder, PollConcurrencyLimit, RateLimiter, from_fn,
};
use heijunka_core::cancel::{Outcome, Polled, cancel_points};
use heijunka_core::metrics::TestRecorder;
use heijunka_core::{ManualClock, Rejection};

type Keys = Vec<heijunka_core::metrics::MetricKey>;

use heijunka_core::metrics::metric_key as key;

fn sorted(mut keys: Keys) -> Keys {
    keys.sort();
    keys
}

fn limiter_keys(name: &str) -> Keys {
    sorted(vec![
        key("heijunka_limiter_in_flight", &[("name", name)]),
        key("heijunka_limiter_limit", &[("name", name)]),
        key("heijunka_limiter_rejected_total", &[("name", name)]),
    ])
}

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime")
}

struct Limiter<'a> {
    rec: &'a TestRecorder,
    name: &'a str,
}

impl Limiter<'_> {
    fn in_flight(&self) -> f64 {
        self.rec
            .gauge("heijunka_limiter_in_flight", &[("name", self.name)])
            .expect("registered")
    }
    fn limit(&self) -> f64 {
        self.rec
            .gauge("heijunka_limiter_limit", &[("name", self.name)])
            .expect("registered")
    }
    fn rejected(&self) -> u64 {
        self.rec
            .counter("heijunka_limiter_rejected_total", &[("name", self.name)])
            .expect("registered")
    }
}

#[test]
fn concurrency_limit_emits_in_flight_limit_and_rejections() {
    let rec = TestRecorder::new();
    let limit = rec.scoped(|| ConcurrencyLimit::named(4, "db")).unwrap();
    assert_eq!(rec.keys(), limiter_keys("db"));
    let m = Limiter {
        rec: &rec,
        name: "db",
    };
    assert_eq!((m.in_flight(), m.limit(), m.rejected()), (0.0, 4.0, 0));

    // Held permits, counted here: one borrowed, one owned, a weight of two.
    let a = limit.try_acquire().unwrap();
    let owned = limit.try_acquire_owned().unwrap();
    let two = limit.try_acquire_many(2).unwrap();
    assert_eq!(m.in_flight(), 4.0);
    // Refusals for want of a permit count; an impossible `n` does not.
    assert!(limit.try_acquire().is_err());
    assert!(limit.try_acquire_many_owned(2).is_err());
    assert!(limit.try_acquire_many(9).is_err());
    assert!(limit.try_acquire_many(0).is_err());
    assert_eq!(m.rejected(), 2);
    std::thread::spawn(move || drop(owned)).join().unwrap();
    assert_eq!(m.in_flight(), 3.0);

    limit.set_limit(6).unwrap();
    assert_eq!(m.limit(), 6.0);
    limit.add_permits(1).unwrap();
    assert_eq!(m.limit(), 7.0);
    limit.set_limit(2).unwrap();
    assert_eq!(m.limit(), 2.0);
    // Above the new limit for a while: the gauge shows the permits really held.
    assert_eq!(m.in_flight(), 3.0);
    drop(a);
    drop(two);
    assert_eq!(m.in_flight(), 0.0);
    assert_eq!(m.in_flight(), f64::from(limit.in_use()));

    let blocking = limit.acquire_many_blocking(2).unwrap();
    assert_eq!(m.in_flight(), 2.0);
    let err = limit
        .acquire_blocking_timeout(Duration::from_millis(1))
        .unwrap_err();
    assert!(matches!(err, AcquireTimeoutError::TimedOut { .. }));
    assert_eq!(m.rejected(), 3, "a timed-out acquisition is a rejection");
    drop(blocking);
    assert_eq!(m.in_flight(), 0.0);
}

#[test]
fn an_unnamed_limit_is_labelled_default() {
    let rec = TestRecorder::new();
    let limit = rec.scoped(|| ConcurrencyLimit::new(1)).unwrap();
    assert_eq!(rec.keys(), limiter_keys("default"));
    let _p = limit.try_acquire().unwrap();
    assert_eq!(
        rec.gauge("heijunka_limiter_in_flight", &[("name", "default")]),
        Some(1.0)
    );
}

#[test]
fn built_without_a_recorder_nothing_is_recorded_later() {
    let limit = ConcurrencyLimit::named(1, "early").unwrap();
    let rec = TestRecorder::new();
    rec.scoped(|| {
        let _p = limit.try_acquire().unwrap();
    });
    assert!(rec.keys().is_empty());
}

/// An acquisition that waits, polled k times and dropped, at every k: whether it
/// was granted meanwhile (the holder releases between polls) or not, the gauge
/// counts only the permits really held, and ends at 0.
#[test]
fn a_cancelled_acquire_leaves_in_flight_balanced() {
    let rec = TestRecorder::new();
    let limit = rec.scoped(|| ConcurrencyLimit::named(1, "c")).unwrap();
    let m = Limiter {
        rec: &rec,
        name: "c",
    };
    let points = cancel_points(6, |k| {
        let held = RefCell::new(Some(limit.try_acquire().unwrap()));
        let out = Polled::new(limit.acquire()).drop_after_with(k, |i| {
            assert_eq!(
                m.in_flight(),
                1.0,
                "the holder's permit, or the granted one"
            );
            if i == 1 {
                held.borrow_mut().take();
            }
        });
        drop(held);
        let out = out.map_output_drop();
        assert_eq!(m.in_flight(), 0.0, "after {k} polls: {out:?}");
        out
    });
    assert!(points >= 2);

    // Granted while waiting (tokio assigns the released permit to the waiter) and
    // dropped before the poll that would have taken it: it goes back, uncounted.
    let held = limit.try_acquire().unwrap();
    let mut waiting = Polled::new(limit.acquire());
    assert!(!waiting.poll());
    drop(held);
    assert_eq!(m.in_flight(), 0.0);
    drop(waiting);
    assert_eq!(m.in_flight(), 0.0);
    assert_eq!(limit.available_permits(), 1);

    // A waiting acquisition is not a rejection (nor is its poll form's first try).
    let held = limit.try_acquire().unwrap();
    let mut waiting = Polled::new(limit.acquire_many(1));
    assert!(!waiting.poll());
    let mut poll = PollConcurrencyLimit::new(limit.clone());
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(poll.poll_acquire(&mut cx).is_pending());
    assert_eq!(m.rejected(), 0);
    drop(held);
    assert!(waiting.poll(), "granted in FIFO order");
    let granted = waiting.take_output().unwrap().unwrap();
    assert_eq!(m.in_flight(), 1.0);
    drop(poll); // a wait dropped while pending
    drop(granted);
    assert_eq!(m.in_flight(), 0.0);
    assert_eq!(m.in_flight(), f64::from(limit.in_use()));
}

#[test]
fn a_timed_out_acquire_is_a_rejection_and_leaves_nothing_in_flight() {
    let rt = paused_runtime();
    let rec = TestRecorder::new();
    let limit = rec.scoped(|| ConcurrencyLimit::named(1, "t")).unwrap();
    let m = Limiter {
        rec: &rec,
        name: "t",
    };
    rt.block_on(async {
        let held = limit.try_acquire().unwrap();
        let err = limit
            .acquire_timeout(Duration::from_secs(1))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            AcquireTimeoutError::TimedOut {
                after: Duration::from_secs(1)
            }
        );
        assert_eq!((m.in_flight(), m.rejected()), (1.0, 1));
        drop(held);
        let p = limit.acquire_timeout(Duration::from_secs(1)).await.unwrap();
        assert_eq!(m.in_flight(), 1.0);
        drop(p);
    });
    assert_eq!(m.in_flight(), 0.0);
}

#[test]
fn adaptive_limit_emits_in_flight_and_the_limit_the_algorithm_sets() {
    let clock = ManualClock::new();
    let rec = TestRecorder::new();
    let limit = rec
        .scoped(|| {
            let aimd = Aimd::builder()
                .initial_limit(4)
                .min_limit(1)
                .backoff_ratio(0.5)
                .build()?;
            AdaptiveLimit::builder(aimd)
                .name("api")
                .clock(clock.clock())
                .build()
        })
        .unwrap();
    assert_eq!(rec.keys(), limiter_keys("api"));
    let m = Limiter {
        rec: &rec,
        name: "api",
    };
    assert_eq!((m.in_flight(), m.limit()), (0.0, 4.0));

    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(limit.try_acquire().unwrap());
    }
    assert_eq!(m.in_flight(), 4.0);
    assert!(limit.try_acquire().is_err());
    assert_eq!(m.rejected(), 1);

    // A drop halves the limit (4 -> 2); the gauge follows what the limit says.
    clock.advance(Duration::from_millis(10));
    held.pop().unwrap().dropped();
    assert_eq!(m.in_flight(), 3.0);
    assert_eq!(limit.limit(), 2);
    assert_eq!(m.limit(), 2.0);
    held.pop().unwrap().ignore();
    held.pop().unwrap().success();
    drop(held); // the last one released as ignore
    assert_eq!(m.in_flight(), 0.0);
    assert_eq!(m.limit(), limit.limit() as f64);
    // Successes grow it again.
    for _ in 0..3 {
        limit.try_acquire().unwrap().success();
        assert_eq!(m.limit(), limit.limit() as f64);
    }
    let owned = limit.try_acquire_owned().unwrap();
    std::thread::spawn(move || owned.success()).join().unwrap();
    assert_eq!(m.in_flight(), 0.0);
    assert_eq!(m.limit(), limit.limit() as f64);
}

#[test]
fn a_cancelled_adaptive_acquire_leaves_in_flight_balanced() {
    let rec = TestRecorder::new();
    let limit = rec
        .scoped(|| {
            let aimd = Aimd::builder().initial_limit(1).min_limit(1).build()?;
            AdaptiveLimit::builder(aimd).name("a").build()
        })
        .unwrap();
    let m = Limiter {
        rec: &rec,
        name: "a",
    };
    cancel_points(6, |k| {
        let held = RefCell::new(Some(limit.try_acquire().unwrap()));
        let out = Polled::new(limit.acquire()).drop_after_with(k, |i| {
            if i == 1 {
                held.borrow_mut().take().unwrap().ignore();
            }
        });
        drop(held);
        let out = out.map_output_drop();
        assert_eq!(m.in_flight(), 0.0, "after {k} polls: {out:?}");
        out
    });
    assert_eq!(m.rejected(), 0, "waiting is not a rejection");

    let rt = paused_runtime();
    rt.block_on(async {
        let held = limit.try_acquire().unwrap();
        assert!(limit.acquire_timeout(Duration::from_secs(1)).await.is_err());
        assert_eq!((m.in_flight(), m.rejected()), (1.0, 1));
        held.success();
    });
    assert_eq!(m.in_flight(), 0.0);
}

fn queue_keys(name: &str) -> Keys {
    let mut keys = vec![
        key("heijunka_queue_depth", &[("name", name)]),
        key("heijunka_queue_rejected_total", &[("name", name)]),
    ];
    for watermark in ["warn", "reject"] {
        for direction in ["up", "down"] {
            keys.push(key(
                "heijunka_queue_watermark_crossings_total",
                &[
                    ("name", name),
                    ("watermark", watermark),
                    ("direction", direction),
                ],
            ));
        }
    }
    sorted(keys)
}

struct Queue<'a> {
    rec: &'a TestRecorder,
    name: &'a str,
}

impl Queue<'_> {
    fn depth(&self) -> f64 {
        self.rec
            .gauge("heijunka_queue_depth", &[("name", self.name)])
            .expect("registered")
    }
    fn rejected(&self) -> u64 {
        self.rec
            .counter("heijunka_queue_rejected_total", &[("name", self.name)])
            .expect("registered")
    }
    fn crossings(&self, watermark: &str, direction: &str) -> u64 {
        self.rec
            .counter(
                "heijunka_queue_watermark_crossings_total",
                &[
                    ("name", self.name),
                    ("watermark", watermark),
                    ("direction", direction),
                ],
            )
            .expect("registered")
    }
    fn all_crossings(&self) -> [u64; 4] {
        [
            self.crossings("warn", "up"),
            self.crossings("reject", "up"),
            self.crossings("reject", "down"),
            self.crossings("warn", "down"),
        ]
    }
}

#[test]
fn queue_emits_depth_rejections_and_watermark_crossings() {
    let rec = TestRecorder::new();
    // 20 slots: warn at 16, reject at 18; clear below 15 and 17 (5 % = 1 slot).
    let q = rec
        .scoped(|| BoundedQueue::<u32>::builder(20).name("jobs").build())
        .unwrap();
    assert_eq!(rec.keys(), queue_keys("jobs"));
    let m = Queue {
        rec: &rec,
        name: "jobs",
    };
    let mut queued = 0;
    for i in 0..15 {
        q.try_push(i).unwrap();
        queued += 1;
    }
    assert_eq!(m.depth(), f64::from(queued));
    assert_eq!(m.all_crossings(), [0, 0, 0, 0], "below the warn mark");
    q.try_push(15).unwrap(); // 16: the warn mark
    assert_eq!(m.all_crossings(), [1, 0, 0, 0]);
    q.try_push(16).unwrap();
    q.try_push(17).unwrap(); // 18: the reject mark
    assert_eq!(m.all_crossings(), [1, 1, 0, 0]);
    assert_eq!(m.depth(), 18.0);

    let err = q.try_push(99).unwrap_err();
    assert_eq!(err.reason(), Rejection::QueueFull { capacity: 20 });
    assert_eq!(m.rejected(), 1);
    assert_eq!(m.depth(), 18.0, "a refused item is not queued");

    // Down to 17: not yet clear of the reject mark (hysteresis); 16 clears it.
    q.try_pop().unwrap();
    assert_eq!(m.all_crossings(), [1, 1, 0, 0]);
    q.try_pop().unwrap();
    assert_eq!(m.all_crossings(), [1, 1, 1, 0]);
    // Hovering at the warn mark counts nothing more.
    q.try_push(1).unwrap();
    q.try_pop().unwrap();
    assert_eq!(m.all_crossings(), [1, 1, 1, 0]);
    // 14 clears the warn mark.
    q.try_pop().unwrap();
    q.try_pop().unwrap();
    assert_eq!(m.depth(), 14.0);
    assert_eq!(m.all_crossings(), [1, 1, 1, 1]);
    // A new crossing counts again.
    q.try_push(1).unwrap();
    q.try_push(2).unwrap();
    assert_eq!(m.all_crossings(), [2, 1, 1, 1]);

    while q.try_pop().is_some() {}
    assert_eq!(m.depth(), 0.0);
    q.close();
    assert!(q.try_push(1).is_err());
    assert_eq!(m.rejected(), 1, "refused because closed: not a rejection");
}

#[test]
fn a_cancelled_or_timed_out_push_leaves_depth_balanced() {
    let rec = TestRecorder::new();
    let q = rec
        .scoped(|| BoundedQueue::<u32>::builder(2).name("q").build())
        .unwrap();
    let m = Queue {
        rec: &rec,
        name: "q",
    };
    // A push waiting on a full queue, polled k times and dropped; a pop between
    // polls makes room, so at some k it completes.
    cancel_points(6, |k| {
        q.push(1).now_or_never_none();
        q.push(2).now_or_never_none();
        let out = Polled::new(q.push(3)).drop_after_with(k, |i| {
            if i == 1 {
                q.try_pop().unwrap();
            }
        });
        let completed = out.is_completed();
        // Full, or popped once and refilled by the push that completed.
        assert_eq!(m.depth(), 2.0, "after {k} polls (completed: {completed})");
        assert_eq!(m.depth(), q.len() as f64);
        while q.try_pop().is_some() {}
        assert_eq!(m.depth(), 0.0);
        out.map_output_drop()
    });

    let rt = paused_runtime();
    rt.block_on(async {
        q.try_push(1).unwrap();
        q.try_push(2).unwrap();
        let err = q.push_timeout(3, Duration::from_secs(1)).await.unwrap_err();
        assert_eq!(
            err.reason(),
            Rejection::TimedOut {
                after: Duration::from_secs(1)
            }
        );
        assert_eq!(err.into_inner(), 3);
    });
    assert_eq!(m.rejected(), 1);
    assert_eq!(m.depth(), 2.0);
    // A cancelled pop takes nothing.
    while q.try_pop().is_some() {}
    let mut pop = Polled::new(q.pop());
    assert!(!pop.poll());
    drop(pop);
    assert_eq!(m.depth(), 0.0);
}

#[test]
fn load_shedder_counts_what_it_sheds() {
    let rec = TestRecorder::new();
    let shed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = std::sync::Arc::clone(&shed);
    let shedder = rec.scoped(|| {
        LoadShedder::builder()
            .name("edge")
            .signal(from_fn(move || {
                if flag.load(std::sync::atomic::Ordering::SeqCst) {
                    Err(Rejection::ShuttingDown)
                } else {
                    Ok(())
                }
            }))
            .build()
    });
    assert_eq!(
        rec.keys(),
        vec![key("heijunka_shed_total", &[("name", "edge")])]
    );
    let mut rejected = 0;
    for i in 0..10 {
        shed.store(i % 3 == 0, std::sync::atomic::Ordering::SeqCst);
        if shedder.check().is_err() {
            rejected += 1;
        }
    }
    assert_eq!(rejected, 4);
    assert_eq!(
        rec.counter("heijunka_shed_total", &[("name", "edge")]),
        Some(rejected)
    );
}

#[test]
fn rate_limiters_count_their_refusals() {
    let clock = ManualClock::new();
    let rec = TestRecorder::new();
    let (gcra, keyed) = rec.scoped(|| {
        let gcra = Gcra::builder(10.0)
            .burst(2)
            .name("ingress")
            .clock(clock.clock())
            .build()
            .unwrap();
        let keyed = KeyedRateLimiter::builder(1.0)
            .max_keys(1)
            .name("per-client")
            .clock(clock.clock())
            .build::<&str>()
            .unwrap();
        (gcra, keyed)
    });
    assert_eq!(
        rec.keys(),
        vec![
            key("heijunka_ratelimit_rejected_total", &[("name", "ingress")]),
            key(
                "heijunka_ratelimit_rejected_total",
                &[("name", "per-client")]
            ),
        ]
    );
    let read = |name: &str| {
        rec.counter("heijunka_ratelimit_rejected_total", &[("name", name)])
            .expect("registered")
    };
    // Ten checks in one instant with a burst of 2: 8 refused. A request above the
    // burst (which can never pass) is not counted.
    let refused = (0..10).filter(|_| gcra.check().is_err()).count() as u64;
    assert_eq!(refused, 8);
    assert!(gcra.check_n(3).is_err());
    assert_eq!(read("ingress"), refused);
    clock.advance(Duration::from_millis(100));
    assert!(gcra.check().is_ok());
    assert_eq!(read("ingress"), refused);

    // Alice's second unit is rate limited; bob is refused by the key budget.
    assert!(keyed.check_key(&"alice").is_ok());
    assert!(keyed.check_key(&"alice").is_err());
    assert!(keyed.check_key_state(&"alice").result.is_err());
    assert!(keyed.check_key(&"bob").is_err());
    assert!(keyed.check_key_n(&"alice", 2).is_err(), "above the burst");
    assert_eq!(read("per-client"), 3);
}

/// What the cancel checks keep of a case: completed or not, and after how many
/// polls, with the output (a permit) dropped at once.
trait DropOutput {
    fn map_output_drop(self) -> Outcome<()>;
}

impl<T> DropOutput for Outcome<T> {
    fn map_output_drop(self) -> Outcome<()> {
        match self {
            Outcome::Completed { polls, .. } => Outcome::Completed { output: (), polls },
            Outcome::Cancelled { polls } => Outcome::Cancelled { polls },
        }
    }
}

/// Completes a future that must be ready at its first poll.
trait NowOrNever {
    fn now_or_never_none(self);
}

impl<F: std::future::Future<Output = Result<(), E>>, E: std::fmt::Debug> NowOrNever for F {
    fn now_or_never_none(self) {
        let mut p = Polled::new(self);
        assert!(p.poll(), "ready at once");
        p.take_output().unwrap().unwrap();
    }
}

/// A queue dropped with items in it takes them out of the depth gauge: the
/// next queue of the same name starts from the right figure.
#[test]
fn a_queue_dropped_with_items_leaves_no_depth_behind() {
    let rec = TestRecorder::new();
    let q = rec
        .scoped(|| BoundedQueue::<u32>::builder(8).name("drop").build())
        .unwrap();
    for i in 0..3 {
        q.try_push(i).unwrap();
    }
    let depth = || rec.gauge("heijunka_queue_depth", &[("name", "drop")]);
    assert_eq!(depth(), Some(3.0));
    let clone = q.clone();
    drop(q);
    assert_eq!(depth(), Some(3.0), "a clone still holds the items");
    drop(clone);
    assert_eq!(depth(), Some(0.0));
}
