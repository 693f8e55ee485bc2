//! Which commits defer their apply (`docs/REDO.md` §4): the per-commit policy, and the count
//! of lanes with a live record that lets a commit skip the live-log machinery when no other
//! lane has one.
//!
//! A **deferred** commit applies its values with ordinary stores and leaves them unflushed:
//! the lane's next commit (or a helper) makes them durable before its own drain, so the
//! commit costs one drain. A commit that is not deferred makes its values durable and
//! invalidates its log before it returns (two drains). Which one is cheaper depends on the
//! commit and the hardware (§8): in msync mode every small commit defers; with cache flushes
//! only the commits that store words (the allocator's bitmap words and headers, a
//! destination word), whose second drain after `movnti` measured dearer than the next
//! commit's `clwb` of their lines, while a transaction's range-only commit is cheaper with its
//! whole lines written non-temporally and drained.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

/// Which commits of a [`RedoLogs`](crate::redo::RedoLogs) defer their apply
/// (`docs/REDO.md` §4). Only small commits can: at most 24 target lines and no extension;
/// the others always take two drains.
///
/// The default ([`DeferPolicy::for_mode`]): [`Always`](DeferPolicy::Always) in msync mode and
/// in the simulated domain, [`Words`](DeferPolicy::Words) with cache flushes (`forced-flush`,
/// `map-sync`); the environment variable `PMSTORE_DEFER_APPLY` at recovery overrides it:
/// `1` = `Always`, `0` = `Never`, `words` = `Words`.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use pmstore_alloc::pool::{CreateOptions, Pool, MIN_POOL_SIZE};
/// use pmstore_alloc::redo::{DeferPolicy, RedoEntry, RedoLogs, RedoRange};
///
/// let (mut pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
/// let (logs, _) = RedoLogs::recover(&mut pool)?;
/// logs.set_defer_policy(DeferPolicy::Words);
/// let root = pool.geometry().root_offset;
/// let mut lane = logs.lane(0).unwrap();
/// let mut ctx = pool.flush_context();
/// // SAFETY: this thread owns the root area; one RedoLogs per pool.
/// let words = unsafe { lane.commit(&pool, &mut ctx, &[RedoEntry::new(root, 1)])? };
/// let data = [7u8; 64];
/// let range = [RedoRange { target: root + 64, data: &data }];
/// // SAFETY: as above.
/// let ranges = unsafe { lane.commit_ops(&pool, &mut ctx, &[], &range)? };
/// assert_eq!((words.drains, ranges.drains), (1, 2)); // words deferred, ranges not
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DeferPolicy {
    /// No commit defers: every commit makes its values durable before it returns.
    Never = 0,
    /// Every small commit defers.
    Always = 1,
    /// The small commits with at least one word entry defer; range-only commits do not.
    Words = 2,
}

impl DeferPolicy {
    /// The default policy for a pool in `mode`, unless `PMSTORE_DEFER_APPLY` says otherwise
    /// (`0`, `1`, `words`; other values are ignored).
    ///
    /// ```
    /// use pmstore_alloc::pool::PersistMode;
    /// use pmstore_alloc::redo::DeferPolicy;
    ///
    /// if std::env::var_os("PMSTORE_DEFER_APPLY").is_none() {
    ///     assert_eq!(DeferPolicy::for_mode(PersistMode::Msync), DeferPolicy::Always);
    ///     assert_eq!(DeferPolicy::for_mode(PersistMode::ForcedFlush), DeferPolicy::Words);
    /// }
    /// ```
    pub fn for_mode(mode: pmstore_pool::PersistMode) -> DeferPolicy {
        match std::env::var("PMSTORE_DEFER_APPLY").as_deref() {
            Ok("0") => DeferPolicy::Never,
            Ok("1") => DeferPolicy::Always,
            Ok("words") => DeferPolicy::Words,
            _ => match mode {
                pmstore_pool::PersistMode::ForcedFlush | pmstore_pool::PersistMode::MapSync => {
                    DeferPolicy::Words
                }
                _ => DeferPolicy::Always,
            },
        }
    }

