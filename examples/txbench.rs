//! Transaction benchmarks, one workload per run, the same definitions as the PMDK peer
//! (`benches/vs_pmdk/pmdk_peer.c`):
//!
//! ```sh
//! PMSTORE_FORCE_MODE=flush cargo run --release --example txbench -- tx_update_8B --pool /dev/shm/b.pool
//! cargo run --release --example txbench -- tx_update_8B --pool /var/tmp/b.pool -n 200   # msync mode
//! ```
//!
//! Prints one JSON line: `{"workload":…,"mode":…,"n":…,"ns_per_op":…,"drains_per_op":…,
//! "flushes_per_op":…,"msyncs_per_op":…}`. The pool file is created fresh (an existing file
//! is refused) and removed afterwards.
//!
//! * `tx_update_8B`: one transaction incrementing an 8-byte counter in the root object.
//! * `tx_update_256B`: one transaction incrementing every word of a 256-byte (4-line) object.
//! * `tx_update_4x64B`: one transaction incrementing every word of four 64-byte objects.
//! * `tx_alloc_free`: a transaction allocating 64 bytes into a root slot, then one freeing it
//!   and clearing the slot (per pair).
//! * `atomic_alloc_free`: `Heap::alloc` of 64 bytes into a root slot, then `Heap::free`
//!   (per pair; no transaction).
//! * `read_8B`: a read-only transaction (`Pool::read`) reading the 8-byte counter.
//!
//! `--spawn` runs the operations (not the setup) in a spawned thread whose arena holds no
//! other block, as the PMDK comparison harness does: each alloc/free pair empties its run.

use std::path::PathBuf;
use std::time::Instant;

use bytemuck::{Pod, Zeroable};
use clap::{Parser, ValueEnum};
use pmstore::{pfield, CreateOptions, ModeRequest, PPtr, Pool, TxError};

