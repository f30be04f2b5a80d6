#!/usr/bin/env bash
# Leak gate: valgrind memcheck over
#   1. every unit test (meson test --suite unit --wrapper valgrind), and
#   2. the daemon in its integration tests (broker-api, provision): the tests
#      start tpmidd through TPMID_DAEMON_WRAPPER (test/lib/harness.py
#      daemon_argv()), so every daemon process of those tests runs under
#      memcheck with its own log file.
# Fails on any memcheck error or any "definitely lost" block, on a failing
# test, and when a daemon test produced no valgrind log at all (the wrapper
# was not applied, so nothing was checked). Builds its own plain (no
# sanitizer) debug build: VG_BUILD, default build-valgrind. ~6 min on 2 cores.
set -uo pipefail
cd "$(dirname "$0")/../.."
B=${VG_BUILD:-build-valgrind}
DAEMON_TESTS=${VG_DAEMON_TESTS:-broker-api provision}
command -v valgrind >/dev/null || { echo "valgrind not installed (.ci/packages.txt)"; exit 1; }
if [ ! -f "$B/build.ninja" ]; then
        meson setup "$B" -Dtests=enabled -Dbuildtype=debug >"$B.setup.log" 2>&1 || { cat "$B.setup.log"; exit 1; }
fi
ninja -C "$B" >"$B.build.log" 2>&1 || { tail -40 "$B.build.log"; exit 1; }

VG=(valgrind --leak-check=full --errors-for-leak-kinds=definite --show-leak-kinds=definite
    --error-exitcode=99 --num-callers=30)
logs=$(mktemp -d)
rc=0

echo "-- unit tests under memcheck"
# The wrapper exits 99 on an error or a definite leak; meson counts that as a failure.
if ! meson test -C "$B" --suite unit --num-processes 2 -t 10 --print-errorlogs \
        --wrapper "${VG[*]} -q --log-file=$logs/unit-%p.log" >"$logs/unit.out" 2>&1; then
        rc=1
fi
grep -E '^(Ok|Fail|Timeout|Skipped):' "$logs/unit.out"
[ "$rc" -eq 0 ] || { grep -E 'FAIL|TIMEOUT' "$logs/unit.out"; cat "$logs"/unit-*.log 2>/dev/null | head -80; }

for t in $DAEMON_TESTS; do
        [ -f "test/integration/$t.py" ] || { echo "-- $t: no such test, skipped"; continue; }
        echo "-- $t with tpmidd under memcheck"
        mkdir -p "$logs/$t"
        if ! TPMID_DAEMON_WRAPPER="${VG[*]} --log-file=$logs/$t/tpmidd-%p.log" \
                meson test -C "$B" "$t" -t 4 --print-errorlogs >"$logs/$t.out" 2>&1; then
                grep -E '^(Ok|Fail|Timeout|Skipped):' "$logs/$t.out"
                tail -60 "$logs/$t.out"
                rc=1
        fi
        n=$(ls "$logs/$t" | wc -l)
        if [ "$n" -eq 0 ]; then
                echo "$t: no tpmidd ran under valgrind (does the test start it via harness.daemon_argv()?)"
                rc=1
                continue
        fi
        bad=0
        for f in "$logs/$t"/*.log; do
                # A daemon killed on purpose (crash tests) writes no summary; the
                # error summary and leak lines are checked where they exist.
                if grep -qE 'ERROR SUMMARY: [1-9]|definitely lost: [1-9]' "$f"; then
                        bad=$((bad + 1))
                        echo "== $f"; cat "$f"
                fi
        done
        echo "$t: $n tpmidd runs under memcheck, $bad with errors or definite leaks"
        [ "$bad" -eq 0 ] || rc=1
done
rm -rf "$logs"
[ "$rc" -eq 0 ] && echo "valgrind clean"
exit $rc
