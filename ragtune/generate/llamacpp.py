"""GGUF models on llama.cpp (llama-cpp-python): the packaged models as they are, quantised, no conversion.

Why a second local runtime: decoding the packaged Q4 models with llama.cpp is several times faster
than transformers' dequantised fp32 on a CPU (bench/generation.py), which is what a user would
otherwise get from Ollama. The prompt is rendered with the GGUF's own chat template and tokenised by
the GGUF's vocabulary; generation runs on `LlamaCppEngine` (continuous batching over one loaded
model, sampling in C, KV-cache reuse of a shared prompt prefix), so token counts are exact.

The wheel is built from source once per CPU kind by `make` (llamacpp_build.py: an AVX2 or an
AVX-512 variant); the CPU is checked before loading so a mismatch is a clear error, never an
illegal instruction.
"""

from __future__ import annotations

import atexit
import codecs
import json
import logging
import threading
import time
from functools import lru_cache
from pathlib import Path

from ..errors import ConfigError
from .base import Generation
from ..runtime import cpu_flags

logger = logging.getLogger(__name__)
INSTALL_HINT = ("install it with `make llamacpp` (builds llama-cpp-python for this CPU once, 7-10 minutes), "
                "or use --backend transformers")


def unavailable_reason() -> str | None:
    """Why the llama.cpp backend cannot run here, or None when it can.

    The CPU is checked against what the installed build needs before `llama_cpp` is imported: loading
    a build made for another CPU would kill the process with an illegal instruction.
    """
    from .llamacpp_build import VARIANTS, missing_flags

    flags = cpu_flags()
    lacking = missing_flags(flags) or [f for f in VARIANTS["avx2"][0] if flags and f not in flags]
    if lacking:
        return (f"the installed llama.cpp build needs {', '.join(lacking)}, which this CPU lacks; "
                "run `make llamacpp` to install the build for this CPU, or use --backend transformers")
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return f"llama-cpp-python is not installed; {INSTALL_HINT}"
    return None


@lru_cache(maxsize=32)
def _schema_grammar(schema_json: str) -> str:
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    return json_schema_to_gbnf(schema_json)


def schema_grammar(schema: dict) -> str:
    """The GBNF grammar (root rule "root") that admits exactly the JSON documents of `schema`,
    by llama-cpp-python's converter (minItems/maxItems, enum, const, required are honoured)."""
    try:
        return _schema_grammar(json.dumps(schema, sort_keys=True))
    except Exception as exc:  # the converter raises bare errors on schema features it lacks
        raise ConfigError(f"cannot turn this JSON schema into a llama.cpp grammar: {exc}") from exc


@lru_cache(maxsize=2)
def _engine(path: str, n_ctx: int, slots: int, threads: int | None, lora: str | None):
    from .llamacpp_engine import LlamaCppEngine

    started = time.perf_counter()
    engine = LlamaCppEngine(path, n_ctx=n_ctx, slots=slots, threads=threads, lora=lora)
    # free it while the interpreter is intact (a finaliser at exit runs after ctypes is torn down)
    atexit.register(engine.close)
    logger.info("loaded %s on llama.cpp in %.1f s (%d tokens x %d sequences)", path,
                time.perf_counter() - started, n_ctx, slots)
    return engine


