//! Statistics and output of the comparison: `report.md` (markdown tables), `results.json`
//! (every run's result line plus the summary) and `ratios.svg` (plotters, SVG backend only).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

use crate::{Row, RowKey};

/// What the report says about the machine and the libraries.
pub struct Machine {
    cpu: String,
    cores: usize,
    kernel: String,
    date: String,
    load_before: String,
    versions: Vec<(String, String)>,
}

fn cmd_out(prog: &str, args: &[&str]) -> Option<String> {
    let o = Command::new(prog).args(args).output().ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

impl Machine {
    /// Reads /proc/cpuinfo, uname, dpkg-query, rustc and cc versions.
    pub fn describe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or("unknown CPU".into(), |(_, v)| v.trim().to_string());
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let kernel = cmd_out("uname", &["-srm"]).unwrap_or_else(|| "?".into());
        let date = cmd_out("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_else(|| "?".into());
        let mut versions = Vec::new();
        for pkg in ["libpmemobj1", "libpmem1"] {
            let v = cmd_out("dpkg-query", &["-W", "-f", "${Version}", pkg])
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| "not installed".into());
            versions.push((pkg.to_string(), v));
        }
        versions.push((
            "pmstore".into(),
            format!("{} (this tree)", env!("CARGO_PKG_VERSION")),
        ));
        if let Some(v) = cmd_out("rustc", &["-V"]) {
            versions.push(("rustc".into(), v));
        }
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        if let Some(v) = cmd_out(&cc, &["--version"]) {
            versions.push((cc, v.lines().next().unwrap_or("").to_string()));
        }
        Machine {
            cpu,
            cores,
            kernel,
            date,
            load_before: loadavg(),
            versions,
        }
    }

    /// CPU, cores, kernel.
    pub fn one_line(&self) -> String {
        format!("{}, {} cores, {}", self.cpu, self.cores, self.kernel)
    }
}

/// Everything about the run besides the rows.
pub struct Meta {
    /// The machine.
    pub machine: Machine,
    /// Rounds.
    pub rounds: usize,
    /// Quick (smoke) run.
    pub quick: bool,
    /// Whether the PMDK side ran.
    pub pmdk: bool,
    /// How the msync system calls were counted (or why not).
    pub strace_note: String,
    /// Wall time of the measurements.
    pub elapsed_s: f64,
    /// The harness's arguments.
    pub command: String,
}

/// `x` ns in a readable unit.
pub fn fmt_ns(x: f64) -> String {
    if !x.is_finite() {
        "-".into()
    } else if x < 10_000.0 {
        format!("{x:.0} ns")
    } else if x < 10_000_000.0 {
        format!("{:.1} µs", x / 1e3)
    } else {
        format!("{:.1} ms", x / 1e6)
    }
}

fn fmt_count(x: Option<f64>) -> String {
    match x {
        None => "-".into(),
        Some(x) if (x - x.round()).abs() < 0.005 => format!("{x:.0}"),
        Some(x) => format!("{x:.2}"),
    }
}

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        })
}

/// Summary of one row.
struct Summary {
    key: RowKey,
    n: u64,
    ns: BTreeMap<&'static str, Vec<f64>>,
    ratio: Option<f64>,
    round_ratios: Vec<f64>,
    counters: BTreeMap<&'static str, f64>,
    pmstore_mode: String,
    pmdk_is_pmem: Option<i64>,
    strace: BTreeMap<&'static str, f64>,
}

