//! The lane redo log: a checksummed redo log per lane that makes a set of 8-byte word updates
//! and byte-range copies atomic (format and crash argument: `docs/REDO.md`).
//!
//! * [`RedoLogs::recover`] runs at open, before anything else touches the pool: it replays
//!   every valid log in sequence order, clears every log, and returns the volatile state
//!   shared by all lanes (the sequence counter and the pending-invalidation set).
//! * [`RedoLogs::lane`] hands out the one [`LaneLog`] of a lane; [`LaneLog::commit`] writes a
//!   log, makes it durable (the commit point), applies it and invalidates it, with exactly two
//!   drains.

use std::mem::{offset_of, size_of};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytemuck::{Pod, Zeroable};
use crossbeam_utils::CachePadded;
use pmstore_pool::{FlushContext, Geometry, Pool, CACHE_LINE, HEADER_SIZE, NT_THRESHOLD};

use crate::error::{AllocError, CorruptReason, Result, TargetError};

/// The smallest lane (and so redo log region) a pool may have. A lane's log region is the
/// whole lane ([`RedoLayout::log_size`]).
pub const REDO_LOG_SIZE: u64 = 4096;
/// Size of the redo log header (one cache line).
pub const REDO_HEADER_SIZE: u64 = 64;
/// Size of one redo slot: a word entry, the head of a range entry, or 16 bytes of its data.
pub const REDO_ENTRY_SIZE: u64 = 16;
/// Slots the log of a minimal ([`REDO_LOG_SIZE`]) lane holds:
/// `(REDO_LOG_SIZE - REDO_HEADER_SIZE) / REDO_ENTRY_SIZE` = 252. Larger lanes hold more
/// ([`RedoLayout::capacity`]).
pub const REDO_CAPACITY: usize = ((REDO_LOG_SIZE - REDO_HEADER_SIZE) / REDO_ENTRY_SIZE) as usize;
/// Bit 0 of an entry's `target` word marks a range entry (targets are 8-byte aligned, so the
/// bit is free).
pub const RANGE_FLAG: u64 = 1;
/// The checksum covers the header from this offset (everything after the checksum field).
const CRC_START: usize = 4;
/// Size of the reserved tail of the header.
const RESERVED: usize = 48;

/// The redo log header, byte for byte (little-endian), at offset 0 of the log region.
///
/// `checksum` and `count` form the first 8-byte word, so a log is invalidated by one atomic
/// 8-byte store of zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct RedoHeader {
    /// CRC-32C of header bytes `[4, 64)` followed by the `count` slots.
    pub checksum: u32,
    /// Number of 16-byte slots after the header, `1..=capacity` in a valid log; 0 = no log.
    pub count: u32,
    /// Pool-wide sequence number of the log (>= 1): replay order.
    pub seq: u64,
    /// Must be zero.
    pub reserved: [u8; RESERVED],
}

/// One redo entry: store `value` at pool offset `target` (an 8-byte aligned word).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct RedoEntry {
    /// Pool offset of the word to store to.
    pub target: u64,
    /// The value to store there.
    pub value: u64,
}

// The format contract (docs/REDO.md), checked at compile time.
const _: () = {
    assert!(size_of::<RedoHeader>() == REDO_HEADER_SIZE as usize);
    assert!(offset_of!(RedoHeader, checksum) == 0);
    assert!(offset_of!(RedoHeader, count) == 4);
    assert!(offset_of!(RedoHeader, seq) == 8);
    assert!(offset_of!(RedoHeader, reserved) == 16);
    assert!(size_of::<RedoEntry>() == REDO_ENTRY_SIZE as usize);
    assert!(offset_of!(RedoEntry, target) == 0);
    assert!(offset_of!(RedoEntry, value) == 8);
    assert!(REDO_HEADER_SIZE == CACHE_LINE);
    assert!(REDO_LOG_SIZE % CACHE_LINE == 0);
    assert!(REDO_CAPACITY == 252);
};

impl RedoEntry {
    /// An entry storing `value` at `target`.
    pub const fn new(target: u64, value: u64) -> RedoEntry {
        RedoEntry { target, value }
    }
}

impl From<(u64, u64)> for RedoEntry {
    fn from((target, value): (u64, u64)) -> RedoEntry {
        RedoEntry { target, value }
    }
}

/// A range entry to commit: copy `data` to pool offset `target` (both 8-byte aligned in
/// offset and length, `data` not empty).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RedoRange<'a> {
    /// Pool offset of the first byte.
    pub target: u64,
    /// The bytes to store there.
    pub data: &'a [u8],
}

/// A range entry read back from a log ([`decode_log`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeEntry {
    /// Pool offset of the first byte.
    pub target: u64,
    /// The bytes to store there.
    pub data: Vec<u8>,
}

/// Slots a range entry of `len` bytes takes: its head plus its data padded to 16 bytes.
pub const fn range_slots(len: usize) -> usize {
    1 + len.div_ceil(REDO_ENTRY_SIZE as usize)
}

