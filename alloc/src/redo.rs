//! The lane redo log: a checksummed redo log per lane that makes a set of 8-byte word updates
//! and byte-range copies atomic (format and crash argument: `docs/REDO.md`).
//!
//! * [`RedoLogs::recover`] runs at open, before anything else touches the pool: it replays
//!   every valid log in sequence order, clears every log, and returns the volatile state
//!   shared by all lanes (the sequence counter and the pending-invalidation set).
//! * [`RedoLogs::lane`] hands out the one [`LaneLog`] of a lane; [`LaneLog::commit`] writes a
//!   log in one of the lane's two regions and makes it durable (the commit point), then
//!   applies it: with cache flushes it makes the values durable and invalidates the log (two
//!   drains); with deferred apply (msync and simulated modes) it leaves the values to the
//!   lane's next commit, which makes them durable with its own drain (one drain per commit;
//!   another lane's commit touching the same lines helps instead, `docs/REDO.md` §4). [`LaneLog::commit_ops_ext`] takes a log of any size: past the lane's capacity it
//!   goes on in an **extension**, a region of the heap's data area the caller lends for the
//!   call (the allocator reserves a block and cancels it afterwards; `docs/REDO.md` §2.4, §6.6).

use std::mem::{offset_of, size_of};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

pub use crate::defer::DeferPolicy;
use crate::defer::{LiveCount, Policy};
use crate::live::{self, LaneState, LiveLog, MAX_LIVE_LINES};
use std::sync::Arc;

use bytemuck::{Pod, Zeroable};
use crossbeam_utils::CachePadded;
use pmstore_pool::{FlushContext, Geometry, Pool, CACHE_LINE, HEADER_SIZE, INCOMPAT_LANE_SLOTS};

use crate::error::{AllocError, CorruptReason, Result, TargetError};
use crate::heap::HeapGeometry;

/// The smallest lane a pool may have. A lane holds [`LOG_SLOTS`] log regions (slots), each
/// half the lane ([`RedoLayout::log_size`]).
pub const REDO_LOG_SIZE: u64 = 4096;
/// Log regions per lane: commits of a lane alternate between them, so a commit never
/// overwrites the previous log, whose values may not be durable yet (`docs/REDO.md` §1, §4).
pub const LOG_SLOTS: u32 = 2;
/// Size of the redo log header (one cache line).
pub const REDO_HEADER_SIZE: u64 = 64;
/// Size of one redo slot: a word entry, the head of a range entry, or 16 bytes of its data.
pub const REDO_ENTRY_SIZE: u64 = 16;
/// Slots one log region of a minimal ([`REDO_LOG_SIZE`]) lane holds:
/// `(REDO_LOG_SIZE / 2 - REDO_HEADER_SIZE) / REDO_ENTRY_SIZE` = 124. Larger lanes hold more
/// ([`RedoLayout::capacity`]).
pub const REDO_CAPACITY: usize =
    ((REDO_LOG_SIZE / LOG_SLOTS as u64 - REDO_HEADER_SIZE) / REDO_ENTRY_SIZE) as usize;
/// Bit 0 of an entry's `target` word marks a range entry (targets are 8-byte aligned, so the
/// bit is free).
pub const RANGE_FLAG: u64 = 1;
/// The checksum covers the header from this offset (everything after the checksum field).
const CRC_START: usize = 4;
/// Size of the reserved tail of the header.
const RESERVED: usize = 32;
/// A log extension starts on a cache line (`docs/REDO.md` §2.4).
pub const EXT_ALIGN: u64 = CACHE_LINE;
/// The commit writes a log's slots in whole cache lines through a staging buffer of this size
/// (bounded scratch memory whatever the log's size) ...
const STAGE: usize = 4096;

/// Most word entries (and ranges) of a commit whose words go with non-temporal stores.
const STREAM_WORDS_MAX: usize = 16;
/// A commit whose Bloom mask meets another lane's live log older than this many commits of the
/// pool helps it even if they share no line (§4 1c): a lane whose thread stopped committing
/// would otherwise keep its log live, and every later commit meeting its mask would read the
/// record. An active lane's log is replaced long before (its next commit).
const IDLE_HELP_AGE: u64 = 256;
/// ... except that range data of this size or more is written straight from the caller's
/// slice (its whole lines; the partial lines at its ends go through the staging buffer).
const DIRECT_MIN: usize = 512;

/// The redo log header, byte for byte (little-endian), at offset 0 of the log region.
///
/// `checksum` and `count` form the first 8-byte word, so a log is invalidated by one atomic
/// 8-byte store of zero.
///
/// The log's **slot stream** is the `min(count, capacity)` slots in the lane after the header,
/// followed (only when `ext != 0`) by the `ext_len / 16` slots of its **extension**, a block of
/// the heap's data area (`docs/REDO.md` §2.4).
///
/// ```
/// use pmstore_alloc::redo::{log_checksum, RedoEntry, RedoHeader};
///
/// let entries = [RedoEntry::new(4096, 1), RedoEntry::new(4104, 2)];
/// let h = RedoHeader::new(7, &entries);
/// assert_eq!((h.seq, h.count, h.ext, h.ext_len), (7, 2, 0, 0));
/// assert_eq!(h.checksum, log_checksum(&h, &entries));
/// assert_eq!(bytemuck::bytes_of(&h).len(), 64); // one cache line
/// ```
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct RedoHeader {
    /// CRC-32C of header bytes `[4, 64)` followed by the `count` slots of the slot stream.
    pub checksum: u32,
    /// Number of 16-byte slots in the slot stream: `1..=capacity` in a valid log without an
    /// extension, `> capacity` with one; 0 = no log.
    pub count: u32,
    /// Pool-wide sequence number of the log (>= 1): replay order.
    pub seq: u64,
    /// Pool offset of the log's extension, 0 = none (a log that fits its lane).
    pub ext: u64,
    /// Bytes of slots in the extension: `16 × (count − capacity)` if `ext != 0`, else 0.
    pub ext_len: u64,
    /// Must be zero.
    pub reserved: [u8; RESERVED],
}

/// One redo entry: store `value` at pool offset `target` (an 8-byte aligned word).
///
/// ```
/// use pmstore_alloc::redo::{RedoEntry, REDO_ENTRY_SIZE};
///
/// let e = RedoEntry::new(4096, 0xfeed);
/// assert_eq!(e, RedoEntry::from((4096, 0xfeed)));
/// assert_eq!(bytemuck::bytes_of(&e).len() as u64, REDO_ENTRY_SIZE);
/// assert_eq!(bytemuck::bytes_of(&e)[..8], 4096u64.to_le_bytes());
/// ```
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
    assert!(offset_of!(RedoHeader, ext) == 16);
    assert!(offset_of!(RedoHeader, ext_len) == 24);
    assert!(offset_of!(RedoHeader, reserved) == 32);
    assert!(size_of::<RedoEntry>() == REDO_ENTRY_SIZE as usize);
    assert!(offset_of!(RedoEntry, target) == 0);
    assert!(offset_of!(RedoEntry, value) == 8);
    assert!(REDO_HEADER_SIZE == CACHE_LINE);
    assert!(REDO_LOG_SIZE % CACHE_LINE == 0);
    assert!(REDO_CAPACITY == 124);
};

/// Building entries.
///
/// ```
/// use pmstore_alloc::redo::RedoEntry;
///
/// const ZERO_ROOT: RedoEntry = RedoEntry::new(4096, 0); // `new` is a `const fn`
/// assert_eq!((ZERO_ROOT.target, ZERO_ROOT.value), (4096, 0));
/// ```
impl RedoEntry {
    /// An entry storing `value` at `target`.
    ///
    /// ```
    /// use pmstore_alloc::redo::RedoEntry;
    ///
    /// let e = RedoEntry::new(8192, 42);
    /// assert_eq!((e.target, e.value), (8192, 42));
    /// ```
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
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use pmstore_alloc::pool::{CreateOptions, Pool, MIN_POOL_SIZE};
/// use pmstore_alloc::redo::{RedoLogs, RedoRange};
///
/// let (mut pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
/// let (logs, _) = RedoLogs::recover(&mut pool)?;
/// # logs.set_deferred_apply(true); // as the simulated domain by default (whatever PMSTORE_DEFER_APPLY says)
/// let target = pool.geometry().root_offset;
/// let mut lane = logs.lane(0).unwrap();
/// let mut ctx = pool.flush_context();
/// let range = RedoRange { target, data: b"sixteen bytes!!!" };
/// // SAFETY: this thread owns the root area; one RedoLogs per pool.
/// let stats = unsafe { lane.commit_ops(&pool, &mut ctx, &[], &[range])? };
/// assert_eq!(stats.ranges, 1);
/// let mut back = [0u8; 16];
/// // SAFETY: as above.
/// unsafe { pool.read(target, &mut back) };
/// assert_eq!(&back, b"sixteen bytes!!!");
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RedoRange<'a> {
    /// Pool offset of the first byte.
    pub target: u64,
    /// The bytes to store there.
    pub data: &'a [u8],
}

/// A range entry read back from a log ([`decode_log`]).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use pmstore_alloc::pool::{Geometry, MIN_POOL_SIZE};
/// use pmstore_alloc::redo::{decode_log, encode_log_ops, LogState, RangeEntry, RedoLayout, RedoRange};
///
/// let layout = RedoLayout::new(MIN_POOL_SIZE, &Geometry::plan(MIN_POOL_SIZE, 4096, 4, 4096, 4096)?)?;
/// let log = encode_log_ops(1, &[], &[RedoRange { target: 4096, data: &[9; 8] }]);
/// let LogState::Valid { ranges, .. } = decode_log(&log, 0, &layout)? else { panic!("a valid log") };
/// assert_eq!(ranges, [RangeEntry { target: 4096, data: vec![9; 8] }]);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeEntry {
    /// Pool offset of the first byte.
    pub target: u64,
    /// The bytes to store there.
    pub data: Vec<u8>,
}

/// Slots a range entry of `len` bytes takes: its head plus its data padded to 16 bytes.
///
/// ```
/// use pmstore_alloc::redo::range_slots;
///
/// assert_eq!(range_slots(8), 2); // head + one 16-byte data slot
/// assert_eq!(range_slots(16), 2);
/// assert_eq!(range_slots(24), 3);
/// ```
pub const fn range_slots(len: usize) -> usize {
    1 + len.div_ceil(REDO_ENTRY_SIZE as usize)
}

