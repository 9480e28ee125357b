#!/usr/bin/env bash
# The cost of Istio's standard metrics (issue 15, item 6): two Weft processes from the same
# binary, identical but for `telemetry.metrics.enabled` (on: an outbound listener reporting
# istio_* and sending the exchange headers; off: none of it), in front of the same nginx
# upstream, driven alternately by wrk in one run. Reports req/s and the proxy's CPU time per
# request (utime + stime from /proc over the measured run, divided by the requests wrk
# completed), and the on/off ratios.
#
#   bench/istio.sh                       # 5 alternating rounds x 10 s each
#   ROUNDS=3 DURATION=5 bench/istio.sh   # quicker
#
# Environment: ROUNDS (5), DURATION seconds (10), WARMUP seconds (2), CONNS (32), WEFT_BIN (default:
# cargo build --release -p weft). Needs wrk and nginx. Proxies on CPU 1, wrk and nginx on CPU 0
# when taskset and two CPUs are there. Results: bench/results/istio.md.

set -euo pipefail
BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$BENCH")"
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-32}
for v in ROUNDS DURATION WARMUP CONNS; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "istio.sh: $v must be a positive integer" >&2; exit 2; }
done
for tool in wrk nginx; do
    command -v "$tool" >/dev/null || { echo "istio.sh: $tool is required" >&2; exit 2; }
done
if [ -z "${WEFT_BIN:-}" ]; then
    (cd "$ROOT" && cargo build --release -q -p weft)
    WEFT_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/weft"
fi

RUN="$(mktemp -d)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$RUN"; }
trap cleanup EXIT

PIN_PROXY=() PIN_LOAD=()
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
    PIN_PROXY=(taskset -c 1) PIN_LOAD=(taskset -c 0)
fi

mkdir -p "$RUN/upstream/tmp"
"${PIN_LOAD[@]}" nginx -p "$RUN/upstream/" -e "$RUN/upstream/error.log" \
    -c "$BENCH/configs/upstream-nginx.conf" &
PIDS+=($!)

config() { # config PORT ADMIN ENABLED
    cat <<EOF
admin: { address: "127.0.0.1:$2" }
access_log: { path: "off" }
workers: 1
node: { name: productpage-v1-0, namespace: bookinfo, workload_name: productpage-v1, app: productpage, version: v1, cluster: Kubernetes }
telemetry: { metrics: { enabled: $3 } }
listeners:
  - name: main
    address: 127.0.0.1:$1
    traffic_direction: outbound
    virtual_hosts:
      - name: any
        domains: ["*"]
        routes: [{ route: { cluster: up } }]
clusters:
  - { name: up, endpoints: [{ address: "127.0.0.1:18081" }] }
EOF
}
config 18120 15920 true >"$RUN/on.yaml"
config 18121 15921 false >"$RUN/off.yaml"
"${PIN_PROXY[@]}" "$WEFT_BIN" run -c "$RUN/on.yaml" >"$RUN/on.log" 2>&1 &
ON=$!
PIDS+=($ON)
"${PIN_PROXY[@]}" "$WEFT_BIN" run -c "$RUN/off.yaml" >"$RUN/off.log" 2>&1 &
OFF=$!
PIDS+=($OFF)
for port in 18081 18120 18121; do
    for _ in $(seq 100); do
        curl -fs -o /dev/null "http://127.0.0.1:$port/" && break
        sleep 0.1
    done
done

TICKS=$(getconf CLK_TCK)
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# measure NAME PID PORT: appends "req/s cpu_us_per_request" to $RUN/NAME.
measure() {
    "${PIN_LOAD[@]}" wrk -t1 -c"$CONNS" -d"${WARMUP}s" "http://127.0.0.1:$3/" >/dev/null
    local before after out requests
    before=$(cpu_ticks "$2")
    out=$("${PIN_LOAD[@]}" wrk -t1 -c"$CONNS" -d"${DURATION}s" "http://127.0.0.1:$3/")
    after=$(cpu_ticks "$2")
    requests=$(echo "$out" | awk '/requests in/ { print $1 }')
    echo "$out" | awk -v req="$requests" -v t="$((after - before))" -v hz="$TICKS" \
        '/Requests\/sec/ { printf "%s %.3f\n", $2, t / hz * 1e6 / req }' >>"$RUN/$1"
}

for r in $(seq "$ROUNDS"); do
    if [ $((r % 2)) = 1 ]; then measure on "$ON" 18120; measure off "$OFF" 18121
    else measure off "$OFF" 18121; measure on "$ON" 18120; fi
done
curl -fs "http://127.0.0.1:15920/stats/prometheus" | grep -q '^istio_requests_total{reporter="source"' \
    || { echo "istio.sh: the 'on' proxy reported no istio_requests_total" >&2; exit 1; }

mkdir -p "$BENCH/results"
python3 - "$RUN/on" "$RUN/off" <<'EOF' | tee "$BENCH/results/istio.md"
import statistics, sys
on = [tuple(map(float, l.split())) for l in open(sys.argv[1])]
off = [tuple(map(float, l.split())) for l in open(sys.argv[2])]
med = lambda xs: statistics.median(xs)
rps_on, rps_off = med([r for r, _ in on]), med([r for r, _ in off])
cpu_on, cpu_off = med([c for _, c in on]), med([c for _, c in off])
print("| | req/s (median) | proxy CPU µs/request (median) |")
print("| --- | --- | --- |")
print(f"| istio metrics on | {rps_on:,.0f} | {cpu_on:.2f} |")
print(f"| istio metrics off | {rps_off:,.0f} | {cpu_off:.2f} |")
print(f"| on / off | {rps_on / rps_off:.3f} | {cpu_on / cpu_off:.3f} |")
print(f"\ncost of the Istio metrics: {cpu_on - cpu_off:.2f} µs CPU per request "
      f"({len(on)} rounds each, alternating)")
EOF
