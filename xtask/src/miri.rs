//! `miri`: runs the tests of the crates marked for miri under the nightly interpreter.
//!
//! A crate opts in with `[package.metadata.heijunka] miri = true` in its manifest
//! (every crate with `unsafe` or a hand-written atomic protocol does): its unit tests
//! and every integration test run. A crate whose integration tests mostly check
//! logic under a lock (no `unsafe`, no atomics of its own) names the test files that
//! do exercise its atomic protocols instead, `miri-tests = ["queue", "limit"]`: its
//! unit tests and those files run. Tests too slow for miri carry
//! `#[cfg_attr(miri, ignore)]` with the reason. The nightly `miri` and `rust-src`
//! components are installed with rustup when missing.

use crate::cmd::{crates_where, ensure_nightly_components, nightly_cargo, root};

pub(crate) fn run() -> Result<(), String> {
    ensure_nightly_components(&["miri", "rust-src"])?;
    nightly_cargo().args(["miri", "setup"]).run()?;
    let mut all_tests = Vec::new();
    let mut some_tests = Vec::new();
    for name in crates_where(|manifest, _| manifest.contains("[package.metadata.heijunka]")) {
        let manifest = manifest_of(&name).unwrap_or_default();
        if manifest.lines().any(|l| l.trim() == "miri = true") {
            all_tests.push(name);
        } else if let Some(tests) = miri_tests(&manifest) {
            some_tests.push((name, tests));
        }
    }
    if all_tests.is_empty() && some_tests.is_empty() {
        return Err("no crate is marked `[package.metadata.heijunka] miri = true`".into());
    }
    let target = root().join("target").join("miri");
    let miri = |args: Vec<String>| {
        nightly_cargo()
            .args(["miri", "test"])
            .args(args)
            .env(
                "MIRIFLAGS",
                std::env::var("MIRIFLAGS")
                    .unwrap_or_else(|_| "-Zmiri-strict-provenance -Zmiri-disable-isolation".into()),
            )
            .env("CARGO_TARGET_DIR", target.to_string_lossy())
            .run()
    };
    if !all_tests.is_empty() {
        let mut args = vec!["--lib".to_string(), "--tests".to_string()];
        for p in &all_tests {
            args.extend(["-p".to_string(), p.clone()]);
        }
        miri(args)?;
    }
    for (package, tests) in some_tests {
        let mut args = vec!["-p".to_string(), package, "--lib".to_string()];
        for t in tests {
            args.extend(["--test".to_string(), t]);
        }
        miri(args)?;
    }
    Ok(())
}

/// The manifest text of workspace package `name` under `crates/`.
fn manifest_of(name: &str) -> Option<String> {
    let dir = root().join("crates");
    std::fs::read_dir(dir).ok()?.flatten().find_map(|d| {
        let text = std::fs::read_to_string(d.path().join("Cargo.toml")).ok()?;
        text.lines()
            .any(|l| l.trim() == format!("name = \"{name}\""))
            .then_some(text)
    })
}

/// The test files of a `miri-tests = ["a", "b"]` line.
fn miri_tests(manifest: &str) -> Option<Vec<String>> {
    let line = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("miri-tests = "))?;
    let list = line.trim().strip_prefix('[')?.strip_suffix(']')?;
    Some(
        list.split(',')
            .map(|s| s.trim().trim_matches('"').to_string())
            .filter(|s| !s.is_empty())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::miri_tests;

    #[test]
    fn miri_tests_lists_the_named_files() {
        let m = "[package.metadata.heijunka]\nmiri-tests = [\"queue\", \"limit\"]\n";
        assert_eq!(miri_tests(m), Some(vec!["queue".into(), "limit".into()]));
        assert_eq!(miri_tests("miri = true"), None);
    }
}
