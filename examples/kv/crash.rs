//! The kill -9 test of the kv map, shared by the `kv crash-test` command and `tests/kv.rs`.
//!
//! A child process opens the pool (running recovery) and applies a deterministic sequence of
//! operations (puts of new and existing keys, deletes) derived from a seed, writing `op <i>` to
//! its standard output after operation `i` committed. The parent kills it with SIGKILL at a
//! random moment, reads what it reported, reopens the pool and checks:
//!
//! * the structure ([`Kv::check`]) and that the allocator holds exactly the blocks the map
//!   reaches ([`Kv::check_allocator`]): no leak, nothing dangling;
//! * `len` equals the number of entries iteration finds;
//! * every entry is well formed: its key names a key of the test and its value is exactly the
//!   bytes of one of that key's versions (a partially written value fails);
//! * the map equals the model of every reported operation, or that model plus the one
//!   operation that was in flight when the child died (committed but not reported yet).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdout};
use std::time::{Duration, Instant};

use crate::map::{Kv, KvError};
use pmstore::ModeRequest;

/// The child of kill `k` draws its keys from the first `KEYS_PER_KILL × (k + 1)` key ids, so
/// the map keeps growing from kill to kill and kills land during resizes.
pub const KEYS_PER_KILL: u64 = 2000;
/// Values are 16 to `16 + MAX_EXTRA` bytes.
pub const MAX_EXTRA: u64 = 600;
/// Percentage of operations that are deletes.
pub const DELETE_PERCENT: u64 = 20;

/// splitmix64.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// One operation of a child.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Set key `kid` to its value of version `version`.
    Put {
        /// Key id.
        kid: u64,
        /// Value version (unique over the whole test).
        version: u64,
    },
    /// Delete key `kid` (whether present or not).
    Del {
        /// Key id.
        kid: u64,
    },
}

/// Operation `i` of the child with seed `seed` (the child of kill `seed % 1000`).
pub fn op(seed: u64, i: u64) -> Op {
    let r = mix(mix(seed) ^ i);
    let kid = r % (KEYS_PER_KILL * (seed % 1000 + 1));
    if (r >> 40) % 100 < DELETE_PERCENT {
        Op::Del { kid }
    } else {
        Op::Put {
            kid,
            version: (seed << 32) | i,
        }
    }
}

/// The key of id `kid`: 4 to 70 bytes.
pub fn key(kid: u64) -> Vec<u8> {
    let mut k = format!("k{kid}:").into_bytes();
    k.resize(k.len() + (mix(kid) % 64) as usize, b'.');
    k
}

/// The value of key `kid` at `version`: its ids, then pseudo-random bytes.
pub fn value(kid: u64, version: u64) -> Vec<u8> {
    let len = 16 + mix(kid ^ version.rotate_left(17)) % (MAX_EXTRA + 1);
    let mut v = Vec::with_capacity(len as usize);
    v.extend_from_slice(&kid.to_le_bytes());
    v.extend_from_slice(&version.to_le_bytes());
    let mut x = mix(version ^ kid);
    while v.len() < len as usize {
        x = mix(x);
        let take = (len as usize - v.len()).min(8);
        v.extend_from_slice(&x.to_le_bytes()[..take]);
    }
    v
}

/// The `(kid, version)` of a well-formed entry, or why it is not one.
pub fn parse_entry(k: &[u8], v: &[u8]) -> Result<(u64, u64), String> {
    if v.len() < 16 {
        return Err(format!(
            "value of {} bytes under key {:?}",
            v.len(),
            k.escape_ascii()
        ));
    }
    let kid = u64::from_le_bytes(v[..8].try_into().unwrap());
    let version = u64::from_le_bytes(v[8..16].try_into().unwrap());
    if key(kid) != k {
        return Err(format!(
            "key {:?} holds a value of key id {kid}",
            k.escape_ascii()
        ));
    }
    if value(kid, version) != v {
        return Err(format!(
            "key {:?}: value of version {version:#x} is not the bytes that were put (partial?)",
            k.escape_ascii()
        ));
    }
    Ok((kid, version))
}

/// What the map must hold: key id → version.
pub type Model = HashMap<u64, u64>;

/// Applies `op` to a model.
pub fn apply(model: &mut Model, op: Op) {
    match op {
        Op::Put { kid, version } => {
            model.insert(kid, version);
        }
        Op::Del { kid } => {
            model.remove(&kid);
        }
    }
}

/// Applies `op` to the map.
///
/// # Errors
/// The map's.
pub fn run_op(kv: &Kv, op: Op) -> Result<(), KvError> {
    match op {
        Op::Put { kid, version } => kv.put(&key(kid), &value(kid, version)).map(|_| ()),
        Op::Del { kid } => kv.delete(&key(kid)).map(|_| ()),
    }
}

/// The child: opens the pool and runs operations forever, reporting each commit.
pub fn child(path: &Path, mode: ModeRequest, seed: u64) -> Result<(), KvError> {
    let kv = Kv::open(path, mode)?;
    let mut out = std::io::stdout().lock();
    for i in 0.. {
        run_op(&kv, op(seed, i))?;
        // One write per line: a pipe write of this size is atomic.
        let line = format!("op {i}\n");
        if out
            .write_all(line.as_bytes())
            .and_then(|()| out.flush())
            .is_err()
        {
            break;
        }
    }
    Ok(())
}

