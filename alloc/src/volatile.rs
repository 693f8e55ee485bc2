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
///
/// ```
/// use pmstore_alloc::volatile::RunBits;
///
/// let mut run = RunBits::empty(100);
/// let b = run.reserve().unwrap(); // volatile only
/// assert!(run.is_reserved(b) && !run.is_allocated(b));
/// let words = run.publish_words(&[b], &[]); // what the commit must store
/// assert_eq!(words[..], [(0, 1)]);
/// run.apply_publish(&[b], &[]); // after the commit
/// assert!(run.is_allocated(b));
/// assert_eq!((run.used(), run.reserved()), (1, 0));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunBits {
    blocks: u32,
    bits: Vec<u64>,
    reserved: Vec<u64>,
    used: u32,
    nreserved: u32,
}

/// Reserve, cancel and publish, as the heap drives them.
///
/// ```
/// use pmstore_alloc::volatile::RunBits;
///
/// let mut run = RunBits::new(2, vec![0b01]); // block 0 allocated on media
/// assert_eq!(run.reserve(), Some(1));
/// assert!(run.is_full());
/// run.unreserve(1); // the transaction aborted
/// assert!(!run.is_full());
/// ```
impl RunBits {
    /// The state of a run of `blocks` blocks whose bitmap words are `bits`
    /// (`ceil(blocks / 64)` of them), with nothing reserved.
    ///
    /// # Panics
    /// If `bits` has the wrong length.
    ///
    /// # Examples
    ///
    /// ```
    /// use pmstore_alloc::volatile::RunBits;
    ///
    /// // 70 blocks take two bitmap words; blocks 0 and 64 are allocated.
    /// let run = RunBits::new(70, vec![1, 1]);
    /// assert_eq!(run.used(), 2);
    /// assert!(run.is_allocated(64));
    /// assert_eq!(run.reserved(), 0);
    /// ```
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
    ///
    /// ```
    /// use pmstore_alloc::volatile::RunBits;
    ///
    /// let run = RunBits::empty(130);
    /// assert_eq!(run.words(), [0, 0, 0]);
    /// assert_eq!(run.used(), 0);
    /// ```
    pub fn empty(blocks: u32) -> RunBits {
        RunBits::new(blocks, vec![0; blocks.div_ceil(64) as usize])
    }

    /// The bitmap words (allocated blocks only, as on media).
    ///
    /// ```
    /// use pmstore_alloc::volatile::RunBits;
    ///
    /// let mut run = RunBits::empty(8);
    /// let b = run.reserve().unwrap();
    /// assert_eq!(run.words(), [0]); // reservations are not on media
    /// run.apply_publish(&[b], &[]);
    /// assert_eq!(run.words(), [1]);
    /// ```
    pub fn words(&self) -> &[u64] {
        &self.bits
    }

    /// Allocated blocks.
    ///
    /// ```
    /// use pmstore_alloc::volatile::RunBits;
    ///
    /// let run = RunBits::new(64, vec![0b1011]);
    /// assert_eq!(run.used(), 3);
    /// ```
    pub fn used(&self) -> u32 {
        self.used
    }

    /// Reserved blocks.
    ///
    /// ```
    /// use pmstore_alloc::volatile::RunBits;
    ///
    /// let mut run = RunBits::empty(8);
    /// run.reserve();
    /// run.reserve();
    /// assert_eq!(run.reserved(), 2);
    /// assert_eq!(run.used(), 0);
    /// ```
    pub fn reserved(&self) -> u32 {
        self.nreserved
    }

    /// Whether every block is allocated or reserved.
    ///
    /// ```
    /// use pmstore_alloc::volatile::RunBits;
    ///
    /// let mut run = RunBits::new(2, vec![0b01]);
    /// assert!(!run.is_full());
    /// run.reserve();
    /// assert!(run.is_full()); // one allocated, one reserved
    /// assert_eq!(run.reserve(), None);
    /// ```
    pub fn is_full(&self) -> bool {
        self.used + self.nreserved == self.blocks
    }

