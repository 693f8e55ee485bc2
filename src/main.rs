//! `pmstore`: create and inspect pmstore pools.
//!
//! Exit codes: 0 success; 1 environment or I/O error (missing file, permissions, full disk);
//! 2 usage error; 3 the file is not a valid pool for this build (corrupt, truncated, foreign,
//! unsupported version or features, wrong layout); 4 the pool is locked by another process.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, UNIX_EPOCH};

use bytesize::ByteSize;
use clap::{Parser, Subcommand, ValueEnum};
use pmstore::pool::{
    CreateOptions, Inspection, ModeRequest, OpenOptions, PersistMode, Pool, PoolError,
    MIN_POOL_SIZE,
};
use serde_json::json;

#[derive(Parser)]
#[command(
    name = "pmstore",
    version,
    about = "Create and inspect pmstore persistent-memory pools"
)]
#[command(
    after_help = "Exit codes: 0 ok, 1 I/O or environment error, 2 usage error, \
3 not a valid pool (corrupt, truncated, foreign, unsupported, wrong layout), 4 pool locked.\n\
PMSTORE_FORCE_MODE=flush|msync overrides the persistence mode (see README)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a new pool file (refuses an existing path).
    Create {
        /// Path of the new pool file.
        path: PathBuf,
        /// Pool size, e.g. 64M, 1GiB, 8388608 (K/M/G/T are powers of 1024).
        #[arg(long, value_parser = parse_size)]
        size: u64,
        /// The application's name for its data layout (1 to 64 bytes).
        #[arg(long)]
        layout: String,
        /// Persistence mode to open the new pool with.
        #[arg(long, value_enum, default_value_t = Mode::Auto)]
        mode: Mode,
        /// Do not preallocate the file's blocks (a store to a hole on a full file system is
        /// then a SIGBUS rather than an error).
        #[arg(long)]
        sparse: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a pool's header, geometry, lock state and the persistence mode an open would use.
    Info {
        /// Path of the pool file.
        path: PathBuf,
        /// Also check that the pool has this layout name.
        #[arg(long)]
        layout: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Demonstrate durable stores: create (or reopen) a pool, persist records, reopen, verify.
    Demo {
        /// Pool file to use (default: $PMSTORE_POOL, else ./demo.pool).
        path: Option<PathBuf>,
        /// Number of 64-byte records to persist.
        #[arg(long, default_value_t = 10_000)]
        records: u64,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    /// PMSTORE_FORCE_MODE if set, else MAP_SYNC where supported, else msync.
    Auto,
    /// Cache flushes even where MAP_SYNC is refused (not power-fail safe there).
    Flush,
    /// msync of dirtied pages, even on DAX.
    Msync,
}

impl From<Mode> for ModeRequest {
    fn from(m: Mode) -> ModeRequest {
        match m {
            Mode::Auto => ModeRequest::Auto,
            Mode::Flush => ModeRequest::Flush,
            Mode::Msync => ModeRequest::Msync,
        }
    }
}

fn parse_size(s: &str) -> Result<u64, String> {
    parse_size::Config::new()
        .with_binary()
        .parse_size(s)
        .map_err(|e| format!("{e}"))
}

fn human(n: u64) -> String {
    format!("{} ({n} bytes)", ByteSize(n).display().iec())
}

fn exit_code(e: &PoolError) -> u8 {
    match e {
        PoolError::Locked { .. } => 4,
        e if e.is_invalid_pool() => 3,
        _ => 1,
    }
}

fn fail(e: &PoolError, json: bool) -> ExitCode {
    if json {
        println!(
            "{}",
            json!({"ok": false, "error": {"kind": e.kind(), "message": e.to_string()}})
        );
    }
    eprintln!("pmstore: error: {e}");
    ExitCode::from(exit_code(e))
}

fn mode_note(mode: PersistMode) -> &'static str {
    match mode {
        PersistMode::MapSync => {
            "DAX + MAP_SYNC: cache flushes make stores durable across power loss"
        }
        PersistMode::ForcedFlush => {
            "forced cache flushes on a non-DAX file: survives process crashes, NOT power loss"
        }
        PersistMode::Msync => "msync of dirtied pages: durable across power loss",
        PersistMode::Simulated => "simulated persistence domain: nothing is durable",
    }
}

fn info_json(path: &std::path::Path, i: &Inspection) -> serde_json::Value {
    let h = &i.header;
    let g = h.geometry();
    json!({
        "ok": true,
        "path": path,
        "format": {"major": h.major, "minor": h.minor},
        "features": {"compat": h.compat, "incompat": h.incompat, "ro_compat": h.ro_compat},
        "uuid": h.uuid().to_string(),
        "created_unix_ns": h.created_unix_ns,
        "pool_size": h.pool_size,
        "file_len": i.file_len,
        "layout": h.layout_name(),
        "root": {"offset": g.root_offset, "size": g.root_size},
        "lanes": {"offset": g.lanes_offset, "count": g.lane_count, "size": g.lane_size},
        "heap": {"offset": g.heap_offset, "size": g.heap_size},
        "checksum": h.checksum,
        "locked": i.locked,
        "mode": i.mode.name(),
        "power_fail_safe": i.mode.power_fail_safe(),
    })
}

fn print_info(path: &std::path::Path, i: &Inspection) {
    let h = &i.header;
    let g = h.geometry();
    let created =
        humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_nanos(h.created_unix_ns));
    println!("path:       {}", path.display());
    println!("layout:     {}", h.layout_name());
    println!("size:       {}", human(h.pool_size));
    println!("uuid:       {}", h.uuid());
    println!("created:    {created}");
    println!(
        "format:     v{}.{}  features compat={:#x} incompat={:#x} ro_compat={:#x}",
        h.major, h.minor, h.compat, h.incompat, h.ro_compat
    );
    println!(
        "root area:  offset {:#x}, {}",
        g.root_offset,
        ByteSize(g.root_size).display().iec()
    );
    println!(
        "lanes:      offset {:#x}, {} x {}",
        g.lanes_offset,
        g.lane_count,
        ByteSize(u64::from(g.lane_size)).display().iec()
    );
    println!(
        "heap:       offset {:#x}, {}",
        g.heap_offset,
        human(g.heap_size)
    );
    println!("checksum:   {:#010x} (crc32c, valid)", h.checksum);
    println!(
        "locked:     {}",
        if i.locked {
            "yes, open read-write elsewhere"
        } else {
            "no"
        }
    );
    println!("mode:       {} ({})", i.mode, mode_note(i.mode));
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Create {
            path,
            size,
            layout,
            mode,
            sparse,
            json,
        } => {
            let opts = CreateOptions::new(layout, size)
                .mode(mode.into())
                .preallocate(!sparse);
            match Pool::create(&path, &opts) {
                Ok(pool) => {
                    drop(pool);
                    match Pool::inspect(&path, None) {
                        Ok(i) if json => println!("{}", info_json(&path, &i)),
                        Ok(i) => {
                            println!("created {}", path.display());
                            print_info(&path, &i);
                        }
                        Err(e) => return fail(&e, json),
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e, json),
            }
        }
        Command::Info { path, layout, json } => match Pool::inspect(&path, layout.as_deref()) {
            Ok(i) if json => {
                println!("{}", info_json(&path, &i));
                ExitCode::SUCCESS
            }
            Ok(i) => {
                print_info(&path, &i);
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e, json),
        },
        Command::Demo { path, records } => match demo(path, records) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e, false),
        },
    }
}

