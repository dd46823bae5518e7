//! The table, the SVG charts, `report.html` and the standalone `report.svg`.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::Value;

use crate::scenario::Scenario;

pub(crate) fn color(mode: &str) -> &'static str {
    match mode {
        "unprotected" => "#d62728",
        "tower" => "#1f77b4",
        "tower-tuned" => "#9aa5b1",
        _ => "#2a9d2a",
    }
}

/// The sweep's modes, in the order of `Mode::SWEEP`.
const SWEEP_MODES: [&str; 4] = ["unprotected", "tower", "heijunka", "tower-tuned"];

fn ms(v: &Value) -> String {
    v.as_f64().map_or("-".to_string(), |x| format!("{x:.1}"))
}

fn mib(v: &Value) -> String {
    v.as_f64()
        .map_or("-".to_string(), |k| format!("{:.1}", k / 1024.0))
}

/// The per-phase table of the storm runs.
pub(crate) fn table(s: &Scenario, runs: &[Value]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<9} {:<12} {:>6} {:>6} {:>7} {:>8} {:>8} {:>8} {:>6} {:>8} {:>7}  {:>18}",
        "phase",
        "run",
        "sent/s",
        "ok/s",
        "p50 ok",
        "p99 ok",
        "p99 all",
        "rejected",
        "errors",
        "timeouts",
        "dropped",
        "peak RSS c/s/d MiB",
    );
    for (i, phase) in s.phases.iter().enumerate() {
        for run in runs {
            let p = &run["phases"][i];
            let rss = &p["rss_kib"];
            let _ = writeln!(
                out,
                "{:<9} {:<12} {:>6.0} {:>6.0} {:>7} {:>8} {:>8} {:>8} {:>6} {:>8} {:>7}  {:>18}",
                phase.name,
                run["mode"].as_str().unwrap_or("?"),
                phase.rate,
                p["ok"].as_f64().unwrap_or(0.0) / phase.secs,
                ms(&p["p50_ms"]),
                ms(&p["p99_ms"]),
                ms(&p["p99_all_ms"]),
                p["rejected"].as_u64().unwrap_or(0),
                p["errors"].as_u64().unwrap_or(0),
                p["timeouts"].as_u64().unwrap_or(0),
                p["dropped"].as_u64().unwrap_or(0),
                format!(
                    "{}/{}/{}",
                    mib(&rss["client"]),
                    mib(&rss["server"]),
                    mib(&rss["dependency"])
                ),
            );
        }
    }
    out
}

/// One point of the sweep.
#[derive(Clone, Debug)]
pub(crate) struct SweepPoint {
    pub(crate) mode: &'static str,
    pub(crate) rate: f64,
    pub(crate) goodput: f64,
    pub(crate) p99_all_ms: Option<f64>,
}

pub(crate) fn sweep_table(rates: &[f64], points: &[SweepPoint]) -> String {
    let modes = SWEEP_MODES;
    let mut out = format!("{:>9}", "offered/s");
    for m in modes {
        let _ = write!(out, " {:>24}", format!("{m} ok/s, p99 all"));
    }
    out.push('\n');
    for &rate in rates {
        let _ = write!(out, "{rate:>9.0}");
        for m in modes {
            let cell = points
                .iter()
                .find(|p| p.mode == m && p.rate == rate)
                .map_or("-".to_string(), |p| {
                    format!(
                        "{:.0}, {} ms",
                        p.goodput,
                        p.p99_all_ms.map_or("-".into(), |v| format!("{v:.0}"))
                    )
                });
            let _ = write!(out, " {cell:>24}");
        }
        out.push('\n');
    }
    out
}

/// One line of a chart: `(x, y)` points, a gap where `y` is `None`.
struct Line {
    label: String,
    color: &'static str,
    dashed: bool,
    points: Vec<(f64, Option<f64>)>,
}

const W: f64 = 860.0;
const H: f64 = 250.0;

