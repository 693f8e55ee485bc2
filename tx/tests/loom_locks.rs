//! Loom models of the transaction layer's volatile striped lock table
//! ([`pmstore_tx::locks`]): mutual exclusion of writers, readers against a writer, two
//! upgraders of one stripe, two transactions locking stripes in opposite orders (a deadlock
//! broken by the budget, with rollback), and the ordering published by a rolled-back upgrade. The
//! "pool bytes" are `loom::cell::UnsafeCell`s, so loom reports any access not ordered by the
//! locks as a data race. Every model retries a bounded number of times and checks at the end
//! that the table is entirely free again.
//!
//! `RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test -p pmstore-tx --test
//! loom_locks --release`
#![cfg(loom)]

use loom::cell::UnsafeCell;
use loom::sync::Arc;
use loom::thread;
use pmstore_tx::locks::{Budget, Conflict, LockSet, LockTable, Mode, STRIPE_SHIFT};

/// Bytes of one stripe.
const S: u64 = 1 << STRIPE_SHIFT;

/// Stripes of the modelled table.
const STRIPES: usize = 4;

/// A small budget keeps the state space small: at most 4 attempts per stripe.
const BUDGET: Budget = Budget {
    spins: 1,
    yields: 2,
};

/// Transaction attempts per thread (the first plus retries after `Conflict`) in the models
/// where a thread may retry.
const ATTEMPTS: u32 = 2;

/// The lock table and two "pool" cells: `cells[0]` lives in stripe 0, `cells[1]` in stripe 1.
struct Pool {
    table: LockTable,
    cells: [UnsafeCell<u32>; 2],
}

impl Pool {
    fn new() -> Arc<Pool> {
        Pool::with_budget(BUDGET)
    }

    fn with_budget(budget: Budget) -> Arc<Pool> {
        Arc::new(Pool {
            table: LockTable::with_budget(STRIPES, budget),
            cells: [UnsafeCell::new(0), UnsafeCell::new(0)],
        })
    }

    /// Reads cell `i`; the caller holds its stripe at least shared.
    fn read(&self, set: &LockSet, i: usize) -> u32 {
        assert!(set.holds(&self.table, i as u64 * S, 1, Mode::Shared));
        // SAFETY: the caller's lock set holds the cell's stripe (checked above), so no writer
        // holds it; loom checks the ordering with the previous writer.
        self.cells[i].with(|p| unsafe { *p })
    }

    /// Writes cell `i`; the caller holds its stripe exclusively.
    fn write(&self, set: &LockSet, i: usize, v: u32) {
        assert!(set.holds(&self.table, i as u64 * S, 1, Mode::Exclusive));
        // SAFETY: the caller's lock set holds the cell's stripe exclusively (checked above);
        // loom checks the ordering with every previous reader and writer.
        self.cells[i].with_mut(|p| unsafe { *p = v })
    }

    /// After every thread is joined: the cell values, and every stripe is free again (an
    /// exclusive lock of the whole table succeeds at once).
    fn finish(&self) -> [u32; 2] {
        let mut set = LockSet::new();
        set.lock_exclusive(&self.table, 0, STRIPES as u64 * S)
            .expect("a stripe is still locked after every thread finished");
        let values = [self.read(&set, 0), self.read(&set, 1)];
        set.release_all(&self.table);
        values
    }
}

/// Runs `tx` (one transaction attempt on the set; `Ok(true)` when it committed a write) up to
/// `attempts` times, releasing everything after each attempt, like the transaction layer.
/// Returns how many writes were committed (0 or 1).
fn run(
    pool: &Pool,
    attempts: u32,
    mut tx: impl FnMut(&Pool, &mut LockSet) -> Result<bool, Conflict>,
) -> u32 {
    let mut set = LockSet::new();
    for _ in 0..attempts {
        let result = tx(pool, &mut set);
        set.release_all(&pool.table);
        match result {
            Ok(wrote) => return u32::from(wrote),
            Err(Conflict) => thread::yield_now(),
        }
    }
    0
}

/// One transaction attempt: `Ok(true)` when it committed a write.
type Tx = fn(&Pool, &mut LockSet) -> Result<bool, Conflict>;

