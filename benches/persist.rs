//! Persistence floors of `pmstore-pool`: what one durability point costs, measured directly
//! on the pool layer (no allocator, no transaction).
//!
//! * Flush mode: a pool on `/dev/shm` (tmpfs) created with [`ModeRequest::Flush`], so it runs
//!   in [`PersistMode::ForcedFlush`] (cache-line write-back + `sfence`, like PMDK with
//!   `PMEM_IS_PMEM_FORCE=1`): `persist_64B`, `persist_4_lines`, `copy_nt_256B`, `copy_nt_4KiB`.
//! * Msync mode: a pool in `/var/tmp` created with [`ModeRequest::Msync`]: `msync_1_page`.
//!
//! Target offsets: every benchmark walks sequentially through a 4 MiB window at the start of
//! the heap, advancing by its own footprint rounded up to a cache line (64 B, 256 B, 256 B,
//! 4 KiB; a whole page for `msync_1_page`) and wrapping at the end of the window, so it does
//! not hammer one line (as PMDK's benchmarks vary their offsets). The window is touched before
//! timing so no page fault lands in the measurement. `benches/vs_pmdk/pmdk_peer.c` (its floors) uses the
//! same pattern for the PMDK peer.
//!
//! Before timing, each benchmark runs a fixed number of operations and prints the pool's
//! deterministic counters per operation (from [`FlushContext::counters`] deltas).

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{criterion_main, Criterion};
use pmstore_pool::{CreateOptions, FlushContext, ModeRequest, PersistMode, Pool, PAGE};
use tempfile::TempDir;

/// Size of each benchmark pool file.
const POOL_SIZE: u64 = 64 << 20;
/// The heap window the target offsets walk through.
const WINDOW: u64 = 4 << 20;
/// Operations run (untimed) to report counters per operation, in flush mode.
const PROBE_OPS_FLUSH: u64 = 1000;
/// Same, in msync mode (each one is a real `msync`).
const PROBE_OPS_MSYNC: u64 = 20;

/// A freshly created pool in its own temporary directory, plus the walking target offset.
struct Bench {
    // Declared before `_dir` so the pool is unmapped and closed before the directory goes.
    pool: Pool,
    ctx: FlushContext,
    base: u64,
    stride: u64,
    next: u64,
    _dir: TempDir,
}

impl Bench {
    fn new(dir_in: &str, mode: ModeRequest, stride: u64) -> Bench {
        let dir =
            tempfile::tempdir_in(dir_in).unwrap_or_else(|e| panic!("tempdir in {dir_in}: {e}"));
        let path = dir.path().join("bench.pool");
        let pool = Pool::create(&path, &CreateOptions::new("bench", POOL_SIZE).mode(mode))
            .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        let geo = pool.geometry();
        assert!(geo.heap_size >= WINDOW, "heap too small for the window");
        assert_eq!(geo.heap_offset % PAGE, 0, "heap start is page aligned");
        let mut ctx = pool.flush_context();
        // Touch (and make durable) every page of the window, so no page fault or first
        // write-back is timed.
        for page in (0..WINDOW).step_by(PAGE as usize) {
            // SAFETY: this thread owns the pool; no reference into it is live.
            unsafe { pool.write(geo.heap_offset + page, &[0u8; 8]) };
        }
        pool.persist(&mut ctx, geo.heap_offset, WINDOW)
            .expect("initial persist of the window");
        Bench {
            pool,
            ctx,
            base: geo.heap_offset,
            stride,
            next: 0,
            _dir: dir,
        }
    }

    fn path(&self) -> &Path {
        self.pool.path()
    }

    /// The next target offset of the walk.
    #[inline]
    fn advance(&mut self) -> u64 {
        let off = self.base + self.next;
        self.next += self.stride;
        if self.next + self.stride > WINDOW {
            self.next = 0;
        }
        off
    }

    /// Runs `ops` operations untimed and prints the counters per operation.
    fn report_counters(
        &mut self,
        name: &str,
        ops: u64,
        op: &mut impl FnMut(&Pool, &mut FlushContext, u64),
    ) {
        let before = self.ctx.counters();
        for _ in 0..ops {
            let off = self.advance();
            op(&self.pool, &mut self.ctx, off);
        }
        let d = self.ctx.counters() - before;
        let per = |v: u64| v as f64 / ops as f64;
        eprintln!(
            "{name}: mode={} instr={} per op: lines_flushed={} nt_bytes={} drains={} msync_calls={} msync_bytes={} ({} ops, pool {})",
            self.pool.persistence(),
            self.pool.flush_instr().map_or("-", |i| i.name()),
            per(d.lines_flushed),
            per(d.nt_bytes),
            per(d.drains),
            per(d.msync_calls),
            per(d.msync_bytes),
            ops,
            self.path().display(),
        );
    }

    /// Prints the counters per op, then times `op` at walking offsets.
    fn run(
        mut self,
        c: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
        name: &str,
        probe_ops: u64,
        mut op: impl FnMut(&Pool, &mut FlushContext, u64),
    ) {
        self.report_counters(name, probe_ops, &mut op);
        c.bench_function(name, |b| {
            b.iter(|| {
                let off = self.advance();
                op(&self.pool, &mut self.ctx, black_box(off));
            })
        });
    }
}

