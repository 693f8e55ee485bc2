//! The allocator handle ([`Heap`]): volatile state over the on-media heap of `heap.rs`, and the
//! atomic `alloc`/`free` operations, each one redo-log commit (`docs/ALLOC.md` §4–6).
//!
//! Locks and their order (a thread holding one may only take those to its right):
//! arena → run → chunk allocator → a run created under the chunk-allocator lock (uncontended).
//! The lane pool's lock is only held to take or return a lane.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use pmstore_pool::{FlushContext, Pool};

use crate::classes::{self, SizeClass};
use crate::heap::{ChunkHeader, HeapCorruption, HeapGeometry, CHUNK, SCAN_GROUP};
use crate::redo::{LaneLog, RecoveryReport, RedoEntry, RedoLogs};
use crate::{AllocError, Result, TargetError};

/// Locks `m`, ignoring poisoning: every critical section leaves its state consistent before
/// anything that can panic (state is updated after a successful commit only).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Volatile state of one run.
#[derive(Debug)]
struct Run {
    start: u32,
    class: &'static SizeClass,
    state: Mutex<RunState>,
}

#[derive(Debug)]
struct RunState {
    /// The bitmap words (`ceil(blocks / 64)`), loaded on first use.
    bits: Option<Vec<u64>>,
    /// Blocks allocated (valid once `bits` is loaded).
    used: u32,
    /// The run was released to the chunk allocator (its header is 0 now).
    dead: bool,
    /// The run is in an arena's list or the chunk allocator's `unowned` list.
    listed: bool,
}

/// What a scanned or created run or span is.
#[derive(Clone, Debug)]
enum Obj {
    Run(Arc<Run>),
    Span { len: u32 },
}

impl Obj {
    fn len(&self) -> u32 {
        match self {
            Obj::Run(r) => r.class.run_chunks,
            Obj::Span { len } => *len,
        }
    }
}

/// The chunk allocator: frontier, free extents, and every run and span met so far.
#[derive(Debug, Default)]
struct Chunks {
    /// Chunks `[0, frontier)` have been scanned.
    frontier: u32,
    /// Free extents `start -> len`, coalesced.
    free: BTreeMap<u32, u32>,
    /// Runs and spans by first chunk.
    objs: BTreeMap<u32, Obj>,
    /// Runs met by the scan that no arena owns yet, per class.
    unowned: Vec<Vec<Arc<Run>>>,
    /// Chunk headers read by frontier scans.
    scanned: u64,
}

impl Chunks {
    fn add_free(&mut self, start: u32, len: u32) {
        let (mut s, mut l) = (start, len);
        if let Some((&ps, &pl)) = self.free.range(..s).next_back() {
            if ps + pl == s {
                self.free.remove(&ps);
                s = ps;
                l += pl;
            }
        }
        if let Some(&nl) = self.free.get(&(start + len)) {
            self.free.remove(&(start + len));
            l += nl;
        }
        self.free.insert(s, l);
    }

    /// First fit among the scanned free extents.
    fn take_free(&mut self, len: u32) -> Option<u32> {
        let (&s, &l) = self.free.iter().find(|(_, &l)| l >= len)?;
        self.free.remove(&s);
        if l > len {
            self.free.insert(s + len, l - len);
        }
        Some(s)
    }

    fn free_chunks(&self) -> u64 {
        self.free.values().map(|&l| u64::from(l)).sum()
    }
}

/// One lane: its redo log and the flush context used with it.
struct Lane {
    log: LaneLog,
    ctx: FlushContext,
}

/// Allocation statistics over the part of the heap scanned so far (see [`Heap::stats`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeapStats {
    /// Usable bytes of the live blocks and spans.
    pub bytes_allocated: u64,
    /// Live blocks per class id (index = class id).
    pub blocks_per_class: Vec<u64>,
    /// Live spans.
    pub spans: u64,
    /// Free chunks among the scanned ones.
    pub free_chunks: u64,
    /// Chunks scanned (the frontier).
    pub chunks_scanned: u64,
    /// Chunk headers read by frontier scans.
    pub headers_read: u64,
    /// Total chunks (`N`).
    pub chunks: u64,
}