/// Reads a child's reports until it dies: the number of operations it reported.
fn count_reports(stdout: ChildStdout) -> Result<u64, String> {
    let mut n = 0u64;
    for line in BufReader::new(stdout).split(b'\n') {
        let line = line.map_err(|e| format!("reading the child's reports: {e}"))?;
        let Some(i) = line.strip_prefix(b"op ") else {
            continue; // test-harness chatter
        };
        let i: u64 = std::str::from_utf8(i)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad report line {:?}", line.escape_ascii()))?;
        if i != n {
            return Err(format!("report {i} out of order (expected {n})"));
        }
        n += 1;
    }
    Ok(n)
}

/// Verifies the map against the model after a crash; `pending` is the operation that may or
/// may not have committed. Returns whether it did (the caller then applies it to the model).
///
/// # Errors
/// What is wrong.
pub fn verify(kv: &Kv, model: &Model, pending: Option<Op>) -> Result<bool, String> {
    let report = kv.check().map_err(|e| e.to_string())?;
    kv.check_allocator(&report).map_err(|e| e.to_string())?;
    let entries = kv.entries().map_err(|e| e.to_string())?;
    let len = kv.len().map_err(|e| e.to_string())?;
    if len != entries.len() as u64 || report.entries != len {
        return Err(format!(
            "len says {len}, iteration finds {} entries, check {}",
            entries.len(),
            report.entries
        ));
    }
    let mut actual = Model::new();
    for (k, v) in &entries {
        let (kid, version) = parse_entry(k, v)?;
        if actual.insert(kid, version).is_some() {
            return Err(format!("key id {kid} twice"));
        }
    }
    if actual == *model {
        return Ok(false);
    }
    if let Some(op) = pending {
        let mut after = model.clone();
        apply(&mut after, op);
        if actual == after {
            return Ok(true);
        }
    }
    // Describe the first difference.
    for (kid, v) in model {
        match actual.get(kid) {
            None => {
                return Err(format!(
                    "reported put of key id {kid} (version {v:#x}) is missing"
                ))
            }
            Some(a) if a != v => {
                return Err(format!(
                    "key id {kid}: version {a:#x} found, {v:#x} was the last reported"
                ))
            }
            _ => {}
        }
    }
    for kid in actual.keys() {
        if !model.contains_key(kid) {
            return Err(format!(
                "key id {kid} is present but was reported deleted / never put"
            ));
        }
    }
    Err("the map differs from the model".into())
}

/// Summary of a kill loop.
#[derive(Debug, Default)]
pub struct Summary {
    /// Kills done.
    pub kills: u32,
    /// Operations reported committed, over all children.
    pub reported: u64,
    /// Kills after which the in-flight operation turned out to be committed.
    pub in_flight_committed: u32,
    /// Entries at the end.
    pub entries: u64,
    /// Table slots at the end.
    pub slots: u64,
    /// Kills that landed during a resize (the map had an old table at the check).
    pub during_resize: u32,
}

/// The kill loop: `kills` times, start a child with `spawn(seed)` (stdout piped), kill it
/// after a random delay of up to `max_delay`, reopen the pool at `path` with `open`, verify.
/// `progress` is told about each round.
///
/// # Errors
/// The first failed verification (the pool is left as it is).
pub fn kill_loop(
    path: &Path,
    kills: u32,
    base_seed: u64,
    max_delay: Duration,
    mut spawn: impl FnMut(u64) -> std::io::Result<Child>,
    open: impl Fn(&Path) -> Result<Kv, KvError>,
    mut progress: impl FnMut(u32, &Summary),
) -> Result<Summary, String> {
    let mut model = Model::new();
    let mut s = Summary::default();
    {
        let kv = open(path).map_err(|e| format!("opening {}: {e}", path.display()))?;
        verify(&kv, &model, None).map_err(|e| format!("before the first kill: {e}"))?;
    }
    if base_seed >= 1 << 20 || kills > 1000 {
        return Err("the base seed must be below 2^20 and kills at most 1000".into());
    }
    let mut rng = mix(base_seed ^ 0x5eed);
    for k in 0..kills {
        // Below 2^30 (versions are `seed << 32 | i`); `seed % 1000` is the kill number.
        let seed = base_seed * 1000 + u64::from(k);
        let mut child = spawn(seed).map_err(|e| format!("starting the child: {e}"))?;
        let stdout = child.stdout.take().expect("child stdout is piped");
        let reader = std::thread::spawn(move || count_reports(stdout));
        rng = mix(rng);
        let delay = max_delay.mul_f64((rng >> 11) as f64 / (1u64 << 53) as f64);
        let t0 = Instant::now();
        std::thread::sleep(delay);
        if let Ok(Some(status)) = child.try_wait() {
            let _ = reader.join();
            return Err(format!(
                "the child exited on its own ({status}) after {:?}",
                t0.elapsed()
            ));
        }
        child.kill().map_err(|e| format!("kill: {e}"))?; // SIGKILL
        let _ = child.wait();
        let n = reader
            .join()
            .map_err(|_| "reader thread panicked".to_string())??;
        for i in 0..n {
            apply(&mut model, op(seed, i));
        }
        s.reported += n;
        let kv = open(path).map_err(|e| format!("kill {k}: reopening: {e}"))?;
        let committed = verify(&kv, &model, Some(op(seed, n)))
            .map_err(|e| format!("kill {k} (seed {seed}, {n} ops reported): {e}"))?;
        if committed {
            apply(&mut model, op(seed, n));
            s.in_flight_committed += 1;
        }
        let st = kv.stats().map_err(|e| e.to_string())?;
        if st.old_slots > 0 {
            s.during_resize += 1;
        }
        s.kills = k + 1;
        s.entries = st.len;
        s.slots = st.slots;
        progress(k, &s);
    }
    Ok(s)
}