fn flush_mode(c: &mut Criterion) {
    let mut g = c.benchmark_group("flush");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));

    let mk = |stride| {
        let b = Bench::new("/dev/shm", ModeRequest::Flush, stride);
        // On a machine with a DAX file system at /dev/shm this would be MapSync; either is a
        // flush mode.
        assert!(
            b.pool.persistence() == PersistMode::ForcedFlush
                || b.pool.persistence() == PersistMode::MapSync,
            "expected a flush mode, got {}",
            b.pool.persistence()
        );
        b
    };

    // 8-byte store, then persist its one (aligned) cache line.
    mk(64).run(&mut g, "persist_64B", PROBE_OPS_FLUSH, |pool, ctx, off| {
        // SAFETY: single-threaded benchmark; no reference into the pool is live.
        unsafe { pool.write(off, &off.to_le_bytes()) };
        pool.persist(ctx, off, 64).expect("persist");
    });

    // 8-byte store, then persist 4 aligned lines (256 B).
    mk(256).run(
        &mut g,
        "persist_4_lines",
        PROBE_OPS_FLUSH,
        |pool, ctx, off| {
            // SAFETY: single-threaded benchmark; no reference into the pool is live.
            unsafe { pool.write(off, &off.to_le_bytes()) };
            pool.persist(ctx, off, 256).expect("persist");
        },
    );

    let src256 = [0x5au8; 256];
    mk(256).run(&mut g, "copy_nt_256B", PROBE_OPS_FLUSH, |pool, ctx, off| {
        // SAFETY: single-threaded benchmark; no reference into the pool is live, and `src256`
        // is not in the pool.
        unsafe { pool.copy_persist(ctx, off, black_box(&src256)) }.expect("copy_persist");
    });

    let src4k = vec![0xa5u8; 4096];
    mk(4096).run(&mut g, "copy_nt_4KiB", PROBE_OPS_FLUSH, |pool, ctx, off| {
        // SAFETY: as above; `src4k` is an ordinary heap buffer, not in the pool.
        unsafe { pool.copy_persist(ctx, off, black_box(&src4k)) }.expect("copy_persist");
    });

    // Why a commit protocol with one drain would not be faster on such a CPU: a write-back
    // left in flight (non-temporal line, or clwb of a line) is waited for by the next locked
    // instruction (an atomic read-modify-write, as every lock release or `Arc` count does),
    // just as by an sfence. Compare each `*_then_locked_op` with `*_then_store` (an ordinary
    // store instead: no wait) and with `persist_64B` (an explicit drain).
    let word = std::sync::atomic::AtomicU64::new(0);
    let line = [0x3cu8; 64];
    mk(64).run(
        &mut g,
        "nt_64B_then_locked_op",
        PROBE_OPS_FLUSH,
        |pool, ctx, off| {
            // SAFETY: single-threaded benchmark; no reference into the pool is live, and
            // `line` is not in the pool.
            unsafe { pool.copy_nt_nodrain(ctx, off, black_box(&line)) };
            word.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        },
    );
    mk(64).run(
        &mut g,
        "nt_64B_then_store",
        PROBE_OPS_FLUSH,
        |pool, ctx, off| {
            // SAFETY: as above.
            unsafe { pool.copy_nt_nodrain(ctx, off, black_box(&line)) };
            word.store(off, std::sync::atomic::Ordering::Release);
        },
    );
    mk(64).run(
        &mut g,
        "flush_64B_then_locked_op",
        PROBE_OPS_FLUSH,
        |pool, ctx, off| {
            // SAFETY: single-threaded benchmark; no reference into the pool is live.
            unsafe { pool.write(off, &off.to_le_bytes()) };
            pool.flush(ctx, off, 64);
            word.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        },
    );
    mk(64).run(
        &mut g,
        "flush_64B_then_store",
        PROBE_OPS_FLUSH,
        |pool, ctx, off| {
            // SAFETY: single-threaded benchmark; no reference into the pool is live.
            unsafe { pool.write(off, &off.to_le_bytes()) };
            pool.flush(ctx, off, 64);
            word.store(off, std::sync::atomic::Ordering::Release);
        },
    );

    g.finish();
}

fn msync_mode(c: &mut Criterion) {
    let mut g = c.benchmark_group("msync");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));

    let b = Bench::new("/var/tmp", ModeRequest::Msync, PAGE);
    assert_eq!(b.pool.persistence(), PersistMode::Msync);
    // 8-byte store into one page, flush those 8 bytes (records the page), drain (one msync).
    b.run(&mut g, "msync_1_page", PROBE_OPS_MSYNC, |pool, ctx, off| {
        // SAFETY: single-threaded benchmark; no reference into the pool is live.
        unsafe { pool.write(off, &off.to_le_bytes()) };
        pool.flush(ctx, off, 8);
        pool.drain(ctx).expect("drain");
    });

    g.finish();
}

// In a private module: `criterion_group!` makes an undocumented `pub fn`.
mod group {
    criterion::criterion_group!(benches, super::flush_mode, super::msync_mode);
}
criterion_main!(group::benches);
