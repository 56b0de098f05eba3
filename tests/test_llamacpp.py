"""The llama.cpp backend on the packaged SmolLM2 GGUF: chat template, streaming, exact token counts,
prefix reuse, and agreement with transformers on the same weights."""

from __future__ import annotations

import pytest

from ragtune.generate.base import choose_backend, make_generator
from ragtune.generate.llamacpp import LlamaCppGenerator, unavailable_reason

pytestmark = pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason()))
MESSAGES = [{"role": "system", "content": "You answer in one short sentence."},
            {"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def generator():
    return LlamaCppGenerator("SmolLM2-135M-Instruct", threads=2).load()


def test_auto_backend_picks_llamacpp_for_packaged_gguf():
    assert choose_backend("SmolLM2-135M-Instruct") == "llamacpp"
    assert isinstance(make_generator("smollm2"), LlamaCppGenerator)
    assert choose_backend("SmolLM2-135M-Instruct", "transformers") == "transformers"


def test_chat_template_streaming_and_exact_counts(generator):
    tokens, stop = generator.encode_chat(MESSAGES)
    # the GGUF's own ChatML template, with the assistant turn opened
    prompt = generator._llm.detokenize(tokens, special=True).decode()
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
    evaluated = []
    real_eval = generator._llm.eval

    def counting_eval(batch):
        evaluated.append(len(batch))
        return real_eval(batch)

    generator._llm.eval = counting_eval
    try:
        generator.generate(follow, max_new_tokens=4)
    finally:
        generator._llm.eval = real_eval
    prompt_evaluated = evaluated[0]
    assert prompt_evaluated <= len(tokens) - shared + 1, (prompt_evaluated, len(tokens), shared)


@pytest.mark.slow
def test_greedy_tokens_agree_with_transformers(generator):
    """Same GGUF weights on both runtimes: the greedy continuations start the same."""
    from ragtune.generate.local import LocalGenerator

    reference = LocalGenerator("SmolLM2-135M-Instruct", precision="fp32", threads=2)
    ours = generator.generate(MESSAGES, max_new_tokens=12)
    theirs = reference.generate(MESSAGES, max_new_tokens=12)
    assert ours.text.split()[:4] == theirs.text.split()[:4], (ours.text, theirs.text)
