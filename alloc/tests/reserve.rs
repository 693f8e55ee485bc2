//! Tests of the transaction layer's interface: `reserve` / `publish` / `cancel` and lane
//! checkout (forced-flush pools on /dev/shm).

use std::collections::BTreeSet;

use pmstore_alloc::heap::CHUNK;
use pmstore_alloc::{AllocError, Heap, Reservation};
use pmstore_pool::{Pool, MIN_POOL_SIZE};

mod common;
use common::*;

fn allocated(heap: &Heap, pool: &Pool) -> Vec<u64> {
    let mut v = Vec::new();
    heap.for_each_allocated(pool, |o, _| v.push(o)).unwrap();
    v
}

fn publish(
    heap: &Heap,
    pool: &Pool,
    rs: &mut Vec<Reservation>,
    frees: &[u64],
    words: &[(u64, u64)],
) -> Result<(), AllocError> {
    // SAFETY: single-threaded tests; the words are root words.
    unsafe { heap.publish(pool, rs, frees, words) }
}

#[test]
fn reserve_writes_nothing_and_cancel_returns_the_block() {
    let (_d, path) = scratch();
    let mut pool = create(&path, MIN_POOL_SIZE);
    let (heap, _) = Heap::open(&mut pool).unwrap();
    let before = pool_bytes(&pool);
    let small = heap.reserve(&pool, 64).unwrap();
    let span = heap.reserve(&pool, CHUNK + 1).unwrap();
    assert_eq!((small.size(), span.size()), (64, 2 * CHUNK));
    assert!(pool_bytes(&pool) == before, "reserve wrote to the pool");
    assert!(allocated(&heap, &pool).is_empty());
    // Reserved blocks are not handed out again while reserved.
    let other = heap.reserve(&pool, 64).unwrap();
    assert_ne!(other.offset(), small.offset());
    let (so, po) = (small.offset(), span.offset());
    heap.cancel(small);
    heap.cancel(span);
    assert_eq!(heap.reserve(&pool, 64).unwrap().offset(), so);
    // (The one above was dropped at the end of its statement: cancelled too.)
    assert_eq!(heap.reserve(&pool, 64).unwrap().offset(), so);
    assert_eq!(heap.reserve(&pool, CHUNK + 1).unwrap().offset(), po);
    drop(other);
    assert!(pool_bytes(&pool) == before, "cancel wrote to the pool");
    let s = heap.stats(&pool).unwrap();
    assert_eq!(
        s.free_chunks, s.chunks_scanned,
        "a cancelled new run returns its chunks: {s:?}"
    );
}

#[test]
fn dropped_reservation_is_cancelled_and_never_allocated_after_reopen() {
    let (_d, path) = scratch();
    let mut pool = create(&path, MIN_POOL_SIZE);
    let off;
    {
        let (heap, _) = Heap::open(&mut pool).unwrap();
        // SAFETY: single-threaded; root word.
        let keep = unsafe { heap.alloc(&pool, 64, root(&pool, 0)) }.unwrap();
        {
            let r = heap.reserve(&pool, 64).unwrap();
            off = r.offset();
            assert_ne!(off, keep);
        }
        let again = heap.reserve(&pool, 64).unwrap();
        assert_eq!(
            again.offset(),
            off,
            "the dropped reservation's block is free"
        );
        // Left unpublished when the heap goes away: nothing persistent.
        std::mem::forget(again);
        assert_eq!(allocated(&heap, &pool), vec![keep]);
    }
    drop(pool);
    let mut pool = open(&path);
    let (heap, _) = Heap::open(&mut pool).unwrap();
    assert_eq!(
        allocated(&heap, &pool),
        vec![read_word(&pool, root(&pool, 0))]
    );
    assert_eq!(heap.reserve(&pool, 64).unwrap().offset(), off);
}

