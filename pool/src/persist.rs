//! The persistence domain: the one seam every flush, drain and msync goes through.
//!
//! A [`FlushContext`] is one thread's (or one lane's) view of the persistence domain: like the
//! CPU, which orders only the issuing thread's flushes with its `sfence`, a context's
//! [`drain`](crate::Pool::drain) makes durable exactly the ranges flushed through that context.
//!
//! * **Flush mode** ([`PersistMode::MapSync`], [`PersistMode::ForcedFlush`]): `flush` writes
//!   back each touched cache line once (`clwb`, else `clflushopt`, else `clflush`); `drain` is
//!   one `sfence`.
//! * **Msync mode** ([`PersistMode::Msync`]): `flush` records the touched pages in the context
//!   (cost independent of the pool's size); `drain` sorts and coalesces them into maximal runs,
//!   issues one `msync(MS_SYNC)` per run, and marks them clean.

use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_utils::CachePadded;

use crate::raw::cpu::FlushInstr;

/// How stores to the pool are made durable.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use pmstore_pool::{CreateOptions, ModeRequest, PersistMode, Pool, MIN_POOL_SIZE};
/// # let dir = tempfile::tempdir()?;
/// let opts = CreateOptions::new("doc", MIN_POOL_SIZE).mode(ModeRequest::Flush);
/// let pool = Pool::create(dir.path().join("p.pool"), &opts)?;
/// match pool.persistence() {
///     PersistMode::MapSync => println!("DAX: cache flushes are enough"),
///     PersistMode::ForcedFlush => println!("not DAX: survives a process crash, not a power cut"),
///     other => unreachable!("{other} for a flush request"),
/// }
/// assert!(pool.persistence().uses_cache_flush());
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PersistMode {
    /// The pool is on a DAX file system, mapped with `MAP_SYNC`: the kernel commits block
    /// mappings at page-fault time, so cache flushes (`clwb`/`clflushopt`/`clflush` + `sfence`)
    /// alone make stores durable, across power loss. No `msync`, no `fsync`.
    MapSync,
    /// Cache flushes on a file that is **not** on a DAX file system (forced with
    /// `PMSTORE_FORCE_MODE=flush` or [`ModeRequest::Flush`]). Stores survive a process crash
    /// (they are in the page cache) but **not** a power loss or kernel crash. For testing and
    /// benchmarking on machines without persistent memory, like PMDK's `PMEM_IS_PMEM_FORCE=1`.
    ForcedFlush,
    /// A plain shared mapping; durability points `msync` the pages dirtied since the last one.
    /// Durable across power loss on any file system that honours `msync`.
    Msync,
    /// The simulated persistence domain ([`crate::sim`]): heap memory with a modelled media
    /// image, for crash-state exploration in tests. Nothing is durable.
    Simulated,
}

impl PersistMode {
    /// Whether this mode uses CPU cache flushes (as opposed to `msync`).
    ///
    /// ```
    /// use pmstore_pool::PersistMode;
    ///
    /// assert!(PersistMode::MapSync.uses_cache_flush());
    /// assert!(PersistMode::ForcedFlush.uses_cache_flush());
    /// assert!(!PersistMode::Msync.uses_cache_flush());
    /// ```
    pub fn uses_cache_flush(self) -> bool {
        !matches!(self, PersistMode::Msync)
    }

    /// Short name: `map-sync`, `forced-flush`, `msync` or `simulated`.
    ///
    /// ```
    /// use pmstore_pool::PersistMode;
    ///
    /// assert_eq!(PersistMode::MapSync.name(), "map-sync");
    /// assert_eq!(PersistMode::Msync.to_string(), "msync"); // `Display` prints the name
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            PersistMode::MapSync => "map-sync",
            PersistMode::ForcedFlush => "forced-flush",
            PersistMode::Msync => "msync",
            PersistMode::Simulated => "simulated",
        }
    }

    /// Whether a drain in this mode makes stores durable across power loss.
    ///
    /// ```
    /// use pmstore_pool::PersistMode;
    ///
    /// assert!(PersistMode::MapSync.power_fail_safe());
    /// assert!(PersistMode::Msync.power_fail_safe());
    /// assert!(!PersistMode::ForcedFlush.power_fail_safe()); // the page cache is not persistent
    /// assert!(!PersistMode::Simulated.power_fail_safe());
    /// ```
    pub fn power_fail_safe(self) -> bool {
        matches!(self, PersistMode::MapSync | PersistMode::Msync)
    }
}