#[derive(Clone, Copy, Debug, ValueEnum)]
#[allow(non_camel_case_types)]
enum Workload {
    #[value(name = "tx_update_8B")]
    TxUpdate8B,
    #[value(name = "tx_update_256B")]
    TxUpdate256B,
    #[value(name = "tx_update_4x64B")]
    TxUpdate4x64B,
    #[value(name = "tx_alloc_free")]
    TxAllocFree,
    #[value(name = "atomic_alloc_free")]
    AtomicAllocFree,
    #[value(name = "read_8B")]
    Read8B,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::TxUpdate8B => "tx_update_8B",
            Workload::TxUpdate256B => "tx_update_256B",
            Workload::TxUpdate4x64B => "tx_update_4x64B",
            Workload::TxAllocFree => "tx_alloc_free",
            Workload::AtomicAllocFree => "atomic_alloc_free",
            Workload::Read8B => "read_8B",
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Mode {
    Auto,
    Flush,
    Msync,
}

#[derive(Parser, Debug)]
#[command(about = "pmstore transaction benchmarks (one JSON line per run)")]
struct Args {
    /// The workload.
    workload: Workload,
    /// Pool file to create (must not exist; removed afterwards).
    #[arg(long)]
    pool: PathBuf,
    /// Operations timed (after a warm-up of n/10).
    #[arg(short, long, default_value_t = 200_000)]
    n: u64,
    /// Persistence mode (`auto` honours PMSTORE_FORCE_MODE).
    #[arg(long, value_enum, default_value_t = Mode::Auto)]
    mode: Mode,
    /// Run the operations (after the setup) in a spawned thread, as the PMDK comparison
    /// harness does: its arena holds no other block, so each alloc/free pair empties its run.
    #[arg(long)]
    spawn: bool,
}

#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(C, align(64))]
struct Root {
    counter: u64,
    slot: PPtr<[u64; 8]>,
    big: PPtr<[u64; 32]>,
    four: [PPtr<[u64; 8]>; 4],
    keep: PPtr<[u64; 8]>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let mode = match args.mode {
        Mode::Auto => ModeRequest::Auto,
        Mode::Flush => ModeRequest::Flush,
        Mode::Msync => ModeRequest::Msync,
    };
    let opts = CreateOptions::new("txbench", 64 << 20).mode(mode);
    let pool = Pool::create(&args.pool, &opts)?;
    let result = run(&pool, args.workload, args.n, args.spawn);
    drop(pool);
    let _ = std::fs::remove_file(&args.pool);
    let line = result?;
    println!("{line}");
    Ok(())
}

fn run(
    pool: &Pool,
    w: Workload,
    n: u64,
    spawn: bool,
) -> Result<String, Box<dyn std::error::Error>> {
    let root = pool.root::<Root>()?;
    // Objects the workloads use (made before timing). One block stays allocated in the
    // 64-byte class, as in the PMDK peer, so alloc/free pairs do not open and close a run.
    pool.transaction(|tx| {
        let big = tx.alloc([0u64; 32])?;
        let mut four = [PPtr::NULL; 4];
        for f in &mut four {
            *f = tx.alloc([0u64; 8])?;
        }
        let keep = tx.alloc([0u64; 8])?;
        let r = tx.get_mut(root)?;
        r.big = big;
        r.four = four;
        r.keep = keep;
        Ok::<_, TxError>(())
    })?;
    let counter = pfield!(root, Root, counter);
    let slot = pfield!(root, Root, slot);
    let (big, four) = pool.read(|tx| {
        let r = tx.get(root)?;
        Ok::<_, TxError>((r.big, r.four))
    })?;
    let heap = pool.heap();
    let op = |_: u64| -> Result<(), TxError> {
        match w {
            Workload::TxUpdate8B => pool.transaction(|tx| {
                *tx.get_mut(counter)? += 1;
                Ok(())
            }),
            Workload::TxUpdate256B => pool.transaction(|tx| {
                for v in tx.get_mut(big)?.iter_mut() {
                    *v += 1;
                }
                Ok(())
            }),
            Workload::TxUpdate4x64B => pool.transaction(|tx| {
                for p in four {
                    for v in tx.get_mut(p)?.iter_mut() {
                        *v += 1;
                    }
                }
                Ok(())
            }),
            Workload::TxAllocFree => {
                pool.transaction(|tx| {
                    let p = tx.alloc([0u64; 8])?;
                    *tx.get_mut(slot)? = p;
                    Ok::<_, TxError>(())
                })?;
                pool.transaction(|tx| {
                    let p = *tx.get(slot)?;
                    tx.free(p)?;
                    *tx.get_mut(slot)? = PPtr::NULL;
                    Ok(())
                })
            }
            Workload::Read8B => pool.read(|tx| {
                std::hint::black_box(*tx.get(counter)?);
                Ok(())
            }),
            Workload::AtomicAllocFree => {
                let dest = slot.offset();
                // SAFETY: single-threaded benchmark: no transaction runs, so this thread owns
                // the root slot word; the heap is the pool's only one; the word is only ever
                // changed through the heap's operations here.
                unsafe {
                    let off = heap.alloc(pool.raw(), 64, dest)?;
                    heap.free(pool.raw(), off, Some(dest))?;
                }
                Ok(())
            }
        }
    };
    let ops = || -> Result<_, TxError> {
        for i in 0..n / 10 {
            op(i)?;
        }
        let before = pool.counters();
        let t0 = Instant::now();
        for i in 0..n {
            op(i)?;
        }
        Ok((t0.elapsed(), pool.counters() - before))
    };
    let (elapsed, d) = if spawn {
        std::thread::scope(|s| s.spawn(ops).join().expect("benchmark thread"))?
    } else {
        ops()?
    };
    let ns = elapsed.as_nanos() as f64 / n as f64;
    let per = |x: u64| x as f64 / n as f64;
    // Check the result, so the benchmark cannot measure something that does nothing.
    let total = n + n / 10;
    let (c, b, f) = pool
        .read(|tx| Ok::<_, TxError>((*tx.get(counter)?, tx.get(big)?[31], tx.get(four[3])?[7])))?;
    let expect_ok = match w {
        Workload::TxUpdate8B => c == total,
        Workload::TxUpdate256B => b == total,
        Workload::TxUpdate4x64B => f == total,
        Workload::Read8B => c == 0,
        Workload::TxAllocFree | Workload::AtomicAllocFree => {
            pool.read(|tx| Ok::<_, TxError>(tx.get(slot)?.is_null()))?
        }
    };
    if !expect_ok {
        return Err(format!("{}: wrong final state", w.name()).into());
    }
    Ok(serde_json::json!({
        "workload": w.name(),
        "mode": pool.persistence().name(),
        "n": n,
        "ns_per_op": (ns * 10.0).round() / 10.0,
        "drains_per_op": per(d.drains),
        "flushes_per_op": per(d.lines_flushed + d.nt_bytes / 64),
        "msyncs_per_op": per(d.msync_calls),
    })
    .to_string())
}
