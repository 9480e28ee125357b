#!/usr/bin/env bash
# Isolation of a slow plugin (issue 12's target): two workers, route /slow runs a plugin whose
# on_request_headers burns BURN_US of CPU (tests/fixtures/wasm/cpu_burner), route /fast runs
# none. While wrk keeps SLOW_CONNS connections busy on /slow, a second wrk measures /fast's
# latency. Baseline: the same load with the plugin disabled on /slow. The figure is /fast's p99
# with the slow plugin ÷ without it (target ≤ 1.10), for Weft (workers: 2) and for Envoy 1.40
# (--concurrency 2, the same .wasm) in the same run. Bounded: every wrk is -d$DURATION.
#
#   bench/wasm_isolation.sh                 # ROUNDS=2 DURATION=8 BURN_US=2000 SLOW_CONNS=2 FAST_CONNS=4
#   WEFT_ACCEPT="shared reuseport" bench/wasm_isolation.sh   # Weft once per `runtime.accept` mode
#
# WEFT_ACCEPT: the `runtime.accept` modes Weft runs with, each measured as its own proxy
# (`weft-shared`, `weft-reuseport`) in the same run as Envoy (default: "reuseport shared", the default mode and the other). `shared-pool`:
# `shared` with WEFT_OFFLOAD=pool (slow callbacks to the blocking pool instead of
# `block_in_place`, to compare the two hand-offs).
#
# Results: bench/results/wasm-isolation-<time>.md (and stdout). The load generators run on the
# same two cores as the proxies: read the ratios, not the absolute latencies.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/bench/lib.sh"
ROUNDS=${ROUNDS:-2} DURATION=${DURATION:-8} BURN_US=${BURN_US:-2000}
SLOW_CONNS=${SLOW_CONNS:-2} FAST_CONNS=${FAST_CONNS:-4}
WEFT_ACCEPT=${WEFT_ACCEPT:-reuseport shared}
PROXIES=()
for mode in $WEFT_ACCEPT; do
    case "$mode" in
        shared | reuseport | shared-pool) PROXIES+=("weft-$mode") ;;
        *) echo "wasm_isolation.sh: WEFT_ACCEPT entry '$mode' is not shared, reuseport or shared-pool" >&2; exit 2 ;;
    esac
done
PROXIES+=(envoy)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
RUN=$(mktemp -d /tmp/weft-isolation-bench.XXXXXX)
OUT="$ROOT/bench/results/wasm-isolation-$(date -u +%Y%m%dT%H%M%SZ).md"
mkdir -p "$ROOT/bench/results" "$RUN/tmp"
PIDS=()
trap bench_kill_pids EXIT

bench_need nginx nginx-light wrk wrk
bench_envoy install
bench_weft "$ROOT"
cargo build --manifest-path "$ROOT/tests/fixtures/wasm/Cargo.toml" --release -q --target wasm32-wasip1 \
    -p cpu_burner --target-dir "$TARGET/weft-fixtures"
WASM="$TARGET/weft-fixtures/wasm32-wasip1/release/cpu_burner.wasm"

bench_upstream "$ROOT" "$RUN"

weft_config() { # burn(yes|no) port admin accept: the slow route carries the plugin only when burning
    local plugins="[]"
    [ "$1" = yes ] && plugins="[{ name: burn }]"
    cat <<YAML
admin: { address: 127.0.0.1:$3 }
access_log: { path: "off" }
workers: 2
runtime: { accept: $4 }
plugins:
  - { name: burn, file: "$WASM", configuration: "$BURN_US" }
listeners:
  - name: main
    address: 127.0.0.1:$2
    virtual_hosts:
      - name: any
        domains: ["*"]
        routes:
          - { match: { path: { prefix: /slow } }, plugins: $plugins, route: { cluster: up } }
          - { route: { cluster: up } }
clusters: [{ name: up, endpoints: [{ address: "127.0.0.1:18081" }] }]
YAML
}

