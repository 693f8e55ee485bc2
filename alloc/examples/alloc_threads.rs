//! Throughput of atomic alloc + free pairs (64 B) with 1 and 2 threads, each thread into its own
//! root word, on one pool in forced-flush mode on /dev/shm.
//!
//! `cargo run --release -p pmstore-alloc --example alloc_threads [-- PAIRS_PER_THREAD]` prints
//! one JSON line per thread count: pairs per second in all, and relative to one thread.

use std::time::Instant;

use pmstore_alloc::Heap;
use pmstore_pool::{CreateOptions, ModeRequest, Pool};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pairs: u64 = std::env::args().nth(1).map_or(Ok(200_000), |s| s.parse())?;
    let dir = tempfile::tempdir_in("/dev/shm")?;
    let mut pool = Pool::create(
        dir.path().join("threads.pool"),
        &CreateOptions::new("alloc-threads", 64 << 20).mode(ModeRequest::Flush),
    )?;
    let (heap, _) = Heap::open(&mut pool)?;
    let root = pool.geometry().root_offset;
    let mut one = 0.0;
    for threads in [1u64, 2] {
        let start = Instant::now();
        std::thread::scope(|s| {
            for t in 0..threads {
                let (heap, pool) = (&heap, &pool);
                s.spawn(move || {
                    let dest = root + 64 * t; // one root word per thread, on its own line
                                              // Keep one block live, so the thread's run stays open (a busy heap).
                                              // SAFETY: this thread alone uses the root words of its line.
                    let keep = unsafe { heap.alloc(pool, 64, dest + 8) }.expect("alloc");
                    for _ in 0..pairs {
                        // SAFETY: this thread alone uses the root word `dest`.
                        unsafe {
                            let o = heap.alloc(pool, 64, dest).expect("alloc");
                            heap.free(pool, o, Some(dest)).expect("free");
                        }
                    }
                    // SAFETY: as above.
                    unsafe { heap.free(pool, keep, Some(dest + 8)) }.expect("free");
                });
            }
        });
        let rate = (threads * pairs) as f64 / start.elapsed().as_secs_f64();
        if threads == 1 {
            one = rate;
        }
        println!(
            "{{\"workload\":\"atomic_alloc_free_threads\",\"threads\":{threads},\"pairs_per_s\":{rate:.0},\"relative_to_1\":{:.2}}}",
            rate / one
        );
    }
    Ok(())
}
