//! Open + recover + use an arbitrarily damaged pool through the transactional layer.
//!
//! The template is a valid 8 MiB simulated pool (4 lanes of 16 KiB) that already holds data: a
//! root `[u64; 4]` whose words point at three `[u64; 8]` blocks and at a span of more than one
//! chunk, with one more block allocated and freed. The fuzz input is a list of edits applied to
//! the template's media image, then the image is opened (`Pool::open_simulated`), recovered
//! (`pmstore_tx::Pool::from_raw`: redo recovery + root-area check) and, if that succeeds, used:
//! root, a read transaction following the root's words, a transaction that allocates and
//! frees (and frees what a root word points at), `for_each_allocated`, `stats`, then the
//! resulting image is (for one input in eight) opened and recovered once more. Any `Err` is fine; a panic, hang or UB
//! is a finding.
//!
//! Input: a sequence of edits, each starting with an op byte `op`:
//! - `op % 8` in `0..=5`: raw bytes into region `op % 8` (see [`Region`]; lane = `(op >> 3) & 3`):
//!   `[op, off: u16, len: u8, bytes × len]`, written at `off % region_len` (clipped).
//! - `op % 8 == 6`: a pointer-ish word: `[6, region: u8, off: u16, vregion: u8, voff: u16]`
//!   writes the u64 `base(vregion) + voff` at the 8-aligned `base(region) + off * 8`.
//! - `op % 8 == 7`: a checksummed redo log in lane `(op >> 3) & 3` (so recovery replays it):
//!   `[7, seq: u64, n: u8, n × (region: u8, off: u16, value: u64)]`, entry target
//!   `base(region) + off * 8` (or, for region `0xff`, `value`'s low 24 bits unaligned).
//!   With bit 5 of `op` set: `[op, cap: u8, eregion: u8, eoff: u16, seq, n, entries…]`, entries
//!   with bit 7 of their region byte are range entries (`value` repeated `1 + off >> 12` times
//!   at `base(region & 0x7f) + (off & 0xfff) * 8`), and the log is laid out as
//!   `encode_log_ext` does for an in-lane capacity of `cap` slots (0: the lane's real one) with its extension at
//!   `base(eregion) + eoff * 64` (so it may or may not be consistent with the real lane).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pmstore_alloc::heap::HeapGeometry;
use pmstore_alloc::redo::{encode_log, encode_log_ext, RedoEntry, RedoRange, REDO_ENTRY_SIZE, REDO_HEADER_SIZE};
use pmstore_pool::{CreateOptions, OpenOptions, Pool as RawPool};
use pmstore_tx::{PPtr, Pool, TxError};

const POOL_SIZE: u64 = 8 << 20;
const LANES: u32 = 4;
const LANE_SIZE: u32 = 16 << 10;

struct Template {
    image: Vec<u8>,
    /// `(offset, len)` of the regions edits may hit: see [`Region`].
    regions: [(u64, u64); 6],
    lanes: [u64; LANES as usize],
}

/// Region selectors (`op % 8` / the region byte modulo 6).
#[allow(dead_code)]
enum Region {
    /// A lane (its redo log): `(op >> 3) & 3` picks which; for word edits, lane 0.
    Lane = 0,
    /// The root area (root entry + reserved bytes).
    Root = 1,
    /// The chunk headers (all of them: 8 bytes each).
    ChunkHeaders = 2,
    /// The first four bitmap slots.
    Bitmaps = 3,
    /// Chunk 0's data.
    Chunk0 = 4,
    /// Chunk 1's data.
    Chunk1 = 5,
}

