//! pmstore vs PMDK (libpmemobj): one command that measures both on this machine and reports
//! the ratio per workload (issue #7; `docs/PERFORMANCE.md` describes the workloads and shows a
//! full run).
//!
//! ```sh
//! cargo bench --bench vs_pmdk                      # full run: 7 rounds, flush + msync modes
//! cargo bench --bench vs_pmdk -- --quick           # tiny N, 1 round (well under a minute)
//! cargo bench --bench vs_pmdk -- --test            # the same (what CI's smoke run passes)
//! cargo bench --bench vs_pmdk -- --rounds 9 --modes flush --workloads tx_update_8B,kv
//! ```
//!
//! The PMDK side is a C program (`benches/vs_pmdk/pmdk_peer.c`) compiled at run time against
//! Debian's libpmemobj/libpmem (`$CC`, default `cc`); without `libpmemobj.h` the harness says
//! so and runs pmstore alone. The pmstore side is this binary itself, re-executed as a worker
//! (`--worker`), so that both sides run every measurement in a fresh process on a fresh pool
//! file. For each round and each workload the two sides run back to back, the order
//! alternating between rounds; the report gives median, min and max ns per operation of each
//! side, the ratio of the medians (pmstore / PMDK: below 1 means pmstore is faster) and the
//! range of the per-round ratios, plus deterministic per-operation counts: pmstore's drains,
//! flushed lines and msyncs from its counters, and both sides' msync system calls counted by
//! `strace -f -c` on two runs of different N (difference / difference of N).
//!
//! Output: `target/vs_pmdk/report.md`, `results.json` and `ratios.svg` (`target/vs_pmdk/quick/`
//! for `--quick`).

mod pmstore_side;
mod report;

#[allow(dead_code)]
#[path = "../../examples/kv/map.rs"]
mod map;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use clap::Parser;
use pmstore::ModeRequest;
use serde_json::Value;

#[derive(Parser, Debug)]
#[command(
    name = "vs_pmdk",
    about = "pmstore vs PMDK (libpmemobj): alternating runs of the same workloads, ratio per workload"
)]
struct Cli {
    /// Rounds: each round runs every workload once on each side (default 7; 1 with --quick).
    #[arg(long)]
    rounds: Option<usize>,
    /// Tiny N and one round: a smoke run that still exercises both sides.
    #[arg(long)]
    quick: bool,
    /// Same as --quick (what `cargo bench -- --test` passes).
    #[arg(long)]
    test: bool,
    /// Passed by `cargo bench`. Without it (run by `cargo test --benches`, or directly) the
    /// harness does a quick run unless --full is given, as criterion benches run in test mode.
    #[arg(long, hide = true)]
    bench: bool,
    /// A full run even without `cargo bench`'s --bench (running the binary directly).
    #[arg(long, conflicts_with_all = ["quick", "test"])]
    full: bool,
    /// Comma-separated workloads (default: all): tx_update_8B, tx_update_256B,
    /// tx_update_4x64B, tx_alloc_free, atomic_alloc_free, kv (kv_put + kv_get), open,
    /// persist_64B, copy_nt_256B, msync_1_page.
    #[arg(long, value_delimiter = ',')]
    workloads: Vec<String>,
    /// Comma-separated modes: flush (tmpfs, cache flushes), msync (file in /var/tmp).
    #[arg(long, value_delimiter = ',', default_values_t = ["flush".to_string(), "msync".to_string()])]
    modes: Vec<String>,
    /// Comma-separated thread counts for the tx and alloc workloads (kv, open and the floors
    /// always run single-threaded).
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 2])]
    threads: Vec<usize>,
    /// Multiply every N by this factor.
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Skip the strace runs that count msync system calls.
    #[arg(long)]
    no_strace: bool,
    /// Run pmstore only (as when PMDK is not installed).
    #[arg(long)]
    pmstore_only: bool,
    /// Output directory (default: <target>/vs_pmdk, or <target>/vs_pmdk/quick).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Directory of the flush-mode pool files (tmpfs).
    #[arg(long, default_value = "/dev/shm")]
    flush_dir: PathBuf,
    /// Directory of the msync-mode pool files (a real file system).
    #[arg(long, default_value = "/var/tmp")]
    msync_dir: PathBuf,
    /// Internal: run one pmstore measurement and print its JSON lines.
    #[arg(long, hide = true, num_args = 7, value_names = ["WORKLOAD", "MODE", "POOL", "N", "WARM", "THREADS", "POOL_MIB"])]
    worker: Option<Vec<String>>,
}

