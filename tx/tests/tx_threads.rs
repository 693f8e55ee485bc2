//! Concurrent transactions on one pool (forced-flush mode on /dev/shm): a bank whose total is
//! checked by a concurrent reader (serializability) and whose every committed transfer is
//! replayed against the final balances (no lost or doubled update); concurrent alloc/free
//! transactions competing for fewer lanes than threads (the heap stays exactly consistent);
//! disjoint objects updated from two threads (never a conflict).
//!
//! Knobs: `PMSTORE_TX_TRANSFERS` (transfers per bank thread, default 2000),
//! `PMSTORE_TX_THREAD_OPS` (alloc/free transactions per thread, default 2000).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytemuck::{Pod, Zeroable};
use pmstore_tx::{CreateOptions, ModeRequest, PPtr, Pool, TxError};

mod common;
use common::*;

const L: &str = "tx-threads";
const SIZE: u64 = 8 << 20;

// ---------------------------------------------------------------------------------------------
// Bank

const ACCOUNTS: usize = 16;
const INITIAL: u64 = 1000;
const BANK_THREADS: u64 = 4;

/// An account: word 0 the balance, word 1 the number of transfers it took part in.
type Account = [u64; 8];

#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(C)]
struct Bank {
    accounts: [PPtr<Account>; ACCOUNTS],
}

fn balances(pool: &Pool, bank: PPtr<Bank>) -> Vec<[u64; 2]> {
    pool.read(|tx| {
        let b = tx.get(bank)?;
        b.accounts
            .iter()
            .map(|&a| tx.get(a).map(|v| [v[0], v[1]]))
            .collect::<Result<Vec<_>, _>>()
    })
    .unwrap()
}