/// Slots a log of `words` word entries and `ranges` takes ([`range_slots`] per range).
///
/// ```
/// use pmstore_alloc::redo::{slots_needed, RedoRange};
///
/// let data = [0u8; 40];
/// let ranges = [RedoRange { target: 4096, data: &data }];
/// assert_eq!(slots_needed(3, &ranges), 3 + 1 + 3); // 3 words, a head, 48 padded data bytes
/// assert_eq!(slots_needed(3, &[]), 3);
/// ```
pub fn slots_needed(words: usize, ranges: &[RedoRange<'_>]) -> usize {
    words
        + ranges
            .iter()
            .map(|r| range_slots(r.data.len()))
            .sum::<usize>()
}

/// The slots (body, the slot stream) of a log holding `words` then `ranges`, as
/// [`LaneLog::commit_ops`] writes them after the header (and on into the extension).
///
/// ```
/// use pmstore_alloc::redo::{encode_body, slots_needed, RedoEntry, RedoRange, RANGE_FLAG};
///
/// let words = [RedoEntry::new(4096, 1)];
/// let ranges = [RedoRange { target: 4104, data: &[2; 8] }];
/// let body = encode_body(&words, &ranges);
/// assert_eq!(body.len(), 16 * slots_needed(1, &ranges));
/// assert_eq!(body[16..24], (4104 | RANGE_FLAG).to_le_bytes()); // the range's head
/// assert_eq!(body[24..32], 8u64.to_le_bytes()); // its length
/// ```
pub fn encode_body(words: &[RedoEntry], ranges: &[RedoRange<'_>]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(bytemuck::cast_slice(words));
    for r in ranges {
        body.extend_from_slice(&(r.target | RANGE_FLAG).to_le_bytes());
        body.extend_from_slice(&(r.data.len() as u64).to_le_bytes());
        body.extend_from_slice(r.data);
        body.resize(body.len().next_multiple_of(REDO_ENTRY_SIZE as usize), 0);
    }
    body
}

/// Building headers (for tools and tests that write media states).
///
/// ```
/// use pmstore_alloc::redo::{encode_body, RedoEntry, RedoHeader};
///
/// let entries = [RedoEntry::new(4096, 5)];
/// let a = RedoHeader::new(3, &entries);
/// let b = RedoHeader::for_body(3, &encode_body(&entries, &[]));
/// assert_eq!(a, b);
/// assert_eq!(a.word(), u64::from(a.checksum) | 1 << 32);
/// ```
impl RedoHeader {
    /// A header for a log of `entries` (word entries only) with sequence number `seq`,
    /// checksum filled in.
    ///
    /// ```
    /// use pmstore_alloc::redo::{RedoEntry, RedoHeader};
    ///
    /// let h = RedoHeader::new(1, &[RedoEntry::new(4096, 1)]);
    /// assert_eq!((h.seq, h.count), (1, 1));
    /// assert_ne!(h, RedoHeader::new(1, &[RedoEntry::new(4096, 2)])); // the checksum differs
    /// ```
    pub fn new(seq: u64, entries: &[RedoEntry]) -> RedoHeader {
        RedoHeader::for_body(seq, bytemuck::cast_slice(entries))
    }

    /// A header for a log whose slots are `body` (a multiple of 16 bytes), all in the lane (no
    /// extension), checksum filled in.
    ///
    /// ```
    /// use pmstore_alloc::redo::{encode_body, RedoHeader, RedoRange};
    ///
    /// let body = encode_body(&[], &[RedoRange { target: 4096, data: &[1; 32] }]);
    /// let h = RedoHeader::for_body(2, &body);
    /// assert_eq!(h.count, 3); // a head and two data slots
    /// assert_eq!((h.ext, h.ext_len), (0, 0));
    /// ```
    pub fn for_body(seq: u64, body: &[u8]) -> RedoHeader {
        RedoHeader::for_stream(seq, body, 0, 0)
    }

    /// A header for a log whose slot stream is `body` (a multiple of 16 bytes) with an
    /// extension at pool offset `ext` holding its last `ext_len` bytes (`ext = 0`,
    /// `ext_len = 0`: none), checksum filled in. The header says what it is given: nothing is
    /// checked (to build invalid media states too).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_alloc::pool::{Geometry, MIN_POOL_SIZE};
    /// use pmstore_alloc::redo::{RedoHeader, RedoLayout};
    ///
    /// let layout = RedoLayout::new(MIN_POOL_SIZE, &Geometry::plan(MIN_POOL_SIZE, 4096, 4, 4096, 4096)?)?;
    /// let slots = layout.capacity() + 4; // 4 slots past the lane
    /// let (ext, _) = layout.extension_area();
    /// let h = RedoHeader::for_stream(1, &vec![0; 16 * slots], ext, 64);
    /// assert_eq!(h.count as usize, slots);
    /// assert_eq!(h.extension(&layout), Ok(Some((ext, 64))));
    /// # Ok(())
    /// # }
    /// ```
    pub fn for_stream(seq: u64, body: &[u8], ext: u64, ext_len: u64) -> RedoHeader {
        debug_assert_eq!(body.len() % REDO_ENTRY_SIZE as usize, 0);
        let slots = body.len() / REDO_ENTRY_SIZE as usize;
        let mut h = RedoHeader {
            checksum: 0,
            count: u32::try_from(slots).expect("slot count fits a u32"),
            seq,
            ext,
            ext_len,
            reserved: [0; RESERVED],
        };
        h.checksum = crc32c::crc32c_append(h.crc_seed(), body);
        h
    }

    /// The first 8-byte word (`checksum | count << 32`), as stored.
    ///
    /// ```
    /// use pmstore_alloc::redo::{RedoEntry, RedoHeader};
    ///
    /// let h = RedoHeader::new(1, &[RedoEntry::new(4096, 1); 3]);
    /// assert_eq!(h.word() >> 32, 3); // count
    /// assert_eq!(h.word() as u32, h.checksum);
    /// assert_eq!(bytemuck::bytes_of(&h)[..8], h.word().to_le_bytes());
    /// ```
    pub fn word(&self) -> u64 {
        u64::from(self.checksum) | u64::from(self.count) << 32
    }

    /// The CRC-32C of header bytes `[4, 64)`: where the log's checksum starts.
    fn crc_seed(&self) -> u32 {
        crc32c::crc32c(&bytemuck::bytes_of(self)[CRC_START..])
    }

    /// Where this header says its slot stream lies: `Ok(None)` for a log held by its lane,
    /// `Ok(Some((ext, ext_len)))` for one with an extension, `Err` if `count`, `ext` and
    /// `ext_len` are inconsistent or the extension does not lie inside the pool (the log is
    /// then invalid: its checksum cannot even be computed). `docs/REDO.md` §2.3.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_alloc::pool::{Geometry, MIN_POOL_SIZE};
    /// use pmstore_alloc::redo::{Invalid, RedoEntry, RedoHeader, RedoLayout};
    ///
    /// let layout = RedoLayout::new(MIN_POOL_SIZE, &Geometry::plan(MIN_POOL_SIZE, 4096, 4, 4096, 4096)?)?;
    /// assert_eq!(RedoHeader::new(1, &[RedoEntry::new(4096, 1)]).extension(&layout), Ok(None));
    /// // An extension for a log that fits its lane: inconsistent.
    /// let bad = RedoHeader::for_stream(1, &[0; 16], 1 << 20, 16);
    /// assert_eq!(bad.extension(&layout), Err(Invalid::BadExtension { ext: 1 << 20, ext_len: 16 }));
    /// # Ok(())
    /// # }
    /// ```
    pub fn extension(&self, layout: &RedoLayout) -> Result<Option<(u64, u64)>, Invalid> {
        extent(self, layout).map(|x| (x.ext_len != 0).then_some((x.ext, x.ext_len)))
    }
}

/// The checksum of a log without an extension: CRC-32C of header bytes `[4, 64)` followed by
/// `entries`.
///
/// ```
/// use pmstore_alloc::redo::{log_checksum, RedoEntry, RedoHeader};
///
/// let entries = [RedoEntry::new(4096, 1)];
/// let mut h = RedoHeader::new(1, &entries);
/// assert_eq!(log_checksum(&h, &entries), h.checksum);
/// h.seq = 2; // the checksum covers the header too
/// assert_ne!(log_checksum(&h, &entries), h.checksum);
/// ```
pub fn log_checksum(header: &RedoHeader, entries: &[RedoEntry]) -> u32 {
    crc32c::crc32c_append(header.crc_seed(), bytemuck::cast_slice(entries))
}

/// The bytes of a complete log (header then entries), as [`LaneLog::commit`] writes them.
/// For tools and tests that build media states.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use pmstore_alloc::pool::{CreateOptions, Pool, MIN_POOL_SIZE};
/// use pmstore_alloc::redo::{encode_log, RedoEntry, RedoLogs};
///
/// // A media state: a committed log in lane 0 whose values were never applied.
/// let (mut pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
/// let target = pool.geometry().root_offset;
/// let log = encode_log(1, &[RedoEntry::new(target, 42)]);
/// assert_eq!(log.len(), 64 + 16);
/// // SAFETY: nothing else uses the pool yet.
/// unsafe { pool.write(pool.geometry().lanes_offset, &log) };
/// let (_logs, report) = RedoLogs::recover(&mut pool)?; // replays it
/// assert_eq!(report.logs_replayed, 1);
/// let mut v = [0u8; 8];
/// // SAFETY: as above.
/// unsafe { pool.read(target, &mut v) };
/// assert_eq!(u64::from_ne_bytes(v), 42);
/// # Ok(())
/// # }
/// ```
pub fn encode_log(seq: u64, entries: &[RedoEntry]) -> Vec<u8> {
    encode_log_ops(seq, entries, &[])
}

/// The bytes of a complete log of word entries then range entries, all in the lane (however
/// long), as [`LaneLog::commit_ops`] writes a log that fits its lane.
///
/// ```
/// use pmstore_alloc::redo::{encode_log_ops, slots_needed, RedoEntry, RedoRange};
///
/// let words = [RedoEntry::new(4096, 1)];
/// let ranges = [RedoRange { target: 4112, data: &[7; 24] }];
/// let log = encode_log_ops(1, &words, &ranges);
/// assert_eq!(log.len(), 64 + 16 * slots_needed(1, &ranges)); // header, then the slots
/// ```
pub fn encode_log_ops(seq: u64, words: &[RedoEntry], ranges: &[RedoRange<'_>]) -> Vec<u8> {
    let body = encode_body(words, ranges);
    let h = RedoHeader::for_body(seq, &body);
    let mut v = bytemuck::bytes_of(&h).to_vec();
    v.extend_from_slice(&body);
    v
}

/// A log of word entries then range entries as [`LaneLog::commit_ops_ext`] writes it in a lane
/// of `capacity` slots with its extension at pool offset `ext`: returns the bytes of the lane
/// (header and in-lane slots) and the bytes of the extension. A log of at most `capacity`
/// slots has no extension (`ext` is not used; the second part is empty).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use pmstore_alloc::pool::{Geometry, MIN_POOL_SIZE};
/// use pmstore_alloc::redo::{decode_log_ext, encode_log_ext, LogState, RedoLayout, RedoRange};
///
/// let layout = RedoLayout::new(MIN_POOL_SIZE, &Geometry::plan(MIN_POOL_SIZE, 4096, 4, 4096, 4096)?)?;
/// let (ext, _) = layout.extension_area();
/// let data = vec![1u8; 4096]; // 257 slots: 133 past the log region's 124
/// let ranges = [RedoRange { target: 4096, data: &data }];
/// let (lane, in_ext) = encode_log_ext(1, &[], &ranges, layout.capacity(), ext);
/// assert_eq!((lane.len(), in_ext.len()), (64 + 16 * 124, 16 * 133));
/// assert!(matches!(decode_log_ext(&lane, &in_ext, 0, &layout)?, LogState::Valid { .. }));
/// # Ok(())
/// # }
/// ```
pub fn encode_log_ext(
    seq: u64,
    words: &[RedoEntry],
    ranges: &[RedoRange<'_>],
    capacity: usize,
    ext: u64,
) -> (Vec<u8>, Vec<u8>) {
    let body = encode_body(words, ranges);
    let in_lane = capacity * REDO_ENTRY_SIZE as usize;
    if body.len() <= in_lane {
        let h = RedoHeader::for_body(seq, &body);
        let mut v = bytemuck::bytes_of(&h).to_vec();
        v.extend_from_slice(&body);
        return (v, Vec::new());
    }
    let h = RedoHeader::for_stream(seq, &body, ext, (body.len() - in_lane) as u64);
    let mut v = bytemuck::bytes_of(&h).to_vec();
    v.extend_from_slice(&body[..in_lane]);
    (v, body[in_lane..].to_vec())
}

/// Where the redo logs lie in a pool, and which words they may target.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use pmstore_alloc::pool::{CreateOptions, Pool, MIN_POOL_SIZE};
/// use pmstore_alloc::redo::RedoLayout;
///
/// let (pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
/// let layout = RedoLayout::new(pool.size(), &pool.geometry())?;
/// assert_eq!(layout.lane_count(), 64);
/// assert_eq!(layout.log_offset(0), pool.geometry().lanes_offset);
/// assert!(layout.check_target(pool.geometry().root_offset).is_ok());
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RedoLayout {
    pool_size: u64,
    lanes_offset: u64,
    lane_count: u32,
    lane_size: u32,
    /// The heap's data area `[D, D + N × CHUNK)` (`docs/ALLOC.md` §1), where log extensions
    /// lie.
    data_start: u64,
    data_end: u64,
    /// Slot 0 may hold a log of the single-region layout of pools made before lane format 2
    /// (no `INCOMPAT_LANE_SLOTS` bit): recovery accepts its longer in-lane part.
    legacy: bool,
    /// [`RedoLayout::log_size`] and [`RedoLayout::capacity`], derived from `lane_size` once
    /// (every commit asks for them, several times).
    log_size: u64,
    capacity: usize,
}

/// Where logs lie and what they may store to.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use pmstore_alloc::pool::{Geometry, MIN_POOL_SIZE};
/// use pmstore_alloc::redo::{RedoLayout, REDO_CAPACITY};
/// use pmstore_alloc::TargetError;
///
/// // 4 lanes of 4 KiB after a 4 KiB root area: lanes at [8192, 24576).
/// let g = Geometry::plan(MIN_POOL_SIZE, 4096, 4, 4096, 4096)?;
/// let layout = RedoLayout::new(MIN_POOL_SIZE, &g)?;
/// assert_eq!(layout.capacity(), REDO_CAPACITY);
/// assert_eq!(layout.check_target(8192 + 4096), Err(TargetError::InRedoLog { lane: 1 }));
/// # Ok(())
/// # }
/// ```
impl RedoLayout {
    /// The layout of a pool of `pool_size` bytes with `geometry`.
    ///
    /// # Errors
    /// [`AllocError::LaneTooSmall`] if a lane cannot hold a redo log.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_alloc::pool::{Geometry, MIN_POOL_SIZE};
    /// use pmstore_alloc::redo::RedoLayout;
    /// use pmstore_alloc::AllocError;
    ///
    /// let g = Geometry::plan(MIN_POOL_SIZE, 4096, 4, 4096, 4096)?;
    /// assert_eq!(RedoLayout::new(MIN_POOL_SIZE, &g)?.lane_count(), 4);
    /// let small = Geometry::plan(MIN_POOL_SIZE, 4096, 4, 1024, 4096)?; // 1 KiB lanes
    /// assert!(matches!(
    ///     RedoLayout::new(MIN_POOL_SIZE, &small),
    ///     Err(AllocError::LaneTooSmall { lane_size: 1024, needed: 4096 })
    /// ));
    /// # Ok(())
    /// # }
    /// ```
    pub fn new(pool_size: u64, geometry: &Geometry) -> Result<RedoLayout> {
        if u64::from(geometry.lane_size) < REDO_LOG_SIZE {
            return Err(AllocError::LaneTooSmall {
                lane_size: geometry.lane_size,
                needed: REDO_LOG_SIZE,
            });
        }
        let heap = HeapGeometry::new(geometry.heap_offset, geometry.heap_size);
        Ok(RedoLayout::with_sizes(RedoLayout {
            pool_size,
            lanes_offset: geometry.lanes_offset,
            lane_count: geometry.lane_count,
            lane_size: geometry.lane_size,
            data_start: heap.data,
            data_end: heap.data_end().min(pool_size),
            legacy: false,
            log_size: 0,
            capacity: 0,
        }))
    }

    /// `l` with its derived sizes computed from its `lane_size`.
    fn with_sizes(mut l: RedoLayout) -> RedoLayout {
        l.log_size = u64::from(l.lane_size) / u64::from(LOG_SLOTS) / CACHE_LINE * CACHE_LINE;
        l.capacity = ((l.log_size - REDO_HEADER_SIZE) / REDO_ENTRY_SIZE) as usize;
        l
    }

    /// The layout of `pool`: [`RedoLayout::new`], accepting in slot 0 the logs of pools made
    /// before lane format 2 (whose header lacks [`INCOMPAT_LANE_SLOTS`]).
    ///
    /// # Errors
    /// As [`RedoLayout::new`].
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_alloc::pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    /// use pmstore_alloc::redo::RedoLayout;
    ///
    /// let (pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// assert_eq!(RedoLayout::of(&pool)?, RedoLayout::new(pool.size(), &pool.geometry())?);
    /// # Ok(())
    /// # }
    /// ```
    pub fn of(pool: &Pool) -> Result<RedoLayout> {
        let mut l = RedoLayout::new(pool.size(), &pool.geometry())?;
        l.legacy = pool.header().incompat & INCOMPAT_LANE_SLOTS == 0;
        Ok(l)
    }

    /// Number of lanes (and logs).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_alloc::pool::{Geometry, MIN_POOL_SIZE};
    /// use pmstore_alloc::redo::RedoLayout;
    ///
    /// let g = Geometry::plan(MIN_POOL_SIZE, 4096, 16, 4096, 4096)?;
    /// assert_eq!(RedoLayout::new(MIN_POOL_SIZE, &g)?.lane_count(), 16);
    /// # Ok(())
    /// # }
    /// ```
    pub fn lane_count(&self) -> u32 {
        self.lane_count
    }

    /// Size of each log region (slot): half the lane, rounded down to a cache line.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_alloc::pool::{Geometry, MIN_POOL_SIZE};
    /// use pmstore_alloc::redo::RedoLayout;
    ///
    /// let g = Geometry::plan(MIN_POOL_SIZE, 4096, 4, 16 << 10, 4096)?;
    /// assert_eq!(RedoLayout::new(MIN_POOL_SIZE, &g)?.log_size(), 8 << 10);
    /// # Ok(())
    /// # }
    /// ```
    pub fn log_size(&self) -> u64 {
        self.log_size
    }

    /// Slots one log region holds: `(log_size - 64) / 16`.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_alloc::pool::{Geometry, MIN_POOL_SIZE};
    /// use pmstore_alloc::redo::RedoLayout;
    ///
    /// let g = Geometry::plan(MIN_POOL_SIZE, 4096, 4, 16 << 10, 4096)?;
    /// assert_eq!(RedoLayout::new(MIN_POOL_SIZE, &g)?.capacity(), ((8 << 10) - 64) / 16);
    /// # Ok(())
    /// # }
    /// ```
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// In-lane slots of a slot-0 log written with the single-region layout of pools made
    /// before lane format 2 (the whole lane).
    fn legacy_capacity(&self) -> usize {
        ((u64::from(self.lane_size) - REDO_HEADER_SIZE) / REDO_ENTRY_SIZE) as usize
    }

    /// Pool offset of log region `slot` (0 or 1) of lane `lane`.
    ///
    /// # Panics
    /// If `lane >= lane_count` or `slot >= LOG_SLOTS`.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_alloc::pool::{Geometry, MIN_POOL_SIZE};
    /// use pmstore_alloc::redo::RedoLayout;
    ///
    /// let g = Geometry::plan(MIN_POOL_SIZE, 4096, 4, 4096, 4096)?;
    /// let layout = RedoLayout::new(MIN_POOL_SIZE, &g)?;
    /// assert_eq!(layout.slot_offset(2, 0), g.lane_offset(2));
    /// assert_eq!(layout.slot_offset(2, 1), g.lane_offset(2) + 2048);
    /// # Ok(())
    /// # }
    /// ```
    pub fn slot_offset(&self, lane: u32, slot: u32) -> u64 {
        assert!(slot < LOG_SLOTS, "slot {slot} out of range");
        self.log_offset(lane) + u64::from(slot) * self.log_size()
    }

    /// Pool offset of lane `lane`'s first log region (the lane's first byte).
    ///
    /// # Panics
    /// If `lane >= lane_count`.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_alloc::pool::{Geometry, MIN_POOL_SIZE};
    /// use pmstore_alloc::redo::RedoLayout;
    ///
    /// let g = Geometry::plan(MIN_POOL_SIZE, 4096, 4, 4096, 4096)?;
    /// let layout = RedoLayout::new(MIN_POOL_SIZE, &g)?;
    /// assert_eq!(layout.log_offset(2), g.lane_offset(2));
    /// assert_eq!(layout.log_offset(2), 8192 + 2 * 4096);
    /// # Ok(())
    /// # }
    /// ```
    pub fn log_offset(&self, lane: u32) -> u64 {
        assert!(lane < self.lane_count, "lane {lane} out of range");
        self.lanes_offset + u64::from(lane) * u64::from(self.lane_size)
    }

    /// Checks that `target` is a word a redo log may store to: 8-byte aligned, inside the pool,
    /// outside the header page and outside every lane (each lane is its log's region).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_alloc::pool::{Geometry, MIN_POOL_SIZE};
    /// use pmstore_alloc::redo::RedoLayout;
    /// use pmstore_alloc::TargetError;
    ///
    /// let layout = RedoLayout::new(MIN_POOL_SIZE, &Geometry::plan(MIN_POOL_SIZE, 4096, 4, 4096, 4096)?)?;
    /// assert_eq!(layout.check_target(4096), Ok(())); // the root area
    /// assert_eq!(layout.check_target(8), Err(TargetError::InHeader));
    /// assert_eq!(layout.check_target(4100), Err(TargetError::Misaligned));
    /// assert_eq!(layout.check_target(MIN_POOL_SIZE), Err(TargetError::OutOfPool));
    /// # Ok(())
    /// # }
    /// ```
    pub fn check_target(&self, target: u64) -> Result<(), TargetError> {
        self.check_range(target, 8)
    }

    /// Checks that `[target, target + len)` may be written by a range entry: `target` and
    /// `len` multiples of 8, `len > 0`, inside the pool, outside the header page and
    /// disjoint from every lane.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_alloc::pool::{Geometry, MIN_POOL_SIZE};
    /// use pmstore_alloc::redo::RedoLayout;
    /// use pmstore_alloc::TargetError;
    ///
    /// let layout = RedoLayout::new(MIN_POOL_SIZE, &Geometry::plan(MIN_POOL_SIZE, 4096, 4, 4096, 4096)?)?;
    /// assert_eq!(layout.check_range(4096, 4096), Ok(())); // the whole root area
    /// assert_eq!(layout.check_range(4096, 4104), Err(TargetError::InRedoLog { lane: 0 }));
    /// assert_eq!(layout.check_range(4096, 12), Err(TargetError::BadLength { len: 12 }));
    /// # Ok(())
    /// # }
    /// ```
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

    /// The heap's data area `[start, end)`: where a log extension may lie.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_alloc::heap::HeapGeometry;
    /// use pmstore_alloc::pool::{Geometry, MIN_POOL_SIZE};
    /// use pmstore_alloc::redo::RedoLayout;
    ///
    /// let g = Geometry::plan(MIN_POOL_SIZE, 4096, 4, 4096, 4096)?;
    /// let heap = HeapGeometry::new(g.heap_offset, g.heap_size);
    /// let layout = RedoLayout::new(MIN_POOL_SIZE, &g)?;
    /// assert_eq!(layout.extension_area(), (heap.data, heap.data_end()));
    /// # Ok(())
    /// # }
    /// ```
    pub fn extension_area(&self) -> (u64, u64) {
        (self.data_start, self.data_end)
    }

    /// Slots a log of `slots` slots stores in an extension: 0 if it fits the lane.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_alloc::pool::{Geometry, MIN_POOL_SIZE};
    /// use pmstore_alloc::redo::RedoLayout;
    ///
    /// let layout = RedoLayout::new(MIN_POOL_SIZE, &Geometry::plan(MIN_POOL_SIZE, 4096, 4, 4096, 4096)?)?;
    /// assert_eq!(layout.ext_slots(124), 0); // fits the log region (half a 4 KiB lane)
    /// assert_eq!(layout.ext_slots(300), 176);
    /// # Ok(())
    /// # }
    /// ```
    pub fn ext_slots(&self, slots: usize) -> usize {
        slots.saturating_sub(self.capacity())
    }

    /// Checks that `[offset, offset + len)` may hold a log extension: `offset` a multiple of
    /// [`EXT_ALIGN`], `len` a positive multiple of 16, inside the heap's data area (so inside
    /// the pool, and outside the header page, the lanes and the heap metadata).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_alloc::pool::{Geometry, MIN_POOL_SIZE};
    /// use pmstore_alloc::redo::RedoLayout;
    /// use pmstore_alloc::TargetError;
    ///
    /// let layout = RedoLayout::new(MIN_POOL_SIZE, &Geometry::plan(MIN_POOL_SIZE, 4096, 4, 4096, 4096)?)?;
    /// let (start, _) = layout.extension_area();
    /// assert_eq!(layout.check_extension(start, 256), Ok(()));
    /// assert_eq!(layout.check_extension(start + 16, 256), Err(TargetError::NotLineAligned));
    /// assert_eq!(layout.check_extension(4096, 256), Err(TargetError::OutsideHeapData));
    /// # Ok(())
    /// # }
    /// ```
    pub fn check_extension(&self, offset: u64, len: u64) -> Result<(), TargetError> {
        if offset % EXT_ALIGN != 0 {
            return Err(TargetError::NotLineAligned);
        }
        if len == 0 || len % REDO_ENTRY_SIZE != 0 {
            return Err(TargetError::BadLength { len });
        }
        self.check_range(offset, len)?;
        if offset < self.data_start || offset + len > self.data_end {
            return Err(TargetError::OutsideHeapData);
        }
        Ok(())
    }
}

/// Why a log is not valid (and so never replayed).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use pmstore_alloc::pool::{Geometry, MIN_POOL_SIZE};
/// use pmstore_alloc::redo::{decode_log, encode_log, Invalid, LogState, RedoEntry, RedoLayout};
///
/// let layout = RedoLayout::new(MIN_POOL_SIZE, &Geometry::plan(MIN_POOL_SIZE, 4096, 4, 4096, 4096)?)?;
/// let mut log = encode_log(1, &[RedoEntry::new(4096, 1)]);
/// log[64 + 8] ^= 1; // a torn value
/// assert!(matches!(
///     decode_log(&log, 0, &layout)?,
///     LogState::Invalid(Invalid::ChecksumMismatch { .. })
/// ));
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalid {
    /// `count` is 0 (with a non-zero checksum), or above the layout's capacity without an
    /// extension (or above the slots the region given to [`decode_log`] holds).
    BadCount(u32),
    /// `ext` and `ext_len` are inconsistent with `count` (`docs/REDO.md` §2.3), or the extension
    /// does not lie inside the pool, or its bytes were not given to [`decode_log_ext`].
    BadExtension {
        /// The header's `ext`.
        ext: u64,
        /// The header's `ext_len`.
        ext_len: u64,
    },
    /// The stored checksum does not match the contents.
    ChecksumMismatch {
        /// The stored checksum.
        stored: u32,
        /// The checksum of the contents.
        computed: u32,
    },
}

/// What a lane's log region holds.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use pmstore_alloc::pool::{Geometry, MIN_POOL_SIZE};
/// use pmstore_alloc::redo::{decode_log, encode_log, LogState, RedoEntry, RedoLayout};
///
/// let layout = RedoLayout::new(MIN_POOL_SIZE, &Geometry::plan(MIN_POOL_SIZE, 4096, 4, 4096, 4096)?)?;
/// assert_eq!(decode_log(&[0; 4096], 0, &layout)?, LogState::Empty);
/// let log = encode_log(5, &[RedoEntry::new(4096, 1)]);
/// let state = decode_log(&log, 0, &layout)?;
/// assert_eq!(
///     state,
///     LogState::Valid { seq: 5, entries: vec![RedoEntry::new(4096, 1)], ranges: vec![] }
/// );
/// # Ok(())
/// # }
/// ```
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

/// Where a header's slot stream lies (the checks that come before the checksum).
#[derive(Clone, Copy, Debug)]
struct Extent {
    /// Slots in the lane.
    in_lane: usize,
    /// The extension's pool offset and length in bytes (`0, 0`: none).
    ext: u64,
    ext_len: u64,
}

impl Extent {
    /// Bytes of slots in the lane.
    fn lane_bytes(&self) -> usize {
        self.in_lane * REDO_ENTRY_SIZE as usize
    }
}

/// The checks that must pass before the checksum can be computed: `count > 0`; without an
/// extension (`ext = 0`), `count <= capacity` and `ext_len = 0`; with one, `count > capacity`,
/// `ext_len = 16 × (count − capacity)` and `[ext, ext + ext_len)` inside the pool. Anything
/// else is invalid, whatever the checksum says: a torn or stale header may point anywhere.
fn extent(h: &RedoHeader, layout: &RedoLayout) -> Result<Extent, Invalid> {
    extent_with(h, layout, layout.capacity())
}

/// [`extent`] of a slot-0 log in recovery: in a pool made before lane format 2, the log may
/// have been written with the single-region layout (in-lane capacity: the whole lane).
fn extent_slot0(h: &RedoHeader, layout: &RedoLayout) -> Result<Extent, Invalid> {
    match extent(h, layout) {
        Err(_) if layout.legacy => extent_with(h, layout, layout.legacy_capacity()),
        r => r,
    }
}

fn extent_with(h: &RedoHeader, layout: &RedoLayout, capacity: usize) -> Result<Extent, Invalid> {
    let count = h.count as usize;
    let bad_ext = Invalid::BadExtension {
        ext: h.ext,
        ext_len: h.ext_len,
    };
    if count == 0 {
        return Err(Invalid::BadCount(h.count));
    }
    if h.ext == 0 {
        if count > capacity {
            return Err(Invalid::BadCount(h.count));
        }
        if h.ext_len != 0 {
            return Err(bad_ext);
        }
        return Ok(Extent {
            in_lane: count,
            ext: 0,
            ext_len: 0,
        });
    }
    // count <= u32::MAX, so 16 × count cannot overflow.
    if count <= capacity || h.ext_len != ((count - capacity) as u64) * REDO_ENTRY_SIZE {
        return Err(bad_ext);
    }
    if h.ext
        .checked_add(h.ext_len)
        .map_or(true, |e| e > layout.pool_size)
    {
        return Err(bad_ext);
    }
    Ok(Extent {
        in_lane: capacity,
        ext: h.ext,
        ext_len: h.ext_len,
    })
}

/// The checks of a log whose checksum matched, before its entries: sequence number, reserved
/// bytes, where its extension lies.
fn check_header(h: &RedoHeader, x: &Extent, lane: u32, layout: &RedoLayout) -> Result<()> {
    let corrupt = |reason| AllocError::CorruptLog {
        lane,
        seq: h.seq,
        reason,
    };
    if h.seq == 0 {
        return Err(corrupt(CorruptReason::ZeroSeq));
    }
    if let Some(i) = h.reserved.iter().position(|&b| b != 0) {
        return Err(corrupt(CorruptReason::ReservedNotZero {
            offset: offset_of!(RedoHeader, reserved) + i,
        }));
    }
    if x.ext_len != 0 {
        layout.check_extension(x.ext, x.ext_len).map_err(|error| {
            corrupt(CorruptReason::BadExtension {
                ext: x.ext,
                ext_len: x.ext_len,
                error,
            })
        })?;
    }
    Ok(())
}

/// A decoded slot stream: word entries, and range entries as `(target, start, len)` of their
/// data within the stream.
#[derive(Debug, Default)]
struct Parsed {
    words: Vec<RedoEntry>,
    ranges: Vec<(u64, usize, usize)>,
}

/// Decodes the slot stream `body` of a log whose checksum matched (`docs/REDO.md` §2.2).
fn parse(
    body: &[u8],
    h: &RedoHeader,
    x: &Extent,
    lane: u32,
    layout: &RedoLayout,
) -> Result<Parsed> {
    let corrupt = |reason| AllocError::CorruptLog {
        lane,
        seq: h.seq,
        reason,
    };
    // A log never targets its own extension (its commit would overwrite its own log while
    // applying it).
    let in_ext = |t: u64, len: u64| x.ext_len != 0 && t < x.ext + x.ext_len && x.ext < t + len;
    let mut out = Parsed::default();
    let mut pos = 0;
    let mut index = 0;
    while pos < body.len() {
        let e: RedoEntry = bytemuck::pod_read_unaligned(&body[pos..pos + 16]);
        pos += 16;
        if e.target & RANGE_FLAG == 0 {
            if !out.ranges.is_empty() {
                return Err(corrupt(CorruptReason::WordAfterRange { index }));
            }
            layout.check_target(e.target).map_err(|error| {
                corrupt(CorruptReason::BadTarget {
                    index,
                    target: e.target,
                    error,
                })
            })?;
            if in_ext(e.target, 8) {
                return Err(corrupt(CorruptReason::TargetInExtension {
                    index,
                    target: e.target,
                }));
            }
            out.words.push(e);
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
            if in_ext(target, len) {
                return Err(corrupt(CorruptReason::TargetInExtension { index, target }));
            }
            out.ranges.push((target, pos, len as usize));
            pos += padded as usize;
        }
        index += 1;
    }
    Ok(out)
}

/// Decodes the log region of lane `lane`: `region` is the whole region
/// ([`RedoLayout::log_size`] bytes, or at least its first `64 + 16 × count` bytes), optionally
/// followed by the bytes of the log's extension (the log's bytes as a string: lane, then
/// extension). Never panics on any contents. See [`decode_log_ext`].
///
/// # Errors
/// As [`decode_log_ext`].
///
/// # Panics
/// If `region` is shorter than the header.
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use pmstore_alloc::pool::{Geometry, MIN_POOL_SIZE};
/// use pmstore_alloc::redo::{decode_log, encode_log, LogState, RedoEntry, RedoLayout};
/// use pmstore_alloc::{AllocError, CorruptReason};
///
/// let layout = RedoLayout::new(MIN_POOL_SIZE, &Geometry::plan(MIN_POOL_SIZE, 4096, 4, 4096, 4096)?)?;
/// let log = encode_log(1, &[RedoEntry::new(4096, 1)]);
/// assert!(matches!(decode_log(&log, 0, &layout)?, LogState::Valid { seq: 1, .. }));
/// // A valid checksum over a target no writer produces: corrupt, not just invalid.
/// let forged = encode_log(1, &[RedoEntry::new(8, 1)]);
/// assert!(matches!(
///     decode_log(&forged, 0, &layout),
///     Err(AllocError::CorruptLog { lane: 0, seq: 1, reason: CorruptReason::BadTarget { .. } })
/// ));
/// # Ok(())
/// # }
/// ```
pub fn decode_log(region: &[u8], lane: u32, layout: &RedoLayout) -> Result<LogState> {
    let split = region.len().min(layout.log_size() as usize);
    decode_log_ext(&region[..split], &region[split..], lane, layout)
}

/// Decodes the log region of lane `lane` (`region` is the whole region,
/// [`RedoLayout::log_size`] bytes, or at least its first `64 + 16 × count` bytes) whose log's
/// extension, if it has one ([`RedoHeader::extension`]), holds `ext` (at least its `ext_len`
/// bytes; ignored for a log without an extension). Never panics on any contents; allocates at
/// most about twice the log's size.
///
/// # Errors
/// [`AllocError::CorruptLog`] if the checksum is valid but a field is not: sequence number 0,
/// a non-zero reserved byte, an extension outside the heap's data area or misaligned
/// ([`RedoLayout::check_extension`]), an invalid word target ([`RedoLayout::check_target`]) or
/// range ([`RedoLayout::check_range`]), a target inside the log's own extension, a range whose
/// data runs past the last slot, or a word entry after a range entry.
///
/// # Panics
/// If `region` is shorter than the header or longer than [`RedoLayout::log_size`].
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use pmstore_alloc::pool::{Geometry, MIN_POOL_SIZE};
/// use pmstore_alloc::redo::{
///     decode_log_ext, encode_log_ext, Invalid, LogState, RedoLayout, RedoRange,
/// };
///
/// let layout = RedoLayout::new(MIN_POOL_SIZE, &Geometry::plan(MIN_POOL_SIZE, 4096, 4, 4096, 4096)?)?;
/// let (ext, _) = layout.extension_area();
/// let data = vec![3u8; 4096];
/// let ranges = [RedoRange { target: 4096, data: &data }];
/// let (lane, in_ext) = encode_log_ext(9, &[], &ranges, layout.capacity(), ext);
/// let LogState::Valid { seq, ranges, .. } = decode_log_ext(&lane, &in_ext, 0, &layout)? else {
///     panic!("a valid log");
/// };
/// assert_eq!((seq, ranges[0].data.len()), (9, 4096));
/// // Without the extension's bytes the log cannot be checked: invalid.
/// assert!(matches!(
///     decode_log_ext(&lane, &[], 0, &layout)?,
///     LogState::Invalid(Invalid::BadExtension { .. })
/// ));
/// # Ok(())
/// # }
/// ```
pub fn decode_log_ext(
    region: &[u8],
    ext: &[u8],
    lane: u32,
    layout: &RedoLayout,
) -> Result<LogState> {
    assert!(
        region.len() >= REDO_HEADER_SIZE as usize && region.len() as u64 <= layout.log_size(),
        "a log region"
    );
    let header: RedoHeader = bytemuck::pod_read_unaligned(&region[..REDO_HEADER_SIZE as usize]);
    if header.word() == 0 {
        return Ok(LogState::Empty);
    }
    let x = match extent(&header, layout) {
        Ok(x) => x,
        Err(why) => return Ok(LogState::Invalid(why)),
    };
    let end = REDO_HEADER_SIZE as usize + x.lane_bytes();
    if end > region.len() {
        return Ok(LogState::Invalid(Invalid::BadCount(header.count)));
    }
    if (ext.len() as u64) < x.ext_len {
        return Ok(LogState::Invalid(Invalid::BadExtension {
            ext: header.ext,
            ext_len: header.ext_len,
        }));
    }
    let ext = &ext[..x.ext_len as usize];
    let computed = crc32c::crc32c_append(crc32c::crc32c(&region[CRC_START..end]), ext);
    if computed != header.checksum {
        return Ok(LogState::Invalid(Invalid::ChecksumMismatch {
            stored: header.checksum,
            computed,
        }));
    }
    check_header(&header, &x, lane, layout)?;
    let lane_part = &region[REDO_HEADER_SIZE as usize..end];
    let joined;
    let body: &[u8] = if ext.is_empty() {
        lane_part
    } else {
        joined = [lane_part, ext].concat();
        &joined
    };
    let p = parse(body, &header, &x, lane, layout)?;
    Ok(LogState::Valid {
        seq: header.seq,
        entries: p.words,
        ranges: p
            .ranges
            .into_iter()
            .map(|(target, start, len)| RangeEntry {
                target,
                data: body[start..start + len].to_vec(),
            })
            .collect(),
    })
}

/// What [`RedoLogs::recover`] did.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use pmstore_alloc::pool::{CreateOptions, Pool, MIN_POOL_SIZE};
/// use pmstore_alloc::redo::{encode_log, RecoveryReport, RedoEntry, RedoLogs};
///
/// let (mut pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
/// let (_, report) = RedoLogs::recover(&mut pool)?;
/// assert_eq!(report, RecoveryReport::default()); // a fresh pool: nothing to do
/// let g = pool.geometry();
/// let mut torn = encode_log(3, &[RedoEntry::new(g.root_offset, 1)]);
/// torn[70] ^= 0xff;
/// // SAFETY: nothing else uses the pool.
/// unsafe { pool.write(g.lane_offset(1), &torn) };
/// let (_, report) = RedoLogs::recover(&mut pool)?;
/// assert_eq!((report.logs_replayed, report.invalid_cleared), (0, 1));
/// # Ok(())
/// # }
/// ```
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
    /// Log extensions read (to check a checksum: of valid and invalid logs).
    pub extensions_read: usize,
    /// Bytes of replayed entries not stored because they lie inside the extension of a valid
    /// log with a higher sequence number (`docs/REDO.md` §5, step 3).
    pub bytes_skipped: u64,
}

/// What one [`LaneLog::commit`] did: the lines it flushed, by kind.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use pmstore_alloc::pool::{CreateOptions, Pool, MIN_POOL_SIZE};
/// use pmstore_alloc::redo::{RedoEntry, RedoLogs};
///
/// let (mut pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
/// let (logs, _) = RedoLogs::recover(&mut pool)?;
/// # logs.set_deferred_apply(true); // as the simulated domain by default (whatever PMSTORE_DEFER_APPLY says)
/// let root = pool.geometry().root_offset;
/// let mut lane = logs.lane(0).unwrap();
/// let mut ctx = pool.flush_context();
/// let entries = [RedoEntry::new(root, 1), RedoEntry::new(root + 8, 2)];
/// // SAFETY: this thread owns the root area; one RedoLogs per pool.
/// let stats = unsafe { lane.commit(&pool, &mut ctx, &entries)? };
/// assert_eq!((stats.seq, stats.entries, stats.slots, stats.ext_slots), (1, 2, 2, 0));
/// assert_eq!(stats.target_lines, 0); // applied, flushed by the lane's next commit
/// assert_eq!(stats.drains, 1);
/// // SAFETY: as above.
/// let next = unsafe { lane.commit(&pool, &mut ctx, &[RedoEntry::new(root + 64, 3)])? };
/// assert_eq!(next.deferred_lines, 1); // both words of the first commit share a line
/// assert_eq!(ctx.counters().drains, 2);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// The log's sequence number (0 for an empty commit, which does nothing).
    pub seq: u64,
    /// Word entries in the log.
    pub entries: usize,
    /// Range entries in the log.
    pub ranges: usize,
    /// 16-byte slots the log used (header excluded; in the lane and in the extension).
    pub slots: usize,
    /// Of those, slots stored in the log's extension (0: the log fit its lane).
    pub ext_slots: usize,
    /// Cache lines of the lane's log region written back (header + in-lane slots).
    pub log_lines: usize,
    /// Cache lines of the extension written back (or written with non-temporal stores).
    pub ext_lines: usize,
    /// Distinct cache lines of targets flushed by this commit: the lane's previous log's
    /// (`deferred_lines`), the helped logs' of other lanes, and this log's own if it was not
    /// deferred (`drains == 2`). A deferred log's lines are flushed by the lane's next commit.
    pub target_lines: usize,
    /// Of `target_lines`, the lines of the lane's previous log (applied, not flushed, by the
    /// previous commit).
    pub deferred_lines: usize,
    /// Other lanes' live logs sharing a line with this commit, which it made durable and
    /// invalidated.
    pub helped: usize,
    /// Header lines of other lanes with a pending invalidation, flushed before the drain.
    pub pending_lines: usize,
    /// Drains: 1, or 2 for a log with an extension or more than 24 target lines (its values
    /// are made durable before the commit returns).
    pub drains: usize,
}

/// Totals over a commit's statistics.
///
/// ```
/// use pmstore_alloc::redo::CommitStats;
///
/// let stats = CommitStats { log_lines: 1, target_lines: 2, ..CommitStats::default() };
/// assert_eq!(stats.lines(), 3);
/// ```
impl CommitStats {
    /// Total cache lines flushed.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_alloc::pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    /// use pmstore_alloc::redo::{RedoEntry, RedoLogs};
    ///
    /// let (mut pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// let (logs, _) = RedoLogs::recover(&mut pool)?;
    /// # logs.set_deferred_apply(true); // as the simulated domain by default (whatever PMSTORE_DEFER_APPLY says)
    /// let mut lane = logs.lane(0).unwrap();
    /// let mut ctx = pool.flush_context();
    /// let root = pool.geometry().root_offset;
    /// // SAFETY: this thread owns the root area; one RedoLogs per pool.
    /// let stats = unsafe { lane.commit(&pool, &mut ctx, &[RedoEntry::new(root, 7)])? };
    /// assert_eq!(stats.lines() as u64, ctx.counters().lines_flushed);
    /// # Ok(())
    /// # }
    /// ```
    pub fn lines(&self) -> usize {
        self.log_lines + self.ext_lines + self.target_lines + self.pending_lines
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
    /// Per lane: its pending-invalidation tokens, live record and helpers (`live.rs`).
    lanes: Box<[CachePadded<LaneState>]>,
    /// One bit per lane: "may have a pending invalidation" (a superset of the lanes with a
    /// non-zero token), so that a commit scans words, not lanes. Set by whoever publishes a
    /// token and never cleared (a stale bit costs two loads).
    summary: Box<[AtomicU64]>,
    /// One bit per lane: "may have a live record" (set by the owner at its first record,
    /// never cleared; a stale bit costs one load of the lane's mask).
    live_summary: Box<[AtomicU64]>,
    /// Whether lane `i`'s [`LaneLog`] is handed out.
    claimed: Box<[AtomicBool]>,
    /// Which small commits leave their values unflushed until the next commit (deferred
    /// apply, one drain; `docs/REDO.md` §4): all in msync and simulated modes, those with
    /// word entries with cache flushes (§8). `PMSTORE_DEFER_APPLY=0|1|words` overrides;
    /// [`RedoLogs::set_defer_policy`] changes it.
    defer: Policy,
    /// Lanes with a non-empty live record: while no other lane has one, a commit neither
    /// computes its sorted lines (unless it defers) nor scans for logs to help.
    live_lanes: CachePadded<LiveCount>,
}

/// The lanes whose bit is set in the bitset `bits` (one bit per lane, 64 per word), each word
/// loaded (Acquire) when the walk reaches it.
#[inline]
fn lanes_in(bits: &[AtomicU64]) -> LanesIn<'_> {
    LanesIn {
        words: bits,
        next_word: 0,
        base: 0,
        rest: 0,
    }
}

/// The iterator of [`lanes_in`] (a plain loop: this runs once or twice per commit).
struct LanesIn<'a> {
    words: &'a [AtomicU64],
    /// Index of the next word to load.
    next_word: usize,
    /// First lane of the current word.
    base: u32,
    /// Bits of the current word not yet returned.
    rest: u64,
}

impl Iterator for LanesIn<'_> {
    type Item = u32;

    #[inline]
    fn next(&mut self) -> Option<u32> {
        while self.rest == 0 {
            let word = self.words.get(self.next_word)?;
            self.rest = word.load(Ordering::Acquire);
            self.base = (self.next_word * 64) as u32;
            self.next_word += 1;
        }
        let lane = self.base + self.rest.trailing_zeros();
        self.rest &= self.rest - 1;
        Some(lane)
    }
}

