#!/usr/bin/env bash
# The shipped plugins under load, Weft against Envoy 1.40 with the same .wasm and the same
# plugin configuration: for each plugin (and for no plugin), requests/s through each proxy.
# One worker per proxy pinned to CPU 1, wrk and the nginx upstream on CPU 0. Bounded: every
# run is `wrk -d$DURATION`, ROUNDS interleaved rounds.
#
#   bench/plugins.sh                 # ROUNDS=2 DURATION=8 CONNS=32
#   PLUGINS="none header-adder" WEFT_BEFORE=/path/to/older/weft bench/plugins.sh
#
# `header-adder` is the trivial header-adding fixture (tests/fixtures/wasm/header_adder).
# WEFT_BIN uses that weft binary instead of building one.
# WEFT_BEFORE adds a "weft-before" proxy (another weft binary, e.g. main's) measured in the same
# rounds. Besides req/s, each run records the proxy's CPU time per request (utime + stime from
# /proc over the timed wrk run, divided by the requests wrk counted) and its RSS after the run.
# Results: bench/results/plugins-<time>.md (and stdout).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/bench/lib.sh"
ROUNDS=${ROUNDS:-2} DURATION=${DURATION:-8} CONNS=${CONNS:-32}
PLUGINS=${PLUGINS:-none header-rewrite telemetry authz}
WEFT_BEFORE=${WEFT_BEFORE:-}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
RUN=$(mktemp -d /tmp/weft-plugin-bench.XXXXXX)
OUT="$ROOT/bench/results/plugins-$(date -u +%Y%m%dT%H%M%SZ).md"
mkdir -p "$ROOT/bench/results" "$RUN/tmp"
PIDS=()
trap bench_kill_pids EXIT

bench_need nginx nginx-light wrk wrk
bench_envoy install
bench_weft "$ROOT"
# The same modules Weft embeds, for Envoy.
for p in authz header-rewrite telemetry; do
    [[ " $PLUGINS " == *" $p "* ]] || continue
    cargo build --manifest-path "$ROOT/Cargo.toml" --release -q --target wasm32-wasip1 -p "weft-$p" \
        --target-dir "$TARGET/weft-plugins"
done
WASM_DIR="$TARGET/weft-plugins/wasm32-wasip1/release"
cargo build --manifest-path "$ROOT/tests/fixtures/wasm/Cargo.toml" --release -q --target wasm32-wasip1 \
    -p header_adder --target-dir "$TARGET/weft-fixtures"

bench_upstream "$ROOT" "$RUN"

# Plugin configurations (JSON), identical for both proxies.
declare -A CONF FILE HDRS
CONF[header-rewrite]='{"rules":[{"name":"client","request":{"set":{"x-client-address":"%{source.address}","x-original-path":"%{request.path}"}}}],"security_headers":true}'
CONF[telemetry]='{}'
CONF[authz]='{"api_keys":{"keys":[{"name":"bench","key":"bench-key-0123456789"}]},"policies":[{"name":"no-admin","action":"DENY","rules":[{"to":[{"operation":{"paths":["/admin*"]}}]}]}]}'
for p in authz header-rewrite telemetry; do FILE[$p]="$WASM_DIR/weft_${p//-/_}.wasm"; done
CONF[header-adder]='v1'
FILE[header-adder]="$TARGET/weft-fixtures/wasm32-wasip1/release/header_adder.wasm"
HDRS[authz]="x-api-key: bench-key-0123456789"

weft_config() { # plugin|none port admin
    {
        echo "admin: { address: 127.0.0.1:$3 }"
        echo "access_log: { path: \"off\" }"
        echo "workers: 1"
        if [ "$1" != none ]; then
            echo "plugins:"
            echo "  - { name: p, file: \"${FILE[$1]}\", instances: 1, configuration: ${CONF[$1]} }"
        fi
        echo "listeners:"
        echo "  - name: main"
        echo "    address: 127.0.0.1:$2"
        [ "$1" != none ] && echo "    plugins: [{ name: p }]"
        echo "    virtual_hosts: [{ name: any, domains: [\"*\"], routes: [{ route: { cluster: up } }] }]"
        echo "clusters: [{ name: up, endpoints: [{ address: \"127.0.0.1:18081\" }] }]"
    }
}

