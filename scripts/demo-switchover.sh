#!/usr/bin/env bash
# walship switchover demo: two sites on loopback, each with a PostgreSQL 15 server, walship receive and walship
# send. The hospital's primary ships synchronously to the DR site under a steady writer; walship switchover moves
# the primary to the DR site and back, each time with zero loss, no copy, and an evidence report.
set -euo pipefail

WALSHIP_BIN=${WALSHIP_BIN:-$(pwd)/.build/release/walship}
PG_BINDIR=${PG_BINDIR:-$(pg_config --bindir)}
DEMO=${DEMO_DIR:-/tmp/walship-demo-switchover}
# shellcheck source=scripts/demo-lib.sh
source "$(dirname "$0")/demo-lib.sh"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for d in hospital dr; do
        [ -f "$DEMO/$d/postmaster.pid" ] && as_postgres "$PG_BINDIR/pg_ctl" -D "$DEMO/$d" -m immediate stop >/dev/null 2>&1 || true
    done
    [ -n "${KEEP:-}" ] && { echo "KEEP=1: files left in $DEMO"; return; }
    rm -rf "$DEMO"
}
trap cleanup EXIT
started=$SECONDS

declare -A PG RECV STANDBY RSTATUS SSTATUS
for site in hospital dr; do
    PG[$site]=$(free_port); RECV[$site]=$(free_port); STANDBY[$site]=$(free_port)
    RSTATUS[$site]=$(free_port); SSTATUS[$site]=$(free_port)
done
peer() { [ "$1" = hospital ] && echo dr || echo hospital; }
psql_at() { psql -h 127.0.0.1 -p "${PG[$1]}" -U postgres -d hospital -AtX -v ON_ERROR_STOP=1 -c "$2"; }

step "1. The hospital's primary, and one certificate per site for both of its ends (walship certs init --site)"
rm -rf "$DEMO"; mkdir -p "$DEMO"
"$WALSHIP_BIN" certs init "$DEMO/certs" --site hospital=127.0.0.1 --site dr=127.0.0.1 | tail -2 | head -1
cp "$WALSHIP_BIN" "$DEMO/walship"; chmod 755 "$DEMO/walship"; WALSHIP=$DEMO/walship
[ "$(id -u)" -eq 0 ] && chown -R postgres:postgres "$DEMO"
tls() { echo --tls-cert "$DEMO/certs/$1.crt" --tls-key "$DEMO/certs/$1.key" --tls-ca "$DEMO/certs/ca.crt"; }
as_postgres "$PG_BINDIR/initdb" -D "$DEMO/hospital" -A trust -U postgres >/dev/null
cat >> "$DEMO/hospital/postgresql.conf" <<CONF
port = ${PG[hospital]}
listen_addresses = '127.0.0.1'
unix_socket_directories = '$DEMO'
wal_level = replica
synchronous_standby_names = 'hospital'
CONF
as_postgres "$PG_BINDIR/pg_ctl" -D "$DEMO/hospital" -l "$DEMO/hospital.log" -w start >/dev/null
psql -h 127.0.0.1 -p "${PG[hospital]}" -U postgres -qAtX -c "CREATE DATABASE hospital" >/dev/null &
CREATEDB=$!

run_as_postgres_bg() { # run_as_postgres_bg LOG COMMAND...: a daemon as the PostgreSQL OS user
    local log=$1; shift
    if [ "$(id -u)" -eq 0 ]; then setpriv --reuid=postgres --regid=postgres --init-groups -- "$@" >"$log" 2>&1 &
    else "$@" >"$log" 2>&1 & fi
    PIDS+=($!)
}
step "2. At each site: walship receive (its own spool, a standby endpoint) and walship send --standby-wait --sync"
for site in hospital dr; do
    mkdir -p "$DEMO/spool-$site"; [ "$(id -u)" -eq 0 ] && chown postgres:postgres "$DEMO/spool-$site"
    # shellcheck disable=SC2046
    run_as_postgres_bg "$DEMO/receive-$site.log" "$WALSHIP" receive --listen "127.0.0.1:${RECV[$site]}" \
        --spool "$DEMO/spool-$site" $(tls "$site") --standby-listen "127.0.0.1:${STANDBY[$site]}" --standby-trust \
        --status-listen "127.0.0.1:${RSTATUS[$site]}"
    wait_for 30 "the $site receiver" curl -sf "http://127.0.0.1:${RSTATUS[$site]}/status"
