//! Kept empty runs and reclaim (`docs/ALLOC.md` §8): a free that empties a run keeps the run
//! on media (header `RUN`, bitmap zero) for its class, within a budget per arena, so that an
//! alloc/free pair does not clear and rewrite the run's header every time; and when the chunk
//! allocator runs dry, every empty run no one uses — kept, queued, or found so on media after
//! a reopen — is released (header := 0, redo commits of their own) before an allocation
//! reports [`AllocError::OutOfSpace`]. Split from `allocator.rs` to keep files by concept.

use std::sync::atomic::{AtomicU32, AtomicU64};

use super::*;

/// Chunks of kept empty runs per arena at most (2 MiB): with one run per class at most, one
/// single-chunk run of each of eight classes, or one run of the largest class (8 chunks).
pub(super) const KEPT_CHUNKS_PER_ARENA: u32 = 8;

/// What one arena keeps: the kept empty runs' chunks and classes (a run that is not charged
/// here is released when a free empties it). Its own cache line: charged and uncharged by the
/// arena's threads on every alloc/free pair that empties its run.
#[derive(Debug, Default)]
pub(super) struct KeptBudget {
    /// Chunks of the runs charged here.
    chunks: AtomicU32,
    /// Bit `c`: a run of class `c` is charged here (class ids are bytes: 256 bits).
    classes: [AtomicU64; 4],
}

impl Core {
    /// Keeps `run` (on media, just emptied: no block allocated or reserved; its lock held as
    /// `st`) for its class if this thread's arena has room (no kept run of the class, and at
    /// most [`KEPT_CHUNKS_PER_ARENA`] chunks in all): charges the arena and returns `true`; or
    /// returns `false` (the caller releases the run). A run already kept stays kept.
    pub(super) fn try_keep(&self, run: &Run, st: &mut RunState) -> bool {
        if st.kept != 0 {
            return true;
        }
        let a = thread_index() % self.arenas.len();
        let k = &self.kept[a];
        let id = run.class.id;
        let (w, bit) = (usize::from(id / 64), 1u64 << (id % 64));
        if k.classes[w].fetch_or(bit, Ordering::Relaxed) & bit != 0 {
            return false; // the arena keeps another run of this class
        }
        let len = run.class.run_chunks;
        if k.chunks.fetch_add(len, Ordering::Relaxed) + len > KEPT_CHUNKS_PER_ARENA {
            k.chunks.fetch_sub(len, Ordering::Relaxed);
            k.classes[w].fetch_and(!bit, Ordering::Relaxed);
            return false;
        }
        st.kept = a as u16 + 1;
        // Under the run's lock: a reclaim that cleared the hint and then locked this run
        // before us sees the store (its unlock happens-before our lock); one that locks it
        // after us sees the run empty.
        self.hint_reclaim();
        true
    }

    /// Uncharges `run` (its lock held as `st`) if it is kept: a block of it was published, or
    /// it was released.
    /// Tells a later allocation that finds no free chunks that empty runs may be released.
    /// (Stored only when not set already: the flag's line is read by every such allocation.)
    fn hint_reclaim(&self) {
        if !self.reclaim_hint.load(Ordering::Relaxed) {
            self.reclaim_hint.store(true, Ordering::Relaxed);
        }
    }

    #[inline]
    pub(super) fn unkeep(&self, run: &Run, st: &mut RunState) {
        if st.kept != 0 {
            self.uncharge(run, st);
        }
    }

    #[cold]
    fn uncharge(&self, run: &Run, st: &mut RunState) {
        let k = &self.kept[usize::from(st.kept - 1)];
        let id = run.class.id;
        k.chunks.fetch_sub(run.class.run_chunks, Ordering::Relaxed);
        k.classes[usize::from(id / 64)].fetch_and(!(1u64 << (id % 64)), Ordering::Relaxed);
        st.kept = 0;
    }

    /// A run on media left empty by a cancel (its lock held as `st`): kept, or queued for
    /// release by the next publish.
    pub(super) fn keep_or_queue(&self, run: &Arc<Run>, st: &mut RunState) {
        if self.try_keep(run, st) {
            return;
        }
        lock(&self.release_queue).push(Arc::clone(run));
        self.release_pending.store(true, Ordering::Release);
        self.hint_reclaim();
    }
}

impl Heap {
    /// The chunk allocator had no room for a new run or span (the whole heap scanned): releases
    /// the empty runs no one uses, unless a reclaim since `gen` (the generation read before the
    /// failed attempt) already did. Returns whether to try again (chunks were released since
    /// `gen`). Called with no lock held (it takes run locks and the chunk allocator's).
    pub(super) fn reclaim(&self, pool: &Pool, gen: u64) -> Result<bool> {
        let _one = lock(&self.core.reclaim_lock);
        if self.core.reclaim_gen.load(Ordering::Acquire) != gen {
            return Ok(true);
        }
        // Set whenever a run may have become empty without being released since the last
        // reclaim (kept, queued, or met by a frontier scan with its bitmap unread): otherwise
        // a heap that stays full would walk all its runs on every failed allocation.
        if !self.core.reclaim_hint.swap(false, Ordering::AcqRel) {
            return Ok(false);
        }
        let released = self.release_empty(pool)?;
        if released > 0 {
            self.core.reclaim_gen.fetch_add(1, Ordering::Release);
        }
        Ok(released > 0)
    }

