//! Behaviour of single transactions on real pools (forced-flush mode on /dev/shm unless said
//! otherwise): durability across reopen, aborts by `Err` and by panic (nothing reaches the
//! pool, allocations are released, frees are not applied, locks are released), nested
//! transactions, read-your-writes, every pointer error, the root object, running out of space,
//! the cost of a commit in drains, flushed lines and msyncs, and large transactions.

use std::mem::size_of;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use bytemuck::{Pod, Zeroable};
use pmstore_tx::alloc::AllocError;
use pmstore_tx::{pfield, CommitInfo, ModeRequest, OpenOptions, PPtr, Pool, TxError};

mod common;
use common::*;

const L: &str = "tx-basic";
const SIZE: u64 = 8 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
struct Obj {
    x: u64,
    y: u64,
    data: [u64; 6],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
struct Node {
    value: u64,
    next: PPtr<Node>,
}

type Big = [u64; 64]; // 512 bytes

#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
struct Root {
    a: u64,
    b: u64,
    obj: PPtr<Obj>,
    head: PPtr<Node>,
    slots: [PPtr<Obj>; 4],
    bigs: [PPtr<Big>; 8],
}

fn obj(seed: u64) -> Obj {
    Obj {
        x: seed,
        y: seed * 10,
        data: [seed + 1, seed + 2, seed + 3, seed + 4, seed + 5, seed + 6],
    }
}

/// A fresh forced-flush pool with its root.
fn fresh(dir: &Path) -> (std::path::PathBuf, Pool, PPtr<Root>) {
    let (path, pool) = create_in(dir, "basic.pool", L, SIZE, ModeRequest::Flush);
    let root = pool.root::<Root>().unwrap();
    (path, pool, root)
}

fn read_root(pool: &Pool, root: PPtr<Root>) -> Root {
    pool.read(|tx| Ok::<_, TxError>(*tx.get(root)?)).unwrap()
}

fn read_obj(pool: &Pool, p: PPtr<Obj>) -> Obj {
    pool.read(|tx| Ok::<_, TxError>(*tx.get(p)?)).unwrap()
}

fn list(pool: &Pool, root: PPtr<Root>) -> Vec<(u64, u64)> {
    pool.read(|tx| {
        let mut out = Vec::new();
        let mut p = tx.get(root)?.head;
        while !p.is_null() {
            let n = tx.get(p)?;
            out.push((p.offset(), n.value));
            p = n.next;
        }
        Ok::<_, TxError>(out)
    })
    .unwrap()
}

/// Lines a commit wrote back: flushed, or written with non-temporal stores.
fn written_lines(d: pmstore_tx::pool::PersistCounters) -> u64 {
    d.lines_flushed + d.nt_bytes / 64
}

/// Lines of a redo log holding one range of `len` bytes: the 64-byte header, then a 16-byte
/// range head and the data padded to 16 (`docs/REDO.md` §2).
fn log_lines(len: u64) -> u64 {
    (64 + 16 + len.next_multiple_of(16)).div_ceil(64)
}

/// (ranges, range bytes, allocs, frees, logged) of a commit.
fn summary(i: CommitInfo) -> (usize, u64, usize, usize, bool) {
    (i.ranges, i.range_bytes, i.allocs, i.frees, i.logged)
}

fn allocated_bytes(pool: &Pool) -> u64 {
    pool.heap().stats(pool.raw()).unwrap().bytes_allocated
}

/// An error of the test's own, to abort with.
#[derive(Debug, PartialEq)]
enum Oops {
    Tx(String),
    Abort(u32),
}

impl From<TxError> for Oops {
    fn from(e: TxError) -> Oops {
        Oops::Tx(e.to_string())
    }
}

// ---------------------------------------------------------------------------------------------
// Commit and durability

#[test]
fn commit_is_visible_and_survives_reopen() {
    let dir = shm_dir();
    let (path, pool, root) = fresh(dir.path());
    let (o, nodes) = pool
        .transaction(|tx| {
            let o = tx.alloc(obj(7))?;
            let mut head = PPtr::NULL;
            let mut nodes = Vec::new();
            for v in 1..=3u64 {
                head = tx.alloc(Node {
                    value: v,
                    next: head,
                })?;
                nodes.push(head.offset());
            }
            let r = tx.get_mut(root)?;
            r.a = 0x1111_2222_3333_4444;
            r.b = u64::MAX;
            r.obj = o;
            r.head = head;
            Ok::<_, TxError>((o, nodes))
        })
        .unwrap();
    let info = pool.last_commit();
    assert!(info.logged);
    assert_eq!((info.allocs, info.frees), (4, 0));
    let check = |pool: &Pool| {
        let r = read_root(pool, root);
        assert_eq!(r.a, 0x1111_2222_3333_4444);
        assert_eq!(r.b, u64::MAX);
        assert_eq!(r.obj, o);
        assert_eq!(read_obj(pool, o), obj(7));
        let l = list(pool, root);
        assert_eq!(
            l,
            vec![(nodes[2], 3), (nodes[1], 2), (nodes[0], 1)],
            "list in insertion order reversed"
        );
        let mut reach = vec![root.offset(), o.offset()];
        reach.extend(&nodes);
        check_reachable(pool, &reach).unwrap();
    };
    check(&pool);
    drop(pool);
    let pool = reopen(&path, L, ModeRequest::Flush);
    let rep = pool.recovery_report();
    assert_eq!(
        (rep.logs_replayed, rep.invalid_cleared),
        (0, 0),
        "a closed pool has nothing to recover: {rep:?}"
    );
    assert_eq!(pool.root::<Root>().unwrap(), root, "same root after reopen");
    check(&pool);
    // And a second transaction on the reopened pool builds on it.
    pool.transaction(|tx| {
        tx.get_mut(root)?.a += 1;
        *tx.get_mut(pfield!(o, Obj, y))? = 99;
        Ok::<_, TxError>(())
    })
    .unwrap();
    drop(pool);
    let pool = reopen(&path, L, ModeRequest::Flush);
    assert_eq!(read_root(&pool, root).a, 0x1111_2222_3333_4445);
    assert_eq!(read_obj(&pool, o).y, 99);
    assert_eq!(read_obj(&pool, o).x, 7);
}

// ---------------------------------------------------------------------------------------------
// Aborts

/// Sets up a root with `obj` = A and `slots[0]` = B, returns (A, B).
fn two_objects(pool: &Pool, root: PPtr<Root>) -> (PPtr<Obj>, PPtr<Obj>) {
    pool.transaction(|tx| {
        let a = tx.alloc(obj(1))?;
        let b = tx.alloc(obj(2))?;
        let r = tx.get_mut(root)?;
        r.obj = a;
        r.slots[0] = b;
        r.a = 5;
        Ok::<_, TxError>((a, b))
    })
    .unwrap()
}

/// The body of an aborted transaction: modifies the root and A, allocates C (linked from
/// `slots[1]`, returned through `c_out`), frees B.
fn doomed_body(
    tx: &mut pmstore_tx::Tx<'_>,
    root: PPtr<Root>,
    a: PPtr<Obj>,
    b: PPtr<Obj>,
    c_out: &mut u64,
) -> Result<(), TxError> {
    tx.get_mut(root)?.a = 6;
    tx.get_mut(a)?.data[3] = 12345;
    let c = tx.alloc(obj(3))?;
    *c_out = c.offset();
    tx.get_mut(root)?.slots[1] = c;
    tx.free(b)?;
    tx.get_mut(root)?.slots[0] = PPtr::NULL;
    // Everything is visible inside the transaction.
    assert_eq!(tx.get(root)?.a, 6);
    assert_eq!(tx.get(c)?.x, 3);
    Ok(())
}

/// After an abort: every byte unchanged, C released (the next alloc hands out its block again),
/// B still allocated, readable and freeable.
fn check_aborted(
    pool: &Pool,
    root: PPtr<Root>,
    b: PPtr<Obj>,
    before: &[u8],
    alloc_before: u64,
    c: u64,
) {
    let after = pool_bytes(pool);
    assert!(
        before == after,
        "abort changed the pool: {}",
        first_difference(before, &after)
    );
    assert_eq!(allocated_bytes(pool), alloc_before, "allocations released");
    let r = read_root(pool, root);
    assert_eq!((r.a, r.slots[0], r.slots[1]), (5, b, PPtr::NULL));
    assert_eq!(read_obj(pool, b), obj(2), "the free was not applied");
    // The block C had is handed out again (it was cancelled, not leaked).
    let again = pool
        .transaction(|tx| {
            let c2 = tx.alloc(obj(4))?;
            tx.get_mut(root)?.slots[1] = c2;
            Ok::<_, TxError>(c2)
        })
        .unwrap();
    assert_eq!(
        again.offset(),
        c,
        "the next alloc reuses the aborted allocation's block"
    );
    // B can still be freed, once.
    pool.transaction(|tx| {
        tx.free(b)?;
        tx.get_mut(root)?.slots[0] = PPtr::NULL;
        Ok::<_, TxError>(())
    })
    .unwrap();
    let r = read_root(pool, root);
    check_reachable(pool, &[root.offset(), r.obj.offset(), again.offset()]).unwrap();
}

#[test]
fn err_from_the_closure_aborts_everything() {
    let dir = shm_dir();
    let (_path, pool, root) = fresh(dir.path());
    let (a, b) = two_objects(&pool, root);
    let before = pool_bytes(&pool);
    let alloc_before = allocated_bytes(&pool);
    let drains = pool.counters().drains;
    let last = pool.last_commit();
    let mut c = 0;
    let runs = AtomicU32::new(0);
    let r: Result<(), Oops> = pool.transaction(|tx| {
        runs.fetch_add(1, Ordering::Relaxed);
        doomed_body(tx, root, a, b, &mut c)?;
        Err(Oops::Abort(7))
    });
    assert_eq!(
        r,
        Err(Oops::Abort(7)),
        "the closure's error comes back as is"
    );
    assert_eq!(runs.load(Ordering::Relaxed), 1, "an error is not retried");
    assert_eq!(pool.counters().drains, drains, "an abort costs no drain");
    assert_eq!(pool.last_commit(), last);
    assert_ne!(c, 0);
    check_aborted(&pool, root, b, &before, alloc_before, c);
}

#[test]
fn panic_in_the_closure_aborts_and_releases_the_locks() {
    let dir = shm_dir();
    let (_path, pool, root) = fresh(dir.path());
    let (a, b) = two_objects(&pool, root);
    let before = pool_bytes(&pool);
    let alloc_before = allocated_bytes(&pool);
    let mut c = 0;
    let r = catch_unwind(AssertUnwindSafe(|| {
        pool.transaction(|tx| {
            doomed_body(tx, root, a, b, &mut c)?;
            // Also hold shared locks on B's neighbours when the panic unwinds.
            let _ = tx.get(pfield!(a, Obj, y))?;
            panic!("deliberate panic inside a transaction (expected by the test)");
            #[allow(unreachable_code)]
            Ok::<(), TxError>(())
        })
    }));
    assert!(r.is_err(), "the panic propagates");
    let after = pool_bytes(&pool);
    assert!(
        before == after,
        "panic changed the pool: {}",
        first_difference(&before, &after)
    );
    assert_eq!(allocated_bytes(&pool), alloc_before);
    // Locks were released: another thread gets the same objects at once (first attempt).
    let runs = AtomicU32::new(0);
    let t0 = std::time::Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| {
            pool.transaction(|tx| {
                runs.fetch_add(1, Ordering::Relaxed);
                tx.get_mut(a)?.data[3] = 777;
                tx.get_mut(root)?.b = 778;
                let _ = tx.get(b)?;
                Ok::<_, TxError>(())
            })
            .unwrap();
        });
    });
    assert_eq!(
        runs.load(Ordering::Relaxed),
        1,
        "no conflict with the dead transaction"
    );
    assert!(t0.elapsed() < std::time::Duration::from_secs(2));
    assert_eq!(read_obj(&pool, a).data[3], 777);
    // And this thread may start transactions again (its "active" mark was removed).
    pool.transaction(|tx| {
        tx.get_mut(root)?.b = 5;
        Ok::<_, TxError>(())
    })
    .unwrap();
    let before = pool_bytes(&pool);
    check_aborted(&pool, root, b, &before, alloc_before, c);
}

