//! Log extensions of the lane redo log (`docs/REDO.md` §2.4, §6.6): publications larger than a
//! lane through the heap (two drains, the extension free again afterwards), `commit_ops_ext`
//! argument checks, recovery of crafted logs with extensions (valid, torn, misplaced), the
//! replay rule that keeps a later log's extension intact, and crash images (of commits whose
//! extensions reuse one block, and of a recovery) in the simulated persistence domain.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use pmstore_alloc::heap::HeapGeometry;
use pmstore_alloc::redo::{
    decode_log, decode_log_ext, encode_body, encode_log_ext, range_slots, LogState, RedoEntry,
    RedoHeader, RedoLayout, RedoLogs, RedoRange, REDO_ENTRY_SIZE,
};
use pmstore_alloc::{AllocError, CorruptReason, Heap, HeapStats, TargetError};
use pmstore_pool::sim::CrashPoint;
use pmstore_pool::{CreateOptions, ModeRequest, OpenOptions, Pool, MIN_POOL_SIZE};

const LAYOUT: &str = "redo-ext";

fn scratch() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap();
    let path = dir.path().join("ext.pool");
    (dir, path)
}

fn create(path: &Path, size: u64) -> Pool {
    Pool::create(
        path,
        &CreateOptions::new(LAYOUT, size).mode(ModeRequest::Flush),
    )
    .unwrap()
}

fn open(path: &Path) -> Pool {
    Pool::open(path, &OpenOptions::new(LAYOUT).mode(ModeRequest::Flush)).unwrap()
}

fn bytes(pool: &Pool, off: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    // SAFETY: single-threaded test (or no concurrent writer of these bytes).
    unsafe { pool.read(off, &mut v) };
    v
}

fn put(pool: &Pool, off: u64, data: &[u8]) {
    // SAFETY: single-threaded test: nothing else accesses the pool.
    unsafe { pool.write(off, data) };
}

fn word(pool: &Pool, off: u64) -> u64 {
    u64::from_le_bytes(bytes(pool, off, 8).try_into().unwrap())
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ (i >> 8) as u8 ^ seed)
        .collect()
}

/// Ranges covering `[target, target + data.len())` contiguously, of sizes cycling through a
/// mix (small ones staged, large ones written straight from the slice; 8-byte multiples).
fn split_ranges(target: u64, data: &[u8]) -> Vec<RedoRange<'_>> {
    const SIZES: [usize; 8] = [8, 40, 264, 4096, 520, 16, 12288, 1000];
    let mut out = Vec::new();
    let mut at = 0;
    let mut k = 0;
    while at < data.len() {
        let n = SIZES[k % SIZES.len()].min(data.len() - at);
        out.push(RedoRange {
            target: target + at as u64,
            data: &data[at..at + n],
        });
        at += n;
        k += 1;
    }
    out
}

/// The header bytes `[16, 32)` of a lane's log region: `ext` and `ext_len` of its last log
/// (still there after the invalidation, which zeroes only the first word).
/// `(ext, ext_len)` of the lane's newest log header (of its two slots, the higher `seq`).
fn last_ext(pool: &Pool, lane: u32) -> (u64, u64) {
    let slot =
        |s: u64| pool.geometry().lane_offset(lane) + s * (u64::from(pool.geometry().lane_size) / 2);
    let seq = |s: u64| u64::from_le_bytes(bytes(pool, slot(s) + 8, 8).try_into().unwrap());
    let newest = if seq(1) > seq(0) { slot(1) } else { slot(0) };
    let b = bytes(pool, newest + 16, 16);
    (
        u64::from_le_bytes(b[..8].try_into().unwrap()),
        u64::from_le_bytes(b[8..].try_into().unwrap()),
    )
}

fn full_stats(heap: &Heap, pool: &Pool) -> HeapStats {
    heap.for_each_allocated(pool, |_, _| {}).unwrap();
    heap.stats(pool).unwrap()
}

