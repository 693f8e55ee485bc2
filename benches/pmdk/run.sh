#!/usr/bin/env bash
# PMDK peer of `cargo bench --bench persist` (and of pmstore-alloc's alloc_bench example):
# builds benches/pmdk/persist_floor.c against
# libpmem (Debian: apt-get install libpmem-dev) and runs it, flush mode on /dev/shm with
# PMEM_IS_PMEM_FORCE=1, msync mode in /var/tmp without it. One JSON line per measurement on
# stdout. Optional: FLUSH_ITERS (default 1000000) and MSYNC_ITERS (default 1000).
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
