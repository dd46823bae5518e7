//! `demo [ARGS]`: runs the facade's overload demo,
//! `crates/heijunka/examples/overload.rs`, in release mode, passing `ARGS` through
//! (`cargo xtask demo --quick` is the short run CI uses).

use crate::cmd::cargo;

pub(crate) fn run(args: &[String]) -> Result<(), String> {
    cargo()
        .args([
            "run",
            "--release",
            "-p",
            "heijunka",
            "--features",
            "tower",
            "--example",
            "overload",
            "--",
        ])
        .args(args)
        .run()
}
