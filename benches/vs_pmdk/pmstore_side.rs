//! The pmstore side of the comparison: the same workloads as `pmdk_peer.c`, run in a child
//! process of the harness (`vs_pmdk --worker ...`) so that each run, like each PMDK run, starts
//! from a fresh process and a fresh pool file.
//!
//! Every result line also carries the pool's persistence mode, its flush instruction and its
//! deterministic counters per operation (drains, cache lines flushed incl. non-temporal lines,
//! msync calls), taken as counter deltas around the timed loop.

use std::path::Path;
use std::sync::Barrier;
use std::time::Instant;

use bytemuck::Zeroable;
use pmstore::{
    pfield, CreateOptions, ModeRequest, OpenOptions, PPtr, PersistCounters, PersistMode, Pool,
    TxError,
};
use serde_json::{json, Value};

use crate::map::{Kv, DEFAULT_INITIAL_SLOTS};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Most threads a run may use (the root object has one set of objects per thread).
pub const MAX_THREADS: usize = 8;

/// What one worker process runs.
pub struct Job<'a> {
    /// Workload name (as in the PMDK peer).
    pub workload: &'a str,
    /// Flush or msync.
    pub mode: ModeRequest,
    /// Pool file (must not exist; removed afterwards).
    pub path: &'a Path,
    /// Timed operations (all threads together); objects for `open`.
    pub n: u64,
    /// Untimed warm-up operations (all threads together).
    pub warm: u64,
    /// Threads.
    pub threads: usize,
    /// Pool size in MiB for `open`.
    pub pool_mib: u64,
}

/// Bytes between two threads' root slots: pmstore's lock stripes are 256 bytes of pool
/// offsets, so slots this far apart never share a stripe (nor a cache line on the PMDK side,
/// which uses the same spacing).
const SLOT_STRIDE: u64 = 256;

/// The root object of the tx/alloc workloads: each thread has its own objects, and its own root
/// slot (the first word of its 256-byte `slot` row).
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
struct Root {
    slot: [[PPtr<[u64; 8]>; 32]; MAX_THREADS],
    keep: PPtr<[u64; 8]>,
    ctr: [PPtr<[u64; 8]>; MAX_THREADS],
    big: [PPtr<[u64; 32]>; MAX_THREADS],
    four: [[PPtr<[u64; 8]>; 4]; MAX_THREADS],
}

/// Runs `job` and returns its result lines.
pub fn run(job: &Job<'_>) -> Res<Vec<Value>> {
    if job.path.exists() {
        return Err(format!(
            "{} exists; the worker needs a fresh file",
            job.path.display()
        )
        .into());
    }
    let r = match job.workload {
        "kv" => run_kv(job),
        "open" => run_open(job),
        "persist_64B" | "copy_nt_256B" | "msync_1_page" => run_floor(job),
        _ => run_tx(job),
    };
    let _ = std::fs::remove_file(job.path);
    r
}

fn line(
    job: &Job<'_>,
    workload: &str,
    n: u64,
    ns: f64,
    mode: PersistMode,
    instr: Option<pmstore::FlushInstr>,
    d: PersistCounters,
) -> Value {
    let per = |x: u64| x as f64 / n as f64;
    json!({
        "lib": "pmstore",
        "workload": workload,
        "mode": mode.name(),
        "uses_cache_flush": mode.uses_cache_flush(),
        "instr": instr.map_or("-", |i| i.name()),
        "n": n,
        "threads": job.threads,
        "ns_per_op": (ns * 10.0).round() / 10.0,
        "drains_per_op": per(d.drains),
        "lines_per_op": per(d.lines_flushed + d.nt_bytes / 64),
        "msyncs_per_op": per(d.msync_calls),
    })
}

