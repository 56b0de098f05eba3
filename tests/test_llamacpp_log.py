"""llama.cpp's own log stays off the terminal: a first `ragtune ask` (the model re-quantised by
llama.cpp, then loaded) prints the answer, not the ~1,000 loader and quantiser lines llama.cpp writes;
llama.cpp's errors still reach the user; a lazy weight-format measurement says it is running."""

from __future__ import annotations

import json
import logging
import re

import pytest

from conftest import run_cli
from ragtune.generate import llamacpp_formats
from ragtune.generate.llamacpp import unavailable_reason
from ragtune.generate.llamacpp_log import NativeLog

needs_llamacpp = pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason()))
QUESTION = "How many days do I have to return a product?"
# how llama.cpp's lines begin: "llama_model_loader: - kv 0: ...", "load_tensors: ...", "print_info: ..."
NATIVE_LINE = re.compile(r"^\s*(llama_\w+|ggml_\w+|gguf_\w+|load\w*|print_info|create_tensor|graph_reserve):")


@pytest.fixture(scope="module")
def tiny_kb(tmp_path_factory):
    folder = tmp_path_factory.mktemp("quiet")
    docs = folder / "docs"
    docs.mkdir()
    (docs / "refunds.md").write_text("# Refund policy\n\nCustomers may return any product within 30 days of "
                                     "purchase for a full refund.\n")
    run_cli("init", folder / "kb", "--embedder", "wordllama")  # no torch: the test is about llama.cpp
    run_cli("ingest", folder / "kb", docs)
    return folder / "kb"


def _quiet_env(cache) -> dict:
    return {"RAGTUNE_CACHE_DIR": str(cache), "RAGTUNE_LOG_LEVEL": "WARNING"}


@needs_llamacpp
@pytest.mark.integration
def test_first_ask_prints_no_llamacpp_log(tiny_kb, tmp_path):
    """An empty cache, as on a first run: llama.cpp's quantiser writes Q8_0, then the model loads."""
    result = run_cli("ask", tiny_kb, QUESTION, "--model", "SmolLM2-135M-Instruct", "--weight-format", "Q8_0",
                     "--threads", 2, "--max-tokens", 16, "--min-relevance", 0, env=_quiet_env(tmp_path / "cache"))
    assert list((tmp_path / "cache" / "llamacpp").glob("*/Q8_0.gguf"))  # the quantiser did run
    assert result.stdout.strip()
    for stream in (result.stdout, result.stderr):
        assert "llama_model_loader" not in stream
        assert not [line for line in stream.splitlines() if NATIVE_LINE.match(line)], stream[:2000]


@needs_llamacpp
@pytest.mark.integration
def test_llamacpp_errors_still_reach_the_user(tiny_kb, tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf file" * 100)
    result = run_cli("ask", tiny_kb, QUESTION, "--model", bad, "--min-relevance", 0, check=False,
                     env=_quiet_env(tmp_path / "cache"))
    assert result.returncode != 0
    assert "invalid magic" in result.stderr  # llama.cpp's own reason, logged at ERROR


def test_native_log_joins_fragments_into_lines_at_their_level(caplog):
    sink = NativeLog(logging.getLogger("test.native"))
    with caplog.at_level(logging.DEBUG, logger="test.native"):
        sink.write(2, "[  1/272] token_embd.weight - ")  # INFO, continued without CONT, as the quantiser does
        sink.write(2, "size = 12.5 MB\n")
        sink.write(4, "llama_model_load: error loading model")  # ERROR, continued with CONT
        sink.write(5, ": invalid magic\n")
        sink.write(3, "a warning\n\n")
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.DEBUG, "[  1/272] token_embd.weight - size = 12.5 MB"),
        (logging.ERROR, "llama_model_load: error loading model: invalid magic"),
        (logging.INFO, "a warning")]


def test_lazy_measurement_says_it_is_running(tmp_path, monkeypatch, caplog):
    """Measured on first use (not by `make`), the wait is announced on the default log level."""
    source = tmp_path / "Tiny-Model-0123456789abcdef.gguf"
    source.write_bytes(b"\0" * 1000)
    numbers = {"prefill_tok_s": 100.0, "decode_tok_s": 10.0, "size_mb": 0.0}
    monkeypatch.setattr(llamacpp_formats, "machine_key", lambda: "test-machine")
    monkeypatch.setattr(llamacpp_formats, "_converted", lambda src, folder, fmt: src)
    monkeypatch.setattr(llamacpp_formats, "measure", lambda paths, threads: {f: dict(numbers) for f in paths})
    with caplog.at_level(logging.WARNING, logger="ragtune"):
        path, picked = llamacpp_formats.runtime_gguf(source, cache_dir=tmp_path / "cache")
    assert path == source and picked == "source"
    assert len(caplog.records) == 1, caplog.records
    assert re.fullmatch(r"measuring weight formats for Tiny-Model on this CPU \(once, ~\d+ s\)…",
                        caplog.records[0].getMessage())
    choice = next((tmp_path / "cache" / "llamacpp").glob("*/choice.json"))
    assert json.loads(choice.read_text())["format"] == "source"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ragtune"):  # cached: silent
        assert llamacpp_formats.runtime_gguf(source, cache_dir=tmp_path / "cache") == (source, "source")
    assert not caplog.records
