//! Crash tests of the allocator in the simulated persistence domain: at every drain of a short
//! sequence of atomic allocs and frees, every possible crash image recovers to a heap where each
//! destination word is 0 or the start of a live block, and every live block is referenced by
//! exactly one destination word (no leak, no double allocation).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use pmstore_alloc::heap::CHUNK;
use pmstore_alloc::{AllocError, Heap};
use pmstore_pool::sim::CrashPoint;
use pmstore_pool::{CreateOptions, OpenOptions, Pool, MIN_POOL_SIZE};

const LAYOUT: &str = "crash";
const WORDS: u64 = 5;

fn read_word(pool: &Pool, off: u64) -> u64 {
    let mut b = [0; 8];
    // SAFETY: single-threaded test.
    unsafe { pool.read(off, &mut b) };
    u64::from_le_bytes(b)
}

fn dest(pool: &Pool, i: u64) -> u64 {
    pool.geometry().root_offset + 8 * i
}

/// Recovers `img` and checks the oracle; then frees everything referenced and checks that the
/// heap is empty (every chunk free) and usable.
fn check_image(img: &[u8]) -> Result<(), String> {
    let (mut pool, _) = Pool::open_simulated(img, &OpenOptions::new(LAYOUT)).unwrap();
    let (heap, _) = Heap::open(&mut pool).map_err(|e| format!("recovery: {e}"))?;
    let mut live = BTreeMap::new();
    heap.for_each_allocated(&pool, |o, s| {
        live.insert(o, s);
    })
    .map_err(|e| format!("scan: {e}"))?;
    let mut refs = BTreeMap::new();
    for i in 0..WORDS {
        let w = read_word(&pool, dest(&pool, i));
        if w != 0 {
            if !live.contains_key(&w) {
                return Err(format!(
                    "word {i} -> {w:#x} is not a live block ({live:x?})"
                ));
            }
            if let Some(j) = refs.insert(w, i) {
                return Err(format!("{w:#x} referenced by words {j} and {i}"));
            }
        }
    }
    if refs.len() != live.len() {
        return Err(format!("leak: live {live:x?}, referenced {refs:x?}"));
    }
    for (&w, &i) in &refs {
        // SAFETY: single-threaded; the word is a root word.
        unsafe { heap.free(&pool, w, Some(dest(&pool, i))) }.map_err(|e| format!("free: {e}"))?;
    }
    // Emptied runs may be kept (for their class) or found empty on media (kept before the
    // crash): not free, but all releasable, so no capacity is lost.
    let s = heap.stats(&pool).map_err(|e| e.to_string())?;
    if s.bytes_allocated != 0 || s.free_chunks + s.empty_run_chunks != s.chunks {
        return Err(format!("not empty after freeing everything: {s:?}"));
    }
    heap.release_empty_runs(&pool)
        .map_err(|e| format!("release empty runs: {e}"))?;
    let s = heap.stats(&pool).map_err(|e| e.to_string())?;
    if s.free_chunks != s.chunks {
        return Err(format!("chunks held after releasing empty runs: {s:?}"));
    }
    // SAFETY: as above.
    let o = unsafe { heap.alloc(&pool, 64, dest(&pool, 0)) }.map_err(|e| e.to_string())?;
    if read_word(&pool, dest(&pool, 0)) != o {
        return Err("alloc after recovery did not store its destination".into());
    }
    Ok(())
}

