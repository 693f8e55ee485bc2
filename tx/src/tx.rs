//! A transaction: private shadow copies of everything it modifies, the locks it holds, its
//! reservations and frees; committed as one redo log (`docs/TX.md`).

use std::cell::{Cell, RefCell};
use std::mem::{align_of, size_of};
use std::ops::Range;

use bytemuck::{Pod, Zeroable};
use pmstore_alloc::redo::RedoRange;
use pmstore_alloc::{AllocError, Reservation};
use pmstore_pool::CACHE_LINE;
use smallvec::SmallVec;

use crate::diff::{diff_lines, diff_words, Ranges};
use crate::locks::LockSet;
use crate::objpool::Pool;
use crate::raw;
use crate::{PPtr, PSlice, Result, TxError};

/// Largest alignment a persistent type may have (shadow buffers are cache-line aligned).
pub const MAX_ALIGN: usize = 64;

/// One cache line of a shadow buffer: 64-byte aligned, so a shadow mirrors the pool's
/// alignment of every byte modulo 64.
#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(C, align(64))]
pub(crate) struct Line(pub(crate) [u8; 64]);

/// A private copy of whole cache lines `[start, start + 64 × lines)` of the pool, where a
/// transaction makes its changes: lines `[first, first + lines)` of the transaction's line
/// arena ([`Tx::lines`]). Commit logs the words that differ from the pool.
#[derive(Clone, Copy, Debug)]
struct Shadow {
    start: u64,
    first: usize,
    lines: usize,
}

impl Shadow {
    fn end(&self) -> u64 {
        self.start + CACHE_LINE * self.lines as u64
    }
    /// Its lines' indexes in the arena.
    fn arena_range(&self) -> Range<usize> {
        self.first..self.first + self.lines
    }
}

/// Shadows and shadow lines a transaction keeps inline (more spill to the heap): a small
/// transaction allocates nothing, and needs no per-thread cache of buffers either.
const INLINE_SHADOWS: usize = 4;
const INLINE_LINES: usize = 8;

/// The cache lines covering `[off, off + len)`.
fn line_bounds(off: u64, len: u64) -> (u64, u64) {
    (
        off & !(CACHE_LINE - 1),
        (off + len).next_multiple_of(CACHE_LINE),
    )
}

/// What one commit logged (see [`Pool::last_commit`](crate::Pool::last_commit)).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use pmstore_tx::{CommitInfo, CreateOptions, PPtr, Pool, TxError};
/// # let dir = tempfile::tempdir()?;
/// # let pool = Pool::create(dir.path().join("doc.pool"), &CreateOptions::new("doc", 8 << 20))?;
/// let root = pool.root::<PPtr<u64>>()?;
/// pool.transaction(|tx| {
///     let p = tx.alloc(5u64)?;
///     *tx.get_mut(root)? = p;
///     Ok::<_, TxError>(())
/// })?;
/// let info: CommitInfo = pool.last_commit();
/// assert_eq!((info.allocs, info.frees), (1, 0));
/// assert!(info.logged);
/// pool.transaction(|_tx| Ok::<_, TxError>(()))?; // changes nothing: logs nothing
/// assert!(!pool.last_commit().logged);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitInfo {
    /// Range entries logged (runs of modified 8-byte words, widened to whole cache lines).
    pub ranges: usize,
    /// Bytes those ranges carry.
    pub range_bytes: u64,
    /// Blocks allocated.
    pub allocs: usize,
    /// Blocks freed.
    pub frees: usize,
    /// Whether a redo log was written at all (a transaction that changed nothing writes none).
    pub logged: bool,
}

/// A transaction on a [`Pool`]. Obtained inside [`Pool::transaction`] (read-write) or
/// [`Pool::read`] (as `&Tx`: read-only).
///
/// * Reads ([`Tx::get`]) take a shared lock on the object and return a reference into the pool,
///   or into this transaction's own pending version of it.
/// * Writes ([`Tx::get_mut`], [`Tx::alloc`]) take an exclusive lock and return a reference
///   into a private **shadow copy**: nothing in the pool changes before commit, so there is no
///   snapshot to forget and nothing to roll back.
/// * Commit writes one redo log holding the modified words of every shadow and the
///   allocator's updates for its allocations and frees, then applies it: all or nothing
///   across crashes, with two drains (one in msync mode, and with cache flushes for a small
///   commit that allocates or frees: deferred apply, `docs/REDO.md` §4).
/// * Locks are held until the transaction ends (strict two-phase locking): transactions are
///   serializable.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use pmstore_tx::{CreateOptions, PPtr, Pool, Tx, TxError};
/// # let dir = tempfile::tempdir()?;
/// # let pool = Pool::create(dir.path().join("doc.pool"), &CreateOptions::new("doc", 8 << 20))?;
/// // Helpers take `&mut Tx` (writes) or `&Tx` (reads) and compose into one transaction.
/// fn push(tx: &mut Tx<'_>, stack: PPtr<[u64; 9]>, v: u64) -> Result<(), TxError> {
///     let s = tx.get_mut(stack)?;
///     let n = s[0] as usize;
///     s[n + 1] = v;
///     s[0] += 1;
///     Ok(())
/// }
/// fn len(tx: &Tx<'_>, stack: PPtr<[u64; 9]>) -> Result<u64, TxError> {
///     Ok(tx.get(stack)?[0])
/// }
///
/// let stack = pool.root::<[u64; 9]>()?;
/// pool.transaction(|tx| {
///     push(tx, stack, 10)?;
///     push(tx, stack, 20)?;
///     assert_eq!(len(tx, stack)?, 2); // reads see the transaction's own writes
///     Ok::<_, TxError>(())
/// })?;
/// assert_eq!(pool.read(|tx| len(tx, stack))?, 2);
/// # Ok(())
/// # }
/// ```
pub struct Tx<'p> {
    pool: &'p Pool,
    locks: RefCell<LockSet>,
    /// Shadows, sorted by `start`, disjoint (no two share a line).
    shadows: SmallVec<[Shadow; INLINE_SHADOWS]>,
    /// The shadows' lines, in no particular order. A shadow that grows is copied to the end;
    /// the lines it leaves behind are reclaimed when they outnumber the lines in use.
    lines: SmallVec<[Line; INLINE_LINES]>,
    /// Read snapshots: copies served by [`Tx::get`] for reads that straddle shadows. Boxes are
    /// only pushed through `&self` and dropped through `&mut self` (or at the end), so a slice
    /// of one stays valid while the `&Tx` it was borrowed from does.
    snapshots: RefCell<Vec<Box<[Line]>>>,
    /// Blocks reserved by this transaction, published at commit. A `Vec` because the
    /// allocator's publication takes one; its buffer is borrowed from [`ALLOCS_BUF`] at the first
    /// allocation and given back at the end, so that a transaction that allocates does not
    /// also allocate and free this buffer in the process heap.
    allocs: Vec<Reservation>,
    /// Blocks reserved and then freed by this transaction: cancelled when it ends (not
    /// before: a cancelled block could be reserved by another transaction while a shadow of
    /// ours still covers it).
    dead_allocs: Vec<Reservation>,
    /// Offsets of the published blocks freed by this transaction (as the allocator takes
    /// them), and their usable sizes (same order).
    frees: SmallVec<[u64; 2]>,
    free_sizes: SmallVec<[u64; 2]>,
    /// A lock could not be acquired: the transaction must be retried.
    conflict: Cell<bool>,
    /// A nested transaction failed: the whole transaction aborts.
    failed: Cell<bool>,
    writable: bool,
    /// `!Send`: a transaction's stores (non-temporal ones included) must be issued by the
    /// thread whose drains order them, the thread that commits.
    _not_send: std::marker::PhantomData<*const ()>,
}

