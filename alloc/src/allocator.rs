//! The allocator handle ([`Heap`]): volatile state over the on-media heap of `heap.rs`, and the
//! atomic `alloc`/`free` operations, each one redo-log commit (`docs/ALLOC.md` §4–6).
//!
//! Locks and their order (a thread holding one may only take those to its right):
//! arena → run → chunk allocator → a run created under the chunk-allocator lock (uncontended).
//! Lanes are claimed through a flag each (no lock), waiting only while all are claimed.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_utils::CachePadded;
use pmstore_pool::{FlushContext, Pool};
use smallvec::SmallVec;

use crate::classes::{self, SizeClass};
use crate::heap::{ChunkHeader, HeapCorruption, HeapGeometry, CHUNK, SCAN_GROUP};
use crate::primitive::{lock, Mutex, MutexGuard};
use crate::redo::{
    range_slots, LaneLog, RecoveryReport, RedoEntry, RedoLogs, RedoRange, EXT_ALIGN,
    REDO_ENTRY_SIZE,
};
use crate::volatile::{LaneClaim, LaneSlots, RunBits};
use crate::{AllocError, Result, TargetError};

mod keep;
mod publish;
mod tables;

use keep::KeptBudget;
use tables::{Arena, ObjTable};

/// A log extension of this size or more is a span (chunks) rather than a block of a run.
const EXT_SPAN_MIN: u64 = 16 << 10;

/// Volatile state of one run.
#[derive(Debug)]
struct Run {
    start: u32,
    class: &'static SizeClass,
    state: Mutex<RunState>,
}

#[derive(Debug)]
struct RunState {
    /// The bitmap and the reservations, loaded on first use.
    bits: Option<RunBits>,
    /// The run's chunk header is on media. A run opened by `reserve` is volatile only until
    /// the first publication of one of its blocks writes its header; if all its reservations
    /// are cancelled first, its chunks return to the chunk allocator.
    on_media: bool,
    /// The run was released to the chunk allocator (its header is 0 now).
    dead: bool,
    /// The run is in an arena's list or the chunk allocator's `unowned` list.
    listed: bool,
    /// The run is empty and kept for its class, charged to arena `kept - 1` (0: not kept;
    /// `keep.rs`). Uncharged when a block of it is published or when it is released.
    kept: u16,
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
    /// Runs and spans by first chunk, and which one covers each chunk.
    objs: ObjTable,
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
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use pmstore_alloc::classes::class_for;
/// use pmstore_alloc::pool::{CreateOptions, Pool, MIN_POOL_SIZE};
/// use pmstore_alloc::Heap;
///
/// let (mut pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
/// let (heap, _) = Heap::open(&mut pool)?;
/// let root = pool.geometry().root_offset;
/// // SAFETY: one Heap per pool; this thread owns the root word.
/// unsafe { heap.alloc(&pool, 100, root)? };
/// let stats = heap.stats(&pool)?;
/// assert_eq!(stats.bytes_allocated, 128);
/// assert_eq!(stats.blocks_per_class[usize::from(class_for(100).unwrap().id)], 1);
/// assert_eq!(stats.chunks, u64::from(heap.geometry().chunks));
/// # Ok(())
/// # }
/// ```
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
    /// Chunks of the scanned runs that hold no allocated block: runs kept empty for their
    /// class, or found so on media. Not free, but released to the chunk allocator when it
    /// runs dry (or by [`Heap::release_empty_runs`]): `free_chunks + empty_run_chunks` is
    /// what new runs and spans can still get.
    pub empty_run_chunks: u64,
    /// Chunk headers read by frontier scans.
    pub headers_read: u64,
    /// Total chunks (`N`).
    pub chunks: u64,
}

/// The persistent allocator of one pool. Make it with [`Heap::open`] (at most one per open
/// pool); every operation takes the same `&Pool`.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use pmstore_alloc::pool::{CreateOptions, OpenOptions, Pool, MIN_POOL_SIZE};
/// use pmstore_alloc::Heap;
/// # let dir = tempfile::tempdir()?;
/// let path = dir.path().join("heap.pool");
/// let mut pool = Pool::create(&path, &CreateOptions::new("doc", MIN_POOL_SIZE))?;
/// let (heap, _) = Heap::open(&mut pool)?;
/// let root = pool.geometry().root_offset; // the root word holds our block's offset
/// // SAFETY: one Heap per pool; this thread owns the root word.
/// let block = unsafe { heap.alloc(&pool, 256, root)? };
/// drop((heap, pool));
///
/// let mut pool = Pool::open(&path, &OpenOptions::new("doc"))?;
/// let (heap, _) = Heap::open(&mut pool)?;
/// let mut word = [0u8; 8];
/// // SAFETY: nothing else uses the pool.
/// unsafe { pool.read(root, &mut word) };
/// assert_eq!(u64::from_ne_bytes(word), block); // allocated, and recorded, atomically
/// assert_eq!(heap.usable_size(&pool, block)?, 256);
/// # Ok(())
/// # }
/// ```
pub struct Heap {
    geo: HeapGeometry,
    /// Address of the pool's mapping, to check that operations get the right pool.
    base: usize,
    logs: RedoLogs,
    lanes: LaneSlots<Lane>,
    core: Arc<Core>,
}

