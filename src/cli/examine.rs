//! Read-only examination of a pool, shared by `check`, `stats` and `dump-root`.
//!
//! The pool file is opened read-only (`PROT_READ` mapping, shared `flock`): nothing here can
//! store to it. What is examined is what the next read-write open would see:
//!
//! * with no valid redo log pending, the file itself (torn logs are only cleared at open,
//!   which changes nothing else);
//! * with valid logs pending, an in-memory copy of the pool on which the allocator's own
//!   recovery (`Heap::open`) has run (`Pool::open_simulated`), if the pool is no larger than
//!   `max_copy`; otherwise the heap and the root are not examined.
//!
//! The heap walk (`walk.rs`) reads the chunk headers and bitmap slots itself (rather than
//! through `Heap::for_each_allocated`, which stops at the first error and does not look at
//! free chunks' bitmaps), so that it reports every finding.

use bytemuck::pod_read_unaligned;
use pmstore::alloc::heap::CHUNK;
use pmstore::alloc::redo::{
    decode_log, Invalid, LogState, RecoveryReport, RedoHeader, RedoLayout, LOG_SLOTS,
    REDO_HEADER_SIZE,
};
use pmstore::alloc::{AllocError, Heap};
use pmstore::pool::{ModeRequest, OpenOptions, Pool, PoolError, PoolHeader};

use super::walk::{walk_heap, HeapReport, RootBlock};

/// Bytes of the root entry at the start of the root area (`docs/FORMAT.md` §6.1).
pub const ROOT_ENTRY: u64 = pmstore::tx::ROOT_ENTRY_SIZE;
/// At most this many findings are kept (the total is still counted).
pub const MAX_FINDINGS: usize = 1000;

/// What to examine and how.
#[derive(Clone, Debug)]
pub struct Options {
    /// The layout name the pool must have, if any.
    pub layout: Option<String>,
    /// Largest pool copied into memory to simulate recovery.
    pub max_copy: u64,
    /// Walk the heap only as far as the root object's block (no bitmap checks elsewhere).
    pub root_only: bool,
    /// Record every live block (offset, size).
    pub list_blocks: bool,
}

/// One thing found wrong.
#[derive(Clone, Debug)]
pub struct Finding {
    /// `logs`, `heap` or `root`.
    pub area: &'static str,
    /// The lane, for log findings.
    pub lane: Option<u32>,
    /// The chunk, for heap findings.
    pub chunk: Option<u32>,
    /// The pool offset concerned, where there is one.
    pub offset: Option<u64>,
    /// What is wrong.
    pub message: String,
}

/// The state of one lane's redo log.
#[derive(Clone, Debug)]
pub enum LaneState {
    /// No log.
    Empty,
    /// Not a valid log (torn, stale or damaged): the next open clears it, replaying nothing.
    Invalid(String),
    /// A valid log: the next open replays it.
    Valid {
        /// Its sequence number.
        seq: u64,
        /// Its 16-byte slots.
        slots: u32,
        /// Word entries.
        words: usize,
        /// Range entries.
        ranges: usize,
    },
    /// Valid checksum, impossible contents: the next open fails (`CorruptLog`).
    Corrupt(String),
}

impl LaneState {
    /// Short name for output.
    pub fn name(&self) -> &'static str {
        match self {
            LaneState::Empty => "empty",
            LaneState::Invalid(_) => "invalid",
            LaneState::Valid { .. } => "valid",
            LaneState::Corrupt(_) => "corrupt",
        }
    }
}

/// Every lane's log, classified.
#[derive(Clone, Debug, Default)]
pub struct Logs {
    /// Lanes in the pool.
    pub lane_count: u32,
    /// Bytes per lane.
    pub lane_size: u32,
    /// Slots a log holds in its lane (0 if the lanes are too small for a log).
    pub capacity: usize,
    /// Lanes with no log.
    pub empty: u32,
    /// Lanes with an invalid (torn) log.
    pub invalid: u32,
    /// Lanes with a valid log.
    pub valid: u32,
    /// Lanes with a corrupt log.
    pub corrupt: u32,
    /// Slots of the largest valid log (0 if none).
    pub largest_slots: u32,
    /// Highest sequence number of a valid log (0 if none).
    pub max_seq: u64,
    /// The lanes that are not empty, with their state.
    /// `(lane, slot, state)` of every non-empty log region.
    pub lanes: Vec<(u32, u32, LaneState)>,
}

/// What was examined: the file, a recovered copy, or (heap and root) nothing.
#[derive(Clone, Debug)]
pub enum View {
    /// The pool file as it is (no valid log pending).
    File,
    /// An in-memory copy after the recovery the next open would run.
    RecoveredCopy(RecoveryReport),
    /// The pool file as it is, although the next open would not get this far (corrupt
    /// logs): heap findings may stem from logs that cannot be replayed.
    FileUnrecoverable,
    /// Heap and root not examined, for the reason given.
    NotExamined(String),
}