/// An SVG line chart. `ticks` label the x axis, `marks` draw dashed vertical lines
/// with a label (the phases), `y_labels` replace the numeric y axis (breaker).
fn chart(
    title: &str,
    unit: &str,
    x_max: f64,
    ticks: &[(f64, String)],
    marks: &[(f64, &str)],
    lines: &[Line],
    y_labels: Option<&[&str]>,
) -> String {
    let (left, right, top, bottom) = (60.0, 20.0, 42.0, 40.0);
    let max = match y_labels {
        Some(labels) => (labels.len().max(2) - 1) as f64 * 1.1,
        None => {
            lines
                .iter()
                .flat_map(|l| l.points.iter().filter_map(|p| p.1))
                .fold(1.0_f64, f64::max)
                * 1.1
        }
    };
    let x = |t: f64| left + (W - left - right) * (t / x_max);
    let y = |v: f64| top + (H - top - bottom) * (1.0 - v / max);
    let y0 = H - bottom;
    let mut svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">
<rect width="{W}" height="{H}" fill="white"/>
<text x="{left}" y="18" font-size="13" font-weight="bold">{title}</text>
<line x1="{left}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="#999"/>
<line x1="{left}" y1="{top}" x2="{left}" y2="{y0}" stroke="#999"/>
<text x="{lx}" y="{mid}" text-anchor="end">{unit}</text>
"##,
        x1 = W - right,
        lx = left - 4.0,
        mid = (top + y0) / 2.0 + 14.0,
    );
    match y_labels {
        Some(labels) => {
            for (i, l) in labels.iter().enumerate() {
                let _ = writeln!(
                    svg,
                    r##"<text x="{lx}" y="{ty:.1}" text-anchor="end">{l}</text>"##,
                    lx = left - 4.0,
                    ty = y(i as f64) + 4.0
                );
            }
        }
        None => {
            let _ = writeln!(
                svg,
                r##"<text x="{lx}" y="{top}" text-anchor="end">{max:.0}</text><text x="{lx}" y="{y0}" text-anchor="end">0</text>"##,
                lx = left - 4.0
            );
        }
    }
    for (t, label) in ticks {
        let _ = writeln!(
            svg,
            r##"<text x="{tx:.1}" y="{ty}" text-anchor="middle" fill="#777">{label}</text>"##,
            tx = x(*t),
            ty = y0 + 26.0,
        );
    }
    for (at, name) in marks {
        let _ = writeln!(
            svg,
            r##"<line x1="{px:.1}" y1="{top}" x2="{px:.1}" y2="{y0}" stroke="#ccc" stroke-dasharray="4 3"/><text x="{tx:.1}" y="{ty}">{name}</text>"##,
            px = x(*at),
            tx = x(*at) + 3.0,
            ty = y0 + 14.0,
        );
    }
    for line in lines {
        let dash = if line.dashed {
            r#" stroke-dasharray="6 3""#
        } else {
            ""
        };
        let mut segment = Vec::new();
        let mut flush = |segment: &mut Vec<String>| {
            if !segment.is_empty() {
                let _ = writeln!(
                    svg,
                    r#"<polyline fill="none" stroke="{}" stroke-width="2"{dash} points="{}"/>"#,
                    line.color,
                    segment.join(" ")
                );
                segment.clear();
            }
        };
        for &(t, v) in &line.points {
            match v {
                Some(v) if t <= x_max => segment.push(format!("{:.1},{:.1}", x(t), y(v))),
                _ => flush(&mut segment),
            }
        }
        flush(&mut segment);
    }
    let mut lx = left;
    for line in lines {
        let dash = if line.dashed {
            r#" stroke-dasharray="6 3""#
        } else {
            ""
        };
        let _ = writeln!(
            svg,
            r#"<line x1="{lx}" y1="29" x2="{x2}" y2="29" stroke="{}" stroke-width="2"{dash}/><text x="{tx}" y="33">{}</text>"#,
            line.color,
            line.label,
            x2 = lx + 16.0,
            tx = lx + 20.0,
        );
        lx += 150.0;
    }
    svg.push_str("</svg>");
    svg
}

