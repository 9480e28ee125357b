#!/usr/bin/env bash
# The floor under Weft's request path (issue 16): what a reverse proxy built on hyper 1.x does per
# request at the least (bench/hyper_floor.rs: no routing, no header policy, no framing guard, no
# metrics), side by side with Weft and haproxy, in the same run, in front of the same nginx.
#
#   bench/floor.sh            # instructions per request (callgrind), then CPU per request under load
#   PART=instructions bench/floor.sh      # only the callgrind part (load-independent, ~1 minute)
#   PART=load bench/floor.sh              # only the load part
#   ONLY="hyper-conn haproxy" ROUNDS=8 PART=load bench/floor.sh   # some candidates (haproxy always)
#   H2=1 bench/floor.sh       # HTTP/2 (h2c, prior knowledge) downstream; every upstream stays HTTP/1.1
#
# Candidates: weft (bench/configs/weft.yaml: Istio metrics on, the default), weft-nometrics (the
# same, metrics off), hyper-legacy (hyper's HTTP/1.1 server + hyper-util's pooled legacy client,
# Weft's pair), hyper-conn (one upstream connection per downstream connection, no pool), haproxy.
# With H2=1: weft, weft-nometrics, hyper-h2 (hyper's HTTP/2 server + the legacy client),
# hyper-h2-conn (the same with one upstream connection per downstream connection, as
# hyper-conn), hyper-h2-local (hyper's HTTP/2 server answering by itself, no upstream), haproxy.
#
# Instructions: valgrind callgrind, every thread, REQUESTS (3000) requests by h2load (CONNS=4)
# after WARMUP (500). Load: each candidate pinned to CPU 1, nginx and wrk (HTTP/1.1, `-t1 -c32`;
# h2load -c32 -m STREAMS (1) with H2=1) on CPU 0, ROUNDS (3) interleaved rounds of DURATION (4) seconds;
# CPU per request = the candidate's utime + stime over the round ÷ requests completed.
# Environment: WEFT_BIN (default: cargo build --release -p weft), FLOOR_BIN (default: cargo build
# --release -p weft-e2e --example hyper_floor). Needs valgrind, nginx, haproxy, wrk, h2load;
# installs them with apt when missing. Results: bench/results/floor[-h2].md (and stdout).
set -euo pipefail
BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$BENCH")"
. "$BENCH/lib.sh"
PART=${PART:-all}
REQUESTS=${REQUESTS:-3000}
WARMUP=${WARMUP:-500}
CONNS=${CONNS:-4}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-4}
STREAMS=${STREAMS:-1}
H2=${H2:-0}
for v in REQUESTS WARMUP CONNS ROUNDS DURATION STREAMS; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "floor.sh: $v must be a positive integer" >&2; exit 2; }
done
case "$PART" in all | instructions | load) ;; *) echo "floor.sh: PART is all, instructions or load" >&2; exit 2 ;; esac

bench_need valgrind valgrind nginx nginx-light haproxy haproxy wrk wrk h2load nghttp2-client
bench_weft "$ROOT"
if [ -n "${FLOOR_BIN:-}" ]; then
    FLOOR=$FLOOR_BIN
else
    cargo build --manifest-path "$ROOT/Cargo.toml" --release -q -p weft-e2e --example hyper_floor
    FLOOR="${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/hyper_floor"
fi

RUN="$(mktemp -d)"
PIDS=()
trap 'bench_kill_pids; wait 2>/dev/null; rm -rf "$RUN"' EXIT
bench_upstream "$ROOT" "$RUN/upstream" taskset -c 0

# Weft's candidates: bench/configs/weft.yaml on 18100 (admin 15900), the same with Istio metrics
# off on 18120 (admin 15920).
sed -e 's/^workers: 1$/workers: 1\ntelemetry: { metrics: { enabled: false } }/' \
    -e 's/127.0.0.1:18100/127.0.0.1:18120/' -e 's/127.0.0.1:15900/127.0.0.1:15920/' \
    "$BENCH/configs/weft.yaml" >"$RUN/weft-nometrics.yaml"
grep -q 'enabled: false' "$RUN/weft-nometrics.yaml" || { echo "floor.sh: could not render weft-nometrics.yaml" >&2; exit 1; }

