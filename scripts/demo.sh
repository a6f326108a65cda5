#!/usr/bin/env bash
# walship demo: a hospital's primary with a steady writer ships WAL synchronously to a DR site; a stock
# standby replays it there. Then the primary is killed (-9) and the DR replica promoted, with RPO and RTO
# measured. KEEP=1 leaves everything running and prints the dashboard's address.
set -euo pipefail

WALSHIP_BIN=${WALSHIP_BIN:-$(pwd)/.build/release/walship}
PG_BINDIR=${PG_BINDIR:-$(pg_config --bindir)}
DEMO=${DEMO_DIR:-/tmp/walship-demo}
# shellcheck source=scripts/demo-lib.sh
source "$(dirname "$0")/demo-lib.sh"

cleanup() {
    [ -n "${WRITER_PID:-}" ] && kill "$WRITER_PID" 2>/dev/null || true
    if [ -n "${KEEP:-}" ]; then
        echo; echo "KEEP=1: left running."
        echo "  dashboard (receiver): http://127.0.0.1:$RECEIVER_STATUS/    status: $WALSHIP_BIN status --url http://127.0.0.1:$RECEIVER_STATUS"
        echo "  promoted DR replica:  psql -h 127.0.0.1 -p $DR_PORT -U postgres hospital"
        echo "  stop: kill $RECEIVER_PID ${SENDER_PID:-}; pg_ctl -D $DEMO/dr stop (as postgres); rm -rf $DEMO"
        return
    fi
    [ -n "${SENDER_PID:-}" ] && kill "$SENDER_PID" 2>/dev/null || true
    [ -n "${RECEIVER_PID:-}" ] && kill "$RECEIVER_PID" 2>/dev/null || true
    for d in primary dr; do
        [ -f "$DEMO/$d/postmaster.pid" ] && as_postgres "$PG_BINDIR/pg_ctl" -D "$DEMO/$d" -m immediate stop >/dev/null 2>&1 || true
    done
    rm -rf "$DEMO"
}
trap cleanup EXIT

PGPORT=$(free_port); DR_PORT=$(free_port); RECEIVER_PORT=$(free_port); STANDBY_PORT=$(free_port)
RECEIVER_STATUS=$(free_port); SENDER_STATUS=$(free_port)
export PGHOST=127.0.0.1 PGPORT PGUSER=postgres PGDATABASE=hospital
psql_q() { psql -AtX -v ON_ERROR_STOP=1 -c "$1"; }
started=$SECONDS

step "1. The hospital's primary (PostgreSQL 15) on port $PGPORT, with a small medical-records schema"
rm -rf "$DEMO"; mkdir -p "$DEMO/spool"
[ "$(id -u)" -eq 0 ] && chown -R postgres:postgres "$DEMO"
as_postgres "$PG_BINDIR/initdb" -D "$DEMO/primary" -A trust -U postgres >/dev/null
cat >> "$DEMO/primary/postgresql.conf" <<CONF
port = $PGPORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$DEMO'
wal_level = replica
CONF
as_postgres "$PG_BINDIR/pg_ctl" -D "$DEMO/primary" -l "$DEMO/primary.log" -w start >/dev/null
PGDATABASE=postgres psql_q "CREATE DATABASE hospital" >/dev/null
psql -qX -v ON_ERROR_STOP=1 <<'SQL'
CREATE TABLE patients (id serial PRIMARY KEY, mrn text UNIQUE NOT NULL, name text NOT NULL, born date);
CREATE TABLE encounters (id serial PRIMARY KEY, patient_id int REFERENCES patients, ward text, admitted timestamptz DEFAULT now());
CREATE TABLE observations (id bigserial PRIMARY KEY, encounter_id int REFERENCES encounters, code text, value numeric,
                           recorded timestamptz DEFAULT clock_timestamp());
INSERT INTO patients (mrn, name, born)
  SELECT 'MRN' || lpad(g::text, 6, '0'), 'Patient ' || g, date '1940-01-01' + (g * 37 % 30000) FROM generate_series(1, 2000) g;
