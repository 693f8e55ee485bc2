//! Loom models of the allocator's volatile concurrent core (no pool involved): the
//! reserve / cancel / publish protocol on a run's [`RunBits`] under the run's lock, as
//! `Heap::reserve`, `Heap::cancel` and `Heap::publish` use it, the lane slots (the heap's
//! lanes, claimed in place).
//!
//! `RUSTFLAGS="--cfg loom" cargo test -p pmstore-alloc --test loom_core --release`
#![cfg(loom)]

use std::collections::BTreeSet;

use loom::sync::atomic::{AtomicBool, Ordering};
use loom::sync::Arc;
use loom::thread;
use pmstore_alloc::primitive::{lock, Mutex};
use pmstore_alloc::volatile::{LaneSlots, RunBits};

/// What one thread does with each block it reserves.
#[derive(Clone, Copy)]
enum Fate {
    Publish,
    Cancel,
}

/// Runs `plans` (one per thread) against one run of `blocks` blocks, of which `pre` are
/// allocated, and checks that no block is handed out twice and none is lost.
fn model_run(blocks: u32, pre: &'static [u32], plans: &'static [&'static [Fate]]) {
    loom::model(move || {
        let mut init = RunBits::empty(blocks);
        for &b in pre {
            let r = init.reserve().unwrap();
            assert_eq!(r, b);
            init.apply_publish(&[r], &[]);
        }
        let run = Arc::new(Mutex::new(init));
        let handles: Vec<_> = plans
            .iter()
            .map(|&plan| {
                let run = Arc::clone(&run);
                thread::spawn(move || {
                    // Blocks this thread published (the "media").
                    let mut published = Vec::new();
                    for fate in plan {
                        // reserve: under the run lock, volatile only.
                        let Some(b) = lock(&run).reserve() else {
                            continue; // full: the heap would move to another run
                        };
                        match fate {
                            Fate::Cancel => lock(&run).unreserve(b),
                            Fate::Publish => {
                                // publish: the word is computed under the lock, then
                                // "committed" and applied before the lock is released.
                                let mut st = lock(&run);
                                let words = st.publish_words(&[b], &[]);
                                assert_eq!(words.len(), 1);
                                assert_eq!(words[0].1 >> (b % 64) & 1, 1);
                                assert!(!st.is_allocated(b), "block {b} handed out twice");
                                st.apply_publish(&[b], &[]);
                                published.push(b);
                            }
                        }
                    }
                    published
                })
            })
            .collect();
        let published: Vec<u32> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let mut st = lock(&run);
        let mut all: BTreeSet<u32> = pre.iter().copied().collect();
        for &b in &published {
            assert!(all.insert(b), "block {b} published twice");
        }
        assert_eq!(st.reserved(), 0, "a reservation leaked");
        assert_eq!(st.used() as usize, all.len());
        for &b in &all {
            assert!(st.is_allocated(b));
        }
        // None lost: every other block can be reserved again.
        let mut again = BTreeSet::new();
        while let Some(b) = st.reserve() {
            assert!(!all.contains(&b), "allocated block {b} reserved");
            assert!(again.insert(b));
        }
        assert_eq!(all.len() + again.len(), blocks as usize);
    });
}

#[test]
fn reserve_cancel_publish_two_threads() {
    model_run(
        3,
        &[0],
        &[
            &[Fate::Publish, Fate::Cancel],
            &[Fate::Cancel, Fate::Publish],
        ],
    );
}

#[test]
fn reserve_on_a_nearly_full_run_three_threads() {
    // Two free blocks for three threads: one of them finds the run full (or not, if a
    // cancel came first).
    model_run(
        4,
        &[0, 1],
        &[&[Fate::Publish], &[Fate::Cancel], &[Fate::Publish]],
    );
}

/// One thread per plan claims, for each hint of its plan in turn, a lane of `lanes` near the
/// hint (waiting, yielding, while all are claimed), writes to it through the claim and
/// releases it: loom checks that the writes never race (the cell reports accesses not ordered
/// by happens-before) and the flags that no lane is claimed twice at once; at the end every
/// lane is free and holds every write.
fn model_lane_slots(lanes: usize, plans: &'static [&'static [usize]]) {
    loom::model(move || {
        let in_use: Arc<Vec<AtomicBool>> =
            Arc::new((0..lanes).map(|_| AtomicBool::new(false)).collect());
        let slots = Arc::new(LaneSlots::new(vec![0usize; lanes]));
        let handles: Vec<_> = plans
            .iter()
            .map(|&plan| {
                let (slots, in_use) = (Arc::clone(&slots), Arc::clone(&in_use));
                thread::spawn(move || {
                    for &hint in plan {
                        let mut claim = slots.claim_near(hint);
                        let l = claim.index();
                        assert!(
                            !in_use[l].swap(true, Ordering::SeqCst),
                            "lane {l} claimed twice"
                        );
                        *claim += 1;
                        in_use[l].store(false, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(slots.available(), lanes, "a lane was lost");
        let total: usize = (0..lanes).map(|i| *slots.claim_near(i)).sum();
        let claims: usize = plans.iter().map(|p| p.len()).sum();
        assert_eq!(total, claims, "a write was lost");
    });
}

#[test]
fn lane_slots_one_lane_two_threads() {
    // The second thread waits, yielding, in `claim_near`.
    model_lane_slots(1, &[&[0], &[0]]);
}

#[test]
fn lane_slots_two_lanes_same_hint() {
    // Both threads try lane 1 first: the one that loses it moves on to lane 0 (wrapping), or
    // takes lane 1 after the other released it; its second claim then tries lane 1 again
    // (this model caught a failed claim attempt releasing the lane it had not got).
    model_lane_slots(2, &[&[1], &[1, 1]]);
}
