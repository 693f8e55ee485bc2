//! Random sequences of atomic allocs, frees and multi-item publishes in the simulated
//! persistence domain, crashed at every drain: every crash image must recover to exactly the
//! state before or after the operation in progress (root words and live blocks alike), and the
//! recovered heap must free back to empty.
//!
//! `PMSTORE_CRASH_SEQS` (default 6) sequences of `PMSTORE_CRASH_OPS` (default 14) operations;
//! raise them for long explorations.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use pmstore_alloc::heap::CHUNK;
use pmstore_alloc::Heap;
use pmstore_pool::sim::CrashPoint;
use pmstore_pool::{CreateOptions, Pool, MIN_POOL_SIZE};

mod common;
use common::*;

const WORDS: u64 = 8;
const SIZES: [u64; 7] = [16, 64, 200, 5000, 70_000, CHUNK + 1, 2 * CHUNK];

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n
    }
}

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

type Observed = Arc<Mutex<Vec<(u64, Result<(Vec<u64>, Vec<u64>, u64), String>)>>>;

#[test]
fn random_sequences_recover_to_before_or_after_every_operation() {
    let (seqs, ops) = (knob("PMSTORE_CRASH_SEQS", 6), knob("PMSTORE_CRASH_OPS", 14));
    let (mut images, mut bad, mut held_images) = (0usize, Vec::new(), 0usize);
    for seed in 0..seqs {
        let (mut pool, sim) =
            Pool::create_simulated(&CreateOptions::new(LAYOUT, MIN_POOL_SIZE)).unwrap();
        let (heap, _) = Heap::open(&mut pool).unwrap();
        let d: Vec<u64> = (0..WORDS).map(|i| root(&pool, i)).collect();
        let mut model = vec![0u64; WORDS as usize];
        let mut rng = Rng(seed * 7919 + 1);
        let observed: Observed = Arc::default();
        {
            let observed = Arc::clone(&observed);
            sim.set_crash_hook(move |cp: &CrashPoint<'_>| {
                for img in cp.images(10, 24, seed) {
                    let r = recovered_state(&img, WORDS)
                        .map(|(w, live, held)| (w, live.into_keys().collect(), held));
                    observed.lock().unwrap().push((cp.drain, r));
                }
            });
        }
        for _ in 0..ops {
            let before = model.clone();
            let i = rng.below(WORDS) as usize;
            match rng.below(3) {
                0 if model[i] == 0 => {
                    let size = SIZES[rng.below(SIZES.len() as u64) as usize];
                    // SAFETY: single-threaded; the root words are this test's.
                    model[i] = unsafe { heap.alloc(&pool, size, d[i]) }.unwrap();
                }
                0 | 1 if model[i] != 0 => {
                    // SAFETY: single-threaded; the root words are this test's.
                    unsafe { heap.free(&pool, model[i], Some(d[i])) }.unwrap();
                    model[i] = 0;
                }
                _ => {
                    // One publish: reserve into up to two empty words, free one occupied word,
                    // and a cancelled reservation that must never appear.
                    let empty: Vec<usize> = (0..WORDS as usize)
                        .filter(|&j| model[j] == 0)
                        .take(2)
                        .collect();
                    let full: Vec<usize> = (0..WORDS as usize)
                        .filter(|&j| model[j] != 0)
                        .take(1)
                        .collect();
                    let mut rs = Vec::new();
                    let mut words = Vec::new();
                    for &j in &empty {
                        let r = heap
                            .reserve(&pool, SIZES[rng.below(SIZES.len() as u64) as usize])
                            .unwrap();
                        words.push((d[j], r.offset()));
                        model[j] = r.offset();
                        rs.push(r);
                    }
                    let frees: Vec<u64> = full.iter().map(|&j| model[j]).collect();
                    for &j in &full {
                        words.push((d[j], 0));
                        model[j] = 0;
                    }
                    let cancelled = heap.reserve(&pool, 64).unwrap();
                    // SAFETY: single-threaded; the root words are this test's.
                    unsafe { heap.publish(&pool, &mut rs, &frees, &words) }.unwrap();
                    heap.cancel(cancelled);
                }
            }
            let after = model.clone();
            let live = |w: &[u64]| -> Vec<u64> {
                w.iter()
                    .copied()
                    .filter(|&x| x != 0)
                    .collect::<BTreeSet<u64>>()
                    .into_iter()
                    .collect()
            };
            for (drain, r) in observed.lock().unwrap().drain(..) {
                images += 1;
                if let Ok((_, _, held)) = &r {
                    held_images += usize::from(*held > 0);
                }
                match r {
                    Ok((w, l, _)) if (w == before && l == live(&before)) || (w == after && l == live(&after)) => {}
                    Ok((w, l, _)) => bad.push(format!(
                        "seed {seed} drain {drain}: words {w:x?} live {l:x?}, neither before {before:x?} nor after {after:x?}"
                    )),
                    Err(e) => bad.push(format!("seed {seed} drain {drain}: {e}")),
                }
            }
        }
        sim.clear_crash_hook();
    }
    println!(
        "random-sequence crash images checked: {images} ({seqs} sequences of {ops} operations)"
    );
    // Runs emptied by frees are kept for their class (ALLOC.md §8), so most recovered heaps
    // hold empty runs after freeing everything: counted, not failed — `recovered_state`
    // checks that `release_empty_runs` returns every one of their chunks.
    println!(
        "images whose recovered heap holds empty runs after freeing everything (all released \
         by release_empty_runs): {held_images}"
    );
    assert!(
        bad.is_empty(),
        "{} bad images, e.g. {:#?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
    assert!(images as u64 >= seqs * ops, "only {images} images");
}
