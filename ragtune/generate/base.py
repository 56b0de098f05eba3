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


BACKENDS = ("auto", "llamacpp", "transformers")


def choose_backend(model: str, backend: str = "auto") -> str:
    """`llamacpp` for GGUF models (packaged ones, or a .gguf path) where llama.cpp runs on this machine,
    else `transformers`; an explicit choice is kept (and fails clearly at load if it cannot run)."""
    from ..errors import ConfigError

    if backend not in BACKENDS:
        raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend != "auto":
        return backend
    from ..models.gguf import is_gguf_path
    from ..models.registry import find_model
    from .llamacpp import unavailable_reason

    spec = find_model(str(model))
    gguf = is_gguf_path(model) or (spec is not None and spec.format in ("gguf", "gguf-parts"))
    return "llamacpp" if gguf and unavailable_reason() is None else "transformers"


def make_generator(model: str | None = None, *, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                   precision: str = "auto", threads: int | None = None, timeout: float = 120.0,
                   max_retries: int = 2, context_window: int | None = None, backend: str = "auto",
                   weight_format: str = "auto", slots: int = 1, lora: str | None = None):
    """A local model (registered name, .gguf file or model directory) or, with base_url, an
    OpenAI-compatible endpoint. Local GGUF models run on llama.cpp where it is installed (backend auto)."""
    if base_url:
        from .remote import OpenAICompatibleGenerator

        return OpenAICompatibleGenerator(model or "default", base_url=base_url, api_key_env=api_key_env,
                                         timeout=timeout, max_retries=max_retries,
                                         context_window=context_window or 8192)
    model = model or DEFAULT_MODEL
    if choose_backend(model, backend) == "llamacpp":
        from .llamacpp import LlamaCppGenerator

        return LlamaCppGenerator(model, threads=threads, context_window=context_window,
                                 weight_format=weight_format, slots=slots, lora=lora)
    if lora:
        from ..errors import ConfigError

        raise ConfigError("--lora applies a GGUF adapter on llama.cpp, which cannot run this model here; for "
                          "transformers pass the run directory or its export as --model instead")
    from .local import LocalGenerator

    return LocalGenerator(model, precision=precision, threads=threads, context_window=context_window)
