//! # pmstore-tx
//!
//! Transactions, typed persistent pointers, the root object and recovery for pmstore. Not
//! written yet: this crate only fixes its place in the layering (`pmstore-alloc` and
//! `pmstore-pool` below, the `pmstore` facade above).

pub use pmstore_alloc as alloc;
pub use pmstore_pool as pool;