/// Publishes a block of `total` bytes with its whole contents as range entries (and its
/// offset into root word 0) in one `publish_ranges_with`: a log larger than the lane, so with
/// an extension. Checks two drains, every byte, the extension free again, and a reopen.
fn publish_with_extension(total: usize) {
    let (_d, path) = scratch();
    let mut pool = create(&path, 16 << 20);
    let (heap, _) = Heap::open(&mut pool).unwrap();
    let capacity = heap.redo_logs().layout().capacity();
    let root = pool.geometry().root_offset;
    let r = heap.reserve(&pool, total as u64).unwrap();
    let (d, dsize) = (r.offset(), r.size());
    // Baseline: the block reserved (its chunks taken), nothing else.
    let base = full_stats(&heap, &pool);
    let data = pattern(total, total as u8 ^ 0x5A);
    let ranges = split_ranges(d, &data);
    let slots = 3 + ranges
        .iter()
        .map(|r| range_slots(r.data.len()))
        .sum::<usize>();
    assert!(slots > capacity, "{slots} slots fit the lane");
    let mut g = heap.lane();
    let lane = g.index();
    let before = g.parts().1.counters();
    let t = Instant::now();
    // SAFETY: single-threaded; root word 0 and the reserved block are ours.
    unsafe {
        heap.publish_ranges_with(&mut g, &pool, &mut vec![r], &[], &[(root, d)], &ranges)
            .unwrap()
    };
    let ns = t.elapsed().as_nanos();
    let c = g.parts().1.counters() - before;
    drop(g);
    assert_eq!(c.drains, 2, "{c:?}");
    assert_eq!(bytes(&pool, d, total), data);
    assert_eq!(word(&pool, root), d);
    // The log went on in an extension of exactly the slots past the lane's capacity; the
    // extension was in the heap's data area, and is free again.
    let (ext, ext_len) = last_ext(&pool, lane);
    let layout = heap.redo_logs().layout();
    assert_ne!(ext, 0);
    assert!(layout.check_extension(ext, ext_len).is_ok());
    // Allocator entries: the bitmap word or span header of `d` (+ a run header) + root word.
    let ext_slots = (ext_len / REDO_ENTRY_SIZE) as usize;
    assert!(
        ext_slots + capacity >= slots - 2 && ext_slots + capacity <= slots,
        "{ext_slots} + {capacity} vs {slots}"
    );
    let after = full_stats(&heap, &pool);
    assert_eq!(after.bytes_allocated, base.bytes_allocated + dsize);
    assert_eq!(
        after.free_chunks, base.free_chunks,
        "the extension is free again"
    );
    assert_eq!(after.spans + after.blocks_per_class.iter().sum::<u64>(), 1);
    println!(
        "{total} B publish: {slots} slots ({ext_slots} in the extension), {ns} ns (first, cold), {c:?}"
    );
    // The extension's space is reusable at once: the next large publish reuses it.
    let more = pattern(total, 3);
    let mut g = heap.lane();
    let lane2 = g.index();
    // SAFETY: as above: `d` is allocated and ours.
    unsafe {
        heap.publish_ranges_with(
            &mut g,
            &pool,
            &mut Vec::new(),
            &[],
            &[(root + 8, 42)],
            &[RedoRange {
                target: d,
                data: &more,
            }],
        )
        .unwrap()
    };
    drop(g);
    assert_eq!(last_ext(&pool, lane2).0, ext, "the same block again");
    assert_eq!(bytes(&pool, d, total), more);
    drop(heap);
    drop(pool);
    let mut pool = open(&path);
    let (heap, report) = Heap::open(&mut pool).unwrap();
    assert_eq!((report.logs_replayed, report.invalid_cleared), (0, 0));
    assert_eq!(bytes(&pool, d, total), more);
    assert_eq!(word(&pool, root), d);
    assert_eq!(word(&pool, root + 8), 42);
    assert_eq!(heap.usable_size(&pool, d).unwrap(), dsize);
    let s = full_stats(&heap, &pool);
    assert_eq!(s.bytes_allocated, dsize);
}

#[test]
fn a_64_kib_publish_goes_on_in_an_extension() {
    publish_with_extension(64 << 10);
}

#[test]
fn a_1_mib_publish_goes_on_in_an_extension() {
    publish_with_extension(1 << 20);
}

/// What `reserve.rs::log_full_changes_nothing` used to refuse: more words than the lane holds
/// now commit, in one log with an extension.
#[test]
fn a_publish_of_more_words_than_a_lane_holds_commits() {
    let (_d, path) = scratch();
    let mut pool = create(&path, MIN_POOL_SIZE);
    let (heap, _) = Heap::open(&mut pool).unwrap();
    let capacity = heap.redo_logs().layout().capacity();
    let mut owned = vec![heap.reserve(&pool, 16 << 10).unwrap()];
    let data = owned[0].offset();
    // SAFETY: single-threaded; the block is ours.
    unsafe { heap.publish(&pool, &mut owned, &[], &[]).unwrap() };
    let mut rs = vec![heap.reserve(&pool, 64).unwrap()];
    let off = rs[0].offset();
    let root = pool.geometry().root_offset;
    let words: Vec<(u64, u64)> = (0..capacity as u64 + 500)
        .map(|i| {
            let t = if i < 512 {
                root + 8 * i
            } else {
                data + 8 * (i - 512)
            };
            (t, i + 1)
        })
        .collect();
    // SAFETY: single-threaded; root words and the block are ours.
    unsafe { heap.publish(&pool, &mut rs, &[], &words).unwrap() };
    assert!(rs.is_empty());
    assert!(words.iter().all(|&(t, v)| word(&pool, t) == v));
    assert_eq!(heap.usable_size(&pool, off).unwrap(), 64);
}

