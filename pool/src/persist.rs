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

use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_utils::CachePadded;

use crate::raw::cpu::FlushInstr;

/// How stores to the pool are made durable.
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
}

impl PersistMode {
    /// Whether this mode uses CPU cache flushes (as opposed to `msync`).
    pub fn uses_cache_flush(self) -> bool {
        !matches!(self, PersistMode::Msync)
    }

    /// Short name: `map-sync`, `forced-flush` or `msync`.
    pub fn name(self) -> &'static str {
        match self {
            PersistMode::MapSync => "map-sync",
            PersistMode::ForcedFlush => "forced-flush",
            PersistMode::Msync => "msync",
        }
    }

    /// Whether a drain in this mode makes stores durable across power loss.
    pub fn power_fail_safe(self) -> bool {
        !matches!(self, PersistMode::ForcedFlush)
    }
}

impl std::fmt::Display for PersistMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What the caller asks for when opening or creating a pool.
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
            Err(std::env::VarError::NotUnicode(v)) => {
                Err(crate::PoolError::InvalidForceMode(v.to_string_lossy().into_owned()))
            }
        }
    }
}

/// The persistence backend in force for a pool. Every durability operation dispatches on it,
/// here and nowhere else.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Backend {
    /// Cache-line flushes with the given instruction, `sfence` to drain.
    Flush(FlushInstr),
    /// Dirty-page tracking and `msync`.
    Msync {
        /// The system page size (msync granularity).
        page: u64,
    },
}

/// Durability counters: deterministic measures of what persistence costs.
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

const STRIPES: usize = 16;

/// Pool-wide counters, striped so that contexts on different threads do not share a cache line.
#[derive(Default)]
pub(crate) struct SharedCounters {
    stripes: [CachePadded<[AtomicU64; 5]>; STRIPES],
}

impl SharedCounters {
    pub(crate) fn add(&self, stripe: usize, c: &PersistCounters) {
        let s = &self.stripes[stripe % STRIPES];
        let vals = [c.lines_flushed, c.nt_bytes, c.drains, c.msync_calls, c.msync_bytes];
        for (a, v) in s.iter().zip(vals) {
            if v != 0 {
                a.fetch_add(v, Ordering::Relaxed);
            }
        }
    }

    pub(crate) fn total(&self) -> PersistCounters {
        let mut t = [0u64; 5];
        for s in &self.stripes {
            for (acc, a) in t.iter_mut().zip(s.iter()) {
                *acc += a.load(Ordering::Relaxed);
            }
        }
        PersistCounters {
            lines_flushed: t[0],
            nt_bytes: t[1],
            drains: t[2],
            msync_calls: t[3],
            msync_bytes: t[4],
        }
    }
}

/// Pages recorded as dirty since the last drain, as half-open page-index runs. Appending is
/// O(1) (adjacent or overlapping the previous run merges into it); a drain sorts and coalesces.
#[derive(Debug, Default)]
pub(crate) struct DirtyPages {
    runs: Vec<(u64, u64)>,
}

impl DirtyPages {
    /// Records pages `[first, end)`.
    pub(crate) fn add(&mut self, first: u64, end: u64) {
        if let Some(last) = self.runs.last_mut() {
            if first <= last.1 && end >= last.0 {
                last.0 = last.0.min(first);
                last.1 = last.1.max(end);
                return;
            }
        }
        self.runs.push((first, end));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Sorts and merges the runs into maximal disjoint runs, in place.
    pub(crate) fn coalesce(&mut self) -> &[(u64, u64)] {
        self.runs.sort_unstable();
        let mut out = 0;
        for i in 0..self.runs.len() {
            let r = self.runs[i];
            if out > 0 && r.0 <= self.runs[out - 1].1 {
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

static NEXT_CONTEXT: AtomicU64 = AtomicU64::new(0);

/// One thread's (or lane's) handle on the persistence domain: the ranges it flushed since its
/// last drain, and its own counters. Obtain one with [`Pool::flush_context`](crate::Pool::flush_context).
#[derive(Debug)]
pub struct FlushContext {
    pub(crate) pool_id: u64,
    pub(crate) id: u64,
    pub(crate) dirty: DirtyPages,
    /// Counted since the last drain; folded into the pool's counters at each drain.
    pub(crate) pending: PersistCounters,
    /// Everything this context ever did, drained or not.
    pub(crate) total: PersistCounters,
}

impl FlushContext {
    pub(crate) fn new(pool_id: u64) -> FlushContext {
        FlushContext {
            pool_id,
            id: NEXT_CONTEXT.fetch_add(1, Ordering::Relaxed),
            dirty: DirtyPages::default(),
            pending: PersistCounters::default(),
            total: PersistCounters::default(),
        }
    }

    /// Everything this context has flushed, drained and msynced since it was made.
    pub fn counters(&self) -> PersistCounters {
        self.total
    }

    /// Whether ranges were flushed (or pages recorded) since the last drain.
    pub fn has_pending(&self) -> bool {
        !self.dirty.is_empty() || self.pending.lines_flushed != 0 || self.pending.nt_bytes != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirty_pages_coalesce_into_maximal_runs() {
        let mut d = DirtyPages::default();
        for (a, b) in [(10, 11), (3, 4), (11, 12), (4, 6), (20, 21), (5, 7), (100, 101)] {
            d.add(a, b);
        }
        assert_eq!(d.coalesce(), &[(3, 7), (10, 12), (20, 21), (100, 101)]);
        d.mark_clean(2);
        assert_eq!(d.coalesce(), &[(20, 21), (100, 101)]);
    }

    #[test]
    fn repeated_flushes_of_one_page_stay_one_run() {
        let mut d = DirtyPages::default();
        for _ in 0..1000 {
            d.add(7, 8);
        }
        assert_eq!(d.runs.len(), 1);
    }
}
