//! The heap walk of `check`, `stats` and `dump-root`: every chunk header and bitmap slot,
//! read directly (`docs/ALLOC.md` §1–3), so that every finding is reported, not just the
//! first, with a progress bar for large pools.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use pmstore::alloc::classes;
use pmstore::alloc::heap::{ChunkHeader, HeapCorruption, HeapGeometry, BITMAP_SLOT, CHUNK};
use pmstore::pool::Pool;

use super::examine::{Finding, Options};

/// Pools larger than this get a progress bar while the heap is scanned (on a terminal).
pub const PROGRESS_MIN: u64 = 1 << 30;
/// Chunk headers read per batch.
const HEADER_BATCH: u32 = 4096;

/// Live blocks of one size class.
#[derive(Clone, Copy, Debug, Default)]
pub struct ClassUse {
    /// Class id.
    pub id: u8,
    /// Block size.
    pub size: u64,
    /// Runs of this class.
    pub runs: u64,
    /// Chunks those runs cover.
    pub chunks: u64,
    /// Blocks those runs hold.
    pub capacity: u64,
    /// Live blocks.
    pub blocks: u64,
}

/// What the heap walk found.
#[derive(Clone, Debug, Default)]
pub struct HeapReport {
    /// Pool offset of the heap.
    pub offset: u64,
    /// Heap size.
    pub size: u64,
    /// Pool offset of chunk 0's data.
    pub data_offset: u64,
    /// Chunks (`N`).
    pub chunks: u32,
    /// Chunks walked (all of them unless the walk stopped at the root).
    pub chunks_walked: u32,
    /// Free chunks.
    pub free_chunks: u64,
    /// Chunks covered by runs.
    pub run_chunks: u64,
    /// Runs.
    pub runs: u64,
    /// Spans.
    pub spans: u64,
    /// Chunks covered by spans.
    pub span_chunks: u64,
    /// Chunks whose header does not decode.
    pub bad_chunks: u64,
    /// Live blocks in runs.
    pub live_blocks: u64,
    /// Usable bytes of live blocks and spans.
    pub bytes_allocated: u64,
    /// Classes with at least one run, by class id.
    pub classes: Vec<ClassUse>,
    /// Every live block and span (offset, usable size), if asked for.
    pub blocks: Vec<(u64, u64)>,
}

/// The root object's block, as the heap walk found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RootBlock {
    /// A live block of a run of this class.
    Block {
        /// Class id.
        class: u8,
        /// Block size.
        size: u64,
    },
    /// The start of a live span.
    Span {
        /// Span size.
        size: u64,
    },
    /// Not the start of a live block (the text says why).
    NotLive(&'static str),
}

/// Reads chunk headers in batches.
struct Headers<'a> {
    pool: &'a Pool,
    geo: HeapGeometry,
    start: u32,
    words: Vec<u64>,
}

impl Headers<'_> {
    fn get(&mut self, i: u32) -> u64 {
        if i < self.start || i - self.start >= self.words.len() as u32 {
            let n = HEADER_BATCH.min(self.geo.chunks - i);
            let mut raw = vec![0u8; n as usize * 8];
            // SAFETY: as in `Examination::read`.
            unsafe { self.pool.read(self.geo.header_offset(i), &mut raw) };
            self.words = raw
                .chunks_exact(8)
                .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
                .collect();
            self.start = i;
        }
        self.words[(i - self.start) as usize]
    }
}

