//! The monitor's and gate's metrics (feature `metrics`): the documented names and
//! labels, and values checked after each sample against a reference model of the
//! thresholds with hysteresis.
#![cfg(all(feature = "metrics", not(loom)))]

use heijunka_core::PressureLevel::{self, Critical, Elevated, Normal};
use heijunka_core::metrics::TestRecorder;
use heijunka_memory::{ManualProbe, MemoryGate, MemoryMonitor, SampleError};

const LIMIT: u64 = 1_000;

use heijunka_core::metrics::metric_key as key;

fn documented_monitor(name: &str) -> Vec<(String, Vec<(String, String)>)> {
    let n = [("name", name)];
    let mut keys = vec![
        key("heijunka_memory_level", &n),
        key("heijunka_memory_usage_bytes", &n),
        key("heijunka_memory_limit_bytes", &n),
        key("heijunka_memory_usage_ratio", &n),
        key("heijunka_memory_sample_errors_total", &n),
    ];
    for to in ["normal", "elevated", "critical"] {
        keys.push(key(
            "heijunka_memory_level_changes_total",
            &[("name", name), ("to", to)],
        ));
    }
    keys.sort();
    keys
}

/// The spec of the levels (crate docs, `Thresholds`): rise at 80 % / 90 %, fall
/// only below the threshold less 5 points.
fn model(current: PressureLevel, used: u64) -> PressureLevel {
    let pct = used * 100 / LIMIT;
    let rising = if pct >= 90 {
        Critical
    } else if pct >= 80 {
        Elevated
    } else {
        Normal
    };
    if rising > current {
        return rising;
    }
    let falling = if pct >= 85 {
        Critical
    } else if pct >= 75 {
        Elevated
    } else {
        Normal
    };
    current.min(falling)
}

fn gauge(rec: &TestRecorder, metric: &str, name: &str) -> f64 {
    rec.gauge(metric, &[("name", name)])
        .unwrap_or_else(|| panic!("{metric} not registered"))
}

fn changes(rec: &TestRecorder, name: &str, to: &str) -> u64 {
    rec.counter(
        "heijunka_memory_level_changes_total",
        &[("name", name), ("to", to)],
    )
    .unwrap_or_else(|| panic!("changes to {to} not registered"))
}

#[test]
fn gauges_follow_each_sample_and_changes_count_by_level_reached() {
    let rec = TestRecorder::new();
    let probe = ManualProbe::new(1 << 40);
    let m = rec
        .scoped(|| {
            MemoryMonitor::builder()
                .limit(LIMIT)
                .probe(probe.clone())
                .name("heap")
                .build()
        })
        .unwrap();
    assert_eq!(rec.keys(), documented_monitor("heap"));
    // The build's first sample (0 bytes) already set the gauges.
    assert_eq!(gauge(&rec, "heijunka_memory_limit_bytes", "heap"), 1_000.0);
    assert_eq!(gauge(&rec, "heijunka_memory_level", "heap"), 0.0);
    let mut level = Normal;
    let mut want = [0_u64; 3];
    let steps = [
        799, 800, 760, 751, 749, 900, 851, 849, 1_200, 0, 950, 820, 700,
    ];
    for used in steps {
        probe.set_rss(used);
        m.sample_now().unwrap();
        let next = model(level, used);
        if next != level {
            want[usize::from(next.as_u8())] += 1;
        }
        level = next;
        assert_eq!(m.pressure(), level, "used {used}");
        // Normal 0, elevated 1, critical 2.
        let number = match level {
            Normal => 0.0,
            Elevated => 1.0,
            Critical => 2.0,
        };
        assert_eq!(
            gauge(&rec, "heijunka_memory_level", "heap"),
            number,
            "used {used}"
        );
        assert_eq!(
            gauge(&rec, "heijunka_memory_usage_bytes", "heap"),
            used as f64
        );
        assert_eq!(gauge(&rec, "heijunka_memory_limit_bytes", "heap"), 1_000.0);
        let ratio = gauge(&rec, "heijunka_memory_usage_ratio", "heap");
        assert!(
            (ratio - used as f64 / 1_000.0).abs() < 1e-12,
            "ratio {ratio}"
        );
        assert_eq!(
            [
                changes(&rec, "heap", "normal"),
                changes(&rec, "heap", "elevated"),
                changes(&rec, "heap", "critical"),
            ],
            want,
            "used {used}"
        );
    }
    // The walk crossed every level both ways, and skipped one (normal to
    // critical at 950): one change, counted under the level reached.
    assert!(want.iter().all(|&n| n >= 2), "{want:?}");
    assert_eq!(
        rec.counter("heijunka_memory_sample_errors_total", &[("name", "heap")]),
        Some(0)
    );
    assert_eq!(rec.keys(), documented_monitor("heap"));
}

#[test]
fn a_failed_sample_is_counted_and_keeps_the_gauges() {
    let rec = TestRecorder::new();
    // No configured limit: the system total is the limit.
    let probe = ManualProbe::new(1_000);
    // Unnamed: the label is "default".
    let m = rec
        .scoped(|| MemoryMonitor::builder().probe(probe.clone()).build())
        .unwrap();
    probe.set_rss(950);
    m.sample_now().unwrap();
    probe.set_system_total(0);
    assert_eq!(m.sample_now().unwrap_err(), SampleError::NoLimit);
    assert_eq!(
        rec.counter(
            "heijunka_memory_sample_errors_total",
            &[("name", "default")]
        ),
        Some(1)
    );
    assert_eq!(gauge(&rec, "heijunka_memory_level", "default"), 2.0);
    assert_eq!(gauge(&rec, "heijunka_memory_usage_bytes", "default"), 950.0);
    assert_eq!(changes(&rec, "default", "critical"), 1);
}

#[test]
fn a_gate_counts_every_rejection_and_nothing_else() {
    let rec = TestRecorder::new();
    let probe = ManualProbe::new(1 << 40);
    let (m, gate) = rec.scoped(|| {
        let m = MemoryMonitor::builder()
            .limit(LIMIT)
            .probe(probe.clone())
            .name("m")
            .build()
            .unwrap();
        let gate = MemoryGate::builder(&m)
            .large_request_bytes(100)
            .name("uploads")
            .build()
            .unwrap();
        (m, gate)
    });
    let mut keys = documented_monitor("m");
    keys.push(key(
        "heijunka_memory_gate_rejected_total",
        &[("name", "uploads")],
    ));
    keys.sort();
    assert_eq!(rec.keys(), keys);
    let rejected = || {
        rec.counter(
            "heijunka_memory_gate_rejected_total",
            &[("name", "uploads")],
        )
        .unwrap()
    };
    let mut refused = 0;
    let try_all = |refused: &mut u64| {
        for r in [gate.check(), gate.check_size(10), gate.check_size(1_000)] {
            *refused += u64::from(r.is_err());
        }
    };
    // Normal: all admitted.
    try_all(&mut refused);
    assert_eq!((refused, rejected()), (0, 0));
    // Elevated: the large one is refused.
    probe.set_rss(850);
    m.sample_now().unwrap();
    try_all(&mut refused);
    assert_eq!((refused, rejected()), (1, 1));
    // Critical: all refused.
    probe.set_rss(950);
    m.sample_now().unwrap();
    try_all(&mut refused);
    assert_eq!((refused, rejected()), (4, 4));
    // The load-shedder signal counts nothing.
    assert!(gate.rejection().is_some());
    assert_eq!(rejected(), 4);
    assert_eq!(gate.stats().rejected + gate.stats().rejected_large, 4);
}
