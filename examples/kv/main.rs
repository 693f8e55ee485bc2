//! `kv`: a persistent key-value store on pmstore — the example to copy.
//!
//! The map itself (a hash map with incremental resizing, variable-length byte keys and values,
//! every mutation one transaction) is in `map.rs`, with its design; the kill -9 test in
//! `crash.rs`. Both are also compiled into `tests/kv.rs`.
//!
//! ```sh
//! cargo run --release --example kv                  # demo on ./kv.pool (or $PMSTORE_POOL)
//! cargo run --release --example kv -- put hello world
//! cargo run --release --example kv -- put big --stdin < value.bin   # values up to 1 MiB
//! cargo run --release --example kv -- get hello     # prints "world"
//! cargo run --release --example kv -- del hello
//! cargo run --release --example kv -- list          # every key and value, sorted by key
//! cargo run --release --example kv -- check         # verify the structure and the allocator
//! cargo run --release --example kv -- crash-test --kills 20
//! # flush-mode benchmark on tmpfs (cache flushes instead of msync; not power-fail safe there):
//! PMSTORE_FORCE_MODE=flush cargo run --release --example kv -- bench --n 1000000 --pool /dev/shm/kv.pool
//! # msync-mode benchmark on a regular file system:
//! cargo run --release --example kv -- bench --n 2000 --pool /var/tmp/kv.pool
//! ```
//!
//! * The pool is `--pool PATH`, else `$PMSTORE_POOL`, else `./kv.pool` (`bench` and
//!   `crash-test` default to `./kv-bench.pool` and `./kv-crash.pool`: they need a fresh file,
//!   refuse an existing one and remove theirs when done).
//! * A missing pool is created (`put` and the demo) with `--pool-size` bytes (default 256M,
//!   preallocated), in the persistence mode `--mode` asks for (`auto` honours
//!   `PMSTORE_FORCE_MODE`: `map-sync` on a DAX file system, else `msync`).
//! * The demo puts 100000 keys with cache flushes (map-sync, forced-flush) and 2000 in msync
//!   mode, where every put waits for the disk (`--n` to choose).
//! * `bench --initial-slots 2N` starts from a table large enough for N keys, to measure puts
//!   without resizes.
//! * Limits: keys up to 64 KiB, values up to 1 MiB.
//! * Exit codes: 0 ok, 1 I/O or environment error, 2 usage error (including a key or value over
//!   the limit), 3 not a kv pool (another layout, corrupt), 4 pool locked by another process,
//!   5 pool full, 6 key not found (`get`, `del`).

mod crash;
// The map is a library module: the command line does not use all of it.
#[allow(dead_code)]
mod map;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use pmstore::{ModeRequest, PersistMode};
use serde_json::json;

use map::{Kv, KvError, MAX_KEY, MAX_VALUE};

const AFTER_HELP: &str = "\
Pool: --pool PATH, else $PMSTORE_POOL, else ./kv.pool (bench: ./kv-bench.pool, crash-test:
./kv-crash.pool; both need a fresh file and remove theirs afterwards).
Persistence mode: map-sync on a DAX file system, else msync; PMSTORE_FORCE_MODE=flush (or
--mode flush) uses cache flushes on any file, e.g. tmpfs, which survives a process crash but
not a power loss (for benchmarks: PMSTORE_FORCE_MODE=flush ... bench --pool /dev/shm/kv.pool).
Limits: keys up to 64 KiB, values up to 1 MiB.
Exit codes: 0 ok, 1 I/O or environment error, 2 usage error (also a key or value over the
limit), 3 not a kv pool (another layout, corrupt), 4 pool locked, 5 pool full, 6 key not
found (get, del).";

