//! JSON and text renderings of an [`Examination`], shared by `check` and `stats`.

use std::path::Path;

use pmstore::alloc::heap::CHUNK;
use serde_json::{json, Value};

use super::examine::{Examination, Finding, LaneState, Logs, RootReport, View};
use super::walk::{HeapReport, RootBlock};
use super::{count, human, human_short, EXIT_CORRUPT, EXIT_OK, EXIT_RECOVERY_NEEDED};

/// The verdict of an examination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Nothing wrong, nothing pending.
    Clean,
    /// Nothing wrong found, valid redo logs pending.
    RecoveryNeeded,
    /// Findings.
    Corrupt,
}

impl Status {
    /// Of an examination.
    pub fn of(ex: &Examination) -> Status {
        if ex.findings_total > 0 {
            Status::Corrupt
        } else if ex.recovery_needed() {
            Status::RecoveryNeeded
        } else {
            Status::Clean
        }
    }

    /// Name for JSON.
    pub fn name(self) -> &'static str {
        match self {
            Status::Clean => "clean",
            Status::RecoveryNeeded => "recovery-needed",
            Status::Corrupt => "corrupt",
        }
    }

    /// `check`'s exit code.
    pub fn exit_code(self) -> u8 {
        match self {
            Status::Clean => EXIT_OK,
            Status::RecoveryNeeded => EXIT_RECOVERY_NEEDED,
            Status::Corrupt => EXIT_CORRUPT,
        }
    }
}

/// The header's identity.
pub fn pool_json(path: &Path, ex: &Examination) -> Value {
    let h = &ex.header;
    json!({
        "path": path,
        "layout": h.layout_name(),
        "uuid": h.uuid().to_string(),
        "pool_size": h.pool_size,
        "format": {"major": h.major, "minor": h.minor},
    })
}

/// The redo logs.
pub fn logs_json(l: &Logs) -> Value {
    let lanes: Vec<Value> = l
        .lanes
        .iter()
        .map(|(lane, slot, s)| match s {
            LaneState::Valid {
                seq,
                slots,
                words,
                ranges,
            } => json!({"lane": lane, "slot": slot, "state": s.name(), "seq": seq,
                        "slots": slots, "words": words, "ranges": ranges}),
            LaneState::Invalid(why) | LaneState::Corrupt(why) => {
                json!({"lane": lane, "slot": slot, "state": s.name(), "reason": why})
            }
            LaneState::Empty => json!({"lane": lane, "slot": slot, "state": s.name()}),
        })
        .collect();
    json!({
        "lanes": l.lane_count,
        "lane_size": l.lane_size,
        "capacity_slots": l.capacity,
        "empty": l.empty,
        "invalid": l.invalid,
        "valid": l.valid,
        "corrupt": l.corrupt,
        "largest_valid_slots": l.largest_slots,
        "max_seq": l.max_seq,
        "not_empty": lanes,
    })
}

/// Free bytes: whole free chunks, and free blocks of runs.
pub fn free_bytes(h: &HeapReport) -> (u64, u64) {
    let in_runs = h
        .classes
        .iter()
        .map(|c| (c.capacity - c.blocks.min(c.capacity)) * c.size)
        .sum();
    (h.free_chunks * CHUNK, in_runs)
}

/// The heap walk.
pub fn heap_json(h: &HeapReport, list_blocks: bool) -> Value {
    let (free_chunk_bytes, free_run_bytes) = free_bytes(h);
    let classes: Vec<Value> = h
        .classes
        .iter()
        .map(|c| {
            json!({"id": c.id, "size": c.size, "runs": c.runs, "chunks": c.chunks,
                   "capacity": c.capacity, "blocks": c.blocks, "bytes": c.blocks * c.size})
        })
        .collect();
    let mut v = json!({
        "offset": h.offset,
        "size": h.size,
        "data_offset": h.data_offset,
        "chunk_size": CHUNK,
        "chunks": h.chunks,
        "chunks_walked": h.chunks_walked,
        "free_chunks": h.free_chunks,
        "runs": h.runs,
        "run_chunks": h.run_chunks,
        "spans": h.spans,
        "span_chunks": h.span_chunks,
        "span_bytes": h.span_chunks * CHUNK,
        "bad_chunks": h.bad_chunks,
        "live_blocks": h.live_blocks,
        "bytes_allocated": h.bytes_allocated,
        "free_chunk_bytes": free_chunk_bytes,
        "free_run_bytes": free_run_bytes,
        "classes": classes,
    });
    if list_blocks {
        v["blocks"] = json!(h.blocks);
    }
    v
}

/// The root entry.
pub fn root_json(r: &RootReport) -> Value {
    let block = match r.block {
        Some(RootBlock::Block { class, size }) => {
            json!({"kind": "run", "class": class, "size": size})
        }
        Some(RootBlock::Span { size }) => json!({"kind": "span", "size": size}),
        Some(RootBlock::NotLive(why)) => json!({"kind": "not-live", "reason": why}),
        None => Value::Null,
    };
    json!({
        "offset": r.offset,
        "size": r.size,
        "exists": r.offset != 0,
        "live": matches!(r.block, Some(RootBlock::Block { .. } | RootBlock::Span { .. })),
        "block": block,
        "reserved_nonzero": r.reserved_nonzero,
    })
}

