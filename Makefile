# Two commands: `make demo` (set up, run the quick start notebook, print its timing summary)
# and `make test` (set up, lint, run every test tier, the notebooks and a bench smoke run).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U pip
	$(BIN)/python -m pip install -q -e ".[test,bench]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python notebooks/run.py notebooks/quickstart.ipynb

lint: $(STAMP)
	$(BIN)/ruff check parmagic tests bench notebooks/run.py
	$(BIN)/ruff format --check parmagic tests bench notebooks/run.py

test: lint
	$(BIN)/python -m pytest -q tests
	$(BIN)/python -m pytest -q --nbval-lax --nbval-current-env -p no:cacheprovider notebooks/
	$(BIN)/python bench/bench.py --quick

bench: $(STAMP)
	$(BIN)/python bench/bench.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache artifacts
