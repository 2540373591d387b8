#!/bin/sh
# Creates the PostgreSQL database cluster of the postgresql module in $PGDATA (postgresql.env),
# once, on the node that will be the first primary, before the module's first start (or while
# this node is primary: the new files are then replicated as they are written). The peer gets it
# from the first synchronisation; never run it there.
#
#   initdb.sh [--allow CIDR]... [--auth METHOD] [--password-file FILE]
#
#   --allow CIDR          clients from CIDR may connect over TCP (repeatable), e.g. 198.18.0.0/24
#   --auth METHOD         their pg_hba.conf method: scram-sha-256 (default), md5, trust, ...
#   --password-file FILE  the password of the superuser `postgres` (first line of FILE);
#                         required by the password methods
#
# The server listens on every address (the virtual IP included), puts its socket in $PGSOCKDIR,
# and keeps PostgreSQL's durable defaults (fsync, synchronous_commit, full_page_writes), on which
# the zero-loss failover relies; data checksums are on. Configuration files are in the data
# directory, so both nodes always have the same.
set -eu
. "$(dirname "$0")/common.sh"

usage() { sed -n '7,12p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
allow=""
auth=scram-sha-256
pwfile=""
while [ $# -gt 0 ]; do
    case "$1" in
        --allow) [ $# -ge 2 ] || usage; allow="$allow $2"; shift 2 ;;
        --auth) [ $# -ge 2 ] || usage; auth=$2; shift 2 ;;
        --password-file) [ $# -ge 2 ] || usage; pwfile=$2; shift 2 ;;
        -h | --help) usage ;;
        *) say "unknown argument: $1"; usage ;;
    esac
done

[ "$(id -u)" = 0 ] || die "run as root"
[ -x "$PGBIN/initdb" ] || die "$PGBIN/initdb not found: install postgresql-15 (apt-get install postgresql-15)"
id "$PGOSUSER" >/dev/null 2>&1 || die "no user $PGOSUSER"
[ ! -e "$PGDATA/PG_VERSION" ] || die "$PGDATA already holds a database cluster (version $(cat "$PGDATA/PG_VERSION"))"
mkdir -p "$PGDATA"
if [ -n "$(ls -A "$PGDATA" | grep -v '^lost+found$' || true)" ]; then
    die "$PGDATA is not empty"
fi
case "$auth" in
    scram-sha-256 | md5 | password)
        [ -n "$pwfile" ] || die "--auth $auth needs --password-file (the superuser's password)" ;;
esac

chown "$PGOSUSER:$PGOSUSER" "$PGDATA"
chmod 0700 "$PGDATA"

pwopt=""
tmp=""
if [ -n "$pwfile" ]; then
    # initdb reads it as $PGOSUSER.
    tmp=$(mktemp)
    trap 'rm -f "$tmp"' EXIT
    head -n 1 "$pwfile" > "$tmp"
    chown "$PGOSUSER" "$tmp"
    chmod 0600 "$tmp"
    pwopt="--pwfile=$tmp"
fi

say "creating the database cluster in $PGDATA"
# shellcheck disable=SC2086 # pwopt is empty or one word
as_pg "$PGBIN/initdb" -D "$PGDATA" -U postgres -E UTF8 --locale=C.UTF-8 --data-checksums \
    --auth-local=peer --auth-host="$auth" --no-instructions $pwopt

cat >> "$PGDATA/postgresql.conf" <<CONF

#------------------------------------------------------------------------------
# tandem: postgresql module (written by initdb.sh)
#------------------------------------------------------------------------------
# Clients come through the virtual IP, which moves between the nodes.
listen_addresses = '*'
port = 5432
unix_socket_directories = '$PGSOCKDIR'
# A commit returns once its WAL is fsync'd, and tandem makes an fsync durable on the secondary
# before it returns: these defaults are what makes a failover lose no committed transaction.
fsync = on
synchronous_commit = on
full_page_writes = on
wal_sync_method = fdatasync
# After a failover, crash recovery replays the WAL written since the last checkpoint.
checkpoint_timeout = 5min
max_wal_size = 1GB
# WAL segments as for a copy-on-write file system. A recycled segment is an old one renamed to a
# future name: the catch-up of a returning node compares files by name, so it would send it whole
# (16 MiB), and a full copy sends the old WAL kept for reuse. A zero-filled new segment is 16 MiB
# of zeros replicated to the peer, and sent whole by a catch-up; without it only the final byte is
# written (the space is allocated as the segment fills). Old segments are removed instead.
wal_recycle = off
wal_init_zero = off
# The server log goes to stderr, which pg_ctl sends to PGLOG (one per node).
logging_collector = off
log_line_prefix = '%m [%p] %q%u@%d '
CONF

if [ -n "$allow" ]; then
    {
        echo
        echo "# tandem postgresql module (initdb.sh): remote clients"
        for cidr in $allow; do
            printf 'host    all             all             %-23s %s\n' "$cidr" "$auth"
        done
    } >> "$PGDATA/pg_hba.conf"
fi
chown "$PGOSUSER:$PGOSUSER" "$PGDATA/postgresql.conf" "$PGDATA/pg_hba.conf"
as_pg sync -f "$PGDATA/postgresql.conf"

say "done. Start the module here first: tandem start -m postgresql && tandem prim -m postgresql"
[ -n "$allow" ] || say "note: no --allow given: only local connections (socket in $PGSOCKDIR) are accepted"
