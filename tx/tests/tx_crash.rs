//! Crash-state exploration of transactions in the simulated persistence domain.
//!
//! Every workload runs on a simulated pool whose crash hook, at **every drain**, takes every
//! possible crash image (all subsets of the lines in flight when there are at most 12, else 32
//! seeded samples), recovers it (`Pool::from_raw` of `open_simulated`) and checks the oracle:
//!
//! * the observable state — the root entry, the root's fields, the list and the objects
//!   reachable from the root — equals the state before or the state after the transaction in
//!   progress, never anything in between;
//! * every allocated block is reachable from the root exactly once (no leak, no double
//!   allocation), and every reachable block is allocated;
//! * on a sample of images, the recovered pool runs a transaction (alloc + link + free).
//!
//! For the first image of every step whose recovery replayed a log (× the scale knob), recovery
//! itself is crashed: every image of every drain of the recovery recovers again to the same
//! result. Workloads: single-field update, multi-object update (4 objects), alloc + link, free +
//! unlink, 8 ranges + alloc + free, 12 KiB, aborted (error, panic) then committed, nested, and
//! transactions alternating between two threads (two lanes). After each committed transaction
//! the missing-flush detector runs: nothing may be flushed and not drained, and nothing may be
//! modified and unflushed except log header lines (invalidations, deliberately not flushed)
//! and the target lines of live logs (a commit's values, flushed by the lane's next commit:
//! `docs/REDO.md` §4); nothing at all after `sync_invalidations`.
//!
//! Two deterministic regression tests pin down the bugs this exploration found (both fixed in
//! 3b2b65e): `new_block_contents_are_durable_with_the_commit` and
//! `a_freed_block_reused_through_another_lane_keeps_its_new_contents`.
//!
//! Knobs: `PMSTORE_TX_CRASH_SCALE` (default 1) multiplies the repetitions of every workload and
//! the samples per drain; `PMSTORE_TX_CRASH_SEQS` (default 3) random sequences of
//! `PMSTORE_TX_CRASH_OPS` (default 10) transactions.

use std::collections::{BTreeMap, HashMap};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytemuck::{Pod, Zeroable};
use pmstore_tx::pool::sim::{CrashPoint, SimDomain};
use pmstore_tx::pool::Pool as RawPool;
use pmstore_tx::{CreateOptions, OpenOptions, PPtr, Pool, Tx, TxError};

mod common;
use common::{check_reachable, knob, Rng};

const L: &str = "tx-crash";
const SLOTS: usize = 16;
const LANES: u32 = 4;

/// The root: 8 plain words, a list (head offset, length) and slots `(offset, length)` of
/// objects of 64, 512 or 12288 bytes.
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
struct Root {
    vals: [u64; 8],
    head: u64,
    nlist: u64,
    slots: [[u64; 2]; SLOTS],
}

/// A list node: next offset, value.
type Node = [u64; 2];
type Line = [u64; 8];

/// What a program can observe of a pool.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum State {
    /// The root entry is empty (crash before the root's creation committed).
    NoRoot,
    Root {
        vals: [u64; 8],
        nlist: u64,
        /// Nodes from the head: (offset, value).
        list: Vec<(u64, u64)>,
        /// Non-empty slots: (index, offset, length, contents).
        slots: Vec<(usize, u64, u64, Vec<u64>)>,
    },
}

/// The observable state of a pool, and what is wrong with its heap (blocks allocated but not
/// reachable, reachable but not allocated, reachable twice; a list that cannot be walked).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Observed {
    state: State,
    anomalies: Vec<String>,
}

/// Reads the observable state of `pool` and checks that the allocated blocks are exactly the
/// reachable ones (an `Err` only if the pool cannot be read at all).
fn observe(pool: &Pool) -> Result<Observed, String> {
    let g = pool.raw().geometry();
    let mut entry = [0u8; 16];
    // SAFETY: only this thread uses `pool` (a recovered crash image, or the workload's pool
    // between transactions), so nothing writes the root entry during the read.
    unsafe { pool.raw().read(g.root_offset, &mut entry) };
    let mut anomalies = Vec::new();
    if entry == [0; 16] {
        if let Err(e) = check_reachable(pool, &[]) {
            anomalies.push(format!("no root: {e}"));
        }
        return Ok(Observed {
            state: State::NoRoot,
            anomalies,
        });
    }
    let root = pool.root::<Root>().map_err(|e| format!("root: {e}"))?;
    let (state, reach, walk) = pool
        .read(|tx| {
            let r = *tx.get(root)?;
            let mut reach = vec![root.offset()];
            let mut list = Vec::new();
            let mut walk = None;
            let mut p = r.head;
            while p != 0 {
                if list.len() as u64 > r.nlist + 16 {
                    walk = Some(format!("list longer than {} (a cycle?)", r.nlist));
                    break;
                }
                let n = match tx.get(PPtr::<Node>::from_offset(p)) {
                    Ok(n) => *n,
                    Err(TxError::Conflict) => return Err(TxError::Conflict),
                    Err(e) => {
                        walk = Some(format!("list node {p:#x}: {e}"));
                        break;
                    }
                };
                list.push((p, n[1]));
                reach.push(p);
                p = n[0];
            }
            let mut slots = Vec::new();
            for (i, &[off, len]) in r.slots.iter().enumerate() {
                if off == 0 {
                    continue;
                }
                let mut words = Vec::with_capacity(len as usize / 8);
                for c in 0..len / 64 {
                    words.extend_from_slice(tx.get(PPtr::<Line>::from_offset(off + 64 * c))?);
                }
                reach.push(off);
                slots.push((i, off, len, words));
            }
            let state = State::Root {
                vals: r.vals,
                nlist: r.nlist,
                list,
                slots,
            };
            Ok::<_, TxError>((state, reach, walk))
        })
        .map_err(|e| format!("read: {e}"))?;
    anomalies.extend(walk);
    if let Err(e) = check_reachable(pool, &reach) {
        anomalies.push(e);
    }
    Ok(Observed { state, anomalies })
}

