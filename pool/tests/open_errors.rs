//! Every way a pool file can be wrong gives its own typed error, and a failed open never
//! changes the file.

mod common;

use std::os::unix::fs::FileExt;

use common::*;
use pmstore_pool::{
    CreateOptions, ModeRequest, OpenOptions, Pool, PoolError, CHECKSUM_OFFSET, FORMAT_MAJOR,
    HEADER_SIZE, MAX_POOL_SIZE, MIN_POOL_SIZE,
};

#[test]
fn healthy_pool_opens_and_reports_its_header() {
    let (_d, path) = scratch();
    make_pool(&path);
    let pool = open_rw(&path).unwrap();
    let h = pool.header();
    assert_eq!(h.layout_name(), LAYOUT);
    assert_eq!(h.pool_size, MIN_POOL_SIZE);
    assert_eq!(h.major, FORMAT_MAJOR);
    assert_ne!(h.uuid, [0; 16]);
    let g = pool.geometry();
    assert_eq!(g.root_offset, 4096);
    assert_eq!(g.heap_offset + g.heap_size, MIN_POOL_SIZE);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), MIN_POOL_SIZE);
    // Opening without a layout accepts any.
    drop(pool);
    Pool::open(&path, &OpenOptions::default().mode(ModeRequest::Msync)).unwrap();
}

#[test]
fn create_refuses_an_existing_path_and_leaves_it_alone() {
    let (_d, path) = scratch();
    std::fs::write(&path, b"precious data").unwrap();
    let e = Pool::create(&path, &CreateOptions::new(LAYOUT, MIN_POOL_SIZE)).unwrap_err();
    assert!(matches!(e, PoolError::AlreadyExists { .. }), "{e:?}");
    assert_eq!(std::fs::read(&path).unwrap(), b"precious data");
    // An existing pool too.
    let (_d2, p2) = scratch();
    make_pool(&p2);
    let before = std::fs::read(&p2).unwrap();
    let e = Pool::create(&p2, &CreateOptions::new(LAYOUT, MIN_POOL_SIZE)).unwrap_err();
    assert!(matches!(e, PoolError::AlreadyExists { .. }), "{e:?}");
    assert!(std::fs::read(&p2).unwrap() == before);
}

#[test]
fn create_checks_size_and_layout_before_touching_the_file_system() {
    let (_d, path) = scratch();
    type IsExpected = fn(&PoolError) -> bool;
    let cases: Vec<(CreateOptions, IsExpected)> = vec![
        (CreateOptions::new(LAYOUT, MIN_POOL_SIZE - 4096), |e| {
            matches!(e, PoolError::SizeTooSmall { .. })
        }),
        (CreateOptions::new(LAYOUT, 0), |e| {
            matches!(e, PoolError::SizeTooSmall { .. })
        }),
        (CreateOptions::new(LAYOUT, MAX_POOL_SIZE + 4096), |e| {
            matches!(e, PoolError::SizeTooLarge { .. })
        }),
        (CreateOptions::new(LAYOUT, MIN_POOL_SIZE + 1), |e| {
            matches!(e, PoolError::SizeNotAligned { .. })
        }),
        (CreateOptions::new("", MIN_POOL_SIZE), |e| {
            matches!(e, PoolError::InvalidLayoutName { .. })
        }),
        (CreateOptions::new("x".repeat(65), MIN_POOL_SIZE), |e| {
            matches!(e, PoolError::InvalidLayoutName { .. })
        }),
        (CreateOptions::new("a\0b", MIN_POOL_SIZE), |e| {
            matches!(e, PoolError::InvalidLayoutName { .. })
        }),
        (
            CreateOptions::new(LAYOUT, MIN_POOL_SIZE).lanes(1024, 16 << 10),
            |e| matches!(e, PoolError::InvalidGeometry(_)),
        ),
        (
            CreateOptions::new(LAYOUT, MIN_POOL_SIZE).lanes(4, 100),
            |e| matches!(e, PoolError::InvalidGeometry(_)),
        ),
        (
            CreateOptions::new(LAYOUT, MIN_POOL_SIZE).root_size(100),
            |e| matches!(e, PoolError::InvalidGeometry(_)),
        ),
    ];
    for (opts, is_expected) in cases {
        let e = Pool::create(&path, &opts).unwrap_err();
        assert!(is_expected(&e), "{opts:?} gave {e:?}");
        assert!(!path.exists(), "{opts:?} left a file behind");
    }
}

