# Two commands for a new user: `make run` (train and serve, all in one process) and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: run test lint bench clean

$(INSTALLED): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements.lock -e ".[dev]"
	touch $@

run: $(INSTALLED)  ## start the all-in-one engine on http://127.0.0.1:8000
	$(PY) -m skipper $(ARGS)

lint: $(INSTALLED)
	$(VENV)/bin/ruff check skipper tests benchmarks
	$(VENV)/bin/mypy

# Most tests wait on processes, brokers and trainings rather than on the CPU, so three workers
# share the 2 cores well; building the image saturates them, so those tests run alone, last.
PYTEST_WORKERS ?= 3

test: lint  ## ruff, mypy and the whole test suite (needs the local RabbitMQ, Redis and PostgreSQL)
	$(VENV)/bin/pytest -q -n $(PYTEST_WORKERS) --dist worksteal -m "not image"
	$(VENV)/bin/pytest -q -m image

bench: $(INSTALLED)  ## predict throughput and latency; needs wrk (apt-get install wrk)
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(PY) benchmarks/predict.py

clean:
	rm -rf $(VENV) skipper-data .pytest_cache .mypy_cache .ruff_cache