/// The persistent allocator of one pool. Make it with [`Heap::open`] (at most one per open
/// pool); every operation takes the same `&Pool`.
pub struct Heap {
    geo: HeapGeometry,
    /// Address of the pool's mapping, to check that operations get the right pool.
    base: usize,
    logs: RedoLogs,
    lanes: Mutex<Vec<Lane>>,
    chunks: Mutex<Chunks>,
    /// Per arena, per class: runs to allocate from (the last one first).
    arenas: Vec<Mutex<Vec<Vec<Arc<Run>>>>>,
}

impl std::fmt::Debug for Heap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Heap")
            .field("geometry", &self.geo)
            .field("arenas", &self.arenas.len())
            .finish_non_exhaustive()
    }
}

/// This thread's arena index.
fn thread_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local!(static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed));
    INDEX.with(|i| *i)
}

enum Acquired {
    Existing(Arc<Run>),
    Fresh(u32),
}

impl Heap {
    /// Opens the allocator of `pool`: recovers the redo logs (`RedoLogs::recover`), claims
    /// every lane, and builds empty volatile state. Nothing of the heap is read here (the
    /// frontier scan is lazy), so the time does not depend on the heap's size.
    ///
    /// # Errors
    /// Those of [`RedoLogs::recover`].
    pub fn open(pool: &mut Pool) -> Result<(Heap, RecoveryReport)> {
        let (logs, report) = RedoLogs::recover(pool)?;
        let g = pool.geometry();
        let geo = HeapGeometry::new(g.heap_offset, g.heap_size);
        let lanes = (0..logs.lane_count())
            .map(|i| Lane {
                log: logs.lane(i).expect("fresh RedoLogs: every lane is free"),
                ctx: pool.flush_context(),
            })
            .collect();
        let arenas = 2 * std::thread::available_parallelism().map_or(1, |n| n.get());
        let classes = classes::classes().len();
        let heap = Heap {
            geo,
            base: pool.ptr_at(0, 1).as_ptr() as usize,
            logs,
            lanes: Mutex::new(lanes),
            chunks: Mutex::new(Chunks {
                unowned: vec![Vec::new(); classes],
                ..Chunks::default()
            }),
            arenas: (0..arenas)
                .map(|_| Mutex::new(vec![Vec::new(); classes]))
                .collect(),
        };
        Ok((heap, report))
    }

    /// The heap's geometry.
    pub fn geometry(&self) -> &HeapGeometry {
        &self.geo
    }

    /// The redo logs (for callers that need [`RedoLogs::sync_invalidations`]).
    pub fn redo_logs(&self) -> &RedoLogs {
        &self.logs
    }

    fn check_pool(&self, pool: &Pool) {
        assert_eq!(
            pool.ptr_at(0, 1).as_ptr() as usize,
            self.base,
            "Heap used with another pool"
        );
    }

    fn read_word(&self, pool: &Pool, off: u64) -> u64 {
        let mut b = [0u8; 8];
        // SAFETY: callers read only heap metadata words whose writers (redo commits under the
        // chunk-allocator or run lock) they exclude by holding that lock.
        unsafe { pool.read(off, &mut b) };
        u64::from_le_bytes(b)
    }

    fn corrupt(chunk: u32, reason: HeapCorruption) -> AllocError {
        AllocError::CorruptHeap { chunk, reason }
    }

