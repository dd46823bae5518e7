//! Metric handles the heijunka crates emit through, and the one place that knows
//! the [`metrics`](https://docs.rs/metrics) facade.
//!
//! Each crate with a `metrics` feature registers its handles once, when the
//! component is built, from whatever recorder is installed then (the global one,
//! or a thread-local one set with `metrics::with_local_recorder`), and updates
//! them on its hot paths: an update is one atomic operation in the recorder's
//! storage, never a lookup by name. **Install the recorder before building the
//! components**: a component built before any recorder was installed emits
//! nothing.
//!
//! Without this crate's `metrics` feature the handles are zero-sized and every
//! update compiles to nothing. With it, a handle registered while no recorder
//! is installed (or by a crate whose own `metrics` feature is off) is a no-op: one
//! branch.
//!
//! ```
//! use heijunka_core::metrics::{Unit, counter, gauge};
//!
//! // When the component is built: one registration per series.
//! let refused = counter("my_refused_total", Unit::Count, "Refusals.", &[("name", "api")]);
//! let depth = gauge("my_queue_depth", Unit::Count, "Items queued.", &[("name", "api")]);
//! // On its hot path: one atomic update each (nothing without the feature, or
//! // when no recorder was installed at registration).
//! refused.increment(1);
//! depth.increment(1.0);
//! depth.decrement(1.0);
//! ```
//!
//! The names follow Prometheus conventions (`heijunka_<component>_<what>`, with
//! `_total` on counters and the unit as a suffix: `_seconds`, `_bytes`). The
//! full table of names, types and labels is in `docs/metrics.md`.

use std::fmt;
use std::time::Duration;

/// The unit a metric is described with (the Prometheus exporter puts it in the
/// `HELP` text and some exporters in the name).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Unit {
    /// A count of things (requests, tasks, events).
    Count,
    /// Seconds (histograms of latency are recorded in seconds).
    Seconds,
    /// Bytes.
    Bytes,
    /// A ratio in 0..=1 (described without a unit: the `metrics` crate has
    /// none for it, and its `Percent` means 0..=100).
    Ratio,
}

#[cfg(feature = "metrics")]
impl Unit {
    fn to_metrics(self) -> Option<metrics::Unit> {
        match self {
            Unit::Count => Some(metrics::Unit::Count),
            Unit::Seconds => Some(metrics::Unit::Seconds),
            Unit::Bytes => Some(metrics::Unit::Bytes),
            Unit::Ratio => None,
        }
    }
}

/// Describes a metric with the recorder installed now, with its unit if it has
/// one.
#[cfg(feature = "metrics")]
fn describe(
    kind: fn(
        &dyn metrics::Recorder,
        metrics::KeyName,
        Option<metrics::Unit>,
        metrics::SharedString,
    ),
    name: &'static str,
    unit: Unit,
    help: &'static str,
) {
    metrics::with_recorder(|r| {
        kind(
            r,
            metrics::KeyName::from_const_str(name),
            unit.to_metrics(),
            help.into(),
        )
    });
}

/// A monotonic counter (`*_total`).
#[derive(Clone)]
pub struct Counter {
    #[cfg(feature = "metrics")]
    inner: metrics::Counter,
}

/// A value that goes up and down (depth, in flight, state).
#[derive(Clone)]
pub struct Gauge {
    #[cfg(feature = "metrics")]
    inner: metrics::Gauge,
}

/// A distribution of values (latency, in seconds).
#[derive(Clone)]
pub struct Histogram {
    #[cfg(feature = "metrics")]
    inner: metrics::Histogram,
}

impl Counter {
    /// A counter that records nothing.
    #[must_use]
    pub fn noop() -> Self {
        Self {
            #[cfg(feature = "metrics")]
            inner: metrics::Counter::noop(),
        }
    }

    /// Adds `n`.
    #[inline]
    pub fn increment(&self, n: u64) {
        #[cfg(feature = "metrics")]
        self.inner.increment(n);
        #[cfg(not(feature = "metrics"))]
        let _ = n;
    }

    /// Sets the counter to `n` if `n` is larger (for counts kept elsewhere and
    /// published as they are).
    #[inline]
    pub fn absolute(&self, n: u64) {
        #[cfg(feature = "metrics")]
        self.inner.absolute(n);
        #[cfg(not(feature = "metrics"))]
        let _ = n;
    }
}