/// [`observe`], requiring a consistent heap.
fn observe_strict(pool: &Pool) -> Result<State, String> {
    let o = observe(pool)?;
    if o.anomalies.is_empty() {
        Ok(o.state)
    } else {
        Err(o.anomalies.join("; "))
    }
}

/// Whether `obs` is the state `after` except for the contents of blocks that are new in
/// `after` (not reachable in `before`) — and, for a new list node whose contents were lost,
/// whatever its lost `next` pointer leads to: the signature of the bug of
/// `new_block_contents_are_durable_with_the_commit` (named in failure messages).
fn after_but_new_blocks_lost(obs: &State, before: &State, after: &State) -> bool {
    let (
        State::Root {
            vals,
            nlist,
            list,
            slots,
        },
        State::Root {
            vals: avals,
            nlist: anlist,
            list: alist,
            slots: aslots,
        },
    ) = (obs, after)
    else {
        return false;
    };
    let mut old = std::collections::HashSet::new();
    if let State::Root { list, slots, .. } = before {
        old.extend(list.iter().map(|n| n.0));
        old.extend(slots.iter().map(|s| s.1));
    }
    if vals != avals || nlist != anlist || slots.len() != aslots.len() {
        return false;
    }
    let mut lost = false;
    for (s, a) in slots.iter().zip(aslots) {
        if (s.0, s.1, s.2) != (a.0, a.1, a.2) {
            return false;
        }
        if s.3 != a.3 {
            if old.contains(&s.1) {
                return false;
            }
            lost = true;
        }
    }
    for (i, a) in alist.iter().enumerate() {
        let Some(n) = list.get(i) else {
            return false;
        };
        if n.0 != a.0 {
            return false;
        }
        if !old.contains(&a.0)
            && (n.1 != a.1 || list.get(i + 1).map(|x| x.0) != alist.get(i + 1).map(|x| x.0))
        {
            return true; // a new node lost its contents: its `next` is garbage too
        }
        if n.1 != a.1 {
            return false;
        }
    }
    lost && list.len() == alist.len()
}

// ---------------------------------------------------------------------------------------------
// Operations used by the workloads (inside a transaction)

fn push_node(tx: &mut Tx<'_>, root: PPtr<Root>, value: u64) -> Result<u64, TxError> {
    let head = tx.get(root)?.head;
    let n = tx.alloc::<Node>([head, value])?;
    let r = tx.get_mut(root)?;
    r.head = n.offset();
    r.nlist += 1;
    Ok(n.offset())
}

fn pop_node(tx: &mut Tx<'_>, root: PPtr<Root>) -> Result<bool, TxError> {
    let head = tx.get(root)?.head;
    if head == 0 {
        return Ok(false);
    }
    let p = PPtr::<Node>::from_offset(head);
    let next = tx.get(p)?[0];
    tx.free(p)?;
    let r = tx.get_mut(root)?;
    r.head = next;
    r.nlist -= 1;
    Ok(true)
}

fn pattern(k: u64, salt: u64) -> u64 {
    k.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt
}

/// Allocates an object of `len` bytes (64, 512 or 12288) filled with a pattern into slot `i`.
fn alloc_slot(
    tx: &mut Tx<'_>,
    root: PPtr<Root>,
    i: usize,
    len: u64,
    salt: u64,
) -> Result<(), TxError> {
    let off = match len {
        64 => tx
            .alloc::<[u64; 8]>(std::array::from_fn(|k| pattern(k as u64, salt)))?
            .offset(),
        512 => tx
            .alloc::<[u64; 64]>(std::array::from_fn(|k| pattern(k as u64, salt)))?
            .offset(),
        12288 => {
            let p = tx.alloc_zeroed::<[u64; 1536]>()?;
            let v = tx.get_mut(p)?;
            for (k, w) in v.iter_mut().enumerate() {
                *w = pattern(k as u64, salt);
            }
            p.offset()
        }
        _ => unreachable!("object size {len}"),
    };
    tx.get_mut(root)?.slots[i] = [off, len];
    Ok(())
}

fn free_slot(tx: &mut Tx<'_>, root: PPtr<Root>, i: usize) -> Result<bool, TxError> {
    let [off, _] = tx.get(root)?.slots[i];
    if off == 0 {
        return Ok(false);
    }
    tx.free(PPtr::<u8>::from_offset(off))?;
    tx.get_mut(root)?.slots[i] = [0, 0];
    Ok(true)
}

/// Sets word `k` of slot `i`'s object.
fn write_slot(tx: &mut Tx<'_>, root: PPtr<Root>, i: usize, k: u64, v: u64) -> Result<(), TxError> {
    let [off, len] = tx.get(root)?.slots[i];
    assert!(off != 0 && 8 * k < len);
    *tx.get_mut(PPtr::<u64>::from_offset(off + 8 * k))? = v;
    Ok(())
}

