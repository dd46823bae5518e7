#![cfg(feature = "config")]
//! `Stack::reload` and `Stack::watch_file`: limits, rates, breaker thresholds and
//! the timeout change on a running stack; what cannot change is refused whole.

use std::time::{Duration, Instant};

use heijunka::backpressure::RateLimiter;
use heijunka::breaker::State;
use heijunka::config::{BuildOptions, Config, ReloadOptions};
use heijunka::core::ManualClock;

fn config(text: &str) -> Config {
    Config::from_toml_str(text).unwrap()
}

/// Polls `done` until it holds, for at most 10 s.
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::yield_now();
    }
}

#[test]
fn reload_under_load_keeps_in_flight_permits() {
    let stack = config("[concurrency.limit]\nmax_concurrent = 10")
        .build()
        .unwrap();
    let limit = stack.limit.clone().unwrap();
    let held: Vec<_> = (0..10)
        .map(|_| limit.try_acquire_owned().unwrap())
        .collect();
    assert!(limit.try_acquire().is_err());

    let report = stack
        .reload(config("[concurrency.limit]\nmax_concurrent = 4"))
        .unwrap();
    assert_eq!(report.changed, ["concurrency.limit.max_concurrent"]);
    assert_eq!(limit.limit(), 4);
    // The ten held permits are still held (none was dropped or revoked) ...
    assert_eq!(limit.in_use(), 10);
    // ... and new ones see the new limit until enough are released.
    let mut held = held;
    for _ in 0..6 {
        held.pop();
        assert!(limit.try_acquire().is_err(), "in use {}", limit.in_use());
    }
    assert_eq!(limit.in_use(), 4);
    held.pop();
    let p = limit.try_acquire().expect("below the new limit");
    assert!(limit.try_acquire().is_err(), "at the new limit");
    drop(p);
    drop(held);
    assert_eq!(limit.in_use(), 0);
    assert_eq!(limit.available_permits(), 4, "converged on the new limit");
    // The policy shares the limit.
    assert_eq!(stack.policy.concurrency_limit().unwrap().limit(), 4);
}

const BREAKER: &str = "[concurrency.breaker]\nwindow = 4\nminimum_calls = 4\nreset_timeout = \"10s\"\nhalf_open_max = 1\n";

#[test]
fn breaker_state_is_kept_across_a_reload_unless_a_reset_is_asked() {
    let clock = ManualClock::new();
    let stack = config(BREAKER)
        .build_with(BuildOptions::new().clock(&clock))
        .unwrap();
    let breaker = stack.breaker.clone().unwrap();
    for _ in 0..4 {
        let _ = breaker.call(|| Err::<(), _>("down"));
    }
    assert_eq!(breaker.state(), State::Open);

    let tuned = format!("{BREAKER}failure_threshold = 0.9\n");
    let report = stack.reload(config(&tuned)).unwrap();
    assert_eq!(report.changed, ["concurrency.breaker.failure_threshold"]);
    assert!(!report.breaker_reset);
    assert_eq!(breaker.state(), State::Open, "open stays open");
    assert_eq!(breaker.config().failure_rate_threshold(), 0.9);
    assert!(
        stack
            .client_policy
            .as_ref()
            .unwrap()
            .breaker()
            .unwrap()
            .try_acquire()
            .is_err()
    );

    // Asked to, the reload resets it.
    let report = stack
        .reload_with(config(&tuned), ReloadOptions::new().reset_breakers(true))
        .unwrap();
    assert!(report.changed.is_empty() && report.breaker_reset);
    assert_eq!(breaker.state(), State::Closed);
}

