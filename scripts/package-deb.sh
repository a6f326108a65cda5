#!/usr/bin/env bash
# Builds walship's Debian package from a built binary and the repository's files; prints the package's path on
# the last line. Usage: scripts/package-deb.sh BINARY MANUAL_DIR OUT_DIR
#   BINARY      the walship executable to package (make package: the static release build)
#   MANUAL_DIR  the man pages swift-argument-parser's generator wrote (walship.1, walship.send.1, …)
#   OUT_DIR     where the .deb goes
# Needs only dpkg-deb and gzip. The package holds no build: installing it needs no Swift toolchain.
set -euo pipefail

binary=$1 manuals=$2 out=$3
root=$(cd "$(dirname "$0")/.." && pwd)
[ -x "$binary" ] || { echo "package-deb: $binary is not an executable; build it first (make release)" >&2; exit 1; }
ls "$manuals"/walship.1 >/dev/null 2>&1 || { echo "package-deb: no walship.1 in $manuals" >&2; exit 1; }

# "walship 0.1.0 (ship protocol 2, built …)": the package's version is the program's.
version=$("$binary" --version | awk '{ print $2 }')
[[ "$version" =~ ^[0-9][0-9A-Za-z.+~-]*$ ]] || { echo "package-deb: '$binary --version' gave no version" >&2; exit 1; }
arch=$(dpkg --print-architecture)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
tree=$stage/walship_${version}_${arch}

install -D -m 0755 "$binary" "$tree/usr/bin/walship"
# Debug information is half the release binary; hosts running walship do not need it.
if command -v strip >/dev/null; then
    strip --strip-unneeded "$tree/usr/bin/walship"
else
    echo "package-deb: strip (binutils) not found: the binary is packaged with its debug information" >&2
fi

# The units as contrib/systemd has them, with the packaged binary's path; installed disabled.
for unit in "$root"/contrib/systemd/*.service "$root"/contrib/systemd/*.timer; do
    install -D -m 0644 "$unit" "$tree/lib/systemd/system/$(basename "$unit")"
    sed -i 's#/usr/local/bin/walship#/usr/bin/walship#g' "$tree/lib/systemd/system/$(basename "$unit")"
done

# Examples only: the operator writes /etc/walship/walship.toml and the .env files, which the package never owns,
# so neither removing nor purging it touches them.
install -D -m 0644 "$root/contrib/walship.toml.example" "$tree/usr/share/doc/walship/examples/walship.toml.example"
install -D -m 0644 "$root/compose/alert-rules.yml" "$tree/usr/share/doc/walship/examples/alert-rules.yml"
install -D -m 0644 "$root/contrib/walship.toml.example" "$tree/etc/walship/walship.toml.example"
for example in "$root"/contrib/systemd/*.env.example; do
    install -D -m 0644 "$example" "$tree/etc/walship/$(basename "$example")"
done

install -d "$tree/usr/share/man/man1"
for page in "$manuals"/*.1; do
    gzip -9n < "$page" > "$tree/usr/share/man/man1/$(basename "$page").gz"
done

install -d "$tree/usr/share/bash-completion/completions" "$tree/usr/share/zsh/vendor-completions"
"$binary" --generate-completion-script bash > "$tree/usr/share/bash-completion/completions/walship"
"$binary" --generate-completion-script zsh > "$tree/usr/share/zsh/vendor-completions/_walship"

install -D -m 0644 "$root/README.md" "$tree/usr/share/doc/walship/README.md"
for doc in "$root"/docs/*.md; do install -m 0644 "$doc" "$tree/usr/share/doc/walship/"; done
install -m 0644 "$root/LICENSE" "$tree/usr/share/doc/walship/copyright"

install -d "$tree/DEBIAN"
# What the binary links (the release build carries the Swift runtime; ldd shows libstdc++ and libgcc_s from its
# C++ parts, libpq brings its own); lz4 for operators inspecting spool files by hand.
cat > "$tree/DEBIAN/control" <<EOF
Package: walship
Version: $version
Architecture: $arch
Maintainer: walship maintainers <walship@localhost>
Section: database
Priority: optional
Depends: libc6 (>= 2.36), libstdc++6, libgcc-s1, libpq5, liblz4-1, lz4
Recommends: postgresql-client
Description: ships PostgreSQL WAL offsite with RPO 0
 A sender beside the primary streams WAL through a replication slot, compresses it and ships it over
 mutual TLS to a receiver at the disaster-recovery site, which stores it durably and serves it to a stock
 PostgreSQL standby. In synchronous mode the primary's commit waits until the WAL is durable offsite.
 Includes lag monitoring, alerts, promotion with measured RPO and RTO, drills, switchover and rejoin.
EOF
(cd "$tree" && find etc -type f | sed 's#^#/#' | sort) > "$tree/DEBIAN/conffiles"

# Maintainer scripts: they work where systemd is not running (containers, chroots): every systemctl call is
# guarded. Nothing is enabled or started; the spool (/var/lib/walship) is created for the server's user and
# kept on remove and purge: it holds the DR copy of the primary's WAL.
cat > "$tree/DEBIAN/postinst" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
    if getent passwd postgres >/dev/null; then
        install -d -m 0750 -o postgres -g postgres /var/lib/walship
    else
        install -d -m 0750 /var/lib/walship
        echo "walship: no postgres user yet; chown /var/lib/walship to the PostgreSQL server's user (the units run as postgres)"
    fi
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload >/dev/null || true
    fi
    echo "walship: units installed disabled; see /usr/share/doc/walship/deployment.md, then e.g. systemctl enable --now walship-receive"
fi
exit 0
EOF
cat > "$tree/DEBIAN/prerm" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
    systemctl stop walship-send.service walship-receive.service walship-backup.timer walship-backup.service \
        >/dev/null 2>&1 || true
fi
exit 0
EOF
cat > "$tree/DEBIAN/postrm" <<'EOF'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null || true
fi
if [ "$1" = purge ]; then
    echo "walship: the spool /var/lib/walship and /etc/walship/walship.toml are kept; remove them yourself when no longer needed"
fi
exit 0
EOF
chmod 0755 "$tree/DEBIAN/postinst" "$tree/DEBIAN/prerm" "$tree/DEBIAN/postrm"

mkdir -p "$out"
package=$(cd "$out" && pwd)/walship_${version}_${arch}.deb
# WALSHIP_DEB_COMPRESSION: dpkg-deb's -Z (xz, the default, for the smallest package; gzip is faster).
compression=${WALSHIP_DEB_COMPRESSION:-xz}
level=(); [ "$compression" = gzip ] && level=(-z1)
dpkg-deb --root-owner-group -Z"$compression" "${level[@]}" --build "$tree" "$package" >/dev/null
echo "$package"
