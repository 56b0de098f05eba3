"""Shared fixtures: the real packaged MiniLM tokenizer/embedder and knowledge-base factories."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ragtune.runtime import enforce_offline

enforce_offline()
ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "datasets"
RAGTUNE = [sys.executable, "-m", "ragtune.cli"]


@pytest.fixture(scope="session")
def embedder():
    from ragtune.models.embedder import Embedder
    from ragtune.runtime import resolve_precision

    return Embedder("all-MiniLM-L6-v2", precision=resolve_precision("auto"), threads=2)


@pytest.fixture(scope="session")
def tokenizer(embedder):
    return embedder.tokenizer


@pytest.fixture
def make_kb(tmp_path, embedder):
    """Create a KB in tmp_path sharing the session's loaded embedder (loads the model once)."""
    from ragtune.config import KBConfig
    from ragtune.kb import KnowledgeBase

    opened = []

    def factory(name="kb", **settings):
        kb = KnowledgeBase.init(tmp_path / name, KBConfig(**settings))
        if kb.config.embedder == embedder.name and kb.config.precision == embedder.precision:
            kb._embedder = embedder
        opened.append(kb)
        return kb

    yield factory
    for kb in opened:
        kb.close()


def kb_of_texts(root, docs: dict[str, str], **config):
    """An open knowledge base (default embedder, 2 threads) over `docs` (file name -> text) written
    under `root`/docs; the caller closes it."""
    from ragtune.config import KBConfig
    from ragtune.kb import KnowledgeBase

    folder = root / "docs"
    folder.mkdir()
    for name, text in docs.items():
        (folder / name).write_text(text)
    kb = KnowledgeBase.init(root / "kb", KBConfig(**config) if config else None)
    kb.threads = 2
    kb.ingest([folder])
    return kb


def run_cli(*args, check=True, env=None, **kwargs) -> subprocess.CompletedProcess:
    """Run the real `ragtune` CLI in a subprocess (env: extra variables)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    result = subprocess.run([*RAGTUNE, *map(str, args)], capture_output=True, text=True, env=env, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"ragtune {' '.join(map(str, args))} failed ({result.returncode}):\n{result.stderr}")
    return result


def two_block_smollm2(folder):
    """The packaged SmolLM2-135M with its first 2 of 30 blocks: real weights, tokenizer and chat
    template, 15x less compute (a config whose num_hidden_layers is 2; the other blocks' weights are
    skipped on load)."""
    import json

    from ragtune.models.cache import resolve_model_dir

    source = resolve_model_dir("SmolLM2-135M-Instruct")
    folder.mkdir()
    for path in source.iterdir():
        if path.name != "config.json":
            (folder / path.name).symlink_to(path)
    config = json.loads((source / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 2}))
    return folder


@pytest.fixture(scope="session")
def codeword_run(tmp_path_factory):
    """(run directory, data file) of a LoRA run of SmolLM2-135M-Instruct that learned test_finetune's three
    codewords: trained once (`ragtune train`) for the tests of its loss, export, GGUF and llama.cpp, which
    only read it."""
    from test_finetune import write_codes, write_recipe

    folder = tmp_path_factory.mktemp("codeword-run")
    data = write_codes(folder / "codes.jsonl")
    recipe = write_recipe(folder, name="lora", method="lora", output_dir=str(folder / "run"),
                          data={"train": "codes.jsonl", "max_length": 96, "validation_share": 0},
                          training={"learning_rate": 3e-3, "epochs": 4, "batch_size": 4, "warmup": 0, "threads": 2,
                                    "logging_steps": 1},
                          lora={"r": 8, "alpha": 16, "dropout": 0.0})
    run_cli("train", recipe, "--json")
    return folder / "run", data
