//! `loom`: runs every crate's loom models.
//!
//! The models live next to the code they prove, in `#[cfg(all(test, loom))] mod
//! loom_tests` modules. This task finds the crates that have one, builds them with
//! `RUSTFLAGS="--cfg loom"` in release with debug assertions, in its own target
//! directory (so the main build cache survives), and runs only the `loom_tests`.

use crate::cmd::{cargo, crates_where, env_with, root};

pub(crate) fn run() -> Result<(), String> {
    let packages = crates_where(|_, src| src.contains("mod loom_tests"));
    if packages.is_empty() {
        return Err("no crate has a `mod loom_tests`".into());
    }
    let target = root().join("target").join("loom");
    let mut cmd = cargo().args(["test", "--release", "--lib"]);
    for p in &packages {
        cmd = cmd.args(["-p", p.as_str()]);
    }
    cmd.args(["--", "loom_tests", "--test-threads=1"])
        .env("RUSTFLAGS", env_with("RUSTFLAGS", "--cfg loom"))
        .env("CARGO_TARGET_DIR", target.to_string_lossy())
        .env("CARGO_PROFILE_RELEASE_DEBUG_ASSERTIONS", "true")
        .env(
            "LOOM_MAX_PREEMPTIONS",
            std::env::var("LOOM_MAX_PREEMPTIONS").unwrap_or_else(|_| "2".into()),
        )
        .run()
}
