//! Range entries of the lane redo log: commits that mix word and range entries, argument
//! checks, recovery of crafted logs (valid, structurally corrupt), and every crash image of a
//! range commit in the simulated persistence domain.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use pmstore_alloc::redo::{
    encode_log_ops, range_slots, RedoEntry, RedoLogs, RedoRange, REDO_HEADER_SIZE,
};
use pmstore_alloc::{AllocError, TargetError};
use pmstore_pool::sim::CrashPoint;
use pmstore_pool::{CreateOptions, ModeRequest, OpenOptions, Pool, MIN_POOL_SIZE};

const LAYOUT: &str = "redo-ranges";

fn scratch() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap();
    let path = dir.path().join("redo.pool");
    (dir, path)
}

fn bytes(pool: &Pool, off: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    // SAFETY: single-threaded test: nothing else accesses the pool.
    unsafe { pool.read(off, &mut v) };
    v
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

fn commit_words_and_ranges(mode: ModeRequest) {
    let (_dir, path) = scratch();
    let opts = CreateOptions::new(LAYOUT, MIN_POOL_SIZE).mode(mode);
    let mut pool = Pool::create(&path, &opts).unwrap();
    let (logs, _) = RedoLogs::recover(&mut pool).unwrap();
    let mut lane = logs.lane(2).unwrap();
    let mut ctx = pool.flush_context();
    let h = pool.geometry().heap_offset;
    let small = pattern(24, 1); // one line, plain stores
    let big = pattern(4096, 2); // non-temporal stores
    let odd = pattern(200, 3); // crosses lines, not line-aligned
    let words = [RedoEntry::new(h, 7), RedoEntry::new(h + 8, 8)];
    let ranges = [
        RedoRange {
            target: h + 64,
            data: &small,
        },
        RedoRange {
            target: h + 4096,
            data: &big,
        },
        RedoRange {
            target: h + 8192 + 40,
            data: &odd,
        },
    ];
    let before = ctx.counters();
    // SAFETY: single-threaded: this thread owns every target; one RedoLogs.
    let stats = unsafe { lane.commit_ops(&pool, &mut ctx, &words, &ranges) }.unwrap();
    let d = ctx.counters() - before;
    assert_eq!(d.drains, 2);
    assert_eq!(stats.drains, 2);
    assert_eq!((stats.entries, stats.ranges), (2, 3));
    assert_eq!(
        stats.slots,
        2 + range_slots(24) + range_slots(4096) + range_slots(200)
    );
    assert_eq!(bytes(&pool, h, 8), 7u64.to_le_bytes());
    assert_eq!(bytes(&pool, h + 64, 24), small);
    assert_eq!(bytes(&pool, h + 4096, 4096), big);
    assert_eq!(bytes(&pool, h + 8192 + 40, 200), odd);
    // Neighbours untouched.
    assert_eq!(bytes(&pool, h + 88, 8), [0; 8]);
    assert_eq!(bytes(&pool, h + 8192 + 32, 8), [0; 8]);
    assert_eq!(bytes(&pool, h + 8192 + 240, 8), [0; 8]);
    if mode == ModeRequest::Flush {
        // Flushed lines: log (header + body) and targets; NT stores count as NT bytes.
        assert_eq!(
            (d.lines_flushed + d.nt_bytes / 64) as usize,
            stats.lines(),
            "{stats:?} {d:?}"
        );
        // Target lines: 1 (words) + 1 (small) + 64 (big) + 4 (odd: [40, 240) spans 4 lines).
        assert_eq!(stats.target_lines, 1 + 1 + 64 + 4);
    } else {
        assert!(d.msync_calls >= 2);
    }
    drop((lane, logs));
    drop(pool);
    let mut pool = Pool::open(&path, &OpenOptions::new(LAYOUT).mode(mode)).unwrap();
    let (_, report) = RedoLogs::recover(&mut pool).unwrap();
    assert_eq!(report.logs_replayed, 0, "the log was invalidated");
    assert_eq!(bytes(&pool, h + 4096, 4096), big);
}

#[test]
fn words_and_ranges_commit_forced_flush() {
    commit_words_and_ranges(ModeRequest::Flush);
}

#[test]
fn words_and_ranges_commit_msync() {
    commit_words_and_ranges(ModeRequest::Msync);
}

#[test]
fn bad_ranges_are_rejected_before_anything_is_written() {
    let (_dir, path) = scratch();
    let opts = CreateOptions::new(LAYOUT, MIN_POOL_SIZE).mode(ModeRequest::Flush);
    let mut pool = Pool::create(&path, &opts).unwrap();
    let (logs, _) = RedoLogs::recover(&mut pool).unwrap();
    let mut lane = logs.lane(0).unwrap();
    let mut ctx = pool.flush_context();
    let g = pool.geometry();
    let h = g.heap_offset;
    let size = pool.size();
    let lanes_end = g.lanes_offset + u64::from(g.lane_count) * u64::from(g.lane_size);
    let d8 = [1u8; 8];
    let d12 = [1u8; 12];
    let d64 = [1u8; 64];
    let cases: Vec<(u64, &[u8], TargetError)> = vec![
        (h + 4, &d8, TargetError::Misaligned),
        (h, &d12, TargetError::BadLength { len: 12 }),
        (h, &[], TargetError::BadLength { len: 0 }),
        (size - 8, &d64, TargetError::OutOfPool),
        (4032, &d64, TargetError::InHeader),
        (g.lanes_offset - 8, &d64, TargetError::InRedoLog { lane: 0 }),
        (lanes_end - 8, &d64, TargetError::InRedoLog { lane: 63 }),
    ];
    let region = bytes(&pool, g.lanes_offset, 4096);
    for (target, data, why) in cases {
        let ranges = [
            RedoRange {
                target: h,
                data: &d8,
            },
            RedoRange { target, data },
        ];
        // SAFETY: single-threaded: this thread owns every target; one RedoLogs.
        let err = unsafe { lane.commit_ops(&pool, &mut ctx, &[RedoEntry::new(h, 1)], &ranges) }
            .unwrap_err();
        assert!(
            matches!(err, AllocError::InvalidTarget { index: 2, target: t, reason } if t == target && reason == why),
            "{target:#x}: {err}"
        );
        assert_eq!(bytes(&pool, h, 8), [0; 8]);
        assert_eq!(bytes(&pool, g.lanes_offset, 4096), region);
        assert_eq!(ctx.counters(), Default::default());
    }
    // Too many slots: LogFull, nothing written.
    let huge = vec![0u8; lane.capacity() * 16]; // head + capacity slots of data
    let ranges = [RedoRange {
        target: h,
        data: &huge,
    }];
    // SAFETY: as above.
    let err = unsafe { lane.commit_ops(&pool, &mut ctx, &[], &ranges) }.unwrap_err();
    assert!(
        matches!(err, AllocError::LogFull { needed, capacity } if needed == capacity + 1),
        "{err}"
    );
    // Exactly full is fine.
    let fits = vec![5u8; (lane.capacity() - 1) * 16];
    let ranges = [RedoRange {
        target: h,
        data: &fits,
    }];
    // SAFETY: as above.
    unsafe { lane.commit_ops(&pool, &mut ctx, &[], &ranges) }.unwrap();
    assert_eq!(bytes(&pool, h, fits.len()), fits);
}

/// Writes `log` into lane `lane`'s region of the closed pool at `path`, reopens it and recovers.
fn recover_with(
    path: &std::path::Path,
    lane: u32,
    log: &[u8],
) -> (
    Pool,
    pmstore_alloc::Result<pmstore_alloc::redo::RecoveryReport>,
) {
    let opts = OpenOptions::new(LAYOUT).mode(ModeRequest::Flush);
    let pool = Pool::open(path, &opts).unwrap();
    let off = pool.geometry().lane_offset(lane);
    // SAFETY: single-threaded test.
    unsafe { pool.write(off, log) };
    drop(pool);
    let mut pool = Pool::open(path, &opts).unwrap();
    let r = RedoLogs::recover(&mut pool).map(|(_, r)| r);
    (pool, r)
}

#[test]
fn a_valid_range_log_is_replayed_and_a_malformed_one_is_corrupt() {
    let (_dir, path) = scratch();
    let opts = CreateOptions::new(LAYOUT, MIN_POOL_SIZE).mode(ModeRequest::Flush);
    let h = {
        let pool = Pool::create(&path, &opts).unwrap();
        pool.geometry().heap_offset
    };
    let data = pattern(40, 9);
    let log = encode_log_ops(
        5,
        &[RedoEntry::new(h, 11)],
        &[RedoRange {
            target: h + 128,
            data: &data,
        }],
    );
    let (pool, r) = recover_with(&path, 4, &log);
    let r = r.unwrap();
    assert_eq!(
        (r.logs_replayed, r.entries_applied, r.ranges_applied),
        (1, 1, 1)
    );
    assert_eq!(r.range_bytes_applied, 40);
    assert_eq!(bytes(&pool, h, 8), 11u64.to_le_bytes());
    assert_eq!(bytes(&pool, h + 128, 40), data);
    drop(pool);

    // Valid checksum, malformed structure: corrupt, and nothing modified.
    let word_after_range = {
        // A range then a word: built by hand, with a correct checksum.
        let mut body = pmstore_alloc::redo::encode_body(
            &[],
            &[RedoRange {
                target: h + 256,
                data: &[1; 8],
            }],
        );
        body.extend_from_slice(bytemuck::bytes_of(&RedoEntry::new(h + 512, 1)));
        with_header(6, &body)
    };
    let past_end = {
        // A range claiming 64 bytes with only 16 bytes of data.
        let mut body = Vec::new();
        body.extend_from_slice(&((h + 256) | 1).to_le_bytes());
        body.extend_from_slice(&64u64.to_le_bytes());
        body.extend_from_slice(&[0; 16]);
        with_header(7, &body)
    };
    let bad_len = {
        let mut body = Vec::new();
        body.extend_from_slice(&((h + 256) | 1).to_le_bytes());
        body.extend_from_slice(&12u64.to_le_bytes());
        body.extend_from_slice(&[0; 16]);
        with_header(8, &body)
    };
    for (log, want) in [
        (word_after_range, "word entry after a range"),
        (past_end, "runs past the end"),
        (bad_len, "not a multiple of 8"),
    ] {
        let before = std::fs::read(&path).unwrap();
        let (pool, r) = recover_with(&path, 9, &log);
        let err = r.unwrap_err();
        assert!(
            matches!(err, AllocError::CorruptLog { lane: 9, .. }) && err.to_string().contains(want),
            "{err}"
        );
        drop(pool);
        let after = std::fs::read(&path).unwrap();
        // Only the log we planted differs from before.
        let off = Pool::inspect(&path, None)
            .unwrap()
            .header
            .geometry()
            .lane_offset(9) as usize;
        let mut expect = before.clone();
        expect[off..off + log.len()].copy_from_slice(&log);
        assert!(after == expect, "recovery modified the pool ({want})");
        // Clean up for the next case.
        let pool = Pool::open(&path, &OpenOptions::new(LAYOUT).mode(ModeRequest::Flush)).unwrap();
        // SAFETY: single-threaded test.
        unsafe { pool.write(off as u64, &vec![0; log.len()]) };
    }
}

fn with_header(seq: u64, body: &[u8]) -> Vec<u8> {
    let h = pmstore_alloc::redo::RedoHeader::for_body(seq, body);
    let mut v = bytemuck::bytes_of(&h).to_vec();
    assert_eq!(v.len() as u64, REDO_HEADER_SIZE);
    v.extend_from_slice(body);
    v
}

/// Every crash image at every drain of two range commits (the second overwriting part of the
/// first) recovers to the state before or after each commit, never a mixture.
#[test]
fn every_crash_image_of_range_commits_is_all_or_nothing() {
    let opts = CreateOptions::new(LAYOUT, MIN_POOL_SIZE);
    let (mut pool, sim) = Pool::create_simulated(&opts).unwrap();
    let (logs, _) = RedoLogs::recover(&mut pool).unwrap();
    let mut lane = logs.lane(1).unwrap();
    let mut ctx = pool.flush_context();
    let h = pool.geometry().heap_offset;
    let region = move |p: &Pool| bytes(p, h, 1024);
    let a = pattern(328, 1);
    let b = pattern(72, 2);
    let mut states = vec![region(&pool)];
    let mut expect_a = states[0].clone();
    expect_a[8..8 + 328].copy_from_slice(&a);
    expect_a[512..520].copy_from_slice(&1u64.to_le_bytes());
    let mut expect_b = expect_a.clone();
    expect_b[64..64 + 72].copy_from_slice(&b);
    expect_b[512..520].copy_from_slice(&2u64.to_le_bytes());
    states.push(expect_a);
    states.push(expect_b);
    let states = Arc::new(states);
    let tally = Arc::new(Mutex::new((0usize, Vec::<String>::new())));
    let hook = {
        let (states, tally) = (Arc::clone(&states), Arc::clone(&tally));
        move |cp: &CrashPoint<'_>| {
            for img in cp.images(12, 64, 0x5EED) {
                let (mut p, _) = Pool::open_simulated(&img, &OpenOptions::new(LAYOUT)).unwrap();
                let r = RedoLogs::recover(&mut p);
                let mut t = tally.lock().unwrap();
                t.0 += 1;
                match r {
                    Err(e) => t.1.push(format!("drain {}: {e}", cp.drain)),
                    Ok(_) => {
                        let got = region(&p);
                        if !states.contains(&got) {
                            t.1.push(format!("drain {}: a mixed state", cp.drain));
                        }
                    }
                }
            }
        }
    };
    sim.set_crash_hook(hook.clone());
    // SAFETY: single-threaded: this thread owns every target; one RedoLogs.
    unsafe {
        lane.commit_ops(
            &pool,
            &mut ctx,
            &[RedoEntry::new(h + 512, 1)],
            &[RedoRange {
                target: h + 8,
                data: &a,
            }],
        )
        .unwrap();
        lane.commit_ops(
            &pool,
            &mut ctx,
            &[RedoEntry::new(h + 512, 2)],
            &[RedoRange {
                target: h + 64,
                data: &b,
            }],
        )
        .unwrap();
    }
    sim.clear_crash_hook();
    sim.with_crash_point(|cp| hook(cp));
    let t = tally.lock().unwrap();
    println!("crash images checked: {}", t.0);
    assert!(t.1.is_empty(), "{:#?}", &t.1[..t.1.len().min(5)]);
    assert!(t.0 >= 5, "only {} images", t.0);
}
