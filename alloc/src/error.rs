//! The allocator layer's error type.

use pmstore_pool::PoolError;

/// Result type of the allocator layer.
pub type Result<T, E = AllocError> = std::result::Result<T, E>;

/// Everything that can go wrong in the allocator layer (including its redo logs).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use pmstore_alloc::pool::{CreateOptions, Pool, MIN_POOL_SIZE};
/// use pmstore_alloc::{AllocError, Heap};
///
/// let (mut pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
/// let (heap, _) = Heap::open(&mut pool)?;
/// let root = pool.geometry().root_offset;
/// // Fill the heap with spans of 1 MiB until it is out of space.
/// let mut held = Vec::new();
/// let err = loop {
///     match heap.reserve(&pool, 1 << 20) {
///         Ok(r) => held.push(r),
///         Err(e) => break e,
///     }
/// };
/// assert!(matches!(err, AllocError::OutOfSpace { size } if size == 1 << 20));
/// assert!(err.to_string().starts_with("out of space"));
/// // SAFETY: one Heap per pool; this thread owns the root word.
/// let full = unsafe { heap.alloc(&pool, 1 << 20, root) };
/// assert!(matches!(full, Err(AllocError::OutOfSpace { .. }))); // nothing written
/// # Ok(())
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AllocError {
    /// An error of the pool layer (I/O, msync failure, poisoned pool, ...).
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// A redo log was asked to hold more than fits in its region (and the extension it was
    /// given, if any). Nothing was written.
    #[error("redo log full: {needed} slots of 16 bytes requested, capacity is {capacity}")]
    LogFull {
        /// Slots requested (one per word entry; one plus the data's 16-byte slots per range).
        needed: usize,
        /// Slots a lane's redo log holds ([`crate::redo::RedoLayout::capacity`]), plus those of
        /// the extension given to the commit.
        capacity: usize,
    },
    /// The region given to a redo commit as its log's extension cannot hold one
    /// ([`crate::redo::RedoLayout::check_extension`]). Nothing was written.
    #[error("redo log extension of {len} bytes at {offset:#x} is invalid: {reason}")]
    InvalidExtension {
        /// The region's offset.
        offset: u64,
        /// The bytes of it the log needed.
        len: u64,
        /// What is wrong with it.
        reason: TargetError,
    },
    /// A redo entry passed to `commit` names a word (or range) that redo logs may not modify.
    /// Nothing was written. (`index` counts word entries first, then ranges.)
    #[error("redo entry {index}: target {target:#x} is invalid: {reason}")]
    InvalidTarget {
        /// Index of the offending entry.
        index: usize,
        /// Its target offset.
        target: u64,
        /// What is wrong with it.
        reason: TargetError,
    },
    /// A lane's redo log has a valid checksum but contents no correct writer produces (a bug or
    /// a foreign writer, not media corruption). Recovery modified nothing.
    #[error("lane {lane}: corrupt redo log (seq {seq}): {reason}")]
    CorruptLog {
        /// The lane whose log is corrupt.
        lane: u32,
        /// The log's sequence number.
        seq: u64,
        /// What is wrong with it.
        reason: CorruptReason,
    },
    /// The pool's lanes are too small to hold a redo log.
    #[error("lanes of {lane_size} bytes cannot hold the {needed}-byte redo log")]
    LaneTooSmall {
        /// The pool's lane size.
        lane_size: u32,
        /// The redo log's size ([`crate::redo::REDO_LOG_SIZE`]).
        needed: u64,
    },
    /// No free space for an allocation of `size` bytes. The heap is unchanged and stays
    /// usable (frees still work).
    #[error("out of space for {size} bytes")]
    OutOfSpace {
        /// Requested size.
        size: u64,
    },
    /// A request larger than the whole heap. Nothing was written.
    #[error("allocation of {size} bytes is larger than the heap")]
    TooLarge {
        /// Requested size.
        size: u64,
    },
    /// `free` of an offset that is not the start of a live block. Nothing was written.
    #[error("invalid free of offset {offset:#x}")]
    InvalidFree {
        /// The offset passed.
        offset: u64,
    },
    /// `free` of a block of a run that is not allocated (its bit is clear). Nothing was written.
    #[error("double free of offset {offset:#x}")]
    DoubleFree {
        /// The offset passed.
        offset: u64,
    },
    /// Heap metadata (a chunk header or bitmap) that no correct writer produces.
    #[error("corrupt heap at chunk {chunk}: {reason}")]
    CorruptHeap {
        /// The chunk whose metadata is corrupt.
        chunk: u32,
        /// What is wrong.
        reason: crate::heap::HeapCorruption,
    },
    /// The pool is open read-only but the operation must write: a commit, or a recovery that
    /// found `pending_lanes` lanes with a log to replay or clear.
    #[error("pool is read-only ({pending_lanes} lanes need log recovery)")]
    ReadOnly {
        /// Lanes whose logs need recovery (0 for a commit).
        pending_lanes: usize,
    },
}