#[test]
fn commit_ops_ext_checks_its_extension_before_writing() {
    let (_d, path) = scratch();
    let mut pool = create(&path, 16 << 20);
    let (logs, _) = RedoLogs::recover(&mut pool).unwrap();
    let layout = *logs.layout();
    let capacity = layout.capacity();
    let (area, _) = layout.extension_area();
    let mut lane = logs.lane(3).unwrap();
    let mut ctx = pool.flush_context();
    let root = pool.geometry().root_offset;
    let target = area + (1 << 20);
    let data = pattern((capacity + 100) * 16, 1); // head + capacity + 100 slots of data
    let ranges = [RedoRange {
        target,
        data: &data,
    }];
    let need = 102 * REDO_ENTRY_SIZE;
    let w = [RedoEntry::new(root, 5)];
    let region = bytes(&pool, pool.geometry().lane_offset(3), 16 << 10);
    let cases: Vec<(Option<(u64, u64)>, &str)> = vec![
        (None, "full"),
        (Some((area, need - 16)), "full"),
        (Some((area + 16, need)), "not 64-byte"),
        (Some((root, need)), "outside the heap's data area"),
        (
            Some((pool.geometry().lanes_offset, need)),
            "redo log region of lane 0",
        ),
        (Some((pool.size() - 64, need)), "outside the pool"),
        (Some((target + 4096, need)), "own extension"),
    ];
    for (ext, why) in cases {
        // SAFETY: single-threaded: this thread owns every target and the extension.
        let err = unsafe { lane.commit_ops_ext(&pool, &mut ctx, &w, &ranges, ext) }.unwrap_err();
        assert!(err.to_string().contains(why), "{ext:?}: {err}");
        if why == "full" {
            let have = ext.map_or(0, |e| e.1 as usize / 16);
            assert!(
                matches!(err, AllocError::LogFull { needed, capacity: c }
                    if needed == capacity + 102 && c == capacity + have),
                "{err:?}"
            );
        }
        assert_eq!(ctx.counters(), Default::default(), "nothing flushed");
        assert_eq!(
            bytes(&pool, pool.geometry().lane_offset(3), 16 << 10),
            region
        );
        assert_eq!(word(&pool, root), 0);
    }
    // A target in the extension: refused with its index.
    let err = unsafe {
        // SAFETY: as above.
        lane.commit_ops_ext(
            &pool,
            &mut ctx,
            &[RedoEntry::new(area + 64, 1)],
            &ranges,
            Some((area, need + 16)),
        )
    }
    .unwrap_err();
    assert!(
        matches!(
            err,
            AllocError::InvalidTarget {
                index: 0,
                reason: TargetError::InLogExtension,
                ..
            }
        ),
        "{err:?}"
    );
    // Exactly enough, and the stats match the flush counters.
    // SAFETY: as above.
    let s =
        unsafe { lane.commit_ops_ext(&pool, &mut ctx, &w, &ranges, Some((area, need))) }.unwrap();
    let c = ctx.counters();
    assert_eq!((s.slots, s.ext_slots), (capacity + 102, 102));
    assert_eq!(s.drains, 2);
    assert_eq!(c.drains, 2);
    assert_eq!(
        s.log_lines,
        (8 << 10) / 64,
        "the whole log region (half the lane)"
    );
    assert_eq!(s.ext_lines, (102 * 16usize).div_ceil(64));
    assert_eq!(
        (c.lines_flushed + c.nt_bytes / 64) as usize,
        s.lines(),
        "{s:?} {c:?}"
    );
    assert_eq!(bytes(&pool, target, data.len()), data);
    assert_eq!(word(&pool, root), 5);
    // A log that fits the lane does not use (or check) the extension it is given.
    // SAFETY: as above.
    let s = unsafe { lane.commit_ops_ext(&pool, &mut ctx, &w, &[], Some((1, 1))) }.unwrap();
    assert_eq!(s.ext_slots, 0);
    assert_eq!(last_ext(&pool, 3), (0, 0));
}

/// A 16 MiB pool with, after `f` planted logs in it, a recovery.
struct Crafted {
    _dir: tempfile::TempDir,
    path: PathBuf,
    layout: RedoLayout,
    heap: HeapGeometry,
    root: u64,
}

impl Crafted {
    fn new() -> Crafted {
        let (dir, path) = scratch();
        let mut pool = create(&path, 16 << 20);
        let (logs, _) = RedoLogs::recover(&mut pool).unwrap();
        let g = pool.geometry();
        Crafted {
            _dir: dir,
            path,
            layout: *logs.layout(),
            heap: HeapGeometry::new(g.heap_offset, g.heap_size),
            root: g.root_offset,
        }
    }

    fn capacity(&self) -> usize {
        self.layout.capacity()
    }

    /// Plants `(lane bytes, extension bytes at ext)` in lane `lane`, reopens, recovers.
    fn recover(
        &self,
        lane: u32,
        log: &(Vec<u8>, Vec<u8>),
        ext: u64,
    ) -> (
        Pool,
        pmstore_alloc::Result<pmstore_alloc::redo::RecoveryReport>,
    ) {
        let pool = open(&self.path);
        put(&pool, self.layout.log_offset(lane), &log.0);
        if !log.1.is_empty() {
            put(&pool, ext, &log.1);
        }
        drop(pool);
        let mut pool = open(&self.path);
        let r = RedoLogs::recover(&mut pool).map(|(_, r)| r);
        (pool, r)
    }
}

