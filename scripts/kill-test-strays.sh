#!/usr/bin/env bash
# Stops anything an interrupted test run may have left: postmasters of test clusters, walship processes
# started from this checkout's debug build, and the archive tests' Ceph daemons. Normal runs clean up after themselves; this is the safety net.
pkill -9 -f 'postgres -D /tmp/walship-it-' 2>/dev/null || true
pkill -9 -f "$(pwd)/.build/debug/walship" 2>/dev/null || true
pkill -9 -f '/tmp/walship-it-bin-' 2>/dev/null || true
# The S3 stores of the archive's tests (scripts/s3-server.sh): ceph-mon, ceph-osd and radosgw with their ceph.conf
# under a test directory.
pkill -9 -f ' -c /tmp/walship-it-[^ ]*/ceph\.conf' 2>/dev/null || true
rm -rf /tmp/walship-it-* 2>/dev/null || true
exit 0