impl Summary {
    fn new(key: &RowKey, row: &Row) -> Summary {
        let ns: BTreeMap<&'static str, Vec<f64>> = row
            .runs
            .iter()
            .map(|(&lib, runs)| {
                (
                    lib,
                    runs.iter()
                        .filter_map(|r| r["ns_per_op"].as_f64())
                        .collect(),
                )
            })
            .collect();
        let (ratio, round_ratios) = match (ns.get("pmstore"), ns.get("pmdk")) {
            (Some(a), Some(b)) if !a.is_empty() && !b.is_empty() => (
                Some(median(a) / median(b)),
                a.iter().zip(b).map(|(x, y)| x / y).collect(),
            ),
            _ => (None, Vec::new()),
        };
        let ps = row.runs.get("pmstore").map(Vec::as_slice).unwrap_or(&[]);
        let counters = ["drains_per_op", "lines_per_op", "msyncs_per_op"]
            .into_iter()
            .map(|c| {
                let v: Vec<f64> = ps.iter().filter_map(|r| r[c].as_f64()).collect();
                (c, median(&v))
            })
            .collect();
        let mut modes: Vec<String> = ps
            .iter()
            .map(|r| {
                let m = r["mode"].as_str().unwrap_or("?");
                match r["instr"].as_str() {
                    Some(i) if i != "-" => format!("{m} ({i})"),
                    _ => m.to_string(),
                }
            })
            .collect();
        modes.dedup();
        let pmdk_is_pmem = row
            .runs
            .get("pmdk")
            .and_then(|v| v.first())
            .and_then(|r| r["is_pmem"].as_i64());
        Summary {
            key: key.clone(),
            n: row.n,
            ns,
            ratio,
            round_ratios,
            counters,
            pmstore_mode: modes.join(", "),
            pmdk_is_pmem,
            strace: row.strace_msyncs.clone(),
        }
    }

    fn label(&self) -> String {
        let (_, w, t) = &self.key;
        if *t == 1 {
            w.clone()
        } else {
            format!("{w} ×{t} threads")
        }
    }

    /// Problems: a side that did not run in the mode asked for.
    fn checks(&self, row: &Row, out: &mut Vec<String>) {
        let (mode, w, t) = &self.key;
        let what = format!("{mode} {w} t={t}");
        let persists = w != "kv_get";
        for r in row.runs.get("pmstore").into_iter().flatten() {
            let flushes = r["uses_cache_flush"].as_bool() == Some(true);
            if (*mode == "flush") != flushes {
                out.push(format!(
                    "{what}: pmstore ran in mode {} (asked: {mode})",
                    r["mode"]
                ));
            }
            let lines = r["lines_per_op"].as_f64().unwrap_or(0.0);
            let msyncs = r["msyncs_per_op"].as_f64().unwrap_or(0.0);
            if *mode == "flush" && persists && (lines <= 0.0 || msyncs != 0.0) {
                out.push(format!(
                    "{what}: pmstore flushed {lines} lines and issued {msyncs} msyncs per op"
                ));
            }
            if *mode == "msync" && persists && msyncs <= 0.0 {
                out.push(format!("{what}: pmstore issued no msync"));
            }
        }
        for r in row.runs.get("pmdk").into_iter().flatten() {
            let pmem = r["is_pmem"].as_i64() == Some(1);
            if (*mode == "flush") != pmem {
                out.push(format!(
                    "{what}: PMDK is_pmem={} (asked: {mode})",
                    r["is_pmem"]
                ));
            }
        }
        for (lib, &m) in &self.strace {
            if *mode == "flush" && m > 0.005 {
                out.push(format!("{what}: {lib} issued {m} msync calls per op"));
            }
            if *mode == "msync" && persists && m <= 0.0 {
                out.push(format!("{what}: {lib}: strace counted no msync"));
            }
        }
    }

    fn json(&self, row: &Row) -> Value {
        let side = |lib: &str| {
            self.ns.get(lib).map(|v| {
                let (lo, hi) = min_max(v);
                json!({"ns_per_op": v, "median": median(v), "min": lo, "max": hi})
            })
        };
        let (rlo, rhi) = min_max(&self.round_ratios);
        json!({
            "mode": self.key.0,
            "workload": self.key.1,
            "threads": self.key.2,
            "n": self.n,
            "pmstore": side("pmstore"),
            "pmdk": side("pmdk"),
            "ratio_of_medians": self.ratio,
            "round_ratios": self.round_ratios,
            "round_ratio_median": (!self.round_ratios.is_empty()).then(|| median(&self.round_ratios)),
            "round_ratio_min": (!self.round_ratios.is_empty()).then_some(rlo),
            "round_ratio_max": (!self.round_ratios.is_empty()).then_some(rhi),
            "pmstore_counters_per_op": self.counters,
            "pmstore_mode": self.pmstore_mode,
            "pmdk_is_pmem": self.pmdk_is_pmem,
            "strace_msyncs_per_op": self.strace,
            "runs": row.runs,
        })
    }
}

