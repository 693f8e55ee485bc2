//! On a real DAX file system: `MAP_SYNC` is used, and makes `msync` unnecessary.
//!
//! These tests run only where `PMSTORE_TEST_DAX_DIR` names a directory on a file system
//! mounted with `-o dax` (ext4 or xfs on an fsdax pmem namespace): `scripts/dax-vm.sh` boots a
//! QEMU guest with an emulated NVDIMM set up that way and sets it. Elsewhere each test says
//! "skipped: not on a DAX mount" and passes.

use std::path::{Path, PathBuf};

use pmstore_pool::{CreateOptions, ModeRequest, OpenOptions, PersistMode, Pool, MIN_POOL_SIZE};

const LAYOUT: &str = "dax-tests";

/// The DAX directory, or `None` (after saying so) when not on a DAX mount.
fn dax_dir() -> Option<PathBuf> {
    let Some(dir) = std::env::var_os("PMSTORE_TEST_DAX_DIR") else {
        eprintln!("skipped: not on a DAX mount");
        return None;
    };
    // Auto mode must decide by itself here: a forced mode would make every check meaningless.
    assert!(
        std::env::var_os(ModeRequest::ENV).is_none(),
        "PMSTORE_TEST_DAX_DIR is set: unset {} for the DAX tests",
        ModeRequest::ENV
    );
    let dir = PathBuf::from(dir);
    assert!(
        dir.is_dir(),
        "PMSTORE_TEST_DAX_DIR={} is not a directory",
        dir.display()
    );
    Some(dir)
}

/// A fresh directory under `dir` and a pool path in it.
fn scratch_in(dir: &Path) -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir_in(dir).unwrap();
    let path = d.path().join("dax.pool");
    (d, path)
}

fn create_auto(path: &Path) -> Pool {
    Pool::create(path, &CreateOptions::new(LAYOUT, MIN_POOL_SIZE)).unwrap()
}

/// Writes a pattern to a few places (small stores, a straddling store, a non-temporal copy),
/// persisting each; returns what was written where.
fn write_and_persist(pool: &Pool, seed: u8) -> Vec<(u64, Vec<u8>)> {
    let heap = pool.geometry().heap_offset;
    let mut ctx = pool.flush_context();
    let big: Vec<u8> = (0..8192u32)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect();
    let writes = vec![
        (heap, vec![seed; 8]),
        (heap + 4096 - 3, vec![seed ^ 0x55; 6]),
        (heap + (1 << 20), b"durable on DAX without msync".to_vec()),
        (heap + (3 << 20) + 40, big),
    ];
    for (off, bytes) in &writes {
        if bytes.len() >= 256 {
            // SAFETY: single-threaded test; no references into the pool are live.
            unsafe { pool.copy_persist(&mut ctx, *off, bytes).unwrap() };
        } else {
            // SAFETY: as above.
            unsafe { pool.write(*off, bytes) };
            pool.persist(&mut ctx, *off, bytes.len() as u64).unwrap();
        }
    }
    writes
}

fn read_back(pool: &Pool, writes: &[(u64, Vec<u8>)]) {
    for (off, bytes) in writes {
        let mut back = vec![0u8; bytes.len()];
        // SAFETY: single-threaded test; no other access to the pool.
        unsafe { pool.read(*off, &mut back) };
        assert!(back == *bytes, "bytes at {off:#x} differ after reopen");
    }
}

#[test]
fn auto_mode_on_dax_uses_map_sync_and_never_msyncs() {
    let Some(dir) = dax_dir() else { return };
    let (_d, path) = scratch_in(&dir);
    let pool = create_auto(&path);
    assert_eq!(
        pool.persistence(),
        PersistMode::MapSync,
        "{} is not on a MAP_SYNC-capable DAX mount",
        dir.display()
    );
    assert!(pool.persistence().power_fail_safe());
    let instr = pool.flush_instr().expect("MapSync pools flush cache lines");
    eprintln!(
        "DAX pool: mode {}, flush with {}",
        pool.persistence(),
        instr.name()
    );
    write_and_persist(&pool, 0xA5);
    let c = pool.counters();
    assert_eq!(c.msync_calls, 0, "{c:?}");
    assert_eq!(c.msync_bytes, 0, "{c:?}");
    assert_eq!(c.drains, 4, "{c:?}");
    assert!(c.lines_flushed > 0, "{c:?}");
    assert!(c.nt_bytes > 0, "{c:?}");
}