INSERT INTO encounters (patient_id, ward) SELECT 1 + g % 2000, (ARRAY['ICU','ER','Cardiology','Maternity'])[1 + g % 4] FROM generate_series(1, 500) g;
SQL
echo "primary up, 2000 patients"

step "2. Certificates for the link (mutual TLS): walship certs init"
"$WALSHIP_BIN" certs init "$DEMO/certs" --receiver-name 127.0.0.1 --sender-name hospital-primary | tail -1
[ "$(id -u)" -eq 0 ] && chown -R postgres:postgres "$DEMO/certs"
tls() { echo --tls-cert "$DEMO/certs/$1.crt" --tls-key "$DEMO/certs/$1.key" --tls-ca "$DEMO/certs/ca.crt"; }
SYSID=$(psql_q 'SELECT system_identifier FROM pg_control_system()')

step "3. The DR site: walship receive on 127.0.0.1:$RECEIVER_PORT, serving standbys on 127.0.0.1:$STANDBY_PORT"
# Runs as the PostgreSQL OS user, as on a real DR host: the standby's restore_command reads the spool.
# shellcheck disable=SC2046
receiver_cmd=("$WALSHIP_BIN" receive --listen "127.0.0.1:$RECEIVER_PORT" --spool "$DEMO/spool" $(tls receiver)
    --allow-source "hospital-primary=$SYSID"
    --standby-listen "127.0.0.1:$STANDBY_PORT" --standby-trust --status-listen "127.0.0.1:$RECEIVER_STATUS"
    --alert-lag-seconds 30 --alert-disconnect-seconds 10 --alert-command "cat >> $DEMO/alerts.jsonl; echo >> $DEMO/alerts.jsonl")
if [ "$(id -u)" -eq 0 ]; then
    cp "$WALSHIP_BIN" "$DEMO/walship"; chmod 755 "$DEMO/walship"; receiver_cmd[0]="$DEMO/walship"
    setpriv --reuid=postgres --regid=postgres --init-groups -- "${receiver_cmd[@]}" >"$DEMO/receiver.log" 2>&1 &
else
    "${receiver_cmd[@]}" >"$DEMO/receiver.log" 2>&1 &
fi
RECEIVER_PID=$!
WALSHIP=${receiver_cmd[0]}
wait_for 30 "the receiver" curl -sf "http://127.0.0.1:$RECEIVER_STATUS/status"

step "4. The sender beside the primary, synchronous: a commit returns once its WAL is fsynced at the DR site"
# shellcheck disable=SC2046
"$WALSHIP" send --source "host=127.0.0.1 port=$PGPORT user=postgres" --to "127.0.0.1:$RECEIVER_PORT" \
    --slot walship_demo --create-slot --sync --application-name walship_demo $(tls sender) \
    --status-listen "127.0.0.1:$SENDER_STATUS" >"$DEMO/sender.log" 2>&1 &
SENDER_PID=$!
psql_q "ALTER SYSTEM SET synchronous_standby_names = 'walship_demo'" >/dev/null; psql_q "SELECT pg_reload_conf()" >/dev/null
wait_for 60 "sync_state = sync" bash -c "[ \"\$(psql -AtX -c \"SELECT sync_state FROM pg_stat_replication WHERE application_name='walship_demo'\")\" = sync ]"
psql -X -c "SELECT application_name, state, sync_state, flush_lsn FROM pg_stat_replication"

step "5. A steady writer: every observation it records as acknowledged has returned from COMMIT"
: > "$DEMO/acknowledged.txt"
(
    for i in $(seq 1 1000000); do
        id=$(psql -qAtX -v ON_ERROR_STOP=1 -c "INSERT INTO observations (encounter_id, code, value) VALUES (1 + $i % 500, 'HR', 60 + $i % 40) RETURNING id" 2>/dev/null) \
            && echo "$id" >> "$DEMO/acknowledged.txt" || sleep 0.1
    done
) &
WRITER_PID=$!
wait_for 30 "the first acknowledged observations" test -s "$DEMO/acknowledged.txt"

