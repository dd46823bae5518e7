//! `layers`: checks that every heijunka crate depends only on the heijunka crates
//! below it in the layer diagram (`docs/architecture.md`).

use serde_json::Value;

use crate::cmd::cargo;

/// Each crate and the heijunka crates it may depend on (normal and build deps).
const ALLOWED: &[(&str, &[&str])] = &[
    ("heijunka-core", &[]),
    ("heijunka-shutdown", &["heijunka-core"]),
    ("heijunka-backpressure", &["heijunka-core"]),
    ("heijunka-breaker", &["heijunka-core"]),
    ("heijunka-recycler", &["heijunka-core"]),
    ("heijunka-memory", &["heijunka-core"]),
    (
        "heijunka-pool",
        &[
            "heijunka-core",
            "heijunka-backpressure",
            "heijunka-shutdown",
        ],
    ),
    (
        "heijunka-event-bus",
        &[
            "heijunka-core",
            "heijunka-backpressure",
            "heijunka-shutdown",
            "heijunka-recycler",
            "heijunka-pool",
        ],
    ),
    (
        "heijunka-retry",
        &[
            "heijunka-core",
            "heijunka-backpressure",
            "heijunka-breaker",
            "heijunka-memory",
        ],
    ),
    // Shared state in Redis: the rate limit, concurrency leases, breaker trips,
    // and (feature `bus`) the event bus bridge.
    (
        "heijunka-redis",
        &[
            "heijunka-core",
            "heijunka-backpressure",
            "heijunka-breaker",
            "heijunka-event-bus",
        ],
    ),
    // Beside the facade, not on it: nothing may depend on it (no entry lists it).
    (
        "heijunka-mcp",
        &[
            "heijunka-core",
            "heijunka-shutdown",
            "heijunka-backpressure",
            "heijunka-breaker",
            "heijunka-memory",
            "heijunka-pool",
        ],
    ),
    (
        "heijunka",
        &[
            "heijunka-core",
            "heijunka-shutdown",
            "heijunka-backpressure",
            "heijunka-breaker",
            "heijunka-recycler",
            "heijunka-memory",
            "heijunka-pool",
            "heijunka-event-bus",
            "heijunka-retry",
            "heijunka-redis",
        ],
    ),
];

pub(crate) fn run() -> Result<(), String> {
    let cmd = cargo().args(["metadata", "--format-version", "1", "--no-deps"]);
    println!("$ cargo metadata --format-version 1 --no-deps (layer check)");
    let json = cmd.read().ok_or("cargo metadata failed")?;
    let meta: Value = serde_json::from_str(&json).map_err(|e| format!("cargo metadata: {e}"))?;
    let mut problems = Vec::new();
    let packages = meta["packages"]
        .as_array()
        .ok_or("cargo metadata: no packages")?;
    for p in packages {
        let name = p["name"].as_str().unwrap_or_default();
        if name == "xtask" || name == "heijunka-benches" {
            continue;
        }
        let Some((_, allowed)) = ALLOWED.iter().find(|(n, _)| *n == name) else {
            problems.push(format!(
                "`{name}` is not in the layer table (xtask/src/layers.rs)"
            ));
            continue;
        };
        for d in p["dependencies"].as_array().into_iter().flatten() {
            let dep = d["name"].as_str().unwrap_or_default();
            // dev-dependencies may reach anywhere (tests of the facade's examples).
            if d["kind"].as_str() == Some("dev") || !dep.starts_with("heijunka") {
                continue;
            }
            if !allowed.contains(&dep) {
                problems.push(format!(
                    "`{name}` depends on `{dep}`, which is not below it in the layer diagram"
                ));
            }
        }
    }
    if problems.is_empty() {
        println!("  layers ok: {} crates checked", ALLOWED.len());
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}
