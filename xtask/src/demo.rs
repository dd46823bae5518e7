//! `demo`: runs the facade's main example, `crates/heijunka/examples/demo.rs`; until
//! that exists, lists the facade's examples and runs each.

use crate::cmd::{cargo, root};

pub(crate) fn run() -> Result<(), String> {
    let dir = root().join("crates").join("heijunka").join("examples");
    let mut examples: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".rs").map(str::to_string)
        })
        .collect();
    examples.sort();
    if examples.iter().any(|e| e == "demo") {
        return cargo()
            .args(["run", "--release", "-p", "heijunka", "--example", "demo"])
            .run();
    }
    println!("The facade's examples (crates/heijunka/examples):");
    for e in &examples {
        println!("  cargo run -p heijunka --example {e}");
    }
    for e in &examples {
        println!();
        cargo()
            .args(["run", "-q", "-p", "heijunka", "--example", e.as_str()])
            .run()?;
    }
    Ok(())
}
