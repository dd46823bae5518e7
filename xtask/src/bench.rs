//! `bench [--quick] [AREA]`: runs the criterion benches in `benches/` and prints a
//! markdown table of heijunka against each peer, side by side from the same run.
//!
//! Criterion writes `target/criterion/**/new/{benchmark,estimates}.json`; this task
//! reads the ones written by this run. In each group (`<area>/<operation>`) the
//! function `heijunka` is compared with every other function (the peers). The
//! figure is criterion's median estimate: on a shared, noisy machine the median is
//! steadier than the mean. The `baseline` group (an uncontended `fetch_add`,
//! `Instant::now()`, a `Box::new` + drop) is timed in every bench target, and
//! heijunka's cost is also expressed in `fetch_add`s. A group that also times the
//! bare service a layer wraps (function `bare`) gets a second table: each layer's
//! overhead (its time minus `bare`'s) and the ratio of the overheads.
//!
//! `bench --guard` runs only the headline rows listed in the guard table of
//! `docs/benchmarks.md` (between the `bench-guard` markers), in criterion's quick
//! mode, and fails if a ratio (or an absolute time) is past its guard by more than
//! [`TOLERANCE`]: a documented figure cannot go stale unnoticed.

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
            "--guard" if args.len() == 1 => return guard(),
            "--guard" => return Err("`--guard` takes no other argument".into()),
            "--quick" => quick = true,
            s if s.starts_with('-') => {
                return Err(format!(
                    "unknown option `{s}` (usage: bench [--quick] [AREA] | bench --guard)"
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
    s.push_str(&overheads(results));
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

/// The function a group times to measure the service a layer wraps: with one, a
/// layer's cost is its time minus this one's (its overhead), and targets stated in
/// overhead compare those.
const BARE: &str = "bare";

/// For each group that times a [`BARE`] function: heijunka's overhead over it,
/// each peer's, and their ratio. Empty when no group has one.
fn overheads(results: &Results) -> String {
    let mut s = String::new();
    for ((group, param), functions) in results {
        let (Some(&ours), Some(&bare)) = (functions.get("heijunka"), functions.get(BARE)) else {
            continue;
        };
        for (peer, &theirs) in functions
            .iter()
            .filter(|(n, _)| *n != "heijunka" && *n != BARE)
        {
            let (o, t) = (ours - bare, theirs - bare);
            let ratio = if t > 0.0 {
                format!("{:.2}", o / t)
            } else {
                "-".to_string()
            };
            s.push_str(&format!(
                "| {group} | {param} | {} | {peer} | {} | {ratio} |\n",
                fmt_ns(o),
                fmt_ns(t)
            ));
        }
    }
    if s.is_empty() {
        return s;
    }
    format!(
        "\nOverhead over the bare service (time minus `{BARE}`, same run):\n\n\
         | operation | threads/param | heijunka overhead | peer | peer overhead | ratio (heijunka/peer) |\n\
         | --- | --- | --- | --- | --- | --- |\n{s}"
    )
}

/// How far past its guard a figure may be before `--guard` fails: ratios measured
/// side by side in one run are stable to about ±30 % on the noisy 2-core machines
/// this project runs on (BENCHMARKS.md), absolute times less so.
const TOLERANCE: f64 = 1.3;

/// The file holding the guard table, and its markers.
const GUARD_DOC: &str = "docs/benchmarks.md";
const GUARD_BEGIN: &str = "<!-- bench-guard:begin -->";
const GUARD_END: &str = "<!-- bench-guard:end -->";

/// One row of the guard table.
#[derive(Debug)]
struct GuardRow {
    name: String,
    bench: String,
    group: String,
    param: String,
    /// `None`: an absolute time is guarded, not a ratio.
    peer: Option<String>,
    limit: Limit,
}

#[derive(Debug, Clone, Copy)]
enum Limit {
    /// heijunka time / peer time ≤ this.
    Ratio(f64),
    /// heijunka's median ≤ this many nanoseconds.
    Nanos(f64),
    /// heijunka's median - the peer's ≤ this many nanoseconds (`≤ +20 ns`).
    Extra(f64),
}

/// The bench targets that need a feature of `heijunka-benches` (their rows run
/// in a cargo invocation of their own, with it).
const FEATURED_BENCHES: &[(&str, &str)] = &[("metrics", "metrics")];

/// Parses the table between the markers: `| row | bench | group | param | peer | guard |`,
/// where `guard` is `≤ 1.1` (a ratio) or `≤ 200 ns` (an absolute median) and a
/// `-` peer means the absolute form.
fn guard_rows(doc: &str) -> Result<Vec<GuardRow>, String> {
    let start = doc
        .find(GUARD_BEGIN)
        .ok_or_else(|| format!("{GUARD_DOC} has no `{GUARD_BEGIN}` marker"))?;
    let end = doc[start..]
        .find(GUARD_END)
        .ok_or_else(|| format!("{GUARD_DOC} has no `{GUARD_END}` marker"))?;
    let mut rows = Vec::new();
    for line in doc[start..start + end].lines() {
        let cells: Vec<&str> = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        if cells.len() != 6 || cells[0] == "row" || cells[0].starts_with("---") {
            continue;
        }
        let strip = |c: &str| c.trim_matches('`').to_string();
        let guard = cells[5].trim_start_matches(['≤', '<', '=', ' ']);
        let limit = if let Some(extra) = guard.strip_prefix('+') {
            let ns = extra
                .strip_suffix("ns")
                .ok_or_else(|| format!("guard row `{line}`: `+N` takes ns (`≤ +20 ns`)"))?;
            Limit::Extra(parse_number(ns.trim(), line)?)
        } else if let Some(ns) = guard.strip_suffix("ns") {
            Limit::Nanos(parse_number(ns.trim(), line)?)
        } else {
            Limit::Ratio(parse_number(guard, line)?)
        };
        let peer = (cells[4] != "-").then(|| strip(cells[4]));
        if peer.is_none() != matches!(limit, Limit::Nanos(_)) {
            return Err(format!(
                "guard row `{line}`: a peer takes a ratio or `+N ns`, `-` takes a time in ns"
            ));
        }
        rows.push(GuardRow {
            name: cells[0].to_string(),
            bench: strip(cells[1]),
            group: strip(cells[2]),
            param: strip(cells[3]),
            peer,
            limit,
        });
    }
    if rows.is_empty() {
        return Err(format!("the guard table in {GUARD_DOC} has no rows"));
    }
    Ok(rows)
}

fn parse_number(s: &str, line: &str) -> Result<f64, String> {
    s.trim()
        .parse::<f64>()
        .map_err(|e| format!("guard row `{line}`: `{s}` is not a number: {e}"))
}

/// `bench --guard`: the headline rows in quick mode, each against its guard.
fn guard() -> Result<(), String> {
    let doc_path = root().join(GUARD_DOC);
    let doc = std::fs::read_to_string(&doc_path)
        .map_err(|e| format!("cannot read {}: {e}", doc_path.display()))?;
    let rows = guard_rows(&doc)?;
    let mut benches: Vec<&str> = rows.iter().map(|r| r.bench.as_str()).collect();
    benches.sort_unstable();
    benches.dedup();
    let mut groups: Vec<&str> = rows.iter().map(|r| r.group.as_str()).collect();
    groups.sort_unstable();
    groups.dedup();

    let started = SystemTime::now();
    // Criterion's filter is a regex over `group/function[/param]`.
    let filter = format!("^({})/", groups.join("|"));
    let args = [
        "--quick",
        "--warm-up-time",
        "1",
        "--noplot",
        filter.as_str(),
    ];
    let featured = |b: &str| FEATURED_BENCHES.iter().find(|(t, _)| *t == b);
    let plain: Vec<&str> = benches
        .iter()
        .copied()
        .filter(|b| featured(b).is_none())
        .collect();
    if !plain.is_empty() {
        let mut cmd = cargo().args(["bench", "-p", "heijunka-benches"]);
        for b in &plain {
            cmd = cmd.args(["--bench", b]);
        }
        cmd.args(["--"]).args(args).run()?;
    }
    for (bench, feature) in benches.iter().filter_map(|b| featured(b)) {
        cargo()
            .args([
                "bench",
                "-p",
                "heijunka-benches",
                "--features",
                feature,
                "--bench",
                bench,
                "--",
            ])
            .args(args)
            .run()?;
    }
    let results = collect(&criterion_dir(), started)?;

    let mut report = String::from(
        "| row | measured | guard | limit with tolerance | verdict |\n| --- | --- | --- | --- | --- |\n",
    );
    let mut failed = Vec::new();
    for row in &rows {
        let functions = results.get(&(row.group.clone(), row.param.clone()));
        let ours = functions.and_then(|f| f.get("heijunka")).copied();
        let (measured, value, limit) = match (row.limit, ours) {
            (_, None) => {
                failed.push(format!(
                    "{}: no `heijunka` result for {}",
                    row.name, row.group
                ));
                continue;
            }
            (Limit::Nanos(limit), Some(ours)) => (fmt_ns(ours), ours, limit),
            (Limit::Extra(limit), Some(ours)) => {
                let peer = row.peer.as_deref().unwrap_or_default();
                let Some(&theirs) = functions.and_then(|f| f.get(peer)) else {
                    failed.push(format!(
                        "{}: no `{peer}` result for {}",
                        row.name, row.group
                    ));
                    continue;
                };
                let extra = ours - theirs;
                (
                    format!(
                        "+{} ({} vs {})",
                        fmt_ns(extra),
                        fmt_ns(ours),
                        fmt_ns(theirs)
                    ),
                    extra,
                    limit,
                )
            }
            (Limit::Ratio(limit), Some(ours)) => {
                let peer = row.peer.as_deref().unwrap_or_default();
                let Some(&theirs) = functions.and_then(|f| f.get(peer)) else {
                    failed.push(format!(
                        "{}: no `{peer}` result for {}",
                        row.name, row.group
                    ));
                    continue;
                };
                let ratio = ours / theirs;
                (
                    format!("{ratio:.2} ({} vs {})", fmt_ns(ours), fmt_ns(theirs)),
                    ratio,
                    limit,
                )
            }
        };
        let ok = value <= limit * TOLERANCE;
        let shown = |v: f64| match row.limit {
            Limit::Nanos(_) => fmt_ns(v),
            Limit::Extra(_) => format!("+{}", fmt_ns(v)),
            Limit::Ratio(_) => format!("{v:.2}"),
        };
        report.push_str(&format!(
            "| {} | {measured} | ≤ {} | ≤ {} | {} |\n",
            row.name,
            shown(limit),
            shown(limit * TOLERANCE),
            if ok { "ok" } else { "**past its guard**" }
        ));
        if !ok {
            failed.push(format!(
                "{}: {measured} is past {} (guard {} x {TOLERANCE})",
                row.name,
                shown(limit * TOLERANCE),
                shown(limit)
            ));
        }
    }
    println!("\n{report}");
    if failed.is_empty() {
        println!("bench --guard: every headline figure is within its guard");
        Ok(())
    } else {
        Err(format!(
            "bench --guard: {} row(s) failed:\n  {}",
            failed.len(),
            failed.join("\n  ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_rows_parse_ratios_and_times() {
        let doc = "x\n<!-- bench-guard:begin -->\n| row | bench | group | param | peer | guard |\n| --- | --- | --- | --- | --- | --- |\n| a | breaker | `breaker/closed_call` |  | failsafe | ≤ 0.2 |\n| b | breaker | breaker/open_reject |  | - | < 10 ns |\n<!-- bench-guard:end -->\n";
        let rows = guard_rows(doc).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].group, "breaker/closed_call");
        assert_eq!(rows[0].peer.as_deref(), Some("failsafe"));
        assert!(matches!(rows[0].limit, Limit::Ratio(r) if (r - 0.2).abs() < 1e-9));
        assert!(rows[1].peer.is_none());
        assert!(matches!(rows[1].limit, Limit::Nanos(n) if (n - 10.0).abs() < 1e-9));
    }

    #[test]
    fn overheads_subtract_the_bare_service() {
        let mut results = Results::new();
        let g = results
            .entry(("policy/x".to_string(), "1".to_string()))
            .or_default();
        g.insert("heijunka".to_string(), 60.0);
        g.insert("tower".to_string(), 50.0);
        g.insert("bare".to_string(), 40.0);
        results
            .entry(("policy/no_bare".to_string(), String::new()))
            .or_default()
            .insert("heijunka".to_string(), 1.0);
        let s = overheads(&results);
        assert!(
            s.contains("| policy/x | 1 | 20.00 ns | tower | 10.00 ns | 2.00 |"),
            "{s}"
        );
        assert!(!s.contains("no_bare"), "{s}");
        assert!(overheads(&Results::new()).is_empty());
    }

    #[test]
    fn guard_rows_parse_an_extra_time_over_a_peer() {
        let doc = "<!-- bench-guard:begin -->\n| m | metrics | `metrics/policy_admit` |  | no-recorder | ≤ +20 ns |\n| n | metrics | g |  | no-recorder | ≤ +20 |\n<!-- bench-guard:end -->";
        assert!(guard_rows(doc).unwrap_err().contains("`+N` takes ns"));
        let rows = guard_rows(&doc.replace("≤ +20 |", "≤ +5 ns |")).unwrap();
        assert!(matches!(rows[0].limit, Limit::Extra(n) if (n - 20.0).abs() < 1e-9));
        assert_eq!(rows[1].peer.as_deref(), Some("no-recorder"));
    }

    #[test]
    fn guard_rows_refuse_a_peer_with_a_time() {
        let doc = "<!-- bench-guard:begin -->\n| a | breaker | g |  | failsafe | ≤ 10 ns |\n<!-- bench-guard:end -->";
        assert!(
            guard_rows(doc)
                .unwrap_err()
                .contains("a peer takes a ratio")
        );
    }
}
