//! The `pmstore` command line: create, info (text and JSON), demo, check, stats, dump-root,
//! and exit codes. Every read-only command is checked to leave the pool file's bytes as they
//! were.

use std::path::{Path, PathBuf};
use std::process::Command;

use pmstore::alloc::heap::{ChunkHeader, HeapGeometry};
use pmstore::alloc::redo::{encode_log, RedoEntry};
use pmstore::{CreateOptions, OpenOptions, TxError};

fn pmstore(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pmstore"))
        .args(args)
        .env_remove("PMSTORE_FORCE_MODE")
        .env_remove("PMSTORE_POOL")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn create_then_info_in_text_and_json() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("cli.pool");
    let ps = p.to_str().unwrap();
    let (code, out, err) = pmstore(&["create", ps, "--size", "16M", "--layout", "cli-test"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("layout:     cli-test"), "{out}");
    assert!(out.contains("16.0 MiB (16777216 bytes)"), "{out}");
    assert_eq!(std::fs::metadata(&p).unwrap().len(), 16 << 20);

    let (code, out, _) = pmstore(&["info", ps, "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["layout"], "cli-test");
    assert_eq!(v["pool_size"], 16u64 << 20);
    assert_eq!(v["format"]["major"], 1);
    assert_eq!(v["locked"], false);
    assert!(["map-sync", "msync"].contains(&v["mode"].as_str().unwrap()));
    assert_eq!(
        v["heap"]["offset"].as_u64().unwrap() + v["heap"]["size"].as_u64().unwrap(),
        16 << 20
    );

    // Creating over it is refused, and it is left alone.
    let before = std::fs::read(&p).unwrap();
    let (code, _, err) = pmstore(&["create", ps, "--size", "16M", "--layout", "other"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("already exists"), "{err}");
    assert!(std::fs::read(&p).unwrap() == before);
}

#[test]
fn exit_codes_and_json_errors() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("x.pool");
    let ps = p.to_str().unwrap();
    // Usage errors.
    assert_eq!(
        pmstore(&["create", ps, "--size", "lots", "--layout", "x"]).0,
        2
    );
    assert_eq!(pmstore(&["frobnicate"]).0, 2);
    // Invalid sizes are the pool's errors, not usage errors.
    let (code, _, err) = pmstore(&["create", ps, "--size", "1M", "--layout", "x"]);
    assert_eq!(code, 1);
    assert!(err.contains("below the minimum"), "{err}");
    // Missing file.
    let (code, out, _) = pmstore(&["info", ps, "--json"]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["error"]["kind"], "NotFound");
    // Not a pool.
    std::fs::write(&p, vec![0x42; 1 << 20]).unwrap();
    let (code, out, _) = pmstore(&["info", ps, "--json"]);
    assert_eq!(code, 3);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["error"]["kind"], "BadMagic");
    // Wrong layout.
    std::fs::remove_file(&p).unwrap();
    assert_eq!(
        pmstore(&["create", ps, "--size", "8M", "--layout", "mine"]).0,
        0
    );
    let (code, _, err) = pmstore(&["info", ps, "--layout", "theirs"]);
    assert_eq!(code, 3);
    assert!(err.contains("layout mismatch"), "{err}");
    // A bad force-mode value is reported, not ignored.
    let out = Command::new(env!("CARGO_BIN_EXE_pmstore"))
        .args(["info", ps])
        .env("PMSTORE_FORCE_MODE", "bogus")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PMSTORE_FORCE_MODE"));
}

#[test]
fn info_reports_a_locked_pool() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("l.pool");
    let pool = pmstore::Pool::create(
        &p,
        &pmstore::CreateOptions::new("l", pmstore::MIN_POOL_SIZE),
    )
    .unwrap();
    let (code, out, _) = pmstore(&["info", p.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["locked"], true);
    // The demo refuses to share it.
    let (code, _, err) = pmstore(&["demo", p.to_str().unwrap()]);
    assert_eq!(code, 4, "{err}");
    drop(pool);
}

#[test]
fn demo_persists_across_runs() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("demo.pool");
    let ps = p.to_str().unwrap();
    let (code, out, err) = pmstore(&["demo", ps, "--records", "300"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("run #1") && out.contains("verified all 300 records"),
        "{out}"
    );
    let (code, out, _) = pmstore(&["demo", ps, "--records", "300"]);
    assert_eq!(code, 0);
    assert!(out.contains("run #2"), "{out}");
    assert!(out.contains("persistence mode:"), "{out}");
}

// ---------------------------------------------------------------------------------------------
// check, stats, dump-root: read-only examination.

const LAYOUT: &str = "cli-data";
/// The root object: a tag then six words.
type Root = [u64; 8];
const TAG: &[u8; 16] = b"pmstore-cli-root";

/// Runs `pmstore args`, asserting that it leaves the pool file's bytes exactly as they were.
fn pmstore_ro(path: &Path, args: &[&str]) -> (i32, String, String) {
    let before = std::fs::read(path).unwrap();
    let r = pmstore(args);
    assert!(
        std::fs::read(path).unwrap() == before,
        "`pmstore {}` modified the pool file",
        args.join(" ")
    );
    r
}

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// What `pool_with_data` put in the pool.
struct Data {
    path: PathBuf,
    root: u64,
    blocks: u64,
    bytes: u64,
}

/// A pool made through transactions: a 64-byte root object, ten more 64-byte blocks, three
/// 1000-byte slices (1024-byte class) and a 300 KiB slice (a two-chunk span).
fn pool_with_data(dir: &Path) -> Data {
    let path = dir.join("data.pool");
    let pool = pmstore::Pool::create(&path, &CreateOptions::new(LAYOUT, 8 << 20)).unwrap();
    let root = pool.root::<Root>().unwrap();
    pool.transaction(|tx| {
        let mut words = [0u64; 8];
        for (i, w) in words.iter_mut().enumerate().skip(2) {
            *w = 0x1111_1111_1111_1111 * i as u64;
        }
        words[0] = u64::from_le_bytes(TAG[..8].try_into().unwrap());
        words[1] = u64::from_le_bytes(TAG[8..].try_into().unwrap());
        for i in 0..10u64 {
            let p = tx.alloc::<Root>([i; 8])?;
            if i == 0 {
                words[7] = p.offset();
            }
        }
        for i in 0..3u8 {
            tx.alloc_slice::<u8>(&[i; 1000])?;
        }
        tx.alloc_slice_zeroed::<u8>(300 << 10)?;
        *tx.get_mut(root)? = words;
        Ok::<_, TxError>(())
    })
    .unwrap();
    drop(pool);
    Data {
        path,
        root: root.offset(),
        blocks: 14,
        bytes: 11 * 64 + 3 * 1024 + (512 << 10),
    }
}

/// Opens the pool file layer read-write and lets `f` write raw bytes into it.
fn poke(path: &Path, f: impl FnOnce(&pmstore::pool::Pool, &pmstore::pool::Geometry)) {
    let pool = pmstore::pool::Pool::open(path, &OpenOptions::default()).unwrap();
    let g = pool.geometry();
    f(&pool, &g);
    let mut ctx = pool.flush_context();
    pool.persist(&mut ctx, 0, pool.size()).unwrap();
}

fn write(pool: &pmstore::pool::Pool, off: u64, bytes: &[u8]) {
    // SAFETY: this test thread holds the pool's only (exclusive) handle; nothing else reads
    // or writes it during the call.
    unsafe { pool.write(off, bytes) };
}

fn read_u64(pool: &pmstore::pool::Pool, off: u64) -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: as in `write`.
    unsafe { pool.read(off, &mut b) };
    u64::from_le_bytes(b)
}

fn heap_geometry(g: &pmstore::pool::Geometry) -> HeapGeometry {
    HeapGeometry::new(g.heap_offset, g.heap_size)
}

#[test]
fn check_a_fresh_pool() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("fresh.pool");
    let ps = p.to_str().unwrap();
    assert_eq!(
        pmstore(&["create", ps, "--size", "8M", "--layout", "fresh"]).0,
        0
    );
    let (code, out, err) = pmstore_ro(&p, &["check", ps]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("result:     clean"), "{out}");
    assert!(out.contains("no root object yet"), "{out}");

    let (code, out, _) = pmstore_ro(&p, &["check", ps, "--json", "--layout", "fresh"]);
    assert_eq!(code, 0);
    let v = json(&out);
    assert_eq!(v["ok"], true);
    assert_eq!(v["status"], "clean");
    assert_eq!(v["exit_code"], 0);
    assert_eq!(v["examined"], "file");
    assert_eq!(v["recovery_needed"], false);
    assert_eq!(v["pool"]["layout"], "fresh");
    assert_eq!(v["pool"]["pool_size"], 8u64 << 20);
    assert_eq!(v["logs"]["lanes"], 64);
    assert_eq!(v["logs"]["empty"], 128); // two log regions per lane
    assert_eq!(v["logs"]["valid"], 0);
    let heap = &v["heap"];
    assert!(heap["chunks"].as_u64().unwrap() > 0);
    assert_eq!(heap["free_chunks"], heap["chunks"]);
    assert_eq!(heap["chunks_walked"], heap["chunks"]);
    assert_eq!(heap["live_blocks"], 0);
    assert_eq!(heap["bytes_allocated"], 0);
    assert_eq!(v["root"]["exists"], false);
    assert_eq!(v["findings"].as_array().unwrap().len(), 0);
    assert_eq!(v["findings_total"], 0);

    // A wrong layout is "not a valid pool for this build", as for info.
    let (code, _, err) = pmstore_ro(&p, &["check", ps, "--layout", "other"]);
    assert_eq!(code, 3, "{err}");
    // No root object yet: dump-root says so with exit 6.
    let (code, out, _) = pmstore_ro(&p, &["dump-root", ps, "--json"]);
    assert_eq!(code, 6);
    assert_eq!(json(&out)["error"]["kind"], "NoRoot");
}