if [ "$H2" = 1 ]; then
    CANDIDATES=(weft weft-nometrics hyper-h2 hyper-h2-conn hyper-h2-local haproxy)
    declare -A PORT=([weft]=18100 [weft-nometrics]=18120 [hyper-h2]=18392 [hyper-h2-conn]=18394 [hyper-h2-local]=18393 [haproxy]=18113)
else
    CANDIDATES=(weft weft-nometrics hyper-legacy hyper-conn haproxy)
    declare -A PORT=([weft]=18100 [weft-nometrics]=18120 [hyper-legacy]=18390 [hyper-conn]=18391 [haproxy]=18103)
fi
if [ -n "${ONLY:-}" ]; then
    read -r -a CANDIDATES <<<"$ONLY"
    for c in "${CANDIDATES[@]}"; do
        [ -n "${PORT[$c]:-}" ] || { echo "floor.sh: ONLY names '$c', not a candidate here" >&2; exit 2; }
    done
    [ -n "${PORT[haproxy]:-}" ] && [[ " $ONLY " == *" haproxy "* ]] || { echo "floor.sh: ONLY must include haproxy (the reference)" >&2; exit 2; }
fi

# command_of CANDIDATE: the command line that runs it in the foreground.
command_of() {
    case $1 in
        weft) echo "$WEFT run -c $BENCH/configs/weft.yaml" ;;
        weft-nometrics) echo "$WEFT run -c $RUN/weft-nometrics.yaml" ;;
        hyper-legacy) echo "$FLOOR legacy 127.0.0.1:${PORT[$1]} 127.0.0.1:18081" ;;
        hyper-conn) echo "$FLOOR conn 127.0.0.1:${PORT[$1]} 127.0.0.1:18081" ;;
        hyper-h2) echo "$FLOOR h2 127.0.0.1:${PORT[$1]} 127.0.0.1:18081" ;;
        hyper-h2-conn) echo "$FLOOR h2-conn 127.0.0.1:${PORT[$1]} 127.0.0.1:18081" ;;
        hyper-h2-local) echo "$FLOOR h2-local 127.0.0.1:${PORT[$1]} 127.0.0.1:18081" ;;
        haproxy) echo "haproxy -db -f $BENCH/configs/haproxy.cfg" ;;
    esac
}

# ready CANDIDATE: waits until its listener answers (h2load works for both protocols).
ready() {
    local proto=(--h1)
    [ "$H2" = 1 ] && proto=()
    for _ in $(seq 1 600); do
        h2load "${proto[@]}" -n 1 -c 1 "http://127.0.0.1:${PORT[$1]}/" 2>/dev/null | grep -q "1 succeeded" && return 0
        sleep 0.1
    done
    echo "floor.sh: $1 did not start" >&2
    return 1
}

PROTO=(--h1)
PROTO_NAME="HTTP/1.1"
[ "$H2" = 1 ] && PROTO=() PROTO_NAME="HTTP/2 (h2c)"
SUFFIX=""
[ "$H2" = 1 ] && SUFFIX=-h2
OUT="$ROOT/bench/results/floor$SUFFIX.md"
mkdir -p "$ROOT/bench/results"
{
    echo "# The hyper floor: $PROTO_NAME ($(date -u +%Y-%m-%dT%H:%MZ))"
    echo
} >"$OUT"

