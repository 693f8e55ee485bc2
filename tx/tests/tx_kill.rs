//! Real process kills (SIGKILL) in the middle of transactions.
//!
//! The test binary re-executes itself (`kill_child`, selected by an environment variable) as a
//! child that runs transactions forever: each one increments the root's counter, inserts a
//! node holding the new counter value at the head of a persistent list (alloc + link), and
//! alternately allocates or frees a scratch block; right after `transaction` returns, the
//! child writes the committed counter value to its stdout (flushed). The parent reads the
//! pipe, kills the child after a random delay, reopens the pool (recovery) and checks:
//!
//! * counter ≥ the last reported value (a committed transaction is never lost) and ≤ that
//!   value + 1 (at most the transaction in flight, whose report was cut off);
//! * the list holds exactly `counter` nodes, with values counter, counter − 1, …, 1;
//! * the scratch block exists exactly when the counter is odd;
//! * every allocated block is reachable (root, nodes, scratch), each once.
//!
//! `PMSTORE_TX_KILLS` sets the rounds of forced-flush mode on /dev/shm (default 120); msync
//! mode on /var/tmp runs a third of them (default 80, more than a third of 120: its rounds are
//! cheap). Together the defaults make 200 kills per run. Flush-mode rounds get slower as the
//! run goes on: the child commits ~1,000 transactions per round and every check walks the
//! whole list, so the time grows quadratically with the rounds (debug build, 2 cores: 160
//! rounds ~60 s, 120 rounds ~35 s); msync commits are slow, the list stays short and a round
//! takes ~40 ms.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytemuck::{Pod, Zeroable};
use pmstore_tx::{CreateOptions, ModeRequest, OpenOptions, PPtr, Pool, TxError};

mod common;
use common::*;

const L: &str = "tx-kill";
const CHILD_ENV: &str = "PMSTORE_TX_KILL_CHILD";
const MODE_ENV: &str = "PMSTORE_TX_KILL_MODE";

#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
struct Root {
    counter: u64,
    len: u64,
    head: PPtr<Node>,
    scratch: PPtr<[u64; 8]>,
}

#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
struct Node {
    value: u64,
    next: PPtr<Node>,
}

fn mode_from(s: &str) -> ModeRequest {
    match s {
        "msync" => ModeRequest::Msync,
        _ => ModeRequest::Flush,
    }
}

/// The child role: commits transactions until killed, reporting each committed counter value.
#[test]
#[ignore = "helper process of the kill tests (runs only with PMSTORE_TX_KILL_CHILD set)"]
fn kill_child() {
    let Some(path) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let mode = mode_from(&std::env::var(MODE_ENV).unwrap_or_default());
    let pool = Pool::open(&path, &OpenOptions::new(L).mode(mode)).unwrap();
    let root = pool.root::<Root>().unwrap();
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready").unwrap();
    out.flush().unwrap();
    loop {
        let c = pool
            .transaction(|tx| {
                let r = *tx.get(root)?;
                let n = tx.alloc(Node {
                    value: r.counter + 1,
                    next: r.head,
                })?;
                let scratch = if r.scratch.is_null() {
                    tx.alloc([r.counter + 1; 8])?
                } else {
                    tx.free(r.scratch)?;
                    PPtr::NULL
                };
                let m = tx.get_mut(root)?;
                m.counter += 1;
                m.len += 1;
                m.head = n;
                m.scratch = scratch;
                Ok::<_, TxError>(m.counter)
            })
            .unwrap();
        writeln!(out, "committed {c}").unwrap();
        out.flush().unwrap();
    }
}