/// Why a redo target is refused (see `docs/REDO.md`).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use pmstore_alloc::pool::{CreateOptions, Pool, MIN_POOL_SIZE};
/// use pmstore_alloc::{AllocError, Heap, TargetError};
///
/// let (mut pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
/// let (heap, _) = Heap::open(&mut pool)?;
/// let lane0 = pool.geometry().lanes_offset;
/// // SAFETY: one Heap per pool; the call is refused before anything is written.
/// let err = unsafe { heap.alloc(&pool, 16, lane0) }.unwrap_err();
/// let AllocError::InvalidTarget { reason, .. } = err else { panic!("{err}") };
/// assert_eq!(reason, TargetError::InRedoLog { lane: 0 });
/// assert_eq!(reason.to_string(), "inside the redo log region of lane 0");
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TargetError {
    /// Not a multiple of 8.
    #[error("not 8-byte aligned")]
    Misaligned,
    /// The word does not lie inside the pool.
    #[error("outside the pool")]
    OutOfPool,
    /// The word lies in the (immutable) pool header page.
    #[error("inside the pool header page")]
    InHeader,
    /// The word lies in the heap's metadata (chunk headers and bitmaps): refused by the
    /// allocator as a destination word.
    #[error("inside the heap metadata")]
    InHeapMetadata,
    /// The word lies in a lane's redo log region.
    #[error("inside the redo log region of lane {lane}")]
    InRedoLog {
        /// That lane.
        lane: u32,
    },
    /// A range entry's length is zero or not a multiple of 8 (for a log extension: not a
    /// multiple of 16).
    #[error("range length {len} is zero or not a multiple of 8")]
    BadLength {
        /// The length.
        len: u64,
    },
    /// A log extension does not start on a cache line.
    #[error("not 64-byte (cache line) aligned")]
    NotLineAligned,
    /// A log extension lies (partly) outside the heap's data area.
    #[error("outside the heap's data area")]
    OutsideHeapData,
    /// A target lies inside the extension of the log that writes it.
    #[error("inside the log's own extension")]
    InLogExtension,
}

/// What is wrong with a redo log whose checksum is valid (see [`AllocError::CorruptLog`]).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use pmstore_alloc::pool::{CreateOptions, Pool, MIN_POOL_SIZE};
/// use pmstore_alloc::redo::{encode_log, RedoEntry, RedoLogs};
/// use pmstore_alloc::{AllocError, CorruptReason};
///
/// // A log whose checksum is right but that no writer produces: sequence number 0.
/// let (mut pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
/// let g = pool.geometry();
/// let log = encode_log(0, &[RedoEntry::new(g.root_offset, 1)]);
/// // SAFETY: nothing else uses the pool.
/// unsafe { pool.write(g.lane_offset(2), &log) };
/// let err = RedoLogs::recover(&mut pool).unwrap_err(); // refuses, modifying nothing
/// assert!(matches!(err, AllocError::CorruptLog { lane: 2, seq: 0, reason: CorruptReason::ZeroSeq }));
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CorruptReason {
    /// The sequence number is zero (sequence numbers start at 1).
    #[error("sequence number 0")]
    ZeroSeq,
    /// A reserved header byte is not zero.
    #[error("reserved header byte at offset {offset} is not zero")]
    ReservedNotZero {
        /// Offset of the first non-zero reserved byte, within the header.
        offset: usize,
    },
    /// An entry's target is invalid.
    #[error("entry {index}: target {target:#x}: {error}")]
    BadTarget {
        /// Index of the entry.
        index: usize,
        /// Its target.
        target: u64,
        /// What is wrong with it.
        error: TargetError,
    },
    /// A range entry's data runs past the log's last slot.
    #[error("entry {index}: range of {len} bytes runs past the end of the log")]
    RangePastEnd {
        /// Index of the entry.
        index: usize,
        /// Its length.
        len: u64,
    },
    /// A word entry follows a range entry (writers put every word entry first).
    #[error("entry {index}: word entry after a range entry")]
    WordAfterRange {
        /// Index of the entry.
        index: usize,
    },
    /// The log's extension does not lie where extensions may
    /// ([`crate::redo::RedoLayout::check_extension`]).
    #[error("extension of {ext_len} bytes at {ext:#x}: {error}")]
    BadExtension {
        /// The header's `ext`.
        ext: u64,
        /// The header's `ext_len`.
        ext_len: u64,
        /// What is wrong with it.
        error: TargetError,
    },
    /// An entry targets bytes inside the log's own extension.
    #[error("entry {index}: target {target:#x} inside the log's own extension")]
    TargetInExtension {
        /// Index of the entry.
        index: usize,
        /// Its target.
        target: u64,
    },
    /// Another valid log has the same sequence number, so replay order is undefined.
    #[error("lane {other_lane} has a valid log with the same sequence number")]
    DuplicateSeq {
        /// The other lane.
        other_lane: u32,
    },
}