impl std::fmt::Display for PersistMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What the caller asks for when opening or creating a pool.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use pmstore_pool::{CreateOptions, ModeRequest, PersistMode, Pool, MIN_POOL_SIZE};
/// # let dir = tempfile::tempdir()?;
/// assert_eq!(ModeRequest::default(), ModeRequest::Auto);
/// assert_eq!(ModeRequest::ENV, "PMSTORE_FORCE_MODE"); // overrides `Auto`
/// let opts = CreateOptions::new("doc", MIN_POOL_SIZE).mode(ModeRequest::Msync);
/// let pool = Pool::create(dir.path().join("p.pool"), &opts)?;
/// assert_eq!(pool.persistence(), PersistMode::Msync);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ModeRequest {
    /// Use `PMSTORE_FORCE_MODE` if set, else `MAP_SYNC` where supported, else msync.
    #[default]
    Auto,
    /// `MAP_SYNC` where supported, else cache flushes anyway ([`PersistMode::ForcedFlush`]).
    Flush,
    /// Always msync, even on a DAX file system.
    Msync,
}

impl ModeRequest {
    /// Name of the environment variable that overrides [`ModeRequest::Auto`].
    pub const ENV: &'static str = "PMSTORE_FORCE_MODE";

    /// Resolves `Auto` through `PMSTORE_FORCE_MODE` (`auto`, `flush` or `msync`).
    pub(crate) fn resolve(self) -> Result<ModeRequest, crate::PoolError> {
        if self != ModeRequest::Auto {
            return Ok(self);
        }
        match std::env::var(Self::ENV) {
            Err(std::env::VarError::NotPresent) => Ok(ModeRequest::Auto),
            Ok(v) if v.is_empty() || v == "auto" => Ok(ModeRequest::Auto),
            Ok(v) if v == "flush" => Ok(ModeRequest::Flush),
            Ok(v) if v == "msync" => Ok(ModeRequest::Msync),
            Ok(v) => Err(crate::PoolError::InvalidForceMode(v)),
            Err(std::env::VarError::NotUnicode(v)) => Err(crate::PoolError::InvalidForceMode(
                v.to_string_lossy().into_owned(),
            )),
        }
    }
}

/// The persistence backend in force for a pool. Every durability operation dispatches on it,
/// here and nowhere else.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Backend {
    /// Cache-line flushes with `instr`, `sfence` to drain; non-temporal copies with 32-byte
    /// stores if `avx` (detected once, at open: not per copy).
    Flush {
        /// The flush instruction.
        instr: FlushInstr,
        /// Whether the CPU has AVX.
        avx: bool,
    },
    /// Dirty-page tracking and `msync`.
    Msync {
        /// The system page size (msync granularity).
        page: u64,
    },
    /// The simulated persistence domain: flushes record lines, drains write them to the
    /// simulated media (see `sim.rs`).
    Sim,
}

/// Durability counters: deterministic measures of what persistence costs.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use pmstore_pool::{CreateOptions, ModeRequest, PersistCounters, Pool, MIN_POOL_SIZE};
/// # let dir = tempfile::tempdir()?;
/// let opts = CreateOptions::new("doc", MIN_POOL_SIZE).mode(ModeRequest::Msync);
/// let pool = Pool::create(dir.path().join("p.pool"), &opts)?;
/// let off = pool.geometry().root_offset;
/// let mut ctx = pool.flush_context();
/// let before: PersistCounters = pool.counters();
/// pool.flush(&mut ctx, off, 8);
/// pool.flush(&mut ctx, off + 4096, 8); // the next page: one run with the first
/// pool.drain(&mut ctx)?;
/// let cost = pool.counters() - before;
/// assert_eq!((cost.drains, cost.msync_calls, cost.msync_bytes), (1, 1, 8192));
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PersistCounters {
    /// Cache lines written back with `clwb`/`clflushopt`/`clflush` (flush modes).
    pub lines_flushed: u64,
    /// Bytes written with non-temporal stores (flush modes).
    pub nt_bytes: u64,
    /// Drains: `sfence`s in flush modes, durability points in msync mode.
    pub drains: u64,
    /// `msync` system calls (msync mode).
    pub msync_calls: u64,
    /// Bytes covered by those `msync` calls.
    pub msync_bytes: u64,
}

impl std::ops::Sub for PersistCounters {
    type Output = PersistCounters;
    fn sub(self, o: PersistCounters) -> PersistCounters {
        PersistCounters {
            lines_flushed: self.lines_flushed - o.lines_flushed,
            nt_bytes: self.nt_bytes - o.nt_bytes,
            drains: self.drains - o.drains,
            msync_calls: self.msync_calls - o.msync_calls,
            msync_bytes: self.msync_bytes - o.msync_bytes,
        }
    }
}

