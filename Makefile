# dashpipe: `make run` sets up and starts everything; `make test` passes the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: help install up down status run test unit chaos bench bench-quick lint schemas

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)  ## create .venv with dashpipe and its dev tools

up: install  ## start the local Kafka + PostgreSQL (idempotent) and create the topics
	$(BIN)/dashpipe up

down:  ## stop the local stack (data stays in .dashpipe/)
	$(BIN)/dashpipe down

status: install  ## what runs where
	$(BIN)/dashpipe status

run: up  ## set up everything and run the demo: data moving through every role (Ctrl-C stops)
	$(BIN)/dashpipe demo

test: install  ## unit + integration tests against the real broker and database
	$(BIN)/python -m pytest --ignore=tests/system

MINUTES ?= 3
chaos: install  ## system test with faults on a stack of its own (MINUTES=3 of load)
	DASHPIPE_CHAOS_MINUTES=$(MINUTES) $(BIN)/python -m pytest tests/system -m system -s

unit: install  ## unit tests only (no services)
	$(BIN)/python -m pytest tests/unit

bench: up  ## benchmarks: ratios against Kafka's own perf tools, appended to bench/results.jsonl
	$(BIN)/python bench/run_all.py

bench-quick: up  ## the benchmarks on small inputs (a smoke run)
	$(BIN)/python bench/run_all.py --quick

lint: install  ## ruff, mypy, the layer rules (imports point down), and current JSON Schemas
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python tests/layers.py
	$(BIN)/dashpipe schemas check

schemas: install  ## re-export the JSON Schemas and the OpenAPI document in schemas/
	$(BIN)/dashpipe schemas export