/// The slots (body) of a log holding `words` then `ranges`, as [`LaneLog::commit_ops`] writes
/// them after the header.
pub fn encode_body(words: &[RedoEntry], ranges: &[RedoRange<'_>]) -> Vec<u8> {
    let mut body = Vec::new();
    encode_body_into(&mut body, words, ranges);
    body
}

fn encode_body_into(body: &mut Vec<u8>, words: &[RedoEntry], ranges: &[RedoRange<'_>]) {
    body.clear();
    body.extend_from_slice(bytemuck::cast_slice(words));
    for r in ranges {
        body.extend_from_slice(&(r.target | RANGE_FLAG).to_le_bytes());
        body.extend_from_slice(&(r.data.len() as u64).to_le_bytes());
        body.extend_from_slice(r.data);
        body.resize(body.len().next_multiple_of(REDO_ENTRY_SIZE as usize), 0);
    }
}

impl RedoHeader {
    /// A header for a log of `entries` (word entries only) with sequence number `seq`,
    /// checksum filled in.
    pub fn new(seq: u64, entries: &[RedoEntry]) -> RedoHeader {
        RedoHeader::for_body(seq, bytemuck::cast_slice(entries))
    }

    /// A header for a log whose slots are `body` (a multiple of 16 bytes), checksum filled in.
    pub fn for_body(seq: u64, body: &[u8]) -> RedoHeader {
        debug_assert_eq!(body.len() % REDO_ENTRY_SIZE as usize, 0);
        let slots = body.len() / REDO_ENTRY_SIZE as usize;
        let mut h = RedoHeader {
            checksum: 0,
            count: u32::try_from(slots).expect("slot count fits a u32"),
            seq,
            reserved: [0; RESERVED],
        };
        let crc = crc32c::crc32c(&bytemuck::bytes_of(&h)[CRC_START..]);
        h.checksum = crc32c::crc32c_append(crc, body);
        h
    }

    /// The first 8-byte word (`checksum | count << 32`), as stored.
    pub fn word(&self) -> u64 {
        u64::from(self.checksum) | u64::from(self.count) << 32
    }
}

/// The checksum of a log: CRC-32C of header bytes `[4, 64)` followed by `entries`.
pub fn log_checksum(header: &RedoHeader, entries: &[RedoEntry]) -> u32 {
    let crc = crc32c::crc32c(&bytemuck::bytes_of(header)[CRC_START..]);
    crc32c::crc32c_append(crc, bytemuck::cast_slice(entries))
}

/// The bytes of a complete log (header then entries), as [`LaneLog::commit`] writes them.
/// For tools and tests that build media states.
pub fn encode_log(seq: u64, entries: &[RedoEntry]) -> Vec<u8> {
    encode_log_ops(seq, entries, &[])
}

/// The bytes of a complete log of word entries then range entries, as
/// [`LaneLog::commit_ops`] writes them.
pub fn encode_log_ops(seq: u64, words: &[RedoEntry], ranges: &[RedoRange<'_>]) -> Vec<u8> {
    let body = encode_body(words, ranges);
    let h = RedoHeader::for_body(seq, &body);
    let mut v = bytemuck::bytes_of(&h).to_vec();
    v.extend_from_slice(&body);
    v
}

/// Where the redo logs lie in a pool, and which words they may target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RedoLayout {
    pool_size: u64,
    lanes_offset: u64,
    lane_count: u32,
    lane_size: u32,
}

impl RedoLayout {
    /// The layout of a pool of `pool_size` bytes with `geometry`.
    ///
    /// # Errors
    /// [`AllocError::LaneTooSmall`] if a lane cannot hold a redo log.
    pub fn new(pool_size: u64, geometry: &Geometry) -> Result<RedoLayout> {
        if u64::from(geometry.lane_size) < REDO_LOG_SIZE {
            return Err(AllocError::LaneTooSmall {
                lane_size: geometry.lane_size,
                needed: REDO_LOG_SIZE,
            });
        }
        Ok(RedoLayout {
            pool_size,
            lanes_offset: geometry.lanes_offset,
            lane_count: geometry.lane_count,
            lane_size: geometry.lane_size,
        })
    }

    /// Number of lanes (and logs).
    pub fn lane_count(&self) -> u32 {
        self.lane_count
    }

    /// Size of each lane's log region: the whole lane.
    pub fn log_size(&self) -> u64 {
        u64::from(self.lane_size)
    }

    /// Slots one log holds: `(log_size - 64) / 16`.
    pub fn capacity(&self) -> usize {
        ((self.log_size() - REDO_HEADER_SIZE) / REDO_ENTRY_SIZE) as usize
    }

    /// Pool offset of lane `lane`'s log region (the lane's first byte).
    ///
    /// # Panics
    /// If `lane >= lane_count`.
    pub fn log_offset(&self, lane: u32) -> u64 {
        assert!(lane < self.lane_count, "lane {lane} out of range");
        self.lanes_offset + u64::from(lane) * u64::from(self.lane_size)
    }

    /// Checks that `target` is a word a redo log may store to: 8-byte aligned, inside the pool,
    /// outside the header page and outside every lane (each lane is its log's region).
    pub fn check_target(&self, target: u64) -> Result<(), TargetError> {
        self.check_range(target, 8)
    }

    /// Checks that `[target, target + len)` may be written by a range entry: `target` and
    /// `len` multiples of 8, `len > 0`, inside the pool, outside the header page and
    /// disjoint from every lane.
    pub fn check_range(&self, target: u64, len: u64) -> Result<(), TargetError> {
        if target % 8 != 0 {
            return Err(TargetError::Misaligned);
        }
        if len == 0 || len % 8 != 0 {
            return Err(TargetError::BadLength { len });
        }
        let Some(end) = target.checked_add(len).filter(|&e| e <= self.pool_size) else {
            return Err(TargetError::OutOfPool);
        };
        if target < HEADER_SIZE as u64 {
            return Err(TargetError::InHeader);
        }
        let lanes_end = self.lanes_offset + u64::from(self.lane_count) * u64::from(self.lane_size);
        if target < lanes_end && end > self.lanes_offset {
            let first = target.max(self.lanes_offset);
            return Err(TargetError::InRedoLog {
                lane: ((first - self.lanes_offset) / u64::from(self.lane_size)) as u32,
            });
        }
        Ok(())
    }
}

/// Why a log is not valid (and so never replayed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalid {
    /// `count` is 0 (with a non-zero checksum) or above the layout's capacity.
    BadCount(u32),
    /// The stored checksum does not match the contents.
    ChecksumMismatch {
        /// The stored checksum.
        stored: u32,
        /// The checksum of the contents.
        computed: u32,
    },
}

/// What a lane's log region holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogState {
    /// The (checksum, count) word is zero: no log (fresh, or invalidated).
    Empty,
    /// Something else that is not a valid log (torn, stale, or damaged): never replayed.
    Invalid(Invalid),
    /// A valid log: replayed by recovery (its word entries in order, then its range entries
    /// in order).
    Valid {
        /// Its sequence number.
        seq: u64,
        /// Its word entries, in order.
        entries: Vec<RedoEntry>,
        /// Its range entries, in order (they follow every word entry).
        ranges: Vec<RangeEntry>,
    },
}

