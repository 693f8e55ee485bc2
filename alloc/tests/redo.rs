//! Integration tests of the lane redo log on real pools (forced-flush mode on /dev/shm, and
//! msync mode): commit costs, argument checks, recovery of media states built directly with
//! `Pool::write`, concurrency, and real process kills.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use pmstore_alloc::redo::{
    encode_log, DeferPolicy, RedoEntry, RedoLayout, RedoLogs, RedoRange, REDO_CAPACITY,
    REDO_HEADER_SIZE, REDO_LOG_SIZE,
};
use pmstore_alloc::{AllocError, CorruptReason, TargetError};
use pmstore_pool::{CreateOptions, ModeRequest, OpenOptions, Pool, MIN_POOL_SIZE};

const LAYOUT: &str = "redo-tests";

fn scratch() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap();
    let path = dir.path().join("redo.pool");
    (dir, path)
}

fn create(path: &Path, mode: ModeRequest) -> Pool {
    Pool::create(path, &CreateOptions::new(LAYOUT, MIN_POOL_SIZE).mode(mode)).unwrap()
}

fn open(path: &Path, mode: ModeRequest) -> Pool {
    Pool::open(path, &OpenOptions::new(LAYOUT).mode(mode)).unwrap()
}

/// A fresh forced-flush pool, closed.
fn fresh() -> (tempfile::TempDir, PathBuf) {
    let (dir, path) = scratch();
    drop(create(&path, ModeRequest::Flush));
    (dir, path)
}

fn heap(pool: &Pool) -> u64 {
    pool.geometry().heap_offset
}

fn read_word(pool: &Pool, off: u64) -> u64 {
    let mut b = [0; 8];
    // SAFETY: single-threaded test: nothing else accesses the pool.
    unsafe { pool.read(off, &mut b) };
    u64::from_le_bytes(b)
}

fn write_word(pool: &Pool, off: u64, v: u64) {
    // SAFETY: single-threaded test: nothing else accesses the pool.
    unsafe { pool.write(off, &v.to_le_bytes()) };
}

fn log_offset(pool: &Pool, lane: u32) -> u64 {
    pool.geometry().lane_offset(lane)
}

/// Writes raw log bytes at the start of `lane`'s log region.
fn put_log(pool: &Pool, lane: u32, bytes: &[u8]) {
    // SAFETY: single-threaded test: nothing else accesses the pool.
    unsafe { pool.write(log_offset(pool, lane), bytes) };
}

fn log_region(pool: &Pool, lane: u32) -> Vec<u8> {
    let mut v = vec![0; REDO_LOG_SIZE as usize];
    // SAFETY: single-threaded test: nothing else accesses the pool.
    unsafe { pool.read(log_offset(pool, lane), &mut v) };
    v
}

fn e(target: u64, value: u64) -> RedoEntry {
    RedoEntry::new(target, value)
}

/// Builds a media state with `f` on the (reopened) pool at `path`, closes it, reopens it and
/// runs recovery.
fn crash_state(
    path: &Path,
    f: impl FnOnce(&Pool),
) -> (
    Pool,
    pmstore_alloc::Result<pmstore_alloc::redo::RecoveryReport>,
) {
    let pool = open(path, ModeRequest::Flush);
    f(&pool);
    drop(pool);
    let mut pool = open(path, ModeRequest::Flush);
    let r = RedoLogs::recover(&mut pool).map(|(_, r)| r);
    (pool, r)
}

// ---------------------------------------------------------------------------------------------
// Commits

fn commit_applies_all_words(mode: ModeRequest, defer: bool) {
    let (_dir, path) = scratch();
    let mut pool = create(&path, mode);
    let (logs, report) = RedoLogs::recover(&mut pool).unwrap();
    assert_eq!(report, Default::default());
    logs.set_deferred_apply(defer);
    let mut lane = logs.lane(3).unwrap();
    let mut ctx = pool.flush_context();
    let h = heap(&pool);
    // The previous commit's target lines, flushed by the next one (deferred apply).
    let mut prev_lines = 0usize;
    for n in [1usize, 2, 3, 4, 5, 17, 100, REDO_CAPACITY] {
        // Targets spread over lines, some sharing a line, one duplicated (last wins).
        let mut entries: Vec<RedoEntry> = (0..n as u64)
            .map(|i| e(h + (i / 2) * 64 + (i % 2) * 8, i * 1000 + n as u64))
            .collect();
        if n >= 3 {
            entries[n - 1] = e(entries[0].target, 4242);
        }
        let before = ctx.counters();
        // SAFETY: single-threaded: this thread owns every target; one RedoLogs.
        let stats = unsafe { lane.commit(&pool, &mut ctx, &entries) }.unwrap();
        let d = ctx.counters() - before;
        assert_eq!(stats.entries, n);
        let log_lines = (REDO_HEADER_SIZE as usize + 16 * n).div_ceil(64);
        let mut lines: Vec<u64> = entries.iter().map(|x| x.target / 64).collect();
        lines.sort_unstable();
        lines.dedup();
        // Up to 24 target lines the values stay unflushed until the next commit (one drain);
        // more are made durable before the commit returns (two drains).
        let deferred = defer && lines.len() <= 24;
        let drains = if deferred { 1 } else { 2 };
        assert_eq!(d.drains, drains, "n = {n}");
        assert_eq!(stats.drains, drains as usize);
        assert_eq!(stats.log_lines, log_lines);
        assert_eq!(stats.deferred_lines, prev_lines);
        let own = if deferred { 0 } else { lines.len() };
        assert_eq!(stats.target_lines, prev_lines + own);
        // Pending invalidations of the lane's other log region: a previous deferred log is
        // invalidated after this drain (and flushed before the second drain, if any). After
        // a commit that was not deferred the lane reuses its region: the next header
        // overwrites the invalidation.
        let expect_pending = usize::from(!deferred && prev_lines > 0);
        assert_eq!(stats.pending_lines, expect_pending, "n = {n}");
        prev_lines = if deferred { lines.len() } else { 0 };
        assert_eq!(stats.helped, 0, "only one lane commits");
        if mode == ModeRequest::Flush {
            // A log body of 256 bytes or more is written with non-temporal stores: its whole
            // lines are not flushed but count as NT bytes.
            assert_eq!(
                (d.lines_flushed + d.nt_bytes / 64) as usize,
                stats.lines(),
                "n = {n}"
            );
            assert_eq!(
                stats.lines(),
                log_lines + stats.target_lines + stats.pending_lines,
                "log lines + distinct target lines + pending invalidations"
            );
        } else {
            // msync: each drain is one msync per run of dirty pages.
            assert!(d.msync_calls >= drains);
        }
        let mut expect = std::collections::HashMap::new();
        for x in &entries {
            expect.insert(x.target, x.value);
        }
        for (&t, &v) in &expect {
            assert_eq!(read_word(&pool, t), v, "n = {n}, target {t:#x}");
        }
        if n >= 3 {
            assert_eq!(read_word(&pool, entries[0].target), 4242, "last entry wins");
        }
        // A deferred log stays valid (live) until the next commit; the other one is
        // invalidated: the (checksum, count) word is zero.
        let layout = logs.layout();
        let valid = (0..2)
            .filter(|&s| read_word(&pool, layout.slot_offset(lane.lane(), s)) != 0)
            .count();
        assert_eq!(
            valid,
            usize::from(deferred),
            "n = {n}: only a live log is valid"
        );
        assert_eq!(logs.live_logs(), usize::from(deferred));
        assert_eq!(stats.seq + 1, logs.next_seq());
    }
    // An empty commit does nothing.
    let before = ctx.counters();
    // SAFETY: as above.
    let stats = unsafe { lane.commit(&pool, &mut ctx, &[]) }.unwrap();
    assert_eq!(stats, Default::default());
    assert_eq!(ctx.counters() - before, Default::default());

    // The values survive a reopen, and after `sync_invalidations` (what a pool's close does)
    // nothing is left to recover.
    logs.sync_invalidations(&pool, &mut ctx).unwrap();
    assert_eq!(logs.live_logs(), 0);
    assert_eq!(logs.pending_invalidations(), 0);
    drop((lane, logs));
    drop(pool);
    let mut pool = open(&path, mode);
    let (_, report) = RedoLogs::recover(&mut pool).unwrap();
    assert_eq!(report.logs_replayed, 0);
    assert_eq!(report.invalid_cleared, 0);
    assert_eq!(read_word(&pool, h), 4242);
}

