//! `demo [--quick | --serve [--port P] | --external]`: the facade's overload demo,
//! `crates/heijunka/examples/overload/`, in release mode with the `tower` and
//! `metrics` features.
//!
//! - no flag: the three runs (unprotected, tower's layers, heijunka), the goodput
//!   sweep and the report; `--quick` is the short run CI uses (it fails unless
//!   heijunka beats the unprotected run in the burst).
//! - `--serve`: the heijunka-mode server alone, with `/metrics` (Prometheus text),
//!   until Ctrl-C.
//! - `--external`: the served demo driven by `oha` (installed with
//!   `cargo install oha --version 1.16.0 --locked` when it is on neither `PATH` nor
//!   the cargo install root): a fixed number of requests at a fixed rate under capacity,
//!   then a burst above it; oha's own summary is printed beside the server's
//!   counters scraped from `/metrics` and `/stats`.
//! - `--mcp [--quick]`: the MCP server example driven by the official Python SDK
//!   (`crate::mcp_demo`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::cmd::{Cmd, cargo};

const FEATURES: &str = "tower,metrics";

/// `(requests, rate per second)` of each oha run: under capacity, then a burst
/// three times above it (the dependency takes about 500 calls per second).
const OHA_RUNS: [(u32, u32); 2] = [(3000, 300), (6000, 1500)];

pub(crate) fn run(args: &[String]) -> Result<(), String> {
    if args.iter().any(|a| a == "--mcp") {
        return match args {
            [_] => crate::mcp_demo::run(false),
            [a, b] if [a, b].iter().any(|x| *x == "--quick") => crate::mcp_demo::run(true),
            _ => Err("demo --mcp takes only --quick".into()),
        };
    }
    if args.iter().any(|a| a == "--redis") {
        return redis(args);
    }
    if args.iter().any(|a| a == "--external") {
        if args.len() > 1 {
            return Err("demo --external takes no other argument".into());
        }
        return external();
    }
    cargo()
        .args([
            "run",
            "--release",
            "-p",
            "heijunka",
            "--features",
            FEATURES,
            "--example",
            "overload",
            "--",
        ])
        .args(args.iter().cloned())
        .run()
}

/// `--redis [--quick]`: two replicas sharing one Redis (the `replicas`
/// example), Redis up, killed, back; fails when the fleet's admissions are off
/// the shared rate by more than 10 % in a phase.
pub(crate) fn redis(args: &[String]) -> Result<(), String> {
    let quick = match args {
        [_] => false,
        [a, b] if [a, b].iter().any(|x| *x == "--quick") => true,
        _ => return Err("demo --redis takes only --quick".into()),
    };
    crate::ci::ensure_redis_server()?;
    let mut cmd = cargo().args([
        "run",
        "-p",
        "heijunka",
        "--features",
        "redis,tower,config",
        "--example",
        "replicas",
        "--",
    ]);
    if quick {
        cmd = cmd.args(["--quick"]);
    }
    cmd.run()
}

/// `oha` on `PATH`, else where `cargo install` puts it: `$CARGO_INSTALL_ROOT/bin`,
/// else `$CARGO_HOME/bin` (`~/.cargo/bin`).
fn find_oha() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("oha"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let root = std::env::var_os("CARGO_INSTALL_ROOT")
            .or_else(|| std::env::var_os("CARGO_HOME"))
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))?;
        Some(root.join("bin").join("oha")).filter(|p| p.is_file())
    })
}

/// The workspace's target directory, as cargo sees it.
pub(crate) fn target_dir() -> Result<PathBuf, String> {
    let meta = cargo()
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .read()
        .ok_or("cargo metadata failed")?;
    let v: serde_json::Value =
        serde_json::from_str(&meta).map_err(|e| format!("cargo metadata: {e}"))?;
    v["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .ok_or_else(|| "cargo metadata: no target_directory".to_string())
}

/// A plain HTTP/1.0 GET of `path` from `addr`; the body.
pub(crate) fn http_get(addr: &str, path: &str) -> Result<String, String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("GET {path}: {e}"))?;
    Ok(response
        .split_once("\r\n\r\n")
        .map_or(response.clone(), |(_, body)| body.to_string()))
}

