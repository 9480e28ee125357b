#!/bin/sh
# Prints the Secrets and ConfigMaps that hold key material, which the checked-in manifests
# cannot: a new CA (`weft ca init`), its token file, and in each meshed namespace the CA's root
# certificate and a bootstrap token. Pipe it to kubectl:
#
#   deploy/kubernetes/bootstrap.sh demo | kubectl apply -f -
#
# Arguments: the meshed namespaces (default: demo). Environment: WEFT (the weft binary,
# default `weft`), TRUST_DOMAIN (default cluster.local), CA_DIR (reuse an existing CA
# directory instead of creating one).
#
# A namespace's bootstrap token may ask for any identity in that namespace
# (spiffe://<trust domain>/ns/<namespace>/*): the CA does not check Kubernetes
# service-account tokens, so keep the token Secret readable only by the mesh's pods.
set -eu

WEFT=${WEFT:-weft}
TRUST_DOMAIN=${TRUST_DOMAIN:-cluster.local}
[ "$#" -gt 0 ] || set -- demo

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ -z "${CA_DIR:-}" ]; then
    CA_DIR=$work/ca
    "$WEFT" ca init --dir "$CA_DIR" --trust-domain "$TRUST_DOMAIN" >&2
fi

b64() { base64 <"$1" | tr -d '\n'; }
token() { head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n'; }

: >"$work/tokens"
for ns in "$@"; do
    t=$(token)
    printf '%s spiffe://%s/ns/%s/*\n' "$t" "$TRUST_DOMAIN" "$ns" >>"$work/tokens"
    printf '%s' "$t" >"$work/token-$ns"
done

cat <<YAML
apiVersion: v1
kind: Secret
metadata:
  name: weft-ca
  namespace: weft-system
type: Opaque
data:
  ca-cert.pem: $(b64 "$CA_DIR/ca-cert.pem")
  ca-key.pem: $(b64 "$CA_DIR/ca-key.pem")
  root-cert.pem: $(b64 "$CA_DIR/root-cert.pem")
  cert-chain.pem: $(b64 "$CA_DIR/cert-chain.pem")
---
apiVersion: v1
kind: Secret
metadata:
  name: weft-ca-tokens
  namespace: weft-system
type: Opaque
data:
  tokens: $(b64 "$work/tokens")
YAML
for ns in "$@"; do
    cat <<YAML
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: weft-ca-root
  namespace: $ns
data:
  root-cert.pem: |
$(sed 's/^/    /' "$CA_DIR/root-cert.pem")
---
apiVersion: v1
kind: Secret
metadata:
  name: weft-bootstrap-token
  namespace: $ns
type: Opaque
data:
  token: $(b64 "$work/token-$ns")
YAML
done
