//! Integration tests of the allocator on real pools (forced-flush mode on /dev/shm).

use std::collections::{BTreeMap, BTreeSet};

use pmstore_alloc::classes::classes;
use pmstore_alloc::heap::CHUNK;
use pmstore_alloc::{AllocError, Heap};
use pmstore_pool::{Pool, MIN_POOL_SIZE};

mod common;
use common::*;

/// Allocates into root word `slot`.
fn alloc(heap: &Heap, pool: &Pool, size: u64, dest: u64) -> Result<u64, AllocError> {
    // SAFETY: single-threaded use of `dest` (a root word) in these tests.
    unsafe { heap.alloc(pool, size, dest) }
}

fn free(heap: &Heap, pool: &Pool, off: u64, dest: Option<u64>) -> Result<(), AllocError> {
    // SAFETY: as above.
    unsafe { heap.free(pool, off, dest) }
}

fn allocated(heap: &Heap, pool: &Pool) -> BTreeMap<u64, u64> {
    let mut m = BTreeMap::new();
    heap.for_each_allocated(pool, |o, s| assert!(m.insert(o, s).is_none()))
        .unwrap();
    m
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn random_size(rng: &mut Rng) -> u64 {
    match rng.below(10) {
        0..=5 => 1 + rng.below(256),
        6..=7 => 1 + rng.below(4096),
        8 => 1 + rng.below(CHUNK),
        _ => 1 + rng.below(3 * CHUNK),
    }
}

#[test]
fn every_class_and_spans_round_trip() {
    let (_d, path) = scratch();
    let mut pool = create(&path, 16 << 20);
    let (heap, _) = Heap::open(&mut pool).unwrap();
    let dest = root(&pool, 0);
    let mut sizes: Vec<(u64, u64)> = classes().iter().map(|c| (c.size, c.size)).collect();
    sizes.extend(classes().windows(2).map(|w| (w[0].size + 1, w[1].size)));
    sizes.extend([(CHUNK + 1, 2 * CHUNK), (3 * CHUNK, 3 * CHUNK), (0, 16)]);
    for (req, usable) in sizes {
        let off = alloc(&heap, &pool, req, dest).unwrap();
        assert_eq!(read_word(&pool, dest), off);
        assert_eq!(heap.usable_size(&pool, off).unwrap(), usable, "size {req}");
        if usable >= 64 {
            assert_eq!(off % 64, 0, "size {req} at {off:#x}");
        }
        assert_eq!(allocated(&heap, &pool), BTreeMap::from([(off, usable)]));
        // The block is writable over its whole usable size, outside the metadata.
        assert!(off >= heap.geometry().data && off + usable <= heap.geometry().data_end());
        // SAFETY: we own the block.
        unsafe { pool.write(off, &vec![0xA5; usable as usize]) };
        free(&heap, &pool, off, Some(dest)).unwrap();
        assert_eq!(read_word(&pool, dest), 0);
        assert!(matches!(
            free(&heap, &pool, off, None),
            Err(AllocError::InvalidFree { .. } | AllocError::DoubleFree { .. })
        ));
    }
    let s = heap.stats(&pool).unwrap();
    assert_eq!(s.bytes_allocated, 0);
    // Emptied runs are kept for their class (within the arena's budget), the others released.
    assert_eq!(s.free_chunks + s.empty_run_chunks, s.chunks, "{s:?}");
    assert!(s.empty_run_chunks > 0, "{s:?}");
    assert_eq!(heap.release_empty_runs(&pool).unwrap(), s.empty_run_chunks);
    assert_eq!(
        heap.stats(&pool).unwrap().free_chunks,
        s.chunks,
        "every run was released"
    );
}

/// Reads the chunk header of `block`'s chunk.
fn header_of(heap: &Heap, pool: &Pool, block: u64) -> u64 {
    let g = heap.geometry();
    read_word(pool, g.header_offset(g.chunk_of(block).unwrap()))
}

/// Alloc/free pairs in a run with no other live block keep the run: after the first pair, its
/// chunk header is never written again (it stays `RUN`), and a pair flushes only its bitmap
/// word, destination word and logs (8 lines), the lines of a pair in a run held open by
/// another block.
#[test]
fn alloc_free_pairs_keep_their_run() {
    let (_d, path) = scratch();
    let mut pool = create(&path, 16 << 20);
    let (heap, _) = Heap::open(&mut pool).unwrap();
    let d = root(&pool, 0);
    let pair = |heap: &Heap, pool: &Pool| {
        let a = alloc(heap, pool, 64, d).unwrap();
        free(heap, pool, a, Some(d)).unwrap();
        a
    };
    let first = pair(&heap, &pool);
    let run = header_of(&heap, &pool, first);
    assert_ne!(run, 0, "the emptied run keeps its header");
    let before = pool.counters();
    for _ in 0..100 {
        assert_eq!(pair(&heap, &pool), first, "the kept run's lowest block");
        assert_eq!(header_of(&heap, &pool, first), run);
    }
    let d1 = pool.counters() - before;
    // The same pairs with another block holding the run open.
    let keep = alloc(&heap, &pool, 64, root(&pool, 1)).unwrap();
    let before = pool.counters();
    for _ in 0..100 {
        pair(&heap, &pool);
    }
    let d2 = pool.counters() - before;
    assert_eq!(
        (d1.drains, d1.lines_flushed),
        (d2.drains, d2.lines_flushed),
        "{d1:?} vs {d2:?}"
    );
    free(&heap, &pool, keep, Some(root(&pool, 1))).unwrap();
    // Transactions' publications (the general path) keep it too: a free published with a
    // word, then an allocation.
    let mut rs = vec![heap.reserve(&pool, 64).unwrap()];
    let off = rs[0].offset();
    assert_eq!(off, first);
    // SAFETY: single-threaded; the root word is ours.
    unsafe { heap.publish(&pool, &mut rs, &[], &[(d, off)]) }.unwrap();
    let mut rs2 = vec![heap.reserve(&pool, 16).unwrap()];
    // SAFETY: as above.
    unsafe { heap.publish(&pool, &mut rs2, &[off], &[(d, 0)]) }.unwrap();
    assert_eq!(header_of(&heap, &pool, first), run);
    let s = heap.stats(&pool).unwrap();
    assert_eq!(s.empty_run_chunks, 1, "{s:?}"); // the 64-byte run; the 16-byte one is used
}

/// Random alloc/free against a model: no overlap, `for_each_allocated` equals the model, and
/// all of it survives a reopen.
#[test]
fn random_sequences_match_a_model_and_survive_reopen() {
    let (_d, path) = scratch();
    let mut pool = create(&path, 32 << 20);
    let mut model: BTreeMap<u64, u64> = BTreeMap::new(); // offset -> usable size
    let mut slots = [0u64; 512];
    {
        let (heap, _) = Heap::open(&mut pool).unwrap();
        let mut rng = Rng(7);
        for _ in 0..6000 {
            let i = rng.below(512);
            let dest = root(&pool, i);
            if slots[i as usize] == 0 {
                let size = random_size(&mut rng);
                match alloc(&heap, &pool, size, dest) {
                    Ok(off) => {
                        let usable = heap.usable_size(&pool, off).unwrap();
                        assert!(usable >= size);
                        if let Some((&o, &s)) = model.range(..off).next_back() {
                            assert!(o + s <= off, "{off:#x} overlaps {o:#x}+{s}");
                        }
                        if let Some((&o, _)) = model.range(off..).next() {
                            assert!(off + usable <= o, "{off:#x}+{usable} overlaps {o:#x}");
                        }
                        model.insert(off, usable);
                        slots[i as usize] = off;
                    }
                    Err(AllocError::OutOfSpace { .. }) => {}
                    Err(e) => panic!("{e}"),
                }
            } else {
                let off = slots[i as usize];
                free(&heap, &pool, off, Some(dest)).unwrap();
                model.remove(&off);
                slots[i as usize] = 0;
            }
            assert_eq!(read_word(&pool, dest), slots[i as usize]);
        }
        assert_eq!(allocated(&heap, &pool), model);
        let s = heap.stats(&pool).unwrap();
        assert_eq!(s.bytes_allocated, model.values().sum::<u64>());
    }
    drop(pool);
    let mut pool = open(&path);
    let (heap, _) = Heap::open(&mut pool).unwrap();
    assert_eq!(
        heap.stats(&pool).unwrap().chunks_scanned,
        0,
        "no scan at open"
    );
    for (i, &off) in slots.iter().enumerate() {
        assert_eq!(read_word(&pool, root(&pool, i as u64)), off);
    }
    assert_eq!(allocated(&heap, &pool), model);
    // Frees work after reopen; a second free is detected.
    let mut live: Vec<(usize, u64)> = slots
        .iter()
        .copied()
        .enumerate()
        .filter(|s| s.1 != 0)
        .collect();
    let (i, off) = live.pop().unwrap();
    assert_eq!(heap.usable_size(&pool, off).unwrap(), model[&off]);
    free(&heap, &pool, off, Some(root(&pool, i as u64))).unwrap();
    let again = free(&heap, &pool, off, None).unwrap_err();
    assert!(
        matches!(again, AllocError::DoubleFree { offset } | AllocError::InvalidFree { offset } if offset == off),
        "{again}"
    );
    for (i, off) in live {
        free(&heap, &pool, off, Some(root(&pool, i as u64))).unwrap();
    }
    assert!(allocated(&heap, &pool).is_empty());
    heap.release_empty_runs(&pool).unwrap();
    assert_eq!(
        heap.stats(&pool).unwrap().free_chunks,
        u64::from(heap.geometry().chunks)
    );
}

#[test]
fn double_free_after_reopen_of_a_run_block() {
    let (_d, path) = scratch();
    let mut pool = create(&path, MIN_POOL_SIZE);
    let (a, b);
    {
        let (heap, _) = Heap::open(&mut pool).unwrap();
        a = alloc(&heap, &pool, 64, root(&pool, 0)).unwrap();
        b = alloc(&heap, &pool, 64, root(&pool, 1)).unwrap();
        free(&heap, &pool, a, Some(root(&pool, 0))).unwrap();
    }
    drop(pool);
    let mut pool = open(&path);
    let (heap, _) = Heap::open(&mut pool).unwrap();
    assert_eq!(read_word(&pool, root(&pool, 1)), b);
    assert!(matches!(
        free(&heap, &pool, a, None),
        Err(AllocError::DoubleFree { offset }) if offset == a
    ));
    free(&heap, &pool, b, Some(root(&pool, 1))).unwrap();
    // Its run is empty now, kept: `b` is a free block of it, until the run is released.
    assert!(matches!(
        free(&heap, &pool, b, None),
        Err(AllocError::DoubleFree { offset }) if offset == b
    ));
    assert_eq!(heap.release_empty_runs(&pool).unwrap(), 1);
    assert!(matches!(
        free(&heap, &pool, b, None),
        Err(AllocError::InvalidFree { offset }) if offset == b
    ));
}

/// Fills the heap with `size` objects until `OutOfSpace` (one scratch destination word);
/// returns their offsets.
fn fill(heap: &Heap, pool: &Pool, size: u64) -> Vec<u64> {
    let dest = root(pool, 511);
    let mut v = Vec::new();
    loop {
        match alloc(heap, pool, size, dest) {
            Ok(off) => v.push(off),
            Err(AllocError::OutOfSpace { size: s }) => {
                assert_eq!(s, size);
                return v;
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn out_of_space_leaves_the_heap_usable() {
    let (_d, path) = scratch();
    let mut pool = create(&path, MIN_POOL_SIZE);
    let (heap, _) = Heap::open(&mut pool).unwrap();
    let n = u64::from(heap.geometry().chunks);
    assert!(matches!(
        alloc(&heap, &pool, n * CHUNK + 1, root(&pool, 0)),
        Err(AllocError::TooLarge { .. })
    ));
    let objs = fill(&heap, &pool, 4096);
    assert_eq!(objs.len() as u64, n * CHUNK / 4096);
    let before = pool_bytes(&pool);
    assert!(matches!(
        alloc(&heap, &pool, 16, root(&pool, 0)),
        Err(AllocError::OutOfSpace { size: 16 })
    ));
    assert!(matches!(
        alloc(&heap, &pool, 2 * CHUNK, root(&pool, 0)),
        Err(AllocError::OutOfSpace { .. })
    ));
    assert!(before == pool_bytes(&pool), "a failed alloc wrote nothing");
    // A free needs no allocation; then the space is reusable.
    free(&heap, &pool, objs[5], None).unwrap();
    assert_eq!(alloc(&heap, &pool, 4096, root(&pool, 0)).unwrap(), objs[5]);
    for &o in &objs {
        free(&heap, &pool, o, None).unwrap();
    }
    let s = heap.stats(&pool).unwrap();
    assert_eq!(
        (s.bytes_allocated, s.free_chunks + s.empty_run_chunks),
        (0, n)
    );
    assert_eq!(s.empty_run_chunks, 1, "one run kept for the class");
    let again = fill(&heap, &pool, 4096);
    assert_eq!(again.len(), objs.len());
}

#[test]
fn bad_frees_are_refused_and_change_nothing() {
    let (_d, path) = scratch();
    let mut pool = create(&path, MIN_POOL_SIZE);
    let (heap, _) = Heap::open(&mut pool).unwrap();
    let small = alloc(&heap, &pool, 64, root(&pool, 0)).unwrap();
    let span = alloc(&heap, &pool, 2 * CHUNK, root(&pool, 1)).unwrap();
    let g = *heap.geometry();
    let before = pool_bytes(&pool);
    let bad = [
        small + 8,
        small + 63,
        span + 64,
        span + CHUNK,
        g.heap_offset,
        g.heap_offset + 8,
        g.bitmaps,
        g.data - 8,
        g.data_end(),
        pool.size() - 8,
        0,
        g.chunk_offset(g.chunks - 1), // a free chunk
        u64::MAX - 7,
    ];
    for off in bad {
        let e = free(&heap, &pool, off, Some(root(&pool, 0))).unwrap_err();
        assert!(
            matches!(e, AllocError::InvalidFree { offset } if offset == off),
            "{off:#x}: {e}"
        );
        assert!(heap.usable_size(&pool, off).is_err());
    }
    // A free block of a live run is a double free.
    let e = free(&heap, &pool, small + 64, None).unwrap_err();
    assert!(matches!(e, AllocError::DoubleFree { .. }), "{e}");
    // A destination in the heap metadata is refused.
    let e = free(&heap, &pool, small, Some(g.heap_offset)).unwrap_err();
    assert!(matches!(e, AllocError::InvalidTarget { .. }), "{e}");
    assert!(before == pool_bytes(&pool), "a refused free wrote nothing");
    free(&heap, &pool, small, Some(root(&pool, 0))).unwrap();
    free(&heap, &pool, span, Some(root(&pool, 1))).unwrap();
}

fn capacity(heap: &Heap) -> u64 {
    u64::from(heap.geometry().chunks) * CHUNK
}

#[test]
fn fragmentation_large_then_small_and_back() {
    let (_d, path) = scratch();
    let mut pool = create(&path, 16 << 20);
    let (heap, _) = Heap::open(&mut pool).unwrap();
    let cap = capacity(&heap);
    for (first, second) in [(64 << 10, 64), (64, 64 << 10)] {
        let a = fill(&heap, &pool, first);
        assert!(
            a.len() as u64 * first * 10 >= cap * 9,
            "{first}: {}",
            a.len()
        );
        for o in a {
            free(&heap, &pool, o, None).unwrap();
        }
        let b = fill(&heap, &pool, second);
        let reached = b.len() as u64 * second;
        assert!(
            reached * 10 >= cap * 9,
            "{first} then {second}: {reached} of {cap}"
        );
        for o in b {
            free(&heap, &pool, o, None).unwrap();
        }
        let s = heap.stats(&pool).unwrap();
        assert_eq!(
            s.free_chunks + s.empty_run_chunks,
            u64::from(heap.geometry().chunks)
        );
    }
}

/// Four threads (so several arenas) fill the heap with blocks of several classes, then free
/// all of them: each arena keeps some of the emptied runs. Returns the chunks those hold.
fn fill_small_from_threads_and_free(heap: &Heap, pool: &Pool) -> u64 {
    const SIZES: [u64; 6] = [48, 64, 256, 1000, 4096, 20_000];
    let total: usize = std::thread::scope(|s| {
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                s.spawn(move || {
                    let dest = root(pool, 500 + t);
                    let mut mine = Vec::new();
                    let mut failed = 0; // in a row: every class out of space
                    for i in t.. {
                        let size = SIZES[(i % SIZES.len() as u64) as usize];
                        match alloc(heap, pool, size, dest) {
                            Ok(off) => {
                                mine.push(off);
                                failed = 0;
                            }
                            Err(AllocError::OutOfSpace { .. }) if failed < SIZES.len() => {
                                failed += 1
                            }
                            Err(AllocError::OutOfSpace { .. }) => break,
                            Err(e) => panic!("{e}"),
                        }
                    }
                    let n = mine.len();
                    for o in mine {
                        free(heap, pool, o, None).unwrap();
                    }
                    n
                })
            })
            .collect();
        threads.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert!(total > 1000, "{total}");
    let s = heap.stats(pool).unwrap();
    assert_eq!(s.bytes_allocated, 0);
    assert_eq!(s.free_chunks + s.empty_run_chunks, s.chunks, "{s:?}");
    // Kept: at most 8 chunks per arena (2 per available CPU).
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    assert!(
        s.empty_run_chunks > 0 && s.empty_run_chunks <= 16 * cpus,
        "{s:?}"
    );
    s.empty_run_chunks
}

/// Spans (2 chunks each) until the heap is full reach 90 % of it: the chunks of the kept empty
/// runs are reclaimed when the chunk allocator runs dry.
fn spans_reach_90_percent(heap: &Heap, pool: &Pool) {
    let spans = fill(heap, pool, CHUNK + 1);
    let reached = spans.len() as u64 * 2 * CHUNK;
    let cap = capacity(heap);
    assert!(reached * 10 >= cap * 9, "spans: {reached} of {cap}");
    assert_eq!(heap.stats(pool).unwrap().empty_run_chunks, 0);
    for o in spans {
        free(heap, pool, o, None).unwrap();
    }
}

#[test]
fn fragmentation_small_classes_from_threads_then_spans() {
    let (_d, path) = scratch();
    let mut pool = create(&path, 16 << 20);
    let (heap, _) = Heap::open(&mut pool).unwrap();
    fill_small_from_threads_and_free(&heap, &pool);
    spans_reach_90_percent(&heap, &pool);
    // And again: the arenas keep runs again, reclaimed again.
    fill_small_from_threads_and_free(&heap, &pool);
    spans_reach_90_percent(&heap, &pool);
}

/// Empty runs kept at close are found on media after the reopen, owned by no arena: a span
/// allocation that finds no free chunks releases them (reading their bitmaps then, not at
/// open).
#[test]
fn fragmentation_kept_runs_after_reopen_then_spans() {
    let (_d, path) = scratch();
    let mut pool = create(&path, 16 << 20);
    let kept = {
        let (heap, _) = Heap::open(&mut pool).unwrap();
        fill_small_from_threads_and_free(&heap, &pool)
    };
    drop(pool);
    let mut pool = open(&path);
    let (heap, _) = Heap::open(&mut pool).unwrap();
    let s = heap.stats(&pool).unwrap();
    assert_eq!(s.chunks_scanned, 0, "nothing scanned at open");
    spans_reach_90_percent(&heap, &pool);
    // And after another reopen, the kept runs' chunks are free on media.
    drop(heap);
    drop(pool);
    let mut pool = open(&path);
    let (heap, _) = Heap::open(&mut pool).unwrap();
    assert!(allocated(&heap, &pool).is_empty()); // (scans the whole heap)
    let s = heap.stats(&pool).unwrap();
    assert!(kept > 0);
    assert_eq!((s.empty_run_chunks, s.free_chunks), (0, s.chunks), "{s:?}");
}

#[test]
fn threads_alloc_and_free_concurrently() {
    let (_d, path) = scratch();
    let mut pool = create(&path, 32 << 20);
    const THREADS: u64 = 4;
    const SLOTS: u64 = 128;
    {
        let (heap, _) = Heap::open(&mut pool).unwrap();
        let (heap, pool) = (&heap, &pool);
        std::thread::scope(|s| {
            for t in 0..THREADS {
                s.spawn(move || {
                    let mut rng = Rng(100 + t);
                    let mut mine = vec![0u64; SLOTS as usize];
                    for _ in 0..3000 {
                        let i = rng.below(SLOTS);
                        let dest = root(pool, t * SLOTS + i);
                        if mine[i as usize] == 0 {
                            let size = if rng.below(20) == 0 {
                                random_size(&mut rng)
                            } else {
                                1 + rng.below(512)
                            };
                            match alloc(heap, pool, size, dest) {
                                Ok(off) => mine[i as usize] = off,
                                Err(AllocError::OutOfSpace { .. }) => {}
                                Err(e) => panic!("{e}"),
                            }
                        } else {
                            free(heap, pool, mine[i as usize], Some(dest)).unwrap();
                            mine[i as usize] = 0;
                        }
                    }
                });
            }
        });
    }
    drop(pool);
    let mut pool = open(&path);
    let (heap, _) = Heap::open(&mut pool).unwrap();
    let live = allocated(&heap, &pool);
    let mut refs = BTreeSet::new();
    for i in 0..THREADS * SLOTS {
        let w = read_word(&pool, root(&pool, i));
        if w != 0 {
            assert!(live.contains_key(&w), "slot {i} -> {w:#x} is not live");
            assert!(refs.insert(w), "{w:#x} referenced twice");
        }
    }
    assert_eq!(refs.len(), live.len(), "leaked blocks");
    let mut end = 0;
    for (&o, &s) in &live {
        assert!(o >= end, "overlap at {o:#x}");
        end = o + s;
    }
}

/// Corrupt chunk headers and bitmaps on the media are typed errors (never panics), and the
/// failing operation writes nothing.
#[test]
fn corrupt_metadata_is_reported_not_trusted() {
    use pmstore_alloc::classes::class_for;
    use pmstore_alloc::heap::{ChunkHeader, HeapCorruption};
    let (_d, path) = scratch();
    drop(create(&path, MIN_POOL_SIZE));
    let c48 = class_for(48).unwrap();
    /// (chunk headers to write, bitmap bits to set, alloc size, expected chunk, expected reason)
    type Case = (Vec<(u32, u64)>, Vec<(u32, u64)>, u64, u32, HeapCorruption);
    let cases: Vec<Case> = {
        let n = 1000; // far past N
        vec![
            (vec![(0, 3)], vec![], 64, 0, HeapCorruption::BadKind(3)),
            (
                vec![(0, ChunkHeader::Span { len: n }.encode())],
                vec![],
                64,
                0,
                HeapCorruption::PastEnd { len: n },
            ),
            (
                vec![
                    (0, ChunkHeader::Span { len: 2 }.encode()),
                    (1, ChunkHeader::Span { len: 1 }.encode()),
                ],
                vec![],
                64,
                1,
                HeapCorruption::Covered { start: 0 },
            ),
            (
                vec![(
                    0,
                    ChunkHeader::Run {
                        class: c48.id,
                        len: 1,
                    }
                    .encode(),
                )],
                // bit `blocks` (the first past the last block) set
                vec![(0, u64::from(c48.blocks))],
                48,
                0,
                HeapCorruption::BitmapPastBlocks {
                    bit: c48.blocks,
                    blocks: c48.blocks,
                },
            ),
            (vec![], vec![(0, 7)], 64, 0, HeapCorruption::FreeBitmap),
        ]
    };
    for (headers, bits, size, chunk, reason) in cases {
        let mut pool = open(&path);
        let (heap, _) = Heap::open(&mut pool).unwrap();
        let g = *heap.geometry();
        let snapshot = pool_bytes(&pool);
        for &(i, w) in &headers {
            // SAFETY: single-threaded test.
            unsafe { pool.write(g.header_offset(i), &w.to_le_bytes()) };
        }
        for &(i, bit) in &bits {
            let off = g.bitmap_offset(i) + bit / 64 * 8;
            let w = read_word(&pool, off) | 1 << (bit % 64);
            // SAFETY: as above.
            unsafe { pool.write(off, &w.to_le_bytes()) };
        }
        let before = pool_bytes(&pool);
        let e = alloc(&heap, &pool, size, root(&pool, 0)).unwrap_err();
        assert!(
            matches!(e, AllocError::CorruptHeap { chunk: c, reason: r } if c == chunk && r == reason),
            "expected {reason:?} at {chunk}, got {e}"
        );
        assert!(before == pool_bytes(&pool), "{reason:?}: nothing written");
        if reason != HeapCorruption::FreeBitmap {
            // (the scan does not read free chunks' bitmaps: only opening a run there does)
            assert!(heap.for_each_allocated(&pool, |_, _| {}).is_err());
        }
        // Restore the pool for the next case.
        // SAFETY: as above.
        unsafe { pool.write(0, &snapshot) };
    }
}

/// A run emptied by a free beyond what its arena keeps is released; the next allocation of its
/// class opens a new run, reusing the released run's volatile state (a spare). The reused state
/// must be as new: its blocks free, its header written again by its first publication, and
/// lookups through the chunk-indexed object table must see the new run, not the old one.
#[test]
fn released_runs_reused_for_new_runs_behave_as_new() {
    let (_d, path) = scratch();
    let mut pool = create(&path, 16 << 20);
    let (heap, _) = Heap::open(&mut pool).unwrap();
    let (d0, d1) = (root(&pool, 0), root(&pool, 1));
    // A run of the largest class (8 chunks), emptied: kept, the arena's whole budget, so every
    // run emptied below is released.
    let big = alloc(&heap, &pool, CHUNK, d0).unwrap();
    free(&heap, &pool, big, Some(d0)).unwrap();
    assert_eq!(heap.stats(&pool).unwrap().empty_run_chunks, 8);
    for round in 0..50u64 {
        // 64 bytes, then freed: its run is released each time.
        let a = alloc(&heap, &pool, 64, d0).unwrap();
        let g = heap.geometry();
        let a_header = g.header_offset(g.chunk_of(a).unwrap());
        assert_eq!(heap.usable_size(&pool, a).unwrap(), 64);
        free(&heap, &pool, a, Some(d0)).unwrap();
        assert_eq!(read_word(&pool, a_header), 0, "released");
        assert!(matches!(
            heap.usable_size(&pool, a),
            Err(AllocError::InvalidFree { .. })
        ));
        assert!(matches!(
            free(&heap, &pool, a, None),
            Err(AllocError::InvalidFree { .. })
        ));
        // Another class in between, sometimes on the chunks the released run had.
        let b = alloc(&heap, &pool, 1000 + round % 24, d1).unwrap();
        assert_eq!(heap.usable_size(&pool, b).unwrap(), 1024);
        let s = heap.stats(&pool).unwrap();
        assert_eq!(s.bytes_allocated, 1024);
        free(&heap, &pool, b, Some(d1)).unwrap();
        assert_eq!(heap.stats(&pool).unwrap().bytes_allocated, 0);
        // Two blocks of a reused run: the lowest free ones, distinct.
        let x = alloc(&heap, &pool, 64, d0).unwrap();
        let y = alloc(&heap, &pool, 64, d1).unwrap();
        assert_eq!(y, x + 64);
        assert_eq!(allocated(&heap, &pool), BTreeMap::from([(x, 64), (y, 64)]));
        free(&heap, &pool, x, Some(d0)).unwrap();
        free(&heap, &pool, y, Some(d1)).unwrap();
    }
    let s = heap.stats(&pool).unwrap();
    assert_eq!((s.bytes_allocated, s.empty_run_chunks), (0, 8));
    assert_eq!(s.free_chunks + 8, s.chunks_scanned);
    // And on media: a reopen finds nothing allocated.
    drop(heap);
    let (heap, _) = Heap::open(&mut pool).unwrap();
    assert!(allocated(&heap, &pool).is_empty());
}

/// The object table answers for every chunk of a span: its start is the span, any other
/// offset in it is not a block.
#[test]
fn offsets_inside_spans_are_not_blocks() {
    let (_d, path) = scratch();
    let mut pool = create(&path, 16 << 20);
    let (heap, _) = Heap::open(&mut pool).unwrap();
    let d = root(&pool, 0);
    let s = alloc(&heap, &pool, 3 * CHUNK, d).unwrap();
    assert_eq!(heap.usable_size(&pool, s).unwrap(), 3 * CHUNK);
    for off in [s + 64, s + CHUNK, s + 2 * CHUNK + 4096] {
        assert!(matches!(
            heap.usable_size(&pool, off),
            Err(AllocError::InvalidFree { .. })
        ));
        assert!(matches!(
            free(&heap, &pool, off, None),
            Err(AllocError::InvalidFree { .. })
        ));
    }
    free(&heap, &pool, s, Some(d)).unwrap();
    for off in [s, s + CHUNK] {
        assert!(matches!(
            heap.usable_size(&pool, off),
            Err(AllocError::InvalidFree { .. })
        ));
    }
}

/// A reclaim releases only the empty runs no one uses: a kept run with a reservation
/// outstanding (or a block allocated again) stays, and the reservation publishes into it.
#[test]
fn reclaim_spares_kept_runs_in_use() {
    let (_d, path) = scratch();
    let mut pool = create(&path, MIN_POOL_SIZE);
    let (heap, _) = Heap::open(&mut pool).unwrap();
    let d = root(&pool, 0);
    for size in [64, 1000] {
        let o = alloc(&heap, &pool, size, d).unwrap();
        free(&heap, &pool, o, Some(d)).unwrap();
    }
    assert_eq!(heap.stats(&pool).unwrap().empty_run_chunks, 2);
    let r = heap.reserve(&pool, 64).unwrap(); // in the kept 64-byte run
    let off = r.offset();
    let spans = fill(&heap, &pool, CHUNK + 1);
    // The 1000-byte run was released for the spans (its chunk left over: not two in a row),
    // not the reserved one.
    let s = heap.stats(&pool).unwrap();
    assert_eq!(s.empty_run_chunks, 1, "{s:?}");
    assert_ne!(header_of(&heap, &pool, off), 0);
    let mut rs = vec![r];
    // SAFETY: single-threaded; the root word is ours.
    unsafe { heap.publish(&pool, &mut rs, &[], &[(d, off)]) }.unwrap();
    assert_eq!(heap.usable_size(&pool, off).unwrap(), 64);
    assert_eq!(allocated(&heap, &pool).len(), spans.len() + 1);
}

/// Threads doing alloc/free pairs in their kept runs while another fills the heap with spans
/// and frees them (reclaiming the kept runs each time): no block is lost or handed out twice,
/// and the heap ends empty.
#[test]
fn reclaims_race_with_pairs_in_kept_runs() {
    let (_d, path) = scratch();
    let mut pool = create(&path, 16 << 20);
    let (heap, _) = Heap::open(&mut pool).unwrap();
    let (heap, pool) = (&heap, &pool);
    std::thread::scope(|s| {
        for t in 0..2u64 {
            s.spawn(move || {
                let d = root(pool, 10 + t);
                for i in 0..3000u64 {
                    let size = [64, 1000, 5000][(i % 3) as usize];
                    match alloc(heap, pool, size, d) {
                        Ok(o) => {
                            assert_eq!(read_word(pool, d), o);
                            assert!(heap.usable_size(pool, o).unwrap() >= size);
                            free(heap, pool, o, Some(d)).unwrap();
                        }
                        Err(AllocError::OutOfSpace { .. }) => {}
                        Err(e) => panic!("{e}"),
                    }
                }
            });
        }
        s.spawn(move || {
            for _ in 0..20 {
                let spans = fill(heap, pool, CHUNK + 1);
                let mut sorted = spans.clone();
                sorted.sort_unstable();
                sorted.dedup();
                assert_eq!(sorted.len(), spans.len(), "a span handed out twice");
                for o in spans {
                    free(heap, pool, o, None).unwrap();
                }
            }
        });
    });
    assert!(allocated(heap, pool).is_empty());
    heap.release_empty_runs(pool).unwrap();
    let s = heap.stats(pool).unwrap();
    assert_eq!((s.free_chunks, s.empty_run_chunks), (s.chunks, 0), "{s:?}");
}