/// A run emptied by frees is kept by the allocator (header `RUN`, bitmap zero: FORMAT.md
/// §6.3): `check` reports it as a run with no live block, not as corruption or a leak.
#[test]
fn check_accepts_an_empty_kept_run() {
    let d = tempfile::tempdir().unwrap();
    let data = pool_with_data(d.path());
    let p = &data.path;
    let ps = p.to_str().unwrap();
    {
        let pool = pmstore::Pool::open(p, &OpenOptions::new(LAYOUT)).unwrap();
        let mut slices = Vec::new();
        pool.heap()
            .for_each_allocated(pool.raw(), |off, size| {
                if size == 1024 {
                    slices.push(off)
                }
            })
            .unwrap();
        assert_eq!(slices.len(), 3);
        for off in slices {
            // SAFETY: no transaction runs; nothing refers to these blocks.
            unsafe { pool.heap().free(pool.raw(), off, None) }.unwrap();
        }
        let s = pool.heap().stats(pool.raw()).unwrap();
        assert_eq!(s.empty_run_chunks, 1, "the 1024-byte run is kept: {s:?}");
    }
    let (code, out, err) = pmstore_ro(p, &["check", ps, "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let v = json(&out);
    assert_eq!(v["status"], "clean");
    assert_eq!(v["findings_total"], 0);
    assert_eq!(v["heap"]["live_blocks"], data.blocks - 3);
    let (code, out, _) = pmstore_ro(p, &["stats", ps, "--json"]);
    assert_eq!(code, 0);
    let v = json(&out);
    let classes = v["heap"]["classes"].as_array().unwrap();
    let c1024 = classes.iter().find(|c| c["size"] == 1024).unwrap();
    assert_eq!(
        (c1024["runs"].as_u64(), c1024["blocks"].as_u64()),
        (Some(1), Some(0))
    );
}

#[test]
fn check_stats_and_dump_root_of_a_pool_with_data() {
    let d = tempfile::tempdir().unwrap();
    let data = pool_with_data(d.path());
    let p = &data.path;
    let ps = p.to_str().unwrap();

    let (code, out, err) = pmstore_ro(p, &["check", ps, "--json", "--list-blocks"]);
    assert_eq!(code, 0, "{out}{err}");
    let v = json(&out);
    assert_eq!(v["status"], "clean");
    let heap = &v["heap"];
    assert_eq!(heap["live_blocks"], data.blocks);
    assert_eq!(heap["spans"], 1);
    assert_eq!(heap["span_chunks"], 2);
    assert_eq!(heap["bytes_allocated"], data.bytes);
    assert_eq!(v["root"]["offset"], data.root);
    assert_eq!(v["root"]["size"], 64);
    assert_eq!(v["root"]["live"], true);
    assert_eq!(v["root"]["block"]["size"], 64);

    // The allocator's own view agrees, block by block.
    let pool = pmstore::Pool::open(p, &OpenOptions::new(LAYOUT).read_only(true)).unwrap();
    let mut live = Vec::new();
    pool.heap()
        .for_each_allocated(pool.raw(), |off, size| {
            live.push(serde_json::json!([off, size]))
        })
        .unwrap();
    assert_eq!(heap["blocks"].as_array().unwrap(), &live);
    drop(pool);

    // stats: classes in use, bytes, spans, logs, root.
    let (code, out, _) = pmstore_ro(p, &["stats", ps, "--json"]);
    assert_eq!(code, 0);
    let v = json(&out);
    let classes = v["heap"]["classes"].as_array().unwrap();
    let class = |size: u64| {
        classes
            .iter()
            .find(|c| c["size"] == size)
            .unwrap_or_else(|| panic!("no class of {size} bytes in {classes:?}"))
    };
    assert_eq!(classes.len(), 2, "{classes:?}");
    assert_eq!(class(64)["blocks"], 11);
    assert_eq!(class(64)["bytes"], 11 * 64);
    assert_eq!(class(1024)["blocks"], 3);
    assert_eq!(class(1024)["runs"], 1);
    assert_eq!(v["heap"]["bytes_allocated"], data.bytes);
    assert_eq!(v["logs"]["empty"], 128);
    assert_eq!(v["root"]["offset"], data.root);
    let (code, out, _) = pmstore_ro(p, &["stats", ps]);
    assert_eq!(code, 0);
    assert!(
        out.contains(&format!("({} bytes) in 14 blocks and 1 span\n", data.bytes)),
        "{out}"
    );
    assert!(out.contains("64 B"), "{out}");
    assert!(out.contains("1.0 KiB"), "{out}");
    assert!(
        out.contains("spans:      1 covering 2 chunks, 512.0 KiB"),
        "{out}"
    );

    // dump-root: the bytes the transaction wrote.
    let (code, out, _) = pmstore_ro(p, &["dump-root", ps, "--json"]);
    assert_eq!(code, 0);
    let v = json(&out);
    assert_eq!(v["offset"], data.root);
    assert_eq!(v["size"], 64);
    let hex = v["hex"].as_str().unwrap();
    assert_eq!(hex.len(), 128);
    let tag_hex: String = TAG.iter().map(|b| format!("{b:02x}")).collect();
    assert!(hex.starts_with(&tag_hex), "{hex}");
    assert_eq!(&hex[32..48], "2222222222222222");
    let (code, out, _) = pmstore_ro(p, &["dump-root", ps, "--len", "20"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert_eq!(
        lines[1],
        "00000000: 706d 7374 6f72 652d 636c 692d 726f 6f74  pmstore-cli-root"
    );
    assert_eq!(
        lines[2],
        "00000010: 2222 2222                                \"\"\"\""
    );
}

#[test]
fn check_reports_a_pending_valid_log_and_examines_the_recovered_state() {
    let d = tempfile::tempdir().unwrap();
    let data = pool_with_data(d.path());
    let p = &data.path;
    let ps = p.to_str().unwrap();
    // A committed transaction whose values never reached the pool: a valid log in lane 5
    // that stores a new word 2 of the root object.
    poke(p, |pool, g| {
        let log = encode_log(
            1000,
            &[RedoEntry::new(data.root + 16, 0x0123_4567_89ab_cdef)],
        );
        write(pool, g.lane_offset(5), &log);
    });
    let (code, out, err) = pmstore_ro(p, &["check", ps]);
    assert_eq!(code, 10, "{out}{err}");
    assert!(out.contains("lane 5 slot 0: valid log, seq 1000"), "{out}");
    assert!(out.contains("in-memory copy"), "{out}");
    let (code, out, _) = pmstore_ro(p, &["check", ps, "--json"]);
    assert_eq!(code, 10);
    let v = json(&out);
    assert_eq!(v["status"], "recovery-needed");
    assert_eq!(v["recovery_needed"], true);
    assert_eq!(v["examined"], "recovered-copy");
    assert_eq!(v["simulated_recovery"]["logs_replayed"], 1);
    assert_eq!(v["logs"]["valid"], 1);
    assert_eq!(v["logs"]["largest_valid_slots"], 1);
    assert_eq!(v["logs"]["not_empty"][0]["lane"], 5);
    assert_eq!(v["heap"]["live_blocks"], data.blocks);
    // dump-root shows what the next open will see; stats work too.
    let (code, out, _) = pmstore_ro(p, &["dump-root", ps, "--json", "--len", "16K"]);
    assert_eq!(code, 0);
    let v = json(&out);
    assert_eq!(v["recovered"], true);
    assert_eq!(&v["hex"].as_str().unwrap()[32..48], "efcdab8967452301");
    let (code, out, _) = pmstore_ro(p, &["stats", ps, "--json"]);
    assert_eq!(code, 0, "{out}");
    // Too large to copy: logs reported, heap not examined, still exit 10.
    let (code, out, _) = pmstore_ro(p, &["check", ps, "--json", "--max-copy", "1M"]);
    assert_eq!(code, 10);
    let v = json(&out);
    assert_eq!(v["examined"], "not-examined");
    assert!(v["heap"].is_null());
    let (code, out, _) = pmstore_ro(p, &["dump-root", ps, "--json", "--max-copy", "1M"]);
    assert_eq!(code, 10);
    assert_eq!(json(&out)["error"]["kind"], "RecoveryNeeded");
    // The next open replays it; then the pool is clean and shows the value.
    drop(pmstore::Pool::open(p, &OpenOptions::new(LAYOUT)).unwrap());
    let (code, out, _) = pmstore_ro(p, &["dump-root", ps, "--json"]);
    assert_eq!(code, 0);
    assert_eq!(
        &json(&out)["hex"].as_str().unwrap()[32..48],
        "efcdab8967452301"
    );
    assert_eq!(pmstore_ro(p, &["check", ps]).0, 0);
}

#[test]
fn check_reports_torn_logs_without_failing() {
    let d = tempfile::tempdir().unwrap();
    let data = pool_with_data(d.path());
    let p = &data.path;
    let ps = p.to_str().unwrap();
    poke(p, |pool, g| {
        let mut log = encode_log(3, &[RedoEntry::new(data.root + 8, 1)]);
        log[70] ^= 0xff; // the checksum no longer matches
        write(pool, g.lane_offset(2), &log);
    });
    let (code, out, _) = pmstore_ro(p, &["check", ps, "--json"]);
    assert_eq!(code, 0, "{out}");
    let v = json(&out);
    assert_eq!(v["logs"]["invalid"], 1);
    assert_eq!(v["logs"]["not_empty"][0]["state"], "invalid");
    assert_eq!(v["examined"], "file");
    assert_eq!(v["notes"].as_array().unwrap().len(), 1);
}

#[test]
fn check_reports_a_corrupt_log() {
    let d = tempfile::tempdir().unwrap();
    let data = pool_with_data(d.path());
    let p = &data.path;
    let ps = p.to_str().unwrap();
    // A valid checksum over an impossible target (the pool header page).
    poke(p, |pool, g| {
        write(
            pool,
            g.lane_offset(7),
            &encode_log(9, &[RedoEntry::new(8, 1)]),
        )
    });
    let (code, out, err) = pmstore_ro(p, &["check", ps]);
    assert_eq!(code, 11, "{out}{err}");
    assert!(out.contains("CORRUPT"), "{out}");
    let (code, out, _) = pmstore_ro(p, &["check", ps, "--json"]);
    assert_eq!(code, 11);
    let v = json(&out);
    assert_eq!(v["ok"], true);
    assert_eq!(v["status"], "corrupt");
    assert_eq!(v["logs"]["corrupt"], 1);
    assert_eq!(v["examined"], "file-unrecoverable");
    let f = &v["findings"][0];
    assert_eq!(f["area"], "logs");
    assert_eq!(f["lane"], 7);
    assert!(
        f["message"].as_str().unwrap().contains("header page"),
        "{f}"
    );
    assert_eq!(pmstore_ro(p, &["stats", ps]).0, 11);
}

#[test]
fn check_reports_a_corrupt_chunk_header() {
    let d = tempfile::tempdir().unwrap();
    let data = pool_with_data(d.path());
    let p = &data.path;
    let ps = p.to_str().unwrap();
    let mut chunk0 = 0;
    poke(p, |pool, g| {
        let geo = heap_geometry(g);
        chunk0 = geo.header_offset(0);
        let word = read_u64(pool, chunk0);
        assert!(!ChunkHeader::decode(word).unwrap().is_free());
        write(pool, chunk0, &[7]); // kind byte 7
    });
    let (code, out, err) = pmstore_ro(p, &["check", ps, "--json"]);
    assert_eq!(code, 11, "{out}{err}");
    let v = json(&out);
    assert_eq!(v["status"], "corrupt");
    assert_eq!(v["heap"]["bad_chunks"], 1);
    let f = &v["findings"][0];
    assert_eq!(f["area"], "heap");
    assert_eq!(f["chunk"], 0);
    assert_eq!(f["offset"], chunk0);
    assert!(
        f["message"]
            .as_str()
            .unwrap()
            .contains("unknown chunk kind 7"),
        "{f}"
    );
    let (code, out, _) = pmstore_ro(p, &["check", ps]);
    assert_eq!(code, 11);
    assert!(out.contains("unknown chunk kind 7"), "{out}");
}

#[test]
fn check_reports_bitmap_and_overlap_corruption() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("b.pool");
    let ps = p.to_str().unwrap();
    drop(pmstore::pool::Pool::create(&p, &CreateOptions::new("b", 8 << 20)).unwrap());
    poke(&p, |pool, g| {
        let geo = heap_geometry(g);
        // A bit set in a free chunk's bitmap slot.
        write(pool, geo.bitmap_offset(3) + 100, &[0x10]);
        // A two-chunk span at chunk 5 and another span at chunk 6, inside it.
        let span = |len| ChunkHeader::Span { len }.encode().to_le_bytes();
        write(pool, geo.header_offset(5), &span(2));
        write(pool, geo.header_offset(6), &span(1));
        // A span running past the last chunk.
        write(pool, geo.header_offset(geo.chunks - 1), &span(4));
    });
    let (code, out, _) = pmstore_ro(&p, &["check", ps, "--json"]);
    assert_eq!(code, 11, "{out}");
    let v = json(&out);
    let msgs: Vec<(u64, String)> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["chunk"].as_u64().unwrap(),
                f["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(msgs.len(), 3, "{msgs:?}");
    assert!(
        msgs[0].0 == 3 && msgs[0].1.contains("bitmap slot of a free chunk"),
        "{msgs:?}"
    );
    assert!(
        msgs[1].0 == 6 && msgs[1].1.contains("overlapping"),
        "{msgs:?}"
    );
    assert!(msgs[2].1.contains("past the end of the heap"), "{msgs:?}");
}

#[test]
fn check_reports_root_area_problems() {
    let d = tempfile::tempdir().unwrap();
    let data = pool_with_data(d.path());
    let p = &data.path;
    let ps = p.to_str().unwrap();
    let mut at = 0;
    poke(p, |pool, g| {
        at = g.root_offset + 100;
        write(pool, at, &[1]);
    });
    let (code, out, err) = pmstore_ro(p, &["check", ps, "--json"]);
    assert_eq!(code, 11, "{out}{err}");
    let v = json(&out);
    assert_eq!(v["root"]["reserved_nonzero"], 1);
    let f = &v["findings"][0];
    assert_eq!(f["area"], "root");
    assert_eq!(f["offset"], at);
    assert_eq!(pmstore_ro(p, &["dump-root", ps]).0, 11);

    // A root entry naming a free block: the root object is block 0 of its run of 64-byte
    // blocks and the ten other 64-byte blocks are 1..=10, so block 20 is free.
    poke(p, |pool, g| {
        write(pool, at, &[0]);
        write(pool, g.root_offset, &(data.root + 20 * 64).to_le_bytes());
    });
    let (code, out, _) = pmstore_ro(p, &["check", ps, "--json"]);
    assert_eq!(code, 11, "{out}");
    let v = json(&out);
    assert_eq!(v["root"]["live"], false);
    assert!(
        v["findings"][0]["message"]
            .as_str()
            .unwrap()
            .contains("not a live block"),
        "{v}"
    );
}

#[test]
fn check_exit_codes_for_foreign_and_locked_files() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("x.pool");
    let ps = p.to_str().unwrap();
    let (code, out, _) = pmstore(&["check", ps, "--json"]);
    assert_eq!(code, 1);
    assert_eq!(json(&out)["error"]["kind"], "NotFound");
    std::fs::write(&p, vec![0x42; 1 << 20]).unwrap();
    for cmd in ["check", "stats", "dump-root"] {
        let (code, out, _) = pmstore_ro(&p, &[cmd, ps, "--json"]);
        assert_eq!(code, 3, "{cmd}");
        assert_eq!(json(&out)["error"]["kind"], "BadMagic");
    }
    std::fs::remove_file(&p).unwrap();
    let pool = pmstore::Pool::create(&p, &CreateOptions::new("l", 8 << 20)).unwrap();
    for cmd in ["check", "stats", "dump-root"] {
        let (code, out, err) = pmstore(&[cmd, ps, "--json"]);
        assert_eq!(code, 4, "{cmd}: {err}");
        assert_eq!(json(&out)["error"]["kind"], "Locked");
    }
    drop(pool);
    assert_eq!(pmstore(&["check", ps]).0, 0);
}

#[test]
fn help_lists_commands_and_exit_codes() {
    let (code, out, _) = pmstore(&["--help"]);
    assert_eq!(code, 0);
    for s in ["check", "stats", "dump-root", "  6  ", " 10  ", " 11  "] {
        assert!(out.contains(s), "{s}: {out}");
    }
    let (code, out, _) = pmstore(&["check", "--help"]);
    assert_eq!(code, 0);
    for s in [
        "--layout",
        "--json",
        "--max-copy",
        "--list-blocks",
        "never writes",
    ] {
        assert!(out.contains(s), "{s}: {out}");
    }
    let (_, out, _) = pmstore(&["dump-root", "--help"]);
    assert!(out.contains("--len") && out.contains("Exit 6"), "{out}");
    assert_eq!(pmstore(&["dump-root", "x", "--len", "lots"]).0, 2);
}

#[test]
fn check_decodes_a_pending_log_with_an_extension() {
    use pmstore::alloc::redo::{encode_log_ext, RedoRange};
    let d = tempfile::tempdir().unwrap();
    let data = pool_with_data(d.path());
    let p = &data.path;
    let ps = p.to_str().unwrap();
    poke(p, |pool, g| {
        let geo = heap_geometry(g);
        // One range entry one slot too long for the lane: its last slot goes to an
        // extension in a free chunk's data; the range itself targets another free chunk.
        let capacity = ((g.lane_size / 2 - 64) / 16) as usize; // a log region: half a lane
        let bytes = vec![0x5a; capacity * 16];
        let ranges = [RedoRange {
            target: geo.chunk_offset(10),
            data: &bytes,
        }];
        let (lane, ext) = encode_log_ext(77, &[], &ranges, capacity, geo.chunk_offset(12));
        assert_eq!(ext.len(), 16);
        write(pool, g.lane_offset(1), &lane);
        write(pool, geo.chunk_offset(12), &ext);
    });
    let (code, out, err) = pmstore_ro(p, &["check", ps, "--json"]);
    assert_eq!(code, 10, "{out}{err}");
    let v = json(&out);
    let lane = &v["logs"]["not_empty"][0];
    assert_eq!(lane["state"], "valid", "{lane}");
    assert_eq!(lane["seq"], 77);
    assert_eq!(lane["ranges"], 1);
    assert_eq!(lane["slots"], 509);
    assert_eq!(v["examined"], "recovered-copy");
    assert_eq!(v["heap"]["live_blocks"], data.blocks);
    // Without its extension's bytes the log is torn: check says so and exits 0.
    poke(p, |pool, g| {
        let geo = heap_geometry(g);
        write(pool, geo.chunk_offset(12), &[0; 16]);
    });
    let (code, out, _) = pmstore_ro(p, &["check", ps, "--json"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(json(&out)["logs"]["invalid"], 1);
}