const DEMO_LAYOUT: &str = "pmstore-demo";
const RECORD: u64 = 64;

/// Persists `records` 64-byte records into the heap of a demo pool, one durability point each,
/// and a run counter in the root area; reopens and verifies them.
fn demo(path: Option<PathBuf>, records: u64) -> Result<(), PoolError> {
    let path = path
        .or_else(|| std::env::var_os("PMSTORE_POOL").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("demo.pool"));
    let pool = match Pool::open(&path, &OpenOptions::new(DEMO_LAYOUT)) {
        Ok(p) => {
            println!("opened {}", path.display());
            p
        }
        Err(PoolError::NotFound { .. }) => {
            println!(
                "creating {} ({})",
                path.display(),
                ByteSize(MIN_POOL_SIZE * 8).display().iec()
            );
            Pool::create(&path, &CreateOptions::new(DEMO_LAYOUT, MIN_POOL_SIZE * 8))?
        }
        Err(e) => return Err(e),
    };
    let mode = pool.persistence();
    let instr = pool
        .flush_instr()
        .map_or(String::new(), |i| format!(", {}", i.name()));
    println!("persistence mode: {mode}{instr} — {}", mode_note(mode));
    let g = pool.geometry();
    let records = records.min(g.heap_size / RECORD);
    let mut ctx = pool.flush_context();

    // The run counter: a u64 at the start of the root area.
    let mut run = [0u8; 8];
    // SAFETY: this process holds the pool's exclusive lock and touches it from one thread.
    unsafe { pool.read(g.root_offset, &mut run) };
    let run = u64::from_le_bytes(run) + 1;

    let start = Instant::now();
    for i in 0..records {
        let mut rec = [0u8; RECORD as usize];
        rec[..8].copy_from_slice(&run.to_le_bytes());
        rec[8..16].copy_from_slice(&i.to_le_bytes());
        // SAFETY: as above.
        unsafe { pool.write(g.heap_offset + i * RECORD, &rec) };
        pool.persist(&mut ctx, g.heap_offset + i * RECORD, RECORD)?;
    }
    let elapsed = start.elapsed();
    // SAFETY: as above.
    unsafe { pool.write(g.root_offset, &run.to_le_bytes()) };
    pool.persist(&mut ctx, g.root_offset, 8)?;
    let c = ctx.counters();
    let n = records.max(1) as f64;
    println!(
        "run #{run}: persisted {records} records of {RECORD} B in {:.1} ms: {:.0} ns/record, {:.2} lines flushed, {:.2} drains, {:.2} msyncs per record",
        elapsed.as_secs_f64() * 1e3,
        elapsed.as_nanos() as f64 / n,
        c.lines_flushed as f64 / n,
        c.drains as f64 / n,
        c.msync_calls as f64 / n,
    );
    drop(pool);

    let pool = Pool::open(&path, &OpenOptions::new(DEMO_LAYOUT).read_only(true))?;
    let mut bad = 0;
    for i in 0..records {
        let mut rec = [0u8; 16];
        // SAFETY: read-only handle; no writer can hold the pool while we do.
        unsafe { pool.read(g.heap_offset + i * RECORD, &mut rec) };
        if rec[..8] != run.to_le_bytes() || rec[8..] != i.to_le_bytes() {
            bad += 1;
        }
    }
    if bad == 0 {
        println!("reopened and verified all {records} records of run #{run}");
        println!("run `pmstore demo` again: the run counter survives; `pmstore info {}` shows the header", path.display());
        Ok(())
    } else {
        eprintln!("pmstore: {bad} of {records} records did not survive the reopen");
        std::process::exit(1)
    }
}