    /// Whether block `b` is allocated.
    ///
    /// ```
    /// use pmstore_alloc::volatile::RunBits;
    ///
    /// let run = RunBits::new(8, vec![0b100]);
    /// assert!(run.is_allocated(2));
    /// assert!(!run.is_allocated(3));
    /// assert!(!run.is_allocated(1000)); // out of range: not allocated
    /// ```
    pub fn is_allocated(&self, b: u32) -> bool {
        b < self.blocks && self.bits[(b / 64) as usize] >> (b % 64) & 1 == 1
    }

    /// Whether block `b` is reserved.
    ///
    /// ```
    /// use pmstore_alloc::volatile::RunBits;
    ///
    /// let mut run = RunBits::empty(8);
    /// let b = run.reserve().unwrap();
    /// assert!(run.is_reserved(b));
    /// assert!(!run.is_reserved(b + 1));
    /// ```
    pub fn is_reserved(&self, b: u32) -> bool {
        b < self.blocks && self.reserved[(b / 64) as usize] >> (b % 64) & 1 == 1
    }

    /// Reserves the lowest free block, or returns `None` if the run is full.
    ///
    /// ```
    /// use pmstore_alloc::volatile::RunBits;
    ///
    /// let mut run = RunBits::new(3, vec![0b001]); // block 0 allocated
    /// assert_eq!(run.reserve(), Some(1)); // the lowest free block
    /// assert_eq!(run.reserve(), Some(2));
    /// assert_eq!(run.reserve(), None);
    /// ```
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
    ///
    /// # Examples
    ///
    /// ```
    /// use pmstore_alloc::volatile::RunBits;
    ///
    /// let mut run = RunBits::empty(8);
    /// let b = run.reserve().unwrap();
    /// run.unreserve(b);
    /// assert_eq!(run.reserved(), 0);
    /// assert_eq!(run.reserve(), Some(b)); // free again
    /// ```
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
    ///
    /// # Examples
    ///
    /// ```
    /// use pmstore_alloc::volatile::RunBits;
    ///
    /// let mut run = RunBits::new(128, vec![0b1, 0]); // block 0 allocated
    /// let a = run.reserve().unwrap(); // 1
    /// let words = run.publish_words(&[a], &[0]);
    /// assert_eq!(words[..], [(0, 0b10)]); // one word, both changes in it
    /// assert_eq!(run.words(), [0b1, 0]); // unchanged until applied
    /// ```
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
    ///
    /// # Examples
    ///
    /// ```
    /// use pmstore_alloc::volatile::RunBits;
    ///
    /// let mut run = RunBits::new(8, vec![0b1]);
    /// let a = run.reserve().unwrap();
    /// run.apply_publish(&[a], &[0]); // allocate `a`, free block 0
    /// assert_eq!(run.words(), [0b10]);
    /// assert_eq!((run.used(), run.reserved()), (1, 0));
    /// ```
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
///
/// ```
/// use pmstore_alloc::volatile::LanePool;
///
/// let lanes = LanePool::new(vec![0u32, 1, 2]);
/// let lane = lanes.take();
/// assert_eq!(lanes.available(), 2);
/// lanes.put(lane);
/// assert_eq!(lanes.available(), 3);
/// ```
#[derive(Debug)]
pub struct LanePool<T> {
    stripes: Box<[CachePadded<Mutex<Vec<T>>>]>,
}

/// Most stripes a [`LanePool`] has.
pub const LANE_STRIPES: usize = 8;

/// Taking and returning items, with or without a stripe hint.
///
/// ```
/// use pmstore_alloc::volatile::LanePool;
///
/// let pool = LanePool::new(vec!['a']);
/// let x = pool.try_take().unwrap();
/// assert!(pool.try_take().is_none()); // all taken
/// pool.put(x);
/// assert_eq!(pool.take(), 'a');
/// ```
impl<T> LanePool<T> {
    /// A pool holding `items`, dealt round-robin over the stripes.
    ///
    /// ```
    /// use pmstore_alloc::volatile::LanePool;
    ///
    /// let pool = LanePool::new((0..20).collect::<Vec<u32>>());
    /// assert_eq!(pool.available(), 20);
    /// ```
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
    ///
    /// ```
    /// use pmstore_alloc::volatile::LanePool;
    ///
    /// let pool = LanePool::new(vec![7]);
    /// assert_eq!(pool.try_take(), Some(7));
    /// assert_eq!(pool.try_take(), None);
    /// ```
    pub fn try_take(&self) -> Option<T> {
        self.try_take_near(0)
    }