#[test]
fn bank_transfers_are_serializable() {
    let n = knob("PMSTORE_TX_TRANSFERS", 2000);
    let dir = shm_dir();
    let (path, pool) = create_in(dir.path(), "bank.pool", L, SIZE, ModeRequest::Flush);
    let bank = pool.root::<Bank>().unwrap();
    pool.transaction(|tx| {
        for i in 0..ACCOUNTS {
            let mut a: Account = [0; 8];
            a[0] = INITIAL;
            a[7] = 0xACC0 + i as u64;
            let p = tx.alloc(a)?;
            tx.get_mut(bank)?.accounts[i] = p;
        }
        Ok::<_, TxError>(())
    })
    .unwrap();
    let total = INITIAL * ACCOUNTS as u64;
    let attempts = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    let reads = AtomicU64::new(0);
    let t0 = std::time::Instant::now();
    let logs: Vec<Vec<(usize, usize, u64)>> = std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut bad = Vec::new();
            loop {
                let last = done.load(Ordering::Acquire);
                let sum = pool
                    .read(|tx| {
                        let b = tx.get(bank)?;
                        let mut sum = 0;
                        for &a in &b.accounts {
                            sum += tx.get(a)?[0];
                        }
                        Ok::<_, TxError>(sum)
                    })
                    .unwrap();
                if sum != total {
                    bad.push(sum);
                }
                reads.fetch_add(1, Ordering::Relaxed);
                if last {
                    break;
                }
            }
            bad
        });
        let workers: Vec<_> = (0..BANK_THREADS)
            .map(|t| {
                let (pool, attempts) = (&pool, &attempts);
                s.spawn(move || {
                    let mut rng = Rng(0xBA4C + t);
                    let mut log = Vec::new();
                    for _ in 0..n {
                        let from = rng.below(ACCOUNTS as u64) as usize;
                        let to = (from + 1 + rng.below(ACCOUNTS as u64 - 1) as usize) % ACCOUNTS;
                        let frac = rng.next();
                        let moved = pool
                            .transaction(|tx| {
                                attempts.fetch_add(1, Ordering::Relaxed);
                                let b = *tx.get(bank)?;
                                let (pf, pt) = (b.accounts[from], b.accounts[to]);
                                let bal = tx.get(pf)?[0];
                                if bal == 0 {
                                    return Ok::<_, TxError>(None);
                                }
                                let amount = 1 + frac % bal; // 1..=bal
                                let f = tx.get_mut(pf)?;
                                f[0] -= amount;
                                f[1] += 1;
                                let g = tx.get_mut(pt)?;
                                g[0] += amount;
                                g[1] += 1;
                                Ok(Some(amount))
                            })
                            .unwrap();
                        if let Some(amount) = moved {
                            log.push((from, to, amount));
                        }
                    }
                    log
                })
            })
            .collect();
        let logs = workers.into_iter().map(|w| w.join().unwrap()).collect();
        done.store(true, Ordering::Release);
        let bad = reader.join().unwrap();
        assert!(
            bad.is_empty(),
            "the reader saw totals {:?} (want {total})",
            &bad[..bad.len().min(10)]
        );
        logs
    });
    let commits: usize = logs.iter().map(Vec::len).sum();
    let tries = attempts.load(Ordering::Relaxed);
    println!(
        "bank: {} threads x {n} transfers in {:?}: {commits} transfers committed (the rest found an \
         empty account), {tries} closure runs ({} retries), {} consistent reads",
        BANK_THREADS,
        t0.elapsed(),
        tries - BANK_THREADS * n,
        reads.load(Ordering::Relaxed)
    );
    assert!(tries >= BANK_THREADS * n);
    assert!(reads.load(Ordering::Relaxed) > 0);
    // Replay every committed transfer: the final balances are exactly the result (no lost
    // update, none applied twice).
    // (Per-thread logs are not in serial order: sum signed deltas.)
    let mut delta = vec![[0i64; 2]; ACCOUNTS];
    for &(from, to, amount) in logs.iter().flatten() {
        delta[from][0] -= amount as i64;
        delta[from][1] += 1;
        delta[to][0] += amount as i64;
        delta[to][1] += 1;
    }
    let expect: Vec<[u64; 2]> = delta
        .iter()
        .map(|d| [(INITIAL as i64 + d[0]) as u64, d[1] as u64])
        .collect();
    let got = balances(&pool, bank);
    assert_eq!(got, expect, "final balances equal the replayed transfers");
    assert_eq!(got.iter().map(|b| b[0]).sum::<u64>(), total);
    let mut reach = vec![bank.offset()];
    pool.read(|tx| {
        reach.extend(tx.get(bank)?.accounts.iter().map(|p| p.offset()));
        Ok::<_, TxError>(())
    })
    .unwrap();
    check_reachable(&pool, &reach).unwrap();
    drop(pool);
    let pool = reopen(&path, L, ModeRequest::Flush);
    assert_eq!(balances(&pool, bank), expect, "after reopen");
    let ids: Vec<u64> = pool
        .read(|tx| {
            let b = *tx.get(bank)?;
            b.accounts
                .iter()
                .map(|&a| tx.get(a).map(|v| v[7]))
                .collect::<Result<Vec<_>, _>>()
        })
        .unwrap();
    assert_eq!(
        ids,
        (0..ACCOUNTS as u64).map(|i| 0xACC0 + i).collect::<Vec<_>>()
    );
}

// ---------------------------------------------------------------------------------------------
// Alloc/free with fewer lanes than threads

const DIR_SLOTS: usize = 32;
const ALLOC_THREADS: usize = 4;
const MAGIC: u64 = 0x17E3_0000_0000_0000;

/// An item: word 0 its own offset, word 1 `MAGIC | owner thread`, word 2 a sequence number.
type Item = [u64; 4];
/// A thread's directory of items: 256 bytes, one lock stripe.
type Dir = [PPtr<Item>; DIR_SLOTS];

#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(C)]
struct Dirs {
    dirs: [PPtr<Dir>; ALLOC_THREADS],
}