#[test]
fn create_in_a_missing_directory_or_on_a_directory() {
    let (d, _) = scratch();
    let e = Pool::create(
        d.path().join("no/such/dir.pool"),
        &CreateOptions::new(LAYOUT, MIN_POOL_SIZE),
    )
    .unwrap_err();
    assert!(matches!(e, PoolError::NotFound { .. }), "{e:?}");
    let e = Pool::create(d.path(), &CreateOptions::new(LAYOUT, MIN_POOL_SIZE)).unwrap_err();
    assert!(matches!(e, PoolError::AlreadyExists { .. }), "{e:?}");
}

#[test]
fn missing_file_and_directory_path() {
    let (d, path) = scratch();
    let e = Pool::open(&path, &rw_opts()).unwrap_err();
    assert!(matches!(e, PoolError::NotFound { .. }), "{e:?}");
    let e = Pool::open(d.path(), &rw_opts()).unwrap_err();
    assert!(matches!(e, PoolError::NotARegularFile { .. }), "{e:?}");
    let e = Pool::open(d.path(), &rw_opts().read_only(true)).unwrap_err();
    assert!(matches!(e, PoolError::NotARegularFile { .. }), "{e:?}");
    let e = Pool::open("/dev/null", &rw_opts().read_only(true)).unwrap_err();
    assert!(matches!(e, PoolError::NotARegularFile { .. }), "{e:?}");
}

#[test]
fn zero_length_file() {
    let (_d, path) = scratch();
    std::fs::write(&path, b"").unwrap();
    assert!(matches!(
        open_err(&path, &rw_opts()),
        PoolError::EmptyFile { .. }
    ));
}

#[test]
fn file_shorter_than_a_header() {
    let (_d, path) = scratch();
    make_pool(&path);
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(4095).unwrap();
    match open_err(&path, &rw_opts()) {
        PoolError::Truncated {
            actual, expected, ..
        } => assert_eq!((actual, expected), (4095, HEADER_SIZE as u64)),
        e => panic!("{e:?}"),
    }
}

#[test]
fn file_shorter_or_longer_than_the_pool() {
    let (_d, path) = scratch();
    make_pool(&path);
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(MIN_POOL_SIZE - 4096).unwrap();
    match open_err(&path, &rw_opts()) {
        PoolError::Truncated {
            actual, expected, ..
        } => assert_eq!((actual, expected), (MIN_POOL_SIZE - 4096, MIN_POOL_SIZE)),
        e => panic!("{e:?}"),
    }
    f.set_len(MIN_POOL_SIZE + 4096).unwrap();
    match open_err(&path, &rw_opts()) {
        PoolError::SizeMismatch {
            actual, expected, ..
        } => assert_eq!((actual, expected), (MIN_POOL_SIZE + 4096, MIN_POOL_SIZE)),
        e => panic!("{e:?}"),
    }
}

#[test]
fn interrupted_create_leaves_a_file_open_rejects() {
    // What a crash between posix_fallocate and the header write leaves: a preallocated file of
    // zeros.
    let (_d, path) = scratch();
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(MIN_POOL_SIZE).unwrap();
    assert!(matches!(
        open_err(&path, &rw_opts()),
        PoolError::Incomplete { .. }
    ));
    // A torn header write: only the first 512-byte sector of the header reached the disk.
    let (_d2, good) = scratch();
    make_pool(&good);
    let page = read_page(&good);
    f.write_all_at(&page[..512], 0).unwrap();
    assert!(matches!(
        open_err(&path, &rw_opts()),
        PoolError::ChecksumMismatch { .. }
    ));
    // ... or everything but the last sector (which holds the checksum).
    f.write_all_at(&page[..4096 - 512], 0).unwrap();
    assert!(matches!(
        open_err(&path, &rw_opts()),
        PoolError::ChecksumMismatch { .. }
    ));
}

