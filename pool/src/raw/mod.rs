//! The pool layer's raw-pointer code, kept in one place: the file mapping and the CPU's cache
//! flush, fence and non-temporal store instructions. Everything outside this module works with
//! pool offsets and bounds-checked ranges.

pub(crate) mod cpu;
pub(crate) mod heapmem;
pub(crate) mod mapping;
