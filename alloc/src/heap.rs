//! The heap's on-media format (`docs/ALLOC.md` §1–2): geometry derived from the pool header,
//! and the 8-byte chunk header.

use crate::classes;

/// Unit of runs and spans.
pub const CHUNK: u64 = 256 << 10;
/// Bytes of allocation bitmap per chunk: one bit per 16-byte block.
pub const BITMAP_SLOT: u64 = CHUNK / 16 / 8;
/// Size of a chunk header.
pub const CHUNK_HEADER: u64 = 8;
/// Metadata bytes per chunk: its header and its bitmap slot.
pub const META_PER_CHUNK: u64 = CHUNK_HEADER + BITMAP_SLOT;
/// Chunks per frontier-scan group.
pub const SCAN_GROUP: u32 = 1024;

const PAGE: u64 = 4096;

/// Where the heap's structures lie (pool offsets), derived from `heap_offset` and `heap_size`.
///
/// ```
/// use pmstore_alloc::heap::{HeapGeometry, BITMAP_SLOT, CHUNK};
///
/// let g = HeapGeometry::new(1 << 20, 4 << 20); // a 4 MiB heap at 1 MiB
/// assert_eq!(g.chunks, 15); // chunks, headers and bitmaps fit in 4 MiB
/// assert_eq!(g.bitmaps, g.heap_offset + 8 * 15);
/// assert!(g.bitmaps + 15 * BITMAP_SLOT <= g.data && g.data % 4096 == 0);
/// assert!(g.data + 15 * CHUNK <= g.heap_offset + g.heap_size);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeapGeometry {
    /// `H`: first byte of the heap (chunk header 0).
    pub heap_offset: u64,
    /// `S`: heap size.
    pub heap_size: u64,
    /// `N`: number of chunks.
    pub chunks: u32,
    /// First bitmap slot: `H + 8N`.
    pub bitmaps: u64,
    /// `D`: first byte of chunk 0, `roundup(H + 8N + 2048N, 4096)`.
    pub data: u64,
}

/// Locating chunk headers, bitmaps and data.
///
/// ```
/// use pmstore_alloc::heap::{HeapGeometry, CHUNK};
///
/// let g = HeapGeometry::new(1 << 20, 4 << 20);
/// let off = g.chunk_offset(3) + 100;
/// assert_eq!(g.chunk_of(off), Some(3));
/// assert!(g.in_metadata(g.header_offset(3)));
/// assert!(!g.in_metadata(off));
/// assert_eq!(g.data_end() - g.data, u64::from(g.chunks) * CHUNK);
/// ```
impl HeapGeometry {
    /// The geometry of a heap `[heap_offset, heap_offset + heap_size)`: `N` is the largest
    /// `n` with `roundup(H + 8n + 2048n, 4096) + n × CHUNK <= H + S` (capped at `u32::MAX`).
    ///
    /// ```
    /// use pmstore_alloc::heap::{HeapGeometry, CHUNK};
    ///
    /// let g = HeapGeometry::new(4096, 8 * CHUNK);
    /// assert_eq!(g.chunks, 7); // the metadata takes part of the eighth chunk's room
    /// assert_eq!(g.data, 4096 * 5); // roundup(4096 + 7 × 2056, 4096)
    /// assert_eq!(HeapGeometry::new(4096, 4096).chunks, 0); // too small for a chunk
    /// ```
    pub fn new(heap_offset: u64, heap_size: u64) -> HeapGeometry {
        let end = heap_offset + heap_size;
        let fits = |n: u64| {
            (heap_offset + n * META_PER_CHUNK)
                .checked_next_multiple_of(PAGE)
                .and_then(|d| d.checked_add(n * CHUNK))
                .is_some_and(|e| e <= end)
        };
        let mut n = (heap_size / (CHUNK + META_PER_CHUNK)).min(u64::from(u32::MAX));
        while n > 0 && !fits(n) {
            n -= 1;
        }
        while n < u64::from(u32::MAX) && fits(n + 1) {
            n += 1;
        }
        HeapGeometry {
            heap_offset,
            heap_size,
            chunks: n as u32,
            bitmaps: heap_offset + n * CHUNK_HEADER,
            data: (heap_offset + n * META_PER_CHUNK).next_multiple_of(PAGE),
        }
    }

    /// Pool offset of chunk `i`'s header.
    ///
    /// ```
    /// use pmstore_alloc::heap::{HeapGeometry, CHUNK_HEADER};
    ///
    /// let g = HeapGeometry::new(1 << 20, 4 << 20);
    /// assert_eq!(g.header_offset(0), 1 << 20);
    /// assert_eq!(g.header_offset(2), (1 << 20) + 2 * CHUNK_HEADER);
    /// ```
    pub fn header_offset(&self, i: u32) -> u64 {
        self.heap_offset + u64::from(i) * CHUNK_HEADER
    }