/// The volatile state shared with the outstanding [`Reservation`]s (which cancel themselves
/// through it when dropped).
#[derive(Debug)]
struct Core {
    chunks: Mutex<Chunks>,
    /// Per arena, per class: runs to allocate from (the last one first).
    arenas: Vec<Mutex<Arena>>,
    /// Runs on media that a cancel left empty (a free emptied them while a reservation in them
    /// was outstanding): the next publish first releases them (header := 0) in a commit of
    /// their own, unless they were used again meanwhile.
    release_queue: Mutex<Vec<Arc<Run>>>,
    /// Whether `release_queue` may be non-empty: read on every publish, so that the common
    /// path touches no shared lock (a stale `true` costs one lock; `false` is written only
    /// under the lock, after emptying the queue).
    release_pending: AtomicBool,
    /// Per arena: the empty runs it keeps (`keep.rs`).
    kept: Box<[CachePadded<KeptBudget>]>,
    /// A run may have become empty without being released since the last reclaim (kept,
    /// queued, or met by a frontier scan with its bitmap unread): a reclaim has work.
    reclaim_hint: AtomicBool,
    /// One reclaim at a time (taken with no other lock held; before run, arena and chunk
    /// allocator locks).
    reclaim_lock: Mutex<()>,
    /// Reclaims that released chunks: an allocation that failed before the last one retries.
    reclaim_gen: AtomicU64,
}

impl Core {
    /// This thread's arena.
    fn arena(&self) -> MutexGuard<'_, Arena> {
        lock(&self.arenas[thread_index() % self.arenas.len()])
    }

    /// Returns a reservation's block or span to the free state (volatile only: nothing
    /// persistent was written for it).
    fn cancel(&self, kind: ResKind) {
        match kind {
            ResKind::Span { start, len } => lock(&self.chunks).add_free(start, len),
            ResKind::Block { run, block } => {
                let mut guard = lock(&run.state);
                let st = &mut *guard;
                let bits = st.bits.as_mut().expect("a reserved run is loaded");
                bits.unreserve(block);
                if !st.on_media && bits.reserved() == 0 {
                    // A run opened by `reserve` whose blocks were all cancelled: nothing of it
                    // is on media; give its chunks back.
                    debug_assert_eq!(bits.used(), 0);
                    st.dead = true;
                    let mut ch = lock(&self.chunks);
                    ch.objs.remove(run.start);
                    ch.add_free(run.start, run.class.run_chunks);
                    return;
                }
                if st.on_media && bits.reserved() == 0 && bits.used() == 0 {
                    // Emptied by a free while this reservation was outstanding: kept for the
                    // class, or released by the next publish.
                    self.keep_or_queue(&run, st);
                }
                if !st.listed {
                    st.listed = true;
                    drop(guard);
                    let ci = usize::from(run.class.id);
                    self.arena()[ci].push(run);
                }
            }
        }
    }
}

/// What a [`Reservation`] holds.
#[derive(Debug)]
enum ResKind {
    /// Block `block` of `run`, reserved in its [`RunBits`].
    Block { run: Arc<Run>, block: u32 },
    /// Chunks `[start, start + len)`, taken from the chunk allocator's free extents.
    Span { start: u32, len: u32 },
}

/// A block or span taken by [`Heap::reserve`] in the volatile state only: nothing persistent
/// was written. [`Heap::publish`] makes it allocated (atomically with other updates);
/// [`Heap::cancel`] or dropping it returns it to the free state. A crash before publication
/// loses nothing: the heap on media never saw it.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use pmstore_alloc::pool::{CreateOptions, Pool, MIN_POOL_SIZE};
/// use pmstore_alloc::{AllocError, Heap};
///
/// let (mut pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
/// let (heap, _) = Heap::open(&mut pool)?;
/// let r = heap.reserve(&pool, 40)?;
/// let off = r.offset();
/// assert!(matches!(heap.usable_size(&pool, off), Err(AllocError::InvalidFree { .. }))); // not allocated
/// let mut rs = vec![r];
/// // SAFETY: one Heap per pool.
/// unsafe { heap.publish(&pool, &mut rs, &[], &[])? };
/// assert!(rs.is_empty()); // published
/// assert_eq!(heap.usable_size(&pool, off)?, 48);
/// # Ok(())
/// # }
/// ```
#[must_use = "a reservation is cancelled when dropped; publish it to allocate the block"]
pub struct Reservation {
    offset: u64,
    size: u64,
    core: Arc<Core>,
    /// `None` once published (or cancelled).
    kind: Option<ResKind>,
}

