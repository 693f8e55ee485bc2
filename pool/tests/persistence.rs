//! The persistence seam: what flush and drain do in each mode, counted.

mod common;

use common::*;
use pmstore_pool::{
    CreateOptions, ModeRequest, OpenOptions, PersistMode, Pool, MIN_POOL_SIZE,
    MSYNC_MERGE_GAP_PAGES,
};

fn create(path: &std::path::Path, size: u64, mode: ModeRequest) -> Pool {
    Pool::create(
        path,
        &CreateOptions::new(LAYOUT, size)
            .mode(mode)
            .preallocate(false),
    )
    .unwrap()
}

#[test]
fn flush_mode_flushes_each_touched_line_once() {
    let (_d, path) = scratch();
    let pool = create(&path, MIN_POOL_SIZE, ModeRequest::Flush);
    assert!(pool.persistence().uses_cache_flush());
    assert!(pool.flush_instr().is_some());
    let base = pool.geometry().heap_offset;
    let mut ctx = pool.flush_context();
    let cases = [
        (0, 1, 1),
        (0, 64, 1),
        (63, 2, 2),
        (60, 8, 2),
        (64, 128, 2),
        (1, 128, 3),
        (0, 4096, 64),
        (10, 0, 0),
    ];
    for (off, len, lines) in cases {
        let before = ctx.counters();
        pool.flush(&mut ctx, base + off, len);
        assert_eq!(
            ctx.counters().lines_flushed - before.lines_flushed,
            lines,
            "flush({off}, {len})"
        );
    }
    let before = ctx.counters();
    pool.drain(&mut ctx).unwrap();
    let d = ctx.counters() - before;
    assert_eq!((d.drains, d.msync_calls, d.lines_flushed), (1, 0, 0));
    // The pool-wide counters see what was drained.
    assert_eq!(pool.counters(), ctx.counters());
}

#[test]
fn non_temporal_copies_stream_whole_lines() {
    let (_d, path) = scratch();
    let pool = create(&path, MIN_POOL_SIZE, ModeRequest::Flush);
    let base = pool.geometry().heap_offset;
    let mut ctx = pool.flush_context();
    let src: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + 3) as u8).collect();
    // (offset within a line, length) -> (lines flushed, bytes streamed)
    for (skew, len, lines, nt) in [
        (0, 256, 0, 256),
        (8, 256, 2, 192),
        (0, 4096, 0, 4096),
        (3, 255, 5, 0),
        (32, 300, 2, 256),
    ] {
        let off = base + 8192 + skew;
        let before = ctx.counters();
        // SAFETY: single-threaded, no references into the pool.
        unsafe { pool.copy_persist(&mut ctx, off, &src[..len]).unwrap() };
        let d = ctx.counters() - before;
        assert_eq!(
            (d.lines_flushed, d.nt_bytes, d.drains),
            (lines, nt, 1),
            "copy of {len} at +{skew}"
        );
        let mut back = vec![0; len];
        // SAFETY: as above.
        unsafe { pool.read(off, &mut back) };
        assert_eq!(back, src[..len]);
    }
}

#[test]
fn nt_copies_of_any_size_stream_every_whole_line() {
    let (_d, path) = scratch();
    let pool = create(&path, MIN_POOL_SIZE, ModeRequest::Flush);
    let base = pool.geometry().heap_offset;
    let mut ctx = pool.flush_context();
    let src: Vec<u8> = (0..1000u32).map(|i| (i * 13 + 5) as u8).collect();
    // (offset within a line, length) -> (lines flushed, bytes streamed)
    for (skew, len, lines, nt) in [
        (0, 64, 0, 64),
        (0, 128, 0, 128),
        (8, 64, 2, 0),
        (8, 128, 2, 64),
        (0, 8, 1, 0),
        (0, 80, 1, 64),
    ] {
        let off = base + 4096 + skew;
        let before = ctx.counters();
        // SAFETY: single-threaded, no references into the pool.
        unsafe { pool.copy_nt_nodrain(&mut ctx, off, &src[..len]) };
        pool.drain(&mut ctx).unwrap();
        let d = ctx.counters() - before;
        assert_eq!(
            (d.lines_flushed, d.nt_bytes, d.drains),
            (lines, nt, 1),
            "copy of {len} at +{skew}"
        );
        let mut back = vec![0; len];
        // SAFETY: as above.
        unsafe { pool.read(off, &mut back) };
        assert_eq!(back, src[..len]);
    }
    // In msync mode the same call is an ordinary copy, recorded as dirty pages.
    let (_d2, path2) = scratch();
    let pool = create(&path2, MIN_POOL_SIZE, ModeRequest::Msync);
    let mut ctx = pool.flush_context();
    let off = pool.geometry().heap_offset;
    // SAFETY: as above.
    unsafe { pool.copy_nt_nodrain(&mut ctx, off, &src[..128]) };
    pool.drain(&mut ctx).unwrap();
    let d = ctx.counters();
    assert_eq!((d.nt_bytes, d.msync_calls), (0, 1));
}

