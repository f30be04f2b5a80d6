#!/usr/bin/env bash
# The README's test command. Installs missing Debian packages, then:
#   1. builds with -Werror and runs every meson suite (unit, integration, and
#      integration-device: the daemon on libtss2-tcti-device via test/devtpm);
#   2. the same under ASan + UBSan (quality gate), without integration-device;
#   3. the extra gates in test/stages/*.sh (fuzzing, static analysis, valgrind).
# Ends with one line "N passed, N failed": meson tests count one each, every
# gate script counts one.
set -uo pipefail
cd "$(dirname "$0")/.."
passed=0; failed=0
t0=$(date +%s)
stage() { echo; echo "== $* (t+$(( $(date +%s) - t0 ))s)"; }
finish() { echo; echo "$passed passed, $failed failed"; [ "$failed" -eq 0 ]; exit $?; }

stage "dependencies"
bash test/deps.sh --ci || { failed=$((failed + 1)); finish; }

# build DIR [meson setup args...]: configure once, then build.
build() {
        local dir=$1; shift
        if [ ! -f "$dir/build.ninja" ]; then
                meson setup "$dir" -Dwerror=true -Dtests=enabled "$@" >"$dir.setup.log" 2>&1 || { cat "$dir.setup.log"; return 1; }
        fi
        ninja -C "$dir" >"$dir.build.log" 2>&1 || { tail -60 "$dir.build.log"; return 1; }
}

# suite DIR [meson test args...]: run meson test and add its Ok / Fail / Timeout counts.
suite() {
        local dir=$1 log
        shift
        log=$(mktemp)
        meson test -C "$dir" --print-errorlogs --num-processes 2 "$@" 2>&1 | tee "$log"
        local ok fail to
        ok=$(awk '/^Ok:/{print $2}' "$log" | tail -1)
        fail=$(awk '/^Fail:/{print $2}' "$log" | tail -1)
        to=$(awk '/^Timeout:/{print $2}' "$log" | tail -1)
        if [ -z "$ok" ]; then failed=$((failed + 1)); rm -f "$log"; return; fi
        passed=$((passed + ok)); failed=$((failed + ${fail:-0} + ${to:-0}))
        rm -f "$log"
}

stage "build (gcc, -Werror)"
if build build-test; then
        stage "tests"
        suite build-test
else
        failed=$((failed + 1))
fi

if [ "${TPMID_SKIP_SANITIZERS:-0}" != 1 ]; then
        stage "build (ASan + UBSan)"
        if build build-asan -Db_sanitize=address,undefined -Db_lundef=false; then
                stage "tests under ASan + UBSan"
                # The device suite runs in the plain build only: it tests the
                # TCTI path, which the sanitizers see on swtpm already.
                ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
                        suite build-asan --no-suite integration-device
        else
                failed=$((failed + 1))
        fi
fi

for gate in test/stages/*.sh; do
        [ -e "$gate" ] || continue
        stage "gate $(basename "$gate")"
        if bash "$gate"; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "GATE FAILED: $gate"; fi
done
stage "done"
finish