#[test]
fn a_valid_log_with_an_extension_is_replayed() {
    let c = Crafted::new();
    let target = c.heap.chunk_offset(1);
    let ext = c.heap.chunk_offset(5);
    let data = pattern(20_000, 7);
    let words = [
        RedoEntry::new(c.root, 0xAB),
        RedoEntry::new(c.root + 8, 0xCD),
    ];
    let ranges = [
        RedoRange {
            target,
            data: &data,
        },
        RedoRange {
            target: target + 32768,
            data: &data[..64],
        },
    ];
    let log = encode_log_ext(9, &words, &ranges, c.capacity(), ext);
    assert_eq!(log.0.len() as u64, c.layout.log_size());
    let slots = 2 + range_slots(20_000) + range_slots(64);
    assert_eq!(log.1.len(), (slots - c.capacity()) * 16);
    // The decoders agree (and a region without its extension is not a valid log).
    let expect = LogState::Valid {
        seq: 9,
        entries: words.to_vec(),
        ranges: ranges
            .iter()
            .map(|r| pmstore_alloc::redo::RangeEntry {
                target: r.target,
                data: r.data.to_vec(),
            })
            .collect(),
    };
    assert_eq!(
        decode_log_ext(&log.0, &log.1, 1, &c.layout).unwrap(),
        expect
    );
    assert_eq!(
        decode_log(&[&log.0[..], &log.1].concat(), 1, &c.layout).unwrap(),
        expect
    );
    assert!(matches!(
        decode_log(&log.0, 1, &c.layout).unwrap(),
        LogState::Invalid(pmstore_alloc::redo::Invalid::BadExtension { .. })
    ));
    let (pool, r) = c.recover(6, &log, ext);
    let r = r.unwrap();
    assert_eq!(
        (r.logs_replayed, r.entries_applied, r.ranges_applied),
        (1, 2, 2)
    );
    assert_eq!((r.extensions_read, r.bytes_skipped, r.max_seq), (1, 0, 9));
    assert_eq!(bytes(&pool, target, data.len()), data);
    assert_eq!(bytes(&pool, target + 32768, 64), data[..64]);
    assert_eq!(word(&pool, c.root), 0xAB);
    assert_eq!(word(&pool, c.layout.log_offset(6)), 0, "cleared");
    drop(pool);
    // Recovered once: nothing left.
    let mut pool = open(&c.path);
    let (_, again) = RedoLogs::recover(&mut pool).unwrap();
    assert_eq!((again.logs_replayed, again.invalid_cleared), (0, 0));
}

#[test]
fn a_torn_extension_makes_the_log_invalid() {
    let c = Crafted::new();
    let target = c.heap.chunk_offset(1);
    let ext = c.heap.chunk_offset(5);
    let data = pattern(20_000, 8);
    let ranges = [RedoRange {
        target,
        data: &data,
    }];
    let good = encode_log_ext(9, &[RedoEntry::new(c.root, 1)], &ranges, c.capacity(), ext);
    // One line of the extension is missing (old contents: zero), or one bit differs.
    for damage in [0usize, 1] {
        let mut log = good.clone();
        if damage == 0 {
            log.1[64..128].fill(0);
        } else {
            let last = log.1.len() - 1;
            log.1[last] ^= 0x10;
        }
        let (pool, r) = c.recover(2, &log, ext);
        let r = r.unwrap();
        assert_eq!((r.logs_replayed, r.invalid_cleared), (0, 1));
        assert_eq!(r.extensions_read, 1);
        assert_eq!(bytes(&pool, target, data.len()), vec![0; data.len()]);
        assert_eq!(word(&pool, c.root), 0);
        assert_eq!(word(&pool, c.layout.log_offset(2)), 0, "cleared");
    }
}

/// A header with a valid checksum over whatever the extension holds on the media (so the
/// log is *corrupt*, not torn, if `ext` is misplaced): `(lane bytes, extension bytes)`.
fn header_over(
    pool: &Pool,
    seq: u64,
    in_lane: &[u8],
    ext: u64,
    ext_len: u64,
    ext_bytes: Option<&[u8]>,
) -> Vec<u8> {
    let theirs;
    let ext_part = match ext_bytes {
        Some(b) => b,
        None => {
            theirs = bytes(pool, ext, ext_len as usize);
            &theirs
        }
    };
    let body = [in_lane, ext_part].concat();
    let h = RedoHeader::for_stream(seq, &body, ext, ext_len);
    let mut v = bytemuck::bytes_of(&h).to_vec();
    v.extend_from_slice(in_lane);
    v
}

