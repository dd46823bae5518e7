//! The overload demo (`cargo xtask demo`): the same HTTP service run three times
//! through the same storm: unprotected, behind tower's own layers as a careful
//! tower user would configure them, and behind heijunka's policy.
//!
//! Every run is three processes of this binary (`--role`): the **dependency**, an
//! HTTP server simulating a downstream service (10 workers × 20 ms, 500 calls per
//! second; it thrashes, up to 2x slower, when more calls pile up than it has
//! workers; calls queued over 2 s fail; an outage makes every call hang 1.5 s and
//! fail; each call runs to its end even when its caller gives up); the **server**,
//! an axum service whose one route calls the dependency over HTTP (hyper); and the
//! **client**, an open-loop generator (arrivals at a fixed rate whatever the
//! answers, every request bounded by a 1 s client time-out, at most 800 in flight,
//! 500 in quick mode; each request tagged `x-request-criticality`, a 20/60/20
//! critical/default/sheddable mix) driving the server through:
//!
//! | phase | rate (quick) | what happens |
//! | --- | --- | --- |
//! | calm | 200/s (100/s) | well under capacity |
//! | burst | 2000/s (1000/s) | four (two) times what the dependency can do |
//! | outage | 200/s (100/s) | every dependency call hangs 1.5 s, then fails |
//! | recovery | 200/s (100/s) | the dependency is healthy again |
//! | shutdown | 200/s (100/s) | halfway through, the client sends the server SIGTERM |
//!
//! The three server modes (nothing in them is derived from the dependency's
//! capacity, which the server cannot know):
//!
//! - **unprotected**: plain axum, no time-out, no limit.
//! - **tower**: `TimeoutLayer` (250 ms) + `LoadShedLayer` + `ConcurrencyLimitLayer`
//!   (100), errors mapped by `HandleErrorLayer` to 503 (shed) and 504 (time-out).
//!   100 is what a careful user derives from the time-out budget and the traffic
//!   they expect, not from the dependency: Little's law, 400 requests/s × 0.25 s.
//! - **heijunka**: one `PolicyLayer` with the same 250 ms time-out, an
//!   `AdaptiveLimit` driven by `Vegas` with Netflix's defaults (initial 20, between
//!   1 and 1000: it estimates the queue in front of the dependency from the lowest
//!   round-trip time seen and keeps it at 3 to 6 requests), partitioned by
//!   criticality (`sheddable_share(0.3)`: sheddable requests fill at most 30 % of
//!   it; `critical_reserve(0.5)`: its upper half is kept for critical requests),
//!   and a circuit breaker on the dependency's answers; no rate limit, no static
//!   limit. Refusals are 429 / 503 with `Retry-After`. The parent prints the
//!   share of each criticality served in the burst: the unprotected and tower
//!   runs lose every class alike; heijunka served 100 % of critical requests in
//!   the quick burst (critical demand 200/s, under capacity) and 92 % in the full
//!   one (400/s: about the dependency's whole capacity), default 39 % / 4 %,
//!   sheddable 0.5 % / 0 %. Vegas rather than Gradient2: measured here (quick
//!   mode, burst), Vegas settles at 8..28 in flight, 360..373 ok/s with a p99 of
//!   all requests of 75..83 ms, in the storm and in the sweep alike; Gradient2 fed
//!   every request (its long-term RTT follows the loaded RTT, as its docs warn)
//!   settles at 20..27, 304..339 ok/s, 150 ms; Gradient2 behind `Windowed` (50 or
//!   100 ms windows) holds a steadier 15..19 in the storm (365..370 ok/s, 60 ms)
//!   but only 287..311 ok/s at 125 ms in the sweep's cold starts. The dependency's
//!   best is 10 in flight, 500 ok/s; above that it thrashes.
//!
//! The protection wraps the service route only: `GET /stats` (in flight, the
//! adaptive limit, the breaker state, as JSON) and `GET /metrics` (Prometheus
//! text) answer under any load. Every server mode uses heijunka-shutdown for
//! SIGTERM (stop accepting, drain, report).
//!
//! After the three runs, a sweep runs each mode at a steady rate per offered load
//! (100 to 4000/s, 3 s each; quick: 250, 1000, 2500/s, 1.5 s each) with fresh
//! processes, for goodput vs offered load. The sweep has a fourth line for
//! reference, **tower-tuned**: tower's layers with the limit set to 12, the
//! dependency's 10 workers plus a little, which no server knows up front. It
//! shows the figure tower needs to do well, next to heijunka finding the level
//! alone; with the limit a user would guess without that knowledge (100 above),
//! tower's time-out turns the dependency's queueing into failures while the
//! abandoned calls keep it busy, and goodput falls below even the unprotected
//! run's.
//!
//! The parent prints the table per phase (goodput, p50 / p99 of successes, p99 of
//! all requests, rejections, errors, time-outs, dropped, peak RSS of the client,
//! server and dependency processes separately) and the sweep, and writes
//! `target/heijunka-demo/report.html` (p99 of all requests, goodput, the sweep, in
//! flight vs the adaptive limit, the breaker state over time, ...) and a
//! standalone `report.svg` of the key charts next to it; a full run also copies
//! that SVG to `docs/demo-report.svg`.
//!
//! ```text
//! cargo xtask demo             # the full run, about 2 minutes
//! cargo xtask demo --quick     # about 35 s, for CI
//! cargo xtask demo --serve     # the heijunka server alone, with /metrics
//! cargo xtask demo --external  # --serve driven by oha
//! ```
//!
//! With `--quick` it exits non-zero unless, in the burst, heijunka's goodput
//! (successes per second) is at least the unprotected run's and heijunka's p99 of
//! all requests (rejections answered fast count as answered; time-outs and dropped
//! requests count at the 1 s client time-out) is below the unprotected run's, and
//! heijunka's goodput is at least tower's. The p99 against tower is printed, not
//! enforced: both runs are bounded by the same 250 ms time-out, so on a slow
//! machine the two can meet. Measured on a 2-core VM (2026-12-06, with the
//! criticality partition), burst phase of two quick runs: heijunka 432..434
//! ok/s and 40..41 ms, tower 44 ok/s and 253 ms, unprotected 164..165 ok/s and
//! 1003..1004 ms; the full run: 412,
//! 12 and 47 ok/s, 47, 253 and 1004 ms. `--out PATH` writes the report elsewhere.
//!
//! `--serve [--port P]` runs the heijunka-mode server alone (the dependency in a
//! task of the same process) on 127.0.0.1 (port 0: the OS picks), prints
//! `listening on http://127.0.0.1:PORT`, and serves `GET /` (the service),
//! `GET /stats` and `GET /metrics` until SIGTERM or Ctrl-C, then shuts down
//! gracefully.

