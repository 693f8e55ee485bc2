//! Synchronisation primitives of the transaction layer's volatile lock table
//! ([`crate::locks`]): `std` normally, `loom` when built with `--cfg loom` (the loom models,
//! `tests/loom_locks.rs`). Under loom these types only work inside `loom::model`, so a loom
//! build is for the models only.
//!
//! Every waiting loop of the lock table goes through [`spin_loop`] or [`yield_now`], which are
//! scheduling points under loom, so loom can explore (and bound) every busy wait.

#[cfg(loom)]
pub use loom::sync::atomic::{AtomicU32, Ordering};
#[cfg(not(loom))]
pub use std::sync::atomic::{AtomicU32, Ordering};

/// Yields the processor (a loom scheduling point under loom).
#[inline]
pub fn yield_now() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::thread::yield_now();
}

/// One busy-wait round: `core::hint::spin_loop` (a loom scheduling point under loom).
#[inline]
pub fn spin_loop() {
    #[cfg(loom)]
    loom::hint::spin_loop();
    #[cfg(not(loom))]
    core::hint::spin_loop();
}