const MODE_TITLES: [(&str, &str); 2] = [
    (
        "flush",
        "Flush mode (tmpfs /dev/shm; PMDK with PMEM_IS_PMEM_FORCE=1, pmstore forced-flush)",
    ),
    ("msync", "msync mode (a file in /var/tmp)"),
];

fn markdown(meta: &Meta, sums: &[Summary], checks: &[String]) -> String {
    let m = &meta.machine;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# pmstore vs PMDK{}\n",
        if meta.quick {
            " (quick run: tiny N, not for conclusions)"
        } else {
            ""
        }
    );
    let _ = writeln!(s, "- date: {}", m.date);
    let _ = writeln!(s, "- machine: {}, {} cores, {}", m.cpu, m.cores, m.kernel);
    let _ = writeln!(
        s,
        "- load average (1/5/15 min) before: {}, after: {}",
        m.load_before,
        loadavg()
    );
    for (k, v) in &m.versions {
        let _ = writeln!(s, "- {k}: {v}");
    }
    let _ = writeln!(
        s,
        "- {} round(s), each side in a fresh process on a fresh pool file per measurement, \
         the order alternating between rounds; measurements took {:.0} s",
        meta.rounds, meta.elapsed_s
    );
    let _ = writeln!(
        s,
        "- command: `cargo bench --bench vs_pmdk{}`",
        if meta.command.is_empty() {
            String::new()
        } else {
            format!(" -- {}", meta.command)
        }
    );
    if !meta.pmdk {
        let _ = writeln!(
            s,
            "- **PMDK did not run** (not installed, or --pmstore-only)"
        );
    }
    let _ = writeln!(s, "- {}", meta.strace_note);
    let _ = writeln!(
        s,
        "\nTimes are ns per operation (a pair for the alloc/free workloads; the single open + \
         first allocation for `open`); multi-thread rows: wall time / all threads' operations. \
         **ratio** = pmstore median / PMDK median (< 1: pmstore faster); **round ratios**: \
         pmstore/PMDK within each round: median (min–max); the \
         paired estimate, less sensitive to a slow spell that hits both sides of a round."
    );
    for (mode, title) in MODE_TITLES {
        let rows: Vec<&Summary> = sums.iter().filter(|x| x.key.0 == mode).collect();
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(s, "\n## {title}\n");
        let _ = writeln!(
            s,
            "| workload | N | pmstore median | pmstore min–max | PMDK median | PMDK min–max | ratio | round ratios |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|");
        for r in &rows {
            let side = |lib: &str| match r.ns.get(lib) {
                Some(v) if !v.is_empty() => {
                    let (lo, hi) = min_max(v);
                    (fmt_ns(median(v)), format!("{}–{}", fmt_ns(lo), fmt_ns(hi)))
                }
                _ => ("-".into(), "-".into()),
            };
            let (pm, pr) = side("pmstore");
            let (dm, dr) = side("pmdk");
            let ratio = r.ratio.map_or("-".into(), |x| format!("**{x:.2}**"));
            let rr = if r.round_ratios.is_empty() {
                "-".into()
            } else {
                let (lo, hi) = min_max(&r.round_ratios);
                format!("{:.2} ({lo:.2}–{hi:.2})", median(&r.round_ratios))
            };
            let _ = writeln!(
                s,
                "| {} | {} | {pm} | {pr} | {dm} | {dr} | {ratio} | {rr} |",
                r.label(),
                r.n
            );
        }
        let _ = writeln!(
            s,
            "\nPer-operation counts (machine-independent): pmstore's counters (median of the \
             rounds) and msync system calls counted by strace.\n"
        );
        let _ = writeln!(
            s,
            "| workload | pmstore mode | drains | lines flushed | msyncs (counter) | msyncs pmstore (strace) | msyncs PMDK (strace) | PMDK pmem_is_pmem |"
        );
        let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|");
        for r in &rows {
            let c = |k: &str| fmt_count(r.counters.get(k).copied().filter(|x| x.is_finite()));
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                r.label(),
                r.pmstore_mode,
                c("drains_per_op"),
                c("lines_per_op"),
                c("msyncs_per_op"),
                fmt_count(r.strace.get("pmstore").copied()),
                fmt_count(r.strace.get("pmdk").copied()),
                r.pmdk_is_pmem.map_or("-".into(), |x| x.to_string()),
            );
        }
    }
    if checks.is_empty() {
        let _ = writeln!(
            s,
            "\nChecks passed: every flush-mode run of pmstore used cache flushes (lines flushed > 0 \
             where it persists, no msync) and PMDK's pool was pmem_is_pmem (and strace saw no \
             msync on either side); every msync-mode run of both sides issued msyncs."
        );
    } else {
        let _ = writeln!(s, "\n**Checks failed:**\n");
        for c in checks {
            let _ = writeln!(s, "- {c}");
        }
    }
    s
}