// ---------------------------------------------------------------------------------------------
// Nested transactions

#[test]
fn nested_success_merges_into_the_outer_commit() {
    let dir = shm_dir();
    let (path, pool, root) = fresh(dir.path());
    pool.transaction(|tx| {
        tx.get_mut(root)?.b = 1;
        Ok::<_, TxError>(())
    })
    .unwrap(); // warm-up: this thread's lane
    let c0 = pool.counters();
    let (o, n) = pool
        .transaction(|tx| {
            tx.get_mut(root)?.a = 10;
            let o = tx.nested(|tx| {
                let o = tx.alloc(obj(11))?;
                tx.get_mut(root)?.obj = o;
                // The outer write is visible inside.
                assert_eq!(tx.get(root)?.a, 10);
                Ok::<_, TxError>(o)
            })?;
            let n = tx.nested(|tx| {
                tx.nested(|tx| {
                    let n = tx.alloc(Node {
                        value: 12,
                        next: PPtr::NULL,
                    })?;
                    tx.get_mut(root)?.head = n;
                    Ok::<_, TxError>(n)
                })
            })?;
            // The inner writes are visible outside.
            assert_eq!(tx.get(root)?.obj, o);
            assert_eq!(tx.get(n)?.value, 12);
            Ok::<_, TxError>((o, n))
        })
        .unwrap();
    let d = pool.counters() - c0;
    assert_eq!(
        d.drains,
        commit_drains(&pool, true),
        "one commit (two drains unless it defers) for the outer and inner transactions"
    );
    let info = pool.last_commit();
    assert_eq!((info.allocs, info.frees, info.logged), (2, 0, true));
    drop(pool);
    let pool = reopen(&path, L, ModeRequest::Flush);
    let r = read_root(&pool, root);
    assert_eq!((r.a, r.b, r.obj, r.head), (10, 1, o, n));
    assert_eq!(read_obj(&pool, o), obj(11));
    check_reachable(&pool, &[root.offset(), o.offset(), n.offset()]).unwrap();
}

