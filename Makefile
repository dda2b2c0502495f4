# swimthor: the two commands an operator needs, `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck pytest debs clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

## run: a local five-node cluster on loopback with a live status view (Ctrl-C stops it)
run: $(STAMP)
	$(BIN)/swimthor demo

## test: Debian tools the tests drive, then lint, type checks and the whole suite
test: $(STAMP) debs lint typecheck pytest

debs:
	bash scripts/install-debs.sh

lint: $(STAMP)
	$(BIN)/ruff check swimthor tests bench
	$(BIN)/ruff format --check swimthor tests bench

typecheck: $(STAMP)
	$(BIN)/mypy swimthor

pytest: $(STAMP)
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
