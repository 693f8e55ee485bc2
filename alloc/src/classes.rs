//! The size-class table (`docs/ALLOC.md` §3): which block sizes runs hold, how many chunks a
//! run of each class covers, and the class of a request size.

use std::sync::OnceLock;

use crate::heap::CHUNK;

/// Smallest block size.
pub const MIN_CLASS: u64 = 16;
/// Largest block size: requests above it get a span.
pub const MAX_CLASS: u64 = CHUNK;
/// A run holds at least this many blocks.
pub const MIN_BLOCKS_PER_RUN: u64 = 8;
/// At most this many blocks per run: one bit each in one 2048-byte bitmap slot.
pub const MAX_BLOCKS_PER_RUN: u64 = crate::heap::BITMAP_SLOT * 8;

/// One size class.
///
/// ```
/// use pmstore_alloc::classes::{class_for, SizeClass};
/// use pmstore_alloc::heap::CHUNK;
///
/// let c: &SizeClass = class_for(100).unwrap(); // 100 bytes are served from 128-byte blocks
/// assert_eq!(c.size, 128);
/// assert_eq!(c.run_chunks, 1);
/// assert_eq!(u64::from(c.blocks), u64::from(c.run_chunks) * CHUNK / c.size);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SizeClass {
    /// Class id (what a run's chunk header stores).
    pub id: u8,
    /// Block size in bytes.
    pub size: u64,
    /// Chunks a run of this class covers (`L(c)`).
    pub run_chunks: u32,
    /// Blocks a run of this class holds: `floor(run_chunks × CHUNK / size)`.
    pub blocks: u32,
}

fn build() -> Vec<SizeClass> {
    let mut sizes = vec![16, 32, 48];
    sizes.extend((1..=16).map(|k| k * 64));
    // From 1024: 16 equal steps per doubling, each 1/16 of the power of two below (a
    // multiple of 64, at most 1/16 of the previous size), so every power of two is a class.
    let mut s: u64 = 1024;
    while s < MAX_CLASS {
        s += (1 << s.ilog2()) / 16;
        sizes.push(s);
    }
    sizes
        .into_iter()
        .enumerate()
        .map(|(id, size)| {
            let run_chunks = (MIN_BLOCKS_PER_RUN * size).div_ceil(CHUNK).max(1);
            let blocks = run_chunks * CHUNK / size;
            SizeClass {
                id: u8::try_from(id).expect("fewer than 256 classes"),
                size,
                run_chunks: run_chunks as u32,
                blocks: blocks as u32,
            }
        })
        .collect()
}

/// The class table, in increasing size order (`classes()[id].id == id`).
///
/// ```
/// use pmstore_alloc::classes::{classes, MAX_CLASS, MIN_CLASS};
///
/// let table = classes();
/// assert_eq!(table[0].size, MIN_CLASS);
/// assert_eq!(table.last().unwrap().size, MAX_CLASS);
/// assert!(table.windows(2).all(|w| w[0].size < w[1].size));
/// assert!(table.iter().enumerate().all(|(i, c)| usize::from(c.id) == i));
/// ```
pub fn classes() -> &'static [SizeClass] {
    static TABLE: OnceLock<Vec<SizeClass>> = OnceLock::new();
    TABLE.get_or_init(build)
}

/// The class with id `id`, if any.
///
/// ```
/// use pmstore_alloc::classes::{class, classes};
///
/// assert_eq!(class(0).map(|c| c.size), Some(16));
/// let n = classes().len();
/// assert!(class(u8::try_from(n).unwrap()).is_none()); // past the table
/// ```
pub fn class(id: u8) -> Option<&'static SizeClass> {
    classes().get(usize::from(id))
}