#[test]
fn a_failed_nested_transaction_aborts_the_whole_even_if_swallowed() {
    let dir = shm_dir();
    let (_path, pool, root) = fresh(dir.path());
    let (a, _b) = two_objects(&pool, root);
    let before = pool_bytes(&pool);
    let alloc_before = allocated_bytes(&pool);
    let drains = pool.counters().drains;
    // One level.
    let r = pool.transaction(|tx| {
        tx.get_mut(root)?.a = 100;
        let x = tx.alloc(obj(20))?;
        tx.get_mut(root)?.slots[2] = x;
        let inner = tx.nested(|tx| {
            tx.get_mut(a)?.x = 101;
            let y = tx.alloc(obj(21))?;
            tx.get_mut(root)?.slots[3] = y;
            Err::<(), _>(TxError::Null)
        });
        assert!(matches!(inner, Err(TxError::Null)));
        // The outer closure swallows the error and goes on.
        tx.get_mut(root)?.b = 102;
        Ok::<_, TxError>(())
    });
    assert!(matches!(r, Err(TxError::Aborted)), "{r:?}");
    // Two levels: the innermost fails, both outer levels swallow it.
    let r = pool.transaction(|tx| {
        tx.get_mut(root)?.a = 200;
        let _ = tx.nested(|tx| {
            tx.get_mut(root)?.b = 201;
            let _ = tx.nested(|tx| {
                tx.alloc(obj(22))?;
                Err::<(), _>(TxError::Conflict) // any error: not a real conflict
            });
            Ok::<_, TxError>(())
        });
        Ok::<_, TxError>(())
    });
    assert!(matches!(r, Err(TxError::Aborted)), "{r:?}");
    let after = pool_bytes(&pool);
    assert!(
        before == after,
        "a failed nested tx changed the pool: {}",
        first_difference(&before, &after)
    );
    assert_eq!(allocated_bytes(&pool), alloc_before);
    assert_eq!(pool.counters().drains, drains);
    let r = read_root(&pool, root);
    assert_eq!(
        (r.a, r.b, r.slots[2], r.slots[3]),
        (5, 0, PPtr::NULL, PPtr::NULL)
    );
    assert_eq!(read_obj(&pool, a), obj(1));
    // The pool stays usable.
    pool.transaction(|tx| {
        tx.get_mut(root)?.a = 300;
        Ok::<_, TxError>(())
    })
    .unwrap();
    assert_eq!(read_root(&pool, root).a, 300);
}

#[test]
fn a_transaction_inside_a_transaction_on_the_same_pool_is_refused() {
    let dir = shm_dir();
    let (_path, pool, root) = fresh(dir.path());
    let (_, other) = create_in(dir.path(), "other.pool", L, SIZE, ModeRequest::Flush);
    let other_root = other.root::<Root>().unwrap();
    pool.transaction(|tx| {
        tx.get_mut(root)?.a = 1;
        let e = pool.transaction(|tx2| {
            tx2.get_mut(root)?.a = 2;
            Ok::<_, TxError>(())
        });
        assert!(matches!(e, Err(TxError::NestedTransaction)), "{e:?}");
        let e = pool.read(|tx2| Ok::<_, TxError>(tx2.get(root)?.a));
        assert!(matches!(e, Err(TxError::NestedTransaction)), "{e:?}");
        let e = pool.root::<Root>();
        assert!(matches!(e, Err(TxError::NestedTransaction)), "{e:?}");
        // Another pool is fine.
        other.transaction(|tx2| {
            tx2.get_mut(other_root)?.a = 3;
            Ok::<_, TxError>(())
        })?;
        Ok::<_, TxError>(())
    })
    .unwrap();
    pool.read(|tx| {
        let e = pool.read(|tx2| Ok::<_, TxError>(tx2.get(root)?.a));
        assert!(matches!(e, Err(TxError::NestedTransaction)), "{e:?}");
        let e = pool.transaction(|_| Ok::<_, TxError>(()));
        assert!(matches!(e, Err(TxError::NestedTransaction)), "{e:?}");
        assert_eq!(tx.get(root)?.a, 1);
        Ok::<_, TxError>(())
    })
    .unwrap();
    assert_eq!(
        read_root(&pool, root).a,
        1,
        "the refused inner transaction did nothing"
    );
    assert_eq!(read_root(&other, other_root).a, 3);
}

// ---------------------------------------------------------------------------------------------
// Reads

