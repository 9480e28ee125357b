#!/usr/bin/env bash
# Instructions per request, counted by valgrind's callgrind: unlike CPU time, the count does not
# depend on what else the machine is doing, so a feature's cost can be measured on a busy
# machine. Each variant is one Weft configuration in front of the same nginx upstream
# (127.0.0.1:18081); Weft runs under callgrind with instrumentation off while it starts and warms up
# (WARMUP requests), then counts exactly REQUESTS HTTP/1.1 requests sent by h2load, and the
# instructions of every thread of the process over that window are divided by REQUESTS.
#
#   bench/instructions.sh istio                # Istio metrics on vs off
#   bench/instructions.sh tracing              # tracing off vs 1 % vs 100 % (OTLP/HTTP to a sink)
#   bench/instructions.sh wasm                 # no plugin vs one trivial plugin (header_adder)
#   bench/instructions.sh wasm3                # no plugin vs one vs three (the same module, three names)
#   REQUESTS=5000 bench/instructions.sh istio
#   WEFT_BIN=/path/to/older/weft bench/instructions.sh wasm   # the same for another binary
#   WEFT_BINS="base=/path/weft-a new=/path/weft-b" bench/instructions.sh builds   # builds side by side
#   H2=1 ... bench/instructions.sh builds      # HTTP/2 (h2c, prior knowledge) instead of HTTP/1.1
#   BODY=16384 bench/instructions.sh wasm      # POST a 16 KiB body with every request (body path)
#   KEEP=/some/dir ...                         # keep callgrind's output there (callgrind_annotate)
#
# Environment: REQUESTS (3000), WARMUP (500), CONNS (4), STREAMS (h2load -m, 1), WEFT_BIN (default:
# cargo build --release -p weft), WEFT_BINS (set `builds`: NAME=BINARY pairs, Istio metrics off),
# H2 (1: h2c requests), WEFT_PORT (Weft's listener, 18370; the admin port is the next one), BODY (bytes of random POST body per request; 0, the default: GET), KEEP (a directory for the callgrind files, one per variant). Needs valgrind, nginx, h2load (nghttp2-client); installs them with apt when missing.
# Results: bench/results/instructions-<set>.md (and stdout).
set -euo pipefail
BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$BENCH")"
SET=${1:-istio}
REQUESTS=${REQUESTS:-3000}
WARMUP=${WARMUP:-500}
CONNS=${CONNS:-4}
STREAMS=${STREAMS:-1}
declare -A BIN
case "$SET" in
    istio) VARIANTS=(off on) ;;
    tracing) VARIANTS=(off 1 100) ;;
    wasm) VARIANTS=(none header-adder) ;;
    wasm3) VARIANTS=(none header-adder header-adder-x3) ;;
    builds)
        VARIANTS=()
        for pair in ${WEFT_BINS:-}; do
            name=${pair%%=*} bin=${pair#*=}
            [[ $name =~ ^[A-Za-z0-9_.-]+$ && -x $bin ]] || { echo "instructions.sh: WEFT_BINS entry '$pair' is not NAME=EXECUTABLE" >&2; exit 2; }
            VARIANTS+=("$name")
            BIN[$name]=$bin
        done
        [ ${#VARIANTS[@]} -gt 0 ] || { echo "instructions.sh: set 'builds' needs WEFT_BINS=\"NAME=BINARY ...\"" >&2; exit 2; }
        ;;
    *) echo "instructions.sh: unknown set '$SET' (istio, tracing, wasm, builds)" >&2; exit 2 ;;
esac
if [ "${H2:-0}" = 1 ]; then PROTO=() PROTO_NAME="HTTP/2 (h2c)"; else PROTO=(--h1) PROTO_NAME="HTTP/1.1"; fi
for v in REQUESTS WARMUP CONNS STREAMS; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "instructions.sh: $v must be a positive integer" >&2; exit 2; }
done
BODY=${BODY:-0}
[[ $BODY =~ ^[0-9]+$ ]] || { echo "instructions.sh: BODY must be a number of bytes" >&2; exit 2; }
missing=()
command -v valgrind >/dev/null || missing+=(valgrind)
command -v nginx >/dev/null || missing+=(nginx-light)
command -v h2load >/dev/null || missing+=(nghttp2-client)
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if [ -z "${WEFT_BIN:-}" ] && [ "$SET" != builds ]; then
    (cd "$ROOT" && cargo build --release -q -p weft)
    WEFT_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/weft"
fi
if [ "$SET" = wasm ] || [ "$SET" = wasm3 ]; then
    # The trivial header-adding fixture (request header x-plugin-seen, response header x-plugin).
    (cd "$ROOT" && cargo build --manifest-path tests/fixtures/wasm/Cargo.toml --release -q \
        --target wasm32-wasip1 -p header_adder --target-dir "${CARGO_TARGET_DIR:-$ROOT/target}/weft-fixtures")
    ADDER="${CARGO_TARGET_DIR:-$ROOT/target}/weft-fixtures/wasm32-wasip1/release/header_adder.wasm"
fi

RUN="$(mktemp -d)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$RUN"; }
trap cleanup EXIT

mkdir -p "$RUN/upstream/tmp"
# BODY: every request is a POST of the same random bytes (h2load -d sends them with a Content-Length).
DATA=()
if [ "$BODY" -gt 0 ]; then
    head -c "$BODY" /dev/urandom >"$RUN/body"
    DATA=(-d "$RUN/body")
