//! `demo --mcp [--quick]`: `crates/mcp/examples/mcp_server.rs` driven by the
//! official Python MCP SDK (`crates/mcp/scenario/burst.py`).
//!
//! Makes the virtual environment `target/mcp-venv` (the version pinned in
//! `crates/mcp/scenario/requirements.txt` installed unless already there), builds
//! the example in release once, then per run: starts it on a free loopback port,
//! runs the burst against it, prints the server's `/stats`, stops it with SIGTERM
//! (killed after 10 s) and prints its final counters.
//!
//! - no flag: an unprotected run (`--unprotected`) and a protected one, 200 calls
//!   over 4 sessions each, then a comparison of p99 of ok calls and goodput.
//! - `--quick` (CI): the protected run alone, 80 calls over 2 sessions, bounded to
//!   120 s after the build; fails on a hang, a lost call or a slot leak (the
//!   burst's exit status), or if the server does not exit cleanly.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::cmd::{Cmd, cargo, root};
use crate::demo::{Served, http_get, target_dir};

const REQUIREMENTS: &str = "crates/mcp/scenario/requirements.txt";
const BURST: &str = "crates/mcp/scenario/burst.py";
/// The bound on one quick run (start, burst, stop), after the build.
const QUICK_BOUND: Duration = Duration::from_secs(120);
/// The bound on one full run.
const FULL_BOUND: Duration = Duration::from_secs(300);

/// One run's shape and what came of it.
struct Run {
    label: &'static str,
    protected: bool,
    calls: u32,
    sessions: u32,
    /// burst.py's `RESULT` line, parsed.
    result: Option<serde_json::Value>,
}

pub(crate) fn run(quick: bool) -> Result<(), String> {
    let python = venv()?;
    cargo()
        .args([
            "build",
            "--release",
            "-p",
            "heijunka-mcp",
            "--example",
            "mcp_server",
        ])
        .run()?;
    let exe = target_dir()?
        .join("release")
        .join("examples")
        .join("mcp_server");
    let mut runs = if quick {
        vec![Run::new("protected", true, 80, 2)]
    } else {
        vec![
            Run::new("unprotected", false, 200, 4),
            Run::new("protected", true, 200, 4),
        ]
    };
    let bound = if quick { QUICK_BOUND } else { FULL_BOUND };
    let mut failures = Vec::new();
    for r in &mut runs {
        println!("\n==== MCP burst, {} server ====", r.label);
        if let Err(e) = r.go(&exe, &python, bound) {
            failures.push(format!("{} run: {e}", r.label));
        }
    }
    if !quick {
        compare(&runs);
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

/// `target/mcp-venv`'s python, the pinned requirements installed in it.
fn venv() -> Result<PathBuf, String> {
    let dir = root().join("target").join("mcp-venv");
    let python = dir.join("bin").join("python");
    // A venv left half made (no pip: `ensurepip` missing) is made again.
    let usable = python.is_file()
        && Cmd::new(python.to_string_lossy())
            .args(["-m", "pip", "--version"])
            .succeeds_quietly();
    if !usable {
        let _ = std::fs::remove_dir_all(&dir);
        Cmd::new("python3")
            .args(["-m", "venv", &dir.to_string_lossy()])
            .run()
            .map_err(|e| format!("{e}\n(needs python3 with the venv module, e.g. python3-venv)"))?;
    }
    let reqs = std::fs::read_to_string(root().join(REQUIREMENTS))
        .map_err(|e| format!("{REQUIREMENTS}: {e}"))?;
    let pins: Vec<String> = reqs
        .lines()
        .filter_map(|l| l.split('#').next()?.trim().split_once("=="))
        .map(|(name, version)| format!("({name:?}, {version:?})"))
        .collect();
    // Exits non-zero if a pinned package is missing or at another version.
    let probe = format!(
        "import importlib.metadata as m, sys\n\
         def v(n):\n    try: return m.version(n)\n    except m.PackageNotFoundError: return None\n\
         sys.exit(any(v(n) != want for n, want in [{}]))",
        pins.join(", ")
    );
    let installed = Cmd::new(python.to_string_lossy())
        .args(["-c", &probe])
        .succeeds_quietly();
    if installed {
        println!(
            "({} already has the {} packages pinned in {REQUIREMENTS})",
            dir.display(),
            pins.len()
        );
    } else {
        // Wheels only: the pins are frozen on CPython 3.11, and nothing should be
        // compiled on the way.
        Cmd::new(python.to_string_lossy())
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--only-binary=:all:",
                "-r",
                REQUIREMENTS,
            ])
            .run()
            .map_err(|e| format!("{e}\n(the pins in {REQUIREMENTS} are for CPython 3.11)"))?;
    }
    Ok(python)
}

impl Run {
    fn new(label: &'static str, protected: bool, calls: u32, sessions: u32) -> Self {
        Self {
            label,
            protected,
            calls,
            sessions,
            result: None,
        }
    }

    /// One run: serve, burst, scrape, stop; within `bound` (everything killed past it).
    fn go(&mut self, exe: &Path, python: &Path, bound: Duration) -> Result<(), String> {
        let deadline = Instant::now() + bound;
        let mut args = vec!["--http", "127.0.0.1:0"];
        if !self.protected {
            args.push("--unprotected");
        }
        let (served, url) = Served::start(exe, &args)?;
        let addr = url
            .trim_start_matches("http://")
            .trim_end_matches("/mcp")
            .to_string();
        let burst = self.burst(python, &url, deadline);
        let stats = http_get(&addr, "/stats");
        let checked = match &stats {
            Ok(s) => print_stats(s),
            Err(e) => {
                println!("GET /stats failed: {e}");
                Ok(())
            }
        };
        let stopped = served_stop(served);
        burst.and(stopped).and(stats.map(drop)).and(checked)
    }

