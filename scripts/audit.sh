#!/usr/bin/env bash
# Known-vulnerability check of every package the lock files pin (`make audit`). Writes
#   benchmarks/results/pip-audit.json        pip-audit, PyPI advisory service (and pip-audit-osv.json
#                                            where OSV's API resolves)
#   benchmarks/results/pypi-advisories.json  scripts/pypi_advisories.py: PyPI project JSON, for when
#                                            pip-audit's per-version look-ups are refused
# Exit 1 if any source reports a vulnerability in a pinned version. pip-audit prints "No known
# vulnerabilities found" even when it skipped every package: the skip count below says how many it
# really audited. Tools live in a throwaway venv in .cache/, never the project venv.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS=${TOOLS_VENV:-.cache/tools-venv}
[[ -x "$TOOLS/bin/python" ]] || python3 -m venv "$TOOLS"
"$TOOLS/bin/python" -m pip --disable-pip-version-check -q install "pip-audit==2.10.1"
out=benchmarks/results
mkdir -p "$out"
locks=(requirements/lock-test.txt requirements/lock-nodeps.txt)
# --disable-pip: the locks are the complete, hashed set, so nothing is resolved or installed.
audit() { "$TOOLS/bin/pip-audit" "${locks[@]/#/-r}" --require-hashes --disable-pip --progress-spinner off -f json "$@"; }
summary() {  # how many pip-audit really looked up, and what it found
  "$TOOLS/bin/python" - "$1" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
deps = d["dependencies"]
skipped = [x for x in deps if "skip_reason" in x]
vulns = [(x["name"], x["version"], v["id"], v.get("fix_versions")) for x in deps for v in x.get("vulns", [])]
print(f"{sys.argv[1]}: {len(deps)} packages, {len(deps) - len(skipped)} audited, {len(skipped)} skipped, "
      f"{len(vulns)} vulnerabilities")
if skipped:
    print(f"  e.g. skipped: {skipped[0]['skip_reason']}")
for v in vulns:
    print(f"  VULNERABLE {v[0]}=={v[1]}: {v[2]} fixed in {v[3]}")
sys.exit(1 if vulns else 0)
PY
}
rc=0
audit -s pypi -o "$out/pip-audit.json" || rc=1
summary "$out/pip-audit.json" || rc=1
if "$TOOLS/bin/python" -c "import socket; socket.getaddrinfo('api.osv.dev', 443)" 2>/dev/null; then
  audit -s osv -o "$out/pip-audit-osv.json" || rc=1
  summary "$out/pip-audit-osv.json" || rc=1
else
  echo "OSV (api.osv.dev) does not resolve from here: pip-audit's OSV service skipped"
fi
"$TOOLS/bin/python" scripts/pypi_advisories.py "${locks[@]}" -o "$out/pypi-advisories.json" || rc=1
exit $rc
