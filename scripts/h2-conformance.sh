#!/usr/bin/env bash
# Installs httpwg-cli (the HTTP/2 conformance suite, h2spec's successor) once into a cache
# directory, for tests/e2e/h2_conformance.rs. Prints the binary's path on stdout.
#   WEFT_TOOLS_DIR  install root (default ~/.cache/weft-tools)
set -euo pipefail
root="${WEFT_TOOLS_DIR:-$HOME/.cache/weft-tools}"
version=0.2.5
bin="$root/bin/httpwg"
if ! [ -x "$bin" ] || ! grep -qs "^$version\$" "$root/httpwg.version"; then
  echo "== cargo install httpwg-cli $version into $root" >&2
  cargo install --quiet --locked --root "$root" --version "$version" httpwg-cli >&2
  echo "$version" > "$root/httpwg.version"
fi
echo "$bin"
