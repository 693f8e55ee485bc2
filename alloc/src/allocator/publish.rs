//! Publications (`docs/ALLOC.md` §8): [`Heap::publish`] and its variants, the one path every
//! allocation, free and transaction commit of the heap takes — grouping the items by run,
//! locking the runs, building the bitmap and header entries, committing them through a lane's
//! redo log with the caller's words and ranges, then updating the volatile state. Split from
//! `allocator.rs` (the handle, reservation, lookup and statistics) to keep files by concept.

use super::*;

/// The items of one publication in one run.
struct Group {
    run: Arc<Run>,
    /// Reserved blocks to publish.
    publish: SmallVec<[u32; 4]>,
    /// Allocated blocks to free, and their offsets.
    free: SmallVec<[u32; 4]>,
    free_offsets: SmallVec<[u64; 4]>,
    /// The publication empties the run (with nothing reserved in it); then, once every item is
    /// validated, whether its header is cleared in the same commit (else the run is kept for
    /// its class, `keep.rs`). (A cell: set while the run guards borrow the groups.)
    release: Cell<bool>,
}

impl Group {
    fn new(run: Arc<Run>) -> Group {
        Group {
            run,
            publish: SmallVec::new(),
            free: SmallVec::new(),
            free_offsets: SmallVec::new(),
            release: Cell::new(false),
        }
    }
}

impl Heap {
    /// Publishes `reservations` and frees the blocks or spans at `frees`, and stores every
    /// `(target, value)` of `words`, all in ONE redo log commit: after a crash, either all of
    /// it happened or none. Bitmap words touched by several items are written once with their
    /// final value. Takes a lane for the call (see [`Heap::publish_with`]).
    ///
    /// A log larger than the lane goes on in an extension: a block or span reserved for the
    /// commit and cancelled right after it (`docs/REDO.md` §2.4, §6.6), so the size of a
    /// publication is bounded by the heap's free space only; two drains.
    ///
    /// On success `reservations` is emptied (the blocks are allocated). On error nothing was
    /// written, the volatile state is unchanged and `reservations` is left as it was (still
    /// reserved: publish again, or cancel them).
    ///
    /// # Safety
    /// No other [`Heap`] or [`RedoLogs`] of the same pool is in use (one per open pool).
    /// Every `target` of `words` is a word the caller owns exclusively for the call (no other
    /// thread accesses it, no reference to it is live), outside the heap metadata (checked),
    /// and not inside a block another thread may free meanwhile; no other thread uses the
    /// blocks being freed. The rule of [`Heap::alloc`] applies to changing a target afterwards
    /// by other means.
    ///
    /// # Errors
    /// [`AllocError::InvalidTarget`] for a bad target (`index` = its index in `words`);
    /// [`AllocError::InvalidFree`] / [`AllocError::DoubleFree`] as [`Heap::free`] (also for an
    /// offset given twice); [`AllocError::OutOfSpace`] (or [`AllocError::TooLarge`]) if the
    /// log is too large for the lane ([`crate::redo::RedoLayout::capacity`] slots) and the heap
    /// has no room for its extension; [`AllocError::CorruptHeap`]; the redo log's errors. In every error case
    /// nothing was written.
    ///
    /// # Panics
    /// If `pool` is not the pool this heap was opened on, or a reservation was made by another
    /// heap.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_alloc::pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    /// use pmstore_alloc::{AllocError, Heap};
    ///
    /// let (mut pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// let (heap, _) = Heap::open(&mut pool)?;
    /// let root = pool.geometry().root_offset;
    /// // SAFETY (every call below): one Heap per pool; this thread owns the root words.
    /// let old = unsafe { heap.alloc(&pool, 64, root)? };
    /// // Replace the block atomically: allocate a new one, free the old, repoint the root.
    /// let new = heap.reserve(&pool, 64)?;
    /// let new_off = new.offset();
    /// let mut rs = vec![new];
    /// unsafe { heap.publish(&pool, &mut rs, &[old], &[(root, new_off)])? };
    /// assert_eq!(heap.usable_size(&pool, new_off)?, 64);
    /// assert!(matches!(heap.usable_size(&pool, old), Err(AllocError::InvalidFree { .. })));
    /// // Freeing it again fails, and writes nothing.
    /// let err = unsafe { heap.publish(&pool, &mut Vec::new(), &[old], &[]) };
    /// assert!(matches!(err, Err(AllocError::DoubleFree { .. })));
    /// # Ok(())
    /// # }
    /// ```
    pub unsafe fn publish(
        &self,
        pool: &Pool,
        reservations: &mut Vec<Reservation>,
        frees: &[u64],
        words: &[(u64, u64)],
    ) -> Result<()> {
        // SAFETY: forwarded.
        unsafe { self.publish_inner(pool, None, reservations, frees, words, &[], &[], None) }?;
        reservations.clear(); // published: nothing to cancel
        Ok(())
    }