/// Every workload, in report order.
const ALL_WORKLOADS: &[&str] = &[
    "tx_update_8B",
    "tx_update_256B",
    "tx_update_4x64B",
    "tx_alloc_free",
    "atomic_alloc_free",
    "kv",
    "open",
    "persist_64B",
    "copy_nt_256B",
    "msync_1_page",
];

/// Workloads that also run multi-threaded (each thread on its own objects).
const THREADED: &[&str] = &[
    "tx_update_8B",
    "tx_update_256B",
    "tx_update_4x64B",
    "tx_alloc_free",
    "atomic_alloc_free",
];

/// One measurement to repeat in every round, on both sides.
#[derive(Clone, Debug)]
pub struct Case {
    /// "flush" or "msync".
    pub mode: &'static str,
    /// The run's workload ("kv" yields kv_put and kv_get).
    pub workload: &'static str,
    /// Threads.
    pub threads: usize,
    /// Timed operations (objects for `open`).
    pub n: u64,
    /// Untimed warm-up operations.
    pub warm: u64,
    /// Pool size in MiB (`open` only).
    pub pool_mib: u64,
}

/// Default N of a workload in a mode (full run).
fn default_n(mode: &str, w: &str) -> Option<u64> {
    Some(match (mode, w) {
        ("flush", "tx_update_8B" | "tx_update_256B") => 200_000,
        ("flush", "tx_update_4x64B" | "tx_alloc_free" | "atomic_alloc_free") => 100_000,
        ("flush", "kv") => 1_000_000,
        ("flush", "open") => 1_000_000,
        ("flush", "persist_64B" | "copy_nt_256B") => 1_000_000,
        ("msync", "tx_update_8B" | "tx_update_256B" | "tx_update_4x64B") => 400,
        ("msync", "tx_alloc_free" | "atomic_alloc_free") => 200,
        ("msync", "kv") => 500,
        ("msync", "msync_1_page") => 2000,
        _ => return None,
    })
}

/// N of the quick (smoke) run.
fn quick_n(mode: &str, w: &str) -> Option<u64> {
    default_n(mode, w)?;
    Some(match (mode, w) {
        ("flush", "open") => 10_000,
        ("flush", _) => 2000,
        (_, "msync_1_page") => 50,
        _ => 20,
    })
}

fn plan(cli: &Cli, quick: bool) -> Result<Vec<Case>, String> {
    let wanted: Vec<&'static str> = if cli.workloads.is_empty() {
        ALL_WORKLOADS.to_vec()
    } else {
        let mut v = Vec::new();
        for w in &cli.workloads {
            let w = if w == "kv_put" || w == "kv_get" {
                "kv"
            } else {
                w
            };
            match ALL_WORKLOADS.iter().find(|&&a| a == w) {
                Some(a) if !v.contains(a) => v.push(*a),
                Some(_) => {}
                None => return Err(format!("unknown workload {w} (known: {ALL_WORKLOADS:?})")),
            }
        }
        v
    };
    let mut cases = Vec::new();
    for m in &cli.modes {
        let mode: &'static str = match m.as_str() {
            "flush" => "flush",
            "msync" => "msync",
            _ => return Err(format!("unknown mode {m} (flush, msync)")),
        };
        for &w in ALL_WORKLOADS.iter().filter(|w| wanted.contains(w)) {
            let Some(n) = (if quick {
                quick_n(mode, w)
            } else {
                default_n(mode, w)
            }) else {
                continue;
            };
            let n = ((n as f64 * cli.scale).round() as u64).max(2);
            let threads: Vec<usize> = if THREADED.contains(&w) {
                cli.threads.clone()
            } else {
                vec![1]
            };
            for t in threads {
                if t == 0 || t > pmstore_side::MAX_THREADS {
                    return Err(format!("threads must be 1..={}", pmstore_side::MAX_THREADS));
                }
                let warm = match w {
                    "kv" | "open" => 0,
                    _ => n / 10,
                };
                let pool_mib = if quick { 64 } else { 1024 };
                cases.push(Case {
                    mode,
                    workload: w,
                    threads: t,
                    n: n.max(t as u64),
                    warm,
                    pool_mib,
                });
            }
        }
    }
    Ok(cases)
}