/// A live log of another lane that a commit helps: it flushes the log's lines before its
/// drain, then invalidates the log (`docs/REDO.md` §4 step 2).
struct Helped {
    lane: u32,
    log: LiveLog,
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

    fn set_bit(bits: &[AtomicU64], lane: u32) {
        let (w, bit) = (lane as usize / 64, 1u64 << (lane % 64));
        if bits[w].load(Ordering::Relaxed) & bit == 0 {
            bits[w].fetch_or(bit, Ordering::AcqRel);
        }
    }

    /// Publishes the pending invalidation `seq` of `(lane, slot)`, after the zero store to its
    /// header word. The owner stores its own tokens; a helper only fills an empty token (a
    /// non-zero token of the same slot covers the same header line).
    ///
    /// `mask`: the Bloom mask of the log's lines (`u64::MAX` if unknown), stored before the
    /// token when it differs from the region's last one (a helper's `u64::MAX` only ever
    /// widens it).
    #[inline(always)]
    fn publish_token(&self, lane: u32, slot: u32, seq: u64, owner: bool, mask: u64) {
        let st = &self.lanes[lane as usize];
        let t = &st.pending[slot as usize];
        let m = &st.pending_mask[slot as usize];
        if m.load(Ordering::Relaxed) != mask {
            // Release: a reader that sees this mask also sees this log's commit (its drain #1,
            // which made its header replace the region's older log, came first).
            m.store(mask, Ordering::Release);
        }
        // Release: the zero store (and the mask) happen-before any load that sees the token.
        if owner {
            t.store(seq, Ordering::Release);
        } else {
            let _ = t.compare_exchange(0, seq, Ordering::AcqRel, Ordering::Relaxed);
        }
        Shared::set_bit(&self.summary, lane);
    }

