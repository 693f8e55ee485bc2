//! `pmstore stats`: allocator usage by size class, redo log usage, the root object.

use std::process::ExitCode;

use pmstore::alloc::heap::CHUNK;

use super::examine::{examine, Options, View};
use super::report::{
    chunks_line, examination_json, finding_lines, free_bytes, lane_lines, logs_line, root_line,
    view_line, Status,
};
use super::{
    count, fail, human, human_short, ReadArgs, EXIT_CORRUPT, EXIT_OK, EXIT_RECOVERY_NEEDED,
};

/// Runs `stats`. Exit 0 with the statistics; 10 if pending logs keep the heap from being
/// examined (see `--max-copy`); 11 if the examination found corruption (statistics printed
/// as far as they go).
pub fn run(args: &ReadArgs) -> ExitCode {
    let opts = Options {
        layout: args.layout.clone(),
        max_copy: args.max_copy,
        root_only: false,
        list_blocks: false,
    };
    let ex = match examine(&args.path, &opts) {
        Ok(ex) => ex,
        Err(e) => return fail(&e, args.json),
    };
    let code = if Status::of(&ex) == Status::Corrupt {
        EXIT_CORRUPT
    } else if matches!(ex.view, View::NotExamined(_)) {
        EXIT_RECOVERY_NEEDED
    } else {
        EXIT_OK
    };
    if args.json {
        let mut v = examination_json(&args.path, &ex, false);
        v["exit_code"] = code.into();
        println!("{v}");
        return ExitCode::from(code);
    }
    println!(
        "pool:       {} (layout \"{}\", {})",
        args.path.display(),
        ex.header.layout_name(),
        human_short(ex.header.pool_size)
    );
    if !matches!(ex.view, View::File) {
        println!("examined:   {}", view_line(&ex.view));
    }
    if let Some(h) = &ex.heap {
        let (free_chunks, free_runs) = free_bytes(h);
        println!(
            "heap:       {} at {:#x}; data from {:#x}",
            human(h.size),
            h.offset,
            h.data_offset
        );
        println!("chunks:     {}", chunks_line(h));
        println!(
            "allocated:  {} in {} and {}",
            human(h.bytes_allocated),
            count(h.live_blocks, "block"),
            count(h.spans, "span")
        );
        println!(
            "free:       {} in free chunks, {} in free blocks of runs",
            human(free_chunks),
            human(free_runs)
        );
        if !h.classes.is_empty() {
            println!();
            println!(
                "{:>6} {:>10} {:>6} {:>7} {:>12} {:>12} {:>6} {:>24}",
                "class", "size", "runs", "chunks", "live blocks", "capacity", "used", "bytes"
            );
            for c in &h.classes {
                let bytes = c.blocks * c.size;
                println!(
                    "{:>6} {:>10} {:>6} {:>7} {:>12} {:>12} {:>5.1}% {:>24}",
                    c.id,
                    human_short(c.size),
                    c.runs,
                    c.chunks,
                    c.blocks,
                    c.capacity,
                    100.0 * c.blocks as f64 / c.capacity.max(1) as f64,
                    format!("{} ({bytes})", human_short(bytes)),
                );
            }
            println!();
        }
        if h.spans > 0 {
            println!(
                "spans:      {} covering {}, {}",
                h.spans,
                count(h.span_chunks, "chunk"),
                human(h.span_chunks * CHUNK)
            );
        }
    }
    println!("logs:       {}", logs_line(&ex.logs));
    println!(
        "            largest pending log: {} slots of {}; highest pending seq: {}",
        ex.logs.largest_slots, ex.logs.capacity, ex.logs.max_seq
    );
    for l in lane_lines(&ex.logs) {
        println!("            {l}");
    }
    if let Some(root) = &ex.root {
        println!("root:       {}", root_line(root));
    }
    for n in &ex.notes {
        println!("note:       {n}");
    }
    if code == EXIT_CORRUPT {
        println!(
            "CORRUPT:    {} findings (run `pmstore check` for details)",
            ex.findings_total
        );
        for f in finding_lines(&ex).iter().take(10) {
            println!("  - {f}");
        }
    }
    ExitCode::from(code)
}
