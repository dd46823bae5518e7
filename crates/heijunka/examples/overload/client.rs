//! The load generator (`--role client`): open loop (arrivals at a fixed rate
//! whatever the answers), every request bounded by the client time-out, at most
//! `max_in_flight` in flight. It toggles the dependency's outage at phase changes,
//! sends SIGTERM to the server in the shutdown phase, samples the server's
//! `/stats` every 100 ms, reads the peak RSS of the three processes at the end
//! of each phase, and prints `RESULT {json}`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::StatusCode;
use hdrhistogram::Histogram;
use heijunka::core::Criticality;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::BoxError;
use crate::scenario::Scenario;

/// How one request ended, as the client saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Ok,
    /// A fast refusal: 429 or 503.
    Rejected,
    /// Any other error status (502, 504), or a transport error.
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
    /// Sent and served, per criticality (sheddable, default, critical).
    by_criticality: [(u64, u64); 3],
    ok: Histogram<u64>,
    /// Every request's latency, as its client saw it (a time-out or a dropped
    /// request at the client time-out).
    all: Histogram<u64>,
    rejected: u64,
    errors: u64,
    timeouts: u64,
    dropped: u64,
}

impl Counts {
    fn new() -> Self {
        Self {
            by_criticality: [(0, 0); 3],
            ok: histogram(),
            all: histogram(),
            rejected: 0,
            errors: 0,
            timeouts: 0,
            dropped: 0,
        }
    }

    fn record(&mut self, outcome: Outcome, latency: Duration, criticality: Criticality) {
        let us = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        self.all.saturating_record(us);
        let c = &mut self.by_criticality[criticality.index()];
        c.0 += 1;
        c.1 += u64::from(outcome == Outcome::Ok);
        match outcome {
            Outcome::Ok => self.ok.saturating_record(us),
            Outcome::Rejected => self.rejected += 1,
            Outcome::Error => self.errors += 1,
            Outcome::Timeout => self.timeouts += 1,
            Outcome::Dropped => self.dropped += 1,
        }
    }

    fn p_ms(h: &Histogram<u64>, q: f64) -> Option<f64> {
        (!h.is_empty()).then(|| h.value_at_quantile(q) as f64 / 1000.0)
    }
}

struct Recorder {
    phases: Vec<Counts>,
    buckets: Vec<Counts>,
}

/// How often the client samples the server's `/stats` (in flight, the adaptive
/// limit, the breaker state: instantaneous values, so finer than the buckets).
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// Peak resident set (VmHWM) of a process, in KiB.
pub(crate) fn peak_rss_kib(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(key))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    kib("VmHWM:").max(kib("VmRSS:"))
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// The mix of criticalities the client sends (the SRE book's tags, in the
/// `x-request-criticality` header): a fifth critical, three fifths default, a
/// fifth sheddable, interleaved.
fn criticality_of(n: u64) -> Criticality {
    match n % 5 {
        0 => Criticality::Critical,
        4 => Criticality::Sheddable,
        _ => Criticality::Default,
    }
}

