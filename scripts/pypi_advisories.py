"""Advisory check of the lock files against PyPI's project JSON, for where pip-audit cannot look.

pip-audit's PyPI service asks https://pypi.org/pypi/NAME/VERSION/json for each pin; where that
per-version endpoint is unreachable (as on this project's build machines, whose egress to PyPI
answers it with 404, while OSV's API does not resolve at all) pip-audit skips every package and
still prints "No known vulnerabilities found". This script uses what PyPI does answer there:
https://pypi.org/pypi/NAME/json, which carries the advisories (from the PyPA/OSV database) of the
project's *latest* release, the release list and yanked flags. So for each pin it reports

  at_latest            the pin is the latest release: its advisories are exactly those listed;
  behind_latest        the pin is older: the listed advisories are the latest release's, and an
                       older pin's own advisories are NOT known from this source (unaudited);
  yanked               the pinned release is yanked on PyPI.

Usage: python scripts/pypi_advisories.py requirements/lock.txt [...] -o OUT.json
Run by `make audit` (scripts/audit.sh) with the tool venv's Python (needs `packaging`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

PY = "3.11"  # the Python the lock is made for (scripts/lock.sh)
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s\\;]+)")


def pins(paths: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for p in paths:
        with open(p, encoding="utf-8") as f:
            for line in f:
                m = PIN.match(line)
                if m:
                    out[canonicalize_name(m.group(1))] = m.group(2)
    return out


def project(name: str) -> dict:
    url = f"https://pypi.org/pypi/{name}/json"
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            return json.load(r)
    except (urllib.error.URLError, TimeoutError, json.JSONDecodeError) as e:
        return {"error": f"{url}: {e}"}


def newest_for_python(releases: dict) -> str | None:
    """The newest final release with a non-yanked file that admits Python PY."""
    best = None
    for ver, files in releases.items():
        try:
            v = Version(ver)
        except ValueError:
            continue
        if v.is_prerelease or v.is_devrelease:
            continue
        for f in files:
            try:
                ok = not f.get("yanked") and (not f.get("requires_python") or PY in SpecifierSet(f["requires_python"]))
            except InvalidSpecifier:
                ok = False
            if ok and (best is None or v > best):
                best = v
    return str(best) if best else None


def check(name: str, pinned: str) -> dict:
    d = project(name)
    row: dict = {"name": name, "pinned": pinned}
    if "error" in d:
        row.update(status="unaudited", error=d["error"])
        return row
    latest = d["info"]["version"]
    public = Version(pinned).public  # torch 2.13.0+cpu -> 2.13.0 (PyPI has no +cpu release)
    files = d.get("releases", {}).get(public, [])
    vulns = [
        {k: v.get(k) for k in ("id", "aliases", "fixed_in", "summary", "link", "withdrawn")}
        for v in d.get("vulnerabilities") or []
    ]
    at_latest = Version(public) == Version(latest)
    row.update(
        latest=latest,
        newest_for_python_3_11=newest_for_python(d.get("releases", {})),
        status="at_latest" if at_latest else "behind_latest",
        on_pypi=bool(files),
        yanked=bool(files) and all(f.get("yanked") for f in files),
        latest_release_vulnerabilities=vulns,
    )
    if at_latest:
        row["vulnerabilities"] = vulns
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("locks", nargs="+")
    ap.add_argument("-o", "--out", required=True)
    a = ap.parse_args()
    want = pins(a.locks)
    with ThreadPoolExecutor(4) as ex:
        rows = list(ex.map(lambda kv: check(*kv), sorted(want.items())))
    at = [r for r in rows if r["status"] == "at_latest"]
    behind = [r for r in rows if r["status"] == "behind_latest"]
    found = [
        {"name": r["name"], "version": r["pinned"], **v}
        for r in at
        for v in r["vulnerabilities"]
        if not v.get("withdrawn")
    ]
    latest_only = [
        {"name": r["name"], "pinned": r["pinned"], "latest": r["latest"], **v}
        for r in behind
        for v in r["latest_release_vulnerabilities"]
        if not v.get("withdrawn")
    ]
    report = {
        "generated": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "source": "https://pypi.org/pypi/NAME/json (advisories of each project's latest release)",
        "lock_files": a.locks,
        "summary": {
            "packages": len(rows),
            "at_latest": len(at),
            "at_latest_with_advisories": len({f["name"] for f in found}),
            "behind_latest_unaudited": [
                f"{r['name']}=={r['pinned']} (latest {r['latest']}, newest for Python {PY}: {r['newest_for_python_3_11']})"
                for r in behind
            ],
            "unreachable": [r["name"] for r in rows if r["status"] == "unaudited"],
            "yanked": [f"{r['name']}=={r['pinned']}" for r in rows if r.get("yanked")],
            "not_on_pypi": [f"{r['name']}=={r['pinned']}" for r in rows if r.get("on_pypi") is False],
        },
        "vulnerabilities_in_pinned_versions": found,
        "advisories_of_newer_releases_of_behind_pins": latest_only,
        "packages": rows,
    }
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
        f.write("\n")
    s = report["summary"]
    print(
        f"{s['packages']} pinned packages: {s['at_latest']} at their latest release "
        f"({len(found)} advisories for those versions), {len(behind)} behind latest (unaudited by this source), "
        f"{len(s['unreachable'])} unreachable, {len(s['yanked'])} yanked -> {a.out}"
    )
    for v in found:
        print(f"  VULNERABLE {v['name']}=={v['version']}: {v['id']} {v.get('aliases')} fixed in {v.get('fixed_in')}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
