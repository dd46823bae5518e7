//! The overload demo (`cargo xtask demo`): the same HTTP service run twice through
//! the same storm, once as plain axum and once behind heijunka's policy.
//!
//! The service (axum on 127.0.0.1, an OS-chosen port) answers each request by
//! calling a simulated downstream dependency in the same process: a service with
//! 10 workers and 20 ms per call (500 calls per second), which slows down when
//! more calls pile up than it has workers (up to 2x, as real services thrash), and
//! gives up on calls queued longer than 2 s. A built-in open-loop load generator
//! (hyper client, arrivals at a fixed rate whatever the answers, every request
//! bounded by a 1 s client time-out, at most 800 in flight) drives it through:
//!
//! | phase | rate | what happens |
//! | --- | --- | --- |
//! | calm | 200/s | well under capacity |
//! | burst | 2000/s | 10x: four times what the dependency can do |
//! | outage | 200/s | every dependency call hangs 1.5 s, then fails |
//! | recovery | 200/s | the dependency is healthy again |
//! | shutdown | 200/s | halfway through, the process sends itself SIGTERM and shuts down gracefully |
//!
//! The protected run puts one [`PolicyLayer`] in front of the handler: a 250 ms
//! time-out, a rate limit (400/s, bursts of 40), a concurrency limit of 12 (the
//! dependency's workers plus a little) and a circuit breaker on the dependency's
//! answers, with rejections answered as 429 / 503 with `Retry-After`.
//!
//! Both runs use heijunka-shutdown for SIGTERM (stop accepting, drain in-flight
//! requests, report), so both print a shutdown report; the unprotected run has no
//! other heijunka part.
//!
//! Each run is a child process of its own (so peak RSS is its own); the parent
//! prints the table per phase and writes `target/heijunka-demo/report.html` with
//! the p99 latency and throughput per second of both runs.
//!
//! ```text
//! cargo run --release -p heijunka --example overload            # about 50 s
//! cargo run --release -p heijunka --example overload -- --quick # about 15 s, for CI
//! ```
//!
//! With `--quick` (shorter phases, 100/s calm, 1000/s burst) it exits non-zero
//! unless the protected run's p99 latency in the burst is below the unprotected
//! run's. `--out PATH` writes the report elsewhere.

use std::process::ExitCode;

/// Without the `tower` feature there is no `PolicyLayer` to show.
#[cfg(not(feature = "tower"))]
fn main() -> ExitCode {
    eprintln!("the overload demo needs the `tower` feature: --features tower");
    ExitCode::FAILURE
}

#[cfg(feature = "tower")]
use demo::{Mode, child, parent};

#[cfg(feature = "tower")]
mod demo {
    use std::fmt::Write as _;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use axum::Router;
    use axum::body::Bytes;
    use axum::error_handling::HandleErrorLayer;
    use axum::extract::State;
    use axum::http::StatusCode;
    use axum::routing::get;
    use hdrhistogram::Histogram;
    use heijunka::backpressure::{ConcurrencyLimit, Gcra};
    use heijunka::breaker::{CircuitBreaker, SlidingWindowType};
    use heijunka::policy::Policy;
    use heijunka::shutdown::Shutdown;
    use heijunka::tower::{PolicyLayer, handle_error};
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::TokioExecutor;
    use serde_json::{Value, json};
    use tokio::sync::Semaphore;
    use tokio::time::Instant;
    use tower::ServiceBuilder;

    pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

    // ---------------------------------------------------------------------------
    // The scenario
    // ---------------------------------------------------------------------------

    /// One phase of the storm.
    #[derive(Clone, Copy, Debug)]
    struct Phase {
        name: &'static str,
        secs: f64,
        rate: f64,
        outage: bool,
        sigterm: bool,
    }

