//! The README's transaction example, compiled and run (in a temporary directory), so the
//! README cannot drift from the API.

use bytemuck::{Pod, Zeroable};
use pmstore::{CreateOptions, OpenOptions, PPtr, Pool, TxError};

#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(C)]
struct Account {
    balance: u64,
    history: PPtr<Entry>,
}
#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(C)]
struct Entry {
    amount: u64,
    next: PPtr<Entry>,
}

#[test]
fn readme_example_runs() -> Result<(), TxError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bank.pool");
    let pool = Pool::create(&path, &CreateOptions::new("bank", 64 << 20))?;
    let acct: PPtr<Account> = pool.root()?;
    for _ in 0..2 {
        pool.transaction(|tx| {
            let a = *tx.get(acct)?;
            let e = tx.alloc(Entry {
                amount: 100,
                next: a.history,
            })?;
            let a = tx.get_mut(acct)?;
            a.balance += 100;
            a.history = e;
            Ok::<_, TxError>(())
        })?;
    }
    drop(pool);
    let pool = Pool::open(&path, &OpenOptions::new("bank"))?;
    let (balance, entries) = pool.read(|tx| {
        let a = tx.get(acct)?;
        let mut n = 0;
        let mut e = a.history;
        while !e.is_null() {
            n += 1;
            e = tx.get(e)?.next;
        }
        Ok::<_, TxError>((a.balance, n))
    })?;
    assert_eq!((balance, entries), (200, 2));
    Ok(())
}