envoy_config() { # plugin|none port admin
    local filter=""
    if [ "$1" != none ]; then
        local json
        json=$(python3 -c 'import json,sys; print(json.dumps(sys.argv[1]))' "${CONF[$1]}")
        filter="
                  - name: envoy.filters.http.wasm
                    typed_config:
                      \"@type\": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
                      config:
                        name: p
                        root_id: \"\"
                        configuration:
                          \"@type\": type.googleapis.com/google.protobuf.StringValue
                          value: $json
                        vm_config:
                          runtime: envoy.wasm.runtime.v8
                          code: { local: { filename: \"${FILE[$1]}\" } }"
    fi
    envoy_admin "$3"
    echo "static_resources:"
    echo "  listeners:"
    envoy_http_listener main "$2" "$filter"
    echo "  clusters:"
    envoy_static_cluster up 18081
}


declare -A RPS CPU RSS
measure() { # proxy plugin round
    local proxy=$1 plugin=$2 port=18300 admin=18301 pid hdr=()
    if [ "$proxy" = weft ] || [ "$proxy" = weft-before ]; then
        local bin=$WEFT
        [ "$proxy" = weft-before ] && bin=$WEFT_BEFORE
        weft_config "$plugin" $port $admin >"$RUN/weft.yaml"
        taskset -c 1 "$bin" run -c "$RUN/weft.yaml" >"$RUN/weft.log" 2>&1 &
    else
        envoy_config "$plugin" $port $admin >"$RUN/envoy.yaml"
        taskset -c 1 "$ENVOY" -c "$RUN/envoy.yaml" --concurrency 1 --log-level error >"$RUN/envoy.log" 2>&1 &
    fi
    pid=$!
    wait_port $port || { echo "$proxy/$plugin did not start" >&2; kill $pid; return 1; }
    [ -n "${HDRS[$plugin]:-}" ] && hdr=(-H "${HDRS[$plugin]}")
    local code
    code=$(curl -s -o /dev/null -w '%{http_code}' "${hdr[@]}" "http://127.0.0.1:$port/x")
    [ "$code" = 200 ] || { echo "$proxy/$plugin answers $code" >&2; kill $pid; return 1; }
    taskset -c 0 wrk -t1 -c"$CONNS" -d2s "${hdr[@]}" "http://127.0.0.1:$port/x" >/dev/null
    local rps out t0 t1 hz
    hz=$(getconf CLK_TCK)
    t0=$(cpu_ticks $pid)
    out=$(taskset -c 0 timeout $((DURATION + 20)) wrk -t1 -c"$CONNS" -d"${DURATION}s" "${hdr[@]}" "http://127.0.0.1:$port/x")
    t1=$(cpu_ticks $pid)
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    local requests
    requests=$(awk '/requests in/ {print $1}' <<<"$out")
    CPU[$proxy.$plugin.$3]=$(awk -v a="$t0" -v b="$t1" -v hz="$hz" -v n="$requests" 'BEGIN {printf "%.2f", (b - a) / hz * 1e6 / n}')
    RSS[$proxy.$plugin.$3]=$(awk '/VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$pid/status")
    kill $pid; wait $pid 2>/dev/null || true
    RPS[$proxy.$plugin.$3]=$rps
    echo "round $3 $proxy $plugin: $rps req/s, ${CPU[$proxy.$plugin.$3]} us CPU/request, RSS ${RSS[$proxy.$plugin.$3]} MiB"
}

PROXIES="weft envoy"
[ -n "$WEFT_BEFORE" ] && PROXIES="weft weft-before envoy"

for r in $(seq 1 "$ROUNDS"); do
    for plugin in $PLUGINS; do
        for proxy in $PROXIES; do measure "$proxy" "$plugin" "$r"; done
    done
done

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
of() { # table proxy plugin -> median over rounds
    local -n t=$1
    local v=()
    for r in $(seq 1 "$ROUNDS"); do v+=("${t[$2.$3.$r]}"); done
    median "${v[@]}"
}
{
    echo "# Plugins: Weft vs Envoy 1.40 (same .wasm, same configuration)"
    echo
    echo "$(date -u +%FT%TZ), $ROUNDS rounds x ${DURATION}s, wrk -t1 -c$CONNS, one worker each pinned to CPU 1, upstream nginx; medians."
    echo
    echo "| proxy | plugin | req/s | vs no plugin | CPU us/request | +CPU us vs no plugin | RSS MiB | +RSS MiB |"
    echo "|---|---|---|---|---|---|---|---|"
    for proxy in $PROXIES; do
        n=$(of RPS "$proxy" none) nc=$(of CPU "$proxy" none) nr=$(of RSS "$proxy" none)
        for plugin in $PLUGINS; do
            awk -v x="$proxy" -v p="$plugin" -v r="$(of RPS "$proxy" "$plugin")" -v c="$(of CPU "$proxy" "$plugin")" \
                -v m="$(of RSS "$proxy" "$plugin")" -v n="$n" -v nc="$nc" -v nr="$nr" \
                'BEGIN {printf "| %s | %s | %.0f | %.2fx | %.2f | %+.2f | %.1f | %+.1f |\n", x, p, r, r/n, c, c-nc, m, m-nr}'
        done
    done
    echo
    echo "| plugin | Weft / Envoy req/s |"
    echo "|---|---|"
    for plugin in $PLUGINS; do
        awk -v p="$plugin" -v w="$(of RPS weft "$plugin")" -v e="$(of RPS envoy "$plugin")" 'BEGIN {printf "| %s | %.2fx |\n", p, w/e}'
    done
} | tee "$OUT"
echo "written: $OUT"