/// Every block reachable from the root (root, directories, items) and the items' contents.
fn walk(pool: &Pool, root: PPtr<Dirs>) -> (Vec<u64>, Vec<(u64, Item)>) {
    pool.read(|tx| {
        let mut reach = vec![root.offset()];
        let mut items = Vec::new();
        for &d in &tx.get(root)?.dirs {
            reach.push(d.offset());
            for &p in tx.get(d)?.iter() {
                if !p.is_null() {
                    reach.push(p.offset());
                    items.push((p.offset(), *tx.get(p)?));
                }
            }
        }
        Ok::<_, TxError>((reach, items))
    })
    .unwrap()
}

#[test]
fn alloc_and_free_from_more_threads_than_lanes_keep_the_heap_consistent() {
    let ops = knob("PMSTORE_TX_THREAD_OPS", 2000);
    let dir = shm_dir();
    let path = dir.path().join("lanes.pool");
    let opts = CreateOptions::new(L, SIZE)
        .mode(ModeRequest::Flush)
        .lanes(2, 16 << 10);
    let pool = Pool::create(&path, &opts).unwrap();
    assert_eq!(pool.raw().geometry().lane_count, 2);
    let root = pool.root::<Dirs>().unwrap();
    pool.transaction(|tx| {
        for t in 0..ALLOC_THREADS {
            let d = tx.alloc_zeroed::<Dir>()?;
            tx.get_mut(root)?.dirs[t] = d;
        }
        Ok::<_, TxError>(())
    })
    .unwrap();
    let attempts = AtomicU64::new(0);
    let t0 = std::time::Instant::now();
    let counts: Vec<[u64; 4]> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..ALLOC_THREADS)
            .map(|t| {
                let (pool, attempts) = (&pool, &attempts);
                s.spawn(move || {
                    let mut rng = Rng(0x1A4E + t as u64);
                    let mut c = [0u64; 4]; // allocs, frees, replaces, steals
                    for seq in 0..ops {
                        let slot = rng.below(DIR_SLOTS as u64) as usize;
                        let op = rng.below(10);
                        let victim = rng.below(ALLOC_THREADS as u64) as usize;
                        let kind = pool
                            .transaction(|tx| -> Result<usize, TxError> {
                                attempts.fetch_add(1, Ordering::Relaxed);
                                let d = tx.get(root)?.dirs[t];
                                let cur = tx.get(d)?[slot];
                                let mk =
                                    |tx: &mut pmstore_tx::Tx<'_>| -> Result<PPtr<Item>, TxError> {
                                        let p = tx.alloc::<Item>([0, MAGIC | t as u64, seq, 0])?;
                                        tx.get_mut(p)?[0] = p.offset();
                                        Ok(p)
                                    };
                                if op == 0 && victim != t {
                                    // Steal: move an item of another thread into an empty slot.
                                    if !cur.is_null() {
                                        return Ok(4);
                                    }
                                    let vd = tx.get(root)?.dirs[victim];
                                    let vs = slot;
                                    let p = tx.get(vd)?[vs];
                                    if p.is_null() {
                                        return Ok(4);
                                    }
                                    tx.get_mut(vd)?[vs] = PPtr::NULL;
                                    tx.get_mut(d)?[slot] = p;
                                    return Ok(3);
                                }
                                if cur.is_null() {
                                    let p = mk(tx)?;
                                    tx.get_mut(d)?[slot] = p;
                                    Ok(0)
                                } else if op < 5 {
                                    tx.free(cur)?;
                                    tx.get_mut(d)?[slot] = PPtr::NULL;
                                    Ok(1)
                                } else {
                                    // Replace: free + alloc in one transaction.
                                    tx.free(cur)?;
                                    let p = mk(tx)?;
                                    tx.get_mut(d)?[slot] = p;
                                    Ok(2)
                                }
                            })
                            .unwrap();
                        if kind < 4 {
                            c[kind] += 1;
                        }
                    }
                    c
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let tries = attempts.load(Ordering::Relaxed);
    println!(
        "lanes: {ALLOC_THREADS} threads x {ops} transactions on 2 lanes in {:?}: \
         [allocs, frees, replaces, steals] per thread {counts:?}, {tries} closure runs",
        t0.elapsed()
    );
    let allocs: u64 = counts.iter().map(|c| c[0]).sum();
    let frees: u64 = counts.iter().map(|c| c[1]).sum();
    if ops >= 100 {
        assert!(allocs > 0 && frees > 0, "both kinds ran");
    }
    let check = |pool: &Pool| {
        let (reach, items) = walk(pool, root);
        assert_eq!(
            items.len() as u64,
            allocs - frees,
            "live items = allocs - frees"
        );
        let mut offs = BTreeMap::new();
        for &(off, it) in &items {
            assert_eq!(it[0], off, "the item stores its own offset: {it:x?}");
            assert_eq!(it[1] & !0xFF, MAGIC, "item {off:#x}: {it:x?}");
            assert!((it[1] & 0xFF) < ALLOC_THREADS as u64);
            assert!(it[2] < ops);
            assert!(offs.insert(off, ()).is_none(), "item {off:#x} linked twice");
        }
        check_reachable(pool, &reach).unwrap();
        let stats = pool.heap().stats(pool.raw()).unwrap();
        let sizes: u64 = allocated(pool).unwrap().values().sum();
        assert_eq!(stats.bytes_allocated, sizes);
    };
    check(&pool);
    drop(pool);
    let pool = reopen(&path, L, ModeRequest::Flush);
    check(&pool);
}

// ---------------------------------------------------------------------------------------------
// Disjoint objects

/// 256 bytes: one lock stripe of its own.
type Counter = [u64; 32];

#[test]
fn disjoint_objects_never_conflict() {
    let n = knob("PMSTORE_TX_THREAD_OPS", 2000) * 2;
    let dir = shm_dir();
    let (path, pool) = create_in(dir.path(), "disjoint.pool", L, SIZE, ModeRequest::Flush);
    let root = pool.root::<[PPtr<Counter>; 2]>().unwrap();
    pool.transaction(|tx| {
        for t in 0..2 {
            let c = tx.alloc_zeroed::<Counter>()?;
            tx.get_mut(root)?[t] = c;
        }
        Ok::<_, TxError>(())
    })
    .unwrap();
    let objs = pool.read(|tx| Ok::<_, TxError>(*tx.get(root)?)).unwrap();
    assert_ne!(
        objs[0].offset() >> 8,
        objs[1].offset() >> 8,
        "different stripes"
    );
    let runs: Vec<u64> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2usize)
            .map(|t| {
                let pool = &pool;
                let p = objs[t];
                s.spawn(move || {
                    let mut runs = 0;
                    for i in 0..n {
                        pool.transaction(|tx| {
                            runs += 1;
                            let v = tx.get_mut(p)?;
                            v[0] += 1;
                            v[1 + (i % 31) as usize] = i;
                            Ok::<_, TxError>(())
                        })
                        .unwrap();
                    }
                    runs
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    println!("disjoint: 2 threads x {n} transactions, closure runs {runs:?}");
    assert_eq!(runs, vec![n, n], "disjoint transactions never retry");
    drop(pool);
    let pool = reopen(&path, L, ModeRequest::Flush);
    pool.read(|tx| {
        for &p in &objs {
            let v = tx.get(p)?;
            assert_eq!(v[0], n);
            for k in 1..32u64 {
                // The last i < n with 1 + i % 31 == k.
                let last = (0..n).rev().find(|i| 1 + i % 31 == k).unwrap_or(0);
                assert_eq!(v[k as usize], last, "word {k}");
            }
        }
        Ok::<_, TxError>(())
    })
    .unwrap();
}