impl Gauge {
    /// A gauge that records nothing.
    #[must_use]
    pub fn noop() -> Self {
        Self {
            #[cfg(feature = "metrics")]
            inner: metrics::Gauge::noop(),
        }
    }

    /// Sets the value.
    #[inline]
    pub fn set(&self, value: f64) {
        #[cfg(feature = "metrics")]
        self.inner.set(value);
        #[cfg(not(feature = "metrics"))]
        let _ = value;
    }

    /// Adds `delta`.
    #[inline]
    pub fn increment(&self, delta: f64) {
        #[cfg(feature = "metrics")]
        self.inner.increment(delta);
        #[cfg(not(feature = "metrics"))]
        let _ = delta;
    }

    /// Subtracts `delta`.
    #[inline]
    pub fn decrement(&self, delta: f64) {
        #[cfg(feature = "metrics")]
        self.inner.decrement(delta);
        #[cfg(not(feature = "metrics"))]
        let _ = delta;
    }
}

impl Histogram {
    /// A histogram that records nothing.
    #[must_use]
    pub fn noop() -> Self {
        Self {
            #[cfg(feature = "metrics")]
            inner: metrics::Histogram::noop(),
        }
    }

    /// Records one value.
    #[inline]
    pub fn record(&self, value: f64) {
        #[cfg(feature = "metrics")]
        self.inner.record(value);
        #[cfg(not(feature = "metrics"))]
        let _ = value;
    }

    /// Records a duration, in seconds.
    #[inline]
    pub fn record_duration(&self, value: Duration) {
        self.record(value.as_secs_f64());
    }
}

macro_rules! debug_handle {
    ($($ty:ident),*) => {$(
        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(stringify!($ty))
            }
        }
    )*};
}
debug_handle!(Counter, Gauge, Histogram);

macro_rules! default_noop {
    ($($ty:ident),*) => {$(
        impl Default for $ty {
            fn default() -> Self {
                Self::noop()
            }
        }
    )*};
}
default_noop!(Counter, Gauge, Histogram);

/// Labels of one metric: `(key, value)` pairs.
pub type Labels<'a> = &'a [(&'static str, &'a str)];

#[cfg(feature = "metrics")]
fn labels(labels: Labels<'_>) -> Vec<metrics::Label> {
    labels
        .iter()
        .map(|(k, v)| metrics::Label::new(*k, (*v).to_owned()))
        .collect()
}

/// Describes and registers a counter with the recorder installed now.
#[must_use]
pub fn counter(name: &'static str, unit: Unit, help: &'static str, l: Labels<'_>) -> Counter {
    #[cfg(feature = "metrics")]
    {
        describe(|r, k, u, h| r.describe_counter(k, u, h), name, unit, help);
        Counter {
            inner: metrics::counter!(name, labels(l)),
        }
    }
    #[cfg(not(feature = "metrics"))]
    {
        let _ = (name, unit, help, l);
        Counter::noop()
    }
}

/// Describes and registers a gauge with the recorder installed now.
#[must_use]
pub fn gauge(name: &'static str, unit: Unit, help: &'static str, l: Labels<'_>) -> Gauge {
    #[cfg(feature = "metrics")]
    {
        describe(|r, k, u, h| r.describe_gauge(k, u, h), name, unit, help);
        Gauge {
            inner: metrics::gauge!(name, labels(l)),
        }
    }
    #[cfg(not(feature = "metrics"))]
    {
        let _ = (name, unit, help, l);
        Gauge::noop()
    }
}

/// Describes and registers a histogram with the recorder installed now.
#[must_use]
pub fn histogram(name: &'static str, unit: Unit, help: &'static str, l: Labels<'_>) -> Histogram {
    #[cfg(feature = "metrics")]
    {
        describe(|r, k, u, h| r.describe_histogram(k, u, h), name, unit, help);
        Histogram {
            inner: metrics::histogram!(name, labels(l)),
        }
    }
    #[cfg(not(feature = "metrics"))]
    {
        let _ = (name, unit, help, l);
        Histogram::noop()
    }
}

#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub use self::testing::{MetricKey, TestRecorder, metric_key};

#[cfg(feature = "test-util")]
mod testing {
    use std::collections::HashMap;
    use std::sync::atomic::Ordering;
    use std::sync::{Arc, Mutex, PoisonError};

    use metrics::atomics::AtomicU64;
    use metrics::{HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit};
    use metrics_util::registry::{Registry, Storage};

