//! `pmstore check`: validates a pool read-only and says whether it is clean, needs recovery
//! at its next open, or is corrupt.

use std::process::ExitCode;

use super::examine::{examine, Options, MAX_FINDINGS};
use super::report::{
    chunks_line, examination_json, finding_lines, lane_lines, logs_line, root_line, view_line,
    Status,
};
use super::{count, fail, human, human_short, ReadArgs};

/// Findings listed in text output.
const TEXT_FINDINGS: usize = 20;

/// Runs `check`.
pub fn run(args: &ReadArgs, list_blocks: bool) -> ExitCode {
    let opts = Options {
        layout: args.layout.clone(),
        max_copy: args.max_copy,
        root_only: false,
        list_blocks,
    };
    let ex = match examine(&args.path, &opts) {
        Ok(ex) => ex,
        Err(e) => return fail(&e, args.json),
    };
    let status = Status::of(&ex);
    if args.json {
        println!("{}", examination_json(&args.path, &ex, list_blocks));
        return ExitCode::from(status.exit_code());
    }
    let h = &ex.header;
    println!("pool:       {}", args.path.display());
    println!(
        "header:     valid: layout \"{}\", {}, format v{}.{}, uuid {}",
        h.layout_name(),
        human_short(h.pool_size),
        h.major,
        h.minor,
        h.uuid()
    );
    println!("logs:       {}", logs_line(&ex.logs));
    for l in lane_lines(&ex.logs) {
        println!("            {l}");
    }
    println!("examined:   {}", view_line(&ex.view));
    if let Some(heap) = &ex.heap {
        println!("heap:       {}", chunks_line(heap));
        println!(
            "            {} and {}, {} allocated",
            count(heap.live_blocks, "live block"),
            count(heap.spans, "span"),
            human(heap.bytes_allocated)
        );
        if list_blocks {
            for (off, size) in &heap.blocks {
                println!("            block {off:#x} {size}");
            }
        }
    }
    if let Some(root) = &ex.root {
        println!("root:       {}", root_line(root));
    }
    for n in &ex.notes {
        println!("note:       {n}");
    }
    match status {
        Status::Clean => println!("result:     clean"),
        Status::RecoveryNeeded => println!(
            "result:     clean, but the next open replays {} pending redo logs (exit 10)",
            ex.logs.valid
        ),
        Status::Corrupt => {
            println!(
                "result:     CORRUPT: {} findings (exit 11)",
                ex.findings_total
            );
            let lines = finding_lines(&ex);
            for f in lines.iter().take(TEXT_FINDINGS) {
                println!("  - {f}");
            }
            if lines.len() > TEXT_FINDINGS {
                println!(
                    "  ... {} more (--json lists up to {MAX_FINDINGS})",
                    ex.findings_total - TEXT_FINDINGS
                );
            }
        }
    }
    ExitCode::from(status.exit_code())
}
