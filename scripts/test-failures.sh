#!/usr/bin/env bash
# Repeats the failures of a test run at its end, where a CI log's tail shows them: each failed test or
# recorded issue with the message lines that follow it, and XCTest's error lines.
log="${1:-test-output.log}"
[ -f "$log" ] || exit 0
awk '
    /^✘ / || / error: / { print; follow = 25; next }
    follow > 0 && !/^(✔|◇|✘|􀟈|Test Case|Test Suite) / { print; follow--; next }
    { follow = 0 }
' "$log" | head -200 > "$log.failures"
if [ -s "$log.failures" ]; then
    echo
    echo "==== failures (repeated from $log) ===="
    cat "$log.failures"
fi
rm -f "$log.failures"
