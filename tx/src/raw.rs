//! The transaction layer's raw-pointer code, in one place: references into the pool mapping
//! and byte copies out of it. Everything else in the crate is safe code.

use bytemuck::Pod;
use pmstore_pool::Pool as RawPool;

/// A shared reference to the `T` at pool offset `offset`.
///
/// # Safety
/// 1. `[offset, offset + size_of::<T>())` lies inside the pool and `offset` is aligned for `T`
///    (the mapping is page-aligned, so pool-offset alignment is address alignment).
/// 2. No thread writes any of those bytes while the returned reference lives: the caller holds
///    a lock that excludes every writer (a shared stripe lock of the transaction's lock table,
///    held until the transaction ends, which outlives the returned reference).
pub(crate) unsafe fn pool_ref<T: Pod>(pool: &RawPool, offset: u64) -> &T {
    let len = std::mem::size_of::<T>() as u64;
    let p = pool.ptr_at(offset, len).as_ptr().cast::<T>();
    debug_assert!(p.is_aligned(), "misaligned pool reference");
    // SAFETY: (1) the range is inside the mapping (ptr_at checked it) and aligned; the mapping
    // lives as long as `pool`, as long as the returned reference. `T: Pod`, so any bytes there are a valid `T`.
    // (2) no writer exists while the reference lives: the caller's contract.
    unsafe { &*p }
}

/// Copies pool bytes `[offset, offset + dst.len())` into `dst`.
///
/// # Safety
/// No thread writes any of those bytes during the call (the caller holds locks that exclude
/// writers).
pub(crate) unsafe fn read_bytes(pool: &RawPool, offset: u64, dst: &mut [u8]) {
    // SAFETY: forwarded contract (Pool::read checks the range).
    unsafe { pool.read(offset, dst) }
}
