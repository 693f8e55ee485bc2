//! Tests of the key-value example's map (`examples/kv/map.rs`, compiled in here): against a
//! `HashMap` model across resizes and reopening, limits, a full pool, foreign pools,
//! concurrent writers, and real kill -9 crashes (the test binary re-executes itself as the
//! child, like `alloc/tests/redo.rs`). Pools live on /dev/shm in forced-flush mode.

#[allow(dead_code)]
#[path = "../examples/kv/map.rs"]
mod map;

#[allow(dead_code)]
#[path = "../examples/kv/crash.rs"]
mod crash;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use map::{Kv, KvError, MAX_KEY, MAX_VALUE};
use pmstore::{CreateOptions, ModeRequest, Pool, TxError};

const MODE: ModeRequest = ModeRequest::Flush;

fn scratch(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap();
    let path = dir.path().join(name);
    (dir, path)
}

/// Full structural check + allocator accounting + len/iteration agreement; returns the
/// entries as a map.
fn verify(kv: &Kv) -> HashMap<Vec<u8>, Vec<u8>> {
    let r = kv.check().unwrap();
    kv.check_allocator(&r).unwrap();
    let entries = kv.entries().unwrap();
    assert_eq!(kv.len().unwrap(), entries.len() as u64);
    assert_eq!(r.entries, entries.len() as u64);
    let map: HashMap<_, _> = entries.into_iter().collect();
    assert_eq!(map.len() as u64, r.entries, "no duplicate keys");
    map
}

/// A small deterministic generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = crash::mix(self.0);
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

#[test]
fn hash_is_stable() {
    // The table layout depends on these: they must never change. (Values computed by an
    // independent implementation of the documented algorithm.)
    assert_eq!(map::hash(b""), 0);
    assert_eq!(
        map::hash(b"a"),
        0xcc3d_2460_ee6e_2e6c,
        "{:#x}",
        map::hash(b"a")
    );
    assert_eq!(
        map::hash(b"hello, world"),
        0x4fd7_b9aa_0e46_734f,
        "{:#x}",
        map::hash(b"hello, world")
    );
    assert_ne!(map::hash(b"ab"), map::hash(b"ba"));
    assert_ne!(map::hash(b"a"), map::hash(b"a\0"));
}

#[test]
fn random_ops_match_a_model_across_resizes_and_reopen() {
    let (_d, path) = scratch("model.pool");
    // A 64-slot first table: the map resizes six times or so on the way.
    let kv = Kv::create_with(&path, 64 << 20, MODE, 64).unwrap();
    let mut model: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    let mut rng = Rng(42);
    let keys: Vec<Vec<u8>> = (0..1200)
        .map(|i| {
            let len = if i == 0 { 0 } else { rng.below(200) as usize };
            let mut k = rng.bytes(len);
            if len >= 4 {
                k[..4].copy_from_slice(&(i as u32).to_le_bytes()); // distinct
            }
            k
        })
        .collect();
    let mut resizes_seen = 0;
    let mut last_slots = 0;
    for step in 0..4000 {
        let k = &keys[rng.below(keys.len() as u64) as usize];
        match rng.below(10) {
            0..=5 => {
                let len = rng.below(2000) as usize;
                let v = rng.bytes(len);
                let replaced = kv.put(k, &v).unwrap();
                assert_eq!(
                    replaced,
                    model.insert(k.clone(), v).is_some(),
                    "step {step}"
                );
            }
            6 | 7 => {
                assert_eq!(
                    kv.delete(k).unwrap(),
                    model.remove(k).is_some(),
                    "step {step}"
                );
            }
            _ => {
                assert_eq!(kv.get(k).unwrap().as_ref(), model.get(k), "step {step}");
            }
        }
        if step % 500 == 499 {
            assert_eq!(verify(&kv), model, "step {step}");
        }
        let st = kv.stats().unwrap();
        if st.slots != last_slots {
            resizes_seen += 1;
            last_slots = st.slots;
        }
    }
    assert!(
        resizes_seen >= 4,
        "the test went through resizes ({resizes_seen})"
    );
    assert_eq!(verify(&kv), model);
    // Every key of the model, and absent keys, through get.
    for k in &keys {
        assert_eq!(kv.get(k).unwrap().as_ref(), model.get(k));
        assert_eq!(kv.contains(k).unwrap(), model.contains_key(k));
    }
    let mut n = 0;
    kv.for_each(|k, v| {
        assert_eq!(model.get(k).map(Vec::as_slice), Some(v));
        n += 1;
    })
    .unwrap();
    assert_eq!(n, model.len());
    drop(kv);
    let kv = Kv::open(&path, MODE).unwrap();
    assert_eq!(verify(&kv), model, "after reopening");
    // Deleting everything leaves only the root and the table.
    for k in model.keys() {
        assert!(kv.delete(k).unwrap());
    }
    kv.finish_resize().unwrap();
    let r = kv.check().unwrap();
    kv.check_allocator(&r).unwrap();
    assert_eq!((r.entries, r.blocks.len()), (0, 2));
    assert!(kv.is_empty().unwrap());
}

