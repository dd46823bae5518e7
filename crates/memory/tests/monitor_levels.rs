//! Pressure levels from injected samples: thresholds, hysteresis, subscriptions,
//! callbacks (once per change, in order, panics isolated), the gate, bad config.
#![cfg(not(loom))]

use std::sync::mpsc;
use std::time::Duration;

use heijunka_core::PressureLevel::{Critical, Elevated, Normal};
use heijunka_core::{ManualClock, PressureLevel, Rejection};
use heijunka_memory::{
    LevelChange, LimitSource, ManualProbe, MemoryGate, MemoryMonitor, SampleError,
};

const LIMIT: u64 = 1_000;
const WAIT: Duration = Duration::from_secs(10);

fn monitor() -> (MemoryMonitor, ManualProbe) {
    let probe = ManualProbe::new(1 << 40);
    let monitor = MemoryMonitor::builder()
        .limit(LIMIT)
        .probe(probe.clone())
        .build()
        .unwrap();
    (monitor, probe)
}

fn at(monitor: &MemoryMonitor, probe: &ManualProbe, rss: u64) -> PressureLevel {
    probe.set_rss(rss);
    monitor.sample_now().unwrap().status.level
}

#[test]
fn thresholds_and_hysteresis_over_a_sequence_of_samples() {
    let (m, p) = monitor();
    assert_eq!(m.pressure(), Normal);
    let steps = [
        (799, Normal),
        (800, Elevated), // rises at 80 %
        (760, Elevated), // inside the 5-point band
        (751, Elevated),
        (749, Normal), // below 75 %
        (900, Critical),
        (851, Critical),
        (849, Elevated),
        (1_200, Critical), // over the limit
        (0, Normal),
    ];
    for (rss, want) in steps {
        assert_eq!(at(&m, &p, rss), want, "rss {rss}");
        assert_eq!(m.pressure(), want);
        let status = m.status().unwrap();
        assert_eq!(
            (status.used, status.limit, status.level),
            (rss, LIMIT, want)
        );
        assert_eq!(status.limit_source, LimitSource::Configured);
    }
    let stats = m.stats();
    assert_eq!(stats.samples, 1 + steps.len() as u64);
    assert_eq!(
        (
            stats.level_changes,
            stats.changes_to_elevated,
            stats.changes_to_critical
        ),
        (6, 2, 2)
    );
}

#[test]
fn cgroup_working_set_is_measured_against_the_cgroup_limit() {
    let (m, p) = monitor();
    p.set_rss(100);
    p.set_cgroup(500, 460); // 92 % of the cgroup, whatever the process's own RSS
    let s = m.sample_now().unwrap();
    assert_eq!(s.status.limit_source, LimitSource::CgroupV2);
    assert_eq!((s.status.used, s.status.limit), (460, 500));
    assert_eq!(s.status.level, Critical);
    assert_eq!(s.cgroup.unwrap().path, "/manual");
}

#[test]
fn samples_are_stamped_with_the_monitor_clock() {
    let clock = ManualClock::new();
    let probe = ManualProbe::new(1 << 30);
    let m = MemoryMonitor::builder()
        .probe(probe)
        .clock(clock.clock())
        .build()
        .unwrap();
    clock.advance(Duration::from_secs(7));
    let s = m.sample_now().unwrap();
    assert_eq!(s.status.sampled_at.as_nanos(), 7_000_000_000);
    clock.advance(Duration::from_secs(2));
    assert_eq!(m.stats().since_last_sample, Some(Duration::from_secs(2)));
}