impl Reservation {
    /// Pool offset of the reserved block or span (where its object will live).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_alloc::pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    /// use pmstore_alloc::Heap;
    ///
    /// let (mut pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// let (heap, _) = Heap::open(&mut pool)?;
    /// let r = heap.reserve(&pool, 64)?;
    /// assert_eq!(r.offset() % 64, 0); // 64 bytes or more: cache-line aligned
    /// assert_eq!(heap.geometry().chunk_of(r.offset()), Some(0)); // in the heap's data area
    /// # Ok(())
    /// # }
    /// ```
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Its usable size (class size, or `len × CHUNK` for a span).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_alloc::heap::CHUNK;
    /// use pmstore_alloc::pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    /// use pmstore_alloc::Heap;
    ///
    /// let (mut pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// let (heap, _) = Heap::open(&mut pool)?;
    /// assert_eq!(heap.reserve(&pool, 1000)?.size(), 1024); // a class
    /// assert_eq!(heap.reserve(&pool, CHUNK + 1)?.size(), 2 * CHUNK); // a span
    /// # Ok(())
    /// # }
    /// ```
    pub fn size(&self) -> u64 {
        self.size
    }
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation")
            .field("offset", &self.offset)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(kind) = self.kind.take() {
            self.core.cancel(kind);
        }
    }
}

/// A lane taken from the heap's pool by [`Heap::lane`] for the duration of a transaction;
/// returned to the pool when dropped. Publish through it with [`Heap::publish_with`]; its
/// redo log and flush context are available through [`LaneGuard::parts`].
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use pmstore_alloc::pool::{CreateOptions, Pool, MIN_POOL_SIZE};
/// use pmstore_alloc::Heap;
///
/// let (mut pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
/// let (heap, _) = Heap::open(&mut pool)?;
/// let mut lane = heap.lane(); // one lane for a whole transaction
/// let mut rs = vec![heap.reserve(&pool, 32)?, heap.reserve(&pool, 32)?];
/// // SAFETY: one Heap per pool.
/// unsafe { heap.publish_with(&mut lane, &pool, &mut rs, &[], &[])? };
/// assert_eq!(heap.stats(&pool)?.bytes_allocated, 64);
/// # Ok(())
/// # }
/// ```
pub struct LaneGuard<'a> {
    heap: &'a Heap,
    /// Released (the lane free again) when the guard is dropped.
    lane: LaneClaim<'a, Lane>,
}

impl LaneGuard<'_> {
    fn get(&mut self) -> &mut Lane {
        &mut self.lane
    }

    /// The lane's index.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_alloc::pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    /// use pmstore_alloc::Heap;
    ///
    /// let (mut pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// let (heap, _) = Heap::open(&mut pool)?;
    /// let (a, b) = (heap.lane(), heap.lane());
    /// assert_ne!(a.index(), b.index()); // each guard holds its own lane
    /// assert!(a.index() < pool.geometry().lane_count);
    /// # Ok(())
    /// # }
    /// ```
    pub fn index(&self) -> u32 {
        self.lane.log.lane()
    }

    /// The lane's redo log and flush context (e.g. for the transaction layer's own commits;
    /// [`LaneLog::commit`]'s contract applies).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_alloc::pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    /// use pmstore_alloc::redo::RedoEntry;
    /// use pmstore_alloc::Heap;
    ///
    /// let (mut pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// let (heap, _) = Heap::open(&mut pool)?;
    /// let root = pool.geometry().root_offset;
    /// let mut lane = heap.lane();
    /// let (log, ctx) = lane.parts();
    /// // SAFETY: this thread owns the root area; the heap's logs are the pool's only ones.
    /// let stats = unsafe { log.commit(&pool, ctx, &[RedoEntry::new(root, 9)])? };
    /// // The commit point; the value is flushed by the next commit if the policy defers a
    /// // commit of one word (else a second drain makes it durable before returning).
    /// let defers = heap.redo_logs().defer_policy().defers(1);
    /// assert_eq!(stats.drains, if defers { 1 } else { 2 });
    /// # Ok(())
    /// # }
    /// ```
    pub fn parts(&mut self) -> (&mut LaneLog, &mut FlushContext) {
        let l = self.get();
        (&mut l.log, &mut l.ctx)
    }
}

impl std::fmt::Debug for LaneGuard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaneGuard")
            .field("lane", &self.index())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Heap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Heap")
            .field("geometry", &self.geo)
            .field("arenas", &self.core.arenas.len())
            .finish_non_exhaustive()
    }
}

/// This thread's arena index.
#[inline]
fn thread_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    // A constant initialiser with a sentinel: no lazy-initialisation state to check on every
    // call (this is read by every operation: lane and arena choice).
    thread_local!(static INDEX: Cell<usize> = const { Cell::new(usize::MAX) });
    INDEX.with(|i| {
        let v = i.get();
        if v != usize::MAX {
            return v;
        }
        let v = NEXT.fetch_add(1, Ordering::Relaxed) & (usize::MAX >> 1);
        i.set(v);
        v
    })
}

enum Acquired {
    Existing(Arc<Run>),
    Fresh(u32),
    /// The chunk allocator has no room (the whole heap scanned).
    Nothing,
}