    /// Pool offset of chunk `i`'s bitmap slot.
    ///
    /// ```
    /// use pmstore_alloc::heap::{HeapGeometry, BITMAP_SLOT};
    ///
    /// let g = HeapGeometry::new(1 << 20, 4 << 20);
    /// assert_eq!(g.bitmap_offset(0), g.bitmaps);
    /// assert_eq!(g.bitmap_offset(1) - g.bitmap_offset(0), BITMAP_SLOT); // 2048 bytes
    /// ```
    pub fn bitmap_offset(&self, i: u32) -> u64 {
        self.bitmaps + u64::from(i) * BITMAP_SLOT
    }

    /// Pool offset of chunk `i`'s first data byte.
    ///
    /// ```
    /// use pmstore_alloc::heap::{HeapGeometry, CHUNK};
    ///
    /// let g = HeapGeometry::new(1 << 20, 4 << 20);
    /// assert_eq!(g.chunk_offset(0), g.data);
    /// assert_eq!(g.chunk_offset(1), g.data + CHUNK);
    /// ```
    pub fn chunk_offset(&self, i: u32) -> u64 {
        self.data + u64::from(i) * CHUNK
    }

    /// End of the data area: `D + N × CHUNK`.
    ///
    /// ```
    /// use pmstore_alloc::heap::HeapGeometry;
    ///
    /// let g = HeapGeometry::new(1 << 20, 4 << 20);
    /// assert_eq!(g.data_end(), g.chunk_offset(g.chunks));
    /// assert!(g.data_end() <= g.heap_offset + g.heap_size);
    /// ```
    pub fn data_end(&self) -> u64 {
        self.chunk_offset(self.chunks)
    }

    /// The chunk holding pool offset `off`, if it is in the data area.
    ///
    /// ```
    /// use pmstore_alloc::heap::HeapGeometry;
    ///
    /// let g = HeapGeometry::new(1 << 20, 4 << 20);
    /// assert_eq!(g.chunk_of(g.chunk_offset(2) + 5), Some(2));
    /// assert_eq!(g.chunk_of(g.data - 1), None); // metadata
    /// assert_eq!(g.chunk_of(g.data_end()), None); // past the last chunk
    /// ```
    pub fn chunk_of(&self, off: u64) -> Option<u32> {
        (self.data..self.data_end())
            .contains(&off)
            .then(|| ((off - self.data) / CHUNK) as u32)
    }

    /// Whether `off` lies in the heap's metadata (`[H, D)`).
    ///
    /// ```
    /// use pmstore_alloc::heap::HeapGeometry;
    ///
    /// let g = HeapGeometry::new(1 << 20, 4 << 20);
    /// assert!(g.in_metadata(g.bitmap_offset(0)));
    /// assert!(!g.in_metadata(g.data));
    /// assert!(!g.in_metadata(g.heap_offset - 1));
    /// ```
    pub fn in_metadata(&self, off: u64) -> bool {
        (self.heap_offset..self.data).contains(&off)
    }
}

/// A decoded chunk header (`docs/ALLOC.md` §2).
///
/// ```
/// use pmstore_alloc::classes::class_for;
/// use pmstore_alloc::heap::ChunkHeader;
///
/// let c = class_for(64).unwrap();
/// let run = ChunkHeader::Run { class: c.id, len: c.run_chunks };
/// assert_eq!(ChunkHeader::decode(run.encode()), Ok(run));
/// assert_eq!(ChunkHeader::decode(0), Ok(ChunkHeader::Free));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkHeader {
    /// A free chunk, or one covered by an earlier run or span (header word 0).
    Free,
    /// First chunk of a run of class `class` covering `len` chunks.
    Run {
        /// Size-class id.
        class: u8,
        /// Chunks covered (`L(class)`).
        len: u32,
    },
    /// First chunk of a span of `len` chunks.
    Span {
        /// Chunks covered.
        len: u32,
    },
}

/// Kind byte of a free chunk.
pub const KIND_FREE: u8 = 0;
/// Kind byte of a run's first chunk.
pub const KIND_RUN: u8 = 1;
/// Kind byte of a span's first chunk.
pub const KIND_SPAN: u8 = 2;