#[test]
fn misplaced_or_inconsistent_extensions_are_invalid_or_corrupt_never_a_panic() {
    let c = Crafted::new();
    let cap = c.capacity();
    // The in-lane part: word entries to the root area.
    let in_lane: Vec<u8> = encode_body(
        &(0..cap as u64)
            .map(|i| RedoEntry::new(c.root + 8 * (i % 512), i))
            .collect::<Vec<_>>(),
        &[],
    );
    let tail: Vec<u8> = encode_body(&[RedoEntry::new(c.root, 77); 4], &[]); // 64 B
    let g = {
        let pool = open(&c.path);
        pool.geometry()
    };
    let size = {
        let pool = open(&c.path);
        pool.size()
    };
    let lanes_end = g.lanes_offset + u64::from(g.lane_count) * u64::from(g.lane_size);
    let data = c.heap.chunk_offset(3);
    // Valid checksums, misplaced extension: corrupt, and recovery modifies nothing.
    let corrupt: Vec<(u64, TargetError)> = vec![
        (g.lane_offset(5), TargetError::InRedoLog { lane: 5 }),
        (lanes_end - 64, TargetError::InRedoLog { lane: 63 }),
        (64, TargetError::InHeader),
        (g.root_offset, TargetError::OutsideHeapData),
        (g.heap_offset, TargetError::OutsideHeapData), // heap metadata
        (data + 16, TargetError::NotLineAligned),
    ];
    for (ext, why) in corrupt {
        let pool = open(&c.path);
        let lane_bytes = header_over(&pool, 4, &in_lane, ext, 64, None);
        drop(pool);
        let before = std::fs::read(&c.path).unwrap();
        let (pool, r) = c.recover(1, &(lane_bytes.clone(), Vec::new()), 0);
        let err = r.unwrap_err();
        assert!(
            matches!(err, AllocError::CorruptLog { lane: 1, seq: 4, reason: CorruptReason::BadExtension { ext: e, ext_len: 64, error } } if e == ext && error == why),
            "{ext:#x}: {err}"
        );
        drop(pool);
        let mut expect = before;
        let o = c.layout.log_offset(1) as usize;
        expect[o..o + lane_bytes.len()].copy_from_slice(&lane_bytes);
        assert!(
            std::fs::read(&c.path).unwrap() == expect,
            "{ext:#x}: recovery wrote"
        );
        let pool = open(&c.path);
        put(&pool, c.layout.log_offset(1), &[0; 8]);
    }
    // A valid log writing into its own extension: corrupt.
    {
        let own = encode_body(&[RedoEntry::new(data + 8, 1); 4], &[]);
        let pool = open(&c.path);
        let lane_bytes = header_over(&pool, 4, &in_lane, data, 64, Some(&own));
        put(&pool, data, &own);
        drop(pool);
        let (pool, r) = c.recover(1, &(lane_bytes, Vec::new()), 0);
        let err = r.unwrap_err();
        assert!(
            matches!(
                err,
                AllocError::CorruptLog {
                    reason: CorruptReason::TargetInExtension { index, .. },
                    ..
                } if index == cap
            ),
            "{err}"
        );
        put(&pool, c.layout.log_offset(1), &[0; 8]);
    }
    // Inconsistent or out-of-pool extensions: invalid, cleared, nothing replayed (the
    // checksums are valid over the given bytes, or garbage).
    let invalid: Vec<(u64, u64, &[u8])> = vec![
        (size - 32, 64, &tail[..]),     // past the pool's end
        (u64::MAX - 63, 64, &tail[..]), // overflows
        (data, 80, &tail[..]),          // ext_len != 16 × (count − capacity)
        (data, 64, &tail[..48]),        // ditto
        (0, 64, &tail[..]),             // count > capacity without an extension
    ];
    for (ext, ext_len, ext_bytes) in invalid {
        let body = [&in_lane[..], ext_bytes].concat();
        let h = RedoHeader::for_stream(5, &body, ext, ext_len);
        let mut lane_bytes = bytemuck::bytes_of(&h).to_vec();
        lane_bytes.extend_from_slice(&in_lane);
        let (pool, r) = c.recover(2, &(lane_bytes, Vec::new()), 0);
        let r = r.unwrap();
        assert_eq!(
            (r.logs_replayed, r.invalid_cleared),
            (0, 1),
            "{ext:#x} {ext_len}"
        );
        assert_eq!(word(&pool, c.root + 8), 0);
        assert_eq!(word(&pool, c.layout.log_offset(2)), 0);
    }
    // An extension with a count that fits the lane: invalid.
    {
        let h = RedoHeader::for_stream(5, &tail, data, 64);
        let mut lane_bytes = bytemuck::bytes_of(&h).to_vec();
        lane_bytes.extend_from_slice(&tail);
        let (_pool, r) = c.recover(2, &(lane_bytes, Vec::new()), 0);
        assert_eq!(r.unwrap().invalid_cleared, 1);
    }
    // Garbage headers (bad checksums) pointing into the lanes, the header, past the end.
    for ext in [g.lane_offset(0), 0, 64, size, !63] {
        let mut h = RedoHeader::for_stream(5, &[&in_lane[..], &tail].concat(), ext, 64);
        h.checksum ^= 1;
        let mut lane_bytes = bytemuck::bytes_of(&h).to_vec();
        lane_bytes.extend_from_slice(&in_lane);
        let (_pool, r) = c.recover(0, &(lane_bytes, Vec::new()), 0);
        let r = r.unwrap();
        assert_eq!((r.logs_replayed, r.invalid_cleared), (0, 1), "{ext:#x}");
    }
}