/// A served example: killed (and waited for) if still running when dropped, so
/// no error path leaves it behind; its output after the listening line comes
/// through a channel, so nothing blocks on it.
pub(crate) struct Served {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Served {
    /// Starts `exe args..` and waits (up to a minute) for its listening line;
    /// the URL on it.
    pub(crate) fn start(exe: &Path, args: &[&str]) -> Result<(Self, String), String> {
        println!("$ {} {}", exe.display(), args.join(" "));
        let mut child = Command::new(exe)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("could not run {}: {e}", exe.display()))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let served = Self { child, lines };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match served.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(url) = line.trim().strip_prefix("listening on ") {
                        return Ok((served, url.to_string()));
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err("the served example printed no listening line within 60 s".into());
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err("the served example exited before listening".into());
                }
            }
        }
    }

    /// Sends SIGTERM and waits (up to 10 s, then kills); prints what it printed.
    pub(crate) fn stop(mut self) -> Result<(), String> {
        let pid = self.child.id().to_string();
        let _ = Cmd::new("kill").args(["-TERM", &pid]).succeeds_quietly();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().map_err(|e| e.to_string())?.is_none() {
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let status = self.child.wait().map_err(|e| e.to_string())?;
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(1)) {
            println!("{line}");
        }
        if status.success() {
            Ok(())
        } else {
            Err(format!("the served example exited with {status}"))
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The oha release `--external` installs when none is found (it builds with
/// this workspace's toolchain with `--locked`).
const OHA_VERSION: &str = "1.16.0";

fn external() -> Result<(), String> {
    let oha = match find_oha() {
        Some(p) => p,
        None => {
            println!(
                "oha not found on PATH or in the cargo install root: installing oha {OHA_VERSION}"
            );
            // --locked: oha's own lockfile (without it, a dependency resolves to
            // a release that needs a newer rustc).
            cargo()
                .args(["install", "oha", "--version", OHA_VERSION, "--locked"])
                .run()?;
            find_oha().ok_or("oha installed, but not found on PATH or in the cargo install root")?
        }
    };
    cargo()
        .args([
            "build",
            "--release",
            "-p",
            "heijunka",
            "--features",
            FEATURES,
            "--example",
            "overload",
        ])
        .run()?;
    let exe = target_dir()?
        .join("release")
        .join("examples")
        .join("overload");
    let (served, url) = Served::start(&exe, &["--serve"])?;
    println!("served demo: {url}");
    let addr = url.trim_start_matches("http://").to_string();
    let result = drive(&oha, &url, &addr);
    let stopped = served.stop();
    result.and(stopped)
}

/// The policy's decisions so far, from `/metrics`: admitted plus refused.
fn decisions(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("heijunka_policy_admitted_total")
                || l.starts_with("heijunka_policy_rejected_total")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn drive(oha: &Path, url: &str, addr: &str) -> Result<(), String> {
    for (n, rate) in OHA_RUNS {
        let oha_cmd = Cmd::new(oha.to_string_lossy()).args([
            "-n".to_string(),
            n.to_string(),
            "-q".to_string(),
            rate.to_string(),
            "-c".to_string(),
            "100".to_string(),
            "--no-tui".to_string(),
            format!("{url}/"),
        ]);
        println!("\n==== oha: {n} requests at {rate}/s ====");
        let before = decisions(&http_get(addr, "/metrics")?);
        // Refusals (503) are answers to oha, not failures: a non-zero exit is
        // oha itself failing (bad flags, no connection).
        oha_cmd.run().map_err(|e| format!("oha failed: {e}"))?;
        println!("\n---- the server's counters (/metrics, heijunka_* and overload_*) ----");
        let metrics = http_get(addr, "/metrics")?;
        if !metrics.contains("# TYPE") || !metrics.contains("heijunka_policy_admitted_total") {
            return Err(
                "/metrics has no heijunka series: the Prometheus recorder is not wired \
                 (or was installed after the policy was built)"
                    .into(),
            );
        }
        // The load really went through the policy: every request admitted or
        // refused (a few may fail before it, at the connection).
        let seen = decisions(&metrics).saturating_sub(before);
        if seen < u64::from(n) * 9 / 10 {
            return Err(format!(
                "oha sent {n} requests but the policy decided on {seen}: the load did not reach it"
            ));
        }
        let mut zero = 0;
        for l in metrics
            .lines()
            .filter(|l| l.starts_with("heijunka_") || l.starts_with("overload_"))
        {
            // Counters registered at zero (every stage and reason, every breaker
            // transition) make a long list; the ones that moved are the point.
            if l.split_whitespace()
                .next()
                .is_some_and(|n| n.contains("_total"))
                && l.ends_with(" 0")
            {
                zero += 1;
                continue;
            }
            println!("{l}");
        }
        println!("({zero} counters still at 0 not shown)");
        println!("---- /stats ----\n{}", http_get(addr, "/stats")?.trim());
    }
    Ok(())
}
