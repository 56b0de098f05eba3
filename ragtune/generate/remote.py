"""Any OpenAI-compatible chat endpoint (vLLM, llama.cpp server, Ollama, ragtune's own server, OpenAI).

Uses the official `openai` client for its retries, timeouts and streaming. The key is read from an
environment variable (never a flag, so it stays out of shell history); local servers need none.
Token counts for the budget are estimated (4 characters per token) unless the server reports usage.
"""

from __future__ import annotations

import os
import time
from typing import Iterator

from ..errors import ConfigError, RagtuneError
from .base import Generation, collect

CHARS_PER_TOKEN = 4


class GenerationError(RagtuneError):
    """The endpoint failed, timed out or answered something that is not a completion."""

    exit_code = 6


class OpenAICompatibleGenerator:
    def __init__(self, model: str, *, base_url: str, api_key_env: str = "OPENAI_API_KEY", timeout: float = 120.0,
                 max_retries: int = 2, context_window: int = 8192):
        try:
            import openai
        except ImportError:
            raise ConfigError("OpenAI-compatible endpoints need the openai client: pip install 'ragtune[openai]'") from None
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"--base-url must start with http:// or https://, got {base_url!r}")
        self.name = model
        self.context_window = context_window
        self.base_url = base_url
        self._openai = openai
        self.client = openai.OpenAI(base_url=base_url, api_key=os.environ.get(api_key_env) or "not-needed",
                                    timeout=timeout, max_retries=max_retries)

    def count_tokens(self, text: str) -> int:
        return max(1, len(text) // CHARS_PER_TOKEN)

    def stream(self, messages: list[dict], *, max_new_tokens: int = 256, temperature: float = 0.0,
               result: Generation | None = None) -> Iterator[str]:
        started = time.perf_counter()
        first = None
        pieces = 0
        try:
            response = self.client.chat.completions.create(
                model=self.name, messages=messages, max_tokens=max_new_tokens, temperature=temperature, stream=True)
            finish = "stop"
            for chunk in response:
                if not getattr(chunk, "choices", None):
                    continue
                choice = chunk.choices[0]
                text = getattr(choice.delta, "content", None) or ""
                if choice.finish_reason:
                    finish = choice.finish_reason
                if text:
                    first = first if first is not None else time.perf_counter() - started
                    pieces += 1
                    yield text
        except self._openai.APITimeoutError:
            raise GenerationError(f"{self.base_url} did not answer in time; raise --timeout or check the server") from None
        except self._openai.APIConnectionError as exc:
            raise GenerationError(f"cannot reach {self.base_url}: {exc}; is the server running?") from None
        except self._openai.APIStatusError as exc:
            raise GenerationError(f"{self.base_url} answered HTTP {exc.status_code}: {str(exc)[:200]}") from None
        except (self._openai.APIResponseValidationError, ValueError, AttributeError, TypeError) as exc:
            raise GenerationError(f"{self.base_url} sent something that is not a chat completion ({exc.__class__.__name__}: "
                                  f"{str(exc)[:200]}); check --base-url points at an OpenAI-compatible /v1") from None
        if result is not None:
            result.prompt_tokens = sum(self.count_tokens(m.get("content", "")) for m in messages)
            result.completion_tokens = pieces
            result.seconds, result.first_token_seconds = time.perf_counter() - started, first
            result.finish_reason, result.model = finish, self.name

    def generate(self, messages: list[dict], *, max_new_tokens: int = 256, temperature: float = 0.0,
                 on_text=None) -> Generation:
        return collect(self, messages, max_new_tokens=max_new_tokens, temperature=temperature, on_text=on_text)