impl std::ops::AddAssign for PersistCounters {
    fn add_assign(&mut self, o: PersistCounters) {
        self.lines_flushed += o.lines_flushed;
        self.nt_bytes += o.nt_bytes;
        self.drains += o.drains;
        self.msync_calls += o.msync_calls;
        self.msync_bytes += o.msync_bytes;
    }
}

/// Indexes into a [`CounterBlock`].
pub(crate) const LINES: usize = 0;
pub(crate) const NT_BYTES: usize = 1;
pub(crate) const DRAINS: usize = 2;
pub(crate) const MSYNC_CALLS: usize = 3;
pub(crate) const MSYNC_BYTES: usize = 4;

/// One context's counters, on a cache line of their own. Only the owning context writes them
/// (a plain load and store: no locked instruction, which after an `sfence` would stall until
/// every outstanding write-back completed); anyone may read them.
#[derive(Default)]
pub(crate) struct CounterBlock {
    c: [AtomicU64; 5],
}

impl CounterBlock {
    #[inline]
    pub(crate) fn bump(&self, i: usize, v: u64) {
        let a = &self.c[i];
        a.store(a.load(Ordering::Relaxed).wrapping_add(v), Ordering::Relaxed);
    }

    fn read(&self) -> PersistCounters {
        let g = |i: usize| self.c[i].load(Ordering::Relaxed);
        PersistCounters {
            lines_flushed: g(LINES),
            nt_bytes: g(NT_BYTES),
            drains: g(DRAINS),
            msync_calls: g(MSYNC_CALLS),
            msync_bytes: g(MSYNC_BYTES),
        }
    }
}

type SharedBlock = Arc<CachePadded<CounterBlock>>;

/// A pool's counter blocks, one per live context (a dropped context's block is handed to the
/// next new context, so the pool's totals keep everything ever counted and the number of
/// blocks stays at the most contexts alive at once).
#[derive(Default)]
pub(crate) struct CounterRegistry {
    blocks: Mutex<Vec<SharedBlock>>,
}

impl CounterRegistry {
    fn acquire(&self) -> SharedBlock {
        let mut blocks = self.blocks.lock().unwrap_or_else(|p| p.into_inner());
        // Only `acquire` (under this lock) adds references, so a block whose only reference is
        // ours has no owner and cannot get one behind our back.
        if let Some(b) = blocks.iter().find(|b| Arc::strong_count(b) == 1) {
            // Pairs with the Release decrement of the previous owner's drop: its last counts
            // happen-before our reads and writes.
            fence(Ordering::Acquire);
            return Arc::clone(b);
        }
        let b = SharedBlock::default();
        blocks.push(Arc::clone(&b));
        b
    }

    /// The sum over every block: everything counted in this pool so far.
    pub(crate) fn total(&self) -> PersistCounters {
        let blocks = self.blocks.lock().unwrap_or_else(|p| p.into_inner());
        let mut t = PersistCounters::default();
        for b in blocks.iter() {
            t += b.read();
        }
        t
    }
}

/// Pages recorded as dirty since the last drain, as half-open page-index runs. Appending is
/// O(1) (adjacent or overlapping the previous run merges into it); a drain sorts and coalesces.
#[derive(Debug, Default)]
pub(crate) struct DirtyPages {
    runs: Vec<(u64, u64)>,
}

impl DirtyPages {
    /// Records pages `[first, end)`. A range that touches one of the last few runs merges
    /// into it, so flushes that alternate among a few pages do not grow the list.
    pub(crate) fn add(&mut self, first: u64, end: u64) {
        for run in self.runs.iter_mut().rev().take(8) {
            if first <= run.1 && end >= run.0 {
                run.0 = run.0.min(first);
                run.1 = run.1.max(end);
                return;
            }
        }
        self.runs.push((first, end));
    }

    /// Sorts and merges the runs into maximal disjoint runs, in place.
    pub(crate) fn coalesce(&mut self) -> &[(u64, u64)] {
        self.coalesce_within(0)
    }

    /// Sorts and merges the runs, in place, joining runs separated by at most `gap` clean
    /// units into one run that covers the gap too.
    pub(crate) fn coalesce_within(&mut self, gap: u64) -> &[(u64, u64)] {
        self.runs.sort_unstable();
        let mut out = 0;
        for i in 0..self.runs.len() {
            let r = self.runs[i];
            if out > 0 && r.0 <= self.runs[out - 1].1 + gap {
                self.runs[out - 1].1 = self.runs[out - 1].1.max(r.1);
            } else {
                self.runs[out] = r;
                out += 1;
            }
        }
        self.runs.truncate(out);
        &self.runs
    }

