//! The volatile core of the allocator that needs no pool, kept apart so that the loom models
//! (`tests/loom_core.rs`) exercise the same code as the [`crate::Heap`]:
//!
//! * [`RunBits`]: a run's bitmap as on media plus the volatile reservations on top of it (the
//!   reserve / cancel / publish protocol of `docs/ALLOC.md` §8); the heap keeps one per run,
//!   under the run's lock;
//! * [`LanePool`]: the pool of free lanes (a [`Mutex`]-guarded stack).

use crossbeam_utils::CachePadded;
use smallvec::SmallVec;

use crate::primitive::{lock, yield_now, Mutex};

/// A run's allocation bitmap (`bits`, equal to the media once loaded) and its reserved blocks
/// (volatile only). A block is *taken* if it is allocated or reserved; `reserve` hands out
/// only free blocks, `publish` turns reserved blocks into allocated ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunBits {
    blocks: u32,
    bits: Vec<u64>,
    reserved: Vec<u64>,
    used: u32,
    nreserved: u32,
}

impl RunBits {
    /// The state of a run of `blocks` blocks whose bitmap words are `bits`
    /// (`ceil(blocks / 64)` of them), with nothing reserved.
    ///
    /// # Panics
    /// If `bits` has the wrong length.
    pub fn new(blocks: u32, bits: Vec<u64>) -> RunBits {
        assert_eq!(bits.len(), blocks.div_ceil(64) as usize, "bitmap length");
        RunBits {
            blocks,
            used: bits.iter().map(|w| w.count_ones()).sum(),
            reserved: vec![0; bits.len()],
            bits,
            nreserved: 0,
        }
    }

    /// An empty run of `blocks` blocks.
    pub fn empty(blocks: u32) -> RunBits {
        RunBits::new(blocks, vec![0; blocks.div_ceil(64) as usize])
    }

    /// The bitmap words (allocated blocks only, as on media).
    pub fn words(&self) -> &[u64] {
        &self.bits
    }

    /// Allocated blocks.
    pub fn used(&self) -> u32 {
        self.used
    }

    /// Reserved blocks.
    pub fn reserved(&self) -> u32 {
        self.nreserved
    }

    /// Whether every block is allocated or reserved.
    pub fn is_full(&self) -> bool {
        self.used + self.nreserved == self.blocks
    }

    /// Whether block `b` is allocated.
    pub fn is_allocated(&self, b: u32) -> bool {
        b < self.blocks && self.bits[(b / 64) as usize] >> (b % 64) & 1 == 1
    }

    /// Whether block `b` is reserved.
    pub fn is_reserved(&self, b: u32) -> bool {
        b < self.blocks && self.reserved[(b / 64) as usize] >> (b % 64) & 1 == 1
    }

    /// Reserves the lowest free block, or returns `None` if the run is full.
    pub fn reserve(&mut self) -> Option<u32> {
        if self.is_full() {
            return None;
        }
        let (w, taken) = self
            .bits
            .iter()
            .zip(&self.reserved)
            .map(|(b, r)| b | r)
            .enumerate()
            .find(|&(_, t)| t != u64::MAX)?;
        let b = taken.trailing_ones();
        let block = w as u32 * 64 + b;
        if block >= self.blocks {
            return None;
        }
        self.reserved[w] |= 1 << b;
        self.nreserved += 1;
        Some(block)
    }

    /// Returns reserved block `b` to the free state.
    ///
    /// # Panics
    /// If `b` is not reserved.
    pub fn unreserve(&mut self, b: u32) {
        assert!(self.is_reserved(b), "block {b} is not reserved");
        self.reserved[(b / 64) as usize] &= !(1 << (b % 64));
        self.nreserved -= 1;
    }

