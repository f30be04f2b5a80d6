#!/usr/bin/python3
"""The journal's vocabulary agrees everywhere: the MESSAGE_IDs defined in the
code (lib/log.h and any other LOG_MESSAGE_* define), the entries of the
journal catalog (man/tpmidd.catalog) and the IDs that tpmidd(8) documents are
one set; the structured fields the code sends (LOG_STR/LOG_NUM/LOG_HEX) are
the fields tpmidd(8) documents; every catalog field reference (@FIELD@) is a
field the code sends; each ID is a random (version 4) 128-bit ID as
`systemd-id128 new` makes them; and journalctl itself parses the catalog."""
import glob
import os
import re
import shutil
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from harness import SRC, Runner, need, run, tmpdir  # noqa: E402

R = Runner("journal-catalog")
CATALOG = os.path.join(SRC, "man", "tpmidd.catalog")
MAN = os.path.join(SRC, "man", "tpmidd.8")
ID_RE = re.compile(r'#define\s+(LOG_MESSAGE_\w+)\s+"([0-9a-f]{32})"')
FIELD_RE = re.compile(r'LOG_(?:STR|NUM|HEX)\("([A-Z][A-Z0-9_]*)"')


def sources():
    for pat in ("lib/*.[ch]", "daemon/*/*.[ch]"):
        for p in sorted(glob.glob(os.path.join(SRC, pat))):
            yield p, open(p, encoding="utf-8").read()


def code_ids():
    ids = {}
    for p, text in sources():
        for name, mid in ID_RE.findall(text):
            assert mid not in ids.values(), "%s: %s reuses the ID of another event" % (p, name)
            ids[name] = mid
    return ids


def code_fields():
    return {f for _, text in sources() for f in FIELD_RE.findall(text)}


def catalog_entries():
    entries, cur = {}, None
    for line in open(CATALOG, encoding="utf-8"):
        m = re.match(r"^-- ([0-9a-f]{32})\s*$", line)
        if m:
            cur = m.group(1)
            assert cur not in entries, "catalog lists %s twice" % cur
            entries[cur] = ""
        elif cur:
            entries[cur] += line
    return entries


def logging_section():
    text = open(MAN, encoding="utf-8").read()
    m = re.search(r"^\.SH LOGGING\n(.*?)^\.SH ", text, re.S | re.M)
    assert m, "tpmidd.8 has no LOGGING section"
    return m.group(1)


@R.case
def ids_agree():
    code = set(code_ids().values())
    cat = set(catalog_entries())
    man = set(re.findall(r"^\.B ([0-9a-f]{32})$", logging_section(), re.M))
    assert code, "no LOG_MESSAGE_* defines found"
    assert code == cat, "code vs catalog: only in code %s, only in catalog %s" % (sorted(code - cat), sorted(cat - code))
    assert code == man, "code vs tpmidd(8): only in code %s, only in the page %s" % (sorted(code - man), sorted(man - code))


@R.case
def ids_are_random_v4():
    for name, mid in code_ids().items():
        assert mid[12] == "4" and mid[16] in "89ab", "%s %s is not a version-4 ID (systemd-id128 new)" % (name, mid)


@R.case
def fields_agree():
    code = code_fields()
    sec = logging_section()
    man = set(re.findall(r"\b([A-Z][A-Z0-9_]+)=", sec))
    # Fields of the journal protocol itself, which the page may name.
    man -= {"MESSAGE_ID", "PRIORITY", "MESSAGE"}
    assert code == man, "code vs tpmidd(8): only in code %s, only in the page %s" % (
        sorted(code - man), sorted(man - code))


@R.case
def catalog_fields_are_sent():
    code = code_fields()
    for mid, body in catalog_entries().items():
        for f in re.findall(r"@([A-Z][A-Z0-9_]*)@", body):
            assert f in code, "catalog entry %s refers to @%s@, which the code never sends" % (mid, f)
        assert re.search(r"^Subject: \S", body, re.M), "catalog entry %s has no Subject:" % mid
        assert re.search(r"^Defined-By: tpmidd$", body, re.M), "catalog entry %s has no Defined-By: tpmidd" % mid


@R.case
def journalctl_parses_catalog():
    need("journalctl")
    root = tmpdir()
    try:
        d = os.path.join(root, "usr", "lib", "systemd", "catalog")
        os.makedirs(d)
        with open(CATALOG, encoding="utf-8") as src, open(os.path.join(d, "tpmidd.catalog"), "w") as dst:
            dst.write(src.read())
        os.makedirs(os.path.join(root, "var", "lib", "systemd", "catalog"))
        r = run(["journalctl", "--root", root, "--update-catalog"], check=False)
        assert r.returncode == 0, "journalctl --update-catalog: %s" % r.stderr
        listed = run(["journalctl", "--root", root, "--list-catalog"]).stdout
        ids = {line.split()[0] for line in listed.splitlines() if line.strip()}
        missing = set(catalog_entries()) - ids
        assert not missing, "journalctl did not take these entries: %s" % sorted(missing)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@R.case
def catalog_installed():
    build = open(os.path.join(SRC, "man", "meson.build")).read()
    assert "'tpmidd.catalog'" in build and "catalogdir" in build, "man/meson.build does not install the catalog"


if __name__ == "__main__":
    R.main()
