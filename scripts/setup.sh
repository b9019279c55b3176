#!/usr/bin/env bash
# Set up ImageFinder in ./.venv: CPU torch, pinned dependencies, the package (editable).
#   bash scripts/setup.sh            runtime + test dependencies
#   bash scripts/setup.sh --browser  also Debian chromium + chromium-driver (browser tests)
# Idempotent: a stamp of the requirement files' hash skips work already done.
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
# torch first and exactly: a looser spec makes pip fetch a multi-GB CUDA build. Off this
# machine, add --index-url https://download.pytorch.org/whl/cpu for the CPU wheel.
pip install torch==2.13.0
pip install -r requirements/base.txt -r requirements/serve.txt -r requirements/scale.txt -r requirements/train.txt -r requirements/test.txt
pip install --no-deps -r requirements/nodeps.txt
pip install --no-deps -e .
echo "$want" > "$stamp"
echo "ImageFinder installed in $VENV"