/// The keys sampled from the server's `/stats` (the `ops` samples).
const OPS_KEYS: [&str; 3] = ["in_flight", "limit", "breaker"];

/// A chart of one series key over the storm, one line per run (or the runs
/// `only` names).
fn time_chart(
    title: &str,
    unit: &str,
    s: &Scenario,
    runs: &[Value],
    keys: &[(&str, &str, bool)],
    only: Option<&str>,
    y_labels: Option<&[&str]>,
) -> String {
    let total = s.total_secs();
    let bucket = s.bucket.as_secs_f64();
    let mut lines = Vec::new();
    for run in runs {
        let mode = run["mode"].as_str().unwrap_or("?");
        if only.is_some_and(|o| o != mode) {
            continue;
        }
        for &(key, suffix, dashed) in keys {
            // The server's own figures are samples with their time; the client's,
            // buckets.
            let points = match run["ops"].as_array() {
                Some(ops) if OPS_KEYS.contains(&key) => ops
                    .iter()
                    .map(|o| (o["t"].as_f64().unwrap_or(0.0), o[key].as_f64()))
                    .collect(),
                _ => run["series"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .enumerate()
                            .map(|(i, b)| ((i as f64 + 0.5) * bucket, b[key].as_f64()))
                            .collect()
                    })
                    .unwrap_or_default(),
            };
            lines.push(Line {
                label: format!("{mode}{suffix}"),
                color: color(mode),
                dashed,
                points,
            });
        }
    }
    let step = if total > 12.0 { 5.0 } else { 1.0 };
    let ticks: Vec<(f64, String)> = (0..=(total / step) as usize)
        .map(|i| (i as f64 * step, format!("{:.0} s", i as f64 * step)))
        .collect();
    let mut marks = Vec::new();
    let mut at = 0.0;
    for p in &s.phases {
        marks.push((at, p.name));
        at += p.secs;
    }
    chart(title, unit, total, &ticks, &marks, &lines, y_labels)
}

/// Goodput (or p99 of all requests) against the offered rate, one line per mode;
/// the rates are spaced evenly.
fn sweep_chart(
    title: &str,
    unit: &str,
    rates: &[f64],
    points: &[SweepPoint],
    value: fn(&SweepPoint) -> Option<f64>,
) -> String {
    let n = rates.len() as f64;
    let ticks: Vec<(f64, String)> = rates
        .iter()
        .enumerate()
        .map(|(i, r)| (i as f64 + 0.5, format!("{r:.0}/s")))
        .collect();
    let lines: Vec<Line> = SWEEP_MODES
        .into_iter()
        .map(|mode| Line {
            label: if mode == "tower-tuned" {
                "tower, limit tuned to the dependency".to_string()
            } else {
                mode.to_string()
            },
            color: color(mode),
            dashed: mode == "tower-tuned",
            points: rates
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let p = points.iter().find(|p| p.mode == mode && p.rate == *r);
                    (i as f64 + 0.5, p.and_then(value))
                })
                .collect(),
        })
        .collect();
    chart(title, unit, n, &ticks, &[], &lines, None)
}