#[test]
fn commit_applies_all_words_forced_flush() {
    commit_applies_all_words(ModeRequest::Flush, false);
}

#[test]
fn commit_applies_all_words_forced_flush_deferred() {
    commit_applies_all_words(ModeRequest::Flush, true);
}

#[test]
fn commit_applies_all_words_msync() {
    commit_applies_all_words(ModeRequest::Msync, true);
}

#[test]
fn log_full_writes_nothing() {
    let (_dir, path) = scratch();
    let mut pool = create(&path, ModeRequest::Flush);
    let (logs, _) = RedoLogs::recover(&mut pool).unwrap();
    let mut lane = logs.lane(0).unwrap();
    let mut ctx = pool.flush_context();
    let h = heap(&pool);
    let capacity = lane.capacity();
    assert_eq!(
        capacity,
        (8192 - 64) / 16,
        "a lane's log region is half the lane"
    );
    let entries: Vec<_> = (0..capacity as u64 + 1)
        .map(|i| e(h + 8 * i, i + 1))
        .collect();
    let region = log_region(&pool, 0);
    // SAFETY: single-threaded: this thread owns every target; one RedoLogs.
    let err = unsafe { lane.commit(&pool, &mut ctx, &entries) }.unwrap_err();
    assert!(
        matches!(
            err,
            AllocError::LogFull {
                needed,
                capacity: c
            } if needed == capacity + 1 && c == capacity
        ),
        "{err}"
    );
    assert_eq!(ctx.counters(), Default::default(), "nothing flushed");
    assert_eq!(log_region(&pool, 0), region);
    assert!(entries.iter().all(|x| read_word(&pool, x.target) == 0));
    // Exactly full is fine.
    // SAFETY: as above.
    unsafe { lane.commit(&pool, &mut ctx, &entries[..capacity]) }.unwrap();
    assert_eq!(
        read_word(&pool, entries[capacity - 1].target),
        capacity as u64
    );
}

#[test]
fn invalid_targets_are_rejected_before_anything_is_written() {
    let (_dir, path) = scratch();
    let mut pool = create(&path, ModeRequest::Flush);
    let (logs, _) = RedoLogs::recover(&mut pool).unwrap();
    let mut lane = logs.lane(1).unwrap();
    let mut ctx = pool.flush_context();
    let h = heap(&pool);
    let g = pool.geometry();
    let size = pool.size();
    let cases = [
        (h + 4, TargetError::Misaligned),
        (size, TargetError::OutOfPool),
        (size - 4, TargetError::Misaligned),
        (u64::MAX - 7, TargetError::OutOfPool),
        (0, TargetError::InHeader),
        (4088, TargetError::InHeader),
        (g.lane_offset(1), TargetError::InRedoLog { lane: 1 }),
        (
            g.lane_offset(5) + REDO_LOG_SIZE - 8,
            TargetError::InRedoLog { lane: 5 },
        ),
        // The whole lane is its log's region.
        (
            g.lane_offset(5) + REDO_LOG_SIZE,
            TargetError::InRedoLog { lane: 5 },
        ),
        (
            g.lane_offset(5) + u64::from(g.lane_size) - 8,
            TargetError::InRedoLog { lane: 5 },
        ),
    ];
    let region = log_region(&pool, 1);
    for (bad, why) in cases {
        let entries = [e(h, 7), e(bad, 8), e(h + 8, 9)];
        // SAFETY: single-threaded: this thread owns every target; one RedoLogs.
        let err = unsafe { lane.commit(&pool, &mut ctx, &entries) }.unwrap_err();
        assert!(
            matches!(err, AllocError::InvalidTarget { index: 1, target, reason } if target == bad && reason == why),
            "{bad:#x}: {err}"
        );
        assert_eq!(read_word(&pool, h), 0);
        assert_eq!(log_region(&pool, 1), region);
        assert_eq!(ctx.counters(), Default::default());
    }
    // Words right after the lanes, in the root area and at the pool's end are fine.
    let lanes_end = g.lanes_offset + u64::from(g.lane_count) * u64::from(g.lane_size);
    let ok = [e(lanes_end, 1), e(g.root_offset, 2), e(size - 8, 3)];
    // SAFETY: as above.
    unsafe { lane.commit(&pool, &mut ctx, &ok) }.unwrap();
    for x in ok {
        assert_eq!(read_word(&pool, x.target), x.value);
    }
}

