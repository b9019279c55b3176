#!/usr/bin/env bash
# Regenerate the hash-pinned lock files from pyproject.toml's dependency lists (`make lock`):
#   requirements/lock.txt        runtime: [project] dependencies + every extra but `test` (what a
#                                deployment installs: scripts/setup.sh --runtime, the Containerfile)
#   requirements/lock-test.txt   runtime + the `test` extra, at the same versions (what setup installs)
#   requirements/lock-nodeps.txt requirements/nodeps.txt alone (installed with --no-deps)
# for CPython 3.11 on Linux x86_64 (manylinux_2_28), the platform of CI and of scripts/setup.sh.
# Edit pyproject.toml (not the lock files), run this, review the diff, commit all. A version
# already in a lock is kept (uv prefers the output file's pins); a new or unpinned dependency
# resolves to the newest release that fits. uv runs from a throwaway tool venv in .cache/.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS=${TOOLS_VENV:-.cache/tools-venv}
UV_VERSION=0.13.9
[[ -x "$TOOLS/bin/python" ]] || python3 -m venv "$TOOLS"
"$TOOLS/bin/python" -m pip --disable-pip-version-check -q install "uv==$UV_VERSION"
# The CPU torch wheel is not on PyPI: it is found in a local wheel folder (this machine's pip
# find-links) or, elsewhere, on PyTorch's CPU index.
TORCH_WHEELS=${TORCH_WHEELS:-/opt/wheels}
if [[ -d "$TORCH_WHEELS" ]]; then src=(--find-links "$TORCH_WHEELS")
else src=(--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match); fi
stamp="# inputs: $("$TOOLS/bin/python" scripts/lock_inputs.py) (scripts/lock_inputs.py; setup.sh checks it)"
compile() {  # compile OUT ARGS...: uv pip compile, then the inputs stamp as the lock's 3rd line
  local out=$1; shift
  "$TOOLS/bin/uv" pip compile --quiet --generate-hashes --python-version 3.11 \
    --python-platform x86_64-manylinux_2_28 --custom-compile-command "make lock" "$@" -o "$out"
  sed -i "3i $stamp" "$out"
}
pins=$(mktemp); trap 'rm -f "$pins"' EXIT
runtime=(--extra models --extra serve --extra rerank --extra scale --extra train)
compile requirements/lock.txt "${src[@]}" -c requirements/constraints.txt "${runtime[@]}" pyproject.toml
# The test lock holds the runtime lock's exact versions (as constraints) plus the test tools.
grep -E '^[A-Za-z0-9].*==' requirements/lock.txt | sed 's/ .*//' > "$pins"
compile requirements/lock-test.txt "${src[@]}" -c requirements/constraints.txt -c "$pins" \
  "${runtime[@]}" --extra test pyproject.toml
compile requirements/lock-nodeps.txt --no-deps requirements/nodeps.txt
for f in requirements/lock.txt requirements/lock-test.txt requirements/lock-nodeps.txt; do
  echo "wrote $f ($(grep -cE '^[A-Za-z0-9].*==' "$f") packages)"
done