/// One side of the comparison: how to start a measurement.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Lib {
    Pmstore,
    Pmdk,
}

impl Lib {
    fn name(self) -> &'static str {
        match self {
            Lib::Pmstore => "pmstore",
            Lib::Pmdk => "pmdk",
        }
    }
}

struct Env {
    pmstore_exe: PathBuf,
    pmdk_peer: Option<PathBuf>,
    flush_dir: PathBuf,
    msync_dir: PathBuf,
    seq: std::cell::Cell<u64>,
}

impl Env {
    fn pool_path(&self, case: &Case, lib: Lib) -> PathBuf {
        let dir = if case.mode == "flush" {
            &self.flush_dir
        } else {
            &self.msync_dir
        };
        let s = self.seq.get();
        self.seq.set(s + 1);
        dir.join(format!(
            "vs_pmdk.{}.{}.{s}.pool",
            std::process::id(),
            lib.name()
        ))
    }

    /// The command of one measurement with `n` timed and `warm` untimed operations.
    fn command(&self, case: &Case, lib: Lib, pool: &Path, n: u64, warm: u64) -> Command {
        let args = [
            case.workload.to_string(),
            pool.display().to_string(),
            n.to_string(),
            warm.to_string(),
            case.threads.to_string(),
            case.pool_mib.to_string(),
        ];
        let mut c;
        match lib {
            Lib::Pmstore => {
                c = Command::new(&self.pmstore_exe);
                c.arg("--worker")
                    .arg(&args[0])
                    .arg(case.mode)
                    .args(&args[1..]);
                c.env_remove("PMSTORE_FORCE_MODE");
            }
            Lib::Pmdk => {
                c = Command::new(self.pmdk_peer.as_ref().expect("the PMDK peer"));
                c.args(args);
                if case.mode == "flush" {
                    c.env("PMEM_IS_PMEM_FORCE", "1");
                } else {
                    c.env_remove("PMEM_IS_PMEM_FORCE");
                }
            }
        }
        c.stdin(Stdio::null());
        c
    }

