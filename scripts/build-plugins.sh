#!/usr/bin/env bash
# Builds the plugins workspace (plugins/: the SDK, the shipped plugins and the hostile plugins of
# the sandbox tests) for wasm32-wasip2 and puts every plugin in plugins/dist/NAME.wasm, where the
# tests, the benchmark and the docs expect them. Nothing built is committed.
# Honours CARGO_TARGET_DIR (default: plugins/target).
set -euo pipefail
cd "$(dirname "$0")/../plugins"
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
  echo "build-plugins: the wasm32-wasip2 target is missing: run scripts/setup.sh (or rustup target add wasm32-wasip2)" >&2
  exit 1
fi
cargo build --release --target wasm32-wasip2 --workspace --quiet
target="${CARGO_TARGET_DIR:-$PWD/target}"
out="$target/wasm32-wasip2/release"
mkdir -p dist
# Only this workspace's plugins (cdylib crates), not whatever else the target directory holds.
names=$(cargo metadata --no-deps --format-version 1 | python3 -c '
import json, sys
for p in json.load(sys.stdin)["packages"]:
    if any("cdylib" in t["crate_types"] for t in p["targets"]):
        print(p["name"])
')
n=0
for name in $names; do
  wasm="$out/${name//-/_}.wasm"
  [ -f "$wasm" ] || { echo "build-plugins: $wasm was not built" >&2; exit 1; }
  cp "$wasm" "dist/$name.wasm.tmp"
  mv "dist/$name.wasm.tmp" "dist/$name.wasm"
  n=$((n + 1))
done
echo "build-plugins: $n plugins in plugins/dist/: $(echo $names)"
