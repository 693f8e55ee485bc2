//! The allocator handle ([`Heap`]): volatile state over the on-media heap of `heap.rs`, and the
//! atomic `alloc`/`free` operations, each one redo-log commit (`docs/ALLOC.md` §4–6).
//!
//! Locks and their order (a thread holding one may only take those to its right):
//! arena → run → chunk allocator → a run created under the chunk-allocator lock (uncontended).
//! Lanes are claimed through a flag each (no lock), waiting only while all are claimed.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

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
    arenas: Vec<Mutex<Vec<Vec<Arc<Run>>>>>,
    /// Runs on media that a cancel left empty (a free emptied them while a reservation in them
    /// was outstanding): the next publish first releases them (header := 0) in a commit of
    /// their own, unless they were used again meanwhile.
    release_queue: Mutex<Vec<Arc<Run>>>,
    /// Whether `release_queue` may be non-empty: read on every publish, so that the common
    /// path touches no shared lock (a stale `true` costs one lock; `false` is written only
    /// under the lock, after emptying the queue).
    release_pending: AtomicBool,
}

impl Core {
    /// This thread's arena.
    fn arena(&self) -> MutexGuard<'_, Vec<Vec<Arc<Run>>>> {
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
                    ch.objs.remove(&run.start);
                    ch.add_free(run.start, run.class.run_chunks);
                    return;
                }
                if st.on_media && bits.reserved() == 0 && bits.used() == 0 {
                    lock(&self.release_queue).push(Arc::clone(&run));
                    self.release_pending.store(true, Ordering::Release);
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
    /// assert_eq!(stats.drains, 1); // the commit point; the value is flushed by the next one
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
fn thread_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local!(static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed));
    INDEX.with(|i| *i)
}

