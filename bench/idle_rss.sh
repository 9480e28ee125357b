#!/usr/bin/env bash
# Idle memory of Weft builds: each binary started alone on bench/configs/weft.yaml (one worker,
# access log off; no upstream needed), read 1 s after its admin endpoint answers: VmRSS, and
# split into RssAnon (private heap, stacks) and RssFile (file-backed pages: the executable's
# code and read-only data, shared libraries), plus the executable's own resident pages (from
# /proc/PID/smaps) and the thread count. A benchmark, not a test.
#
#   WEFT_BINS="jemalloc=/path/a glibc=/path/b" bench/idle_rss.sh
#   ROUNDS=3 (default) starts each binary that many times, interleaved; medians are printed.
#   CONFIG=path (default bench/configs/weft.yaml); EXTRA_YAML="runtime: {accept: reuseport}"
#   appends lines to it.
# Output: a markdown table on stdout (kB → MiB, medians over the rounds).
set -euo pipefail
BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$BENCH/lib.sh"
ROUNDS=${ROUNDS:-3}
CONFIG=${CONFIG:-$BENCH/configs/weft.yaml}
[ -n "${WEFT_BINS:-}" ] || { echo "idle_rss.sh: WEFT_BINS=\"NAME=BINARY ...\" is required" >&2; exit 2; }
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "idle_rss.sh: ROUNDS must be a positive integer" >&2; exit 2; }
RUN=$(mktemp -d /tmp/weft-idle-rss.XXXXXX)
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$RUN"
}
trap cleanup EXIT
cp "$CONFIG" "$RUN/weft.yaml"
[ -n "${EXTRA_YAML:-}" ] && printf '%s\n' "$EXTRA_YAML" >>"$RUN/weft.yaml"
ADMIN=$(awk '/^admin:/ { a = 1; next } a && /address:/ { print $2; exit }' "$RUN/weft.yaml")
declare -A BIN
NAMES=()
for pair in $WEFT_BINS; do
    name=${pair%%=*} bin=${pair#*=}
    [[ $name =~ ^[A-Za-z0-9_.-]+$ && -x $bin ]] || { echo "idle_rss.sh: '$pair' is not NAME=EXECUTABLE" >&2; exit 2; }
    NAMES+=("$name")
    BIN[$name]=$(readlink -f "$bin")
done
field() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; }
exe_kb() { # resident kB of the mappings of the executable file itself
    awk -v exe="$2" '/^[0-9a-f]+-[0-9a-f]+ / { cur = ($6 == exe) } cur && /^Rss:/ { s += $2 } END { print s + 0 }' "/proc/$1/smaps"
}
declare -A OUT
for r in $(seq 1 "$ROUNDS"); do
    for name in "${NAMES[@]}"; do
        "${BIN[$name]}" run -c "$RUN/weft.yaml" >"$RUN/$name.log" 2>&1 &
        pid=$!
        PIDS+=("$pid")
        wait_admin_ready "$ADMIN" || { echo "idle_rss.sh: $name did not become ready (see its log)" >&2; cat "$RUN/$name.log" >&2; exit 1; }
        sleep 1
        OUT[$name.$r]="$(field "$pid" VmRSS) $(field "$pid" RssAnon) $(field "$pid" RssFile) $(exe_kb "$pid" "${BIN[$name]}") $(field "$pid" Threads)"
        kill -TERM "$pid"
        wait "$pid" 2>/dev/null || true
    done
done
echo "| build | VmRSS MiB | RssAnon MiB | RssFile MiB | executable resident MiB | threads |"
echo "|---|---:|---:|---:|---:|---:|"
for name in "${NAMES[@]}"; do
    vals=()
    for r in $(seq 1 "$ROUNDS"); do vals+=("${OUT[$name.$r]}"); done
    printf '%s\n' "${vals[@]}" | python3 -c '
import sys, statistics
rows = [list(map(int, l.split())) for l in sys.stdin if l.strip()]
cols = list(zip(*rows))
m = [statistics.median(c) for c in cols]
print("| %s | %.1f | %.1f | %.1f | %.1f | %d |" % (sys.argv[1], m[0] / 1024, m[1] / 1024, m[2] / 1024, m[3] / 1024, m[4]))
' "$name"
done