#[test]
fn pending_invalidations_are_flushed_by_the_next_committer() {
    let (_dir, path) = scratch();
    let mut pool = create(&path, ModeRequest::Flush);
    let (logs, _) = RedoLogs::recover(&mut pool).unwrap();
    logs.set_deferred_apply(true); // live logs and helping
    let (mut a, mut b, mut c) = (
        logs.lane(0).unwrap(),
        logs.lane(7).unwrap(),
        logs.lane(63).unwrap(),
    );
    let mut ctx = pool.flush_context();
    let h = heap(&pool);
    // Every commit stores to the same word: each one conflicts with the live log of the
    // lane that committed before it. Returns (pending lines, helped logs, deferred lines).
    let commit = |l: &mut pmstore_alloc::redo::LaneLog, ctx: &mut pmstore_pool::FlushContext, v| {
        let before = ctx.counters();
        // SAFETY: single-threaded: this thread owns the target; one RedoLogs.
        let s = unsafe { l.commit(&pool, ctx, &[e(h, v)]) }.unwrap();
        let d = ctx.counters() - before;
        assert_eq!(d.drains, 1);
        // Log lines go with non-temporal stores (counted as NT bytes), the rest with flushes.
        assert_eq!((d.lines_flushed + d.nt_bytes / 64) as usize, s.lines());
        assert_eq!(s.lines(), 2 + s.target_lines + s.pending_lines);
        assert_eq!(s.target_lines, s.helped + s.deferred_lines);
        (s.pending_lines, s.helped, s.deferred_lines)
    };
    assert_eq!(logs.pending_invalidations(), 0);
    assert_eq!(commit(&mut a, &mut ctx, 1), (0, 0, 0));
    assert_eq!((logs.pending_invalidations(), logs.live_logs()), (0, 1)); // a live
    assert_eq!(commit(&mut b, &mut ctx, 2), (0, 1, 0)); // helps a: a invalidated
    assert_eq!((logs.pending_invalidations(), logs.live_logs()), (1, 1)); // a's; b live
    assert_eq!(commit(&mut c, &mut ctx, 3), (1, 1, 0)); // flushes a's, helps b
    assert_eq!(commit(&mut c, &mut ctx, 4), (1, 0, 1)); // b's; its own previous log's lines
    assert_eq!(logs.pending_invalidations(), 1); // c's first log
    assert_eq!(commit(&mut a, &mut ctx, 5), (1, 1, 0)); // c's, helps c (a's own was helped)
    assert_eq!((logs.pending_invalidations(), logs.live_logs()), (1, 1));
    // sync: helps a (drain), then flushes a's and c's invalidations (drain).
    assert_eq!(logs.sync_invalidations(&pool, &mut ctx).unwrap(), 2);
    assert_eq!((logs.pending_invalidations(), logs.live_logs()), (0, 0));
    assert_eq!(commit(&mut b, &mut ctx, 6), (0, 0, 0));
    assert_eq!(read_word(&pool, h), 6);
}

/// Without live logs (deferral off, as in the cache-flush modes) a commit flushes only the
/// pending invalidations of logs that may share a line with its own (Bloom masks): threads
/// working on disjoint objects leave each other's header lines alone.
#[test]
fn without_live_logs_only_overlapping_pending_invalidations_are_flushed() {
    let (_dir, path) = scratch();
    let mut pool = create(&path, ModeRequest::Flush);
    let (logs, _) = RedoLogs::recover(&mut pool).unwrap();
    logs.set_deferred_apply(false);
    let (mut a, mut b) = (logs.lane(0).unwrap(), logs.lane(7).unwrap());
    let mut ctx = pool.flush_context();
    let h = heap(&pool);
    let commit =
        |l: &mut pmstore_alloc::redo::LaneLog, ctx: &mut pmstore_pool::FlushContext, t, v| {
            // SAFETY: single-threaded: this thread owns the targets; one RedoLogs.
            let s = unsafe { l.commit(&pool, ctx, &[e(t, v)]) }.unwrap();
            assert_eq!(s.drains, 2);
            s.pending_lines
        };
    assert_eq!(commit(&mut a, &mut ctx, h, 1), 0);
    assert_eq!(logs.pending_invalidations(), 1); // a's log, invalidated, not flushed
                                                 // b stores to other lines: only a Bloom collision (1 in 64 per line) makes it flush a's
                                                 // header. Among 8 different lines, most leave it alone.
    let (mut skipped, mut a_pending) = (0, true);
    for k in 1..=8u64 {
        let flushed = commit(&mut b, &mut ctx, h + 4096 * k, k);
        assert!(flushed <= usize::from(a_pending)); // b's own region is overwritten, not flushed
        if a_pending && flushed == 0 {
            skipped += 1;
        }
        a_pending &= flushed == 0;
        // b's own invalidation, and a's unless flushed.
        assert_eq!(logs.pending_invalidations(), 1 + usize::from(a_pending));
    }
    assert!(
        skipped >= 4,
        "only {skipped} of 8 unrelated commits skipped a's header"
    );
    // A commit sharing a's line must flush a's invalidation before its own drain.
    assert_eq!(commit(&mut b, &mut ctx, h + 8, 9), usize::from(a_pending));
    assert_eq!(logs.pending_invalidations(), 1); // only b's own remains
    assert_eq!(read_word(&pool, h), 1);
    assert_eq!(read_word(&pool, h + 8), 9);
}

#[test]
fn an_idle_live_log_is_helped_once_when_old_by_a_commit_meeting_its_mask() {
    let (_dir, path) = scratch();
    let mut pool = create(&path, ModeRequest::Flush);
    let (logs, _) = RedoLogs::recover(&mut pool).unwrap();
    logs.set_deferred_apply(true);
    let (mut a, mut b) = (logs.lane(0).unwrap(), logs.lane(7).unwrap());
    let mut ctx = pool.flush_context();
    let h = heap(&pool);
    // a's log stays live: its lane never commits again (a thread that stopped committing).
    // SAFETY: single-threaded: this thread owns the targets; one RedoLogs.
    let s = unsafe { a.commit(&pool, &mut ctx, &[e(h, 1)]) }.unwrap();
    assert_eq!(s.drains, 1);
    // b commits to other lines, one each. Its commits whose Bloom mask meets a's (1 line in 64)
    // need not help a's log (no shared line) and do not while it is young; the first one after
    // it is 256 commits old helps it, once: later ones find it resolved.
    let mut helped_at = Vec::new();
    for k in 1..=1000u64 {
        // SAFETY: as above.
        let s = unsafe { b.commit(&pool, &mut ctx, &[e(h + 64 * k, k)]) }.unwrap();
        if s.helped > 0 {
            helped_at.push((k, s.helped));
        }
    }
    assert_eq!(helped_at.len(), 1, "helped at {helped_at:?}");
    assert!(helped_at[0].0 >= 256, "helped a young log: {helped_at:?}");
    assert_eq!(helped_at[0].1, 1);
    assert_eq!(read_word(&pool, h), 1);
    assert_eq!(read_word(&pool, h + 64 * 1000), 1000);
}

#[test]
fn lanes_are_handed_out_once() {
    let (_dir, path) = scratch();
    let mut pool = create(&path, ModeRequest::Flush);
    let (logs, _) = RedoLogs::recover(&mut pool).unwrap();
    let l = logs.lane(2).unwrap();
    assert!(logs.lane(2).is_none());
    assert!(logs.clone().lane(2).is_none());
    drop(l);
    assert!(logs.lane(2).is_some());
    assert_eq!(logs.lane_count(), 64);
}

#[test]
#[should_panic(expected = "another pool")]
fn logs_of_another_pool_are_refused() {
    let (_d1, p1) = scratch();
    let (_d2, p2) = scratch();
    let mut pool1 = create(&p1, ModeRequest::Flush);
    let pool2 = create(&p2, ModeRequest::Flush);
    let (logs, _) = RedoLogs::recover(&mut pool1).unwrap();
    let mut lane = logs.lane(0).unwrap();
    let mut ctx = pool2.flush_context();
    let h = heap(&pool2);
    // SAFETY: single-threaded test (and it panics before writing).
    let _ = unsafe { lane.commit(&pool2, &mut ctx, &[e(h, 1)]) };
}

