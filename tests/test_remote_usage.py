"""The OpenAI-compatible backend reports the server's token usage, and flags its own estimates.

Runs against the loopback fake server: it reports usage only when asked (stream_options), reports
numbers no client-side estimate would produce, and can refuse the option as strict servers do.
"""

from __future__ import annotations

import pytest

from fake_openai import fake_openai
from ragtune.generate import make_generator
from ragtune.generate.remote import CHARS_PER_TOKEN, GenerationError

MESSAGES = [{"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "Where is the Zorblat festival held, and when?"}]
REPLY = "It is held in Kremsville every March [1]."


def generate(url, **options):
    generator = make_generator("served-model", base_url=url, max_retries=0)
    return generator, generator.generate(MESSAGES, max_new_tokens=32, **options)


def test_reported_usage_is_the_servers():
    with fake_openai(reply=REPLY, usage=(321, 17)) as (url, seen):
        _generator, result = generate(url)
    assert result.text.strip() == REPLY
    assert (result.prompt_tokens, result.completion_tokens) == (321, 17)
    assert result.usage_estimated is False
    assert seen[0]["stream"] is True and seen[0]["stream_options"] == {"include_usage": True}


def test_streamed_chunks_are_not_counted_as_tokens():
    pieces = []
    with fake_openai(reply=REPLY) as (url, _seen):  # default usage: 2 tokens per word + 1
        _generator, result = generate(url, on_text=pieces.append)
    assert len(pieces) == len(REPLY.split(" "))
    assert result.completion_tokens == 2 * len(pieces) + 1 != len(pieces)


def test_without_server_usage_counts_are_flagged_estimates():
    reply = "Supercalifragilistic expialidocious notwithstanding"
    with fake_openai("no_usage", reply=reply) as (url, seen):
        _generator, result = generate(url)
    assert seen[0]["stream_options"] == {"include_usage": True}  # asked, but the server ignored it
    assert result.usage_estimated is True
    assert result.completion_tokens == len(result.text) // CHARS_PER_TOKEN  # from characters...
    assert result.completion_tokens != len(reply.split(" "))  # ...never from the number of chunks
    prompt_chars = sum(len(m["content"]) for m in MESSAGES)
    assert result.prompt_tokens == pytest.approx(prompt_chars / CHARS_PER_TOKEN, abs=len(MESSAGES))


def test_server_rejecting_stream_options_is_retried_once_without_it():
    with fake_openai("reject_stream_options", reply=REPLY) as (url, seen):
        generator, result = generate(url)
        assert result.text.strip() == REPLY and result.usage_estimated is True
        assert ["stream_options" in body for body in seen] == [True, False]
        second = generator.generate(MESSAGES, max_new_tokens=32)  # remembered: no doomed first try
    assert second.text.strip() == REPLY
    assert ["stream_options" in body for body in seen] == [True, False, False]


def test_other_bad_requests_are_errors_not_retries():
    with fake_openai("bad_request") as (url, seen):
        with pytest.raises(GenerationError, match="HTTP 400"):
            generate(url)
    assert len(seen) == 1
