//! `ci`, `test`, `lint`, `doc`: the checks CI runs.

use crate::cmd::{Cmd, cargo, env_with};

/// Everything CI runs, in order, stopping at the first failure.
pub(crate) fn ci() -> Result<(), String> {
    let started = std::time::Instant::now();
    lint()?;
    test()?;
    test_default_features()?;
    demo_quick()?;
    // The served demo driven by an external load generator, as a user runs it on
    // a fresh machine (oha is installed when missing).
    crate::demo::run(&["--external".to_string()])?;
    // The MCP server example under a burst from the official Python SDK.
    crate::mcp_demo::run(true)?;
    // Two replicas sharing one Redis: the fleet's rate, Redis killed and back.
    crate::demo::redis(&["--redis".to_string(), "--quick".to_string()])?;
    doc()?;
    crate::loom::run()?;
    crate::miri::run()?;
    crate::tsan::run()?;
    println!(
        "xtask ci: all checks passed in {:.0}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Formatting, the layer check, and clippy with warnings denied, on every target.
pub(crate) fn lint() -> Result<(), String> {
    cargo().args(["fmt", "--all", "--check"]).run()?;
    crate::layers::run()?;
    cargo()
        .args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--all-features",
            "--",
            "-D",
            "warnings",
        ])
        .run()
}

/// `redis-server` on `PATH` for heijunka-redis's tests (each test binary starts
/// its own on a free loopback port): installed with `apt-get` where it is
/// missing and the machine has it, else a clear error. The tests never skip.
pub(crate) fn ensure_redis_server() -> Result<(), String> {
    let present = || {
        Cmd::new("redis-server")
            .args(["--version"])
            .succeeds_quietly()
    };
    if present() {
        return Ok(());
    }
    println!("redis-server not found: installing it with apt-get (heijunka-redis's tests need it)");
    let root = Cmd::new("id")
        .args(["-u"])
        .read()
        .is_some_and(|u| u.trim() == "0");
    let apt = |args: &[&str]| {
        let cmd = if root {
            Cmd::new("apt-get").args(args.iter().copied())
        } else {
            Cmd::new("sudo")
                .args(["-n", "apt-get"])
                .args(args.iter().copied())
        };
        cmd.env("DEBIAN_FRONTEND", "noninteractive").run()
    };
    let installed =
        apt(&["update", "-qq"]).and_then(|()| apt(&["install", "-y", "-qq", "redis-server"]));
    if installed.is_ok() && present() {
        return Ok(());
    }
    Err(
        "redis-server is not installed and could not be installed with apt-get: install it \
         (Debian/Ubuntu: `apt-get install -y redis-server`, macOS: `brew install redis`); \
         heijunka-redis's tests start their own server and do not skip"
            .to_owned(),
    )
}

/// The unit, integration and example tests (nextest where installed), then doc tests.
pub(crate) fn test() -> Result<(), String> {
    ensure_redis_server()?;
    if cargo().args(["nextest", "--version"]).succeeds_quietly() {
        cargo()
            .args([
                "nextest",
                "run",
                "--workspace",
                "--all-features",
                "--no-fail-fast",
            ])
            .run()?;
    } else {
        println!("(cargo-nextest not installed: using cargo test)");
        cargo()
            .args([
                "test",
                "--workspace",
                "--all-features",
                "--lib",
                "--bins",
                "--tests",
                "--examples",
            ])
            .run()?;
    }
    cargo()
        .args(["test", "--workspace", "--all-features", "--doc"])
        .run()
}

/// The tests again with each crate's default features (what a user who adds the
/// crate gets), and the recycler's in release, where its misuse checks are off and
/// the plain return path runs: `test` uses `--all-features`, which turns both off.
pub(crate) fn test_default_features() -> Result<(), String> {
    let nextest = cargo().args(["nextest", "--version"]).succeeds_quietly();
    let runner: &[&str] = if nextest {
        &["nextest", "run", "--no-fail-fast"]
    } else {
        &["test", "--lib", "--bins", "--tests", "--examples"]
    };
    cargo()
        .args(runner.iter().copied())
        .args(["--workspace"])
        .run()?;
    cargo()
        .args(runner.iter().copied())
        .args(["--release", "-p", "heijunka-recycler"])
        .run()
}

/// The overload demo in its short mode: it exits non-zero unless, in the burst,
/// heijunka's goodput is at least the unprotected run's and tower's, and its p99
/// of all requests (fast rejections count as answered) is below the unprotected
/// run's.
pub(crate) fn demo_quick() -> Result<(), String> {
    cargo()
        .args([
            "run",
            "--release",
            "-p",
            "heijunka",
            "--features",
            "tower,metrics",
            "--example",
            "overload",
            "--",
            "--quick",
        ])
        .run()
}

/// API docs with warnings (broken links, missing docs) denied.
pub(crate) fn doc() -> Result<(), String> {
    cargo()
        .args(["doc", "--workspace", "--no-deps", "--all-features"])
        .env("RUSTDOCFLAGS", env_with("RUSTDOCFLAGS", "-D warnings"))
        .run()
}
