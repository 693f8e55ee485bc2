//! Volatile per-lane state of the redo log's deferred-apply protocol (`docs/REDO.md` §3, §4):
//! the pending-invalidation tokens of a lane's two log slots, and the lane's **live record**,
//! the log whose values were applied with ordinary stores but not yet flushed.
//!
//! The live record is written by the lane's owner only (the holder of its `LaneLog`) and read
//! by other lanes' commits through a sequence lock, so a reader sees one whole record or
//! retries. Every field is an atomic (no data race). The one `unsafe` function,
//! [`LaneState::own_live`], lets the owner read its own record's lines in place: only the owner
//! stores to them, and other threads only load them.

use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

use crossbeam_utils::CachePadded;
use smallvec::SmallVec;

/// At most this many target lines are kept in a live record. A commit whose apply touches more
/// lines (or that uses an extension) makes its values durable before it returns, as before
/// (two drains), and leaves no live record.
pub(crate) const MAX_LIVE_LINES: usize = 24;

/// The target lines of a live log.
pub(crate) type Lines = SmallVec<[u64; MAX_LIVE_LINES]>;

/// One bit of a 64-bit Bloom mask for the cache line at pool offset `line` (a multiple of 64).
#[inline]
pub(crate) fn line_bit(line: u64) -> u64 {
    1u64 << ((line >> 6).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58)
}

/// The Bloom mask of `lines` (never 0 for a non-empty set).
pub(crate) fn mask_of(lines: &[u64]) -> u64 {
    lines.iter().fold(0, |m, &l| m | line_bit(l))
}

/// Lines a [`target_mask`] enumerates before it gives up and answers `u64::MAX` (which a mask
/// of that many lines almost surely is anyway).
const MASK_LINES: u64 = 256;

/// The Bloom mask of every cache line `[target, target + len)` touches, OR-ed into `m`
/// (`u64::MAX` beyond [`MASK_LINES`] lines).
#[inline]
pub(crate) fn add_range_mask(m: u64, target: u64, len: u64) -> u64 {
    if len == 0 {
        return m;
    }
    let (first, end) = (target / 64, (target + len).div_ceil(64));
    if end - first > MASK_LINES {
        return u64::MAX;
    }
    // The first line apart: most ranges have one line, and the loop's vectorized set-up
    // costs more than its one iteration.
    let mut m = m | line_bit(first * 64);
    let mut l = first + 1;
    while l < end {
        m |= line_bit(l * 64);
        l += 1;
    }
    m
}

/// The Bloom mask of the lines a commit stores to: its words' (`words`, their offsets), its
/// ranges' and its extension's `[ext_off, ext_off + ext_len)` (the log's lines there).
/// (One loop without iterator adaptors: this runs at every commit of the cache-flush modes.)
#[inline(always)]
pub(crate) fn commit_mask(
    words: impl Iterator<Item = u64>,
    ranges: &[crate::redo::RedoRange<'_>],
    ext_off: u64,
    ext_len: u64,
) -> u64 {
    let mut m = 0;
    for w in words {
        m |= line_bit(w & !63);
    }
    for r in ranges {
        m = add_range_mask(m, r.target, r.data.len() as u64);
    }
    add_range_mask(m, ext_off, ext_len)
}

/// Whether two sorted, deduplicated line lists share a line.
pub(crate) fn overlap(a: &[u64], b: &[u64]) -> bool {
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => return true,
        }
    }
    false
}

/// A lane's live log: applied with ordinary stores, its lines not yet flushed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct LiveLog {
    /// Its sequence number.
    pub(crate) seq: u64,
    /// The slot (0 or 1) holding it.
    pub(crate) slot: u32,
    /// Its header word (`checksum | count << 32`), to invalidate it by compare-exchange.
    pub(crate) header_word: u64,
    /// Its target lines, sorted, deduplicated.
    pub(crate) lines: Lines,
}