#[test]
fn publish_applies_reservations_frees_and_words_and_survives_reopen() {
    let (_d, path) = scratch();
    let mut pool = create(&path, MIN_POOL_SIZE);
    let (post, freed);
    {
        let (heap, _) = Heap::open(&mut pool).unwrap();
        let w: Vec<u64> = (0..8).map(|i| root(&pool, i)).collect();
        // SAFETY: single-threaded; root words.
        let (a, s) = unsafe {
            (
                heap.alloc(&pool, 64, w[0]).unwrap(),
                heap.alloc(&pool, 3 * CHUNK, w[1]).unwrap(),
            )
        };
        let mut rs: Vec<Reservation> = [64, 64, 200, 5 * CHUNK]
            .iter()
            .map(|&n| heap.reserve(&pool, n).unwrap())
            .collect();
        let offs: Vec<u64> = rs.iter().map(|r| r.offset()).collect();
        // The two 64-byte reservations share a bitmap word with `a` (freed in the same call):
        // the merged word must keep both new bits and clear a's.
        let words = [
            (w[0], 0),
            (w[1], 0),
            (w[2], offs[0]),
            (w[3], offs[1]),
            (w[4], offs[2]),
            (w[5], offs[3]),
            (w[6], 77),
        ];
        publish(&heap, &pool, &mut rs, &[a, s], &words).unwrap();
        assert!(rs.is_empty());
        let mut expect = offs.clone();
        expect.sort_unstable();
        assert_eq!(allocated(&heap, &pool), expect);
        for &(t, v) in &words {
            assert_eq!(read_word(&pool, t), v);
        }
        assert_eq!(heap.usable_size(&pool, offs[3]).unwrap(), 5 * CHUNK);
        (post, freed) = (expect, [a, s]);
    }
    drop(pool);
    let mut pool = open(&path);
    let (heap, _) = Heap::open(&mut pool).unwrap();
    assert_eq!(allocated(&heap, &pool), post);
    for f in freed {
        // SAFETY: single-threaded.
        let e = unsafe { heap.free(&pool, f, None) }.unwrap_err();
        assert!(
            matches!(
                e,
                AllocError::DoubleFree { .. } | AllocError::InvalidFree { .. }
            ),
            "{e}"
        );
    }
    for o in post {
        // SAFETY: single-threaded.
        unsafe { heap.free(&pool, o, None) }.unwrap();
    }
    let s = heap.stats(&pool).unwrap();
    // The emptied runs are kept for their classes (within the arena's budget), or released.
    assert_eq!(
        (s.bytes_allocated, s.free_chunks + s.empty_run_chunks),
        (0, s.chunks_scanned)
    );
}

#[test]
fn two_reservations_in_one_bitmap_word_are_merged() {
    let (_d, path) = scratch();
    let mut pool = create(&path, MIN_POOL_SIZE);
    let (heap, _) = Heap::open(&mut pool).unwrap();
    // SAFETY: single-threaded; root word.
    let a = unsafe { heap.alloc(&pool, 16, root(&pool, 0)) }.unwrap();
    let mut rs = vec![
        heap.reserve(&pool, 16).unwrap(),
        heap.reserve(&pool, 16).unwrap(),
    ];
    let (x, y) = (rs[0].offset(), rs[1].offset());
    assert_eq!((x - a, y - a), (16, 32), "same run, same bitmap word");
    publish(&heap, &pool, &mut rs, &[], &[]).unwrap();
    assert_eq!(allocated(&heap, &pool), vec![a, x, y]);
    let bitmap = heap
        .geometry()
        .bitmap_offset(heap.geometry().chunk_of(a).unwrap());
    assert_eq!(read_word(&pool, bitmap), 0b111);
}