    fn from_u8(v: u8) -> DeferPolicy {
        match v {
            0 => DeferPolicy::Never,
            1 => DeferPolicy::Always,
            _ => DeferPolicy::Words,
        }
    }

    /// Whether a commit with `words` word entries defers under this policy, if it is small
    /// enough (at most 24 target lines, no extension).
    ///
    /// ```
    /// use pmstore_alloc::redo::DeferPolicy;
    ///
    /// assert!(DeferPolicy::Words.defers(2)); // e.g. an allocation: bitmap word + header
    /// assert!(!DeferPolicy::Words.defers(0)); // a range-only transaction
    /// ```
    #[inline]
    pub fn defers(self, words: usize) -> bool {
        match self {
            DeferPolicy::Never => false,
            DeferPolicy::Always => true,
            DeferPolicy::Words => words != 0,
        }
    }
}

/// The policy, changeable at run time (`RedoLogs::set_defer_policy`).
pub(crate) struct Policy(AtomicU8);

impl Policy {
    pub(crate) fn new(p: DeferPolicy) -> Policy {
        Policy(AtomicU8::new(p as u8))
    }

    #[inline]
    pub(crate) fn get(&self) -> DeferPolicy {
        DeferPolicy::from_u8(self.0.load(Ordering::Relaxed))
    }

    pub(crate) fn set(&self, p: DeferPolicy) {
        self.0.store(p as u8, Ordering::Relaxed);
    }
}

/// The number of lanes whose live record is non-empty (a superset of the lanes with a live
/// log: a record a helper resolved stays until its owner's next commit clears it). Only a
/// lane's owner changes its lane's part: +1 when it publishes a record over an empty one, −1
/// after it cleared its record — and after it invalidated the log the record described and
/// published that invalidation's token (`docs/REDO.md` §6.3: a commit that reads the count
/// after the decrement also sees the token).
pub(crate) struct LiveCount(AtomicU64);

impl LiveCount {
    pub(crate) fn new() -> LiveCount {
        LiveCount(AtomicU64::new(0))
    }

    /// Owner: its lane's record went from empty to non-empty (after the record's publish).
    #[inline]
    pub(crate) fn add(&self) {
        // Release: whoever reads a later value also sees the record.
        self.0.fetch_add(1, Ordering::Release);
    }

    /// Owner: its lane's record went from non-empty to empty (after the record was cleared
    /// and the log it described was invalidated, its token published).
    #[inline]
    pub(crate) fn remove(&self) {
        // Release: whoever reads this value or a later one also sees the token (every
        // modification is a read-modify-write, so the release sequences chain).
        let old = self.0.fetch_sub(1, Ordering::Release);
        debug_assert!(old > 0);
    }

    /// Whether any lane other than the caller's may have a live log; `own`: whether the
    /// caller's own record is non-empty (its part of the count, which only it changes).
    #[inline]
    pub(crate) fn others(&self, own: bool) -> bool {
        // Acquire: pairs with `add` (the records) and `remove` (the tokens).
        self.0.load(Ordering::Acquire) > u64::from(own)
    }

    /// The count.
    #[cfg(test)]
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_per_commit() {
        assert!(!DeferPolicy::Never.defers(3));
        assert!(DeferPolicy::Always.defers(0));
        assert!(DeferPolicy::Words.defers(1));
        assert!(!DeferPolicy::Words.defers(0));
        let p = Policy::new(DeferPolicy::Never);
        for q in [DeferPolicy::Always, DeferPolicy::Words, DeferPolicy::Never] {
            p.set(q);
            assert_eq!(p.get(), q);
        }
    }

    #[test]
    fn live_count_excludes_the_caller() {
        let c = LiveCount::new();
        assert!(!c.others(false));
        c.add();
        assert!(!c.others(true));
        assert!(c.others(false));
        c.add();
        assert!(c.others(true));
        c.remove();
        c.remove();
        assert_eq!(c.get(), 0);
    }
}