/// Rewrites every word of slot `i`'s object.
fn fill_slot(tx: &mut Tx<'_>, root: PPtr<Root>, i: usize, salt: u64) -> Result<(), TxError> {
    let [off, len] = tx.get(root)?.slots[i];
    assert!(off != 0);
    for c in 0..len / 64 {
        let l = tx.get_mut(PPtr::<Line>::from_offset(off + 64 * c))?;
        for (k, w) in l.iter_mut().enumerate() {
            *w = pattern(c * 8 + k as u64, salt);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The exploration harness

#[derive(Clone, Copy, Debug)]
struct Cfg {
    /// Enumerate every subset up to this many lines in flight.
    exhaustive: usize,
    /// Else this many samples.
    samples: usize,
    seed: u64,
    /// Crash recovery itself for this many images per step among those whose recovery
    /// replayed a log (each costs a crash point per recovery drain: ~30 ms in debug builds).
    recoveries_per_step: usize,
    /// Run a transaction on every n-th recovered image.
    exercise_every: usize,
}

#[derive(Default)]
struct Obs {
    images: usize,
    recovery_images: usize,
    recoveries_crashed: usize,
    with_work: usize,
    /// Crashed recoveries per step.
    crashed_in_step: HashMap<usize, usize>,
    /// Step in progress → distinct recovered states (with a count).
    by_step: BTreeMap<usize, HashMap<Observed, usize>>,
    errors: Vec<String>,
}

/// Recovers a crash image and observes it; optionally runs a transaction on it afterwards.
/// Returns the observation and whether recovery replayed a log / had any work.
fn recover(img: &[u8], exercise: bool) -> Result<(Observed, bool, bool), String> {
    let (raw, _sim) =
        RawPool::open_simulated(img, &OpenOptions::new(L)).map_err(|e| format!("open: {e}"))?;
    let pool = Pool::from_raw(raw).map_err(|e| format!("recovery: {e}"))?;
    let rep = pool.recovery_report();
    let replayed = rep.logs_replayed > 0;
    let work = rep.logs_replayed + rep.invalid_cleared > 0;
    let st = observe(&pool)?;
    if exercise && st.anomalies.is_empty() {
        if let State::Root { .. } = st.state {
            let root = pool.root::<Root>().map_err(|e| e.to_string())?;
            pool.transaction(|tx| {
                push_node(tx, root, 0xEEEE)?;
                let [off, _] = tx.get(root)?.slots[SLOTS - 1];
                if off != 0 {
                    free_slot(tx, root, SLOTS - 1)?;
                } else {
                    alloc_slot(tx, root, SLOTS - 1, 64, 0xEE)?;
                }
                Ok::<_, TxError>(())
            })
            .map_err(|e| format!("transaction after recovery: {e}"))?;
            pool.transaction(|tx| pop_node(tx, root))
                .map_err(|e| format!("second transaction after recovery: {e}"))?;
            observe_strict(&pool)
                .map_err(|e| format!("after a transaction on the recovered pool: {e}"))?;
        }
    }
    Ok((st, replayed, work))
}

/// Recovers `img` with recovery's own drains crashed: every image of every recovery drain must
/// recover to `expect`. Returns the number of such images.
fn crash_recovery(img: &[u8], expect: &Observed, seed: u64) -> Result<usize, String> {
    let (raw, sim) =
        RawPool::open_simulated(img, &OpenOptions::new(L)).map_err(|e| format!("open: {e}"))?;
    let seen: Arc<Mutex<Vec<Result<Observed, String>>>> = Arc::default();
    {
        let seen = Arc::clone(&seen);
        sim.set_crash_hook(move |cp: &CrashPoint<'_>| {
            for img2 in cp.images(6, 8, seed) {
                let r = recover(&img2, false).map(|(s, _, _)| s);
                seen.lock()
                    .unwrap()
                    .push(r.map_err(|e| format!("recovery drain {}: {e}", cp.drain)));
            }
        });
    }
    let pool = Pool::from_raw(raw).map_err(|e| format!("hooked recovery: {e}"))?;
    sim.clear_crash_hook();
    let got = observe(&pool)?;
    if got != *expect {
        return Err(format!(
            "hooked recovery gave another state: {got:?} vs {expect:?}"
        ));
    }
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    for r in &seen {
        match r {
            Ok(s) if s == expect => {}
            Ok(s) => {
                return Err(format!(
                    "recovery of a crash during recovery: {s:?}, want {expect:?}"
                ))
            }
            Err(e) => return Err(e.clone()),
        }
    }
    Ok(seen.len())
}

/// Checks every crash image of one crash point (in parallel), recording into `obs`.
fn explore(cp: &CrashPoint<'_>, cfg: &Cfg, step: usize, obs: &Mutex<Obs>, counter: &AtomicUsize) {
    let images = Mutex::new(cp.images(cfg.exhaustive, cfg.samples, cfg.seed).enumerate());
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(4);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let Some((i, img)) = images.lock().unwrap().next() else {
                    break;
                };
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let exercise = cfg.exercise_every > 0 && n % cfg.exercise_every == 0;
                let r = recover(&img, exercise);
                let mut crashed = None;
                if let Ok((st, replayed, work)) = &r {
                    let go = {
                        let mut o = obs.lock().unwrap();
                        o.with_work += usize::from(*work);
                        let c = o.crashed_in_step.entry(step).or_default();
                        let go = *replayed && *c < cfg.recoveries_per_step;
                        *c += usize::from(go);
                        go
                    };
                    if go {
                        crashed = Some(crash_recovery(&img, st, cfg.seed ^ n as u64));
                    }
                }
                let mut o = obs.lock().unwrap();
                o.images += 1;
                match r {
                    Ok((st, _, _)) => {
                        *o.by_step.entry(step).or_default().entry(st).or_default() += 1
                    }
                    Err(e) => o
                        .errors
                        .push(format!("step {step}, drain {}, image {i}: {e}", cp.drain)),
                }
                match crashed {
                    Some(Ok(n)) => {
                        o.recoveries_crashed += 1;
                        o.recovery_images += n;
                    }
                    Some(Err(e)) => o
                        .errors
                        .push(format!("step {step}, drain {}, image {i}: {e}", cp.drain)),
                    None => {}
                }
            });
        }
    });
}