    /// [`Heap::publish`] through a lane taken with [`Heap::lane`].
    ///
    /// # Safety
    /// As [`Heap::publish`].
    ///
    /// # Errors
    /// As [`Heap::publish`].
    ///
    /// # Panics
    /// As [`Heap::publish`], and if `lane` is another heap's.
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
    /// let mut lane = heap.lane();
    /// let r = heap.reserve(&pool, 128)?;
    /// let off = r.offset();
    /// // SAFETY: one Heap per pool; this thread owns the root word.
    /// unsafe { heap.publish_with(&mut lane, &pool, &mut vec![r], &[], &[(root, off)])? };
    /// assert_eq!(heap.usable_size(&pool, off)?, 128);
    /// # Ok(())
    /// # }
    /// ```
    pub unsafe fn publish_with(
        &self,
        lane: &mut LaneGuard<'_>,
        pool: &Pool,
        reservations: &mut Vec<Reservation>,
        frees: &[u64],
        words: &[(u64, u64)],
    ) -> Result<()> {
        // SAFETY: forwarded.
        unsafe { self.publish_ranges_with(lane, pool, reservations, frees, words, &[]) }
    }

    /// [`Heap::publish_with`] that also copies every range of `ranges` in the same redo
    /// commit (after the words): the transaction layer's commit. Ranges are checked like
    /// words ([`crate::redo::RedoLayout::check_range`], and outside the heap metadata); `index` in an
    /// [`AllocError::InvalidTarget`] counts `words`, then `ranges`.
    ///
    /// # Safety
    /// As [`Heap::publish`], with every byte of every range owned like a target word.
    ///
    /// # Errors
    /// As [`Heap::publish`].
    ///
    /// # Panics
    /// As [`Heap::publish_with`].
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_alloc::pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    /// use pmstore_alloc::redo::RedoRange;
    /// use pmstore_alloc::Heap;
    ///
    /// let (mut pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// let (heap, _) = Heap::open(&mut pool)?;
    /// let mut lane = heap.lane();
    /// // A new object with its contents, published in one commit.
    /// let r = heap.reserve(&pool, 32)?;
    /// let off = r.offset();
    /// let contents = [5u8; 32];
    /// let ranges = [RedoRange { target: off, data: &contents }];
    /// // SAFETY: one Heap per pool; the reserved block is this thread's.
    /// unsafe { heap.publish_ranges_with(&mut lane, &pool, &mut vec![r], &[], &[], &ranges)? };
    /// let mut back = [0u8; 32];
    /// // SAFETY: as above.
    /// unsafe { pool.read(off, &mut back) };
    /// assert_eq!(back, contents);
    /// # Ok(())
    /// # }
    /// ```
    pub unsafe fn publish_ranges_with(
        &self,
        lane: &mut LaneGuard<'_>,
        pool: &Pool,
        reservations: &mut Vec<Reservation>,
        frees: &[u64],
        words: &[(u64, u64)],
        ranges: &[RedoRange<'_>],
    ) -> Result<()> {
        // SAFETY: forwarded.
        unsafe {
            self.publish_ranges_with_ext(lane, pool, reservations, frees, words, ranges, None)
        }
    }

    /// [`Heap::publish_ranges_with`] with a log extension the caller reserved
    /// ([`Heap::reserve_log_extension`], of at least [`Heap::log_extension_bytes`] of
    /// [`Heap::publication_slots_bound`] bytes) and owns like its ranges — so that a caller
    /// whose readers must be kept away from every byte it writes (the transaction layer's
    /// locks) can lock the extension too. `None`: the heap reserves one itself if the log needs
    /// it. The extension is released (dropped) when the call returns.
    ///
    /// # Safety
    /// As [`Heap::publish_ranges_with`]; and no other thread accesses the extension's bytes
    /// during the call.
    ///
    /// # Errors
    /// As [`Heap::publish`]; [`AllocError::LogFull`] if `ext` is smaller than the log needs.
    ///
    /// # Panics
    /// As [`Heap::publish_with`], and if `ext` was made by another heap.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_alloc::pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    /// use pmstore_alloc::redo::RedoRange;
    /// use pmstore_alloc::Heap;
    ///
    /// let opts = CreateOptions::new("doc", MIN_POOL_SIZE).lanes(4, 4096); // 252-slot logs
    /// let (mut pool, _sim) = Pool::create_simulated(&opts)?;
    /// let (heap, _) = Heap::open(&mut pool)?;
    /// let r = heap.reserve(&pool, 8192)?;
    /// let off = r.offset();
    /// let data = vec![1u8; 8192];
    /// let ranges = [RedoRange { target: off, data: &data }];
    /// let slots = heap.publication_slots_bound(1, 0, 0, &ranges);
    /// let ext = heap.reserve_log_extension(&pool, heap.log_extension_bytes(slots))?;
    /// let mut lane = heap.lane();
    /// // SAFETY: one Heap per pool; the reserved block and the extension are this thread's.
    /// unsafe {
    ///     heap.publish_ranges_with_ext(&mut lane, &pool, &mut vec![r], &[], &[], &ranges, Some(ext))?
    /// };
    /// assert_eq!(heap.stats(&pool)?.bytes_allocated, 8192); // the extension was released
    /// # Ok(())
    /// # }
    /// ```
    #[allow(clippy::too_many_arguments)] // the transaction layer's one entry point
    pub unsafe fn publish_ranges_with_ext(
        &self,
        lane: &mut LaneGuard<'_>,
        pool: &Pool,
        reservations: &mut Vec<Reservation>,
        frees: &[u64],
        words: &[(u64, u64)],
        ranges: &[RedoRange<'_>],
        ext: Option<Reservation>,
    ) -> Result<()> {
        assert!(std::ptr::eq(lane.heap, self), "LaneGuard of another heap");
        if ext.is_none() {
            if reservations.is_empty() && frees.is_empty() {
                // SAFETY: forwarded.
                let fast = unsafe {
                    self.publish_small::<false>(pool, lane.get(), &mut [], &[], words, ranges)
                };
                if let Some(r) = fast {
                    return r;
                }
            } else if reservations.len() + frees.len() == 1 {
                // SAFETY: forwarded.
                let fast = unsafe {
                    self.publish_small::<true>(pool, lane.get(), reservations, frees, words, ranges)
                };
                if let Some(r) = fast {
                    if r.is_ok() {
                        reservations.clear(); // published: nothing to cancel
                    }
                    return r;
                }
            }
        }
        // SAFETY: forwarded.
        unsafe {
            self.publish_inner(
                pool,
                Some(lane.get()),
                reservations,
                frees,
                words,
                ranges,
                &[],
                ext,
            )
        }?;
        reservations.clear(); // published: nothing to cancel
        Ok(())
    }

    /// The most 16-byte log slots a publication of `reservations` reservations, `frees`
    /// frees, `words` extra words and `ranges` can need (per reservation or free a bitmap word
    /// and a run or span header; then the words and ranges).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_alloc::pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    /// use pmstore_alloc::redo::{range_slots, RedoRange};
    /// use pmstore_alloc::Heap;
    ///
    /// let (mut pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// let (heap, _) = Heap::open(&mut pool)?;
    /// let data = [0u8; 40];
    /// let ranges = [RedoRange { target: 4096, data: &data }];
    /// // Two slots per reservation and per free, one per word, then the ranges.
    /// assert_eq!(heap.publication_slots_bound(1, 1, 3, &ranges), 2 + 2 + 3 + range_slots(40));
    /// # Ok(())
    /// # }
    /// ```
    pub fn publication_slots_bound(
        &self,
        reservations: usize,
        frees: usize,
        words: usize,
        ranges: &[RedoRange<'_>],
    ) -> usize {
        2 * (reservations + frees)
            + words
            + ranges
                .iter()
                .map(|r| range_slots(r.data.len()))
                .sum::<usize>()
    }

    /// Bytes of log extension a log of `slots` slots needs (0 if it fits a lane).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_alloc::pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    /// use pmstore_alloc::redo::REDO_CAPACITY;
    /// use pmstore_alloc::Heap;
    ///
    /// let opts = CreateOptions::new("doc", MIN_POOL_SIZE).lanes(4, 4096);
    /// let (mut pool, _sim) = Pool::create_simulated(&opts)?;
    /// let (heap, _) = Heap::open(&mut pool)?;
    /// assert_eq!(heap.log_extension_bytes(REDO_CAPACITY), 0); // fits the lane
    /// assert_eq!(heap.log_extension_bytes(REDO_CAPACITY + 10), 160);
    /// # Ok(())
    /// # }
    /// ```
    pub fn log_extension_bytes(&self, slots: usize) -> u64 {
        self.logs.layout().ext_slots(slots) as u64 * REDO_ENTRY_SIZE
    }

    /// Reserves a block (or span) to hold `bytes` bytes of log extension, cache-line aligned,
    /// for [`Heap::publish_ranges_with_ext`]. Nothing persistent is written.
    ///
    /// # Errors
    /// [`AllocError::OutOfSpace`], [`AllocError::TooLarge`], [`AllocError::CorruptHeap`].
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
    /// let ext = heap.reserve_log_extension(&pool, 160)?;
    /// assert_eq!(ext.offset() % 64, 0); // starts on a cache line
    /// assert!(ext.size() >= 160);
    /// # Ok(())
    /// # }
    /// ```
    pub fn reserve_log_extension(&self, pool: &Pool, bytes: u64) -> Result<Reservation> {
        self.check_pool(pool);
        self.reserve_extension(pool, bytes)
    }

    /// # Safety
    /// As [`Heap::publish`].
    ///
    /// `candidates`: empty runs to release if they are still empty (see `Core::release_queue`);
    /// a call without candidates first releases the queued ones in a commit of their own.
    ///
    /// On success every reservation is published (its `kind` taken: dropping it cancels
    /// nothing); the caller removes them.
    #[allow(clippy::too_many_arguments)] // private: the one path every publication takes
    pub(super) unsafe fn publish_inner(
        &self,
        pool: &Pool,
        mut lane: Option<&mut Lane>,
        reservations: &mut [Reservation],
        frees: &[u64],
        words: &[(u64, u64)],
        ranges: &[RedoRange<'_>],
        candidates: &[Arc<Run>],
        ext_given: Option<Reservation>,
    ) -> Result<()> {
        self.check_pool(pool);
        if candidates.is_empty() && self.core.release_pending.load(Ordering::Acquire) {
            let queued = {
                let mut q = lock(&self.core.release_queue);
                self.core.release_pending.store(false, Ordering::Relaxed);
                std::mem::take(&mut *q)
            };
            if !queued.is_empty() {
                // SAFETY: this commit writes only run headers, under the runs' locks.
                unsafe {
                    self.publish_inner(
                        pool,
                        lane.as_deref_mut(),
                        &mut [],
                        &[],
                        &[],
                        &[],
                        &queued,
                        None,
                    )
                }?;
            }
        }
        for r in reservations.iter() {
            assert!(
                Arc::ptr_eq(&r.core, &self.core),
                "Reservation of another heap"
            );
        }
        for (i, &(t, _)) in words.iter().enumerate() {
            self.check_dest(i, t)?;
        }
        for (i, r) in ranges.iter().enumerate() {
            self.check_range(words.len() + i, r.target, r.data.len() as u64)?;
        }
        // A log too large for the lane goes on in an extension, reserved now (before any lock
        // is taken: `reserve` takes arena and run locks) for the largest number of slots this
        // publication can need: per reservation or free a bitmap word and a run or span
        // header, per candidate a header, then the words and ranges. A publication that turns
        // out to fit the lane does not use it. Cancelled (dropped) after the commit, success
        // or not, once every lock below is released (`docs/REDO.md` §6.6).
        let bound =
            self.publication_slots_bound(reservations.len(), frees.len(), words.len(), ranges)
                + candidates.len();
        let ext_bytes = self.log_extension_bytes(bound);
        if ext_bytes == 0
            && ext_given.is_none()
            && reservations.is_empty()
            && frees.is_empty()
            && candidates.is_empty()
        {
            // Only words and ranges, in the lane's log (a transaction that allocated and freed
            // nothing): no run, span or chunk-allocator state is involved.
            let entries: SmallVec<[RedoEntry; 8]> =
                words.iter().map(|&(t, v)| RedoEntry::new(t, v)).collect();
            // SAFETY: the targets and ranges are the caller's (checked above); no extension.
            return unsafe { self.commit(pool, lane, &entries, ranges, None) };
        }
        if ext_bytes == 0
            && ext_given.is_none()
            && candidates.is_empty()
            && reservations.len() + frees.len() == 1
        {
            // SAFETY: forwarded; the words and ranges were checked above.
            let done = unsafe {
                self.publish_one_block(
                    pool,
                    lane.as_deref_mut(),
                    reservations,
                    frees,
                    words,
                    ranges,
                )
            };
            if let Some(r) = done {
                return r;
            }
        }
        let ext = match ext_given {
            Some(r) => {
                assert!(
                    Arc::ptr_eq(&r.core, &self.core),
                    "Reservation of another heap"
                );
                if r.size() < ext_bytes {
                    return Err(AllocError::LogFull {
                        needed: bound,
                        capacity: self.logs.layout().capacity()
                            + (r.size() / REDO_ENTRY_SIZE) as usize,
                    });
                }
                Some(r)
            }
            None if ext_bytes == 0 => None,
            None => Some(self.reserve_extension(pool, ext_bytes)?),
        };
        let ext_region = ext.as_ref().map(|r| (r.offset(), r.size()));
        if frees.len() > 1 {
            let mut sorted = frees.to_vec();
            sorted.sort_unstable();
            if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
                return Err(AllocError::DoubleFree { offset: w[0] });
            }
        }

        // Resolve the frees (scanning as needed), then group everything by run.
        // Usually one group: a small vector with a linear search beats a map.
        // (Inline vectors here and below: a publication usually touches one run and a few
        // words, and heap allocations were a quarter of an alloc + free pair's instructions.)
        let mut groups: SmallVec<[Group; 2]> = SmallVec::new();
        fn group_of(groups: &mut SmallVec<[Group; 2]>, run: &Arc<Run>) -> usize {
            match groups.iter().position(|g| g.run.start == run.start) {
                Some(i) => i,
                None => {
                    groups.push(Group::new(Arc::clone(run)));
                    groups.len() - 1
                }
            }
        }
        let mut span_frees = Vec::new();
        if !frees.is_empty() {
            let mut ch = lock(&self.core.chunks);
            for &offset in frees {
                let invalid = || AllocError::InvalidFree { offset };
                let Some(chunk) = self.geo.chunk_of(offset) else {
                    return Err(invalid());
                };
                match self.lookup(pool, &mut ch, chunk)? {
                    Some((start, Obj::Span { len })) if offset == self.geo.chunk_offset(start) => {
                        span_frees.push((start, len, offset));
                    }
                    Some((start, Obj::Run(run))) => {
                        let c = run.class;
                        let rel = offset - self.geo.chunk_offset(start);
                        if rel % c.size != 0 || rel / c.size >= u64::from(c.blocks) {
                            return Err(invalid());
                        }
                        let i = group_of(&mut groups, &run);
                        let g = &mut groups[i];
                        g.free.push((rel / c.size) as u32);
                        g.free_offsets.push(offset);
                    }
                    _ => return Err(invalid()),
                }
            }
        }
        let mut span_res = Vec::new();
        for r in reservations.iter() {
            match r.kind.as_ref().expect("unpublished") {
                ResKind::Block { run, block } => {
                    let i = group_of(&mut groups, run);
                    groups[i].publish.push(*block)
                }
                &ResKind::Span { start, len } => span_res.push((start, len)),
            }
        }

        for run in candidates {
            group_of(&mut groups, run);
        }

        // Lock the runs in chunk order (the global order between run locks), validate the
        // frees, and build the entries.
        groups.sort_unstable_by_key(|g| g.run.start);
        let mut guards: SmallVec<[MutexGuard<'_, RunState>; 2]> =
            groups.iter().map(|g| lock(&g.run.state)).collect();
        let mut entries: SmallVec<[RedoEntry; 8]> = SmallVec::new();
        for (g, st) in groups.iter().zip(guards.iter_mut()) {
            if st.dead {
                if g.publish.is_empty() && g.free.is_empty() {
                    continue; // a release candidate released meanwhile
                }
                debug_assert!(
                    g.publish.is_empty(),
                    "a run with reservations is not released"
                );
                return Err(AllocError::InvalidFree {
                    offset: g.free_offsets[0],
                });
            }
            self.load_bits(pool, &g.run, st)?;
            let bits = st.bits.as_ref().expect("loaded");
            for (&b, &offset) in g.free.iter().zip(&g.free_offsets) {
                if !bits.is_allocated(b) {
                    return Err(AllocError::DoubleFree { offset });
                }
            }
            let start = g.run.start;
            if !st.on_media && !g.publish.is_empty() {
                let header = ChunkHeader::Run {
                    class: g.run.class.id,
                    len: g.run.class.run_chunks,
                };
                entries.push(RedoEntry::new(
                    self.geo.header_offset(start),
                    header.encode(),
                ));
            }
            for (w, v) in bits.publish_words(&g.publish, &g.free) {
                entries.push(RedoEntry::new(
                    self.geo.bitmap_offset(start) + w as u64 * 8,
                    v,
                ));
            }
            let used_after = bits.used() as usize + g.publish.len() - g.free.len();
            let reserved_after = bits.reserved() as usize - g.publish.len();
            if st.on_media && used_after == 0 && reserved_after == 0 {
                // The run becomes empty (or a release candidate is still empty): decided
                // below, once every item is valid.
                g.release.set(true);
            }
        }
        for &(start, len) in &span_res {
            entries.push(RedoEntry::new(
                self.geo.header_offset(start),
                ChunkHeader::Span { len }.encode(),
            ));
        }
        for &(start, _, _) in &span_frees {
            entries.push(RedoEntry::new(self.geo.header_offset(start), 0));
        }
        entries.extend(words.iter().map(|&(t, v)| RedoEntry::new(t, v)));

        let mut ch = if !span_frees.is_empty() || !span_res.is_empty() {
            let ch = lock(&self.core.chunks);
            for &(start, len, offset) in &span_frees {
                // Another thread may have freed it since the lookup.
                if !matches!(ch.objs.get(start), Some(Obj::Span { len: l }) if *l == len) {
                    return Err(AllocError::InvalidFree { offset });
                }
            }
            Some(ch)
        } else {
            None
        };
        // Every item is valid: a run these frees empty is kept for its class if its arena has
        // room (its header stays `RUN`), else released in the same log, as release candidates
        // still empty are.
        let mut releases = false;
        for (g, st) in groups.iter().zip(guards.iter_mut()) {
            if !g.release.get() {
                continue;
            }
            if !g.free.is_empty() && self.core.try_keep(&g.run, st) {
                g.release.set(false);
                continue;
            }
            releases = true;
            entries.push(RedoEntry::new(self.geo.header_offset(g.run.start), 0));
        }
        if entries.is_empty() && ranges.is_empty() {
            return Ok(()); // release candidates only, all used again meanwhile: nothing to do
        }
        if releases && ch.is_none() {
            ch = Some(lock(&self.core.chunks));
        }

        // SAFETY: the runs' headers and bitmap words are owned by their locks (held, a new
        // run's header too); the headers of reserved spans by their reservations (taken from
        // the free extents); those of freed spans and released runs by the chunk-allocator
        // lock (held); the extra words by the caller. The extension is ours alone: reserved
        // above (so no other thread reserves or writes it), never published.
        if let Err(e) = unsafe { self.commit(pool, lane, &entries, ranges, ext_region) } {
            // Nothing written: the runs these frees would have emptied are not kept.
            for (g, st) in groups.iter().zip(guards.iter_mut()) {
                if !g.free.is_empty() {
                    self.core.unkeep(&g.run, st);
                }
            }
            return Err(e);
        }

        // Committed: update the volatile state.
        let mut relist = Vec::new();
        for (g, st) in groups.iter().zip(guards.iter_mut()) {
            if st.dead {
                continue; // a release candidate released before this publish
            }
            let bits = st.bits.as_mut().expect("loaded");
            bits.apply_publish(&g.publish, &g.free);
            let full = bits.is_full();
            if !g.publish.is_empty() {
                st.on_media = true;
                self.core.unkeep(&g.run, st); // not empty any more
            }
            if g.release.get() {
                self.core.unkeep(&g.run, st);
                st.dead = true;
                let ch = ch.as_mut().expect("locked for releases");
                ch.objs.remove(g.run.start);
                ch.add_free(g.run.start, g.run.class.run_chunks);
            } else if !st.listed && !full {
                st.listed = true;
                relist.push(Arc::clone(&g.run));
            }
        }
        if let Some(ch) = ch.as_mut() {
            for &(start, len) in &span_res {
                ch.objs.insert(start, Obj::Span { len });
            }
            for &(start, len, _) in &span_frees {
                ch.objs.remove(start);
                ch.add_free(start, len);
            }
        }
        for r in reservations.iter_mut() {
            r.kind = None;
        }
        drop(ch);
        drop(guards);
        if !relist.is_empty() {
            let mut arena = self.core.arena();
            for run in relist {
                arena[usize::from(run.class.id)].push(run);
            }
        }
        // The log no longer needs its extension (it is stale: its values are durable), so the
        // block is free again at once, with no lock held (`docs/REDO.md` §6.6).
        drop(ext);
        Ok(())
    }

    /// [`Heap::alloc`] and [`Heap::free`]: the publication of one block with `words` words
    /// already checked, straight to [`Heap::publish_one_block`] (no frame of the general path)
    /// when that is what [`Heap::publish_inner`] would do: no queued run release and no log
    /// extension. `None` if not (nothing was done).
    ///
    /// # Safety
    /// As [`Heap::publish`], with every target of `words` checked (`check_dest`).
    pub(super) unsafe fn publish_one_direct(
        &self,
        pool: &Pool,
        reservations: &mut [Reservation],
        frees: &[u64],
        words: &[(u64, u64)],
    ) -> Option<Result<()>> {
        if self.core.release_pending.load(Ordering::Acquire) {
            return None;
        }
        let bound = self.publication_slots_bound(reservations.len(), frees.len(), words.len(), &[]);
        if self.log_extension_bytes(bound) != 0 {
            return None;
        }
        // SAFETY: forwarded; the words were checked by the caller.
        unsafe { self.publish_one_block(pool, None, reservations, frees, words, &[]) }
    }

    /// A transaction's publication of words and ranges with at most one reservation or free
    /// (the commonest commits) that fits the lane, with no queued run release: the checks of
    /// [`Heap::publish_inner`] in the same order, then the commit (of one block, through
    /// [`Heap::publish_one_block`]) — in a small function of its own, so that these commits
    /// pay for none of the general path's state. `None` if it is not that case (nothing was
    /// done: the general path takes it).
    ///
    /// `ONE`: one reservation or free (else none), known at compile time so that the
    /// commit of words and ranges only does not carry the other case's code.
    ///
    /// # Safety
    /// As [`Heap::publish`].
    unsafe fn publish_small<const ONE: bool>(
        &self,
        pool: &Pool,
        lane: &mut Lane,
        reservations: &mut [Reservation],
        frees: &[u64],
        words: &[(u64, u64)],
        ranges: &[RedoRange<'_>],
    ) -> Option<Result<()>> {
        self.check_pool(pool);
        if self.core.release_pending.load(Ordering::Acquire) {
            return None; // the general path releases the queued runs first
        }
        for r in reservations.iter() {
            assert!(
                Arc::ptr_eq(&r.core, &self.core),
                "Reservation of another heap"
            );
        }
        let mut slots = 2 * (reservations.len() + frees.len()) + words.len();
        for (i, &(t, _)) in words.iter().enumerate() {
            if let Err(e) = self.check_dest(i, t) {
                return Some(Err(e));
            }
        }
        for (i, r) in ranges.iter().enumerate() {
            let len = r.data.len();
            if let Err(e) = self.check_range(words.len() + i, r.target, len as u64) {
                return Some(Err(e));
            }
            slots += range_slots(len);
        }
        // (`publication_slots_bound`.)
        if self.log_extension_bytes(slots) != 0 {
            return None; // needs an extension
        }
        if ONE {
            // SAFETY: forwarded; the words and ranges were checked above.
            return unsafe {
                self.publish_one_block(pool, Some(lane), reservations, frees, words, ranges)
            };
        }
        let mut entries: SmallVec<[RedoEntry; 4]> = SmallVec::new();
        let entries: &[RedoEntry] = if words.is_empty() {
            &[] // (a transaction's commit: ranges only, and no vector to build and drop)
        } else {
            entries.extend(words.iter().map(|&(t, v)| RedoEntry::new(t, v)));
            &entries
        };
        // SAFETY: the targets and ranges are the caller's (checked above); no extension; one
        // RedoLogs per pool (the Heap's own).
        let r = unsafe {
            lane.log
                .commit_ops_ext(pool, &mut lane.ctx, entries, ranges, None)
        };
        Some(r.map(|_| ()))
    }

    /// The publication of ONE block of a run (reserved or freed) with checked words and
    /// ranges and no extension — an `alloc`, a `free`, a transaction that allocated or freed
    /// one object — as the general path of [`Heap::publish_inner`] does it for a single
    /// group (the same entries in the same order, the same checks and volatile updates),
    /// without building groups. `None` if it is not that case (a span; a reservation in a
    /// released run, which cannot happen): nothing was done, the general path takes it.
    ///
    /// # Safety
    /// As [`Heap::publish`].
    #[inline(never)] // (inlined, it would weigh on the frames of its callers' other paths)
    unsafe fn publish_one_block(
        &self,
        pool: &Pool,
        lane: Option<&mut Lane>,
        reservations: &mut [Reservation],
        frees: &[u64],
        words: &[(u64, u64)],
        ranges: &[RedoRange<'_>],
    ) -> Option<Result<()>> {
        // The run and block, and for a free its offset. A reservation's run is borrowed from
        // it (no reference count taken and dropped around the commit); a freed block's run
        // is found under the chunk-allocator lock, so it is kept alive by a reference of ours.
        let owned: Arc<Run>;
        let (run, block, freed) = match (&*reservations, frees) {
            ([r], []) => match r.kind.as_ref().expect("unpublished") {
                ResKind::Block { run, block } => (run, *block, None),
                ResKind::Span { .. } => return None,
            },
            ([], &[offset]) => {
                let invalid = || AllocError::InvalidFree { offset };
                let Some(chunk) = self.geo.chunk_of(offset) else {
                    return Some(Err(invalid()));
                };
                let found = self.lookup(pool, &mut lock(&self.core.chunks), chunk);
                match found {
                    Err(e) => return Some(Err(e)),
                    Ok(Some((start, Obj::Run(run)))) => {
                        let c = run.class;
                        let rel = offset - self.geo.chunk_offset(start);
                        if rel % c.size != 0 || rel / c.size >= u64::from(c.blocks) {
                            return Some(Err(invalid()));
                        }
                        owned = run;
                        (&owned, (rel / c.size) as u32, Some(offset))
                    }
                    Ok(_) => return None, // a span, or not a block: the general path
                }
            }
            _ => return None,
        };
        let mut st = lock(&run.state);
        if st.dead {
            // A freed block's run was released since the lookup; a run with reservations
            // is never released.
            return freed.map(|offset| Err(AllocError::InvalidFree { offset }));
        }
        if let Err(e) = self.load_bits(pool, run, &mut st) {
            return Some(Err(e));
        }
        let bits = st.bits.as_ref().expect("loaded");
        let (w, bit) = ((block / 64) as usize, 1u64 << (block % 64));
        let mut entries: SmallVec<[RedoEntry; 8]> = SmallVec::new();
        let start = run.start;
        let (word, empties) = match freed {
            Some(offset) => {
                if !bits.is_allocated(block) {
                    return Some(Err(AllocError::DoubleFree { offset }));
                }
                // The last allocated block of a run on media, nothing reserved: the run
                // becomes empty.
                let empties = st.on_media && bits.used() == 1 && bits.reserved() == 0;
                (bits.words()[w] & !bit, empties)
            }
            None => {
                assert!(bits.is_reserved(block), "block {block} is not reserved");
                if !st.on_media {
                    let header = ChunkHeader::Run {
                        class: run.class.id,
                        len: run.class.run_chunks,
                    };
                    entries.push(RedoEntry::new(
                        self.geo.header_offset(start),
                        header.encode(),
                    ));
                }
                (bits.words()[w] | bit, false)
            }
        };
        entries.push(RedoEntry::new(
            self.geo.bitmap_offset(start) + w as u64 * 8,
            word,
        ));
        // An emptied run is kept for its class if this thread's arena has room (its header
        // stays `RUN`: the next allocation of the class reuses it as it is), else released in
        // the same log.
        let release = empties && !self.core.try_keep(run, &mut st);
        if release {
            entries.push(RedoEntry::new(self.geo.header_offset(start), 0));
        }
        for &(t, v) in words {
            entries.push(RedoEntry::new(t, v)); // (cheaper than `extend` for one or two)
        }
        let mut ch = release.then(|| lock(&self.core.chunks));

        // SAFETY: the run's header and bitmap words are owned by its lock (held); the header
        // of a released run by the chunk-allocator lock too (held); the words and ranges by
        // the caller.
        if let Err(e) = unsafe { self.commit(pool, lane, &entries, ranges, None) } {
            if empties {
                self.core.unkeep(run, &mut st); // nothing written: not emptied, not kept
            }
            return Some(Err(e));
        }

        // Committed: update the volatile state.
        let bits = st.bits.as_mut().expect("loaded");
        match freed {
            Some(_) => bits.free_block(block),
            None => bits.publish_block(block),
        }
        let full = bits.is_full();
        if freed.is_none() {
            st.on_media = true;
            self.core.unkeep(run, &mut st); // not empty any more
        }
        let relist = if let Some(ch) = ch.as_mut() {
            st.dead = true;
            ch.objs.remove(start);
            ch.add_free(start, run.class.run_chunks);
            false
        } else if !st.listed && !full {
            st.listed = true;
            true
        } else {
            false
        };
        drop(ch);
        drop(st);
        if relist {
            self.core.arena()[usize::from(run.class.id)].push(Arc::clone(run));
        }
        if let Some(r) = reservations.first_mut() {
            r.kind = None;
        }
        Some(Ok(()))
    }
}