#[test]
fn every_crash_image_of_an_alloc_free_sequence_recovers_consistently() {
    let (mut pool, sim) =
        Pool::create_simulated(&CreateOptions::new(LAYOUT, MIN_POOL_SIZE)).unwrap();
    let (heap, _) = Heap::open(&mut pool).unwrap();
    let tally = Arc::new(Mutex::new((0usize, Vec::<String>::new())));
    let hook = {
        let tally = Arc::clone(&tally);
        move |cp: &CrashPoint<'_>| {
            for img in cp.images(12, 32, 0xA110C) {
                let r = check_image(&img);
                let mut t = tally.lock().unwrap();
                t.0 += 1;
                if let Err(e) = r {
                    t.1.push(format!("drain {}: {e}", cp.drain));
                }
            }
        }
    };
    sim.set_crash_hook(hook.clone());
    let d: Vec<u64> = (0..WORDS).map(|i| dest(&pool, i)).collect();
    // SAFETY: single-threaded; root words are ours.
    unsafe {
        let a = heap.alloc(&pool, 64, d[0]).unwrap(); // opens a run
        let _b = heap.alloc(&pool, 5000, d[1]).unwrap(); // another run
        let c = heap.alloc(&pool, 64, d[2]).unwrap(); // from the existing run
        let s = heap.alloc(&pool, CHUNK + 1, d[3]).unwrap(); // a span
        let big = heap.alloc(&pool, CHUNK, d[4]).unwrap(); // a run of the largest class
        heap.free(&pool, a, Some(d[0])).unwrap(); // the run stays
                                                  // Its run empties and is kept: the arena's whole budget (8 chunks).
        heap.free(&pool, big, Some(d[4])).unwrap();
        heap.free(&pool, c, Some(d[2])).unwrap(); // the run empties: over budget, released
        heap.free(&pool, s, Some(d[3])).unwrap(); // the span
        assert!(matches!(
            heap.free(&pool, a, Some(d[0])),
            Err(AllocError::InvalidFree { .. })
        ));
        // The kept run is still a run (its blocks free), until a reclaim commit releases it.
        assert!(matches!(
            heap.free(&pool, big, None),
            Err(AllocError::DoubleFree { .. })
        ));
        assert_eq!(heap.release_empty_runs(&pool).unwrap(), 8);
        assert!(matches!(
            heap.free(&pool, big, None),
            Err(AllocError::InvalidFree { .. })
        ));
    }
    sim.clear_crash_hook();
    sim.with_crash_point(|cp| hook(cp));
    let t = tally.lock().unwrap();
    println!("crash images checked: {}", t.0);
    assert!(
        t.1.is_empty(),
        "{} bad images: {:#?}",
        t.1.len(),
        &t.1[..t.1.len().min(5)]
    );
    // 10 commits of 2 drains each, plus the final state.
    assert!(t.0 >= 21, "only {} images", t.0);
}

/// The words and live blocks of a recovered image, after checking that freeing every live
/// block leaves an empty, usable heap.
fn recovered_state(img: &[u8], nwords: u64) -> Result<(Vec<u64>, BTreeMap<u64, u64>), String> {
    let (mut pool, _) = Pool::open_simulated(img, &OpenOptions::new(LAYOUT)).unwrap();
    let (heap, _) = Heap::open(&mut pool).map_err(|e| format!("recovery: {e}"))?;
    let mut live = BTreeMap::new();
    heap.for_each_allocated(&pool, |o, s| {
        live.insert(o, s);
    })
    .map_err(|e| format!("scan: {e}"))?;
    let words: Vec<u64> = (0..nwords)
        .map(|i| read_word(&pool, dest(&pool, i)))
        .collect();
    for &o in live.keys() {
        // SAFETY: single-threaded; no destination word.
        unsafe { heap.free(&pool, o, None) }.map_err(|e| format!("free {o:#x}: {e}"))?;
    }
    // Emptied runs may be kept (for their class) or found empty on media (kept before the
    // crash): not free, but all releasable, so no capacity is lost.
    let s = heap.stats(&pool).map_err(|e| e.to_string())?;
    if s.bytes_allocated != 0 || s.free_chunks + s.empty_run_chunks != s.chunks {
        return Err(format!("not empty after freeing everything: {s:?}"));
    }
    heap.release_empty_runs(&pool)
        .map_err(|e| format!("release empty runs: {e}"))?;
    let s = heap.stats(&pool).map_err(|e| e.to_string())?;
    if s.free_chunks != s.chunks {
        return Err(format!("chunks held after releasing empty runs: {s:?}"));
    }
    Ok((words, live))
}

