#!/usr/bin/env bash
# VIP failover benchmark, tandem against keepalived in the same run (src/cli/benches/failover.rs,
# described in docs/benchmarks.md). Installs keepalived if missing, builds, runs the bench in
# fresh labs and prints a markdown table. Run as root.
#
#   scripts/bench-failover.sh [--write-doc]
#
#   --write-doc        also replace the generated block of docs/benchmarks.md with this run's figures
#   BENCH_RUNS=N       runs per configuration (default 5)
#   BENCH_CONFIGS=a,b  only the configurations whose name contains a or b (e.g. keepalived, tandem)
#   BENCH_KEEP_LOGS=1  keep the bench's working directory (configurations, daemon logs)
#
# Exit code: the bench's (1 when a configuration could not run or a run failed; the table says
# which and why).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'bench-failover: %s\n' "$*" >&2; }
die() { printf 'bench-failover: error: %s\n' "$*" >&2; exit 2; }

write_doc=0
for arg in "$@"; do
  case "$arg" in
    --write-doc) write_doc=1 ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $arg (see --help)" ;;
  esac
done

[ "$(id -u)" = 0 ] || die "run as root (the bench builds labs: namespaces, mounts, cgroups)"
./scripts/setup.sh >&2
if ! command -v keepalived >/dev/null 2>&1; then
  log "installing keepalived"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends keepalived >/dev/null
fi
# Debian's package may start a keepalived of the machine's own (with systemd); it is not used
# here: every instance the bench starts runs inside a lab node with its own config and pid files.

target_dir="${CARGO_TARGET_DIR:-target}"
tandem_bin="$target_dir/release/tandem"

# Labs of this run are named "$BENCH_LAB_PREFIX-<n>"; the bench's guards take them down, and this
# trap catches what an interrupted bench (Ctrl-C) left.
export BENCH_LAB_PREFIX="fb$(( $$ % 100000 ))"
cleanup() {
  [ -x "$tandem_bin" ] || return 0
  local labs
  labs=$("$tandem_bin" lab list --json 2>/dev/null \
    | grep -o "\"name\":\"${BENCH_LAB_PREFIX}-[0-9]*\"" | cut -d'"' -f4 || true)
  for lab in $labs; do
    log "removing leftover lab $lab"
    "$tandem_bin" lab down --name "$lab" >/dev/null 2>&1 || true
  done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log "building (release)"
cargo bench -p tandem --bench failover --no-run >&2

table=$(mktemp)
trap 'rm -f "$table"; cleanup' EXIT
set +e
cargo bench -p tandem --bench failover >"$table"
rc=$?
set -e
cat "$table"

if [ "$write_doc" = 1 ]; then
  doc=docs/benchmarks.md
  begin='<!-- bench-failover:begin -->'
  end='<!-- bench-failover:end -->'
  block=$(mktemp)
  {
    echo "$begin"
    printf 'Run of %s on %s CPU(s), kernel %s, %s, tandem %s, %s run(s) per configuration:\n\n' \
      "$(date -u '+%Y-%m-%d %H:%M UTC')" "$(nproc)" "$(uname -r)" \
      "$(keepalived --version 2>&1 | head -1 | awk '{print $1, $2}')" \
      "$(git describe --always --dirty 2>/dev/null || echo unknown)" "${BENCH_RUNS:-5}"
    cat "$table"
    echo "$end"
  } >"$block"
  if [ ! -f "$doc" ]; then
    {
      echo "# Benchmarks"
      echo
      printf 'Machine: %s CPU(s) (`nproc`), kernel %s (`uname -r`), measured %s.\n\n' \
        "$(nproc)" "$(uname -r)" "$(date -u +%Y-%m-%d)"
      echo "## VIP failover: tandem vs keepalived"
      echo
    } >"$doc"
  fi
  if grep -qF "$begin" "$doc"; then
    awk -v b="$begin" -v e="$end" -v f="$block" '
      $0 == b { while ((getline l < f) > 0) print l; skip = 1; next }
      $0 == e { skip = 0; next }
      !skip { print }
    ' "$doc" >"$doc.tmp" && mv "$doc.tmp" "$doc"
  else
    { echo; cat "$block"; } >>"$doc"
  fi
  rm -f "$block"
  log "figures written to $doc"
fi
exit "$rc"
