//! Cache-line flush, store fence and non-temporal copy on x86-64.
//!
//! SAFETY reasons used below:
//! 1. `clwb`, `clflushopt` and `clflush` take an address and never write memory; they fault only
//!    if the address is not mapped, and every caller passes an address inside a live mapping.
//! 2. The instruction is available: [`FlushInstr::detect`] chose it from CPUID (`clflush` is
//!    part of SSE2, the x86-64 baseline).
//! 3. `sfence` and the SSE2 intrinsics are part of the x86-64 baseline.
//! 4. AVX intrinsics run only where `is_x86_feature_detected!("avx")` said the CPU has AVX
//!    ([`has_avx`], asked once per pool).

use std::arch::asm;
use std::arch::x86_64::{
    __m128i, _mm_clflush, _mm_loadu_si128, _mm_sfence, _mm_stream_si128, _mm_stream_si64,
};

/// Size of a cache line: the granularity of flushing and of the persistence domain.
pub const CACHE_LINE: usize = 64;

/// The instruction used to write a cache line back to the persistence domain.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use pmstore_pool::{CreateOptions, FlushInstr, ModeRequest, Pool, MIN_POOL_SIZE};
/// # let dir = tempfile::tempdir()?;
/// let opts = CreateOptions::new("doc", MIN_POOL_SIZE).mode(ModeRequest::Flush);
/// let pool = Pool::create(dir.path().join("p.pool"), &opts)?;
/// let instr: FlushInstr = pool.flush_instr().expect("a flush mode");
/// println!("flushing with {}", instr.name());
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FlushInstr {
    /// `clwb`: writes the line back and may keep it cached (best).
    Clwb,
    /// `clflushopt`: writes back and invalidates, weakly ordered (needs `sfence`).
    Clflushopt,
    /// `clflush`: writes back and invalidates, strongly ordered (slowest).
    Clflush,
}

impl FlushInstr {
    /// Picks the best instruction the CPU has: `clwb`, else `clflushopt`, else `clflush`.
    /// `PMSTORE_NO_CLWB=1` and `PMSTORE_NO_CLFLUSHOPT=1` skip the first ones (as PMDK's
    /// `PMEM_NO_CLWB` / `PMEM_NO_CLFLUSHOPT`), for testing the slower paths.
    ///
    /// ```
    /// use pmstore_pool::FlushInstr;
    ///
    /// let instr = FlushInstr::detect();
    /// assert_eq!(instr, FlushInstr::detect()); // the same answer every time
    /// assert!(matches!(instr, FlushInstr::Clwb | FlushInstr::Clflushopt | FlushInstr::Clflush));
    /// ```
    pub fn detect() -> FlushInstr {
        let no = |var: &str| std::env::var_os(var).is_some_and(|v| v == "1");
        // CPUID leaf 7, sub-leaf 0, EBX: bit 23 = CLFLUSHOPT, bit 24 = CLWB.
        #[allow(unused_unsafe)]
        // SAFETY: (3) `cpuid` is available on every x86-64 CPU; leaf 0 reports the highest leaf.
        let max_leaf = unsafe { std::arch::x86_64::__cpuid(0) }.eax;
        let ebx = if max_leaf >= 7 {
            #[allow(unused_unsafe)]
            // SAFETY: (3) leaf 7 exists, as leaf 0 just reported.
            unsafe { std::arch::x86_64::__cpuid_count(7, 0) }.ebx
        } else {
            0
        };
        if ebx & (1 << 24) != 0 && !no("PMSTORE_NO_CLWB") {
            FlushInstr::Clwb
        } else if ebx & (1 << 23) != 0 && !no("PMSTORE_NO_CLFLUSHOPT") {
            FlushInstr::Clflushopt
        } else {
            FlushInstr::Clflush
        }
    }

    /// The instruction's mnemonic.
    ///
    /// ```
    /// use pmstore_pool::FlushInstr;
    ///
    /// assert_eq!(FlushInstr::Clwb.name(), "clwb");
    /// assert_eq!(FlushInstr::Clflushopt.name(), "clflushopt");
    /// assert_eq!(FlushInstr::Clflush.name(), "clflush");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            FlushInstr::Clwb => "clwb",
            FlushInstr::Clflushopt => "clflushopt",
            FlushInstr::Clflush => "clflush",
        }
    }
}