#[test]
fn every_crash_image_of_a_publish_is_all_or_nothing() {
    const N: u64 = 9;
    let (mut pool, sim) =
        Pool::create_simulated(&CreateOptions::new(LAYOUT, MIN_POOL_SIZE)).unwrap();
    let (heap, _) = Heap::open(&mut pool).unwrap();
    let d: Vec<u64> = (0..N).map(|i| dest(&pool, i)).collect();
    // SAFETY: single-threaded; root words are ours.
    let (a, b, s, c) = unsafe {
        (
            heap.alloc(&pool, 64, d[0]).unwrap(),
            heap.alloc(&pool, 64, d[1]).unwrap(), // same bitmap word as `a`
            heap.alloc(&pool, CHUNK + 1, d[2]).unwrap(),
            heap.alloc(&pool, 5000, d[3]).unwrap(), // alone in its run
        )
    };
    let r1 = heap.reserve(&pool, 64).unwrap(); // same word as a and b
    let r2 = heap.reserve(&pool, 64).unwrap();
    let r3 = heap.reserve(&pool, 2 * CHUNK).unwrap(); // a span
    let r4 = heap.reserve(&pool, 100_000).unwrap(); // opens a new run
    let r5 = heap.reserve(&pool, 64).unwrap(); // never published
    let unpublished = r5.offset();
    let offs = [r1.offset(), r2.offset(), r3.offset(), r4.offset()];
    let pre_words = vec![a, b, s, c, 0, 0, 0, 0, 0];
    let post_words = vec![0, b, 0, 0, offs[0], offs[1], offs[2], offs[3], 12345];
    let live_of = |w: &[u64]| -> Vec<u64> {
        let mut v: Vec<u64> = w[..8].iter().copied().filter(|&x| x != 0).collect();
        v.sort_unstable();
        v
    };
    let (pre_live, post_live) = (live_of(&pre_words), live_of(&post_words));

    let post_copy = post_words.clone();
    let tally = Arc::new(Mutex::new((0usize, 0usize, 0usize, Vec::<String>::new())));
    let hook = {
        let tally = Arc::clone(&tally);
        move |cp: &CrashPoint<'_>| {
            for img in cp.images(12, 32, 0x9AB11C) {
                let r = recovered_state(&img, N);
                let mut t = tally.lock().unwrap();
                t.0 += 1;
                match r {
                    Ok((w, live)) => {
                        let live: Vec<u64> = live.into_keys().collect();
                        if live.contains(&unpublished) {
                            t.3.push(format!("drain {}: unpublished block live", cp.drain));
                        } else if w == pre_words && live == pre_live {
                            t.1 += 1;
                        } else if w == post_words && live == post_live {
                            t.2 += 1;
                        } else {
                            t.3.push(format!(
                                "drain {}: neither before nor after: words {w:x?}, live {live:x?}",
                                cp.drain
                            ));
                        }
                    }
                    Err(e) => t.3.push(format!("drain {}: {e}", cp.drain)),
                }
            }
        }
    };
    sim.with_crash_point(|cp| hook(cp)); // the state before
    sim.set_crash_hook(hook.clone());
    let mut rs = vec![r1, r2, r3, r4];
    let words: Vec<(u64, u64)> = d.iter().copied().zip(post_copy).collect();
    // SAFETY: single-threaded; root words are ours.
    unsafe { heap.publish(&pool, &mut rs, &[a, s, c], &words) }.unwrap();
    sim.clear_crash_hook();
    sim.with_crash_point(|cp| hook(cp)); // the state after
    assert!(rs.is_empty());
    drop(r5);
    let t = tally.lock().unwrap();
    println!(
        "publish crash images checked: {} ({} before, {} after)",
        t.0, t.1, t.2
    );
    assert!(
        t.3.is_empty(),
        "{} bad images: {:#?}",
        t.3.len(),
        &t.3[..t.3.len().min(5)]
    );
    // 2 drains of one commit, plus the states before and after; both outcomes seen.
    assert!(t.0 >= 4 && t.1 > 0 && t.2 > 0, "images: {t:?}");
}