/// Decodes the log region of lane `lane` (`region` is the whole region,
/// [`RedoLayout::log_size`] bytes, or at least its first `64 + 16 × count` bytes). Never
/// panics on any contents.
///
/// # Errors
/// [`AllocError::CorruptLog`] if the checksum is valid but a field is not: sequence number 0,
/// a non-zero reserved byte, an invalid word target ([`RedoLayout::check_target`]) or range
/// ([`RedoLayout::check_range`]), a range whose data runs past the last slot, or a word entry
/// after a range entry.
///
/// # Panics
/// If `region` is shorter than the header or longer than [`RedoLayout::log_size`].
pub fn decode_log(region: &[u8], lane: u32, layout: &RedoLayout) -> Result<LogState> {
    assert!(
        region.len() >= REDO_HEADER_SIZE as usize && region.len() as u64 <= layout.log_size(),
        "a log region"
    );
    let header: RedoHeader = bytemuck::pod_read_unaligned(&region[..REDO_HEADER_SIZE as usize]);
    if header.word() == 0 {
        return Ok(LogState::Empty);
    }
    let count = header.count as usize;
    let end = REDO_HEADER_SIZE as usize + count * REDO_ENTRY_SIZE as usize;
    if count == 0 || count > layout.capacity() || end > region.len() {
        return Ok(LogState::Invalid(Invalid::BadCount(header.count)));
    }
    let computed = crc32c::crc32c(&region[CRC_START..end]);
    if computed != header.checksum {
        return Ok(LogState::Invalid(Invalid::ChecksumMismatch {
            stored: header.checksum,
            computed,
        }));
    }
    let corrupt = |reason| AllocError::CorruptLog {
        lane,
        seq: header.seq,
        reason,
    };
    if header.seq == 0 {
        return Err(corrupt(CorruptReason::ZeroSeq));
    }
    if let Some(i) = header.reserved.iter().position(|&b| b != 0) {
        return Err(corrupt(CorruptReason::ReservedNotZero {
            offset: offset_of!(RedoHeader, reserved) + i,
        }));
    }
    let body = &region[REDO_HEADER_SIZE as usize..end];
    let mut entries = Vec::new();
    let mut ranges = Vec::new();
    let mut pos = 0;
    let mut index = 0;
    while pos < body.len() {
        let e: RedoEntry = bytemuck::pod_read_unaligned(&body[pos..pos + 16]);
        pos += 16;
        if e.target & RANGE_FLAG == 0 {
            if !ranges.is_empty() {
                return Err(corrupt(CorruptReason::WordAfterRange { index }));
            }
            layout.check_target(e.target).map_err(|error| {
                corrupt(CorruptReason::BadTarget {
                    index,
                    target: e.target,
                    error,
                })
            })?;
            entries.push(e);
        } else {
            let target = e.target & !RANGE_FLAG;
            let bad = |error| {
                corrupt(CorruptReason::BadTarget {
                    index,
                    target,
                    error,
                })
            };
            layout.check_range(target, e.value).map_err(bad)?;
            // Bounded by the pool size (check_range), so the cast and the sum do not overflow
            // on 64-bit targets; compare against what is left.
            let len = e.value;
            let padded = len.next_multiple_of(REDO_ENTRY_SIZE);
            if padded > (body.len() - pos) as u64 {
                return Err(corrupt(CorruptReason::RangePastEnd { index, len }));
            }
            let len = len as usize;
            ranges.push(RangeEntry {
                target,
                data: body[pos..pos + len].to_vec(),
            });
            pos += padded as usize;
        }
        index += 1;
    }
    Ok(LogState::Valid {
        seq: header.seq,
        entries,
        ranges,
    })
}

/// What [`RedoLogs::recover`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Valid logs replayed.
    pub logs_replayed: usize,
    /// Word entries applied (sum over the replayed logs).
    pub entries_applied: usize,
    /// Range entries applied (sum over the replayed logs).
    pub ranges_applied: usize,
    /// Bytes the range entries stored.
    pub range_bytes_applied: u64,
    /// Invalid (torn, stale or damaged) logs cleared without being replayed.
    pub invalid_cleared: usize,
    /// Highest sequence number of a valid log found (0 if none).
    pub max_seq: u64,
}

/// What one [`LaneLog::commit`] did: the lines it flushed, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// The log's sequence number (0 for an empty commit, which does nothing).
    pub seq: u64,
    /// Word entries in the log.
    pub entries: usize,
    /// Range entries in the log.
    pub ranges: usize,
    /// 16-byte slots the log used (header excluded).
    pub slots: usize,
    /// Cache lines of the log region flushed (header + entries).
    pub log_lines: usize,
    /// Distinct cache lines of targets flushed.
    pub target_lines: usize,
    /// Header lines of other lanes with a pending invalidation, flushed before drain #1.
    pub pending_lines: usize,
    /// Drains (2).
    pub drains: usize,
}