    /// Scans the next group of chunk headers (caller holds the chunk-allocator lock).
    fn scan_group(&self, pool: &Pool, ch: &mut Chunks) -> Result<()> {
        let n = self.geo.chunks;
        let end = ch.frontier.saturating_add(SCAN_GROUP).min(n);
        let mut i = ch.frontier;
        let mut free = Vec::new();
        let mut objs = Vec::new();
        let mut read = 0u64;
        while i < end {
            read += 1;
            let h = ChunkHeader::decode(self.read_word(pool, self.geo.header_offset(i)))
                .map_err(|r| Self::corrupt(i, r))?;
            let len = h.chunks();
            if h.is_free() {
                free.push(i);
                i += 1;
                continue;
            }
            if u64::from(i) + u64::from(len) > u64::from(n) {
                return Err(Self::corrupt(i, HeapCorruption::PastEnd { len }));
            }
            for j in i + 1..i + len {
                read += 1;
                if self.read_word(pool, self.geo.header_offset(j)) != 0 {
                    return Err(Self::corrupt(j, HeapCorruption::Covered { start: i }));
                }
            }
            objs.push((i, h));
            i += len;
        }
        for s in free {
            ch.add_free(s, 1);
        }
        for (s, h) in objs {
            let obj = match h {
                ChunkHeader::Run { class, .. } => {
                    let run = Arc::new(Run {
                        start: s,
                        class: classes::class(class).expect("decoded"),
                        state: Mutex::new(RunState {
                            bits: None,
                            used: 0,
                            dead: false,
                            listed: true,
                        }),
                    });
                    ch.unowned[usize::from(class)].push(Arc::clone(&run));
                    Obj::Run(run)
                }
                ChunkHeader::Span { len } => Obj::Span { len },
                ChunkHeader::Free => unreachable!("free chunks are not objects"),
            };
            ch.objs.insert(s, obj);
        }
        ch.scanned += read;
        ch.frontier = i;
        Ok(())
    }