/// The volatile state of one lane.
pub(crate) struct LaneState {
    /// Per slot: the sequence number of the slot's last invalidated log while that
    /// invalidation is not known to be durable (the pending-invalidation set), else 0.
    pub(crate) pending: [AtomicU64; 2],
    /// Per slot: the Bloom mask ([`line_bit`]) of the lines of the log whose invalidation is
    /// pending, or `u64::MAX` (unknown: every commit flushes it). Stored (only when it changes)
    /// before the token, on a line of its own: a lane that keeps committing to the same objects
    /// keeps the same mask, so other lanes read it without a cache miss and read the token
    /// (rewritten at every commit) only when the masks meet (`docs/REDO.md` §4 1d).
    pub(crate) pending_mask: CachePadded<[AtomicU64; 2]>,
    /// The slot the lane's next commit writes (owner only).
    pub(crate) next_slot: AtomicU32,
    /// Other lanes' commits currently helping this lane's live log (registered before they
    /// read the record, until they invalidated it). The owner waits for 0 before it writes a
    /// slot, so a helper never invalidates a newer log than the one it read.
    pub(crate) helpers: AtomicU32,
    /// The highest sequence number of this lane's logs that a helper made durable and
    /// invalidated (so later commits need not help it again).
    pub(crate) resolved: AtomicU64,
    /// Bloom mask of the live record's lines; 0 when there is no live record.
    pub(crate) mask: AtomicU64,
    /// Sequence lock of the record: odd while the owner writes it.
    version: AtomicU64,
    seq: AtomicU64,
    slot: AtomicU64,
    header_word: AtomicU64,
    len: AtomicU64,
    lines: [AtomicU64; MAX_LIVE_LINES],
}

