"""Any OpenAI-compatible chat endpoint (vLLM, llama.cpp server, Ollama, ragtune's own server, OpenAI).

Uses the official `openai` client for its retries, timeouts and streaming. The key is read from an
environment variable (never a flag, so it stays out of shell history); local servers need none.

Token usage comes from the server: a streamed request asks for it with
`stream_options={"include_usage": true}`, and the server answers with a last chunk that has no
choices and carries `usage`. Streamed chunks are not tokens (servers batch several tokens per
chunk, or split one across chunks), so they are never counted as such. Only when the server sends
no usage are the counts estimated from characters, and `Generation.usage_estimated` says so.
"""

from __future__ import annotations

import logging
import os
import re
import time
from typing import Iterator

from ..errors import ConfigError, RagtuneError
from .base import Generation, collect

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4


class GenerationError(RagtuneError):
    """The endpoint failed, timed out or answered something that is not a completion."""

    exit_code = 6


def _estimate(chars: int) -> int:
    return max(1, chars // CHARS_PER_TOKEN) if chars else 0


def _rejects_stream_options(exc) -> bool:
    """An older server (or a strict proxy) refusing the field we added, rather than the request."""
    if getattr(exc, "status_code", None) != 400:
        return False
    text = f"{exc} {getattr(exc, 'body', '')}".lower()
    return "stream_options" in text or "include_usage" in text


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
        # Cleared once the server rejects stream_options, so later calls skip the doomed first try.
        self.request_usage = True
        self.client = openai.OpenAI(base_url=base_url, api_key=os.environ.get(api_key_env) or "not-needed",
                                    timeout=timeout, max_retries=max_retries)

    def count_tokens(self, text: str) -> int:
        """A character-based estimate, used to budget prompts before sending them."""
        return max(1, len(text) // CHARS_PER_TOKEN)

    def _open(self, messages: list[dict], max_new_tokens: int, temperature: float,
              json_schema: dict | None = None):
        """Start the stream, asking for usage; retry once without the option if it is refused."""
        options = dict(model=self.name, messages=messages, max_tokens=max_new_tokens, temperature=temperature,
                       stream=True)
        if json_schema:  # structured output: the server constrains decoding to the schema (OpenAI, vLLM)
            options["response_format"] = {"type": "json_schema", "json_schema": {
                "name": re.sub(r"[^A-Za-z0-9_-]", "_", str(json_schema.get("title") or "response"))[:64],
                "schema": json_schema, "strict": True}}
        if self.request_usage:
            try:
                return self.client.chat.completions.create(**options, stream_options={"include_usage": True})
            except self._openai.APIStatusError as exc:
                if not _rejects_stream_options(exc):
                    raise
                log.info("%s rejected stream_options (HTTP 400); retrying without it, token counts will be "
                         "estimated", self.base_url)
                self.request_usage = False
        return self.client.chat.completions.create(**options)

    def stream(self, messages: list[dict], *, max_new_tokens: int = 256, temperature: float = 0.0,
               result: Generation | None = None, json_schema: dict | None = None) -> Iterator[str]:
        started = time.perf_counter()
        first = None
        chars = 0
        usage = None
        finish = "stop"
        try:
            response = self._open(messages, max_new_tokens, temperature, json_schema)
            for chunk in response:
                # Usage arrives on the final, choice-less chunk; some servers repeat a running total
                # on every chunk, so the last one seen wins.
                if getattr(chunk, "usage", None) is not None:
                    usage = chunk.usage
                if not getattr(chunk, "choices", None):
                    continue
                choice = chunk.choices[0]
                text = getattr(choice.delta, "content", None) or ""
                if choice.finish_reason:
                    finish = choice.finish_reason
                if text:
                    first = first if first is not None else time.perf_counter() - started
                    chars += len(text)
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
            self._record_usage(result, messages, usage, chars)
            result.seconds, result.first_token_seconds = time.perf_counter() - started, first
            result.finish_reason, result.model = finish, self.name

    def _record_usage(self, result: Generation, messages: list[dict], usage, chars: int) -> None:
        """The server's counts where it sent them; otherwise a flagged estimate from characters."""
        prompt = getattr(usage, "prompt_tokens", None)
        completion = getattr(usage, "completion_tokens", None)
        estimated = False
        if prompt is None:
            prompt = sum(self.count_tokens(m.get("content") or "") for m in messages
                         if isinstance(m.get("content") or "", str))
            estimated = True
        if completion is None:
            completion = _estimate(chars)
            estimated = True
        result.prompt_tokens, result.completion_tokens = int(prompt), int(completion)
        result.usage_estimated = estimated
        if estimated:
            log.debug("%s sent no token usage; counts are estimated at %d characters per token",
                      self.base_url, CHARS_PER_TOKEN)

    def generate(self, messages: list[dict], *, max_new_tokens: int = 256, temperature: float = 0.0,
                 on_text=None, json_schema: dict | None = None) -> Generation:
        """The whole completion; with `json_schema`, asked for as structured output (response_format)."""
        return collect(self, messages, max_new_tokens=max_new_tokens, temperature=temperature, on_text=on_text,
                       json_schema=json_schema)