struct Harness {
    name: String,
    pool: Pool,
    sim: Arc<SimDomain>,
    root: PPtr<Root>,
    step: Arc<AtomicUsize>,
    obs: Arc<Mutex<Obs>>,
    hook: Arc<dyn Fn(&CrashPoint<'_>) + Send + Sync>,
    /// `states[k]`: the state before step `k` (after step `k - 1`).
    states: Vec<State>,
    lane_headers: Vec<u64>,
    unflushed_notes: usize,
}

/// Totals over all harnesses of a test.
impl Totals {
    fn add(&mut self, t: Totals) {
        self.images += t.images;
        self.recovery_images += t.recovery_images;
        self.recoveries_crashed += t.recoveries_crashed;
        self.steps += t.steps;
    }
}

#[derive(Default, Debug)]
struct Totals {
    images: usize,
    recovery_images: usize,
    recoveries_crashed: usize,
    steps: usize,
}

impl Harness {
    /// A fresh simulated pool under exploration; step 0 creates the root.
    fn new(name: &str, cfg: Cfg) -> Harness {
        let opts = CreateOptions::new(L, 8 << 20).lanes(LANES, 16 << 10);
        let (raw, sim) = RawPool::create_simulated(&opts).unwrap();
        let g = raw.geometry();
        let lane_headers = (0..g.lane_count)
            .flat_map(|i| {
                [
                    g.lane_offset(i),
                    g.lane_offset(i) + u64::from(g.lane_size) / 2,
                ]
            })
            .collect();
        let pool = Pool::from_raw(raw).unwrap();
        let initial = observe_strict(&pool).unwrap();
        assert_eq!(initial, State::NoRoot);
        let step = Arc::new(AtomicUsize::new(0));
        let obs: Arc<Mutex<Obs>> = Arc::default();
        let counter = Arc::new(AtomicUsize::new(0));
        let hook: Arc<dyn Fn(&CrashPoint<'_>) + Send + Sync> = {
            let (step, obs) = (Arc::clone(&step), Arc::clone(&obs));
            Arc::new(move |cp: &CrashPoint<'_>| {
                explore(cp, &cfg, step.load(Ordering::SeqCst), &obs, &counter)
            })
        };
        {
            let hook = Arc::clone(&hook);
            sim.set_crash_hook(move |cp: &CrashPoint<'_>| hook(cp));
        }
        let mut h = Harness {
            name: name.to_string(),
            pool,
            sim,
            root: PPtr::NULL,
            step,
            obs,
            hook,
            states: vec![initial],
            lane_headers,
            unflushed_notes: 0,
        };
        let root = h.step(true, |pool| pool.root::<Root>().unwrap());
        h.root = root;
        h
    }

    /// Runs one step (a transaction, committed or not, or several that must not commit) under
    /// crash exploration and records the state after it. `commits`: whether it changes the
    /// state (if not, the state must be unchanged).
    fn step<R>(&mut self, commits: bool, f: impl FnOnce(&Pool) -> R) -> R {
        let k = self.states.len() - 1;
        self.step.store(k, Ordering::SeqCst);
        let drains = self.sim.drains();
        let r = f(&self.pool);
        let st = observe_strict(&self.pool)
            .unwrap_or_else(|e| panic!("{}: step {k}: live pool: {e}", self.name));
        if !commits {
            assert_eq!(
                self.sim.drains(),
                drains,
                "{}: step {k}: an abort drained",
                self.name
            );
            assert_eq!(
                st, self.states[k],
                "{}: step {k}: an abort changed the state",
                self.name
            );
        }
        self.states.push(st);
        // Missing-flush detector: only log headers (an invalidation store, flushed by a later
        // commit or by `sync_invalidations`) and the target lines of live logs (applied, not
        // yet flushed: REDO.md §4) may be dirty and unflushed; nothing is flushed and not
        // drained.
        let live = self.pool.heap().redo_logs().live_lines();
        self.sim.with_crash_point(|cp| {
            for l in &cp.in_flight {
                assert!(
                    (self.lane_headers.contains(&l.offset) || live.contains(&l.offset))
                        && !l.flushed,
                    "{}: step {k}: line {:#x} in flight after the commit (flushed: {})",
                    self.name,
                    l.offset,
                    l.flushed
                );
            }
        });
        self.unflushed_notes += self.sim.unflushed_lines().len();
        r
    }