impl CommitStats {
    /// Total cache lines flushed.
    pub fn lines(&self) -> usize {
        self.log_lines + self.target_lines + self.pending_lines
    }
}

/// The volatile state shared by all lanes.
struct Shared {
    layout: RedoLayout,
    /// Address of the pool's mapping, with the uuid: which pool these logs belong to.
    pool_base: usize,
    pool_uuid: [u8; 16],
    /// The next sequence number.
    seq: CachePadded<AtomicU64>,
    /// Per lane: the sequence number of its last invalidated log while that invalidation is
    /// not known to be durable (the pending-invalidation set), else 0. Only the lane's owner
    /// stores a non-zero value; others only compare-exchange a value they saw back to 0.
    pending: Box<[AtomicU64]>,
    /// One bit per lane: "may be pending" (a superset of the lanes with a non-zero `pending`),
    /// so that a commit scans words, not lanes. Set by the lane's owner at its first
    /// invalidation and never cleared (a stale bit costs one load of `pending`).
    summary: Box<[AtomicU64]>,
    /// Whether lane `i`'s [`LaneLog`] is handed out.
    claimed: Box<[AtomicBool]>,
}

impl Shared {
    /// Panics unless `pool` is the pool these logs were recovered from.
    #[inline]
    fn check_pool(&self, pool: &Pool) {
        assert!(
            pool.ptr_at(0, 0).as_ptr() as usize == self.pool_base
                && pool.header().uuid == self.pool_uuid,
            "redo logs used with another pool"
        );
    }

    /// Flushes the header line of every lane (except `skip`) with a pending invalidation and
    /// records `(lane, token)` in `covered`, for [`Shared::clear_covered`] after the drain.
    fn flush_pending(
        &self,
        pool: &Pool,
        ctx: &mut FlushContext,
        skip: Option<u32>,
        covered: &mut Vec<(u32, u64)>,
    ) {
        covered.clear();
        for (w, word) in self.summary.iter().enumerate() {
            let mut bits = word.load(Ordering::Acquire);
            while bits != 0 {
                let lane = (w * 64) as u32 + bits.trailing_zeros();
                bits &= bits - 1;
                if Some(lane) == skip {
                    continue;
                }
                // Acquire: the owner's invalidation store happens-before its token
                // store, so the line flushed below holds the zero or something later.
                let token = self.pending[lane as usize].load(Ordering::Acquire);
                if token != 0 {
                    pool.flush(ctx, self.layout.log_offset(lane), REDO_HEADER_SIZE);
                    covered.push((lane, token));
                }
            }
        }
    }

    /// After a drain that followed [`Shared::flush_pending`]: the invalidations recorded in
    /// `covered` are durable, so remove them from the set, unless the owner has since
    /// published a newer one (the token differs: tokens are unique sequence numbers).
    fn clear_covered(&self, covered: &[(u32, u64)]) {
        for &(lane, token) in covered {
            let _ = self.pending[lane as usize].compare_exchange(
                token,
                0,
                Ordering::SeqCst,
                Ordering::Relaxed,
            );
        }
    }
}

/// The redo logs of a pool: the volatile state shared by its lanes (sequence counter,
/// pending-invalidation set, which lanes are handed out). Cheap to clone.
#[derive(Clone)]
pub struct RedoLogs {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RedoLogs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedoLogs")
            .field("layout", &self.shared.layout)
            .field("next_seq", &self.next_seq())
            .finish_non_exhaustive()
    }
}

/// A valid log found by recovery.
struct Found {
    lane: u32,
    seq: u64,
    entries: Vec<RedoEntry>,
    ranges: Vec<RangeEntry>,
}

