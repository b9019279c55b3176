#!/usr/bin/env bash
# Set up ImageFinder in ./.venv: CPU torch and every dependency from the hash-pinned lock files
# (compiled by `make lock` from pyproject.toml's dependency lists), then the package (editable).
#   bash scripts/setup.sh            runtime + test tools (requirements/lock-test.txt)
#   bash scripts/setup.sh --runtime  runtime only (requirements/lock.txt: what a deployment needs)
#   bash scripts/setup.sh --browser  also Debian chromium + chromium-driver (browser tests)
# Idempotent: a stamp of the lock files' and pyproject.toml's hash skips work already done.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
LOCK=requirements/lock-test.txt
BROWSER=0
for arg in "$@"; do
  case $arg in
    --runtime) LOCK=requirements/lock.txt ;;
    --browser) BROWSER=1 ;;
    *) echo "usage: scripts/setup.sh [--runtime] [--browser]" >&2; exit 2 ;;
  esac
done

if [[ $BROWSER == 1 ]] && ! command -v chromium >/dev/null; then
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
fi

# A dependency list edited without `make lock` would silently not be installed: refuse instead.
inputs=$("$PYTHON" scripts/lock_inputs.py)
for f in "$LOCK" requirements/lock-nodeps.txt; do
  grep -q "^# inputs: $inputs " "$f" || {
    echo "$f is older than pyproject.toml's dependency lists (or constraints/nodeps.txt): run \`make lock\`." >&2
    exit 1
  }
done

[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
stamp="$VENV/.imagefinder-installed"
want=$(cat "$LOCK" requirements/lock-nodeps.txt pyproject.toml | sha256sum | cut -c1-16)
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }
# Every package comes from the hash-pinned lock files (regenerate them with `make lock` after
# editing pyproject.toml): pip refuses any file whose sha256 is not listed there.
# torch is pinned there to the CPU build, torch==2.13.0+cpu with the sha256 of that one wheel, so no
# CUDA build can be fetched: it comes from a local wheel folder (this machine's pip find-links,
# TORCH_WHEELS); elsewhere set PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu (and, if that
# file's sha256 differs from the lock's, run `make lock` there).
# torch first, from the lock, as before; then the rest of the lock in one resolve.
TORCH_WHEELS=${TORCH_WHEELS:-/opt/wheels}
src=(); [[ -d "$TORCH_WHEELS" ]] && src=(--find-links "$TORCH_WHEELS")
torch_lock=$(mktemp); trap 'rm -f "$torch_lock"' EXIT
awk '/^torch==/ {p=1; print; next} p && /^ +--hash=/ {print; next} {p=0}' "$LOCK" > "$torch_lock"
[[ -s "$torch_lock" ]] || { echo "no torch== entry in $LOCK" >&2; exit 1; }
pip install --require-hashes --no-deps "${src[@]}" -r "$torch_lock"
pip install --require-hashes "${src[@]}" -r "$LOCK"
# Used without their own dependencies (see requirements/nodeps.txt), still hash-checked.
pip install --require-hashes --no-deps -r requirements/lock-nodeps.txt
# The package itself, built with the venv's locked setuptools (no unpinned build download).
pip install --no-deps --no-build-isolation -e .
echo "$want" > "$stamp"
echo "ImageFinder installed in $VENV"
