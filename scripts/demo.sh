#!/usr/bin/env bash
# walship demo: a local primary ships WAL in synchronous mode to a receiver on loopback; we verify that
# the spool holds the primary's segments byte for byte. KEEP=1 leaves everything running.
set -euo pipefail

WALSHIP_BIN=${WALSHIP_BIN:-$(pwd)/.build/release/walship}
PG_BINDIR=${PG_BINDIR:-$(pg_config --bindir)}
DEMO=${DEMO_DIR:-/tmp/walship-demo}
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
as_postgres() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
    local deadline=$((SECONDS + $1)) what=$2; shift 2
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || { echo "timed out waiting for $what" >&2; exit 1; }
        sleep 0.2
    done
}

cleanup() {
    if [ -n "${KEEP:-}" ]; then
        echo; echo "KEEP=1: left running. Sender status: http://127.0.0.1:$SENDER_STATUS/status," \
            "receiver status: http://127.0.0.1:$RECEIVER_STATUS/status, primary: psql -h 127.0.0.1 -p $PGPORT -U postgres"
        return
    fi
    [ -n "${SENDER_PID:-}" ] && kill "$SENDER_PID" 2>/dev/null || true
    [ -n "${RECEIVER_PID:-}" ] && kill "$RECEIVER_PID" 2>/dev/null || true
    as_postgres "$PG_BINDIR/pg_ctl" -D "$DEMO/primary" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$DEMO"
}
trap cleanup EXIT

PGPORT=$(free_port); RECEIVER_PORT=$(free_port); RECEIVER_STATUS=$(free_port); SENDER_STATUS=$(free_port)
export PGHOST=127.0.0.1 PGPORT PGUSER=postgres PGDATABASE=postgres
psql_q() { psql -AtX -v ON_ERROR_STOP=1 -c "$1"; }

step "1. A local primary (PostgreSQL 15) on port $PGPORT, archiving to compare against later"
rm -rf "$DEMO"; mkdir -p "$DEMO/archive"
[ "$(id -u)" -eq 0 ] && chown -R postgres:postgres "$DEMO"
as_postgres "$PG_BINDIR/initdb" -D "$DEMO/primary" -A trust -U postgres >/dev/null
cat >> "$DEMO/primary/postgresql.conf" <<CONF
port = $PGPORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$DEMO'
wal_level = replica
archive_mode = on
archive_command = 'cp %p $DEMO/archive/%f'
synchronous_standby_names = 'walship_demo'
CONF
as_postgres "$PG_BINDIR/pg_ctl" -D "$DEMO/primary" -l "$DEMO/primary.log" -w start >/dev/null
echo "primary up: system identifier $(psql_q 'SELECT system_identifier FROM pg_control_system()')"

step "2. The receiver (DR site) on 127.0.0.1:$RECEIVER_PORT, spool $DEMO/spool"
"$WALSHIP_BIN" receive --listen "127.0.0.1:$RECEIVER_PORT" --spool "$DEMO/spool" --insecure \
    --status-listen "127.0.0.1:$RECEIVER_STATUS" >"$DEMO/receiver.log" 2>&1 &
RECEIVER_PID=$!
wait_for 30 "the receiver" curl -sf "http://127.0.0.1:$RECEIVER_STATUS/status"

step "3. The sender beside the primary, synchronous (commits wait for the DR site's fsync)"
"$WALSHIP_BIN" send --source "host=127.0.0.1 port=$PGPORT user=postgres" --to "127.0.0.1:$RECEIVER_PORT" \
    --slot walship_demo --create-slot --sync --application-name walship_demo --insecure \
    --status-listen "127.0.0.1:$SENDER_STATUS" >"$DEMO/sender.log" 2>&1 &
SENDER_PID=$!
wait_for 60 "sync_state = sync" bash -c "[ \"\$(psql -AtX -c \"SELECT sync_state FROM pg_stat_replication WHERE application_name='walship_demo'\")\" = sync ]"
psql -X -c "SELECT application_name, state, sync_state, sent_lsn, write_lsn, flush_lsn FROM pg_stat_replication"

step "4. A small medical-records workload; every commit returns only once it is on the DR site's disk"
psql_q "CREATE TABLE patients (id serial PRIMARY KEY, name text, admitted timestamptz DEFAULT now())" >/dev/null
start=$(date +%s.%N)
for i in $(seq 1 50); do psql_q "INSERT INTO patients (name) VALUES ('patient $i')" >/dev/null; done
echo "50 synchronous commits in $(python3 -c "print(round($(date +%s.%N) - $start, 2))") s"
"$PG_BINDIR/pgbench" -i -s 2 -q >/dev/null 2>&1
"$PG_BINDIR/pgbench" -T 5 -c 4 -j 2 2>/dev/null | grep -E "^tps|latency average"

step "5. Status as the sender and the receiver report it"
curl -s "http://127.0.0.1:$SENDER_STATUS/status" | grep -E '"(state|primaryLSN|sentLSN|receiverDurableLSN|walBytesSent|wireBytesSent|walStatus|retainedBytes)"'
curl -s "http://127.0.0.1:$RECEIVER_STATUS/status" | grep -E '"(durableLSN|bytesBehindPrimary|spoolFreeBytes)"'

step "6. Verify: every completed segment in the spool is byte-identical to the primary's"
last=$(psql_q "SELECT pg_walfile_name(pg_switch_wal())")
sysid=$(psql_q 'SELECT system_identifier FROM pg_control_system()')
wal="$DEMO/spool/$sysid/wal"
wait_for 60 "segment $last in the spool" test -f "$wal/$last.lz4"
wait_for 60 "segment $last in the archive" test -f "$DEMO/archive/$last"
checked=0
for f in "$wal"/*.lz4; do
    name=$(basename "$f" .lz4)
    lz4 -dc "$f" | cmp -s - "$DEMO/archive/$name" || { echo "MISMATCH: $name" >&2; exit 1; }
    checked=$((checked + 1))
done
mkdir -p "$DEMO/plain"; for f in "$wal"/*.lz4; do lz4 -dqf "$f" "$DEMO/plain/$(basename "$f" .lz4)"; done
"$PG_BINDIR/pg_waldump" -p "$DEMO/plain" -q "$(ls "$DEMO/plain" | head -1)" "$last" && echo "pg_waldump reads all of it"
echo "$checked segments verified: lz4 -d output is identical to the primary's pg_wal copies"
du -sh "$wal" | awk '{print "spool size: " $1}'; du -sh "$DEMO/archive" | awk '{print "primary WAL: " $1}'
echo; echo "demo complete"