#[test]
fn reads_see_the_transactions_own_writes() {
    let dir = shm_dir();
    let (_path, pool, root) = fresh(dir.path());
    let (a, _b) = two_objects(&pool, root);
    pool.transaction(|tx| {
        assert_eq!(tx.get(a)?.y, 10);
        tx.get_mut(a)?.y = 55;
        assert_eq!(tx.get(a)?.y, 55, "get after get_mut");
        assert_eq!(
            *tx.get(pfield!(a, Obj, y))?,
            55,
            "pfield into the modified object"
        );
        // A write through a field pointer is seen by a whole-object read.
        *tx.get_mut(pfield!(a, Obj, x))? = 66;
        assert_eq!(
            *tx.get(a)?,
            Obj {
                x: 66,
                y: 55,
                ..obj(1)
            }
        );
        // An object allocated in this transaction.
        let n = tx.alloc(Node {
            value: 77,
            next: PPtr::NULL,
        })?;
        assert_eq!(*tx.get(pfield!(n, Node, value))?, 77);
        assert_eq!(tx.get(pfield!(n, Node, next))?.offset(), 0);
        *tx.get_mut(pfield!(n, Node, next))? = n;
        assert_eq!(tx.get(n)?.next, n);
        *tx.get_mut(pfield!(n, Node, next))? = PPtr::NULL;
        assert_eq!(
            *tx.get(n)?,
            Node {
                value: 77,
                next: PPtr::NULL
            }
        );
        tx.get_mut(root)?.head = n;
        // An element of an array field.
        tx.get_mut(root)?.slots[2] = a;
        let slots = pfield!(root, Root, slots);
        assert_eq!(*tx.get(slots.index(2))?, a);
        Ok::<_, TxError>(())
    })
    .unwrap();
    let o = read_obj(&pool, a);
    assert_eq!((o.x, o.y), (66, 55));
    let l = list(&pool, root);
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].1, 77);
}

#[test]
fn a_read_across_a_partly_modified_object_sees_the_pending_write() {
    let dir = shm_dir();
    let (_path, pool, root) = fresh(dir.path());
    type Two = [u64; 16]; // 128 bytes: two cache lines
    type Four = [u64; 32]; // two such objects side by side (one block of 256 bytes)
    let (p, q) = pool
        .transaction(|tx| {
            let p = tx.alloc::<Two>(std::array::from_fn(|i| i as u64))?;
            let q = tx.alloc::<Four>(std::array::from_fn(|i| 100 + i as u64))?;
            tx.get_mut(root)?.a = p.offset();
            tx.get_mut(root)?.b = q.offset();
            Ok::<_, TxError>((p, q))
        })
        .unwrap();
    pool.transaction(|tx| {
        *tx.get_mut(p.index(1))? = 1000; // shadows line 0 only
        let mut want: Two = std::array::from_fn(|i| i as u64);
        want[1] = 1000;
        assert_eq!(
            *tx.get(p)?,
            want,
            "a whole-object read merges the pending write"
        );
        // Two shadows with an unmodified line between them, read at once; and a reference
        // from before a later snapshot stays valid.
        *tx.get_mut(q.index(0))? = 7;
        *tx.get_mut(q.index(31))? = 8;
        let first = tx.get(p)?;
        let whole = tx.get(q)?;
        assert_eq!((whole[0], whole[8], whole[16], whole[31]), (7, 108, 116, 8));
        assert_eq!(first[1], 1000);
        // The parts can be read separately.
        assert_eq!(*tx.get(p.index(1))?, 1000);
        assert_eq!(*tx.get(p.index(9))?, 9);
        // A later write is seen by the next read (snapshots are per read).
        *tx.get_mut(p.index(9))? = 9000;
        assert_eq!(tx.get(p)?[9], 9000);
        Ok::<_, TxError>(())
    })
    .unwrap();
    let v = pool.read(|tx| Ok::<_, TxError>(*tx.get(p)?)).unwrap();
    assert_eq!((v[1], v[9], v[2]), (1000, 9000, 2));
}

// ---------------------------------------------------------------------------------------------
// Errors

#[test]
fn bad_pointers_are_refused() {
    let dir = shm_dir();
    let (_path, pool, root) = fresh(dir.path());
    let (a, _b) = two_objects(&pool, root);
    let g = pool.raw().geometry();
    let hg = *pool.heap().geometry();
    let size = pool.raw().size();
    let before = pool_bytes(&pool);
    pool.transaction(|tx| {
        // Null.
        assert!(matches!(tx.get(PPtr::<u64>::NULL), Err(TxError::Null)));
        assert!(matches!(tx.get_mut(PPtr::<Obj>::NULL), Err(TxError::Null)));
        assert!(matches!(tx.free(PPtr::<Obj>::NULL), Err(TxError::Null)));
        // Misaligned.
        let m = PPtr::<u64>::from_offset(a.offset() + 4);
        assert!(
            matches!(tx.get(m), Err(TxError::Misaligned { offset, align: 8 }) if offset == a.offset() + 4)
        );
        assert!(matches!(tx.get_mut(m), Err(TxError::Misaligned { .. })));
        let m32 = PPtr::<u32>::from_offset(a.offset() + 2);
        assert!(matches!(tx.get(m32), Err(TxError::Misaligned { align: 4, .. })));
        // Outside the heap's object region.
        let outside: Vec<(&str, u64)> = vec![
            ("header", 64),
            ("header end", 4096 - 8),
            ("root entry", g.root_offset),
            ("lane 0 header", g.lanes_offset),
            ("last lane", g.lane_offset(g.lane_count - 1) + 64),
            ("chunk header 0", hg.heap_offset),
            ("bitmap 0", hg.bitmap_offset(0)),
            ("last metadata word", hg.chunk_offset(0) - 8),
            ("data end", hg.data_end()),
            ("pool end - 8", size - 8),
            ("pool end", size),
            ("far", 1 << 40),
            ("wraps", u64::MAX - 7),
        ];
        for (what, off) in outside {
            let p = PPtr::<u64>::from_offset(off);
            let e = tx.get(p);
            assert!(
                hg.data_end() <= off || off < hg.chunk_offset(0),
                "{what}: test bug, {off:#x} is in the object region"
            );
            assert!(
                matches!(e, Err(TxError::InvalidPointer { offset, len: 8 }) if offset == off),
                "{what} ({off:#x}): get gave {e:?}"
            );
            let e = tx.get_mut(p).map(|v| *v);
            assert!(
                matches!(e, Err(TxError::InvalidPointer { offset, len: 8 }) if offset == off),
                "{what} ({off:#x}): get_mut gave {e:?}"
            );
            let e = tx.free(p);
            assert!(
                matches!(e, Err(TxError::Alloc(AllocError::InvalidFree { offset })) if offset == off),
                "{what} ({off:#x}): free gave {e:?}"
            );
        }
        // An object that starts inside the region and runs past its end.
        let straddle = PPtr::<[u64; 2]>::from_offset(hg.data_end() - 8);
        assert!(matches!(tx.get(straddle), Err(TxError::InvalidPointer { len: 16, .. })));
        let big = PPtr::<[u64; 4]>::from_offset(hg.chunk_offset(0) - 16);
        assert!(matches!(tx.get_mut(big), Err(TxError::InvalidPointer { len: 32, .. })));
        // A zero-sized type is never a valid object.
        assert!(matches!(tx.get(a.cast::<()>()), Err(TxError::InvalidPointer { len: 0, .. })));
        Ok::<_, TxError>(())
    })
    .unwrap();
    let after = pool_bytes(&pool);
    assert!(before == after, "{}", first_difference(&before, &after));
}

