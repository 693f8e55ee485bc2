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
const WORDS: u64 = 4;

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
    let s = heap.stats(&pool).map_err(|e| e.to_string())?;
    if s.bytes_allocated != 0 || s.free_chunks != s.chunks {
        return Err(format!("not empty after freeing everything: {s:?}"));
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
        heap.free(&pool, a, Some(d[0])).unwrap(); // the run stays
        heap.free(&pool, c, Some(d[2])).unwrap(); // the run empties: released
        heap.free(&pool, s, Some(d[3])).unwrap(); // the span
        assert!(matches!(
            heap.free(&pool, a, Some(d[0])),
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
    // 7 commits of 2 drains each, plus the final state.
    assert!(t.0 >= 15, "only {} images", t.0);
}
