#!/usr/bin/env bash
# Runs every check and test of the workspace, as CI does. Installs what a fresh machine lacks.
set -euo pipefail
cd "$(dirname "$0")/.."

# The toolchain pinned in rust-toolchain.toml (with its wasm32-wasip1 target, clippy, rustfmt)
# is installed by rustup on first use; make sure of it explicitly so failures are clear.
if command -v rustup >/dev/null 2>&1; then
  rustup show active-toolchain >/dev/null
  rustup target add wasm32-wasip1 >/dev/null 2>&1 || true
  rustup component add clippy rustfmt >/dev/null 2>&1 || true
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --all-targets -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== cargo test"
cargo test --workspace --quiet 2>&1 | tee /tmp/weft-test.log
