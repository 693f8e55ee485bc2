//! `pmstore demo`: transactions on an object-store pool, verified after a reopen.
//!
//! The pool's root holds a run counter and a slice of 64-byte records; each run writes every
//! record in a transaction of its own (so each record costs one durability point), then bumps
//! the run counter, reopens the pool and verifies. `pmstore check` finds the pool clean.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use bytemuck::{Pod, Zeroable};
use bytesize::ByteSize;
use pmstore::pool::PoolError;
use pmstore::{CreateOptions, OpenOptions, PSlice, Pool, TxError, MIN_POOL_SIZE};

use crate::cli::fail_with;
use crate::mode_note;

const DEMO_LAYOUT: &str = "pmstore-demo";
const DEMO_POOL_SIZE: u64 = MIN_POOL_SIZE * 8;

/// One record: the run that wrote it, its index, and a payload derived from both.
type Record = [u64; 8];

#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(C)]
struct DemoRoot {
    /// Completed runs.
    run: u64,
    /// The records of the last run.
    records: PSlice<Record>,
}

fn record(run: u64, i: u64) -> Record {
    let mut r = [0u64; 8];
    r[0] = run;
    r[1] = i;
    for (k, w) in r.iter_mut().enumerate().skip(2) {
        *w = (run << 32 | i).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ k as u64;
    }
    r
}

/// Runs the demo; errors are reported here (exit codes as the other commands).
pub fn demo(path: Option<PathBuf>, records: u64) -> ExitCode {
    match run(path, records) {
        Ok(code) => code,
        Err(TxError::Pool(e)) => crate::cli::fail(&e, false),
        Err(e) => fail_with(
            "tx",
            &e.to_string(),
            if e.is_invalid_pool() { 3 } else { 1 },
            false,
        ),
    }
}

fn run(path: Option<PathBuf>, records: u64) -> Result<ExitCode, TxError> {
    let path = path
        .or_else(|| std::env::var_os("PMSTORE_POOL").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("demo.pool"));
    let pool = match Pool::open(&path, &OpenOptions::new(DEMO_LAYOUT)) {
        Ok(p) => {
            println!("opened {}", path.display());
            p
        }
        Err(TxError::Pool(PoolError::NotFound { .. })) => {
            println!(
                "creating {} ({})",
                path.display(),
                ByteSize(DEMO_POOL_SIZE).display().iec()
            );
            Pool::create(&path, &CreateOptions::new(DEMO_LAYOUT, DEMO_POOL_SIZE))?
        }
        Err(e) => return Err(e),
    };
    let mode = pool.persistence();
    let instr = pool
        .raw()
        .flush_instr()
        .map_or(String::new(), |i| format!(", {}", i.name()));
    println!("persistence mode: {mode}{instr} — {}", mode_note(mode));
    let root = pool.root::<DemoRoot>()?;

    // Replace the previous run's records by a fresh, zeroed slice (one transaction).
    let (run, slice) = pool.transaction(|tx| {
        let r = *tx.get(root)?;
        tx.free_slice(r.records)?;
        let records = tx.alloc_slice_zeroed::<Record>(records)?;
        tx.get_mut(root)?.records = records;
        Ok::<_, TxError>((r.run + 1, records))
    })?;

    let before = pool.counters();
    let start = Instant::now();
    for i in 0..records {
        let rec = record(run, i);
        pool.transaction(|tx| {
            *tx.get_mut(slice.at(i))? = rec;
            Ok::<_, TxError>(())
        })?;
    }
    let elapsed = start.elapsed();
    let c = pool.counters() - before;
    pool.transaction(|tx| {
        tx.get_mut(root)?.run = run;
        Ok::<_, TxError>(())
    })?;
    let n = records.max(1) as f64;
    println!(
        "run #{run}: committed {records} transactions of one {} B record in {:.1} ms: {:.0} ns/record, {:.2} lines flushed, {:.2} drains, {:.2} msyncs per record",
        std::mem::size_of::<Record>(),
        elapsed.as_secs_f64() * 1e3,
        elapsed.as_nanos() as f64 / n,
        (c.lines_flushed + c.nt_bytes / 64) as f64 / n,
        c.drains as f64 / n,
        c.msync_calls as f64 / n,
    );
    drop(pool);

    let pool = Pool::open(&path, &OpenOptions::new(DEMO_LAYOUT))?;
    let root = pool.root::<DemoRoot>()?;
    let bad = pool.read(|tx| {
        let r = tx.get(root)?;
        if r.run != run || r.records.len() != records {
            return Ok::<_, TxError>(records.max(1));
        }
        let all = tx.get_slice(r.records)?;
        Ok(all
            .iter()
            .enumerate()
            .filter(|&(i, rec)| *rec != record(run, i as u64))
            .count() as u64)
    })?;
    if bad == 0 {
        println!("reopened and verified all {records} records of run #{run}");
        println!(
            "run `pmstore demo` again: the run counter survives; `pmstore check {}` verifies the pool",
            path.display()
        );
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("pmstore: {bad} of {records} records did not survive the reopen");
        Ok(ExitCode::from(1))
    }
}
