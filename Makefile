# swimthor: the two commands an operator needs, `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

BENCH_STAMP := $(VENV)/.bench-installed
# SIP.js and ws for the WebSocket phone (tests/wsphone), from its package-lock.json.
WSPHONE := tests/wsphone
NPM_STAMP := $(WSPHONE)/node_modules/.installed

.PHONY: run test lint typecheck pytest debs npm clean bench bench-quick bench-sip bench-dns fuzz

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

## run: a local five-node cluster on loopback with a live status view (Ctrl-C stops it)
run: $(STAMP)
	$(BIN)/swimthor demo

## test: Debian tools the tests drive, then lint, type checks and the whole suite
test: $(STAMP) debs npm lint typecheck pytest

debs:
	bash scripts/install-debs.sh

# Without npm the SIP.js test skips; with it, a failed install fails the run.
npm:
	@if command -v npm >/dev/null 2>&1; then $(MAKE) --no-print-directory $(NPM_STAMP); \
	else echo "npm: not found; tests/test_sip_wss_sipjs.py will skip" >&2; fi

$(NPM_STAMP): $(WSPHONE)/package.json $(WSPHONE)/package-lock.json
	npm ci --prefix $(WSPHONE) --no-audit --no-fund
	touch $@

lint: $(STAMP)
	$(BIN)/ruff check swimthor tests bench
	$(BIN)/ruff format --check swimthor tests bench

# The package under --strict; tests and bench as pyproject.toml's [tool.mypy] says.
typecheck: $(STAMP)
	$(BIN)/mypy --strict swimthor
	$(BIN)/mypy tests bench

pytest: $(STAMP)
	$(BIN)/pytest -q

## fuzz: the fuzz targets (gossip codec and core, SIP, DNS, control socket) at length; 5-10 minutes
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz $(BIN)/pytest -q -p no:cacheprovider tests/test_fuzz.py tests/test_dns_server.py -k fuzz

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	touch $(BENCH_STAMP)

## bench: the whole failure-injection suite (simulator matrices, real processes, peers); hours
bench: $(BENCH_STAMP)
	$(BIN)/python bench/suite.py --full

## bench-quick: a reduced suite in at most five minutes, with its report
bench-quick: $(BENCH_STAMP)
	$(BIN)/python bench/suite.py --quick

## bench-sip: REGISTER, call and forked-call ladders for swimthor and Kamailio (tm), calls against the last stateless release, and a node killed under REGISTER and under call load
bench-sip: $(STAMP) debs
	$(BIN)/python -m bench.sip.bench

## bench-dns: SRV and A queries/s with dnsperf on one node, against Knot DNS and dnslib's server
bench-dns: $(STAMP) debs
	$(BIN)/python -m bench.dns.bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache $(WSPHONE)/node_modules