    /// Everything both runs share.
    #[derive(Clone, Debug)]
    struct Scenario {
        phases: Vec<Phase>,
        /// Width of a time-series bucket.
        bucket: Duration,
        client_timeout: Duration,
        max_in_flight: usize,
        downstream_workers: u32,
        downstream_service: Duration,
        downstream_queue_timeout: Duration,
        outage_hang: Duration,
        grace: Duration,
        policy_timeout: Duration,
        policy_rate: f64,
        policy_burst: u32,
        policy_limit: u32,
        breaker_open: Duration,
    }

    impl Scenario {
        fn new(quick: bool) -> Self {
            let (calm, burst) = if quick {
                (100.0, 1000.0)
            } else {
                (200.0, 2000.0)
            };
            let secs = |full: f64, short: f64| if quick { short } else { full };
            let phase = |name, secs, rate, outage, sigterm| Phase {
                name,
                secs,
                rate,
                outage,
                sigterm,
            };
            Self {
                phases: vec![
                    phase("calm", secs(5.0, 1.0), calm, false, false),
                    phase("burst", secs(6.0, 2.0), burst, false, false),
                    phase("outage", secs(5.0, 1.2), calm, true, false),
                    phase("recovery", secs(5.0, 1.2), calm, false, false),
                    phase("shutdown", secs(1.0, 0.5), calm, false, true),
                ],
                bucket: if quick {
                    Duration::from_millis(250)
                } else {
                    Duration::from_secs(1)
                },
                client_timeout: Duration::from_secs(1),
                max_in_flight: if quick { 500 } else { 800 },
                downstream_workers: 10,
                downstream_service: Duration::from_millis(20),
                downstream_queue_timeout: Duration::from_secs(2),
                outage_hang: Duration::from_millis(1500),
                grace: Duration::from_secs(1),
                policy_timeout: Duration::from_millis(250),
                policy_rate: 400.0,
                policy_burst: 40,
                policy_limit: 12,
                breaker_open: if quick {
                    Duration::from_millis(300)
                } else {
                    Duration::from_secs(1)
                },
            }
        }

        fn total_secs(&self) -> f64 {
            self.phases.iter().map(|p| p.secs).sum()
        }
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(crate) enum Mode {
        Unprotected,
        Protected,
    }

    impl Mode {
        pub(crate) fn name(self) -> &'static str {
            match self {
                Mode::Unprotected => "unprotected",
                Mode::Protected => "heijunka",
            }
        }
    }

    // ---------------------------------------------------------------------------
    // The downstream dependency, simulated
    // ---------------------------------------------------------------------------

    /// A dependency with `workers` workers taking `service` per call; calls queue
    /// (FIFO) for a worker, the service time grows up to 2x with the queue beyond the
    /// workers (thrashing), calls queued longer than `queue_timeout` fail, and during
    /// an outage every call hangs for `hang` and fails.
    ///
    /// Each call runs as a task of its own: a caller that gives up does not take
    /// the call back from the dependency, as with a real remote service.
    #[derive(Clone)]
    struct Downstream {
        workers: Arc<Semaphore>,
        capacity: usize,
        in_system: Arc<AtomicUsize>,
        outage: Arc<AtomicBool>,
        service: Duration,
        queue_timeout: Duration,
        hang: Duration,
    }

    #[derive(Debug)]
    enum DownstreamError {
        Outage,
        Overloaded,
    }

    impl Downstream {
        fn new(s: &Scenario) -> Self {
            Self {
                workers: Arc::new(Semaphore::new(s.downstream_workers as usize)),
                capacity: s.downstream_workers as usize,
                in_system: Arc::new(AtomicUsize::new(0)),
                outage: Arc::new(AtomicBool::new(false)),
                service: s.downstream_service,
                queue_timeout: s.downstream_queue_timeout,
                hang: s.outage_hang,
            }
        }

        fn set_outage(&self, on: bool) {
            self.outage.store(on, Ordering::Relaxed);
        }

        async fn call(&self) -> Result<(), DownstreamError> {
            let this = self.clone();
            let task = tokio::spawn(async move {
                if this.outage.load(Ordering::Relaxed) {
                    tokio::time::sleep(this.hang).await;
                    return Err(DownstreamError::Outage);
                }
                let n = this.in_system.fetch_add(1, Ordering::Relaxed) + 1;
                let result = this.work(n).await;
                this.in_system.fetch_sub(1, Ordering::Relaxed);
                result
            });
            task.await.unwrap_or(Err(DownstreamError::Overloaded))
        }

