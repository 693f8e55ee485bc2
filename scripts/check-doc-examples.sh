#!/usr/bin/env bash
# Checks that every public item rustdoc's `missing_doc_code_examples` lint looks at has a code
# example, in the four library crates (pool, alloc, tx and the `pmstore` facade). Only a check:
# it builds the docs (into target/doc) and fails on the first crate with a missing example.
#
# The lint is unstable (nightly-only, rust-lang/rust#101730): on a stable toolchain
# RUSTC_BOOTSTRAP=1 lets rustdoc take `-Z unstable-options` and the crate attribute that enables
# the lint (`feature(rustdoc_missing_doc_code_examples)`; without it the lint is unknown and
# would check nothing, so an "unknown lint" warning is an error here too). Nothing else is
# built with the flag.
#
# What the lint covers: items of public modules (e.g. `pmstore_alloc::redo`, `pmstore_pool::sim`)
# including methods and inherent impl blocks; it does not look at items defined in private
# modules and re-exported (e.g. `pmstore_pool::Pool`), nor at fields, variants and constants.
set -euo pipefail
cd "$(dirname "$0")/.."

status=0
for crate in pmstore-pool pmstore-alloc pmstore-tx pmstore; do
  args=(-p "$crate")
  [ "$crate" = pmstore ] && args+=(--lib)
  echo "== missing_doc_code_examples: $crate"
  log=$(mktemp)
  if ! RUSTC_BOOTSTRAP=1 cargo rustdoc "${args[@]}" -- \
      -Z unstable-options \
      -Z crate-attr='feature(rustdoc_missing_doc_code_examples)' \
      -D rustdoc::missing-doc-code-examples 2>&1 | tee "$log"; then
    status=1
  elif grep -q "unknown lint: \`rustdoc::missing_doc_code_examples\`" "$log"; then
    echo "rustdoc does not know the lint: nothing was checked" >&2
    status=1
  fi
  rm -f "$log"
done
exit "$status"