#[test]
fn reopen_in_the_middle_of_a_resize() {
    let (_d, path) = scratch("resize.pool");
    let kv = Kv::create_with(&path, 32 << 20, MODE, 64).unwrap();
    let mut i = 0u64;
    // Insert until a resize is in progress.
    while kv.stats().unwrap().old_slots == 0 || i < 200 {
        kv.put(&i.to_le_bytes(), &i.to_be_bytes()).unwrap();
        i += 1;
    }
    let st = kv.stats().unwrap();
    assert!(st.old_slots > 0 && st.migrated < st.old_slots, "{st:?}");
    drop(kv);
    let kv = Kv::open(&path, MODE).unwrap();
    assert_eq!(kv.stats().unwrap().old_slots, st.old_slots);
    assert_eq!(verify(&kv).len() as u64, i);
    // Deletes and overwrites of keys in either table during the resize.
    for j in (0..i).step_by(3) {
        assert!(kv.delete(&j.to_le_bytes()).unwrap());
    }
    for j in (1..i).step_by(3) {
        assert!(kv.put(&j.to_le_bytes(), b"new").unwrap());
    }
    verify(&kv);
    kv.finish_resize().unwrap();
    assert_eq!(kv.stats().unwrap().old_slots, 0);
    let m = verify(&kv);
    for j in 0..i {
        let want = match j % 3 {
            0 => None,
            1 => Some(b"new".to_vec()),
            _ => Some(j.to_be_bytes().to_vec()),
        };
        assert_eq!(m.get(&j.to_le_bytes()[..]), want.as_ref(), "key {j}");
    }
}

