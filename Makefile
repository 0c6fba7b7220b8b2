# One command per job on a fresh machine: `make test`, `make demo`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch, pinned here (not in the package metadata) so that pip
# never pulls a multi-GB CUDA build on a machine without a GPU.
TORCH_PIN ?= torch==2.13.0

.PHONY: venv test test-fast demo clean

$(BIN)/knet: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH_PIN)"
	$(BIN)/pip install -q -e ".[test]"
	touch $(BIN)/knet

venv: $(BIN)/knet

test: venv
	$(BIN)/python -m pytest -q --durations=15

test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow"

demo: venv
	$(BIN)/knet demo

clean:
	rm -rf $(VENV) demo_out .pytest_cache