#[test]
fn lanes_smaller_than_a_log_are_refused() {
    let (_dir, path) = scratch();
    let mut pool = Pool::create(
        &path,
        &CreateOptions::new(LAYOUT, MIN_POOL_SIZE)
            .lanes(4, 2048)
            .mode(ModeRequest::Flush),
    )
    .unwrap();
    assert!(matches!(
        RedoLogs::recover(&mut pool),
        Err(AllocError::LaneTooSmall {
            lane_size: 2048,
            needed: 4096
        })
    ));
}

#[test]
fn read_only_pools() {
    let (_dir, path) = fresh();
    let open_ro = || {
        Pool::open(
            &path,
            &OpenOptions::new(LAYOUT)
                .read_only(true)
                .mode(ModeRequest::Flush),
        )
        .unwrap()
    };
    // Nothing to recover: fine, but commits are refused.
    let mut ro = open_ro();
    let (logs, _) = RedoLogs::recover(&mut ro).unwrap();
    let h = heap(&ro);
    let mut ctx = ro.flush_context();
    // SAFETY: single-threaded test.
    let err = unsafe { logs.lane(0).unwrap().commit(&ro, &mut ctx, &[e(h, 1)]) }.unwrap_err();
    assert!(matches!(err, AllocError::ReadOnly { pending_lanes: 0 }));
    drop((logs, ro));
    // A valid log pending: a read-only recovery refuses and changes nothing.
    let pool = open(&path, ModeRequest::Flush);
    put_log(&pool, 4, &encode_log(5, &[e(h, 9)]));
    drop(pool);
    let before = std::fs::read(&path).unwrap();
    let mut ro = open_ro();
    assert!(matches!(
        RedoLogs::recover(&mut ro),
        Err(AllocError::ReadOnly { pending_lanes: 1 })
    ));
    drop(ro);
    assert!(std::fs::read(&path).unwrap() == before);
}

// ---------------------------------------------------------------------------------------------
// Recovery of media states built directly (no simulator)

#[test]
fn a_valid_unapplied_log_is_replayed() {
    // (a)
    let (_dir, path) = fresh();
    let (pool, r) = crash_state(&path, |p| {
        let h = heap(p);
        put_log(
            p,
            2,
            &encode_log(41, &[e(h, 11), e(h + 4096, 22), e(h, 33)]),
        );
    });
    let r = r.unwrap();
    assert_eq!(r.logs_replayed, 1);
    assert_eq!(r.entries_applied, 3);
    assert_eq!(r.max_seq, 41);
    let h = heap(&pool);
    assert_eq!(read_word(&pool, h), 33, "last entry wins");
    assert_eq!(read_word(&pool, h + 4096), 22);
    assert_eq!(read_word(&pool, log_offset(&pool, 2)), 0, "cleared");
    drop(pool);
    // The sequence continues above the highest one found.
    let mut pool = open(&path, ModeRequest::Flush);
    let (logs, r) = RedoLogs::recover(&mut pool).unwrap();
    assert_eq!(r, Default::default());
    assert_eq!(logs.next_seq(), 1);
    drop((logs, pool));
    let (_d, p2) = fresh();
    let pool = open(&p2, ModeRequest::Flush);
    let h = heap(&pool);
    put_log(&pool, 0, &encode_log(100, &[e(h, 1)]));
    drop(pool);
    let mut pool = open(&p2, ModeRequest::Flush);
    let (logs, _) = RedoLogs::recover(&mut pool).unwrap();
    assert_eq!(logs.next_seq(), 101);
}

#[test]
fn an_applied_log_replays_idempotently() {
    // (b)
    let (_dir, path) = fresh();
    let (pool, r) = crash_state(&path, |p| {
        let h = heap(p);
        write_word(p, h, 5);
        write_word(p, h + 8, 6);
        put_log(p, 0, &encode_log(3, &[e(h, 5), e(h + 8, 6)]));
    });
    assert_eq!(r.unwrap().logs_replayed, 1);
    let h = heap(&pool);
    assert_eq!((read_word(&pool, h), read_word(&pool, h + 8)), (5, 6));
}

#[test]
fn a_torn_log_is_not_replayed() {
    // (c): the header is complete but an entry did not reach the media.
    let (_dir, path) = fresh();
    let (pool, r) = crash_state(&path, |p| {
        let h = heap(p);
        let mut bytes = encode_log(8, &[e(h, 1), e(h + 8, 2), e(h + 16, 3)]);
        bytes[64 + 16 + 8] ^= 0x40; // entry 1's value
        put_log(p, 1, &bytes);
    });
    let r = r.unwrap();
    assert_eq!(r.logs_replayed, 0);
    assert_eq!(r.invalid_cleared, 1);
    assert_eq!(
        pool.counters().drains,
        1,
        "one drain clears the invalid logs"
    );
    let h = heap(&pool);
    for i in 0..3 {
        assert_eq!(read_word(&pool, h + 8 * i), 0);
    }
    // Recovery cleared the torn header so it can never become valid later.
    assert_eq!(read_word(&pool, log_offset(&pool, 1)), 0);
    // An entry never written at all (zero) is torn too.
    drop(pool);
    let (pool, r) = crash_state(&path, |p| {
        let h = heap(p);
        let bytes = encode_log(9, &[e(h, 1), e(h + 8, 2)]);
        put_log(p, 1, &bytes[..64 + 16]);
        put_log(p, 3, &bytes[..64]);
    });
    assert_eq!(r.unwrap().logs_replayed, 0);
    assert_eq!(read_word(&pool, heap(&pool)), 0);
}

#[test]
fn a_stale_header_over_newer_entries_is_not_replayed() {
    // (d): an earlier log's header (invalidation not durable) over entries partly
    // overwritten by the next log of the lane.
    let (_dir, path) = fresh();
    let (pool, r) = crash_state(&path, |p| {
        let h = heap(p);
        let old = encode_log(10, &[e(h, 1), e(h + 8, 2), e(h + 16, 3)]);
        let new = encode_log(11, &[e(h + 64, 4), e(h + 72, 5)]);
        let mut media = old.clone();
        media[64..64 + 16].copy_from_slice(&new[64..64 + 16]); // first new entry landed
        put_log(p, 6, &media);
    });
    let r = r.unwrap();
    assert_eq!((r.logs_replayed, r.invalid_cleared), (0, 1));
    let h = heap(&pool);
    for off in [0, 8, 16, 64, 72] {
        assert_eq!(read_word(&pool, h + off), 0);
    }
    drop(pool);
    // The new header over the old entries (new header's line landed first) is invalid too.
    let (pool, r) = crash_state(&path, |p| {
        let h = heap(p);
        let old = encode_log(10, &[e(h, 1), e(h + 8, 2), e(h + 16, 3)]);
        let new = encode_log(11, &[e(h, 4), e(h + 8, 5), e(h + 16, 6)]);
        let mut media = old.clone();
        media[..64].copy_from_slice(&new[..64]);
        put_log(p, 6, &media);
    });
    assert_eq!(r.unwrap().logs_replayed, 0);
    assert_eq!(read_word(&pool, heap(&pool)), 0);
}

