//! Transactions on a real DAX file system: the pool is mapped with `MAP_SYNC`, commits cost
//! two drains and no `msync`, committed transactions survive a reopen and a killed process,
//! and the same code falls back to msync mode on tmpfs in the same machine.
//!
//! These tests run only where `PMSTORE_TEST_DAX_DIR` names a directory on a file system
//! mounted with `-o dax` (`scripts/dax-vm.sh` boots a QEMU guest with an emulated NVDIMM set up
//! that way and sets it; CI runs this file there). Elsewhere each test says
//! "skipped: not on a DAX mount" and passes.

use std::path::PathBuf;

use pmstore_tx::{CreateOptions, ModeRequest, OpenOptions, PPtr, PersistMode, Pool};
use pmstore_tx::{Result, TxError};

const LAYOUT: &str = "tx-dax";

fn dax_dir() -> Option<PathBuf> {
    let Some(dir) = std::env::var_os("PMSTORE_TEST_DAX_DIR") else {
        eprintln!("skipped: not on a DAX mount");
        return None;
    };
    assert!(
        std::env::var_os(ModeRequest::ENV).is_none(),
        "PMSTORE_TEST_DAX_DIR is set: unset {} for the DAX tests",
        ModeRequest::ENV
    );
    Some(PathBuf::from(dir))
}

/// Root: a counter and a linked list of nodes, each holding the counter value it was made with.
type Root = [u64; 2]; // [counter, head offset]
type Node = [u64; 8]; // [value, next offset, payload...]

/// One transaction: increment the counter, push a node holding the new value.
fn step(pool: &Pool, root: PPtr<Root>) -> Result<u64> {
    pool.transaction(|tx| {
        let [count, head] = *tx.get(root)?;
        let mut node = [0u64; 8];
        node[0] = count + 1;
        node[1] = head;
        node[2..].fill(!(count + 1));
        let n = tx.alloc(node)?;
        *tx.get_mut(root)? = [count + 1, n.offset()];
        Ok::<_, TxError>(count + 1)
    })
}

/// Checks the list matches the counter: values count, count-1, ..., 1.
fn check(pool: &Pool, root: PPtr<Root>) -> Result<u64> {
    pool.read(|tx| {
        let [count, mut head] = *tx.get(root)?;
        let mut expect = count;
        while head != 0 {
            let n = *tx.get(PPtr::<Node>::from_offset(head))?;
            assert_eq!(n[0], expect, "list value");
            assert!(n[2..].iter().all(|&x| x == !expect), "node payload");
            expect -= 1;
            head = n[1];
        }
        assert_eq!(expect, 0, "list shorter than the counter");
        Ok::<_, TxError>(count)
    })
}

#[test]
fn transactions_on_dax_use_map_sync_and_no_msync() {
    let Some(dir) = dax_dir() else { return };
    let d = tempfile::tempdir_in(&dir).unwrap();
    let path = d.path().join("tx.pool");
    let pool = Pool::create(&path, &CreateOptions::new(LAYOUT, 16 << 20)).unwrap();
    assert_eq!(pool.persistence(), PersistMode::MapSync);
    let root = pool.root::<Root>().unwrap();
    let before = pool.counters();
    for _ in 0..200 {
        step(&pool, root).unwrap();
    }
    let d8 = pool.counters() - before;
    assert_eq!(d8.msync_calls, 0, "no msync on DAX");
    // Cache flushes: a transaction that allocates carries allocator words, so its commit
    // leaves its values to the lane's next commit (deferral policy Words, REDO.md §4, §8): one
    // drain; two if deferral is forced off, as the commits of update-only transactions are.
    let defers = pool.heap().redo_logs().defer_policy().defers(1);
    let per_tx = if defers { 1 } else { 2 };
    assert_eq!(d8.drains, 200 * per_tx, "drains per allocating transaction");
    // A transaction that changes nothing costs nothing.
    let before = pool.counters();
    pool.transaction(|tx| {
        *tx.get_mut(root.cast::<u64>())? += 0; // no change: nothing logged, no drain
        Ok::<_, TxError>(())
    })
    .unwrap();
    assert_eq!((pool.counters() - before).drains, 0);
    assert_eq!(check(&pool, root).unwrap(), 200);
    drop(pool);
    let pool = Pool::open(&path, &OpenOptions::new(LAYOUT)).unwrap();
    assert_eq!(pool.persistence(), PersistMode::MapSync);
    assert_eq!(check(&pool, root).unwrap(), 200);
}

#[test]
fn the_same_code_on_tmpfs_falls_back_to_msync() {
    if dax_dir().is_none() {
        return;
    }
    let d = tempfile::tempdir_in("/dev/shm").unwrap();
    let path = d.path().join("tx.pool");
    let pool = Pool::create(&path, &CreateOptions::new(LAYOUT, 16 << 20)).unwrap();
    assert_eq!(pool.persistence(), PersistMode::Msync);
    let root = pool.root::<Root>().unwrap();
    let before = pool.counters();
    step(&pool, root).unwrap();
    let d = pool.counters() - before;
    // One drain; it msyncs the log's page and the previous transaction's pages, in one call
    // when they are less than 1 MiB apart.
    assert_eq!(d.drains, 1, "{d:?}");
    assert!((1..=2).contains(&d.msync_calls), "{d:?}");
}

/// The child role of `killed_transactions_recover_on_dax`: runs transactions forever,
/// printing each committed counter value.
#[test]
fn dax_kill_child() {
    let Ok(path) = std::env::var("PMSTORE_TX_DAX_CHILD") else {
        return;
    };
    use std::io::Write;
    let pool = Pool::open(&path, &OpenOptions::new(LAYOUT)).unwrap();
    let root = pool.root::<Root>().unwrap();
    let mut out = std::io::stdout().lock();
    loop {
        let v = step(&pool, root).unwrap();
        writeln!(out, "{v}").unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn killed_transactions_recover_on_dax() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let Some(dir) = dax_dir() else { return };
    let d = tempfile::tempdir_in(&dir).unwrap();
    let path = d.path().join("kill.pool");
    drop(Pool::create(&path, &CreateOptions::new(LAYOUT, 16 << 20)).unwrap());
    let exe = std::env::current_exe().unwrap();
    let mut last = 0u64;
    for round in 0..5u64 {
        let start = last;
        let mut child = Command::new(&exe)
            .args([
                "dax_kill_child",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("PMSTORE_TX_DAX_CHILD", &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // Let it commit a number of transactions that varies by round, then kill it.
        let target = start + 3 + round * 7;
        for line in lines.by_ref() {
            if let Ok(v) = line.unwrap().trim().parse::<u64>() {
                last = v;
                if v >= target {
                    break;
                }
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        // Whatever it printed after our last read is also committed: drain the pipe.
        for line in lines {
            if let Ok(v) = line.unwrap().trim().parse::<u64>() {
                last = v;
            }
        }
        let pool = Pool::open(&path, &OpenOptions::new(LAYOUT)).unwrap();
        let root = pool.root::<Root>().unwrap();
        let count = check(&pool, root).unwrap();
        assert!(
            count == last || count == last + 1,
            "round {round}: counter {count}, last reported commit {last}"
        );
        last = count;
        let mut live = 0;
        pool.heap()
            .for_each_allocated(pool.raw(), |_, _| live += 1)
            .unwrap();
        assert_eq!(live, count + 1, "nodes + root: no leak");
    }
}
