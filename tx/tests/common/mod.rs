#![allow(dead_code)]
//! Helpers shared by the transaction layer's integration tests: scratch pools, whole-pool byte
//! snapshots, a seeded generator, environment knobs and the "every allocated block is reachable
//! exactly once" check.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use pmstore_tx::{CreateOptions, ModeRequest, OpenOptions, Pool};

/// A fresh directory on tmpfs (else the default temp dir): for forced-flush pools.
pub fn shm_dir() -> tempfile::TempDir {
    tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap()
}

/// A fresh directory on a real file system (/var/tmp, else the default temp dir): for msync
/// pools.
pub fn disk_dir() -> tempfile::TempDir {
    tempfile::tempdir_in("/var/tmp")
        .or_else(|_| tempfile::tempdir())
        .unwrap()
}

/// Creates a pool of `size` bytes at `dir/name` in `mode`.
pub fn create_in(
    dir: &Path,
    name: &str,
    layout: &str,
    size: u64,
    mode: ModeRequest,
) -> (PathBuf, Pool) {
    let path = dir.join(name);
    let pool = Pool::create(&path, &CreateOptions::new(layout, size).mode(mode)).unwrap();
    (path, pool)
}

/// Reopens a pool (read-write) in `mode`.
pub fn reopen(path: &Path, layout: &str, mode: ModeRequest) -> Pool {
    Pool::open(path, &OpenOptions::new(layout).mode(mode)).unwrap()
}

/// Every byte of the pool.
///
/// The caller guarantees that no transaction runs on `pool` during the call (single-threaded
/// test sections).
pub fn pool_bytes(pool: &Pool) -> Vec<u8> {
    let mut v = vec![0; pool.raw().size() as usize];
    // SAFETY: the caller's contract: no transaction (the only writer of pool bytes) runs on
    // this pool during the copy, so no thread writes the bytes read.
    unsafe { pool.raw().read(0, &mut v) };
    v
}

/// The bytes of `[off, off + len)` of the pool (same contract as [`pool_bytes`]).
pub fn bytes_at(pool: &Pool, off: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    // SAFETY: as in `pool_bytes`: no writer runs on this pool during the call.
    unsafe { pool.raw().read(off, &mut v) };
    v
}

/// The 8-byte word at `off` (same contract as [`pool_bytes`]).
pub fn word_at(pool: &Pool, off: u64) -> u64 {
    u64::from_le_bytes(bytes_at(pool, off, 8).try_into().unwrap())
}

/// First offset where two pool images differ, with a little context, for assertion messages.
pub fn first_difference(a: &[u8], b: &[u8]) -> String {
    match a.iter().zip(b).position(|(x, y)| x != y) {
        None if a.len() == b.len() => "identical".into(),
        None => format!("lengths {} and {}", a.len(), b.len()),
        Some(i) => format!(
            "first difference at {i:#x} ({:#04x} vs {:#04x})",
            a[i], b[i]
        ),
    }
}

/// Blocks the heap considers allocated: offset → usable size.
pub fn allocated(pool: &Pool) -> Result<BTreeMap<u64, u64>, String> {
    let mut live = BTreeMap::new();
    pool.heap()
        .for_each_allocated(pool.raw(), |o, s| {
            live.insert(o, s);
        })
        .map_err(|e| format!("heap scan: {e}"))?;
    Ok(live)
}

/// Checks that the allocated blocks are exactly `reachable` (each once): no leak, no block
/// referenced twice, no reference to a block that is not allocated.
pub fn check_reachable(pool: &Pool, reachable: &[u64]) -> Result<(), String> {
    let live = allocated(pool)?;
    let mut seen = BTreeMap::new();
    for &r in reachable {
        if let Some(n) = seen.insert(r, 1u32) {
            return Err(format!("block {r:#x} reachable twice (count {})", n + 1));
        }
        if !live.contains_key(&r) {
            return Err(format!("reachable {r:#x} is not an allocated block"));
        }
    }
    let leaked: Vec<String> = live
        .keys()
        .filter(|o| !seen.contains_key(o))
        .map(|o| format!("{o:#x}"))
        .collect();
    if !leaked.is_empty() {
        return Err(format!(
            "leaked blocks (allocated, unreachable): {leaked:?}"
        ));
    }
    Ok(())
}

/// A small deterministic generator (SplitMix64).
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A numeric environment knob with a default.
pub fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}
