//! # pmstore
//!
//! A persistent transactional object store for Rust, in the style of PMDK's libpmemobj: data
//! structures live directly in persistent memory (a file on a DAX file system, mapped with
//! `MAP_SYNC`) and are made durable with CPU cache flushes, without `fsync`. Where no DAX mount
//! is available the same code stays durable through `msync` of exactly the dirtied pages.
//!
//! ```
//! use pmstore::{CreateOptions, PPtr, Pool, TxError};
//! use bytemuck::{Pod, Zeroable};
//!
//! #[derive(Clone, Copy, Pod, Zeroable)]
//! #[repr(C)]
//! struct Counter { hits: u64 }
//!
//! # let dir = tempfile::tempdir().unwrap();
//! let pool = Pool::create(dir.path().join("app.pool"), &CreateOptions::new("my-app", 8 << 20))?;
//! let root: PPtr<Counter> = pool.root()?;
//! pool.transaction(|tx| {
//!     tx.get_mut(root)?.hits += 1;    // logged, all-or-nothing across crashes
//!     Ok::<_, TxError>(())
//! })?;
//! println!("mode: {}", pool.persistence().name());
//! # Ok::<(), TxError>(())
//! ```
//!
//! This facade re-exports the layers:
//! * [`pool`] (`pmstore-pool`): the pool file, header, mapping and persistence domain;
//! * [`alloc`] (`pmstore-alloc`): the persistent allocator;
//! * [`tx`] (`pmstore-tx`): transactions, typed persistent pointers, recovery: [`Pool`],
//!   [`Tx`], [`PPtr`] (re-exported here).
//!
//! The pool file layer's own handle is [`pool::Pool`] (raw byte access, `unsafe`).
//!

pub use pmstore_alloc as alloc;
pub use pmstore_pool as pool;
pub use pmstore_tx as tx;

pub use pmstore_pool::{
    CreateOptions, FlushContext, FlushInstr, Geometry, Inspection, ModeRequest, OpenOptions,
    PersistCounters, PersistMode, PoolError, PoolHeader, MAX_POOL_SIZE, MIN_POOL_SIZE,
};
pub use pmstore_tx::{bytemuck, pfield, CommitInfo, PPtr, PSlice, Pool, Tx, TxError};