impl std::fmt::Debug for Tx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx")
            .field("shadows", &self.shadows.len())
            .field("allocs", &self.allocs.len())
            .field("frees", &self.frees.len())
            .field("locks", &self.locks.borrow().len())
            .finish_non_exhaustive()
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        // Abort (or the end of a commit): nothing persistent to undo. Reservations cancel
        // themselves when dropped, which must happen before the locks go (a cancelled block may
        // be handed out at once, and no one may see it while we could still write it: we never
        // write after this point, so the order only matters for clarity).
        self.allocs.clear();
        self.dead_allocs.clear();
        self.locks.get_mut().release_all(self.pool.lock_table());
        if self.allocs.capacity() != 0 {
            let buf = std::mem::take(&mut self.allocs);
            // (During thread teardown the cache may be gone: the buffer is then just freed.)
            let _ = ALLOCS_BUF.try_with(|c| c.set(buf));
        }
    }
}

thread_local! {
    /// An empty buffer for [`Tx::allocs`], kept between this thread's transactions.
    static ALLOCS_BUF: Cell<Vec<Reservation>> = const { Cell::new(Vec::new()) };
}

impl<'p> Tx<'p> {
    #[inline] // (built in place: a `Tx` is large, its inline buffers included)
    pub(crate) fn new(pool: &'p Pool, writable: bool) -> Tx<'p> {
        Tx {
            pool,
            locks: RefCell::new(LockSet::new()),
            shadows: SmallVec::new(),
            lines: SmallVec::new(),
            snapshots: RefCell::new(Vec::new()),
            allocs: Vec::new(),
            dead_allocs: Vec::new(),
            frees: SmallVec::new(),
            free_sizes: SmallVec::new(),
            conflict: Cell::new(false),
            failed: Cell::new(false),
            writable,
            _not_send: std::marker::PhantomData,
        }
    }

    /// Whether a lock conflict occurred (the transaction must be retried).
    pub(crate) fn conflicted(&self) -> bool {
        self.conflict.get()
    }

    /// Whether a nested transaction failed.
    pub(crate) fn failed(&self) -> bool {
        self.failed.get()
    }

    fn conflict(&self) -> TxError {
        self.conflict.set(true);
        TxError::Conflict
    }

    /// Checks a pointer to an object of `T`: not null, aligned, inside the object regions,
    /// not freed in this transaction. Returns `(offset, len)`.
    fn check<T>(&self, p: PPtr<T>) -> Result<(u64, u64)> {
        let len = size_of::<T>() as u64;
        self.check_range(p.offset(), len, align_of::<T>())?;
        Ok((p.offset(), len))
    }

    /// Checks `len` bytes at `off` holding values aligned to `align` (see [`Tx::check`]).
    #[inline]
    fn check_range(&self, off: u64, len: u64, align: usize) -> Result<()> {
        if off == 0 {
            return Err(TxError::Null);
        }
        if align > MAX_ALIGN || off % align as u64 != 0 {
            return Err(TxError::Misaligned { offset: off, align });
        }
        if len == 0 || !self.pool.in_objects(off, len) {
            return Err(TxError::InvalidPointer { offset: off, len });
        }
        if self.frees.is_empty() && self.dead_allocs.is_empty() {
            return Ok(()); // (always in a read-only transaction)
        }
        self.check_not_freed(off, len)
    }

    /// Checks a slice; returns its byte length (0 for an empty slice, which needs no checks).
    fn check_slice<T>(&self, s: PSlice<T>) -> Result<u64> {
        let len = s
            .len()
            .checked_mul(size_of::<T>() as u64)
            .ok_or(TxError::InvalidPointer {
                offset: s.offset(),
                len: u64::MAX,
            })?;
        if len == 0 {
            return Ok(0);
        }
        self.check_range(s.offset(), len, align_of::<T>())?;
        Ok(len)
    }

    fn check_not_freed(&self, off: u64, len: u64) -> Result<()> {
        let hit = |(o, s): (u64, u64)| off < o + s && o < off + len;
        if self
            .frees
            .iter()
            .copied()
            .zip(self.free_sizes.iter().copied())
            .any(hit)
            || self.dead_allocs.iter().any(|r| hit((r.offset(), r.size())))
        {
            return Err(TxError::UseAfterFree { offset: off });
        }
        Ok(())
    }

    fn check_writable(&self) -> Result<()> {
        if !self.writable {
            return Err(TxError::ReadOnly);
        }
        Ok(())
    }

    /// The bytes of shadow `s` (one of this transaction's).
    fn shadow_bytes(&self, s: &Shadow) -> &[u8] {
        bytemuck::cast_slice(&self.lines[s.arena_range()])
    }

    /// Index of the shadow that contains lines `[ls, le)`, if any.
    fn containing(&self, ls: u64, le: u64) -> Option<usize> {
        let i = self.shadows.partition_point(|s| s.start <= ls);
        let i = i.checked_sub(1)?;
        (self.shadows[i].end() >= le).then_some(i)
    }

    /// Indexes of the shadows that intersect lines `[ls, le)`.
    fn overlapping(&self, ls: u64, le: u64) -> std::ops::Range<usize> {
        let first = self.shadows.partition_point(|s| s.end() <= ls);
        let end = self.shadows.partition_point(|s| s.start < le);
        first..end.max(first)
    }

    /// Reads the object `p` points to: this transaction's pending version if it modified it,
    /// else the pool's (after taking a shared lock on it, held until the transaction ends).
    ///
    /// # Errors
    /// [`TxError::Null`], [`TxError::Misaligned`], [`TxError::InvalidPointer`] (not inside the
    /// heap's object region), [`TxError::UseAfterFree`],
    /// [`TxError::Conflict`] (the transaction is then retried by
    /// [`Pool::transaction`]: just return the error, e.g. with `?`).
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_tx::{CreateOptions, PPtr, Pool, TxError};
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(dir.path().join("doc.pool"), &CreateOptions::new("doc", 8 << 20))?;
    /// let root = pool.root::<[u64; 2]>()?;
    /// pool.transaction(|tx| {
    ///     assert_eq!(*tx.get(root)?, [0, 0]);
    ///     tx.get_mut(root)?[1] = 9;
    ///     assert_eq!(*tx.get(root)?, [0, 9]); // its own pending version
    ///     Ok::<_, TxError>(())
    /// })?;
    /// let odd = PPtr::<u64>::from_offset(root.offset() + 4);
    /// let r = pool.read(|tx| tx.get(odd).copied());
    /// assert!(matches!(r, Err(TxError::Misaligned { align: 8, .. })));
    /// # Ok(())
    /// # }
    /// ```
    pub fn get<T: Pod>(&self, p: PPtr<T>) -> Result<&T> {
        let (off, len) = self.check(p)?;
        Ok(bytemuck::from_bytes(self.read_bytes_at(off, len)?))
    }

    /// Reads a slice: as [`Tx::get`] for its elements (one lock acquisition for the range).
    ///
    /// # Errors
    /// As [`Tx::get`].
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_tx::{CreateOptions, PSlice, Pool, TxError};
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(dir.path().join("doc.pool"), &CreateOptions::new("doc", 8 << 20))?;
    /// let s = pool.transaction(|tx| tx.alloc_slice(b"hello"))?;
    /// let text = pool.read(|tx| Ok::<_, TxError>(tx.get_slice(s)?.to_vec()))?;
    /// assert_eq!(text, b"hello");
    /// let empty = pool.read(|tx| Ok::<_, TxError>(tx.get_slice(PSlice::<u8>::EMPTY)?.len()))?;
    /// assert_eq!(empty, 0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn get_slice<T: Pod>(&self, s: PSlice<T>) -> Result<&[T]> {
        let len = self.check_slice(s)?;
        if len == 0 {
            return Ok(&[]);
        }
        Ok(bytemuck::cast_slice(self.read_bytes_at(s.offset(), len)?))
    }

