#!/usr/bin/env bash
# Synchronous replication benchmark: fio on (a) a plain directory, (b) a bindfs passthrough of it
# and (c) tandem's replicated directory, in one lab and one run (src/cli/benches/replication.rs,
# described in docs/benchmarks.md). Installs fio and bindfs if missing, builds, prints a markdown
# table and the goals of issue 4. Run as root.
#
#   scripts/bench-replication.sh [--write-doc]
#
#   --write-doc            also replace the generated block of docs/benchmarks.md with this run's figures
#   BENCH_RUNS=N           runs of each job on each target (default 3)
#   BENCH_SEQ_SIZE=512m    size of the sequential 1 MiB job (fio size)
#   BENCH_RAND_SIZE=64m    file of the 4 KiB random-write job (fio size)
#   BENCH_RAND_RUNTIME=20  at most this many seconds per random-write job
#   BENCH_TARGETS=a,b,c,d,e  the targets run, in this order within a round (by letter, each once)
#   BENCH_JOBS=seq-1m,rand-4k-fsync  the jobs run (each once)
#   BENCH_KEEP_LOGS=1      keep the bench's working directory (configuration, daemon logs, fio JSON)
#
# Exit code: the bench's (1 when something could not be measured or the two copies differ; the
# output says which). A goal that is not met is reported, not an error.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'bench-replication: %s\n' "$*" >&2; }
die() { printf 'bench-replication: error: %s\n' "$*" >&2; exit 2; }

write_doc=0
for arg in "$@"; do
  case "$arg" in
    --write-doc) write_doc=1 ;;
    -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $arg (see --help)" ;;
  esac
done

[ "$(id -u)" = 0 ] || die "run as root (the bench builds a lab: namespaces, mounts, cgroups)"
./scripts/setup.sh >&2
missing=()
command -v fio >/dev/null 2>&1 || missing+=(fio)
command -v bindfs >/dev/null 2>&1 || missing+=(bindfs)
command -v fusermount3 >/dev/null 2>&1 || missing+=(fuse3)
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

target_dir="${CARGO_TARGET_DIR:-target}"
tandem_bin="$target_dir/release/tandem"

# The lab of this run is named "$BENCH_LAB_PREFIX-0"; the bench's guard takes it down, and this
# trap catches what an interrupted bench (Ctrl-C) left.
export BENCH_LAB_PREFIX="rb$(( $$ % 100000 ))"
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
cargo bench -p tandem --bench replication --no-run >&2

table=$(mktemp)
trap 'rm -f "$table"; cleanup' EXIT
set +e
cargo bench -p tandem --bench replication >"$table"
rc=$?
set -e
cat "$table"

if [ "$write_doc" = 1 ]; then
  if [ "$rc" != 0 ] || [ ! -s "$table" ]; then
    log "not writing docs/benchmarks.md: the bench failed (exit code $rc)"
    exit "$rc"
  fi
  doc=docs/benchmarks.md
  begin='<!-- bench-replication:begin -->'
  end='<!-- bench-replication:end -->'
  block=$(mktemp)
  {
    echo "$begin"
    printf 'Run of %s on %s CPU(s), kernel %s, %s, bindfs %s, tandem %s, %s run(s) of each job on each target:\n\n' \
      "$(date -u '+%Y-%m-%d %H:%M UTC')" "$(nproc)" "$(uname -r)" "$(fio --version 2>/dev/null | head -1)" \
      "$(bindfs --version 2>/dev/null | head -1 | awk '{print $2}')" \
      "$(git describe --always --dirty 2>/dev/null || echo unknown)" "${BENCH_RUNS:-3}"
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
    { echo; echo "## Synchronous replication: fio"; echo; cat "$block"; } >>"$doc"
  fi
  rm -f "$block"
  log "figures written to $doc"
fi
exit "$rc"
