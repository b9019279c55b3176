# ImageFinder: `make demo` (set up + index the built-in sample + search), `make test`.
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test run lint clean

setup:
	bash scripts/setup.sh

demo: setup
	$(BIN)/imagefinder demo --dir sample

test: setup
	bash scripts/setup.sh --browser
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/python -m ruff check src tests benchmarks scripts

clean:
	rm -rf sample scripts/output test-artifacts .pytest_cache
