//! # pmstore-pool
//!
//! The lowest layer of pmstore: the pool file, its header, its mapping, and the persistence
//! domain through which every flush, drain and `msync` goes.
//!
//! * [`Pool::create`] makes a new pool file: preallocated (`posix_fallocate`), header written
//!   last, file and directory `fsync`ed. [`Pool::open`] locks it (`flock`), validates the
//!   [`PoolHeader`] and maps it. Every way a file can be wrong is a distinct [`PoolError`].
//! * The mapping uses `MAP_SHARED_VALIDATE | MAP_SYNC` where the file is on a DAX file system
//!   ([`PersistMode::MapSync`]): then cache-line flushes alone make stores durable. Elsewhere
//!   it falls back to a plain shared mapping and [`PersistMode::Msync`], where durability points
//!   `msync` exactly the pages flushed since the last one. `PMSTORE_FORCE_MODE=flush|msync`
//!   overrides the choice ([`ModeRequest`]).
//! * A [`FlushContext`] (one per thread or lane) carries what was flushed since its last drain
//!   and counts lines flushed, drains and msyncs ([`PersistCounters`]).
//!
//! The on-media format is specified in `docs/FORMAT.md`.
//!
//! ```
//! use pmstore_pool::{CreateOptions, Pool, MIN_POOL_SIZE};
//! # let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("example.pool");
//! let pool = Pool::create(&path, &CreateOptions::new("example", MIN_POOL_SIZE)).unwrap();
//! let mut ctx = pool.flush_context();
//! let off = pool.geometry().heap_offset;
//! // SAFETY: no other thread or reference touches these bytes.
//! unsafe { pool.write(off, b"hello") };
//! pool.persist(&mut ctx, off, 5).unwrap();
//! println!("durable via {}", pool.persistence());
//! ```

mod error;
mod file;
mod header;
mod persist;
mod pool;
mod raw;
pub mod sim;

pub use error::{PoolError, Result};
pub use header::{
    Geometry, PoolHeader, CACHE_LINE, CHECKSUM_OFFSET, COMPAT_KNOWN, FORMAT_MAJOR, FORMAT_MINOR,
    HEADER_SIZE, INCOMPAT_KNOWN, INCOMPAT_LANE_SLOTS, LAYOUT_NAME_MAX, MAX_POOL_SIZE,
    MIN_POOL_SIZE, PAGE, POOL_MAGIC, RO_COMPAT_KNOWN,
};
pub use persist::{FlushContext, ModeRequest, PersistCounters, PersistMode};
pub use pool::{CreateOptions, Inspection, OpenOptions, Pool, MSYNC_MERGE_GAP_PAGES, NT_THRESHOLD};
pub use raw::cpu::FlushInstr;