    /// Reads a run's bitmap if not loaded yet (caller holds the run's lock).
    fn load_bits(&self, pool: &Pool, run: &Run, st: &mut RunState) -> Result<()> {
        if st.bits.is_some() {
            return Ok(());
        }
        let blocks = run.class.blocks;
        let words = blocks.div_ceil(64) as usize;
        let mut raw = vec![0u8; words * 8];
        // SAFETY: the run's bitmap words are written only by commits under its lock, which we
        // hold.
        unsafe { pool.read(self.geo.bitmap_offset(run.start), &mut raw) };
        let bits: Vec<u64> = raw
            .chunks_exact(8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
            .collect();
        if blocks % 64 != 0 {
            let last = bits[words - 1] >> (blocks % 64);
            if last != 0 {
                let bit = blocks + last.trailing_zeros();
                return Err(Self::corrupt(
                    run.start,
                    HeapCorruption::BitmapPastBlocks { bit, blocks },
                ));
            }
        }
        st.used = bits.iter().map(|w| w.count_ones()).sum();
        st.bits = Some(bits);
        Ok(())
    }

    /// Commits `entries` through a lane of the pool.
    ///
    /// # Safety
    /// As [`LaneLog::commit`]: the caller owns every target exclusively.
    unsafe fn commit(&self, pool: &Pool, entries: &[RedoEntry]) -> Result<()> {
        let mut lane = loop {
            if let Some(l) = lock(&self.lanes).pop() {
                break l;
            }
            std::thread::yield_now();
        };
        // SAFETY: forwarded from the caller; one RedoLogs per pool (the Heap's own).
        let r = unsafe { lane.log.commit(pool, &mut lane.ctx, entries) };
        lock(&self.lanes).push(lane);
        r.map(|_| ())
    }

    fn check_dest(&self, dest: u64) -> Result<()> {
        if self.geo.in_metadata(dest) {
            return Err(AllocError::InvalidTarget {
                index: 0,
                target: dest,
                reason: TargetError::InHeapMetadata,
            });
        }
        self.logs
            .layout()
            .check_target(dest)
            .map_err(|reason| AllocError::InvalidTarget {
                index: 0,
                target: dest,
                reason,
            })
    }

    /// Allocates a block of at least `size` bytes and stores its pool offset into the 8-byte
    /// word at pool offset `dest`, atomically (one redo log): after a crash, either the block
    /// is allocated and `dest` holds its offset, or neither. Returns the offset. Blocks of 64
    /// bytes or more are 64-byte aligned. The contents are uninitialised (whatever was there).
    ///
    /// # Safety
    /// No other [`Heap`] or [`RedoLogs`] of the same pool is in use (one per open pool).
    /// `dest` is a word the caller owns exclusively for the call (no other thread accesses it,
    /// no reference to it is live), outside the heap metadata (checked) and not inside a block
    /// another thread may free meanwhile. After this returns, `dest` may be changed again by
    /// this heap's operations freely, but by other means (a plain store) only after
    /// [`RedoLogs::sync_invalidations`] on [`Heap::redo_logs`], or after a later successful
    /// `alloc`/`free` of this heap on the same thread (its commit makes every pending log
    /// invalidation durable first, `docs/REDO.md` §4): until then a crash may replay this operation's log over it.
    ///
    /// # Errors
    /// [`AllocError::TooLarge`] if `size` exceeds the heap, [`AllocError::OutOfSpace`] if no
    /// space is left (nothing written), [`AllocError::InvalidTarget`] for a bad `dest`,
    /// [`AllocError::CorruptHeap`], and the redo log's errors.
    ///
    /// # Panics
    /// If `pool` is not the pool this heap was opened on.
    pub unsafe fn alloc(&self, pool: &Pool, size: u64, dest: u64) -> Result<u64> {
        self.check_pool(pool);
        self.check_dest(dest)?;
        match classes::class_for(size) {
            // SAFETY: forwarded.
            Some(c) => unsafe { self.alloc_small(pool, c, size, dest) },
            // SAFETY: forwarded.
            None => unsafe { self.alloc_span(pool, size, dest) },
        }
    }

    /// # Safety
    /// As [`Heap::alloc`].
    unsafe fn alloc_span(&self, pool: &Pool, size: u64, dest: u64) -> Result<u64> {
        let len = size.div_ceil(CHUNK);
        if len > u64::from(self.geo.chunks) {
            return Err(AllocError::TooLarge { size });
        }
        let len = len as u32;
        let mut ch = lock(&self.chunks);
        let start = loop {
            if let Some(s) = ch.take_free(len) {
                break s;
            }
            if ch.frontier >= self.geo.chunks {
                return Err(AllocError::OutOfSpace { size });
            }
            self.scan_group(pool, &mut ch)?;
        };
        let off = self.geo.chunk_offset(start);
        let entries = [
            RedoEntry::new(
                self.geo.header_offset(start),
                ChunkHeader::Span { len }.encode(),
            ),
            RedoEntry::new(dest, off),
        ];
        // SAFETY: the header of a free chunk is owned by the chunk-allocator lock (held);
        // `dest` by the caller.
        if let Err(e) = unsafe { self.commit(pool, &entries) } {
            ch.add_free(start, len);
            return Err(e);
        }
        ch.objs.insert(start, Obj::Span { len });
        Ok(off)
    }

    /// # Safety
    /// As [`Heap::alloc`].
    unsafe fn alloc_small(
        &self,
        pool: &Pool,
        c: &'static SizeClass,
        size: u64,
        dest: u64,
    ) -> Result<u64> {
        let ci = usize::from(c.id);
        let mut arena = lock(&self.arenas[thread_index() % self.arenas.len()]);
        loop {
            if let Some(run) = arena[ci].last().cloned() {
                let mut st = lock(&run.state);
                if st.dead {
                    st.listed = false;
                    arena[ci].pop();
                    continue;
                }
                self.load_bits(pool, &run, &mut st)?;
                if st.used == c.blocks {
                    st.listed = false;
                    arena[ci].pop();
                    continue;
                }
                let bits = st.bits.as_mut().expect("loaded");
                let w = bits.iter().position(|w| *w != u64::MAX).expect("not full");
                let b = bits[w].trailing_ones();
                let block = w as u32 * 64 + b;
                debug_assert!(block < c.blocks);
                let new = bits[w] | 1 << b;
                let off = self.geo.chunk_offset(run.start) + u64::from(block) * c.size;
                let entries = [
                    RedoEntry::new(self.geo.bitmap_offset(run.start) + w as u64 * 8, new),
                    RedoEntry::new(dest, off),
                ];
                // SAFETY: the run's bitmap words are owned by its lock (held); `dest` by the
                // caller.
                unsafe { self.commit(pool, &entries) }?;
                bits[w] = new;
                st.used += 1;
                return Ok(off);
            }
            // No run with space in this arena: adopt a scanned run or open a new one.
            let mut ch = lock(&self.chunks);
            let acquired = loop {
                if let Some(r) = ch.unowned[ci].pop() {
                    break Acquired::Existing(r);
                }
                if let Some(s) = ch.take_free(c.run_chunks) {
                    break Acquired::Fresh(s);
                }
                if ch.frontier >= self.geo.chunks {
                    return Err(AllocError::OutOfSpace { size });
                }
                self.scan_group(pool, &mut ch)?;
            };
            let start = match acquired {
                Acquired::Existing(r) => {
                    drop(ch);
                    arena[ci].push(r);
                    continue;
                }
                Acquired::Fresh(s) => s,
            };
            // A new run: its bitmap slot must be zero (free chunk).
            let words = c.blocks.div_ceil(64) as usize;
            let mut raw = vec![0u8; words * 8];
            // SAFETY: a free chunk's bitmap slot is written only under the chunk-allocator
            // lock (held), by opening a run there.
            unsafe { pool.read(self.geo.bitmap_offset(start), &mut raw) };
            if raw.iter().any(|&b| b != 0) {
                ch.add_free(start, c.run_chunks);
                return Err(Self::corrupt(start, HeapCorruption::FreeBitmap));
            }
            let off = self.geo.chunk_offset(start);
            let entries = [
                RedoEntry::new(
                    self.geo.header_offset(start),
                    ChunkHeader::Run {
                        class: c.id,
                        len: c.run_chunks,
                    }
                    .encode(),
                ),
                RedoEntry::new(self.geo.bitmap_offset(start), 1),
                RedoEntry::new(dest, off),
            ];
            // SAFETY: the free chunks' header and bitmap are owned by the chunk-allocator lock
            // (held); `dest` by the caller.
            if let Err(e) = unsafe { self.commit(pool, &entries) } {
                ch.add_free(start, c.run_chunks);
                return Err(e);
            }
            let mut bits = vec![0u64; words];
            bits[0] = 1;
            let run = Arc::new(Run {
                start,
                class: c,
                state: Mutex::new(RunState {
                    bits: Some(bits),
                    used: 1,
                    dead: false,
                    listed: true,
                }),
            });
            ch.objs.insert(start, Obj::Run(Arc::clone(&run)));
            drop(ch);
            arena[ci].push(run);
            return Ok(off);
        }
    }

    /// Finds the run or span holding chunk `chunk`, scanning up to it if needed.
    fn lookup(&self, pool: &Pool, ch: &mut Chunks, chunk: u32) -> Result<Option<(u32, Obj)>> {
        while ch.frontier <= chunk {
            self.scan_group(pool, ch)?;
        }
        Ok(ch
            .objs
            .range(..=chunk)
            .next_back()
            .filter(|(&s, o)| s + o.len() > chunk)
            .map(|(&s, o)| (s, o.clone())))
    }

    /// Frees the block or span starting at pool offset `offset` and, if `dest` is given, stores
    /// 0 into the word at `dest`, atomically (one redo log). Needs no allocation, so it works
    /// on a full heap. A bad free changes nothing.
    ///
    /// # Safety
    /// No other [`Heap`] or [`RedoLogs`] of the same pool is in use (one per open pool).
    /// `dest` (if any) is a word the caller owns exclusively for the call, outside the heap
    /// metadata (checked), and not inside another block being freed concurrently; no other
    /// thread uses the block being freed. The same rule as for [`Heap::alloc`] applies to
    /// changing `dest` afterwards by other means.
    ///
    /// # Errors
    /// [`AllocError::InvalidFree`] if `offset` is not the start of a live block or span;
    /// [`AllocError::DoubleFree`] if it is the start of a free block of a live run;
    /// [`AllocError::InvalidTarget`] for a bad `dest`; [`AllocError::CorruptHeap`]; the redo
    /// log's errors. In every error case nothing was written.
    ///
    /// # Panics
    /// If `pool` is not the pool this heap was opened on.
    pub unsafe fn free(&self, pool: &Pool, offset: u64, dest: Option<u64>) -> Result<()> {
        self.check_pool(pool);
        if let Some(d) = dest {
            self.check_dest(d)?;
        }
        let invalid = AllocError::InvalidFree { offset };
        let Some(chunk) = self.geo.chunk_of(offset) else {
            return Err(invalid);
        };
        let mut ch = lock(&self.chunks);
        let Some((start, obj)) = self.lookup(pool, &mut ch, chunk)? else {
            return Err(invalid);
        };
        let run = match obj {
            Obj::Span { len } => {
                if offset != self.geo.chunk_offset(start) {
                    return Err(invalid);
                }
                let mut entries = vec![RedoEntry::new(self.geo.header_offset(start), 0)];
                entries.extend(dest.map(|d| RedoEntry::new(d, 0)));
                // SAFETY: span headers are owned by the chunk-allocator lock (held); `dest` by
                // the caller.
                unsafe { self.commit(pool, &entries) }?;
                ch.objs.remove(&start);
                ch.add_free(start, len);
                return Ok(());
            }
            Obj::Run(run) => run,
        };
        drop(ch);
        let c = run.class;
        let rel = offset - self.geo.chunk_offset(start);
        if rel % c.size != 0 || rel / c.size >= u64::from(c.blocks) {
            return Err(invalid);
        }
        let block = (rel / c.size) as u32;
        let mut st = lock(&run.state);
        if st.dead {
            return Err(invalid);
        }
        self.load_bits(pool, &run, &mut st)?;
        let (w, b) = ((block / 64) as usize, block % 64);
        let old = st.bits.as_ref().expect("loaded")[w];
        if old & 1 << b == 0 {
            return Err(AllocError::DoubleFree { offset });
        }
        let new = old & !(1 << b);
        let mut entries = vec![RedoEntry::new(
            self.geo.bitmap_offset(start) + w as u64 * 8,
            new,
        )];
        entries.extend(dest.map(|d| RedoEntry::new(d, 0)));
        if st.used == 1 {
            // The run becomes empty: release its chunks in the same log.
            let mut ch = lock(&self.chunks);
            entries.push(RedoEntry::new(self.geo.header_offset(start), 0));
            // SAFETY: the run's header and bitmap are owned by its lock (held), and the chunk
            // allocator's lock is held too; `dest` by the caller.
            unsafe { self.commit(pool, &entries) }?;
            st.bits.as_mut().expect("loaded")[w] = new;
            st.used = 0;
            st.dead = true;
            ch.objs.remove(&start);
            ch.add_free(start, c.run_chunks);
            return Ok(());
        }
        // SAFETY: the run's bitmap is owned by its lock (held); `dest` by the caller.
        unsafe { self.commit(pool, &entries) }?;
        st.bits.as_mut().expect("loaded")[w] = new;
        st.used -= 1;
        if !st.listed {
            st.listed = true;
            drop(st);
            lock(&self.arenas[thread_index() % self.arenas.len()])[usize::from(c.id)].push(run);
        }
        Ok(())
    }

    /// The usable size of the live block or span starting at `offset` (its class size, or
    /// `len × CHUNK`).
    ///
    /// # Errors
    /// [`AllocError::InvalidFree`] if `offset` is not the start of a live block or span;
    /// [`AllocError::CorruptHeap`].
    pub fn usable_size(&self, pool: &Pool, offset: u64) -> Result<u64> {
        self.check_pool(pool);
        let invalid = AllocError::InvalidFree { offset };
        let chunk = self
            .geo
            .chunk_of(offset)
            .ok_or(AllocError::InvalidFree { offset })?;
        let found = self.lookup(pool, &mut lock(&self.chunks), chunk)?;
        match found {
            Some((s, Obj::Span { len })) if offset == self.geo.chunk_offset(s) => {
                Ok(u64::from(len) * CHUNK)
            }
            Some((s, Obj::Run(run))) => {
                let c = run.class;
                let rel = offset - self.geo.chunk_offset(s);
                if rel % c.size != 0 || rel / c.size >= u64::from(c.blocks) {
                    return Err(invalid);
                }
                let mut st = lock(&run.state);
                self.load_bits(pool, &run, &mut st)?;
                let block = rel / c.size;
                let live = !st.dead
                    && st.bits.as_ref().expect("loaded")[(block / 64) as usize] >> (block % 64) & 1
                        == 1;
                if live {
                    Ok(c.size)
                } else {
                    Err(invalid)
                }
            }
            _ => Err(invalid),
        }
    }

    fn snapshot(&self, pool: &Pool, full: bool) -> Result<(Vec<(u32, Obj)>, Chunks)> {
        let mut ch = lock(&self.chunks);
        while full && ch.frontier < self.geo.chunks {
            self.scan_group(pool, &mut ch)?;
        }
        let objs = ch.objs.iter().map(|(&s, o)| (s, o.clone())).collect();
        let summary = Chunks {
            frontier: ch.frontier,
            free: ch.free.clone(),
            scanned: ch.scanned,
            ..Chunks::default()
        };
        Ok((objs, summary))
    }

    /// Calls `f(offset, usable_size)` for every live block and span of the whole heap, in
    /// offset order (scans the rest of the heap and loads every run's bitmap). Concurrent
    /// allocations and frees may or may not be seen.
    ///
    /// # Errors
    /// [`AllocError::CorruptHeap`].
    pub fn for_each_allocated(&self, pool: &Pool, mut f: impl FnMut(u64, u64)) -> Result<()> {
        self.check_pool(pool);
        let (objs, _) = self.snapshot(pool, true)?;
        for (s, o) in objs {
            match o {
                Obj::Span { len } => f(self.geo.chunk_offset(s), u64::from(len) * CHUNK),
                Obj::Run(run) => {
                    let mut st = lock(&run.state);
                    if st.dead {
                        continue;
                    }
                    self.load_bits(pool, &run, &mut st)?;
                    let base = self.geo.chunk_offset(s);
                    for (w, &word) in st.bits.as_ref().expect("loaded").iter().enumerate() {
                        let mut m = word;
                        while m != 0 {
                            let b = m.trailing_zeros();
                            m &= m - 1;
                            f(
                                base + (w as u64 * 64 + u64::from(b)) * run.class.size,
                                run.class.size,
                            );
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Statistics over the part of the heap scanned so far (loads the bitmaps of the runs met).
    ///
    /// # Errors
    /// [`AllocError::CorruptHeap`].
    pub fn stats(&self, pool: &Pool) -> Result<HeapStats> {
        self.check_pool(pool);
        let (objs, ch) = self.snapshot(pool, false)?;
        let mut s = HeapStats {
            blocks_per_class: vec![0; classes::classes().len()],
            free_chunks: ch.free_chunks(),
            chunks_scanned: u64::from(ch.frontier),
            headers_read: ch.scanned,
            chunks: u64::from(self.geo.chunks),
            ..HeapStats::default()
        };
        for (_, o) in objs {
            match o {
                Obj::Span { len } => {
                    s.spans += 1;
                    s.bytes_allocated += u64::from(len) * CHUNK;
                }
                Obj::Run(run) => {
                    let mut st = lock(&run.state);
                    if st.dead {
                        continue;
                    }
                    self.load_bits(pool, &run, &mut st)?;
                    s.blocks_per_class[usize::from(run.class.id)] += u64::from(st.used);
                    s.bytes_allocated += u64::from(st.used) * run.class.size;
                }
            }
        }
        Ok(s)
    }
}
