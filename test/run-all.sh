#!/usr/bin/env bash
# The README's test command: build with -Werror and run every test suite.
# Ends with one line "N passed, N failed" (meson's OK / FAIL counts).
set -uo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build-test}
passed=0; failed=0
stage() { echo; echo "== $*"; }

stage "dependencies"
bash test/deps.sh || { echo "0 passed, 1 failed"; exit 1; }

stage "configure + build ($BUILD, werror)"
if [ ! -d "$BUILD" ]; then
        meson setup "$BUILD" -Dwerror=true -Dtests=enabled >/tmp/tpmid-setup.log 2>&1 || { cat /tmp/tpmid-setup.log; echo "0 passed, 1 failed"; exit 1; }
fi
if ! ninja -C "$BUILD" >/tmp/tpmid-build.log 2>&1; then
        tail -50 /tmp/tpmid-build.log; echo "0 passed, 1 failed"; exit 1
fi

count() { # parse meson's summary from its log
        local log=$1
        local ok fail to
        ok=$(grep -E '^Ok:' "$log" | awk '{print $2}' | tail -1)
        fail=$(grep -E '^Fail:' "$log" | awk '{print $2}' | tail -1)
        to=$(grep -E '^Timeout:' "$log" | awk '{print $2}' | tail -1)
        passed=$((passed + ${ok:-0})); failed=$((failed + ${fail:-0} + ${to:-0}))
        if [ -z "$ok" ]; then failed=$((failed + 1)); fi
}

stage "tests"
meson test -C "$BUILD" --print-errorlogs --num-processes 2 2>&1 | tee /tmp/tpmid-test.log
count /tmp/tpmid-test.log

for extra in test/stages/*.sh; do
        [ -e "$extra" ] || continue
        stage "$(basename "$extra")"
        if bash "$extra"; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAILED: $extra"; fi
done

echo
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
