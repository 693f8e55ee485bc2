//! `pmstore`: create, inspect, check and dump pmstore pools.
//!
//! Exit codes: 0 success (`check`: clean); 1 environment or I/O error (missing file,
//! permissions, full disk); 2 usage error; 3 the file is not a valid pool for this build
//! (corrupt header, truncated, foreign, unsupported version or features, wrong layout); 4 the
//! pool is locked by another process; 6 no root object yet (`dump-root`); 10 clean but the next
//! open replays pending redo logs (`check`); 11 corrupt (`check`, `stats`, `dump-root`).

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use bytesize::ByteSize;
use clap::{Parser, Subcommand, ValueEnum};
use cli::{fail, human, parse_size, ReadArgs};
use pmstore::pool::{CreateOptions, Inspection, ModeRequest, PersistMode, Pool};
use serde_json::json;

const EXIT_CODES: &str = "\
Exit codes:
   0  success; check: the pool is clean
   1  I/O or environment error (missing file, permissions, full disk, bad PMSTORE_FORCE_MODE)
   2  usage error
   3  not a valid pool for this build (corrupt header, truncated, foreign, unsupported
      version or features, wrong --layout)
   4  the pool is locked: open read-write by another process (or handle)
   6  dump-root: the pool has no root object yet
  10  check: clean, but the next open replays pending redo logs (a crash after a commit
      point); stats, dump-root: pending logs, and the pool is larger than --max-copy
  11  corrupt: check, stats and dump-root list what they found

--json prints one JSON object on stdout: \"ok\": false with an \"error\" {kind, message} for
exit codes 1-4, 6 (dump-root) and 10/11 when dump-root cannot dump; check and stats put their
verdict in \"status\" (clean, recovery-needed, corrupt) and \"exit_code\". Sizes in JSON are
exact byte counts.
PMSTORE_FORCE_MODE=flush|msync overrides the persistence mode (see README).";

const CHECK_HELP: &str = "\
check opens the pool read-only (shared lock, read-only mapping) and never writes to it. It
checks:
  * the header, as `info` does (magic, version, checksum, features, geometry, file size);
  * every lane's redo log: empty, torn (invalid: cleared at the next open, nothing replayed),
    valid (replayed at the next open: exit 10) or corrupt (valid checksum, impossible
    contents: the next open fails; exit 11); duplicate sequence numbers;
  * the heap: every chunk header decodes, runs and spans neither overlap nor run past the
    last chunk, free chunks' (and covered chunks') bitmap slots are zero, run bitmaps have
    no bits past the run's blocks;
  * the root entry: offset 0 (no root) or the start of a live block of at least its size;
    the rest of the root area is zero.
With valid logs pending, the heap and root are checked on an in-memory copy after the same
recovery the next open runs (pools up to --max-copy), so what is checked is what the next
open will see. Blocks are reported as live or free: whether a live block is reachable from
the root depends on the application's types and cannot be checked here.
A progress bar is drawn on stderr while the heap of a pool larger than 1 GiB is scanned, if
stderr is a terminal.";

#[derive(Parser)]
#[command(
    name = "pmstore",
    version,
    about = "Create, inspect and check pmstore persistent-memory pools",
    after_help = EXIT_CODES
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a new pool file (refuses an existing path).
    #[command(after_help = EXIT_CODES)]
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
        /// Print the result as JSON (the fields of `info --json`).
        #[arg(long)]
        json: bool,
    },
    /// Show a pool's header, geometry, lock state and the persistence mode an open would use.
    #[command(after_help = EXIT_CODES)]
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
    /// Check a pool read-only: header, redo logs, heap, root entry.
    ///
    /// Exit 0 clean, 10 clean but the next open replays pending redo logs, 11 corrupt.
    #[command(after_help = format!("{CHECK_HELP}\n\n{EXIT_CODES}"))]
    Check {
        #[command(flatten)]
        args: ReadArgs,
        /// Also list every live block and span (offset and usable size).
        #[arg(long)]
        list_blocks: bool,
    },
    /// Show heap usage by size class, redo log usage and the root object (read-only).
    ///
    /// Bytes allocated, chunks total and free, live blocks and bytes per size class in use,
    /// spans; per-lane log states and the largest pending log; the root object's offset and
    /// size. Exit 0, or 10/11 as for check when the heap cannot be examined or is corrupt.
    #[command(after_help = EXIT_CODES)]
    Stats {
        #[command(flatten)]
        args: ReadArgs,
    },
    /// Print the root object's bytes in hex (read-only).
    ///
    /// xxd-like lines: offset in the object, 16 bytes in hex, the same as ASCII. Exit 6 if
    /// the pool has no root object yet, 11 if its root entry is corrupt.
    #[command(after_help = EXIT_CODES)]
    DumpRoot {
        #[command(flatten)]
        args: ReadArgs,
        /// Show at most this many bytes (e.g. 64, 4K; default: the whole object).
        #[arg(long, value_name = "N", value_parser = parse_size)]
        len: Option<u64>,
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
        Command::Check { args, list_blocks } => cli::check::run(&args, list_blocks),
        Command::Stats { args } => cli::stats::run(&args),
        Command::DumpRoot { args, len } => cli::dump::run(&args, len),
        Command::Demo { path, records } => cli::demo::demo(path, records),
    }
}
