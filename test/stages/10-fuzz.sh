#!/usr/bin/env bash
# Fuzzing gate: build every libFuzzer target with clang + ASan + UBSan and run
# each for FUZZ_SECONDS (default 20) from its seed corpus (test/fuzz/corpus/NAME).
# A crash, leak, timeout or sanitizer report fails the gate. For long runs see
# HACKING.md ("Fuzzing").
set -uo pipefail
cd "$(dirname "$0")/../.."
SECS=${FUZZ_SECONDS:-20}
B=build-fuzz
if [ ! -f $B/build.ninja ]; then
        CC=clang meson setup $B -Dfuzz=true -Dtests=enabled -Db_sanitize=address,undefined -Db_lundef=false >$B.setup.log 2>&1 || { cat $B.setup.log; exit 1; }
fi
ninja -C $B >$B.build.log 2>&1 || { tail -40 $B.build.log; exit 1; }
rc=0
for t in $B/test/fuzz/fuzz-*; do
        [ -x "$t" ] || continue
        name=$(basename "$t"); name=${name#fuzz-}
        work=$(mktemp -d)
        [ -d test/fuzz/corpus/$name ] && cp -r test/fuzz/corpus/$name/. "$work/"
        log=$(mktemp)
        if "$t" -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 "$work" >"$log" 2>&1; then
                execs=$(awk -F: '/stat::number_of_executed_units/{gsub(/ /,"",$2); print $2}' "$log")
                echo "fuzz-$name: ok, ${execs:-?} executions in ${SECS}s"
        else
                echo "fuzz-$name: FAILED"; tail -40 "$log"; rc=1
        fi
        rm -rf "$work" "$log"
done
exit $rc