fn chart(path: &Path, sums: &[Summary]) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let panels: Vec<(&str, Vec<&Summary>)> = MODE_TITLES
        .iter()
        .map(|&(m, t)| {
            (
                t,
                sums.iter()
                    .filter(|s| s.key.0 == m && s.ratio.is_some())
                    .collect::<Vec<_>>(),
            )
        })
        .filter(|(_, v)| !v.is_empty())
        .collect();
    let row_h = 30u32;
    let heights: Vec<u32> = panels
        .iter()
        .map(|(_, v)| 110 + row_h * v.len() as u32)
        .collect();
    let total_h = heights.iter().sum::<u32>().max(200);
    let root = SVGBackend::new(path, (1000, total_h)).into_drawing_area();
    root.fill(&WHITE)?;
    if panels.is_empty() {
        root.titled(
            "pmstore / PMDK: no ratios (PMDK did not run)",
            ("sans-serif", 20),
        )?;
        root.present()?;
        return Ok(());
    }
    // Common x range over all panels: ratios and per-round ranges, padded, around 1.
    let mut lo: f64 = 0.5;
    let mut hi: f64 = 2.0;
    for s in sums {
        for &r in s.ratio.iter().chain(&s.round_ratios) {
            if r.is_finite() && r > 0.0 {
                lo = lo.min(r / 1.3);
                hi = hi.max(r * 1.3);
            }
        }
    }
    // Segment of the i-th row (the first row at the top), and the top end of segment y.
    let seg = |k: i32, i: usize| k - 1 - i as i32;
    let top = |k: i32, y: i32| {
        if y + 1 < k {
            SegmentValue::Exact(y + 1)
        } else {
            SegmentValue::Last
        }
    };
    let ticks: Vec<f64> = [
        0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0,
    ]
    .into_iter()
    .filter(|t| (lo..=hi).contains(t))
    .collect();
    let mut rest = root.clone();
    for ((title, rows), h) in panels.iter().zip(&heights) {
        let (area, below) = rest.split_vertically(*h);
        rest = below;
        let k = rows.len() as i32;
        let labels: Vec<String> = rows
            .iter()
            .map(|s| format!("{}  {:.2}", s.label(), s.ratio.unwrap_or(f64::NAN)))
            .collect();
        let mut chart = ChartBuilder::on(&area)
            .caption(*title, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(250)
            .build_cartesian_2d(
                (lo..hi).log_scale().with_key_points(ticks.clone()),
                (0..k - 1).into_segmented(),
            )?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(k as usize)
            .y_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => labels
                    .get((k - 1 - *i) as usize)
                    .cloned()
                    .unwrap_or_default(),
                _ => String::new(),
            })
            .x_label_formatter(&|x| format!("{x:.2}"))
            .x_desc("pmstore time / PMDK time (log scale; < 1: pmstore faster); bar: ratio of medians, whisker: per-round range")
            .draw()?;
        chart.draw_series(rows.iter().enumerate().map(|(i, s)| {
            let r = s.ratio.unwrap_or(1.0);
            let (a, b) = if r < 1.0 { (r, 1.0) } else { (1.0, r) };
            let color = if r < 1.0 {
                RGBColor(46, 139, 87)
            } else {
                RGBColor(205, 92, 92)
            };
            let y = seg(k, i);
            let mut rect = Rectangle::new(
                [(a, SegmentValue::Exact(y)), (b, top(k, y))],
                color.filled(),
            );
            rect.set_margin(5, 5, 0, 0);
            rect
        }))?;
        chart.draw_series(rows.iter().enumerate().filter_map(|(i, s)| {
            let (a, b) = min_max(&s.round_ratios);
            (s.round_ratios.len() > 1).then(|| {
                PathElement::new(
                    vec![
                        (a, SegmentValue::CenterOf(seg(k, i))),
                        (b, SegmentValue::CenterOf(seg(k, i))),
                    ],
                    BLACK.stroke_width(2),
                )
            })
        }))?;
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(1.0, SegmentValue::Exact(0)), (1.0, SegmentValue::Last)],
            BLACK.stroke_width(1),
        )))?;
    }
    root.present()?;
    Ok(())
}