    /// Runs one timed measurement; returns its JSON result lines.
    fn measure(&self, case: &Case, lib: Lib) -> Result<Vec<Value>, String> {
        let pool = self.pool_path(case, lib);
        let out = self
            .command(case, lib, &pool, case.n, case.warm)
            .output()
            .map_err(|e| format!("starting the {} side: {e}", lib.name()));
        let _ = std::fs::remove_file(&pool);
        let out = out?;
        if !out.status.success() {
            return Err(format!(
                "{} {} ({} mode, {} threads) failed ({}): {}",
                lib.name(),
                case.workload,
                case.mode,
                case.threads,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        parse_lines(&out.stdout)
    }

    /// msync system calls of one run, counted by `strace -f -c -e trace=msync`.
    fn strace_msyncs(&self, case: &Case, lib: Lib, n: u64) -> Result<u64, String> {
        let pool = self.pool_path(case, lib);
        let log = pool.with_extension("strace");
        let inner = self.command(case, lib, &pool, n, 0);
        let mut c = Command::new("strace");
        c.args(["-f", "-c", "-e", "trace=msync", "-o"])
            .arg(&log)
            .arg(inner.get_program())
            .args(inner.get_args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in inner.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        let out = c.output().map_err(|e| format!("starting strace: {e}"));
        let _ = std::fs::remove_file(&pool);
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let _ = std::fs::remove_file(&log);
        let out = out?;
        if !out.status.success() {
            return Err(format!(
                "strace of {} {} failed: {}",
                lib.name(),
                case.workload,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        // The summary's row: "% time seconds usecs/call calls [errors] msync".
        Ok(text
            .lines()
            .find(|l| l.split_whitespace().last() == Some("msync"))
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|c| c.parse().ok())
            .unwrap_or(0))
    }
}

fn parse_lines(stdout: &[u8]) -> Result<Vec<Value>, String> {
    let v: Vec<Value> = String::from_utf8_lossy(stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad result line: {e}"))?;
    if v.is_empty() {
        return Err("no result line".into());
    }
    Ok(v)
}

/// Compiles the PMDK peer into `dir`; `Ok(None)` (after a message) where libpmemobj is not
/// installed.
fn build_peer(dir: &Path) -> Result<Option<PathBuf>, String> {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let probe = Command::new(&cc)
        .args(["-E", "-x", "c", "-", "-o", "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .and_then(|mut ch| {
            use std::io::Write;
            ch.stdin
                .take()
                .expect("stdin")
                .write_all(b"#include <libpmemobj.h>\n#include <libpmem.h>\n")?;
            ch.wait()
        });
    match probe {
        Ok(s) if s.success() => {}
        Ok(_) => {
            println!(
                "PMDK not installed (apt-get install libpmemobj-dev libpmem-dev); running pmstore only"
            );
            return Ok(None);
        }
        Err(e) => {
            println!("no C compiler ({cc}: {e}); PMDK peer not built; running pmstore only");
            return Ok(None);
        }
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/vs_pmdk/pmdk_peer.c");
    let bin = dir.join("pmdk_peer");
    let out = Command::new(&cc)
        .args(["-O2", "-Wall", "-Wextra", "-pthread", "-o"])
        .arg(&bin)
        .arg(&src)
        .args(["-lpmemobj", "-lpmem"])
        .output()
        .map_err(|e| format!("{cc}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "compiling {} failed:\n{}",
            src.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(Some(bin))
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| {
            if p.is_absolute() {
                p
            } else {
                Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
            }
        })
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

fn worker(a: &[String]) -> ExitCode {
    let parse = |i: usize| a[i].parse::<u64>().map_err(|e| format!("{}: {e}", a[i]));
    let r = (|| -> Result<Vec<Value>, Box<dyn std::error::Error + Send + Sync>> {
        let mode = match a[1].as_str() {
            "flush" => ModeRequest::Flush,
            "msync" => ModeRequest::Msync,
            m => return Err(format!("unknown mode {m}").into()),
        };
        let job = pmstore_side::Job {
            workload: &a[0],
            mode,
            path: Path::new(&a[2]),
            n: parse(3)?,
            warm: parse(4)?,
            threads: parse(5)? as usize,
            pool_mib: parse(6)?,
        };
        pmstore_side::run(&job)
    })();
    match r {
        Ok(lines) => {
            for l in lines {
                println!("{l}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pmstore worker {}: {e}", a[0]);
            ExitCode::FAILURE
        }
    }
}

/// All results of one (mode, workload, threads) row.
#[derive(Default, Debug)]
pub struct Row {
    /// Result lines of each side, one per round (in round order).
    pub runs: BTreeMap<&'static str, Vec<Value>>,
    /// msyncs per operation counted by strace, per side.
    pub strace_msyncs: BTreeMap<&'static str, f64>,
    /// N of the timed runs.
    pub n: u64,
}

/// Key of a report row: mode, workload (kv_put/kv_get split), threads.
pub type RowKey = (&'static str, String, usize);

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(a) = &cli.worker {
        return worker(a);
    }
    match run(&cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("vs_pmdk: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The whole comparison; `Ok(false)` if a check failed (a side did not use the mode asked).
fn run(cli: &Cli) -> Result<bool, String> {
    let started = Instant::now();
    let quick = cli.quick || cli.test || !(cli.bench || cli.full);
    if quick && !(cli.quick || cli.test) {
        println!("not run by `cargo bench` (no --bench): quick run (--full for a full one)");
    }
    let rounds = cli.rounds.unwrap_or(if quick { 1 } else { 7 }).max(1);
    let cases = plan(cli, quick)?;
    let out_dir = cli.out.clone().unwrap_or_else(|| {
        let d = target_dir().join("vs_pmdk");
        if quick {
            d.join("quick")
        } else {
            d
        }
    });
    std::fs::create_dir_all(&out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    let pmdk_peer = if cli.pmstore_only {
        println!("--pmstore-only: running pmstore only");
        None
    } else {
        build_peer(&out_dir)?
    };
    let env = Env {
        pmstore_exe: std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?,
        pmdk_peer,
        flush_dir: cli.flush_dir.clone(),
        msync_dir: cli.msync_dir.clone(),
        seq: std::cell::Cell::new(0),
    };
    let mut libs = vec![Lib::Pmstore];
    if env.pmdk_peer.is_some() {
        libs.push(Lib::Pmdk);
    }
    let machine = report::Machine::describe();
    println!(
        "vs_pmdk: {} cases x {} sides x {rounds} rounds{}; machine: {}",
        cases.len(),
        libs.len(),
        if quick { " (quick)" } else { "" },
        machine.one_line()
    );

    let mut rows: BTreeMap<RowKey, Row> = BTreeMap::new();
    for round in 0..rounds {
        for case in &cases {
            // Alternate which side goes first, so neither always runs on a warmer machine.
            let mut order = libs.clone();
            if round % 2 == 1 {
                order.reverse();
            }
            let mut line = format!(
                "round {}/{rounds} {:5} {:18} t={} n={:<8}",
                round + 1,
                case.mode,
                case.workload,
                case.threads,
                case.n
            );
            for &lib in &order {
                let results = env.measure(case, lib)?;
                for r in results {
                    let w = r["workload"].as_str().unwrap_or(case.workload).to_string();
                    line += &format!(
                        " {}:{}={}",
                        lib.name(),
                        w,
                        report::fmt_ns(r["ns_per_op"].as_f64().unwrap_or(f64::NAN))
                    );
                    let row = rows.entry((case.mode, w, case.threads)).or_default();
                    row.n = case.n;
                    row.runs.entry(lib.name()).or_default().push(r);
                }
            }
            println!("{line}");
        }
    }

    // Deterministic counts: msync system calls per operation, by strace on two N.
    let have_strace = Command::new("strace")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let strace_note = if cli.no_strace {
        "strace counts skipped (--no-strace)".to_string()
    } else if !have_strace {
        println!("strace not installed (apt-get install strace): msync system calls not counted");
        "strace not installed: msync system calls not counted".to_string()
    } else {
        for case in cases
            .iter()
            .filter(|c| c.threads == 1 && c.workload != "open")
        {
            let (n1, n2) = match (case.mode, quick) {
                ("flush", _) => (100, 600),
                (_, true) => (5, 15),
                (_, false) => (10, 60),
            };
            for &lib in &libs {
                let a = env.strace_msyncs(case, lib, n1)?;
                let b = env.strace_msyncs(case, lib, n2)?;
                let per = (b as f64 - a as f64) / (n2 - n1) as f64;
                let names: Vec<String> = if case.workload == "kv" {
                    vec!["kv_put".into()]
                } else {
                    vec![case.workload.to_string()]
                };
                for w in names {
                    if let Some(row) = rows.get_mut(&(case.mode, w, 1)) {
                        row.strace_msyncs.insert(lib.name(), per);
                    }
                }
            }
            println!(
                "strace {:5} {:18} msyncs/op counted ({n1} and {n2} ops per side)",
                case.mode, case.workload
            );
        }
        format!(
            "msyncs per op by strace: `strace -f -c -e trace=msync` of two runs (no warm-up) with \
             N1 and N2 operations, (count2 - count1) / (N2 - N1); flush mode N = 100 and 600, \
             msync mode N = {}; kv: per put (the gets issue none)",
            if quick { "5 and 15" } else { "10 and 60" }
        )
    };

    let meta = report::Meta {
        machine,
        rounds,
        quick,
        pmdk: env.pmdk_peer.is_some(),
        strace_note,
        elapsed_s: started.elapsed().as_secs_f64(),
        command: std::env::args()
            .skip(1)
            .filter(|a| a != "--bench")
            .collect::<Vec<_>>()
            .join(" "),
    };
    let checks = report::write_all(&out_dir, &meta, &rows)?;
    for c in &checks {
        println!("CHECK FAILED: {c}");
    }
    println!(
        "wrote {0}/report.md, {0}/results.json, {0}/ratios.svg ({1:.0} s)",
        out_dir.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(checks.is_empty())
}
