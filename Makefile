# ImageFinder: `make demo` (set up + index the built-in sample + search), `make test`, `make run`.
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON := $(BIN)/python
API_PORT ?= 8000
WEB_PORT ?= 5000
# `make run` serves the index `make demo` built when there is one (else the sample, built into the user cache)
INDEX ?= $(if $(wildcard sample/index/manifest.json),sample/index,)

.PHONY: setup demo test test-fast check run serve-api serve-web bench-api container-test lint lock audit clean

setup:
	bash scripts/setup.sh

demo: setup
	$(BIN)/imagefinder demo --dir sample

## static checks: lint (ruff), layer contracts (import-linter, .importlinter), types (mypy on src/)
check: setup
	$(PYTHON) -m ruff check src tests benchmarks scripts
	$(BIN)/lint-imports --no-cache
	$(PYTHON) -m mypy

## everything (what CI runs)
test: setup
	bash scripts/setup.sh --browser
	$(MAKE) --no-print-directory check
	$(PYTHON) -m pytest -q

## the edit-run loop: static checks + all but the slow end-to-end tests (notebook, crash trials, Ray, fine-tuning)
test-fast: setup
	$(MAKE) --no-print-directory check
	$(PYTHON) -m pytest -q -m "not slow"

## API (http://127.0.0.1:8000/docs) + web page (http://127.0.0.1:5000); builds the sample index
## on first use unless INDEX=DIR is given; Ctrl-C stops both.
run: setup
	$(PYTHON) -m imagefinder.serve --api-port $(API_PORT) --web-port $(WEB_PORT) $(if $(INDEX),--index "$(INDEX)")

serve-api: setup  ## only the API (same as `cd api && uvicorn app:app`)
	$(PYTHON) -m imagefinder.api --port $(API_PORT) $(if $(INDEX),--index "$(INDEX)")

serve-web: setup  ## only the web page (same as `cd app && python app.py`)
	$(PYTHON) -m imagefinder.web --port $(WEB_PORT) --api-url http://127.0.0.1:$(API_PORT)

bench-api: setup  ## 32 concurrent clients x 30 s of searches against a local API
	$(PYTHON) benchmarks/api_load.py --clients 32 --duration 30

## build the container image with podman here (local debootstrap base, cached), start it, index the
## sample through its CLI + API, search over HTTP, stop and remove it (scripts/container_test.sh)
container-test: setup
	bash scripts/container_test.sh

lint: setup
	$(PYTHON) -m ruff check src tests benchmarks scripts

## requirements/lock.txt, lock-test.txt, lock-nodeps.txt (hash-pinned, what setup installs) from pyproject.toml;
## run after editing the dependency lists, review the diff, commit all three. Needs PyPI; uv runs from .cache/tools-venv.
lock:
	bash scripts/lock.sh

## pip-audit of the lock files (+ PyPI advisory check) -> benchmarks/results/pip-audit.json, pypi-advisories.json
audit:
	bash scripts/audit.sh

clean:
	rm -rf sample scripts/output test-artifacts .pytest_cache