/// One finding.
pub fn finding_json(f: &Finding) -> Value {
    json!({"area": f.area, "lane": f.lane, "chunk": f.chunk, "offset": f.offset,
           "message": f.message})
}

/// Everything, as `check --json` and `stats --json` print it.
pub fn examination_json(path: &Path, ex: &Examination, list_blocks: bool) -> Value {
    let status = Status::of(ex);
    let recovery = match &ex.view {
        View::RecoveredCopy(r) => json!({"logs_replayed": r.logs_replayed,
            "entries_applied": r.entries_applied, "ranges_applied": r.ranges_applied,
            "invalid_cleared": r.invalid_cleared, "max_seq": r.max_seq}),
        _ => Value::Null,
    };
    json!({
        "ok": true,
        "status": status.name(),
        "exit_code": status.exit_code(),
        "pool": pool_json(path, ex),
        "header": "valid",
        "recovery_needed": ex.recovery_needed(),
        "examined": ex.view.name(),
        "simulated_recovery": recovery,
        "logs": logs_json(&ex.logs),
        "heap": ex.heap.as_ref().map(|h| heap_json(h, list_blocks)),
        "root": ex.root.as_ref().map(root_json),
        "findings_total": ex.findings_total,
        "findings": ex.findings.iter().map(finding_json).collect::<Vec<_>>(),
        "notes": ex.notes,
    })
}

/// `64 lanes of 16.0 KiB (2 logs of 508 slots each): 127 empty, 1 invalid, 0 valid, 0 corrupt`.
pub fn logs_line(l: &Logs) -> String {
    format!(
        "{} lanes of {} (2 logs of {} slots each): {} empty, {} invalid, {} valid, {} corrupt",
        l.lane_count,
        human_short(u64::from(l.lane_size)),
        l.capacity,
        l.empty,
        l.invalid,
        l.valid,
        l.corrupt
    )
}

/// The non-empty lanes, one line each.
pub fn lane_lines(l: &Logs) -> Vec<String> {
    l.lanes
        .iter()
        .map(|(lane, slot, s)| match s {
            LaneState::Valid {
                seq,
                slots,
                words,
                ranges,
            } => format!(
                "lane {lane} slot {slot}: valid log, seq {seq}, {slots} slots ({words} words, \
                 {ranges} ranges): replayed at the next open"
            ),
            LaneState::Invalid(why) => {
                format!("lane {lane} slot {slot}: torn log ({why}): cleared at the next open")
            }
            LaneState::Corrupt(why) => format!("lane {lane} slot {slot}: {why}"),
            LaneState::Empty => format!("lane {lane} slot {slot}: empty"),
        })
        .collect()
}

/// What the heap and root lines describe.
pub fn view_line(v: &View) -> String {
    match v {
        View::File => "the pool file".into(),
        View::RecoveredCopy(_) => {
            "an in-memory copy after simulated recovery (the file is unchanged)".into()
        }
        View::FileUnrecoverable => "the pool file as it is (its logs cannot be replayed)".into(),
        View::NotExamined(why) => format!("not examined: {why}"),
    }
}

/// The root entry, in words.
pub fn root_line(r: &RootReport) -> String {
    if r.offset == 0 {
        return "no root object yet".into();
    }
    let block = match r.block {
        Some(RootBlock::Block { class, size }) => {
            format!("a live block of class {class} ({})", human_short(size))
        }
        Some(RootBlock::Span { size }) => format!("a live span of {}", human_short(size)),
        Some(RootBlock::NotLive(why)) => format!("NOT a live block: {why}"),
        None => "no block (outside the heap's data area)".into(),
    };
    format!("object at {:#x}, {}, in {block}", r.offset, human(r.size))
}

/// The heap's chunk usage, in words.
pub fn chunks_line(h: &HeapReport) -> String {
    format!(
        "{} of {}: {} free, {} in {}, {} in {}{}",
        count(u64::from(h.chunks), "chunk"),
        human_short(CHUNK),
        h.free_chunks,
        h.run_chunks,
        count(h.runs, "run"),
        h.span_chunks,
        count(h.spans, "span"),
        if h.bad_chunks > 0 {
            format!(", {} with a corrupt header", h.bad_chunks)
        } else {
            String::new()
        }
    )
}

/// Findings, one line each (with a count of those not kept).
pub fn finding_lines(ex: &Examination) -> Vec<String> {
    let mut v: Vec<String> = ex
        .findings
        .iter()
        .map(|f| match f.offset {
            Some(off) if f.area == "heap" => {
                format!("{}: {} (at {off:#x})", f.area, f.message)
            }
            _ => format!("{}: {}", f.area, f.message),
        })
        .collect();
    if ex.findings_total > ex.findings.len() {
        v.push(format!(
            "... and {} more",
            ex.findings_total - ex.findings.len()
        ));
    }
    v
}