impl View {
    /// Short name for JSON.
    pub fn name(&self) -> &'static str {
        match self {
            View::File => "file",
            View::RecoveredCopy(_) => "recovered-copy",
            View::FileUnrecoverable => "file-unrecoverable",
            View::NotExamined(_) => "not-examined",
        }
    }
}

/// The root entry and its block.
#[derive(Clone, Debug)]
pub struct RootReport {
    /// The root object's offset (0 = none).
    pub offset: u64,
    /// Its size.
    pub size: u64,
    /// Its block (`None` if there is no root object or the walk did not get to it).
    pub block: Option<RootBlock>,
    /// Non-zero bytes in the reserved part of the root area.
    pub reserved_nonzero: u64,
    /// Pool offset of the first of them.
    pub first_nonzero: Option<u64>,
    /// Pool offset of the root area (and entry).
    pub area_offset: u64,
}

/// The result of examining a pool.
pub struct Examination {
    /// The validated pool header.
    pub header: PoolHeader,
    /// The redo logs.
    pub logs: Logs,
    /// What the heap and root reports describe.
    pub view: View,
    /// The heap walk, unless not examined.
    pub heap: Option<HeapReport>,
    /// The root entry, unless not examined.
    pub root: Option<RootReport>,
    /// Findings (at most [`MAX_FINDINGS`]).
    pub findings: Vec<Finding>,
    /// Findings in all.
    pub findings_total: usize,
    /// Notes that are not findings.
    pub notes: Vec<String>,
    /// The recovered in-memory copy, if that is what was examined.
    copy: Option<Pool>,
    /// The file, open read-only (shared lock) for as long as the examination lives.
    file: Pool,
}

impl Examination {
    /// Whether valid logs are pending (the next open replays them).
    pub fn recovery_needed(&self) -> bool {
        self.logs.valid > 0
    }

    /// Reads `len` bytes at `offset` of what was examined (the file or the recovered copy).
    ///
    /// # Panics
    /// If the heap was not examined, or the range is outside the pool.
    pub fn read(&self, offset: u64, len: u64) -> Vec<u8> {
        let pool = self.source().expect("examined");
        let mut v = vec![0; len as usize];
        // SAFETY: a read-only file mapping (shared flock: no pmstore writer) or our private
        // in-memory copy; nothing in this process writes either.
        unsafe { pool.read(offset, &mut v) };
        v
    }

    /// The pool the heap and root reports describe: the file, the recovered copy, or none.
    fn source(&self) -> Option<&Pool> {
        match self.view {
            View::File | View::FileUnrecoverable => Some(&self.file),
            View::RecoveredCopy(_) => self.copy.as_ref(),
            View::NotExamined(_) => None,
        }
    }

    fn find(&mut self, f: Finding) {
        self.findings_total += 1;
        if self.findings.len() < MAX_FINDINGS {
            self.findings.push(f);
        }
    }
}

