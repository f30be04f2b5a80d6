#!/usr/bin/python3
"""Every manual page renders without warnings: `mandoc -T lint -W warning`
and `man --warnings -l` (groff's own warnings) must both be silent.
Also: each page's .TH names the file, and the SEE ALSO cross-references
between our pages point at pages that exist."""
import glob
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from harness import SRC, Runner, need, run  # noqa: E402

need("mandoc", "man")

R = Runner("man-lint")
PAGES = sorted(glob.glob(os.path.join(SRC, "man", "*.[1-8]")))
EXPECTED = {"tpmidd.8", "tpmidd-https.8", "tpmidctl.1", "tpmidd.toml.5", "tpmidd-api.7"}


@R.case
def pages_present():
    names = {os.path.basename(p) for p in PAGES}
    assert EXPECTED <= names, "missing pages: %s" % sorted(EXPECTED - names)
    build = open(os.path.join(SRC, "man", "meson.build")).read()
    for n in names:
        assert "'%s'" % n in build, "%s is not installed by man/meson.build" % n


@R.case
def mandoc_lint():
    bad = []
    for p in PAGES:
        r = run(["mandoc", "-T", "lint", "-W", "warning", p], check=False)
        if r.returncode != 0 or r.stdout.strip() or r.stderr.strip():
            bad.append("%s (rc %d):\n%s%s" % (p, r.returncode, r.stdout, r.stderr))
    assert not bad, "\n".join(bad)


@R.case
def man_warnings():
    bad = []
    env = dict(os.environ, MANWIDTH="80", LC_ALL="C.UTF-8", MAN_KEEP_FORMATTING="0")
    for p in PAGES:
        r = run(["man", "--warnings", "-l", p], check=False, env=env)
        if r.returncode != 0 or r.stderr.strip():
            bad.append("%s (rc %d):\n%s" % (p, r.returncode, r.stderr))
        elif len(r.stdout) < 500:
            bad.append("%s rendered to almost nothing" % p)
    assert not bad, "\n".join(bad)


@R.case
def control_lint_detects_errors():
    # A page with a planted problem must be reported, so silence above means something.
    import tempfile
    with tempfile.NamedTemporaryFile("w", suffix=".8", delete=False) as f:
        f.write(".TH BROKEN 8 2026-01-01\n.SH NAME\nbroken \\- x\n.SH DESCRIPTION\n.BOGUS macro\n.B\n")
        name = f.name
    try:
        r = run(["mandoc", "-T", "lint", "-W", "warning", name], check=False)
        assert r.returncode != 0 and (r.stdout + r.stderr).strip(), "mandoc missed a planted error"
        r = run(["man", "--warnings", "-l", name], check=False, env=dict(os.environ, MANWIDTH="80"))
        assert r.stderr.strip(), "man --warnings missed a planted error"
    finally:
        os.unlink(name)


@R.case
def headers_and_cross_references():
    ours = {os.path.basename(p) for p in PAGES}
    for p in PAGES:
        text = open(p).read()
        base = os.path.basename(p)
        name, sec = base.rsplit(".", 1)
        m = re.match(r'\.TH (\S+) (\d)', text)
        assert m, "%s: no .TH" % base
        assert m.group(1) == name.upper() and m.group(2) == sec, "%s: .TH says %s(%s)" % (base, m.group(1), m.group(2))
        for ref, rsec in re.findall(r"\.BR (tpmid[a-z\\.-]*) \((\d)\)", text):
            target = "%s.%s" % (ref.replace("\\-", "-"), rsec)
            assert target in ours, "%s refers to %s, which we do not ship" % (base, target)


@R.case
def backoff_range_matches_the_code():
    """tpmidd(8) states the DPS retry backoff with lib/backoff.h's numbers (it once said
    "between 2 and 300 s" while the code drew from 0.5 s)."""
    h = open(os.path.join(SRC, "lib", "backoff.h")).read()
    val = {k: int(v) for k, v in re.findall(r"#define (BACKOFF_\w+_MS) (\d+)u", h)}
    lo, base, cap = val["BACKOFF_MIN_MS"] / 1000, val["BACKOFF_BASE_MS"] / 1000, val["BACKOFF_CAP_MS"] / 1000
    text = re.sub(r"\s+", " ", open(os.path.join(SRC, "man", "tpmidd.8")).read())
    want = "between %g seconds and the smaller of %g\\(mu2\\(ha(n\\-1) and %g seconds" % (lo, base, cap)
    assert want in text, "tpmidd(8) does not say: %s" % want


R.main()