    /// Drops the first `n` runs (they are clean now).
    pub(crate) fn mark_clean(&mut self, n: usize) {
        self.runs.drain(..n);
    }
}

/// One thread's (or lane's) handle on the persistence domain: the ranges it flushed since its
/// last drain, and its own counters. Obtain one with [`Pool::flush_context`](crate::Pool::flush_context).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use pmstore_pool::{CreateOptions, Pool, MIN_POOL_SIZE};
///
/// let (pool, sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
/// let off = pool.geometry().root_offset;
/// let (mut a, mut b) = (pool.flush_context(), pool.flush_context());
/// pool.flush(&mut a, off, 8);
/// pool.drain(&mut b)?; // another context's drain orders nothing of `a`'s
/// assert_eq!(sim.media_image()[off as usize..][..8], [0; 8]);
/// assert!(a.has_pending());
/// pool.drain(&mut a)?;
/// assert!(!a.has_pending());
/// # Ok(())
/// # }
/// ```
pub struct FlushContext {
    pub(crate) pool_id: u64,
    pub(crate) dirty: DirtyPages,
    /// Whether anything was flushed since the last drain.
    pub(crate) pending: bool,
    pub(crate) counters: SharedBlock,
    /// The block's counts when this context got it.
    base: PersistCounters,
}

impl std::fmt::Debug for FlushContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlushContext")
            .field("pending", &self.pending)
            .field("dirty_runs", &self.dirty.runs.len())
            .field("counters", &self.counters())
            .finish()
    }
}

impl FlushContext {
    pub(crate) fn new(pool_id: u64, registry: &CounterRegistry) -> FlushContext {
        let counters = registry.acquire();
        let base = counters.read();
        FlushContext {
            pool_id,
            dirty: DirtyPages::default(),
            pending: false,
            counters,
            base,
        }
    }

    /// Everything this context has flushed, drained and msynced since it was made.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    ///
    /// let (pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// let off = pool.geometry().root_offset;
    /// let mut ctx = pool.flush_context();
    /// pool.persist(&mut ctx, off, 256)?;
    /// let c = ctx.counters();
    /// assert_eq!((c.lines_flushed, c.drains), (4, 1));
    /// # Ok(())
    /// # }
    /// ```
    pub fn counters(&self) -> PersistCounters {
        self.counters.read() - self.base
    }

    /// Whether ranges were flushed (or pages recorded) since the last drain.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    ///
    /// let (pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// let mut ctx = pool.flush_context();
    /// assert!(!ctx.has_pending());
    /// pool.flush(&mut ctx, pool.geometry().root_offset, 8);
    /// assert!(ctx.has_pending());
    /// pool.drain(&mut ctx)?;
    /// assert!(!ctx.has_pending());
    /// # Ok(())
    /// # }
    /// ```
    pub fn has_pending(&self) -> bool {
        self.pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirty_pages_coalesce_into_maximal_runs() {
        let mut d = DirtyPages::default();
        for (a, b) in [
            (10, 11),
            (3, 4),
            (11, 12),
            (4, 6),
            (20, 21),
            (5, 7),
            (100, 101),
        ] {
            d.add(a, b);
        }
        assert_eq!(d.coalesce(), &[(3, 7), (10, 12), (20, 21), (100, 101)]);
        d.mark_clean(2);
        assert_eq!(d.coalesce(), &[(20, 21), (100, 101)]);
    }

    #[test]
    fn repeated_flushes_of_a_few_pages_stay_a_few_runs() {
        let mut d = DirtyPages::default();
        for i in 0..1000 {
            d.add(7, 8);
            d.add(100 + i % 3 * 10, 101 + i % 3 * 10);
        }
        assert_eq!(d.runs.len(), 4);
    }

    #[test]
    fn counter_blocks_are_reused_and_totals_kept() {
        let reg = CounterRegistry::default();
        let a = FlushContext::new(1, &reg);
        a.counters.bump(DRAINS, 3);
        drop(a);
        let b = FlushContext::new(1, &reg);
        let c = FlushContext::new(1, &reg);
        assert_eq!(b.counters(), PersistCounters::default());
        b.counters.bump(DRAINS, 1);
        c.counters.bump(LINES, 5);
        assert_eq!(b.counters().drains, 1);
        assert_eq!(reg.total().drains, 4);
        assert_eq!(reg.total().lines_flushed, 5);
        assert_eq!(reg.blocks.lock().unwrap().len(), 2);
    }
}