step "6. A DR standby built through the link: a base backup shipped to the receiver, restored as a stock standby"
# shellcheck disable=SC2046
"$WALSHIP" backup --source "host=127.0.0.1 port=$PGPORT user=postgres" --to "127.0.0.1:$RECEIVER_PORT" $(tls sender) | tail -1
"$WALSHIP" restore --spool "$DEMO/spool" --pgdata "$DEMO/dr" --standby --walship-path "$WALSHIP" \
    --primary-conninfo "host=127.0.0.1 port=$STANDBY_PORT user=postgres application_name=dr_replica" | head -1
cat >> "$DEMO/dr/postgresql.conf" <<CONF
port = $DR_PORT
unix_socket_directories = '$DEMO'
archive_mode = off
CONF
as_postgres "$PG_BINDIR/pg_ctl" -D "$DEMO/dr" -l "$DEMO/dr.log" -w start >/dev/null
wait_for 60 "the DR standby to replay" bash -c "[ -n \"\$(psql -p $DR_PORT -AtX -c 'SELECT pg_last_wal_replay_lsn()')\" ]"
echo "DR standby up on port $DR_PORT, replaying from walship"

step "7. The lag chain, live (walship status --watch), while the writer keeps committing"
timeout 6 "$WALSHIP" status --url "http://127.0.0.1:$RECEIVER_STATUS" --watch --interval 1.5 || true
echo "dashboard: http://127.0.0.1:$RECEIVER_STATUS/   metrics: http://127.0.0.1:$RECEIVER_STATUS/metrics"

step "8. Disaster: the primary is killed (kill -9) in the middle of the writer's stream"
kill -9 "$(head -1 "$DEMO/primary/postmaster.pid")"
sleep 0.5
kill "$WRITER_PID" 2>/dev/null || true; wait "$WRITER_PID" 2>/dev/null || true; WRITER_PID=
last_acked=$(tail -1 "$DEMO/acknowledged.txt")
echo "$(wc -l < "$DEMO/acknowledged.txt") observations were acknowledged to the writer; the last one is id $last_acked"
# The sender keeps running: it finds the primary gone (2 s of refused reconnects) and tells the receiver, and
# only then is promotion safe. walship status shows the verdict.
wait_for 30 "walship status to say the primary is lost" \
    sh -c "'$WALSHIP' status --url 'http://127.0.0.1:$RECEIVER_STATUS' | grep 'promotion ready:'"
"$WALSHIP" status --url "http://127.0.0.1:$RECEIVER_STATUS" | grep 'promotion ' || true

step "9. walship promote: replay everything the DR site holds, fence the old primary, promote, measure"
"$WALSHIP" promote --pgdata "$DEMO/dr" --spool "$DEMO/spool" --report "$DEMO/promotion"
kill "$SENDER_PID" 2>/dev/null || true; SENDER_PID=
echo
echo "--- the evidence report ($DEMO/promotion.md) ---"
cat "$DEMO/promotion.md"

step "10. The last acknowledged observation is on the promoted DR replica"
found=$(psql -p "$DR_PORT" -AtX -c "SELECT count(*) FROM observations WHERE id = $last_acked")
missing=$(psql -p "$DR_PORT" -AtX -c "SELECT count(*) FROM unnest(ARRAY[$(paste -sd, "$DEMO/acknowledged.txt")]::bigint[]) a(id) WHERE NOT EXISTS (SELECT 1 FROM observations o WHERE o.id = a.id)")
echo "observation $last_acked present: $([ "$found" = 1 ] && echo yes || echo NO); acknowledged observations missing: $missing"
[ "$found" = 1 ] && [ "$missing" = 0 ] || { echo "an acknowledged commit is missing" >&2; exit 1; }
psql -p "$DR_PORT" -qAtX -c "INSERT INTO encounters (patient_id, ward) VALUES (1, 'ER') RETURNING 'the DR replica accepts writes: encounter ' || id"
echo; echo "demo complete in $((SECONDS - started)) s"