    /// Runs burst.py against `url`, echoing its output; killed at `deadline`.
    fn burst(&mut self, python: &Path, url: &str, deadline: Instant) -> Result<(), String> {
        let calls = self.calls.to_string();
        let sessions = self.sessions.to_string();
        let args = [
            BURST,
            "--url",
            url,
            "--calls",
            &calls,
            "--sessions",
            &sessions,
            "--cancel-fraction",
            "0.1",
            "--seed",
            "1",
        ];
        println!("$ {} {}", python.display(), args.join(" "));
        let mut child = Command::new(python)
            .args(args)
            .current_dir(root())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("could not run burst.py: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let echo = std::thread::spawn(move || {
            let mut result = None;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                match line.strip_prefix("RESULT ") {
                    Some(json) => result = serde_json::from_str(json).ok(),
                    None => println!("{line}"),
                }
            }
            result
        });
        let status = loop {
            if let Some(s) = child.try_wait().map_err(|e| e.to_string())? {
                break Some(s);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        self.result = echo.join().ok().flatten();
        match status {
            None => Err("burst.py ran past the run's time bound and was killed".into()),
            Some(s) if s.success() => Ok(()),
            Some(s) => Err(format!("burst.py failed ({s})")),
        }
    }
}

fn served_stop(served: Served) -> Result<(), String> {
    println!("---- stopping the server (SIGTERM); its final counters ----");
    served.stop()
}

/// The server's per-tool counters from `/stats`, one row per tool, and the
/// guard's; fails if the guard still holds a slot or a waiter after the burst, or
/// if its counts do not balance (every call ended exactly one way).
fn print_stats(body: &str) -> Result<(), String> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(body) else {
        println!("/stats: {}", body.trim());
        return Err("/stats is not JSON".into());
    };
    println!("---- the server's counters (/stats, observed inside the tools) ----");
    println!(
        "  {:<6} {:>8} {:>8} {:>9} {:>7} {:>7}",
        "tool", "started", "finished", "cancelled", "dropped", "running"
    );
    if let Some(tools) = v["tools"].as_object() {
        for (name, t) in tools {
            let n = |k: &str| t[k].as_u64().unwrap_or(0);
            println!(
                "  {name:<6} {:>8} {:>8} {:>9} {:>7} {:>7}",
                n("started"),
                n("finished"),
                n("cancelled"),
                n("dropped"),
                n("running")
            );
        }
    }
    let g = &v["protection"];
    if g.is_null() {
        println!("  protection: none (--unprotected)");
        return Ok(());
    }
    let n = |k: &str| g[k].as_u64().unwrap_or(0);
    let nonzero = |k: &str| {
        g[k].as_object()
            .map(|m| {
                m.iter()
                    .filter(|(_, c)| c.as_u64().unwrap_or(0) > 0)
                    .map(|(r, c)| format!("{r} {c}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    println!("---- heijunka-mcp's counters (the guard's stats) ----");
    println!(
        "  calls {} | completed {} | tool errors {} | errors {} | refused {} ({}) | cancelled {} ({})",
        n("calls"),
        n("completed"),
        n("tool_errors"),
        n("errors"),
        n("refused"),
        nonzero("refused_by"),
        n("cancelled"),
        nonzero("cancelled_by"),
    );
    println!(
        "  limit {} | in flight {} | waiting {} (peak {} of {}) | sessions opened {}",
        n("limit"),
        n("in_flight"),
        n("waiting"),
        n("peak_waiting"),
        n("queue_capacity"),
        n("sessions_opened"),
    );
    if let Some(tools) = g["tools"].as_array() {
        for t in tools {
            let ms = |k: &str| t[k].as_f64().map_or("-".into(), |x| format!("{x:.0}"));
            println!(
                "  tool {:<6} calls {:>4} | in flight {} | refused {:>3} | cancelled {:>3} | latency mean {} ms, max {} ms",
                t["name"].as_str().unwrap_or("?"),
                t["calls"],
                t["in_flight"],
                t["refused"],
                t["cancelled"],
                ms("latency_mean_ms"),
                ms("latency_max_ms"),
            );
        }
    }
    let ended = n("completed") + n("tool_errors") + n("errors") + n("refused") + n("cancelled");
    if n("in_flight") != 0 || n("waiting") != 0 {
        return Err(format!(
            "the guard still holds {} slots and {} waiters after the burst",
            n("in_flight"),
            n("waiting")
        ));
    }
    if ended != n("calls") {
        return Err(format!(
            "the guard's counts do not balance: {} calls, {ended} ended",
            n("calls")
        ));
    }
    Ok(())
}

/// p99 of ok calls and goodput, with and without protection.
fn compare(runs: &[Run]) {
    println!("\n==== MCP burst: unprotected vs protected ====");
    println!(
        "  {:<12} {:>6} {:>6} {:>6} {:>10} {:>12} {:>14}",
        "server", "ok", "busy", "tool_e", "cancelled", "p99 ok (ms)", "goodput (ok/s)"
    );
    for r in runs {
        let Some(v) = &r.result else {
            println!("  {:<12} (no result)", r.label);
            continue;
        };
        let f = |k: &str| v[k].to_string();
        println!(
            "  {:<12} {:>6} {:>6} {:>6} {:>10} {:>12} {:>14}",
            r.label,
            f("ok"),
            f("busy"),
            f("tool_error"),
            f("cancelled_by_us"),
            f("p99_ms"),
            f("goodput_ok_per_s")
        );
    }
}
