#![allow(dead_code)]
//! Helpers shared by the pool integration tests.

use std::path::{Path, PathBuf};

use pmstore_pool::{CreateOptions, ModeRequest, OpenOptions, Pool, PoolError, MIN_POOL_SIZE};

pub const LAYOUT: &str = "pool-tests";

/// A fresh directory and a path for a pool in it.
pub fn scratch() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("test.pool");
    (dir, path)
}

/// Creates a minimum-size pool (msync mode, so the test does not depend on the environment)
/// and closes it.
pub fn make_pool(path: &Path) {
    drop(
        Pool::create(
            path,
            &CreateOptions::new(LAYOUT, MIN_POOL_SIZE).mode(ModeRequest::Msync),
        )
        .unwrap(),
    );
}

pub fn open_rw(path: &Path) -> Result<Pool, PoolError> {
    Pool::open(path, &OpenOptions::new(LAYOUT).mode(ModeRequest::Msync))
}

/// Opens `path` read-write and returns the error, asserting that the open failed and that the
/// file's bytes did not change.
pub fn open_err(path: &Path, opts: &OpenOptions) -> PoolError {
    let before = std::fs::read(path).ok();
    let e = Pool::open(path, opts).expect_err("open should have failed");
    let after = std::fs::read(path).ok();
    assert!(before == after, "a failed open modified the file");
    e
}

pub fn rw_opts() -> OpenOptions {
    OpenOptions::new(LAYOUT).mode(ModeRequest::Msync)
}

/// Reads the header page of a pool file.
pub fn read_page(path: &Path) -> [u8; 4096] {
    use std::os::unix::fs::FileExt;
    let mut page = [0; 4096];
    std::fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut page, 0)
        .unwrap();
    page
}

/// Overwrites the header page of a pool file.
pub fn write_page(path: &Path, page: &[u8; 4096]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(page, 0).unwrap();
}

/// Applies `edit` to the decoded header, recomputes the checksum (unless `fix_checksum` is
/// false), and writes it back.
pub fn edit_header(
    path: &Path,
    fix_checksum: bool,
    edit: impl FnOnce(&mut pmstore_pool::PoolHeader),
) {
    let mut h: pmstore_pool::PoolHeader = bytemuck::pod_read_unaligned(&read_page(path));
    edit(&mut h);
    if fix_checksum {
        h.checksum = h.compute_checksum();
    }
    write_page(path, h.as_bytes());
}