#[test]
fn msync_mode_syncs_exactly_the_dirty_pages() {
    let (_d, path) = scratch();
    // A 1 GiB pool (sparse, so the test is cheap): the cost must not depend on the size.
    let pool = create(&path, 1 << 30, ModeRequest::Msync);
    assert_eq!(pool.persistence(), PersistMode::Msync);
    assert_eq!(pool.flush_instr(), None);
    let mut ctx = pool.flush_context();
    let heap = pool.geometry().heap_offset;
    let pages = [heap + (3 << 20), heap + (700 << 20), heap + 4096 * 5];
    for &p in &pages {
        // SAFETY: single-threaded, no references into the pool.
        unsafe { pool.write(p + 100, &[0xEE; 16]) };
        pool.flush(&mut ctx, p + 100, 16);
    }
    let before = ctx.counters();
    pool.drain(&mut ctx).unwrap();
    let d = ctx.counters() - before;
    assert_eq!(
        (d.msync_calls, d.msync_bytes, d.drains, d.lines_flushed),
        (3, 3 * 4096, 1, 0)
    );
    // Marked clean: draining again syncs nothing.
    pool.drain(&mut ctx).unwrap();
    assert_eq!((ctx.counters() - before).msync_calls, 3);
}

#[test]
fn msync_mode_coalesces_adjacent_overlapping_and_nearby_pages() {
    let (_d, path) = scratch();
    let pool = create(&path, 16 << 20, ModeRequest::Msync);
    let mut ctx = pool.flush_context();
    let h = pool.geometry().heap_offset;
    let page = 4096;
    // Pages h+5..h+8 (dirtied out of order and twice) and a range straddling two pages: one
    // run; page h+20, 12 clean pages further: joined to it (gap <= MSYNC_MERGE_GAP_PAGES);
    // a page 2 MiB further (more than the gap): a call of its own.
    let far = 20 + 2 * MSYNC_MERGE_GAP_PAGES;
    for (off, len) in [
        (6 * page, 10),
        (5 * page, 4096),
        (7 * page + 4000, 200),
        (6 * page + 8, 8),
        (20 * page, 1),
        (far * page, 8),
    ] {
        pool.flush(&mut ctx, h + off, len);
    }
    let before = ctx.counters();
    pool.drain(&mut ctx).unwrap();
    let d = ctx.counters() - before;
    assert_eq!((d.msync_calls, d.msync_bytes), (2, (16 + 1) * 4096));
    // Runs exactly MSYNC_MERGE_GAP_PAGES apart join; one page more and they do not.
    for (gap, calls) in [(MSYNC_MERGE_GAP_PAGES, 1), (MSYNC_MERGE_GAP_PAGES + 1, 2)] {
        pool.flush(&mut ctx, h, 8);
        pool.flush(&mut ctx, h + (1 + gap) * page, 8);
        let before = ctx.counters();
        pool.drain(&mut ctx).unwrap();
        assert_eq!((ctx.counters() - before).msync_calls, calls, "gap {gap}");
    }
}