async fn one_request(client: &HttpClient, uri: &http::Uri, criticality: Criticality) -> Outcome {
    let request = http::Request::get(uri.clone())
        .header(Criticality::HEADER, criticality.as_str())
        .body(Empty::new());
    let Ok(request) = request else {
        return Outcome::Error;
    };
    let Ok(response) = client.request(request).await else {
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

async fn get_json(client: &HttpClient, uri: &http::Uri) -> Option<Value> {
    let response = client.get(uri.clone()).await.ok()?;
    let body = response.into_body().collect().await.ok()?.to_bytes();
    serde_json::from_slice(&body).ok()
}

/// The pids of the three processes whose memory the client reports.
pub(crate) struct Pids {
    pub(crate) server: String,
    pub(crate) dependency: String,
}

async fn run(s: Scenario, target: &str, dep: &str, pids: &Pids) -> Result<Value, BoxError> {
    let uri: http::Uri = format!("{target}/").parse()?;
    let stats_uri: http::Uri = format!("{target}/stats").parse()?;
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(s.max_in_flight)
        .build_http();
    let control: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let buckets = (s.total_secs() / s.bucket.as_secs_f64()).ceil() as usize + 1;
    let recorder = Arc::new(Mutex::new(Recorder {
        phases: s.phases.iter().map(|_| Counts::new()).collect(),
        buckets: (0..buckets).map(|_| Counts::new()).collect(),
    }));
    let samples = Arc::new(Mutex::new(Vec::new()));
    let in_flight = Arc::new(AtomicUsize::new(0));

    let start = Instant::now();
    // The operator's series: /stats every SAMPLE_EVERY, on a connection of its own.
    let sampler = tokio::spawn({
        let (control, samples) = (control.clone(), samples.clone());
        let total = Duration::from_secs_f64(s.total_secs());
        async move {
            let mut at = start;
            while at < start + total {
                at += SAMPLE_EVERY;
                tokio::time::sleep_until(at).await;
                let stats = tokio::time::timeout(SAMPLE_EVERY, get_json(&control, &stats_uri))
                    .await
                    .ok()
                    .flatten();
                let t = (at - start).as_secs_f64();
                let sample = match stats {
                    Some(v) => json!({
                        "t": t,
                        "in_flight": v["in_flight"],
                        "limit": v["limit"],
                        "breaker": v["breaker"],
                    }),
                    // Not answering (after SIGTERM): a gap in the chart.
                    None => json!({ "t": t }),
                };
                samples
                    .lock()
                    .expect("no panics while sampling")
                    .push(sample);
            }
        }
    });

    let mut phase_start = start;
    let mut sent = 0_u64;
    let mut rss = Vec::new();
    let mut server_rss = None;
    for (i, phase) in s.phases.iter().enumerate() {
        let outage: http::Uri =
            format!("{dep}/control?outage={}", u8::from(phase.outage)).parse()?;
        control.get(outage).await?;
        let end = phase_start + Duration::from_secs_f64(phase.secs);
        // Halfway through the shutdown phase: a real SIGTERM to the server.
        let mut sigterm_at = phase
            .sigterm
            .then(|| phase_start + Duration::from_secs_f64(phase.secs / 2.0));
        let interval = Duration::from_secs_f64(1.0 / phase.rate);
        let mut next = phase_start;
        while next < end {
            tokio::time::sleep_until(next).await;
            if sigterm_at.is_some_and(|at| at <= next) {
                sigterm_at = None;
                // The server's peak so far: it is gone by the end of the phase.
                server_rss = peak_rss_kib(&pids.server).or(server_rss);
                let status = std::process::Command::new("kill")
                    .args(["-TERM", &pids.server])
                    .status()?;
                if !status.success() {
                    return Err(format!("kill -TERM {} failed: {status}", pids.server).into());
                }
            }
            let now = Instant::now();
            while next <= now && next < end {
                let intended = next;
                next += interval;
                let criticality = criticality_of(sent);
                sent += 1;
                let bucket = ((intended - start).as_secs_f64() / s.bucket.as_secs_f64()) as usize;
                let record = {
                    let recorder = recorder.clone();
                    move |outcome: Outcome, latency: Duration| {
                        let mut r = recorder.lock().expect("no panics while recording");
                        if let Some(c) = r.phases.get_mut(i) {
                            c.record(outcome, latency, criticality);
                        }
                        if let Some(c) = r.buckets.get_mut(bucket) {
                            c.record(outcome, latency, criticality);
                        }
                    }
                };
                // Relaxed: the generator's own bound, read and written on this task
                // and the request tasks; an off-by-one is harmless.
                if in_flight.load(Ordering::Relaxed) >= s.max_in_flight {
                    record(Outcome::Dropped, s.client_timeout); // never answered
                    continue;
                }
                in_flight.fetch_add(1, Ordering::Relaxed);
                let (client, uri, in_flight) = (client.clone(), uri.clone(), in_flight.clone());
                let limit = s.client_timeout;
                tokio::spawn(async move {
                    let outcome =
                        tokio::time::timeout(limit, one_request(&client, &uri, criticality))
                            .await
                            .unwrap_or(Outcome::Timeout);
                    // Latency from the intended send time: no coordinated omission.
                    record(outcome, intended.elapsed());
                    // Relaxed: see above.
                    in_flight.fetch_sub(1, Ordering::Relaxed);
                });
            }
        }
        let me = std::process::id().to_string();
        server_rss = peak_rss_kib(&pids.server).or(server_rss);
        rss.push(json!({
            "client": peak_rss_kib(&me),
            "server": server_rss,
            "dependency": peak_rss_kib(&pids.dependency),
        }));
        phase_start = end;
    }
    // Every request is bounded by the client time-out.
    let wait_until = Instant::now() + s.client_timeout + Duration::from_millis(200);
    while in_flight.load(Ordering::Relaxed) > 0 && Instant::now() < wait_until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sampler.abort();

    let rec = recorder.lock().expect("no panics while recording");
    let phases: Vec<Value> = s
        .phases
        .iter()
        .zip(&rec.phases)
        .zip(&rss)
        .map(|((p, c), rss)| {
            json!({
                "name": p.name,
                "secs": p.secs,
                "rate": p.rate,
                "sent": c.all.len(),
                "ok": c.ok.len(),
                "p50_ms": Counts::p_ms(&c.ok, 0.5),
                "p99_ms": Counts::p_ms(&c.ok, 0.99),
                "p99_all_ms": Counts::p_ms(&c.all, 0.99),
                "rejected": c.rejected,
                "errors": c.errors,
                "timeouts": c.timeouts,
                "dropped": c.dropped,
                "rss_kib": rss,
                "criticality": Criticality::ALL.map(|k| {
                    let (sent, ok) = c.by_criticality[k.index()];
                    json!({ "criticality": k.as_str(), "sent": sent, "ok": ok })
                }),
            })
        })
        .collect();
    let bucket_secs = s.bucket.as_secs_f64();
    let ops = samples.lock().expect("no panics while sampling").clone();
    let series: Vec<Value> = rec
        .buckets
        .iter()
        .map(|c| {
            json!({
                "ok_per_s": c.ok.len() as f64 / bucket_secs,
                "p99_ms": Counts::p_ms(&c.ok, 0.99),
                "p99_all_ms": Counts::p_ms(&c.all, 0.99),
                "rejected_per_s": c.rejected as f64 / bucket_secs,
                "failed_per_s": (c.errors + c.timeouts + c.dropped) as f64 / bucket_secs,
            })
        })
        .collect();
    Ok(json!({
        "phases": phases,
        "series": series,
        "ops": ops,
        "bucket_secs": bucket_secs,
    }))
}

/// `--role client`: runs the scenario against `target`, prints `RESULT {json}`.
pub(crate) fn main(s: Scenario, target: &str, dep: &str, pids: &Pids) -> Result<(), BoxError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = runtime.block_on(run(s, target, dep, pids))?;
    println!("RESULT {result}");
    runtime.shutdown_timeout(Duration::from_millis(100));
    Ok(())
}