/// Flushes the cache line holding `addr`.
///
/// # Safety
/// `addr` lies in a live mapping.
#[inline]
pub(crate) unsafe fn flush_line(instr: FlushInstr, addr: *const u8) {
    match instr {
        // SAFETY: (1)(2) the caller's contract.
        FlushInstr::Clwb => unsafe {
            asm!("clwb [{0}]", in(reg) addr, options(nostack, preserves_flags))
        },
        // SAFETY: (1)(2) as above.
        FlushInstr::Clflushopt => unsafe {
            asm!("clflushopt [{0}]", in(reg) addr, options(nostack, preserves_flags))
        },
        // SAFETY: (1)(2) as above.
        FlushInstr::Clflush => unsafe { _mm_clflush(addr) },
    }
}

/// Flushes every cache line that `[addr, addr + len)` touches, once; returns how many.
///
/// # Safety
/// Every byte of `[addr, addr + len)` lies in one live mapping.
#[inline]
pub(crate) unsafe fn flush_range(instr: FlushInstr, addr: *const u8, len: usize) -> u64 {
    if len == 0 {
        return 0;
    }
    let first = addr as usize & !(CACHE_LINE - 1);
    let end = addr as usize + len;
    let lines = (end - first).div_ceil(CACHE_LINE);
    let mut p = first as *const u8;
    // One loop per instruction, so the choice is made once per range, not once per line.
    match instr {
        FlushInstr::Clwb => {
            for _ in 0..lines {
                // SAFETY: (1)(2) `p` is in the line of a byte of the range, inside the mapping.
                unsafe { asm!("clwb [{0}]", in(reg) p, options(nostack, preserves_flags)) };
                p = p.wrapping_add(CACHE_LINE);
            }
        }
        FlushInstr::Clflushopt => {
            for _ in 0..lines {
                // SAFETY: (1)(2) as above.
                unsafe { asm!("clflushopt [{0}]", in(reg) p, options(nostack, preserves_flags)) };
                p = p.wrapping_add(CACHE_LINE);
            }
        }
        FlushInstr::Clflush => {
            for _ in 0..lines {
                // SAFETY: (1)(2) as above.
                unsafe { _mm_clflush(p) };
                p = p.wrapping_add(CACHE_LINE);
            }
        }
    }
    lines as u64
}

/// Store fence: orders every earlier flush and non-temporal store before every later store.
#[inline]
pub(crate) fn sfence() {
    #[allow(unused_unsafe)]
    // SAFETY: (3) sfence is baseline and has no memory operands.
    unsafe {
        _mm_sfence()
    };
}

/// Stores `value` at `dst` with a non-temporal store (`movnti`): the 8 bytes go to memory
/// through a write-combining buffer, bypassing the cache (the rest of the line is untouched),
/// and are durable after the next `sfence` like a flushed line. On the machines measured here a
/// drain after this costs far less than after an ordinary store and `clwb` of its line
/// (`docs/REDO.md` §8).
///
/// # Safety
/// `dst` is 8-byte aligned and valid for an 8-byte write inside one live mapping, and no other
/// thread accesses those 8 bytes meanwhile.
#[inline]
pub(crate) unsafe fn store_u64_nt(dst: *mut u64, value: u64) {
    // SAFETY: (3) `movnti` is SSE2; the caller's contract covers the destination.
    unsafe { _mm_stream_si64(dst.cast::<i64>(), value as i64) }
}

/// Whether the CPU has AVX (for [`copy_nt`]; asked once per pool, at open).
pub(crate) fn has_avx() -> bool {
    std::arch::is_x86_feature_detected!("avx")
}

/// Copies `len` bytes with non-temporal stores for the whole cache lines of the destination,
/// and ordinary stores plus a flush for the partial lines at either end. Needs a drain
/// (`sfence`) afterwards, like every flush. Returns `(lines flushed, bytes streamed)`.
///
/// # Safety
/// `dst` is valid for writes of `len` bytes inside one live mapping, `src` for reads of `len`
/// bytes, the two do not overlap, and no other thread accesses `[dst, dst + len)` meanwhile;
/// `avx` only if [`has_avx`] said so.
#[inline(always)]
pub(crate) unsafe fn copy_nt(
    instr: FlushInstr,
    avx: bool,
    dst: *mut u8,
    src: *const u8,
    len: usize,
) -> (u64, u64) {
    if (dst as usize | len) % CACHE_LINE == 0 {
        // Whole lines only (logs, line-widened ranges): no head or tail to store and flush.
        // SAFETY: the caller's contract; `dst` is on a line and `len` a multiple of 64.
        unsafe { stream_lines(avx, dst, src, len) };
        return (0, len as u64);
    }
    // SAFETY: forwarded contract.
    unsafe { copy_nt_partial(instr, avx, dst, src, len) }
}