#[derive(Parser)]
#[command(
    name = "kv",
    about = "A persistent key-value store on pmstore (runs a demo without a command)",
    after_help = AFTER_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// Pool file (default: $PMSTORE_POOL, else ./kv.pool; bench: ./kv-bench.pool, crash-test:
    /// ./kv-crash.pool).
    #[arg(long, global = true)]
    pool: Option<PathBuf>,
    /// Size of a pool this command creates, e.g. 64M, 1G (default: 256M; bench: sized for
    /// --n).
    #[arg(long, global = true, value_parser = parse_size)]
    pool_size: Option<u64>,
    /// Persistence mode (auto honours PMSTORE_FORCE_MODE).
    #[arg(long, global = true, value_enum, default_value_t = Mode::Auto)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Cmd {
    /// Demo (the default): insert and read back a batch, reopen, verify.
    Demo {
        /// Keys to insert (default: 100000 with cache flushes, 2000 in msync mode, where every
        /// put waits for the disk).
        #[arg(long)]
        n: Option<u64>,
    },
    /// Set KEY to VALUE (creates the pool if absent).
    Put {
        /// The key (at most 64 KiB).
        key: std::ffi::OsString,
        /// The value (at most 1 MiB).
        #[arg(required_unless_present = "stdin", conflicts_with = "stdin")]
        value: Option<std::ffi::OsString>,
        /// Read the value from standard input instead (for values longer than a command-line
        /// argument may be, 128 KiB on Linux).
        #[arg(long)]
        stdin: bool,
    },
    /// Print the value of KEY (exit 6 if absent).
    Get {
        /// The key.
        key: std::ffi::OsString,
    },
    /// Delete KEY (exit 6 if absent).
    Del {
        /// The key.
        key: std::ffi::OsString,
    },
    /// Print every key and value (tab-separated, sorted by key, non-printable bytes escaped).
    List,
    /// Check the map's structure and that the allocator holds exactly the blocks it reaches.
    Check,
    /// Benchmark: insert, then look up, N random 8-byte keys with 64-byte values in a fresh
    /// pool; one JSON line per phase.
    ///
    /// Prints {"op":"put"|"get","n":..,"threads":..,"ns_per_op":..,"drains_per_op":..,
    /// "msyncs_per_op":..,"lines_flushed_per_op":..,"mode":..}; the counts come from the
    /// pool's persistence counters. The pool file must not exist; it is removed afterwards.
    /// Flush mode on tmpfs (cache flushes; survives a process crash, not a power loss):
    /// PMSTORE_FORCE_MODE=flush kv bench --n 1000000 --pool /dev/shm/kv.pool. msync mode:
    /// kv bench --n 2000 --pool /var/tmp/kv.pool.
    Bench {
        /// Number of keys.
        #[arg(long)]
        n: u64,
        /// Threads (each inserts and looks up its own keys).
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Keep the pool file afterwards.
        #[arg(long)]
        keep: bool,
        /// Slots of the map's first table (default 1024: the map grows through its resizes
        /// during the put phase; 2N or more measures puts without resizes).
        #[arg(long, default_value_t = map::DEFAULT_INITIAL_SLOTS)]
        initial_slots: u64,
    },
    /// Kill -9 test: a child process puts and deletes, reporting each commit through a pipe;
    /// it is killed at random moments and the pool is reopened and verified each time.
    CrashTest {
        /// Number of kills.
        #[arg(long, default_value_t = 20)]
        kills: u32,
        /// Longest time a child runs before it is killed, in milliseconds.
        #[arg(long, default_value_t = 200)]
        max_delay_ms: u64,
        /// Seed of the operations and kill times, below 2^20 (default: from the clock).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// The child of crash-test.
    #[command(hide = true)]
    CrashChild {
        /// Seed of the child's operations.
        #[arg(long)]
        seed: u64,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    /// PMSTORE_FORCE_MODE if set, else map-sync where supported, else msync.
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

/// A failure with its exit code.
struct Fail(u8, String);

impl From<KvError> for Fail {
    fn from(e: KvError) -> Fail {
        let code = match &e {
            e if e.is_locked() => 4,
            e if e.is_invalid_pool() => 3,
            e if e.is_full() => 5,
            KvError::KeyTooLarge { .. } | KvError::ValueTooLarge { .. } => 2,
            _ => 1,
        };
        Fail(code, e.to_string())
    }
}

const DEFAULT_POOL_SIZE: u64 = 256 << 20;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mode = ModeRequest::from(cli.mode);
    let default_path = |name: &str| {
        cli.pool
            .clone()
            .or_else(|| std::env::var_os("PMSTORE_POOL").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(name))
    };
    let size = cli.pool_size.unwrap_or(DEFAULT_POOL_SIZE);
    let r = match cli.command.unwrap_or(Cmd::Demo { n: None }) {
        Cmd::Demo { n } => demo(&default_path("kv.pool"), size, mode, n),
        Cmd::Put { key, value, .. } => {
            put(&default_path("kv.pool"), size, mode, &key, value.as_deref())
        }
        Cmd::Get { key } => get(&default_path("kv.pool"), mode, &key),
        Cmd::Del { key } => del(&default_path("kv.pool"), mode, &key),
        Cmd::List => list(&default_path("kv.pool"), mode),
        Cmd::Check => check(&default_path("kv.pool"), mode),
        Cmd::Bench {
            n,
            threads,
            keep,
            initial_slots,
        } => bench(
            &default_path("kv-bench.pool"),
            cli.pool_size,
            mode,
            (n, threads, initial_slots),
            keep,
        ),
        Cmd::CrashTest {
            kills,
            max_delay_ms,
            seed,
        } => crash_test(
            &default_path("kv-crash.pool"),
            cli.pool_size.unwrap_or(64 << 20),
            mode,
            kills,
            Duration::from_millis(max_delay_ms),
            seed,
        ),
        Cmd::CrashChild { seed } => {
            crash::child(&default_path("kv-crash.pool"), mode, seed).map_err(Fail::from)
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(code, msg)) => {
            eprintln!("kv: {msg}");
            ExitCode::from(code)
        }
    }
}

fn bytes(s: &std::ffi::OsStr) -> &[u8] {
    use std::os::unix::ffi::OsStrExt;
    s.as_bytes()
}

/// Refuses keys and values over the limits before touching the pool.
fn check_limits(key: &[u8], value: Option<&[u8]>) -> Result<(), Fail> {
    if key.len() > MAX_KEY {
        return Err(KvError::KeyTooLarge { len: key.len() }.into());
    }
    if let Some(v) = value {
        if v.len() > MAX_VALUE {
            return Err(KvError::ValueTooLarge { len: v.len() }.into());
        }
    }
    Ok(())
}

fn open(path: &Path, mode: ModeRequest) -> Result<Kv, Fail> {
    Kv::open(path, mode).map_err(|e| {
        if matches!(
            e,
            KvError::Tx(pmstore::TxError::Pool(pmstore::PoolError::NotFound { .. }))
        ) {
            Fail(
                1,
                format!(
                    "no pool at {} (`kv put KEY VALUE` or the demo creates one)",
                    path.display()
                ),
            )
        } else {
            Fail::from(e)
        }
    })
}

fn describe(mode: PersistMode) -> &'static str {
    match mode {
        PersistMode::MapSync => "DAX + MAP_SYNC: cache flushes, durable across power loss",
        PersistMode::ForcedFlush => {
            "forced cache flushes on a non-DAX file: survives a process crash, NOT a power loss"
        }
        PersistMode::Msync => "msync of dirtied pages: durable across power loss",
        PersistMode::Simulated => "simulated",
    }
}

