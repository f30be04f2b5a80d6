"""toml-test conformance of lib/toml.c (TOML 1.0), through build/test/toml-decode.

Every valid case must decode (exit 0) to JSON semantically equal to the
expected .json (compared like toml-test: integers by value, floats numerically
with nan/inf, date-times after normalising). Every invalid case must be
rejected with exit status 1; a crash (signal) or a hang is a failure.

The suite is looked up in $TOML_TEST_DIR, else $TPMID_SOURCE_DIR/../shared/toml-test;
without it the test is skipped (exit 77).
"""
import json
import math
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import harness  # noqa: E402

TIMEOUT = 10  # seconds per case: anything slower is a bug (quadratic or a hang)


def suite_dir():
    cands = []
    if os.environ.get("TOML_TEST_DIR"):
        cands.append(os.environ["TOML_TEST_DIR"])
    cands.append(os.path.join(harness.SRC, "..", "shared", "toml-test"))
    for c in cands:
        if os.path.isfile(os.path.join(c, "tests", "files-toml-1.0.0")):
            return os.path.abspath(c)
    return None


DT_RE = re.compile(r"^(?:(\d{4})-(\d{2})-(\d{2}))?[T ]?(?:(\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?)?(Z|[+-]\d{2}:\d{2})?$",
                   re.I)


def norm_datetime(s):
    m = DT_RE.match(s)
    if not m:
        return ("unparsable", s)
    y, mo, d, h, mi, sec, frac, off = m.groups()
    frac = (frac or "").rstrip("0")
    if off is None:
        offmin = None
    elif off.upper() == "Z":
        offmin = 0
    else:
        offmin = (int(off[1:3]) * 60 + int(off[4:6])) * (-1 if off[0] == "-" else 1)
    return (y, mo, d, h, mi, sec, frac, offmin)


def parse_float(s):
    return float(s.replace("_", ""))  # float() understands nan, inf, +inf, -inf


def is_tagged(x):
    return isinstance(x, dict) and set(x) == {"type", "value"} and isinstance(x["type"], str) \
        and isinstance(x["value"], str)


def compare(want, got, path="$"):
    """Return None when equal, else a description of the first difference."""
    if is_tagged(want):
        if not is_tagged(got):
            return "%s: want %s, got %r" % (path, want["type"], got)
        if want["type"] != got["type"]:
            return "%s: want type %s, got %s" % (path, want["type"], got["type"])
        t, a, b = want["type"], want["value"], got["value"]
        if t == "integer":
            ok = int(a) == int(b)
        elif t == "float":
            fa, fb = parse_float(a), parse_float(b)
            ok = (math.isnan(fa) and math.isnan(fb)) or fa == fb
        elif t in ("datetime", "datetime-local", "date-local", "time-local"):
            ok = norm_datetime(a) == norm_datetime(b)
        else:
            ok = a == b
        return None if ok else "%s: want %s %r, got %r" % (path, t, a, b)
    if isinstance(want, list):
        if not isinstance(got, list):
            return "%s: want array, got %r" % (path, got)
        if len(want) != len(got):
            return "%s: want %d elements, got %d" % (path, len(want), len(got))
        for i, (w, g) in enumerate(zip(want, got)):
            d = compare(w, g, "%s[%d]" % (path, i))
            if d:
                return d
        return None
    if isinstance(want, dict):
        if not isinstance(got, dict) or is_tagged(got):
            return "%s: want table, got %r" % (path, got)
        if set(want) != set(got):
            return "%s: keys differ: missing %s, extra %s" % (
                path, sorted(set(want) - set(got)), sorted(set(got) - set(want)))
        for k in want:
            d = compare(want[k], got[k], "%s.%s" % (path, k))
            if d:
                return d
        return None
    return "%s: unexpected expected-value %r" % (path, want)


def run_case(decoder, toml_path):
    with open(toml_path, "rb") as f:
        data = f.read()
    try:
        p = subprocess.run([decoder], input=data, capture_output=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        return None, b"", b"timeout after %d s" % TIMEOUT
    return p.returncode, p.stdout, p.stderr


def main():
    suite = suite_dir()
    if not suite:
        print("SKIP: toml-test suite not found (set TOML_TEST_DIR or place shared/toml-test beside the source)")
        sys.exit(harness.SKIP)
    decoder = harness.build_path("test", "toml-decode")
    if not os.access(decoder, os.X_OK):
        print("FAIL: decoder not built: %s" % decoder)
        sys.exit(1)

    tests = os.path.join(suite, "tests")
    with open(os.path.join(tests, "files-toml-1.0.0")) as f:
        names = [ln.strip() for ln in f if ln.strip()]

    failures = []
    counts = {"valid": [0, 0], "invalid": [0, 0]}  # [passed, total]
    for name in names:
        if not name.endswith(".toml"):
            continue
        kind = name.split("/", 1)[0]
        if kind not in counts:
            continue
        counts[kind][1] += 1
        rc, out, err = run_case(decoder, os.path.join(tests, name))
        errtext = err.decode("utf-8", "replace").strip()
        if rc is None:
            failures.append("%s: %s" % (name, errtext))
            continue
        if rc < 0:
            failures.append("%s: killed by signal %d: %s" % (name, -rc, errtext[-500:]))
            continue
        if kind == "invalid":
            if rc == 1 and errtext:
                counts[kind][0] += 1
            elif rc == 0:
                failures.append("%s: accepted invalid input" % name)
            else:
                failures.append("%s: exit %d (want 1): %s" % (name, rc, errtext))
            continue
        if rc != 0:
            failures.append("%s: rejected valid input (exit %d): %s" % (name, rc, errtext))
            continue
        with open(os.path.join(tests, name[:-5] + ".json"), "rb") as f:
            want = json.load(f)
        try:
            got = json.loads(out)
        except ValueError as e:
            failures.append("%s: decoder printed invalid JSON: %s" % (name, e))
            continue
        diff = compare(want, got)
        if diff:
            failures.append("%s: %s" % (name, diff))
            continue
        counts[kind][0] += 1

    for f in failures:
        print("FAIL " + f)
    print("toml-conformance: valid %d/%d passed, invalid %d/%d rejected, %d failing" % (
        counts["valid"][0], counts["valid"][1], counts["invalid"][0], counts["invalid"][1], len(failures)))
    if counts["valid"][1] == 0 or counts["invalid"][1] == 0:
        print("FAIL: no cases found in %s" % suite)
        sys.exit(1)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
