#!/usr/bin/env bash
# Installs what tandem's build, demo and tests need on a fresh Debian 12 machine, and checks the
# kernel features they use. Idempotent: it installs only what is missing. Run as root.
set -euo pipefail

log() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (the lab creates namespaces, mounts and cgroups)"

# Debian packages, by the command each provides (a name, or an absolute path for a program
# that is not on PATH).
declare -A want=(
  [ip]=iproute2          # namespaces, veth, bridges (the lab)
  [ping]=iputils-ping    # reachability checks in lab tests
  [unshare]=util-linux   # persistent mount namespaces of lab hosts
  [nsenter]=util-linux
  [mount]=mount
  [ps]=procps
  [cc]=gcc               # -sys crates
  [pkg-config]=pkg-config
  [python3]=python3      # the small TCP service and client of the daemon's lab tests
  [fusermount3]=fuse3    # FUSE mounts of replicated directories
  [getfattr]=attr        # xattrs in the replication tests
  [fio]=fio              # a mixed random-write load on a replicated directory (tests, benchmark)
  [setpriv]=util-linux   # the postgresql module's hooks run the server as user postgres
  # app-modules/postgresql and its lab test (src/cli/tests/postgresql.rs): the server, initdb,
  # pg_ctl and pgbench are in postgresql-15, psql in postgresql-client-15 (a dependency).
  [/usr/lib/postgresql/15/bin/pg_ctl]=postgresql-15
  [/usr/lib/postgresql/15/bin/pgbench]=postgresql-15
  [/usr/lib/postgresql/15/bin/psql]=postgresql-client-15
)
missing=()
for cmd in "${!want[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${want[$cmd]}")
done
if [ "${#missing[@]}" -gt 0 ]; then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

command -v cargo >/dev/null 2>&1 || die "cargo is missing: install the Rust toolchain (rustup) first"

# WASM plugins (plugins/) build for wasm32-wasip2.
if command -v rustup >/dev/null 2>&1; then
  rustup target list --installed | grep -qx wasm32-wasip2 || { log "installing the wasm32-wasip2 target"; rustup target add wasm32-wasip2 >/dev/null; }
else
  log "warning: no rustup: the plugins need the wasm32-wasip2 standard library installed by hand"
fi

# Kernel features the lab relies on; fail early with a clear message rather than deep in a test.
probe="tandem-setup-probe-$$"
ip netns add "$probe" 2>/dev/null || die "cannot create a network namespace (ip netns add)"
ip netns del "$probe"
grep -q ' cgroup2 ' /proc/self/mountinfo || grep -qw cgroup2 /proc/filesystems \
  || die "no cgroup v2 in this kernel: lab kill needs cgroup.kill"
[ -c /dev/fuse ] || modprobe fuse 2>/dev/null || true
[ -c /dev/fuse ] || die "no /dev/fuse: replicated directories need FUSE"
modprobe veth 2>/dev/null || true
modprobe bridge 2>/dev/null || true
log "ok: packages present, network namespaces and cgroup v2 available"
