# lipverify developer targets. `make demo` and `make test` are the README's two commands.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0

.PHONY: setup demo test lint compare bench clean models

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