declare -A IR
if [ "$PART" != load ]; then
    for c in "${CANDIDATES[@]}"; do
        # shellcheck disable=SC2046
        valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$RUN/cg.$c.%p" \
            $(command_of "$c") >"$RUN/$c.cg.log" 2>&1 &
        pid=$!
        PIDS+=($pid)
        ready "$c"
        h2load "${PROTO[@]}" -n "$WARMUP" -c "$CONNS" "http://127.0.0.1:${PORT[$c]}/x" >/dev/null
        callgrind_control -i on $pid >/dev/null
        out=$(h2load "${PROTO[@]}" -n "$REQUESTS" -c "$CONNS" "http://127.0.0.1:${PORT[$c]}/x")
        callgrind_control -i off $pid >/dev/null
        grep -q "$REQUESTS succeeded" <<<"$out" || { echo "$c: not every request succeeded:" >&2; echo "$out" >&2; exit 1; }
        kill -TERM $pid
        wait $pid 2>/dev/null || true
        IR[$c]=$(awk '/^totals:/ { s += $2 } END { printf "%d\n", s }' "$RUN"/cg.$c.*)
        echo "$c: $(( IR[$c] / REQUESTS )) instructions per request"
    done
    {
        echo "## Instructions per request (callgrind, user space, every thread)"
        echo
        echo "$REQUESTS $PROTO_NAME requests (h2load, $CONNS connections) after $WARMUP warm-up requests."
        echo
        echo "| candidate | instructions/request | ÷ haproxy |"
        echo "|---|---:|---:|"
        for c in "${CANDIDATES[@]}"; do
            awk -v c="$c" -v ir="${IR[$c]}" -v h="${IR[haproxy]}" -v n="$REQUESTS" \
                'BEGIN { printf "| %s | %.0f | %.2f |\n", c, ir / n, ir / h }'
        done
        echo
    } | tee -a "$OUT"
fi

if [ "$PART" != instructions ]; then
    HZ=$(getconf CLK_TCK)
    declare -A RPS_SUM CPU_SUM
    load() { # PORT → prints "requests seconds"
        if [ "$H2" = 1 ]; then
            taskset -c 0 h2load -c 32 -m "$STREAMS" -D "$DURATION" "http://127.0.0.1:$1/x" 2>/dev/null |
                awk '/^finished in/ { gsub(/s,/, "", $3); t = $3 } /requests:.*succeeded/ { print $8, t }'
        else
            taskset -c 0 wrk -t1 -c32 -d"${DURATION}s" "http://127.0.0.1:$1/x" |
                awk '/requests in/ { r = $1; t = $4; sub(/s,?$/, "", t) } END { print r, t }'
        fi
    }
    for round in $(seq 1 "$ROUNDS"); do
        for c in "${CANDIDATES[@]}"; do
            # shellcheck disable=SC2046
            taskset -c 1 $(command_of "$c") >"$RUN/$c.load.log" 2>&1 &
            pid=$!
            PIDS+=($pid)
            ready "$c"
            load "${PORT[$c]}" >/dev/null # warm-up
            t0=$(cpu_ticks $pid)
            read -r n secs < <(load "${PORT[$c]}")
            t1=$(cpu_ticks $pid)
            kill -TERM $pid
            wait $pid 2>/dev/null || true
            [[ $n =~ ^[0-9]+$ && $n -gt 0 ]] || { echo "$c: no requests completed in round $round" >&2; exit 1; }
            rps=$(awk -v n="$n" -v s="$secs" 'BEGIN { printf "%.0f", n / s }')
            cpu=$(awk -v t="$((t1 - t0))" -v hz="$HZ" -v n="$n" 'BEGIN { printf "%.2f", t / hz * 1e6 / n }')
            echo "round $round: $c $rps req/s, $cpu µs CPU per request"
            RPS_SUM[$c]=$(awk -v a="${RPS_SUM[$c]:-0}" -v b="$rps" 'BEGIN { print a + b }')
            CPU_SUM[$c]=$(awk -v a="${CPU_SUM[$c]:-0}" -v b="$cpu" 'BEGIN { print a + b }')
        done
    done
    {
        echo "## Under load (mean of $ROUNDS interleaved rounds of ${DURATION} s, candidate pinned to CPU 1; h2load -m $STREAMS with H2=1)"
        echo
        echo "| candidate | req/s | ÷ haproxy | CPU µs/request | ÷ haproxy |"
        echo "|---|---:|---:|---:|---:|"
        for c in "${CANDIDATES[@]}"; do
            awk -v c="$c" -v r="${RPS_SUM[$c]}" -v hr="${RPS_SUM[haproxy]}" -v u="${CPU_SUM[$c]}" \
                -v hu="${CPU_SUM[haproxy]}" -v k="$ROUNDS" \
                'BEGIN { printf "| %s | %.0f | %.2f | %.2f | %.2f |\n", c, r / k, r / hr, u / k, u / hu }'
        done
        echo
    } | tee -a "$OUT"
fi
echo "written: $OUT"
