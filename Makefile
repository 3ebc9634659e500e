# One runner for README and CI. Every target sets up .venv first (idempotent, pip only).
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test test-unit lint demo bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	$(BIN)/pip check
	touch $(STAMP)

# Two xdist workers, a file per worker at a time (module-scoped stacks start once), in collection
# order (tests/conftest.py puts the files with slow tests first).
test: setup lint
	$(BIN)/pytest -n 2 --dist loadfile --no-loadscope-reorder

test-unit: setup
	$(BIN)/pytest tests/unit

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

demo: setup
	$(BIN)/samdrop demo

bench: setup
	$(BIN)/python benchmarks/predictor_bench.py --model-type tiny --images 8

clean:
	rm -rf $(VENV) .samdrop .pytest_cache .mypy_cache .ruff_cache
