#!/usr/bin/env bash
# Set up ImageFinder in ./.venv: CPU torch and every dependency from the hash-pinned lock files
# (requirements/lock.txt, lock-nodeps.txt; `make lock` regenerates them), the package (editable).
#   bash scripts/setup.sh            runtime + test dependencies
#   bash scripts/setup.sh --browser  also Debian chromium + chromium-driver (browser tests)
# Idempotent: a stamp of the requirement and lock files' hash skips work already done.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

if [[ "${1:-}" == "--browser" ]] && ! command -v chromium >/dev/null; then
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
fi

[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
stamp="$VENV/.imagefinder-installed"
want=$(cat requirements/*.txt pyproject.toml | sha256sum | cut -c1-16)
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }
# A requirement file edited without `make lock` would silently not be installed: refuse instead.
"$VENV/bin/python" - <<'PY'
import re, sys
def reqs(paths):
    out = {}
    for p in paths:
        for line in open(p, encoding="utf-8"):
            line = line.split("#", 1)[0].strip()
            m = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*(==\s*([^\s;\\]+))?", line)
            if m and not line.startswith("-"):
                out[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(4)
    return out
d = "requirements/"
stale = []
for inputs, lock in ((["torch", "base", "serve", "scale", "train", "test"], "lock"), (["nodeps"], "lock-nodeps")):
    locked = reqs([d + lock + ".txt"])
    for name, ver in reqs([d + i + ".txt" for i in inputs]).items():
        if name not in locked or (ver and ver != locked[name]):
            stale.append(f"{name}{'==' + ver if ver else ''} (lock: {locked.get(name)})")
if stale:
    sys.exit("requirements/*.txt and the lock files disagree: " + ", ".join(stale) + ". Run `make lock`.")
PY
# Every package comes from the hash-pinned lock files (regenerate them with `make lock` after
# editing requirements/*.txt): pip refuses any file whose sha256 is not listed there.
# torch is pinned there to the CPU build, torch==2.13.0+cpu with the sha256 of that one wheel, so no
# CUDA build can be fetched: it comes from a local wheel folder (this machine's pip find-links,
# TORCH_WHEELS); elsewhere set PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu (and, if that
# file's sha256 differs from the lock's, run `make lock` there).
# torch first, from the lock, as before; then the rest of the lock in one resolve.
TORCH_WHEELS=${TORCH_WHEELS:-/opt/wheels}
src=(); [[ -d "$TORCH_WHEELS" ]] && src=(--find-links "$TORCH_WHEELS")
torch_lock=$(mktemp); trap 'rm -f "$torch_lock"' EXIT
awk '/^torch==/ {p=1; print; next} p && /^ +--hash=/ {print; next} {p=0}' requirements/lock.txt > "$torch_lock"
[[ -s "$torch_lock" ]] || { echo "no torch== entry in requirements/lock.txt" >&2; exit 1; }
pip install --require-hashes --no-deps "${src[@]}" -r "$torch_lock"
pip install --require-hashes "${src[@]}" -r requirements/lock.txt
# Used without their own dependencies (see requirements/nodeps.txt), still hash-checked.
pip install --require-hashes --no-deps -r requirements/lock-nodeps.txt
# The package itself, built with the venv's locked setuptools (no unpinned build download).
pip install --no-deps --no-build-isolation -e .
echo "$want" > "$stamp"
echo "ImageFinder installed in $VENV"
