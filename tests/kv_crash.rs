//! Crash-state exploration of the key-value example's map (`examples/kv/map.rs`, compiled in
//! here) in the simulated persistence domain.
//!
//! A seeded sequence of puts (new keys and overwrites, keys of 0–48 bytes, values of 0–4000
//! bytes) and deletes (present and absent keys) runs on a map in a simulated pool. Its crash
//! hook, at **every drain**, takes the possible crash images (every subset of the lines in
//! flight when there are at most 3, else 8 seeded samples including "none written back" and
//! "all written back"; `PMSTORE_KV_CRASH_EXHAUSTIVE` and `PMSTORE_KV_CRASH_SAMPLES` raise
//! these, at about 5 ms per image in a debug build), recovers each one
//! (`Pool::open_simulated` + `Pool::from_raw`), opens the map on it and checks the oracle:
//!
//! * the map's contents — every `(key, value)` by iteration, and `len` — equal the model
//!   (a `BTreeMap`) before or after the operation in progress, never anything in between; a
//!   point lookup of the operation's key agrees;
//! * the map's own structure check ([`Kv::check`]) passes: tables, probe runs, hashes, the
//!   migration cursor, every striped length counter;
//! * every allocated block (`Heap::for_each_allocated`) is reachable from the map exactly
//!   once, and every reachable block is allocated;
//! * pool and log checksums hold (an image whose header or committed log fails its checksum
//!   fails to open or recover, which is reported);
//! * on every 8th image, the recovered map takes a put and a delete and checks again.
//!
//! The keys are chosen so that 70% of the puts go to 16 "hot" keys that share one striped
//! length counter and whose every mutation runs a migration step during a resize: the first
//! table (1024 slots) allows 8 entries per counter, so the map starts an incremental resize
//! within the first ~30 operations, and migrates it to the end (64 steps, the last one freeing
//! the old table) within the default run; the test asserts both happened.
//!
//! Cost: the simulated domain compares the whole 8 MiB pool with its media image at every
//! drain (~40 ms in a debug build) and each image costs ~5 ms to recover and check, so the
//! default run (~270 drains, ~2,100 images) takes ~35 s on 2 busy cores (load 5.5).
//!
//! Knobs: `PMSTORE_KV_CRASH_OPS` (default 140) operations, `PMSTORE_KV_CRASH_SEED` the seed.

#[allow(dead_code)]
#[path = "../examples/kv/map.rs"]
mod map;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use map::{Kv, DEFAULT_INITIAL_SLOTS, LAYOUT};
use pmstore::pool::sim::CrashPoint;
use pmstore::{CreateOptions, OpenOptions};

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

/// The striped length counter most keys of the workload fall into (top 6 bits of the hash).
const HOT: u64 = 0x2a;
/// Lines in flight up to which every crash image is checked; samples per drain beyond.
const EXHAUSTIVE: usize = 3;
const SAMPLES: usize = 8;
const DEFAULT_SEED: u64 = 0x6b76_c4a5;
/// Every this many images, the recovered map is also exercised (put + delete + check).
const EXERCISE_EVERY: usize = 8;

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// A small deterministic generator (SplitMix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// The operation in progress, with the model before and after it.
struct InProgress {
    step: usize,
    what: String,
    key: Vec<u8>,
    before: Model,
    after: Model,
}

#[derive(Default)]
struct Tally {
    images: usize,
    drains: usize,
    before: usize,
    after: usize,
    both: usize,
    exercised: usize,
    errors: Vec<String>,
}

/// Which state a recovered image showed.
enum Outcome {
    Before,
    After,
    /// The operation changes nothing observable (before == after).
    Both,
}

fn show(k: &[u8]) -> String {
    if k.len() <= 12 {
        format!("\"{}\"", k.escape_ascii())
    } else {
        format!("\"{}\"..({} bytes)", k[..12].escape_ascii(), k.len())
    }
}