/// Two valid logs, where the earlier one (`A`, a stale log whose block was since cancelled)
/// writes into the later one's (`B`'s) extension: recovery skips those bytes of `A`, so that
/// `B` stays valid on the media until it is cleared, and every crash image during recovery
/// recovers to the same state.
#[test]
fn replay_skips_an_earlier_log_s_stores_into_a_later_log_s_extension() {
    let opts = CreateOptions::new(LAYOUT, MIN_POOL_SIZE);
    let (mut pool, sim) = Pool::create_simulated(&opts).unwrap();
    let (logs, _) = RedoLogs::recover(&mut pool).unwrap();
    let layout = *logs.layout();
    drop(logs);
    let g = pool.geometry();
    let hg = HeapGeometry::new(g.heap_offset, g.heap_size);
    let root = g.root_offset;
    let (ext, t_a, t_b) = (hg.chunk_offset(2), hg.chunk_offset(4), hg.chunk_offset(6));
    let a_data = pattern(512, 1);
    let a_into_ext = pattern(256, 2);
    // A (seq 5): root := 1, root+8 := 10, a range elsewhere, and 256 B inside B's extension.
    let a = encode_log_ext(
        5,
        &[RedoEntry::new(root, 1), RedoEntry::new(root + 8, 10)],
        &[
            RedoRange {
                target: t_a,
                data: &a_data,
            },
            RedoRange {
                target: ext + 128,
                data: &a_into_ext,
            },
        ],
        layout.capacity(),
        0,
    );
    assert!(a.1.is_empty());
    // B (seq 6): root := 2 and 20 000 bytes at t_b: an extension at `ext`.
    let b_data = pattern(20_000, 3);
    let b = encode_log_ext(
        6,
        &[RedoEntry::new(root, 2)],
        &[RedoRange {
            target: t_b,
            data: &b_data,
        }],
        layout.capacity(),
        ext,
    );
    assert!(b.1.len() > 128 + 256);
    put(&pool, layout.log_offset(3), &a.0);
    put(&pool, layout.log_offset(9), &b.0);
    put(&pool, ext, &b.1);
    let image = sim.working_image();
    drop(pool);

    let state = move |p: &Pool| {
        (
            word(p, root),
            word(p, root + 8),
            bytes(p, t_a, 512),
            bytes(p, t_b, 20_000),
        )
    };
    let expect = (2u64, 10u64, a_data.clone(), b_data.clone());
    let tally = Arc::new(Mutex::new((0usize, Vec::<String>::new())));
    let hook = {
        let (tally, expect) = (Arc::clone(&tally), expect.clone());
        move |cp: &CrashPoint<'_>| {
            for img in cp.images(10, 64, 0xE47) {
                let (mut p, _) = Pool::open_simulated(&img, &OpenOptions::new(LAYOUT)).unwrap();
                let r = RedoLogs::recover(&mut p);
                let mut t = tally.lock().unwrap();
                t.0 += 1;
                match r {
                    Err(e) => t.1.push(format!("drain {}: {e}", cp.drain)),
                    Ok(_) if state(&p) != expect => t.1.push(format!(
                        "drain {}: root words {} {}",
                        cp.drain,
                        word(&p, root),
                        word(&p, root + 8)
                    )),
                    Ok(_) => {}
                }
            }
        }
    };
    let (mut p, sim) = Pool::open_simulated(&image, &OpenOptions::new(LAYOUT)).unwrap();
    sim.set_crash_hook(hook);
    let (_, r) = RedoLogs::recover(&mut p).unwrap();
    sim.clear_crash_hook();
    let t = tally.lock().unwrap();
    println!("crash images of the recovery checked: {}", t.0);
    assert!(t.1.is_empty(), "{:#?}", &t.1[..t.1.len().min(5)]);
    assert!(t.0 >= 10, "only {} images", t.0);
    assert_eq!((r.logs_replayed, r.extensions_read), (2, 1));
    assert_eq!(r.bytes_skipped, 256);
    assert_eq!(state(&p), expect);
}

/// The recovered state of a crash image: root words 0 and 1, the live blocks, and the
/// contents of block `d` if it is live.
type State = (u64, u64, BTreeMap<u64, u64>, Option<Vec<u8>>);

fn recovered(img: &[u8], d: u64, dlen: usize) -> Result<State, String> {
    let (mut pool, _) = Pool::open_simulated(img, &OpenOptions::new(LAYOUT)).unwrap();
    let (heap, _) = Heap::open(&mut pool).map_err(|e| format!("recovery: {e}"))?;
    let mut live = BTreeMap::new();
    heap.for_each_allocated(&pool, |o, s| {
        live.insert(o, s);
    })
    .map_err(|e| format!("scan: {e}"))?;
    let root = pool.geometry().root_offset;
    let contents = live.contains_key(&d).then(|| bytes(&pool, d, dlen));
    Ok((word(&pool, root), word(&pool, root + 8), live, contents))
}