/// Why heap metadata is corrupt (see [`crate::AllocError::CorruptHeap`]).
///
/// ```
/// use pmstore_alloc::heap::{ChunkHeader, HeapCorruption};
///
/// let err = ChunkHeader::decode(7).unwrap_err(); // kind byte 7
/// assert_eq!(err, HeapCorruption::BadKind(7));
/// assert_eq!(err.to_string(), "unknown chunk kind 7");
/// assert_eq!(ChunkHeader::decode(1 << 16), Err(HeapCorruption::ReservedNotZero));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeapCorruption {
    /// The kind byte is not 0, 1 or 2.
    #[error("unknown chunk kind {0}")]
    BadKind(u8),
    /// The reserved bits 16..32 are not zero.
    #[error("reserved header bits are not zero")]
    ReservedNotZero,
    /// A free header with a non-zero class or length.
    #[error("free chunk header with non-zero fields")]
    FreeNotZero,
    /// A run header's class id is not in the class table.
    #[error("unknown size class {0}")]
    BadClass(u8),
    /// A span header with a non-zero class.
    #[error("span header with class {0}")]
    SpanClass(u8),
    /// A run or span of length 0.
    #[error("run or span of length 0")]
    ZeroLength,
    /// A run whose length is not `L(class)`.
    #[error("run of class {class} covers {len} chunks, expected {expected}")]
    RunLength {
        /// Class id.
        class: u8,
        /// Length found.
        len: u32,
        /// `L(class)`.
        expected: u32,
    },
    /// A run or span running past the last chunk.
    #[error("covers {len} chunks, past the end of the heap")]
    PastEnd {
        /// Length found.
        len: u32,
    },
    /// A non-zero header inside the chunks an earlier run or span covers.
    #[error("non-zero header inside the run or span starting at chunk {start}")]
    Covered {
        /// First chunk of the covering run or span.
        start: u32,
    },
    /// A run's bitmap has bits set past its last block.
    #[error("bitmap bit {bit} set past the run's {blocks} blocks")]
    BitmapPastBlocks {
        /// First offending bit.
        bit: u32,
        /// Blocks in the run.
        blocks: u32,
    },
    /// The bitmap slot of a free chunk is not zero.
    #[error("bitmap slot of a free chunk is not zero")]
    FreeBitmap,
}

/// Encoding, decoding and inspecting chunk headers.
///
/// ```
/// use pmstore_alloc::heap::ChunkHeader;
///
/// let span = ChunkHeader::Span { len: 3 };
/// let word = span.encode();
/// assert_eq!(ChunkHeader::decode(word), Ok(span));
/// assert_eq!(span.chunks(), 3);
/// assert!(!span.is_free());
/// ```
impl ChunkHeader {
    /// The header word.
    ///
    /// ```
    /// use pmstore_alloc::heap::{ChunkHeader, KIND_RUN, KIND_SPAN};
    ///
    /// assert_eq!(ChunkHeader::Free.encode(), 0);
    /// assert_eq!(ChunkHeader::Span { len: 2 }.encode(), u64::from(KIND_SPAN) | 2 << 32);
    /// let run = ChunkHeader::Run { class: 4, len: 1 }.encode();
    /// assert_eq!(run, u64::from(KIND_RUN) | 4 << 8 | 1 << 32);
    /// ```
    pub fn encode(self) -> u64 {
        match self {
            ChunkHeader::Free => 0,
            ChunkHeader::Run { class, len } => {
                u64::from(KIND_RUN) | u64::from(class) << 8 | u64::from(len) << 32
            }
            ChunkHeader::Span { len } => u64::from(KIND_SPAN) | u64::from(len) << 32,
        }
    }

    /// Decodes a header word, checking every field (not the heap bounds: see the scan).
    ///
    /// ```
    /// use pmstore_alloc::classes::class;
    /// use pmstore_alloc::heap::{ChunkHeader, HeapCorruption, KIND_RUN};
    ///
    /// let c = class(0).unwrap();
    /// let word = |len: u32| u64::from(KIND_RUN) | u64::from(len) << 32; // class 0
    /// assert_eq!(
    ///     ChunkHeader::decode(word(c.run_chunks)),
    ///     Ok(ChunkHeader::Run { class: 0, len: c.run_chunks })
    /// );
    /// assert!(matches!(
    ///     ChunkHeader::decode(word(c.run_chunks + 1)),
    ///     Err(HeapCorruption::RunLength { class: 0, .. })
    /// ));
    /// assert_eq!(ChunkHeader::decode(2), Err(HeapCorruption::ZeroLength)); // a span of 0 chunks
    /// ```
    pub fn decode(word: u64) -> Result<ChunkHeader, HeapCorruption> {
        let kind = word as u8;
        let class = (word >> 8) as u8;
        let reserved = (word >> 16) as u16;
        let len = (word >> 32) as u32;
        if reserved != 0 {
            return Err(HeapCorruption::ReservedNotZero);
        }
        match kind {
            KIND_FREE if word == 0 => Ok(ChunkHeader::Free),
            KIND_FREE => Err(HeapCorruption::FreeNotZero),
            KIND_RUN => {
                let c = classes::class(class).ok_or(HeapCorruption::BadClass(class))?;
                if len == 0 {
                    Err(HeapCorruption::ZeroLength)
                } else if len != c.run_chunks {
                    Err(HeapCorruption::RunLength {
                        class,
                        len,
                        expected: c.run_chunks,
                    })
                } else {
                    Ok(ChunkHeader::Run { class, len })
                }
            }
            KIND_SPAN if class != 0 => Err(HeapCorruption::SpanClass(class)),
            KIND_SPAN if len == 0 => Err(HeapCorruption::ZeroLength),
            KIND_SPAN => Ok(ChunkHeader::Span { len }),
            k => Err(HeapCorruption::BadKind(k)),
        }
    }

