//! The simulated persistence domain: it models what reaches the media, finds missing flushes,
//! and its crash images expose a broken ordering protocol while passing a correct one.

use std::sync::{Arc, Mutex};

use pmstore_pool::sim::{CrashPoint, LINE};
use pmstore_pool::{CreateOptions, OpenOptions, PersistMode, Pool, PoolError, MIN_POOL_SIZE};

fn sim_pool() -> (Pool, Arc<pmstore_pool::sim::SimDomain>) {
    Pool::create_simulated(&CreateOptions::new("sim", MIN_POOL_SIZE)).unwrap()
}

fn read_u64(img: &[u8], off: u64) -> u64 {
    u64::from_le_bytes(img[off as usize..off as usize + 8].try_into().unwrap())
}

#[test]
fn drains_move_flushed_lines_to_the_media_and_nothing_else() {
    let (pool, sim) = sim_pool();
    assert_eq!(pool.persistence(), PersistMode::Simulated);
    let h = pool.geometry().heap_offset;
    let mut ctx = pool.flush_context();
    // SAFETY: single-threaded test, no references into the pool.
    unsafe {
        pool.write(h, &7u64.to_le_bytes());
        pool.write(h + 4096, &9u64.to_le_bytes());
    }
    pool.flush(&mut ctx, h, 8);
    assert_eq!(
        sim.unflushed_lines(),
        vec![h + 4096],
        "the second store was never flushed"
    );
    assert_eq!(
        read_u64(&sim.media_image(), h),
        0,
        "flushed but not drained"
    );
    pool.drain(&mut ctx).unwrap();
    let media = sim.media_image();
    assert_eq!(read_u64(&media, h), 7);
    assert_eq!(read_u64(&media, h + 4096), 0);
    assert_eq!(sim.drains(), 1);
    assert_eq!(ctx.counters().lines_flushed, 1);
    // Other contexts' flushes are not drained by this one.
    let mut other = pool.flush_context();
    pool.flush(&mut other, h + 4096, 8);
    pool.flush(&mut ctx, h, 1);
    pool.drain(&mut ctx).unwrap();
    assert_eq!(read_u64(&sim.media_image(), h + 4096), 0);
    pool.drain(&mut other).unwrap();
    assert_eq!(read_u64(&sim.media_image(), h + 4096), 9);
    assert!(sim.unflushed_lines().is_empty());
}

#[test]
fn crash_point_lists_the_lines_in_flight() {
    let (pool, sim) = sim_pool();
    let h = pool.geometry().heap_offset;
    // SAFETY: as above.
    unsafe {
        pool.write(h + 10, &[1]);
        pool.write(h + 70, &[2]);
        pool.write(h + 8192, &[3]);
    }
    let mut ctx = pool.flush_context();
    pool.flush(&mut ctx, h + 70, 1);
    sim.with_crash_point(|cp| {
        let lines: Vec<(u64, bool)> = cp.in_flight.iter().map(|l| (l.offset, l.flushed)).collect();
        assert_eq!(lines, vec![(h, false), (h + LINE, true), (h + 8192, false)]);
        assert_eq!(cp.image_count(12, 100), 8);
        assert_eq!(cp.images(12, 100, 1).count(), 8);
    });
}

/// Persists `data` then a `flag` that says the data is valid; with `ordered`, a drain separates
/// the two (correct), without it both go in one drain (the classic bug).
fn publish(pool: &Pool, ordered: bool) {
    let h = pool.geometry().heap_offset;
    let (data, flag) = (h, h + 4096);
    let mut ctx = pool.flush_context();
    // SAFETY: single-threaded test, no references into the pool.
    unsafe { pool.write(data, &0xDA7Au64.to_le_bytes()) };
    pool.flush(&mut ctx, data, 8);
    if ordered {
        pool.drain(&mut ctx).unwrap();
    }
    // SAFETY: as above.
    unsafe { pool.write(flag, &1u64.to_le_bytes()) };
    pool.flush(&mut ctx, flag, 8);
    pool.drain(&mut ctx).unwrap();
}

/// Crashes at every drain and at the end; returns (images checked, images where the flag is
/// set but the data is not).
fn explore(ordered: bool) -> (usize, usize) {
    let (pool, sim) = sim_pool();
    let h = pool.geometry().heap_offset;
    let tally = Arc::new(Mutex::new((0usize, 0usize)));
    let check = {
        let tally = Arc::clone(&tally);
        move |cp: &CrashPoint<'_>| {
            for img in cp.images(12, 64, 99) {
                // Each image must open as a pool (the header is never in flight).
                let (p, _) = Pool::open_simulated(&img, &OpenOptions::new("sim")).unwrap();
                drop(p);
                let mut t = tally.lock().unwrap();
                t.0 += 1;
                if read_u64(&img, h + 4096) == 1 && read_u64(&img, h) != 0xDA7A {
                    t.1 += 1;
                }
            }
        }
    };
    sim.set_crash_hook(check.clone());
    publish(&pool, ordered);
    sim.clear_crash_hook();
    sim.with_crash_point(|cp| check(cp));
    let t = *tally.lock().unwrap();
    t
}

#[test]
fn exploration_passes_a_correct_protocol() {
    let (checked, broken) = explore(true);
    // Drain 1: data line in flight (2 images); drain 2: flag line in flight (2); end: none (1).
    assert_eq!(checked, 5);
    assert_eq!(broken, 0);
}

#[test]
fn exploration_finds_a_missing_drain() {
    let (checked, broken) = explore(false);
    // One drain with both lines in flight (4 images), then the end (1).
    assert_eq!(checked, 5);
    assert_eq!(
        broken, 1,
        "the image with the flag but not the data must be found"
    );
}

#[test]
fn simulated_images_are_validated_like_files() {
    let (pool, sim) = sim_pool();
    drop(pool);
    let img = sim.media_image();
    assert!(matches!(
        Pool::open_simulated(&img[..100], &OpenOptions::default()),
        Err(PoolError::Truncated { .. })
    ));
    assert!(matches!(
        Pool::open_simulated(&[], &OpenOptions::default()),
        Err(PoolError::EmptyFile { .. })
    ));
    let mut bad = img.clone();
    bad[80] ^= 1;
    assert!(matches!(
        Pool::open_simulated(&bad, &OpenOptions::default()),
        Err(PoolError::ChecksumMismatch { .. })
    ));
    assert!(matches!(
        Pool::open_simulated(&img, &OpenOptions::new("other")),
        Err(PoolError::LayoutMismatch { .. })
    ));
    let (p, _) = Pool::open_simulated(&img, &OpenOptions::new("sim")).unwrap();
    assert_eq!(p.header().layout_name(), "sim");
}
