//! Running processes: print the command, run it, fail on a non-zero exit.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// The workspace root (the parent of `xtask/`).
pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// The cargo that runs this xtask (`$CARGO`), so every step uses one toolchain.
pub(crate) fn cargo() -> Cmd {
    Cmd::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// A command line under construction.
pub(crate) struct Cmd {
    program: String,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    env_removes: Vec<String>,
}

impl Cmd {
    pub(crate) fn new(program: impl Into<String>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            envs: Vec::new(),
            env_removes: Vec::new(),
        }
    }

    pub(crate) fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub(crate) fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    pub(crate) fn env_remove(mut self, key: &str) -> Self {
        self.env_removes.push(key.into());
        self
    }

    fn display(&self) -> String {
        let mut s = String::new();
        for (k, v) in &self.envs {
            s.push_str(&format!("{k}={} ", quote(v)));
        }
        let program = Path::new(&self.program)
            .file_name()
            .map_or(self.program.clone(), |n| n.to_string_lossy().into_owned());
        s.push_str(&program);
        for a in &self.args {
            s.push(' ');
            s.push_str(&quote(a));
        }
        s
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.program);
        c.args(&self.args).current_dir(root());
        for k in &self.env_removes {
            c.env_remove(k);
        }
        for (k, v) in &self.envs {
            c.env(k, v);
        }
        c
    }

    /// Prints and runs the command; an error if it cannot start or exits non-zero.
    pub(crate) fn run(&self) -> Result<(), String> {
        let shown = self.display();
        println!("$ {shown}");
        let started = Instant::now();
        let status = self
            .command()
            .status()
            .map_err(|e| format!("could not run `{shown}`: {e}"))?;
        println!("  ({:.1}s)", started.elapsed().as_secs_f64());
        if status.success() {
            Ok(())
        } else {
            Err(format!("`{shown}` failed with {status}"))
        }
    }

    /// Runs quietly and reports whether it exited zero (for probing tools).
    pub(crate) fn succeeds_quietly(&self) -> bool {
        self.command()
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Runs quietly and returns its standard output, if it exited zero.
    pub(crate) fn read(&self) -> Option<String> {
        let out = self.command().stderr(Stdio::null()).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

fn quote(s: &str) -> String {
    if s.is_empty() || s.contains([' ', '"', '\'', '$']) {
        format!("'{}'", s.replace('\'', r"'\''"))
    } else {
        s.to_string()
    }
}

/// Appends `extra` to the value of environment variable `key`, space-separated.
pub(crate) fn env_with(key: &str, extra: &str) -> String {
    match std::env::var(key) {
        Ok(v) if !v.trim().is_empty() => format!("{v} {extra}"),
        _ => extra.to_string(),
    }
}

/// Packages under `crates/` whose files satisfy `pred(manifest, sources)`, where
/// `sources` is the text of every `.rs` file under the crate's `src/` and `tests/`.
pub(crate) fn crates_where(pred: impl Fn(&str, &str) -> bool) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(dirs) = std::fs::read_dir(root().join("crates")) else {
        return found;
    };
    let mut dirs: Vec<_> = dirs.flatten().map(|d| d.path()).collect();
    dirs.sort();
    for dir in dirs {
        let Ok(manifest) = std::fs::read_to_string(dir.join("Cargo.toml")) else {
            continue;
        };
        let mut sources = String::new();
        collect_sources(&dir.join("src"), &mut sources);
        collect_sources(&dir.join("tests"), &mut sources);
        if pred(&manifest, &sources)
            && let Some(name) = package_name(&manifest)
        {
            found.push(name);
        }
    }
    found
}

fn collect_sources(dir: &Path, out: &mut String) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect_sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs")
            && let Ok(s) = std::fs::read_to_string(&p)
        {
            out.push_str(&s);
        }
    }
}

fn package_name(manifest: &str) -> Option<String> {
    manifest
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("name = \""))
        .and_then(|l| l.split('"').next())
        .map(str::to_string)
}

/// The nightly toolchain that miri and ThreadSanitizer need.
pub(crate) const NIGHTLY: &str = "nightly";

/// `rustup run nightly cargo`, with the variables the outer stable cargo set removed
/// so they cannot pin the child to the stable toolchain.
pub(crate) fn nightly_cargo() -> Cmd {
    Cmd::new("rustup")
        .args(["run", NIGHTLY, "cargo"])
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO")
        .env_remove("RUSTC")
        .env_remove("RUSTDOC")
        .env_remove("RUSTC_WRAPPER")
}

/// Installs the nightly `components` (e.g. `miri`, `rust-src`) that are missing.
pub(crate) fn ensure_nightly_components(components: &[&str]) -> Result<(), String> {
    let installed = Cmd::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", NIGHTLY])
        .env_remove("RUSTUP_TOOLCHAIN")
        .read()
        .unwrap_or_default();
    let missing: Vec<&str> = components
        .iter()
        .copied()
        .filter(|c| !installed.lines().any(|l| l.starts_with(c)))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Cmd::new("rustup")
        .args(["component", "add", "--toolchain", NIGHTLY])
        .args(missing)
        .env_remove("RUSTUP_TOOLCHAIN")
        .run()
        .map_err(|e| {
            format!("{e}\n(needs rustup and a {NIGHTLY} toolchain: `rustup toolchain install {NIGHTLY}`)")
        })
}

/// The host's target triple (`rustc -vV`), for builds that need `--target`.
pub(crate) fn host_triple() -> Result<String, String> {
    let out = Cmd::new("rustc")
        .args(["-vV"])
        .read()
        .ok_or("could not run `rustc -vV`")?;
    out.lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_string)
        .ok_or_else(|| "`rustc -vV` printed no host line".into())
}
