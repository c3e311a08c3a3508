# lipverify developer targets. `make demo` and `make test` are the README's two commands.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0

.PHONY: setup demo test lint compare batch-compare bench clean models

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch is pinned and installed first: a bare `torch` would pull the multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet "torch==$(TORCH_VERSION)"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/lipverify bound models/digits_mlp_relu.onnx

test: setup
	$(BIN)/python -m pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check .

compare: setup
	$(BIN)/python results/make_compare.py
	$(MAKE) batch-compare FORCE=1

# Batch comparison (issue: batch): naive, gershgorin, ldlt-fast and lower on every shared and
# sample model (results/batch.yaml), stored in results/lipverify.db as each job finishes.
# `make batch-compare` alone resumes (skips finished jobs); FORCE=1 redoes them all.
JOBS ?= 2
BATCH_DB ?= results/lipverify.db
batch-compare: setup
	$(BIN)/lipverify batch results/batch.yaml --db $(BATCH_DB) --jobs $(JOBS) $(if $(FORCE),--force)
	$(BIN)/lipverify results export --db $(BATCH_DB) --format csv -o results/batch-results.csv
	$(BIN)/lipverify results export --db $(BATCH_DB) --format md -o results/batch-results.md
	$(BIN)/lipverify results plot --db $(BATCH_DB) --out results

# Scale benchmark (issue: scale): lipverify vs monolithic cvxpy, eclipse-nn, naive.
# Writes results/bench-quick.{csv,md}; `make bench SUITE=full` adds the 784-1024x8-10 case.
SUITE ?= quick
bench: setup
	$(BIN)/pip install --quiet --no-deps "eclipse-nn==0.1.7" || echo "eclipse-nn unavailable: its columns will say so"
	$(BIN)/python results/bench.py $(SUITE)

models: setup
	$(BIN)/python models/make_models.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