/// Opens `path` read-only and examines it (see the module docs).
///
/// # Errors
/// The pool layer's open errors (the header is validated as `pmstore info` does).
pub fn examine(path: &std::path::Path, opts: &Options) -> Result<Examination, PoolError> {
    let file = Pool::open(
        path,
        &OpenOptions {
            layout: opts.layout.clone(),
            read_only: true,
            // No persistence happens here; a plain read-only mapping (whatever
            // PMSTORE_FORCE_MODE says).
            mode: ModeRequest::Msync,
        },
    )?;
    let header = *file.header();
    let mut ex = Examination {
        header,
        logs: Logs::default(),
        view: View::File,
        heap: None,
        root: None,
        findings: Vec::new(),
        findings_total: 0,
        notes: Vec::new(),
        copy: None,
        file,
    };
    let logs = classify_logs(&ex.file);
    let (logs, log_findings) = match logs {
        Ok(x) => x,
        Err(msg) => {
            let g = header.geometry();
            let logs = Logs {
                lane_count: g.lane_count,
                lane_size: g.lane_size,
                ..Logs::default()
            };
            (
                logs,
                vec![Finding {
                    area: "logs",
                    lane: None,
                    chunk: None,
                    offset: Some(g.lanes_offset),
                    message: msg,
                }],
            )
        }
    };
    let unrecoverable = !log_findings.is_empty();
    ex.logs = logs;
    for f in log_findings {
        ex.find(f);
    }
    if ex.logs.invalid > 0 {
        ex.notes.push(format!(
            "{} torn (invalid) redo logs: the next read-write open clears them without replaying \
             anything (until then a read-only open of the object store fails)",
            ex.logs.invalid
        ));
    }
    let size = header.pool_size;
    if unrecoverable {
        ex.view = View::FileUnrecoverable;
        ex.notes.push(
            "the next open would fail (the redo logs cannot be recovered): heap and root \
             examined as they are in the file, without any pending log"
                .into(),
        );
    } else if ex.logs.valid > 0 && size > opts.max_copy {
        let why = format!(
            "{} valid redo logs pending and the pool ({}) is larger than --max-copy ({}): \
             heap and root not examined; open the pool read-write once to recover it",
            ex.logs.valid,
            super::human_short(size),
            super::human_short(opts.max_copy)
        );
        ex.view = View::NotExamined(why.clone());
        ex.notes.push(why);
    } else if ex.logs.valid > 0 {
        match recovered_copy(&ex.file) {
            Ok((pool, report)) => {
                ex.view = View::RecoveredCopy(report);
                ex.notes.push(format!(
                    "{} valid redo logs pending: examined an in-memory copy after the recovery \
                     the next open will run ({} logs replayed); the file is unchanged",
                    ex.logs.valid, report.logs_replayed
                ));
                ex.copy = Some(pool);
            }
            Err(e) => {
                let why = format!("could not simulate recovery in memory: {e}");
                ex.find(Finding {
                    area: "logs",
                    lane: None,
                    chunk: None,
                    offset: None,
                    message: why.clone(),
                });
                ex.view = View::NotExamined(why);
            }
        }
    }
    let walked = ex.source().map(|pool| {
        let mut root = read_root(pool);
        let (heap, block, findings) = walk_heap(pool, root.offset, opts);
        root.block = block;
        (root, heap, findings)
    });
    if let Some((root, heap, findings)) = walked {
        let root_findings = check_root(&root, &heap);
        ex.heap = Some(heap);
        ex.root = Some(root);
        for f in findings.into_iter().chain(root_findings) {
            ex.find(f);
        }
    }
    Ok(ex)
}

/// An in-memory copy of `file` on which the allocator's recovery has run.
fn recovered_copy(file: &Pool) -> Result<(Pool, RecoveryReport), String> {
    let len = usize::try_from(file.size()).map_err(|e| e.to_string())?;
    let map = file.ptr_at(0, file.size());
    // SAFETY: the mapping is `len` bytes, readable and alive as long as `file`; we hold the
    // pool's shared lock, so no pmstore writer modifies it while it is copied.
    let image = unsafe { std::slice::from_raw_parts(map.as_ptr(), len) };
    let (mut pool, _sim) =
        Pool::open_simulated(image, &OpenOptions::default()).map_err(|e| e.to_string())?;
    let (heap, report) = Heap::open(&mut pool).map_err(|e| e.to_string())?;
    drop(heap);
    Ok((pool, report))
}

fn describe_invalid(why: &Invalid) -> String {
    match why {
        Invalid::BadCount(c) => format!("slot count {c} out of range"),
        Invalid::ChecksumMismatch { stored, computed } => {
            format!("checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")
        }
        other => format!("{other:?}"),
    }
}

