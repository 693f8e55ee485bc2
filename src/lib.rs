//! # pmstore
//!
//! A persistent transactional object store for Rust, in the style of PMDK's libpmemobj: data
//! structures live directly in persistent memory (a file on a DAX file system, mapped with
//! `MAP_SYNC`) and are made durable with CPU cache flushes, without `fsync`. Where no DAX mount
//! is available the same code stays durable through `msync` of exactly the dirtied pages.
//!
//! This facade re-exports the layers:
//! * [`pool`] (`pmstore-pool`): the pool file, header, mapping and persistence domain;
//! * [`alloc`] (`pmstore-alloc`): the persistent allocator;
//! * [`tx`] (`pmstore-tx`): transactions, typed persistent pointers, recovery.
//!
//! ```
//! use pmstore::{CreateOptions, Pool, PersistMode, MIN_POOL_SIZE};
//! # let dir = tempfile::tempdir().unwrap();
//! let pool = Pool::create(dir.path().join("app.pool"), &CreateOptions::new("my-app", MIN_POOL_SIZE))?;
//! let mut ctx = pool.flush_context();
//! let off = pool.geometry().heap_offset;
//! // SAFETY: nothing else in this program touches these bytes.
//! unsafe { pool.copy_persist(&mut ctx, off, b"hello, persistent world")? };
//! if pool.persistence() == PersistMode::MapSync {
//!     println!("durable across power loss with cache flushes alone");
//! }
//! # Ok::<(), pmstore::PoolError>(())
//! ```

pub use pmstore_alloc as alloc;
pub use pmstore_pool as pool;
pub use pmstore_tx as tx;

pub use pmstore_pool::{
    CreateOptions, FlushContext, FlushInstr, Geometry, Inspection, ModeRequest, OpenOptions,
    PersistCounters, PersistMode, Pool, PoolError, PoolHeader, MAX_POOL_SIZE, MIN_POOL_SIZE,
};