mod client;
mod dependency;
mod parent;
mod report;
mod scenario;
mod server;

use std::process::ExitCode;

use server::Mode;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Prints the line the parent (or `cargo xtask demo --external`) waits for.
pub(crate) fn announce(listener: &tokio::net::TcpListener) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on http://{}", listener.local_addr()?)?;
    out.flush()
}

const USAGE: &str = "usage: overload [--quick] [--out PATH] | --serve [--port P]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    let value_of = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    if has("--help") || has("-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let port = match value_of("--port").map(|p| p.parse::<u16>()) {
        None => 0,
        Some(Ok(p)) => p,
        Some(Err(e)) => {
            eprintln!("overload: --port: {e}\n{USAGE}");
            return ExitCode::FAILURE;
        }
    };
    let result = if has("--serve") {
        server::serve(port)
    } else if let Some(role) = value_of("--role") {
        run_role(&role, port, &value_of)
    } else {
        match parent::main(has("--quick"), value_of("--out")) {
            Ok(true) => Ok(()),
            Ok(false) => Err("--quick: in the burst, heijunka's goodput is below the \
                             unprotected run's or tower's, or its p99 of all requests is \
                             not below the unprotected run's"
                .into()),
            Err(e) => Err(e),
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("overload: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_role(
    role: &str,
    port: u16,
    value_of: &dyn Fn(&str) -> Option<String>,
) -> Result<(), BoxError> {
    let need = |flag: &str| value_of(flag).ok_or_else(|| format!("--role {role} needs {flag}"));
    match role {
        "dependency" => dependency::main(port),
        "server" => {
            let mode = need("--mode")?;
            let mode = Mode::parse(&mode).ok_or_else(|| format!("unknown mode {mode:?}"))?;
            server::main(mode, port, &need("--dep")?)
        }
        "client" => {
            let arg = need("--scenario")?;
            let s = scenario::Scenario::parse(&arg)
                .ok_or_else(|| format!("unknown scenario {arg:?}"))?;
            let pids = client::Pids {
                server: need("--server-pid")?,
                dependency: need("--dep-pid")?,
            };
            client::main(s, &need("--target")?, &need("--dep")?, &pids)
        }
        _ => Err(format!("unknown role {role:?}\n{USAGE}").into()),
    }
}