    /// A mutable view of a slice in this transaction's shadow: as [`Tx::get_mut`].
    ///
    /// # Errors
    /// As [`Tx::get_mut`].
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_tx::{CreateOptions, Pool, TxError};
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(dir.path().join("doc.pool"), &CreateOptions::new("doc", 8 << 20))?;
    /// let s = pool.transaction(|tx| tx.alloc_slice(&[3u32, 1, 2]))?;
    /// pool.transaction(|tx| {
    ///     tx.get_slice_mut(s)?.sort();
    ///     Ok::<_, TxError>(())
    /// })?;
    /// assert_eq!(pool.read(|tx| Ok::<_, TxError>(tx.get_slice(s)?.to_vec()))?, [1, 2, 3]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn get_slice_mut<T: Pod>(&mut self, s: PSlice<T>) -> Result<&mut [T]> {
        self.check_writable()?;
        let len = self.check_slice(s)?;
        if len == 0 {
            return Ok(&mut []);
        }
        Ok(bytemuck::cast_slice_mut(self.shadow_mut(s.offset(), len)?))
    }

    /// The bytes `[off, off + len)` (checked by the caller) as this transaction sees them.
    #[inline]
    fn read_bytes_at(&self, off: u64, len: u64) -> Result<&[u8]> {
        if self.shadows.is_empty() {
            // (Every read of a read-only transaction: nothing to look up.)
            return self.pool_bytes_shared(off, len);
        }
        let (ls, le) = line_bounds(off, len);
        if let Some(i) = self.containing(ls, le) {
            let s = &self.shadows[i];
            let at = (off - s.start) as usize;
            return Ok(&self.shadow_bytes(s)[at..at + len as usize]);
        }
        let table = self.pool.lock_table();
        let overlap = self.overlapping(ls, le);
        if !overlap.is_empty() {
            // The bytes straddle this transaction's shadows: a snapshot composed of the pool's
            // lines (under a shared lock; the shadowed stripes are ours already) overlaid with
            // the shadows.
            self.locks
                .borrow_mut()
                .lock_shared(table, ls, le - ls)
                .map_err(|_| self.conflict())?;
            let mut buf =
                vec![Line::zeroed(); ((le - ls) / CACHE_LINE) as usize].into_boxed_slice();
            let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut buf);
            // SAFETY: we hold at least a shared lock on every stripe covering [ls, le), so no
            // other thread writes those bytes.
            unsafe { raw::read_bytes(self.pool.raw(), ls, bytes) };
            for sh in &self.shadows[overlap] {
                let (a, b) = (sh.start.max(ls), sh.end().min(le));
                bytes[(a - ls) as usize..(b - ls) as usize].copy_from_slice(
                    &self.shadow_bytes(sh)[(a - sh.start) as usize..(b - sh.start) as usize],
                );
            }
            let mut snaps = self.snapshots.borrow_mut();
            snaps.push(buf);
            // SAFETY: the box just pushed is never mutated, moved out of or dropped while `&self`
            // borrows live: the arena only grows through `&self`, and is cleared only through
            // `&mut self` (`shadow_mut`) or when the transaction is dropped, which end every
            // borrow of `self` (the returned slice borrows `self`).
            let lines = unsafe { raw::detach(&snaps[snaps.len() - 1]) };
            drop(snaps);
            let at = (off - ls) as usize;
            return Ok(&bytemuck::cast_slice(lines)[at..at + len as usize]);
        }
        self.pool_bytes_shared(off, len)
    }

    /// The pool's bytes `[off, off + len)` (checked by the caller, outside every shadow of this
    /// transaction), under a shared lock.
    #[inline]
    fn pool_bytes_shared(&self, off: u64, len: u64) -> Result<&[u8]> {
        let table = self.pool.lock_table();
        self.locks
            .borrow_mut()
            .lock_shared(table, off, len)
            .map_err(|_| self.conflict())?;
        // SAFETY: `off`/`len` were checked to lie in the pool (object regions or the root
        // entry). We now hold a shared lock on every stripe covering the range until this
        // transaction ends (`Drop` releases it), and every writer of object bytes — another
        // transaction's commit — holds an exclusive lock on them while it writes; this
        // transaction's own writes happen at commit, which takes `&mut self`, so after
        // every reference returned here is gone.
        Ok(unsafe { raw::pool_bytes(self.pool.raw(), off, len) })
    }

    /// A mutable reference to a private copy of the object `p` points to, taken under an
    /// exclusive lock (held until the transaction ends): the transaction's pending version of
    /// it, which [`Tx::get`] also returns from now on. Commit makes it durable, atomically with
    /// everything else the transaction does; an abort discards it. Only the 8-byte words that
    /// differ from the pool at commit are logged and written, each widened to its whole cache
    /// line, so a whole-object `get_mut` that changes one field costs that field's line(s).
    ///
    /// # Errors
    /// As [`Tx::get`], and [`TxError::ReadOnly`] in [`Pool::read`] or on a read-only pool.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_tx::{pfield, CreateOptions, Pool, TxError};
    /// use bytemuck::{Pod, Zeroable};
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(dir.path().join("doc.pool"), &CreateOptions::new("doc", 8 << 20))?;
    /// #[derive(Clone, Copy, Pod, Zeroable)]
    /// #[repr(C)]
    /// struct Account { id: u64, balance: u64 }
    ///
    /// let acct = pool.root::<Account>()?;
    /// pool.transaction(|tx| {
    ///     *tx.get_mut(pfield!(acct, Account, balance))? += 50; // locks and copies the field only
    ///     let a = tx.get_mut(acct)?; // the whole object: sees the pending balance
    ///     a.id = 7;
    ///     assert_eq!(a.balance, 50);
    ///     Ok::<_, TxError>(())
    /// })?;
    /// let a = pool.read(|tx| tx.get(acct).copied())?;
    /// assert_eq!((a.id, a.balance), (7, 50));
    /// # Ok(())
    /// # }
    /// ```
    pub fn get_mut<T: Pod>(&mut self, p: PPtr<T>) -> Result<&mut T> {
        self.check_writable()?;
        let (off, len) = self.check(p)?;
        let bytes = self.shadow_mut(off, len)?;
        Ok(bytemuck::from_bytes_mut(bytes))
    }

    /// [`Tx::get_mut`] without the pointer checks (offset and alignment already checked).
    pub(crate) fn write_at<T: Pod>(&mut self, off: u64) -> Result<&mut T> {
        self.check_writable()?;
        let bytes = self.shadow_mut(off, size_of::<T>() as u64)?;
        Ok(bytemuck::from_bytes_mut(bytes))
    }

    /// [`Tx::get`] of a checked internal offset (the root entry).
    pub(crate) fn read_internal<T: Pod>(&self, off: u64) -> Result<&T> {
        Ok(bytemuck::from_bytes(
            self.read_bytes_at(off, size_of::<T>() as u64)?,
        ))
    }

    /// The shadow bytes of `[off, off + len)`, making (or widening) a shadow under an
    /// exclusive lock if needed.
    fn shadow_mut(&mut self, off: u64, len: u64) -> Result<&mut [u8]> {
        // `&mut self`: no snapshot is borrowed any more.
        self.snapshots.get_mut().clear();
        let (ls, le) = line_bounds(off, len);
        if self.shadows.is_empty() {
            return self.first_shadow(off, len);
        }
        let i = match self.containing(ls, le) {
            Some(i) => i,
            None => {
                self.lock_for_write(off, len)?;
                // Stripes are 256-byte aligned, so the stripes of `[off, off + len)` cover its
                // whole lines: every line of the new shadow is under an exclusive lock of ours
                // (the lines of the shadows it absorbs were locked when they were made).
                let r = self.overlapping(ls, le);
                let start = r
                    .clone()
                    .next()
                    .map_or(ls, |j| self.shadows[j].start.min(ls));
                let end = r
                    .clone()
                    .last()
                    .map_or(le, |j| self.shadows[j].end().max(le));
                let first = self.lines.len();
                let n = ((end - start) / CACHE_LINE) as usize;
                // Every line of [start, end) is under an exclusive lock of ours (above).
                self.push_pool_lines(start, end);
                // The shadows it absorbs hold this transaction's pending versions of their lines.
                for j in r.clone() {
                    let old = self.shadows[j];
                    let at = first + ((old.start - start) / CACHE_LINE) as usize;
                    self.lines.copy_within(old.arena_range(), at);
                }
                let new = Shadow {
                    start,
                    first,
                    lines: n,
                };
                if r.is_empty() {
                    self.shadows.insert(r.start, new);
                } else {
                    self.shadows[r.start] = new;
                    self.shadows.drain(r.start + 1..r.end);
                    self.reclaim_lines();
                }
                r.start
            }
        };
        let s = self.shadows[i];
        let at = (off - s.start) as usize;
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut self.lines[s.arena_range()]);
        Ok(&mut bytes[at..at + len as usize])
    }

    /// [`Tx::shadow_mut`] when this transaction has no shadow yet (its first write, often its
    /// only one): nothing to look up or absorb, so a shadow of the lines made straight away.
    #[inline]
    fn first_shadow(&mut self, off: u64, len: u64) -> Result<&mut [u8]> {
        let (ls, le) = line_bounds(off, len);
        self.lock_for_write(off, len)?;
        // (No shadow, so no line in use: the arena is empty, as it starts.)
        debug_assert!(self.lines.is_empty());
        self.lines.clear();
        self.push_pool_lines(ls, le);
        let n = self.lines.len();
        self.shadows.push(Shadow {
            start: ls,
            first: 0,
            lines: n,
        });
        let at = (off - ls) as usize;
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut self.lines[..]);
        Ok(&mut bytes[at..at + len as usize])
    }

    /// Takes exclusive locks on the stripes of `[off, off + len)` (stripes are 256-byte
    /// aligned, so they cover the bytes' whole lines), or marks the transaction conflicted
    /// (its closure runs again).
    #[inline(always)]
    fn lock_for_write(&mut self, off: u64, len: u64) -> Result<()> {
        let table = self.pool.lock_table();
        if self
            .locks
            .get_mut()
            .lock_exclusive(table, off, len)
            .is_err()
        {
            return Err(self.conflict());
        }
        Ok(())
    }

    /// Appends the pool's lines `[start, end)` (whole lines, inside the pool, each under an
    /// exclusive lock of this transaction: [`Tx::lock_for_write`]) to the line arena.
    #[inline(always)]
    fn push_pool_lines(&mut self, start: u64, end: u64) {
        // SAFETY: [start, end) lies in the pool (whole lines around checked bytes), and every
        // byte of it is covered by stripes this transaction holds exclusively (the caller's
        // contract above), so no other thread writes them; the slice is only used for the copy.
        let src = unsafe { raw::pool_bytes(self.pool.raw(), start, end - start) };
        match bytemuck::try_cast_slice::<u8, Line>(src) {
            // (Line by line: fewer instructions than `extend_from_slice` for a few.)
            Ok(src) if src.len() <= INLINE_LINES => {
                for line in src {
                    self.lines.push(*line);
                }
            }
            Ok(src) => self.lines.extend_from_slice(src),
            // (The mapping is page-aligned, so this is not expected.)
            Err(_) => {
                let first = self.lines.len();
                self.lines.resize(first + src.len() / 64, Line::zeroed());
                bytemuck::cast_slice_mut(&mut self.lines[first..]).copy_from_slice(src);
            }
        }
    }

    /// Compacts the line arena once the lines of absorbed shadows outnumber the lines in use
    /// (so that a shadow growing one line at a time keeps the arena within twice its size).
    fn reclaim_lines(&mut self) {
        let live: usize = self.shadows.iter().map(|s| s.lines).sum();
        if self.lines.len() <= 2 * live {
            return;
        }
        let mut lines = SmallVec::with_capacity(live);
        for s in &mut self.shadows {
            let first = lines.len();
            lines.extend_from_slice(&self.lines[s.arena_range()]);
            s.first = first;
        }
        self.lines = lines;
    }

    /// Allocates a block for a `T`, initialised to `value`, and returns a pointer to it. The
    /// block exists only in this transaction until commit (which publishes it atomically with
    /// the rest); an abort releases it. Blocks of 64 bytes or more are cache-line aligned.
    /// A new block's contents are logged whole with the rest of the transaction.
    ///
    /// # Errors
    /// [`TxError::Alloc`] with [`AllocError::OutOfSpace`] or [`AllocError::TooLarge`];
    /// [`TxError::Misaligned`] for a type aligned to more than 64 bytes; [`TxError::Conflict`];
    /// [`TxError::ReadOnly`].
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_tx::{CreateOptions, PPtr, Pool, TxError};
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(dir.path().join("doc.pool"), &CreateOptions::new("doc", 8 << 20))?;
    /// let root = pool.root::<PPtr<[u64; 8]>>()?;
    /// pool.transaction(|tx| {
    ///     let block = tx.alloc([7u64; 8])?;
    ///     assert_eq!(block.offset() % 64, 0); // 64 bytes or more: cache-line aligned
    ///     *tx.get_mut(root)? = block; // keep it reachable
    ///     Ok::<_, TxError>(())
    /// })?;
    /// let block = pool.read(|tx| tx.get(root).copied())?;
    /// assert_eq!(pool.read(|tx| tx.get(block).copied())?, [7; 8]);
    /// // An aborted transaction's allocation is released.
    /// let before = pool.heap().stats(pool.raw())?.bytes_allocated;
    /// let r = pool.transaction(|tx| {
    ///     tx.alloc([0u64; 8])?;
    ///     Err::<(), _>(TxError::Null) // any error aborts
    /// });
    /// assert!(r.is_err());
    /// assert_eq!(pool.heap().stats(pool.raw())?.bytes_allocated, before);
    /// # Ok(())
    /// # }
    /// ```
    pub fn alloc<T: Pod>(&mut self, value: T) -> Result<PPtr<T>> {
        let off = self.alloc_bytes(size_of::<T>() as u64, align_of::<T>(), |b| {
            b.copy_from_slice(bytemuck::bytes_of(&value))
        })?;
        Ok(PPtr::from_offset(off))
    }

    /// [`Tx::alloc`] of an all-zero `T`.
    ///
    /// # Errors
    /// As [`Tx::alloc`].
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_tx::{CreateOptions, Pool, TxError};
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(dir.path().join("doc.pool"), &CreateOptions::new("doc", 8 << 20))?;
    /// let p = pool.transaction(|tx| tx.alloc_zeroed::<[u32; 16]>())?;
    /// assert_eq!(pool.read(|tx| tx.get(p).copied())?, [0; 16]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn alloc_zeroed<T: Pod>(&mut self) -> Result<PPtr<T>> {
        self.alloc(T::zeroed())
    }

    /// Allocates a slice initialised with a copy of `data` (as [`Tx::alloc`]). An empty
    /// `data` gives [`PSlice::EMPTY`] and allocates nothing.
    ///
    /// # Errors
    /// As [`Tx::alloc`].
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_tx::{CreateOptions, PSlice, Pool, TxError};
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(dir.path().join("doc.pool"), &CreateOptions::new("doc", 8 << 20))?;
    /// let (s, empty) = pool.transaction(|tx| Ok::<_, TxError>((tx.alloc_slice(&[1u16, 2, 3])?, tx.alloc_slice::<u16>(&[])?)))?;
    /// assert_eq!(s.len(), 3);
    /// assert_eq!(empty, PSlice::EMPTY); // nothing allocated
    /// assert_eq!(pool.read(|tx| Ok::<_, TxError>(tx.get_slice(s)?.to_vec()))?, [1, 2, 3]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn alloc_slice<T: Pod>(&mut self, data: &[T]) -> Result<PSlice<T>> {
        if data.is_empty() {
            return Ok(PSlice::EMPTY);
        }
        let len = std::mem::size_of_val(data) as u64;
        let off = self.alloc_bytes(len, align_of::<T>(), |b| {
            b.copy_from_slice(bytemuck::cast_slice(data))
        })?;
        Ok(PSlice::from_raw_parts(off, data.len() as u64))
    }

    /// Allocates a slice of `len` all-zero elements (as [`Tx::alloc`]).
    ///
    /// # Errors
    /// As [`Tx::alloc`]; [`TxError::Alloc`] with [`AllocError::TooLarge`] if the byte size
    /// overflows.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_tx::{CreateOptions, Pool, TxError};
    /// use pmstore_tx::alloc::AllocError;
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(dir.path().join("doc.pool"), &CreateOptions::new("doc", 8 << 20))?;
    /// let s = pool.transaction(|tx| tx.alloc_slice_zeroed::<u64>(1000))?;
    /// assert!(pool.read(|tx| Ok::<_, TxError>(tx.get_slice(s)?.iter().all(|&x| x == 0)))?);
    /// let huge = pool.transaction(|tx| tx.alloc_slice_zeroed::<u64>(u64::MAX));
    /// assert!(matches!(huge, Err(TxError::Alloc(AllocError::TooLarge { .. }))));
    /// # Ok(())
    /// # }
    /// ```
    pub fn alloc_slice_zeroed<T: Pod>(&mut self, len: u64) -> Result<PSlice<T>> {
        if len == 0 {
            return Ok(PSlice::EMPTY);
        }
        let bytes = len
            .checked_mul(size_of::<T>() as u64)
            .ok_or(TxError::Alloc(AllocError::TooLarge { size: u64::MAX }))?;
        let off = self.alloc_bytes(bytes, align_of::<T>(), |b| b.fill(0))?;
        Ok(PSlice::from_raw_parts(off, len))
    }

    /// Reserves a block of `len` bytes aligned to `align`, locks it, gives it a shadow and
    /// lets `init` fill the shadow (exactly `len` bytes). Returns its offset.
    fn alloc_bytes(&mut self, len: u64, align: usize, init: impl FnOnce(&mut [u8])) -> Result<u64> {
        self.check_writable()?;
        if align > MAX_ALIGN {
            return Err(TxError::Misaligned { offset: 0, align });
        }
        let r = self.pool.heap().reserve(self.pool.raw(), len.max(1))?;
        let (off, size) = (r.offset(), r.size());
        debug_assert_eq!(off % align as u64, 0, "blocks are aligned");
        if self.allocs.capacity() == 0 {
            self.allocs = ALLOCS_BUF.try_with(Cell::take).unwrap_or_default();
        }
        self.allocs.push(r);
        if len > 0 {
            init(self.fresh_shadow(off, len, size)?);
        }
        Ok(off)
    }

    /// [`Tx::shadow_mut`] of `[off, off + len)` in a block this transaction just reserved, of
    /// usable size `size`. When the block covers the range's cache lines whole (blocks of
    /// 64 bytes or more are 64-aligned with sizes multiple of 64) and no shadow of ours
    /// touches them, the new shadow's lines are zero-filled rather than copied from the pool:
    /// the block's old contents are meaningless (the transaction fills `len` bytes, and the
    /// commit logs the block's lines whole from the shadow, never comparing them with the
    /// pool), and the copy would read lines of a cold block. Blocks of the small classes
    /// (16/32/48 bytes) share lines with other blocks, whose bytes the shadow must hold: they
    /// take the general path.
    fn fresh_shadow(&mut self, off: u64, len: u64, size: u64) -> Result<&mut [u8]> {
        let (ls, le) = line_bounds(off, len);
        if ls != off || le > off + size || !self.overlapping(ls, le).is_empty() {
            return self.shadow_mut(off, len);
        }
        // `&mut self`: no snapshot is borrowed any more.
        self.snapshots.get_mut().clear();
        // The block's lines are locked like every line the transaction writes.
        self.lock_for_write(off, len)?;
        let i = self.shadows.partition_point(|s| s.start < ls);
        let first = self.lines.len();
        let n = ((le - ls) / CACHE_LINE) as usize;
        // (Pushing a few lines is cheaper than `SmallVec::resize`: `tx_alloc_free` 7,181
        // against 7,228 instructions per pair.)
        if n <= INLINE_LINES {
            for _ in 0..n {
                self.lines.push(Line::zeroed());
            }
        } else {
            self.lines.resize(first + n, Line::zeroed());
        }
        self.shadows.insert(
            i,
            Shadow {
                start: ls,
                first,
                lines: n,
            },
        );
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut self.lines[first..first + n]);
        Ok(&mut bytes[..len as usize])
    }

    /// Frees the slice's block (as [`Tx::free`]); freeing [`PSlice::EMPTY`] does nothing.
    ///
    /// # Errors
    /// As [`Tx::free`].
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_tx::{CreateOptions, PSlice, Pool, TxError};
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(dir.path().join("doc.pool"), &CreateOptions::new("doc", 8 << 20))?;
    /// let s = pool.transaction(|tx| tx.alloc_slice(&[1u64; 32]))?;
    /// pool.transaction(|tx| {
    ///     tx.free_slice(s)?;
    ///     tx.free_slice(PSlice::<u64>::EMPTY) // does nothing
    /// })?;
    /// assert_eq!(pool.heap().stats(pool.raw())?.bytes_allocated, 0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn free_slice<T>(&mut self, s: PSlice<T>) -> Result<()> {
        if s.is_empty() && s.offset() == 0 {
            return Ok(());
        }
        self.free(s.as_ptr())
    }

    /// Frees the block `p` points to (allocated earlier, in this transaction or a committed
    /// one) at commit, atomically with the rest of the transaction; an abort leaves it
    /// allocated. Using it later in this transaction is an error
    /// ([`TxError::UseAfterFree`]).
    ///
    /// # Errors
    /// [`TxError::Null`]; [`TxError::Alloc`] with [`AllocError::InvalidFree`] if `p` is not the
    /// start of a live block (a double free across transactions is reported at commit as
    /// [`AllocError::DoubleFree`]); [`TxError::DoubleFree`] within this transaction;
    /// [`TxError::Conflict`]; [`TxError::ReadOnly`].
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_tx::{CreateOptions, Pool, TxError};
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(dir.path().join("doc.pool"), &CreateOptions::new("doc", 8 << 20))?;
    /// let p = pool.transaction(|tx| tx.alloc(1u64))?;
    /// pool.transaction(|tx| {
    ///     tx.free(p)?;
    ///     assert!(matches!(tx.get(p), Err(TxError::UseAfterFree { .. })));
    ///     assert!(matches!(tx.free(p), Err(TxError::DoubleFree { .. })));
    ///     Ok::<_, TxError>(())
    /// })?;
    /// assert_eq!(pool.last_commit().frees, 1);
    /// # Ok(())
    /// # }
    /// ```
    pub fn free<T>(&mut self, p: PPtr<T>) -> Result<()> {
        self.check_writable()?;
        if p.is_null() {
            return Err(TxError::Null);
        }
        let off = p.offset();
        if let Some(i) = self.allocs.iter().position(|r| r.offset() == off) {
            let r = self.allocs.swap_remove(i);
            self.dead_allocs.push(r);
            return Ok(());
        }
        if self.frees.contains(&off) || self.dead_allocs.iter().any(|r| r.offset() == off) {
            return Err(TxError::DoubleFree { offset: off });
        }
        let size = self.pool.heap().usable_size(self.pool.raw(), off)?;
        self.lock_for_write(off, size)?;
        self.frees.push(off);
        self.free_sizes.push(size);
        Ok(())
    }

    /// Runs `f` as a nested transaction: flattened into this one (same locks, same shadows,
    /// same commit). If `f` fails, the whole transaction aborts, even if the outer closure goes
    /// on and returns `Ok` (the outer transaction then fails with [`TxError::Aborted`]).
    ///
    /// # Errors
    /// Whatever `f` returns.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_tx::{CreateOptions, Pool, TxError};
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(dir.path().join("doc.pool"), &CreateOptions::new("doc", 8 << 20))?;
    /// let root = pool.root::<[u64; 2]>()?;
    /// let r = pool.transaction(|tx| {
    ///     tx.get_mut(root)?[0] = 1;
    ///     let inner = tx.nested(|tx| {
    ///         tx.get_mut(root)?[1] = 2;
    ///         Err::<(), _>(TxError::Null) // the nested transaction fails...
    ///     });
    ///     assert!(inner.is_err());
    ///     Ok::<_, TxError>(()) // ...so the whole one aborts, even on `Ok`
    /// });
    /// assert!(matches!(r, Err(TxError::Aborted)));
    /// assert_eq!(pool.read(|tx| tx.get(root).copied())?, [0, 0]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn nested<R, E>(&mut self, f: impl FnOnce(&mut Tx<'p>) -> Result<R, E>) -> Result<R, E> {
        let r = f(self);
        if r.is_err() {
            self.failed.set(true);
        }
        r
    }

    /// Commits: logs every modified word of every shadow (runs of changed 8-byte words; runs
    /// less than 16 bytes apart are merged), the allocations and the frees in one redo log,
    /// and applies it (`Heap::publish_ranges_with`: two drains). The caller drops the
    /// transaction afterwards, which releases its locks (after the commit's writes).
    pub(crate) fn commit(&mut self) -> Result<CommitInfo> {
        let mut info = CommitInfo {
            allocs: self.allocs.len(),
            frees: self.frees.len(),
            ..CommitInfo::default()
        };
        if self.shadows.is_empty() && self.allocs.is_empty() && self.frees.is_empty() {
            return Ok(info);
        }
        let pool = self.pool;
        let raw = pool.raw();
        // Bytes that must not be written: blocks freed by this transaction.
        let frees = || {
            self.frees
                .iter()
                .copied()
                .zip(self.free_sizes.iter().copied())
        };
        let dead_allocs = &self.dead_allocs;
        let overlaps_dead = |s: &Shadow| {
            let hit = |o: u64, n: u64| o < s.end() && s.start < o + n;
            frees().any(|(o, n)| hit(o, n)) || dead_allocs.iter().any(|r| hit(r.offset(), r.size()))
        };

        // Blocks allocated by this transaction (`fresh`): logged whole (not diffed), so the
        // log alone carries everything the transaction writes and its checksum covers it.
        // (Writing new blocks directly before the commit point would save the log bytes, but a
        // crash image may hold the complete log without the block's lines: tests/tx_crash.rs.)
        let fresh = &self.allocs[..];

        // Runs of words to log: changed words of existing objects and every word of new
        // blocks; runs less than 16 bytes apart are merged, but never across a freed block's
        // words (the log must not carry them: the block may be reused at once). Then every run
        // is widened to whole cache lines (up to a freed word), so that both the log and the
        // apply write whole lines with non-temporal stores: a drain after those completes
        // much sooner than after `clwb` of a partial line (tx_update_8B: ~650 -> ~500 ns). The
        // extra bytes are the lines' current contents, under this transaction's exclusive
        // locks (stripes cover whole lines), so rewriting them changes nothing.
        // Inline vector: a heap allocation per commit for it was ~6% of a small transaction's
        // instructions.
        let mut ranges: Ranges<'_> = SmallVec::new();
        for s in &self.shadows {
            let mine = &self.lines[s.arena_range()];
            // A shadow inside a new block (as `fresh_shadow` makes them) is logged whole, as
            // `diff_lines` would, without reading the pool's lines (no freed block overlaps a
            // reserved one).
            if fresh
                .iter()
                .any(|r| r.offset() <= s.start && s.end() <= r.offset() + r.size())
            {
                ranges.push(RedoRange {
                    target: s.start,
                    data: bytemuck::cast_slice(mine),
                });
                continue;
            }
            // SAFETY: the shadow's lines lie in the pool and are under exclusive locks of this
            // transaction (taken when the shadow was made), so no other thread writes them;
            // this transaction writes them only when it publishes below, after the last use of
            // this slice.
            let current = unsafe { raw::pool_bytes(raw, s.start, CACHE_LINE * s.lines as u64) };
            if overlaps_dead(s) {
                let dead: Vec<(u64, u64)> = frees()
                    .chain(dead_allocs.iter().map(|r| (r.offset(), r.size())))
                    .collect();
                let bytes = bytemuck::cast_slice(mine);
                diff_words(s.start, bytes, current, &dead, fresh, &mut ranges);
            } else {
                diff_lines(s.start, mine, current, fresh, &mut ranges);
            }
        }
        info.ranges = ranges.len();
        info.range_bytes = ranges.iter().map(|r| r.data.len() as u64).sum();
        if ranges.is_empty() && self.allocs.is_empty() && self.frees.is_empty() {
            return Ok(info);
        }
        let frees = &self.frees[..];
        let heap = pool.heap();
        // A log too large for a lane continues in an extension block, which commit writes: this
        // transaction reserves it and locks it like every other byte it writes, so that no
        // reader (e.g. through a dangling pointer into that free block) can see it written.
        let bound = heap.publication_slots_bound(self.allocs.len(), frees.len(), 0, &ranges);
        let ext_bytes = heap.log_extension_bytes(bound);
        let ext = if ext_bytes == 0 {
            None
        } else {
            let r = heap.reserve_log_extension(raw, ext_bytes)?;
            // (Not `lock_for_write`: the ranges borrow the line arena, so only the lock set
            // may be borrowed mutably here.)
            let table = pool.lock_table();
            if self
                .locks
                .get_mut()
                .lock_exclusive(table, r.offset(), r.size())
                .is_err()
            {
                self.conflict.set(true);
                return Err(TxError::Conflict);
            }
            Some(r)
        };
        // The lane is released at the end of this block (dropped in place: `drop(lane)` would
        // copy it).
        let r = {
            let mut lane = heap.lane();
            // SAFETY: one Heap per pool (the Pool's own). Every byte of every range lies in a
            // shadow's lines, under an exclusive lock of this transaction (no other thread
            // reads or writes them, and no reference to them is live: readers of pool bytes
            // hold shared locks); so does every freed block, and the log extension (reserved
            // and locked above). The reservations are ours. Ranges were checked to lie in the
            // object regions or the root entry (never heap metadata or lanes; the allocator
            // checks again).
            unsafe {
                heap.publish_ranges_with_ext(
                    &mut lane,
                    raw,
                    &mut self.allocs,
                    frees,
                    &[],
                    &ranges,
                    ext,
                )
            }
        };
        match r {
            Ok(()) => {
                info.logged = true;
                Ok(info)
            }
            Err(AllocError::LogFull { needed, .. }) => Err(TxError::TooLarge {
                needed: 64 + 16 * needed as u64,
            }),
            Err(e) => Err(e.into()),
        }
    }
}