class LlamaCppGenerator:
    """Greedy (or sampled) generation of a GGUF model on llama.cpp, streamed to a callback.

    `slots` sequences decode together on one loaded model: `generate` may be called from several
    threads at once, and `generate_many` runs a list of conversations as one batch.
    """

    def __init__(self, model: str, *, threads: int | None = None, context_window: int | None = None,
                 slots: int = 1, lora: str | None = None, weight_format: str = "auto",
                 repeat_penalty: float = 1.1):
        self.name = str(model)
        # small models caught in greedy loops repeat a phrase to the token limit; 1.1 over the last 64
        # tokens (Ollama's default) stops that on the demo's list question; 1.0 turns it off
        self.repeat_penalty = repeat_penalty
        self.weight_format = weight_format
        self.runtime_format: str | None = None  # what was loaded: 'source' or a re-quantised type
        self.threads = threads
        self.slots = max(1, int(slots))
        self.lora = lora
        self._context_window = context_window
        self._engine = None
        self._formatter = None
        self._load_lock = threading.Lock()

    def load(self) -> "LlamaCppGenerator":
        if self._engine is not None:
            return self
        with self._load_lock:  # concurrent first calls (eval threads, server requests) load once
            if self._engine is None:
                self._load()
        return self

    def _load(self) -> None:
        reason = unavailable_reason()
        if reason:
            raise ConfigError(f"--backend llamacpp: {reason}")
        from ..models.gguf import gguf_file
        from .llamacpp_formats import runtime_gguf

        if self.lora and not Path(self.lora).expanduser().is_file():
            raise ConfigError(f"--lora {self.lora}: no such file; write one with `ragtune export RUN --gguf-adapter OUT.gguf`")
        source = gguf_file(self.name)
        n_ctx = int(self._context_window or 8192)  # the engine caps it at the model's trained context
        path, self.runtime_format = runtime_gguf(source, weight_format=self.weight_format, threads=self.threads)
        engine = _engine(str(path), n_ctx, self.slots, self.threads, self.lora)
        self._formatter = self._chat_formatter(engine)
        self._engine = engine  # last: other threads see a loaded generator only when it is complete

    def _chat_formatter(self, engine):
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = engine.metadata("tokenizer.chat_template")
        if not template:
            raise ConfigError(f"{self.name} has no chat template in its GGUF metadata; it cannot be used for chat")
        return Jinja2ChatFormatter(template=template, eos_token=engine.special_text(engine.eos()),
                                   bos_token=engine.special_text(engine.bos()), add_generation_prompt=True)

    @property
    def context_window(self) -> int:
        return self.load()._engine.n_ctx_seq

    def count_tokens(self, text: str) -> int:
        return len(self.load()._engine.tokenize(text, special=False))

    def encode_chat(self, messages: list[dict]) -> tuple[list[int], list[str]]:
        """Prompt token ids rendered with the GGUF's chat template (assistant turn opened), and stop strings."""
        self.load()
        rendered = self._formatter(messages=messages)
        tokens = self._engine.tokenize(rendered.prompt, special=True)
        stop = rendered.stop if isinstance(rendered.stop, list) else [rendered.stop] if rendered.stop else []
        return tokens, stop

    def detokenize(self, tokens: list[int], *, special: bool = False) -> str:
        engine = self.load()._engine
        return b"".join(engine.piece(t, special=special) for t in tokens).decode("utf-8", "replace")

    def _submit(self, messages: list[dict], max_new_tokens: int, temperature: float, seed: int = 0,
                json_schema: dict | None = None, grammar: str | None = None):
        from .llamacpp_engine import Request

        tokens, stop = self.encode_chat(messages)
        if len(tokens) + max_new_tokens > self.context_window:
            raise ConfigError(
                f"prompt is {len(tokens)} tokens and {max_new_tokens} more are asked for, beyond {self.name}'s "
                f"{self.context_window}-token context; lower --max-tokens or retrieve fewer chunks (--k)")
        grammar = schema_grammar(json_schema) if json_schema else grammar
        # no repeat penalty under a grammar: JSON repeats its keys by design, and penalising a
        # repeated `true` would bias a judge's verdicts; a quote must copy its source's repetitions
        request = Request(tokens=tokens, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                          repeat_penalty=1.0 if grammar else self.repeat_penalty, grammar=grammar)
        return self._engine.submit(request), stop

    def generate(self, messages: list[dict], *, max_new_tokens: int = 256, temperature: float = 0.0,
                 on_text=None, seed: int = 0, json_schema: dict | None = None,
                 grammar: str | None = None) -> Generation:
        """Generate; `on_text(piece)` receives text as it decodes, in the calling thread. With
        `json_schema`, decoding is constrained to JSON of that schema; with `grammar` (GBNF, root
        rule "root"), to what the grammar admits."""
        started = time.perf_counter()
        request, stop = self._submit(messages, max_new_tokens, temperature, seed, json_schema, grammar)
        return self._collect(request, stop, started, on_text)

    def generate_many(self, conversations: list[list[dict]], *, max_new_tokens: int = 256,
                      temperature: float = 0.0) -> list[Generation]:
        """Complete several conversations together (up to `slots` decode in one batch), in order."""
        started = time.perf_counter()
        submitted = [self._submit(messages, max_new_tokens, temperature) for messages in conversations]
        return [self._collect(request, stop, started, None) for request, stop in submitted]

    def _collect(self, request, stop: list[str], started: float, on_text) -> Generation:
        engine = self._engine
        result = Generation(model=self.name, prompt_tokens=len(request.tokens))
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        text, emitted, finish = "", 0, "length"
        holdback = max((len(s) for s in stop), default=0)
        try:
            while True:
                kind, value = request.events.get()
                if kind == "error":
                    raise ConfigError(f"{self.name} on llama.cpp: {value}") from value
                if kind == "done":
                    finish = value
                    break
                text += decoder.decode(engine.piece(value))
                result.completion_tokens += 1
                cut = min((text.find(s) for s in stop if s and s in text), default=-1)
                if cut >= 0:
                    text, finish = text[:cut], "stop"
                    request.cancelled.set()
                    break
                if result.first_token_seconds is None and text:
                    result.first_token_seconds = time.perf_counter() - started
                ready = len(text) - holdback  # a stop string may be arriving: hold its length back
                if on_text and ready > emitted:
                    on_text(text[emitted:ready])
                    emitted = ready
        except BaseException:
            request.cancelled.set()  # the caller went away (an error, Ctrl-C): free the slot
            raise
        text += decoder.decode(b"", final=True)
        if on_text and len(text) > emitted:
            on_text(text[emitted:])
        result.text, result.finish_reason = text, finish
        result.seconds = time.perf_counter() - started
        result.first_token_seconds = result.first_token_seconds or result.seconds
        result.extra["prompt_evaluated"] = request.prompt_evaluated
        return result
