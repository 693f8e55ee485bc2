#!/usr/bin/env bash
# PMDK peer of `cargo bench --bench persist` (and of pmstore-alloc's alloc_bench example):
# builds benches/pmdk/persist_floor.c against
# libpmem (Debian: apt-get install libpmem-dev) and runs it, flush mode on /dev/shm with
# PMEM_IS_PMEM_FORCE=1, msync mode in /var/tmp without it. One JSON line per measurement on
# stdout. Optional: FLUSH_ITERS (default 1000000) and MSYNC_ITERS (default 1000).
# With libpmemobj (apt-get install libpmemobj-dev) it also runs the alloc peer
# (benches/pmdk/alloc.c; ALLOC_PAIRS, default 200000) and the transaction peers
# (benches/pmdk/tx.c; TX_OPS, default 200000, and TX_MSYNC_OPS, default 200).
#
# For a side-by-side comparison with pmstore (alternating runs, ratios, strace msync counts, a
# report and a chart) use the harness instead: cargo bench --bench vs_pmdk (docs/PERFORMANCE.md).
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! { [ -e /usr/include/libpmem.h ] || pkg-config --exists libpmem 2>/dev/null; }; then
    echo "libpmem not installed; skipping PMDK"
    exit 0
fi

out_dir="${CARGO_TARGET_DIR:-target}"
mkdir -p "$out_dir"
bin="$out_dir/pmdk_persist_floor"
cc -O2 -Wall -Wextra -o "$bin" benches/pmdk/persist_floor.c -lpmem

flush_iters="${FLUSH_ITERS:-1000000}"
msync_iters="${MSYNC_ITERS:-1000}"
shm_file="/dev/shm/pmdk_persist_floor.$$"
tmp_file="/var/tmp/pmdk_persist_floor.$$"
trap 'rm -f "$shm_file" "$tmp_file"' EXIT

PMEM_IS_PMEM_FORCE=1 "$bin" "$shm_file" flush "$flush_iters"
env -u PMEM_IS_PMEM_FORCE "$bin" "$tmp_file" msync "$msync_iters"

# Atomic alloc + free pair (needs libpmemobj: apt-get install libpmemobj-dev).
if [ -e /usr/include/libpmemobj.h ]; then
    alloc_bin="$out_dir/pmdk_alloc"
    cc -O2 -Wall -Wextra -o "$alloc_bin" benches/pmdk/alloc.c -lpmemobj
    obj_file="/dev/shm/pmdk_alloc.$$"
    trap 'rm -f "$shm_file" "$tmp_file" "$obj_file"' EXIT
    PMEM_IS_PMEM_FORCE=1 "$alloc_bin" "$obj_file" "${ALLOC_PAIRS:-200000}"
else
    echo "libpmemobj not installed; skipping the PMDK alloc peer"
fi

# Transaction workloads (benches/pmdk/tx.c; needs libpmemobj): each workload in flush mode on
# /dev/shm with PMEM_IS_PMEM_FORCE=1 (TX_OPS ops, default 200000) and in msync mode on a file in
# /var/tmp without it (TX_MSYNC_OPS ops, default 200). One JSON line per run.
if [ -e /usr/include/libpmemobj.h ]; then
    tx_bin="$out_dir/pmdk_tx"
    cc -O2 -Wall -Wextra -o "$tx_bin" benches/pmdk/tx.c -lpmemobj
    tx_shm="/dev/shm/pmdk_tx.$$"
    tx_tmp="/var/tmp/pmdk_tx.$$"
    trap 'rm -f "$shm_file" "$tmp_file" "${obj_file:-}" "$tx_shm" "$tx_tmp"' EXIT
    tx_workloads="tx_update_8B tx_update_256B tx_update_4x64B tx_alloc_free atomic_alloc_free"
    for w in $tx_workloads; do
        rm -f "$tx_shm"
        PMEM_IS_PMEM_FORCE=1 "$tx_bin" "$tx_shm" "$w" "${TX_OPS:-200000}"
    done
    for w in $tx_workloads; do
        rm -f "$tx_tmp"
        env -u PMEM_IS_PMEM_FORCE "$tx_bin" "$tx_tmp" "$w" "${TX_MSYNC_OPS:-200}"
    done
else
    echo "libpmemobj not installed; skipping the PMDK transaction peers"
fi