#[test]
fn overlapping_logs_replay_in_seq_order() {
    // (e): the higher sequence number wins, whatever the lane order.
    for (seq_lo_lane, seq_hi_lane) in [(0, 9), (9, 0), (63, 1)] {
        let (_dir, path) = fresh();
        let (pool, r) = crash_state(&path, |p| {
            let h = heap(p);
            put_log(p, seq_lo_lane, &encode_log(20, &[e(h, 111), e(h + 8, 1)]));
            put_log(p, seq_hi_lane, &encode_log(21, &[e(h, 222), e(h + 16, 2)]));
            put_log(p, 30, &encode_log(5, &[e(h, 55), e(h + 24, 3)]));
        });
        let r = r.unwrap();
        assert_eq!(r.logs_replayed, 3);
        assert_eq!(r.max_seq, 21);
        // One drain for the replay, then one per valid log cleared (in seq order).
        assert_eq!(pool.counters().drains, 1 + 3);
        let h = heap(&pool);
        assert_eq!(
            read_word(&pool, h),
            222,
            "lanes {seq_lo_lane}/{seq_hi_lane}"
        );
        assert_eq!(
            (
                read_word(&pool, h + 8),
                read_word(&pool, h + 16),
                read_word(&pool, h + 24)
            ),
            (1, 2, 3)
        );
    }
}

#[test]
fn a_valid_log_with_a_bad_target_is_corrupt_and_nothing_is_modified() {
    // (f)
    let (_dir, path) = fresh();
    let pool = open(&path, ModeRequest::Flush);
    let (h, size, g) = (heap(&pool), pool.size(), pool.geometry());
    drop(pool);
    let cases: Vec<(u64, TargetError)> = vec![
        (h + 4, TargetError::Misaligned),
        (size, TargetError::OutOfPool),
        (!7, TargetError::OutOfPool),
        (8, TargetError::InHeader),
        (g.lane_offset(3) + 64, TargetError::InRedoLog { lane: 3 }),
        (g.lane_offset(7), TargetError::InRedoLog { lane: 7 }),
    ];
    for (bad, why) in cases {
        let pool = open(&path, ModeRequest::Flush);
        // A good log elsewhere (must not be replayed either), and the bad one.
        put_log(&pool, 0, &encode_log(1, &[e(h, 1)]));
        put_log(&pool, 7, &encode_log(2, &[e(h + 8, 1), e(bad, 2)]));
        put_log(&pool, 8, b"\x01\x00\x00\x00\x01\x00\x00\x00"); // invalid: not cleared either
        drop(pool);
        let before = std::fs::read(&path).unwrap();
        let mut pool = open(&path, ModeRequest::Flush);
        let err = RedoLogs::recover(&mut pool).unwrap_err();
        assert!(
            matches!(
                err,
                AllocError::CorruptLog {
                    lane: 7,
                    seq: 2,
                    reason: CorruptReason::BadTarget { index: 1, target, error }
                } if target == bad && error == why
            ),
            "{bad:#x}: {err}"
        );
        drop(pool);
        assert!(
            std::fs::read(&path).unwrap() == before,
            "recovery modified the pool"
        );
        // Reset for the next case.
        let pool = open(&path, ModeRequest::Flush);
        for lane in [0, 7, 8] {
            put_log(&pool, lane, &[0; 128]);
        }
    }
    // Two valid logs with one sequence number: corrupt too.
    let pool = open(&path, ModeRequest::Flush);
    put_log(&pool, 2, &encode_log(4, &[e(h, 1)]));
    put_log(&pool, 5, &encode_log(4, &[e(h, 2)]));
    drop(pool);
    let mut pool = open(&path, ModeRequest::Flush);
    assert!(matches!(
        RedoLogs::recover(&mut pool),
        Err(AllocError::CorruptLog {
            lane: 5,
            seq: 4,
            reason: CorruptReason::DuplicateSeq { other_lane: 2 }
        })
    ));
    assert_eq!(read_word(&pool, h), 0);
}

#[test]
fn recovery_twice_gives_the_same_bytes() {
    // (g)
    fn state(p: &Pool, replayed: bool) {
        let h = heap(p);
        if replayed {
            // A crash after recovery's replay, before it cleared the logs.
            write_word(p, h, 3);
            write_word(p, h + 4096, 2);
        }
        put_log(p, 1, &encode_log(7, &[e(h, 1), e(h + 4096, 2)]));
        put_log(p, 2, &encode_log(9, &[e(h, 3)]));
        let mut torn = encode_log(10, &[e(h + 8, 4)]);
        torn[70] ^= 1;
        put_log(p, 3, &torn);
    }
    let (_dir, path) = fresh();
    let (pool, r) = crash_state(&path, |p| state(p, false));
    assert_eq!(r.unwrap().logs_replayed, 2);
    let h = heap(&pool);
    assert_eq!((read_word(&pool, h), read_word(&pool, h + 4096)), (3, 2));
    drop(pool);
    let once = std::fs::read(&path).unwrap();
    let mut pool = open(&path, ModeRequest::Flush);
    let (_, r) = RedoLogs::recover(&mut pool).unwrap();
    assert_eq!(r, Default::default());
    drop(pool);
    assert!(std::fs::read(&path).unwrap() == once);
    // Interrupted recovery, recovered again: the same bytes as the uninterrupted run (past
    // the header page, which differs by uuid and creation time).
    let (_d2, p2) = fresh();
    let (pool, r) = crash_state(&p2, |p| state(p, true));
    assert_eq!(r.unwrap().logs_replayed, 2);
    drop(pool);
    assert!(std::fs::read(&p2).unwrap()[4096..] == once[4096..]);
}

#[test]
fn every_single_byte_corruption_is_rejected_or_reported() {
    // (h): flip bits / overwrite each byte of a valid 2-entry log's header and entries.
    let (_dir, path) = fresh();
    let mut pool = open(&path, ModeRequest::Flush);
    let h = heap(&pool);
    let good = encode_log(77, &[e(h, 0x1111), e(h + 8, 0x2222)]);
    let mut rejected = 0;
    let mut corrupt = 0;
    for i in 0..good.len() {
        let mut variants: Vec<u8> = (0..8).map(|b| good[i] ^ (1 << b)).collect();
        variants.extend([0x00, 0xFF, good[i].wrapping_add(1), 0x40]);
        variants.retain(|&v| v != good[i]);
        variants.dedup();
        for v in variants {
            let mut bytes = good.clone();
            bytes[i] = v;
            write_word(&pool, h, 0);
            write_word(&pool, h + 8, 0);
            put_log(&pool, 5, &bytes);
            match RedoLogs::recover(&mut pool) {
                Ok((_, r)) => {
                    assert_eq!(r.logs_replayed, 0, "byte {i} = {v:#x} was replayed");
                    assert_eq!(r.invalid_cleared, 1, "byte {i} = {v:#x}");
                    rejected += 1;
                }
                Err(AllocError::CorruptLog { lane: 5, .. }) => corrupt += 1,
                Err(e) => panic!("byte {i} = {v:#x}: {e}"),
            }
            assert_eq!((read_word(&pool, h), read_word(&pool, h + 8)), (0, 0));
        }
    }
    assert!(rejected > 96 * 8);
    // CRC-32C detects every error confined to one byte of the covered range.
    assert_eq!(corrupt, 0);
    // And the uncorrupted log does replay.
    put_log(&pool, 5, &good);
    let (_, r) = RedoLogs::recover(&mut pool).unwrap();
    assert_eq!(r.logs_replayed, 1);
    assert_eq!(read_word(&pool, h + 8), 0x2222);
}

