//! Page-aligned, zeroed heap memory: the "working memory" of a simulated pool.
//!
//! SAFETY reason used below:
//! 1. `ptr` was returned by `alloc_zeroed` with `layout`, is non-null, and is freed only in
//!    `drop`, with the same layout.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;

/// An owned, 4096-byte-aligned, zero-initialised allocation.
#[derive(Debug)]
pub(crate) struct HeapMem {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: HeapMem is an owned allocation with no thread-affine state; access to its bytes is
// governed by the `Pool` API's contracts, as for a file mapping.
unsafe impl Send for HeapMem {}
// SAFETY: as above; `&HeapMem` only hands out the address.
unsafe impl Sync for HeapMem {}

impl HeapMem {
    /// Allocates `len` zeroed bytes; `len` must be positive.
    pub(crate) fn zeroed(len: usize) -> HeapMem {
        let layout = Layout::from_size_align(len, 4096).expect("simulated pool size fits a Layout");
        assert!(len > 0);
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(p).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        HeapMem { ptr, layout }
    }

    /// First byte.
    pub(crate) fn ptr(&self) -> NonNull<u8> {
        self.ptr
    }
}

impl Drop for HeapMem {
    fn drop(&mut self) {
        // SAFETY: (1)
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) };
    }
}
