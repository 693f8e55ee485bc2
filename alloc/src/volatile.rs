//! The volatile core of the allocator that needs no pool, kept apart so that the loom models
//! (`tests/loom_core.rs`) exercise the same code as the [`crate::Heap`]:
//!
//! * [`RunBits`]: a run's bitmap as on media plus the volatile reservations on top of it (the
//!   reserve / cancel / publish protocol of `docs/ALLOC.md` §8); the heap keeps one per run,
//!   under the run's lock;
//! * [`LaneSlots`]: the heap's lanes, each in place with a claimed flag (a [`LaneClaim`] is
//!   exclusive access to one), claimed with one compare-and-swap and never moved.

use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::Ordering;

use crossbeam_utils::CachePadded;
use smallvec::SmallVec;

use crate::primitive::{yield_now, AtomicBool, RaceCell};

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

    /// Frees every block and drops every reservation (the state of [`RunBits::empty`], keeping
    /// the vectors: for reusing a released run's state for a new run of its class).
    ///
    /// ```
    /// use pmstore_alloc::volatile::RunBits;
    ///
    /// let mut run = RunBits::new(70, vec![1, 1]);
    /// run.reserve();
    /// run.clear();
    /// assert_eq!(run, RunBits::empty(70));
    /// ```
    pub fn clear(&mut self) {
        self.bits.fill(0);
        self.reserved.fill(0);
        self.used = 0;
        self.nreserved = 0;
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
        let mut change = |w: usize, set: u64, clear: u64| {
            let v = match words.iter_mut().find(|(x, _)| *x == w) {
                Some((_, v)) => v,
                None => {
                    words.push((w, self.bits[w]));
                    &mut words.last_mut().expect("just pushed").1
                }
            };
            *v = (*v | set) & !clear;
        };
        for &b in publish {
            assert!(self.is_reserved(b), "block {b} is not reserved");
            change((b / 64) as usize, 1 << (b % 64), 0);
        }
        for &b in free {
            assert!(self.is_allocated(b), "block {b} is not allocated");
            change((b / 64) as usize, 0, 1 << (b % 64));
        }
        if words.len() > 1 {
            words.sort_unstable_by_key(|&(w, _)| w);
        }
        words
    }

    /// [`RunBits::apply_publish`] of the one reserved block `b` (`&[b], &[]`), without the
    /// slices.
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
    /// run.publish_block(b);
    /// assert!(run.is_allocated(b) && !run.is_reserved(b));
    /// assert_eq!((run.used(), run.reserved()), (1, 0));
    /// ```
    pub fn publish_block(&mut self, b: u32) {
        assert!(self.is_reserved(b), "block {b} is not reserved");
        let (w, bit) = ((b / 64) as usize, 1u64 << (b % 64));
        self.bits[w] |= bit;
        self.reserved[w] &= !bit;
        self.nreserved -= 1;
        self.used += 1;
    }

    /// [`RunBits::apply_publish`] of the one allocated block `b` freed (`&[], &[b]`).
    ///
    /// # Panics
    /// If `b` is not allocated.
    ///
    /// # Examples
    ///
    /// ```
    /// use pmstore_alloc::volatile::RunBits;
    ///
    /// let mut run = RunBits::new(8, vec![0b100]);
    /// run.free_block(2);
    /// assert_eq!(run.words(), [0]);
    /// assert_eq!(run.used(), 0);
    /// ```
    pub fn free_block(&mut self, b: u32) {
        assert!(self.is_allocated(b), "block {b} is not allocated");
        self.bits[(b / 64) as usize] &= !(1 << (b % 64));
        self.used -= 1;
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
        // Every block checked before anything changes (a panic leaves the run as it was).
        for &b in publish {
            assert!(self.is_reserved(b), "block {b} is not reserved");
        }
        for &b in free {
            assert!(self.is_allocated(b), "block {b} is not allocated");
        }
        for &b in publish {
            let (w, bit) = ((b / 64) as usize, 1u64 << (b % 64));
            self.bits[w] |= bit;
            self.reserved[w] &= !bit;
        }
        for &b in free {
            self.bits[(b / 64) as usize] &= !(1 << (b % 64));
        }
        self.nreserved -= publish.len() as u32;
        self.used = self.used + publish.len() as u32 - free.len() as u32;
    }
}