fn template() -> &'static Template {
    static T: OnceLock<Template> = OnceLock::new();
    T.get_or_init(|| {
        let (raw, sim) =
            RawPool::create_simulated(&CreateOptions::new("fuzz", POOL_SIZE).lanes(LANES, LANE_SIZE))
                .unwrap();
        let g = raw.geometry();
        let pool = Pool::from_raw(raw).unwrap();
        let root = pool.root::<[u64; 4]>().unwrap();
        pool.transaction(|tx| -> Result<(), TxError> {
            let a = tx.alloc([1u64; 8])?;
            let b = tx.alloc([2u64; 8])?;
            let c = tx.alloc([3u64; 8])?;
            let gone = tx.alloc([4u64; 8])?;
            tx.free(gone)?;
            let span = tx.alloc_slice_zeroed::<u8>(300 << 10)?;
            *tx.get_mut(root)? = [a.offset(), b.offset(), c.offset(), span.at(0).offset()];
            Ok(())
        })
        .unwrap();
        drop(pool);
        let h = HeapGeometry::new(g.heap_offset, g.heap_size);
        let lanes = std::array::from_fn(|i| g.lane_offset(i as u32));
        Template {
            image: sim.media_image(),
            regions: [
                (g.lanes_offset, u64::from(LANE_SIZE)),
                (g.root_offset, g.root_size),
                (h.heap_offset, u64::from(h.chunks) * 8),
                (h.bitmaps, 4 * pmstore_alloc::heap::BITMAP_SLOT),
                (h.chunk_offset(0), pmstore_alloc::heap::CHUNK),
                (h.chunk_offset(1), pmstore_alloc::heap::CHUNK),
            ],
            lanes,
        }
    })
}

struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (a, b) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8).map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    }
}

fn apply_edits(t: &Template, image: &mut [u8], data: &[u8]) {
    let mut inp = Input(data);
    let base = |r: u8| t.regions[usize::from(r) % 6].0;
    let put = |image: &mut [u8], at: u64, bytes: &[u8]| {
        let at = at as usize;
        let end = (at + bytes.len()).min(image.len());
        if at < end {
            image[at..end].copy_from_slice(&bytes[..end - at]);
        }
    };
    while let Some(op) = inp.u8() {
        let lane = usize::from((op >> 3) & 3);
        match op % 8 {
            r @ 0..=5 => {
                let (Some(off), Some(len)) = (inp.u16(), inp.u8()) else { return };
                let Some(bytes) = inp.take(usize::from(len)).or_else(|| Some(inp.0)) else {
                    return;
                };
                let (start, rlen) = if r == 0 {
                    (t.lanes[lane], u64::from(LANE_SIZE))
                } else {
                    t.regions[usize::from(r)]
                };
                if rlen == 0 {
                    continue;
                }
                let off = u64::from(off) % rlen;
                let n = (bytes.len() as u64).min(rlen - off) as usize;
                put(image, start + off, &bytes[..n]);
            }
            6 => {
                let (Some(r), Some(off), Some(vr), Some(voff)) =
                    (inp.u8(), inp.u16(), inp.u8(), inp.u16())
                else {
                    return;
                };
                let value = base(vr) + u64::from(voff);
                put(image, base(r) + u64::from(off) * 8, &value.to_le_bytes());
            }
            _ => {
                // Bit 5: a log with range entries, written as `LaneLog::commit_ops_ext` would
                // with a fuzzed in-lane capacity and its extension in the heap's data.
                let ext = op & 0x20 != 0;
                let ext_at = if ext {
                    let (Some(cap), Some(er), Some(eoff)) = (inp.u8(), inp.u8(), inp.u16()) else {
                        return;
                    };
                    // Capacity 0 stands for the lane's real one (so the log can be consistent).
                    let cap = match cap {
                        0 => ((LANE_SIZE as u64 - REDO_HEADER_SIZE) / REDO_ENTRY_SIZE) as usize,
                        c => usize::from(c),
                    };
                    Some((cap, base(er) + u64::from(eoff) * 64))
                } else {
                    None
                };
                let (Some(seq), Some(n)) = (inp.u64(), inp.u8()) else { return };
                let mut entries = Vec::new();
                let mut ranges: Vec<(u64, Vec<u8>)> = Vec::new();
                for _ in 0..n.min(200) {
                    let (Some(r), Some(off), Some(value)) = (inp.u8(), inp.u16(), inp.u64()) else {
                        break;
                    };
                    if r == 0xff {
                        entries.push(RedoEntry::new(value & 0xff_ffff, value));
                    } else if ext && r & 0x80 != 0 {
                        let reps = 1 + usize::from(off >> 12);
                        let data = value.to_le_bytes().repeat(reps);
                        ranges.push((base(r & 0x7f) + u64::from(off & 0xfff) * 8, data));
                    } else {
                        entries.push(RedoEntry::new(base(r) + u64::from(off) * 8, value));
                    }
                }
                let ranges: Vec<RedoRange<'_>> = ranges
                    .iter()
                    .map(|(target, data)| RedoRange { target: *target, data })
                    .collect();
                match ext_at {
                    None => put(image, t.lanes[lane], &encode_log(seq, &entries)),
                    Some((cap, at)) => {
                        let (in_lane, extension) = encode_log_ext(seq, &entries, &ranges, cap, at);
                        put(image, t.lanes[lane], &in_lane);
                        put(image, at, &extension);
                    }
                }
            }
        }
    }
}