#[test]
fn use_after_free_and_double_free_in_one_transaction() {
    let dir = shm_dir();
    let (_path, pool, root) = fresh(dir.path());
    let (a, b) = two_objects(&pool, root);
    let alloc_before = allocated_bytes(&pool);
    pool.transaction(|tx| {
        let _ = tx.get(b)?;
        tx.free(b)?;
        assert!(matches!(tx.get(b), Err(TxError::UseAfterFree { offset }) if offset == b.offset()));
        assert!(matches!(
            tx.get(pfield!(b, Obj, y)),
            Err(TxError::UseAfterFree { .. })
        ));
        assert!(matches!(tx.get_mut(b), Err(TxError::UseAfterFree { .. })));
        assert!(matches!(tx.free(b), Err(TxError::DoubleFree { offset }) if offset == b.offset()));
        // A block allocated and freed in the same transaction.
        let c = tx.alloc(obj(9))?;
        tx.free(c)?;
        assert!(matches!(tx.get(c), Err(TxError::UseAfterFree { .. })));
        assert!(matches!(
            tx.get_mut(pfield!(c, Obj, x)),
            Err(TxError::UseAfterFree { .. })
        ));
        assert!(matches!(tx.free(c), Err(TxError::DoubleFree { .. })));
        // Not the start of a block.
        let inner = PPtr::<Obj>::from_offset(a.offset() + 16);
        assert!(matches!(
            tx.free(inner),
            Err(TxError::Alloc(AllocError::InvalidFree { offset })) if offset == a.offset() + 16
        ));
        // A block of a chunk that holds nothing.
        let hg = *pool.heap().geometry();
        let empty = PPtr::<Obj>::from_offset(hg.chunk_offset(hg.chunks - 1));
        assert!(matches!(
            tx.free(empty),
            Err(TxError::Alloc(AllocError::InvalidFree { .. }))
        ));
        tx.get_mut(root)?.slots[0] = PPtr::NULL;
        Ok::<_, TxError>(())
    })
    .unwrap();
    let info = pool.last_commit();
    assert_eq!((info.allocs, info.frees), (0, 1), "{info:?}");
    assert_eq!(
        allocated_bytes(&pool),
        alloc_before - 64,
        "B freed, C never published"
    );
    check_reachable(&pool, &[root.offset(), a.offset()]).unwrap();
}

#[test]
fn freeing_an_already_freed_block_in_a_later_transaction_fails_and_changes_nothing() {
    let dir = shm_dir();
    let (_path, pool, root) = fresh(dir.path());
    // Case 1: the run still holds other blocks (A stays). Case 2: the freed block emptied its
    // run (a block of another class, alone in its run).
    let (a, b) = two_objects(&pool, root);
    let lone = pool
        .transaction(|tx| {
            let n = tx.alloc(Node {
                value: 1,
                next: PPtr::NULL,
            })?;
            tx.get_mut(root)?.head = n;
            Ok::<_, TxError>(n)
        })
        .unwrap();
    pool.transaction(|tx| {
        tx.free(b)?;
        tx.free(lone)?;
        let r = tx.get_mut(root)?;
        r.slots[0] = PPtr::NULL;
        r.head = PPtr::NULL;
        Ok::<_, TxError>(())
    })
    .unwrap();
    for (what, p) in [
        ("block of a live run", b.offset()),
        ("block of a released run", lone.offset()),
    ] {
        let before = pool_bytes(&pool);
        let alloc_before = allocated_bytes(&pool);
        let r = pool.transaction(|tx| {
            tx.get_mut(root)?.a = 999;
            tx.free(PPtr::<Obj>::from_offset(p))?;
            Ok::<_, TxError>(())
        });
        assert!(
            matches!(
                r,
                Err(TxError::Alloc(AllocError::InvalidFree { offset } | AllocError::DoubleFree { offset }))
                    if offset == p
            ),
            "{what}: {r:?}"
        );
        let after = pool_bytes(&pool);
        assert!(
            before == after,
            "{what}: {}",
            first_difference(&before, &after)
        );
        assert_eq!(allocated_bytes(&pool), alloc_before);
    }
    check_reachable(&pool, &[root.offset(), a.offset()]).unwrap();
}

#[test]
fn a_read_only_pool_refuses_writes() {
    let dir = shm_dir();
    let (path, pool, root) = fresh(dir.path());
    let (a, _b) = two_objects(&pool, root);
    drop(pool);
    let file_before = std::fs::read(&path).unwrap();
    let pool = Pool::open(
        &path,
        &OpenOptions::new(L).mode(ModeRequest::Flush).read_only(true),
    )
    .unwrap();
    assert_eq!(pool.root::<Root>().unwrap(), root);
    let runs = AtomicU32::new(0);
    pool.transaction(|tx| {
        runs.fetch_add(1, Ordering::Relaxed);
        assert_eq!(tx.get(a)?.x, 1, "reads work");
        assert!(matches!(tx.get_mut(a), Err(TxError::ReadOnly)));
        assert!(matches!(tx.get_mut(root), Err(TxError::ReadOnly)));
        assert!(matches!(tx.alloc(obj(3)), Err(TxError::ReadOnly)));
        assert!(matches!(tx.alloc_zeroed::<u64>(), Err(TxError::ReadOnly)));
        assert!(matches!(tx.free(a), Err(TxError::ReadOnly)));
        Ok::<_, TxError>(())
    })
    .unwrap();
    assert_eq!(runs.load(Ordering::Relaxed), 1);
    let r = pool.transaction(|tx| {
        tx.get_mut(a)?.x = 2;
        Ok::<_, TxError>(())
    });
    assert!(matches!(r, Err(TxError::ReadOnly)), "{r:?}");
    assert_eq!(read_obj(&pool, a), obj(1));
    assert_eq!(pool.counters().drains, 0);
    drop(pool);
    assert!(
        std::fs::read(&path).unwrap() == file_before,
        "the file is unchanged"
    );
}

// ---------------------------------------------------------------------------------------------
// Root