/// Every crash image at every drain of two publications with extensions — the second one's
/// extension is the block the first one's was (cancelled after the first commit) — through
/// one lane or two, recovers to the state before or after each publication. Besides random
/// subsets of the lines in flight, every combination of "all or none" of: each lane's header
/// line, each lane's other lines, the lines of the extension, and the rest.
fn crash_images_of_extension_commits(two_lanes: bool) {
    let opts = CreateOptions::new(LAYOUT, MIN_POOL_SIZE).lanes(8, 4096);
    let (mut pool, sim) = Pool::create_simulated(&opts).unwrap();
    let (heap, _) = Heap::open(&mut pool).unwrap();
    let g = pool.geometry();
    let root = g.root_offset;
    let capacity = heap.redo_logs().layout().capacity();
    assert_eq!(capacity, 124);
    let mut g1 = heap.lane();
    let mut g2 = two_lanes.then(|| heap.lane());
    let lanes = [g1.index(), g2.as_ref().map_or(g1.index(), |g| g.index())];
    let dlen = 6000;
    let r = heap.reserve(&pool, dlen as u64).unwrap();
    let d = r.offset();
    let p1 = pattern(dlen, 1);
    let p2 = pattern(dlen, 2);
    let dsize = r.size();
    let s0: State = (0, 0, BTreeMap::new(), None);
    let s1: State = (d, 0, BTreeMap::from([(d, dsize)]), Some(p1.clone()));
    let mut s2 = s1.clone();
    s2.1 = 7;
    s2.3 = Some(p2.clone());
    let states = Arc::new([s0, s1, s2]);
    // Line classes for the structured images (the extension is wherever the heap data is
    // written outside `d`).
    let lane_of = move |o: u64| {
        (o >= g.lanes_offset && o < g.lanes_offset + u64::from(g.lane_count) * 4096)
            .then(|| ((o - g.lanes_offset) / 4096) as u32)
    };
    let hg = HeapGeometry::new(g.heap_offset, g.heap_size);
    let class = move |o: u64| -> usize {
        match lane_of(o) {
            Some(l) if l == lanes[0] => usize::from(o % 4096 != 0),
            Some(l) if l == lanes[1] => 2 + usize::from(o % 4096 != 0),
            _ if o >= hg.data && !(d..d + dsize).contains(&o) => 4,
            _ => 5,
        }
    };
    let tally = Arc::new(Mutex::new((0usize, Vec::<String>::new())));
    let hook = {
        let (states, tally) = (Arc::clone(&states), Arc::clone(&tally));
        let (p1, p2) = (p1.clone(), p2.clone());
        move |cp: &CrashPoint<'_>| {
            let classes: Vec<usize> = cp.in_flight.iter().map(|l| class(l.offset)).collect();
            let structured = (0u32..64).map(|mask| cp.image_with(|i| mask >> classes[i] & 1 == 1));
            for img in cp.images(12, 32, 0xE7E).chain(structured) {
                let got = recovered(&img, d, dlen);
                let mut t = tally.lock().unwrap();
                t.0 += 1;
                match got {
                    Err(e) => t.1.push(format!("drain {}: {e}", cp.drain)),
                    Ok(s) if !states.contains(&s) => t.1.push(format!(
                        "drain {}: a mixed state (root {:#x} {}, live {:?}, contents {})",
                        cp.drain,
                        s.0,
                        s.1,
                        s.2,
                        match &s.3 {
                            None => "-",
                            Some(c) if *c == p1 => "p1",
                            Some(c) if *c == p2 => "p2",
                            Some(_) => "mixed",
                        }
                    )),
                    Ok(_) => {}
                }
            }
        }
    };
    sim.set_crash_hook(hook.clone());
    // SAFETY: single-threaded; the root words and the block are ours.
    unsafe {
        heap.publish_ranges_with(
            &mut g1,
            &pool,
            &mut vec![r],
            &[],
            &[(root, d)],
            &[RedoRange {
                target: d,
                data: &p1,
            }],
        )
        .unwrap();
    }
    let first = last_ext(&pool, lanes[0]);
    assert_ne!(first.0, 0, "the first log has an extension");
    let g = g2.as_mut().unwrap_or(&mut g1);
    // SAFETY: as above.
    unsafe {
        heap.publish_ranges_with(
            g,
            &pool,
            &mut Vec::new(),
            &[],
            &[(root + 8, 7)],
            &[RedoRange {
                target: d,
                data: &p2,
            }],
        )
        .unwrap();
    }
    assert_eq!(
        last_ext(&pool, lanes[1]).0,
        first.0,
        "the same extension block"
    );
    sim.clear_crash_hook();
    sim.with_crash_point(|cp| hook(cp));
    let t = tally.lock().unwrap();
    println!(
        "crash images checked ({} lanes): {}",
        1 + usize::from(two_lanes),
        t.0
    );
    assert!(t.1.is_empty(), "{:#?}", &t.1[..t.1.len().min(5)]);
    assert!(t.0 >= 4 * 64, "only {} images", t.0);
}

#[test]
fn every_crash_image_of_extension_commits_through_one_lane_is_all_or_nothing() {
    crash_images_of_extension_commits(false);
}

#[test]
fn every_crash_image_of_extension_commits_through_two_lanes_is_all_or_nothing() {
    crash_images_of_extension_commits(true);
}