#[test]
fn foreign_file() {
    let (_d, path) = scratch();
    let mut junk = b"\x7fELF\x02\x01\x01\0".to_vec();
    junk.resize(MIN_POOL_SIZE as usize, 0xAB);
    std::fs::write(&path, &junk).unwrap();
    match open_err(&path, &rw_opts()) {
        PoolError::BadMagic { found, .. } => assert_eq!(&found, b"\x7fELF\x02\x01\x01\0"),
        e => panic!("{e:?}"),
    }
}

#[test]
fn wrong_magic() {
    let (_d, path) = scratch();
    make_pool(&path);
    edit_header(&path, true, |h| h.magic[7] = b'X');
    assert!(matches!(
        open_err(&path, &rw_opts()),
        PoolError::BadMagic { .. }
    ));
}

#[test]
fn checksum_mismatch() {
    let (_d, path) = scratch();
    make_pool(&path);
    let good = read_page(&path);
    edit_header(&path, false, |h| h.layout[0] ^= 1);
    match open_err(&path, &rw_opts()) {
        PoolError::ChecksumMismatch {
            stored, computed, ..
        } => {
            assert_eq!(
                stored,
                u32::from_le_bytes(good[CHECKSUM_OFFSET..].try_into().unwrap())
            );
            assert_ne!(stored, computed);
        }
        e => panic!("{e:?}"),
    }
    // The stored checksum itself corrupted.
    write_page(&path, &good);
    edit_header(&path, false, |h| h.checksum ^= 0x8000_0000);
    assert!(matches!(
        open_err(&path, &rw_opts()),
        PoolError::ChecksumMismatch { .. }
    ));
}

#[test]
fn future_major_version() {
    let (_d, path) = scratch();
    make_pool(&path);
    // A future writer checksums its own way: the version is reported, not the checksum.
    edit_header(&path, false, |h| h.major = FORMAT_MAJOR + 1);
    match open_err(&path, &rw_opts()) {
        PoolError::UnsupportedVersion {
            found, supported, ..
        } => assert_eq!((found, supported), (2, 1)),
        e => panic!("{e:?}"),
    }
    edit_header(&path, true, |h| h.major = 0);
    assert!(matches!(
        open_err(&path, &rw_opts()),
        PoolError::UnsupportedVersion { found: 0, .. }
    ));
    // A newer minor version is compatible.
    edit_header(&path, true, |h| {
        h.major = FORMAT_MAJOR;
        h.minor = 7
    });
    open_rw(&path).unwrap();
}

#[test]
fn unknown_feature_flags() {
    let (_d, path) = scratch();
    make_pool(&path);
    let good = read_page(&path);
    edit_header(&path, true, |h| h.incompat = 1 << 5);
    assert!(matches!(
        open_err(&path, &rw_opts()),
        PoolError::UnsupportedIncompatFeatures { unknown: 32, .. }
    ));
    assert!(matches!(
        open_err(&path, &rw_opts().read_only(true)),
        PoolError::UnsupportedIncompatFeatures { .. }
    ));
    write_page(&path, &good);
    edit_header(&path, true, |h| h.ro_compat = 1 << 9);
    assert!(matches!(
        open_err(&path, &rw_opts()),
        PoolError::UnsupportedRoCompatFeatures { unknown: 512, .. }
    ));
    let ro = Pool::open(&path, &rw_opts().read_only(true)).unwrap();
    assert!(ro.is_read_only());
    drop(ro);
    write_page(&path, &good);
    edit_header(&path, true, |h| h.compat = u64::MAX);
    open_rw(&path).unwrap();
}

#[test]
fn wrong_layout_name() {
    let (_d, path) = scratch();
    make_pool(&path);
    match open_err(
        &path,
        &OpenOptions::new("someone-else").mode(ModeRequest::Msync),
    ) {
        PoolError::LayoutMismatch {
            expected, found, ..
        } => {
            assert_eq!(expected, "someone-else");
            assert_eq!(found, LAYOUT);
        }
        e => panic!("{e:?}"),
    }
}