#[test]
fn the_root_is_zeroed_stable_and_typed_by_size() {
    let dir = shm_dir();
    let (path, pool) = create_in(dir.path(), "root.pool", L, SIZE, ModeRequest::Flush);
    let root = pool.root::<Root>().unwrap();
    assert_eq!(read_root(&pool, root), Root::zeroed());
    assert_eq!(
        pool.root::<Root>().unwrap(),
        root,
        "same pointer on the second call"
    );
    assert_eq!(
        root.offset() % 64,
        0,
        "a 128-byte root is cache-line aligned"
    );
    pool.transaction(|tx| {
        tx.get_mut(root)?.a = 42;
        Ok::<_, TxError>(())
    })
    .unwrap();
    let e = pool.root::<[u64; 3]>();
    assert!(
        matches!(e, Err(TxError::RootMismatch { stored, requested: 24 }) if stored == size_of::<Root>() as u64),
        "{e:?}"
    );
    // Same size, another type: the same object (the check is by size only).
    let same = pool.root::<[u64; 16]>().unwrap();
    assert_eq!(same.offset(), root.offset());
    check_reachable(&pool, &[root.offset()]).unwrap();
    drop(pool);
    let pool = reopen(&path, L, ModeRequest::Flush);
    assert_eq!(
        pool.root::<Root>().unwrap(),
        root,
        "same pointer after reopen"
    );
    assert_eq!(read_root(&pool, root).a, 42);
    assert!(matches!(
        pool.root::<u64>(),
        Err(TxError::RootMismatch { requested: 8, .. })
    ));
    check_reachable(&pool, &[root.offset()]).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Out of space

type Block = [u64; 1024]; // 8 KiB; word 0 links the next block

fn chain_len(pool: &Pool, root: PPtr<Root>) -> Vec<u64> {
    pool.read(|tx| {
        let mut out = Vec::new();
        let mut p = PPtr::<Block>::from_offset(tx.get(root)?.a);
        while !p.is_null() {
            out.push(p.offset());
            p = PPtr::from_offset(tx.get(p)?[0]);
        }
        Ok::<_, TxError>(out)
    })
    .unwrap()
}

/// Pushes up to `n` blocks on the chain in one transaction.
fn push_blocks(pool: &Pool, root: PPtr<Root>, n: usize) -> Result<(), TxError> {
    pool.transaction(|tx| {
        for _ in 0..n {
            let head = tx.get(root)?.a;
            let mut v: Block = [0; 1024];
            v[0] = head;
            v[1] = 0xB10C;
            let p = tx.alloc(v)?;
            tx.get_mut(root)?.a = p.offset();
        }
        Ok(())
    })
}

#[test]
fn out_of_space_changes_nothing_and_frees_make_room() {
    let dir = shm_dir();
    let (_path, pool, root) = fresh(dir.path());
    let mut txs = 0;
    let err = loop {
        match push_blocks(&pool, root, 16) {
            Ok(()) => txs += 1,
            Err(e) => break e,
        }
        assert!(txs < 10_000, "never ran out of space");
    };
    // The failing reservation is a block (8192 bytes) or, when the transaction's log needs an
    // extension in the heap, that extension.
    assert!(
        matches!(err, TxError::Alloc(AllocError::OutOfSpace { .. })),
        "{err}"
    );
    println!("first failure: {err}");
    // The failing transaction changed nothing; a smaller one may still fit, so fill up one by
    // one, then check again that a failing transaction changes nothing.
    while push_blocks(&pool, root, 1).is_ok() {}
    let full = chain_len(&pool, root);
    let before = pool_bytes(&pool);
    let alloc_before = allocated_bytes(&pool);
    let e = push_blocks(&pool, root, 3).unwrap_err();
    assert!(
        matches!(e, TxError::Alloc(AllocError::OutOfSpace { .. })),
        "{e}"
    );
    let after = pool_bytes(&pool);
    assert!(before == after, "{}", first_difference(&before, &after));
    assert_eq!(allocated_bytes(&pool), alloc_before);
    let heap_bytes = pool.heap().geometry().chunks as u64 * 256 * 1024;
    println!(
        "out of space after {} blocks of 8 KiB ({txs} transactions of 16); heap of {} chunks = {} KiB",
        full.len(),
        pool.heap().geometry().chunks,
        heap_bytes >> 10
    );
    assert!(
        full.len() as u64 * 8192 > heap_bytes * 9 / 10,
        "most of the heap was usable"
    );
    let mut reach = full.clone();
    reach.push(root.offset());
    check_reachable(&pool, &reach).unwrap();
    // Frees still work: pop half of the chain, 16 per transaction.
    let half = full.len() / 2;
    let mut popped = 0;
    while popped < half {
        let k = (half - popped).min(16);
        pool.transaction(|tx| {
            for _ in 0..k {
                let p = PPtr::<Block>::from_offset(tx.get(root)?.a);
                let next = tx.get(p)?[0];
                tx.free(p)?;
                tx.get_mut(root)?.a = next;
            }
            Ok::<_, TxError>(())
        })
        .unwrap();
        popped += k;
    }
    assert_eq!(chain_len(&pool, root).len(), full.len() - half);
    assert_eq!(allocated_bytes(&pool), alloc_before - 8192 * half as u64);
    // The space is reusable: as many blocks fit again.
    for _ in 0..half {
        push_blocks(&pool, root, 1).unwrap();
    }
    let again = chain_len(&pool, root);
    assert_eq!(again.len(), full.len());
    assert!(matches!(
        push_blocks(&pool, root, 1),
        Err(TxError::Alloc(AllocError::OutOfSpace { .. }))
    ));
    let mut reach = again;
    reach.push(root.offset());
    check_reachable(&pool, &reach).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Cost

/// Drains of a small commit (with word entries or not) under the pool's deferral policy: 1 if
/// it defers, else 2 (`REDO.md` §4).
fn commit_drains(pool: &Pool, words: bool) -> u64 {
    let policy = pool.heap().redo_logs().defer_policy();
    if policy.defers(usize::from(words)) {
        1
    } else {
        2
    }
}

/// A pool with the root and one warm-up commit (so this thread's lane has committed once and
/// no other lane's invalidation is pending).
fn warm(dir: &Path, mode: ModeRequest) -> (Pool, PPtr<Root>) {
    let (_, pool) = create_in(dir, "cost.pool", L, SIZE, mode);
    let root = pool.root::<Root>().unwrap();
    pool.transaction(|tx| {
        tx.get_mut(root)?.b = 1;
        Ok::<_, TxError>(())
    })
    .unwrap();
    (pool, root)
}

#[test]
fn commit_costs_in_forced_flush_mode() {
    let dir = shm_dir();
    let (pool, root) = warm(dir.path(), ModeRequest::Flush);
    let (a, b) = two_objects(&pool, root);

    // One u64: 2 drains (cache flushes: a range-only commit makes its values durable itself,
    // REDO.md §4; unless PMSTORE_DEFER_APPLY=1); lines written back (flushed, or written with non-temporal stores) = the log's
    // lines + the data line. The range is the changed word (8 bytes: 3 lines in all, header +
    // one body line + data) or, since c9f0dce, its whole line (64 bytes: 4 lines, the body
    // being 16 + 64 bytes).
    pool.transaction(|tx| {
        *tx.get_mut(pfield!(a, Obj, y))? = 4241;
        Ok::<_, TxError>(())
    })
    .unwrap();
    let c0 = pool.counters();
    pool.transaction(|tx| {
        *tx.get_mut(pfield!(a, Obj, y))? = 4242;
        Ok::<_, TxError>(())
    })
    .unwrap();
    let d = pool.counters() - c0;
    let info = pool.last_commit();
    assert_eq!(d.drains, commit_drains(&pool, false), "{d:?}");
    assert_eq!(
        (info.ranges, info.allocs, info.frees, info.logged),
        (1, 0, 0, true)
    );
    assert!(info.range_bytes == 8 || info.range_bytes == 64, "{info:?}");
    assert_eq!(
        written_lines(d),
        log_lines(info.range_bytes) + 1,
        "{d:?} {info:?}"
    );
    assert!(written_lines(d) <= 4, "{d:?}");
    println!("one u64: {info:?}, {d:?}: {} lines", written_lines(d));
    let one = (info, written_lines(d));
    // The same through a whole-object get_mut that changes one field: only the field (or its
    // line) is logged, exactly as above.
    let c0 = pool.counters();
    pool.transaction(|tx| {
        tx.get_mut(a)?.data[5] = 1;
        Ok::<_, TxError>(())
    })
    .unwrap();
    let d = pool.counters() - c0;
    assert_eq!(d.drains, commit_drains(&pool, false), "{d:?}");
    assert_eq!((pool.last_commit(), written_lines(d)), one);

    // Nothing changed: no drain, nothing flushed, no log.
    let c0 = pool.counters();
    pool.transaction(|tx| {
        let _ = tx.get_mut(a)?; // shadowed, not modified
        let v = tx.get_mut(b)?;
        v.x += 1;
        v.x -= 1; // modified back
        let _ = tx.get(root)?;
        Ok::<_, TxError>(())
    })
    .unwrap();
    pool.transaction(|tx| Ok::<_, TxError>(tx.get(a)?.x))
        .unwrap();
    pool.read(|tx| Ok::<_, TxError>(tx.get(b)?.x)).unwrap();
    assert_eq!(
        pool.counters() - c0,
        Default::default(),
        "a no-op transaction costs nothing"
    );
    assert_eq!(pool.last_commit(), CommitInfo::default(), "no log written");

    // Alloc + link: 2 drains, or 1 where commits with words defer (the default with cache
    // flushes, REDO.md §4).
    let c0 = pool.counters();
    let n = pool
        .transaction(|tx| {
            let n = tx.alloc(Node {
                value: 5,
                next: PPtr::NULL,
            })?;
            tx.get_mut(root)?.head = n;
            Ok::<_, TxError>(n)
        })
        .unwrap();
    assert_eq!((pool.counters() - c0).drains, commit_drains(&pool, true));
    let info = pool.last_commit();
    // The root's head word and the new node (whole) are logged, possibly widened to their
    // lines (new blocks written directly, not logged, lost their contents in crash images:
    // see tx_crash.rs).
    assert_eq!(
        (info.allocs, info.frees, info.logged),
        (1, 0, true),
        "{info:?}"
    );
    assert!(
        (8 + 16..=64 + 64).contains(&info.range_bytes) && (1..=2).contains(&info.ranges),
        "{info:?}"
    );

    // 8 ranges of 512 B in 8 objects + 1 alloc + 1 free: still 2 drains.
    let bigs: Vec<PPtr<Big>> = pool
        .transaction(|tx| {
            let mut v = Vec::new();
            for i in 0..8 {
                let p = tx.alloc_zeroed::<Big>()?;
                tx.get_mut(root)?.bigs[i] = p;
                v.push(p);
            }
            Ok::<_, TxError>(v)
        })
        .unwrap();
    let victim = b; // slots[0]
    let c0 = pool.counters();
    let m = pool
        .transaction(|tx| {
            for (i, &p) in bigs.iter().enumerate() {
                let v = tx.get_mut(p)?;
                for (k, w) in v.iter_mut().enumerate() {
                    *w = 0xA000 + (i * 64 + k) as u64;
                }
            }
            // A fresh 16-byte block (all zero): `value` and `next` differ, one 16-byte range.
            let m = tx.alloc(Node { value: 6, next: n })?;
            tx.free(victim)?;
            let r = tx.get_mut(root)?;
            r.head = m; // root word 3
            r.slots[0] = PPtr::NULL; // root word 4: merged with the word before
            Ok::<_, TxError>(m)
        })
        .unwrap();
    let d = pool.counters() - c0;
    assert_eq!(d.drains, 2, "{d:?}");
    let info = pool.last_commit();
    // 8 ranges of 512 B + the root's two adjacent words + the new node (16 bytes), the latter
    // two possibly widened to their lines.
    assert_eq!(
        (info.allocs, info.frees, info.logged),
        (1, 1, true),
        "{info:?}"
    );
    assert!(
        (4096 + 16 + 16..=4096 + 64 + 64).contains(&info.range_bytes),
        "{info:?}"
    );
    assert!((9..=10).contains(&info.ranges), "{info:?}");
    println!("8 x 512 B + alloc + free: {info:?}, {d:?}");
    // Everything landed.
    pool.read(|tx| {
        for (i, &p) in bigs.iter().enumerate() {
            let v = tx.get(p)?;
            assert!(v
                .iter()
                .enumerate()
                .all(|(k, &w)| w == 0xA000 + (i * 64 + k) as u64));
        }
        assert_eq!(*tx.get(m)?, Node { value: 6, next: n });
        Ok::<_, TxError>(())
    })
    .unwrap();
    let mut reach: Vec<u64> = bigs.iter().map(|p| p.offset()).collect();
    reach.extend([root.offset(), a.offset(), m.offset()]);
    reach.push(n.offset());
    check_reachable(&pool, &reach).unwrap();
}

#[test]
fn commit_costs_in_msync_mode() {
    let dir = disk_dir();
    let (pool, root) = warm(dir.path(), ModeRequest::Msync);
    assert_eq!(pool.persistence(), pmstore_tx::PersistMode::Msync);
    let (a, _b) = two_objects(&pool, root);
    let c0 = pool.counters();
    pool.transaction(|tx| {
        tx.get_mut(a)?.y = 31337;
        Ok::<_, TxError>(())
    })
    .unwrap();
    let d = pool.counters() - c0;
    // Msync mode defers: one drain, one msync of the log's and the previous commit's pages
    // (unless PMSTORE_DEFER_APPLY=0 or =words: two, each one msync).
    let drains = commit_drains(&pool, false);
    assert_eq!(d.drains, drains, "{d:?}");
    assert_eq!(d.msync_calls, drains, "{d:?}");
    println!("msync mode, one u64: {d:?}");
    let c0 = pool.counters();
    pool.transaction(|tx| Ok::<_, TxError>(tx.get_mut(a)?.y))
        .unwrap();
    assert_eq!(pool.counters() - c0, Default::default());
}

// ---------------------------------------------------------------------------------------------
// Large transactions

fn pattern(i: usize, salt: u64) -> u64 {
    (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt
}

#[test]
fn a_12_kib_transaction_fits_a_lane() {
    type T12 = [u64; 1536];
    let dir = shm_dir();
    let (path, pool, root) = fresh(dir.path());
    let p = pool
        .transaction(|tx| {
            let p = tx.alloc_zeroed::<T12>()?;
            tx.get_mut(root)?.a = p.offset();
            Ok::<_, TxError>(p)
        })
        .unwrap();
    let c0 = pool.counters();
    pool.transaction(|tx| {
        let v = tx.get_mut(p)?;
        for (i, w) in v.iter_mut().enumerate() {
            *w = pattern(i, 12);
        }
        Ok::<_, TxError>(())
    })
    .unwrap();
    assert_eq!((pool.counters() - c0).drains, 2);
    assert_eq!(summary(pool.last_commit()), (1, 12 << 10, 0, 0, true));
    drop(pool);
    let pool = reopen(&path, L, ModeRequest::Flush);
    pool.read(|tx| {
        let v = tx.get(p)?;
        for (i, &w) in v.iter().enumerate() {
            assert_eq!(w, pattern(i, 12), "word {i}");
        }
        Ok::<_, TxError>(())
    })
    .unwrap();
}

#[test]
fn a_64_kib_transaction_is_complete_or_too_large() {
    type T64 = [u64; 8192];
    let dir = shm_dir();
    let (path, pool, root) = fresh(dir.path());
    let p = pool
        .transaction(|tx| {
            let p = tx.alloc_zeroed::<T64>()?;
            tx.get_mut(root)?.a = p.offset();
            Ok::<_, TxError>(p)
        })
        .unwrap();
    let before = pool_bytes(&pool);
    let r = pool.transaction(|tx| {
        let v = tx.get_mut(p)?;
        for (i, w) in v.iter_mut().enumerate() {
            *w = pattern(i, 64);
        }
        tx.get_mut(root)?.b = 64;
        Ok::<_, TxError>(())
    });
    match r {
        Ok(()) => {
            println!("64 KiB transaction: committed ({:?})", pool.last_commit());
            drop(pool);
            let pool = reopen(&path, L, ModeRequest::Flush);
            pool.read(|tx| {
                let v = tx.get(p)?;
                assert!(v.iter().enumerate().all(|(i, &w)| w == pattern(i, 64)));
                assert_eq!(tx.get(root)?.b, 64);
                Ok::<_, TxError>(())
            })
            .unwrap();
        }
        Err(TxError::TooLarge { needed }) => {
            println!("64 KiB transaction: TooLarge (log needs {needed} bytes)");
            assert!(needed > 64 << 10, "{needed}");
            let after = pool_bytes(&pool);
            assert!(before == after, "{}", first_difference(&before, &after));
            // Nothing is held: the next transaction works.
            pool.transaction(|tx| {
                tx.get_mut(p)?[0] = 1;
                Ok::<_, TxError>(())
            })
            .unwrap();
        }
        Err(e) => panic!("64 KiB transaction: unexpected {e}"),
    }
}

/// A new block's shadow: whole lines of a block of 64 bytes or more start zeroed (not copied
/// from the block's old contents); a block of a small class shares its lines with other
/// blocks, whose bytes stay as they are. Both survive reopening.
#[test]
fn new_blocks_start_from_zeroed_lines_and_keep_their_neighbours() {
    let dir = shm_dir();
    let (path, pool, _root) = fresh(dir.path());
    // A 128-byte block filled with 0xFF, freed, then taken again by a 72-byte object.
    let old = pool.transaction(|tx| tx.alloc([0xFFu8; 128])).unwrap();
    let keep = pool.transaction(|tx| tx.alloc([0xAAu8; 128])).unwrap();
    pool.transaction(|tx| tx.free(old)).unwrap();
    // (Taken again by one of the next allocations of its class.)
    let new = (0..64)
        .map(|_| pool.transaction(|tx| tx.alloc([7u8; 72])).unwrap())
        .find(|p| p.offset() == old.offset())
        .expect("the freed block is reused");
    let whole = PPtr::<[u8; 128]>::from_offset(new.offset());
    let mut expect = [0u8; 128];
    expect[..72].fill(7);
    assert_eq!(pool.read(|tx| tx.get(whole).copied()).unwrap(), expect);
    // Small blocks: neighbours in one line, each allocated by its own transaction.
    let small: Vec<PPtr<[u8; 16]>> = (0..8u8)
        .map(|i| pool.transaction(|tx| tx.alloc([i + 1; 16])).unwrap())
        .collect();
    for (i, p) in small.iter().enumerate() {
        assert_eq!(
            pool.read(|tx| tx.get(*p).copied()).unwrap(),
            [i as u8 + 1; 16]
        );
    }
    assert_eq!(pool.read(|tx| tx.get(keep).copied()).unwrap(), [0xAA; 128]);
    drop(pool);
    let pool = reopen(&path, L, ModeRequest::Flush);
    assert_eq!(pool.read(|tx| tx.get(whole).copied()).unwrap(), expect);
    for (i, p) in small.iter().enumerate() {
        assert_eq!(
            pool.read(|tx| tx.get(*p).copied()).unwrap(),
            [i as u8 + 1; 16]
        );
    }
}
