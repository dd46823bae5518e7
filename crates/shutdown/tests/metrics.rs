//! The `metrics` feature: a coordinator emits the names and labels documented in
//! `docs/metrics.md`: its phase as it moves (read from inside a stop hook too),
//! the work in flight (counted here, back to 0 once every guard is gone, the one
//! of a cancelled task included), and what triggered it.
#![cfg(feature = "metrics")]

use std::future::pending;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use heijunka_core::cancel::Polled;
use heijunka_core::metrics::TestRecorder;
use heijunka_shutdown::{Phase, Shutdown};

use heijunka_core::metrics::MetricKey as Key;

use heijunka_core::metrics::metric_key as key;

fn documented_keys(name: &str) -> Vec<Key> {
    let mut keys = vec![
        key("heijunka_shutdown_phase", &[("name", name)]),
        key("heijunka_shutdown_in_flight", &[("name", name)]),
    ];
    for reason in ["call", "signal", "parent"] {
        keys.push(key(
            "heijunka_shutdown_triggered_total",
            &[("name", name), ("reason", reason)],
        ));
    }
    keys.sort();
    keys
}

/// The documented numbers of `heijunka_shutdown_phase`.
fn code(phase: Phase) -> f64 {
    match phase {
        Phase::Running => 0.0,
        Phase::Draining => 1.0,
        Phase::Stopping => 2.0,
        Phase::Stopped => 3.0,
        Phase::Forced => 4.0,
    }
}

#[derive(Clone)]
struct Read {
    rec: TestRecorder,
    name: &'static str,
}

impl Read {
    fn phase(&self) -> f64 {
        self.rec
            .gauge("heijunka_shutdown_phase", &[("name", self.name)])
            .expect("registered")
    }
    fn in_flight(&self) -> f64 {
        self.rec
            .gauge("heijunka_shutdown_in_flight", &[("name", self.name)])
            .expect("registered")
    }
    fn triggered(&self, reason: &str) -> u64 {
        self.rec
            .counter(
                "heijunka_shutdown_triggered_total",
                &[("name", self.name), ("reason", reason)],
            )
            .expect("registered")
    }
}

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime")
}

#[test]
fn phase_moves_running_draining_stopping_stopped_and_in_flight_drains_to_zero() {
    let rt = paused_runtime();
    let rec = TestRecorder::new();
    let shutdown = rec
        .scoped(|| {
            Shutdown::builder()
                .name("srv")
                .grace_period(Duration::from_secs(10))
                .build()
        })
        .unwrap();
    assert_eq!(rec.keys(), documented_keys("srv"));
    let m = Read {
        rec: rec.clone(),
        name: "srv",
    };
    assert_eq!((m.phase(), m.in_flight()), (code(Phase::Running), 0.0));

    // The phase a stop hook sees, read from inside it.
    let in_hook = Arc::new(Mutex::new(None));
    {
        let (m, in_hook) = (m.clone(), Arc::clone(&in_hook));
        shutdown
            .on_stop("recorder", move || async move {
                *in_hook.lock().unwrap() = Some((m.phase(), m.in_flight()));
                Ok::<_, std::io::Error>(())
            })
            .unwrap();
    }

    rt.block_on(async {
        // Work in flight, counted here: a guard, an owned guard, a tracked task,
        // and a task holding a guard that will be cancelled.
        let guard = shutdown.try_enter().unwrap();
        let owned = shutdown.try_enter_owned().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let tracked = shutdown
            .spawn(async move {
                let _ = rx.await;
            })
            .unwrap();
        let held = shutdown.try_enter_owned().unwrap();
        let cancelled = tokio::spawn(async move {
            let _held = held;
            pending::<()>().await
        });
        tokio::task::yield_now().await;
        assert_eq!(m.in_flight(), 4.0);
        // A cancelled future that had entered.
        let mut entered = Polled::new(async {
            let _g = shutdown.try_enter().unwrap();
            pending::<()>().await
        });
        assert!(!entered.poll());
        assert_eq!(m.in_flight(), 5.0);
        drop(entered);
        assert_eq!(m.in_flight(), 4.0);

        assert!(shutdown.trigger());
        assert!(!shutdown.trigger(), "once");
        assert_eq!(m.phase(), code(Phase::Draining));
        assert_eq!(m.triggered("call"), 1);
        assert!(shutdown.try_enter().is_err());
        assert_eq!(m.in_flight(), 4.0, "a refused entry is not in flight");

        // Still draining while work is in flight, however long it takes (up to
        // the grace period).
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(m.phase(), code(Phase::Draining));
        drop(guard);
        drop(owned);
        assert_eq!(m.in_flight(), 2.0);
        cancelled.abort();
        assert!(cancelled.await.unwrap_err().is_cancelled());
        assert_eq!(m.in_flight(), 1.0, "the cancelled task's guard is gone");
        assert_eq!(m.phase(), code(Phase::Draining));
        tx.send(()).unwrap();
        tracked.await.unwrap();
        assert_eq!(m.in_flight(), 0.0);

        let report = shutdown.wait().await;
        assert!(report.is_clean());
        assert_eq!(report.in_flight_at_trigger, 4);
    });
    assert_eq!(
        *in_hook.lock().unwrap(),
        Some((code(Phase::Stopping), 0.0)),
        "the hooks run in the stopping phase, after the drain"
    );
    assert_eq!(m.phase(), code(Phase::Stopped));
    assert_eq!(shutdown.phase(), Phase::Stopped);
    assert_eq!(m.in_flight(), 0.0);
    assert_eq!((m.triggered("signal"), m.triggered("parent")), (0, 0));
}

#[test]
fn a_forced_shutdown_ends_in_the_forced_phase_and_children_count_their_parent() {
    let rt = paused_runtime();
    let rec = TestRecorder::new();
    let (parent, child) = rec.scoped(|| {
        let parent = Shutdown::builder().name("parent").build().unwrap();
        let child = parent
            .child_with(Shutdown::builder().name("child"))
            .unwrap();
        (parent, child)
    });
    let mut expected = documented_keys("parent");
    expected.extend(documented_keys("child"));
    expected.sort();
    assert_eq!(rec.keys(), expected);
    let p = Read {
        rec: rec.clone(),
        name: "parent",
    };
    let c = Read {
        rec: rec.clone(),
        name: "child",
    };
    rt.block_on(async {
        let _stuck = parent.try_enter().unwrap();
        let _child_work = child.try_enter().unwrap();
        assert_eq!((p.in_flight(), c.in_flight()), (1.0, 1.0));
        parent.force();
        assert_eq!((p.triggered("call"), p.triggered("parent")), (1, 0));
        assert_eq!((c.triggered("call"), c.triggered("parent")), (0, 1));
        let report = parent.wait().await;
        assert!(!report.is_clean());
        assert_eq!(p.phase(), code(Phase::Forced));
        assert_eq!(p.phase(), code(parent.phase()));
        child.wait().await;
        assert_eq!(c.phase(), code(child.phase()));
    });
}

#[test]
fn without_a_name_the_label_is_default() {
    let rec = TestRecorder::new();
    let shutdown = rec.scoped(Shutdown::new);
    assert_eq!(rec.keys(), documented_keys("default"));
    let _g = shutdown.try_enter().unwrap();
    assert_eq!(
        rec.gauge("heijunka_shutdown_in_flight", &[("name", "default")]),
        Some(1.0)
    );
}