/// The tx and alloc workloads, on `job.threads` threads with disjoint objects.
fn run_tx(job: &Job<'_>) -> Res<Vec<Value>> {
    let w = job.workload;
    if !matches!(
        w,
        "tx_update_8B"
            | "tx_update_256B"
            | "tx_update_4x64B"
            | "tx_alloc_free"
            | "atomic_alloc_free"
    ) {
        return Err(format!("unknown workload {w}").into());
    }
    let threads = job.threads;
    if threads == 0 || threads > MAX_THREADS {
        return Err(format!("threads must be 1..={MAX_THREADS}").into());
    }
    let pool = Pool::create(
        job.path,
        &CreateOptions::new("vs-pmdk", 64 << 20).mode(job.mode),
    )?;
    let root = pool.root::<Root>()?;
    // Each thread's objects, allocated so that no 256-byte lock stripe holds objects of two
    // threads ("disjoint objects": otherwise two threads' transactions would conflict on a
    // shared stripe). A block that would share a stripe with another thread's is left
    // allocated as padding and the allocation is repeated.
    let mut owner: std::collections::HashMap<u64, usize> = std::collections::HashMap::new();
    let mut alloc_for = |t: usize, words: u64| -> Res<u64> {
        for _ in 0..1000 {
            let off = pool.transaction(|tx| {
                Ok::<_, TxError>(if words == 8 {
                    tx.alloc([0u64; 8])?.offset()
                } else {
                    tx.alloc([0u64; 32])?.offset()
                })
            })?;
            let stripes = (off >> 8)..=((off + words * 8 - 1) >> 8);
            if off % 64 != 0 {
                return Err("an object is not 64-byte aligned".into());
            }
            if stripes
                .clone()
                .all(|k| !matches!(owner.get(&k), Some(&o) if o != t))
            {
                for k in stripes {
                    owner.insert(k, t);
                }
                return Ok(off);
            }
        }
        Err("could not place the threads' objects in disjoint lock stripes".into())
    };
    let mut objs = Root::zeroed();
    for t in 0..threads {
        objs.ctr[t] = PPtr::from_offset(alloc_for(t, 8)?);
        objs.big[t] = PPtr::from_offset(alloc_for(t, 32)?);
        for j in 0..4 {
            objs.four[t][j] = PPtr::from_offset(alloc_for(t, 8)?);
        }
    }
    // One block stays allocated in the 64-byte class, so alloc/free pairs do not open and
    // close a run (as in the PMDK peer).
    pool.transaction(|tx| {
        let keep = tx.alloc([0u64; 8])?;
        let r = tx.get_mut(root)?;
        r.ctr = objs.ctr;
        r.big = objs.big;
        r.four = objs.four;
        r.keep = keep;
        Ok::<_, TxError>(())
    })?;
    let slots = pfield!(root, Root, slot);
    let heap = pool.heap();
    let pool = &pool;
    let op = move |t: usize| -> Result<(), TxError> {
        let slot: PPtr<PPtr<[u64; 8]>> = PPtr::from_offset(slots.offset() + SLOT_STRIDE * t as u64);
        match w {
            "tx_update_8B" => pool.transaction(|tx| {
                tx.get_mut(objs.ctr[t])?[0] += 1;
                Ok(())
            }),
            "tx_update_256B" => pool.transaction(|tx| {
                for v in tx.get_mut(objs.big[t])?.iter_mut() {
                    *v += 1;
                }
                Ok(())
            }),
            "tx_update_4x64B" => pool.transaction(|tx| {
                for p in objs.four[t] {
                    for v in tx.get_mut(p)?.iter_mut() {
                        *v += 1;
                    }
                }
                Ok(())
            }),
            "tx_alloc_free" => {
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
            _ => {
                let dest = slot.offset();
                // SAFETY: no transaction runs in this workload; the root word `dest` is thread
                // t's own slot, used by no other thread and only through the heap's
                // operations; the heap is the pool's only one.
                unsafe {
                    let off = heap.alloc(pool.raw(), 64, dest)?;
                    heap.free(pool.raw(), off, Some(dest))?;
                }
                Ok(())
            }
        }
    };
    let per = job.n / threads as u64;
    let warm_per = job.warm / threads as u64;
    let (ns, d) = timed_threads(pool, threads, warm_per, per, &op)?;
    // Check the result, so the benchmark cannot measure something that does nothing.
    let total = per + warm_per;
    for t in 0..threads {
        let (c, b, f, s) = pool.read(|tx| {
            Ok::<_, TxError>((
                tx.get(objs.ctr[t])?[0],
                tx.get(objs.big[t])?[31],
                tx.get(objs.four[t][3])?[7],
                tx.get(root)?.slot[t][0],
            ))
        })?;
        let ok = match w {
            "tx_update_8B" => c == total,
            "tx_update_256B" => b == total,
            "tx_update_4x64B" => f == total,
            _ => s.is_null(),
        };
        if !ok {
            return Err(format!("{w}: wrong final state in thread {t}").into());
        }
    }
    Ok(vec![line(
        job,
        w,
        per * threads as u64,
        ns,
        pool.persistence(),
        pool.raw().flush_instr(),
        d,
    )])
}

/// Runs `op(t)` `warm` times untimed then `n` times timed on each of `threads` threads; returns
/// ns per operation (first start to last end, over all threads' operations) and the counter
/// deltas of the timed part.
fn timed_threads(
    pool: &Pool,
    threads: usize,
    warm: u64,
    n: u64,
    op: &(dyn Fn(usize) -> Result<(), TxError> + Sync),
) -> Res<(f64, PersistCounters)> {
    let warmed = Barrier::new(threads + 1);
    let go = Barrier::new(threads + 1);
    let mut before = PersistCounters::default();
    let times = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (warmed, go) = (&warmed, &go);
                s.spawn(move || -> Result<(Instant, Instant), TxError> {
                    let mut r = (0..warm).try_for_each(|_| op(t));
                    warmed.wait();
                    go.wait();
                    let start = Instant::now();
                    if r.is_ok() {
                        r = (0..n).try_for_each(|_| op(t));
                    }
                    r.map(|()| (start, Instant::now()))
                })
            })
            .collect();
        warmed.wait();
        before = pool.counters();
        go.wait();
        handles
            .into_iter()
            .map(|h| h.join().expect("a benchmark thread panicked"))
            .collect::<Result<Vec<_>, _>>()
    })?;
    let d = pool.counters() - before;
    let start = times.iter().map(|t| t.0).min().expect("a thread");
    let end = times.iter().map(|t| t.1).max().expect("a thread");
    let ns = (end - start).as_nanos() as f64 / (n * threads as u64) as f64;
    Ok((ns, d))
}

