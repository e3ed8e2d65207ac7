# Two commands do everything on a fresh machine: `make sweep ARGS="..."` and `make test`.
# Each creates the project's virtual environment first when it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch goes in first, pinned: a range alone would pull the multi-GB CUDA build
# where only the CPU wheel is wanted (see README "Install").
TORCH ?= torch==2.13.0
ARGS ?=
PYTEST_ARGS ?=
# Test processes (pytest-xdist): one per core by default; TEST_WORKERS=0 runs the tests in this process.
TEST_WORKERS ?= auto

.PHONY: setup sweep smoke test lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev,dashboard]"
	touch $@

sweep: setup
	$(PY) -m runner.sweep $(ARGS)

smoke: setup
	$(PY) -m runner.sweep --config sweeps/smoke.yaml $(ARGS)

test: setup
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

lint: setup
	$(PY) -m ruff check runner tests bench
	$(PY) -m ruff format --check runner tests bench
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