/// Checks the reopened pool against the last reported counter value; returns the counter.
fn check_pool(pool: &Pool, reported: u64, round: u64) -> u64 {
    let root = pool.root::<Root>().unwrap();
    let (r, nodes) = pool
        .read(|tx| {
            let r = *tx.get(root)?;
            let mut nodes = Vec::new();
            let mut p = r.head;
            while !p.is_null() {
                assert!(
                    nodes.len() as u64 <= r.counter,
                    "round {round}: list longer than the counter"
                );
                let n = tx.get(p)?;
                nodes.push((p.offset(), n.value));
                p = n.next;
            }
            Ok::<_, TxError>((r, nodes))
        })
        .unwrap();
    let c = r.counter;
    assert!(
        c >= reported,
        "round {round}: committed transaction lost: counter {c} < reported {reported}"
    );
    assert!(
        c <= reported + 1,
        "round {round}: counter {c} > reported {reported} + 1"
    );
    assert_eq!(r.len, c, "round {round}: length field");
    assert_eq!(nodes.len() as u64, c, "round {round}: list length");
    for (i, &(_, v)) in nodes.iter().enumerate() {
        assert_eq!(v, c - i as u64, "round {round}: node {i}");
    }
    let mut reach: Vec<u64> = nodes.iter().map(|&(o, _)| o).collect();
    reach.push(root.offset());
    assert_eq!(
        !r.scratch.is_null(),
        c % 2 == 1,
        "round {round}: scratch block vs counter {c}"
    );
    if !r.scratch.is_null() {
        let s = pool
            .read(|tx| Ok::<_, TxError>(*tx.get(r.scratch)?))
            .unwrap();
        assert_eq!(s, [c; 8], "round {round}: scratch contents");
        reach.push(r.scratch.offset());
    }
    check_reachable(pool, &reach).unwrap_or_else(|e| panic!("round {round}: {e}"));
    c
}

fn kill_rounds(dir: &Path, mode: ModeRequest, mode_name: &str, rounds: u64) {
    let t0 = Instant::now();
    let path = dir.join("kill.pool");
    {
        let pool = Pool::create(&path, &CreateOptions::new(L, 32 << 20).mode(mode)).unwrap();
        pool.root::<Root>().unwrap();
    }
    let exe = std::env::current_exe().unwrap();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut rng = Rng(seed);
    let (mut last, mut replayed, mut in_flight_found) = (0u64, 0u64, 0u64);
    for round in 0..rounds {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "kill_child",
                "--ignored",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(CHILD_ENV, &path)
            .env(MODE_ENV, mode_name)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        loop {
            line.clear();
            let n = out.read_line(&mut line).unwrap();
            assert!(n > 0, "round {round}: the child exited before it was ready");
            // libtest prints "test kill_child ... " before running it, on the same line.
            if line.trim_end().ends_with("ready") {
                break;
            }
        }
        // Drain the pipe in the background, remembering the last complete report.
        let reported = Arc::new(AtomicU64::new(last));
        let reader = {
            let reported = Arc::clone(&reported);
            std::thread::spawn(move || {
                let mut line = String::new();
                loop {
                    line.clear();
                    match out.read_line(&mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                    if !line.ends_with('\n') {
                        break; // cut off by the kill
                    }
                    if let Some(v) = line.trim().strip_prefix("committed ") {
                        reported.store(v.parse().unwrap(), Ordering::Release);
                    }
                }
            })
        };
        let delay = Duration::from_micros(2_000 + rng.below(48_000));
        std::thread::sleep(delay);
        child.kill().unwrap();
        child.wait().unwrap();
        reader.join().unwrap();
        let reported = reported.load(Ordering::Acquire);
        let pool = Pool::open(&path, &OpenOptions::new(L).mode(mode)).unwrap();
        replayed += u64::from(pool.recovery_report().logs_replayed > 0);
        let c = check_pool(&pool, reported, round);
        assert!(
            c >= last,
            "round {round}: counter went back from {last} to {c}"
        );
        in_flight_found += u64::from(c == reported + 1);
        last = c;
    }
    assert!(last > 0, "the children made progress");
    println!(
        "{mode_name}: {rounds} kills in {:?}: final counter {last}, {replayed} recoveries replayed \
         a log, {in_flight_found} kills hit between a commit and its report",
        t0.elapsed()
    );
}

#[test]
fn killed_transactions_forced_flush() {
    let rounds = knob("PMSTORE_TX_KILLS", 120);
    let dir = shm_dir();
    kill_rounds(dir.path(), ModeRequest::Flush, "flush", rounds);
}

#[test]
fn killed_transactions_msync() {
    // Default 80 rounds (see the module docs); a third of `PMSTORE_TX_KILLS` when set.
    let rounds = knob("PMSTORE_TX_KILLS", 240).div_ceil(3);
    let dir = disk_dir();
    kill_rounds(dir.path(), ModeRequest::Msync, "msync", rounds);
}