impl RedoLogs {
    /// Recovers the redo logs of `pool` and returns their volatile state. Run it at open,
    /// before anything else reads or writes the pool's lanes or heap.
    ///
    /// Reads every lane's log; checks every valid one ([`decode_log`]); replays the valid logs
    /// in increasing sequence order (storing each value, flushing each touched line); drains;
    /// clears the (checksum, count) word of each valid log in increasing sequence order, with
    /// a drain after each; clears every invalid non-empty log; drains. A crash anywhere in here
    /// is recovered by the next recovery, with the same result. The sequence counter restarts at
    /// 1 + the highest sequence number found (or 1).
    ///
    /// `&mut Pool`: recovery writes anywhere a log says, so it needs the pool to itself.
    ///
    /// # Errors
    /// * [`AllocError::LaneTooSmall`] if lanes are smaller than [`REDO_LOG_SIZE`].
    /// * [`AllocError::CorruptLog`] if a log with a valid checksum has an invalid field or
    ///   target, or two valid logs share a sequence number: then nothing was modified.
    /// * [`AllocError::ReadOnly`] if the pool is read-only and some log needs replaying or
    ///   clearing (nothing was modified).
    /// * [`AllocError::Pool`] if a drain fails.
    pub fn recover(pool: &mut Pool) -> Result<(RedoLogs, RecoveryReport)> {
        let pool: &Pool = pool;
        let layout = RedoLayout::new(pool.size(), &pool.geometry())?;
        let mut found: Vec<Found> = Vec::new();
        let mut invalid: Vec<u32> = Vec::new();
        let mut region = vec![0u8; layout.log_size() as usize];
        for lane in 0..layout.lane_count {
            let off = layout.log_offset(lane);
            // SAFETY: we hold the only reference to the pool (`&mut Pool`), so no safe access
            // runs concurrently, and every unsafe accessor's contract makes its caller rule
            // out races with us.
            unsafe { pool.read(off, &mut region[..REDO_HEADER_SIZE as usize]) };
            if region[..8] == [0; 8] {
                continue;
            }
            // Read only the slots the header claims (bounded by the region): a lane's log
            // region is the whole lane, mostly unused.
            let count = u64::from(u32::from_le_bytes(
                region[4..8].try_into().expect("4 bytes"),
            ));
            let len = (REDO_HEADER_SIZE + count * REDO_ENTRY_SIZE).min(layout.log_size());
            // SAFETY: as above.
            unsafe { pool.read(off, &mut region[..len as usize]) };
            match decode_log(&region[..len as usize], lane, &layout)? {
                LogState::Empty => {}
                LogState::Invalid(_) => invalid.push(lane),
                LogState::Valid {
                    seq,
                    entries,
                    ranges,
                } => found.push(Found {
                    lane,
                    seq,
                    entries,
                    ranges,
                }),
            }
        }
        found.sort_by_key(|f| (f.seq, f.lane));
        if let Some(w) = found.windows(2).find(|w| w[0].seq == w[1].seq) {
            return Err(AllocError::CorruptLog {
                lane: w[1].lane,
                seq: w[1].seq,
                reason: CorruptReason::DuplicateSeq {
                    other_lane: w[0].lane,
                },
            });
        }
        let max_seq = found.last().map_or(0, |f| f.seq);
        let report = RecoveryReport {
            logs_replayed: found.len(),
            entries_applied: found.iter().map(|f| f.entries.len()).sum(),
            ranges_applied: found.iter().map(|f| f.ranges.len()).sum(),
            range_bytes_applied: found
                .iter()
                .flat_map(|f| &f.ranges)
                .map(|r| r.data.len() as u64)
                .sum(),
            invalid_cleared: invalid.len(),
            max_seq,
        };
        if !found.is_empty() || !invalid.is_empty() {
            if pool.is_read_only() {
                return Err(AllocError::ReadOnly {
                    pending_lanes: found.len() + invalid.len(),
                });
            }
            let mut ctx = pool.flush_context();
            let mut lines = Vec::new();
            for f in &found {
                for e in &f.entries {
                    // SAFETY: exclusive pool (as above); the target was checked by decode_log.
                    unsafe { store_word(pool, e.target, e.value) };
                    lines.push(e.target & !(CACHE_LINE - 1));
                }
                for r in &f.ranges {
                    // SAFETY: exclusive pool (as above); the range was checked by decode_log.
                    unsafe { pool.copy_nodrain(&mut ctx, r.target, &r.data) };
                }
            }
            lines.sort_unstable();
            lines.dedup();
            for &line in &lines {
                pool.flush(&mut ctx, line, CACHE_LINE);
            }
            // The replayed values must be durable before any log is cleared.
            pool.drain(&mut ctx)?;
            // Valid logs are cleared one drain at a time, in increasing sequence order, so
            // that after a crash in here the logs still valid are a suffix in sequence order:
            // clearing a later log first could leave an earlier overlapping one alone valid,
            // and replaying it alone would clobber the later one's values (docs/REDO.md §5).
            for f in &found {
                let off = layout.log_offset(f.lane);
                // SAFETY: exclusive pool (as above); the header word is inside the pool.
                unsafe { store_word(pool, off, 0) };
                pool.flush(&mut ctx, off, 8);
                pool.drain(&mut ctx)?;
            }
            // Invalid logs are never replayed: clearing them needs no order. (They are cleared
            // so that a later log of the lane with the same first entries cannot make them
            // valid again: docs/REDO.md §5.)
            for &lane in &invalid {
                let off = layout.log_offset(lane);
                // SAFETY: as above.
                unsafe { store_word(pool, off, 0) };
                pool.flush(&mut ctx, off, 8);
            }
            pool.drain(&mut ctx)?;
        }
        let n = layout.lane_count as usize;
        let logs = RedoLogs {
            shared: Arc::new(Shared {
                layout,
                pool_base: pool.ptr_at(0, 0).as_ptr() as usize,
                pool_uuid: pool.header().uuid,
                seq: CachePadded::new(AtomicU64::new(max_seq + 1)),
                pending: (0..n).map(|_| AtomicU64::new(0)).collect(),
                summary: (0..n.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
                claimed: (0..n).map(|_| AtomicBool::new(false)).collect(),
            }),
        };
        Ok((logs, report))
    }

    /// Claims lane `lane`'s log: `None` if it is already handed out (until that [`LaneLog`]
    /// is dropped).
    ///
    /// # Panics
    /// If `lane >= lane_count`.
    pub fn lane(&self, lane: u32) -> Option<LaneLog> {
        let offset = self.shared.layout.log_offset(lane);
        self.shared.claimed[lane as usize]
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .ok()?;
        Some(LaneLog {
            shared: Arc::clone(&self.shared),
            lane,
            offset,
            covered: Vec::new(),
            lines: Vec::new(),
            body: Vec::new(),
        })
    }

    /// Number of lanes.
    pub fn lane_count(&self) -> u32 {
        self.shared.layout.lane_count
    }

    /// Where the logs lie and which targets they accept.
    pub fn layout(&self) -> &RedoLayout {
        &self.shared.layout
    }

    /// The sequence number the next commit will get.
    pub fn next_seq(&self) -> u64 {
        self.shared.seq.load(Ordering::Relaxed)
    }

    /// Number of lanes whose last invalidation is not yet known to be durable.
    pub fn pending_invalidations(&self) -> usize {
        self.shared
            .pending
            .iter()
            .filter(|p| p.load(Ordering::Relaxed) != 0)
            .count()
    }

    /// A barrier: makes every pending invalidation durable (flush + one drain through `ctx`)
    /// and empties the set. Needed before a word that a redo log targeted is modified by other
    /// means than a redo log (see `docs/REDO.md` §4). Returns the number of header lines
    /// flushed.
    ///
    /// # Errors
    /// [`AllocError::Pool`] if the drain fails.
    ///
    /// # Panics
    /// If `pool` is not the pool these logs were recovered from.
    pub fn sync_invalidations(&self, pool: &Pool, ctx: &mut FlushContext) -> Result<usize> {
        self.shared.check_pool(pool);
        let mut covered = Vec::new();
        self.shared.flush_pending(pool, ctx, None, &mut covered);
        pool.drain(ctx)?;
        self.shared.clear_covered(&covered);
        Ok(covered.len())
    }
}

/// The exclusive handle on one lane's redo log (from [`RedoLogs::lane`]); released on drop.
pub struct LaneLog {
    shared: Arc<Shared>,
    lane: u32,
    offset: u64,
    /// Scratch: `(lane, token)` of the pending invalidations flushed by the current commit.
    covered: Vec<(u32, u64)>,
    /// Scratch: target lines of the current commit.
    lines: Vec<u64>,
    /// Scratch: the body of a log with range entries.
    body: Vec<u8>,
}

impl std::fmt::Debug for LaneLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaneLog")
            .field("lane", &self.lane)
            .field("offset", &self.offset)
            .finish_non_exhaustive()
    }
}