fn put(
    path: &Path,
    size: u64,
    mode: ModeRequest,
    key: &std::ffi::OsStr,
    value: Option<&std::ffi::OsStr>,
) -> Result<(), Fail> {
    let key = bytes(key);
    let value = match value {
        Some(v) => bytes(v).to_vec(),
        None => {
            // At most one byte over the limit is read: enough to refuse it.
            let mut v = Vec::new();
            std::io::Read::take(std::io::stdin().lock(), MAX_VALUE as u64 + 1)
                .read_to_end(&mut v)
                .map_err(|e| Fail(1, format!("reading the value from standard input: {e}")))?;
            if v.len() > MAX_VALUE {
                return Err(Fail(
                    2,
                    format!(
                        "the value on standard input is larger than the limit of {MAX_VALUE} \
                         bytes (nothing was changed)"
                    ),
                ));
            }
            v
        }
    };
    let value = &value[..];
    check_limits(key, Some(value))?;
    let (kv, _) = Kv::open_or_create(path, size, mode)?;
    let replaced = kv.put(key, value)?;
    eprintln!("{}", if replaced { "replaced" } else { "inserted" });
    Ok(())
}

fn get(path: &Path, mode: ModeRequest, key: &std::ffi::OsStr) -> Result<(), Fail> {
    let key = bytes(key);
    check_limits(key, None)?;
    let kv = open(path, mode)?;
    match kv.get(key)? {
        Some(v) => {
            let mut out = std::io::stdout().lock();
            out.write_all(&v)
                .and_then(|()| out.write_all(b"\n"))
                .map_err(|e| Fail(1, format!("writing the value: {e}")))?;
            Ok(())
        }
        None => Err(Fail(
            6,
            format!("key {:?} not found", key.escape_ascii().to_string()),
        )),
    }
}