// ---------------------------------------------------------------------------------------------
// Concurrency

#[test]
fn concurrent_commits_on_distinct_lanes() {
    const THREADS: u64 = 8;
    const COMMITS: u64 = 400;
    let (_dir, path) = scratch();
    let mut pool = create(&path, ModeRequest::Flush);
    let (logs, _) = RedoLogs::recover(&mut pool).unwrap();
    logs.set_deferred_apply(true); // threads help each other on the shared words
    let pool = Arc::new(pool);
    let h = heap(&pool);
    let word = |t: u64, k: u64| h + t * 4096 + k * 64;
    let shared = Mutex::new(0u64);
    let (sx, sy) = (h + THREADS * 4096, h + THREADS * 4096 + 8);
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (pool, logs, shared) = (&pool, &logs, &shared);
            s.spawn(move || {
                let mut lane = logs.lane(t as u32).unwrap();
                let mut ctx = pool.flush_context();
                for i in 1..=COMMITS {
                    let entries = [e(word(t, 0), i), e(word(t, 1), i * 2), e(word(t, 2), i * 3)];
                    // SAFETY: thread t alone touches its words; one RedoLogs.
                    let st = unsafe { lane.commit(pool, &mut ctx, &entries) }.unwrap();
                    assert_eq!(st.drains, 1);
                    assert!(logs.deferred_apply());
                    if i % 4 == 0 {
                        let mut g = shared.lock().unwrap();
                        *g += 1;
                        // SAFETY: sx and sy are touched only under the mutex.
                        unsafe { lane.commit(pool, &mut ctx, &[e(sx, *g), e(sy, *g)]) }.unwrap();
                    }
                }
            });
        }
    });
    logs.sync_invalidations(&pool, &mut pool.flush_context())
        .unwrap();
    drop(logs);
    let pool = Arc::into_inner(pool).unwrap();
    drop(pool);
    let mut pool = open(&path, ModeRequest::Flush);
    let (_, r) = RedoLogs::recover(&mut pool).unwrap();
    assert_eq!(r.logs_replayed, 0);
    for t in 0..THREADS {
        for k in 0..3 {
            assert_eq!(read_word(&pool, word(t, k)), COMMITS * (k + 1));
        }
    }
    let g = THREADS * COMMITS / 4;
    assert_eq!((read_word(&pool, sx), read_word(&pool, sy)), (g, g));
}

// ---------------------------------------------------------------------------------------------
// Real process kills (forced-flush mode: the page cache survives a process crash)

const CHILD_ENV: &str = "PMSTORE_REDO_CRASH_CHILD";
const KILL_THREADS: u64 = 4;

fn kill_words(h: u64) -> (impl Fn(u64, u64) -> u64, u64, u64) {
    (
        move |t: u64, k: u64| h + t * 8192 + k * 64,
        h + 65536,
        h + 65536 + 4096,
    )
}

/// The child of `killed_mid_commit_recovers`: recovers, then commits forever from 4 threads.
#[test]
#[ignore = "helper process of killed_mid_commit_recovers"]
fn crash_child() {
    let Some(path) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let mut pool = open(Path::new(&path), ModeRequest::Flush);
    let (logs, _) = RedoLogs::recover(&mut pool).unwrap();
    let pool = Arc::new(pool);
    let (word, sx, sy) = kill_words(heap(&pool));
    let shared = Mutex::new(());
    println!("ready");
    std::thread::scope(|s| {
        for t in 0..KILL_THREADS {
            let (pool, logs, shared, word) = (&pool, &logs, &shared, &word);
            s.spawn(move || {
                let mut lane = logs.lane(t as u32).unwrap();
                let mut ctx = pool.flush_context();
                let mut i = read_word(pool, word(t, 0));
                loop {
                    i += 1;
                    let entries = [e(word(t, 0), i), e(word(t, 1), i), e(word(t, 2), i)];
                    // SAFETY: thread t alone touches its words; one RedoLogs.
                    unsafe { lane.commit(pool, &mut ctx, &entries) }.unwrap();
                    let _g = shared.lock().unwrap();
                    let v = read_word(pool, sx) + 1;
                    // SAFETY: sx and sy are touched only under the mutex.
                    unsafe { lane.commit(pool, &mut ctx, &[e(sx, v), e(sy, v)]) }.unwrap();
                }
            });
        }
    });
}

#[test]
fn killed_mid_commit_recovers() {
    let (_dir, path) = fresh();
    let exe = std::env::current_exe().unwrap();
    let mut last = vec![0u64; KILL_THREADS as usize];
    let mut last_shared = 0;
    let mut replayed_rounds = 0;
    for round in 0..12u64 {
        let mut child = std::process::Command::new(&exe)
            .args(["--exact", "crash_child", "--ignored", "--nocapture"])
            .env(CHILD_ENV, &path)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Wait until the child has recovered and starts committing, then let it run a while.
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        while !line.contains("ready") {
            line.clear();
            assert!(std::io::BufRead::read_line(&mut out, &mut line).unwrap() > 0);
        }
        std::thread::sleep(std::time::Duration::from_millis(3 + 7 * round));
        child.kill().unwrap();
        child.wait().unwrap();
        let mut pool = open(&path, ModeRequest::Flush);
        let (_, r) = RedoLogs::recover(&mut pool).unwrap();
        replayed_rounds += usize::from(r.logs_replayed > 0);
        let (word, sx, sy) = kill_words(heap(&pool));
        for t in 0..KILL_THREADS {
            let v = read_word(&pool, word(t, 0));
            assert_eq!(read_word(&pool, word(t, 1)), v, "round {round}, {r:?}");
            assert_eq!(read_word(&pool, word(t, 2)), v, "round {round}, {r:?}");
            assert!(v >= last[t as usize], "durable progress lost");
            last[t as usize] = v;
        }
        let x = read_word(&pool, sx);
        assert_eq!(read_word(&pool, sy), x, "round {round}, {r:?}");
        assert!(x >= last_shared);
        last_shared = x;
    }
    assert!(last.iter().all(|&v| v > 0), "the child made progress");
    eprintln!("killed_mid_commit_recovers: {replayed_rounds}/12 kills left logs to replay");
}

// ---------------------------------------------------------------------------------------------
// Pools made before lane format 2 (no INCOMPAT_LANE_SLOTS bit)

