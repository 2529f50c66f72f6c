# Two commands for a new user: `make demo` (the main job) and `make test` (the whole suite).
# Both create .venv on first use; the stamp file re-installs when pyproject.toml changes.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,export,openvino,serve,explain,doctor,timm,shards]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/convnets demo

# pytest-xdist, one worker per core and one test file per worker (module fixtures built once): the
# suite took 108 s against 174 s in one process on a 2-core AVX-512 EPYC (bench/RESULTS.md, "Every CPU kind").
test: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --dist loadfile $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
