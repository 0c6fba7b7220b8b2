# One command per job on a fresh machine (the test and demo targets create .venv first):
#   make test        the full suite, slow tests included (what CI runs), with the 15 slowest listed
#   make test-fast   the suite without the tests marked slow (each measured above ~8 s on one core):
#                    under 3 minutes, for the edit-test loop
#   make test-all    the full suite and the gated groups too: every preset's ONNX export
#                    (KNET_ALL_EXPORTS=1) and the full-size demos (KNET_FULL_DEMOS=1)
#   make smoke-wheel build the wheel, install it into a clean venv beside the floor torch, smoke-test
#                    it (.ci/smoke_wheel.sh; CI runs it after make test)
#   make demo        train, evaluate and run a tiny K-Net on generated scenes
#   make docs        build the documentation site into site/ (mkdocs build --strict; works offline)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch, pinned here (not in the package metadata) so that pip
# never pulls a multi-GB CUDA build on a machine without a GPU.
TORCH_PIN ?= torch==2.13.0

.PHONY: venv test test-fast test-all smoke-wheel demo docs clean

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

test-all: venv
	KNET_ALL_EXPORTS=1 KNET_FULL_DEMOS=1 $(BIN)/python -m pytest -q --durations=15

smoke-wheel:
	TORCH_PIN="$(TORCH_PIN)" PYTHON="$(PYTHON)" bash .ci/smoke_wheel.sh

demo: venv
	$(BIN)/knet demo

$(VENV)/.docs: pyproject.toml $(BIN)/knet
	$(BIN)/pip install -q -e ".[docs]"
	touch $@

docs: $(VENV)/.docs
	$(BIN)/python scripts/gen_docs.py --check
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site
	@! grep -lE '<(script|link)[^>]+(src|href)="https?://' site/*.html || \
		(echo "make docs: a page loads a script or style from the network" && false)

clean:
	rm -rf $(VENV) demo_out site .pytest_cache
