# Two entry points for a newcomer:  `make demo`  and  `make test`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
PIP     := $(BIN)/pip install -q -c requirements/constraints-cpu.txt
STAMP   := $(VENV)/.installed

.PHONY: venv demo test lint bench clean

# The CPU build of torch is pinned by the constraints file, never in pyproject.toml.
$(STAMP): pyproject.toml requirements/constraints-cpu.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e ".[lfm,plot,dev,parquet,embed,ray]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/prunekit demo -o demo-out

test: $(STAMP)
	$(BIN)/ruff check prunekit prunekit_lfm tests benchmarks examples
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -n 2 tests

lint: $(STAMP)
	$(BIN)/ruff check prunekit prunekit_lfm tests benchmarks examples

# Sizes that finish in minutes on 2 cores; docs/performance.md gives the full-size commands.
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_core.py --quick
	$(BIN)/python benchmarks/bench_flow.py --n 5000 --d 1024
	$(BIN)/python benchmarks/bench_lfm.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache .ruff_cache
