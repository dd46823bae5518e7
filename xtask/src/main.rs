//! heijunka's task runner, in the style of rust-analyzer's xtask: `cargo xtask <task>`.
//!
//! Each task prints every command before running it and stops with a non-zero exit at
//! the first failure. `ci` is exactly what CI runs.

mod bench;
mod ci;
mod cmd;
mod demo;
mod layers;
mod loom;
mod mcp_demo;
mod miri;
mod tsan;

use std::process::ExitCode;

const HELP: &str = "\
usage: cargo xtask <task> [options]

tasks:
  ci                    everything CI runs: fmt, clippy, tests (all features, then default
                        features), the demo's short run, its --external run, the MCP
                        and Redis demos' short runs, docs, loom, miri, tsan
  test                  the tests: nextest (or cargo test) and the doc tests
  lint                  cargo fmt --check, clippy -D warnings, and the layer check
  layers                checks that no crate depends on one above its layer
  doc                   cargo doc with warnings denied
  loom                  the loom models (RUSTFLAGS=\"--cfg loom\", release, LOOM_MAX_PREEMPTIONS=2)
  miri                  the crates marked for miri (installs nightly miri + rust-src if missing)
  tsan                  the stress tests (names containing `stress`) under ThreadSanitizer (nightly)
  bench [--quick] [AREA]
                        criterion benchmarks in benches/, then a table of heijunka/peer ratios
  bench --guard         the headline rows of docs/benchmarks.md's guard table, quick; fails
                        if one is past its guard by more than 30 % (run before any speed claim)
  demo [--quick]        the overload demo: the same service unprotected, behind tower's layers
                        and behind heijunka, then a goodput sweep; --quick is CI's short run
  demo --serve [--port P]
                        the heijunka-protected demo service alone, with /metrics (Prometheus)
  demo --external       --serve driven by oha (installed if missing): oha's summary and the
                        server's counters
  demo --mcp [--quick]  the MCP server example (crates/mcp) driven by the official Python
                        SDK in target/mcp-venv: a burst of tool calls with cancellations,
                        unprotected then protected; --quick is CI's short protected run
  demo --redis [--quick]
                        two replicas sharing one rate limit through a private redis-server
                        (installed with apt-get if missing): Redis up, killed, back
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(task) = args.first() else {
        eprint!("{HELP}");
        return ExitCode::FAILURE;
    };
    let rest = &args[1..];
    let result = match task.as_str() {
        "ci" => no_args(task, rest).and_then(|()| ci::ci()),
        "test" => no_args(task, rest).and_then(|()| ci::test()),
        "layers" => no_args(task, rest).and_then(|()| layers::run()),
        "lint" => no_args(task, rest).and_then(|()| ci::lint()),
        "doc" => no_args(task, rest).and_then(|()| ci::doc()),
        "loom" => no_args(task, rest).and_then(|()| loom::run()),
        "miri" => no_args(task, rest).and_then(|()| miri::run()),
        "tsan" => no_args(task, rest).and_then(|()| tsan::run()),
        "bench" => bench::run(rest),
        "demo" => demo::run(rest),
        "help" | "-h" | "--help" => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        other => Err(format!("unknown task `{other}`\n\n{HELP}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask {task}: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn no_args(task: &str, rest: &[String]) -> Result<(), String> {
    if rest.is_empty() {
        Ok(())
    } else {
        Err(format!("`{task}` takes no arguments, got {rest:?}"))
    }
}
