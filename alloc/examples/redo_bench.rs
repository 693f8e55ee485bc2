//! Cost of one redo log commit of a 2-entry log, on a pool in forced-flush mode on /dev/shm.
//!
//! `cargo run --release -p pmstore-alloc --example redo_bench [-- ITERATIONS [DIR]]`
//! prints one JSON line: `{"ns_per_commit":…,"drains_per_commit":…,"lines_per_commit":…}`.

use std::time::Instant;

use pmstore_alloc::redo::{RedoEntry, RedoLogs};
use pmstore_pool::{CreateOptions, ModeRequest, Pool, MIN_POOL_SIZE};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let iters: u64 = args.next().map_or(Ok(200_000), |s| s.parse())?;
    let dir = args.next().unwrap_or_else(|| "/dev/shm".into());
    let dir = tempfile::tempdir_in(dir)?;
    let mut pool = Pool::create(
        dir.path().join("bench.pool"),
        &CreateOptions::new("redo-bench", MIN_POOL_SIZE).mode(ModeRequest::Flush),
    )?;
    let (logs, _) = RedoLogs::recover(&mut pool)?;
    let mut lane = logs.lane(0).expect("lane 0");
    let mut ctx = pool.flush_context();
    let a = pool.geometry().heap_offset;
    // Two words on different cache lines, as an allocator's bitmap word + header word.
    let (w1, w2) = (a, a + 4096);
    let mut commit = |i: u64| {
        let entries = [RedoEntry::new(w1, i), RedoEntry::new(w2, !i)];
        // SAFETY: this thread alone touches w1 and w2; one RedoLogs for this pool.
        unsafe { lane.commit(&pool, &mut ctx, &entries) }.expect("commit");
    };
    for i in 0..iters / 10 {
        commit(i);
    }
    let before = pool.counters();
    let t = Instant::now();
    for i in 0..iters {
        commit(i);
    }
    let ns = t.elapsed().as_nanos() as f64 / iters as f64;
    let d = pool.counters() - before;
    println!(
        "{{\"ns_per_commit\":{:.1},\"drains_per_commit\":{},\"lines_per_commit\":{},\"mode\":\"{}\",\"flush_instr\":\"{:?}\",\"iterations\":{}}}",
        ns,
        d.drains as f64 / iters as f64,
        d.lines_flushed as f64 / iters as f64,
        pool.persistence(),
        pool.flush_instr(),
        iters
    );
    Ok(())
}
