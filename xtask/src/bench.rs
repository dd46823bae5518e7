//! `bench [--quick] [AREA]`: runs the criterion benches in `benches/` and prints a
//! markdown table of heijunka against each peer, side by side from the same run.
//!
//! Criterion writes `target/criterion/**/new/{benchmark,estimates}.json`; this task
//! reads the ones written by this run. In each group (`<area>/<operation>`) the
//! function `heijunka` is compared with every other function (the peers). The
//! figure is criterion's median estimate: on a shared, noisy machine the median is
//! steadier than the mean. The `baseline` group (an uncontended `fetch_add`,
//! `Instant::now()`, a `Box::new` + drop) is timed in every bench target, and
//! heijunka's cost is also expressed in `fetch_add`s.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde_json::Value;

use crate::cmd::{cargo, root};

pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let mut quick = false;
    let mut area: Option<&str> = None;
    for a in args {
        match a.as_str() {
            "--quick" => quick = true,
            s if s.starts_with('-') => {
                return Err(format!(
                    "unknown option `{s}` (usage: bench [--quick] [AREA])"
                ));
            }
            s if area.is_none() => area = Some(s),
            s => {
                return Err(format!(
                    "one AREA at most, got `{}` and `{s}`",
                    area.unwrap_or("")
                ));
            }
        }
    }
    let areas = bench_targets()?;
    if let Some(a) = area
        && !areas.iter().any(|t| t == a)
    {
        return Err(format!(
            "unknown AREA `{a}`; the bench targets are {areas:?}"
        ));
    }

    let started = SystemTime::now();
    let mut cmd = cargo().args(["bench", "-p", "heijunka-benches"]);
    if let Some(a) = area {
        cmd = cmd.args(["--bench", a]);
    }
    cmd = cmd.args(["--"]);
    if quick {
        cmd = cmd.args(["--quick", "--warm-up-time", "1", "--noplot"]);
    } else {
        cmd = cmd.args(["--noplot"]);
    }
    cmd.run()?;

    let results = collect(&criterion_dir(), started)?;
    if results.is_empty() {
        return Err("criterion wrote no results in this run".into());
    }
    let table = table(&results);
    println!("\n{table}");
    let out = root().join("target").join("bench-table.md");
    std::fs::write(&out, &table).map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    println!(
        "(table also written to {}; copy it into docs/benchmarks.md)",
        out.display()
    );
    Ok(())
}

fn bench_targets() -> Result<Vec<String>, String> {
    let dir = root().join("benches").join("benches");
    let mut v: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_string_lossy()
                .strip_suffix(".rs")
                .map(str::to_string)
        })
        .collect();
    v.sort();
    Ok(v)
}

fn criterion_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root().join("target"), PathBuf::from)
        .join("criterion")
}

/// One measured function: (group, parameter) -> function -> median ns.
type Results = BTreeMap<(String, String), BTreeMap<String, f64>>;

fn collect(dir: &Path, since: SystemTime) -> Result<Results, String> {
    let mut out = Results::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let is_new_benchmark = p.file_name().is_some_and(|n| n == "benchmark.json")
                && p.parent()
                    .and_then(Path::file_name)
                    .is_some_and(|n| n == "new");
            if !is_new_benchmark {
                continue;
            }
            let fresh = e
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|m| m >= since);
            if !fresh {
                continue;
            }
            let meta = read_json(&p)?;
            let est = read_json(&p.with_file_name("estimates.json"))?;
            let group = meta["group_id"].as_str().unwrap_or_default().to_string();
            let function = meta["function_id"].as_str().unwrap_or_default().to_string();
            let param = meta["value_str"].as_str().unwrap_or_default().to_string();
            let Some(median) = est["median"]["point_estimate"].as_f64() else {
                return Err(format!("{}: no median estimate", p.display()));
            };
            out.entry((group, param))
                .or_default()
                .insert(function, median);
        }
    }
    Ok(out)
}

fn read_json(p: &Path) -> Result<Value, String> {
    let s = std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
    serde_json::from_str(&s).map_err(|e| format!("{}: {e}", p.display()))
}

fn fmt_ns(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.2} ns")
    }
}

fn table(results: &Results) -> String {
    let fetch_add = results
        .get(&("baseline".to_string(), String::new()))
        .and_then(|f| f.get("fetch_add"))
        .copied();
    let mut s = String::new();
    s.push_str("| operation | threads/param | heijunka | peer | peer time | ratio (heijunka/peer) | heijunka in fetch_adds |\n");
    s.push_str("| --- | --- | --- | --- | --- | --- | --- |\n");
    for ((group, param), functions) in results {
        if group == "baseline" {
            continue;
        }
        let Some(&ours) = functions.get("heijunka") else {
            continue;
        };
        let in_adds = fetch_add.map_or("-".to_string(), |f| format!("{:.1}", ours / f));
        if functions.len() == 1 {
            // Reported, not compared: no peer measures the same thing.
            s.push_str(&format!(
                "| {group} | {param} | {} | - | - | - | {in_adds} |\n",
                fmt_ns(ours)
            ));
        }
        for (peer, &theirs) in functions.iter().filter(|(n, _)| *n != "heijunka") {
            s.push_str(&format!(
                "| {group} | {param} | {} | {peer} | {} | {:.2} | {in_adds} |\n",
                fmt_ns(ours),
                fmt_ns(theirs),
                ours / theirs,
            ));
        }
    }
    if let Some(base) = results.get(&("baseline".to_string(), String::new())) {
        s.push_str("\nBaselines in the same run: ");
        let parts: Vec<String> = base
            .iter()
            .map(|(n, &ns)| format!("{n} {}", fmt_ns(ns)))
            .collect();
        s.push_str(&parts.join(", "));
        s.push('\n');
    }
    s
}