/// A short description of how `got` differs from `want`.
fn diff(got: &Model, want: &Model) -> String {
    let mut d = Vec::new();
    for (k, v) in got {
        match want.get(k) {
            None => d.push(format!("extra key {}", show(k))),
            Some(w) if w != v => d.push(format!(
                "key {}: value of {} bytes, want {} bytes{}",
                show(k),
                v.len(),
                w.len(),
                if v.len() == w.len() {
                    " (contents differ)"
                } else {
                    ""
                }
            )),
            Some(_) => {}
        }
    }
    for k in want.keys() {
        if !got.contains_key(k) {
            d.push(format!("missing key {}", show(k)));
        }
    }
    let n = d.len();
    d.truncate(4);
    format!("{} differences: {}", n, d.join("; "))
}

/// Recovers `img`, opens the map and checks the oracle against the operation in progress.
fn check_image(img: &[u8], ip: &InProgress, exercise: bool) -> Result<Outcome, String> {
    let (raw, _sim) = pmstore::pool::Pool::open_simulated(img, &OpenOptions::new(LAYOUT))
        .map_err(|e| format!("open: {e}"))?;
    let pool = pmstore::Pool::from_raw(raw).map_err(|e| format!("recovery: {e}"))?;
    let kv = Kv::from_pool(pool).map_err(|e| format!("opening the map: {e}"))?;
    let report = kv.check().map_err(|e| format!("map check: {e}"))?;

    // Every allocated block reachable exactly once; every reachable block allocated.
    let mut reached: HashMap<u64, u32> = HashMap::new();
    for &b in &report.blocks {
        *reached.entry(b).or_default() += 1;
    }
    let mut problems = Vec::new();
    for (&b, &n) in &reached {
        if n > 1 {
            problems.push(format!("block {b:#x} reached {n} times"));
        }
    }
    let mut allocated = Vec::new();
    let p = kv.pool();
    p.heap()
        .for_each_allocated(p.raw(), |off, size| allocated.push((off, size)))
        .map_err(|e| format!("heap scan: {e}"))?;
    for &(off, size) in &allocated {
        if reached.remove(&off).is_none() {
            problems.push(format!("leak: block {off:#x} ({size} bytes) not reachable"));
        }
    }
    for off in reached.keys() {
        problems.push(format!("block {off:#x} reachable but not allocated"));
    }
    if !problems.is_empty() {
        problems.sort();
        let n = problems.len();
        problems.truncate(4);
        return Err(format!(
            "allocator vs map ({} live, {} reached): {n} problems: {}",
            allocated.len(),
            report.blocks.len(),
            problems.join("; ")
        ));
    }

    // Contents: before or after, never in between.
    let entries = kv.entries().map_err(|e| format!("entries: {e}"))?;
    let len = kv.len().map_err(|e| format!("len: {e}"))?;
    let got: Model = entries.iter().cloned().collect();
    if got.len() != entries.len() {
        return Err(format!(
            "iteration yields {} entries, {} distinct keys",
            entries.len(),
            got.len()
        ));
    }
    if len != entries.len() as u64 || report.entries != len || report.len != len {
        return Err(format!(
            "len {len}, iteration {}, check found {} entries and counters summing to {}",
            entries.len(),
            report.entries,
            report.len
        ));
    }
    let outcome = match (got == ip.before, got == ip.after) {
        (true, true) => Outcome::Both,
        (true, false) => Outcome::Before,
        (false, true) => Outcome::After,
        (false, false) => {
            return Err(format!(
                "neither before nor after: vs before {}; vs after {}",
                diff(&got, &ip.before),
                diff(&got, &ip.after)
            ))
        }
    };
    let want = match outcome {
        Outcome::After => ip.after.get(&ip.key),
        _ => ip.before.get(&ip.key),
    };
    let v = kv.get(&ip.key).map_err(|e| format!("get: {e}"))?;
    if v.as_ref() != want {
        return Err(format!(
            "get({}) = {:?} bytes, iteration says {:?} bytes",
            show(&ip.key),
            v.map(|v| v.len()),
            want.map(|v| v.len())
        ));
    }

    // The recovered map is usable.
    if exercise {
        let k = b"\xffexercise key";
        let run = || -> Result<(), map::KvError> {
            kv.put(k, b"exercise value")?;
            if kv.get(k)?.as_deref() != Some(&b"exercise value"[..]) {
                return Err(map::KvError::Corrupt("exercise put not visible".into()));
            }
            kv.delete(k)?;
            let r = kv.check()?;
            kv.check_allocator(&r)?;
            if kv.len()? != len {
                return Err(map::KvError::Corrupt("len changed by put + delete".into()));
            }
            Ok(())
        };
        run().map_err(|e| format!("exercising the recovered map: {e}"))?;
    }
    Ok(outcome)
}