impl Drop for LaneLog {
    fn drop(&mut self) {
        self.shared.claimed[self.lane as usize].store(false, Ordering::Release);
    }
}

impl LaneLog {
    /// The lane's index.
    pub fn lane(&self) -> u32 {
        self.lane
    }

    /// Pool offset of the lane's log region.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Slots this lane's log holds ([`RedoLayout::capacity`]).
    pub fn capacity(&self) -> usize {
        self.shared.layout.capacity()
    }

    /// Atomically stores every `entry.value` at `entry.target` (in entry order: of duplicate
    /// targets the last wins), durably: [`LaneLog::commit_ops`] with word entries only.
    ///
    /// # Safety
    /// As [`LaneLog::commit_ops`].
    ///
    /// # Errors
    /// As [`LaneLog::commit_ops`].
    ///
    /// # Panics
    /// As [`LaneLog::commit_ops`].
    pub unsafe fn commit(
        &mut self,
        pool: &Pool,
        ctx: &mut FlushContext,
        entries: &[RedoEntry],
    ) -> Result<CommitStats> {
        // SAFETY: forwarded contract.
        unsafe { self.commit_ops(pool, ctx, entries, &[]) }
    }

    /// Atomically stores every word entry, then copies every range, durably, with exactly two
    /// drains through `ctx`:
    ///
    /// 1. flush the header lines of other lanes' pending invalidations;
    /// 2. write the slots (word entries, then range entries with their data), then the
    ///    header; flush the log's lines (non-temporal stores for a body of 256 bytes or more);
    /// 3. drain #1 — **the commit point**: the update is durable from here on;
    /// 4. store the words and copy the ranges (non-temporal stores for ranges of 256 bytes or
    ///    more), flush each touched line once;
    /// 5. drain #2 — the values are durable;
    /// 6. invalidate the log (store 0 to the (checksum, count) word, no flush, no drain) and
    ///    add the lane to the pending-invalidation set.
    ///
    /// Nothing at all happens when both lists are empty. Targets, ranges and size are checked
    /// before anything is written.
    ///
    /// # Safety
    /// For the whole call, until it returns:
    /// * no other thread reads or writes any target word or range byte (other than through
    ///   this lane's commit), and no reference to one is live: the caller owns the targets
    ///   exclusively (e.g. under the lock of the run or object they belong to), and keeps
    ///   owning them until this returns;
    /// * no other [`RedoLogs`] of the same pool is in use (the lane region's exclusivity is
    ///   guaranteed by this `&mut LaneLog` only within one `RedoLogs`).
    ///
    /// Afterwards, a target may be modified again by another redo log commit freely; by any
    /// other means only after [`RedoLogs::sync_invalidations`] (`docs/REDO.md` §4).
    ///
    /// # Errors
    /// * [`AllocError::LogFull`] if the slots needed exceed [`LaneLog::capacity`]; nothing
    ///   written.
    /// * [`AllocError::InvalidTarget`] for a word target [`RedoLayout::check_target`] or a
    ///   range [`RedoLayout::check_range`] refuses (`index` counts words, then ranges);
    ///   nothing written.
    /// * [`AllocError::ReadOnly`] on a read-only pool.
    /// * [`AllocError::Pool`] if a drain fails (the pool is then poisoned: reopen it and let
    ///   recovery decide).
    ///
    /// # Panics
    /// If `pool` is not the pool these logs were recovered from, or `ctx` belongs to another
    /// pool.
    pub unsafe fn commit_ops(
        &mut self,
        pool: &Pool,
        ctx: &mut FlushContext,
        entries: &[RedoEntry],
        ranges: &[RedoRange<'_>],
    ) -> Result<CommitStats> {
        let sh = &*self.shared;
        sh.check_pool(pool);
        if pool.is_read_only() {
            return Err(AllocError::ReadOnly { pending_lanes: 0 });
        }
        let n = entries.len();
        if n == 0 && ranges.is_empty() {
            return Ok(CommitStats::default());
        }
        let slots = n + ranges
            .iter()
            .map(|r| range_slots(r.data.len()))
            .sum::<usize>();
        let capacity = sh.layout.capacity();
        if slots > capacity {
            return Err(AllocError::LogFull {
                needed: slots,
                capacity,
            });
        }
        for (index, e) in entries.iter().enumerate() {
            sh.layout
                .check_target(e.target)
                .map_err(|reason| AllocError::InvalidTarget {
                    index,
                    target: e.target,
                    reason,
                })?;
        }
        for (i, r) in ranges.iter().enumerate() {
            sh.layout
                .check_range(r.target, r.data.len() as u64)
                .map_err(|reason| AllocError::InvalidTarget {
                    index: n + i,
                    target: r.target,
                    reason,
                })?;
        }

        // 1. Pending invalidations of other lanes (ours is overwritten by our own header).
        sh.flush_pending(pool, ctx, Some(self.lane), &mut self.covered);

        // 2. Slots, then the header, the (checksum, count) word last.
        let seq = sh.seq.fetch_add(1, Ordering::Relaxed);
        let body: &[u8] = if ranges.is_empty() {
            bytemuck::cast_slice(entries)
        } else {
            encode_body_into(&mut self.body, entries, ranges);
            &self.body
        };
        let header = RedoHeader::for_body(seq, body);
        let off = self.offset;
        let log_len = REDO_HEADER_SIZE + body.len() as u64;
        // SAFETY: the log region of our lane is written only through its one `LaneLog` of the
        // one `RedoLogs` of this pool (caller's contract + `&mut self`); other lanes' commits
        // only flush its header line, which is not an access. Nothing holds a reference into
        // it. The range is inside the pool (layout checked at recovery; slots <= capacity).
        unsafe {
            pool.copy_nodrain(ctx, off + REDO_HEADER_SIZE, body);
            pool.write(off + 8, &bytemuck::bytes_of(&header)[8..]);
            store_word(pool, off, header.word());
        }
        pool.flush(ctx, off, REDO_HEADER_SIZE);

        // 3. Drain #1: the commit point. It also made the invalidations flushed in step 1 (and
        // our own previous one, overwritten by the new header) durable.
        pool.drain(ctx)?;
        if sh.pending[self.lane as usize].load(Ordering::Relaxed) != 0 {
            sh.pending[self.lane as usize].store(0, Ordering::SeqCst);
        }
        sh.clear_covered(&self.covered);

        // 4. Apply: words, then ranges.
        self.lines.clear();
        for e in entries {
            // SAFETY: the caller owns every target word exclusively for the call; the target
            // was checked (aligned, inside the pool, not in the header or a lane).
            unsafe { store_word(pool, e.target, e.value) };
            self.lines.push(e.target & !(CACHE_LINE - 1));
        }
        let mut nt_lines = 0;
        for r in ranges {
            if r.data.len() >= NT_THRESHOLD {
                // SAFETY: as for the words: the caller owns the range; it was checked.
                unsafe { pool.copy_nodrain(ctx, r.target, r.data) };
                nt_lines +=
                    (r.target + r.data.len() as u64).div_ceil(CACHE_LINE) - r.target / CACHE_LINE;
            } else {
                // SAFETY: as above.
                unsafe { pool.write(r.target, r.data) };
                let mut line = r.target & !(CACHE_LINE - 1);
                while line < r.target + r.data.len() as u64 {
                    self.lines.push(line);
                    line += CACHE_LINE;
                }
            }
        }
        self.lines.sort_unstable();
        self.lines.dedup();
        for &line in &self.lines {
            pool.flush(ctx, line, CACHE_LINE);
        }

        // 5. Drain #2: the values are durable; only now may the log be invalidated.
        pool.drain(ctx)?;

        // 6. Invalidate, without a flush or a drain: whoever needs the invalidation durable
        // flushes this line itself before its own drain — every other lane's commit in its
        // step 1 (the pending set), `sync_invalidations`, and our own next commit, whose
        // header overwrites it. Not flushing here leaves no write-back in flight when we
        // return, so the caller's next locked instruction (a mutex unlock, an `Arc` count)
        // does not stall until it completes: ~170 ns per commit on this machine.
        // SAFETY: our lane's header word, as in step 2.
        unsafe { store_word(pool, off, 0) };
        let lane = self.lane as usize;
        // Release: the zero store above happens-before any load that sees the token. (Not
        // SeqCst: the protocol needs only release/acquire, docs/REDO.md §3.)
        sh.pending[lane].store(seq, Ordering::Release);
        let bit = 1u64 << (lane % 64);
        if sh.summary[lane / 64].load(Ordering::Relaxed) & bit == 0 {
            sh.summary[lane / 64].fetch_or(bit, Ordering::AcqRel);
        }

        Ok(CommitStats {
            seq,
            entries: n,
            ranges: ranges.len(),
            slots,
            log_lines: log_len.div_ceil(CACHE_LINE) as usize,
            target_lines: self.lines.len() + nt_lines as usize,
            pending_lines: self.covered.len(),
            drains: 2,
        })
    }
}

/// Stores `value` to the 8-byte word at pool offset `offset` with a single (atomic) store.
///
/// # Safety
/// No other thread accesses the word concurrently with non-atomic accesses, and no reference
/// to it is live.
///
/// # Panics
/// If the word is not inside the pool, or is misaligned, or the pool is read-only.
#[inline]
unsafe fn store_word(pool: &Pool, offset: u64, value: u64) {
    assert!(!pool.is_read_only(), "write to a read-only pool");
    assert!(offset % 8 == 0, "misaligned word {offset:#x}");
    let p = pool.ptr_at(offset, 8).as_ptr().cast::<u64>();
    // SAFETY: `p` is inside the writable mapping (ptr_at checked the range; the pool is not
    // read-only), 8-byte aligned (the mapping is page-aligned and `offset % 8 == 0`), valid
    // for the pool's lifetime, which outlives this statement; the caller rules out concurrent
    // non-atomic accesses.
    unsafe { AtomicU64::from_ptr(p) }.store(value, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> RedoLayout {
        // 8 MiB pool, 4 KiB root, 4 lanes of 16 KiB.
        RedoLayout {
            pool_size: 8 << 20,
            lanes_offset: 8192,
            lane_count: 4,
            lane_size: 16 << 10,
        }
    }

    fn region(bytes: &[u8]) -> Vec<u8> {
        let mut r = vec![0u8; REDO_LOG_SIZE as usize];
        r[..bytes.len()].copy_from_slice(bytes);
        r
    }

    #[test]
    fn targets_are_checked() {
        let l = layout();
        let heap = 8192 + 4 * (16 << 10);
        assert_eq!(l.check_target(heap), Ok(()));
        assert_eq!(l.check_target(4096), Ok(())); // root area
                                                  // A lane's log region is the whole lane.
        assert_eq!(
            l.check_target(8192 + 4096),
            Err(TargetError::InRedoLog { lane: 0 })
        );
        assert_eq!(
            l.check_target(8192 + (16 << 10) - 8),
            Err(TargetError::InRedoLog { lane: 0 })
        );
        assert_eq!(l.check_target((8 << 20) - 8), Ok(()));
        assert_eq!(l.check_target(heap + 4), Err(TargetError::Misaligned));
        assert_eq!(l.check_target(8 << 20), Err(TargetError::OutOfPool));
        assert_eq!(l.check_target(u64::MAX - 7), Err(TargetError::OutOfPool));
        assert_eq!(l.check_target(0), Err(TargetError::InHeader));
        assert_eq!(l.check_target(4088), Err(TargetError::InHeader));
        assert_eq!(
            l.check_target(8192),
            Err(TargetError::InRedoLog { lane: 0 })
        );
        assert_eq!(
            l.check_target(8192 + 3 * (16 << 10) + 4088),
            Err(TargetError::InRedoLog { lane: 3 })
        );
    }

    #[test]
    fn encode_decode_round_trip() {
        let l = layout();
        let entries = [RedoEntry::new(4096, 1), RedoEntry::new(4104, 2)];
        let r = region(&encode_log(9, &entries));
        assert_eq!(
            decode_log(&r, 0, &l).unwrap(),
            LogState::Valid {
                seq: 9,
                entries: entries.to_vec(),
                ranges: vec![],
            }
        );
        assert_eq!(decode_log(&region(&[]), 0, &l).unwrap(), LogState::Empty);
    }

    #[test]
    fn checksum_covers_count_seq_reserved_and_entries() {
        let l = layout();
        let entries = [RedoEntry::new(4096, 1)];
        let good = region(&encode_log(9, &entries));
        for i in 4..80 {
            let mut r = good.clone();
            r[i] ^= 1;
            assert!(
                matches!(decode_log(&r, 0, &l).unwrap(), LogState::Invalid(_)),
                "byte {i}"
            );
        }
    }

    #[test]
    fn valid_checksum_with_bad_fields_is_corrupt() {
        let l = layout();
        let bad = region(&encode_log(1, &[RedoEntry::new(8192, 1)]));
        assert!(matches!(
            decode_log(&bad, 2, &l),
            Err(AllocError::CorruptLog {
                lane: 2,
                seq: 1,
                reason: CorruptReason::BadTarget {
                    index: 0,
                    target: 8192,
                    error: TargetError::InRedoLog { lane: 0 }
                }
            })
        ));
        let zero_seq = region(&encode_log(0, &[RedoEntry::new(4096, 1)]));
        assert!(matches!(
            decode_log(&zero_seq, 0, &l),
            Err(AllocError::CorruptLog {
                reason: CorruptReason::ZeroSeq,
                ..
            })
        ));
        let mut h = RedoHeader::new(3, &[RedoEntry::new(4096, 1)]);
        h.reserved[5] = 1;
        h.checksum = log_checksum(&h, &[RedoEntry::new(4096, 1)]);
        let mut bytes = bytemuck::bytes_of(&h).to_vec();
        bytes.extend_from_slice(bytemuck::bytes_of(&RedoEntry::new(4096, 1)));
        assert!(matches!(
            decode_log(&region(&bytes), 0, &l),
            Err(AllocError::CorruptLog {
                reason: CorruptReason::ReservedNotZero { offset: 21 },
                ..
            })
        ));
    }

    #[test]
    fn bad_counts_are_invalid() {
        let l = layout();
        for count in [0u32, REDO_CAPACITY as u32 + 1, u32::MAX] {
            let mut r = region(&[]);
            r[0] = 1; // non-zero checksum
            r[4..8].copy_from_slice(&count.to_le_bytes());
            assert_eq!(
                decode_log(&r, 0, &l).unwrap(),
                LogState::Invalid(Invalid::BadCount(count))
            );
        }
    }

    #[test]
    fn a_full_log_fits_the_region() {
        let l = layout();
        let entries: Vec<_> = (0..REDO_CAPACITY as u64)
            .map(|i| RedoEntry::new(4096 + 8 * i, i))
            .collect();
        let bytes = encode_log(1, &entries);
        assert_eq!(bytes.len() as u64, REDO_LOG_SIZE);
        assert!(matches!(
            decode_log(&bytes, 0, &l).unwrap(),
            LogState::Valid { .. }
        ));
    }
}