#[test]
fn a_refused_reload_leaves_everything_untouched() {
    let text = "[concurrency.limit]\nmax_concurrent = 10\n\
                [concurrency.rate_limit]\nper_second = 100.0\n\
                [concurrency.worker_pool]\nmax_workers = 2\n";
    let stack = config(text).build().unwrap();
    let before = stack.config();

    // Invalid values: every error, nothing applied.
    let bad = "[concurrency.limit]\nmax_concurrent = 0\n\
               [concurrency.rate_limit]\nper_second = -1.0\n\
               [concurrency.worker_pool]\nmax_workers = 2\n";
    let err = stack.reload(config(bad)).unwrap_err();
    let fields: Vec<&str> = err.iter().map(|e| e.field()).collect();
    assert_eq!(
        fields,
        [
            "concurrency.rate_limit.per_second",
            "concurrency.limit.max_concurrent",
            "concurrency.limit.min_concurrent", // 1, above the maximum of 0
        ]
    );

    // A change that needs a restart, beside one that could apply: neither is.
    let mixed = "[concurrency.limit]\nmax_concurrent = 5\n\
                 [concurrency.rate_limit]\nper_second = 100.0\n\
                 [concurrency.worker_pool]\nmax_workers = 4\n\
                 [concurrency.timeouts]\nshutdown = \"5s\"\n";
    let err = stack.reload(config(mixed)).unwrap_err();
    let fields: Vec<&str> = err.iter().map(|e| e.field()).collect();
    assert_eq!(
        fields,
        [
            "concurrency.worker_pool.max_workers",
            "concurrency.timeouts.shutdown"
        ]
    );
    assert!(err.to_string().contains("needs a restart"), "{err}");
    // Adding a stage that did not exist is refused too.
    let added = format!("{text}[concurrency.breaker]\n");
    let err = stack.reload(config(&added)).unwrap_err();
    assert_eq!(err.first().field(), "concurrency.breaker");

    assert_eq!(stack.limit.as_ref().unwrap().limit(), 10);
    assert_eq!(stack.rate_limiter.as_ref().unwrap().burst(), 100);
    assert_eq!(stack.config(), before);
    if let Some(pool) = stack.worker_pool {
        assert!(pool.shutdown(Duration::from_secs(5)).clean);
    }
}

#[test]
fn a_new_rate_is_observed_at_once() {
    let clock = ManualClock::new();
    let text = "[concurrency.rate_limit]\nper_second = 10.0\nburst = 1";
    let stack = config(text)
        .build_with(BuildOptions::new().clock(&clock))
        .unwrap();
    let limiter = stack.rate_limiter.clone().unwrap();
    assert!(limiter.check().is_ok());
    clock.advance(Duration::from_millis(50));
    assert!(limiter.check().is_err(), "10 per second: one per 100 ms");

    let report = stack
        .reload(config(
            "[concurrency.rate_limit]\nper_second = 1000.0\nburst = 1",
        ))
        .unwrap();
    assert_eq!(report.changed, ["concurrency.rate_limit.per_second"]);
    // The debt of the last admission (due at 100 ms) is kept: at 100 ms the
    // bucket admits again, then one per millisecond.
    clock.advance(Duration::from_millis(50));
    assert!(limiter.check().is_ok());
    clock.advance(Duration::from_millis(1));
    assert!(limiter.check().is_ok(), "one per millisecond now");
    assert!(limiter.check().is_err());
    // The policy's rate stage is the same limiter.
    let ctx = heijunka::context::RequestContext::new();
    assert!(stack.policy.try_admit(&ctx).is_err());
}

#[test]
fn the_request_timeout_follows_a_reload() {
    let stack = config("").build().unwrap();
    assert_eq!(stack.policy.timeout(), Some(Duration::from_secs(30)));
    let report = stack
        .reload(config("[concurrency.timeouts]\nrequest = \"2s\""))
        .unwrap();
    assert_eq!(report.changed, ["concurrency.timeouts.request"]);
    assert_eq!(stack.policy.timeout(), Some(Duration::from_secs(2)));
    assert_eq!(
        stack.config().concurrency.timeouts.request,
        Duration::from_secs(2)
    );
    #[cfg(feature = "tower")]
    assert_eq!(
        stack.policy_layer().policy().timeout(),
        Some(Duration::from_secs(2))
    );
}