/// Checks the crash images of one crash point (in parallel), recording into `tally`.
fn explore(cp: &CrashPoint<'_>, ip: &InProgress, seed: u64, tally: &Mutex<Tally>, n: &AtomicUsize) {
    let exhaustive = knob("PMSTORE_KV_CRASH_EXHAUSTIVE", EXHAUSTIVE as u64) as usize;
    let samples = knob("PMSTORE_KV_CRASH_SAMPLES", SAMPLES as u64) as usize;
    let images = Mutex::new(cp.images(exhaustive, samples, seed).enumerate());
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(4);
    tally.lock().unwrap().drains += 1;
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let Some((i, img)) = images.lock().unwrap().next() else {
                    break;
                };
                let exercise = n.fetch_add(1, Ordering::Relaxed) % EXERCISE_EVERY == 0;
                let r = check_image(&img, ip, exercise);
                let mut t = tally.lock().unwrap();
                t.images += 1;
                t.exercised += usize::from(exercise);
                match r {
                    Ok(Outcome::Before) => t.before += 1,
                    Ok(Outcome::After) => t.after += 1,
                    Ok(Outcome::Both) => t.both += 1,
                    Err(e) => t.errors.push(format!(
                        "step {} ({}), drain {}, image {i} of {} lines in flight: {e}",
                        ip.step,
                        ip.what,
                        cp.drain,
                        cp.in_flight.len()
                    )),
                }
            });
        }
    });
}

/// Keys: `hot` ones all counted by length counter [`HOT`], and `cold` ones anywhere; distinct,
/// 0 to 48 bytes long.
fn make_keys(rng: &mut Rng, hot: usize, cold: usize) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut seen = HashSet::new();
    let (mut h, mut c) = (Vec::new(), Vec::new());
    let mut i = 0u32;
    while h.len() < hot || c.len() < cold {
        let len = rng.below(49) as usize;
        let mut k = rng.bytes(len);
        if len >= 4 {
            k[..4].copy_from_slice(&i.to_le_bytes());
        }
        i += 1;
        if !seen.insert(k.clone()) {
            continue;
        }
        let x = map::hash(&k);
        // Hot: counted by counter `HOT`, and a key whose every mutation runs a migration step
        // during a resize (`map::migrates`: bits 52 and 53 of the hash clear).
        if x >> 58 == HOT && (x >> 52) % map::MIGRATE_EVERY == 0 {
            if h.len() < hot {
                h.push(k);
            }
        } else if c.len() < cold {
            c.push(k);
        }
    }
    (h, c)
}

