#!/usr/bin/env bash
# Sets up a fresh machine (scripts/setup.sh) and runs every test of the workspace: unit tests,
# the machines' scenario files and property tests, config fixtures, and the lab tests (real
# namespaces; they need root). This is the command README.md gives and .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
# A clean build of the workspace with its tests takes about 2 GB; say so before the linker fails.
free_mib=$(df -Pm . | awk 'NR==2 {print $4}')
echo "test: ${free_mib} MiB free on $(df -P . | awk 'NR==2 {print $6}')"
if [ "$free_mib" -lt 6144 ]; then
  echo "test: warning: under 6 GiB free; the build may run out of disk" >&2
fi
# The plugins (plugins/dist/*.wasm) that the plugin host's tests and the lab tests load.
./scripts/build-plugins.sh
# The plugin SDK's own unit tests run on the host (plugins/ builds for wasm32-wasip2 by default).
(cd plugins && cargo test --quiet -p tandem-plugin-sdk --target "$(rustc -vV | sed -n 's/^host: //p')")
cargo build --workspace --all-targets
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi
# Nothing may be left behind by the lab tests (their guards take labs down even on failure).
leftovers=$(ip netns list | grep '^tl-' | grep -vc '^tl-demo-' || true)
if [ "$leftovers" != 0 ]; then
  echo "test: lab namespaces left behind:" >&2
  ip netns list | grep '^tl-' | grep -v '^tl-demo-' >&2
  exit 1
fi
