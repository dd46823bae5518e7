//! `miri`: runs the tests of the crates marked for miri under the nightly interpreter.
//!
//! A crate opts in with `[package.metadata.heijunka] miri = true` in its manifest
//! (every crate with `unsafe` or a hand-written atomic protocol does); tests too slow
//! for miri carry `#[cfg_attr(miri, ignore)]` with the reason. The nightly `miri` and
//! `rust-src` components are installed with rustup when missing.

use crate::cmd::{crates_where, ensure_nightly_components, nightly_cargo, root};

pub(crate) fn run() -> Result<(), String> {
    ensure_nightly_components(&["miri", "rust-src"])?;
    nightly_cargo().args(["miri", "setup"]).run()?;
    let packages = crates_where(|manifest, _| {
        manifest.contains("[package.metadata.heijunka]") && manifest.contains("miri = true")
    });
    if packages.is_empty() {
        return Err("no crate is marked `[package.metadata.heijunka] miri = true`".into());
    }
    let target = root().join("target").join("miri");
    let mut cmd = nightly_cargo().args(["miri", "test", "--lib", "--tests"]);
    for p in &packages {
        cmd = cmd.args(["-p", p.as_str()]);
    }
    cmd.env(
        "MIRIFLAGS",
        std::env::var("MIRIFLAGS")
            .unwrap_or_else(|_| "-Zmiri-strict-provenance -Zmiri-disable-isolation".into()),
    )
    .env("CARGO_TARGET_DIR", target.to_string_lossy())
    .run()
}