/// Every chart of the report, in order; the first `KEY` go into `report.svg`.
pub(crate) fn charts(
    s: &Scenario,
    runs: &[Value],
    rates: &[f64],
    sweep: &[SweepPoint],
) -> Vec<String> {
    vec![
        time_chart(
            "p99 latency of ALL requests (rejections included; time-outs and dropped at the client time-out)",
            "ms",
            s,
            runs,
            &[("p99_all_ms", "", false)],
            None,
            None,
        ),
        time_chart(
            "goodput: successful requests",
            "/s",
            s,
            runs,
            &[("ok_per_s", "", false)],
            None,
            None,
        ),
        sweep_chart(
            "goodput vs offered load (a steady run per rate)",
            "ok/s",
            rates,
            sweep,
            |p| Some(p.goodput),
        ),
        time_chart(
            "heijunka: requests in flight at the server (solid) vs the adaptive limit (dashed)",
            "",
            s,
            runs,
            &[
                ("in_flight", " in flight", false),
                ("limit", " limit", true),
            ],
            Some("heijunka"),
            None,
        ),
        time_chart(
            "heijunka: circuit breaker state",
            "",
            s,
            runs,
            &[("breaker", " breaker", false)],
            Some("heijunka"),
            Some(&["closed", "half-open", "open"]),
        ),
        time_chart(
            "requests in flight at the server, every run",
            "",
            s,
            runs,
            &[("in_flight", "", false)],
            None,
            None,
        ),
        sweep_chart(
            "p99 latency of all requests vs offered load",
            "ms",
            rates,
            sweep,
            |p| p.p99_all_ms,
        ),
        time_chart(
            "p99 latency of successful requests (gaps: none succeeded)",
            "ms",
            s,
            runs,
            &[("p99_ms", "", false)],
            None,
            None,
        ),
        time_chart(
            "fast rejections (429 / 503)",
            "/s",
            s,
            runs,
            &[("rejected_per_s", "", false)],
            None,
            None,
        ),
        time_chart(
            "errors (502 / 504), client time-outs and dropped requests",
            "/s",
            s,
            runs,
            &[("failed_per_s", "", false)],
            None,
            None,
        ),
    ]
}

/// How many of [`charts`] the standalone SVG stacks.
pub(crate) const KEY: usize = 5;

/// The key charts stacked into one SVG document.
pub(crate) fn stacked_svg(charts: &[String]) -> String {
    let n = charts.len().min(KEY);
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{}">"#,
        H * n as f64
    );
    out.push('\n');
    for (i, c) in charts.iter().take(n).enumerate() {
        out.push_str(&c.replacen("<svg ", &format!(r#"<svg y="{}" "#, H * i as f64), 1));
        out.push('\n');
    }
    out.push_str("</svg>\n");
    out
}

pub(crate) fn html(
    s: &Scenario,
    runs: &[Value],
    charts: &[String],
    table: &str,
    sweep: &str,
) -> String {
    let per = if s.bucket == Duration::from_secs(1) {
        "per second".to_string()
    } else {
        format!("per {} ms, as a rate per second", s.bucket.as_millis())
    };
    let escape = |t: &str| t.replace('&', "&amp;").replace('<', "&lt;");
    let mut shutdowns = String::new();
    for run in runs {
        let _ = writeln!(
            shutdowns,
            "{}: {}",
            run["mode"].as_str().unwrap_or("?"),
            run["shutdown"]["text"].as_str().unwrap_or("?")
        );
    }
    format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>heijunka overload demo</title>
<style>body{{font-family:sans-serif;max-width:900px;margin:2em auto}}pre{{font-size:11px;background:#f6f6f6;padding:8px;overflow-x:auto}}</style>
</head><body>
<h1>heijunka overload demo</h1>
<p>The same axum service calling the same dependency (a process of its own) through the same storm:
unprotected (red), tower's <code>TimeoutLayer</code> + <code>LoadShedLayer</code> + <code>ConcurrencyLimitLayer</code> (blue),
heijunka's <code>PolicyLayer</code> with an adaptive limit and a breaker (green). Client, server and dependency are three processes.
Series {per}; latency from the intended send time.</p>
{charts}
<h2>Per phase</h2>
<pre>{table}</pre>
<h2>Goodput vs offered load</h2>
<pre>{sweep}</pre>
<h2>Shutdown (SIGTERM)</h2>
<pre>{shutdowns}</pre>
</body></html>
"#,
        charts = charts.join("\n"),
        table = escape(table),
        sweep = escape(sweep),
        shutdowns = escape(&shutdowns),
    )
}