/// `OPEN_TX_DEBUG=1` prints what recovery did (to check that seeds reach replay).
fn debug() -> bool {
    static D: OnceLock<bool> = OnceLock::new();
    *D.get_or_init(|| std::env::var_os("OPEN_TX_DEBUG").is_some())
}

fn exercise(pool: &Pool, knob: u64) {
    let Ok(root) = pool.root::<[u64; 4]>() else { return };
    let words = pool
        .read(|tx| -> Result<Vec<u64>, TxError> {
            let words = *tx.get(root)?;
            let mut seen = Vec::new();
            for w in words {
                if let Ok(v) = tx.get(PPtr::<[u64; 8]>::from_offset(w)) {
                    seen.push(v[0]);
                }
            }
            Ok(words.to_vec())
        })
        .unwrap_or_default();
    // Allocate, free, and free what the root points at (a forged pointer must be an error).
    let _ = pool.transaction(|tx| -> Result<(), TxError> {
        let p = tx.alloc([knob; 8])?;
        let s = tx.alloc_slice_zeroed::<u8>(1 + knob % (600 << 10))?;
        tx.free(p)?;
        tx.free_slice(s)?;
        let q = tx.alloc_zeroed::<[u64; 2]>()?;
        if let Some(&w) = words.get((knob % 4) as usize) {
            tx.free(PPtr::<[u64; 8]>::from_offset(w))?;
        }
        *tx.get_mut(q)? = [knob, 1];
        Ok(())
    });
    let mut n = 0u64;
    let _ = pool.heap().for_each_allocated(pool.raw(), |_, _| n += 1);
    let _ = pool.heap().stats(pool.raw());
}

fuzz_target!(|data: &[u8]| {
    let t = template();
    let mut image = t.image.clone();
    apply_edits(t, &mut image, data);
    let knob = data.iter().fold(0u64, |h, &b| h.rotate_left(5) ^ u64::from(b));
    let Ok((raw, sim)) = RawPool::open_simulated(&image, &OpenOptions::new("fuzz")) else {
        return;
    };
    let pool = match Pool::from_raw(raw) {
        Ok(pool) => pool,
        Err(e) => {
            if debug() {
                eprintln!("open_tx: recovery failed: {e}");
            }
            return;
        }
    };
    if debug() {
        eprintln!("open_tx: recovered: {:?}", pool.recovery_report());
    }
    exercise(&pool, knob);
    drop(pool);
    // What the use left on the media opens and recovers again (errors allowed); only for one
    // input in eight, as copying 8 MiB images dominates the time of an execution.
    if knob % 8 != 0 {
        return;
    }
    let after = sim.media_image();
    if let Ok((raw, _sim)) = RawPool::open_simulated(&after, &OpenOptions::new("fuzz")) {
        if let Ok(pool) = Pool::from_raw(raw) {
            let _ = pool.heap().stats(pool.raw());
        }
    }
});
