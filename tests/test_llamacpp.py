"""The llama.cpp backend on the packaged SmolLM2 GGUF: chat template, streaming, exact token counts,
prefix reuse, batched decoding, the measured weight-format choice, and agreement with transformers."""

from __future__ import annotations

import pytest

from ragtune.generate.base import choose_backend, make_generator
from ragtune.generate.llamacpp import LlamaCppGenerator, unavailable_reason

pytestmark = pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason()))
MESSAGES = [{"role": "system", "content": "You answer in one short sentence."},
            {"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def generator():
    return LlamaCppGenerator("SmolLM2-135M-Instruct", threads=2, slots=4).load()


def test_auto_backend_picks_llamacpp_for_packaged_gguf():
    assert choose_backend("SmolLM2-135M-Instruct") == "llamacpp"
    assert isinstance(make_generator("smollm2"), LlamaCppGenerator)
    assert choose_backend("SmolLM2-135M-Instruct", "transformers") == "transformers"


def test_chat_template_streaming_and_exact_counts(generator):
    tokens, stop = generator.encode_chat(MESSAGES)
    # the GGUF's own ChatML template, with the assistant turn opened
    prompt = generator.detokenize(tokens, special=True)
    assert prompt.startswith("<|im_start|>system") and prompt.rstrip().endswith("<|im_start|>assistant")
    pieces = []
    result = generator.generate(MESSAGES, max_new_tokens=32, on_text=pieces.append)
    assert "Paris" in result.text
    assert "".join(pieces) == result.text and len(pieces) > 1
    assert result.prompt_tokens == len(tokens)
    assert 0 < result.completion_tokens <= 32
    assert result.finish_reason == "stop" and "<|im_end|>" not in result.text
    assert result.first_token_seconds is not None and result.first_token_seconds <= result.seconds


def test_length_limit_and_context_check(generator):
    result = generator.generate([{"role": "user", "content": "Count from one to one hundred in words."}],
                                max_new_tokens=5)
    assert result.completion_tokens == 5 and result.finish_reason == "length"
    from ragtune.errors import ConfigError

    with pytest.raises(ConfigError, match="context"):
        generator.generate(MESSAGES, max_new_tokens=generator.context_window)


def test_follow_up_reuses_the_shared_prefix(generator):
    """The second turn evaluates only the tokens after the prefix it shares with the first call."""
    first = [{"role": "system", "content": "You are a helpful assistant. " * 40},
             {"role": "user", "content": "Name a colour."}]
    generator.generate(first, max_new_tokens=8)
    prefix, _ = generator.encode_chat(first)
    follow = first + [{"role": "assistant", "content": "Blue."}, {"role": "user", "content": "Another one?"}]
    tokens, _ = generator.encode_chat(follow)
    shared = next(i for i, (a, b) in enumerate(zip(prefix, tokens)) if a != b) if tokens[: len(prefix)] != prefix \
        else len(prefix)
    assert shared > 200  # the long system prompt is common to both
    second = generator.generate(follow, max_new_tokens=4)
    assert second.prompt_tokens == len(tokens)
    assert second.extra["prompt_evaluated"] <= len(tokens) - shared + 1, (second.extra, len(tokens), shared)


def test_batched_sequences_match_one_at_a_time(generator):
    """Four conversations decoded together give the answers each gives alone (greedy), and a question
    behind a system prompt another sequence already holds evaluates only its own tokens."""
    system = {"role": "system", "content": "Answer briefly. " * 30}
    questions = ["What is the capital of France?", "What colour is the sky?", "Name a large animal.",
                 "What is two plus two?"]
    conversations = [[system, {"role": "user", "content": q}] for q in questions]
    alone = [generator.generate(c, max_new_tokens=12) for c in conversations]
    generator._engine.forget()
    together = generator.generate_many(conversations, max_new_tokens=12)
    assert [r.text.split()[:4] for r in together] == [r.text.split()[:4] for r in alone]
    shared_prompt = min(r.prompt_tokens for r in together) - 20
    assert sum(r.extra["prompt_evaluated"] < shared_prompt for r in together) >= 3


def test_stop_and_cancel_free_the_slot(generator):
    """A caller that stops reading (an exception in its callback) frees its sequence for the next one."""
    def boom(_piece):
        raise KeyboardInterrupt

    for _ in range(generator.slots + 1):
        with pytest.raises(KeyboardInterrupt):
            generator.generate(MESSAGES, max_new_tokens=64, on_text=boom)
    assert "Paris" in generator.generate(MESSAGES, max_new_tokens=24).text


def test_weight_format_is_measured_once_per_machine(tmp_path, monkeypatch):
    """The fastest format is picked by measurement, cached by source hash and machine, and a different
    CPU (other flags) measures again instead of reusing a choice made elsewhere."""
    from ragtune.generate import llamacpp, llamacpp_formats
    from ragtune.models.gguf import gguf_file

    source = gguf_file("SmolLM2-135M-Instruct")
    calls = []

    def fake_measure(paths, threads):
        calls.append(sorted(paths))
        speeds = {"source": (100, 50), "Q4_0": (300, 55), "Q8_0": (250, 45), "F16": (260, 30), "F32": (280, 20)}
        return {f: {"prefill_tok_s": speeds[f][0], "decode_tok_s": speeds[f][1], "size_mb": 1.0} for f in paths}

    monkeypatch.setattr(llamacpp_formats, "measure", fake_measure)
    path, fmt = llamacpp_formats.runtime_gguf(source, cache_dir=tmp_path)
    # Q4_0 (re-rounding 4-bit weights) is never a candidate on its own, however fast
    assert calls == [["F16", "F32", "Q8_0", "source"]]
    assert fmt == "Q8_0" and path.is_file() and path.parent.parent == tmp_path / "llamacpp"
    assert sorted(p.name for p in path.parent.glob("*.gguf")) == ["Q8_0.gguf"]  # the losers are not kept
    assert llamacpp_formats.runtime_gguf(source, cache_dir=tmp_path) == (path, "Q8_0") and len(calls) == 1
    assert llamacpp_formats.cached_choice(source, tmp_path) == "Q8_0"
    pinned, fmt = llamacpp_formats.runtime_gguf(source, weight_format="Q4_0", cache_dir=tmp_path)
    assert fmt == "Q4_0" and pinned.name == "Q4_0.gguf" and len(calls) == 1
    # other weights of the same shapes (a second fine-tune): the choice is reused, only converted
    twin = tmp_path / "twin.gguf"
    data = bytearray(source.read_bytes())
    data[-1] ^= 0x01
    twin.write_bytes(bytes(data))
    twin_path, twin_fmt = llamacpp_formats.runtime_gguf(twin, cache_dir=tmp_path)
    assert (twin_fmt, twin_path.name, len(calls)) == ("Q8_0", "Q8_0.gguf", 1) and twin_path.parent != path.parent
    assert llamacpp_formats.cached_choice(twin, tmp_path) == "Q8_0"
    from ragtune import runtime

    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"avx2", "fma", "f16c"})  # another CPU: measured again
    other, _ = llamacpp_formats.runtime_gguf(source, cache_dir=tmp_path)
    assert len(calls) == 2 and other.parent != path.parent
    assert llamacpp_formats.runtime_gguf(source, weight_format="source", cache_dir=tmp_path) == (source, "source")
    from ragtune.errors import ConfigError

    with pytest.raises(ConfigError, match="--weight-format"):
        llamacpp_formats.runtime_gguf(source, weight_format="Q3", cache_dir=tmp_path)


@pytest.mark.slow
def test_greedy_tokens_agree_with_transformers(generator):
    """Same GGUF weights on both runtimes: the greedy continuations start the same."""
    from ragtune.generate.local import LocalGenerator

    reference = LocalGenerator("SmolLM2-135M-Instruct", precision="fp32", threads=2)
    ours = generator.generate(MESSAGES, max_new_tokens=12)
    theirs = reference.generate(MESSAGES, max_new_tokens=12)
    assert ours.text.split()[:4] == theirs.text.split()[:4], (ours.text, theirs.text)


def test_missing_lora_adapter_is_a_clear_error(tmp_path):
    from ragtune.errors import ConfigError

    with pytest.raises(ConfigError, match="--lora .*gguf-adapter"):
        make_generator("SmolLM2-135M-Instruct", lora=str(tmp_path / "none.gguf")).load()
    with pytest.raises(ConfigError, match="--lora"):
        make_generator("SmolLM2-135M-Instruct", backend="transformers", lora=str(tmp_path / "none.gguf"))
