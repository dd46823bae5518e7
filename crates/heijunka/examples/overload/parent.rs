//! The parent: three processes per run (dependency, server, client), the three
//! storm runs, the sweep, the table, the check and the report.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::BoxError;
use crate::report::{self, SweepPoint};
use crate::scenario::{self, Scenario};
use crate::server::Mode;

/// A child process of this binary in a role, and the URL it announced.
struct Role {
    child: Child,
    stdout: BufReader<ChildStdout>,
    url: String,
}

impl Role {
    fn spawn(args: &[&str]) -> Result<Self, BoxError> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let mut stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let mut line = String::new();
        loop {
            line.clear();
            if stdout.read_line(&mut line)? == 0 {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{args:?} exited before listening").into());
            }
            if let Some(url) = line.trim().strip_prefix("listening on ") {
                let url = url.to_string();
                return Ok(Self { child, stdout, url });
            }
        }
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// Waits up to `limit` for the process to exit (killing it after), and
    /// returns what it printed after the listening line.
    fn finish(mut self, limit: Duration) -> Result<String, BoxError> {
        let deadline = Instant::now() + limit;
        while self.child.try_wait()?.is_none() {
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child.wait()?;
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest)?;
        Ok(rest)
    }
}

impl Drop for Role {
    /// No error path leaves a dependency or server process behind.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The longest a client may run (the longest scenario is about 25 s).
const CLIENT_LIMIT: Duration = Duration::from_secs(300);

/// Runs the client with `args` to its end (killed past [`CLIENT_LIMIT`]):
/// its stdout, and whether it exited successfully.
fn run_client(args: &[&str]) -> Result<(String, std::process::ExitStatus), BoxError> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    // Read on a thread of its own: the result line may exceed a pipe's buffer.
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        out
    });
    let deadline = Instant::now() + CLIENT_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            break child.wait()?;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok((reader.join().unwrap_or_default(), status))
}

/// One run: a fresh dependency, a fresh server in `mode`, the client with
/// `scenario`; returns the client's result with the mode and the server's
/// shutdown report added.
fn run(mode: Mode, scenario: &str, sigterm_by_client: bool) -> Result<Value, BoxError> {
    let dep = Role::spawn(&["--role", "dependency"])?;
    // Dropped on any error below: both are killed (`Role`'s `Drop`).
    let server = Role::spawn(&["--role", "server", "--mode", mode.name(), "--dep", &dep.url])?;
    let (server_pid, dep_pid) = (server.pid(), dep.pid());
    let (stdout, status) = run_client(&[
        "--role",
        "client",
        "--scenario",
        scenario,
        "--target",
        &server.url,
        "--dep",
        &dep.url,
        "--server-pid",
        &server_pid,
        "--dep-pid",
        &dep_pid,
    ])?;
    if !sigterm_by_client {
        let _ = Command::new("kill").args(["-TERM", &server.pid()]).status();
    }
    let server_out = server.finish(Duration::from_secs(5))?;
    let _ = dep.finish(Duration::ZERO);
    let Some(line) = stdout.lines().find_map(|l| l.strip_prefix("RESULT ")) else {
        return Err(format!("the {} client failed: {status}", mode.name()).into());
    };
    let mut result: Value = serde_json::from_str(line)?;
    result["mode"] = mode.name().into();
    result["shutdown"] = server_out
        .lines()
        .find_map(|l| l.strip_prefix("SHUTDOWN "))
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or(Value::Null);
    Ok(result)
}

fn burst_figures(s: &Scenario, run: &Value) -> (f64, f64) {
    let burst = s
        .phases
        .iter()
        .position(|p| p.name == "burst")
        .expect("the storm has a burst");
    let p = &run["phases"][burst];
    let goodput = p["ok"].as_f64().unwrap_or(0.0) / s.phases[burst].secs;
    // No request recorded at all counts as the client time-out.
    let p99_all = p["p99_all_ms"]
        .as_f64()
        .unwrap_or(s.client_timeout.as_secs_f64() * 1000.0);
    (goodput, p99_all)
}

fn report_path(out: Option<String>) -> PathBuf {
    match out {
        Some(p) => PathBuf::from(p),
        None => std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("target"))
            .join("heijunka-demo")
            .join("report.html"),
    }
}

fn workspace_root() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2) // crates/heijunka -> the workspace root
        .unwrap_or(std::path::Path::new("."))
        .to_path_buf()
}

