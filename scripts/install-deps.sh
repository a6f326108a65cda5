#!/usr/bin/env bash
# Installs the system packages walship builds and tests against (chromium: the dashboard test renders the
# page headless), only when some are missing.
# Safe to run repeatedly; needs root (or sudo) only when it has something to install.
set -euo pipefail

packages=(libpq-dev liblz4-dev lz4 postgresql postgresql-contrib pkg-config curl chromium python3-yaml)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "walship: installing ${missing[*]}"
as_root=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "walship: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
    as_root=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
# Debian starts a default cluster on install; walship's tests and demo run their own clusters.
if command -v pg_lsclusters >/dev/null && [ -z "${WALSHIP_KEEP_DEFAULT_CLUSTER:-}" ]; then
    pg_lsclusters -h 2>/dev/null | while read -r version name _; do
        "${as_root[@]}" pg_ctlcluster "$version" "$name" stop 2>/dev/null || true
    done
fi