    /// Flushes the header line of every log region (except `skip`, `(lane, slot)`: the one
    /// the caller overwrites) with a pending invalidation whose log may share a line with the
    /// caller's (its mask meets `filter`; `u64::MAX`: every one) and records
    /// `(lane, slot, token)` in `covered`, for [`Shared::clear_covered`] after the drain.
    #[inline(always)]
    fn flush_pending(
        &self,
        pool: &Pool,
        ctx: &mut FlushContext,
        skip: Option<(u32, u32)>,
        filter: u64,
        covered: &mut Vec<(u32, u32, u64)>,
    ) {
        covered.clear();
        for lane in lanes_in(&self.summary) {
            let st = &self.lanes[lane as usize];
            for slot in 0..LOG_SLOTS {
                // A log sharing a line with the caller's happened before the caller's commit
                // (its caller owned that line first), and so did the store of its mask (before
                // its token): the mask read here is that log's or a newer one's of the region
                // (whose header replaced it durably). A log sharing no line needs no flush here
                // (§6.3): whichever later log shares a line with it flushes it.
                if filter != u64::MAX
                    && st.pending_mask[slot as usize].load(Ordering::Acquire) & filter == 0
                {
                    continue;
                }
                // Acquire: the invalidation store happens-before the token store, so the line
                // flushed below holds the zero or something later.
                let token = st.pending[slot as usize].load(Ordering::Acquire);
                if token != 0 && Some((lane, slot)) != skip {
                    covered.push((lane, slot, token));
                }
            }
        }
        // Flushed after the scan (the scan is most of the work when there is nothing to flush).
        for &(lane, slot, _) in covered.iter() {
            pool.flush(ctx, self.layout.slot_offset(lane, slot), REDO_HEADER_SIZE);
        }
    }

    /// After a drain that followed [`Shared::flush_pending`]: the invalidations recorded in
    /// `covered` are durable, so remove them from the set, unless a newer one was published
    /// since (the token differs: tokens are unique sequence numbers).
    fn clear_covered(&self, covered: &[(u32, u32, u64)]) {
        for &(lane, slot, token) in covered {
            let _ = self.lanes[lane as usize].pending[slot as usize].compare_exchange(
                token,
                0,
                Ordering::SeqCst,
                Ordering::Relaxed,
            );
        }
    }

    /// Registers as a helper of every other lane whose live record shares a line with
    /// `lines` (sorted; Bloom `mask`), or of every lane with a live record if `lines` is
    /// `None`; flushes those records' lines and returns them in `out`. Lanes not helped are
    /// deregistered at once.
    fn help(
        &self,
        pool: &Pool,
        ctx: &mut FlushContext,
        skip: Option<u32>,
        lines: Option<(&[u64], u64, u64)>,
        out: &mut Vec<Helped>,
    ) {
        out.clear();
        // Whether a commit (`lines`: its sorted lines, Bloom mask and sequence number) helps
        // `log`: if they share a line (needed, §6.3), or if the log is idle — older than
        // IDLE_HELP_AGE commits of the pool — and the masks met (not needed, but resolving
        // it once saves every later commit whose mask meets it a snapshot of the record: an
        // idle lane's live log, e.g. of a thread that stopped committing, stays live until
        // someone helps it). Any live log may be helped: sync_invalidations helps them all.
        let wanted = |log: &LiveLog| {
            lines.map_or(true, |(mine, _, seq)| {
                live::overlap(mine, &log.lines) || seq.saturating_sub(log.seq) >= IDLE_HELP_AGE
            })
        };
        for lane in lanes_in(&self.live_summary) {
            if Some(lane) == skip {
                continue;
            }
            let st = &self.lanes[lane as usize];
            let m = st.mask.load(Ordering::Acquire);
            if m == 0 || lines.is_some_and(|(_, mask, _)| m & mask == 0) || st.current_resolved() {
                continue;
            }
            // A Bloom hit: compare the lines before registering (a locked instruction). A
            // record read here that shares no line with ours is a log we need not help, or a
            // newer one (then the older was resolved, its token published before this record,
            // which the sequence lock's acquire makes visible to our 1d); no record or a
            // resolved one, likewise (docs/REDO.md §6.3).
            if lines.is_some() && !st.live().is_some_and(|log| wanted(&log)) {
                continue;
            }
            // SeqCst, before reading the record: the owner's SeqCst load of `helpers` before
            // it writes a slot sees this registration, or this read sees the owner's newer
            // record (live.rs, LaneState::publish).
            st.helpers.fetch_add(1, Ordering::SeqCst);
            let keep = st.live().filter(|log| wanted(log));
            match keep {
                Some(log) => out.push(Helped { lane, log }),
                None => {
                    st.helpers.fetch_sub(1, Ordering::SeqCst);
                }
            }
        }
        // Flushed after every locked instruction above: a locked instruction waits for the
        // write-backs in flight (REDO.md §8).
        for h in out.iter() {
            pool.flush_lines(ctx, &h.log.lines);
        }
    }

    /// Whether another lane than `skip` has a live record whose Bloom mask meets `mask`
    /// (so [`Shared::help`] may have something to do).
    #[inline]
    fn may_help(&self, skip: u32, mask: u64) -> bool {
        lanes_in(&self.live_summary).any(|lane| {
            let st = &self.lanes[lane as usize];
            lane != skip && st.mask.load(Ordering::Acquire) & mask != 0 && !st.current_resolved()
        })
    }