/// Each field set to an invalid value *with a valid checksum* (a buggy or foreign writer) is
/// caught by the field checks.
#[test]
fn each_header_field_invalid_with_valid_checksum() {
    type Edit = fn(&mut pmstore_pool::PoolHeader);
    let edits: &[(&str, Edit)] = &[
        ("header_size", |h| h.header_size = 8192),
        ("uuid", |h| h.uuid = [0; 16]),
        ("pool_size small", |h| h.pool_size = MIN_POOL_SIZE - 4096),
        ("pool_size unaligned", |h| h.pool_size += 1),
        ("pool_size huge", |h| h.pool_size = u64::MAX),
        ("layout empty", |h| h.layout = [0; 64]),
        ("layout padding", |h| h.layout[63] = b'z'),
        ("layout utf8", |h| h.layout[0] = 0xff),
        ("root_offset", |h| h.geometry.root_offset = 8192),
        ("root_size zero", |h| h.geometry.root_size = 0),
        ("root_size unaligned", |h| h.geometry.root_size = 100),
        ("root_size huge", |h| h.geometry.root_size = u64::MAX - 4095),
        ("lanes_offset", |h| h.geometry.lanes_offset += 64),
        ("lane_count zero", |h| h.geometry.lane_count = 0),
        ("lane_count huge", |h| h.geometry.lane_count = u32::MAX),
        ("lane_size", |h| h.geometry.lane_size = 65),
        ("heap_offset early", |h| h.geometry.heap_offset -= 4096),
        ("heap_offset unaligned", |h| h.geometry.heap_offset += 64),
        ("heap_size", |h| h.geometry.heap_size -= 4096),
        ("heap past end", |h| h.geometry.heap_size += 4096),
        ("reserved", |h| h.reserved[1000] = 1),
    ];
    let (_d, path) = scratch();
    make_pool(&path);
    let good = read_page(&path);
    for (name, edit) in edits {
        write_page(&path, &good);
        edit_header(&path, true, *edit);
        match open_err(&path, &rw_opts()) {
            PoolError::InvalidHeader { what, .. } => assert!(!what.is_empty()),
            // A pool_size that disagrees with the file may be caught by the size checks
            // instead; it is still caught before mapping.
            e => panic!("{name}: expected InvalidHeader, got {e:?}"),
        }
    }
}

/// Every bit of every header byte, flipped alone, makes open fail without touching the file.
#[test]
fn every_header_bit_flip_is_rejected() {
    let (_d, path) = scratch();
    make_pool(&path);
    let good = read_page(&path);
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    for i in 0..HEADER_SIZE {
        for bit in 0..8 {
            f.write_all_at(&[good[i] ^ (1 << bit)], i as u64).unwrap();
            let e = Pool::open(&path, &rw_opts()).expect_err("corrupt header opened");
            assert!(
                matches!(
                    e,
                    PoolError::ChecksumMismatch { .. }
                        | PoolError::BadMagic { .. }
                        | PoolError::UnsupportedVersion { .. }
                ),
                "byte {i} bit {bit}: {e:?}"
            );
            assert_eq!(
                read_page(&path)[i],
                good[i] ^ (1 << bit),
                "open changed the header"
            );
        }
        f.write_all_at(&good[i..=i], i as u64).unwrap();
    }
    open_rw(&path).unwrap();
}

#[test]
fn no_permission() {
    let (d, path) = scratch();
    make_pool(&path);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o000)).unwrap();
        assert!(matches!(
            open_err(&path, &rw_opts()),
            PoolError::PermissionDenied { .. }
        ));
        return;
    }
    // Root bypasses permission bits: ask as an unprivileged user, in a child process that
    // runs this test binary's `permission_child`.
    use std::os::unix::process::CommandExt;
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "permission_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("PMSTORE_PERMISSION_CHILD", &path)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("CHILD-RESULT PermissionDenied"),
        "child said: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // ... and read-only too.
    assert!(
        stdout.contains("CHILD-RESULT-RO PermissionDenied"),
        "child said: {stdout}"
    );
}

/// Not a test on its own: the child half of `no_permission`.
#[test]
fn permission_child() {
    let Some(path) = std::env::var_os("PMSTORE_PERMISSION_CHILD") else {
        return;
    };
    let name = |r: Result<Pool, PoolError>| match r {
        Ok(_) => "Ok".to_string(),
        Err(e) => format!("{e:?}")
            .split([' ', '{', '('])
            .next()
            .unwrap()
            .to_string(),
    };
    println!("CHILD-RESULT {}", name(Pool::open(&path, &rw_opts())));
    println!(
        "CHILD-RESULT-RO {}",
        name(Pool::open(&path, &rw_opts().read_only(true)))
    );
}