/// The smallest class holding `size` bytes (`size` 0 is served as 1), or `None` if `size`
/// exceeds [`MAX_CLASS`] (a span).
///
/// ```
/// use pmstore_alloc::classes::{class_for, MAX_CLASS};
///
/// assert_eq!(class_for(0).unwrap().size, 16);
/// assert_eq!(class_for(17).unwrap().size, 32);
/// assert_eq!(class_for(4096).unwrap().size, 4096); // every power of two is a class
/// assert_eq!(class_for(MAX_CLASS).unwrap().size, MAX_CLASS);
/// assert!(class_for(MAX_CLASS + 1).is_none()); // a span, not a run
/// ```
pub fn class_for(size: u64) -> Option<&'static SizeClass> {
    let t = classes();
    // Up to 1024 bytes the classes are 16, 32, 48, then every multiple of 64 (ids 3..=18):
    // computed, not searched (the common small allocation).
    let i = match size {
        0..=48 => size.max(1).div_ceil(16) as usize - 1,
        49..=1024 => size.div_ceil(64) as usize + 2,
        _ => t.partition_point(|c| c.size < size),
    };
    t.get(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_shape() {
        let t = classes();
        assert_eq!(t[0].size, 16);
        assert_eq!(t[1].size, 32);
        assert_eq!(t[2].size, 48);
        assert_eq!(t[3].size, 64);
        assert_eq!(t[18].size, 1024);
        assert_eq!(t.last().unwrap().size, CHUNK);
        assert!(t.len() < 256);
        for (i, c) in t.iter().enumerate() {
            assert_eq!(usize::from(c.id), i);
            if i > 0 {
                assert!(c.size > t[i - 1].size, "strictly increasing");
            }
        }
    }

    #[test]
    fn classes_from_64_are_multiples_of_64() {
        for c in classes().iter().filter(|c| c.size >= 64) {
            assert_eq!(c.size % 64, 0, "class {} size {}", c.id, c.size);
        }
    }

    #[test]
    fn steps_above_1024_are_at_most_one_sixteenth() {
        let t = classes();
        for w in t.windows(2).filter(|w| w[0].size >= 1024) {
            let (a, b) = (w[0].size, w[1].size);
            assert!((b - a) * 16 <= a, "step {a} -> {b} wastes more than 6.25%");
            // The worst request of the step (a + 1) wastes less than 1/16 of itself.
            assert!((b - (a + 1)) * 16 < a + 1);
        }
    }

    #[test]
    fn run_lengths_are_the_fewest_chunks_holding_8_blocks() {
        for c in classes() {
            let l = u64::from(c.run_chunks);
            assert!(u64::from(c.blocks) >= MIN_BLOCKS_PER_RUN);
            assert!(l == 1 || (l - 1) * CHUNK / c.size < MIN_BLOCKS_PER_RUN);
            assert!(u64::from(c.blocks) <= MAX_BLOCKS_PER_RUN);
            assert_eq!(u64::from(c.blocks), l * CHUNK / c.size);
            if c.size <= 32 << 10 {
                assert_eq!(c.run_chunks, 1, "class {}", c.size);
            }
        }
        assert_eq!(class_for(16).unwrap().blocks, 16384);
        assert_eq!(class_for(CHUNK).unwrap().run_chunks, 8);
    }

    #[test]
    fn lookup_by_size() {
        assert_eq!(class_for(0).unwrap().size, 16);
        assert_eq!(class_for(1).unwrap().size, 16);
        assert_eq!(class_for(16).unwrap().size, 16);
        assert_eq!(class_for(17).unwrap().size, 32);
        assert_eq!(class_for(49).unwrap().size, 64);
        assert_eq!(class_for(65).unwrap().size, 128);
        assert_eq!(class_for(1025).unwrap().size, 1088);
        assert_eq!(class_for(2049).unwrap().size, 2176);
        for k in 10..=18 {
            assert_eq!(
                class_for(1 << k).unwrap().size,
                1 << k,
                "powers of two are classes"
            );
        }
        assert_eq!(class_for(64 << 10).unwrap().run_chunks, 2);
        assert_eq!(class_for(CHUNK).unwrap().size, CHUNK);
        assert!(class_for(CHUNK + 1).is_none());
        let t = classes();
        for c in t {
            assert_eq!(class_for(c.size), Some(c));
            if c.id > 0 {
                assert_eq!(class_for(t[usize::from(c.id) - 1].size + 1), Some(c));
            }
        }
        assert!(class(t.len() as u8).is_none());
        // The computed small classes agree with a search of the table.
        for size in 0..=2048 {
            let searched = t.iter().find(|c| c.size >= size.max(1));
            assert_eq!(class_for(size), searched, "size {size}");
        }
    }
}
