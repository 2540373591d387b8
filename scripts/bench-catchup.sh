#!/usr/bin/env bash
# Catch-up benchmark: tandem bringing a returning secondary up to date (2 GiB data set, 1 %
# changed while it was stopped) against rsync bringing the same stale copy up to date over the same
# lab link, and tandem's first full copy against `rsync -W`, in one run
# (src/cli/benches/catchup.rs, described in docs/benchmarks.md). Installs rsync if missing,
# builds, prints markdown tables and the goals. Run as root.
#
#   scripts/bench-catchup.sh [--write-doc]
#
#   --write-doc            also replace the generated block of docs/benchmarks.md with this run's figures
#   BENCH_RUNS=N           runs of each data set (default 3), interleaved
#   BENCH_SHAPES=image,files  the data sets: one 2 GiB file, and/or 2048 files of 1 MiB
#   BENCH_SIZE_MIB=2048    size of each data set
#   BENCH_DROP_CACHES=0    keep the page cache between steps (dropped before each timed step by default)
#   BENCH_KEEP_LOGS=1      keep the bench's working directory (daemon logs, rsync outputs)
#
# Exit code: the bench's (1 when something could not be measured or a copy differs; the output
# says which). A goal that is not met is reported, not an error.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'bench-catchup: %s\n' "$*" >&2; }
die() { printf 'bench-catchup: error: %s\n' "$*" >&2; exit 2; }

write_doc=0
for arg in "$@"; do
  case "$arg" in
    --write-doc) write_doc=1 ;;
    -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $arg (see --help)" ;;
  esac
done

[ "$(id -u)" = 0 ] || die "run as root (the bench builds labs: namespaces, mounts, cgroups)"
./scripts/setup.sh >&2
if ! command -v rsync >/dev/null 2>&1; then
  log "installing rsync"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends rsync >/dev/null
fi

target_dir="${CARGO_TARGET_DIR:-target}"
tandem_bin="$target_dir/release/tandem"

# The labs of this run are named "$BENCH_LAB_PREFIX-<n>"; the bench takes each down after its run,
# and this trap catches what an interrupted bench (Ctrl-C) left.
export BENCH_LAB_PREFIX="cb$(( $$ % 100000 ))"
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

# The version measured is the one built now (the tree may change while the bench runs).
version=$(git describe --always --dirty 2>/dev/null || echo unknown)
log "building (release) tandem $version"
cargo bench -p tandem --bench catchup --no-run >&2

table=$(mktemp)
trap 'rm -f "$table"; cleanup' EXIT
set +e
cargo bench -p tandem --bench catchup >"$table"
rc=$?
set -e
cat "$table"

if [ "$write_doc" = 1 ]; then
  if [ "$rc" != 0 ] || [ ! -s "$table" ]; then
    log "not writing docs/benchmarks.md: the bench failed (exit code $rc)"
    exit "$rc"
  fi
  doc=docs/benchmarks.md
  begin='<!-- bench-catchup:begin -->'
  end='<!-- bench-catchup:end -->'
  block=$(mktemp)
  {
    echo "$begin"
    printf 'Run of %s on %s CPU(s), kernel %s, %s, tandem %s, %s run(s) of each data set:\n\n' \
      "$(date -u '+%Y-%m-%d %H:%M UTC')" "$(nproc)" "$(uname -r)" "$(rsync --version | head -1 | awk '{print "rsync " $3}')" \
      "$version" "${BENCH_RUNS:-3}"
    cat "$table"
    echo "$end"
  } >"$block"
  if [ -f "$doc" ] && grep -qF "$begin" "$doc"; then
    awk -v b="$begin" -v e="$end" -v f="$block" '
      $0 == b { while ((getline l < f) > 0) print l; skip = 1; next }
      $0 == e { skip = 0; next }
      !skip { print }
    ' "$doc" >"$doc.tmp" && mv "$doc.tmp" "$doc"
  else
    { echo; echo "## Catch-up: tandem vs rsync"; echo; cat "$block"; } >>"$doc"
  fi
  rm -f "$block"
  log "figures written to $doc"
fi
exit "$rc"