#[test]
fn bad_frees_change_nothing_and_keep_reservations_usable() {
    let (_d, path) = scratch();
    let mut pool = create(&path, MIN_POOL_SIZE);
    let (heap, _) = Heap::open(&mut pool).unwrap();
    // SAFETY: single-threaded; root words.
    let (a, b) = unsafe {
        (
            heap.alloc(&pool, 64, root(&pool, 0)).unwrap(),
            heap.alloc(&pool, 64, root(&pool, 1)).unwrap(),
        )
    };
    // SAFETY: as above.
    unsafe { heap.free(&pool, b, Some(root(&pool, 1))) }.unwrap();
    let mut rs = vec![
        heap.reserve(&pool, 64).unwrap(),
        heap.reserve(&pool, CHUNK * 2).unwrap(),
    ];
    let offs: Vec<u64> = rs.iter().map(|r| r.offset()).collect();
    let words = [(root(&pool, 2), offs[0]), (root(&pool, 3), offs[1])];
    let before = pool_bytes(&pool);
    type Case<'a> = (&'a [u64], fn(&AllocError) -> bool);
    let cases: [Case<'_>; 4] = [
        (&[a, a + 1], |e| matches!(e, AllocError::InvalidFree { .. })),
        (&[a, a], |e| matches!(e, AllocError::DoubleFree { .. })),
        (&[b], |e| matches!(e, AllocError::DoubleFree { .. })),
        // A reserved, unpublished block is not allocated.
        (&[a, offs[0]], |e| {
            matches!(e, AllocError::DoubleFree { .. })
        }),
    ];
    for (frees, ok) in cases {
        let e = publish(&heap, &pool, &mut rs, frees, &words).unwrap_err();
        assert!(ok(&e), "{frees:x?}: {e}");
        assert_eq!(rs.len(), 2);
        assert!(pool_bytes(&pool) == before, "{frees:x?}: the pool changed");
    }
    let e = publish(
        &heap,
        &pool,
        &mut rs,
        &[a],
        &[(heap.geometry().heap_offset, 1)],
    )
    .unwrap_err();
    assert!(
        matches!(e, AllocError::InvalidTarget { index: 0, .. }),
        "{e}"
    );
    assert!(pool_bytes(&pool) == before);
    // Still reserved: not handed out again.
    let other = heap.reserve(&pool, 64).unwrap();
    assert!(!offs.contains(&other.offset()));
    drop(other);
    publish(&heap, &pool, &mut rs, &[a], &words).unwrap();
    assert_eq!(allocated(&heap, &pool), offs);
}

#[test]
fn lanes_can_be_checked_out_and_published_through() {
    let (_d, path) = scratch();
    let mut pool = create(&path, MIN_POOL_SIZE);
    let (heap, _) = Heap::open(&mut pool).unwrap();
    let lanes = pool.geometry().lane_count as usize;
    let mut guards = Vec::new();
    while let Some(g) = heap.try_lane() {
        guards.push(g);
    }
    assert_eq!(guards.len(), lanes);
    let indexes: BTreeSet<u32> = guards.iter().map(|g| g.index()).collect();
    assert_eq!(indexes.len(), lanes);
    let mut g = guards.pop().unwrap();
    let mut rs = vec![heap.reserve(&pool, 64).unwrap()];
    let off = rs[0].offset();
    // SAFETY: single-threaded; root word.
    unsafe { heap.publish_with(&mut g, &pool, &mut rs, &[], &[(root(&pool, 0), off)]) }.unwrap();
    assert!(heap.try_lane().is_none());
    drop(guards);
    drop(g);
    // Every lane is back: an alloc without a guard works.
    // SAFETY: as above.
    unsafe { heap.free(&pool, off, Some(root(&pool, 0))) }.unwrap();
    let mut n = 0;
    while let Some(g) = heap.try_lane() {
        std::mem::forget(g); // (returned to nobody: just counting)
        n += 1;
    }
    assert_eq!(n, lanes);
}

