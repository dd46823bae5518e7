//! `miri`: runs the tests of the crates marked for miri under the nightly interpreter.
//!
//! A crate opts in with `[package.metadata.heijunka] miri = true` in its manifest
//! (every crate with `unsafe` or a hand-written atomic protocol does); tests too slow
//! for miri carry `#[cfg_attr(miri, ignore)]` with the reason. The nightly `miri` and
//! `rust-src` components are installed with rustup when missing.

use crate::cmd::{Cmd, crates_where, root};

const TOOLCHAIN: &str = "nightly";

pub(crate) fn run() -> Result<(), String> {
    ensure_components()?;
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

/// `rustup run nightly cargo`, with the variables the outer stable cargo set removed
/// so they cannot pin the child to the stable toolchain.
fn nightly_cargo() -> Cmd {
    Cmd::new("rustup")
        .args(["run", TOOLCHAIN, "cargo"])
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO")
        .env_remove("RUSTC")
        .env_remove("RUSTDOC")
        .env_remove("RUSTC_WRAPPER")
}

fn ensure_components() -> Result<(), String> {
    let installed = Cmd::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", TOOLCHAIN])
        .env_remove("RUSTUP_TOOLCHAIN")
        .read()
        .unwrap_or_default();
    let has = |c: &str| installed.lines().any(|l| l.starts_with(c));
    if !(has("miri") && has("rust-src")) {
        Cmd::new("rustup")
            .args([
                "component",
                "add",
                "--toolchain",
                TOOLCHAIN,
                "miri",
                "rust-src",
            ])
            .env_remove("RUSTUP_TOOLCHAIN")
            .run()
            .map_err(|e| {
                format!("{e}\n(miri needs rustup and a {TOOLCHAIN} toolchain: `rustup toolchain install {TOOLCHAIN}`)")
            })?;
    }
    nightly_cargo().args(["miri", "setup"]).run()
}
