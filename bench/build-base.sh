#!/usr/bin/env bash
# Builds a release `weft` binary of git revision REV, for bench/run.sh's baseline candidates
# (WEFT_BASE_BIN; see bench/README.md), and prints the binary's path on stdout.
#
#   bench/build-base.sh REV               # e.g. bench/build-base.sh main, or a commit
#   WEFT_BASE_BIN=$(nice -n 19 bench/build-base.sh main) bench/run.sh
#
# REV is checked out in a temporary detached worktree (`git worktree add --detach`, removed
# again on exit) and built there with `cargo build --release --locked -p weft`, with
# CARGO_TARGET_DIR=${BASE_TARGET:-/work/tgt/base} (kept between runs, so a second build only
# recompiles what changed). The binary is copied to bench/results/weft-base-<short sha>
# (bench/results/ is git-ignored; BASE_OUT overrides the directory). Progress goes to stderr;
# the cargo output to <that directory>/weft-base-<short sha>.build.log.

set -euo pipefail

BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$BENCH")"
export PATH="$PATH:$HOME/.cargo/bin"

if [ $# != 1 ] || [ -z "$1" ]; then
    echo "usage: bench/build-base.sh REV" >&2
    exit 2
fi
REV=$1
log() { printf '[build-base %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

SHA=$(git -C "$ROOT" rev-parse --verify --quiet "$REV^{commit}") || {
    echo "build-base: '$REV' is not a commit in $ROOT" >&2
    exit 2
}
SHORT=$(git -C "$ROOT" rev-parse --short "$SHA")
BASE_TARGET=${BASE_TARGET:-/work/tgt/base}
BASE_OUT=${BASE_OUT:-$BENCH/results}
mkdir -p "$BASE_TARGET" "$BASE_OUT"
BASE_TARGET=$(cd "$BASE_TARGET" && pwd)
BASE_OUT=$(cd "$BASE_OUT" && pwd)
OUT="$BASE_OUT/weft-base-$SHORT"
BUILD_LOG="$OUT.build.log"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/weft-base.XXXXXX")
WT="$TMP/src"
CHILD=""
cleanup() {
    local rc=$?
    trap - EXIT INT TERM HUP
    if [ -n "$CHILD" ]; then
        kill -TERM "$CHILD" 2>/dev/null || true
        wait "$CHILD" 2>/dev/null || true
    fi
    if [ -d "$WT" ]; then
        git -C "$ROOT" worktree remove --force "$WT" >/dev/null 2>&1 ||
            log "WARNING: could not remove the worktree $WT (git worktree remove --force $WT)"
    fi
    rm -rf "$TMP"
    exit $rc
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM HUP

log "worktree for $REV ($SHORT) at $WT"
git -C "$ROOT" worktree add --quiet --detach "$WT" "$SHA" >&2

# The weft build script nests a wasm32-wasip1 build of the shipped plugins (rust-toolchain.toml
# lists the target; with RUSTUP_AUTO_INSTALL=0 it may not be installed yet).
if command -v rustup >/dev/null && ! (cd "$WT" && rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1); then
    log "rustup target add wasm32-wasip1"
    (cd "$WT" && rustup target add wasm32-wasip1) >&2 || log "WARNING: rustup target add wasm32-wasip1 failed"
fi

log "cargo build --release --locked -p weft (CARGO_TARGET_DIR=$BASE_TARGET; log: $BUILD_LOG)"
start=$(date +%s)
(cd "$WT" && exec env CARGO_TARGET_DIR="$BASE_TARGET" cargo build --release --locked -p weft) >"$BUILD_LOG" 2>&1 &
CHILD=$!
if ! wait "$CHILD"; then
    CHILD=""
    log "ERROR: the build failed; last lines of $BUILD_LOG:"
    tail -20 "$BUILD_LOG" >&2
    exit 1
fi
CHILD=""
BIN="$BASE_TARGET/release/weft"
[ -x "$BIN" ] || {
    log "ERROR: no binary at $BIN"
    exit 1
}
cp -f "$BIN" "$OUT.tmp"
mv -f "$OUT.tmp" "$OUT"
log "built $SHORT in $(($(date +%s) - start)) s: $("$OUT" --version 2>/dev/null || echo '?')"
echo "$OUT"