/// Spawns one thread per transaction (each making up to `attempts` attempts), joins them and
/// returns the committed write count.
fn spawn_all(pool: &Arc<Pool>, attempts: u32, txs: Vec<Tx>) -> u32 {
    let handles: Vec<_> = txs
        .into_iter()
        .map(|tx| {
            let pool = Arc::clone(pool);
            thread::spawn(move || run(&pool, attempts, tx))
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).sum()
}

/// Increments cell 1 under an exclusive lock of stripes 0 and 1.
fn inc_low(pool: &Pool, set: &mut LockSet) -> Result<bool, Conflict> {
    set.lock_exclusive(&pool.table, 0, 2 * S)?;
    let v = pool.read(set, 1);
    pool.write(set, 1, v + 1);
    Ok(true)
}

/// Increments cell 1 under an exclusive lock of stripes 1 and 2.
fn inc_high(pool: &Pool, set: &mut LockSet) -> Result<bool, Conflict> {
    set.lock_exclusive(&pool.table, S + 10, S)?;
    let v = pool.read(set, 1);
    pool.write(set, 1, v + 1);
    Ok(true)
}

/// (1) Two writers with overlapping ranges: never both inside, no lost update, and the first
/// to get in always commits.
#[test]
fn exclusive_writers() {
    loom::model(|| {
        let pool = Pool::new();
        let done = spawn_all(&pool, ATTEMPTS, vec![inc_low, inc_high]);
        assert!(done >= 1, "neither writer committed");
        assert_eq!(pool.finish(), [0, done]);
    });
}

/// Sets cells 0 and 1 to 1 under an exclusive lock.
fn write_both(pool: &Pool, set: &mut LockSet) -> Result<bool, Conflict> {
    set.lock_exclusive(&pool.table, 0, 2 * S)?;
    pool.write(set, 0, 1);
    pool.write(set, 1, 1);
    Ok(true)
}

/// Reads cells 0 and 1 under a shared lock: never a half-done write.
fn read_both(pool: &Pool, set: &mut LockSet) -> Result<bool, Conflict> {
    set.lock_shared(&pool.table, 10, 2 * S - 20)?;
    let (a, b) = (pool.read(set, 0), pool.read(set, 1));
    assert_eq!(a, b, "reader saw half of a write");
    Ok(false)
}

/// (2) One reader and one writer of the same two stripes.
#[test]
fn reader_and_writer() {
    loom::model(|| {
        let pool = Pool::new();
        let done = spawn_all(&pool, ATTEMPTS, vec![read_both, write_both]);
        assert_eq!(pool.finish(), [done, done]);
    });
}

/// Reads cell 0 under a shared lock, then upgrades and writes the value read plus one.
fn read_upgrade_inc(pool: &Pool, set: &mut LockSet) -> Result<bool, Conflict> {
    set.lock_shared(&pool.table, 0, 1)?;
    let v = pool.read(set, 0);
    set.lock_exclusive(&pool.table, 0, 1)?;
    pool.write(set, 0, v + 1);
    Ok(true)
}

/// (3) Two transactions that both read a stripe shared and then upgrade: they serialize or
/// give up (both may give up while each holds the other out), never race, never lose an
/// update, and always finish.
#[test]
fn two_upgraders() {
    loom::model(|| {
        let pool = Pool::new();
        let done = spawn_all(&pool, ATTEMPTS, vec![read_upgrade_inc, read_upgrade_inc]);
        assert_eq!(pool.finish(), [done, 0]);
    });
}

/// Locks stripe 2, then stripes 0 and 1 (two calls), writes cells 0 and 1.
fn forward(pool: &Pool, set: &mut LockSet) -> Result<bool, Conflict> {
    set.lock_exclusive(&pool.table, 2 * S, 1)?;
    set.lock_exclusive(&pool.table, 0, 2 * S)?;
    let (a, b) = (pool.read(set, 0), pool.read(set, 1));
    pool.write(set, 0, a + 1);
    pool.write(set, 1, b + 1);
    Ok(true)
}

/// Locks stripe 0 shared, then stripes 0, 1 and 2 exclusively in one call: an upgrade of 0, a
/// new lock of 1, then 2; a Conflict at 2 releases 1 and downgrades 0 back to shared. Writes
/// cells 0 and 1.
fn backward(pool: &Pool, set: &mut LockSet) -> Result<bool, Conflict> {
    set.lock_shared(&pool.table, 0, 1)?;
    let a = pool.read(set, 0);
    set.lock_exclusive(&pool.table, 0, 3 * S)?;
    let b = pool.read(set, 1);
    pool.write(set, 0, a + 1);
    pool.write(set, 1, b + 1);
    Ok(true)
}

/// (4) Two transactions taking two stripes in opposite orders (one of them upgrading): the
/// deadlock is broken by the budget, rolled-back calls (including a downgrade) leave the
/// table as before, and committed writes are never lost.
#[test]
fn opposite_orders() {
    loom::model(|| {
        let pool = Pool::new();
        let done = spawn_all(&pool, 1, vec![forward, backward]);
        assert_eq!(pool.finish(), [done, done]);
    });
}

/// Sets cell 0 to 1 under an exclusive lock of stripe 0.
fn write_first(pool: &Pool, set: &mut LockSet) -> Result<bool, Conflict> {
    set.lock_exclusive(&pool.table, 0, 1)?;
    pool.write(set, 0, 1);
    Ok(true)
}

/// Reads cell 0 under a shared lock of stripe 0.
fn read_first(pool: &Pool, set: &mut LockSet) -> Result<bool, Conflict> {
    set.lock_shared(&pool.table, 0, 1)?;
    let v = pool.read(set, 0);
    assert!(v <= 1);
    Ok(false)
}

/// (5) A rolled-back upgrade still publishes what it had acquired: the main thread holds
/// stripe 1 (in one set) for the whole model, so its other set's upgrade of stripe 0 in a call
/// that also covers stripe 1 always ends in Conflict and a downgrade; a reader whose lock
/// comes right after that downgrade must still see a writer's earlier write to cell 0 ordered
/// before its read.
#[test]
fn downgrade_publishes() {
    loom::model(|| {
        // One attempt per stripe: three threads spinning are expensive to model, and waiting
        // is not what this model is about.
        let pool = Pool::with_budget(Budget {
            spins: 0,
            yields: 0,
        });
        let mut blocker = LockSet::new();
        blocker.lock_exclusive(&pool.table, S, 1).unwrap();
        let handles: Vec<_> = [write_first as Tx, read_first]
            .into_iter()
            .map(|tx| {
                let pool = Arc::clone(&pool);
                thread::spawn(move || run(&pool, 1, tx))
            })
            .collect();
        let mut set = LockSet::new();
        if set.lock_shared(&pool.table, 0, 1).is_ok() {
            assert_eq!(set.lock_exclusive(&pool.table, 0, 2 * S), Err(Conflict));
            assert!(set.holds(&pool.table, 0, 1, Mode::Shared));
            assert!(!set.holds(&pool.table, 0, 1, Mode::Exclusive));
        }
        set.release_all(&pool.table);
        blocker.release_all(&pool.table);
        let done: u32 = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(pool.finish(), [done, 0]);
    });
}