/// The reclaim commit inside an allocation: a heap whose only room is in empty runs kept for
/// their class, and a span allocation that finds no free chunks, so it releases them (a commit
/// of their own) and then allocates. Every crash image recovers to the heap before or after
/// the allocation (the kept runs released or not: either way empty, and releasable).
#[test]
fn every_crash_image_of_a_reclaiming_alloc_is_consistent() {
    const N: u64 = 40;
    let (mut pool, sim) =
        Pool::create_simulated(&CreateOptions::new(LAYOUT, MIN_POOL_SIZE)).unwrap();
    let (heap, _) = Heap::open(&mut pool).unwrap();
    let d: Vec<u64> = (0..N).map(|i| dest(&pool, i)).collect();
    // Runs of five classes (6 chunks), emptied: all kept (within the arena's 8 chunks).
    for size in [64, 1000, 5000, 20_000, 40_000] {
        // SAFETY: single-threaded; root words are ours.
        unsafe {
            let o = heap.alloc(&pool, size, d[0]).unwrap();
            heap.free(&pool, o, Some(d[0])).unwrap();
        }
    }
    let kept = heap.stats(&pool).unwrap().empty_run_chunks;
    assert_eq!(kept, 6);
    // Spans of one chunk's worth (2 chunks each) until the free chunks are used up.
    let mut words = vec![0u64; N as usize];
    let mut i = 0;
    while heap.stats(&pool).unwrap().free_chunks >= 2 {
        // SAFETY: as above.
        words[i] = unsafe { heap.alloc(&pool, CHUNK + 1, d[i]) }.unwrap();
        i += 1;
    }
    let before = words.clone();
    let tally = Arc::new(Mutex::new((0usize, 0usize, 0usize, Vec::<String>::new())));
    let (pre, post_slot) = (before.clone(), i);
    let hook = {
        let tally = Arc::clone(&tally);
        move |cp: &CrashPoint<'_>| {
            for img in cp.images(12, 32, 0x4EC1A1) {
                let r = recovered_state(&img, N);
                let mut t = tally.lock().unwrap();
                t.0 += 1;
                match r {
                    Ok((w, live)) => {
                        let refs: Vec<u64> = w.iter().copied().filter(|&x| x != 0).collect();
                        let live: Vec<u64> = live.into_keys().collect();
                        let mut sorted = refs.clone();
                        sorted.sort_unstable();
                        if sorted != live {
                            t.3.push(format!("drain {}: words {w:x?}, live {live:x?}", cp.drain));
                        } else if w == pre {
                            t.1 += 1;
                        } else if w[..post_slot] == pre[..post_slot] && w[post_slot] != 0 {
                            t.2 += 1;
                        } else {
                            t.3.push(format!("drain {}: words {w:x?}", cp.drain));
                        }
                    }
                    Err(e) => t.3.push(format!("drain {}: {e}", cp.drain)),
                }
            }
        }
    };
    sim.set_crash_hook(hook.clone());
    // SAFETY: as above.
    words[i] = unsafe { heap.alloc(&pool, CHUNK + 1, d[i]) }.unwrap();
    sim.clear_crash_hook();
    sim.with_crash_point(|cp| hook(cp)); // the state after
    assert!(
        heap.stats(&pool).unwrap().empty_run_chunks < kept,
        "reclaimed"
    );
    let t = tally.lock().unwrap();
    println!(
        "reclaiming alloc: {} images, {} before, {} after",
        t.0, t.1, t.2
    );
    assert!(
        t.3.is_empty(),
        "{} bad images: {:#?}",
        t.3.len(),
        &t.3[..t.3.len().min(5)]
    );
    // The reclaim commit and the allocation's: 2 drains each, plus the state after.
    assert!(t.0 >= 5 && t.1 > 0 && t.2 > 0, "{t:?}");
}