    /// Releases every empty run of the heap that no one uses (no block allocated or reserved):
    /// runs kept for their class, and runs found empty on media after a reopen (a crash, or
    /// kept runs at the last close). Their chunks return to the chunk allocator (header := 0,
    /// in redo commits of their own). Scans the rest of the heap and reads every run's bitmap
    /// not read yet. Returns the number of chunks released.
    ///
    /// Allocations do this themselves when the chunk allocator runs dry, so capacity is never
    /// lost to empty runs; this is for callers that want the free chunks counted as free now
    /// (statistics, a compact heap before copying the pool).
    ///
    /// # Errors
    /// [`AllocError::CorruptHeap`]; the redo log's errors (runs released before the error stay
    /// released).
    ///
    /// # Panics
    /// If `pool` is not the pool this heap was opened on.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_alloc::pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    /// use pmstore_alloc::Heap;
    ///
    /// let (mut pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// let (heap, _) = Heap::open(&mut pool)?;
    /// let root = pool.geometry().root_offset;
    /// // SAFETY: one Heap per pool; this thread owns the root word.
    /// let block = unsafe { heap.alloc(&pool, 64, root)? };
    /// unsafe { heap.free(&pool, block, Some(root))? }; // its run is empty, and kept
    /// let s = heap.stats(&pool)?;
    /// assert_eq!((s.empty_run_chunks, s.free_chunks + 1), (1, s.chunks));
    /// assert_eq!(heap.release_empty_runs(&pool)?, 1);
    /// let s = heap.stats(&pool)?;
    /// assert_eq!((s.empty_run_chunks, s.free_chunks), (0, s.chunks));
    /// # Ok(())
    /// # }
    /// ```
    pub fn release_empty_runs(&self, pool: &Pool) -> Result<u64> {
        self.check_pool(pool);
        {
            let mut ch = lock(&self.core.chunks);
            while ch.frontier < self.geo.chunks {
                self.scan_group(pool, &mut ch)?;
            }
        }
        let _one = lock(&self.core.reclaim_lock);
        let released = self.release_empty(pool)?;
        if released > 0 {
            self.core.reclaim_gen.fetch_add(1, Ordering::Release);
        }
        Ok(released)
    }

    /// Releases the empty runs of the scanned part of the heap (caller holds the reclaim lock
    /// and no other); returns the chunks released.
    fn release_empty(&self, pool: &Pool) -> Result<u64> {
        let runs: Vec<Arc<Run>> = lock(&self.core.chunks)
            .objs
            .iter()
            .filter_map(|(_, o)| match o {
                Obj::Run(r) => Some(Arc::clone(r)),
                Obj::Span { .. } => None,
            })
            .collect();
        let mut empty = Vec::new();
        for run in runs {
            let mut st = lock(&run.state);
            if st.dead || !st.on_media {
                continue; // released, or volatile only (its chunks return at its last cancel)
            }
            self.load_bits(pool, &run, &mut st)?;
            let bits = st.bits.as_ref().expect("loaded");
            if bits.used() == 0 && bits.reserved() == 0 {
                drop(st);
                empty.push(run);
            }
        }
        // One header entry per run: batches that fit a lane's log (an extension would have to
        // be allocated, from a heap with no room).
        let batch = self.logs.layout().capacity().max(1);
        let mut released = 0;
        for group in empty.chunks(batch) {
            let Some(mut lane) = self.reclaim_lane() else {
                // Every lane taken (by this thread too, maybe): try again at the next reclaim.
                self.core.reclaim_hint.store(true, Ordering::Relaxed);
                break;
            };
            // SAFETY: this commit writes only the headers of the candidate runs still empty,
            // under their locks (`publish_inner` checks each again under its lock: a run used
            // meanwhile is not released); no words, ranges or frees.
            unsafe {
                self.publish_inner(pool, Some(&mut *lane), &mut [], &[], &[], &[], group, None)
            }?;
            released += group
                .iter()
                .filter(|r| lock(&r.state).dead)
                .map(|r| u64::from(r.class.run_chunks))
                .sum::<u64>();
        }
        Ok(released)
    }

    /// A lane for a reclaim, which may run inside a caller's transaction holding a lane: not
    /// waiting forever for one (this thread may hold them all).
    fn reclaim_lane(&self) -> Option<LaneClaim<'_, Lane>> {
        for _ in 0..64 {
            if let Some(l) = self.lanes.try_claim_near(self.lane_hint()) {
                return Some(l);
            }
            crate::primitive::yield_now();
        }
        None
    }
}