#[test]
fn invalid_force_mode_is_reported() {
    // The variable is read only when the caller asks for Auto; this test runs the resolution in
    // a child so that setting the variable cannot race with other tests.
    if let Some(path) = std::env::var_os("PMSTORE_FORCE_CHILD") {
        let r = Pool::open(&path, &OpenOptions::new(LAYOUT));
        println!("CHILD-RESULT {:?}", r.map(|p| p.persistence()));
        return;
    }
    let (_d, path) = scratch();
    make_pool(&path);
    let run = |mode: &str| {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "invalid_force_mode_is_reported",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("PMSTORE_FORCE_CHILD", &path)
            .env("PMSTORE_FORCE_MODE", mode)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(run("sideways").contains("CHILD-RESULT Err(InvalidForceMode(\"sideways\"))"));
    assert!(run("msync").contains("CHILD-RESULT Ok(Msync)"));
    let flush = run("flush");
    assert!(
        flush.contains("CHILD-RESULT Ok(ForcedFlush)")
            || flush.contains("CHILD-RESULT Ok(MapSync)"),
        "{flush}"
    );
}

#[test]
fn fifo_is_refused_without_waiting_for_a_writer() {
    let (d, _) = scratch();
    let fifo = d.path().join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let e = Pool::open(&fifo, &rw_opts().read_only(true)).unwrap_err();
    assert!(matches!(e, PoolError::NotARegularFile { .. }), "{e:?}");
    let e = Pool::inspect(&fifo, None).unwrap_err();
    assert!(matches!(e, PoolError::NotARegularFile { .. }), "{e:?}");
    let e = Pool::open(&fifo, &rw_opts()).unwrap_err();
    assert!(matches!(e, PoolError::NotARegularFile { .. }), "{e:?}");
}

#[test]
fn full_file_system_gives_no_space_and_removes_the_partial_file() {
    // A 4 MiB tmpfs cannot hold an 8 MiB pool. Mounting needs CAP_SYS_ADMIN; CI runs as root.
    let d = tempfile::tempdir().unwrap();
    let mnt = std::ffi::CString::new(d.path().to_str().unwrap()).unwrap();
    // SAFETY: valid NUL-terminated strings; mounts a fresh tmpfs on our own empty directory.
    let r = unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            mnt.as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            c"size=4m".as_ptr().cast(),
        )
    };
    if r != 0 {
        eprintln!(
            "skipped: cannot mount a small tmpfs here: {}",
            std::io::Error::last_os_error()
        );
        return;
    }
    let path = d.path().join("full.pool");
    let e = Pool::create(&path, &CreateOptions::new(LAYOUT, MIN_POOL_SIZE));
    let leftover = path.exists();
    // SAFETY: unmounts what we mounted above.
    unsafe { libc::umount2(mnt.as_ptr(), libc::MNT_DETACH) };
    match e {
        Err(PoolError::NoSpace { size, .. }) => assert_eq!(size, MIN_POOL_SIZE),
        other => panic!("expected NoSpace, got {other:?}"),
    }
    assert!(!leftover, "the partial file was left behind");
}

#[test]
fn file_size_limit_fails_create_and_removes_the_partial_file() {
    // RLIMIT_FSIZE makes posix_fallocate fail with EFBIG, without privileges: run it in a child
    // so the limit does not touch other tests.
    if let Some(path) = std::env::var_os("PMSTORE_FSIZE_CHILD") {
        // SAFETY: plain libc calls on this process's own signal disposition and limits.
        unsafe {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let lim = libc::rlimit {
                rlim_cur: 1 << 20,
                rlim_max: libc::RLIM_INFINITY,
            };
            assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &lim), 0);
        }
        let r = Pool::create(&path, &CreateOptions::new(LAYOUT, MIN_POOL_SIZE));
        println!(
            "CHILD-RESULT {:?} exists={}",
            r.map(|_| ()).map_err(|e| e.to_string()),
            std::path::Path::new(&path).exists()
        );
        return;
    }
    let (_d, path) = scratch();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "file_size_limit_fails_create_and_removes_the_partial_file",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("PMSTORE_FSIZE_CHILD", &path)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("CHILD-RESULT Err(")
            && said.contains("posix_fallocate")
            && said.contains("exists=false"),
        "{said}"
    );
    assert!(!path.exists());
}