#[test]
fn a_watched_file_reloads_on_change_and_a_bad_one_is_refused() {
    let dir = std::env::temp_dir().join(format!("heijunka-watch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("heijunka.toml");
    std::fs::write(&path, "[concurrency.limit]\nmax_concurrent = 10\n").unwrap();
    let stack = Config::from_file(&path).unwrap().build().unwrap();
    let watcher = stack.watch_file(&path, Duration::from_millis(5)).unwrap();
    let limit = stack.limit.clone().unwrap();

    // Written whole (a rename), as deployment tools and editors do: a watcher
    // that reads a half-written file refuses it and takes the whole one next.
    let replace = |text: &str| {
        let tmp = dir.join("heijunka.toml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    };
    replace("[concurrency.limit]\nmax_concurrent = 3\n");
    eventually("the reload", || watcher.applied() == 1);
    assert_eq!(limit.limit(), 3);

    replace("[concurrency.limit]\nmax_concurrent = 0\n");
    eventually("the refusal", || watcher.refused() == 1);
    assert_eq!(limit.limit(), 3, "the config in force is kept");

    watcher.stop();
    replace("[concurrency.limit]\nmax_concurrent = 7\n");
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(limit.limit(), 3, "a stopped watcher reloads nothing");
    assert!(stack.watch_file(&path, Duration::ZERO).is_err());
}

/// A breaker listener (the caller's code) that reads the stack runs with no
/// reload lock held: a reload whose new threshold trips the breaker completes.
#[test]
fn a_breaker_listener_may_read_the_stack_during_a_reload() {
    let clock = ManualClock::new();
    let stack = std::sync::Arc::new(
        config(BREAKER)
            .build_with(BuildOptions::new().clock(&clock))
            .unwrap(),
    );
    let breaker = stack.breaker.clone().unwrap();
    let (seen_tx, seen_rx) = std::sync::mpsc::channel();
    let weak = std::sync::Arc::downgrade(&stack);
    breaker.subscribe(move |t| {
        if let Some(stack) = weak.upgrade() {
            let threshold = stack
                .config()
                .concurrency
                .breaker
                .unwrap()
                .failure_threshold;
            let _ = seen_tx.send((t.to, threshold));
        }
    });
    // One failure in four calls: 25 %, below the configured 50 %.
    for i in 0..4 {
        let _ = breaker.call(|| if i < 1 { Err("down") } else { Ok(()) });
    }
    assert_eq!(breaker.state(), State::Closed);

    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let reloading = std::sync::Arc::clone(&stack);
    std::thread::spawn(move || {
        let lower = format!("{BREAKER}failure_threshold = 0.25\n");
        let _ = done_tx.send(reloading.reload(config(&lower)).map(|r| r.changed));
    });
    let changed = done_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the reload never finished: a lock held across the listener")
        .unwrap();
    assert_eq!(changed, ["concurrency.breaker.failure_threshold"]);
    assert_eq!(breaker.state(), State::Open, "25 % reaches the new 25 %");
    assert_eq!(seen_rx.try_recv().unwrap(), (State::Open, 0.25));
}

/// Threads admitting through the policy while reloads move the limit up and
/// down: never more in flight (counted by the threads themselves) than the
/// highest limit, and every permit back in the end, on the last limit.
#[test]
fn reloads_racing_admissions_lose_no_permit() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let stack = Arc::new(
        config("[concurrency.limit]\nmax_concurrent = 8")
            .build()
            .unwrap(),
    );
    let inflight = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..3)
        .map(|_| {
            let (stack, inflight, most, stop) =
                (stack.clone(), inflight.clone(), most.clone(), stop.clone());
            std::thread::spawn(move || {
                let ctx = heijunka::context::RequestContext::new();
                let mut admitted = 0_u32;
                while !stop.load(Ordering::SeqCst) && admitted < 200_000 {
                    if let Ok(a) = stack.policy.try_admit(&ctx) {
                        let n = inflight.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(n, Ordering::SeqCst);
                        inflight.fetch_sub(1, Ordering::SeqCst);
                        a.success();
                        admitted += 1;
                    }
                }
            })
        })
        .collect();
    for i in 0..200 {
        let n = if i % 2 == 0 { 2 } else { 8 };
        stack
            .reload(config(&format!(
                "[concurrency.limit]\nmax_concurrent = {n}"
            )))
            .unwrap();
    }
    stack
        .reload(config("[concurrency.limit]\nmax_concurrent = 5"))
        .unwrap();
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().unwrap();
    }
    assert!(most.load(Ordering::SeqCst) <= 8);
    let limit = stack.limit.as_ref().unwrap();
    assert_eq!(limit.in_use(), 0, "every permit came back");
    assert_eq!((limit.limit(), limit.available_permits()), (5, 5));
}
