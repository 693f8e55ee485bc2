//! Declares the `loom` cfg (set by `RUSTFLAGS="--cfg loom"` for the loom models) so that
//! `unexpected_cfgs` does not warn about it; `[lints] workspace = true` forbids a per-crate
//! `[lints.rust]` table.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(loom)");
}
