//! The pool layer's error type.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong below the allocator: creating, opening, validating and mapping a
/// pool file, and making stores durable.
///
/// Every variant that is about a file's contents is reported **without modifying the file**.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use pmstore_pool::{CreateOptions, OpenOptions, Pool, PoolError, MIN_POOL_SIZE};
/// # let dir = tempfile::tempdir()?;
/// let path = dir.path().join("p.pool");
/// match Pool::open(&path, &OpenOptions::new("doc")) {
///     Err(PoolError::NotFound { .. }) => {
///         Pool::create(&path, &CreateOptions::new("doc", MIN_POOL_SIZE))?;
///     }
///     Err(e) if e.is_invalid_pool() => return Err(format!("not our pool: {e}").into()),
///     Err(e) => return Err(e.into()),
///     Ok(_pool) => {}
/// }
/// assert!(path.exists());
/// # Ok(())
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// `create` was given a path that already exists.
    #[error("{path}: already exists; refusing to overwrite it")]
    AlreadyExists {
        /// The path given to `create`.
        path: PathBuf,
    },
    /// The path does not exist.
    #[error("{path}: no such file")]
    NotFound {
        /// The path given.
        path: PathBuf,
    },
    /// The operating system refused access to the file (or to its directory).
    #[error("{path}: permission denied")]
    PermissionDenied {
        /// The path given.
        path: PathBuf,
    },
    /// The path names a directory, device, socket or other non-regular file.
    #[error("{path}: not a regular file")]
    NotARegularFile {
        /// The path given.
        path: PathBuf,
    },
    /// Another handle (in this or another process) holds the pool's lock.
    #[error("{path}: pool is locked by another handle or process")]
    Locked {
        /// The path given.
        path: PathBuf,
    },
    /// The requested pool size is below the minimum.
    #[error("pool size {size} bytes is below the minimum of {min} bytes")]
    SizeTooSmall {
        /// The requested size.
        size: u64,
        /// The smallest pool this version creates.
        min: u64,
    },
    /// The requested pool size is above the maximum.
    #[error("pool size {size} bytes is above the maximum of {max} bytes")]
    SizeTooLarge {
        /// The requested size.
        size: u64,
        /// The largest pool this version creates.
        max: u64,
    },
    /// The requested pool size is not a multiple of the 4 KiB page.
    #[error("pool size {size} bytes is not a multiple of {align} bytes")]
    SizeNotAligned {
        /// The requested size.
        size: u64,
        /// The required alignment.
        align: u64,
    },
    /// The layout name is empty, longer than 64 bytes, or contains a NUL byte.
    #[error("invalid layout name {name:?}: {reason}")]
    InvalidLayoutName {
        /// The name given.
        name: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// The requested region geometry (root area, lanes) does not fit or is malformed.
    #[error("invalid pool geometry: {0}")]
    InvalidGeometry(String),
    /// The file system has no room for the pool (`posix_fallocate` failed with ENOSPC). The
    /// partial file has been removed.
    #[error("{path}: no space left on the file system for a pool of {size} bytes (partial file removed)")]
    NoSpace {
        /// The path given to `create`.
        path: PathBuf,
        /// The requested size.
        size: u64,
    },
    /// The file has length zero.
    #[error("{path}: file is empty (zero bytes), not a pool")]
    EmptyFile {
        /// The path given.
        path: PathBuf,
    },
    /// The file is shorter than its header says the pool is (or shorter than a header).
    #[error("{path}: file is truncated: {actual} bytes, expected {expected}")]
    Truncated {
        /// The path given.
        path: PathBuf,
        /// The file's length.
        actual: u64,
        /// The length the pool needs.
        expected: u64,
    },
    /// The file is longer than its header says the pool is.
    #[error("{path}: file is {actual} bytes but the header records a pool of {expected} bytes")]
    SizeMismatch {
        /// The path given.
        path: PathBuf,
        /// The file's length.
        actual: u64,
        /// The pool size recorded in the header.
        expected: u64,
    },
    /// The header page is all zero: pool creation was interrupted before the header became
    /// durable. The file holds no data; delete it and create the pool again.
    #[error("{path}: pool creation did not complete (header is all zero); delete the file and create it again")]
    Incomplete {
        /// The path given.
        path: PathBuf,
    },
    /// The file does not start with the pmstore magic.
    #[error("{path}: not a pmstore pool (bad magic {found:02x?})")]
    BadMagic {
        /// The path given.
        path: PathBuf,
        /// The first eight bytes of the file.
        found: [u8; 8],
    },
    /// The pool was written by a format major version this build does not understand.
    #[error("{path}: unsupported pool format major version {found} (this build reads version {supported})")]
    UnsupportedVersion {
        /// The path given.
        path: PathBuf,
        /// The major version in the header.
        found: u16,
        /// The major version this build reads and writes.
        supported: u16,
    },
    /// The header checksum does not match its contents: the header is corrupt.
    #[error("{path}: header checksum mismatch (stored {stored:#010x}, computed {computed:#010x}): header is corrupt")]
    ChecksumMismatch {
        /// The path given.
        path: PathBuf,
        /// The checksum stored in the header.
        stored: u32,
        /// The checksum of the header's contents.
        computed: u32,
    },
    /// The pool uses incompatible features this build does not know; it cannot be opened at all.
    #[error("{path}: pool uses unknown incompatible features {unknown:#x}")]
    UnsupportedIncompatFeatures {
        /// The path given.
        path: PathBuf,
        /// The unknown bits.
        unknown: u64,
    },
    /// The pool uses features this build may read but not write; open it read-only.
    #[error("{path}: pool uses unknown read-only-compatible features {unknown:#x}; it can only be opened read-only")]
    UnsupportedRoCompatFeatures {
        /// The path given.
        path: PathBuf,
        /// The unknown bits.
        unknown: u64,
    },
    /// A header field has a value that no valid pool has (the checksum matched, so the header was
    /// written that way: by a buggy or foreign writer).
    #[error("{path}: invalid header: {what}")]
    InvalidHeader {
        /// The path given.
        path: PathBuf,
        /// Which field, and what is wrong with it.
        what: String,
    },
    /// The pool was created for another layout than the caller expects.
    #[error("{path}: layout mismatch: pool has layout {found:?}, expected {expected:?}")]
    LayoutMismatch {
        /// The path given.
        path: PathBuf,
        /// The layout name the caller asked for.
        expected: String,
        /// The layout name in the header.
        found: String,
    },
    /// `PMSTORE_FORCE_MODE` has a value other than `flush`, `msync` or `auto`.
    #[error("PMSTORE_FORCE_MODE={0:?} is not one of auto, flush, msync")]
    InvalidForceMode(String),
    /// `msync` failed. The pool is poisoned from then on: every later drain reports
    /// [`PoolError::Poisoned`], because after a write-back error the kernel cannot tell which
    /// stores reached the media. Close and reopen the pool to recover from the last durable state.
    #[error("msync of {len} bytes at pool offset {offset:#x} failed: {source}")]
    Msync {
        /// Pool offset of the range.
        offset: u64,
        /// Length of the range.
        len: u64,
        /// The operating system's error.
        source: io::Error,
    },
    /// An earlier durability point failed; no later store can be promised durable.
    #[error("pool is poisoned by an earlier write-back failure; reopen it to recover")]
    Poisoned,
    /// Any other I/O error, with what was being done.
    #[error("{path}: {op}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The operating system's error.
        source: io::Error,
    },
}

