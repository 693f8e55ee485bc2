//! CRC-32C (Castagnoli) for the commit path: the same function as the `crc32c` crate, cheaper
//! on the short inputs a small redo log is (a few hundred bytes). The crate's entry point
//! splits its input for a three-way parallel loop and costs ~150 instructions per call even
//! for 64 bytes; one `crc32` instruction per 8 bytes is faster below [`SERIAL_MAX`] bytes.
//! Longer inputs go to the crate (its parallel loop is faster there).

/// Inputs up to this many bytes use the serial loop.
const SERIAL_MAX: usize = 512;

/// The CRC-32C of `data` continuing from `crc` (as `crc32c::crc32c_append`).
#[inline]
pub(crate) fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if data.len() <= SERIAL_MAX && std::arch::is_x86_feature_detected!("sse4.2") {
        // SAFETY: the CPU has SSE4.2, just checked.
        return unsafe { serial_sse42(crc, data) };
    }
    crc32c::crc32c_append(crc, data)
}

/// One `crc32` instruction per 8 bytes (two per iteration), then per 4, then per byte for
/// the rest.
///
/// # Safety
/// The CPU has SSE4.2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
unsafe fn serial_sse42(crc: u32, data: &[u8]) -> u32 {
    use std::arch::x86_64::{_mm_crc32_u32, _mm_crc32_u64, _mm_crc32_u8};
    let mut c = u64::from(!crc);
    // 16 bytes per iteration: half the loop overhead of one word at a time.
    let mut pairs = data.chunks_exact(16);
    for p in &mut pairs {
        let (a, b) = p.split_at(8);
        let a = u64::from_le_bytes(a.try_into().expect("8 bytes"));
        let b = u64::from_le_bytes(b.try_into().expect("8 bytes"));
        #[allow(unused_unsafe)]
        // SAFETY: SSE4.2 (the caller's contract; this function enables it).
        let next = unsafe { _mm_crc32_u64(_mm_crc32_u64(c, a), b) };
        c = next;
    }
    let mut words = pairs.remainder().chunks_exact(8);
    for w in &mut words {
        let w = u64::from_le_bytes(w.try_into().expect("chunks of 8 bytes"));
        #[allow(unused_unsafe)]
        // SAFETY: as above.
        let next = unsafe { _mm_crc32_u64(c, w) };
        c = next;
    }
    let mut c = c as u32;
    let mut rest = words.remainder();
    if let Some((w, tail)) = rest.split_first_chunk::<4>() {
        #[allow(unused_unsafe)]
        // SAFETY: as above.
        let next = unsafe { _mm_crc32_u32(c, u32::from_le_bytes(*w)) };
        c = next;
        rest = tail;
    }
    for &b in rest {
        #[allow(unused_unsafe)]
        // SAFETY: as above.
        let next = unsafe { _mm_crc32_u8(c, b) };
        c = next;
    }
    !c
}

#[cfg(test)]
mod tests {
    #[test]
    fn agrees_with_the_crate() {
        let data: Vec<u8> = (0..2048u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for start in 0..9 {
            for len in (0..700).step_by(7).chain([511, 512, 513, 1500]) {
                let d = &data[start..start + len];
                for seed in [0, 0xdead_beef] {
                    assert_eq!(
                        super::crc32c_append(seed, d),
                        crc32c::crc32c_append(seed, d),
                        "start {start} len {len}"
                    );
                }
            }
        }
    }
}
