//! A pool is open read-write by at most one handle, in this process or any other.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::*;
use pmstore_pool::{Pool, PoolError};

#[test]
fn two_handles_in_one_process() {
    let (_d, path) = scratch();
    make_pool(&path);
    let first = open_rw(&path).unwrap();
    assert!(matches!(
        open_err(&path, &rw_opts()),
        PoolError::Locked { .. }
    ));
    // A reader is refused too while a writer holds the pool ...
    assert!(matches!(
        open_err(&path, &rw_opts().read_only(true)),
        PoolError::Locked { .. }
    ));
    // ... inspection is not, and says it is locked.
    assert!(Pool::inspect(&path, Some(LAYOUT)).unwrap().locked);
    drop(first);
    assert!(!Pool::inspect(&path, Some(LAYOUT)).unwrap().locked);
    // Readers share; a writer waits for all of them.
    let r1 = Pool::open(&path, &rw_opts().read_only(true)).unwrap();
    let r2 = Pool::open(&path, &rw_opts().read_only(true)).unwrap();
    assert!(matches!(
        open_err(&path, &rw_opts()),
        PoolError::Locked { .. }
    ));
    drop((r1, r2));
    open_rw(&path).unwrap();
}

#[test]
fn create_holds_the_lock_of_the_new_pool() {
    let (_d, path) = scratch();
    let pool = Pool::create(
        &path,
        &pmstore_pool::CreateOptions::new(LAYOUT, pmstore_pool::MIN_POOL_SIZE),
    )
    .unwrap();
    assert!(matches!(
        open_err(&path, &rw_opts()),
        PoolError::Locked { .. }
    ));
    drop(pool);
    open_rw(&path).unwrap();
}

#[test]
fn another_process() {
    let (_d, path) = scratch();
    make_pool(&path);
    let mut child = spawn_lock_holder(&path);
    assert!(matches!(
        open_err(&path, &rw_opts()),
        PoolError::Locked { .. }
    ));
    assert!(matches!(
        open_err(&path, &rw_opts().read_only(true)),
        PoolError::Locked { .. }
    ));
    // Closing the child's stdin lets it exit; its lock goes with it.
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    open_rw(&path).unwrap();
}

#[test]
fn lock_dies_with_a_killed_process() {
    let (_d, path) = scratch();
    make_pool(&path);
    let mut child = spawn_lock_holder(&path);
    child.kill().unwrap();
    child.wait().unwrap();
    open_rw(&path).unwrap();
}

/// Starts a child process that opens the pool read-write and holds it until its standard
/// input closes; returns once the child holds the lock.
fn spawn_lock_holder(path: &std::path::Path) -> std::process::Child {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "lock_holder_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("PMSTORE_LOCK_CHILD", path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // libtest prints "test lock_holder_child ... " on the same line, before the child's words.
    assert!(
        lines.any(|l| l.unwrap().contains("CHILD-LOCKED")),
        "the child did not lock the pool"
    );
    // Keep reading, so the child's last words do not hit a closed pipe.
    std::thread::spawn(move || lines.for_each(drop));
    child
}

/// Not a test on its own: the child half of the cross-process tests. Holds the pool open until
/// its standard input closes.
#[test]
fn lock_holder_child() {
    let Some(path) = std::env::var_os("PMSTORE_LOCK_CHILD") else {
        return;
    };
    // Never outlive a parent that failed to let go of us.
    std::thread::spawn(|| {
        std::thread::sleep(std::time::Duration::from_secs(60));
        std::process::exit(3)
    });
    let pool = Pool::open(&path, &rw_opts()).unwrap();
    println!("CHILD-LOCKED");
    let mut sink = String::new();
    while std::io::stdin().read_line(&mut sink).unwrap_or(0) > 0 {}
    drop(pool);
}
