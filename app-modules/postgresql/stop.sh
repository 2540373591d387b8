#!/bin/sh
# stop_prim hook of the postgresql module: this node stops being primary. Stop the server and
# return only once it is gone (the daemon then releases the virtual IP and the data directory).
# The daemon calls it twice: graceful (a fast shutdown: clients are disconnected, a checkpoint is
# written, replicated to the peer) and then with `force` (TANDEM_FORCE=1) to make sure: an
# immediate shutdown (no checkpoint: the next start recovers from the WAL), then SIGKILL.
set -eu
. "$(dirname "$0")/common.sh"

if ! pid=$(running_pid); then
    say "PostgreSQL is not running on $PGDATA"
    exit 0
fi

if [ "${TANDEM_FORCE:-0}" != 1 ]; then
    say "fast shutdown of PostgreSQL (pid $pid)"
    if as_pg "$PGBIN/pg_ctl" stop -D "$PGDATA" -m fast -w -t "$STOP_TIMEOUT" -s; then
        say "stopped"
        exit 0
    fi
    say "no fast shutdown within ${STOP_TIMEOUT}s: immediate shutdown"
else
    say "immediate shutdown of PostgreSQL (pid $pid)"
fi
if as_pg "$PGBIN/pg_ctl" stop -D "$PGDATA" -m immediate -w -t 30 -s; then
    say "stopped"
    exit 0
fi
# Last resort: the postmaster and every server process of this data directory.
pids=$(pgrep -s "$(ps -o sid= -p "$pid" | tr -d ' ')" 2>/dev/null || echo "$pid")
kill -KILL $pids 2>/dev/null || true
for _ in $(seq 1 50); do
    [ -d "/proc/$pid" ] || break
    sleep 0.1
done
[ ! -d "/proc/$pid" ] || die "PostgreSQL (pid $pid) survived SIGKILL"
rm -f "$PGDATA/postmaster.pid"
log_tail 10
say "killed"
