//! # pmstore-alloc
//!
//! The persistent allocator of pmstore (chunks, size-class runs with allocation bitmaps, a
//! redo log per lane). Not written yet: this crate only fixes its place in the layering
//! (`pmstore-pool` below, `pmstore-tx` above).

pub use pmstore_pool as pool;