#[test]
fn every_crash_image_of_kv_puts_and_deletes_is_before_or_after() {
    let ops = knob("PMSTORE_KV_CRASH_OPS", 140) as usize;
    let seed = knob("PMSTORE_KV_CRASH_SEED", DEFAULT_SEED);
    let t0 = Instant::now();
    let (raw, sim) =
        pmstore::pool::Pool::create_simulated(&CreateOptions::new(LAYOUT, 8 << 20)).unwrap();
    let pool = pmstore::Pool::from_raw(raw).unwrap();
    let kv = Kv::from_pool(pool).unwrap();
    assert_eq!(kv.stats().unwrap().slots, DEFAULT_INITIAL_SLOTS);

    let mut model = Model::new();
    let shared = Arc::new(Mutex::new(InProgress {
        step: 0,
        what: "initial state".into(),
        key: Vec::new(),
        before: model.clone(),
        after: model.clone(),
    }));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let counter = Arc::new(AtomicUsize::new(0));
    let hook = {
        let (shared, tally, counter) = (shared.clone(), tally.clone(), counter.clone());
        move |cp: &CrashPoint<'_>| explore(cp, &shared.lock().unwrap(), seed, &tally, &counter)
    };
    sim.with_crash_point(|cp| hook(cp)); // the empty map
    sim.set_crash_hook(hook.clone());

    let mut rng = Rng(seed);
    let (hot, cold) = make_keys(&mut rng, 16, 80);
    let (mut resize_started, mut resize_finished) = (None, None);
    let (mut puts, mut overwrites, mut deletes, mut absent_deletes) = (0, 0, 0, 0);
    for step in 0..ops {
        let r = rng.below(10);
        // A put of a random key (new or present), an overwrite of a present key, or a delete
        // (of a present key mostly).
        let (put, key) = if r < 6 || model.is_empty() {
            let keys = if rng.below(10) < 7 { &hot } else { &cold };
            (true, keys[rng.below(keys.len() as u64) as usize].clone())
        } else if r < 8 {
            let i = rng.below(model.len() as u64) as usize;
            (true, model.keys().nth(i).unwrap().clone())
        } else if rng.below(5) != 0 {
            let i = rng.below(model.len() as u64) as usize;
            (false, model.keys().nth(i).unwrap().clone())
        } else {
            let keys = if rng.below(2) == 0 { &hot } else { &cold };
            (false, keys[rng.below(keys.len() as u64) as usize].clone())
        };
        let value = if put {
            let len = if rng.below(10) == 0 {
                rng.below(4000)
            } else {
                rng.below(300)
            };
            Some(rng.bytes(len as usize))
        } else {
            None
        };
        let mut after = model.clone();
        let present = match &value {
            Some(v) => after.insert(key.clone(), v.clone()).is_some(),
            None => after.remove(&key).is_some(),
        };
        let what = match &value {
            Some(v) => format!(
                "put {} = {} bytes ({})",
                show(&key),
                v.len(),
                if present { "overwrite" } else { "new" }
            ),
            None => format!(
                "delete {} ({})",
                show(&key),
                if present { "present" } else { "absent" }
            ),
        };
        match (&value, present) {
            (Some(_), false) => puts += 1,
            (Some(_), true) => overwrites += 1,
            (None, true) => deletes += 1,
            (None, false) => absent_deletes += 1,
        }
        *shared.lock().unwrap() = InProgress {
            step,
            what: what.clone(),
            key: key.clone(),
            before: model.clone(),
            after: after.clone(),
        };
        let res = match &value {
            Some(v) => kv.put(&key, v),
            None => kv.delete(&key),
        };
        assert_eq!(res.unwrap(), present, "step {step}: {what}");
        model = after;
        let st = kv.stats().unwrap();
        if st.old_slots > 0 && resize_started.is_none() {
            resize_started = Some(step);
        }
        if st.old_slots == 0 && st.slots > DEFAULT_INITIAL_SLOTS && resize_finished.is_none() {
            resize_finished = Some(step);
        }
    }
    sim.clear_crash_hook();
    {
        let mut ip = shared.lock().unwrap();
        ip.what = "final state".into();
        ip.before = model.clone();
        ip.after = model.clone();
    }
    sim.with_crash_point(|cp| hook(cp)); // the final state

    // The live map agrees with the model too.
    let r = kv.check().unwrap();
    kv.check_allocator(&r).unwrap();
    let live: Model = kv.entries().unwrap().into_iter().collect();
    assert_eq!(live, model);

    let t = tally.lock().unwrap();
    let st = kv.stats().unwrap();
    println!(
        "crash images checked: {} at {} drains ({} before, {} after, {} unchanged; {} exercised) \
         over {ops} ops ({puts} new puts, {overwrites} overwrites, {deletes} deletes, \
         {absent_deletes} deletes of absent keys); resize started at step {resize_started:?}, \
         finished at step {resize_finished:?}; final {st:?}; seed {seed:#x}; {:?}",
        t.images,
        t.drains,
        t.before,
        t.after,
        t.both,
        t.exercised,
        t0.elapsed()
    );
    assert!(
        t.errors.is_empty(),
        "{} bad images: {:#?}",
        t.errors.len(),
        &t.errors[..t.errors.len().min(5)]
    );
    assert!(t.images >= ops, "only {} images", t.images);
    assert!(t.before > 0 && t.after > 0, "both outcomes seen");
    // (Other seeds or shorter runs may end before the migration does.)
    if seed == DEFAULT_SEED && ops >= 140 {
        assert!(resize_started.is_some(), "the workload started a resize");
        assert!(resize_finished.is_some(), "the workload finished a resize");
    }
}