/// The items of one publication in one run.
struct Group {
    run: Arc<Run>,
    /// Reserved blocks to publish.
    publish: SmallVec<[u32; 4]>,
    /// Allocated blocks to free, and their offsets.
    free: SmallVec<[u32; 4]>,
    free_offsets: SmallVec<[u64; 4]>,
    /// The publication empties the run: its header is cleared in the same commit. (A cell:
    /// set while the run guards borrow the groups.)
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
                    .map(|_| Mutex::new(vec![Vec::new(); classes]))
                    .collect(),
                release_queue: Mutex::new(Vec::new()),
                release_pending: AtomicBool::new(false),
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
        let mut claim = self.lanes.claim_near(thread_index());
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
    pub fn lane(&self) -> LaneGuard<'_> {
        LaneGuard {
            heap: self,
            lane: self.lanes.claim_near(thread_index()),
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
            lane: self.lanes.try_claim_near(thread_index())?,
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
        // SAFETY: forwarded from the caller (`dest` is its only extra word).
        unsafe { self.publish_inner(pool, None, &mut r, &[], &[(dest, off)], &[], &[], None) }?;
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
        let mut ch = lock(&self.core.chunks);
        let start = loop {
            if let Some(s) = ch.take_free(len) {
                break s;
            }
            if ch.frontier >= self.geo.chunks {
                return Err(AllocError::OutOfSpace { size });
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
        let mut arena = self.core.arena();
        loop {
            if let Some(run) = arena[ci].last().cloned() {
                let mut st = lock(&run.state);
                if st.dead {
                    st.listed = false;
                    arena[ci].pop();
                    continue;
                }
                self.load_bits(pool, &run, &mut st)?;
                let Some(block) = st.bits.as_mut().expect("loaded").reserve() else {
                    st.listed = false;
                    arena[ci].pop();
                    continue;
                };
                drop(st);
                return Ok(Reservation {
                    offset: self.geo.chunk_offset(run.start) + u64::from(block) * c.size,
                    size: c.size,
                    core: Arc::clone(&self.core),
                    kind: Some(ResKind::Block { run, block }),
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
            // SAFETY: a free chunk's bitmap slot is written only by the publication of a run
            // opened there, and these chunks are ours (just taken under the chunk-allocator
            // lock, held).
            unsafe { pool.read(self.geo.bitmap_offset(start), &mut raw) };
            if raw.iter().any(|&b| b != 0) {
                ch.add_free(start, c.run_chunks);
                return Err(Self::corrupt(start, HeapCorruption::FreeBitmap));
            }
            // Volatile only: its header is written by the first publication of one of its
            // blocks (`on_media`).
            let run = Arc::new(Run {
                start,
                class: c,
                state: Mutex::new(RunState {
                    bits: Some(RunBits::empty(c.blocks)),
                    on_media: false,
                    dead: false,
                    listed: true,
                }),
            });
            ch.objs.insert(start, Obj::Run(Arc::clone(&run)));
            drop(ch);
            arena[ci].push(run);
        }
    }

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
    unsafe fn publish_inner(
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
                let invalid = AllocError::InvalidFree { offset };
                let Some(chunk) = self.geo.chunk_of(offset) else {
                    return Err(invalid);
                };
                match self.lookup(pool, &mut ch, chunk)? {
                    Some((start, Obj::Span { len })) if offset == self.geo.chunk_offset(start) => {
                        span_frees.push((start, len, offset));
                    }
                    Some((start, Obj::Run(run))) => {
                        let c = run.class;
                        let rel = offset - self.geo.chunk_offset(start);
                        if rel % c.size != 0 || rel / c.size >= u64::from(c.blocks) {
                            return Err(invalid);
                        }
                        let i = group_of(&mut groups, &run);
                        let g = &mut groups[i];
                        g.free.push((rel / c.size) as u32);
                        g.free_offsets.push(offset);
                    }
                    _ => return Err(invalid),
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
        let mut releases = false;
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
                // The run becomes empty: release its chunks in the same log.
                g.release.set(true);
                releases = true;
                entries.push(RedoEntry::new(self.geo.header_offset(start), 0));
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

        let mut ch = if releases || !span_frees.is_empty() || !span_res.is_empty() {
            let ch = lock(&self.core.chunks);
            for &(start, len, offset) in &span_frees {
                // Another thread may have freed it since the lookup.
                if !matches!(ch.objs.get(&start), Some(Obj::Span { len: l }) if *l == len) {
                    return Err(AllocError::InvalidFree { offset });
                }
            }
            Some(ch)
        } else {
            None
        };

        // SAFETY: the runs' headers and bitmap words are owned by their locks (held, a new
        // run's header too); the headers of reserved spans by their reservations (taken from
        // the free extents); those of freed spans and released runs by the chunk-allocator
        // lock (held); the extra words by the caller. The extension is ours alone: reserved
        // above (so no other thread reserves or writes it), never published.
        unsafe { self.commit(pool, lane, &entries, ranges, ext_region) }?;

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
            }
            if g.release.get() {
                st.dead = true;
                let ch = ch.as_mut().expect("locked for releases");
                ch.objs.remove(&g.run.start);
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
                ch.objs.remove(&start);
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

    /// The publication of ONE block of a run (reserved or freed) with checked words and
    /// ranges and no extension — an `alloc`, a `free`, a transaction that allocated or freed
    /// one object — as the general path of [`Heap::publish_inner`] does it for a single
    /// group (the same entries in the same order, the same checks and volatile updates),
    /// without building groups. `None` if it is not that case (a span; a reservation in a
    /// released run, which cannot happen): nothing was done, the general path takes it.
    ///
    /// # Safety
    /// As [`Heap::publish`].
    unsafe fn publish_one_block(
        &self,
        pool: &Pool,
        lane: Option<&mut Lane>,
        reservations: &mut [Reservation],
        frees: &[u64],
        words: &[(u64, u64)],
        ranges: &[RedoRange<'_>],
    ) -> Option<Result<()>> {
        // The run and block, and for a free its offset.
        let (run, block, freed) = match (&*reservations, frees) {
            ([r], []) => match r.kind.as_ref().expect("unpublished") {
                ResKind::Block { run, block } => (Arc::clone(run), *block, None),
                ResKind::Span { .. } => return None,
            },
            ([], &[offset]) => {
                let invalid = AllocError::InvalidFree { offset };
                let Some(chunk) = self.geo.chunk_of(offset) else {
                    return Some(Err(invalid));
                };
                let found = self.lookup(pool, &mut lock(&self.core.chunks), chunk);
                match found {
                    Err(e) => return Some(Err(e)),
                    Ok(Some((start, Obj::Run(run)))) => {
                        let c = run.class;
                        let rel = offset - self.geo.chunk_offset(start);
                        if rel % c.size != 0 || rel / c.size >= u64::from(c.blocks) {
                            return Some(Err(invalid));
                        }
                        (run, (rel / c.size) as u32, Some(offset))
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
        if let Err(e) = self.load_bits(pool, &run, &mut st) {
            return Some(Err(e));
        }
        let bits = st.bits.as_ref().expect("loaded");
        let (w, bit) = ((block / 64) as usize, 1u64 << (block % 64));
        let mut entries: SmallVec<[RedoEntry; 8]> = SmallVec::new();
        let start = run.start;
        let (word, release) = match freed {
            Some(offset) => {
                if !bits.is_allocated(block) {
                    return Some(Err(AllocError::DoubleFree { offset }));
                }
                // The last allocated block of a run on media, nothing reserved: the run
                // becomes empty and is released in the same log.
                let release = st.on_media && bits.used() == 1 && bits.reserved() == 0;
                (bits.words()[w] & !bit, release)
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
            return Some(Err(e));
        }

        // Committed: update the volatile state.
        let bits = st.bits.as_mut().expect("loaded");
        match freed {
            Some(_) => bits.apply_publish(&[], &[block]),
            None => bits.apply_publish(&[block], &[]),
        }
        let full = bits.is_full();
        if freed.is_none() {
            st.on_media = true;
        }
        let relist = if let Some(ch) = ch.as_mut() {
            st.dead = true;
            ch.objs.remove(&start);
            ch.add_free(start, run.class.run_chunks);
            false
        } else if !st.listed && !full {
            st.listed = true;
            true
        } else {
            false
        };
        if let Some(r) = reservations.first_mut() {
            r.kind = None;
        }
        drop(ch);
        drop(st);
        if relist {
            self.core.arena()[usize::from(run.class.id)].push(run);
        }
        Some(Ok(()))
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
        let cleared = dest.map(|d| (d, 0));
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
        let invalid = AllocError::InvalidFree { offset };
        let chunk = self
            .geo
            .chunk_of(offset)
            .ok_or(AllocError::InvalidFree { offset })?;
        let found = self.lookup(pool, &mut lock(&self.core.chunks), chunk)?;
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
                let live = !st.dead && st.bits.as_ref().expect("loaded").is_allocated(block as u32);
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
        let mut ch = lock(&self.core.chunks);
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
                    s.blocks_per_class[usize::from(run.class.id)] += u64::from(used);
                    s.bytes_allocated += u64::from(used) * run.class.size;
                }
            }
        }
        Ok(s)
    }
}