/// A committed log written with the single-region layout of earlier builds — 600 word entries,
/// more than a region of lane format 2 holds (508), so its slots run into the lane's second
/// half — is replayed when the pool's header lacks `INCOMPAT_LANE_SLOTS`, and the second half
/// is not read as a log of its own (`docs/REDO.md` §1). With the bit, the same bytes are an
/// invalid log (too many slots for a region): cleared, never replayed.
#[test]
fn a_legacy_single_region_log_is_replayed_in_a_pool_without_the_incompat_bit() {
    use pmstore_pool::{PoolHeader, CHECKSUM_OFFSET, INCOMPAT_LANE_SLOTS};
    let (pool, sim) = Pool::create_simulated(&CreateOptions::new("legacy", 8 << 20)).unwrap();
    let g = pool.geometry();
    assert_eq!(pool.header().incompat, INCOMPAT_LANE_SLOTS);
    let (data, _) = RedoLayout::new(pool.size(), &g).unwrap().extension_area();
    drop(pool);
    let entries: Vec<RedoEntry> = (0..600u64).map(|i| e(data + 8 * i, 0x1000 + i)).collect();
    let log = encode_log(42, &entries);
    assert!(
        log.len() as u64 > u64::from(g.lane_size) / 2,
        "runs into the second region"
    );
    let make = |incompat: u64| {
        let mut img = sim.media_image();
        let mut h: PoolHeader =
            bytemuck::pod_read_unaligned(&img[..std::mem::size_of::<PoolHeader>()]);
        h.incompat = incompat;
        h.checksum = h.compute_checksum();
        img[..std::mem::size_of::<PoolHeader>()].copy_from_slice(bytemuck::bytes_of(&h));
        assert_eq!(CHECKSUM_OFFSET + 4, std::mem::size_of::<PoolHeader>());
        let lane = g.lane_offset(2) as usize;
        img[lane..lane + log.len()].copy_from_slice(&log);
        img
    };
    // Without the bit: replayed, every word stored, the whole lane one log.
    let (mut p, _) = Pool::open_simulated(&make(0), &OpenOptions::new("legacy")).unwrap();
    let (logs, r) = RedoLogs::recover(&mut p).unwrap();
    // (The second region's first word, inside the log's entries, is cleared after the log.)
    assert_eq!(
        (r.logs_replayed, r.entries_applied, r.invalid_cleared),
        (1, 600, 1)
    );
    assert_eq!(logs.next_seq(), 43);
    for x in &entries {
        assert_eq!(read_word(&p, x.target), x.value);
    }
    // Recovery is done: the lane is empty, and commits use both regions from now on.
    let (_, r) = RedoLogs::recover(&mut p).unwrap();
    assert_eq!((r.logs_replayed, r.invalid_cleared), (0, 0));
    // With the bit: the header claims more slots than a region holds: invalid, not replayed.
    let (mut p, _) =
        Pool::open_simulated(&make(INCOMPAT_LANE_SLOTS), &OpenOptions::new("legacy")).unwrap();
    let (_, r) = RedoLogs::recover(&mut p).unwrap();
    assert_eq!(r.logs_replayed, 0);
    assert!(r.invalid_cleared >= 1, "{r:?}");
    assert_eq!(read_word(&p, entries[0].target), 0);
}

/// Crash exploration of commits through two lanes with deferral off, where each commit flushes
/// only the pending invalidations of logs that may share a line with it (Bloom masks): at every
/// drain, every crash image must recover to the words before or after the commit in progress.
/// The sequence makes the dangerous case happen: a log left valid on the media (its
/// invalidation pending), a later log of the other lane changing its word, then commits that
/// make that later log disappear (its region reused) — unless the older invalidation was
/// flushed in time, recovery would replay the older value.
#[test]
fn two_lanes_with_filtered_pending_invalidations_recover_at_every_drain() {
    let (mut pool, sim) =
        Pool::create_simulated(&CreateOptions::new(LAYOUT, MIN_POOL_SIZE)).unwrap();
    let (logs, _) = RedoLogs::recover(&mut pool).unwrap();
    logs.set_deferred_apply(false);
    let h = heap(&pool);
    // Eight words on four lines, far apart (two share a line).
    let w: Vec<u64> = [0u64, 8, 4096, 8192, 12288, 12296, 16384, 20480]
        .iter()
        .map(|o| h + o)
        .collect();
    // (lane, [(word index, value)]): disjoint and overlapping commits of both lanes.
    let ops: Vec<(usize, Vec<(usize, u64)>)> = vec![
        (0, vec![(0, 1)]),
        (1, vec![(2, 2)]),
        (1, vec![(0, 3), (3, 3)]),
        (1, vec![(4, 4)]),
        (1, vec![(6, 5)]),
        (0, vec![(7, 6)]),
        (0, vec![(2, 7), (5, 7)]),
        (1, vec![(1, 8)]),
        (0, vec![(6, 9), (0, 9)]),
        (0, vec![(3, 10)]),
        (1, vec![(7, 11)]),
        (1, vec![(4, 12), (2, 12)]),
    ];
    let mut states = vec![vec![0u64; w.len()]];
    for (_, e) in &ops {
        let mut s = states.last().unwrap().clone();
        for &(i, v) in e {
            s[i] = v;
        }
        states.push(s);
    }
    let current = Arc::new(Mutex::new(0usize));
    let bad = Arc::new(Mutex::new((0usize, Vec::<String>::new())));
    let hook = before_or_after_hook(&current, &bad, &states, &w, (6, 24, 7));
    let mut lanes = [logs.lane(0).unwrap(), logs.lane(1).unwrap()];
    let mut ctx = pool.flush_context();
    sim.set_crash_hook(hook);
    for (k, (lane, e)) in ops.iter().enumerate() {
        *current.lock().unwrap() = k;
        let entries: Vec<RedoEntry> = e.iter().map(|&(i, v)| RedoEntry::new(w[i], v)).collect();
        // SAFETY: single-threaded: this thread owns every target; one RedoLogs.
        unsafe { lanes[*lane].commit(&pool, &mut ctx, &entries) }.unwrap();
    }
    sim.clear_crash_hook();
    let b = bad.lock().unwrap();
    assert!(
        b.1.is_empty(),
        "{} bad images: {:#?}",
        b.1.len(),
        &b.1[..b.1.len().min(5)]
    );
    assert!(b.0 >= 2 * ops.len(), "only {} images", b.0);
}

/// One commit of [`mixed_commits_recover_at_every_drain`]: through `lane`, word entries
/// `(word index, value)` and ranges `(first word index, words, value)` over consecutive words.
struct MixedOp {
    lane: usize,
    words: Vec<(usize, u64)>,
    ranges: Vec<(usize, usize, u64)>,
}

fn mixed(lane: usize, words: &[(usize, u64)], ranges: &[(usize, usize, u64)]) -> MixedOp {
    MixedOp {
        lane,
        words: words.to_vec(),
        ranges: ranges.to_vec(),
    }
}

