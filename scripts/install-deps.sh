#!/usr/bin/env bash
# Installs the system packages walship builds and tests against (chromium: the dashboard test renders the
# page headless), only when some are missing. With --build, only what building and running walship needs
# (make install): no PostgreSQL server, no test tools.
# Safe to run repeatedly; needs root (or sudo) only when it has something to install.
set -euo pipefail

if [ "${1:-}" = --build ]; then
    packages=(libpq-dev liblz4-dev lz4 pkg-config)
    lean_packages=()
else
    packages=(libpq-dev liblz4-dev lz4 postgresql postgresql-contrib pkg-config curl chromium python3-yaml openssl man-db)
    # The S3 store the archive's tests run against (scripts/s3-server.sh): a single-node Ceph RADOS Gateway; and a
    # real Prometheus with promtool for the monitoring tests. Without recommends: the daemons, their tools and
    # libraries, none of Ceph's dashboards or mgr modules, no node exporter. pgBackRest: the benchmark's archive
    # rows measure it beside walship on the same store.
    lean_packages=(ceph-mon ceph-osd radosgw ceph-common prometheus pgbackrest)
fi
missing=()
lean_missing=()
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
for p in "${packages[@]}"; do
    installed "$p" || missing+=("$p")
done
for p in "${lean_packages[@]}"; do
    installed "$p" || lean_missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && [ ${#lean_missing[@]} -eq 0 ] && exit 0

echo "walship: installing ${missing[*]} ${lean_missing[*]}"
as_root=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || {
        echo "walship: need root (or sudo) to install: ${missing[*]} ${lean_missing[*]}" >&2
        exit 1
    }
    as_root=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq
[ ${#missing[@]} -eq 0 ] || "${as_root[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
[ ${#lean_missing[@]} -eq 0 ] \
    || "${as_root[@]}" apt-get install -y -qq --no-install-recommends "${lean_missing[@]}" >/dev/null
# Debian starts a default cluster when it installs the server; walship's tests and demo run their own. Only
# a cluster this run's install started is stopped: a host's running clusters are never touched.
if [[ " ${missing[*]} " == *" postgresql "* ]] && command -v pg_lsclusters >/dev/null \
    && [ -z "${WALSHIP_KEEP_DEFAULT_CLUSTER:-}" ]; then
    pg_lsclusters -h 2>/dev/null | while read -r version name _; do
        "${as_root[@]}" pg_ctlcluster "$version" "$name" stop 2>/dev/null || true
    done
fi
# Debian's prometheus package enables and starts a server on :9090 where systemd runs; the tests start their
# own. Like the PostgreSQL cluster above, only one this run's install started is stopped.
if [[ " ${lean_missing[*]} " == *" prometheus "* ]] && [ -d /run/systemd/system ]; then
    "${as_root[@]}" systemctl disable --now prometheus prometheus-node-exporter >/dev/null 2>&1 || true
fi
