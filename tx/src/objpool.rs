//! The transactional pool handle: recovery at open, the root object, transactions.

use std::cell::{Cell, RefCell};
use std::mem::size_of;
use std::path::Path;

use bytemuck::Pod;
use pmstore_alloc::redo::RecoveryReport;
use pmstore_alloc::Heap;
use pmstore_pool::{CreateOptions, OpenOptions, PersistCounters, PersistMode, Pool as RawPool};

use crate::locks::LockTable;
use crate::tx::{CommitInfo, Tx};
use crate::{PPtr, Result, TxError};

/// Bytes of the root entry at the start of the root area: the root object's offset and size
/// (`docs/FORMAT.md` §6.1).
pub const ROOT_ENTRY_SIZE: u64 = 16;

thread_local! {
    /// What this thread's last commit logged ([`Pool::last_commit`]).
    static LAST_COMMIT: std::cell::Cell<CommitInfo> = const {
        std::cell::Cell::new(CommitInfo {
            ranges: 0,
            range_bytes: 0,
            allocs: 0,
            frees: 0,
            logged: false,
        })
    };
    /// Pools (by address) this thread is running a transaction on: a second one on the same
    /// pool would wait for the first one's locks forever. One pool (0: none) in `ACTIVE`, any
    /// others (transactions on other pools inside that one) in `ACTIVE_MORE`.
    static ACTIVE: Cell<usize> = const { Cell::new(0) };
    static ACTIVE_MORE: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

/// Marks a pool as having a transaction on this thread while alive.
struct ActiveGuard(usize);

impl ActiveGuard {
    #[inline]
    fn enter(pool: &Pool) -> Result<ActiveGuard> {
        let id = pool as *const Pool as usize;
        let first = ACTIVE.get();
        if first == 0 {
            // Guards are locals of `transaction` and `read`, so they are dropped in the reverse
            // order of their creation: with no pool in `ACTIVE`, there is none in `ACTIVE_MORE`
            // either (the common case: no transaction on this thread).
            debug_assert!(ACTIVE_MORE.with_borrow(Vec::is_empty));
            ACTIVE.set(id);
            return Ok(ActiveGuard(id));
        }
        if first == id || ACTIVE_MORE.with_borrow(|more| more.contains(&id)) {
            return Err(TxError::NestedTransaction);
        }
        ACTIVE_MORE.with_borrow_mut(|more| more.push(id));
        Ok(ActiveGuard(id))
    }
}

impl Drop for ActiveGuard {
    #[inline]
    fn drop(&mut self) {
        if ACTIVE.get() == self.0 {
            ACTIVE.set(0);
        } else {
            ACTIVE_MORE.with_borrow_mut(|more| {
                if let Some(i) = more.iter().rposition(|&x| x == self.0) {
                    more.swap_remove(i);
                }
            });
        }
    }
}

/// An open pool with transactions: the pool file (`pmstore-pool`), its allocator
/// (`pmstore-alloc`) and the lock table of its transactions. Share it between threads by
/// reference (it is `Sync`); each [`Pool::transaction`] runs on the calling thread.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use pmstore_tx::{CreateOptions, Pool, TxError};
/// # let dir = tempfile::tempdir()?;
/// let pool = Pool::create(dir.path().join("hits.pool"), &CreateOptions::new("hits", 8 << 20))?;
/// let hits = pool.root::<u64>()?;
/// std::thread::scope(|s| {
///     for _ in 0..2 {
///         s.spawn(|| {
///             for _ in 0..10 {
///                 pool.transaction(|tx| {
///                     *tx.get_mut(hits)? += 1; // serializable: no update is lost
///                     Ok::<_, TxError>(())
///                 })
///                 .unwrap();
///             }
///         });
///     }
/// });
/// assert_eq!(pool.read(|tx| tx.get(hits).copied())?, 20);
/// # Ok(())
/// # }
/// ```
pub struct Pool {
    // Field order is drop order: the heap (lanes, reservations) before the mapping.
    heap: Heap,
    raw: RawPool,
    locks: LockTable,
    /// The heap's object region `[start, end)`: the chunks' data.
    objects: (u64, u64),
    root_entry: u64,
    recovery: RecoveryReport,
}

impl Drop for Pool {
    /// Makes the last commits' values durable and their logs invalid (`docs/REDO.md` §4:
    /// each lane's last log is live until then), so that the next open replays nothing. A
    /// failure here loses nothing: the logs stay valid and the next open replays them.
    fn drop(&mut self) {
        if !self.raw.is_read_only() && !self.raw.is_poisoned() {
            let mut ctx = self.raw.flush_context();
            let _ = self
                .heap
                .redo_logs()
                .sync_invalidations(&self.raw, &mut ctx);
        }
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("path", &self.raw.path())
            .field("persistence", &self.raw.persistence())
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// Creates a pool file (see [`pmstore_pool::Pool::create`]) and opens it for transactions.
    ///
    /// # Errors
    /// The pool layer's creation errors ([`TxError::Pool`]).
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_tx::{CreateOptions, Pool, TxError};
    /// use pmstore_tx::pool::PoolError;
    /// # let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("app.pool");
    /// let pool = Pool::create(&path, &CreateOptions::new("my-app", 8 << 20))?;
    /// assert_eq!(pool.raw().size(), 8 << 20);
    /// let again = Pool::create(&path, &CreateOptions::new("my-app", 8 << 20));
    /// assert!(matches!(again, Err(TxError::Pool(PoolError::AlreadyExists { .. }))));
    /// # Ok(())
    /// # }
    /// ```
    pub fn create(path: impl AsRef<Path>, opts: &CreateOptions) -> Result<Pool> {
        Pool::from_raw(RawPool::create(path, opts)?)
    }

    /// Opens a pool file (see [`pmstore_pool::Pool::open`]: locked, validated) and recovers it:
    /// committed transactions whose application was interrupted are finished, everything
    /// uncommitted is gone (it never reached the pool).
    ///
    /// # Errors
    /// The pool layer's open errors; [`TxError::Alloc`] if recovery finds a corrupt log
    /// (nothing is modified then) or a read-only pool needs recovery.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_tx::{CreateOptions, OpenOptions, Pool, TxError};
    /// # let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("app.pool");
    /// {
    ///     let pool = Pool::create(&path, &CreateOptions::new("my-app", 8 << 20))?;
    ///     let root = pool.root::<u64>()?;
    ///     pool.transaction(|tx| {
    ///         *tx.get_mut(root)? = 42;
    ///         Ok::<_, TxError>(())
    ///     })?;
    /// }
    /// let pool = Pool::open(&path, &OpenOptions::new("my-app"))?; // recovers, if need be
    /// let root = pool.root::<u64>()?; // the same root object
    /// assert_eq!(pool.read(|tx| tx.get(root).copied())?, 42);
    /// # Ok(())
    /// # }
    /// ```
    pub fn open(path: impl AsRef<Path>, opts: &OpenOptions) -> Result<Pool> {
        Pool::from_raw(RawPool::open(path, opts)?)
    }

    /// Recovers an already opened pool (e.g. a simulated one, for crash tests) and wraps it.
    ///
    /// # Errors
    /// As [`Pool::open`] after the file is open.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::sync::{Arc, Mutex};
    /// use pmstore_tx::pool::Pool as RawPool;
    /// use pmstore_tx::{CreateOptions, OpenOptions, Pool, TxError};
    ///
    /// // Crash-state exploration: record the media image at every drain of one transaction.
    /// let (raw, sim) = RawPool::create_simulated(&CreateOptions::new("doc", 8 << 20))?;
    /// let pool = Pool::from_raw(raw)?;
    /// let root = pool.root::<u64>()?;
    /// let images = Arc::new(Mutex::new(Vec::new()));
    /// let record = Arc::clone(&images);
    /// sim.set_crash_hook(move |cp| record.lock().unwrap().push(cp.media.to_vec()));
    /// pool.transaction(|tx| {
    ///     *tx.get_mut(root)? = 7;
    ///     Ok::<_, TxError>(())
    /// })?;
    /// sim.clear_crash_hook();
    /// // Whatever drain the power cut precedes, recovery yields 0 or 7, never anything else.
    /// for image in images.lock().unwrap().iter() {
    ///     let (raw, _) = RawPool::open_simulated(image, &OpenOptions::new("doc"))?;
    ///     let crashed = Pool::from_raw(raw)?;
    ///     let v = crashed.read(|tx| tx.get(root).copied())?;
    ///     assert!(v == 0 || v == 7);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn from_raw(mut raw: RawPool) -> Result<Pool> {
        let (heap, recovery) = Heap::open(&mut raw)?;
        // The root area past the root entry is reserved: must be zero (FORMAT.md §6.1).
        let g = raw.geometry();
        let mut rest = vec![0u8; (g.root_size - ROOT_ENTRY_SIZE) as usize];
        // SAFETY: we own `raw` (no other thread can reach it yet), so nothing writes it.
        unsafe { raw.read(g.root_offset + ROOT_ENTRY_SIZE, &mut rest) };
        if let Some(i) = rest.iter().position(|&b| b != 0) {
            return Err(TxError::CorruptRootArea {
                offset: g.root_offset + ROOT_ENTRY_SIZE + i as u64,
            });
        }
        let geo = *heap.geometry();
        Ok(Pool {
            objects: (geo.chunk_offset(0), geo.data_end()),
            root_entry: raw.geometry().root_offset,
            heap,
            raw,
            locks: LockTable::new(crate::locks::DEFAULT_STRIPES),
            recovery,
        })
    }

    /// The pool file layer (header, mapping, persistence mode, counters).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_tx::{CreateOptions, Pool};
    /// # let dir = tempfile::tempdir()?;
    /// let pool = Pool::create(dir.path().join("app.pool"), &CreateOptions::new("my-app", 8 << 20))?;
    /// assert_eq!(pool.raw().header().layout_name(), "my-app");
    /// assert_eq!(pool.raw().path(), dir.path().join("app.pool"));
    /// # Ok(())
    /// # }
    /// ```
    pub fn raw(&self) -> &RawPool {
        &self.raw
    }

    /// The allocator.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_tx::{CreateOptions, Pool, TxError};
    /// # let dir = tempfile::tempdir()?;
    /// let pool = Pool::create(dir.path().join("app.pool"), &CreateOptions::new("my-app", 8 << 20))?;
    /// pool.transaction(|tx| tx.alloc([0u8; 100]).map(drop))?;
    /// let stats = pool.heap().stats(pool.raw())?;
    /// assert_eq!(stats.bytes_allocated, 128); // 100 bytes are served from a 128-byte block
    /// # Ok(())
    /// # }
    /// ```
    pub fn heap(&self) -> &Heap {
        &self.heap
    }

    pub(crate) fn lock_table(&self) -> &LockTable {
        &self.locks
    }

    /// What recovery did when this pool was opened.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_tx::{CreateOptions, Pool};
    /// # let dir = tempfile::tempdir()?;
    /// let pool = Pool::create(dir.path().join("app.pool"), &CreateOptions::new("my-app", 8 << 20))?;
    /// let report = pool.recovery_report();
    /// assert_eq!((report.logs_replayed, report.invalid_cleared), (0, 0)); // a clean pool
    /// # Ok(())
    /// # }
    /// ```
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// The persistence mode in force.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_tx::{CreateOptions, ModeRequest, PersistMode, Pool};
    /// # let dir = tempfile::tempdir()?;
    /// let opts = CreateOptions::new("my-app", 8 << 20).mode(ModeRequest::Msync);
    /// let pool = Pool::create(dir.path().join("app.pool"), &opts)?;
    /// assert_eq!(pool.persistence(), PersistMode::Msync);
    /// assert!(pool.persistence().power_fail_safe());
    /// # Ok(())
    /// # }
    /// ```
    pub fn persistence(&self) -> PersistMode {
        self.raw.persistence()
    }

    /// Pool-wide persistence counters (lines flushed, drains, msync calls).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_tx::{CreateOptions, ModeRequest, Pool, TxError};
    /// # let dir = tempfile::tempdir()?;
    /// let opts = CreateOptions::new("my-app", 8 << 20).mode(ModeRequest::Msync);
    /// let pool = Pool::create(dir.path().join("app.pool"), &opts)?;
    /// let root = pool.root::<[u64; 4]>()?;
    /// # pool.heap().redo_logs().set_deferred_apply(true); // msync mode's default, whatever PMSTORE_DEFER_APPLY says
    /// let before = pool.counters();
    /// pool.transaction(|tx| {
    ///     tx.get_mut(root)?[0] += 1;
    ///     Ok::<_, TxError>(())
    /// })?;
    /// let cost = pool.counters() - before;
    /// assert_eq!(cost.drains, 1); // the commit point (the values are flushed by the next one)
    /// assert!((1..=2).contains(&cost.msync_calls)); // log + the previous commit's pages
    /// # Ok(())
    /// # }
    /// ```
    pub fn counters(&self) -> PersistCounters {
        self.raw.counters()
    }

    /// What this thread's most recent committed transaction (on any pool) logged.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_tx::{CreateOptions, Pool, TxError};
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(dir.path().join("doc.pool"), &CreateOptions::new("doc", 8 << 20))?;
    /// let root = pool.root::<[u64; 8]>()?;
    /// pool.transaction(|tx| {
    ///     tx.get_mut(root)?[5] = 1; // a whole-object copy, one word changed
    ///     Ok::<_, TxError>(())
    /// })?;
    /// let info = pool.last_commit();
    /// assert!(info.logged);
    /// assert_eq!((info.ranges, info.range_bytes), (1, 64)); // that word's cache line
    /// # Ok(())
    /// # }
    /// ```
    pub fn last_commit(&self) -> CommitInfo {
        LAST_COMMIT.with(|c| c.get())
    }

    /// Whether `[off, off + len)` lies in the heap's object region.
    pub(crate) fn in_objects(&self, off: u64, len: u64) -> bool {
        off >= self.objects.0 && off.checked_add(len).is_some_and(|e| e <= self.objects.1)
    }

    /// The root object: a `T` allocated zeroed by the first call on a pool, the same object on
    /// every later call (and after reopening). Keep your data structures reachable from it.
    ///
    /// # Errors
    /// [`TxError::RootMismatch`] if the root exists with another size; allocation errors on
    /// first use; [`TxError::InvalidPointer`] if the root entry is corrupt;
    /// [`TxError::NestedTransaction`] inside a transaction on this pool.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_tx::{CreateOptions, Pool, TxError};
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(dir.path().join("doc.pool"), &CreateOptions::new("doc", 8 << 20))?;
    /// let root = pool.root::<[u64; 2]>()?;
    /// assert_eq!(pool.read(|tx| tx.get(root).copied())?, [0, 0]); // zeroed on first use
    /// assert_eq!(pool.root::<[u64; 2]>()?, root); // the same object every time
    /// let err = pool.root::<u64>().unwrap_err(); // another size
    /// assert!(matches!(err, TxError::RootMismatch { stored: 16, requested: 8 }));
    /// # Ok(())
    /// # }
    /// ```
    pub fn root<T: Pod>(&self) -> Result<PPtr<T>> {
        let size = size_of::<T>() as u64;
        let at = self.root_entry;
        let existing = |entry: [u64; 2]| -> Result<Option<PPtr<T>>> {
            let [off, stored] = entry;
            if off == 0 {
                return Ok(None);
            }
            if stored != size {
                return Err(TxError::RootMismatch {
                    stored,
                    requested: size,
                });
            }
            if !self.in_objects(off, size) || off % std::mem::align_of::<T>() as u64 != 0 {
                return Err(TxError::InvalidPointer {
                    offset: off,
                    len: size,
                });
            }
            Ok(Some(PPtr::from_offset(off)))
        };
        if let Some(p) = self.read(|tx| existing(*tx.read_internal::<[u64; 2]>(at)?))? {
            return Ok(p);
        }
        self.transaction(|tx| {
            if let Some(p) = existing(*tx.read_internal::<[u64; 2]>(at)?)? {
                return Ok(p);
            }
            let p = tx.alloc_zeroed::<T>()?;
            *tx.write_at::<[u64; 2]>(at)? = [p.offset(), size];
            Ok(p)
        })
    }

    /// Runs `f` as a transaction and commits it if `f` returns `Ok`: everything `f` did through
    /// the [`Tx`] becomes durable at once (all or nothing across crashes). If `f` returns
    /// `Err` or panics, nothing it did reaches the pool (the transaction is dropped: its locks
    /// are released and its allocations cancelled), and the error or panic propagates.
    ///
    /// If `f` runs into a lock held by a concurrent transaction for too long, the transaction
    /// is aborted and **`f` runs again** (after a short randomized back-off), so `f` should not
    /// have effects outside the pool that must happen once. Nested transactions: use
    /// [`Tx::nested`]; calling `transaction` inside a transaction on the same pool returns
    /// [`TxError::NestedTransaction`].
    ///
    /// # Errors
    /// `f`'s error; a commit error converted with `E: From<TxError>` (I/O, a failed nested
    /// transaction [`TxError::Aborted`], a double free found at commit, a transaction too
    /// large for a lane's log).
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_tx::{CreateOptions, Pool, TxError};
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(dir.path().join("doc.pool"), &CreateOptions::new("doc", 8 << 20))?;
    /// #[derive(Debug)]
    /// enum AppError { Tx(TxError), Insufficient }
    /// impl From<TxError> for AppError {
    ///     fn from(e: TxError) -> Self { AppError::Tx(e) }
    /// }
    ///
    /// let balance = pool.root::<u64>()?;
    /// let withdraw = |amount: u64| {
    ///     pool.transaction(|tx| {
    ///         let b = tx.get_mut(balance)?;
    ///         *b = b.checked_sub(amount).ok_or(AppError::Insufficient)?;
    ///         Ok::<_, AppError>(*b)
    ///     })
    /// };
    /// pool.transaction(|tx| {
    ///     *tx.get_mut(balance)? = 100;
    ///     Ok::<_, TxError>(())
    /// })?;
    /// assert_eq!(withdraw(30).unwrap(), 70);
    /// assert!(matches!(withdraw(500), Err(AppError::Insufficient))); // aborted: nothing written
    /// assert_eq!(pool.read(|tx| tx.get(balance).copied())?, 70);
    /// # Ok(())
    /// # }
    /// ```
    pub fn transaction<R, E>(&self, mut f: impl FnMut(&mut Tx<'_>) -> Result<R, E>) -> Result<R, E>
    where
        E: From<TxError>,
    {
        let _active = ActiveGuard::enter(self)?;
        let writable = !self.raw.is_read_only();
        let mut attempt = 0u32;
        loop {
            // The transaction is dropped (its locks released) at the end of this block, after
            // the commit's writes and before any back-off; in place: moving it (into `drop`)
            // would copy its inline buffers.
            let outcome = {
                let mut tx = Tx::new(self, writable);
                let r = f(&mut tx);
                if tx.conflicted() {
                    Err(TxError::Conflict)
                } else {
                    let v = r?;
                    if tx.failed() {
                        return Err(TxError::Aborted.into());
                    }
                    tx.commit().map(|info| (v, info))
                }
            };
            match outcome {
                Ok((v, info)) => {
                    LAST_COMMIT.with(|c| c.set(info));
                    return Ok(v);
                }
                // A lock `f` or the commit itself (its log extension) needed was busy: nothing
                // was written; run the transaction again.
                Err(TxError::Conflict) => {
                    backoff(attempt);
                    attempt = attempt.saturating_add(1);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Runs `f` with a read-only transaction: consistent reads under shared locks (released
    /// when `f` returns), nothing written. Retried like [`Pool::transaction`] on conflicts.
    ///
    /// # Errors
    /// `f`'s error; [`TxError::NestedTransaction`] inside a transaction on this pool.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_tx::{CreateOptions, Pool, TxError};
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(dir.path().join("doc.pool"), &CreateOptions::new("doc", 8 << 20))?;
    /// let pair = pool.root::<[u64; 2]>()?;
    /// pool.transaction(|tx| {
    ///     *tx.get_mut(pair)? = [1, 2];
    ///     Ok::<_, TxError>(())
    /// })?;
    /// let sum = pool.read(|tx| {
    ///     let [a, b] = *tx.get(pair)?; // a consistent snapshot under shared locks
    ///     Ok::<_, TxError>(a + b)
    /// })?;
    /// assert_eq!(sum, 3);
    /// # Ok(())
    /// # }
    /// ```
    pub fn read<R, E>(&self, mut f: impl FnMut(&Tx<'_>) -> Result<R, E>) -> Result<R, E>
    where
        E: From<TxError>,
    {
        let _active = ActiveGuard::enter(self)?;
        let mut attempt = 0u32;
        loop {
            // (A block: the transaction is dropped in place, see `transaction`.)
            {
                let tx = Tx::new(self, false);
                let r = f(&tx);
                if !tx.conflicted() {
                    return r;
                }
            }
            backoff(attempt);
            attempt = attempt.saturating_add(1);
        }
    }
}

/// Waits before retrying a conflicting transaction: randomized, growing with the attempt (up to
/// about a millisecond), so that two transactions that keep colliding drift apart.
fn backoff(attempt: u32) {
    thread_local! {
        static STATE: std::cell::Cell<u64> = std::cell::Cell::new({
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            std::thread::current().id().hash(&mut h);
            h.finish() | 1
        });
    }
    let r = STATE.with(|s| {
        // xorshift64*
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    });
    let cap = 1u64 << attempt.min(10);
    let micros = r % cap;
    if attempt < 2 {
        std::thread::yield_now();
    } else {
        std::thread::sleep(std::time::Duration::from_micros(micros));
    }
}
