# One venv for everything. On a CPU machine torch is pinned in the same pip command so pip
# takes the local CPU build instead of GBs of CUDA wheels; on a GPU machine run
# `make demo TORCH=torch EXTRA=gpu` to keep the machine's own torch and a faiss GPU build.
PY ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
EXTRA ?= cpu
BIN := $(VENV)/bin

.PHONY: setup demo lint test clean

setup: $(VENV)/.installed

$(VENV)/.installed: setup.py
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)" -e ".[$(EXTRA),test]"
	touch $@

demo: setup
	$(BIN)/sevlm demo --out demo_out

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf demo_out