done
start_sender() { # start_sender SITE: ships this site's server to the other site, waiting while it is a standby
    # shellcheck disable=SC2046
    run_as_postgres_bg "$DEMO/send-$1.log" "$WALSHIP" send --source "host=127.0.0.1 port=${PG[$1]} user=postgres" \
        --to "127.0.0.1:${RECV[$(peer "$1")]}" --slot "walship_$1" --create-slot --sync --standby-wait \
        --application-name "$1" $(tls "$1") --status-listen "127.0.0.1:${SSTATUS[$1]}"
}
start_sender hospital
wait "$CREATEDB"
psql_at hospital "CREATE TABLE observations (id int PRIMARY KEY, site text, at timestamptz DEFAULT clock_timestamp())" >/dev/null
wait_for 60 "the hospital's commits to wait for the DR site" bash -c \
    "[ \"\$(psql -h 127.0.0.1 -p ${PG[hospital]} -U postgres -AtX -c \"SELECT sync_state FROM pg_stat_replication WHERE application_name='hospital'\")\" = sync ]"

step "3. The DR standby, built through the link (walship backup, walship restore), and the DR site's sender"
# shellcheck disable=SC2046
"$WALSHIP" backup --source "host=127.0.0.1 port=${PG[hospital]} user=postgres" --to "127.0.0.1:${RECV[dr]}" $(tls hospital) | tail -1
"$WALSHIP" restore --spool "$DEMO/spool-dr" --pgdata "$DEMO/dr" --standby --walship-path "$WALSHIP" \
    --primary-conninfo "host=127.0.0.1 port=${STANDBY[dr]} user=postgres application_name=dr_standby" | head -1
printf "port = %s\nunix_socket_directories = '%s'\n" "${PG[dr]}" "$DEMO" >> "$DEMO/dr/postgresql.conf"
as_postgres "$PG_BINDIR/pg_ctl" -D "$DEMO/dr" -l "$DEMO/dr.log" -w start >/dev/null
start_sender dr
wait_for 60 "the DR site's sender to wait for its server's promotion" bash -c \
    "curl -sf http://127.0.0.1:${SSTATUS[dr]}/status | grep -q 'waiting for promotion'"

step "4. A steady writer through a multi-host connection string: it follows the primary wherever it is"
CONNINFO="host=127.0.0.1,127.0.0.1 port=${PG[hospital]},${PG[dr]} user=postgres dbname=hospital target_session_attrs=read-write connect_timeout=2"
: > "$DEMO/acknowledged.txt"
(
    for i in $(seq 1 1000000); do
        site=$(psql "$CONNINFO" -qAtX -v ON_ERROR_STOP=1 -c "INSERT INTO observations (id, site) VALUES ($i, (SELECT CASE WHEN inet_server_port() = ${PG[hospital]} THEN 'hospital' ELSE 'dr' END)) RETURNING site" 2>/dev/null) \
            && echo "$i $site" >> "$DEMO/acknowledged.txt" || sleep 0.1
    done
) &
PIDS+=($!)
wait_for 30 "the first acknowledged writes" test -s "$DEMO/acknowledged.txt"