    /// Chunks covered (0 for a free chunk).
    ///
    /// ```
    /// use pmstore_alloc::heap::ChunkHeader;
    ///
    /// assert_eq!(ChunkHeader::Free.chunks(), 0);
    /// assert_eq!(ChunkHeader::Span { len: 5 }.chunks(), 5);
    /// assert_eq!(ChunkHeader::Run { class: 0, len: 1 }.chunks(), 1);
    /// ```
    pub fn chunks(self) -> u32 {
        match self {
            ChunkHeader::Free => 0,
            ChunkHeader::Run { len, .. } | ChunkHeader::Span { len } => len,
        }
    }

    /// Whether this is [`ChunkHeader::Free`].
    ///
    /// ```
    /// use pmstore_alloc::heap::ChunkHeader;
    ///
    /// assert!(ChunkHeader::Free.is_free());
    /// assert!(!ChunkHeader::Span { len: 1 }.is_free());
    /// ```
    pub fn is_free(self) -> bool {
        self == ChunkHeader::Free
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classes::class_for;

    #[test]
    fn constants() {
        assert_eq!(BITMAP_SLOT, 2048);
        assert_eq!(META_PER_CHUNK, 2056);
    }

    #[test]
    fn geometry_is_maximal_and_disjoint() {
        for (h, s) in [
            (1 << 20, 7 << 20),
            (4096, 8 << 20),
            (1 << 20, 1 << 30),
            (8192, CHUNK + 8192),
            (8192, 100),
        ] {
            let g = HeapGeometry::new(h, s);
            let n = u64::from(g.chunks);
            assert_eq!(g.bitmaps, h + 8 * n);
            assert!(g.bitmaps + n * BITMAP_SLOT <= g.data);
            assert_eq!(g.data % 4096, 0);
            assert!(g.data_end() <= h + s || n == 0);
            let g1 = (h + (n + 1) * META_PER_CHUNK).next_multiple_of(4096) + (n + 1) * CHUNK;
            assert!(g1 > h + s, "N is maximal");
        }
        let g = HeapGeometry::new(1 << 20, 1 << 30);
        assert_eq!(g.chunk_of(g.data), Some(0));
        assert_eq!(g.chunk_of(g.data + CHUNK), Some(1));
        assert_eq!(g.chunk_of(g.data - 1), None);
        assert_eq!(g.chunk_of(g.data_end()), None);
        assert!(g.in_metadata(g.heap_offset) && !g.in_metadata(g.data));
    }

    #[test]
    fn header_round_trip() {
        let c = class_for(64).unwrap();
        for h in [
            ChunkHeader::Free,
            ChunkHeader::Run {
                class: c.id,
                len: c.run_chunks,
            },
            ChunkHeader::Span { len: 1 },
            ChunkHeader::Span { len: u32::MAX },
        ] {
            assert_eq!(ChunkHeader::decode(h.encode()), Ok(h));
        }
        assert_eq!(
            ChunkHeader::Run { class: 3, len: 1 }.encode(),
            0x0000_0001_0000_0301
        );
    }

    #[test]
    fn corrupt_headers_are_typed_errors() {
        use HeapCorruption::*;
        let big = class_for(CHUNK).unwrap();
        let cases: [(u64, HeapCorruption); 9] = [
            (3, BadKind(3)),
            (0xff, BadKind(0xff)),
            (1 << 16 | 2 | 1 << 32, ReservedNotZero),
            (1 << 32, FreeNotZero),
            (1 | 250 << 8 | 1 << 32, BadClass(250)),
            (2 | 1 << 8 | 1 << 32, SpanClass(1)),
            (2, ZeroLength),
            (1 | 3 << 8, ZeroLength),
            (
                1 | u64::from(big.id) << 8 | 1 << 32,
                RunLength {
                    class: big.id,
                    len: 1,
                    expected: 8,
                },
            ),
        ];
        for (w, e) in cases {
            assert_eq!(ChunkHeader::decode(w), Err(e), "word {w:#x}");
        }
    }
}
