//! Redo log recovery over arbitrary lane contents: the fuzz input overwrites the redo regions
//! of lanes 0 and 1 of a valid pool. Recovery must return Ok or a typed error (never panic),
//! and after a successful recovery a second one finds nothing to replay (idempotence).
//!
//! Inputs starting with byte 1 are structured, so that the fuzzer reaches replay despite the
//! checksum: `[1, seq0: u64, n0: u8, entries0: n0 × (target: u64, value: u64), seq1, n1,
//! entries1…]` becomes two checksummed logs (targets masked into the pool, any alignment).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pmstore_alloc::redo::{encode_log, RedoEntry, RedoLogs, REDO_LOG_SIZE};
use pmstore_pool::{CreateOptions, OpenOptions, Pool, MIN_POOL_SIZE};

fn template() -> &'static (Vec<u8>, [u64; 2]) {
    static T: OnceLock<(Vec<u8>, [u64; 2])> = OnceLock::new();
    T.get_or_init(|| {
        let (pool, sim) = Pool::create_simulated(&CreateOptions::new("fuzz", MIN_POOL_SIZE)).unwrap();
        let g = pool.geometry();
        (sim.media_image(), [g.lane_offset(0), g.lane_offset(1)])
    })
}

fuzz_target!(|data: &[u8]| {
    let (base, lanes) = template();
    let mut image = base.clone();
    let logs: Vec<Vec<u8>> = if data.first() == Some(&1) {
        structured(&data[1..], base.len() as u64)
    } else {
        data.chunks(REDO_LOG_SIZE as usize).take(2).map(<[u8]>::to_vec).collect()
    };
    for (i, log) in logs.iter().enumerate() {
        let o = lanes[i] as usize;
        image[o..o + log.len()].copy_from_slice(log);
    }
    let (mut pool, _sim) = Pool::open_simulated(&image, &OpenOptions::new("fuzz")).unwrap();
    if RedoLogs::recover(&mut pool).is_ok() {
        let (_logs, again) = RedoLogs::recover(&mut pool).expect("a recovered pool recovers again");
        assert_eq!(again.logs_replayed, 0, "recovery is idempotent");
        assert_eq!(again.invalid_cleared, 0, "recovery clears what it does not replay");
    }
});

/// Decodes the structured input form into (at most) two checksummed logs.
fn structured(mut d: &[u8], pool_size: u64) -> Vec<Vec<u8>> {
    let mut take = |n: usize| -> Option<Vec<u8>> {
        let (a, b) = (d.get(..n)?.to_vec(), d.get(n..)?);
        d = b;
        Some(a)
    };
    let mut out = Vec::new();
    for _ in 0..2 {
        let Some(seq) = take(8) else { break };
        let Some(n) = take(1) else { break };
        let mut entries = Vec::new();
        for _ in 0..n[0].min(252) {
            let Some(e) = take(16) else { break };
            let target = u64::from_le_bytes(e[..8].try_into().unwrap()) % pool_size;
            let value = u64::from_le_bytes(e[8..].try_into().unwrap());
            entries.push(RedoEntry::new(target, value));
        }
        out.push(encode_log(u64::from_le_bytes(seq.try_into().unwrap()), &entries));
    }
    out
}