switchover() { # switchover FROM TO: the primary's site first, then the standby's, as each prints
    step "walship switchover: the primary moves from the $1 site to the $2 site"
    "$WALSHIP" switchover --pgdata "$DEMO/$1" --spool "$DEMO/spool-$1" --application-name "$1" --slot "walship_$1" \
        --sender-status "127.0.0.1:${SSTATUS[$1]}" --report "$DEMO/switchover-$1-to-$2-at-$1" \
        --primary-conninfo "host=127.0.0.1 port=${STANDBY[$1]} user=postgres application_name=${1}_standby" | grep -v '^report:'
    checkpoint=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['shutdownCheckpointLSN'])" "$DEMO/switchover-$1-to-$2-at-$1.json")
    "$WALSHIP" switchover --pgdata "$DEMO/$2" --spool "$DEMO/spool-$2" --application-name "$2" --slot "walship_$2" \
        --shutdown-checkpoint "$checkpoint" --report "$DEMO/switchover-$1-to-$2-at-$2" | grep -v '^report:'
    # As a DBA checks before the next switchover: the old primary replays the new one's WAL through its own site.
    local end; end=$(psql_at "$2" "SELECT pg_current_wal_lsn()")
    wait_for 60 "the $1 server to replay the new primary's WAL through the $1 receiver" bash -c \
        "[ \"\$(psql -h 127.0.0.1 -p ${PG[$1]} -U postgres -d hospital -AtX -c \"SELECT pg_last_wal_replay_lsn() >= '$end'\")\" = t ]"
    echo "the $1 server replays from the $2 site through walship, as a standby"
}
sleep 3
switchover hospital dr
wait_for 60 "writes at the DR site" grep -q " dr$" "$DEMO/acknowledged.txt"
sleep 3
switchover dr hospital
wait_for 60 "writes back at the hospital" bash -c "tail -1 '$DEMO/acknowledged.txt' | grep -q ' hospital$'"
sleep 2

step "5. Every acknowledged write is on the hospital's server, and the DR server replays to the same data"
kill "${PIDS[-1]}" 2>/dev/null || true
acked=$(cut -d' ' -f1 "$DEMO/acknowledged.txt" | paste -sd,)
missing=$(psql_at hospital "SELECT count(*) FROM unnest(ARRAY[$acked]) a(id) WHERE NOT EXISTS (SELECT 1 FROM observations o WHERE o.id = a.id)")
end=$(psql_at hospital "SELECT pg_current_wal_lsn()")
wait_for 60 "the DR server to replay the hospital's writes" bash -c \
    "[ \"\$(psql -h 127.0.0.1 -p ${PG[dr]} -U postgres -d hospital -AtX -c \"SELECT pg_last_wal_replay_lsn() >= '$end'\")\" = t ]"
echo "acknowledged writes: $(wc -l < "$DEMO/acknowledged.txt") ($(grep -c ' dr$' "$DEMO/acknowledged.txt") at the DR site); missing on the hospital's server: $missing"
echo "hospital: $(psql_at hospital "SELECT count(*), sum(id) FROM observations")   dr: $(psql_at dr "SELECT count(*), sum(id) FROM observations")"
[ "$missing" = 0 ] && [ "$(psql_at hospital "SELECT count(*) FROM observations")" = "$(psql_at dr "SELECT count(*) FROM observations")" ] \
    || { echo "the sites disagree, or an acknowledged write is missing" >&2; exit 1; }
for report in "$DEMO"/switchover-*-at-*.json; do
    python3 - "$report" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
outage = r.get("writeOutageSeconds")
print(f"{sys.argv[1].rsplit('/', 1)[1]:42} {r['outcome']:9} bytes copied {r['bytesCopied']}"
      + (f", write outage {outage:.2f} s, mode at the end {r.get('modeAtEnd')}" if outage is not None else ""))
PY
done
echo; echo "--- the DR site's report of the first switchover ($DEMO/switchover-hospital-to-dr-at-dr.md) ---"
sed -n '1,22p' "$DEMO/switchover-hospital-to-dr-at-dr.md"
echo; echo "demo complete in $((SECONDS - started)) s"