#[test]
fn threads_reserve_publish_and_cancel_concurrently() {
    let (_d, path) = scratch();
    let mut pool = create(&path, MIN_POOL_SIZE);
    let (heap, _) = Heap::open(&mut pool).unwrap();
    let threads = 4u64;
    let per = 64u64;
    let results: Vec<Vec<u64>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (heap, pool) = (&heap, &pool);
                s.spawn(move || {
                    let mut mine = Vec::new();
                    for i in 0..per {
                        let size = [16, 64, 200, 3000][(i % 4) as usize];
                        let mut rs = vec![
                            heap.reserve(pool, size).unwrap(),
                            heap.reserve(pool, size).unwrap(),
                        ];
                        let dropped = rs.pop().unwrap();
                        if i % 3 == 0 {
                            heap.cancel(dropped);
                        } else {
                            drop(dropped);
                        }
                        let off = rs[0].offset();
                        let slot = root(pool, t * per + i);
                        let frees: Vec<u64> = if i % 5 == 4 {
                            mine.pop().into_iter().collect()
                        } else {
                            Vec::new()
                        };
                        // SAFETY: each thread owns its root words and its blocks.
                        unsafe { heap.publish(pool, &mut rs, &frees, &[(slot, off)]) }.unwrap();
                        mine.push(off);
                    }
                    mine
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut all: Vec<u64> = results.into_iter().flatten().collect();
    all.sort_unstable();
    let n = all.len();
    all.dedup();
    assert_eq!(all.len(), n, "a block was handed out twice");
    assert_eq!(allocated(&heap, &pool), all, "lost or leaked blocks");
}

#[test]
fn a_reservation_dropped_on_another_thread_is_cancelled() {
    let (_d, path) = scratch();
    let mut pool = create(&path, MIN_POOL_SIZE);
    let (heap, _) = Heap::open(&mut pool).unwrap();
    let r = heap.reserve(&pool, 64).unwrap();
    let off = r.offset();
    std::thread::spawn(move || drop(r)).join().unwrap();
    assert_eq!(heap.reserve(&pool, 64).unwrap().offset(), off);
    let s = heap.stats(&pool).unwrap();
    assert_eq!(s.free_chunks, s.chunks_scanned, "{s:?}");
}

/// `RunBits::reserve` hands out the lowest free block whatever the history (its search starts
/// at a hint that frees and cancels lower): checked against a plain model under random
/// reserve / cancel / publish / free sequences.
#[test]
fn run_bits_reserve_is_always_the_lowest_free_block() {
    use pmstore_alloc::volatile::RunBits;
    let mut seed = 0x1234_5678_9abc_def0u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for blocks in [1u32, 63, 64, 65, 200] {
        let mut run = RunBits::empty(blocks);
        // 0 free, 1 reserved, 2 allocated
        let mut model = vec![0u8; blocks as usize];
        for _ in 0..4000 {
            match next() % 4 {
                0 | 1 => {
                    let want = model.iter().position(|&s| s == 0).map(|b| b as u32);
                    assert_eq!(run.reserve(), want);
                    if let Some(b) = want {
                        model[b as usize] = 1;
                    }
                }
                2 => {
                    let b = (next() % u64::from(blocks)) as usize;
                    match model[b] {
                        1 if next() % 2 == 0 => {
                            run.unreserve(b as u32);
                            model[b] = 0;
                        }
                        1 => {
                            run.publish_block(b as u32);
                            model[b] = 2;
                        }
                        2 => {
                            run.free_block(b as u32);
                            model[b] = 0;
                        }
                        _ => {}
                    }
                }
                _ => {
                    let b = (next() % u64::from(blocks)) as usize;
                    if model[b] == 2 {
                        run.apply_publish(&[], &[b as u32]);
                        model[b] = 0;
                    }
                }
            }
            let used = model.iter().filter(|&&s| s == 2).count() as u32;
            let reserved = model.iter().filter(|&&s| s == 1).count() as u32;
            assert_eq!((run.used(), run.reserved()), (used, reserved));
        }
    }
}