impl Heap {
    /// Opens the allocator of `pool`: recovers the redo logs (`RedoLogs::recover`), claims
    /// every lane, and builds empty volatile state. Nothing of the heap is read here (the
    /// frontier scan is lazy), so the time does not depend on the heap's size.
    ///
    /// # Errors
    /// Those of [`RedoLogs::recover`].
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_alloc::pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    /// use pmstore_alloc::Heap;
    /// # let dir = tempfile::tempdir()?;
    /// let mut pool = Pool::create(dir.path().join("heap.pool"), &CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// let (heap, report) = Heap::open(&mut pool)?; // recovery first, then the allocator
    /// assert_eq!(report.logs_replayed, 0);
    /// assert_eq!(heap.stats(&pool)?.bytes_allocated, 0);
    /// # Ok(())
    /// # }
    /// ```
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
            lanes: LaneSlots::new(lanes),
            core: Arc::new(Core {
                chunks: Mutex::new(Chunks {
                    unowned: vec![Vec::new(); classes],
                    ..Chunks::default()
                }),
                arenas: (0..arenas)
                    .map(|_| {
                        Mutex::new(Arena {
                            runs: vec![Vec::new(); classes],
                            spare: vec![Vec::new(); classes],
                        })
                    })
                    .collect(),
                release_queue: Mutex::new(Vec::new()),
                release_pending: AtomicBool::new(false),
                kept: (0..arenas).map(|_| CachePadded::default()).collect(),
                reclaim_hint: AtomicBool::new(false),
                reclaim_lock: Mutex::new(()),
                reclaim_gen: AtomicU64::new(0),
            }),
        };
        Ok((heap, report))
    }

    /// The heap's geometry.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_alloc::pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    /// use pmstore_alloc::Heap;
    ///
    /// let (mut pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// let (heap, _) = Heap::open(&mut pool)?;
    /// let g = heap.geometry();
    /// assert_eq!(g.heap_offset, pool.geometry().heap_offset);
    /// assert!(g.data_end() <= pool.size());
    /// # Ok(())
    /// # }
    /// ```
    pub fn geometry(&self) -> &HeapGeometry {
        &self.geo
    }

    /// The redo logs (for callers that need [`RedoLogs::sync_invalidations`]).
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
    /// unsafe { heap.alloc(&pool, 64, root)? };
    /// // Before storing to `root` with a plain store, make the log invalidation durable.
    /// let mut ctx = pool.flush_context();
    /// heap.redo_logs().sync_invalidations(&pool, &mut ctx)?;
    /// assert_eq!(heap.redo_logs().pending_invalidations(), 0);
    /// // SAFETY: this thread owns the root word.
    /// unsafe { pool.write(root, &0u64.to_ne_bytes()) };
    /// # Ok(())
    /// # }
    /// ```
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
        ch.objs.grow(i);
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
                            on_media: true,
                            dead: false,
                            listed: true,
                            kept: 0,
                        }),
                    });
                    ch.unowned[usize::from(class)].push(Arc::clone(&run));
                    // Its bitmap is unread: it may be empty (a crash, or kept at the last
                    // close), which only a reclaim would find out. (Under the chunk
                    // allocator's lock: a reclaim collects the runs under it.)
                    self.core.reclaim_hint.store(true, Ordering::Relaxed);
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
    #[inline]
    fn load_bits(&self, pool: &Pool, run: &Run, st: &mut RunState) -> Result<()> {
        if st.bits.is_some() {
            return Ok(());
        }
        self.read_bits(pool, run, st)
    }

    /// [`Heap::load_bits`] of a run not loaded yet (once per run: kept out of line).
    #[cold]
    #[inline(never)]
    fn read_bits(&self, pool: &Pool, run: &Run, st: &mut RunState) -> Result<()> {
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
        st.bits = Some(RunBits::new(blocks, bits));
        Ok(())
    }

    /// Commits `entries` through `lane`, or through a lane taken from the pool for the call,
    /// with the log extension `ext` if the log needs one.
    ///
    /// # Safety
    /// As [`LaneLog::commit_ops_ext`]: the caller owns every target and `ext` exclusively.
    unsafe fn commit(
        &self,
        pool: &Pool,
        lane: Option<&mut Lane>,
        entries: &[RedoEntry],
        ranges: &[RedoRange<'_>],
        ext: Option<(u64, u64)>,
    ) -> Result<()> {
        if let Some(l) = lane {
            // SAFETY: forwarded from the caller; one RedoLogs per pool (the Heap's own).
            return unsafe { l.log.commit_ops_ext(pool, &mut l.ctx, entries, ranges, ext) }
                .map(|_| ());
        }
        let mut claim = self.lanes.claim_near(self.lane_hint());
        let l = &mut *claim;
        // SAFETY: as above.
        unsafe { l.log.commit_ops_ext(pool, &mut l.ctx, entries, ranges, ext) }.map(|_| ())
    }

    /// Reserves a log extension of at least `bytes` bytes (`docs/REDO.md` §4): a span when it
    /// is large (no run is opened for it), else a block (at least 64 bytes, so it starts on a
    /// cache line), falling back to the other kind when the heap has no room for the first.
    /// Never published: cancelled (dropped) after the commit.
    fn reserve_extension(&self, pool: &Pool, bytes: u64) -> Result<Reservation> {
        let bytes = bytes.max(EXT_ALIGN);
        if bytes >= EXT_SPAN_MIN {
            match self.reserve_span(pool, bytes) {
                Err(AllocError::OutOfSpace { .. }) if bytes <= classes::MAX_CLASS => {}
                r => return r,
            }
        }
        self.reserve(pool, bytes)
    }

    fn check_dest(&self, index: usize, dest: u64) -> Result<()> {
        let err = |reason| AllocError::InvalidTarget {
            index,
            target: dest,
            reason,
        };
        if self.geo.in_metadata(dest) {
            return Err(err(TargetError::InHeapMetadata));
        }
        self.logs.layout().check_target(dest).map_err(err)
    }

    /// Checks a range a publication stores: as [`RedoLayout::check_range`], and disjoint from
    /// the heap metadata.
    fn check_range(&self, index: usize, target: u64, len: u64) -> Result<()> {
        let err = |reason| AllocError::InvalidTarget {
            index,
            target,
            reason,
        };
        self.logs.layout().check_range(target, len).map_err(err)?;
        let meta_end = self.geo.chunk_offset(0);
        if target < meta_end && target + len > self.geo.heap_offset {
            return Err(err(TargetError::InHeapMetadata));
        }
        Ok(())
    }

    /// The lane this thread tries first: the last lanes first (thread 0 the last one). The
    /// lane area lies right before the root and the heap, so the last lanes' logs are the ones
    /// nearest the data they describe: in msync mode a small transaction's log page and data
    /// pages then fall in one run of pages less than 1 MiB apart, one `msync` instead of two
    /// (with 1024 lanes of 16 KiB, lane 0 is 16 MiB away from the root).
    #[inline]
    fn lane_hint(&self) -> usize {
        let n = self.lanes.len();
        n - 1 - thread_index() % n
    }

    /// Takes a lane from the heap's pool for the duration of a transaction (waiting, yielding,
    /// while all are taken); it returns to the pool when the guard is dropped. Operations
    /// without a guard ([`Heap::alloc`], [`Heap::free`], [`Heap::publish`]) take one for
    /// themselves, so a thread holding every lane's guard must not call them (it would wait
    /// forever); use [`Heap::publish_with`].
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_alloc::pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    /// use pmstore_alloc::Heap;
    ///
    /// let (mut pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE).lanes(1, 4096))?;
    /// let (heap, _) = Heap::open(&mut pool)?;
    /// let lane = heap.lane();
    /// assert!(heap.try_lane().is_none()); // the only lane is taken
    /// drop(lane);
    /// assert!(heap.try_lane().is_some());
    /// # Ok(())
    /// # }
    /// ```
    #[inline]
    pub fn lane(&self) -> LaneGuard<'_> {
        LaneGuard {
            heap: self,
            lane: self.lanes.claim_near(self.lane_hint()),
        }
    }

    /// Like [`Heap::lane`], but `None` instead of waiting if every lane is taken.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_alloc::pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    /// use pmstore_alloc::Heap;
    ///
    /// let (mut pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE).lanes(2, 4096))?;
    /// let (heap, _) = Heap::open(&mut pool)?;
    /// let guards: Vec<_> = std::iter::from_fn(|| heap.try_lane()).collect();
    /// assert_eq!(guards.len(), 2); // then `None`: every lane is taken
    /// # Ok(())
    /// # }
    /// ```
    pub fn try_lane(&self) -> Option<LaneGuard<'_>> {
        Some(LaneGuard {
            heap: self,
            lane: self.lanes.try_claim_near(self.lane_hint())?,
        })
    }

    /// Allocates a block of at least `size` bytes and stores its pool offset into the 8-byte
    /// word at pool offset `dest`, atomically (one redo log): after a crash, either the block
    /// is allocated and `dest` holds its offset, or neither. Returns the offset. Blocks of 64
    /// bytes or more are 64-byte aligned. The contents are uninitialised (whatever was there).
    /// (It is [`Heap::reserve`] then [`Heap::publish`] of the reservation with `(dest, offset)`.)
    ///
    /// # Safety
    /// No other [`Heap`] or [`RedoLogs`] of the same pool is in use (one per open pool).
    /// `dest` is a word the caller owns exclusively for the call (no other thread accesses it,
    /// no reference to it is live), outside the heap metadata (checked) and not inside a block
    /// another thread may free meanwhile. After this returns, `dest` may be changed again by
    /// this heap's operations freely, but by other means (a plain store) only after
    /// [`RedoLogs::sync_invalidations`] on [`Heap::redo_logs`]: until then a crash may replay
    /// this operation's log over it (`docs/REDO.md` §4; with deferred apply the log stays
    /// valid until the lane's next commit has made its values durable, and its invalidation
    /// until a commit after that).
    ///
    /// # Errors
    /// [`AllocError::TooLarge`] if `size` exceeds the heap, [`AllocError::OutOfSpace`] if no
    /// space is left (nothing written), [`AllocError::InvalidTarget`] for a bad `dest`,
    /// [`AllocError::CorruptHeap`], and the redo log's errors.
    ///
    /// # Panics
    /// If `pool` is not the pool this heap was opened on.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_alloc::pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    /// use pmstore_alloc::{AllocError, Heap, TargetError};
    ///
    /// let (mut pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// let (heap, _) = Heap::open(&mut pool)?;
    /// let root = pool.geometry().root_offset;
    /// // SAFETY: one Heap per pool; this thread owns the root word.
    /// let block = unsafe { heap.alloc(&pool, 24, root)? };
    /// let mut word = [0u8; 8];
    /// // SAFETY: as above.
    /// unsafe { pool.read(root, &mut word) };
    /// assert_eq!(u64::from_ne_bytes(word), block);
    /// assert_eq!(heap.usable_size(&pool, block)?, 32);
    /// // The destination word may not be in the heap's metadata.
    /// let meta = heap.geometry().header_offset(0);
    /// // SAFETY: as above.
    /// let err = unsafe { heap.alloc(&pool, 24, meta) };
    /// assert!(matches!(err, Err(AllocError::InvalidTarget { reason: TargetError::InHeapMetadata, .. })));
    /// # Ok(())
    /// # }
    /// ```
    pub unsafe fn alloc(&self, pool: &Pool, size: u64, dest: u64) -> Result<u64> {
        self.check_pool(pool);
        self.check_dest(0, dest)?;
        let mut r = [self.reserve(pool, size)?];
        let off = r[0].offset();
        let words = [(dest, off)];
        // SAFETY: forwarded from the caller (`dest` is its only extra word, checked above).
        if let Some(done) = unsafe { self.publish_one_direct(pool, &mut r, &[], &words) } {
            return done.map(|()| off);
        }
        // SAFETY: as above.
        unsafe { self.publish_inner(pool, None, &mut r, &[], &words, &[], &[], None) }?;
        Ok(off)
    }

    /// Reserves a block of at least `size` bytes (or a span) in the volatile state only:
    /// nothing persistent is written, and no other `reserve`/`alloc` hands it out until the
    /// reservation is cancelled. Publish it with [`Heap::publish`]; cancel it with
    /// [`Heap::cancel`] or by dropping it. A crash before publication loses nothing (the media
    /// never saw it). The block's contents are uninitialised; the caller may write them (the
    /// block is its own) before publishing.
    ///
    /// # Errors
    /// [`AllocError::TooLarge`], [`AllocError::OutOfSpace`], [`AllocError::CorruptHeap`].
    ///
    /// # Panics
    /// If `pool` is not the pool this heap was opened on.
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
    /// let a = heap.reserve(&pool, 16)?;
    /// let b = heap.reserve(&pool, 16)?;
    /// assert_ne!(a.offset(), b.offset()); // never handed out twice
    /// assert!(matches!(heap.reserve(&pool, 1 << 40), Err(AllocError::TooLarge { .. })));
    /// drop(a); // cancelled: free again
    /// assert_eq!(heap.stats(&pool)?.bytes_allocated, 0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn reserve(&self, pool: &Pool, size: u64) -> Result<Reservation> {
        self.check_pool(pool);
        match classes::class_for(size) {
            Some(c) => self.reserve_small(pool, c, size),
            None => self.reserve_span(pool, size),
        }
    }

    /// Returns a reservation to the free state (as dropping it does).
    ///
    /// # Panics
    /// If `r` was made by another heap.
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
    /// let r = heap.reserve(&pool, 16)?;
    /// let off = r.offset();
    /// heap.cancel(r);
    /// assert_eq!(heap.reserve(&pool, 16)?.offset(), off); // the lowest free block again
    /// # Ok(())
    /// # }
    /// ```
    pub fn cancel(&self, r: Reservation) {
        assert!(
            Arc::ptr_eq(&r.core, &self.core),
            "Reservation of another heap"
        );
        drop(r);
    }

    fn reserve_span(&self, pool: &Pool, size: u64) -> Result<Reservation> {
        let len = size.div_ceil(CHUNK);
        if len > u64::from(self.geo.chunks) {
            return Err(AllocError::TooLarge { size });
        }
        let len = len as u32;
        let mut gen = self.core.reclaim_gen.load(Ordering::Acquire);
        let mut ch = lock(&self.core.chunks);
        let start = loop {
            if let Some(s) = ch.take_free(len) {
                break s;
            }
            if ch.frontier >= self.geo.chunks {
                // No room: release empty runs (no lock held) and try again.
                drop(ch);
                if !self.reclaim(pool, gen)? {
                    return Err(AllocError::OutOfSpace { size });
                }
                gen = self.core.reclaim_gen.load(Ordering::Acquire);
                ch = lock(&self.core.chunks);
                continue;
            }
            self.scan_group(pool, &mut ch)?;
        };
        Ok(Reservation {
            offset: self.geo.chunk_offset(start),
            size: u64::from(len) * CHUNK,
            core: Arc::clone(&self.core),
            kind: Some(ResKind::Span { start, len }),
        })
    }

    fn reserve_small(&self, pool: &Pool, c: &'static SizeClass, size: u64) -> Result<Reservation> {
        let ci = usize::from(c.id);
        let mut gen = self.core.reclaim_gen.load(Ordering::Acquire);
        let mut arena = self.core.arena();
        loop {
            if let Some(run) = arena[ci].last() {
                let mut st = lock(&run.state);
                if st.dead {
                    st.listed = false;
                    drop(st);
                    arena.pop_run(ci, true);
                    continue;
                }
                self.load_bits(pool, run, &mut st)?;
                let Some(block) = st.bits.as_mut().expect("loaded").reserve() else {
                    st.listed = false;
                    drop(st);
                    arena.pop_run(ci, false);
                    continue;
                };
                drop(st);
                return Ok(Reservation {
                    offset: self.geo.chunk_offset(run.start) + u64::from(block) * c.size,
                    size: c.size,
                    core: Arc::clone(&self.core),
                    kind: Some(ResKind::Block {
                        run: Arc::clone(run),
                        block,
                    }),
                });
            }
            // No run with space in this arena: adopt a scanned run or open a new one.
            let mut ch = lock(&self.core.chunks);
            let acquired = loop {
                if let Some(r) = ch.unowned[ci].pop() {
                    break Acquired::Existing(r);
                }
                if let Some(s) = ch.take_free(c.run_chunks) {
                    break Acquired::Fresh(s);
                }
                if ch.frontier >= self.geo.chunks {
                    break Acquired::Nothing;
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
                Acquired::Nothing => {
                    // No room for a new run: release empty runs (with no lock held: they take
                    // run locks, ordered before the chunk allocator's) and try again.
                    drop(ch);
                    drop(arena);
                    if !self.reclaim(pool, gen)? {
                        return Err(AllocError::OutOfSpace { size });
                    }
                    gen = self.core.reclaim_gen.load(Ordering::Acquire);
                    arena = self.core.arena();
                    continue;
                }
            };
            // A new run: its bitmap slot must be zero (free chunk). Read in pieces into a
            // buffer on the stack (no heap allocation).
            let mut left = u64::from(c.blocks.div_ceil(64)) * 8;
            let mut off = self.geo.bitmap_offset(start);
            let mut buf = [0u8; 512];
            while left > 0 {
                let n = left.min(buf.len() as u64);
                let piece = &mut buf[..n as usize];
                // SAFETY: a free chunk's bitmap slot is written only by the publication of a
                // run opened there, and these chunks are ours (just taken under the
                // chunk-allocator lock, held).
                unsafe { pool.read(off, piece) };
                if piece.iter().any(|&b| b != 0) {
                    ch.add_free(start, c.run_chunks);
                    return Err(Self::corrupt(start, HeapCorruption::FreeBitmap));
                }
                off += n;
                left -= n;
            }
            // Volatile only: its header is written by the first publication of one of its
            // blocks (`on_media`).
            let run = arena.new_run(start, c);
            ch.objs.insert(start, Obj::Run(Arc::clone(&run)));
            drop(ch);
            arena[ci].push(run);
        }
    }

    /// Finds the run or span holding chunk `chunk`, scanning up to it if needed.
    fn lookup(&self, pool: &Pool, ch: &mut Chunks, chunk: u32) -> Result<Option<(u32, Obj)>> {
        while ch.frontier <= chunk {
            self.scan_group(pool, ch)?;
        }
        Ok(ch.objs.covering(chunk).map(|(s, o)| (s, o.clone())))
    }

    /// Frees the block or span starting at pool offset `offset` and, if `dest` is given, stores
    /// 0 into the word at `dest`, atomically (one redo log). Needs no allocation, so it works
    /// on a full heap. A bad free changes nothing. (It is [`Heap::publish`] of one free.)
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
    /// // SAFETY (every call): one Heap per pool; this thread owns the root words.
    /// let block = unsafe { heap.alloc(&pool, 64, root)? };
    /// let other = unsafe { heap.alloc(&pool, 64, root + 8)? }; // keeps the run alive
    /// unsafe { heap.free(&pool, block, Some(root))? }; // frees it and clears the root word
    /// let mut word = [0xffu8; 8];
    /// unsafe { pool.read(root, &mut word) };
    /// assert_eq!(word, [0; 8]);
    /// let again = unsafe { heap.free(&pool, block, None) };
    /// assert!(matches!(again, Err(AllocError::DoubleFree { .. }))); // nothing written
    /// unsafe { heap.free(&pool, other, Some(root + 8))? };
    /// // Its run is empty now and may be gone: a stale offset is then not even a block.
    /// let stale = unsafe { heap.free(&pool, other, None) };
    /// assert!(matches!(stale, Err(AllocError::InvalidFree { .. } | AllocError::DoubleFree { .. })));
    /// # Ok(())
    /// # }
    /// ```
    pub unsafe fn free(&self, pool: &Pool, offset: u64, dest: Option<u64>) -> Result<()> {
        self.check_pool(pool);
        let cleared = dest.map(|d| (d, 0));
        if let Some(d) = dest {
            // (`publish_inner` checks it first too, after releasing queued runs: changing
            // nothing, so the order does not show.)
            self.check_dest(0, d)?;
        }
        // SAFETY: forwarded from the caller (`dest` checked above).
        let direct =
            unsafe { self.publish_one_direct(pool, &mut [], &[offset], cleared.as_slice()) };
        if let Some(done) = direct {
            return done;
        }
        // SAFETY: forwarded from the caller.
        unsafe {
            self.publish_inner(
                pool,
                None,
                &mut [],
                &[offset],
                cleared.as_slice(),
                &[],
                &[],
                None,
            )
        }
    }

    /// The usable size of the live block or span starting at `offset` (its class size, or
    /// `len × CHUNK`).
    ///
    /// # Errors
    /// [`AllocError::InvalidFree`] if `offset` is not the start of a live block or span;
    /// [`AllocError::CorruptHeap`].
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
    /// // SAFETY: one Heap per pool; this thread owns the root word.
    /// let block = unsafe { heap.alloc(&pool, 33, root)? };
    /// assert_eq!(heap.usable_size(&pool, block)?, 48);
    /// let inside = heap.usable_size(&pool, block + 8); // not the start of a block
    /// assert!(matches!(inside, Err(AllocError::InvalidFree { .. })));
    /// # Ok(())
    /// # }
    /// ```
    pub fn usable_size(&self, pool: &Pool, offset: u64) -> Result<u64> {
        self.check_pool(pool);
        let invalid = || AllocError::InvalidFree { offset };
        let chunk = self.geo.chunk_of(offset).ok_or_else(invalid)?;
        let found = self.lookup(pool, &mut lock(&self.core.chunks), chunk)?;
        match found {
            Some((s, Obj::Span { len })) if offset == self.geo.chunk_offset(s) => {
                Ok(u64::from(len) * CHUNK)
            }
            Some((s, Obj::Run(run))) => {
                let c = run.class;
                let rel = offset - self.geo.chunk_offset(s);
                if rel % c.size != 0 || rel / c.size >= u64::from(c.blocks) {
                    return Err(invalid());
                }
                let mut st = lock(&run.state);
                self.load_bits(pool, &run, &mut st)?;
                let block = rel / c.size;
                let live = !st.dead && st.bits.as_ref().expect("loaded").is_allocated(block as u32);
                if live {
                    Ok(c.size)
                } else {
                    Err(invalid())
                }
            }
            _ => Err(invalid()),
        }
    }

    fn snapshot(&self, pool: &Pool, full: bool) -> Result<(Vec<(u32, Obj)>, Chunks)> {
        let mut ch = lock(&self.core.chunks);
        while full && ch.frontier < self.geo.chunks {
            self.scan_group(pool, &mut ch)?;
        }
        let objs = ch.objs.iter().map(|(s, o)| (s, o.clone())).collect();
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
    /// // SAFETY: one Heap per pool; this thread owns the root words.
    /// let (a, b) = unsafe { (heap.alloc(&pool, 16, root)?, heap.alloc(&pool, 1000, root + 8)?) };
    /// let mut live = Vec::new();
    /// heap.for_each_allocated(&pool, |off, size| live.push((off, size)))?;
    /// live.sort();
    /// let mut expected = vec![(a, 16), (b, 1024)];
    /// expected.sort();
    /// assert_eq!(live, expected);
    /// # Ok(())
    /// # }
    /// ```
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
                    for (w, &word) in st.bits.as_ref().expect("loaded").words().iter().enumerate() {
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
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_alloc::heap::CHUNK;
    /// use pmstore_alloc::pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    /// use pmstore_alloc::Heap;
    ///
    /// let (mut pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// let (heap, _) = Heap::open(&mut pool)?;
    /// let root = pool.geometry().root_offset;
    /// // SAFETY: one Heap per pool; this thread owns the root word.
    /// unsafe { heap.alloc(&pool, 3 * CHUNK, root)? }; // a span of three chunks
    /// let stats = heap.stats(&pool)?;
    /// assert_eq!((stats.spans, stats.bytes_allocated), (1, 3 * CHUNK));
    /// # Ok(())
    /// # }
    /// ```
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
                    let used = st.bits.as_ref().expect("loaded").used();
                    if used == 0 {
                        s.empty_run_chunks += u64::from(run.class.run_chunks);
                    }
                    s.blocks_per_class[usize::from(run.class.id)] += u64::from(used);
                    s.bytes_allocated += u64::from(used) * run.class.size;
                }
            }
        }
        Ok(s)
    }
}
