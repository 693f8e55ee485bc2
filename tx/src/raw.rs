//! The transaction layer's raw-pointer code, in one place: references into the pool mapping
//! and byte copies out of it. Everything else in the crate is safe code.

use pmstore_pool::Pool as RawPool;

/// Copies pool bytes `[offset, offset + dst.len())` into `dst`.
///
/// # Safety
/// No thread writes any of those bytes during the call (the caller holds locks that exclude
/// writers).
pub(crate) unsafe fn read_bytes(pool: &RawPool, offset: u64, dst: &mut [u8]) {
    // SAFETY: forwarded contract (Pool::read checks the range).
    unsafe { pool.read(offset, dst) }
}

/// The bytes `[offset, offset + len)` of the pool, as a shared slice.
///
/// # Safety
/// 1. `[offset, offset + len)` lies inside the pool.
/// 2. No thread writes any of those bytes while the returned slice lives: the caller holds a
///    lock that excludes every writer (a shared stripe lock of the transaction's lock table,
///    held until the transaction ends, which outlives the returned slice).
pub(crate) unsafe fn pool_bytes(pool: &RawPool, offset: u64, len: u64) -> &[u8] {
    let p = pool.ptr_at(offset, len).as_ptr();
    // SAFETY: the range is inside the mapping (ptr_at checked it), which lives as long as
    // `pool` and so as the returned slice; no writer while it lives: the caller's contract.
    unsafe { std::slice::from_raw_parts(p, len as usize) }
}

/// A shared slice of `s`'s elements with a caller-chosen lifetime: for read snapshots kept in
/// a transaction's arena, whose boxes are only ever pushed while shared borrows may be live.
///
/// # Safety
/// The allocation `s` points into outlives `'a`, is not moved (a boxed slice's contents stay
/// put when the `Box` itself moves), and is neither mutated nor freed while the returned slice
/// lives: the arena drops or clears its boxes only through `&mut` access to the transaction,
/// which ends every borrow derived from `&Tx`.
pub(crate) unsafe fn detach<'a, T>(s: &[T]) -> &'a [T] {
    // SAFETY: the caller's contract: valid, unmoved and unmodified for `'a`.
    unsafe { std::slice::from_raw_parts(s.as_ptr(), s.len()) }
}