fi
nginx -p "$RUN/upstream/" -e "$RUN/upstream/error.log" -c "$BENCH/configs/upstream-nginx.conf" &
PIDS+=($!)
# The OTLP/HTTP collector for the tracing set: accepts every export.
python3 - 18350 >"$RUN/sink.log" 2>&1 <<'PY' &
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200); self.send_header("content-length", "0"); self.end_headers()
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
PIDS+=($!)

config() { # VARIANT PORT ADMIN
    echo "admin: { address: \"127.0.0.1:$3\" }"
    echo "access_log: { path: \"off\" }"
    echo "workers: 1"
    echo "node: { name: productpage-v1-0, namespace: bookinfo, workload_name: productpage-v1, app: productpage, version: v1, cluster: Kubernetes }"
    case "$SET:$1" in
        istio:on) echo "telemetry: { metrics: { enabled: true } }" ;;
        istio:off | tracing:* | wasm:* | wasm3:* | builds:*) echo "telemetry: { metrics: { enabled: false } }" ;;
    esac
    case "$1" in
        header-adder) echo "plugins: [{ name: adder, file: \"$ADDER\", configuration: v1 }]" ;;
        header-adder-x3)
            echo "plugins:"
            for n in 1 2 3; do echo "  - { name: adder$n, file: \"$ADDER\", configuration: v$n }"; done
            ;;
    esac
    if [ "$SET" = tracing ] && [ "$1" != off ]; then
        echo "tracing: { collector: \"http://127.0.0.1:18350/v1/traces\", protocol: http, random_sampling: $1, max_queue: 8192 }"
    fi
    echo "listeners:"
    echo "  - name: main"
    echo "    address: 127.0.0.1:$2"
    echo "    traffic_direction: outbound"
    case "$1" in
        header-adder) echo "    plugins: [{ name: adder }]" ;;
        header-adder-x3) echo "    plugins: [{ name: adder1 }, { name: adder2 }, { name: adder3 }]" ;;
    esac
    echo "    virtual_hosts: [{ name: any, domains: [\"*\"], routes: [{ route: { cluster: up } }] }]"
    echo "clusters: [{ name: up, endpoints: [{ address: \"127.0.0.1:18081\" }] }]"
}

wait_port() { for _ in $(seq 1 600); do curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0; sleep 0.1; done; return 1; }

# Sums the instruction counts (Ir, the `totals:` line) of every callgrind output file given.
total_ir() { awk '/^totals:/ { s += $2 } END { printf "%d\n", s }' "$@"; }

declare -A IR
for v in "${VARIANTS[@]}"; do
    port=${WEFT_PORT:-18370} admin=$(( ${WEFT_PORT:-18370} + 1 ))
    config "$v" $port $admin >"$RUN/$v.yaml"
    valgrind --tool=callgrind --instr-atstart=no \
        --callgrind-out-file="$RUN/cg.$v.%p" "${BIN[$v]:-$WEFT_BIN}" run -c "$RUN/$v.yaml" >"$RUN/$v.log" 2>&1 &
    pid=$!
    PIDS+=($pid)
    wait_port $port || { echo "weft ($v) did not start under valgrind" >&2; exit 1; }
    h2load "${PROTO[@]}" "${DATA[@]}" -n "$WARMUP" -c "$CONNS" -m "$STREAMS" "http://127.0.0.1:$port/x" >/dev/null
    callgrind_control -i on $pid >/dev/null
    out=$(h2load "${PROTO[@]}" "${DATA[@]}" -n "$REQUESTS" -c "$CONNS" -m "$STREAMS" "http://127.0.0.1:$port/x")
    callgrind_control -i off $pid >/dev/null
    grep -q "$REQUESTS succeeded" <<<"$out" || { echo "weft ($v): not every request succeeded:" >&2; echo "$out" >&2; exit 1; }
    kill -INT $pid
    wait $pid 2>/dev/null || true
    IR[$v]=$(total_ir "$RUN"/cg.$v.*)
    if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$RUN"/cg.$v.* "$KEEP"/; fi
    echo "$v: ${IR[$v]} instructions over $REQUESTS requests"
done

base=${IR[${VARIANTS[0]}]}
SUFFIX=""; [ "${H2:-0}" = 1 ] && SUFFIX=-h2
[ "$BODY" -gt 0 ] && SUFFIX="$SUFFIX-body$BODY"
BODY_NAME=""; [ "$BODY" -gt 0 ] && BODY_NAME=" POST ($BODY-byte body)"
OUT="$ROOT/bench/results/instructions-$SET$SUFFIX${OUT_SUFFIX:-}.md"
mkdir -p "$ROOT/bench/results"
{
    echo "# Instructions per request: $SET ($(date -u +%Y-%m-%dT%H:%MZ))"
    echo
    echo "callgrind, $REQUESTS $PROTO_NAME$BODY_NAME requests (h2load, $CONNS connections, $STREAMS streams each) after $WARMUP warm-up requests, one worker."
    echo
    echo "| variant | instructions/request | vs ${VARIANTS[0]} | added instructions/request |"
    echo "|---|---|---|---|"
    for v in "${VARIANTS[@]}"; do
        awk -v v="$v" -v ir="${IR[$v]}" -v b="$base" -v n="$REQUESTS" \
            'BEGIN { printf "| %s | %.0f | %.3f | %+.0f |\n", v, ir / n, ir / b, (ir - b) / n }'
    done
} | tee "$OUT"
echo "written: $OUT"
