"""The generator protocol: chat messages in, text out (whole or streamed), with token counts."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

DEFAULT_MODEL = "SmolLM2-135M-Instruct"


@dataclass
class Generation:
    """One completion and what it cost.

    Token counts are exact when the backend tokenized the text itself (local models) or the server
    reported them; `usage_estimated` is True when they are a character-based guess instead, so a
    budget or a report can say so rather than present a guess as a measurement.
    """

    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    usage_estimated: bool = False
    seconds: float = 0.0
    first_token_seconds: float | None = None
    finish_reason: str = "stop"
    model: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds > 0 else 0.0


class Generator(Protocol):
    """What the RAG layer needs from a model: chat in, text out, a context size and a token counter."""

    name: str
    context_window: int

    def count_tokens(self, text: str) -> int: ...

    def generate(self, messages: list[dict], *, max_new_tokens: int = 256, temperature: float = 0.0,
                 on_text=None) -> Generation:
        """The whole completion; `on_text(piece)` is called as text arrives (streaming)."""
        ...


def collect(generator, messages: list[dict], on_text=None, **options) -> Generation:
    """`generate` for backends whose native form is an iterator (HTTP streams): drain `stream`."""
    result = Generation(model=generator.name)
    started = time.perf_counter()
    pieces = []
    for piece in generator.stream(messages, result=result, **options):
        pieces.append(piece)
        if on_text:
            on_text(piece)
    result.text = "".join(pieces)
    result.seconds = result.seconds or time.perf_counter() - started
    return result


def make_generator(model: str | None = None, *, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                   precision: str = "auto", threads: int | None = None, timeout: float = 120.0,
                   max_retries: int = 2, context_window: int | None = None):
    """A local model (registered name or model directory) or, with base_url, an OpenAI-compatible endpoint."""
    if base_url:
        from .remote import OpenAICompatibleGenerator

        return OpenAICompatibleGenerator(model or "default", base_url=base_url, api_key_env=api_key_env,
                                         timeout=timeout, max_retries=max_retries,
                                         context_window=context_window or 8192)
    from .local import LocalGenerator

    return LocalGenerator(model or DEFAULT_MODEL, precision=precision, threads=threads, context_window=context_window)