/// Crashes at every drain of a two-lane sequence of word commits (deferred under
/// `DeferPolicy::Words`) and range-only commits (not deferred) that overlap each other within
/// and across lanes (helping, a live log followed by a non-deferred commit of the same lane,
/// and the other way round), plus disjoint ones; every image must recover to the state
/// before or after the commit in progress.
fn mixed_commits_recover_at_every_drain(policy: DeferPolicy) {
    let (mut pool, sim) =
        Pool::create_simulated(&CreateOptions::new(LAYOUT, MIN_POOL_SIZE)).unwrap();
    let (logs, _) = RedoLogs::recover(&mut pool).unwrap();
    logs.set_defer_policy(policy);
    let h = heap(&pool);
    // Words 0..8 spread over lines (0, 1 share a line; so do 4, 5), then 8..16: one whole line.
    let w: Vec<u64> = [0u64, 8, 4096, 8192, 12288, 12296, 16384, 20480]
        .iter()
        .map(|o| h + o)
        .chain((0..8).map(|j| h + 24576 + 8 * j))
        .collect();
    let ops = vec![
        mixed(0, &[(0, 1)], &[]),                 // lane 0: live (words)
        mixed(1, &[], &[(0, 2, 2)]),              // range over lane 0's live line: helps it
        mixed(1, &[(2, 3)], &[]),                 // live after a non-deferred commit
        mixed(0, &[], &[(8, 8, 4)]),              // lane 0: whole line, own record cleared
        mixed(0, &[(3, 5)], &[(10, 2, 5)]),       // words and a range: deferred
        mixed(1, &[], &[(2, 1, 6), (12, 1, 6)]),  // own live log (word 2) and lane 0's (line)
        mixed(1, &[(6, 7)], &[]),                 // disjoint
        mixed(0, &[(7, 8)], &[]),                 // disjoint, both lanes live
        mixed(0, &[], &[(4, 2, 9)]),              // range-only, other lane live and disjoint
        mixed(1, &[(4, 10), (6, 10)], &[]),       // words over lane 0's last (non-deferred) log
        mixed(0, &[], &[(6, 1, 11), (8, 8, 11)]), // helps lane 1
        mixed(1, &[], &[(0, 1, 12)]),             // lane 1 clears its record
        mixed(0, &[(1, 13)], &[]),                // over lane 1's last range
        mixed(1, &[(1, 14)], &[(15, 1, 14)]),     // helps lane 0, deferred
        mixed(0, &[], &[(3, 1, 15)]),             // range-only while lane 1 is live
        mixed(1, &[], &[(9, 2, 16)]),             // range-only, own live log
    ];
    let mut states = vec![vec![0u64; w.len()]];
    for op in &ops {
        let mut s = states.last().unwrap().clone();
        for &(i, v) in &op.words {
            s[i] = v;
        }
        for &(i, k, v) in &op.ranges {
            s[i..i + k].fill(v);
        }
        states.push(s);
    }
    let current = Arc::new(Mutex::new(0usize));
    let bad = Arc::new(Mutex::new((0usize, Vec::<String>::new())));
    let hook = before_or_after_hook(&current, &bad, &states, &w, (7, 32, 11));
    let mut lanes = [logs.lane(0).unwrap(), logs.lane(1).unwrap()];
    let mut ctx = pool.flush_context();
    let mut drains = Vec::new();
    sim.set_crash_hook(hook);
    for (k, op) in ops.iter().enumerate() {
        *current.lock().unwrap() = k;
        let entries: Vec<RedoEntry> = op
            .words
            .iter()
            .map(|&(i, v)| RedoEntry::new(w[i], v))
            .collect();
        let data: Vec<Vec<u8>> = op
            .ranges
            .iter()
            .map(|&(_, n, v)| (0..n).flat_map(|_| v.to_le_bytes()).collect())
            .collect();
        let ranges: Vec<RedoRange<'_>> = op
            .ranges
            .iter()
            .zip(&data)
            .map(|(&(i, _, _), d)| RedoRange {
                target: w[i],
                data: d,
            })
            .collect();
        // SAFETY: single-threaded: this thread owns every target; one RedoLogs.
        let s = unsafe { lanes[op.lane].commit_ops(&pool, &mut ctx, &entries, &ranges) }.unwrap();
        drains.push(s.drains);
    }
    sim.clear_crash_hook();
    let b = bad.lock().unwrap();
    assert!(
        b.1.is_empty(),
        "{} bad images: {:#?}",
        b.1.len(),
        &b.1[..b.1.len().min(5)]
    );
    assert!(b.0 >= 2 * ops.len(), "only {} images", b.0);
    // The policy decided per commit: one drain for the deferred ones, two for the others.
    let expect: Vec<usize> = ops
        .iter()
        .map(|op| match policy {
            DeferPolicy::Never => 2,
            DeferPolicy::Always => 1,
            DeferPolicy::Words => 2 - usize::from(!op.words.is_empty()),
        })
        .collect();
    assert_eq!(drains, expect);
    // A crash after the last commit (its log may be live) recovers to the last state.
    drop(lanes);
    let images: Vec<Vec<u8>> = sim.with_crash_point(|cp| cp.images(7, 32, 13).collect());
    for img in images {
        let (mut p, _) = Pool::open_simulated(&img, &OpenOptions::new(LAYOUT)).unwrap();
        RedoLogs::recover(&mut p).unwrap();
        let got: Vec<u64> = w.iter().map(|&t| read_word(&p, t)).collect();
        assert_eq!(&got, states.last().unwrap());
    }
}

#[test]
fn mixed_deferred_and_non_deferred_commits_recover_at_every_drain() {
    mixed_commits_recover_at_every_drain(DeferPolicy::Words);
}

#[test]
fn mixed_commit_sequence_recovers_at_every_drain_deferring_all_or_none() {
    mixed_commits_recover_at_every_drain(DeferPolicy::Always);
    mixed_commits_recover_at_every_drain(DeferPolicy::Never);
}

/// A crash hook for a sequence of commits: every crash image (`CrashPoint::images` with
/// `sample`) taken while operation `k = *current` runs must recover the words `w` to
/// `states[k]` or `states[k + 1]`. Counts images in `bad.0`, collects failures in `bad.1`.
fn before_or_after_hook(
    current: &Arc<Mutex<usize>>,
    bad: &Arc<Mutex<(usize, Vec<String>)>>,
    states: &[Vec<u64>],
    w: &[u64],
    (exhaustive_max, samples, seed): (usize, usize, u64),
) -> impl FnMut(&pmstore_pool::sim::CrashPoint<'_>) + Send + 'static {
    let (current, bad, states, w) = (
        Arc::clone(current),
        Arc::clone(bad),
        states.to_vec(),
        w.to_vec(),
    );
    move |cp: &pmstore_pool::sim::CrashPoint<'_>| {
        let k = *current.lock().unwrap();
        for img in cp.images(exhaustive_max, samples, seed) {
            let (mut p, _) = Pool::open_simulated(&img, &OpenOptions::new(LAYOUT)).unwrap();
            let got = match RedoLogs::recover(&mut p) {
                Ok(_) => w.iter().map(|&t| read_word(&p, t)).collect::<Vec<_>>(),
                Err(e) => {
                    bad.lock().unwrap().1.push(format!("op {k}: recovery: {e}"));
                    continue;
                }
            };
            let mut b = bad.lock().unwrap();
            b.0 += 1;
            if got != states[k] && got != states[k + 1] {
                b.1.push(format!(
                    "op {k} (drain {}): {got:?}, expected {:?} or {:?}",
                    cp.drain,
                    states[k],
                    states[k + 1]
                ));
            }
        }
    }
}