#[test]
fn limits_are_refused_and_change_nothing() {
    let (_d, path) = scratch("limits.pool");
    let kv = Kv::create(&path, 16 << 20, MODE).unwrap();
    kv.put(b"k", b"v").unwrap();
    let before = kv.pool().counters();
    let big_key = vec![7u8; MAX_KEY + 1];
    let e = kv.put(&big_key, b"v").unwrap_err();
    assert!(
        matches!(e, KvError::KeyTooLarge { len } if len == MAX_KEY + 1),
        "{e}"
    );
    assert!(e.to_string().contains("larger than the limit"), "{e}");
    let e = kv.put(b"k", &vec![0u8; MAX_VALUE + 1]).unwrap_err();
    assert!(matches!(e, KvError::ValueTooLarge { .. }), "{e}");
    assert_eq!(kv.pool().counters(), before, "nothing was written");
    assert_eq!(kv.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
    assert_eq!(kv.get(&big_key).unwrap(), None);
    assert!(!kv.delete(&big_key).unwrap());
    // The limits themselves are accepted.
    let key = vec![1u8; MAX_KEY];
    let value: Vec<u8> = (0..MAX_VALUE).map(|i| (i * 7) as u8).collect();
    assert!(!kv.put(&key, &value).unwrap());
    assert_eq!(kv.get(&key).unwrap().as_ref(), Some(&value));
    let m = verify(&kv);
    assert_eq!(m.len(), 2);
    drop(kv);
    let kv = Kv::open(&path, MODE).unwrap();
    assert_eq!(kv.get(&key).unwrap().as_ref(), Some(&value));
}

#[test]
fn a_full_pool_fails_cleanly_and_stays_usable() {
    let (_d, path) = scratch("full.pool");
    let kv = Kv::create(&path, 8 << 20, MODE).unwrap();
    let value = |i: u64| vec![i as u8; 1000];
    let mut n = 0u64;
    let err = loop {
        match kv.put(&n.to_le_bytes(), &value(n)) {
            Ok(false) => n += 1,
            Ok(true) => panic!("fresh key {n} reported as replaced"),
            Err(e) => break e,
        }
        assert!(n < 100_000, "an 8 MiB pool never filled up");
    };
    assert!(err.is_full(), "{err}");
    assert!(err.to_string().contains("pool is full"), "{err}");
    assert!(n > 1000, "only {n} puts fitted");
    // Nothing partial: exactly the successful puts, structure and allocator consistent.
    let m = verify(&kv);
    assert_eq!(m.len() as u64, n);
    // A big value does not fit either, and changes nothing.
    let before = kv.pool().counters();
    assert!(kv.put(b"big", &vec![1u8; 512 << 10]).unwrap_err().is_full());
    assert_eq!(kv.pool().counters().drains, before.drains);
    // Overwrites need a new entry first: refused too, old value kept.
    assert!(kv
        .put(&0u64.to_le_bytes(), &[9u8; 1000])
        .is_err_and(|e| e.is_full()));
    assert_eq!(kv.get(&0u64.to_le_bytes()).unwrap(), Some(value(0)));
    // Gets and deletes work; after deletes, puts work again.
    for i in 0..n {
        assert_eq!(kv.get(&i.to_le_bytes()).unwrap(), Some(value(i)), "key {i}");
    }
    for i in (0..n).step_by(2) {
        assert!(kv.delete(&i.to_le_bytes()).unwrap());
    }
    for i in 0..n / 4 {
        kv.put(format!("again {i}").as_bytes(), &value(i)).unwrap();
    }
    let m = verify(&kv);
    assert_eq!(m.len() as u64, n - n.div_ceil(2) + n / 4);
    drop(kv);
    let kv = Kv::open(&path, MODE).unwrap();
    assert_eq!(verify(&kv), m);
}

#[test]
fn pools_of_another_layout_or_root_are_refused() {
    let (_d, path) = scratch("other.pool");
    drop(Pool::create(&path, &CreateOptions::new("something-else", 8 << 20)).unwrap());
    let before = std::fs::read(&path).unwrap();
    let e = Kv::open(&path, MODE).unwrap_err();
    assert!(e.is_invalid_pool(), "{e}");
    assert!(e.to_string().contains("not a kv pool"), "{e}");
    assert!(
        std::fs::read(&path).unwrap() == before,
        "the file is untouched"
    );

    // The kv layout name, but another program's root object.
    let (_d2, path2) = scratch("root.pool");
    {
        let pool = Pool::create(&path2, &CreateOptions::new(map::LAYOUT, 8 << 20)).unwrap();
        pool.root::<[u64; 4]>().unwrap();
    }
    let e = Kv::open(&path2, MODE).unwrap_err();
    assert!(e.is_invalid_pool(), "{e}");
    assert!(
        matches!(e, KvError::Tx(TxError::RootMismatch { .. })),
        "{e}"
    );

    // Not a pool at all; a missing file.
    let (_d3, path3) = scratch("junk.pool");
    std::fs::write(&path3, vec![0xa5u8; 1 << 20]).unwrap();
    assert!(Kv::open(&path3, MODE).unwrap_err().is_invalid_pool());
    let e = Kv::open(path3.with_extension("missing"), MODE).unwrap_err();
    assert!(!e.is_invalid_pool() && !e.is_full(), "{e}");
}

#[test]
fn a_locked_pool_is_reported() {
    let (_d, path) = scratch("locked.pool");
    let kv = Kv::create(&path, 8 << 20, MODE).unwrap();
    let e = Kv::open(&path, MODE).unwrap_err();
    assert!(e.is_locked(), "{e}");
    drop(kv);
    Kv::open(&path, MODE).unwrap();
}

#[test]
fn concurrent_writers_on_disjoint_keys() {
    let (_d, path) = scratch("threads.pool");
    let kv = Kv::create_with(&path, 64 << 20, MODE, 64).unwrap();
    const THREADS: u64 = 4;
    const PER: u64 = 1500;
    let key = |t: u64, i: u64| format!("t{t}-key-{i}").into_bytes();
    let val = |t: u64, i: u64| {
        format!("value {t}/{i}")
            .repeat(1 + (i % 5) as usize)
            .into_bytes()
    };
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let kv = &kv;
            s.spawn(move || {
                for i in 0..PER {
                    assert!(!kv.put(&key(t, i), &val(t, i)).unwrap());
                    if i % 3 == 0 {
                        // Keys 0, 1, 2, ... (each put before), each deleted once.
                        assert!(kv.delete(&key(t, i / 3)).unwrap());
                    }
                    if i % 7 == 0 && i % 3 != 0 {
                        assert_eq!(kv.get(&key(t, i)).unwrap(), Some(val(t, i)));
                    }
                }
            });
        }
    });
    // Put every key again (a third of them were deleted), from the threads again.
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let kv = &kv;
            s.spawn(move || {
                for i in 0..PER {
                    kv.put(&key(t, i), &val(t, i)).unwrap();
                }
            });
        }
    });
    let m = verify(&kv);
    assert_eq!(m.len() as u64, THREADS * PER);
    for t in 0..THREADS {
        for i in 0..PER {
            assert_eq!(m.get(&key(t, i)), Some(&val(t, i)), "thread {t} key {i}");
        }
    }
}