/// Cost of a publication of `total` bytes of ranges into an allocated block, in forced-flush
/// mode on /dev/shm: `cargo test --release -p pmstore-alloc --test redo_ext -- --ignored
/// --nocapture`.
#[test]
#[ignore = "timing; run with --release --ignored --nocapture"]
fn bench_publish_with_extension() {
    for (total, piece) in [
        (8 << 10, 4096),
        (64 << 10, 4096),
        (64 << 10, 64 << 10),
        (1 << 20, 4096),
        (1 << 20, 1 << 20),
    ] {
        let (_d, path) = scratch();
        let mut pool = create(&path, 64 << 20);
        let (heap, _) = Heap::open(&mut pool).unwrap();
        let mut rs = vec![heap.reserve(&pool, total as u64).unwrap()];
        let d = rs[0].offset();
        // SAFETY: single-threaded; the block is ours.
        unsafe { heap.publish(&pool, &mut rs, &[], &[]).unwrap() };
        let data = pattern(total, 9);
        let ranges: Vec<RedoRange<'_>> = data
            .chunks(piece)
            .enumerate()
            .map(|(i, c)| RedoRange {
                target: d + (i * piece) as u64,
                data: c,
            })
            .collect();
        let iters = (256 << 20) / total;
        let mut g = heap.lane();
        let run = |g: &mut pmstore_alloc::LaneGuard<'_>, n: usize| {
            for _ in 0..n {
                // SAFETY: as above.
                unsafe {
                    heap.publish_ranges_with(g, &pool, &mut Vec::new(), &[], &[], &ranges)
                        .unwrap()
                };
            }
        };
        run(&mut g, iters / 8 + 1);
        let before = g.parts().1.counters();
        let t = Instant::now();
        run(&mut g, iters);
        let ns = t.elapsed().as_nanos() as f64 / iters as f64;
        let c = g.parts().1.counters() - before;
        let n = iters as f64;
        let (ext, ext_len) = last_ext(&pool, g.index());
        println!(
            "{{\"bytes\":{total},\"range\":{piece},\"ns\":{ns:.0},\"drains\":{},\"lines\":{:.1},\"clwb_lines\":{:.1},\"nt_lines\":{:.1},\"ext\":{},\"ext_len\":{ext_len},\"mode\":\"{}\"}}",
            c.drains as f64 / n,
            (c.lines_flushed + c.nt_bytes / 64) as f64 / n,
            c.lines_flushed as f64 / n,
            (c.nt_bytes / 64) as f64 / n,
            ext != 0,
            pool.persistence(),
        );
    }
}

/// The bytes a commit writes (captured at its commit point, drain #1, in the simulated domain)
/// are exactly what `encode_log_ext` encodes, whatever the mix of range sizes around the
/// writer's staging and direct-copy thresholds, with and without an extension.
#[test]
fn commits_write_exactly_the_encoded_log() {
    let opts = CreateOptions::new(LAYOUT, MIN_POOL_SIZE).lanes(4, 4096);
    let (mut pool, sim) = Pool::create_simulated(&opts).unwrap();
    let (logs, _) = RedoLogs::recover(&mut pool).unwrap();
    let layout = *logs.layout();
    let capacity = layout.capacity();
    let (area, _) = layout.extension_area();
    let mut lane = logs.lane(1).unwrap();
    let mut ctx = pool.flush_context();
    let ext = area + (4 << 20);
    let size = pool.size() as usize;
    let captured = Arc::new(Mutex::new(Vec::<Vec<u8>>::new()));
    {
        let captured = Arc::clone(&captured);
        sim.set_crash_hook(move |cp: &CrashPoint<'_>| {
            // Every line written so far, landed (the first one: at drain #1).
            captured.lock().unwrap().push(cp.image_with(|_| true));
        });
    }
    let src = pattern(40_000, 5);
    let cases: Vec<Vec<usize>> = vec![
        vec![8],
        vec![504, 512, 520, 8, 4096, 24],
        vec![4088, 8, 4104, 504, 1000, 16],
        vec![3000; 3],
        vec![8; 260],
        vec![13_000, 8, 13_000],
        vec![40_000],
    ];
    for (k, sizes) in cases.iter().enumerate() {
        let mut at = 0usize;
        let ranges: Vec<RedoRange<'_>> = sizes
            .iter()
            .map(|&n| {
                let r = RedoRange {
                    target: area + 2 * at as u64, // gaps between the ranges
                    data: &src[at..at + n],
                };
                at += n;
                r
            })
            .collect();
        let words: Vec<RedoEntry> = (0..k as u64 * 7)
            .map(|i| RedoEntry::new(pool.geometry().root_offset + 8 * i, i))
            .collect();
        captured.lock().unwrap().clear();
        // SAFETY: single-threaded: this thread owns every target and the extension.
        let s =
            unsafe { lane.commit_ops_ext(&pool, &mut ctx, &words, &ranges, Some((ext, 1 << 20))) }
                .unwrap();
        let img = captured.lock().unwrap()[0].clone();
        assert_eq!(img.len(), size);
        let (lane_part, ext_part) = encode_log_ext(s.seq, &words, &ranges, capacity, ext);
        assert!(
            (0..2).any(|slot| {
                let o = layout.slot_offset(1, slot) as usize;
                img[o..o + lane_part.len()] == lane_part[..]
            }),
            "case {k}: lane bytes differ"
        );
        assert!(
            img[ext as usize..ext as usize + ext_part.len()] == ext_part[..],
            "case {k}: extension bytes differ"
        );
        assert_eq!(s.ext_slots, ext_part.len() / 16, "case {k}");
        assert_eq!(
            s.ext_lines,
            ext_part.len().div_ceil(64),
            "case {k}: each extension line once"
        );
        assert_eq!(
            s.log_lines,
            (lane_part.len()).div_ceil(64),
            "case {k}: each log line once"
        );
        for r in &ranges {
            assert_eq!(bytes(&pool, r.target, r.data.len()), r.data, "case {k}");
        }
    }
    sim.clear_crash_hook();
}