/// Items (the heap's lanes) that stay in place, each claimed exclusively through its own flag:
/// claiming is one compare-and-swap on the slot the `hint` names (or the next free one), and
/// nothing is moved (a lane is a redo log handle and a flush context: moving it in and out of
/// a locked stack cost more than the lock).
///
/// ```
/// use pmstore_alloc::volatile::LaneSlots;
///
/// let lanes = LaneSlots::new(vec![10u32, 11, 12]);
/// let mut a = lanes.claim_near(1);
/// assert_eq!((a.index(), *a), (1, 11)); // the hinted slot, free
/// *a += 100; // exclusive while claimed
/// let b = lanes.claim_near(1); // taken: the next free one
/// assert_eq!(b.index(), 2);
/// assert_eq!(lanes.available(), 1);
/// drop((a, b));
/// assert_eq!(*lanes.claim_near(1), 111);
/// ```
pub struct LaneSlots<T> {
    slots: Box<[CachePadded<LaneSlot<T>>]>,
}

struct LaneSlot<T> {
    /// Set by the claim that owns `item`, cleared (release) when that claim ends.
    claimed: AtomicBool,
    item: RaceCell<T>,
}

// SAFETY: an item is accessed only through the one `LaneClaim` that set its slot's flag (an
// acquire compare-and-swap, paired with the release store that ended the previous claim), so
// sharing the slots between threads only ever moves exclusive access to a `T` from one thread
// to another: what `T: Send` allows.
unsafe impl<T: Send> Sync for LaneSlots<T> {}

impl<T> std::fmt::Debug for LaneSlots<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaneSlots")
            .field("slots", &self.slots.len())
            .field("available", &self.available())
            .finish()
    }
}

/// Claiming and releasing slots.
///
/// ```
/// use pmstore_alloc::volatile::LaneSlots;
///
/// let lanes = LaneSlots::new(vec!['a']);
/// let x = lanes.try_claim_near(0).unwrap();
/// assert!(lanes.try_claim_near(0).is_none()); // all claimed
/// drop(x); // released
/// assert_eq!(*lanes.claim_near(7), 'a');
/// ```
impl<T> LaneSlots<T> {
    /// Slots holding `items`, all free (slot `i` holds `items[i]`).
    ///
    /// ```
    /// use pmstore_alloc::volatile::LaneSlots;
    ///
    /// let lanes = LaneSlots::new((0..20).collect::<Vec<u32>>());
    /// assert_eq!(lanes.len(), 20);
    /// assert_eq!(lanes.available(), 20);
    /// ```
    pub fn new(items: Vec<T>) -> LaneSlots<T> {
        LaneSlots {
            slots: items
                .into_iter()
                .map(|item| {
                    CachePadded::new(LaneSlot {
                        claimed: AtomicBool::new(false),
                        item: RaceCell::new(item),
                    })
                })
                .collect(),
        }
    }