/// Everything; `Ok(false)` when `--quick`'s check fails.
pub(crate) fn main(quick: bool, out: Option<String>) -> Result<bool, BoxError> {
    let started = Instant::now();
    let s = Scenario::storm(quick);
    let arg = if quick { "quick" } else { "full" };
    println!(
        "heijunka overload demo{}: {} phases, {:.1} s per run; three runs, then a goodput sweep",
        if quick { " (quick)" } else { "" },
        s.phases.len(),
        s.total_secs(),
    );
    let mut runs = Vec::new();
    for mode in Mode::ALL {
        println!("running {} ...", mode.name());
        runs.push(run(mode, arg, true)?);
    }
    let (rates, secs) = scenario::sweep(quick);
    let mut sweep = Vec::new();
    for &rate in &rates {
        for mode in Mode::SWEEP {
            println!("sweep: {} at {rate:.0}/s ...", mode.name());
            let r = run(mode, &format!("steady:{rate}:{secs}"), false)?;
            let p = &r["phases"][0];
            sweep.push(SweepPoint {
                mode: mode.name(),
                rate,
                goodput: p["ok"].as_f64().unwrap_or(0.0) / secs,
                p99_all_ms: p["p99_all_ms"].as_f64(),
            });
        }
    }

    let table = report::table(&s, &runs);
    let sweep_table = report::sweep_table(&rates, &sweep);
    println!();
    print!("{table}");
    println!(
        "\nok/s: successful requests per second; latency from the intended send time; \
         p99 all: every request,\nrejections included, time-outs and dropped at the client \
         time-out ({:?}); rejected: fast 429 / 503;\nerrors: 502 / 504 and refused connections \
         (after SIGTERM); dropped: not sent, {} already in flight;\npeak RSS (VmHWM) of the \
         client / server / dependency processes at the end of the phase (the server's at SIGTERM \
         in the shutdown phase).\n",
        s.client_timeout, s.max_in_flight
    );
    println!("goodput vs offered load ({secs} s per point):\n{sweep_table}");
    for run in &runs {
        println!(
            "shutdown, {}: {}",
            run["mode"].as_str().unwrap_or("?"),
            run["shutdown"]["text"].as_str().unwrap_or("?")
        );
    }

    let charts = report::charts(&s, &runs, &rates, &sweep);
    let path = report_path(out.clone());
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(
        &path,
        report::html(&s, &runs, &charts, &table, &sweep_table),
    )?;
    let raw = serde_json::json!({
        "runs": runs,
        "sweep": sweep
            .iter()
            .map(|p| serde_json::json!({
                "mode": p.mode, "rate": p.rate, "goodput": p.goodput, "p99_all_ms": p.p99_all_ms,
            }))
            .collect::<Vec<_>>(),
    });
    std::fs::write(path.with_file_name("results.json"), raw.to_string())?;
    let svg = report::stacked_svg(&charts);
    let svg_path = path.with_file_name("report.svg");
    std::fs::write(&svg_path, &svg)?;
    println!("\nreport: {} and {}", path.display(), svg_path.display());
    if !quick && out.is_none() {
        let docs = workspace_root().join("docs").join("demo-report.svg");
        std::fs::write(&docs, &svg)?;
        println!("copied to {}", docs.display());
    }

    // Criticality in the burst: the client sends a 20/60/20
    // critical/default/sheddable mix; only heijunka reads it.
    let burst = s.phases.iter().position(|p| p.name == "burst");
    if let Some(b) = burst {
        println!(
            "\nburst: share of each criticality served (20/60/20 critical/default/sheddable):"
        );
        for (mode, run) in ["unprotected", "tower", "heijunka"].iter().zip(&runs) {
            let shares: Vec<String> = run["phases"][b]["criticality"]
                .as_array()
                .into_iter()
                .flatten()
                .rev()
                .map(|c| {
                    let (sent, ok) = (
                        c["sent"].as_f64().unwrap_or(0.0),
                        c["ok"].as_f64().unwrap_or(0.0),
                    );
                    let share = if sent > 0.0 { 100.0 * ok / sent } else { 0.0 };
                    format!(
                        "{} {share:>5.1} %",
                        c["criticality"].as_str().unwrap_or("?")
                    )
                })
                .collect();
            println!("  {mode:<11} {}", shares.join("  "));
        }
    }
    let (un_good, un_p99) = burst_figures(&s, &runs[0]);
    let (tw_good, tw_p99) = burst_figures(&s, &runs[1]);
    let (hj_good, hj_p99) = burst_figures(&s, &runs[2]);
    println!(
        "\nburst: goodput (ok/s) and p99 of ALL requests:\n  unprotected {un_good:>6.0} ok/s  \
         {un_p99:>7.1} ms\n  tower       {tw_good:>6.0} ok/s  {tw_p99:>7.1} ms\n  heijunka    \
         {hj_good:>6.0} ok/s  {hj_p99:>7.1} ms"
    );
    // Enforced: goodput and p99 of all requests against the unprotected run, and
    // goodput against tower's layers. The p99 against tower is printed only: both
    // are bounded by the same 250 ms time-out, so on a slow machine they can meet.
    let vs_unprotected = hj_good >= un_good && hj_p99 < un_p99;
    let vs_tower = hj_good >= tw_good;
    let pass = vs_unprotected && vs_tower;
    println!(
        "check: heijunka vs unprotected (goodput >=, p99 all <): {}; heijunka vs tower \
         (goodput >=): {}",
        if vs_unprotected { "pass" } else { "FAIL" },
        if vs_tower { "pass" } else { "FAIL" },
    );
    println!(
        "heijunka vs tower, p99 all (reported, not enforced): {hj_p99:.1} ms {} {tw_p99:.1} ms",
        if hj_p99 < tw_p99 { "<" } else { ">=" },
    );
    println!("wall time: {:.1} s", started.elapsed().as_secs_f64());
    Ok(pass || !quick)
}
