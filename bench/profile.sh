#!/usr/bin/env bash
# CPU profile of Weft's HTTP/1.1 proxy path under load (scenario A of run.sh): the upstream
# nginx and wrk on CPU 0, Weft (one worker, bench/configs/weft.yaml) on CPU 1, `perf record`
# (cpu-clock sampling, works without hardware counters) on the Weft process during the run.
#
#   bench/profile.sh [WEFT_BINARY]        # default: $CARGO_TARGET_DIR/release/weft (or target/)
#   H2=1 bench/profile.sh                 # HTTP/2 downstream (scenario C: h2load, h2c prior
#                                         # knowledge, CONNS connections x H2_STREAMS streams)
#
# Environment: DURATION (8 s of recording), CONNS (wrk connections, 32), H2 (1: h2load instead
# of wrk), H2_STREAMS (h2load -m, 10), TOP (25 symbols),
# OUT (bench/results/profile). Writes OUT/perf.data, OUT/top.txt (self time per symbol and per
# shared object) and OUT/wrk.txt (wrk's or h2load's output), and prints top.txt. Installs
# nothing: needs perf (apt-get install linux-perf), nginx, wrk (h2load with H2=1) and taskset.

set -euo pipefail

BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$BENCH")"
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
DURATION=${DURATION:-8}
CONNS=${CONNS:-32}
TOP=${TOP:-25}
OUT=${OUT:-$BENCH/results/profile}
WEFT=${1:-${CARGO_TARGET_DIR:-$ROOT/target}/release/weft}

H2=${H2:-0}
H2_STREAMS=${H2_STREAMS:-10}
LOADGEN=wrk
[ "$H2" = 1 ] && LOADGEN=h2load
for c in perf nginx $LOADGEN taskset curl; do
    command -v "$c" >/dev/null || {
        echo "profile: $c is missing" >&2
        exit 1
    }
done
[ -x "$WEFT" ] || {
    echo "profile: $WEFT is not an executable (build with cargo build --release -p weft)" >&2
    exit 1
}
for port in 18081 18100 15900; do
    if ss -Hltn "sport = :$port" 2>/dev/null | grep -q .; then
        echo "profile: port $port is busy (is bench/run.sh running?)" >&2
        exit 1
    fi
done

RUN="$(mktemp -d /tmp/weft-profile.XXXXXX)"
chmod 755 "$RUN"
mkdir -p "$OUT" "$RUN/upstream/tmp" "$RUN/upstream/data"
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$RUN"
}
trap cleanup EXIT

wait_200() {
    local i
    for i in $(seq 1 300); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$1/")" = 200 ] && return 0
        sleep 0.1
    done
    echo "profile: nothing answers 200 on :$1" >&2
    return 1
}

head -c 1048576 /dev/urandom >"$RUN/upstream/data/1m"
taskset -c 0 nginx -p "$RUN/upstream/" -e "$RUN/upstream/error.log" -c "$BENCH/configs/upstream-nginx.conf" \
    >"$RUN/upstream.log" 2>&1 &
PIDS+=($!)
wait_200 18081
taskset -c 1 "$WEFT" run -c "$BENCH/configs/weft.yaml" --log-level warn >"$RUN/weft.log" 2>&1 &
WPID=$!
PIDS+=("$WPID")
wait_200 18100

# The load, on CPU 0, for SECONDS: wrk (HTTP/1.1) or h2load (h2c); a warm-up run first.
load() {
    if [ "$H2" = 1 ]; then
        taskset -c 0 timeout $(($1 + 30)) h2load -t1 -c"$CONNS" -m"$H2_STREAMS" -D "$1" http://127.0.0.1:18100/
    else
        taskset -c 0 timeout $(($1 + 30)) wrk -t1 -c"$CONNS" -d"${1}s" http://127.0.0.1:18100/
    fi
}
load 2 >/dev/null
load $((DURATION + 2)) >"$OUT/wrk.txt" 2>&1 &
LOAD=$!
sleep 1
perf record -q -F 1999 -p "$WPID" -o "$OUT/perf.data" -- sleep "$DURATION" 2>"$OUT/perf-record.log"
wait "$LOAD" || true

{
    echo "# $(basename "$WEFT") $("$WEFT" --version 2>&1 | head -1), $LOADGEN -c$CONNS$([ "$H2" = 1 ] && echo " -m$H2_STREAMS"), ${DURATION}s of samples, $(date -u +%FT%TZ), load $(cut -d' ' -f1-3 /proc/loadavg)"
    grep -E '^Requests/sec|^finished in' "$OUT/wrk.txt" || true
    echo "samples: $(perf report -i "$OUT/perf.data" --stdio 2>/dev/null | awk '/^# Samples:/ { print $3; exit }')"
    echo
    echo "## Self time by shared object"
    perf report -i "$OUT/perf.data" --no-children --sort dso --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -8 || true
    echo
    echo "## Self time by symbol (top $TOP)"
    perf report -i "$OUT/perf.data" --no-children --sort dso,symbol --stdio 2>/dev/null |
        grep -E '^ +[0-9]' | head -"$TOP" | cut -c1-160 || true
    echo
    echo "## Self time grouped (share of all samples)"
    perf report -i "$OUT/perf.data" --no-children --sort dso,symbol --stdio 2>/dev/null | grep -E '^ +[0-9]' |
        awk '
        { pct = $1; sub(/%/, "", pct); kernel = ($0 ~ /\[k\]/); line = $0; sub(/^[^]]*\] /, "", line)
          g = "other user space"
          if (kernel) g = "kernel"
          else if (line ~ /hyper_util::client::legacy|hyper_util::common|futures_channel|want::|tokio::sync/) g = "hyper legacy client pool + channels (hyper_util, futures_channel, want, tokio::sync)"
          else if (line ~ /tokio::runtime|tokio::task/) g = "tokio scheduler (tokio::runtime, tokio::task)"
          else if (line ~ /malloc|free|realloc|calloc|_int_|unlink_chunk|je_|rjem|mi_/) g = "allocator (malloc/free)"
          else if (line ~ /memmove|memcpy|memset|memcmp/) g = "memmove/memcpy"
          else if (line ~ /hyper::/) g = "hyper (codec, dispatch)"
          else if (line ~ /weft_/) g = "weft crates"
          else if (line ~ /http::header|http::/) g = "http crate (HeaderMap)"
          sum[g] += pct }
        END { for (g in sum) printf "    %6.2f%%  %s\n", sum[g], g }' | sort -rn || true
} >"$OUT/top.txt"
cat "$OUT/top.txt"
