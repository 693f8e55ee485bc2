//! The `pmstore` command line: create, info (text and JSON), demo, and exit codes.

use std::process::Command;

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