impl LaneState {
    pub(crate) fn new() -> LaneState {
        LaneState {
            pending: [AtomicU64::new(0), AtomicU64::new(0)],
            pending_mask: CachePadded::new([AtomicU64::new(u64::MAX), AtomicU64::new(u64::MAX)]),
            next_slot: AtomicU32::new(0),
            helpers: AtomicU32::new(0),
            resolved: AtomicU64::new(0),
            mask: AtomicU64::new(0),
            version: AtomicU64::new(0),
            seq: AtomicU64::new(0),
            slot: AtomicU64::new(0),
            header_word: AtomicU64::new(0),
            len: AtomicU64::new(0),
            lines: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Owner: replaces the record by the live log `seq` in `slot` (header word `header_word`,
    /// target lines `lines`, sorted, deduplicated, at most [`MAX_LIVE_LINES`]; `mask` their
    /// Bloom mask, [`mask_of`]`(lines)`, which the commit has computed already). The final
    /// store is `SeqCst`: a helper that registers after it (SeqCst) reads this record or a
    /// later one, and the owner's later `SeqCst` load of `helpers` sees every helper
    /// registered before.
    #[inline]
    pub(crate) fn publish(&self, seq: u64, slot: u32, header_word: u64, lines: &[u64], mask: u64) {
        debug_assert!(!lines.is_empty() && lines.len() <= MAX_LIVE_LINES);
        debug_assert_eq!(mask, mask_of(lines));
        let v = self.version.load(Ordering::Relaxed);
        self.version.store(v + 1, Ordering::Relaxed);
        fence(Ordering::Release);
        self.seq.store(seq, Ordering::Relaxed);
        self.slot.store(u64::from(slot), Ordering::Relaxed);
        self.header_word.store(header_word, Ordering::Relaxed);
        self.len.store(lines.len() as u64, Ordering::Relaxed);
        for (d, &l) in self.lines.iter().zip(lines) {
            d.store(l, Ordering::Relaxed);
        }
        self.mask.store(mask, Ordering::Relaxed);
        self.version.store(v + 2, Ordering::SeqCst);
    }

    /// Owner: empties the record (no live log), through the sequence lock as [`publish`]
    /// (`SeqCst` final store).
    ///
    /// [`publish`]: LaneState::publish
    pub(crate) fn clear(&self) {
        let v = self.version.load(Ordering::Relaxed);
        self.version.store(v + 1, Ordering::Relaxed);
        fence(Ordering::Release);
        self.len.store(0, Ordering::Relaxed);
        self.mask.store(0, Ordering::Relaxed);
        self.version.store(v + 2, Ordering::SeqCst);
    }

    /// Owner: its own record, unless it is empty or a helper resolved it: `(seq, slot,
    /// lines)`, the lines read in place (no copy: the owner is the record's only writer, so
    /// it needs no sequence lock to read it either).
    ///
    /// # Safety
    /// The caller is the lane's owner (holds its `LaneLog`, or is the test that made this
    /// state) and does not call [`publish`](LaneState::publish) or
    /// [`clear`](LaneState::clear) while the returned slice lives.
    #[inline]
    pub(crate) unsafe fn own_live(&self) -> Option<(u64, u32, &[u64])> {
        let len = (self.len.load(Ordering::Relaxed) as usize).min(MAX_LIVE_LINES);
        if len == 0 {
            return None;
        }
        let seq = self.seq.load(Ordering::Relaxed);
        if seq <= self.resolved.load(Ordering::Acquire) {
            return None;
        }
        let slot = (self.slot.load(Ordering::Relaxed) & 1) as u32;
        // SAFETY: `AtomicU64` has the size, alignment and bit validity of `u64`, so the first
        // `len` (<= MAX_LIVE_LINES) atomics are `len` valid `u64`s. Only the owner stores to
        // them (in `publish`), and the caller, the owner, does not while the slice lives (its
        // earlier stores are sequenced before this read, or were made by a previous owner and
        // passed on with the lane's claim, release/acquire); other threads only load them, and
        // loads do not race with loads, so reading them through a shared `&[u64]` is no data
        // race and nothing mutates them for the slice's lifetime.
        let lines = unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast::<u64>(), len) };
        Some((seq, slot, lines))
    }

    /// Anyone: a consistent snapshot of the record, unless a helper resolved it (a live log:
    /// values not known to be durable).
    pub(crate) fn live(&self) -> Option<LiveLog> {
        self.snapshot().filter(|log| !self.is_resolved(log))
    }

    /// Anyone: whether the record's current log (if any) was resolved by a helper, read
    /// without a snapshot of the record (two loads). A log that a commit must help was
    /// published before that commit started (`docs/REDO.md` §6.3), so the commit reads its
    /// `seq` or a newer one here: a record being replaced concurrently reads as resolved only
    /// if the log it replaces was, and the new one is not one the reader must help.
    pub(crate) fn current_resolved(&self) -> bool {
        self.seq.load(Ordering::Acquire) <= self.resolved.load(Ordering::Acquire)
    }

    fn is_resolved(&self, log: &LiveLog) -> bool {
        log.seq <= self.resolved.load(Ordering::Acquire)
    }

    /// Anyone: a consistent snapshot of the record.
    pub(crate) fn snapshot(&self) -> Option<LiveLog> {
        loop {
            let v1 = self.version.load(Ordering::SeqCst);
            if v1 % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let r = self.read_fields();
            fence(Ordering::Acquire);
            if self.version.load(Ordering::Relaxed) == v1 {
                return r;
            }
        }
    }

    fn read_fields(&self) -> Option<LiveLog> {
        let len = (self.len.load(Ordering::Relaxed) as usize).min(MAX_LIVE_LINES);
        if len == 0 {
            return None;
        }
        Some(LiveLog {
            seq: self.seq.load(Ordering::Relaxed),
            slot: (self.slot.load(Ordering::Relaxed) & 1) as u32,
            header_word: self.header_word.load(Ordering::Relaxed),
            lines: self.lines[..len]
                .iter()
                .map(|l| l.load(Ordering::Relaxed))
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip() {
        let s = LaneState::new();
        assert_eq!(s.snapshot(), None);
        let log = LiveLog {
            seq: 7,
            slot: 1,
            header_word: 0xdead_beef,
            lines: [64, 128, 4096].into_iter().collect(),
        };
        s.publish(7, 1, 0xdead_beef, &log.lines, mask_of(&log.lines));
        assert_eq!(s.snapshot(), Some(log.clone()));
        assert_eq!(s.live(), Some(log.clone()));
        // SAFETY: this test is the only writer, and publishes nothing while `own` lives.
        let own = unsafe { s.own_live() };
        assert_eq!(own, Some((7, 1, &log.lines[..])));
        assert_eq!(s.mask.load(Ordering::Relaxed), mask_of(&log.lines));
        s.resolved.store(7, Ordering::Relaxed);
        // SAFETY: as above.
        assert_eq!(unsafe { s.own_live() }, None);
        assert_eq!(s.live(), None);
        assert!(s.snapshot().is_some());
        s.clear();
        assert_eq!(s.snapshot(), None);
        assert_eq!(s.mask.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn masks_and_overlap() {
        assert_ne!(mask_of(&[0]), 0);
        assert_eq!(mask_of(&[64, 128]) & line_bit(64), line_bit(64));
        assert!(overlap(&[0, 64, 192], &[64]));
        assert!(!overlap(&[0, 128], &[64, 192]));
        assert!(!overlap(&[], &[64]));
    }
}
