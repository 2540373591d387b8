#!/usr/bin/env bash
# The demo: sets up the machine, builds tandem and brings up a lab cluster of three nodes (plus a
# client and a witness host) on this one machine, then shows its status. The lab stays up for you
# to explore; `target/debug/tandem lab down --name demo` removes it.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build -p tandem
tandem=target/debug/tandem
"$tandem" lab down --name demo >/dev/null 2>&1 || true
"$tandem" lab up --name demo --nodes 3 --networks 2
"$tandem" lab status --name demo
echo
echo "Try:  $tandem lab exec --name demo n1 -- ping -c1 198.18.0.2"
echo "      $tandem lab cut --name demo n2     then   $tandem lab heal --name demo n2"
echo "      $tandem config check app-modules/generic-mirror/module.toml docs/examples/cluster.toml"
echo "Stop: $tandem lab down --name demo"