    /// A committed transaction step.
    fn tx<R>(&mut self, f: impl FnMut(&mut Tx<'_>) -> Result<R, TxError>) -> R {
        let name = self.name.clone();
        self.step(true, |pool| {
            pool.transaction(f)
                .unwrap_or_else(|e| panic!("{name}: {e}"))
        })
    }

    /// A committed transaction step run on a new thread (so on another lane: lanes are taken
    /// by thread index), while this thread waits: transactions stay sequential, as the
    /// simulated domain needs, but their logs live in different lanes.
    fn tx_elsewhere<R: Send>(
        &mut self,
        f: impl FnMut(&mut Tx<'_>) -> Result<R, TxError> + Send,
    ) -> R {
        let name = self.name.clone();
        self.step(true, |pool| {
            std::thread::scope(|s| {
                s.spawn(|| {
                    pool.transaction(f)
                        .unwrap_or_else(|e| panic!("{name}: {e}"))
                })
                .join()
                .unwrap()
            })
        })
    }

    /// Ends the exploration: flushes the pending invalidations (a drain, explored too), checks
    /// that nothing is left unflushed, explores the final state, and checks every observation.
    fn finish(self) -> Totals {
        let last = self.states.len() - 1;
        self.step.store(last, Ordering::SeqCst);
        let mut ctx = self.pool.raw().flush_context();
        self.pool
            .heap()
            .redo_logs()
            .sync_invalidations(self.pool.raw(), &mut ctx)
            .unwrap();
        let unflushed = self.sim.unflushed_lines();
        assert!(
            unflushed.is_empty(),
            "{}: unflushed after sync_invalidations: {unflushed:x?}",
            self.name
        );
        self.sim.clear_crash_hook();
        self.sim.with_crash_point(|cp| (self.hook)(cp));
        let o = self.obs.lock().unwrap();
        let mut bad = o.errors.clone();
        for (&k, seen) in &o.by_step {
            for (obs, n) in seen {
                let st = &obs.state;
                let ok = obs.anomalies.is_empty()
                    && (*st == self.states[k] || self.states.get(k + 1) == Some(st));
                if ok {
                    continue;
                }
                let hint = self
                    .states
                    .get(k + 1)
                    .is_some_and(|after| after_but_new_blocks_lost(st, &self.states[k], after));
                bad.push(format!(
                    "step {k}: {n} images recovered to a state that is neither before nor after \
                     it{}:\n  got    {st:?}\n  anomalies {:?}\n  before {:?}\n  after  {:?}",
                    if hint {
                        " (the after state with new blocks' contents lost)"
                    } else {
                        ""
                    },
                    obs.anomalies,
                    self.states[k],
                    self.states.get(k + 1)
                ));
            }
        }
        assert!(
            bad.is_empty(),
            "{}: {} bad observations, first ones:\n{}",
            self.name,
            bad.len(),
            bad[..bad.len().min(4)].join("\n")
        );
        // Every committed step was observed both before and after (at its drains); at least
        // one image per step.
        for k in 0..last {
            if self.states[k] != self.states[k + 1] {
                let seen: Vec<&State> = o.by_step[&k]
                    .keys()
                    .filter(|x| x.anomalies.is_empty())
                    .map(|x| &x.state)
                    .collect();
                assert!(
                    seen.contains(&&self.states[k]) && seen.contains(&&self.states[k + 1]),
                    "{}: step {k}: crash images show only {} of the two states",
                    self.name,
                    seen.len()
                );
            }
        }
        println!(
            "{}: {} steps, {} crash images, {} recoveries crashed ({} images), {} recoveries with \
             work; missing-flush detector: \
             nothing unflushed after a commit but {} lane log header lines (the deliberately \
             unflushed invalidation), nothing after sync_invalidations",
            self.name,
            last,
            o.images,
            o.recoveries_crashed,
            o.recovery_images,
            o.with_work,
            self.unflushed_notes
        );
        Totals {
            images: o.images,
            recovery_images: o.recovery_images,
            recoveries_crashed: o.recoveries_crashed,
            steps: last,
        }
    }
}

fn scale() -> u64 {
    knob("PMSTORE_TX_CRASH_SCALE", 1).max(1)
}

fn cfg(seed: u64) -> Cfg {
    Cfg {
        exhaustive: 12,
        samples: 32 * scale() as usize,
        seed,
        recoveries_per_step: scale() as usize,
        exercise_every: 16,
    }
}

// ---------------------------------------------------------------------------------------------
// The workloads

fn single_field(reps: u64) -> Totals {
    let mut h = Harness::new("single-field update", cfg(1));
    let root = h.root;
    h.tx(|tx| alloc_slot(tx, root, 0, 64, 1));
    for r in 0..reps {
        h.tx(|tx| {
            tx.get_mut(root)?.vals[0] = r + 1;
            Ok(())
        });
        h.tx(|tx| write_slot(tx, root, 0, r % 8, 1000 + r));
    }
    h.finish()
}

fn multi_object(reps: u64) -> Totals {
    let mut h = Harness::new("multi-object update", cfg(2));
    let root = h.root;
    h.tx(|tx| {
        for i in 0..4 {
            alloc_slot(tx, root, i, 64, 10 + i as u64)?;
        }
        Ok(())
    });
    for r in 0..reps {
        h.tx(|tx| {
            for i in 0..4 {
                write_slot(tx, root, i, (r + i as u64) % 8, r * 100 + i as u64)?;
            }
            tx.get_mut(root)?.vals[1] = r;
            Ok(())
        });
    }
    h.finish()
}

fn alloc_link(reps: u64) -> Totals {
    let mut h = Harness::new("alloc + link", cfg(3));
    let root = h.root;
    for r in 0..reps {
        h.tx(|tx| push_node(tx, root, 100 + r));
        h.tx(|tx| alloc_slot(tx, root, r as usize % SLOTS, [64, 512][r as usize % 2], r));
    }
    h.finish()
}

fn free_unlink(reps: u64) -> Totals {
    let mut h = Harness::new("free + unlink", cfg(4));
    let root = h.root;
    h.tx(|tx| {
        for r in 0..2 * reps {
            push_node(tx, root, r)?;
        }
        for r in 0..reps.min(SLOTS as u64) {
            alloc_slot(tx, root, r as usize, [64, 512][r as usize % 2], r)?;
        }
        Ok(())
    });
    for r in 0..reps {
        h.tx(|tx| pop_node(tx, root));
        h.tx(|tx| free_slot(tx, root, r as usize % SLOTS));
    }
    h.finish()
}

fn mixed(reps: u64) -> Totals {
    let mut h = Harness::new("8 ranges + alloc + free", cfg(5));
    let root = h.root;
    h.tx(|tx| {
        for i in 0..8 {
            alloc_slot(tx, root, i, 512, i as u64)?;
        }
        alloc_slot(tx, root, 8, 64, 8)
    });
    for r in 0..reps {
        h.tx(|tx| {
            for i in 0..8 {
                fill_slot(tx, root, i, 0x5A17 + r * 16 + i as u64)?;
            }
            push_node(tx, root, r)?;
            free_slot(tx, root, 8)?;
            alloc_slot(tx, root, 8, 64, 0x100 + r)
        });
    }
    h.finish()
}

fn twelve_kib(reps: u64) -> Totals {
    let mut h = Harness::new("12 KiB transaction", cfg(6));
    let root = h.root;
    h.tx(|tx| alloc_slot(tx, root, 0, 12288, 0));
    for r in 0..reps {
        h.tx(|tx| fill_slot(tx, root, 0, 0x12_0000 + r));
    }
    h.finish()
}

fn abort_then_commit(reps: u64) -> Totals {
    let mut h = Harness::new("aborted then committed", cfg(7));
    let root = h.root;
    h.tx(|tx| {
        alloc_slot(tx, root, 0, 64, 1)?;
        alloc_slot(tx, root, 1, 512, 2)?;
        push_node(tx, root, 1).map(|_| ())
    });
    for r in 0..reps {
        let body = |tx: &mut Tx<'_>| -> Result<(), TxError> {
            tx.get_mut(root)?.vals[2] = 7000 + r;
            push_node(tx, root, 7000 + r)?;
            if r == 0 {
                // 8 lines of 512 B rewritten: about 12 lines in flight, every subset (4096).
                fill_slot(tx, root, 1, 0xAB)?;
            } else {
                write_slot(tx, root, 1, r % 64, 0xAB + r)?;
            }
            free_slot(tx, root, 0)?;
            alloc_slot(tx, root, 0, 64, 0xCD + r)
        };
        // Aborted by an error, then by a panic: nothing changes, no drain.
        h.step(false, |pool| {
            let e = pool.transaction(|tx| {
                body(tx)?;
                Err::<(), _>(TxError::Aborted)
            });
            assert!(matches!(e, Err(TxError::Aborted)));
            let p = catch_unwind(AssertUnwindSafe(|| {
                pool.transaction(|tx| -> Result<(), TxError> {
                    body(tx)?;
                    panic!("deliberate panic in a transaction (expected by the test)")
                })
            }));
            assert!(p.is_err());
        });
        // The same, committed.
        h.tx(body);
    }
    h.finish()
}

fn nested(reps: u64) -> Totals {
    let mut h = Harness::new("nested", cfg(8));
    let root = h.root;
    for r in 0..reps {
        h.tx(|tx| {
            tx.get_mut(root)?.vals[3] = r + 1;
            tx.nested(|tx| push_node(tx, root, 300 + r))?;
            tx.nested(|tx| tx.nested(|tx| alloc_slot(tx, root, r as usize % SLOTS, 64, r)))?;
            Ok(())
        });
        h.step(false, |pool| {
            let e = pool.transaction(|tx| {
                tx.get_mut(root)?.vals[3] = 999;
                let _ = tx.nested(|tx| {
                    push_node(tx, root, 999)?;
                    Err::<(), _>(TxError::Null)
                });
                Ok::<_, TxError>(())
            });
            assert!(matches!(e, Err(TxError::Aborted)), "{e:?}");
        });
    }
    h.finish()
}

fn two_lanes(reps: u64) -> Totals {
    let mut h = Harness::new("two lanes", cfg(9));
    let root = h.root;
    h.tx(|tx| {
        alloc_slot(tx, root, 0, 64, 1)?;
        push_node(tx, root, 1).map(|_| ())
    });
    for r in 0..reps {
        // The same words, committed alternately through different lanes: recovery must replay
        // the logs still valid in commit order.
        h.tx_elsewhere(move |tx| {
            tx.get_mut(root)?.vals[0] = 100 + r;
            write_slot(tx, root, 0, 0, 100 + r)
        });
        h.tx(|tx| {
            tx.get_mut(root)?.vals[0] = 200 + r;
            write_slot(tx, root, 0, 0, 200 + r)?;
            push_node(tx, root, 200 + r).map(|_| ())
        });
        h.tx_elsewhere(move |tx| {
            pop_node(tx, root)?;
            tx.get_mut(root)?.vals[1] = 300 + r;
            Ok(())
        });
        h.tx(|tx| {
            free_slot(tx, root, 0)?;
            alloc_slot(tx, root, 0, 64, 400 + r)
        });
    }
    h.finish()
}

fn all_workloads() -> Totals {
    let reps = 2 * scale();
    let t0 = std::time::Instant::now();
    let runs: [fn(u64) -> Totals; 9] = [
        single_field,
        multi_object,
        alloc_link,
        free_unlink,
        mixed,
        twelve_kib,
        abort_then_commit,
        nested,
        two_lanes,
    ];
    let mut total = Totals::default();
    for f in runs {
        total.add(f(reps));
    }
    println!(
        "crash images checked: {} (+ {} images of {} crashed recoveries), {} steps, in {:?}",
        total.images,
        total.recovery_images,
        total.recoveries_crashed,
        total.steps,
        t0.elapsed()
    );
    assert!(total.images >= 5000, "only {} images", total.images);
    assert!(total.recoveries_crashed > 0 && total.recovery_images > 0);
    total
}

/// Every workload, every drain, every image: before or after, never in between, with a
/// consistent heap; crashed recoveries recover to the same result.
#[test]
fn every_crash_image_of_every_workload_recovers_to_before_or_after() {
    all_workloads();
}

/// Regression test (bug found by this file, fixed in 3b2b65e): the contents of a block
/// allocated by a transaction are durable with its commit. They were briefly written directly
/// (not logged) before the commit point, with nothing ordering them before the log: at drain #1
/// of an alloc + link transaction, the crash image in which exactly the log's lines reached the
/// media recovered to "allocated and linked" with the block's contents lost.
#[test]
fn new_block_contents_are_durable_with_the_commit() {
    let (raw, sim) =
        RawPool::create_simulated(&CreateOptions::new(L, 8 << 20).lanes(LANES, 16 << 10)).unwrap();
    let g = raw.geometry();
    let lanes = g.lanes_offset..g.lanes_offset + u64::from(g.lane_count) * u64::from(g.lane_size);
    let pool = Pool::from_raw(raw).unwrap();
    let root = pool.root::<[u64; 2]>().unwrap();
    /// (drain, recovered root, recovered object)
    type Seen = Vec<(u64, [u64; 2], [u64; 8])>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    {
        let seen = Arc::clone(&seen);
        sim.set_crash_hook(move |cp: &CrashPoint<'_>| {
            let img = cp.image_with(|i| lanes.contains(&cp.in_flight[i].offset));
            let (raw, _) = RawPool::open_simulated(&img, &OpenOptions::new(L)).unwrap();
            let p = Pool::from_raw(raw).unwrap();
            let r = p.root::<[u64; 2]>().unwrap();
            let (rv, obj) = p
                .read(|tx| {
                    let rv = *tx.get(r)?;
                    let obj = match rv[0] {
                        0 => [0; 8],
                        o => *tx.get(PPtr::<[u64; 8]>::from_offset(o))?,
                    };
                    Ok::<_, TxError>((rv, obj))
                })
                .unwrap();
            seen.lock().unwrap().push((cp.drain, rv, obj));
        });
    }
    pool.transaction(|tx| {
        let p = tx.alloc([7u64; 8])?;
        tx.get_mut(root)?[0] = p.offset();
        Ok::<_, TxError>(())
    })
    .unwrap();
    sim.clear_crash_hook();
    let seen = seen.lock().unwrap();
    assert!(!seen.is_empty());
    for &(drain, rv, obj) in seen.iter() {
        // Before: nothing linked. After: linked to a block holding [7; 8].
        assert!(
            rv[0] == 0 || obj == [7; 8],
            "drain {drain}: the commit survived (root -> {:#x}) but the new block holds {obj:?}",
            rv[0]
        );
    }
}

/// Regression test (bug found by this file, fixed in 3b2b65e): a transaction's log range must
/// never span the bytes of a block it frees. Runs of changed words less than 16 bytes apart
/// used to be merged across such a block, so the log carried its stale bytes; once the block
/// was reused by a transaction of another lane, a crash before that transaction's drain #1 —
/// its log written back, the older log's invalidation not — replayed the stale bytes over the
/// new contents (the newer log did not hold them while new blocks were written directly).
/// The crash image checked: at every drain of the reusing transaction, everything written
/// back except the older transaction's invalidation line.
#[test]
fn a_freed_block_reused_through_another_lane_keeps_its_new_contents() {
    type Node2 = [u64; 2];
    let (raw, sim) =
        RawPool::create_simulated(&CreateOptions::new(L, 8 << 20).lanes(LANES, 16 << 10)).unwrap();
    let pool = Pool::from_raw(raw).unwrap();
    let root = pool.root::<[PPtr<Node2>; 4]>().unwrap();
    // Three 16-byte blocks in one cache line: a, b, c.
    let (a, b, c) = pool
        .transaction(|tx| {
            let a = tx.alloc::<Node2>([1, 1])?;
            let b = tx.alloc::<Node2>([2, 2])?;
            let c = tx.alloc::<Node2>([3, 3])?;
            *tx.get_mut(root)? = [a, b, c, PPtr::NULL];
            Ok::<_, TxError>((a, b, c))
        })
        .unwrap();
    assert_eq!((b.offset(), c.offset()), (a.offset() + 16, a.offset() + 32));
    assert_eq!(a.offset() / 64, c.offset() / 64, "one cache line");
    // The log regions whose header word is non-zero (valid logs: live or not yet invalidated).
    let headers = |pool: &Pool| -> Vec<u64> {
        let layout = *pool.heap().redo_logs().layout();
        (0..layout.lane_count())
            .flat_map(|l| (0..2).map(move |s| layout.slot_offset(l, s)))
            .filter(|&off| {
                let mut w = [0u8; 8];
                // SAFETY: single-threaded here; a read of the pool's lanes.
                unsafe { pool.raw().read(off, &mut w) };
                w != [0; 8]
            })
            .collect()
    };
    let deferred = pool.heap().redo_logs().deferred_apply();
    let main_header = headers(&pool);
    let main_unflushed = sim.unflushed_lines();
    // T1, on another thread (another lane): changes a[1] and c[0], frees b.
    let ((t1_valid, t1_unflushed), t1) = std::thread::scope(|s| {
        s.spawn(|| {
            pool.transaction(|tx| {
                tx.get_mut(a)?[1] = 10;
                tx.get_mut(c)?[0] = 30;
                tx.free(b)?;
                tx.get_mut(root)?[1] = PPtr::NULL;
                Ok::<_, TxError>(())
            })
            .unwrap();
            ((headers(&pool), sim.unflushed_lines()), pool.last_commit())
        })
        .join()
        .unwrap()
    });
    // Deferred apply: T1's log is live (valid, its values applied but not flushed). Else its
    // invalidation is pending (the zeroed header line, not flushed). REDO.md §4.
    let t1_header: Vec<u64> = if deferred {
        assert!(pool.heap().redo_logs().live_logs() >= 1);
        t1_valid
            .into_iter()
            .filter(|h| !main_header.contains(h))
            .collect()
    } else {
        t1_unflushed
            .into_iter()
            .filter(|h| !main_unflushed.contains(h))
            .collect()
    };
    assert_eq!(t1_header.len(), 1, "T1's header line: {t1_header:x?}");
    println!("T1 (frees b between a and c, which it modifies): {t1:?}");
    assert_eq!((t1.frees, t1.logged), (1, true), "{t1:?}");
    // T2, on this thread: reuses b with new contents and links it.
    type Seen = Vec<(u64, u64, Node2)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    {
        let (seen, skip) = (Arc::clone(&seen), t1_header[0]);
        sim.set_crash_hook(move |cp: &CrashPoint<'_>| {
            // Everything written back except T1's header line (its invalidation, once T2
            // stored it): T1 stays valid.
            let img = cp.image_with(|i| cp.in_flight[i].offset != skip);
            let (raw, _) = RawPool::open_simulated(&img, &OpenOptions::new(L)).unwrap();
            let p = Pool::from_raw(raw).unwrap();
            let r = p.root::<[PPtr<Node2>; 4]>().unwrap();
            let (d, v) = p
                .read(|tx| {
                    let d = tx.get(r)?[3];
                    let v = if d.is_null() { [0; 2] } else { *tx.get(d)? };
                    Ok::<_, TxError>((d.offset(), v))
                })
                .unwrap();
            seen.lock().unwrap().push((cp.drain, d, v));
        });
    }
    let d = pool
        .transaction(|tx| {
            let d = tx.alloc::<Node2>([77, 77])?;
            tx.get_mut(root)?[3] = d;
            Ok::<_, TxError>(d)
        })
        .unwrap();
    sim.clear_crash_hook();
    assert_eq!(d, b, "the freed block is reused");
    let seen = seen.lock().unwrap();
    assert!(!seen.is_empty());
    for &(drain, off, v) in seen.iter() {
        assert!(
            off == 0 || v == [77, 77],
            "drain {drain}: the new block {off:#x} is linked but holds {v:?} (the freed block's \
             old contents, replayed from T1's log?)"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Random sequences

#[test]
fn random_transaction_sequences_recover_to_before_or_after() {
    let (seqs, ops) = (
        knob("PMSTORE_TX_CRASH_SEQS", 3),
        knob("PMSTORE_TX_CRASH_OPS", 10),
    );
    let mut total = Totals::default();
    for seq in 0..seqs {
        let c = Cfg {
            exhaustive: 8,
            samples: 12,
            seed: 0x5EC0 + seq,
            recoveries_per_step: 1,
            exercise_every: 32,
        };
        let mut h = Harness::new(&format!("random sequence {seq}"), c);
        let root = h.root;
        let mut rng = Rng(0xC0FFEE + seq);
        let mut live = [0u64; SLOTS]; // slot lengths, mirrored from the committed state
        let mut nodes = 0u64;
        for op in 0..ops {
            // A transaction of 1-4 random actions; some abort.
            let n = 1 + rng.below(4);
            let mut actions = Vec::new();
            let mut sim_live = live;
            let mut sim_nodes = nodes;
            for _ in 0..n {
                let i = rng.below(SLOTS as u64 - 1) as usize; // the last slot is the exerciser's
                let a = match rng.below(6) {
                    0 => (0, i, rng.next()),
                    1 if sim_live[i] != 0 => (1, i, rng.next()),
                    2 if sim_live[i] == 0 => {
                        sim_live[i] = [64, 512][rng.below(2) as usize];
                        (2, i, sim_live[i])
                    }
                    3 if sim_live[i] != 0 => {
                        sim_live[i] = 0;
                        (3, i, 0)
                    }
                    4 => {
                        sim_nodes += 1;
                        (4, i, rng.next())
                    }
                    5 if sim_nodes > 0 => {
                        sim_nodes -= 1;
                        (5, i, 0)
                    }
                    _ => (0, i, rng.next()),
                };
                actions.push(a);
            }
            let outcome = rng.below(8); // 0: error abort, 1: failed nested, else commit
            let body = |tx: &mut Tx<'_>| -> Result<(), TxError> {
                for &(kind, i, v) in &actions {
                    match kind {
                        0 => tx.get_mut(root)?.vals[i % 8] = v,
                        1 => {
                            let len = tx.get(root)?.slots[i][1];
                            write_slot(tx, root, i, v % (len / 8), v)?
                        }
                        2 => alloc_slot(tx, root, i, v, op)?,
                        3 => {
                            free_slot(tx, root, i)?;
                        }
                        4 => {
                            push_node(tx, root, v)?;
                        }
                        _ => {
                            pop_node(tx, root)?;
                        }
                    }
                }
                Ok(())
            };
            match outcome {
                0 => h.step(false, |pool| {
                    let e = pool.transaction(|tx| {
                        body(tx)?;
                        Err::<(), _>(TxError::Aborted)
                    });
                    assert!(matches!(e, Err(TxError::Aborted)));
                }),
                1 => h.step(false, |pool| {
                    let e = pool.transaction(|tx| {
                        let _ = tx.nested(|tx| {
                            body(tx)?;
                            Err::<(), _>(TxError::Null)
                        });
                        Ok::<_, TxError>(())
                    });
                    assert!(matches!(e, Err(TxError::Aborted)));
                }),
                _ => {
                    h.tx(|tx| tx.nested(body));
                    live = sim_live;
                    nodes = sim_nodes;
                }
            }
        }
        total.add(h.finish());
    }
    println!(
        "random: crash images checked: {} (+ {} images of {} crashed recoveries), {} steps",
        total.images, total.recovery_images, total.recoveries_crashed, total.steps
    );
    assert!(total.images > 0);
}
