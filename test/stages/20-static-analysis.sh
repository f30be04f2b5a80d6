#!/usr/bin/env bash
# Static analysis gate: cppcheck and clang-tidy (config in .clang-tidy) over
# lib/ and daemon/. Any finding fails the gate.
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build-test}
[ -f "$BUILD/compile_commands.json" ] || { echo "no $BUILD/compile_commands.json (build first)"; exit 1; }
echo "-- cppcheck"
cppcheck --quiet --error-exitcode=1 --enable=warning,performance,portability \
        --inline-suppr --std=c11 -D_GNU_SOURCE -I lib -I "$BUILD" \
        --suppress=missingIncludeSystem --suppress=unmatchedSuppression \
        lib daemon
echo "-- clang-tidy"
files=$(ls lib/*.c daemon/*.c)
out=$(clang-tidy -p "$BUILD" --quiet $files 2>/dev/null || true)
if echo "$out" | grep -E '(warning|error):' ; then
        echo "clang-tidy reported findings"
        exit 1
fi
echo "static analysis clean"