    /// Counters and gauges in atomics, histograms as every value in a vector
    /// (plain, not `metrics_util`'s epoch-based bucket: the tests run under
    /// miri's strict provenance, which crossbeam-epoch's pointer tagging fails).
    #[derive(Debug)]
    struct TestStorage;

    /// Every value recorded into one histogram.
    #[derive(Debug, Default)]
    struct Samples(Mutex<Vec<f64>>);

    impl HistogramFn for Samples {
        fn record(&self, value: f64) {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(value);
        }
    }

    impl Storage<Key> for TestStorage {
        type Counter = Arc<AtomicU64>;
        type Gauge = Arc<AtomicU64>;
        type Histogram = Arc<Samples>;

        fn counter(&self, _: &Key) -> Self::Counter {
            Arc::new(AtomicU64::new(0))
        }

        fn gauge(&self, _: &Key) -> Self::Gauge {
            Arc::new(AtomicU64::new(0))
        }

        fn histogram(&self, _: &Key) -> Self::Histogram {
            Arc::new(Samples::default())
        }
    }

    /// A recorder for tests: it keeps every value (reading does not reset it, unlike
    /// `metrics_util`'s debugging recorder), so a test can read a gauge, act, and
    /// read it again.
    ///
    /// Use it for one component without touching the global recorder:
    /// [`TestRecorder::scoped`] installs it on the current thread while the closure
    /// builds the component; the handles registered then keep recording into it
    /// from any thread.
    ///
    /// ```
    /// use heijunka_core::metrics::{TestRecorder, Unit, counter, metric_key};
    ///
    /// let rec = TestRecorder::new();
    /// // Registered while the recorder is installed on this thread...
    /// let hits = rec.scoped(|| counter("hits_total", Unit::Count, "Hits.", &[("name", "a")]));
    /// // ...it records into it from anywhere afterwards.
    /// std::thread::spawn(move || hits.increment(2)).join().unwrap();
    /// assert_eq!(rec.counter("hits_total", &[("name", "a")]), Some(2));
    /// assert_eq!(rec.keys(), [metric_key("hits_total", &[("name", "a")])]);
    /// assert_eq!(rec.help("hits_total").as_deref(), Some("Hits."));
    /// ```
    #[derive(Clone)]
    pub struct TestRecorder {
        inner: Arc<Inner>,
    }

    struct Inner {
        registry: Registry<Key, TestStorage>,
        help: Mutex<HashMap<String, String>>,
    }

