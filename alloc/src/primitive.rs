//! Synchronisation primitives of the concurrent core: `std::sync` normally, `loom::sync` when
//! built with `--cfg loom` (the loom models, `tests/loom_core.rs`). Under loom these types only
//! work inside `loom::model`, so a loom build is for the models only.

#[cfg(loom)]
pub use loom::sync::{Mutex, MutexGuard};
#[cfg(not(loom))]
pub use std::sync::{Mutex, MutexGuard};

/// Yields the processor (a loom scheduling point under loom).
pub fn yield_now() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::thread::yield_now();
}

/// Locks `m`, ignoring poisoning: every critical section of the allocator leaves its state
/// consistent before anything that can panic (state is updated after a successful commit only).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