#[test]
fn tmpfs_in_the_same_system_falls_back_to_msync() {
    let Some(_dir) = dax_dir() else { return };
    let shm = Path::new("/dev/shm");
    assert!(shm.is_dir(), "no /dev/shm");
    let (_d, path) = scratch_in(shm);
    let pool = create_auto(&path);
    assert_eq!(pool.persistence(), PersistMode::Msync);
    assert_eq!(pool.flush_instr(), None);
    write_and_persist(&pool, 0x3C);
    let c = pool.counters();
    assert!(c.msync_calls > 0, "{c:?}");
    assert_eq!(c.lines_flushed, 0, "{c:?}");
    drop(pool);
    assert_eq!(Pool::inspect(&path, None).unwrap().mode, PersistMode::Msync);
}

#[test]
fn inspect_reports_map_sync_on_dax() {
    let Some(dir) = dax_dir() else { return };
    let (_d, path) = scratch_in(&dir);
    let pool = create_auto(&path);
    assert_eq!(pool.persistence(), PersistMode::MapSync);
    // While the pool is open read-write ...
    let info = Pool::inspect(&path, Some(LAYOUT)).unwrap();
    assert!(info.locked);
    assert_eq!(info.mode, PersistMode::MapSync, "inspect (pool open)");
    drop(pool);
    // ... and when nobody holds it.
    let info = Pool::inspect(&path, Some(LAYOUT)).unwrap();
    assert!(!info.locked);
    assert_eq!(info.mode, PersistMode::MapSync, "inspect (pool closed)");
    assert_eq!(info.file_len, MIN_POOL_SIZE);
}

#[test]
fn data_persisted_on_dax_survives_reopen() {
    let Some(dir) = dax_dir() else { return };
    let (_d, path) = scratch_in(&dir);
    let writes = {
        let pool = create_auto(&path);
        assert_eq!(pool.persistence(), PersistMode::MapSync);
        write_and_persist(&pool, 0x5A)
    };
    // Read-write reopen: MAP_SYNC again, same bytes, and writes persist without msync.
    let writes2 = {
        let pool = Pool::open(&path, &OpenOptions::new(LAYOUT)).unwrap();
        assert_eq!(pool.persistence(), PersistMode::MapSync);
        read_back(&pool, &writes);
        let w = write_and_persist(&pool, 0xC3);
        assert_eq!(pool.counters().msync_calls, 0);
        w
    };
    // Read-only reopen maps read-only with MAP_SYNC too.
    let pool = Pool::open(&path, &OpenOptions::new(LAYOUT).read_only(true)).unwrap();
    assert!(pool.is_read_only());
    assert_eq!(pool.persistence(), PersistMode::MapSync);
    read_back(&pool, &writes2);
}

#[test]
fn explicit_requests_on_dax() {
    let Some(dir) = dax_dir() else { return };
    let (_d, path) = scratch_in(&dir);
    drop(create_auto(&path));
    // Flush where MAP_SYNC works is MapSync, not the power-unsafe ForcedFlush.
    let pool = Pool::open(&path, &OpenOptions::new(LAYOUT).mode(ModeRequest::Flush)).unwrap();
    assert_eq!(pool.persistence(), PersistMode::MapSync);
    drop(pool);
    // Msync is honoured even on DAX.
    let pool = Pool::open(&path, &OpenOptions::new(LAYOUT).mode(ModeRequest::Msync)).unwrap();
    assert_eq!(pool.persistence(), PersistMode::Msync);
    assert_eq!(pool.flush_instr(), None);
    write_and_persist(&pool, 0x11);
    assert!(pool.counters().msync_calls > 0);
}

#[test]
fn sparse_pool_on_dax_maps_with_map_sync() {
    // Without preallocation the first store to each page allocates its block at fault time;
    // MAP_SYNC makes the kernel commit that allocation before the store can happen.
    let Some(dir) = dax_dir() else { return };
    let (_d, path) = scratch_in(&dir);
    let writes = {
        let pool = Pool::create(
            &path,
            &CreateOptions::new(LAYOUT, 4 * MIN_POOL_SIZE).preallocate(false),
        )
        .unwrap();
        assert_eq!(pool.persistence(), PersistMode::MapSync);
        write_and_persist(&pool, 0x77)
    };
    let pool = Pool::open(&path, &OpenOptions::new(LAYOUT).read_only(true)).unwrap();
    read_back(&pool, &writes);
}
