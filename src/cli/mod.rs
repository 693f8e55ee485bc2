//! The `pmstore` subcommands beyond `create` and `info`, and what they share: exit codes,
//! human-readable sizes, error output.

pub mod check;
pub mod demo;
pub mod dump;
pub mod examine;
pub mod report;
pub mod stats;
pub mod walk;

use std::path::PathBuf;
use std::process::ExitCode;

use bytesize::ByteSize;
use clap::Args;
use pmstore::pool::PoolError;
use serde_json::json;

/// Success; for `check`: clean.
pub const EXIT_OK: u8 = 0;
/// I/O or environment error.
pub const EXIT_IO: u8 = 1;
/// The file is not a valid pool for this build.
pub const EXIT_NOT_A_POOL: u8 = 3;
/// Another handle holds the pool open read-write.
pub const EXIT_LOCKED: u8 = 4;
/// `dump-root`: the pool has no root object yet.
pub const EXIT_NO_ROOT: u8 = 6;
/// Clean, but the next open replays pending redo logs.
pub const EXIT_RECOVERY_NEEDED: u8 = 10;
/// Corrupt: the findings say what.
pub const EXIT_CORRUPT: u8 = 11;

/// The default of `--max-copy`.
pub const DEFAULT_MAX_COPY: &str = "1GiB";

/// Arguments shared by the read-only commands (`check`, `stats`, `dump-root`).
#[derive(Args, Clone, Debug)]
pub struct ReadArgs {
    /// Path of the pool file (opened read-only; never modified).
    pub path: PathBuf,
    /// Also check that the pool has this layout name (exit 3 if not).
    #[arg(long, value_name = "NAME")]
    pub layout: Option<String>,
    /// Print JSON instead of text (exact byte counts, stable field names).
    #[arg(long)]
    pub json: bool,
    /// Largest pool to copy into memory when valid redo logs are pending, to see the pool as
    /// the next open will after replaying them (needs about twice the pool's size in RAM).
    /// Larger pools with pending logs are not examined past their logs.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = DEFAULT_MAX_COPY)]
    pub max_copy: u64,
}

/// Parses a size such as `64M`, `1GiB` or `8388608` (K/M/G/T are powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    parse_size::Config::new()
        .with_binary()
        .parse_size(s)
        .map_err(|e| format!("{e}"))
}

/// `16.0 MiB (16777216 bytes)`.
pub fn human(n: u64) -> String {
    format!("{} ({n} bytes)", human_short(n))
}

/// `16.0 MiB`.
pub fn human_short(n: u64) -> String {
    ByteSize(n).display().iec().to_string()
}

/// `1 span`, `2 spans`.
pub fn count(n: u64, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// The exit code of a pool error.
pub fn pool_exit_code(e: &PoolError) -> u8 {
    match e {
        PoolError::Locked { .. } => EXIT_LOCKED,
        e if e.is_invalid_pool() => EXIT_NOT_A_POOL,
        _ => EXIT_IO,
    }
}

/// Reports a pool error (as JSON on stdout too if asked) and returns its exit code.
pub fn fail(e: &PoolError, json: bool) -> ExitCode {
    fail_with(e.kind(), &e.to_string(), pool_exit_code(e), json)
}

/// Reports an error of kind `kind` (as JSON on stdout too if asked) and returns `code`.
pub fn fail_with(kind: &str, message: &str, code: u8, json: bool) -> ExitCode {
    if json {
        println!(
            "{}",
            json!({"ok": false, "error": {"kind": kind, "message": message}})
        );
    }
    eprintln!("pmstore: error: {message}");
    ExitCode::from(code)
}
