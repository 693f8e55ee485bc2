//! `pmstore dump-root`: the root object's bytes in hex.

use std::fmt::Write as _;
use std::process::ExitCode;

use serde_json::json;

use super::examine::{examine, Options, View};
use super::walk::RootBlock;
use super::{fail, fail_with, human, ReadArgs, EXIT_CORRUPT, EXIT_NO_ROOT, EXIT_RECOVERY_NEEDED};

/// `xxd`-like lines: offset, 16 bytes in groups of two, ASCII.
pub fn hexdump(bytes: &[u8]) -> String {
    let mut out = String::new();
    for (i, line) in bytes.chunks(16).enumerate() {
        let _ = write!(out, "{:08x}: ", i * 16);
        for j in 0..16 {
            match line.get(j) {
                Some(b) => {
                    let _ = write!(out, "{b:02x}");
                }
                None => out.push_str("  "),
            }
            if j % 2 == 1 {
                out.push(' ');
            }
        }
        out.push(' ');
        out.extend(line.iter().map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '.'
            }
        }));
        out.push('\n');
    }
    out
}

/// Runs `dump-root`.
pub fn run(args: &ReadArgs, len: Option<u64>) -> ExitCode {
    let opts = Options {
        layout: args.layout.clone(),
        max_copy: args.max_copy,
        root_only: true,
        list_blocks: false,
    };
    let ex = match examine(&args.path, &opts) {
        Ok(ex) => ex,
        Err(e) => return fail(&e, args.json),
    };
    if let View::NotExamined(why) = &ex.view {
        return fail_with("RecoveryNeeded", why, EXIT_RECOVERY_NEEDED, args.json);
    }
    let root = ex.root.as_ref().expect("examined");
    if let Some(f) = ex.findings.iter().find(|f| f.area == "root") {
        return fail_with(
            "CorruptRoot",
            &format!("{} (run `pmstore check`)", f.message),
            EXIT_CORRUPT,
            args.json,
        );
    }
    if root.offset == 0 {
        return fail_with(
            "NoRoot",
            "the pool has no root object yet",
            EXIT_NO_ROOT,
            args.json,
        );
    }
    let block = match root.block {
        Some(RootBlock::Block { size, .. } | RootBlock::Span { size }) => size,
        _ => {
            return fail_with(
                "CorruptRoot",
                "the root object's block could not be found (run `pmstore check`)",
                EXIT_CORRUPT,
                args.json,
            )
        }
    };
    if ex.findings_total > 0 {
        eprintln!(
            "pmstore: warning: {} findings besides the root entry (run `pmstore check`)",
            ex.findings_total
        );
    }
    let n = len.map_or(root.size, |l| l.min(root.size));
    let bytes = ex.read(root.offset, n);
    if args.json {
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        println!(
            "{}",
            json!({"ok": true, "path": args.path, "offset": root.offset, "size": root.size,
                   "block_size": block, "len": n, "recovered": ex.recovery_needed(),
                   "hex": hex})
        );
    } else {
        println!(
            "root object at {:#x}: {} in a block of {}; showing {n} bytes{}",
            root.offset,
            human(root.size),
            human(block),
            if ex.recovery_needed() {
                " (after the recovery the next open will run; the file is unchanged)"
            } else {
                ""
            }
        );
        print!("{}", hexdump(&bytes));
    }
    ExitCode::SUCCESS
}