impl PoolError {
    /// The variant's name, stable for scripts (`pmstore info --json` reports it).
    ///
    /// ```
    /// use pmstore_pool::{CreateOptions, Pool};
    ///
    /// let err = Pool::create_simulated(&CreateOptions::new("", 8 << 20)).unwrap_err();
    /// assert_eq!(err.kind(), "InvalidLayoutName");
    /// ```
    pub fn kind(&self) -> &'static str {
        match self {
            PoolError::AlreadyExists { .. } => "AlreadyExists",
            PoolError::NotFound { .. } => "NotFound",
            PoolError::PermissionDenied { .. } => "PermissionDenied",
            PoolError::NotARegularFile { .. } => "NotARegularFile",
            PoolError::Locked { .. } => "Locked",
            PoolError::SizeTooSmall { .. } => "SizeTooSmall",
            PoolError::SizeTooLarge { .. } => "SizeTooLarge",
            PoolError::SizeNotAligned { .. } => "SizeNotAligned",
            PoolError::InvalidLayoutName { .. } => "InvalidLayoutName",
            PoolError::InvalidGeometry { .. } => "InvalidGeometry",
            PoolError::NoSpace { .. } => "NoSpace",
            PoolError::EmptyFile { .. } => "EmptyFile",
            PoolError::Truncated { .. } => "Truncated",
            PoolError::SizeMismatch { .. } => "SizeMismatch",
            PoolError::Incomplete { .. } => "Incomplete",
            PoolError::BadMagic { .. } => "BadMagic",
            PoolError::UnsupportedVersion { .. } => "UnsupportedVersion",
            PoolError::ChecksumMismatch { .. } => "ChecksumMismatch",
            PoolError::UnsupportedIncompatFeatures { .. } => "UnsupportedIncompatFeatures",
            PoolError::UnsupportedRoCompatFeatures { .. } => "UnsupportedRoCompatFeatures",
            PoolError::InvalidHeader { .. } => "InvalidHeader",
            PoolError::LayoutMismatch { .. } => "LayoutMismatch",
            PoolError::InvalidForceMode { .. } => "InvalidForceMode",
            PoolError::Msync { .. } => "Msync",
            PoolError::Poisoned => "Poisoned",
            PoolError::Io { .. } => "Io",
        }
    }

    /// Whether the error is about the file's contents (corrupt, truncated, foreign, or from an
    /// incompatible version), as opposed to the environment (I/O, permissions, locks).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_pool::{OpenOptions, Pool, PoolError};
    /// # let dir = tempfile::tempdir()?;
    /// let empty = dir.path().join("empty");
    /// std::fs::write(&empty, b"")?;
    /// let err = Pool::open(&empty, &OpenOptions::new("doc")).unwrap_err();
    /// assert!(matches!(err, PoolError::EmptyFile { .. }));
    /// assert!(err.is_invalid_pool()); // the file's contents are wrong
    /// let err = Pool::open(dir.path().join("missing"), &OpenOptions::new("doc")).unwrap_err();
    /// assert!(!err.is_invalid_pool()); // the environment is
    /// # Ok(())
    /// # }
    /// ```
    pub fn is_invalid_pool(&self) -> bool {
        matches!(
            self,
            PoolError::EmptyFile { .. }
                | PoolError::Truncated { .. }
                | PoolError::SizeMismatch { .. }
                | PoolError::Incomplete { .. }
                | PoolError::BadMagic { .. }
                | PoolError::UnsupportedVersion { .. }
                | PoolError::ChecksumMismatch { .. }
                | PoolError::UnsupportedIncompatFeatures { .. }
                | PoolError::UnsupportedRoCompatFeatures { .. }
                | PoolError::InvalidHeader { .. }
                | PoolError::LayoutMismatch { .. }
        )
    }

    /// Maps an I/O error from opening `path` to the typed variant for the common cases.
    pub(crate) fn from_open(path: &std::path::Path, op: &'static str, e: io::Error) -> Self {
        let path = path.to_path_buf();
        match e.raw_os_error() {
            Some(libc::ENOENT) => PoolError::NotFound { path },
            Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS) => {
                PoolError::PermissionDenied { path }
            }
            Some(libc::EISDIR) => PoolError::NotARegularFile { path },
            Some(libc::EEXIST) => PoolError::AlreadyExists { path },
            _ => PoolError::Io {
                path,
                op,
                source: e,
            },
        }
    }

    pub(crate) fn io(path: &std::path::Path, op: &'static str, e: io::Error) -> Self {
        PoolError::Io {
            path: path.to_path_buf(),
            op,
            source: e,
        }
    }
}

/// Result alias for the pool layer.
pub type Result<T, E = PoolError> = std::result::Result<T, E>;
