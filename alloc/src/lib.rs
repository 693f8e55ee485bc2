//! # pmstore-alloc
//!
//! The persistent allocator of pmstore (chunks, size-class runs with allocation bitmaps, a
//! redo log per lane; design: `docs/ALLOC.md`):
//!
//! * [`Heap`]: the allocator handle. [`Heap::open`] recovers the redo logs and builds empty
//!   volatile state (the heap is scanned lazily); [`Heap::alloc`] and [`Heap::free`] are
//!   atomic (one redo log each, which also stores the block's offset into, or clears, a
//!   destination word); [`Heap::for_each_allocated`] and [`Heap::stats`] inspect it.
//! * For the transaction layer: [`Heap::reserve`] takes a block in the volatile state only
//!   (a [`Reservation`], cancelled by [`Heap::cancel`] or on drop); [`Heap::publish`] makes
//!   a set of reservations, frees and extra word stores atomic in one redo commit;
//!   [`Heap::lane`] checks a lane out ([`LaneGuard`]) for [`Heap::publish_with`].
//! * [`volatile`]: the pool-free concurrent core (run bitmaps with reservations, the lane
//!   pool), model-checked with loom (`tests/loom_core.rs`, `--cfg loom`).
//! * [`heap`]: the on-media format (geometry, chunk headers); [`classes`]: the size classes.
//! * [`redo`]: the **lane redo log**: a word-granular, checksummed redo log per lane that makes
//!   a set of 8-byte word updates and byte ranges atomic, with one drain per small commit
//!   (deferred apply: every one in msync mode, those with word entries with cache flushes) or
//!   two, and its recovery. Format and crash argument: `docs/REDO.md`.
//!
//! ```
//! use pmstore_alloc::redo::{RedoEntry, RedoLogs};
//! use pmstore_pool::{CreateOptions, Pool, MIN_POOL_SIZE};
//! # let dir = tempfile::tempdir().unwrap();
//! let mut pool = Pool::create(dir.path().join("p"), &CreateOptions::new("doc", MIN_POOL_SIZE))?;
//! let (logs, _report) = RedoLogs::recover(&mut pool)?; // at open, before anything else
//! let mut lane = logs.lane(0).expect("lane 0 is free");
//! let mut ctx = pool.flush_context();
//! let a = pool.geometry().heap_offset;
//! // SAFETY: this thread owns the words at `a` and `a + 8`; one RedoLogs per pool.
//! unsafe { lane.commit(&pool, &mut ctx, &[RedoEntry::new(a, 1), RedoEntry::new(a + 8, 2)])? };
//! # Ok::<(), pmstore_alloc::AllocError>(())
//! ```

mod allocator;
pub mod classes;
mod crc;
mod defer;
mod error;
pub mod heap;
mod live;
#[doc(hidden)]
pub mod primitive;
pub mod redo;
pub mod volatile;

pub use allocator::{Heap, HeapStats, LaneGuard, Reservation};
pub use heap::HeapCorruption;

pub use error::{AllocError, CorruptReason, Result, TargetError};
pub use pmstore_pool as pool;