/// Writes report.md, results.json and ratios.svg into `dir`, prints the markdown; returns the
/// failed checks.
pub fn write_all(
    dir: &Path,
    meta: &Meta,
    rows: &BTreeMap<RowKey, Row>,
) -> Result<Vec<String>, String> {
    // Report order: modes as in MODE_TITLES, then the workloads' order of the plan.
    let order = |k: &RowKey| {
        let w = k.1.as_str();
        let wi = crate::ALL_WORKLOADS
            .iter()
            .position(|&a| a == w || (a == "kv" && w.starts_with("kv_")))
            .unwrap_or(99);
        (k.0 != "flush", wi, w == "kv_get", k.2)
    };
    let mut keys: Vec<&RowKey> = rows.keys().collect();
    keys.sort_by_key(|k| order(k));
    let sums: Vec<Summary> = keys.iter().map(|k| Summary::new(k, &rows[*k])).collect();
    let mut checks = Vec::new();
    for s in &sums {
        s.checks(&rows[&s.key], &mut checks);
    }
    let md = markdown(meta, &sums, &checks);
    let w = |name: &str, data: &str| {
        std::fs::write(dir.join(name), data).map_err(|e| format!("{name}: {e}"))
    };
    w("report.md", &md)?;
    let m = &meta.machine;
    let js = json!({
        "date": m.date,
        "machine": {"cpu": m.cpu, "cores": m.cores, "kernel": m.kernel,
                    "load_before": m.load_before, "load_after": loadavg()},
        "versions": m.versions.iter().cloned().collect::<BTreeMap<_, _>>(),
        "rounds": meta.rounds,
        "quick": meta.quick,
        "command": meta.command,
        "elapsed_s": meta.elapsed_s,
        "pmdk": meta.pmdk,
        "strace": meta.strace_note,
        "checks_failed": checks,
        "rows": sums.iter().map(|s| s.json(&rows[&s.key])).collect::<Vec<_>>(),
    });
    w(
        "results.json",
        &serde_json::to_string_pretty(&js).map_err(|e| e.to_string())?,
    )?;
    chart(&dir.join("ratios.svg"), &sums).map_err(|e| format!("ratios.svg: {e}"))?;
    println!("\n{md}");
    Ok(checks)
}