    impl std::fmt::Debug for TestRecorder {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("TestRecorder").finish_non_exhaustive()
        }
    }

    /// A metric as [`TestRecorder::keys`] lists it: its name and its labels,
    /// sorted.
    pub type MetricKey = (String, Vec<(String, String)>);

    /// The [`MetricKey`] of `name` with `labels` (in any order), to compare with
    /// [`TestRecorder::keys`].
    #[must_use]
    pub fn metric_key(name: &str, labels: &[(&str, &str)]) -> MetricKey {
        let mut labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        labels.sort();
        (name.to_owned(), labels)
    }

    impl Default for TestRecorder {
        fn default() -> Self {
            Self::new()
        }
    }

    fn matches(key: &Key, name: &str, labels: &[(&str, &str)]) -> bool {
        key.name() == name
            && key.labels().count() == labels.len()
            && labels
                .iter()
                .all(|(k, v)| key.labels().any(|l| l.key() == *k && l.value() == *v))
    }

    impl TestRecorder {
        /// An empty recorder.
        #[must_use]
        pub fn new() -> Self {
            Self {
                inner: Arc::new(Inner {
                    registry: Registry::new(TestStorage),
                    help: Mutex::new(HashMap::new()),
                }),
            }
        }

        /// Runs `f` with this recorder installed on the current thread.
        pub fn scoped<T>(&self, f: impl FnOnce() -> T) -> T {
            metrics::with_local_recorder(self, f)
        }

        /// The counter `name` with exactly these labels (any order), if registered.
        #[must_use]
        pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
            let mut found = None;
            self.inner.registry.visit_counters(|key, c| {
                if matches(key, name, labels) {
                    found = Some(c.load(Ordering::SeqCst));
                }
            });
            found
        }

        /// The gauge `name` with exactly these labels, if registered.
        #[must_use]
        pub fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
            let mut found = None;
            self.inner.registry.visit_gauges(|key, g| {
                if matches(key, name, labels) {
                    found = Some(f64::from_bits(g.load(Ordering::SeqCst)));
                }
            });
            found
        }

        /// Every value recorded into the histogram `name` with exactly these
        /// labels, if registered.
        #[must_use]
        pub fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Option<Vec<f64>> {
            let mut found = None;
            self.inner.registry.visit_histograms(|key, h| {
                if matches(key, name, labels) {
                    found = Some(h.0.lock().unwrap_or_else(PoisonError::into_inner).clone());
                }
            });
            found
        }

        /// The sum of the counter `name` over every label set.
        #[must_use]
        pub fn counter_sum(&self, name: &str) -> u64 {
            let mut sum = 0;
            self.inner.registry.visit_counters(|key, c| {
                if key.name() == name {
                    sum += c.load(Ordering::SeqCst);
                }
            });
            sum
        }

        /// Every registered metric: `(name, sorted labels)`, sorted.
        #[must_use]
        pub fn keys(&self) -> Vec<MetricKey> {
            let mut keys = Vec::new();
            let mut push = |key: &Key| {
                let mut labels: Vec<(String, String)> = key
                    .labels()
                    .map(|l| (l.key().to_owned(), l.value().to_owned()))
                    .collect();
                labels.sort();
                keys.push((key.name().to_owned(), labels));
            };
            self.inner.registry.visit_counters(|k, _| push(k));
            self.inner.registry.visit_gauges(|k, _| push(k));
            self.inner.registry.visit_histograms(|k, _| push(k));
            keys.sort();
            keys.dedup();
            keys
        }

        /// The help text `name` was described with.
        #[must_use]
        pub fn help(&self, name: &str) -> Option<String> {
            self.inner
                .help
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(name)
                .cloned()
        }

        fn describe(&self, key: KeyName, help: SharedString) {
            self.inner
                .help
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(key.as_str().to_owned(), help.into_owned());
        }
    }

    impl Recorder for TestRecorder {
        fn describe_counter(&self, key: KeyName, _: Option<Unit>, help: SharedString) {
            self.describe(key, help);
        }

        fn describe_gauge(&self, key: KeyName, _: Option<Unit>, help: SharedString) {
            self.describe(key, help);
        }

        fn describe_histogram(&self, key: KeyName, _: Option<Unit>, help: SharedString) {
            self.describe(key, help);
        }

        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> metrics::Counter {
            self.inner
                .registry
                .get_or_create_counter(key, |c| metrics::Counter::from_arc(Arc::clone(c)))
        }

        fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> metrics::Gauge {
            self.inner
                .registry
                .get_or_create_gauge(key, |g| metrics::Gauge::from_arc(Arc::clone(g)))
        }

        fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> metrics::Histogram {
            self.inner
                .registry
                .get_or_create_histogram(key, |h| metrics::Histogram::from_arc(Arc::clone(h)))
        }
    }
}

#[cfg(all(test, feature = "test-util"))]
mod tests {
    use super::*;

    #[test]
    fn handles_registered_in_scope_keep_recording_outside_it() {
        let recorder = TestRecorder::new();
        let (c, g, h) = recorder.scoped(|| {
            (
                counter("t_total", Unit::Count, "a counter", &[("name", "x")]),
                gauge("t_depth", Unit::Count, "a gauge", &[("name", "x")]),
                histogram("t_seconds", Unit::Seconds, "a histogram", &[]),
            )
        });
        std::thread::spawn(move || {
            c.increment(2);
            g.increment(3.0);
            g.decrement(1.0);
            h.record_duration(Duration::from_millis(1500));
        })
        .join()
        .expect("no panic");
        assert_eq!(recorder.counter("t_total", &[("name", "x")]), Some(2));
        assert_eq!(recorder.counter("t_total", &[]), None);
        assert_eq!(recorder.gauge("t_depth", &[("name", "x")]), Some(2.0));
        assert_eq!(recorder.histogram("t_seconds", &[]), Some(vec![1.5]));
        assert_eq!(recorder.help("t_total").as_deref(), Some("a counter"));
        // Reading does not reset.
        assert_eq!(recorder.counter("t_total", &[("name", "x")]), Some(2));
    }

    #[test]
    fn without_a_recorder_handles_are_noops() {
        let c = counter("t2_total", Unit::Count, "a counter", &[]);
        c.increment(1);
    }
}
