//! Opening an arbitrary pool image: `Pool::open_simulated` runs the same header validation as
//! `Pool::open` (docs/FORMAT.md §2.3). It must return a pool or a typed error, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pmstore_pool::{OpenOptions, Pool, HEADER_SIZE, MIN_POOL_SIZE};

fuzz_target!(|data: &[u8]| {
    // The image length: the size the header claims when it is small enough to allocate (so a
    // header can be valid), else just the input.
    let claimed = data
        .get(64..72)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
        .unwrap_or(0);
    let len = if (MIN_POOL_SIZE..=2 * MIN_POOL_SIZE).contains(&claimed) {
        claimed as usize
    } else {
        data.len().max(HEADER_SIZE)
    };
    let mut image = vec![0u8; len.max(data.len())];
    image[..data.len()].copy_from_slice(data);
    for opts in [
        OpenOptions::default(),
        OpenOptions::default().read_only(true),
        OpenOptions::new("fuzz"),
    ] {
        if let Ok((pool, _sim)) = Pool::open_simulated(&image, &opts) {
            // A pool that opened has a consistent geometry.
            let g = pool.geometry();
            assert!(g.heap_offset + g.heap_size == pool.size());
        }
    }
});
