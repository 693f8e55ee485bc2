#!/usr/bin/env bash
# Instructions per operation of a txbench workload in flush mode, deterministic (callgrind):
# the difference between runs of 2N and N timed operations (each after a warm-up of a tenth as
# many), divided by the 1.1 N operations that make it, so that setup cancels out. Usage: scripts/instr-per-op.sh WORKLOAD [N [TXBENCH-ARGS...]]   (N defaults to 10000; e.g. --spawn)
# WORKLOAD: a txbench workload (tx_update_8B, tx_update_256B, tx_update_4x64B, tx_alloc_free,
# atomic_alloc_free, read_8B). Needs valgrind; builds the example in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."
w=${1:?workload}
n=${2:-10000}
shift $(($# < 2 ? $# : 2))
extra=("$@")
cargo build --release --example txbench -q
bin=${CARGO_TARGET_DIR:-target}/release/examples/txbench
dir=$(mktemp -d /dev/shm/ipo.XXXXXX)
trap 'rm -rf "$dir"' EXIT
count() {
  PMSTORE_FORCE_MODE=flush valgrind --tool=callgrind --callgrind-out-file=/dev/null \
    "$bin" "$w" --pool "$dir/p.pool" -n "$1" ${extra[@]+"${extra[@]}"} 2>&1 >/dev/null |
    sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
a=$(count "$n")
b=$(count $((2 * n)))
echo "{\"workload\":\"$w\",\"instructions_per_op\":$(((b - a) * 10 / (11 * n)))}"