fn del(path: &Path, mode: ModeRequest, key: &std::ffi::OsStr) -> Result<(), Fail> {
    let key = bytes(key);
    check_limits(key, None)?;
    let kv = open(path, mode)?;
    if kv.delete(key)? {
        eprintln!("deleted");
        Ok(())
    } else {
        Err(Fail(
            6,
            format!("key {:?} not found", key.escape_ascii().to_string()),
        ))
    }
}

fn list(path: &Path, mode: ModeRequest) -> Result<(), Fail> {
    let kv = open(path, mode)?;
    let mut entries = kv.entries()?;
    entries.sort();
    let mut out = std::io::stdout().lock();
    for (k, v) in &entries {
        match writeln!(out, "{}\t{}", k.escape_ascii(), v.escape_ascii()) {
            Ok(()) => {}
            // The reader went away (`kv list | head`): not an error.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(Fail(1, format!("writing: {e}"))),
        }
    }
    Ok(())
}

fn check(path: &Path, mode: ModeRequest) -> Result<(), Fail> {
    let kv = open(path, mode)?;
    let r = kv.check()?;
    kv.check_allocator(&r)?;
    println!(
        "ok: {} entries, {} slots{}, longest probe {}, {} blocks allocated (all reachable)",
        r.entries,
        r.slots,
        if r.old_slots > 0 {
            format!(
                " (resize in progress: {}/{} migrated)",
                r.migrated, r.old_slots
            )
        } else {
            String::new()
        },
        r.longest_probe,
        r.blocks.len()
    );
    Ok(())
}