fn progress_bar(pool: &Pool, chunks: u32) -> ProgressBar {
    if pool.size() <= PROGRESS_MIN || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(Some(u64::from(chunks)), ProgressDrawTarget::stderr());
    pb.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:40}] {pos}/{len} chunks, {elapsed_precise} (eta {eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_message("scanning heap");
    pb
}

/// Walks every chunk header (and bitmap slot) of the heap: checks them, counts live blocks
/// per class and resolves the root object's block.
pub fn walk_heap(
    pool: &Pool,
    root: u64,
    opts: &Options,
) -> (HeapReport, Option<RootBlock>, Vec<Finding>) {
    let g = pool.geometry();
    let geo = HeapGeometry::new(g.heap_offset, g.heap_size);
    let n = geo.chunks;
    let mut rep = HeapReport {
        offset: g.heap_offset,
        size: g.heap_size,
        data_offset: geo.data,
        chunks: n,
        ..HeapReport::default()
    };
    let mut per_class = vec![ClassUse::default(); classes::classes().len()];
    let mut findings = Vec::new();
    let mut find = |chunk: u32, offset: u64, message: String| {
        findings.push(Finding {
            area: "heap",
            lane: None,
            chunk: Some(chunk),
            offset: Some(offset),
            message: format!("chunk {chunk}: {message}"),
        })
    };
    let root_chunk = (root != 0).then(|| geo.chunk_of(root)).flatten();
    let mut root_block = None;
    let mut headers = Headers {
        pool,
        geo,
        start: 0,
        words: Vec::new(),
    };
    let mut slot = vec![0u8; BITMAP_SLOT as usize];
    let read_slot = |i: u32, slot: &mut [u8]| {
        // SAFETY: as in `Examination::read`.
        unsafe { pool.read(geo.bitmap_offset(i), slot) };
    };
    let check_slots = !opts.root_only;
    let pb = progress_bar(pool, n);
    let mut i = 0u32;
    let mut last_tick = 0u32;
    while i < n {
        if opts.root_only && root_chunk.map_or(true, |r| i > r) {
            break;
        }
        if i - last_tick >= 1024 {
            pb.set_position(u64::from(i));
            last_tick = i;
        }
        let word = headers.get(i);
        let hoff = geo.header_offset(i);
        let h = match ChunkHeader::decode(word) {
            Ok(h) => h,
            Err(why) => {
                find(i, hoff, format!("chunk header {word:#018x}: {why}"));
                rep.bad_chunks += 1;
                if root_chunk == Some(i) {
                    root_block = Some(RootBlock::NotLive("its chunk's header is corrupt"));
                }
                i += 1;
                continue;
            }
        };
        if h.is_free() {
            rep.free_chunks += 1;
            if check_slots {
                read_slot(i, &mut slot);
                if slot.iter().any(|&b| b != 0) {
                    find(
                        i,
                        geo.bitmap_offset(i),
                        HeapCorruption::FreeBitmap.to_string(),
                    );
                }
            }
            if root_chunk == Some(i) {
                root_block = Some(RootBlock::NotLive("it lies in a free chunk"));
            }
            i += 1;
            continue;
        }
        let len = h.chunks();
        let avail = n - i;
        let covered = if len > avail {
            find(i, hoff, HeapCorruption::PastEnd { len }.to_string());
            avail
        } else {
            len
        };
        for j in i + 1..i + covered {
            let w = headers.get(j);
            if w != 0 {
                find(
                    j,
                    geo.header_offset(j),
                    format!(
                        "header {w:#018x}: {} (overlapping runs or spans)",
                        HeapCorruption::Covered { start: i }
                    ),
                );
            }
            if check_slots {
                read_slot(j, &mut slot);
                if slot.iter().any(|&b| b != 0) {
                    find(
                        j,
                        geo.bitmap_offset(j),
                        format!("bitmap slot of a chunk inside the run or span at chunk {i} is not zero"),
                    );
                }
            }
        }
        let in_this = root_chunk.is_some_and(|r| r >= i && r < i + covered);
        let base = geo.chunk_offset(i);
        match h {
            ChunkHeader::Run { class, .. } => {
                let c = classes::class(class).expect("decoded");
                if !check_slots && !in_this {
                    i += covered;
                    continue;
                }
                read_slot(i, &mut slot);
                let blocks = c.blocks;
                let mut live = 0u64;
                let mut past = None;
                for (w, b) in slot.chunks_exact(8).enumerate() {
                    let mut m = u64::from_le_bytes(b.try_into().expect("8 bytes"));
                    while m != 0 {
                        let bit = w as u32 * 64 + m.trailing_zeros();
                        m &= m - 1;
                        if bit >= blocks {
                            past.get_or_insert(bit);
                            continue;
                        }
                        live += 1;
                        if opts.list_blocks {
                            rep.blocks.push((base + u64::from(bit) * c.size, c.size));
                        }
                    }
                }
                if let Some(bit) = past {
                    find(
                        i,
                        geo.bitmap_offset(i),
                        HeapCorruption::BitmapPastBlocks { bit, blocks }.to_string(),
                    );
                }
                if in_this {
                    let rel = root - base;
                    let block = rel / c.size;
                    let set = block < u64::from(blocks) && {
                        let byte = slot[(block / 8) as usize];
                        byte & (1 << (block % 8)) != 0
                    };
                    root_block = Some(if rel % c.size != 0 || block >= u64::from(blocks) {
                        RootBlock::NotLive("not the start of a block of its run")
                    } else if !set {
                        RootBlock::NotLive("its block is free (bit clear in the run's bitmap)")
                    } else {
                        RootBlock::Block {
                            class,
                            size: c.size,
                        }
                    });
                }
                rep.runs += 1;
                rep.run_chunks += u64::from(covered);
                rep.live_blocks += live;
                rep.bytes_allocated += live * c.size;
                let u = &mut per_class[usize::from(class)];
                u.id = class;
                u.size = c.size;
                u.runs += 1;
                u.chunks += u64::from(covered);
                u.capacity += u64::from(blocks);
                u.blocks += live;
            }
            ChunkHeader::Span { .. } => {
                let size = u64::from(len) * CHUNK;
                if check_slots {
                    read_slot(i, &mut slot);
                    if slot.iter().any(|&b| b != 0) {
                        find(
                            i,
                            geo.bitmap_offset(i),
                            "bitmap slot of a span's first chunk is not zero".into(),
                        );
                    }
                }
                if in_this {
                    root_block = Some(if root == base {
                        RootBlock::Span { size }
                    } else {
                        RootBlock::NotLive("inside a span, not at its start")
                    });
                }
                rep.spans += 1;
                rep.span_chunks += u64::from(covered);
                rep.bytes_allocated += size;
                if opts.list_blocks {
                    rep.blocks.push((base, size));
                }
            }
            ChunkHeader::Free => unreachable!("handled above"),
        }
        i += covered;
    }
    pb.finish_and_clear();
    rep.chunks_walked = i.min(n);
    rep.classes = per_class.into_iter().filter(|u| u.runs > 0).collect();
    (rep, root_block, findings)
}
