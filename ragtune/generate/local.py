"""Local Hugging Face causal LMs: packaged GGUF models (converted once, cached) or model directories.

Models are loaded once per process and shared (loading SmolLM2 takes about a second from the cache,
the 0.5B model several): a server or a chat session must not reload per question.
"""

from __future__ import annotations

import time
from functools import lru_cache
from ..errors import ConfigError
from ..runtime import quiet_transformers, resolve_precision, set_torch_threads
from .base import Generation


@lru_cache(maxsize=4)
def _load(model_dir: str, precision: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, local_files_only=True)
    model.eval()
    return tokenizer, model


class LocalGenerator:
    """Greedy (or sampled) generation with transformers, streamed to a callback as tokens decode."""

    def __init__(self, model: str, *, precision: str = "auto", threads: int | None = None,
                 context_window: int | None = None):
        if precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"--precision must be auto, fp32 or bf16, got {precision!r}")
        self.name = str(model)
        self.precision = resolve_precision(precision)
        self.threads = threads
        self._context_window = context_window
        self._tokenizer = None
        self._model = None

    def load(self) -> "LocalGenerator":
        if self._model is None:
            from ..models.cache import resolve_model_dir

            set_torch_threads(self.threads)
            self._tokenizer, self._model = _load(str(resolve_model_dir(self.name)), self.precision)
        return self

    @property
    def tokenizer(self):
        return self.load()._tokenizer

    @property
    def context_window(self) -> int:
        if self._context_window:
            return self._context_window
        config = self.load()._model.config
        # SmolLM2 declares 8192 positions; cap at what small CPU models handle well
        return int(min(getattr(config, "max_position_embeddings", 2048) or 2048, 8192))

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode_chat(self, messages: list[dict]):
        """Token ids of the chat with the model's own template and the assistant turn opened."""
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                  return_dict=True)

    def _options(self, inputs, max_new_tokens: int, temperature: float, streamer) -> dict:
        prompt_tokens = int(inputs["input_ids"].shape[1])
        if prompt_tokens + max_new_tokens > self.context_window:
            raise ConfigError(
                f"prompt is {prompt_tokens} tokens and {max_new_tokens} more are asked for, beyond {self.name}'s "
                f"{self.context_window}-token context; lower --max-tokens or retrieve fewer chunks (--k)")
        options = dict(**inputs, max_new_tokens=max_new_tokens, streamer=streamer,
                       pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id)
        if temperature > 0:
            options.update(do_sample=True, temperature=temperature)
        else:
            options.update(do_sample=False)
        return options

    def generate(self, messages: list[dict], *, max_new_tokens: int = 256, temperature: float = 0.0,
                 on_text=None, json_schema: dict | None = None) -> Generation:
        """Generate in the calling thread; `on_text(piece)` receives the text as it is decoded.
        `json_schema` is accepted and not enforced here (no constrained decoding on transformers):
        callers asking for JSON parse and retry.

        Why not a worker thread: on a 2-core CPU, torch ops launched from a second Python thread get
        their own OpenMP pool while the main thread's pool spins, and generation ran 35-45% slower
        (bench/generation.py). A callback streamer keeps decoding in the one thread.
        """
        import torch
        from transformers import TextStreamer

        self.load()
        inputs = self.encode_chat(messages)
        result = Generation(model=self.name, prompt_tokens=int(inputs["input_ids"].shape[1]))
        started = time.perf_counter()
        pieces: list[str] = []

        class Callback(TextStreamer):
            def on_finalized_text(self, text: str, stream_end: bool = False):
                if text:
                    if result.first_token_seconds is None:
                        result.first_token_seconds = time.perf_counter() - started
                    pieces.append(text)
                    if on_text:
                        on_text(text)

        streamer = Callback(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        with torch.inference_mode():
            ids = self._model.generate(**self._options(inputs, max_new_tokens, temperature, streamer))
        result.text = "".join(pieces)
        result.completion_tokens = int(ids.shape[1]) - result.prompt_tokens
        result.seconds = time.perf_counter() - started
        result.finish_reason = "length" if result.completion_tokens >= max_new_tokens else "stop"
        return result