/// Classifies every lane's log as recovery would (`decode_log`), modifying nothing. `Err` if
/// the lanes cannot hold logs at all.
fn classify_logs(pool: &Pool) -> Result<(Logs, Vec<Finding>), String> {
    let g = pool.geometry();
    let mut logs = Logs {
        lane_count: g.lane_count,
        lane_size: g.lane_size,
        ..Logs::default()
    };
    let layout = RedoLayout::new(pool.size(), &g).map_err(|e| e.to_string())?;
    logs.capacity = layout.capacity();
    let mut findings = Vec::new();
    let mut region = vec![0u8; layout.log_size() as usize];
    let mut seqs: Vec<(u64, u32, u32)> = Vec::new();
    for (lane, slot) in (0..layout.lane_count()).flat_map(|l| (0..LOG_SLOTS).map(move |s| (l, s))) {
        let off = layout.slot_offset(lane, slot);
        // SAFETY: read-only mapping under a shared lock (see `Examination::read`).
        unsafe { pool.read(off, &mut region) };
        let header: RedoHeader = pod_read_unaligned(&region[..REDO_HEADER_SIZE as usize]);
        // A log with an extension: its slot stream goes on in the heap; `decode_log` takes the
        // lane's bytes followed by the extension's.
        let state = match header.extension(&layout) {
            Ok(Some((ext, ext_len))) => {
                let mut bytes = region.clone();
                bytes.resize(region.len() + ext_len as usize, 0);
                // SAFETY: as above; `extension` checked that the range is inside the pool.
                unsafe { pool.read(ext, &mut bytes[region.len()..]) };
                decode_log(&bytes, lane, &layout)
            }
            _ => decode_log(&region, lane, &layout),
        };
        let state = match state {
            Ok(LogState::Empty) => LaneState::Empty,
            Ok(LogState::Invalid(why)) => LaneState::Invalid(describe_invalid(&why)),
            Ok(LogState::Valid {
                seq,
                entries,
                ranges,
            }) => LaneState::Valid {
                seq,
                slots: header.count,
                words: entries.len(),
                ranges: ranges.len(),
            },
            Err(e) => {
                let msg = match &e {
                    AllocError::CorruptLog { seq, reason, .. } => {
                        format!("corrupt redo log (seq {seq}): {reason}")
                    }
                    e => e.to_string(),
                };
                LaneState::Corrupt(msg)
            }
        };
        match &state {
            LaneState::Empty => logs.empty += 1,
            LaneState::Invalid(_) => logs.invalid += 1,
            LaneState::Valid { seq, slots, .. } => {
                logs.valid += 1;
                logs.largest_slots = logs.largest_slots.max(*slots);
                logs.max_seq = logs.max_seq.max(*seq);
                seqs.push((*seq, lane, slot));
            }
            LaneState::Corrupt(msg) => {
                logs.corrupt += 1;
                findings.push(Finding {
                    area: "logs",
                    lane: Some(lane),
                    chunk: None,
                    offset: Some(off),
                    message: format!("lane {lane} slot {slot}: {msg}"),
                });
            }
        }
        if !matches!(state, LaneState::Empty) {
            logs.lanes.push((lane, slot, state));
        }
    }
    seqs.sort_unstable();
    for w in seqs.windows(2) {
        if w[0].0 == w[1].0 {
            findings.push(Finding {
                area: "logs",
                lane: Some(w[1].1),
                chunk: None,
                offset: Some(layout.slot_offset(w[1].1, w[1].2)),
                message: format!(
                    "lane {} slot {}: valid log with sequence number {} also used by lane {} \
                     slot {} (replay order undefined)",
                    w[1].1, w[1].2, w[1].0, w[0].1, w[0].2
                ),
            });
        }
    }
    Ok((logs, findings))
}

/// The root entry and the reserved part of the root area.
fn read_root(pool: &Pool) -> RootReport {
    let g = pool.geometry();
    let mut area = vec![0u8; g.root_size as usize];
    // SAFETY: as in `Examination::read`.
    unsafe { pool.read(g.root_offset, &mut area) };
    let word = |i: usize| u64::from_le_bytes(area[i..i + 8].try_into().expect("8 bytes"));
    let reserved = &area[ROOT_ENTRY as usize..];
    RootReport {
        offset: word(0),
        size: word(8),
        block: None,
        reserved_nonzero: reserved.iter().filter(|&&b| b != 0).count() as u64,
        first_nonzero: reserved
            .iter()
            .position(|&b| b != 0)
            .map(|i| g.root_offset + ROOT_ENTRY + i as u64),
        area_offset: g.root_offset,
    }
}

/// Findings about the root entry, after the walk resolved its block.
fn check_root(root: &RootReport, heap: &HeapReport) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut find = |offset, message| {
        out.push(Finding {
            area: "root",
            lane: None,
            chunk: None,
            offset: Some(offset),
            message,
        })
    };
    if let Some(first) = root.first_nonzero {
        find(
            first,
            format!(
                "{} non-zero bytes in the reserved part of the root area (after the 16-byte \
                 root entry), the first at {first:#x}: the next open fails (CorruptRootArea)",
                root.reserved_nonzero
            ),
        );
    }
    if root.offset == 0 {
        if root.size != 0 {
            find(
                root.area_offset,
                format!("root entry has no object (offset 0) but size {}", root.size),
            );
        }
        return out;
    }
    let data_end = heap.data_offset + u64::from(heap.chunks) * CHUNK;
    if root.offset < heap.data_offset || root.offset >= data_end {
        find(
            root.offset,
            format!(
                "root object offset {:#x} is outside the heap's data area [{:#x}, {:#x})",
                root.offset, heap.data_offset, data_end
            ),
        );
        return out;
    }
    match root.block {
        Some(RootBlock::Block { size, .. } | RootBlock::Span { size }) if size < root.size => find(
            root.offset,
            format!(
                "root object of {} bytes does not fit its block of {size} bytes",
                root.size
            ),
        ),
        Some(RootBlock::NotLive(why)) => find(
            root.offset,
            format!(
                "root object offset {:#x} is not a live block: {why}",
                root.offset
            ),
        ),
        _ => {}
    }
    out
}