#[test]
fn contexts_are_independent() {
    let (_d, path) = scratch();
    let pool = create(&path, MIN_POOL_SIZE, ModeRequest::Msync);
    let (mut a, mut b) = (pool.flush_context(), pool.flush_context());
    let h = pool.geometry().heap_offset;
    pool.flush(&mut a, h, 8);
    pool.flush(&mut b, h + 8192, 8);
    pool.drain(&mut a).unwrap();
    assert_eq!(a.counters().msync_calls, 1);
    assert!(b.has_pending());
    pool.drain(&mut b).unwrap();
    assert_eq!(b.counters().msync_calls, 1);
    assert_eq!(pool.counters().msync_calls, 2);
}

#[test]
#[should_panic(expected = "outside the pool")]
fn flush_outside_the_pool_panics() {
    let (_d, path) = scratch();
    let pool = create(&path, MIN_POOL_SIZE, ModeRequest::Flush);
    let mut ctx = pool.flush_context();
    pool.flush(&mut ctx, MIN_POOL_SIZE - 8, 16);
}

#[test]
#[should_panic(expected = "another pool")]
fn a_context_belongs_to_its_pool() {
    let (_d, path) = scratch();
    let (_d2, path2) = scratch();
    let pool = create(&path, MIN_POOL_SIZE, ModeRequest::Flush);
    let other = create(&path2, MIN_POOL_SIZE, ModeRequest::Flush);
    let mut ctx = other.flush_context();
    pool.flush(&mut ctx, 4096, 8);
}

#[test]
fn persisted_data_survives_reopen_in_every_mode() {
    for mode in [ModeRequest::Flush, ModeRequest::Msync, ModeRequest::Auto] {
        let (_d, path) = scratch();
        let pool = create(&path, MIN_POOL_SIZE, mode);
        let off = pool.geometry().heap_offset + 12345;
        let mut ctx = pool.flush_context();
        // SAFETY: single-threaded, no references into the pool.
        unsafe {
            pool.copy_persist(&mut ctx, off, b"durable without fsync")
                .unwrap()
        };
        drop(pool);
        let pool = Pool::open(&path, &OpenOptions::new(LAYOUT).read_only(true)).unwrap();
        let mut back = [0u8; 21];
        // SAFETY: as above.
        unsafe { pool.read(off, &mut back) };
        assert_eq!(&back, b"durable without fsync");
    }
}

#[test]
fn tmpfs_and_ordinary_files_are_not_dax() {
    // Neither /dev/shm (tmpfs) nor the temp dir is a DAX mount here, so MAP_SYNC is refused
    // and auto mode falls back to msync. (On a DAX mount the DAX VM tests check MapSync.)
    if std::env::var_os(pmstore_pool::ModeRequest::ENV).is_some() {
        eprintln!("skipped: {} is set", pmstore_pool::ModeRequest::ENV);
        return;
    }
    for dir in ["/dev/shm", "/var/tmp"] {
        if !std::path::Path::new(dir).is_dir() {
            continue;
        }
        let d = tempfile::tempdir_in(dir).unwrap();
        let path = d.path().join("t.pool");
        let pool = create(&path, MIN_POOL_SIZE, ModeRequest::Auto);
        assert_eq!(pool.persistence(), PersistMode::Msync, "{dir}");
        let forced = {
            drop(pool);
            Pool::open(&path, &OpenOptions::new(LAYOUT).mode(ModeRequest::Flush)).unwrap()
        };
        assert_eq!(forced.persistence(), PersistMode::ForcedFlush);
        assert!(!forced.persistence().power_fail_safe());
        let info = Pool::inspect(&path, None).unwrap();
        assert!(info.locked);
        assert_eq!(info.mode, PersistMode::Msync);
    }
}

#[test]
fn a_drain_with_nothing_flushed_costs_nothing() {
    for mode in [ModeRequest::Flush, ModeRequest::Msync] {
        let (_d, path) = scratch();
        let pool = create(&path, MIN_POOL_SIZE, mode);
        let mut ctx = pool.flush_context();
        pool.drain(&mut ctx).unwrap();
        assert_eq!(ctx.counters(), Default::default());
        assert!(!ctx.has_pending());
        pool.flush(&mut ctx, 4096, 1);
        assert!(ctx.has_pending());
        pool.drain(&mut ctx).unwrap();
        pool.drain(&mut ctx).unwrap();
        assert_eq!(ctx.counters().drains, 1);
    }
}
