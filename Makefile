# lipverify developer targets. `make demo` and `make test` are the README's two commands.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0

LOCK ?= requirements.lock
# Tests run BLAS and torch on one thread: threaded BLAS on 2 shared cores can slow a test 10x
# (measured: 23 s against 2 s for one deep-chain test with two busy processes beside it).
TEST_ENV := OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
PYTEST_ARGS ?= --durations=15 --durations-min=0.5

.PHONY: setup demo test test-all test-latest lint compare batch-compare bench clean models lock

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch is pinned and installed first: a bare `torch` would pull the multi-GB CUDA build.
# Every other package is held at the versions of $(LOCK), known to be green.
$(VENV)/.installed: pyproject.toml $(LOCK) | $(BIN)/python
	$(BIN)/pip install --quiet "torch==$(TORCH_VERSION)" -c $(LOCK)
	$(BIN)/pip install --quiet -e ".[test]" -c $(LOCK)
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/lipverify bound models/digits_mlp_relu.onnx

# The default suite (what .ci/run calls): everything but the tests marked `slow`.
test: setup
	$(TEST_ENV) $(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

# Everything, the long integration tests included.
test-all: setup
	$(TEST_ENV) $(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The default suite on the newest versions pyproject.toml allows (no lock), in its own venv:
# tells early when an upstream release breaks us. torch stays at TORCH_VERSION (the CPU build:
# an unpinned upgrade pulls the multi-GB CUDA one).
LATEST ?= .venv-latest
test-latest:
	test -x $(LATEST)/bin/python || $(PY) -m venv $(LATEST)
	$(LATEST)/bin/pip install --quiet "torch==$(TORCH_VERSION)"
	$(LATEST)/bin/pip install --quiet --upgrade --upgrade-strategy eager -e ".[test]" \
	  "torch==$(TORCH_VERSION)"
	$(LATEST)/bin/pip freeze --exclude-editable > $(LATEST)/versions.txt
	$(TEST_ENV) $(LATEST)/bin/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

# Refresh the lock from a green `make test-latest` venv (see README, "Dependencies").
lock:
	{ echo "# Exact versions known to be green (make test, .ci/run): pip constraints for make setup."; \
	  echo "# make test-latest ignores it. Refresh: make test-latest && make lock (README, Dependencies)."; \
	  $(LATEST)/bin/pip freeze --exclude-editable | grep -v '^lipverify' \
	    | sed 's/^torch==\([0-9.]*\)+cpu$$/torch==\1/' | sort -f; } > $(LOCK)

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
	rm -rf $(VENV) $(LATEST) .pytest_cache build *.egg-info