    /// The bitmap words that publishing the reserved blocks `publish` and freeing the
    /// allocated blocks `free` changes, with their final values, in word order (one entry per
    /// word however many blocks of it change). Changes nothing.
    ///
    /// # Panics
    /// If a block of `publish` is not reserved or one of `free` is not allocated.
    pub fn publish_words(&self, publish: &[u32], free: &[u32]) -> SmallVec<[(usize, u64); 4]> {
        // Usually one or two words: a small inline vector with a linear search beats a map.
        let mut words: SmallVec<[(usize, u64); 4]> = SmallVec::new();
        let index = |words: &mut SmallVec<[(usize, u64); 4]>, w: usize| -> usize {
            match words.iter().position(|&(x, _)| x == w) {
                Some(i) => i,
                None => {
                    words.push((w, self.bits[w]));
                    words.len() - 1
                }
            }
        };
        for &b in publish {
            assert!(self.is_reserved(b), "block {b} is not reserved");
            let i = index(&mut words, (b / 64) as usize);
            words[i].1 |= 1 << (b % 64);
        }
        for &b in free {
            assert!(self.is_allocated(b), "block {b} is not allocated");
            let i = index(&mut words, (b / 64) as usize);
            words[i].1 &= !(1 << (b % 64));
        }
        words.sort_unstable_by_key(|&(w, _)| w);
        words
    }

    /// Applies a publication (after its commit): the reserved blocks `publish` become
    /// allocated, the allocated blocks `free` become free.
    ///
    /// # Panics
    /// As [`RunBits::publish_words`].
    pub fn apply_publish(&mut self, publish: &[u32], free: &[u32]) {
        for (w, v) in self.publish_words(publish, free) {
            self.bits[w] = v;
        }
        for &b in publish {
            self.reserved[(b / 64) as usize] &= !(1 << (b % 64));
        }
        self.nreserved -= publish.len() as u32;
        self.used = self.used + publish.len() as u32 - free.len() as u32;
    }
}

/// A pool of lanes (or anything exclusive): [`LanePool::take`] waits for one.
///
/// The items are spread over up to [`LANE_STRIPES`] stripes, each its own mutex on its own
/// cache line; a thread takes from and returns to the stripe its `hint` names first, so
/// threads with different hints do not bounce one mutex between cores (with one mutex, the
/// lane pool took a fifth of the time of two threads allocating).
#[derive(Debug)]
pub struct LanePool<T> {
    stripes: Box<[CachePadded<Mutex<Vec<T>>>]>,
}

/// Most stripes a [`LanePool`] has.
pub const LANE_STRIPES: usize = 8;

impl<T> LanePool<T> {
    /// A pool holding `items`, dealt round-robin over the stripes.
    pub fn new(items: Vec<T>) -> LanePool<T> {
        let n = items.len().clamp(1, LANE_STRIPES);
        let mut stripes: Vec<Vec<T>> = (0..n).map(|_| Vec::new()).collect();
        for (i, item) in items.into_iter().enumerate() {
            stripes[i % n].push(item);
        }
        LanePool {
            stripes: stripes
                .into_iter()
                .map(|v| CachePadded::new(Mutex::new(v)))
                .collect(),
        }
    }

    /// Takes an item, or `None` if all are taken.
    pub fn try_take(&self) -> Option<T> {
        self.try_take_near(0)
    }

    /// Takes an item, trying stripe `hint` first, or `None` if all are taken.
    pub fn try_take_near(&self, hint: usize) -> Option<T> {
        let n = self.stripes.len();
        (0..n).find_map(|i| lock(&self.stripes[(hint + i) % n]).pop())
    }

    /// Takes an item, yielding until one is free.
    pub fn take(&self) -> T {
        self.take_near(0)
    }

    /// Takes an item, trying stripe `hint` first, yielding until one is free.
    pub fn take_near(&self, hint: usize) -> T {
        loop {
            if let Some(l) = self.try_take_near(hint) {
                return l;
            }
            yield_now();
        }
    }

    /// Returns an item.
    pub fn put(&self, item: T) {
        self.put_near(0, item);
    }

    /// Returns an item to stripe `hint`.
    pub fn put_near(&self, hint: usize, item: T) {
        lock(&self.stripes[hint % self.stripes.len()]).push(item);
    }

    /// Items currently free.
    pub fn available(&self) -> usize {
        self.stripes.iter().map(|s| lock(s).len()).sum()
    }
}
