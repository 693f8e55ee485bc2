//! Mapping a pool file into memory, with `MAP_SYNC` when the file system supports it.
//!
//! memmap2 has no way to ask for `MAP_SHARED_VALIDATE | MAP_SYNC`, and the mapping should start
//! on a 2 MiB boundary so a DAX file system can map it with huge pages; both need `mmap`
//! directly, so this small module owns every `mmap`/`munmap`/`msync` call.
//!
//! SAFETY reasons used below:
//! 1. The address range was returned by our own `mmap` and is still mapped: the reservation
//!    (and everything in it) belongs to this function until it returns, and a [`Mapping`] owns
//!    its range until it is dropped.
//! 2. The file descriptor is open for the duration of the call; `mmap` keeps its own reference
//!    to the file.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;

/// Alignment asked of the kernel for the mapping's start, so DAX can use 2 MiB pages.
const HUGE_ALIGN: usize = 2 << 20;

/// A shared mapping of a whole pool file, unmapped on drop.
#[derive(Debug)]
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a Mapping is an address range; it holds no thread-affine state. Access to the bytes
// behind it is governed by the `Pool` API's contracts.
unsafe impl Send for Mapping {}
// SAFETY: as above; `&Mapping` only hands out the address.
unsafe impl Sync for Mapping {}

/// Whether a mapping attempt failed because the kernel or file system does not offer `MAP_SYNC`
/// for this file (as opposed to a real failure such as ENOMEM).
pub(crate) fn is_sync_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::EINVAL)
    )
}

impl Mapping {
    /// Maps `len` bytes of `fd` from offset 0, shared. With `sync`, asks for
    /// `MAP_SHARED_VALIDATE | MAP_SYNC` and fails (see [`is_sync_unsupported`]) where the file
    /// is not on a DAX file system.
    pub(crate) fn map(
        fd: BorrowedFd<'_>,
        len: usize,
        writable: bool,
        sync: bool,
    ) -> io::Result<Mapping> {
        assert!(len > 0);
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        let flags = if sync {
            libc::MAP_SHARED_VALIDATE | libc::MAP_SYNC
        } else {
            libc::MAP_SHARED
        };
        // Reserve an address range with room to align, then map the file over its aligned part.
        let reserve_len = len
            .checked_add(HUGE_ALIGN)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        // SAFETY: an anonymous PROT_NONE mapping at an address of the kernel's choosing touches
        // no existing memory.
        let res = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                reserve_len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if res == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let res_start = res as usize;
        let start = res_start.next_multiple_of(HUGE_ALIGN);
        // SAFETY: (1)(2) `[start, start + len)` lies inside our reservation, which MAP_FIXED
        // replaces; no other code can have a mapping there.
        let p = unsafe {
            libc::mmap(
                start as *mut libc::c_void,
                len,
                prot,
                flags | libc::MAP_FIXED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            let e = io::Error::last_os_error();
            // SAFETY: (1) the whole reservation is ours (a failed MAP_FIXED may have unmapped
            // part of it; munmap of an unmapped range is harmless).
            unsafe { libc::munmap(res, reserve_len) };
            return Err(e);
        }
        // Give back the unused head and tail of the reservation.
        let head = start - res_start;
        let tail = reserve_len - head - len;
        // SAFETY: (1) both ranges are parts of our reservation outside the file mapping.
        unsafe {
            if head > 0 {
                libc::munmap(res, head);
            }
            if tail > 0 {
                libc::munmap((start + len) as *mut libc::c_void, tail);
            }
        }
        Ok(Mapping {
            ptr: NonNull::new(start as *mut u8).expect("mmap returned null"),
            len,
        })
    }

    /// First byte of the mapping.
    pub(crate) fn ptr(&self) -> NonNull<u8> {
        self.ptr
    }

    /// `msync(MS_SYNC)` of the pages `[offset, offset + len)`; both must be multiples of the
    /// system page size, and the range inside the mapping.
    pub(crate) fn msync(&self, offset: usize, len: usize) -> io::Result<()> {
        assert!(offset.checked_add(len).is_some_and(|end| end <= self.len));
        // SAFETY: (1) the range is inside our mapping; msync does not change memory contents.
        let r = unsafe {
            libc::msync(
                self.ptr.as_ptr().add(offset) as *mut libc::c_void,
                len,
                libc::MS_SYNC,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: (1) we own the range, and nothing borrows it past the Mapping's life (the
        // Pool that owns a Mapping hands out no references that outlive it).
        unsafe { libc::munmap(self.ptr.as_ptr() as *mut libc::c_void, self.len) };
    }
}

/// Whether `MAP_SYNC` works for `fd` (mapping one page read-only and unmapping it).
pub(crate) fn probe_sync(fd: BorrowedFd<'_>) -> bool {
    Mapping::map(fd, 4096, false, true).is_ok()
}
