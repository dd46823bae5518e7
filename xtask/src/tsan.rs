//! `tsan`: the stress tests under ThreadSanitizer.
//!
//! A stress test is a test whose name contains `stress` (bounded in iterations and
//! time, asserting a primitive's invariant from many threads). This task finds the
//! crates that have one, builds them with `-Zsanitizer=thread` on the nightly
//! toolchain with `-Zbuild-std` (so std's own synchronisation is instrumented too
//! and `Arc`'s fences are not reported as races), in its own target directory, and
//! runs only those tests. The nightly `rust-src` component is installed when
//! missing. Any data race TSan reports fails the run (`halt_on_error=1`).

use crate::cmd::{
    crates_where, ensure_nightly_components, env_with, host_triple, nightly_cargo, root,
};

/// The substring that marks a test as a stress test.
const FILTER: &str = "stress";

pub(crate) fn run() -> Result<(), String> {
    ensure_nightly_components(&["rust-src"])?;
    let packages = crates_where(|_, src| {
        src.lines().any(|l| {
            let l = l.trim_start();
            (l.starts_with("fn ") || l.starts_with("async fn ")) && l.contains(FILTER)
        })
    });
    if packages.is_empty() {
        return Err(format!(
            "no crate has a test whose name contains `{FILTER}`"
        ));
    }
    let target = root().join("target").join("tsan");
    let mut cmd = nightly_cargo().args([
        "test",
        "-Zbuild-std",
        "--target",
        host_triple()?.as_str(),
        "--lib",
        "--tests",
        "--all-features",
    ]);
    for p in &packages {
        cmd = cmd.args(["-p", p.as_str()]);
    }
    cmd.args(["--", FILTER])
        .env("RUSTFLAGS", env_with("RUSTFLAGS", "-Zsanitizer=thread"))
        .env(
            "RUSTDOCFLAGS",
            env_with("RUSTDOCFLAGS", "-Zsanitizer=thread"),
        )
        .env(
            "TSAN_OPTIONS",
            env_with("TSAN_OPTIONS", "halt_on_error=1 second_deadlock_stack=1"),
        )
        .env("CARGO_TARGET_DIR", target.to_string_lossy())
        .run()
}