        async fn work(&self, in_system: usize) -> Result<(), DownstreamError> {
            let Ok(Ok(_worker)) =
                tokio::time::timeout(self.queue_timeout, self.workers.acquire()).await
            else {
                return Err(DownstreamError::Overloaded);
            };
            let excess = in_system.saturating_sub(self.capacity) as f64;
            let slowdown = (1.0 + 0.5 * excess / self.capacity as f64).min(2.0);
            tokio::time::sleep(self.service.mul_f64(slowdown)).await;
            Ok(())
        }
    }

    // ---------------------------------------------------------------------------
    // The service
    // ---------------------------------------------------------------------------

    #[derive(Clone)]
    struct App {
        downstream: Downstream,
        shutdown: Shutdown,
    }

    async fn handler(State(app): State<App>) -> (StatusCode, &'static str) {
        // Graceful shutdown: in-flight requests are counted; none start after SIGTERM.
        let Ok(_in_flight) = app.shutdown.try_enter_owned() else {
            return (StatusCode::SERVICE_UNAVAILABLE, "shutting down");
        };
        match app.downstream.call().await {
            Ok(()) => (StatusCode::OK, "ok"),
            Err(DownstreamError::Outage) => (StatusCode::BAD_GATEWAY, "dependency failed"),
            Err(DownstreamError::Overloaded) => (StatusCode::BAD_GATEWAY, "dependency overloaded"),
        }
    }

    fn policy(s: &Scenario) -> Result<Policy, BoxError> {
        let breaker = CircuitBreaker::builder()
            .name("downstream")
            .sliding_window(SlidingWindowType::CountBased, 20)
            .minimum_number_of_calls(10)
            .failure_rate_threshold(0.5)
            .wait_duration_in_open_state(s.breaker_open)
            .permitted_number_of_calls_in_half_open_state(3)
            .build()?;
        Ok(Policy::builder()
            .timeout(s.policy_timeout)
            .rate_limiter(Gcra::builder(s.policy_rate).burst(s.policy_burst).build()?)
            .concurrency_limit(ConcurrencyLimit::new(s.policy_limit)?)
            .breaker(breaker)
            .build()?)
    }

    // ---------------------------------------------------------------------------
    // Measurements
    // ---------------------------------------------------------------------------

    /// How one request ended, as the client saw it.
    #[derive(Clone, Copy, Debug)]
    enum Outcome {
        Ok,
        /// A fast refusal: 429 or 503.
        Rejected,
        /// Any other error status, or a transport error.
        Error,
        /// No answer within the client time-out.
        Timeout,
        /// Not sent: the generator already had its maximum in flight.
        Dropped,
    }

    fn histogram() -> Histogram<u64> {
        // Microseconds, 1 us .. 60 s, 3 significant digits.
        Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant bounds are valid")
    }

    struct Counts {
        ok: Histogram<u64>,
        /// Every request's latency, as its client saw it (a time-out at the time-out).
        all: Histogram<u64>,
        rejected: u64,
        errors: u64,
        timeouts: u64,
        dropped: u64,
    }

    impl Counts {
        fn new() -> Self {
            Self {
                ok: histogram(),
                all: histogram(),
                rejected: 0,
                errors: 0,
                timeouts: 0,
                dropped: 0,
            }
        }

        fn record(&mut self, outcome: Outcome, latency: Duration) {
            let us = u64::try_from(latency.as_micros())
                .unwrap_or(u64::MAX)
                .max(1);
            self.all.saturating_record(us);
            match outcome {
                Outcome::Ok => self.ok.saturating_record(us),
                Outcome::Rejected => self.rejected += 1,
                Outcome::Error => self.errors += 1,
                Outcome::Timeout => self.timeouts += 1,
                Outcome::Dropped => self.dropped += 1,
            }
        }