    /// Number of slots.
    ///
    /// ```
    /// use pmstore_alloc::volatile::LaneSlots;
    ///
    /// assert_eq!(LaneSlots::new(vec![(); 3]).len(), 3);
    /// ```
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether there are no slots (then nothing can be claimed).
    ///
    /// ```
    /// use pmstore_alloc::volatile::LaneSlots;
    ///
    /// assert!(LaneSlots::<u8>::new(Vec::new()).is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Claims a free slot, trying slot `hint % len` first and then the following ones, or
    /// `None` if all are claimed.
    ///
    /// ```
    /// use pmstore_alloc::volatile::LaneSlots;
    ///
    /// let lanes = LaneSlots::new(vec![0, 1]);
    /// let a = lanes.try_claim_near(3).unwrap();
    /// assert_eq!(a.index(), 1); // 3 % 2
    /// let b = lanes.try_claim_near(3).unwrap();
    /// assert_eq!(b.index(), 0); // slot 1 claimed: the next one, wrapping
    /// assert!(lanes.try_claim_near(3).is_none());
    /// ```
    pub fn try_claim_near(&self, hint: usize) -> Option<LaneClaim<'_, T>> {
        let n = self.slots.len();
        if n == 0 {
            return None;
        }
        let mut index = hint % n;
        for _ in 0..n {
            let flag = &self.slots[index].claimed;
            // The plain load first: a claimed slot's line is not written (not taken
            // exclusive) by a thread passing by.
            if !flag.load(Ordering::Relaxed)
                && flag
                    .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                // Only now: a claim made for a slot we did not get would release it when
                // dropped.
                return Some(LaneClaim {
                    slots: self,
                    index,
                    _item: PhantomData,
                });
            }
            index = if index + 1 == n { 0 } else { index + 1 };
        }
        None
    }

    /// Claims a free slot as [`LaneSlots::try_claim_near`] does, yielding until one is free.
    ///
    /// ```
    /// use pmstore_alloc::volatile::LaneSlots;
    /// use std::sync::Arc;
    ///
    /// let lanes = Arc::new(LaneSlots::new(vec![1u8]));
    /// let held = lanes.claim_near(0);
    /// let l = Arc::clone(&lanes);
    /// let waiter = std::thread::spawn(move || *l.claim_near(0)); // waits for the slot
    /// drop(held);
    /// assert_eq!(waiter.join().unwrap(), 1);
    /// ```
    pub fn claim_near(&self, hint: usize) -> LaneClaim<'_, T> {
        loop {
            if let Some(c) = self.try_claim_near(hint) {
                return c;
            }
            yield_now();
        }
    }

    /// Slots currently free.
    ///
    /// ```
    /// use pmstore_alloc::volatile::LaneSlots;
    ///
    /// let lanes = LaneSlots::new(vec![(); 4]);
    /// let _a = lanes.claim_near(0);
    /// assert_eq!(lanes.available(), 3);
    /// ```
    pub fn available(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| !s.claimed.load(Ordering::Relaxed))
            .count()
    }
}

/// Exclusive access to one slot's item of a [`LaneSlots`], until dropped (which releases it).
///
/// ```
/// use pmstore_alloc::volatile::LaneSlots;
///
/// let lanes = LaneSlots::new(vec![String::new()]);
/// lanes.claim_near(0).push_str("kept in place");
/// assert_eq!(&*lanes.claim_near(0), "kept in place");
/// ```
pub struct LaneClaim<'a, T> {
    slots: &'a LaneSlots<T>,
    index: usize,
    /// Shared like a `&mut T` (`Sync` only if `T` is): `deref` hands out `&T`.
    _item: PhantomData<&'a mut T>,
}

/// The claimed slot.
///
/// ```
/// use pmstore_alloc::volatile::LaneSlots;
///
/// let lanes = LaneSlots::new(vec!['a', 'b']);
/// let claim = lanes.claim_near(0);
/// assert_eq!((claim.index(), *claim), (0, 'a'));
/// ```
impl<T> LaneClaim<'_, T> {
    /// The slot's index.
    ///
    /// ```
    /// use pmstore_alloc::volatile::LaneSlots;
    ///
    /// let lanes = LaneSlots::new(vec![(); 2]);
    /// assert_eq!(lanes.claim_near(1).index(), 1);
    /// ```
    pub fn index(&self) -> usize {
        self.index
    }
}

impl<T> Deref for LaneClaim<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: this claim set the slot's flag (acquire) and has not cleared it, so no other
        // claim of the slot exists; the previous one's accesses happen-before ours (its
        // release store). Borrowed from `self`: no access outlives the claim.
        unsafe { &*self.slots.slots[self.index].item.get_mut_ptr() }
    }
}

impl<T> DerefMut for LaneClaim<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; and `&mut self` excludes every other reference made through
        // this claim.
        unsafe { &mut *self.slots.slots[self.index].item.get_mut_ptr() }
    }
}

impl<T> Drop for LaneClaim<'_, T> {
    fn drop(&mut self) {
        // Release: our accesses to the item happen-before the next claim's.
        self.slots.slots[self.index]
            .claimed
            .store(false, Ordering::Release);
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for LaneClaim<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaneClaim")
            .field("index", &self.index)
            .field("item", &**self)
            .finish()
    }
}