#[test]
fn concurrent_writers_on_shared_keys_keep_the_map_consistent() {
    let (_d, path) = scratch("shared.pool");
    let kv = Kv::create_with(&path, 64 << 20, MODE, 64).unwrap();
    // Values name their writer and are checked whole: a torn or mixed value would show.
    let val = |t: u64, n: u64| {
        let mut v = format!("{t}:{n}:").into_bytes();
        v.resize(16 + (n % 300) as usize, b'a' + t as u8);
        v
    };
    let valid = |v: &[u8]| {
        let s = String::from_utf8_lossy(v);
        let mut it = s.split(':');
        let t: u64 = it.next().unwrap().parse().unwrap();
        let n: u64 = it.next().unwrap().parse().unwrap();
        v == val(t, n)
    };
    std::thread::scope(|s| {
        for t in 0..3u64 {
            let (kv, val) = (&kv, &val);
            s.spawn(move || {
                let mut rng = Rng(t + 100);
                for n in 0..2500 {
                    let k = format!("shared-{}", rng.below(400)).into_bytes();
                    match rng.below(4) {
                        0 => {
                            kv.delete(&k).unwrap();
                        }
                        1 => {
                            if let Some(v) = kv.get(&k).unwrap() {
                                assert!(valid(&v), "{:?}", v.escape_ascii());
                            }
                        }
                        _ => {
                            kv.put(&k, &val(t, n)).unwrap();
                        }
                    }
                }
            });
        }
    });
    let m = verify(&kv);
    assert!(!m.is_empty());
    for v in m.values() {
        assert!(valid(v));
    }
}

const CHILD_POOL: &str = "KV_TEST_CRASH_POOL";
const CHILD_SEED: &str = "KV_TEST_CRASH_SEED";

/// The child of `kill9_loop`: runs operations until killed, reporting each commit.
#[test]
#[ignore = "helper process of kill9_loop"]
fn crash_child() {
    let (Some(path), Some(seed)) = (std::env::var_os(CHILD_POOL), std::env::var_os(CHILD_SEED))
    else {
        return;
    };
    let seed: u64 = seed.to_str().unwrap().parse().unwrap();
    crash::child(Path::new(&path), MODE, seed).unwrap();
}

#[test]
fn kill9_loop() {
    let (_d, path) = scratch("crash.pool");
    drop(Kv::create_with(&path, 64 << 20, MODE, 64).unwrap());
    let exe = std::env::current_exe().unwrap();
    let s = crash::kill_loop(
        &path,
        20,
        7,
        Duration::from_millis(250),
        |seed| {
            std::process::Command::new(&exe)
                .args(["--exact", "crash_child", "--ignored", "--nocapture"])
                .env(CHILD_POOL, &path)
                .env(CHILD_SEED, seed.to_string())
                .stdout(std::process::Stdio::piped())
                .stdin(std::process::Stdio::null())
                .spawn()
        },
        |p| Kv::open(p, MODE),
        |_, _| {},
    )
    .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("kill9_loop: {s:?}");
    assert_eq!(s.kills, 20);
    assert!(s.reported > 100, "the children made progress: {s:?}");
}
