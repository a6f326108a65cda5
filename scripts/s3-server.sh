#!/usr/bin/env bash
# A real S3 store on loopback for tests and benchmarks: a single-node Ceph cluster (one mon, one OSD on a sparse
# file, no mgr) with the RADOS Gateway in front, all of it (configuration, data, logs, pid files, sockets) under DIR.
#
#   scripts/s3-server.sh start DIR   starts it (a fresh bootstrap, or a restart of what DIR already holds), creates
#                                    the bucket and prints shell lines to eval: S3_ENDPOINT, S3_TLS_ENDPOINT,
#                                    S3_CA_FILE, S3_BUCKET, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION
#   scripts/s3-server.sh stop DIR    stops the three daemons (the data stays: start again to reuse it)
#   scripts/s3-server.sh env DIR     prints the lines again
#   S3_SERVER_OBJECT_LOCK_DAYS=N     (with start) the bucket is made with object lock, N days of governance retention
#
# Packages: ceph-mon ceph-osd radosgw ceph-common (scripts/install-deps.sh installs them), openssl, curl.
# The settings that matter and why are in docs/archive.md ("The store in tests").
set -euo pipefail

usage() { echo "usage: $0 start|stop|env DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
action=$1
mkdir -p "$2"
dir=$(cd "$2" && pwd)
conf=$dir/ceph.conf
bucket=${S3_SERVER_BUCKET:-walship-test}
access_key=${S3_SERVER_ACCESS_KEY:-WALSHIPTESTACCESSKEY}
secret_key=${S3_SERVER_SECRET_KEY:-walship-test-secret-key-0123456789abcdef}
region=us-east-1

die() { echo "s3-server: $*" >&2; exit 1; }

for tool in ceph-mon ceph-osd radosgw radosgw-admin monmaptool ceph openssl curl; do
    command -v "$tool" >/dev/null || die "$tool is missing; install the test dependencies: scripts/install-deps.sh"
done

# A TCP port nothing on this host listens on (read from /proc, no tool needed), picked at random so parallel
# stores rarely try the same one, below Linux's ephemeral range (32768 on) so that no socket bound to port 0
# (a test's PostgreSQL, a client) takes it between this check and the daemon's bind.
free_port() {
    local port hex
    for _ in $(seq 1 200); do
        port=$(( 20000 + RANDOM % 12000 ))
        hex=$(printf '%04X' "$port")
        if ! awk -v p=":$hex" '$4 == "0A" && substr($2, length($2) - 4) == p { found = 1 } END { exit !found }' \
            /proc/net/tcp /proc/net/tcp6 2>/dev/null; then
            echo "$port"
            return
        fi
    done
    die "no free TCP port found"
}

# Whether the process in a pid file is alive; a zombie (where PID 1 does not reap) counts as stopped.
alive() {
    local pid
    [ -f "$1" ] || return 1
    pid=$(cat "$1" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
    ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null
}

wait_for() { # SECONDS WHAT COMMAND...
    local deadline=$(( SECONDS + $1 )) what=$2
    shift 2
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || die "$what did not come up in time; logs: $dir/log/"
        sleep 0.1
    done
}

print_env() {
    [ -f "$dir/ports" ] || die "$dir holds no store (start it first)"
    # shellcheck disable=SC1091
    . "$dir/ports"
    echo "S3_ENDPOINT=http://127.0.0.1:$rgw_port"
    echo "S3_TLS_ENDPOINT=https://127.0.0.1:$rgw_tls_port"
    echo "S3_CA_FILE=$dir/tls/ca.crt"
    echo "S3_BUCKET=$bucket"
    echo "AWS_ACCESS_KEY_ID=$access_key"
    echo "AWS_SECRET_ACCESS_KEY=$secret_key"
    echo "AWS_REGION=$region"
}

write_conf() {
    cat >"$conf" <<EOF
[global]
fsid = $fsid
mon_host = v2:127.0.0.1:$mon_port
mon_initial_members = a
public_addr = 127.0.0.1
ms_bind_ipv6 = false
auth_cluster_required = none
auth_service_required = none
auth_client_required = none
# Without cephx the gateway would otherwise ask the mon for a secure session and hang until rgw_init_timeout.
ms_mon_client_mode = crc
osd_pool_default_size = 1
osd_pool_default_min_size = 1
mon_allow_pool_size_one = true
mon_warn_on_pool_no_redundancy = false
osd_crush_chooseleaf_type = 0
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
mon_max_pg_per_osd = 1000
run_dir = $dir/run
admin_socket = $dir/run/\$name.asok
pid_file = $dir/run/\$name.pid
log_file = $dir/log/\$name.log
keyring = $dir/keyring
mon_data = $dir/mon/\$id
osd_data = $dir/osd/\$id

[mon]
# Every map change otherwise waits up to 1 s.
paxos_propose_interval = 0.05

[osd]
osd_objectstore = bluestore
# bluestore creates osd/0/block itself; a block path inside the OSD directory would become a symlink loop.
bluestore_block_create = true
bluestore_block_size = 10737418240
# Otherwise each close of the block file waits up to 250 ms.
bdev_aio_poll_ms = 20
osd_memory_target = 1073741824

[client.rgw.a]
rgw_data = $dir/rgw
# Lifecycle threads make the gateway take 5-7 s to stop; walship sets no lifecycle rules.
rgw_enable_lc_threads = false
rgw_frontends = beast endpoint=127.0.0.1:$rgw_port ssl_endpoint=127.0.0.1:$rgw_tls_port ssl_certificate=$dir/tls/server.crt ssl_private_key=$dir/tls/server.key
EOF
}

make_certificate() {
    mkdir -p "$dir/tls"
    (
        cd "$dir/tls"
        openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=walship test S3 CA" \
            -keyout ca.key -out ca.crt 2>/dev/null
        openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout server.key -out server.csr 2>/dev/null
        printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' \
            >server.ext
        openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 -extfile server.ext \
            -out server.crt 2>/dev/null
        rm -f server.csr server.ext ca.srl
        chmod 600 ca.key server.key
    ) || die "could not make the gateway's TLS certificate with openssl"
}

bootstrap() {
    fsid=$(cat /proc/sys/kernel/random/uuid)
    mon_port=$(free_port)
    rgw_port=$(free_port)
    rgw_tls_port=$(free_port)
    while [ "$rgw_tls_port" = "$rgw_port" ]; do rgw_tls_port=$(free_port); done
    mkdir -p "$dir/run" "$dir/log" "$dir/mon/a" "$dir/osd/0" "$dir/rgw"
    : >"$dir/keyring"
    make_certificate
    write_conf
    printf 'mon_port=%s\nrgw_port=%s\nrgw_tls_port=%s\n' "$mon_port" "$rgw_port" "$rgw_tls_port" >"$dir/ports"
    monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$mon_port]" "$dir/monmap" >/dev/null
    ceph-mon -c "$conf" -i a --mkfs --monmap "$dir/monmap" >>"$dir/log/bootstrap.log" 2>&1 \
        || die "ceph-mon --mkfs failed; see $dir/log/"
    ceph-mon -c "$conf" -i a >>"$dir/log/bootstrap.log" 2>&1 || die "ceph-mon did not start; see $dir/log/"
    local uuid
    uuid=$(cat /proc/sys/kernel/random/uuid)
    local id
    id=$(timeout 30 ceph -c "$conf" osd new "$uuid" 2>>"$dir/log/bootstrap.log") \
        || die "the mon did not answer 'osd new'; see $dir/log/"
    [ "$id" = 0 ] || die "unexpected OSD id '$id'"
    ceph-osd -c "$conf" -i 0 --mkfs --osd-uuid "$uuid" >>"$dir/log/bootstrap.log" 2>&1 \
        || die "ceph-osd --mkfs failed; see $dir/log/"
    ceph-osd -c "$conf" -i 0 >>"$dir/log/bootstrap.log" 2>&1 || die "ceph-osd did not start; see $dir/log/"
    wait_for 60 "the OSD" osd_up
    # Creates the gateway's pools too.
    timeout 60 radosgw-admin -c "$conf" user create --uid=walship --display-name=walship \
        --access-key="$access_key" --secret-key="$secret_key" >>"$dir/log/bootstrap.log" 2>&1 \
        || die "radosgw-admin user create failed; see $dir/log/"
    touch "$dir/bootstrapped"
}

osd_up() { timeout 5 ceph -c "$conf" osd stat 2>/dev/null | grep -q '1 up'; }

gateway_answers() { [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$rgw_port/")" = 200 ]; }

# A SigV4-signed request with curl; curl does not sign x-amz-content-sha256 itself, which the gateway requires.
signed_curl() { # METHOD PATH [curl options]
    local method=$1 path=$2
    shift 2
    curl -s -o /dev/null -w '%{http_code}' -X "$method" --aws-sigv4 "aws:amz:$region:s3" --user "$access_key:$secret_key" \
        -H "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" "$@" \
        "http://127.0.0.1:$rgw_port$path"
}

# S3_SERVER_OBJECT_LOCK_DAYS=N: the bucket is made with object lock, every new object version kept N days in
# governance mode (a plain delete then leaves a delete marker; deleting the version itself is refused).
lock_bucket() { # DAYS
    local body code
    body="<ObjectLockConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><ObjectLockEnabled>Enabled</ObjectLockEnabled><Rule><DefaultRetention><Mode>GOVERNANCE</Mode><Days>$1</Days></DefaultRetention></Rule></ObjectLockConfiguration>"
    # The empty value after object-lock: curl signs a bare query name wrongly.
    code=$(curl -s -o /dev/null -w '%{http_code}' -X PUT --aws-sigv4 "aws:amz:$region:s3" \
        --user "$access_key:$secret_key" \
        -H "x-amz-content-sha256: $(printf '%s' "$body" | openssl dgst -sha256 -hex | sed 's/.* //')" \
        -H "Content-MD5: $(printf '%s' "$body" | openssl dgst -md5 -binary | base64)" --data-binary "$body" \
        "http://127.0.0.1:$rgw_port/$bucket?object-lock=")
    [ "$code" = 200 ] || die "setting object lock on bucket $bucket answered HTTP $code"
}

start() {
    if [ -f "$dir/bootstrapped" ]; then
        # shellcheck disable=SC1091
        . "$dir/ports"
        alive "$dir/run/mon.a.pid" || ceph-mon -c "$conf" -i a >>"$dir/log/start.log" 2>&1 \
            || die "ceph-mon did not start; see $dir/log/"
        alive "$dir/run/osd.0.pid" || ceph-osd -c "$conf" -i 0 >>"$dir/log/start.log" 2>&1 \
            || die "ceph-osd did not start; see $dir/log/"
        wait_for 60 "the OSD" osd_up
    else
        [ -z "$(ls -A "$dir" 2>/dev/null)" ] || die "$dir is not empty and holds no store; give an empty directory"
        bootstrap
    fi
    if ! alive "$dir/run/client.rgw.a.pid"; then
        radosgw -c "$conf" -n client.rgw.a >>"$dir/log/start.log" 2>&1 || die "radosgw did not start; see $dir/log/"
    fi
    wait_for 60 "the gateway on port $rgw_port" gateway_answers
    local code
    if [ -n "${S3_SERVER_OBJECT_LOCK_DAYS:-}" ]; then
        code=$(signed_curl PUT "/$bucket" -H "x-amz-bucket-object-lock-enabled: true")
    else
        code=$(signed_curl PUT "/$bucket")
    fi
    case $code in
    200 | 409) ;; # 409: BucketAlreadyOwnedByYou on a restart
    *) die "creating bucket $bucket answered HTTP $code" ;;
    esac
    [ -z "${S3_SERVER_OBJECT_LOCK_DAYS:-}" ] || lock_bucket "$S3_SERVER_OBJECT_LOCK_DAYS"
    print_env
}

# One daemon at a time, gateway first: killed together, the gateway and the OSD wait seconds for each other.
stop() {
    local name pid deadline
    for name in client.rgw.a osd.0 mon.a; do
        alive "$dir/run/$name.pid" || continue
        pid=$(cat "$dir/run/$name.pid")
        kill "$pid" 2>/dev/null || true
        deadline=$(( SECONDS + 20 ))
        while [ -d "/proc/$pid" ] && ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null; do
            if [ $SECONDS -ge $deadline ]; then
                kill -9 "$pid" 2>/dev/null || true
                break
            fi
            sleep 0.05
        done
    done
    rm -f "$dir"/run/*.pid
    # Daemons whose pid file went missing (a crash mid-start): found by the configuration file they run with.
    local stray
    stray=$(pgrep -f -- " -c $dir/ceph\.conf( |\$)" || true)
    [ -z "$stray" ] || kill -9 $stray 2>/dev/null || true
}

case $action in
start) start ;;
stop) [ -f "$conf" ] || die "$dir holds no store"; stop ;;
env) print_env ;;
*) usage ;;
esac
