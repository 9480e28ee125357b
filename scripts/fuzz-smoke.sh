#!/usr/bin/env bash
# Fuzz smoke run (CI): builds every target in fuzz/ with cargo-fuzz on the stable toolchain
# (`--sanitizer none`: libFuzzer's coverage-guided engine; the sanitizers need nightly) and
# runs each for FUZZ_SECONDS (default 20) from its checked-in seeds in fuzz/corpus/<target>/.
# New inputs go to a temporary directory, so the checked-in corpus stays as it is; a crash
# leaves its input in fuzz/artifacts/<target>/ and fails the run. Longer runs: docs/fuzzing.md.
#   FUZZ_SECONDS   seconds per target (default 20)
#   FUZZ_TARGETS   space-separated targets (default: all)
#   WEFT_TOOLS_DIR where cargo-fuzz is installed once (default ~/.cache/weft-tools)
set -euo pipefail
cd "$(dirname "$0")/.."
root="${WEFT_TOOLS_DIR:-$HOME/.cache/weft-tools}"
version=0.13.2
fuzz="$root/bin/cargo-fuzz"
if ! [ -x "$fuzz" ] || ! grep -qs "^$version\$" "$root/cargo-fuzz.version"; then
  echo "== cargo install cargo-fuzz $version into $root"
  cargo install --quiet --locked --root "$root" --version "$version" cargo-fuzz
  echo "$version" > "$root/cargo-fuzz.version"
fi
seconds="${FUZZ_SECONDS:-20}"
cd fuzz
targets="${FUZZ_TARGETS:-$("$fuzz" list)}"
echo "== cargo fuzz build --sanitizer none"
"$fuzz" build --sanitizer none
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for t in $targets; do
  mkdir -p "$work/$t" "artifacts/$t"
  echo "== fuzz $t for ${seconds}s"
  "$fuzz" run --sanitizer none "$t" "$work/$t" "corpus/$t" -- \
    -max_total_time="$seconds" -print_final_stats=1 -artifact_prefix="artifacts/$t/" 2>"$work/$t.log" \
    || { tail -40 "$work/$t.log"; echo "fuzz target $t failed; the input is in fuzz/artifacts/$t/" >&2; exit 1; }
  grep -E "stat::number_of_executed_units|Done [0-9]+ runs" "$work/$t.log" | tail -1
done