/// [`copy_nt`] of a range with a partial line at either end.
///
/// # Safety
/// As [`copy_nt`].
unsafe fn copy_nt_partial(
    instr: FlushInstr,
    avx: bool,
    dst: *mut u8,
    src: *const u8,
    len: usize,
) -> (u64, u64) {
    let head = (dst as usize).next_multiple_of(CACHE_LINE) - dst as usize;
    if len < head + CACHE_LINE {
        // No whole destination line: an ordinary copy and flush.
        // SAFETY: the caller's contract covers the whole range.
        unsafe { std::ptr::copy_nonoverlapping(src, dst, len) };
        // SAFETY: (1) the range is inside the mapping.
        return (unsafe { flush_range(instr, dst, len) }, 0);
    }
    let body = (len - head) / CACHE_LINE * CACHE_LINE;
    let tail = len - head - body;
    let mut flushed = 0;
    // SAFETY: the caller's contract covers `[dst, dst + len)`; head, body and tail partition it.
    unsafe {
        if head > 0 {
            std::ptr::copy_nonoverlapping(src, dst, head);
            flushed += flush_range(instr, dst, head);
        }
        stream_lines(avx, dst.add(head), src.add(head), body);
        if tail > 0 {
            std::ptr::copy_nonoverlapping(src.add(head + body), dst.add(head + body), tail);
            flushed += flush_range(instr, dst.add(head + body), tail);
        }
    }
    (flushed, body as u64)
}

/// Streams `len` bytes (a multiple of 64) with non-temporal stores: 32-byte ones if `avx`.
///
/// # Safety
/// As [`copy_nt`], and `dst` is 64-byte aligned.
#[inline]
unsafe fn stream_lines(avx: bool, dst: *mut u8, src: *const u8, len: usize) {
    if avx {
        // SAFETY: (4) AVX is present (the caller's contract: `has_avx` said so); the rest is
        // forwarded.
        unsafe { stream_lines_avx(dst, src, len) }
    } else {
        // SAFETY: forwarded.
        unsafe { stream_lines_sse2(dst, src, len) }
    }
}

/// Streams `len` bytes (a multiple of 64) with 16-byte non-temporal stores.
///
/// # Safety
/// As [`copy_nt`], and `dst` is 64-byte aligned.
unsafe fn stream_lines_sse2(dst: *mut u8, src: *const u8, len: usize) {
    let mut d = dst as *mut __m128i;
    let mut s = src as *const __m128i;
    for _ in 0..len / 16 {
        // SAFETY: (3) SSE2; `d` is 16-byte aligned (it starts on a cache line) and inside the
        // destination, `s` is read unaligned from the source.
        unsafe {
            _mm_stream_si128(d, _mm_loadu_si128(s));
            d = d.add(1);
            s = s.add(1);
        }
    }
}

/// Streams `len` bytes (a multiple of 64) with 32-byte non-temporal stores.
///
/// # Safety
/// As [`copy_nt`], `dst` is 64-byte aligned, and the CPU has AVX.
#[target_feature(enable = "avx")]
unsafe fn stream_lines_avx(dst: *mut u8, src: *const u8, len: usize) {
    use std::arch::x86_64::{__m256i, _mm256_loadu_si256, _mm256_stream_si256};
    let mut d = dst as *mut __m256i;
    let mut s = src as *const __m256i;
    for _ in 0..len / 32 {
        // SAFETY: (4) AVX is present (the caller's contract); `d` is 32-byte aligned and inside
        // the destination, `s` is read unaligned from the source.
        unsafe {
            _mm256_stream_si256(d, _mm256_loadu_si256(s));
            d = d.add(1);
            s = s.add(1);
        }
    }
}
