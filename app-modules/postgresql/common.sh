# Shared by start.sh, stop.sh and initdb.sh (sourced, not run): settings and helpers.

MODULE_DIR=$(cd "$(dirname "$0")" && pwd)

PGDATA=/var/lib/postgresql/15/tandem
PGBIN=/usr/lib/postgresql/15/bin
PGOSUSER=postgres
PGLOG=/var/log/postgresql/postgresql-15-tandem.log
PGSOCKDIR=/run/postgresql
START_TIMEOUT=270
STOP_TIMEOUT=120
if [ -r "$MODULE_DIR/postgresql.env" ]; then
    . "$MODULE_DIR/postgresql.env"
fi
export PGDATA

say() { printf '%s: %s\n' "$(basename "$0")" "$*"; }
die() { say "error: $*" >&2; exit 1; }

# Runs a command as the server's account (no login shell, no PAM session).
as_pg() { setpriv --reuid="$PGOSUSER" --regid="$PGOSUSER" --init-groups -- "$@"; }

# The directories the server needs outside the data directory, owned by its account.
prepare_runtime() {
    install -d -o "$PGOSUSER" -g "$PGOSUSER" -m 2775 "$PGSOCKDIR"
    install -d -m 0755 "$(dirname "$PGLOG")"
    [ -e "$PGLOG" ] || install -o "$PGOSUSER" -g "$PGOSUSER" -m 0640 /dev/null "$PGLOG"
    chown "$PGOSUSER" "$PGLOG"
}

# The pid of the postmaster serving $PGDATA on this machine, if there is one. postmaster.pid may
# be stale (a crash of this node, or a file from the peer): its pid counts only if it is a live
# postgres process of this machine (same mount namespace: in a lab every host sees every
# process) whose working directory is this data directory (so not a reused pid).
running_pid() {
    [ -r "$PGDATA/postmaster.pid" ] || return 1
    pid=$(head -n 1 "$PGDATA/postmaster.pid" 2>/dev/null) || return 1
    case "$pid" in '' | *[!0-9]*) return 1 ;; esac
    [ -d "/proc/$pid" ] || return 1
    [ "$(readlink "/proc/$pid/ns/mnt" 2>/dev/null)" = "$(readlink /proc/self/ns/mnt)" ] || return 1
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = postgres ] || return 1
    [ "$(readlink "/proc/$pid/cwd" 2>/dev/null)" = "$(cd "$PGDATA" && pwd -P)" ] || return 1
    echo "$pid"
}

# The end of the server log, for a hook's output when something went wrong.
log_tail() {
    [ -r "$PGLOG" ] && tail -n "${1:-15}" "$PGLOG" | sed 's/^/  log: /'
    return 0
}