fn bar(n: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(n);
    pb.set_style(
        ProgressStyle::with_template("{msg:>8} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

fn demo_key(i: u64) -> Vec<u8> {
    format!("demo:{i:08}").into_bytes()
}

fn demo_value(i: u64) -> Vec<u8> {
    let mut v = format!("value {i} ").into_bytes();
    v.resize(48 + (i % 64) as usize, b'*');
    v
}

fn demo(path: &Path, size: u64, mode: ModeRequest, n: Option<u64>) -> Result<(), Fail> {
    let (kv, created) = Kv::open_or_create(path, size, mode)?;
    let m = kv.pool().persistence();
    let n = n.unwrap_or(if m.uses_cache_flush() { 100_000 } else { 2_000 });
    println!(
        "pool {} ({}), persistence mode: {} ({})",
        path.display(),
        if created {
            format!(
                "created, {} MiB preallocated; --pool-size changes that",
                size >> 20
            )
        } else {
            "opened".into()
        },
        m.name(),
        describe(m)
    );
    println!("entries before: {}", kv.len()?);

    let pb = bar(n, "put");
    let t0 = Instant::now();
    for i in 0..n {
        kv.put(&demo_key(i), &demo_value(i))?;
        if i % 256 == 0 {
            pb.set_position(i);
        }
    }
    pb.finish_and_clear();
    let put_time = t0.elapsed();

    let pb = bar(n, "get");
    let t0 = Instant::now();
    let mut v = Vec::new();
    for i in 0..n {
        if !kv.get_into(&demo_key(i), &mut v)? || v != demo_value(i) {
            return Err(Fail(1, format!("demo key {i} read back wrong")));
        }
        if i % 1024 == 0 {
            pb.set_position(i);
        }
    }
    pb.finish_and_clear();
    let get_time = t0.elapsed();
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    let per = |d: Duration| d.as_nanos() as f64 / n.max(1) as f64;
    println!(
        "put {n} keys: {:.0} puts/s ({:.0} ns each, one durable transaction per put)",
        rate(put_time),
        per(put_time)
    );
    println!(
        "get {n} keys: {:.0} gets/s ({:.0} ns each)",
        rate(get_time),
        per(get_time)
    );
    let st = kv.stats()?;
    println!(
        "entries: {}, table slots: {}{}",
        st.len,
        st.slots,
        if st.old_slots > 0 {
            format!(
                " (resize in progress: {}/{} migrated)",
                st.migrated, st.old_slots
            )
        } else {
            String::new()
        }
    );

    drop(kv);
    let t0 = Instant::now();
    let kv = open(path, mode)?;
    println!("closed and reopened in {:.1?}", t0.elapsed());
    let pb = bar(n, "verify");
    for i in 0..n {
        if !kv.get_into(&demo_key(i), &mut v)? || v != demo_value(i) {
            return Err(Fail(1, format!("demo key {i} lost after reopening")));
        }
        if i % 1024 == 0 {
            pb.set_position(i);
        }
    }
    pb.finish_and_clear();
    let r = kv.check()?;
    kv.check_allocator(&r)?;
    println!(
        "verified after reopening: all {n} demo keys present; structure ok ({} entries, longest \
         probe {}, every allocated block reachable)",
        r.entries, r.longest_probe
    );
    println!(
        "crash test (kills a writer with SIGKILL at random moments, then reopens and verifies):\n  \
         cargo run --release --example kv -- crash-test --kills 20 --pool /tmp/kv-crash.pool"
    );
    Ok(())
}

/// The fresh pool of `bench` and `crash-test`.
fn fresh_pool(path: &Path, size: u64, mode: ModeRequest, slots: u64) -> Result<Kv, Fail> {
    if path.exists() {
        return Err(Fail(
            1,
            format!(
                "{} exists: this command needs a fresh pool file (remove it, or pass another \
                 --pool)",
                path.display()
            ),
        ));
    }
    Ok(Kv::create_with(path, size, mode, slots)?)
}

fn bench_key(i: u64) -> [u8; 8] {
    crash::mix(i ^ 0x6b76_6265_6e63_6800).to_le_bytes()
}

fn bench_value(i: u64) -> [u8; 64] {
    let mut v = [0u8; 64];
    for (j, c) in v.chunks_exact_mut(8).enumerate() {
        c.copy_from_slice(&(i.wrapping_mul(31) ^ j as u64).to_le_bytes());
    }
    v
}

fn bench(
    path: &Path,
    size: Option<u64>,
    mode: ModeRequest,
    (n, threads, slots): (u64, usize, u64),
    keep: bool,
) -> Result<(), Fail> {
    if threads == 0 || n == 0 {
        return Err(Fail(2, "--n and --threads must be at least 1".into()));
    }
    // 128-byte blocks per entry; tables at up to 64 bytes per key, plus the half-size old
    // one during a resize, plus the redo log of a new table (pmstore logs new blocks whole);
    // slack.
    let size = size.unwrap_or((n * 384 + slots * 32 + (64 << 20)).next_multiple_of(1 << 20));
    let kv = fresh_pool(path, size, mode, slots)?;
    let r = run_bench(&kv, n, threads);
    drop(kv);
    if !keep {
        let _ = std::fs::remove_file(path);
    }
    for line in r? {
        println!("{line}");
    }
    Ok(())
}

fn run_bench(kv: &Kv, n: u64, threads: usize) -> Result<Vec<String>, Fail> {
    let mode = kv.pool().persistence().name();
    let mut lines = Vec::new();
    for op in ["put", "get"] {
        let barrier = Barrier::new(threads);
        let before = kv.pool().counters();
        // Each thread times itself; the phase lasts from the first start to the last end.
        let results: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads as u64)
                .map(|t| {
                    let barrier = &barrier;
                    s.spawn(move || -> Result<(Instant, Instant), KvError> {
                        // This thread's keys, looked up in a shuffled order.
                        let mut mine: Vec<u64> = (t..n).step_by(threads).collect();
                        if op == "get" {
                            let mut x = crash::mix(t ^ 0x5678);
                            for i in (1..mine.len()).rev() {
                                x = crash::mix(x);
                                mine.swap(i, (x % (i as u64 + 1)) as usize);
                            }
                        }
                        let mut v = Vec::with_capacity(64);
                        barrier.wait();
                        let start = Instant::now();
                        for &i in &mine {
                            if op == "put" {
                                kv.put(&bench_key(i), &bench_value(i))?;
                            } else if !kv.get_into(&bench_key(i), &mut v)? || v != bench_value(i) {
                                return Err(KvError::Corrupt(format!("bench key {i} read wrong")));
                            }
                        }
                        Ok((start, Instant::now()))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join()).collect()
        });
        let mut times = Vec::new();
        for r in results {
            times.push(r.map_err(|_| Fail(1, "a bench thread panicked".into()))??);
        }
        let start = times.iter().map(|t| t.0).min().expect("a thread");
        let end = times.iter().map(|t| t.1).max().expect("a thread");
        let elapsed = end - start;
        let d = kv.pool().counters() - before;
        let per = |x: u64| x as f64 / n as f64;
        lines.push(
            json!({
                "op": op,
                "n": n,
                "threads": threads,
                "ns_per_op": (elapsed.as_nanos() as f64 / n as f64 * 10.0).round() / 10.0,
                "drains_per_op": per(d.drains),
                "msyncs_per_op": per(d.msync_calls),
                "lines_flushed_per_op": per(d.lines_flushed + d.nt_bytes / 64),
                "mode": mode,
            })
            .to_string(),
        );
    }
    let len = kv.len()?;
    if len != n {
        return Err(Fail(1, format!("bench: len is {len}, expected {n}")));
    }
    Ok(lines)
}

fn crash_test(
    path: &Path,
    size: u64,
    mode: ModeRequest,
    kills: u32,
    max_delay: Duration,
    seed: Option<u64>,
) -> Result<(), Fail> {
    let seed = seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            % 1_000_000
    });
    // A small first table: the children go through several resizes.
    let kv = fresh_pool(path, size, mode, 64)?;
    println!(
        "crash test: pool {} ({} mode), {kills} kills, seed {seed}",
        path.display(),
        kv.pool().persistence().name()
    );
    drop(kv);
    let exe = std::env::current_exe().map_err(|e| Fail(1, format!("current_exe: {e}")))?;
    let mode_arg = match mode {
        ModeRequest::Flush => "flush",
        ModeRequest::Msync => "msync",
        _ => "auto",
    };
    let pb = bar(u64::from(kills), "kills");
    let r = crash::kill_loop(
        path,
        kills,
        seed,
        max_delay,
        |s| {
            Command::new(&exe)
                .arg("crash-child")
                .arg("--seed")
                .arg(s.to_string())
                .arg("--pool")
                .arg(path)
                .arg("--mode")
                .arg(mode_arg)
                .stdout(Stdio::piped())
                .stdin(Stdio::null())
                .spawn()
        },
        |p| Kv::open(p, mode),
        |_, s| {
            pb.set_position(u64::from(s.kills));
            pb.set_message(format!("{} ops", s.reported));
        },
    );
    pb.finish_and_clear();
    match r {
        Ok(s) => {
            println!(
                "ok: {} kills, {} committed operations reported and all found; the in-flight \
                 operation had committed after {} kills; {} kills hit a resize in progress; \
                 final map: {} entries, {} slots; allocator = reachable blocks after every kill",
                s.kills, s.reported, s.in_flight_committed, s.during_resize, s.entries, s.slots
            );
            let _ = std::fs::remove_file(path);
            Ok(())
        }
        Err(e) => Err(Fail(
            1,
            format!("crash test FAILED: {e} (pool left at {})", path.display()),
        )),
    }
}
