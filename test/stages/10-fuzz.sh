#!/usr/bin/env bash
# Fuzzing gate: build every libFuzzer target with clang + ASan + UBSan and run
# each for FUZZ_SECONDS (default 20) from its seed corpus (test/fuzz/corpus/NAME).
# A crash, leak, timeout or sanitizer report fails the gate. For long runs see
# HACKING.md ("Quality gates"). FUZZ_BUILD overrides the build directory.
# Seeds: test/fuzz/make-corpus.py. ~3.5 min on 2 cores (build ~1 min).
set -uo pipefail
cd "$(dirname "$0")/../.."
SECS=${FUZZ_SECONDS:-20}
B=${FUZZ_BUILD:-build-fuzz}
if [ ! -f $B/build.ninja ]; then
        CC=clang meson setup $B -Dfuzz=true -Dtests=enabled -Db_sanitize=address,undefined -Db_lundef=false >$B.setup.log 2>&1 || { cat $B.setup.log; exit 1; }
fi
ninja -C $B >$B.build.log 2>&1 || { tail -40 $B.build.log; exit 1; }
rc=0
for t in $B/test/fuzz/fuzz-*; do
        [ -f "$t" ] && [ -x "$t" ] || continue
        name=$(basename "$t"); name=${name#fuzz-}
        work=$(mktemp -d)
        [ -d test/fuzz/corpus/$name ] && cp -r test/fuzz/corpus/$name/. "$work/"
        log=$(mktemp)
        # A crashing input is kept in $B/fuzz-artifacts/ (reproduce: run the
        # target with that file as its only argument).
        mkdir -p "$B/fuzz-artifacts"
        if "$t" -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
                -artifact_prefix="$B/fuzz-artifacts/$name-" "$work" >"$log" 2>&1; then
                execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
                echo "fuzz-$name: ok, ${execs:-?} executions in ${SECS}s"
        else
                echo "fuzz-$name: FAILED"
                # The report's head (what and where), then libFuzzer's summary.
                grep -m1 -A25 -E '^==[0-9]+==ERROR|runtime error:|^ERROR: libFuzzer|Assertion .* failed' "$log"
                grep -E '^SUMMARY|Test unit written|^artifact_prefix' "$log"
                rc=1
        fi
        rm -rf "$work" "$log"
done
exit $rc