        fn p_ms(&self, q: f64) -> Option<f64> {
            (!self.ok.is_empty()).then(|| self.ok.value_at_quantile(q) as f64 / 1000.0)
        }

        fn p_all_ms(&self, q: f64) -> Option<f64> {
            (!self.all.is_empty()).then(|| self.all.value_at_quantile(q) as f64 / 1000.0)
        }
    }

    struct Recorder {
        phases: Vec<Counts>,
        buckets: Vec<Counts>,
    }

    impl Recorder {
        fn record(&mut self, phase: usize, bucket: usize, outcome: Outcome, latency: Duration) {
            if let Some(c) = self.phases.get_mut(phase) {
                c.record(outcome, latency);
            }
            if let Some(c) = self.buckets.get_mut(bucket) {
                c.record(outcome, latency);
            }
        }
    }

    /// Peak resident set of this process (VmHWM), in KiB.
    fn peak_rss_kib() -> Option<u64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let kib = |key: &str| -> Option<u64> {
            let line = status.lines().find(|l| l.starts_with(key))?;
            line.split_whitespace().nth(1)?.parse().ok()
        };
        kib("VmHWM:").max(kib("VmRSS:"))
    }

    // ---------------------------------------------------------------------------
    // One run (a child process)
    // ---------------------------------------------------------------------------

    type HttpClient = Client<HttpConnector, Empty<Bytes>>;

    async fn one_request(client: &HttpClient, uri: &http::Uri) -> Outcome {
        let Ok(response) = client.get(uri.clone()).await else {
            return Outcome::Error;
        };
        let status = response.status();
        if response.into_body().collect().await.is_err() {
            return Outcome::Error;
        }
        match status {
            StatusCode::OK => Outcome::Ok,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => Outcome::Rejected,
            _ => Outcome::Error,
        }
    }

    async fn run(mode: Mode, s: Scenario) -> Result<Value, BoxError> {
        let shutdown = Shutdown::builder().grace_period(s.grace).build()?;
        shutdown.install_signal_handlers()?;
        let downstream = Downstream::new(&s);
        let app = App {
            downstream: downstream.clone(),
            shutdown: shutdown.clone(),
        };
        let router = Router::new().route("/", get(handler)).with_state(app);
        let (router, policy) = match mode {
            Mode::Unprotected => (router, None),
            Mode::Protected => {
                let policy = policy(&s)?;
                let layer = ServiceBuilder::new()
                    .layer(HandleErrorLayer::new(handle_error))
                    .layer(PolicyLayer::new(policy.clone()).shutdown(shutdown.token()));
                (router.layer(layer), Some(policy))
            }
        };

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let uri: http::Uri = format!("http://{}/", listener.local_addr()?).parse()?;
        let token = shutdown.token();
        let server = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move { token.triggered().await })
                .await
        });
        shutdown.on_stop_with_timeout("http server", s.grace, move || async move {
            server.await?.map_err(BoxError::from)
        })?;
        let report = tokio::spawn({
            let shutdown = shutdown.clone();
            async move { shutdown.wait().await }
        });

        let client: HttpClient = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(s.max_in_flight)
            .build_http();
        let buckets = (s.total_secs() / s.bucket.as_secs_f64()).ceil() as usize + 1;
        let recorder = Arc::new(Mutex::new(Recorder {
            phases: s.phases.iter().map(|_| Counts::new()).collect(),
            buckets: (0..buckets).map(|_| Counts::new()).collect(),
        }));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let record = |phase: usize, bucket: usize, outcome: Outcome, latency: Duration| {
            recorder
                .lock()
                .expect("no panics while recording")
                .record(phase, bucket, outcome, latency);
        };

        let start = Instant::now();
        let mut phase_start = start;
        let mut ends = Vec::new();
        let mut peak_rss = 0;
        for (i, phase) in s.phases.iter().enumerate() {
            downstream.set_outage(phase.outage);
            let end = phase_start + Duration::from_secs_f64(phase.secs);
            // Halfway through the shutdown phase: a real SIGTERM to this process,
            // caught by the handlers installed above.
            let mut sigterm_at = phase
                .sigterm
                .then(|| phase_start + Duration::from_secs_f64(phase.secs / 2.0));
            let interval = Duration::from_secs_f64(1.0 / phase.rate);
            let mut next = phase_start;
            while next < end {
                tokio::time::sleep_until(next).await;
                if sigterm_at.is_some_and(|at| at <= next) {
                    sigterm_at = None;
                    let pid = std::process::id().to_string();
                    let status = std::process::Command::new("kill")
                        .args(["-TERM", &pid])
                        .status()?;
                    if !status.success() {
                        return Err(format!("kill -TERM {pid} failed: {status}").into());
                    }
                }
                let now = Instant::now();
                while next <= now && next < end {
                    let intended = next;
                    next += interval;
                    let bucket =
                        ((intended - start).as_secs_f64() / s.bucket.as_secs_f64()) as usize;
                    if in_flight.load(Ordering::Relaxed) >= s.max_in_flight {
                        record(i, bucket, Outcome::Dropped, s.client_timeout); // never answered
                        continue;
                    }
                    in_flight.fetch_add(1, Ordering::Relaxed);
                    let (client, uri, recorder, in_flight) = (
                        client.clone(),
                        uri.clone(),
                        recorder.clone(),
                        in_flight.clone(),
                    );
                    let limit = s.client_timeout;
                    tokio::spawn(async move {
                        let outcome = tokio::time::timeout(limit, one_request(&client, &uri))
                            .await
                            .unwrap_or(Outcome::Timeout);
                        // Latency from the intended send time: no coordinated omission.
                        let latency = intended.elapsed();
                        recorder
                            .lock()
                            .expect("no panics while recording")
                            .record(i, bucket, outcome, latency);
                        in_flight.fetch_sub(1, Ordering::Relaxed);
                    });
                }
            }
            let breaker = policy
                .as_ref()
                .and_then(|p| p.breaker())
                .map_or("-".to_string(), |b| b.state().to_string());
            // VmHWM can lag the true peak; keep it monotonic.
            peak_rss = peak_rss.max(peak_rss_kib().unwrap_or(0));
            ends.push((breaker, (peak_rss > 0).then_some(peak_rss)));
            phase_start = end;
        }
        // Every request is bounded by the client time-out.
        let wait_until = Instant::now() + s.client_timeout + Duration::from_millis(200);
        while in_flight.load(Ordering::Relaxed) > 0 && Instant::now() < wait_until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let report = tokio::time::timeout(s.grace * 4, report).await??;

        let rec = recorder.lock().expect("no panics while recording");
        let phases: Vec<Value> = s
            .phases
            .iter()
            .zip(&rec.phases)
            .zip(&ends)
            .map(|((p, c), (breaker, rss))| {
                json!({
                    "name": p.name,
                    "secs": p.secs,
                    "rate": p.rate,
                    "ok": c.ok.len(),
                    "p50_ms": c.p_ms(0.5),
                    "p99_ms": c.p_ms(0.99),
                    "rejected": c.rejected,
                    "errors": c.errors,
                    "timeouts": c.timeouts,
                    "dropped": c.dropped,
                    "breaker": breaker,
                    "peak_rss_kib": rss,
                })
            })
            .collect();
        let bucket_secs = s.bucket.as_secs_f64();
        let series: Vec<Value> = rec
            .buckets
            .iter()
            .map(|c| {
                json!({
                    "ok_per_s": c.ok.len() as f64 / bucket_secs,
                    "p99_ms": c.p_ms(0.99),
                    "p99_all_ms": c.p_all_ms(0.99),
                    "rejected_per_s": c.rejected as f64 / bucket_secs,
                    "failed_per_s": (c.errors + c.timeouts + c.dropped) as f64 / bucket_secs,
                })
            })
            .collect();
        Ok(json!({
            "mode": mode.name(),
            "phases": phases,
            "series": series,
            "bucket_secs": bucket_secs,
            "shutdown": {
                "text": report.to_string(),
                "clean": report.is_clean(),
                "in_flight_at_trigger": report.in_flight_at_trigger,
                "in_flight_at_deadline": report.in_flight_at_deadline,
                "drain_ms": report.drain_time.as_secs_f64() * 1000.0,
            },
        }))
    }

    pub(crate) fn child(mode: Mode, quick: bool) -> Result<(), BoxError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        let result = runtime.block_on(run(mode, Scenario::new(quick)))?;
        println!("RESULT {result}");
        // Abandoned dependency calls may still be sleeping; do not wait for them.
        runtime.shutdown_timeout(Duration::from_millis(100));
        Ok(())
    }

    // ---------------------------------------------------------------------------
    // The parent: both runs, the table, the report
    // ---------------------------------------------------------------------------

    fn spawn_run(mode: Mode, quick: bool) -> Result<Value, BoxError> {
        let exe = std::env::current_exe()?;
        let mut cmd = std::process::Command::new(exe);
        cmd.args(["--child", mode.name()]);
        if quick {
            cmd.arg("--quick");
        }
        let output = cmd.stderr(std::process::Stdio::inherit()).output()?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let Some(line) = stdout.lines().find_map(|l| l.strip_prefix("RESULT ")) else {
            return Err(format!("the {} run failed: {}", mode.name(), output.status).into());
        };
        Ok(serde_json::from_str(line)?)
    }

    fn ms(v: &Value) -> String {
        v.as_f64().map_or("-".to_string(), |x| format!("{x:.1}"))
    }

    fn table(s: &Scenario, runs: &[Value]) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<9} {:<12} {:>7} {:>8} {:>8} {:>9} {:>9} {:>7} {:>8} {:>8} {:>9} {:>9}",
            "phase",
            "run",
            "sent/s",
            "ok/s",
            "p50 ms",
            "p99 ms",
            "rejected",
            "errors",
            "timeouts",
            "dropped",
            "breaker",
            "peak RSS"
        );
        for (i, phase) in s.phases.iter().enumerate() {
            for run in runs {
                let p = &run["phases"][i];
                let secs = phase.secs;
                let rss = p["peak_rss_kib"]
                    .as_u64()
                    .map_or("-".to_string(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
                let _ = writeln!(
                    out,
                    "{:<9} {:<12} {:>7.0} {:>8.0} {:>8} {:>9} {:>9} {:>7} {:>8} {:>8} {:>9} {:>9}",
                    phase.name,
                    run["mode"].as_str().unwrap_or("?"),
                    phase.rate,
                    p["ok"].as_f64().unwrap_or(0.0) / secs,
                    ms(&p["p50_ms"]),
                    ms(&p["p99_ms"]),
                    p["rejected"].as_u64().unwrap_or(0),
                    p["errors"].as_u64().unwrap_or(0),
                    p["timeouts"].as_u64().unwrap_or(0),
                    p["dropped"].as_u64().unwrap_or(0),
                    p["breaker"].as_str().unwrap_or("-"),
                    rss
                );
            }
        }
        out
    }

    /// An SVG line chart of one quantity per bucket, one line per run; gaps where a
    /// bucket has no value. Phases are marked with dashed lines.
    fn chart(title: &str, unit: &str, key: &str, s: &Scenario, runs: &[Value]) -> String {
        let (w, h, left, right, top, bottom) = (860.0, 250.0, 60.0, 20.0, 30.0, 40.0);
        let total = s.total_secs();
        let bucket = s.bucket.as_secs_f64();
        let values: Vec<Vec<Option<f64>>> = runs
            .iter()
            .map(|r| {
                r["series"]
                    .as_array()
                    .map(|a| a.iter().map(|b| b[key].as_f64()).collect())
                    .unwrap_or_default()
            })
            .collect();
        let max = values
            .iter()
            .flatten()
            .flatten()
            .fold(1.0_f64, |m, v| m.max(*v))
            * 1.1;
        let x = |t: f64| left + (w - left - right) * (t / total);
        let y = |v: f64| top + (h - top - bottom) * (1.0 - v / max);
        let mut svg = format!(
            r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">
<text x="{left}" y="18" font-size="13" font-weight="bold">{title}</text>
<line x1="{left}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="#999"/>
<line x1="{left}" y1="{top}" x2="{left}" y2="{y0}" stroke="#999"/>
<text x="{lx}" y="{top}" text-anchor="end">{max:.0}</text>
<text x="{lx}" y="{y0}" text-anchor="end">0</text>
<text x="{lx}" y="{mid}" text-anchor="end">{unit}</text>
"##,
            y0 = h - bottom,
            x1 = w - right,
            lx = left - 4.0,
            mid = (top + h - bottom) / 2.0,
        );
        let step = if total > 12.0 { 5.0 } else { 1.0 };
        let mut tick = 0.0;
        while tick <= total {
            let _ = writeln!(
                svg,
                r##"<text x="{tx}" y="{ty}" text-anchor="middle" fill="#777">{tick:.0} s</text>"##,
                tx = x(tick),
                ty = h - bottom + 26.0,
            );
            tick += step;
        }
        let mut at = 0.0;
        for p in &s.phases {
            let _ = writeln!(
                svg,
                r##"<line x1="{px}" y1="{top}" x2="{px}" y2="{y0}" stroke="#ccc" stroke-dasharray="4 3"/><text x="{tx}" y="{ty}">{name}</text>"##,
                px = x(at),
                y0 = h - bottom,
                tx = x(at) + 3.0,
                ty = h - bottom + 14.0,
                name = p.name
            );
            at += p.secs;
        }
        for (run, vals) in runs.iter().zip(&values) {
            let color = if run["mode"] == "heijunka" {
                "#2a9d2a"
            } else {
                "#d62728"
            };
            let mut segment = Vec::new();
            let flush = |segment: &mut Vec<String>, svg: &mut String| {
                if !segment.is_empty() {
                    let _ = writeln!(
                        svg,
                        r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
                        segment.join(" ")
                    );
                    segment.clear();
                }
            };
            for (i, v) in vals.iter().enumerate() {
                let t = (i as f64 + 0.5) * bucket;
                match v {
                    Some(v) if t <= total => segment.push(format!("{:.1},{:.1}", x(t), y(*v))),
                    _ => flush(&mut segment, &mut svg),
                }
            }
            flush(&mut segment, &mut svg);
        }
        svg.push_str(r##"<rect x="700" y="8" width="10" height="10" fill="#d62728"/><text x="714" y="17">unprotected</text>
<rect x="780" y="8" width="10" height="10" fill="#2a9d2a"/><text x="794" y="17">heijunka</text>
</svg>"##);
        svg
    }

    fn html(s: &Scenario, runs: &[Value], table: &str) -> String {
        let per = if s.bucket == Duration::from_secs(1) {
            "per second".to_string()
        } else {
            format!("per {} ms, as a rate per second", s.bucket.as_millis())
        };
        let escape = |t: &str| t.replace('&', "&amp;").replace('<', "&lt;");
        let mut shutdowns = String::new();
        for run in runs {
            let _ = writeln!(
                shutdowns,
                "{}: {}",
                run["mode"].as_str().unwrap_or("?"),
                run["shutdown"]["text"].as_str().unwrap_or("?")
            );
        }
        format!(
            r#"<!doctype html>
<html><head><meta charset="utf-8"><title>heijunka overload demo</title>
<style>body{{font-family:sans-serif;max-width:900px;margin:2em auto}}pre{{font-size:11px;background:#f6f6f6;padding:8px;overflow-x:auto}}</style>
</head><body>
<h1>heijunka overload demo</h1>
<p>The same axum service and the same storm, without protection (red) and behind heijunka's policy (green).
Series {per}; p99 latency is of successful requests, measured from the intended send time.</p>
{p99_all}
{p99}
{ok}
{rejected}
{failed}
<h2>Per phase</h2>
<pre>{table}</pre>
<h2>Shutdown (SIGTERM)</h2>
<pre>{shutdowns}</pre>
</body></html>
"#,
            p99_all = chart(
                "p99 latency of every request (rejections included; time-outs and dropped at 1 s)",
                "ms",
                "p99_all_ms",
                s,
                runs
            ),
            p99 = chart(
                "p99 latency of successful requests (gaps: none succeeded)",
                "ms",
                "p99_ms",
                s,
                runs
            ),
            ok = chart("successful requests", "/s", "ok_per_s", s, runs),
            rejected = chart(
                "fast rejections (429 / 503)",
                "/s",
                "rejected_per_s",
                s,
                runs
            ),
            failed = chart(
                "errors, client time-outs and dropped requests",
                "/s",
                "failed_per_s",
                s,
                runs
            ),
            table = escape(table),
            shutdowns = escape(&shutdowns),
        )
    }

    pub(crate) fn parent(quick: bool, out: Option<String>) -> Result<bool, BoxError> {
        let s = Scenario::new(quick);
        println!(
            "heijunka overload demo{}: {} phases, {:.1} s per run, downstream {} workers x {:?}",
            if quick { " (quick)" } else { "" },
            s.phases.len(),
            s.total_secs(),
            s.downstream_workers,
            s.downstream_service
        );
        let mut runs = Vec::new();
        for mode in [Mode::Unprotected, Mode::Protected] {
            println!("running {} ...", mode.name());
            runs.push(spawn_run(mode, quick)?);
        }
        let table = table(&s, &runs);
        println!();
        print!("{table}");
        println!(
            "\nok/s and latency: successful requests, latency from the intended send time; \
             rejected: fast 429 / 503;\nerrors: other 5xx and refused connections (after \
             SIGTERM); timeouts: no answer within {:?};\ndropped: not sent, {} already in \
             flight; breaker and peak RSS (VmHWM): at the end of the phase.\n",
            s.client_timeout, s.max_in_flight
        );
        for run in &runs {
            println!(
                "shutdown, {}: {}",
                run["mode"].as_str().unwrap_or("?"),
                run["shutdown"]["text"].as_str().unwrap_or("?")
            );
        }

        let path = match out {
            Some(p) => std::path::PathBuf::from(p),
            None => std::env::var_os("CARGO_TARGET_DIR")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| {
                    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                        .ancestors()
                        .nth(2) // crates/heijunka -> the workspace root
                        .unwrap_or(std::path::Path::new("."))
                        .join("target")
                })
                .join("heijunka-demo")
                .join("report.html"),
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&path, html(&s, &runs, &table))?;
        println!("\nreport: {}", path.display());

        let burst = s
            .phases
            .iter()
            .position(|p| p.name == "burst")
            .expect("the scenario has a burst");
        // No successful request at all counts as the client time-out.
        let p99 = |run: &Value| {
            run["phases"][burst]["p99_ms"]
                .as_f64()
                .unwrap_or(s.client_timeout.as_secs_f64() * 1000.0)
        };
        let (unprotected, protected) = (p99(&runs[0]), p99(&runs[1]));
        let better = protected < unprotected;
        println!(
            "burst p99: unprotected {unprotected:.1} ms, heijunka {protected:.1} ms ({})",
            if better {
                "heijunka lower"
            } else {
                "heijunka NOT lower"
            }
        );
        Ok(better || !quick)
    }
}

#[cfg(feature = "tower")]
fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let value_of = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("usage: overload [--quick] [--out PATH]");
        return ExitCode::SUCCESS;
    }
    if let Some(mode) = value_of("--child") {
        let mode = if mode == Mode::Protected.name() {
            Mode::Protected
        } else {
            Mode::Unprotected
        };
        return match child(mode, quick) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("overload ({}): {e}", mode.name());
                ExitCode::FAILURE
            }
        };
    }
    match parent(quick, value_of("--out")) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!(
                "overload --quick: the protected run's burst p99 is not below the unprotected run's"
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("overload: {e}");
            ExitCode::FAILURE
        }
    }
}
