#!/usr/bin/env bash
# Regenerates host/weft/symbol-order.txt, the linker's `--symbol-ordering-file` (host/weft/build.rs
# passes it to lld): the functions a release `weft` executes on the request path (HTTP/1.1 and
# h2c, with and without a plugin; hottest first), then those it executes while it starts on
# bench/configs/weft.yaml, answers /ready and idles for a second. They are laid out together at
# the start of .text, so start-up faults in a few contiguous pages of code instead of pages
# scattered through the whole 28 MB, and the request path's code shares few pages
# (docs/performance.md, "Idle RSS: start-up code grouped", "The request path's code grouped").
#
#   bench/symbol_order.sh                       # builds release, then writes the file
#   WEFT_BIN=/path/to/weft bench/symbol_order.sh
#
# The names are mangled symbols: they hold for the toolchain and Cargo.lock they were taken with
# (rust-toolchain.toml pins the toolchain). Names the linker does not find are skipped silently,
# so a stale file only costs idle RSS, never a build; rerun this after a toolchain or
# dependency update. Needs valgrind (callgrind), curl, h2load and nginx (installed when missing).
set -euo pipefail
BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$BENCH")"
. "$BENCH/lib.sh"
PIDS=()
OUT=${OUT:-$ROOT/host/weft/symbol-order.txt}
command -v valgrind >/dev/null || { echo "symbol_order.sh: needs valgrind" >&2; exit 2; }
if [ -z "${WEFT_BIN:-}" ]; then
    (cd "$ROOT" && cargo build --release -q -p weft)
    WEFT_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/weft"
fi
WEFT_BIN=$(readlink -f "$WEFT_BIN")
RUN=$(mktemp -d /tmp/weft-symbol-order.XXXXXX)
PID=
cleanup() {
    [ -n "$PID" ] && kill -TERM "$PID" 2>/dev/null
    bench_kill_pids
    wait 2>/dev/null || true
    if [ -n "${KEEP:-}" ]; then echo "symbol_order.sh: profiles kept in $RUN" >&2; else rm -rf "$RUN"; fi
}
trap cleanup EXIT
# The profile configuration: bench/configs/weft.yaml's listener (HTTP/1.1 and h2c to the nginx
# upstream on 127.0.0.1:18081) and a second one with a shipped plugin (the one of
# bench/configs/weft-builtin-plugin.yaml), so the Wasm host's request path is ordered too.
cat >"$RUN/weft.yaml" <<'YAML'
admin:
  address: 127.0.0.1:15900
access_log:
  path: "off"
workers: 1
plugins:
  - name: rewrite
    file: builtin:header-rewrite
    configuration:
      rules:
        - name: mark
          request: { set: { x-served-by: "weft" } }
listeners:
  - name: main
    address: 127.0.0.1:18100
    virtual_hosts:
      - name: any
        domains: ["*"]
        routes:
          - route: { cluster: up }
  - name: plugin
    address: 127.0.0.1:18109
    plugins: [{ name: rewrite }]
    virtual_hosts:
      - name: any
        domains: ["*"]
        routes:
          - route: { cluster: up }
clusters:
  - name: up
    endpoints:
      - address: "127.0.0.1:18081"
YAML
bench_need h2load nghttp2-client nginx nginx
bench_upstream "$ROOT" "$RUN/upstream"
cp "$BENCH/configs/weft.yaml" "$RUN/plain.yaml"
ADMIN=$(awk '/^admin:/ { a = 1; next } a && /address:/ { print $2; exit }' "$RUN/weft.yaml")

# start NAME CONFIG: weft under callgrind, until /ready and one idle second more (the benchmark
# reads RSS one second after /ready: what runs then belongs to start-up); dumps that part to
# $RUN/NAME.startup. Sets PID.
start() {
    # A few pool slots: valgrind cannot reserve the address space of the default 1,000, and
    # wasmtime would then profile on-demand allocation instead of the pooling path it runs natively.
    WEFT_WASM_POOL_SLOTS=${WEFT_WASM_POOL_SLOTS:-4} valgrind --tool=callgrind --demangle=no --compress-strings=no --compress-pos=no \
        --callgrind-out-file="$RUN/$1.cg" "$WEFT_BIN" run -c "$2" >"$RUN/$1.log" 2>&1 &
    PID=$!
    wait_admin_ready "$ADMIN" 600 0.1 || { echo "symbol_order.sh: weft did not become ready under valgrind" >&2; cat "$RUN/$1.log" >&2; exit 1; }
    sleep 2
    callgrind_control -d "$PID" >/dev/null 2>&1
    mv "$(ls -t "$RUN/$1.cg".* | head -1)" "$RUN/$1.startup"
}
stop() {
    kill -TERM "$PID"
    wait "$PID" 2>/dev/null || true
    PID=
}

# Start-up without a plugin (the idle-RSS benchmark's configuration).
start plain "$RUN/plain.yaml"
stop
# The module cache warmed natively first, as on any start after the first: otherwise, on a
# machine that never ran this plugin, the profile is of Cranelift compiling it in-process
# (under valgrind the compiling child is not used): about 1,700 functions a warm start never
# runs, in the plugin's start-up group.
"$WEFT_BIN" run -c "$RUN/weft.yaml" >"$RUN/warm.log" 2>&1 &
PID=$!
wait_admin_ready "$ADMIN" 300 0.1 || { echo "symbol_order.sh: weft did not start natively" >&2; cat "$RUN/warm.log" >&2; exit 1; }
stop
# Start-up with the plugin, then the request path: HTTP/1.1 and h2c (prior knowledge), GETs and
# POSTs, with and without the plugin. Bounded counts; under valgrind this takes a few minutes.
start plugin "$RUN/weft.yaml"
if grep -q "pooling allocator unavailable" "$RUN/plugin.log"; then
    echo "symbol_order.sh: the pooling allocator could not reserve under valgrind (lower WEFT_WASM_POOL_SLOTS)" >&2
    exit 1
fi
head -c 4096 /dev/urandom >"$RUN/body"
for port in 18100 18109; do
    h2load --h1 -n 300 -c 2 "http://127.0.0.1:$port/" >/dev/null
    h2load --h1 -n 100 -c 2 -d "$RUN/body" "http://127.0.0.1:$port/" >/dev/null
    h2load -n 300 -c 2 -m 4 "http://127.0.0.1:$port/" >/dev/null
done
stop
python3 "$BENCH/symbol_order.py" "$WEFT_BIN" "$RUN/plain.startup" "$RUN/plugin.startup" \
    "$RUN/plugin.cg" >"$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo "symbol_order.sh: $(grep -vc '^#' "$OUT") symbols -> $OUT"
