#!/usr/bin/env bash
# Regenerate the hash-pinned lock files from the human-edited requirement files (`make lock`):
#   requirements/lock.txt        torch.txt + base/serve/scale/train/test.txt, full transitive closure
#   requirements/lock-nodeps.txt nodeps.txt alone (installed with --no-deps)
# for CPython 3.11 on Linux x86_64 (manylinux_2_28), the platform of CI and of scripts/setup.sh.
# Edit requirements/*.txt (not the lock files), run this, commit both. Packages already pinned
# (==) keep their version; an unpinned transitive dependency resolves to the newest release that
# fits, so review the diff. uv runs from a throwaway tool venv in .cache/, never the project venv.
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
compile() {
  "$TOOLS/bin/uv" pip compile --quiet --generate-hashes --python-version 3.11 \
    --python-platform x86_64-manylinux_2_28 --custom-compile-command "make lock" "$@"
}
compile "${src[@]}" requirements/torch.txt requirements/base.txt requirements/serve.txt \
  requirements/scale.txt requirements/train.txt requirements/test.txt -o requirements/lock.txt
compile --no-deps requirements/nodeps.txt -o requirements/lock-nodeps.txt
echo "wrote requirements/lock.txt ($(grep -c '==' requirements/lock.txt) packages)" \
  "and requirements/lock-nodeps.txt ($(grep -c '==' requirements/lock-nodeps.txt))"