    /// The drain after [`Shared::help`] failed (the pool is poisoned): deregister without
    /// invalidating anything.
    fn abandon_help(&self, helped: &mut Vec<Helped>) {
        for h in helped.drain(..) {
            self.lanes[h.lane as usize]
                .helpers
                .fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// After the drain that followed [`Shared::help`]: the helped logs' values are durable;
    /// invalidate each (compare-exchange of its header word: it may have been invalidated by
    /// its owner already), publish the token, and deregister.
    fn finish_help(&self, pool: &Pool, helped: &mut Vec<Helped>) {
        for h in helped.drain(..) {
            let st = &self.lanes[h.lane as usize];
            let off = self.layout.slot_offset(h.lane, h.log.slot);
            // SAFETY: the slot's header word, inside the pool; while we are registered the
            // owner does not write either of its slots (it waits for `helpers == 0`), and its
            // own invalidation store also writes 0.
            let _ = unsafe { cas_word(pool, off, h.log.header_word, 0) };
            // The token, even if the compare-exchange found 0 (the only other value the word
            // can hold while we are registered: its owner's invalidation): the owner may not
            // have published its token yet, and a later commit of ours that invalidates our
            // own log (which shares a line with this one) must find it (docs/REDO.md §6.3).
            // A helper only fills an empty token with the same `seq`, and widens the mask.
            self.publish_token(h.lane, h.log.slot, h.log.seq, false, u64::MAX);
            st.resolved.fetch_max(h.log.seq, Ordering::AcqRel);
            st.helpers.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// The redo logs of a pool: the volatile state shared by its lanes (sequence counter,
/// pending-invalidation set, which lanes are handed out). Cheap to clone.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use pmstore_alloc::pool::{CreateOptions, Pool, MIN_POOL_SIZE};
/// use pmstore_alloc::redo::{RedoEntry, RedoLogs};
///
/// let (mut pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
/// let (logs, _) = RedoLogs::recover(&mut pool)?;
/// # logs.set_deferred_apply(true); // as the simulated domain by default (whatever PMSTORE_DEFER_APPLY says)
/// let other = logs.clone(); // shares the sequence counter and the lanes
/// let mut lane = other.lane(3).unwrap();
/// assert!(logs.lane(3).is_none()); // handed out
/// let mut ctx = pool.flush_context();
/// let root = pool.geometry().root_offset;
/// // SAFETY: this thread owns the root area; one RedoLogs per pool (clones are the same one).
/// unsafe { lane.commit(&pool, &mut ctx, &[RedoEntry::new(root, 1)])? };
/// assert_eq!(logs.next_seq(), 2);
/// # Ok(())
/// # }
/// ```
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
impl Found {
    /// Bytes of its slot stream in its extension.
    fn ext_bytes(&self) -> u64 {
        self.ext.map_or(0, |(a, b)| b - a)
    }
}

struct Found {
    lane: u32,
    slot: u32,
    seq: u64,
    /// Its slot stream (in-lane slots, then the extension's).
    body: Vec<u8>,
    /// Its extension `[start, end)`, if any.
    ext: Option<(u64, u64)>,
    entries: Parsed,
}

/// Bytes of the extension read per `Pool::read` while checking a checksum, so that a torn
/// header claiming a large extension costs no memory.
const CRC_CHUNK: usize = 64 << 10;

/// What recovery finds in one lane.
enum Read {
    Empty,
    Invalid,
    Valid(Found),
}

/// Reads and classifies lane `lane`'s log (`docs/REDO.md` §2.3) from `pool`, reading only the
/// slots the header claims. `scratch` is reused between lanes. Counts extensions read.
fn read_log(
    pool: &Pool,
    lane: u32,
    slot: u32,
    layout: &RedoLayout,
    scratch: &mut Vec<u8>,
    extensions_read: &mut usize,
) -> Result<Read> {
    let off = layout.slot_offset(lane, slot);
    let mut hb = [0u8; REDO_HEADER_SIZE as usize];
    // SAFETY: the caller holds the only reference to the pool (`&mut Pool` in `recover`), so
    // no safe access runs concurrently, and every unsafe accessor's contract makes its caller
    // rule out races with recovery. (The same holds for every read below.)
    unsafe { pool.read(off, &mut hb) };
    let header: RedoHeader = bytemuck::pod_read_unaligned(&hb);
    if header.word() == 0 {
        return Ok(Read::Empty);
    }
    let x = if slot == 0 {
        extent_slot0(&header, layout)
    } else {
        extent(&header, layout)
    };
    let Ok(x) = x else {
        return Ok(Read::Invalid);
    };
    // The in-lane slots (bounded by the lane), then the extension in bounded chunks: the
    // checksum first, so that an invalid header allocates nothing more.
    scratch.resize(x.lane_bytes(), 0);
    // SAFETY: as above; inside the lane (in_lane <= capacity).
    unsafe { pool.read(off + REDO_HEADER_SIZE, scratch) };
    let mut crc = crc32c::crc32c_append(header.crc_seed(), scratch);
    if x.ext_len != 0 {
        *extensions_read += 1;
        let mut buf = vec![0u8; CRC_CHUNK.min(x.ext_len as usize)];
        let mut at = x.ext;
        let end = x.ext + x.ext_len; // inside the pool: checked by `extent`
        while at < end {
            let n = buf.len().min((end - at) as usize);
            // SAFETY: as above; inside the pool.
            unsafe { pool.read(at, &mut buf[..n]) };
            crc = crc32c::crc32c_append(crc, &buf[..n]);
            at += n as u64;
        }
    }
    if crc != header.checksum {
        return Ok(Read::Invalid);
    }
    check_header(&header, &x, lane, layout)?;
    let mut body = Vec::with_capacity(x.lane_bytes() + x.ext_len as usize);
    body.extend_from_slice(scratch);
    if x.ext_len != 0 {
        body.resize(x.lane_bytes() + x.ext_len as usize, 0);
        // SAFETY: as above; inside the pool. (Read again: the bytes the checksum covered, as
        // nothing else accesses the pool.)
        unsafe { pool.read(x.ext, &mut body[x.lane_bytes()..]) };
    }
    let entries = parse(&body, &header, &x, lane, layout)?;
    Ok(Read::Valid(Found {
        lane,
        slot,
        seq: header.seq,
        body,
        ext: (x.ext_len != 0).then_some((x.ext, x.ext + x.ext_len)),
        entries,
    }))
}

/// The parts of `[start, end)` outside every interval of `holes` (sorted, disjoint).
fn outside(start: u64, end: u64, holes: &[(u64, u64)], mut f: impl FnMut(u64, u64)) {
    let mut at = start;
    for &(s, e) in holes {
        if e <= at {
            continue;
        }
        if s >= end {
            break;
        }
        if s > at {
            f(at, s);
        }
        at = at.max(e);
        if at >= end {
            return;
        }
    }
    if at < end {
        f(at, end);
    }
}

/// Recovering the logs, claiming lanes, and the pending-invalidation set.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use pmstore_alloc::pool::{CreateOptions, Pool, MIN_POOL_SIZE};
/// use pmstore_alloc::redo::{RedoEntry, RedoLogs};
///
/// let (mut pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
/// let (logs, _) = RedoLogs::recover(&mut pool)?;
/// # logs.set_deferred_apply(true); // as the simulated domain by default (whatever PMSTORE_DEFER_APPLY says)
/// let mut ctx = pool.flush_context();
/// let root = pool.geometry().root_offset;
/// {
///     let mut lane = logs.lane(0).unwrap();
///     // SAFETY: this thread owns the root area; one RedoLogs per pool.
///     unsafe { lane.commit(&pool, &mut ctx, &[RedoEntry::new(root, 1)])? };
/// }
/// assert_eq!((logs.live_logs(), logs.pending_invalidations()), (1, 0)); // applied, not flushed
/// logs.sync_invalidations(&pool, &mut ctx)?; // before writing `root` by other means
/// assert_eq!((logs.live_logs(), logs.pending_invalidations()), (0, 0));
/// # Ok(())
/// # }
/// ```
impl RedoLogs {
    /// Recovers the redo logs of `pool` and returns their volatile state. Run it at open,
    /// before anything else reads or writes the pool's lanes or heap.
    ///
    /// Reads every lane's log (and its extension, if any); checks every valid one
    /// ([`decode_log_ext`]); replays the valid logs in increasing sequence order (storing each
    /// value, except the bytes inside the extension of a valid log with a higher sequence
    /// number, and flushing each touched line); drains; clears the (checksum, count) word of
    /// each valid log in increasing sequence order, with a drain after each; clears every
    /// invalid non-empty log; drains. A crash anywhere in here is recovered by the next
    /// recovery, with the same result. The sequence counter restarts at 1 + the highest
    /// sequence number found (or 1). Memory: the valid logs (a log is bounded by the pool).
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
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_alloc::pool::{CreateOptions, OpenOptions, Pool, MIN_POOL_SIZE};
    /// use pmstore_alloc::redo::{RedoEntry, RedoLogs};
    ///
    /// let (mut pool, sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// let (logs, _) = RedoLogs::recover(&mut pool)?;
    /// # logs.set_deferred_apply(true); // as the simulated domain by default (whatever PMSTORE_DEFER_APPLY says)
    /// let root = pool.geometry().root_offset;
    /// let mut ctx = pool.flush_context();
    /// // Crash after the commit point (the first drain), before the values are durable: at
    /// // the next commit's drain, which would have made them durable.
    /// let image = std::sync::Arc::new(std::sync::Mutex::new(None));
    /// let slot = image.clone();
    /// sim.set_crash_hook(move |cp| {
    ///     if cp.drain == 1 {
    ///         *slot.lock().unwrap() = Some(cp.media.to_vec());
    ///     }
    /// });
    /// let mut lane = logs.lane(0).unwrap();
    /// // SAFETY: this thread owns the root area; one RedoLogs per pool.
    /// unsafe { lane.commit(&pool, &mut ctx, &[RedoEntry::new(root, 99)])? };
    /// // SAFETY: as above.
    /// unsafe { lane.commit(&pool, &mut ctx, &[RedoEntry::new(root + 64, 1)])? };
    /// sim.clear_crash_hook();
    /// let image = image.lock().unwrap().take().unwrap();
    /// let (mut crashed, _) = Pool::open_simulated(&image, &OpenOptions::new("doc"))?;
    /// let (logs, report) = RedoLogs::recover(&mut crashed)?;
    /// assert_eq!((report.logs_replayed, report.max_seq), (1, 1));
    /// assert_eq!(logs.next_seq(), 2);
    /// let mut v = [0u8; 8];
    /// // SAFETY: nothing else uses `crashed`.
    /// unsafe { crashed.read(root, &mut v) };
    /// assert_eq!(u64::from_ne_bytes(v), 99); // the commit survived
    /// # Ok(())
    /// # }
    /// ```
    pub fn recover(pool: &mut Pool) -> Result<(RedoLogs, RecoveryReport)> {
        let pool: &Pool = pool;
        let layout = RedoLayout::of(pool)?;
        let mut found: Vec<Found> = Vec::new();
        let mut invalid: Vec<(u32, u32)> = Vec::new();
        let mut scratch = Vec::new();
        let mut extensions_read = 0;
        for lane in 0..layout.lane_count {
            for slot in 0..LOG_SLOTS {
                match read_log(
                    pool,
                    lane,
                    slot,
                    &layout,
                    &mut scratch,
                    &mut extensions_read,
                )? {
                    Read::Empty => {}
                    Read::Invalid => invalid.push((lane, slot)),
                    Read::Valid(f) => {
                        // A slot-0 log of the single-region layout (older pools) runs over
                        // slot 1: slot 1 is part of it, not a log.
                        let whole_lane = slot == 0
                            && f.body.len() as u64 + REDO_HEADER_SIZE - f.ext_bytes()
                                > layout.log_size();
                        found.push(f);
                        if whole_lane {
                            // Its slots run over slot 1: once it is cleared they are leftovers
                            // that could look like a header; clear that word after it (the
                            // invalid logs are cleared after the valid ones, §5).
                            let mut w = [0u8; 8];
                            // SAFETY: as in `read_log`: recovery has the pool to itself.
                            unsafe { pool.read(layout.slot_offset(lane, 1), &mut w) };
                            if w != [0; 8] {
                                invalid.push((lane, 1));
                            }
                            break;
                        }
                    }
                }
            }
        }
        drop(scratch);
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
        let mut report = RecoveryReport {
            logs_replayed: found.len(),
            entries_applied: found.iter().map(|f| f.entries.words.len()).sum(),
            ranges_applied: found.iter().map(|f| f.entries.ranges.len()).sum(),
            range_bytes_applied: found
                .iter()
                .flat_map(|f| &f.entries.ranges)
                .map(|r| r.2 as u64)
                .sum(),
            invalid_cleared: invalid.len(),
            max_seq,
            extensions_read,
            bytes_skipped: 0,
        };
        if !found.is_empty() || !invalid.is_empty() {
            if pool.is_read_only() {
                return Err(AllocError::ReadOnly {
                    pending_lanes: found.len() + invalid.len(),
                });
            }
            let mut ctx = pool.flush_context();
            let mut lines = Vec::new();
            // Every log was read (and its extension) before anything is stored: replaying a
            // log may overwrite another valid log's extension (docs/REDO.md §6.6).
            let mut holes: Vec<(u64, u64)> = Vec::new();
            for (i, f) in found.iter().enumerate() {
                // The extensions of the later valid logs: free space from this log's point of
                // view, where its stores are dead; skipping them keeps those logs intact on
                // the media until they are cleared (docs/REDO.md §6.6).
                holes.clear();
                holes.extend(found[i + 1..].iter().filter_map(|g| g.ext));
                holes.sort_unstable();
                holes.dedup_by(|b, a| {
                    // Merge overlapping intervals (`a` precedes `b`).
                    if b.0 <= a.1 {
                        a.1 = a.1.max(b.1);
                        true
                    } else {
                        false
                    }
                });
                for e in &f.entries.words {
                    if holes
                        .iter()
                        .any(|&(s, end)| s <= e.target && e.target < end)
                    {
                        report.bytes_skipped += 8;
                        continue;
                    }
                    // SAFETY: exclusive pool (as in `read_log`); the target was checked by
                    // `parse`.
                    unsafe { store_word(pool, e.target, e.value) };
                    lines.push(e.target & !(CACHE_LINE - 1));
                }
                for &(target, start, len) in &f.entries.ranges {
                    let data = &f.body[start..start + len];
                    let mut stored = 0;
                    outside(target, target + len as u64, &holes, |a, b| {
                        let piece = &data[(a - target) as usize..(b - target) as usize];
                        // SAFETY: exclusive pool (as above); inside a range checked by `parse`.
                        unsafe { pool.copy_nodrain(&mut ctx, a, piece) };
                        stored += b - a;
                    });
                    report.bytes_skipped += len as u64 - stored;
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
                let off = layout.slot_offset(f.lane, f.slot);
                // SAFETY: exclusive pool (as above); the header word is inside the pool.
                unsafe { store_word(pool, off, 0) };
                pool.flush(&mut ctx, off, 8);
                pool.drain(&mut ctx)?;
            }
            // Invalid logs are never replayed: clearing them needs no order. (They are cleared
            // so that a later log of the lane with the same first entries cannot make them
            // valid again: docs/REDO.md §5.)
            for &(lane, slot) in &invalid {
                let off = layout.slot_offset(lane, slot);
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
                lanes: (0..n).map(|_| CachePadded::new(LaneState::new())).collect(),
                summary: (0..n.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
                live_summary: (0..n.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
                claimed: (0..n).map(|_| AtomicBool::new(false)).collect(),
                defer: Policy::new(DeferPolicy::for_mode(pool.persistence())),
                live_lanes: CachePadded::new(LiveCount::new()),
            }),
        };
        Ok((logs, report))
    }

    /// Claims lane `lane`'s log: `None` if it is already handed out (until that [`LaneLog`]
    /// is dropped).
    ///
    /// # Panics
    /// If `lane >= lane_count`.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_alloc::pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    /// use pmstore_alloc::redo::RedoLogs;
    ///
    /// let (mut pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// let (logs, _) = RedoLogs::recover(&mut pool)?;
    /// # logs.set_deferred_apply(true); // as the simulated domain by default (whatever PMSTORE_DEFER_APPLY says)
    /// let lane = logs.lane(5).unwrap();
    /// assert!(logs.lane(5).is_none());
    /// drop(lane);
    /// assert!(logs.lane(5).is_some()); // released on drop
    /// # Ok(())
    /// # }
    /// ```
    pub fn lane(&self, lane: u32) -> Option<LaneLog> {
        let offset = self.shared.layout.log_offset(lane);
        self.shared.claimed[lane as usize]
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .ok()?;
        Some(LaneLog {
            shared: Arc::clone(&self.shared),
            lane,
            offset,
            scratch: Scratch::default(),
        })
    }

    /// Number of lanes.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_alloc::pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    /// use pmstore_alloc::redo::RedoLogs;
    ///
    /// let opts = CreateOptions::new("doc", MIN_POOL_SIZE).lanes(8, 4096);
    /// let (mut pool, _sim) = Pool::create_simulated(&opts)?;
    /// let (logs, _) = RedoLogs::recover(&mut pool)?;
    /// # logs.set_deferred_apply(true); // as the simulated domain by default (whatever PMSTORE_DEFER_APPLY says)
    /// assert_eq!(logs.lane_count(), 8);
    /// # Ok(())
    /// # }
    /// ```
    pub fn lane_count(&self) -> u32 {
        self.shared.layout.lane_count
    }

    /// Where the logs lie and which targets they accept.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_alloc::pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    /// use pmstore_alloc::redo::{RedoLogs, REDO_CAPACITY};
    ///
    /// let opts = CreateOptions::new("doc", MIN_POOL_SIZE).lanes(8, 4096);
    /// let (mut pool, _sim) = Pool::create_simulated(&opts)?;
    /// let (logs, _) = RedoLogs::recover(&mut pool)?;
    /// # logs.set_deferred_apply(true); // as the simulated domain by default (whatever PMSTORE_DEFER_APPLY says)
    /// assert_eq!(logs.layout().capacity(), REDO_CAPACITY);
    /// assert_eq!(logs.layout().log_offset(0), pool.geometry().lanes_offset);
    /// # Ok(())
    /// # }
    /// ```
    pub fn layout(&self) -> &RedoLayout {
        &self.shared.layout
    }

    /// The sequence number the next commit will get.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_alloc::pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    /// use pmstore_alloc::redo::{RedoEntry, RedoLogs};
    ///
    /// let (mut pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// let (logs, _) = RedoLogs::recover(&mut pool)?;
    /// # logs.set_deferred_apply(true); // as the simulated domain by default (whatever PMSTORE_DEFER_APPLY says)
    /// assert_eq!(logs.next_seq(), 1);
    /// let mut lane = logs.lane(0).unwrap();
    /// let mut ctx = pool.flush_context();
    /// let root = pool.geometry().root_offset;
    /// // SAFETY: this thread owns the root area; one RedoLogs per pool.
    /// unsafe { lane.commit(&pool, &mut ctx, &[])? }; // empty: does nothing
    /// assert_eq!(logs.next_seq(), 1);
    /// unsafe { lane.commit(&pool, &mut ctx, &[RedoEntry::new(root, 1)])? };
    /// assert_eq!(logs.next_seq(), 2);
    /// # Ok(())
    /// # }
    /// ```
    pub fn next_seq(&self) -> u64 {
        self.shared.seq.load(Ordering::Relaxed)
    }

    /// Number of log regions (two per lane) whose last invalidation is not yet known to be
    /// durable.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_alloc::pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    /// use pmstore_alloc::redo::{RedoEntry, RedoLogs};
    ///
    /// let (mut pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// let (logs, _) = RedoLogs::recover(&mut pool)?;
    /// # logs.set_deferred_apply(true); // as the simulated domain by default (whatever PMSTORE_DEFER_APPLY says)
    /// let mut ctx = pool.flush_context();
    /// let root = pool.geometry().root_offset;
    /// let (mut a, mut b) = (logs.lane(0).unwrap(), logs.lane(1).unwrap());
    /// // SAFETY: this thread owns the root area; one RedoLogs per pool.
    /// unsafe { a.commit(&pool, &mut ctx, &[RedoEntry::new(root, 1)])? };
    /// assert_eq!(logs.pending_invalidations(), 0); // the log is live (applied, not flushed)
    /// // SAFETY: as above.
    /// unsafe { a.commit(&pool, &mut ctx, &[RedoEntry::new(root + 64, 2)])? };
    /// assert_eq!(logs.pending_invalidations(), 1); // the first one invalidated, not flushed
    /// // SAFETY: as above.
    /// unsafe { b.commit(&pool, &mut ctx, &[RedoEntry::new(root + 128, 3)])? };
    /// assert_eq!(logs.pending_invalidations(), 0); // b's drain made it durable
    /// # Ok(())
    /// # }
    /// ```
    pub fn pending_invalidations(&self) -> usize {
        self.shared
            .lanes
            .iter()
            .flat_map(|l| &l.pending)
            .filter(|p| p.load(Ordering::Relaxed) != 0)
            .count()
    }

    /// The target lines (pool offsets) of every live log — committed, its values applied
    /// with ordinary stores but not yet flushed (the lane's next commit, a conflicting commit
    /// of another lane, or [`RedoLogs::sync_invalidations`] flushes them; `docs/REDO.md` §4).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_alloc::pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    /// use pmstore_alloc::redo::{RedoEntry, RedoLogs};
    ///
    /// let (mut pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// let (logs, _) = RedoLogs::recover(&mut pool)?;
    /// # logs.set_deferred_apply(true); // as the simulated domain by default (whatever PMSTORE_DEFER_APPLY says)
    /// let mut ctx = pool.flush_context();
    /// let root = pool.geometry().root_offset;
    /// let mut lane = logs.lane(0).unwrap();
    /// // SAFETY: this thread owns the root area; one RedoLogs per pool.
    /// unsafe { lane.commit(&pool, &mut ctx, &[RedoEntry::new(root, 1)])? };
    /// assert_eq!(logs.live_lines(), vec![root]); // the root area's first line
    /// logs.sync_invalidations(&pool, &mut ctx)?;
    /// assert!(logs.live_lines().is_empty());
    /// # Ok(())
    /// # }
    /// ```
    pub fn live_lines(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .shared
            .lanes
            .iter()
            .filter_map(|l| l.live())
            .flat_map(|log| log.lines)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Whether some small commits defer making their values durable to the lane's next commit
    /// (one drain per commit instead of two; `docs/REDO.md` §4): the policy is not
    /// [`DeferPolicy::Never`] (see [`RedoLogs::defer_policy`]).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_alloc::pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    /// use pmstore_alloc::redo::{RedoEntry, RedoLogs};
    ///
    /// let (mut pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// let (logs, _) = RedoLogs::recover(&mut pool)?;
    /// # logs.set_deferred_apply(true); // as the simulated domain by default (whatever PMSTORE_DEFER_APPLY says)
    /// logs.set_deferred_apply(false);
    /// assert!(!logs.deferred_apply());
    /// let mut ctx = pool.flush_context();
    /// let root = pool.geometry().root_offset;
    /// let mut lane = logs.lane(0).unwrap();
    /// // SAFETY: this thread owns the root area; one RedoLogs per pool.
    /// let stats = unsafe { lane.commit(&pool, &mut ctx, &[RedoEntry::new(root, 1)])? };
    /// assert_eq!((stats.drains, logs.live_logs()), (2, 0)); // values durable on return
    /// # Ok(())
    /// # }
    /// ```
    pub fn deferred_apply(&self) -> bool {
        self.defer_policy() != DeferPolicy::Never
    }

    /// Which commits defer their apply: by default [`DeferPolicy::Always`] in msync mode and
    /// in the simulated domain, [`DeferPolicy::Words`] with cache flushes;
    /// `PMSTORE_DEFER_APPLY=1|0|words` at recovery overrides the default
    /// ([`DeferPolicy::for_mode`]).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_alloc::pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    /// use pmstore_alloc::redo::{DeferPolicy, RedoLogs};
    ///
    /// let (mut pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// let (logs, _) = RedoLogs::recover(&mut pool)?;
    /// assert_eq!(logs.defer_policy(), DeferPolicy::for_mode(pool.persistence()));
    /// # Ok(())
    /// # }
    /// ```
    pub fn defer_policy(&self) -> DeferPolicy {
        self.shared.defer.get()
    }

    /// Sets which commits defer their apply, for the commits that start afterwards
    /// ([`RedoLogs::defer_policy`]). Live logs left by earlier commits are still made durable
    /// by their lane's next commit (or a helper, or [`RedoLogs::sync_invalidations`]).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_alloc::pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    /// use pmstore_alloc::redo::{DeferPolicy, RedoLogs};
    ///
    /// let (mut pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// let (logs, _) = RedoLogs::recover(&mut pool)?;
    /// # logs.set_deferred_apply(true); // as the simulated domain by default (whatever PMSTORE_DEFER_APPLY says)
    /// logs.set_defer_policy(DeferPolicy::Words);
    /// assert_eq!(logs.defer_policy(), DeferPolicy::Words);
    /// assert!(logs.deferred_apply());
    /// # Ok(())
    /// # }
    /// ```
    pub fn set_defer_policy(&self, policy: DeferPolicy) {
        self.shared.defer.set(policy);
    }

    /// Turns deferred apply on ([`DeferPolicy::Always`]) or off ([`DeferPolicy::Never`]) for
    /// the commits that start afterwards ([`RedoLogs::deferred_apply`]). Live logs left by earlier commits are still made
    /// durable by their lane's next commit (or a helper, or
    /// [`RedoLogs::sync_invalidations`]).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_alloc::pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    /// use pmstore_alloc::redo::RedoLogs;
    ///
    /// let (mut pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// let (logs, _) = RedoLogs::recover(&mut pool)?;
    /// # logs.set_deferred_apply(true); // as the simulated domain by default (whatever PMSTORE_DEFER_APPLY says)
    /// assert!(logs.deferred_apply()); // the simulated domain defers
    /// logs.set_deferred_apply(false);
    /// assert!(!logs.deferred_apply());
    /// # Ok(())
    /// # }
    /// ```
    pub fn set_deferred_apply(&self, on: bool) {
        self.set_defer_policy(if on {
            DeferPolicy::Always
        } else {
            DeferPolicy::Never
        });
    }

    /// Number of lanes with a live log (see [`RedoLogs::live_lines`]).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_alloc::pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    /// use pmstore_alloc::redo::{RedoEntry, RedoLogs};
    ///
    /// let (mut pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// let (logs, _) = RedoLogs::recover(&mut pool)?;
    /// # logs.set_deferred_apply(true); // as the simulated domain by default (whatever PMSTORE_DEFER_APPLY says)
    /// let mut ctx = pool.flush_context();
    /// let root = pool.geometry().root_offset;
    /// let mut lane = logs.lane(1).unwrap();
    /// // SAFETY: this thread owns the root area; one RedoLogs per pool.
    /// unsafe { lane.commit(&pool, &mut ctx, &[RedoEntry::new(root, 1)])? };
    /// assert_eq!(logs.live_logs(), 1);
    /// # Ok(())
    /// # }
    /// ```
    pub fn live_logs(&self) -> usize {
        self.shared
            .lanes
            .iter()
            .filter(|l| l.live().is_some())
            .count()
    }

    /// A barrier: makes every live log's values durable and invalidates it, then makes every
    /// pending invalidation durable and empties the set (two drains through `ctx`, none if
    /// there is nothing to do). Afterwards no log of a commit that returned before this call
    /// can be replayed. Needed before a word that a redo log targeted is modified by other
    /// means than a redo log (see `docs/REDO.md` §4), and before closing a pool so that it
    /// reopens without replaying anything. Returns the number of header lines flushed.
    ///
    /// # Errors
    /// [`AllocError::Pool`] if the drain fails.
    ///
    /// # Panics
    /// If `pool` is not the pool these logs were recovered from.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_alloc::pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    /// use pmstore_alloc::redo::{RedoEntry, RedoLogs};
    ///
    /// let (mut pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// let (logs, _) = RedoLogs::recover(&mut pool)?;
    /// # logs.set_deferred_apply(true); // as the simulated domain by default (whatever PMSTORE_DEFER_APPLY says)
    /// let mut ctx = pool.flush_context();
    /// let root = pool.geometry().root_offset;
    /// let mut lane = logs.lane(0).unwrap();
    /// // SAFETY: this thread owns the root area; one RedoLogs per pool.
    /// unsafe { lane.commit(&pool, &mut ctx, &[RedoEntry::new(root, 1)])? };
    /// assert_eq!(logs.sync_invalidations(&pool, &mut ctx)?, 1); // one header line flushed
    /// assert_eq!(logs.sync_invalidations(&pool, &mut ctx)?, 0); // nothing left
    /// // Now `root` may be written by other means than a redo log.
    /// // SAFETY: this thread owns the root area.
    /// unsafe { pool.write(root, &2u64.to_ne_bytes()) };
    /// # Ok(())
    /// # }
    /// ```
    pub fn sync_invalidations(&self, pool: &Pool, ctx: &mut FlushContext) -> Result<usize> {
        let sh = &*self.shared;
        sh.check_pool(pool);
        let mut helped = Vec::new();
        let mut covered = Vec::new();
        sh.help(pool, ctx, None, None, &mut helped);
        if !helped.is_empty() {
            // The invalidations already stored (older logs') must be durable before the
            // helped logs' ones can be (§6.3): flush them with the helped logs' values.
            sh.flush_pending(pool, ctx, None, u64::MAX, &mut covered);
            let r = pool.drain(ctx);
            if r.is_err() {
                sh.abandon_help(&mut helped);
            }
            r?;
            sh.clear_covered(&covered);
            sh.finish_help(pool, &mut helped);
        }
        let first = covered.len();
        sh.flush_pending(pool, ctx, None, u64::MAX, &mut covered);
        pool.drain(ctx)?;
        sh.clear_covered(&covered);
        Ok(first + covered.len())
    }
}

/// The exclusive handle on one lane's redo log (from [`RedoLogs::lane`]); released on drop.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use pmstore_alloc::pool::{CreateOptions, Pool, MIN_POOL_SIZE};
/// use pmstore_alloc::redo::{RedoEntry, RedoLogs};
///
/// let (mut pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
/// let (logs, _) = RedoLogs::recover(&mut pool)?;
/// # logs.set_deferred_apply(true); // as the simulated domain by default (whatever PMSTORE_DEFER_APPLY says)
/// let root = pool.geometry().root_offset;
/// let mut lane = logs.lane(0).unwrap();
/// let mut ctx = pool.flush_context();
/// // SAFETY: this thread owns the root area; one RedoLogs per pool.
/// unsafe { lane.commit(&pool, &mut ctx, &[RedoEntry::new(root, 1), RedoEntry::new(root, 2)])? };
/// let mut v = [0u8; 8];
/// // SAFETY: as above.
/// unsafe { pool.read(root, &mut v) };
/// assert_eq!(u64::from_ne_bytes(v), 2); // of duplicate targets the last wins
/// # Ok(())
/// # }
/// ```
pub struct LaneLog {
    shared: Arc<Shared>,
    lane: u32,
    offset: u64,
    /// Scratch vectors reused by every commit of the lane.
    scratch: Scratch,
}

/// A lane's scratch vectors, kept between commits so that a commit allocates nothing.
#[derive(Default)]
struct Scratch {
    /// `(lane, slot, token)` of the pending invalidations flushed by the current commit.
    covered: Vec<(u32, u32, u64)>,
    /// The other lanes' live logs the current commit helps.
    helped: Vec<Helped>,
    /// Target lines of the current commit.
    lines: Vec<u64>,
    /// Target lines written with ordinary stores (flushed if not deferred).
    plain: Vec<u64>,
    /// The staged log (small logs) or the staging buffer of the slot writer (bounded: about
    /// [`STAGE`] bytes).
    stage: Vec<u8>,
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

/// Committing through a lane.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use pmstore_alloc::pool::{CreateOptions, Pool, MIN_POOL_SIZE};
/// use pmstore_alloc::redo::{RedoEntry, RedoLogs, RedoRange};
///
/// let (mut pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
/// let (logs, _) = RedoLogs::recover(&mut pool)?;
/// # logs.set_deferred_apply(true); // as the simulated domain by default (whatever PMSTORE_DEFER_APPLY says)
/// let root = pool.geometry().root_offset;
/// let mut lane = logs.lane(0).unwrap();
/// let mut ctx = pool.flush_context();
/// let words = [RedoEntry::new(root, 1)];
/// let ranges = [RedoRange { target: root + 64, data: &[5; 64] }];
/// // SAFETY: this thread owns the root area; one RedoLogs per pool.
/// let stats = unsafe { lane.commit_ops(&pool, &mut ctx, &words, &ranges)? };
/// assert_eq!((stats.entries, stats.ranges, stats.slots), (1, 1, 1 + 5));
/// # Ok(())
/// # }
/// ```
impl LaneLog {
    /// The lane's index.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_alloc::pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    /// use pmstore_alloc::redo::RedoLogs;
    ///
    /// let (mut pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// let (logs, _) = RedoLogs::recover(&mut pool)?;
    /// # logs.set_deferred_apply(true); // as the simulated domain by default (whatever PMSTORE_DEFER_APPLY says)
    /// assert_eq!(logs.lane(7).unwrap().lane(), 7);
    /// # Ok(())
    /// # }
    /// ```
    pub fn lane(&self) -> u32 {
        self.lane
    }

    /// Pool offset of the lane's log region.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_alloc::pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    /// use pmstore_alloc::redo::RedoLogs;
    ///
    /// let (mut pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// let (logs, _) = RedoLogs::recover(&mut pool)?;
    /// # logs.set_deferred_apply(true); // as the simulated domain by default (whatever PMSTORE_DEFER_APPLY says)
    /// let lane = logs.lane(2).unwrap();
    /// assert_eq!(lane.offset(), pool.geometry().lane_offset(2));
    /// # Ok(())
    /// # }
    /// ```
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Slots this lane's log holds ([`RedoLayout::capacity`]).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_alloc::pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    /// use pmstore_alloc::redo::RedoLogs;
    ///
    /// let (mut pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// let (logs, _) = RedoLogs::recover(&mut pool)?;
    /// # logs.set_deferred_apply(true); // as the simulated domain by default (whatever PMSTORE_DEFER_APPLY says)
    /// let lane = logs.lane(0).unwrap();
    /// assert_eq!(lane.capacity(), ((8 << 10) - 64) / 16); // half of a default 16 KiB lane
    /// # Ok(())
    /// # }
    /// ```
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
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_alloc::pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    /// use pmstore_alloc::redo::{RedoEntry, RedoLogs};
    /// use pmstore_alloc::{AllocError, TargetError};
    ///
    /// let (mut pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// let (logs, _) = RedoLogs::recover(&mut pool)?;
    /// # logs.set_deferred_apply(true); // as the simulated domain by default (whatever PMSTORE_DEFER_APPLY says)
    /// let root = pool.geometry().root_offset;
    /// let mut lane = logs.lane(0).unwrap();
    /// let mut ctx = pool.flush_context();
    /// // SAFETY: this thread owns the root area; one RedoLogs per pool.
    /// unsafe { lane.commit(&pool, &mut ctx, &[RedoEntry::new(root, 10), RedoEntry::new(root + 8, 20)])? };
    /// let mut v = [0u8; 16];
    /// // SAFETY: as above.
    /// unsafe { pool.read(root, &mut v) };
    /// assert_eq!(v[..8], 10u64.to_ne_bytes());
    /// assert_eq!(v[8..], 20u64.to_ne_bytes());
    /// // A target in the header page is refused before anything is written.
    /// // SAFETY: as above.
    /// let err = unsafe { lane.commit(&pool, &mut ctx, &[RedoEntry::new(root, 11), RedoEntry::new(0, 1)]) };
    /// assert!(matches!(
    ///     err,
    ///     Err(AllocError::InvalidTarget { index: 1, target: 0, reason: TargetError::InHeader })
    /// ));
    /// # Ok(())
    /// # }
    /// ```
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
    /// 1. flush the header lines of other lanes' pending invalidations (without live logs:
    ///    only those of logs that may share a line with this one, `docs/REDO.md` §4 1d);
    /// 2. write the log: its slots (word entries, then range entries with their data) and
    ///    its header, every whole line with non-temporal stores (`docs/REDO.md` §4 step 2);
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
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_alloc::pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    /// use pmstore_alloc::redo::{RedoLogs, RedoRange};
    /// use pmstore_alloc::AllocError;
    ///
    /// let (mut pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// let (logs, _) = RedoLogs::recover(&mut pool)?;
    /// # logs.set_deferred_apply(true); // as the simulated domain by default (whatever PMSTORE_DEFER_APPLY says)
    /// let root = pool.geometry().root_offset;
    /// let mut lane = logs.lane(0).unwrap();
    /// let mut ctx = pool.flush_context();
    /// let before = ctx.counters();
    /// let ranges = [RedoRange { target: root, data: &[1; 512] }];
    /// // SAFETY: this thread owns the root area; one RedoLogs per pool.
    /// unsafe { lane.commit_ops(&pool, &mut ctx, &[], &ranges)? };
    /// assert_eq!((ctx.counters() - before).drains, 1); // one drain: the commit point
    /// // More than the lane holds, and no extension: refused.
    /// let big = vec![0u8; 16 << 10];
    /// let ranges = [RedoRange { target: root, data: &big }];
    /// // SAFETY: as above.
    /// let err = unsafe { lane.commit_ops(&pool, &mut ctx, &[], &ranges) };
    /// assert!(matches!(err, Err(AllocError::LogFull { needed: 1025, capacity: 508 })));
    /// # Ok(())
    /// # }
    /// ```
    pub unsafe fn commit_ops(
        &mut self,
        pool: &Pool,
        ctx: &mut FlushContext,
        entries: &[RedoEntry],
        ranges: &[RedoRange<'_>],
    ) -> Result<CommitStats> {
        // SAFETY: forwarded contract (no extension).
        unsafe { self.commit_ops_ext(pool, ctx, entries, ranges, None) }
    }

    /// [`LaneLog::commit_ops`] for a log of any size: if the slots needed exceed
    /// [`LaneLog::capacity`], the log fills the lane and goes on in the extension `ext`
    /// (`(offset, len)`: a region of the heap's data area the caller owns, e.g. a block it
    /// reserved with `Heap::reserve` and will not publish), which must hold
    /// `16 × (slots − capacity)` bytes ([`RedoLayout::ext_slots`]). A log that fits its lane
    /// does not use `ext`. Still exactly two drains: the extension is written (non-temporal
    /// stores, whole lines) and flushed before drain #1 with the rest of the log
    /// (`docs/REDO.md` §4).
    ///
    /// # Safety
    /// As [`LaneLog::commit_ops`], and: no other thread reads or writes any byte of `ext`
    /// during the call, and no reference to one is live. When this returns (success or
    /// error), the caller may use the extension region again for anything (cancel the
    /// reservation): the log no longer needs it (`docs/REDO.md` §6.6).
    ///
    /// # Errors
    /// As [`LaneLog::commit_ops`], and (nothing written in each case):
    /// * [`AllocError::LogFull`] if the slots needed exceed the lane's capacity and `ext` is
    ///   `None` or too small (`capacity` then counts the lane and `ext`), or exceed
    ///   `u32::MAX`;
    /// * [`AllocError::InvalidExtension`] if the part of `ext` the log needs is not a valid
    ///   extension ([`RedoLayout::check_extension`]);
    /// * [`AllocError::InvalidTarget`] with [`TargetError::InLogExtension`] for a target inside
    ///   that part of `ext`.
    ///
    /// # Panics
    /// As [`LaneLog::commit_ops`].
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_alloc::pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    /// use pmstore_alloc::redo::{slots_needed, RedoLogs, RedoRange};
    ///
    /// let (mut pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// let (logs, _) = RedoLogs::recover(&mut pool)?;
    /// # logs.set_deferred_apply(true); // as the simulated domain by default (whatever PMSTORE_DEFER_APPLY says)
    /// let (area, _) = logs.layout().extension_area();
    /// // Here nothing else uses the heap's data area: take its first 16 KiB as the extension
    /// // (with a `Heap`, reserve a block instead) and store 16 KiB after it.
    /// let ext = (area, 16 << 10);
    /// let target = area + (16 << 10);
    /// let data = vec![7u8; 16 << 10];
    /// let ranges = [RedoRange { target, data: &data }];
    /// let mut lane = logs.lane(0).unwrap();
    /// let need = logs.layout().ext_slots(slots_needed(0, &ranges));
    /// assert_eq!(need, 517); // 1025 slots, 508 in the lane's log region
    /// let mut ctx = pool.flush_context();
    /// // SAFETY: this thread owns `ext` and the target range; one RedoLogs per pool.
    /// let stats = unsafe { lane.commit_ops_ext(&pool, &mut ctx, &[], &ranges, Some(ext))? };
    /// assert_eq!((stats.ext_slots, stats.drains), (517, 2)); // an extension: values made durable
    /// let mut back = vec![0u8; data.len()];
    /// // SAFETY: as above.
    /// unsafe { pool.read(target, &mut back) };
    /// assert_eq!(back, data);
    /// # Ok(())
    /// # }
    /// ```
    pub unsafe fn commit_ops_ext(
        &mut self,
        pool: &Pool,
        ctx: &mut FlushContext,
        entries: &[RedoEntry],
        ranges: &[RedoRange<'_>],
        ext: Option<(u64, u64)>,
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
        let slots = slots_needed(n, ranges);
        let capacity = sh.layout.capacity();
        let ext_slots = sh.layout.ext_slots(slots);
        // The extension part the log uses: [ext_off, ext_off + ext_len).
        let (ext_off, ext_len) = if ext_slots == 0 {
            (0, 0)
        } else {
            let need = ext_slots as u64 * REDO_ENTRY_SIZE;
            let (off, len) = ext.unwrap_or((0, 0));
            if len < need || u32::try_from(slots).is_err() {
                let have = (len / REDO_ENTRY_SIZE).min(u64::from(u32::MAX)) as usize;
                return Err(AllocError::LogFull {
                    needed: slots,
                    capacity: (capacity + have).min(u32::MAX as usize),
                });
            }
            sh.layout.check_extension(off, need).map_err(|reason| {
                AllocError::InvalidExtension {
                    offset: off,
                    len: need,
                    reason,
                }
            })?;
            (off, need)
        };
        let in_ext = |t: u64, len: u64| ext_len != 0 && t < ext_off + ext_len && ext_off < t + len;
        let bad = |index, target, reason| AllocError::InvalidTarget {
            index,
            target,
            reason,
        };
        for (index, e) in entries.iter().enumerate() {
            sh.layout
                .check_target(e.target)
                .map_err(|reason| bad(index, e.target, reason))?;
            if in_ext(e.target, 8) {
                return Err(bad(index, e.target, TargetError::InLogExtension));
            }
        }
        for (i, r) in ranges.iter().enumerate() {
            let len = r.data.len() as u64;
            sh.layout
                .check_range(r.target, len)
                .map_err(|reason| bad(n + i, r.target, reason))?;
            if in_ext(r.target, len) {
                return Err(bad(n + i, r.target, TargetError::InLogExtension));
            }
        }

        let lane = self.lane;
        let me = &*sh.lanes[lane as usize];
        let slot = me.next_slot.load(Ordering::Relaxed) & 1;
        let prev_slot = 1 - slot;
        let off = sh.layout.slot_offset(lane, slot);

        // Whether this commit may defer (the policy: every commit, or those with words), and
        // whether another lane may have a live log to help (1c; our own record, non-empty iff
        // its mask is not 0, is ours alone to change, and so is our part of the count). A live
        // log sharing a line with this commit was counted before this commit started, and a
        // count without it was stored after its invalidation's token was published, which 1d
        // then sees (docs/REDO.md §6.3).
        let defer = sh.defer.get().defers(n);
        let own_record = me.mask.load(Ordering::Relaxed) != 0;
        // The Bloom mask of the lines this commit stores to (targets and extension): 1c and 1d
        // compare it with other logs' masks.
        let own_mask =
            live::commit_mask(entries.iter().map(|e| e.target), ranges, ext_off, ext_len);
        // 1c is needed only if another lane's live record meets our mask (an idle lane's live
        // log that shares no Bloom bit with us costs one load of its mask).
        let help = sh.live_lanes.others(own_record) && sh.may_help(lane, own_mask);
        // The lines this commit will store to (sorted, deduplicated): the live record of a
        // deferred commit, and what 1c compares with other lanes' records. Neither is needed
        // by a commit that does not defer and has no live log to compare with.
        self.scratch.lines.clear();
        if defer || help {
            let lines = &mut self.scratch.lines;
            lines.extend(entries.iter().map(|e| e.target & !(CACHE_LINE - 1)));
            for r in ranges {
                let mut line = r.target & !(CACHE_LINE - 1);
                while line < r.target + r.data.len() as u64 {
                    lines.push(line);
                    line += CACHE_LINE;
                }
            }
            // Often already strictly increasing (one word, or a range's lines): then neither
            // sorted nor deduplicated.
            if !strictly_increasing(lines) {
                lines.sort_unstable();
                lines.dedup();
            }
        }
        // Deferred: this commit's values stay unflushed until the lane's next commit (or a
        // helper). Only small logs without an extension: an extension is free again when the
        // commit returns, so its log must be stale by then (§6.6).
        let deferred = defer && ext_len == 0 && self.scratch.lines.len() <= MAX_LIVE_LINES;

        // 1a. No helper of this lane may still be at work on a log it read earlier: it
        // compare-exchanges that log's header word, which the slot we write may hold.
        // (SeqCst: pairs with the helpers' registration, live.rs. A plain load on x86; done
        // whatever our record says now: a helper registered on an earlier one may not be done.)
        while me.helpers.load(Ordering::SeqCst) != 0 {
            crate::primitive::yield_now();
        }
        // Every locked instruction of the commit comes before its first flush: a locked
        // instruction waits for the write-backs in flight (REDO.md §8).
        let seq = sh.seq.fetch_add(1, Ordering::Relaxed);
        let mut prev = None;
        let mut deferred_lines = 0;
        self.scratch.helped.clear();
        if help {
            // 1c. Other lanes' live logs sharing a line with this commit: flush their values,
            // invalidate them after the drain (before our values can outlive our log, §6.3).
            sh.help(
                pool,
                ctx,
                Some(lane),
                Some((&self.scratch.lines, own_mask, seq)),
                &mut self.scratch.helped,
            );
        }
        if own_record {
            // 1b. Our previous log: its values were applied, not flushed. Flush them now;
            // this commit's drain makes them durable, and then the log may be invalidated.
            // Its lines are flushed straight from our record (we are its only writer).
            // SAFETY: we own the lane (`&mut self`, its one `LaneLog`), and publish nothing
            // while `lines` lives (step 5 or 5' comes after).
            if let Some((pseq, pslot, lines)) = unsafe { me.own_live() } {
                pool.flush_lines(ctx, lines);
                deferred_lines = lines.len();
                prev = Some((pseq, pslot));
            }
        }
        let helped_lines: usize = self.scratch.helped.iter().map(|h| h.log.lines.len()).sum();
        let helped_count = self.scratch.helped.len();
        // 1d. Pending invalidations of every log region but the one we overwrite (our
        // header replaces it) whose log may share a line with this one (Bloom masks: the
        // targets and the extension): this commit's values must not outlive its log while an
        // older log sharing a word may still be valid (§6.3), whatever lane it is in. A commit
        // touching other objects than another lane's last one leaves that lane's header line
        // alone, so threads on disjoint objects do not pull each other's lines. Invalidations
        // of live logs (ours of our previous log, a helper's) carry the mask `u64::MAX`: every
        // commit flushes them, since the commit that invalidates a log that helped them, or
        // overwrites its region, need not share a line with them (§6.3).
        sh.flush_pending(
            pool,
            ctx,
            Some((lane, slot)),
            own_mask,
            &mut self.scratch.covered,
        );

        // 2. The log: its slot stream (in the lane, then in the extension) and its header.
        let mut header = RedoHeader {
            checksum: 0,
            count: slots as u32, // <= u32::MAX: checked above (or <= capacity)
            seq,
            ext: ext_off,
            ext_len,
            reserved: [0; RESERVED],
        };
        let stream_bytes = slots * REDO_ENTRY_SIZE as usize;
        let (log_lines, ext_lines) =
            if ext_slots == 0 && REDO_HEADER_SIZE as usize + stream_bytes <= STAGE {
                // A small log: staged whole (header line, slots, zeros to the end of the last
                // line), one checksum, one non-temporal copy of whole lines.
                let (total, checksum) = stage_log(
                    &mut self.scratch.stage,
                    &header,
                    entries,
                    ranges,
                    stream_bytes,
                );
                header.checksum = checksum;
                // SAFETY: the log regions of our lane are written only through its one `LaneLog`
                // of the one `RedoLogs` of this pool (caller's contract + `&mut self`); other
                // lanes' commits only flush its header lines and compare-exchange a header word
                // they read while registered as helpers (none is: step 1a). Nothing holds a
                // reference into it. The staged log fits the region: `slots <= capacity`, and the
                // region (whose size was checked at recovery) is a multiple of 64 bytes holding
                // the header and `capacity` slots, so the log rounded up to a line stays inside.
                unsafe { pool.copy_nt_nodrain(ctx, off, &self.scratch.stage[..total]) };
                (total / CACHE_LINE as usize, 0)
            } else {
                self.scratch.stage.clear(); // the small path leaves its bytes
                let mut w = SlotWriter {
                    sink: Sink {
                        pool,
                        lane_slots: off + REDO_HEADER_SIZE,
                        // The whole slot area (`slots - ext_slots == capacity` with an
                        // extension; without, the stream ends before it), so that `finish` can pad
                        // the last line of a log without extension.
                        lane_bytes: capacity as u64 * REDO_ENTRY_SIZE,
                        ext: ext_off,
                        pos: 0,
                        crc: header.crc_seed(),
                        lane_lines: 0,
                        ext_lines: 0,
                    },
                    stage: &mut self.scratch.stage,
                };
                // SAFETY: as above, for the lane's slots. The extension region is the caller's
                // alone (contract). The slots fit: `slots - ext_slots <= capacity` in the slot
                // (whose size was checked at recovery), `ext_len` bytes in the extension (checked
                // above).
                unsafe {
                    w.put(ctx, bytemuck::cast_slice(entries));
                    for r in ranges {
                        let mut head = [0u8; 16];
                        head[..8].copy_from_slice(&(r.target | RANGE_FLAG).to_le_bytes());
                        head[8..].copy_from_slice(&(r.data.len() as u64).to_le_bytes());
                        w.put(ctx, &head);
                        w.put(ctx, r.data);
                        let pad = r.data.len().next_multiple_of(16) - r.data.len();
                        w.put(ctx, &[0u8; 16][..pad]);
                    }
                    w.finish(ctx);
                }
                let sink = w.sink;
                debug_assert_eq!(sink.pos, stream_bytes as u64);
                header.checksum = sink.crc;
                // SAFETY: our slot's header, as above: the whole header line with non-temporal
                // stores, after the stream (a torn header fails its checksum like any torn log).
                unsafe { pool.copy_nt_nodrain(ctx, off, bytemuck::bytes_of(&header)) };
                (1 + sink.lane_lines, sink.ext_lines)
            };

        // 3. The drain: the commit point (for the extension too). It also made durable the
        // previous log's values, the helped logs' values, the invalidations flushed in 1d,
        // and the overwriting of whatever slot `slot` held.
        if let Err(e) = pool.drain(ctx) {
            sh.abandon_help(&mut self.scratch.helped);
            return Err(e.into());
        }
        if me.pending[slot as usize].load(Ordering::Relaxed) != 0 {
            // Release, not SeqCst: a plain store. (A locked instruction here would wait for
            // the non-temporal stores of the log to complete, on top of the drain.)
            me.pending[slot as usize].store(0, Ordering::Release);
        }
        sh.clear_covered(&self.scratch.covered);
        // Invalidate our previous log (its values are durable now), without a flush: whoever
        // needs the invalidation durable flushes the line before its own drain (1d of every
        // other commit, `sync_invalidations`, our commit after next, which overwrites it).
        if let Some((pseq, pslot)) = prev {
            let poff = sh.layout.slot_offset(lane, prev_slot);
            debug_assert_eq!(pslot, prev_slot);
            // SAFETY: our lane's header word, as in step 2 (a helper may compare-exchange it
            // to 0 concurrently: the same value).
            unsafe { store_word(pool, poff, 0) };
            sh.publish_token(lane, prev_slot, pseq, true, u64::MAX);
        }
        if !self.scratch.helped.is_empty() {
            sh.finish_help(pool, &mut self.scratch.helped);
        }

        // 4. Apply: words, then ranges. Deferred: ordinary stores, nothing flushed (nothing
        // left in flight when we return: the caller's next locked instruction would wait for
        // it, REDO.md §8). Otherwise as before deferral existed: a range's whole lines with
        // non-temporal stores, the partial lines and the words with ordinary stores and a
        // flush (step 5').
        self.scratch.plain.clear();
        let mut nt_lines = 0;
        // Without deferral the words go with `Pool::store_words_nodrain`: in the cache-flush
        // modes non-temporal stores, as the ranges' whole lines — a drain after `movnti` costs
        // far less than after a store and `clwb` of the line (§8; an alloc + free pair has two
        // such drains); elsewhere a store and a flush of each line, as before. Not when a range
        // of this commit writes a word's line (its ordinary stores must come after the word's,
        // in the cache), and only for a few words (the distinct lines are counted pairwise).
        let stream_words = !deferred
            && !entries.is_empty()
            && entries.len() <= STREAM_WORDS_MAX
            && ranges.len() <= STREAM_WORDS_MAX
            && entries.iter().all(|e| {
                let line = e.target & !(CACHE_LINE - 1);
                ranges.iter().all(|r| {
                    let end = r.target + r.data.len() as u64;
                    r.data.is_empty() || line + CACHE_LINE <= r.target || end <= line
                })
            });
        if stream_words {
            let words: smallvec::SmallVec<[(u64, u64); STREAM_WORDS_MAX]> =
                entries.iter().map(|e| (e.target, e.value)).collect();
            // SAFETY: the caller owns every target word exclusively for the call; the targets
            // were checked (aligned, inside the pool, not in the header or a lane).
            nt_lines += unsafe { pool.store_words_nodrain(ctx, &words) } as usize;
        } else {
            for e in entries {
                // SAFETY: as above.
                unsafe { store_word(pool, e.target, e.value) };
                if !deferred {
                    // Flushed in step 5' (a deferred commit's lines are `scratch.lines`,
                    // flushed by the next commit or a helper).
                    self.scratch.plain.push(e.target & !(CACHE_LINE - 1));
                }
            }
        }
        for r in ranges {
            let (first, end) = (r.target, r.target + r.data.len() as u64);
            if !deferred && end >= first.next_multiple_of(CACHE_LINE) + CACHE_LINE {
                // SAFETY: as for the words: the caller owns the range; it was checked.
                unsafe { pool.copy_nt_nodrain(ctx, r.target, r.data) };
                nt_lines += (end.div_ceil(CACHE_LINE) - first / CACHE_LINE) as usize;
            } else {
                // SAFETY: as above.
                unsafe { pool.write(r.target, r.data) };
                let mut line = first & !(CACHE_LINE - 1);
                while line < end {
                    self.scratch.plain.push(line);
                    line += CACHE_LINE;
                }
            }
        }
        let mut drains = 1;
        let mut pending_lines = self.scratch.covered.len();
        let mut target_lines = deferred_lines + helped_lines;
        if deferred {
            // 5. The values stay in the cache: the log is live until our next commit (or a
            // helper) flushes them and invalidates it.
            // Its mask is `own_mask`: without an extension, the Bloom mask of exactly these
            // lines.
            me.publish(seq, slot, header.word(), &self.scratch.lines, own_mask);
            Shared::set_bit(&sh.live_summary, lane);
            if !own_record {
                sh.live_lanes.add();
            }
        } else {
            // 5'. A large log or one with an extension: make the values durable now (drain
            // #2) and invalidate the log, as without deferral.
            // The invalidations stored since the first drain (our previous log's, the helped
            // logs') must be durable before ours can be: flush them with the values.
            let pending_before = self.scratch.covered.len();
            self.scratch.plain.sort_unstable();
            self.scratch.plain.dedup();
            if !self.scratch.plain.is_empty() {
                pool.flush_lines(ctx, &self.scratch.plain);
            }
            let stored = prev.is_some() || helped_count > 0;
            if stored {
                sh.flush_pending(
                    pool,
                    ctx,
                    Some((lane, slot)),
                    u64::MAX,
                    &mut self.scratch.covered,
                );
            }
            pool.drain(ctx)?;
            if stored {
                sh.clear_covered(&self.scratch.covered);
                pending_lines = pending_before + self.scratch.covered.len();
            }
            drains = 2;
            target_lines += self.scratch.plain.len() + nt_lines;
            // SAFETY: our slot's header word, as in step 2.
            unsafe { store_word(pool, off, 0) };
            sh.publish_token(lane, slot, seq, true, own_mask);
            if own_record {
                // Our record (the previous log, invalidated after drain #1, its token
                // published; or a log a helper resolved) is cleared, then uncounted.
                me.clear();
                sh.live_lanes.remove();
            }
        }
        // The next commit writes the other region only if this log is live (its values not
        // yet durable); an invalidated log's region is reused, so that its pending
        // invalidation is resolved by the next header instead of a flush.
        me.next_slot
            .store(if deferred { prev_slot } else { slot }, Ordering::Relaxed);
        if self.scratch.stage.capacity() > 2 * STAGE {
            // A log never needs more (a large range goes around it); keep the lane small.
            self.scratch.stage = Vec::new();
        }

        Ok(CommitStats {
            seq,
            entries: n,
            ranges: ranges.len(),
            slots,
            ext_slots,
            log_lines,
            ext_lines,
            target_lines,
            deferred_lines,
            helped: helped_count,
            pending_lines,
            drains,
        })
    }
}

/// Where a log's slot stream goes: stream bytes `[0, lane_bytes)` to the lane's slots, the
/// rest to the extension; the checksum and the lines written, as it goes.
struct Sink<'p> {
    pool: &'p Pool,
    /// Pool offset of the lane's slot 0.
    lane_slots: u64,
    /// Bytes of the region's slot area (`capacity × 16`, a multiple of 64): the stream's bytes
    /// before it go to the lane, the rest to the extension.
    lane_bytes: u64,
    /// Pool offset of the extension (a multiple of 64), if any.
    ext: u64,
    /// Stream bytes written so far.
    pos: u64,
    /// CRC-32C of the header bytes `[4, 64)` and the stream so far.
    crc: u32,
    lane_lines: usize,
    ext_lines: usize,
}

impl Sink<'_> {
    /// Writes `data` at the stream position and flushes it (non-temporal stores for every
    /// whole line).
    ///
    /// # Safety
    /// The caller owns the lane's slots and the extension region exclusively, and the stream
    /// fits them.
    unsafe fn emit(&mut self, ctx: &mut FlushContext, data: &[u8]) {
        self.crc = crc32c::crc32c_append(self.crc, data);
        // SAFETY: forwarded.
        unsafe { self.write(ctx, data) };
    }

    /// Writes `data` at the stream position without adding it to the checksum.
    ///
    /// # Safety
    /// As [`Sink::emit`].
    unsafe fn write(&mut self, ctx: &mut FlushContext, mut data: &[u8]) {
        while !data.is_empty() {
            let (off, n, lines) = if self.pos < self.lane_bytes {
                let room = (self.lane_bytes - self.pos).min(data.len() as u64) as usize;
                (self.lane_slots + self.pos, room, &mut self.lane_lines)
            } else {
                (
                    self.ext + (self.pos - self.lane_bytes),
                    data.len(),
                    &mut self.ext_lines,
                )
            };
            // SAFETY: the caller's contract. Non-temporal stores for every whole line: the log
            // is not read back, and a drain after them completes sooner than after `clwb`.
            unsafe { self.pool.copy_nt_nodrain(ctx, off, &data[..n]) };
            *lines += ((off + n as u64).div_ceil(CACHE_LINE) - off / CACHE_LINE) as usize;
            self.pos += n as u64;
            data = &data[n..];
        }
    }
}

/// Writes a log's slot stream through a bounded staging buffer in whole cache lines (the
/// stream starts on a line, in the lane and in the extension), so that every line is written
/// and flushed once, with non-temporal stores for large pieces; large data goes straight from
/// the caller's slice.
struct SlotWriter<'p, 's> {
    sink: Sink<'p>,
    /// Stream bytes `[sink.pos, sink.pos + stage.len())`, not yet written (`sink.pos` is a
    /// multiple of 64 until `finish`).
    stage: &'s mut Vec<u8>,
}

impl SlotWriter<'_, '_> {
    /// Appends `data` to the stream.
    ///
    /// # Safety
    /// As [`Sink::emit`].
    unsafe fn put(&mut self, ctx: &mut FlushContext, data: &[u8]) {
        const LINE: usize = CACHE_LINE as usize;
        if data.len() < DIRECT_MIN {
            self.stage.extend_from_slice(data);
            if self.stage.len() >= STAGE {
                let whole = self.stage.len() / LINE * LINE;
                // SAFETY: forwarded.
                unsafe { self.sink.emit(ctx, &self.stage[..whole]) };
                self.stage.drain(..whole);
            }
            return;
        }
        // Complete the staged partial line from `data`, write the stage, then the whole
        // lines of `data` straight from it; stage the rest (< one line).
        let fill = (LINE - self.stage.len() % LINE) % LINE; // < 64 <= data.len()
        self.stage.extend_from_slice(&data[..fill]);
        // SAFETY: forwarded.
        unsafe { self.sink.emit(ctx, self.stage) };
        self.stage.clear();
        let rest = &data[fill..];
        let whole = rest.len() / LINE * LINE;
        // SAFETY: forwarded.
        unsafe { self.sink.emit(ctx, &rest[..whole]) };
        self.stage.extend_from_slice(&rest[whole..]);
    }

    /// Writes what is staged.
    ///
    /// # Safety
    /// As [`Sink::emit`].
    unsafe fn finish(&mut self, ctx: &mut FlushContext) {
        const LINE: u64 = CACHE_LINE;
        let (pos, len) = (self.sink.pos, self.stage.len() as u64);
        let end = pos + len;
        // A last piece ending inside a line of the lane is padded with zeros to the line's end
        // (within the lane's slots): the whole line then goes with non-temporal stores. The
        // padding lies past the log's `count` slots, which readers ignore (docs/REDO.md §2.2),
        // so it is neither checksummed nor counted.
        let pad = if end < self.sink.lane_bytes && end % LINE != 0 {
            (end.next_multiple_of(LINE).min(self.sink.lane_bytes) - end) as usize
        } else {
            0
        };
        self.sink.crc = crc32c::crc32c_append(self.sink.crc, self.stage);
        self.stage.resize(len as usize + pad, 0);
        // SAFETY: forwarded; the padding stays inside the lane's slots (bounded above).
        unsafe { self.sink.write(ctx, self.stage) };
        self.sink.pos -= pad as u64;
        self.stage.clear();
    }
}

/// Stages a whole log in `buf[..total]`: the header line (`header`, checksum field zero),
/// then the slot stream of `words` and `ranges` (`stream_bytes` bytes), then zeros to the end
/// of the last line (past the log's slots: readers ignore them, `docs/REDO.md` §2.2). Returns
/// `(total, checksum)`: the staged bytes, a whole number of lines, and the log's checksum
/// (also stored in `buf`), over bytes `[4, 64 + stream_bytes)`.
///
/// `buf` keeps its length between commits (only grown), so that staging costs no memset of
/// the whole log: the padding is zeroed line by line or slot by slot before the bytes that
/// share it are copied.
fn stage_log(
    buf: &mut Vec<u8>,
    header: &RedoHeader,
    words: &[RedoEntry],
    ranges: &[RedoRange<'_>],
    stream_bytes: usize,
) -> (usize, u32) {
    const HEADER: usize = REDO_HEADER_SIZE as usize;
    const LINE: usize = CACHE_LINE as usize;
    const SLOT: usize = REDO_ENTRY_SIZE as usize;
    let end = HEADER + stream_bytes;
    let total = end.next_multiple_of(LINE);
    if buf.len() < total {
        buf.resize(total, 0);
    }
    let buf = &mut buf[..total];
    buf[total - LINE..].fill(0);
    buf[..HEADER].copy_from_slice(bytemuck::bytes_of(header));
    let words: &[u8] = bytemuck::cast_slice(words);
    let mut at = HEADER + words.len();
    if !words.is_empty() {
        buf[HEADER..at].copy_from_slice(words);
    }
    for r in ranges {
        let len = r.data.len();
        let next = at + SLOT * range_slots(len);
        buf[next - SLOT..next].fill(0); // the last slot's padding
        buf[at..at + 8].copy_from_slice(&(r.target | RANGE_FLAG).to_le_bytes());
        buf[at + 8..at + SLOT].copy_from_slice(&(len as u64).to_le_bytes());
        buf[at + SLOT..at + SLOT + len].copy_from_slice(r.data);
        at = next;
    }
    debug_assert_eq!(at, end);
    let checksum = crate::crc::crc32c_append(0, &buf[CRC_START..end]);
    buf[..CRC_START].copy_from_slice(&checksum.to_le_bytes());
    (total, checksum)
}

/// Compare-exchanges the 8-byte word at pool offset `offset` from `old` to `new`; whether it
/// did.
///
/// # Safety
/// As [`store_word`].
///
/// # Panics
/// As [`store_word`].
unsafe fn cas_word(pool: &Pool, offset: u64, old: u64, new: u64) -> bool {
    assert!(!pool.is_read_only(), "write to a read-only pool");
    assert!(offset % 8 == 0, "misaligned word {offset:#x}");
    let p = pool.ptr_at(offset, 8).as_ptr().cast::<u64>();
    // SAFETY: as in `store_word`.
    unsafe { AtomicU64::from_ptr(p) }
        .compare_exchange(old, new, Ordering::SeqCst, Ordering::Relaxed)
        .is_ok()
}

/// Whether `v` is strictly increasing (sorted and without duplicates). (`slice::is_sorted_by`
/// is younger than the crate's MSRV.)
#[inline]
fn strictly_increasing(v: &[u64]) -> bool {
    let mut i = 1;
    while i < v.len() {
        if v[i - 1] >= v[i] {
            return false;
        }
        i += 1;
    }
    true
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
        // 8 MiB pool, 4 KiB root, 4 lanes of 16 KiB, then the heap.
        let heap_offset = 8192 + 4 * (16 << 10);
        let heap = HeapGeometry::new(heap_offset, (8 << 20) - heap_offset);
        RedoLayout::with_sizes(RedoLayout {
            pool_size: 8 << 20,
            lanes_offset: 8192,
            lane_count: 4,
            lane_size: 16 << 10,
            data_start: heap.data,
            data_end: heap.data_end(),
            legacy: false,
            log_size: 0,
            capacity: 0,
        })
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
                reason: CorruptReason::ReservedNotZero { offset: 37 },
                ..
            })
        ));
    }

    #[test]
    fn bad_counts_are_invalid() {
        let l = layout();
        for count in [0u32, l.capacity() as u32 + 1, u32::MAX] {
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
        assert_eq!(bytes.len() as u64, REDO_LOG_SIZE / u64::from(LOG_SLOTS));
        assert!(matches!(
            decode_log(&bytes, 0, &l).unwrap(),
            LogState::Valid { .. }
        ));
    }

    #[test]
    fn extents_are_checked_before_the_checksum() {
        let l = layout();
        let cap = l.capacity() as u32;
        let (data, end) = l.extension_area();
        let h = |count: u32, ext: u64, ext_len: u64| RedoHeader {
            checksum: 1,
            count,
            seq: 1,
            ext,
            ext_len,
            reserved: [0; RESERVED],
        };
        assert_eq!(h(cap, 0, 0).extension(&l), Ok(None));
        assert_eq!(h(cap + 2, data, 32).extension(&l), Ok(Some((data, 32))));
        // Inside the pool is all that is checked here (placement: after the checksum).
        assert_eq!(h(cap + 2, 64, 32).extension(&l), Ok(Some((64, 32))));
        let bad = |c, e, n| {
            assert!(
                h(c, e, n).extension(&l).is_err(),
                "count {c} ext {e:#x} len {n}"
            )
        };
        bad(0, 0, 0);
        bad(cap + 1, 0, 0);
        bad(1, 0, 16);
        bad(cap, data, 0);
        bad(cap + 2, data, 16);
        bad(cap + 2, data, 48);
        bad(cap + 2, l.pool_size - 16, 32);
        bad(cap + 2, u64::MAX - 15, 32);
        bad(u32::MAX, data, (u64::from(u32::MAX) - u64::from(cap)) * 16);
        assert!(end <= l.pool_size);
    }

    #[test]
    fn extension_placement() {
        let l = layout();
        let (data, end) = l.extension_area();
        assert_eq!(l.check_extension(data, 16), Ok(()));
        assert_eq!(l.check_extension(end - 64, 64), Ok(()));
        assert!(l.check_extension(end - 64, 80).is_err());
        assert_eq!(
            l.check_extension(data + 16, 16),
            Err(TargetError::NotLineAligned)
        );
        assert_eq!(
            l.check_extension(data, 8),
            Err(TargetError::BadLength { len: 8 })
        );
        assert_eq!(
            l.check_extension(4096, 64),
            Err(TargetError::OutsideHeapData)
        );
        assert_eq!(
            l.check_extension(8192, 64),
            Err(TargetError::InRedoLog { lane: 0 })
        );
        assert_eq!(l.check_extension(64, 64), Err(TargetError::InHeader));
    }

    #[test]
    fn outside_subtracts_sorted_holes() {
        let pieces = |s, e, holes: &[(u64, u64)]| {
            let mut v = Vec::new();
            outside(s, e, holes, |a, b| v.push((a, b)));
            v
        };
        assert_eq!(pieces(0, 100, &[]), [(0, 100)]);
        assert_eq!(pieces(0, 100, &[(0, 100)]), []);
        assert_eq!(
            pieces(0, 100, &[(10, 20), (30, 40)]),
            [(0, 10), (20, 30), (40, 100)]
        );
        assert_eq!(pieces(15, 35, &[(10, 20), (30, 40)]), [(20, 30)]);
        assert_eq!(pieces(50, 60, &[(10, 20), (30, 40)]), [(50, 60)]);
        assert_eq!(pieces(0, 5, &[(10, 20)]), [(0, 5)]);
        assert_eq!(pieces(0, 100, &[(0, 50), (50, 100)]), []);
    }
}