#[test]
fn callbacks_run_once_per_change_in_order() {
    let (m, p) = monitor();
    let (tx, rx) = mpsc::channel::<(&'static str, PressureLevel, PressureLevel)>();
    let all = tx.clone();
    m.on_change(move |c: &LevelChange| all.send(("any", c.from, c.to)).unwrap())
        .unwrap();
    let elevated = tx.clone();
    m.on_level(Elevated, move |c| {
        elevated.send(("elevated", c.from, c.to)).unwrap()
    })
    .unwrap();
    let critical = tx;
    m.on_level(Critical, move |c| {
        critical.send(("critical", c.from, c.to)).unwrap()
    })
    .unwrap();

    // Normal -> Elevated -> (stays) -> Critical -> (stays) -> Elevated -> Normal.
    for rss in [810, 820, 950, 870, 840, 100, 100] {
        at(&m, &p, rss);
    }
    assert!(m.flush_callbacks(WAIT));
    let got: Vec<_> = rx.try_iter().collect();
    assert_eq!(
        got,
        [
            ("any", Normal, Elevated),
            ("elevated", Normal, Elevated),
            ("any", Elevated, Critical),
            ("critical", Elevated, Critical),
            ("any", Critical, Elevated),
            ("elevated", Critical, Elevated),
            ("any", Elevated, Normal),
        ]
    );
    assert_eq!(m.stats().callbacks, 3);
}

#[test]
fn a_panicking_callback_is_isolated_and_counted() {
    let (m, p) = monitor();
    let (tx, rx) = mpsc::channel();
    m.on_change(|_| panic!("callback bug")).unwrap();
    let id = m.on_change(move |c| tx.send(c.to).unwrap()).unwrap();
    at(&m, &p, 850);
    at(&m, &p, 10);
    assert!(m.flush_callbacks(WAIT));
    assert_eq!(rx.try_iter().collect::<Vec<_>>(), [Elevated, Normal]);
    assert_eq!(m.stats().callback_panics, 2);

    // Removed callbacks stop running.
    assert!(m.remove_callback(id));
    assert!(!m.remove_callback(id));
    at(&m, &p, 850);
    assert!(m.flush_callbacks(WAIT));
    assert_eq!(rx.try_iter().count(), 0);
    assert_eq!(m.stats().callback_panics, 3);
}

#[test]
fn a_blocked_callback_never_blocks_sampling_and_its_backlog_is_bounded() {
    let (m, p) = monitor();
    let (entered_tx, entered) = mpsc::channel();
    let (release, release_rx) = mpsc::channel::<()>();
    let release_rx = std::sync::Mutex::new(release_rx);
    let (seen_tx, seen) = mpsc::channel();
    m.on_change(move |c| {
        entered_tx.send(()).unwrap();
        release_rx.lock().unwrap().recv_timeout(WAIT).unwrap();
        seen_tx.send(c.to).unwrap();
    })
    .unwrap();

    at(&m, &p, 850); // change 1: the callback thread takes it and blocks
    entered.recv_timeout(WAIT).unwrap();
    // 70 more changes (one level each) while it is blocked: sampling goes on, the
    // queue keeps 64.
    for i in 0..70 {
        let want = if i % 2 == 0 { Critical } else { Elevated };
        assert_eq!(at(&m, &p, if i % 2 == 0 { 950 } else { 800 }), want);
    }
    let stats = m.stats();
    assert_eq!(stats.level_changes, 71);
    assert_eq!(
        stats.callback_changes_dropped,
        70 - heijunka_memory::CALLBACK_QUEUE_CAPACITY as u64
    );
    for _ in 0..65 {
        release.send(()).unwrap();
    }
    assert!(m.flush_callbacks(WAIT));
    let got: Vec<_> = seen.try_iter().collect();
    assert_eq!(got.len(), 65);
    assert_eq!(got[0], Elevated);
    // The oldest six queued changes were dropped; the newest ones ran, in order,
    // ending at the last level.
    assert!(got.windows(2).all(|w| w[0] != w[1]), "alternating: {got:?}");
    assert_eq!(*got.last().unwrap(), Elevated);
}

#[test]
fn subscribers_see_the_latest_level_without_a_runtime() {
    let (m, p) = monitor();
    let mut rx = m.subscribe();
    assert_eq!(*rx.borrow_and_update(), Normal);
    at(&m, &p, 500);
    assert!(!rx.has_changed().unwrap(), "no change, no notification");
    at(&m, &p, 850);
    at(&m, &p, 950);
    assert!(rx.has_changed().unwrap());
    assert_eq!(*rx.borrow_and_update(), Critical);
    assert_eq!(m.stats().subscribers, 1);
}

#[tokio::test(flavor = "current_thread")]
async fn subscribers_await_changes() {
    let (m, p) = monitor();
    let mut rx = m.subscribe();
    let waiter = tokio::spawn(async move {
        rx.changed().await.unwrap();
        *rx.borrow()
    });
    tokio::task::yield_now().await;
    at(&m, &p, 900);
    assert_eq!(waiter.await.unwrap(), Critical);
}

#[test]
fn gate_rejects_large_requests_when_elevated_and_all_when_critical() {
    let (m, p) = monitor();
    let gate = MemoryGate::builder(&m)
        .large_request_bytes(10 << 20)
        .build()
        .unwrap();
    let plain = MemoryGate::builder(&m).build().unwrap();
    let small = 1 << 10;
    let large = 10 << 20;

    assert_eq!(gate.check_size(large), Ok(()));
    assert_eq!(gate.rejection(), None);

    at(&m, &p, 850);
    let elevated = Err(Rejection::MemoryPressure { level: Elevated });
    assert_eq!(gate.check_size(small), Ok(()));
    assert_eq!(gate.check_size(large), elevated);
    assert_eq!(gate.check(), Ok(()), "unknown size passes until critical");
    assert_eq!(plain.check_size(large), Ok(()), "no size rule configured");
    assert_eq!(gate.rejection(), None);
    assert_eq!(
        m.rejection_at(Elevated),
        Some(Rejection::MemoryPressure { level: Elevated })
    );

    at(&m, &p, 950);
    let critical = Err(Rejection::MemoryPressure { level: Critical });
    assert_eq!(gate.check_size(small), critical);
    assert_eq!(gate.check(), critical);
    assert_eq!(plain.check(), critical);
    assert_eq!(gate.rejection(), critical.err());

    let stats = gate.stats();
    assert_eq!(
        (stats.admitted, stats.rejected, stats.rejected_large),
        (3, 2, 1)
    );
    assert_eq!(stats.large_request_bytes, Some(10 << 20));
    let json = serde_json::to_value(&stats).unwrap();
    assert_eq!(json["level"], "critical");
}

#[test]
fn bad_configuration_names_field_and_value() {
    let err = |b: heijunka_memory::MemoryMonitorBuilder| b.build().unwrap_err().to_string();
    let probe = || ManualProbe::new(1 << 30);
    let b = || MemoryMonitor::builder().probe(probe());
    assert_eq!(
        err(b().elevated_threshold(1.2)),
        "elevated_threshold must be in (0, 1], got 1.2"
    );
    assert_eq!(
        err(b().critical_threshold(0.0)),
        "critical_threshold must be in (0, 1], got 0.0"
    );
    assert_eq!(
        err(b().elevated_threshold(0.95).critical_threshold(0.9)),
        "elevated_threshold must not exceed critical_threshold (0.9), got 0.95"
    );
    assert_eq!(
        err(b().hysteresis(0.9)),
        "hysteresis must be in [0, elevated_threshold) = [0, 0.8), got 0.9"
    );
    assert_eq!(
        err(b().interval(Duration::ZERO)),
        "interval must be longer than zero, got 0ns"
    );
    assert_eq!(err(b().limit(0)), "limit must be at least 1, got 0");

    let (m, _) = monitor();
    let gate_err = |r: Result<MemoryGate, heijunka_core::ConfigError>| r.unwrap_err().to_string();
    assert_eq!(
        gate_err(MemoryGate::builder(&m).reject_at(Normal).build()),
        "reject_at must be Elevated or Critical, got Normal"
    );
    assert_eq!(
        gate_err(MemoryGate::builder(&m).large_request_bytes(0).build()),
        "large_request_bytes must be at least 1, got 0"
    );
    assert_eq!(
        gate_err(
            MemoryGate::builder(&m)
                .large_request_bytes(1)
                .large_reject_at(Normal)
                .build()
        ),
        "large_reject_at must be Elevated or Critical, got Normal"
    );
}

#[test]
fn a_probe_with_no_limit_at_all_is_a_sample_error_that_keeps_the_level() {
    // A system total of zero, no cgroup, no configured limit.
    let probe = ManualProbe::new(1_000);
    let m = MemoryMonitor::builder()
        .probe(probe.clone())
        .build()
        .unwrap();
    probe.set_rss(950);
    assert_eq!(m.sample_now().unwrap().status.level, Critical);
    probe.set_system_total(0);
    assert_eq!(m.sample_now().unwrap_err(), SampleError::NoLimit);
    assert_eq!(m.pressure(), Critical, "the last level is kept");
    let stats = m.stats();
    assert_eq!((stats.samples, stats.sample_errors), (2, 1));
}

#[test]
fn stats_serialise() {
    let (m, p) = monitor();
    at(&m, &p, 850);
    let json = serde_json::to_value(m.stats()).unwrap();
    assert_eq!(json["level"], "elevated");
    assert_eq!(json["last"]["used"], 850);
    assert_eq!(json["last"]["limit_source"], "configured");
    assert_eq!(json["thresholds"]["elevated"], 0.8);
    let sample = serde_json::to_value(m.last_sample().unwrap()).unwrap();
    assert_eq!(sample["ratio"], 0.85);
    assert_eq!(sample["level"], "elevated");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_task_sampler_samples_every_interval() {
    let probe = ManualProbe::new(1 << 40);
    let m = MemoryMonitor::builder()
        .limit(LIMIT)
        .interval(Duration::from_secs(5))
        .probe(probe.clone())
        .build()
        .unwrap();
    let sampler = m.spawn_sampler().unwrap();
    assert!(sampler.is_task());
    tokio::task::yield_now().await;
    assert_eq!(m.stats().samples, 2, "build's sample, then one at once");

    probe.set_rss(950);
    tokio::time::sleep(Duration::from_secs(4)).await; // paused time: no real wait
    assert_eq!(m.pressure(), Normal, "not sampled before the interval");
    tokio::time::sleep(Duration::from_secs(1)).await;
    tokio::task::yield_now().await;
    assert_eq!(m.pressure(), Critical);
    assert_eq!(m.stats().samples, 3);

    drop(sampler);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(m.stats().samples, 3, "stopped when dropped");
}

#[test]
fn the_thread_sampler_samples_at_once_and_stops_when_dropped() {
    let probe = ManualProbe::new(1 << 40);
    let m = MemoryMonitor::builder()
        .limit(LIMIT)
        .interval(Duration::from_secs(3_600))
        .probe(probe.clone())
        .build()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    m.on_change(move |c| tx.send(c.to).unwrap()).unwrap();
    probe.set_rss(990);
    let sampler = m.spawn_sampler().unwrap();
    assert!(!sampler.is_task(), "no runtime here");
    assert_eq!(rx.recv_timeout(WAIT), Ok(Elevated), "first sample at once");
    assert_eq!(rx.recv_timeout(WAIT), Ok(Critical), "every level crossed");
    sampler.stop(); // joins the thread
    assert_eq!(m.stats().samples, 2);
}

#[test]
fn a_jump_runs_the_callbacks_of_every_level_crossed_in_order() {
    let (m, p) = monitor();
    let (tx, rx) = mpsc::channel::<(&'static str, PressureLevel, PressureLevel)>();
    let any = tx.clone();
    m.on_change(move |c| any.send(("any", c.from, c.to)).unwrap())
        .unwrap();
    for (name, level) in [
        ("normal", Normal),
        ("elevated", Elevated),
        ("critical", Critical),
    ] {
        let tx = tx.clone();
        m.on_level(level, move |c| tx.send((name, c.from, c.to)).unwrap())
            .unwrap();
    }
    // Normal -> Critical in one sample, then Critical -> Normal in one sample.
    assert_eq!(at(&m, &p, 950), Critical);
    assert_eq!(at(&m, &p, 10), Normal);
    assert!(m.flush_callbacks(WAIT));
    let got: Vec<_> = rx.try_iter().collect();
    assert_eq!(
        got,
        [
            ("any", Normal, Elevated),
            ("elevated", Normal, Elevated),
            ("any", Elevated, Critical),
            ("critical", Elevated, Critical),
            ("any", Critical, Elevated),
            ("elevated", Critical, Elevated),
            ("any", Elevated, Normal),
            ("normal", Elevated, Normal),
        ]
    );
}

/// A probe that fails on demand, as a revoked cgroup file or a broken `/proc` does.
#[derive(Clone)]
struct Failing {
    inner: ManualProbe,
    fail: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl heijunka_memory::MemoryProbe for Failing {
    fn read(&mut self) -> Result<heijunka_memory::ProbeReading, SampleError> {
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(SampleError::NoLimit);
        }
        self.inner.read()
    }
}

fn failing_monitor(clock: &ManualClock) -> (MemoryMonitor, ManualProbe, Failing) {
    let probe = ManualProbe::new(1 << 40);
    let failing = Failing {
        inner: probe.clone(),
        fail: Default::default(),
    };
    let m = MemoryMonitor::builder()
        .limit(LIMIT)
        .interval(Duration::from_secs(1))
        .probe(failing.clone())
        .clock(clock.clock())
        .build()
        .unwrap();
    (m, probe, failing)
}

#[test]
fn a_stale_critical_level_does_not_reject_forever() {
    let clock = ManualClock::new();
    let (m, p, failing) = failing_monitor(&clock);
    let gate = MemoryGate::builder(&m).build().unwrap();
    assert_eq!(at(&m, &p, 950), Critical);
    assert!(gate.check().is_err(), "a fresh critical level rejects");

    // From now on every sample fails, for an hour (one a minute: cheap under miri).
    failing
        .fail
        .store(true, std::sync::atomic::Ordering::SeqCst);
    for _ in 0..60 {
        clock.advance(Duration::from_secs(60));
        assert!(m.sample_now().is_err());
    }
    assert_eq!(m.pressure(), Critical, "the monitor keeps its last level");
    // The gate does not act on an hour-old reading: by default it fails open.
    assert_eq!(gate.check(), Ok(()));
    assert_eq!(gate.check_size(u64::MAX), Ok(()));
    assert_eq!(gate.rejection(), None);
}

#[test]
fn a_stale_reading_follows_the_gate_policy_and_the_stats_say_so() {
    use heijunka_memory::StalePolicy;
    let clock = ManualClock::new();
    let (m, p, failing) = failing_monitor(&clock);
    let open = MemoryGate::builder(&m)
        .stale_after(Duration::from_secs(30))
        .build()
        .unwrap();
    let closed = MemoryGate::builder(&m)
        .stale_after(Duration::from_secs(30))
        .stale_policy(StalePolicy::FailClosed)
        .build()
        .unwrap();
    let default = MemoryGate::builder(&m).build().unwrap();
    assert_eq!(
        default.stats().stale_after,
        Duration::from_secs(10),
        "10 intervals of 1 s"
    );
    assert_eq!(at(&m, &p, 950), Critical);
    failing
        .fail
        .store(true, std::sync::atomic::Ordering::SeqCst);

    // 30 s old: still trusted (the bound is inclusive).
    clock.advance(Duration::from_secs(30));
    assert!(m.sample_now().is_err());
    assert_eq!(m.sample_age(), Duration::from_secs(30));
    let critical = Err(Rejection::MemoryPressure { level: Critical });
    assert_eq!(open.check(), critical);
    assert_eq!(closed.check(), critical);
    assert!(!open.stats().stale);

    // One nanosecond more: stale.
    clock.advance(Duration::from_nanos(1));
    assert_eq!(open.check(), Ok(()));
    assert_eq!(open.check_size(u64::MAX), Ok(()));
    assert_eq!(closed.check(), critical);
    assert_eq!(closed.rejection(), critical.err());
    assert_eq!(open.rejection(), None);
    let s = open.stats();
    assert!(s.stale);
    assert_eq!((s.admitted, s.stale_admitted, s.rejected), (2, 2, 1));
    assert_eq!(s.stale_policy, StalePolicy::FailOpen);
    let s = closed.stats();
    assert!(s.stale);
    assert_eq!((s.rejected, s.stale_rejected), (2, 1));
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(json["stale_policy"], "fail_closed");
    assert_eq!(json["stale"], true);

    // A failing monitor whose level is Normal: fail-closed rejects it once stale,
    // fail-open admits without looking at the clock.
    failing
        .fail
        .store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(at(&m, &p, 10), Normal);
    assert!(!closed.stats().stale, "a fresh sample");
    assert_eq!(closed.check(), Ok(()));
    failing
        .fail
        .store(true, std::sync::atomic::Ordering::SeqCst);
    clock.advance(Duration::from_secs(31));
    assert_eq!(closed.check(), critical);
    assert_eq!(open.check(), Ok(()));

    // Recovery: a successful sample is fresh again.
    failing
        .fail
        .store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(at(&m, &p, 10), Normal);
    assert_eq!(closed.check(), Ok(()));
    assert_eq!(m.sample_age(), Duration::ZERO);
}

#[test]
fn a_monitor_that_never_sampled_ages_from_its_creation() {
    let clock = ManualClock::new();
    clock.advance(Duration::from_secs(100));
    let probe = Failing {
        inner: ManualProbe::new(1 << 40),
        fail: std::sync::Arc::new(true.into()),
    };
    let m = MemoryMonitor::builder()
        .limit(LIMIT)
        .probe(probe)
        .clock(clock.clock())
        .build()
        .unwrap();
    assert!(m.status().is_none());
    clock.advance(Duration::from_secs(5));
    assert_eq!(m.sample_age(), Duration::from_secs(5));
    let closed = MemoryGate::builder(&m)
        .stale_policy(heijunka_memory::StalePolicy::FailClosed)
        .build()
        .unwrap();
    assert_eq!(closed.check(), Ok(()));
    clock.advance(Duration::from_secs(6));
    assert!(closed.check().is_err());
}

#[test]
fn gate_and_interval_bounds_are_config_errors() {
    let (m, _) = monitor();
    assert_eq!(
        MemoryGate::builder(&m)
            .stale_after(Duration::ZERO)
            .build()
            .unwrap_err()
            .to_string(),
        "stale_after must be longer than zero, got 0ns"
    );
    // A sampler interval below 1 ms would spin a core re-reading kernel files.
    let err = MemoryMonitor::builder()
        .probe(ManualProbe::new(1 << 30))
        .interval(Duration::from_micros(999))
        .build()
        .unwrap_err()
        .to_string();
    assert_eq!(err, "interval must be at least 1ms, got 999µs");
    assert!(
        MemoryMonitor::builder()
            .probe(ManualProbe::new(1 << 30))
            .interval(Duration::from_millis(1))
            .build()
            .is_ok()
    );
}

#[test]
fn a_stall_threshold_must_be_a_percentage() {
    let (m, _) = monitor();
    for bad in [0.0, -1.0, 100.5, f64::NAN] {
        let err = MemoryGate::builder(&m)
            .stall_threshold(bad)
            .build()
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("stall_threshold must be a percentage in (0, 100], got"),
            "{err}"
        );
    }
    assert!(
        MemoryGate::builder(&m)
            .stall_threshold(100.0)
            .build()
            .is_ok()
    );
}