envoy_config() { # burn port admin
    local slow_filter=""
    if [ "$1" = yes ]; then
        slow_filter="
                  - name: burn
                    typed_config:
                      \"@type\": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
                      config:
                        name: burn
                        configuration: { \"@type\": type.googleapis.com/google.protobuf.StringValue, value: \"$BURN_US\" }
                        vm_config: { runtime: envoy.wasm.runtime.v8, code: { local: { filename: \"$WASM\" } } }"
    fi
    # Envoy has no per-route Wasm filter: the slow plugin sits on a second listener (port+2),
    # which the /slow load uses; both listeners share the two workers, as Weft's routes do.
    envoy_admin "$3"
    echo "static_resources:"
    echo "  listeners:"
    envoy_http_listener fast "$2"
    envoy_http_listener slow $(($2 + 2)) "$slow_filter"
    echo "  clusters:"
    envoy_static_cluster up 18081
}


declare -A P99 P50 RPS
measure() { # proxy burn round
    local proxy=$1 burn=$2 port=18400 admin=18401 pid slow_url fast_url
    if [ "$proxy" != envoy ]; then
        local mode=${proxy#weft-} offload=
        [ "$mode" = shared-pool ] && mode=shared offload=pool
        weft_config "$burn" $port $admin "$mode" >"$RUN/weft.yaml"
        WEFT_OFFLOAD=$offload "$WEFT" run -c "$RUN/weft.yaml" >"$RUN/weft.log" 2>&1 &
        slow_url="http://127.0.0.1:$port/slow"
    else
        envoy_config "$burn" $port $admin >"$RUN/envoy.yaml"
        "$ENVOY" -c "$RUN/envoy.yaml" --concurrency 2 --log-level error >"$RUN/envoy.log" 2>&1 &
        slow_url="http://127.0.0.1:$((port + 2))/slow"
        wait_port $((port + 2)) || { echo "envoy slow listener did not start" >&2; kill $!; return 1; }
    fi
    pid=$!
    fast_url="http://127.0.0.1:$port/fast"
    wait_port $port || { echo "$proxy did not start" >&2; kill $pid; return 1; }
    local seen
    seen=$(curl -s -o /dev/null -w '%{http_code}' "$slow_url")
    [ "$seen" = 200 ] || { echo "$proxy /slow answers $seen" >&2; kill $pid; return 1; }
    # The slow load runs a little longer than the measurement so that it covers it.
    timeout $((DURATION + 30)) wrk -t1 -c"$SLOW_CONNS" -d"$((DURATION + 2))s" "$slow_url" >"$RUN/slow.out" &
    local slow=$!
    sleep 1
    local out
    out=$(timeout $((DURATION + 20)) wrk -t1 -c"$FAST_CONNS" -d"${DURATION}s" --latency "$fast_url")
    wait $slow || true
    kill $pid; wait $pid 2>/dev/null || true
    P99[$proxy.$burn.$3]=$(pct_ms 99% <<<"$out")
    P50[$proxy.$burn.$3]=$(pct_ms 50% <<<"$out")
    RPS[$proxy.$burn.$3]=$(awk '/Requests\/sec/ {print $2}' "$RUN/slow.out")
    echo "round $3 $proxy burn=$burn: /fast p50 ${P50[$proxy.$burn.$3]} ms p99 ${P99[$proxy.$burn.$3]} ms; /slow ${RPS[$proxy.$burn.$3]} req/s"
}

for r in $(seq 1 "$ROUNDS"); do
    for proxy in "${PROXIES[@]}"; do
        for burn in no yes; do measure "$proxy" "$burn" "$r"; done
    done
done

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
of() { local -n t=$1; local v=(); for r in $(seq 1 "$ROUNDS"); do v+=("${t[$2.$3.$r]}"); done; median "${v[@]}"; }
{
    echo "# A slow plugin on one route: the other route's latency (issue 12)"
    echo
    echo "$(date -u +%FT%TZ), $ROUNDS rounds x ${DURATION}s; two workers; /slow: wrk -c$SLOW_CONNS, plugin burns ${BURN_US} us per request; /fast: wrk -c$FAST_CONNS --latency; medians. Load generators on the same 2 cores."
    echo
    echo "| proxy | /fast p99 without / with the slow plugin (ms) | ratio (target <= 1.10) | /fast p50 without / with (ms) | /slow req/s with the plugin |"
    echo "|---|---|---|---|---|"
    for proxy in "${PROXIES[@]}"; do
        awk -v x="$proxy" -v a="$(of P99 "$proxy" no)" -v b="$(of P99 "$proxy" yes)" -v c="$(of P50 "$proxy" no)" \
            -v d="$(of P50 "$proxy" yes)" -v s="$(of RPS "$proxy" yes)" \
            'BEGIN {printf "| %s | %.2f / %.2f | %.2fx | %.2f / %.2f | %.0f |\n", x, a, b, b/a, c, d, s}'
    done
} | tee "$OUT"
echo "written: $OUT"