/// A process killed at random moments while creating pools leaves, each time, either no file,
/// a file `open` rejects with a typed "not a complete pool" error, or a complete pool.
#[test]
fn kill_during_create_never_leaves_a_half_made_pool() {
    if let Some(path) = std::env::var_os("PMSTORE_CREATE_CHILD") {
        println!("CHILD-START");
        let _ = Pool::create(
            &path,
            &CreateOptions::new(LAYOUT, 256 << 20).mode(ModeRequest::Msync),
        );
        println!("CHILD-DONE");
        return;
    }
    // tmpfs (a 256 MiB create takes ~100 ms, mostly posix_fallocate) and the root file system
    // (a few ms, mostly fsync).
    let dirs = [
        (
            tempfile::tempdir_in("/dev/shm").unwrap_or_else(|_| tempfile::tempdir().unwrap()),
            120_000u64,
        ),
        (
            tempfile::tempdir_in("/var/tmp").unwrap_or_else(|_| tempfile::tempdir().unwrap()),
            8_000u64,
        ),
    ];
    let kills = std::env::var("PMSTORE_CREATE_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40u32);
    let mut outcomes = std::collections::BTreeMap::<&str, u32>::new();
    for i in 0..kills {
        let (dir, spread_us) = &dirs[i as usize % 2];
        let path = dir.path().join(format!("k{i}.pool"));
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "kill_during_create_never_leaves_a_half_made_pool",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("PMSTORE_CREATE_CHILD", &path)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Wait until the child is about to create, then spread the kills over the creation.
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        while std::io::BufRead::read_line(&mut out, &mut line).unwrap() > 0
            && !line.contains("CHILD-START")
        {}
        std::thread::sleep(std::time::Duration::from_micros(
            u64::from(i) * 7_919 % spread_us,
        ));
        let _ = child.kill();
        child.wait().unwrap();
        let outcome = match Pool::open(&path, &OpenOptions::new(LAYOUT).mode(ModeRequest::Msync)) {
            Ok(p) => {
                assert_eq!(p.size(), 256 << 20);
                "complete"
            }
            Err(PoolError::NotFound { .. }) => "no file",
            Err(PoolError::EmptyFile { .. }) => "empty",
            Err(PoolError::Truncated { .. }) => "truncated",
            Err(PoolError::Incomplete { .. }) => "incomplete",
            Err(e) => panic!("kill #{i} left an unexpected state: {e:?}"),
        };
        *outcomes.entry(outcome).or_default() += 1;
        let _ = std::fs::remove_file(&path);
    }
    eprintln!("kill during create, {kills} kills: {outcomes:?}");
}

/// Truncating a pool at any length (every byte of the header page, then every page boundary
/// and a byte either side of each) gives a typed error, never a panic, and never an open pool.
#[test]
fn truncation_at_every_length_is_reported() {
    let (_d, path) = scratch();
    make_pool(&path);
    let full = std::fs::read(&path).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    let pages = (MIN_POOL_SIZE / 4096) as usize;
    let lens =
        (0..=4096usize).chain((1..pages).flat_map(|p| [p * 4096 - 1, p * 4096, p * 4096 + 1]));
    let mut intact = full.len(); // bytes [0, intact) hold the pool's contents
    for len in lens {
        f.set_len(len as u64).unwrap();
        if len > intact {
            f.write_all_at(&full[intact..len], intact as u64).unwrap();
        }
        intact = len;
        match Pool::open(&path, &rw_opts()) {
            Err(PoolError::EmptyFile { .. }) => assert_eq!(len, 0),
            Err(PoolError::Truncated { actual, .. }) => assert_eq!(actual, len as u64),
            other => panic!("truncated to {len}: {other:?}"),
        }
    }
    f.set_len(MIN_POOL_SIZE).unwrap();
    f.write_all_at(&full[intact..], intact as u64).unwrap();
    open_rw(&path).unwrap();
}
