//! Cost of the allocator's atomic operations on a pool in forced-flush mode on /dev/shm.
//!
//! `cargo run --release -p pmstore-alloc --example alloc_bench [-- PAIRS [OBJECTS [DIR [GIB]]]]`
//! prints two JSON lines:
//! * `{"workload":"atomic_alloc_free",...}`: one atomic alloc of 64 B into a root word plus its
//!   free (clearing the word), per pair: time, drains and lines flushed;
//! * `{"workload":"open_first_alloc",...}`: a 1 GiB pool (or `GIB` GiB, sparse) holding
//!   `OBJECTS` 64-byte objects
//!   (default 1,000,000) is closed and reopened: time of `Heap::open` (redo recovery, no
//!   scan) and of the first allocation after it (which scans the first group of chunk headers).

use std::time::Instant;

use pmstore_alloc::Heap;
use pmstore_pool::{CreateOptions, ModeRequest, OpenOptions, Pool, MIN_POOL_SIZE};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let pairs: u64 = args.next().map_or(Ok(200_000), |s| s.parse())?;
    let objects: u64 = args.next().map_or(Ok(1_000_000), |s| s.parse())?;
    let dir = args.next().unwrap_or_else(|| "/dev/shm".into());
    // Optional: the big pool's size in GiB (default 1); above 1 GiB it is created sparse (no
    // posix_fallocate), as the open-time target asks of a 16 GiB pool.
    let gib: u64 = args.next().map_or(Ok(1), |s| s.parse())?;
    let dir = tempfile::tempdir_in(dir)?;

    // 1. Atomic alloc + free pairs.
    let mut pool = Pool::create(
        dir.path().join("pairs.pool"),
        &CreateOptions::new("alloc-bench", MIN_POOL_SIZE).mode(ModeRequest::Flush),
    )?;
    let (heap, _) = Heap::open(&mut pool)?;
    let dest = pool.geometry().root_offset;
    // Keep one block allocated so the run stays open (the common case of a busy heap).
    // SAFETY: this thread alone uses the root words.
    unsafe { heap.alloc(&pool, 64, dest + 8)? };
    let pair = || {
        // SAFETY: this thread alone uses the root word `dest`.
        unsafe {
            let o = heap.alloc(&pool, 64, dest).expect("alloc");
            heap.free(&pool, o, Some(dest)).expect("free");
        }
    };
    for _ in 0..pairs / 10 {
        pair();
    }
    let before = pool.counters();
    let t = Instant::now();
    for _ in 0..pairs {
        pair();
    }
    let ns = t.elapsed().as_nanos() as f64 / pairs as f64;
    let d = pool.counters() - before;
    println!(
        "{{\"workload\":\"atomic_alloc_free\",\"ns_per_pair\":{:.1},\"drains_per_pair\":{},\"lines_per_pair\":{},\"mode\":\"{}\",\"pairs\":{}}}",
        ns,
        d.drains as f64 / pairs as f64,
        d.lines_flushed as f64 / pairs as f64,
        pool.persistence(),
        pairs
    );
    drop(heap);
    drop(pool);

    // 2. Open + first alloc of a `gib` GiB pool holding `objects` 64-byte objects.
    let path = dir.path().join("big.pool");
    let mut pool = Pool::create(
        &path,
        &CreateOptions::new("alloc-bench", gib << 30)
            .mode(ModeRequest::Flush)
            .preallocate(gib <= 1),
    )?;
    let (heap, _) = Heap::open(&mut pool)?;
    let dest = pool.geometry().root_offset;
    let t = Instant::now();
    for _ in 0..objects {
        // SAFETY: this thread alone uses the root word.
        unsafe { heap.alloc(&pool, 64, dest)? };
    }
    let fill_s = t.elapsed().as_secs_f64();
    drop(heap);
    drop(pool);
    let t = Instant::now();
    let mut pool = Pool::open(
        &path,
        &OpenOptions::new("alloc-bench").mode(ModeRequest::Flush),
    )?;
    let pool_open = t.elapsed();
    let t = Instant::now();
    let (heap, _) = Heap::open(&mut pool)?;
    let heap_open = t.elapsed();
    let t = Instant::now();
    // SAFETY: as above.
    unsafe { heap.alloc(&pool, 64, dest)? };
    let first = t.elapsed();
    let stats = heap.stats(&pool)?;
    println!(
        "{{\"workload\":\"open_first_alloc\",\"pool_size\":{},\"objects\":{},\"fill_s\":{:.2},\"pool_open_us\":{:.1},\"heap_open_us\":{:.1},\"first_alloc_us\":{:.1},\"chunks\":{},\"chunks_scanned_by_first_alloc\":{}}}",
        gib << 30,
        objects,
        fill_s,
        pool_open.as_secs_f64() * 1e6,
        heap_open.as_secs_f64() * 1e6,
        first.as_secs_f64() * 1e6,
        stats.chunks,
        stats.chunks_scanned
    );
    Ok(())
}