/// The kv example's `bench` key and value sequence (`examples/kv/main.rs`).
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn bench_key(i: u64) -> [u8; 8] {
    mix(i ^ 0x6b76_6265_6e63_6800).to_le_bytes()
}

fn bench_value(i: u64) -> [u8; 64] {
    let mut v = [0u8; 64];
    for (j, c) in v.chunks_exact_mut(8).enumerate() {
        c.copy_from_slice(&(i.wrapping_mul(31) ^ j as u64).to_le_bytes());
    }
    v
}

/// `kv bench --n N` of the kv example, single-threaded: N puts, then N gets in a shuffled
/// order (the same keys, values and order as the PMDK peer).
fn run_kv(job: &Job<'_>) -> Res<Vec<Value>> {
    let n = job.n;
    // As `kv bench` sizes its pool.
    let size = (n * 384 + DEFAULT_INITIAL_SLOTS * 32 + (64 << 20)).next_multiple_of(1 << 20);
    let kv = Kv::create_with(job.path, size, job.mode, DEFAULT_INITIAL_SLOTS)?;
    let pool = kv.pool();
    let mut out = Vec::new();
    let before = pool.counters();
    let t0 = Instant::now();
    for i in 0..n {
        kv.put(&bench_key(i), &bench_value(i))?;
    }
    let put_ns = t0.elapsed().as_nanos() as f64 / n as f64;
    let d_put = pool.counters() - before;
    let mut order: Vec<u64> = (0..n).collect();
    let mut x = mix(0x5678);
    for i in (1..order.len()).rev() {
        x = mix(x);
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    let mut v = Vec::with_capacity(64);
    let before = pool.counters();
    let t0 = Instant::now();
    for &i in &order {
        if !kv.get_into(&bench_key(i), &mut v)? || v != bench_value(i) {
            return Err(format!("kv: key {i} read wrong").into());
        }
    }
    let get_ns = t0.elapsed().as_nanos() as f64 / n as f64;
    let d_get = pool.counters() - before;
    if kv.len()? != n {
        return Err("kv: wrong length after the puts".into());
    }
    let (mode, instr) = (pool.persistence(), pool.raw().flush_instr());
    out.push(line(job, "kv_put", n, put_ns, mode, instr, d_put));
    out.push(line(job, "kv_get", n, get_ns, mode, instr, d_get));
    Ok(out)
}

/// Open + first allocation of a pool filled (untimed) with `n` 64-byte objects.
fn run_open(job: &Job<'_>) -> Res<Vec<Value>> {
    let layout = "vs-pmdk-open";
    let pool = Pool::create(
        job.path,
        &CreateOptions::new(layout, job.pool_mib << 20).mode(job.mode),
    )?;
    let root = pool.root::<Root>()?;
    let slots = pfield!(root, Root, slot).offset();
    for _ in 0..job.n {
        // SAFETY: single thread, no transaction runs; root slot 0 is written only by the
        // heap's operations (the objects are deliberately left unreferenced but allocated).
        unsafe { pool.heap().alloc(pool.raw(), 64, slots)? };
    }
    drop(pool);
    let t0 = Instant::now();
    let pool = Pool::open(job.path, &OpenOptions::new(layout).mode(job.mode))?;
    // SAFETY: as above; the slot of row 1 is written only by this allocation.
    unsafe { pool.heap().alloc(pool.raw(), 64, slots + SLOT_STRIDE)? };
    let ns = t0.elapsed().as_nanos() as f64;
    // The new handle's counters: everything the open (recovery included) and the first
    // allocation flushed.
    let d = pool.counters();
    Ok(vec![line(
        job,
        "open",
        1,
        ns,
        pool.persistence(),
        pool.raw().flush_instr(),
        d,
    )])
}

/// The persistence floors on the pool layer, walking a 4 MiB heap window as
/// `benches/persist.rs` does.
fn run_floor(job: &Job<'_>) -> Res<Vec<Value>> {
    use pmstore::pool::{Pool as RawPool, PAGE};
    const WINDOW: u64 = 4 << 20;
    let pool = RawPool::create(
        job.path,
        &CreateOptions::new("vs-pmdk-floor", 64 << 20).mode(job.mode),
    )?;
    let base = pool.geometry().heap_offset;
    let mut ctx = pool.flush_context();
    for page in (0..WINDOW).step_by(PAGE as usize) {
        // SAFETY: this thread alone uses the pool; no reference into it is live.
        unsafe { pool.write(base + page, &[0u8; 8]) };
    }
    pool.persist(&mut ctx, base, WINDOW)?;
    let stride: u64 = match job.workload {
        "persist_64B" => 64,
        "copy_nt_256B" => 256,
        _ => PAGE,
    };
    let src = [0x5au8; 256];
    let mut next = 0;
    let mut op = |ctx: &mut pmstore::FlushContext| -> Res<()> {
        let off = base + next;
        next += stride;
        if next + stride > WINDOW {
            next = 0;
        }
        match stride {
            64 => {
                // SAFETY: as above.
                unsafe { pool.write(off, &off.to_le_bytes()) };
                pool.persist(ctx, off, 64)?;
            }
            // SAFETY: as above; `src` is not in the pool.
            256 => unsafe { pool.copy_persist(ctx, off, std::hint::black_box(&src))? },
            _ => {
                // SAFETY: as above.
                unsafe { pool.write(off, &off.to_le_bytes()) };
                pool.flush(ctx, off, 8);
                pool.drain(ctx)?;
            }
        }
        Ok(())
    };
    for _ in 0..job.warm {
        op(&mut ctx)?;
    }
    let before = pool.counters();
    let t0 = Instant::now();
    for _ in 0..job.n {
        op(&mut ctx)?;
    }
    let ns = t0.elapsed().as_nanos() as f64 / job.n as f64;
    let d = pool.counters() - before;
    Ok(vec![line(
        job,
        job.workload,
        job.n,
        ns,
        pool.persistence(),
        pool.flush_instr(),
        d,
    )])
}
