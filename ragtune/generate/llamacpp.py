"""GGUF models on llama.cpp (llama-cpp-python): the packaged models as they are, quantised, no conversion.

Why a second local runtime: decoding the packaged Q4 models with llama.cpp is several times faster
than transformers' dequantised fp32 on a CPU (bench/generation.py), which is what a user would
otherwise get from Ollama. The prompt is rendered with the GGUF's own chat template, tokenised by
the GGUF's vocabulary, and generated token by token here so that token counts are exact and the KV
cache of a shared prompt prefix (a system prompt, earlier chat turns) is reused: llama-cpp-python's
`generate` keeps the evaluated tokens and only evaluates what differs from the previous call.

The wheel is built from source by `make` for the AVX2 baseline every machine here has (a build with
runtime dispatch over all CPU variants took over 17 minutes on 2 cores); the CPU is checked before
loading so an older CPU gets a clear error, never an illegal instruction.
"""

from __future__ import annotations

import atexit
import codecs
import logging
import time
from functools import lru_cache
from pathlib import Path

from ..errors import ConfigError
from .base import Generation

logger = logging.getLogger(__name__)
REQUIRED_CPU_FLAGS = ("avx2", "fma", "f16c")
INSTALL_HINT = "install it with `make llamacpp` (builds llama-cpp-python, about 7 minutes), or use --backend transformers"


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def unavailable_reason() -> str | None:
    """Why the llama.cpp backend cannot run here, or None when it can."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return f"llama-cpp-python is not installed; {INSTALL_HINT}"
    flags = cpu_flags()
    missing = [f for f in REQUIRED_CPU_FLAGS if flags and f not in flags]
    if missing:
        return f"this CPU lacks {', '.join(missing)}, which ragtune's llama.cpp build needs; use --backend transformers"
    return None


@lru_cache(maxsize=2)
def _load(path: str, n_ctx: int, threads: int | None, batch_threads: int | None):
    from llama_cpp import Llama

    started = time.perf_counter()
    model = Llama(model_path=path, n_ctx=n_ctx, n_threads=threads, n_threads_batch=batch_threads or threads,
                  n_batch=512, verbose=False)
    # free it while the interpreter is intact: left to garbage collection at exit, llama-cpp-python's
    # finaliser runs after its own module is torn down and prints a TypeError traceback
    atexit.register(model.close)
    logger.info("loaded %s on llama.cpp in %.1f s (context %d)", path, time.perf_counter() - started, n_ctx)
    return model


class LlamaCppGenerator:
    """Greedy (or sampled) generation of a GGUF model on llama.cpp, streamed to a callback."""

    def __init__(self, model: str, *, threads: int | None = None, context_window: int | None = None):
        self.name = str(model)
        self.threads = threads
        self._context_window = context_window
        self._llm = None
        self._formatter = None

    def load(self) -> "LlamaCppGenerator":
        if self._llm is not None:
            return self
        reason = unavailable_reason()
        if reason:
            raise ConfigError(f"--backend llamacpp: {reason}")
        from ..models.gguf import gguf_file

        path = gguf_file(self.name)
        trained = self._trained_context(path)
        n_ctx = int(min(self._context_window or 8192, trained or 8192))
        self._llm = _load(str(path), n_ctx, self.threads, self.threads)
        self._formatter = self._chat_formatter()
        return self

    @staticmethod
    def _trained_context(path: Path) -> int | None:
        """The context length the model was trained for, from the GGUF header (gguf-py, memory-mapped)."""
        from gguf import GGUFReader

        reader = GGUFReader(str(path))
        arch = reader.fields.get("general.architecture")
        if arch is None:
            return None
        name = bytes(arch.parts[arch.data[0]]).decode()
        field = reader.fields.get(f"{name}.context_length")
        return int(field.parts[field.data[0]][0]) if field is not None else None

    def _chat_formatter(self):
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        metadata = self._llm.metadata
        template = metadata.get("tokenizer.chat_template")
        if not template:
            raise ConfigError(f"{self.name} has no chat template in its GGUF metadata; it cannot be used for chat")
        vocab = self._llm
        eos = vocab.detokenize([vocab.token_eos()], special=True).decode("utf-8", "ignore")
        bos = vocab.detokenize([vocab.token_bos()], special=True).decode("utf-8", "ignore") if vocab.token_bos() >= 0 else ""
        return Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos, add_generation_prompt=True)

    @property
    def context_window(self) -> int:
        # llama.cpp rounds the context it allocates up (to 256); the budget is what was asked for
        allocated = int(self.load()._llm.n_ctx())
        return min(self._context_window or allocated, allocated)

    def count_tokens(self, text: str) -> int:
        return len(self.load()._llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def encode_chat(self, messages: list[dict]) -> tuple[list[int], list[str]]:
        """Prompt token ids rendered with the GGUF's chat template (assistant turn opened), and stop strings."""
        self.load()
        rendered = self._formatter(messages=messages)
        tokens = self._llm.tokenize(rendered.prompt.encode("utf-8"), add_bos=False, special=True)
        stop = rendered.stop if isinstance(rendered.stop, list) else [rendered.stop] if rendered.stop else []
        return tokens, stop

    def generate(self, messages: list[dict], *, max_new_tokens: int = 256, temperature: float = 0.0,
                 on_text=None) -> Generation:
        """Generate in the calling thread; `on_text(piece)` receives text as it decodes."""
        import llama_cpp

        tokens, stop = self.encode_chat(messages)
        if len(tokens) + max_new_tokens > self.context_window:
            raise ConfigError(
                f"prompt is {len(tokens)} tokens and {max_new_tokens} more are asked for, beyond {self.name}'s "
                f"{self.context_window}-token context; lower --max-tokens or retrieve fewer chunks (--k)")
        llm = self._llm
        result = Generation(model=self.name, prompt_tokens=len(tokens))
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        started, text, emitted = time.perf_counter(), "", 0
        holdback = max((len(s) for s in stop), default=0)
        finish = "length"
        options = {"temp": temperature, "top_k": 40, "top_p": 0.95, "repeat_penalty": 1.0}
        for count, token in enumerate(llm.generate(tokens, **options), start=1):
            if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token):
                finish = "stop"
                result.completion_tokens = count - 1
                break
            text += decoder.decode(llm.detokenize([token], special=False))
            result.completion_tokens = count
            cut = min((text.find(s) for s in stop if s and s in text), default=-1)
            if cut >= 0:
                text, finish = text[:cut], "stop"
                break
            if result.first_token_seconds is None and text:
                result.first_token_seconds = time.perf_counter() - started
            ready = len(text) - holdback  # a stop string may be arriving: hold its length back
            if on_text and ready > emitted:
                on_text(text[emitted:ready])
                emitted = ready
            if count >= max_new_tokens:
                break
        text += decoder.decode(b"", final=True)
        if on_text and len(text) > emitted:
            on_text(text[emitted:])
        result.text, result.finish_reason = text, finish
        result.seconds = time.perf_counter() - started
        result.first_token_seconds = result.first_token_seconds or result.seconds
        return result
