#!/bin/sh
# start_prim hook of the postgresql module: this node becomes primary. The daemon has mounted the
# replicated data directory and taken the virtual IP; start the server on the data directory and
# return once it accepts connections. After a failover this is a crash recovery: the server
# replays its WAL (every committed transaction is in it) before it accepts connections.
# Arguments from the daemon (hook, states, action, graceful|force) are not needed.
set -eu
. "$(dirname "$0")/common.sh"

[ -f "$PGDATA/PG_VERSION" ] || die "no database cluster in $PGDATA: run initdb.sh on the first primary"
prepare_runtime
# The server refuses a data directory that is not its account's and private. Both are set
# through the replicated directory, so the secondary's copy has them too.
chown "$PGOSUSER:$PGOSUSER" "$PGDATA"
chmod 0700 "$PGDATA"

if pid=$(running_pid); then
    say "already running (pid $pid) on $PGDATA"
    exit 0
fi
# Not running here, so a lock file is stale (a power loss of this node; postmaster.pid is not
# replicated, but an older copy may remain): its pid could belong to an unrelated process now.
rm -f "$PGDATA/postmaster.pid"

say "starting PostgreSQL on $PGDATA (log: $PGLOG)"
if ! as_pg "$PGBIN/pg_ctl" start -D "$PGDATA" -l "$PGLOG" -w -t "$START_TIMEOUT" -s; then
    log_tail 25
    die "the server did not start within ${START_TIMEOUT}s"
fi
say "PostgreSQL accepts connections (pid $(running_pid || echo '?'))"
