#!/usr/bin/env bash
# The cost of native tracing: Weft with tracing off, at 1 % and at 100 % sampling, exporting
# over OTLP/HTTP to a local sink, in one run. For each: requests/s and CPU per request of the
# proxy (utime+stime from /proc over the measured run), as ratios to "off". One worker pinned
# to CPU 1; wrk, the nginx upstream and the sink on CPU 0. Bounded: every run is
# `wrk -d$DURATION`, ROUNDS interleaved rounds.
#
#   bench/tracing.sh                 # ROUNDS=3 DURATION=8 CONNS=32
#   WEFT_BIN=path bench/tracing.sh   # an already built release binary
# Results: bench/results/tracing-<time>.md (and stdout).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/bench/lib.sh"
ROUNDS=${ROUNDS:-3} DURATION=${DURATION:-8} CONNS=${CONNS:-32}
RUN=$(mktemp -d /tmp/weft-tracing-bench.XXXXXX)
OUT="$ROOT/bench/results/tracing-$(date -u +%Y%m%dT%H%M%SZ).md"
mkdir -p "$ROOT/bench/results" "$RUN/tmp"
PIDS=()
trap bench_kill_pids EXIT

bench_need nginx nginx-light wrk wrk
bench_weft "$ROOT"
WEFT_BIN=$WEFT

bench_upstream "$ROOT" "$RUN"
# The collector: accepts every OTLP/HTTP export (200, empty body) and counts the bytes.
taskset -c 0 python3 - 18350 >"$RUN/sink.log" 2>&1 <<'PY' &
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200); self.send_header("content-length", "0"); self.end_headers()
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
PIDS+=($!)
sleep 0.5

weft_config() { # off|PERCENT port admin
    {
        echo "admin: { address: 127.0.0.1:$3 }"
        echo "access_log: { path: \"off\" }"
        echo "workers: 1"
        if [ "$1" != off ]; then
            echo "tracing: { collector: \"http://127.0.0.1:18350/v1/traces\", protocol: http, random_sampling: $1, max_queue: 8192 }"
        fi
        echo "listeners:"
        echo "  - name: main"
        echo "    address: 127.0.0.1:$2"
        echo "    virtual_hosts: [{ name: any, domains: [\"*\"], routes: [{ route: { cluster: up } }] }]"
        echo "clusters: [{ name: up, endpoints: [{ address: \"127.0.0.1:18081\" }] }]"
    }
}


declare -A RPS CPU
measure() { # off|PERCENT round
    local port=18360 admin=18361 pid
    weft_config "$1" $port $admin >"$RUN/weft.yaml"
    taskset -c 1 "$WEFT_BIN" run -c "$RUN/weft.yaml" >"$RUN/weft.log" 2>&1 &
    pid=$!
    wait_port $port || { echo "weft ($1) did not start" >&2; kill $pid; return 1; }
    taskset -c 0 wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$port/x" >/dev/null
    local before after out rps reqs
    before=$(cpu_ticks $pid)
    out=$(taskset -c 0 timeout $((DURATION + 20)) wrk -t1 -c"$CONNS" -d"${DURATION}s" "http://127.0.0.1:$port/x")
    after=$(cpu_ticks $pid)
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    local spans
    spans=$(curl -s "http://127.0.0.1:$admin/metrics" | awk '/^weft_tracing_spans_exported_total/ {print $2}')
    kill $pid; wait $pid 2>/dev/null || true
    RPS[$1.$2]=$rps
    # Clock ticks (1/100 s) -> microseconds per request.
    CPU[$1.$2]=$(awk -v t=$((after - before)) -v n="$reqs" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.2f", t / hz * 1e6 / n}')
    echo "round $2 tracing=$1: $rps req/s, ${CPU[$1.$2]} us CPU/request, spans exported ${spans:-0}"
}

for r in $(seq 1 "$ROUNDS"); do
    for s in off 1 100; do measure $s $r; done
done

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
{
    echo "# Native tracing: cost of 1 % and 100 % sampling against tracing off"
    echo
    echo "$(date -u +%FT%TZ), $ROUNDS rounds x ${DURATION}s, wrk -t1 -c$CONNS, one worker pinned to CPU 1, upstream nginx, OTLP/HTTP sink on CPU 0."
    echo
    echo "| tracing | req/s (median) | CPU µs/request (median) | req/s vs off | CPU/request vs off |"
    echo "|---|---|---|---|---|"
    declare -A MR MC
    for s in off 1 100; do
        a=() c=()
        for r in $(seq 1 "$ROUNDS"); do a+=("${RPS[$s.$r]}"); c+=("${CPU[$s.$r]}"); done
        MR[$s]=$(median "${a[@]}") MC[$s]=$(median "${c[@]}")
    done
    for s in off 1 100; do
        label=$([ $s = off ] && echo off || echo "$s %")
        awk -v l="$label" -v r="${MR[$s]}" -v c="${MC[$s]}" -v r0="${MR[off]}" -v c0="${MC[off]}" \
            'BEGIN {printf "| %s | %.0f | %.2f | %.3f | %.3f |\n", l, r, c, r/r0, c/c0}'
    done
} | tee "$OUT"
echo "written: $OUT"
