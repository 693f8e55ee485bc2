//! File-system operations on the pool file: locking, preallocation, durable creation.
//!
//! SAFETY reason used below:
//! 1. The call takes a file descriptor (borrowed from a live `File`) and plain integers, and
//!    touches no memory of ours.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// How long [`try_lock`] keeps trying before it reports a conflict.
const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_millis(50);

/// Takes `flock` on the whole file: exclusive for writers, shared for read-only inspection.
/// Returns `Ok(false)` if another open file description holds a conflicting lock (in this
/// process or another). The lock lasts as long as the `File`.
///
/// A `flock` belongs to the open file description, and a child process forked by any thread
/// shares the parent's descriptions until its `exec` closes them (`O_CLOEXEC`): a pool closed
/// just before a `fork` can still look locked for that instant. So a conflict is retried for
/// up to 50 ms before it is reported.
pub(crate) fn try_lock(file: &File, exclusive: bool) -> io::Result<bool> {
    let start = std::time::Instant::now();
    let mut pause = std::time::Duration::from_micros(100);
    while !try_lock_once(file, exclusive)? {
        if start.elapsed() >= LOCK_PATIENCE {
            return Ok(false);
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(std::time::Duration::from_millis(10));
    }
    Ok(true)
}

fn try_lock_once(file: &File, exclusive: bool) -> io::Result<bool> {
    let op = if exclusive {
        libc::LOCK_EX
    } else {
        libc::LOCK_SH
    } | libc::LOCK_NB;
    loop {
        // SAFETY: (1)
        let r = unsafe { libc::flock(file.as_raw_fd(), op) };
        if r == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) => return Ok(false),
            Some(libc::EINTR) => continue,
            _ => return Err(e),
        }
    }
}

/// Releases the lock taken by [`try_lock`] (used by inspection, which only peeks).
pub(crate) fn unlock(file: &File) {
    // SAFETY: (1)
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
}

/// Allocates every block of `[0, len)` (extending the file), so that no store through a
/// mapping can later hit a hole: a flush is meaningless for a block the file system has not
/// allocated yet, and a page fault on a hole of a full file system is a SIGBUS.
pub(crate) fn preallocate(file: &File, len: u64) -> io::Result<()> {
    let len = libc::off_t::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    loop {
        // SAFETY: (1). posix_fallocate returns the error number instead of setting errno.
        let r = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
        match r {
            0 => return Ok(()),
            libc::EINTR => continue,
            e => return Err(io::Error::from_raw_os_error(e)),
        }
    }
}

/// `fsync` of the directory that holds `path`, so that the new directory entry is durable.
pub(crate) fn sync_parent_dir(path: &Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()
}