    /// Takes an item, trying stripe `hint` first, or `None` if all are taken.
    ///
    /// ```
    /// use pmstore_alloc::volatile::LanePool;
    ///
    /// let pool = LanePool::new(vec![0, 1]); // two stripes: [0] and [1]
    /// assert_eq!(pool.try_take_near(1), Some(1));
    /// assert_eq!(pool.try_take_near(1), Some(0)); // stripe 1 empty: tries the others
    /// assert_eq!(pool.try_take_near(1), None);
    /// ```
    pub fn try_take_near(&self, hint: usize) -> Option<T> {
        let n = self.stripes.len();
        (0..n).find_map(|i| lock(&self.stripes[(hint + i) % n]).pop())
    }

    /// Takes an item, yielding until one is free.
    ///
    /// ```
    /// use pmstore_alloc::volatile::LanePool;
    /// use std::sync::Arc;
    ///
    /// let pool = Arc::new(LanePool::new(vec![1u8]));
    /// let held = pool.take();
    /// let p = Arc::clone(&pool);
    /// let waiter = std::thread::spawn(move || p.take()); // waits for the lane
    /// pool.put(held);
    /// assert_eq!(waiter.join().unwrap(), 1);
    /// ```
    pub fn take(&self) -> T {
        self.take_near(0)
    }

    /// Takes an item, trying stripe `hint` first, yielding until one is free.
    ///
    /// ```
    /// use pmstore_alloc::volatile::LanePool;
    ///
    /// let pool = LanePool::new(vec![10, 11, 12]);
    /// assert_eq!(pool.take_near(2), 12); // item 2 was dealt to stripe 2
    /// assert_eq!(pool.available(), 2);
    /// ```
    pub fn take_near(&self, hint: usize) -> T {
        loop {
            if let Some(l) = self.try_take_near(hint) {
                return l;
            }
            yield_now();
        }
    }

    /// Returns an item.
    ///
    /// ```
    /// use pmstore_alloc::volatile::LanePool;
    ///
    /// let pool = LanePool::new(Vec::<u32>::new());
    /// assert_eq!(pool.try_take(), None);
    /// pool.put(5);
    /// assert_eq!(pool.try_take(), Some(5));
    /// ```
    pub fn put(&self, item: T) {
        self.put_near(0, item);
    }

    /// Returns an item to stripe `hint`.
    ///
    /// ```
    /// use pmstore_alloc::volatile::LanePool;
    ///
    /// let pool = LanePool::new(vec![0, 1]);
    /// let x = pool.take_near(1);
    /// pool.put_near(1, x); // back to its own stripe
    /// assert_eq!(pool.try_take_near(1), Some(1));
    /// ```
    pub fn put_near(&self, hint: usize, item: T) {
        lock(&self.stripes[hint % self.stripes.len()]).push(item);
    }

    /// Items currently free.
    ///
    /// ```
    /// use pmstore_alloc::volatile::LanePool;
    ///
    /// let pool = LanePool::new(vec![(); 4]);
    /// let _a = pool.take();
    /// assert_eq!(pool.available(), 3);
    /// ```
    pub fn available(&self) -> usize {
        self.stripes.iter().map(|s| lock(s).len()).sum()
    }
}
