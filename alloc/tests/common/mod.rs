#![allow(dead_code)]
//! Helpers shared by the allocator's integration tests: scratch pools on /dev/shm in
//! forced-flush mode, word access, root words.

use std::path::{Path, PathBuf};

use pmstore_pool::{CreateOptions, ModeRequest, OpenOptions, Pool};

pub const LAYOUT: &str = "alloc-tests";

/// A fresh directory on tmpfs (else the temp dir) and a pool path in it.
pub fn scratch() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap();
    let path = dir.path().join("heap.pool");
    (dir, path)
}

/// Creates a pool of `size` bytes in forced-flush mode.
pub fn create(path: &Path, size: u64) -> Pool {
    Pool::create(
        path,
        &CreateOptions::new(LAYOUT, size).mode(ModeRequest::Flush),
    )
    .unwrap()
}

/// Reopens a pool made by [`create`].
pub fn open(path: &Path) -> Pool {
    Pool::open(path, &OpenOptions::new(LAYOUT).mode(ModeRequest::Flush)).unwrap()
}

/// Reads the 8-byte word at `off`.
pub fn read_word(pool: &Pool, off: u64) -> u64 {
    let mut b = [0; 8];
    // SAFETY: no thread writes the pool concurrently in these tests' reads.
    unsafe { pool.read(off, &mut b) };
    u64::from_le_bytes(b)
}

/// Root word `i` (the root area is 4 KiB: 512 words).
pub fn root(pool: &Pool, i: u64) -> u64 {
    assert!(i < 512);
    pool.geometry().root_offset + 8 * i
}

/// Every byte of the pool.
pub fn pool_bytes(pool: &Pool) -> Vec<u8> {
    let mut v = vec![0; pool.size() as usize];
    // SAFETY: single-threaded test.
    unsafe { pool.read(0, &mut v) };
    v
}

/// Root words, live blocks (offset → size), chunks still held after freeing everything.
pub type Recovered = (Vec<u64>, std::collections::BTreeMap<u64, u64>, u64);

/// Opens a crash image in the simulated domain, recovers it, and returns the first `nwords`
/// root words, the live blocks (offset → size), and how many chunks are still not free after
/// freeing every live block (chunks of empty runs: kept for their class, or found empty on
/// media, `ALLOC.md` §8) — after checking that releasing the empty runs frees them all.
pub fn recovered_state(img: &[u8], nwords: u64) -> Result<Recovered, String> {
    let (mut pool, _) = Pool::open_simulated(img, &OpenOptions::new(LAYOUT)).unwrap();
    let (heap, _) = pmstore_alloc::Heap::open(&mut pool).map_err(|e| format!("recovery: {e}"))?;
    let mut live = std::collections::BTreeMap::new();
    heap.for_each_allocated(&pool, |o, s| {
        live.insert(o, s);
    })
    .map_err(|e| format!("scan: {e}"))?;
    let words: Vec<u64> = (0..nwords)
        .map(|i| read_word(&pool, root(&pool, i)))
        .collect();
    for &o in live.keys() {
        // SAFETY: single-threaded; no destination word.
        unsafe { heap.free(&pool, o, None) }.map_err(|e| format!("free {o:#x}: {e}"))?;
    }
    let s = heap.stats(&pool).map_err(|e| e.to_string())?;
    if s.bytes_allocated != 0 {
        return Err(format!(
            "bytes still allocated after freeing everything: {s:?}"
        ));
    }
    if s.free_chunks + s.empty_run_chunks != s.chunks {
        return Err(format!("chunks neither free nor in empty runs: {s:?}"));
    }
    // Capacity is never lost: every empty run (kept, or found on media) can be released.
    heap.release_empty_runs(&pool)
        .map_err(|e| format!("release empty runs: {e}"))?;
    let after = heap.stats(&pool).map_err(|e| e.to_string())?;
    if after.free_chunks != after.chunks {
        return Err(format!("chunks held after releasing empty runs: {after:?}"));
    }
    Ok((words, live, s.chunks - s.free_chunks))
}
