//! Synchronisation primitives of the concurrent core: `std::sync` normally, `loom::sync` when
//! built with `--cfg loom` (the loom models, `tests/loom_core.rs`). Under loom these types only
//! work inside `loom::model`, so a loom build is for the models only.

#[cfg(loom)]
pub use loom::sync::atomic::AtomicBool;
#[cfg(loom)]
pub use loom::sync::{Mutex, MutexGuard};
#[cfg(not(loom))]
pub use std::sync::atomic::AtomicBool;
#[cfg(not(loom))]
pub use std::sync::{Mutex, MutexGuard};

/// An `UnsafeCell` whose accesses loom checks for data races (under `--cfg loom`; the plain
/// `std` cell otherwise).
#[derive(Debug)]
pub struct RaceCell<T>(
    #[cfg(loom)] loom::cell::UnsafeCell<T>,
    #[cfg(not(loom))] std::cell::UnsafeCell<T>,
);

impl<T> RaceCell<T> {
    /// A cell holding `value`.
    ///
    /// ```
    /// use pmstore_alloc::primitive::RaceCell;
    ///
    /// let cell = RaceCell::new(5u32);
    /// // SAFETY: no other access to the cell is live.
    /// assert_eq!(unsafe { *cell.get_mut_ptr() }, 5);
    /// ```
    pub fn new(value: T) -> RaceCell<T> {
        #[cfg(loom)]
        return RaceCell(loom::cell::UnsafeCell::new(value));
        #[cfg(not(loom))]
        RaceCell(std::cell::UnsafeCell::new(value))
    }

    /// A pointer to the value, recorded as a mutable access under loom (which reports it if
    /// it does not happen-after every other access, or before it).
    ///
    /// ```
    /// use pmstore_alloc::primitive::RaceCell;
    ///
    /// let cell = RaceCell::new(String::from("a"));
    /// // SAFETY: this thread is the only one using the cell; no reference to it is live.
    /// unsafe { (*cell.get_mut_ptr()).push('b') };
    /// // SAFETY: as above.
    /// assert_eq!(unsafe { &*cell.get_mut_ptr() }, "ab");
    /// ```
    pub fn get_mut_ptr(&self) -> *mut T {
        #[cfg(loom)]
        return self.0.with_mut(|p| p);
        #[cfg(not(loom))]
        self.0.get()
    }
}

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
